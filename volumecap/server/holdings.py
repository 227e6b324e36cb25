"""
A volumecap server's holdings: one slice per interval that the master has
sent it, with no I/O.  Amounts are integer units, and the caller supplies
the time.
"""

from __future__ import annotations

from typing import Iterator

from volumecap.errors import UnknownCapError


class Slice:
    """
    A server's holding of one interval.

    @ivar available: units this server may still consume.
    @ivar consumed: units this server has consumed.
    @ivar reported: C{consumed} as last reported to the master.
    @ivar topup: units to request per top-up.
    @ivar threshold: a top-up starts when C{available} falls to this.
    @ivar exhausted_until: time until which consumes beyond C{available}
        fail without asking the master again, because it last reported the
        interval exhausted.
    """

    __slots__ = (
        "cap_id",
        "start",
        "end",
        "available",
        "consumed",
        "reported",
        "topup",
        "threshold",
        "exhausted_until",
    )

    def __init__(self, cap_id: str, start: int, end: int, topup: int, threshold: int) -> None:
        self.cap_id = cap_id
        self.start = start
        self.end = end
        self.topup = topup
        self.threshold = threshold
        self.available = 0
        self.consumed = 0
        self.reported = 0
        self.exhausted_until = 0.0

    @property
    def key(self) -> tuple[str, int]:
        return (self.cap_id, self.start)

    def __repr__(self) -> str:
        return (
            f"<Slice {self.cap_id}/{self.start} available={self.available} "
            f"consumed={self.consumed}>"
        )


class Holdings:
    """
    The slices of every interval that the server has, by cap id and start.
    """

    def __init__(self) -> None:
        self._by_cap: dict[str, dict[int, Slice]] = {}
        self._current: dict[str, Slice] = {}

    def __iter__(self) -> Iterator[Slice]:
        for slices in self._by_cap.values():
            yield from slices.values()

    def __len__(self) -> int:
        return sum(len(slices) for slices in self._by_cap.values())

    def get(self, cap_id: str, start: int) -> Slice | None:
        return self._by_cap.get(cap_id, {}).get(start)

    def upsert(self, cap_id: str, start: int, end: int, topup: int, threshold: int) -> Slice:
        """
        Add an interval, or update the bounds and sizes of a known one while
        keeping its figures.
        """
        slices = self._by_cap.setdefault(cap_id, {})
        found = slices.get(start)
        if found is None:
            found = slices[start] = Slice(cap_id, start, end, topup, threshold)
        else:
            found.end, found.topup, found.threshold = end, topup, threshold
        self._current.pop(cap_id, None)
        return found

    def remove(self, cap_id: str, start: int) -> Slice | None:
        """
        Drop an interval and return its slice, if known.
        """
        slices = self._by_cap.get(cap_id)
        if not slices:
            return None
        removed = slices.pop(start, None)
        if not slices:
            del self._by_cap[cap_id]
        self._current.pop(cap_id, None)
        return removed

    def current(self, cap_id: str, now: float) -> Slice:
        """
        Return the slice of C{cap_id}'s interval that contains C{now}.

        @raise UnknownCapError: the cap is unknown or has no interval now.
        """
        found = self._current.get(cap_id)
        if found is not None and found.start <= now < found.end:
            return found
        slices = self._by_cap.get(cap_id)
        if slices is None:
            raise UnknownCapError(f"cap {cap_id!r} not found, or it has no current or next interval")
        for candidate in slices.values():
            if candidate.start <= now < candidate.end:
                self._current[cap_id] = candidate
                return candidate
        raise UnknownCapError(f"cap {cap_id!r} has no current interval")

    def following(self, current: Slice) -> Slice | None:
        """
        Return the slice of the interval that starts where C{current} ends.
        """
        return self._by_cap.get(current.cap_id, {}).get(current.end)
