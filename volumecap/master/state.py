"""
The master's state and the records that change it.

Every durable change to a master is one record: a JSON-compatible dictionary
with a C{type}.  Apart from the consumption figures, L{MasterState.apply} is
the only code that mutates the state.  So replaying the journal of records on
top of a snapshot rebuilds exactly what the master had, and a replica fed the
same records has the same state.

Record types:

 - C{cap.set} C{{cap, version}} and C{cap.delete} C{{id, version}}: meta
   changes.  A version is C{[milliseconds, data center]}.  The higher one
   wins between data centers, and a deleted cap leaves a tombstone with its
   version so an older definition arriving late cannot bring it back.
 - C{interval.create} and C{interval.update} C{{cap, start, end, total}}: the
   update moves C{available} by the change of C{total}.
 - C{remote.request} C{{request, dc, cap, start, amount, version}}: this
   data center asked data center C{dc} for more of an interval.
 - C{remote.received} C{{request, cap, start, amount}}: the grant for a
   request, or zero for an abandoned one, applied once: the interval's share grows by C{amount}.
 - C{remote.give} C{{request, dc, cap, start, amount}}: this data center
   moved part of its share to data center C{dc}.
 - C{seq.reserve} C{{upto}}: message sequence numbers up to C{upto} may be
   used, so numbers keep rising across restarts.
 - C{interval.delete} and C{interval.expire} C{{cap, start}}, C{interval.purge}.
 - C{grant} and C{return} C{{cap, start, server, request, amount, at}}: a
   slice moving from the master to a server and back.
 - C{revoke} C{{cap, start, server, request, amount}}: part of a grant taken
   back before the server received it.  The server asked again under the
   same request id, which proves it never saw the first response.
 - C{writeoff} C{{cap, start, server, amount}}: the unconsumed holding of a
   server that came back without it.  It is never served again.

Consumption figures come from server reports.  They are informational, kept
in snapshots but not journaled: a server repeats them when it joins again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from volumecap.intervals import CapDefinition

IntervalKey = tuple[str, int]

Record = dict[str, Any]


@dataclass
class Holding:
    """
    The master's view of one server's slice of one interval.

    @ivar granted: units granted minus units returned, revoked or written
        off.
    @ivar consumed: units the server last reported as consumed.
    """

    granted: int = 0
    consumed: int = 0

    @property
    def available(self) -> int:
        return max(0, self.granted - self.consumed)


@dataclass
class Interval:
    """
    One interval of a cap in this data center.

    @ivar total: this data center's share of the interval total, in units.
    @ivar moved: units received from other data centers minus units given
        to them.
    @ivar available: units not handed out to any server.  It is negative
        after a lowered total until recalls bring it back.
    @ivar requests: the amount applied for each grant or return request id,
        so that a repeated request gets the first result.
    """

    dc: str
    cap_id: str
    start: int
    end: int
    total: int
    available: int
    moved: int = 0
    expired: bool = False
    written_off: int = 0
    holdings: dict[str, Holding] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> IntervalKey:
        return (self.cap_id, self.start)

    @property
    def consumed(self) -> int:
        return sum(holding.consumed for holding in self.holdings.values())

    def holding(self, server: str) -> Holding:
        return self.holdings.setdefault(server, Holding())


class MasterState:
    """
    Caps and intervals of one data center, changed only by L{apply} and,
    for consumption figures, by L{note_consumed}.
    """

    def __init__(self, dc: str) -> None:
        self.dc = dc
        self.caps: dict[str, CapDefinition] = {}
        self.versions: dict[str, list[Any]] = {}
        self.tombstones: dict[str, list[Any]] = {}
        self.intervals: dict[IntervalKey, Interval] = {}
        self.remote_requests: dict[str, Record] = {}
        self.seq_reserved = 0
        self.seq = 0

    def version(self, cap_id: str) -> list[Any]:
        """
        Return the version of a cap's definition or of its deletion, or
        C{[0, ""]} for a cap this data center never saw.
        """
        return self.versions.get(cap_id) or self.tombstones.get(cap_id) or [0, ""]

    def interval(self, cap_id: str, start: int) -> Interval | None:
        return self.intervals.get((cap_id, start))

    def intervals_of(self, cap_id: str) -> list[Interval]:
        """
        Return the intervals of C{cap_id}, oldest first.
        """
        found = [i for i in self.intervals.values() if i.cap_id == cap_id]
        return sorted(found, key=lambda interval: interval.start)

    def live_intervals(self) -> Iterator[Interval]:
        return (i for i in self.intervals.values() if not i.expired)

    def apply(self, record: Record) -> None:
        """
        Apply one record.

        @raise KeyError: the record names an unknown type.
        """
        handler = getattr(self, "_apply_" + str(record["type"]).replace(".", "_"), None)
        if handler is None:
            raise KeyError(f"unknown record type {record['type']!r}")
        handler(record)
        self.seq += 1

    def _apply_cap_set(self, record: Record) -> None:
        cap = CapDefinition.from_record(record["cap"])
        self.caps[cap.id] = cap
        self.versions[cap.id] = list(record.get("version") or [0, self.dc])
        self.tombstones.pop(cap.id, None)

    def _apply_cap_delete(self, record: Record) -> None:
        self.caps.pop(record["id"], None)
        self.versions.pop(record["id"], None)
        self.tombstones[record["id"]] = list(record.get("version") or [0, self.dc])

    def _apply_interval_create(self, record: Record) -> None:
        key = (record["cap"], record["start"])
        self.intervals[key] = Interval(
            dc=self.dc,
            cap_id=record["cap"],
            start=record["start"],
            end=record["end"],
            total=record["total"],
            available=record["total"],
        )

    def _apply_interval_update(self, record: Record) -> None:
        interval = self.intervals[(record["cap"], record["start"])]
        interval.available += record["total"] - interval.total
        interval.total = record["total"]
        interval.end = record["end"]
        # An update can revive an expired interval when a cap's end moves later.
        interval.expired = False

    def _apply_interval_delete(self, record: Record) -> None:
        self.intervals.pop((record["cap"], record["start"]), None)

    _apply_interval_purge = _apply_interval_delete

    def _apply_interval_expire(self, record: Record) -> None:
        self.intervals[(record["cap"], record["start"])].expired = True

    def _apply_grant(self, record: Record) -> None:
        interval = self.intervals[(record["cap"], record["start"])]
        interval.available -= record["amount"]
        interval.holding(record["server"]).granted += record["amount"]
        interval.requests[record["request"]] = record["amount"]

    def _apply_return(self, record: Record) -> None:
        interval = self.intervals[(record["cap"], record["start"])]
        interval.available += record["amount"]
        interval.holding(record["server"]).granted -= record["amount"]
        interval.requests[record["request"]] = record["amount"]

    def _apply_revoke(self, record: Record) -> None:
        interval = self.intervals[(record["cap"], record["start"])]
        interval.available += record["amount"]
        interval.holding(record["server"]).granted -= record["amount"]
        interval.requests[record["request"]] -= record["amount"]

    def _apply_remote_request(self, record: Record) -> None:
        self.remote_requests[record["request"]] = dict(record)

    def _apply_remote_received(self, record: Record) -> None:
        self.remote_requests.pop(record["request"], None)
        interval = self.intervals.get((record["cap"], record["start"]))
        if interval is not None and record["amount"]:
            interval.total += record["amount"]
            interval.available += record["amount"]
            interval.moved += record["amount"]
            interval.requests[record["request"]] = record["amount"]

    def _apply_remote_give(self, record: Record) -> None:
        interval = self.intervals[(record["cap"], record["start"])]
        interval.total -= record["amount"]
        interval.available -= record["amount"]
        interval.moved -= record["amount"]
        interval.requests[record["request"]] = record["amount"]

    def _apply_seq_reserve(self, record: Record) -> None:
        self.seq_reserved = max(self.seq_reserved, record["upto"])

    def _apply_writeoff(self, record: Record) -> None:
        interval = self.intervals[(record["cap"], record["start"])]
        interval.holding(record["server"]).granted -= record["amount"]
        interval.written_off += record["amount"]

    def note_consumed(self, server: str, cap_id: str, start: int, consumed: int) -> None:
        """
        Record a server's consumption figure for an interval, if the master
        still has the interval.  Figures only grow, so a late report never
        lowers one, and they are capped at the units granted.
        """
        interval = self.intervals.get((cap_id, start))
        if interval is None or (consumed == 0 and server not in interval.holdings):
            return
        holding = interval.holding(server)
        holding.consumed = max(holding.consumed, min(consumed, holding.granted))

    def to_snapshot(self) -> dict[str, Any]:
        """
        Return the whole state as a JSON-compatible dictionary.
        """
        return {
            "dc": self.dc,
            "seq": self.seq,
            "caps": [cap.to_record() for cap in self.caps.values()],
            "versions": self.versions,
            "tombstones": self.tombstones,
            "remote_requests": self.remote_requests,
            "seq_reserved": self.seq_reserved,
            "intervals": [
                {
                    "cap": i.cap_id,
                    "start": i.start,
                    "end": i.end,
                    "total": i.total,
                    "available": i.available,
                    "moved": i.moved,
                    "expired": i.expired,
                    "written_off": i.written_off,
                    "holdings": {
                        name: [h.granted, h.consumed] for name, h in i.holdings.items()
                    },
                    "requests": i.requests,
                }
                for i in self.intervals.values()
            ],
        }

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any]) -> "MasterState":
        """
        Rebuild a state from L{to_snapshot} output.
        """
        state = cls(snapshot["dc"])
        state.seq = snapshot["seq"]
        for cap in snapshot["caps"]:
            state._apply_cap_set({"cap": cap, "version": snapshot.get("versions", {}).get(cap["id"])})
        state.tombstones = dict(snapshot.get("tombstones", {}))
        state.remote_requests = dict(snapshot.get("remote_requests", {}))
        state.seq_reserved = snapshot.get("seq_reserved", 0)
        for item in snapshot["intervals"]:
            interval = Interval(
                dc=state.dc,
                cap_id=item["cap"],
                start=item["start"],
                end=item["end"],
                total=item["total"],
                available=item["available"],
                moved=item.get("moved", 0),
                expired=item["expired"],
                written_off=item["written_off"],
                holdings={name: Holding(*pair) for name, pair in item["holdings"].items()},
                requests=dict(item["requests"]),
            )
            state.intervals[interval.key] = interval
        return state
