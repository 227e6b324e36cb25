"""
The interval handler: keeps the current and the next interval of every
active cap, on schedule.

At each boundary it expires intervals that have ended, creates the next ones
and purges expired intervals older than the retention period.  It also turns
a cap change into the interval records that bring the cap's intervals in line
with the new definition.
"""

from __future__ import annotations

from typing import Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from volumecap.amounts import split_shares
from volumecap.intervals import CapDefinition, current_and_next
from volumecap.master.ledger import Ledger
from volumecap.master.state import Record

# Expired intervals stay queryable this long after their end, in seconds.
DEFAULT_RETENTION = 7 * 86400

# Maximum seconds the handler sleeps between two checks, so a clock step
# (NTP, a suspended VM) is noticed within this time.
MAX_SLEEP = 60.0


class IntervalHandler(Service):
    """
    Creates, expires and purges intervals, and applies cap changes to them.

    @param dcs: every data center that shares the caps, this one included.
    """

    log = Logger()

    def __init__(
        self,
        ledger: Ledger,
        clock: IReactorTime,
        dcs: Sequence[str] = (),
        retention: float = DEFAULT_RETENTION,
    ) -> None:
        self.name = "interval"
        self.ledger = ledger
        self.clock = clock
        self.dcs = tuple(dcs) or (ledger.state.dc,)
        self.retention = retention
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self.tick()

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def share(self, total: int) -> int:
        """
        Return this data center's share of an interval total.
        """
        return split_shares(total, self.dcs)[self.ledger.state.dc]

    def changes_for(
        self, cap_id: str, cap: CapDefinition | None, now: int
    ) -> list[Record]:
        """
        Return the records that make the intervals of C{cap_id} match C{cap}
        (L{None} for a deleted cap) at C{now}.

        A wanted interval that overlaps one the master already has is the
        same calendar period.  So the existing interval is updated, revived
        if it had expired, and keeps its consumption.  Moving a cap's dates
        away and back does not serve a period twice unless its interval was
        purged in between.  Intervals that are no longer wanted expire, so
        their figures stay visible.  A deleted cap's intervals are deleted.

        An interval's share is this data center's split of the total plus
        what it moved in from other data centers.  A new total changes only
        the split part, so every data center's share changes by its split of
        the difference, and the shares keep adding up to the total whatever
        sequence of versions each data center saw.
        """
        existing = self.ledger.state.intervals_of(cap_id)
        if cap is None:
            return [{"type": "interval.delete", "cap": cap_id, "start": i.start} for i in existing]
        records: list[Record] = []
        kept: set[int] = set()
        for span in current_and_next(cap, now):
            found = next((i for i in existing if i.start < span.end and span.start < i.end), None)
            if found is not None and found.start != span.start and span.start > now:
                # The start moved inside a period that has not begun: nothing
                # was consumed in it yet, so it starts afresh.
                records.append({"type": "interval.delete", "cap": cap_id, "start": found.start})
                kept.add(found.start)
                found = None
            if found is None:
                share = self.share(span.total)
                records.append(
                    {"type": "interval.create", "cap": cap_id, "start": span.start, "end": span.end, "total": share}
                )
                continue
            kept.add(found.start)
            share = self.share(span.total) + found.moved
            if found.expired or span.end != found.end or share != found.total:
                records.append(
                    {"type": "interval.update", "cap": cap_id, "start": found.start, "end": span.end, "total": share}
                )
        for interval in existing:
            if interval.start not in kept and not interval.expired:
                records.append({"type": "interval.expire", "cap": cap_id, "start": interval.start})
        return records

    def tick(self) -> "Deferred[None]":
        """
        Expire ended intervals, create due ones, purge old ones and delete
        caps that ended more than the retention period ago.  Then schedule
        the next check at the next boundary.
        """
        self._call = None
        now = int(self.clock.seconds())
        state = self.ledger.state
        records: list[Record] = []
        for interval in list(state.intervals.values()):
            if interval.expired and interval.end + self.retention <= now:
                records.append({"type": "interval.purge", "cap": interval.cap_id, "start": interval.start})
            elif not interval.expired and interval.end <= now:
                records.append({"type": "interval.expire", "cap": interval.cap_id, "start": interval.start})
        for cap in state.caps.values():
            if cap.end + self.retention <= now:
                records.append({"type": "cap.delete", "id": cap.id})
        committed = self.ledger.commit(records)
        records = []
        for cap in list(state.caps.values()):
            records.extend(self.changes_for(cap.id, cap, now))
        if records:
            self.log.info("Interval check at {now}: {count} interval changes", now=now, count=len(records))
            committed = self.ledger.commit(records)
        if self.running:
            self._call = self.clock.callLater(self._sleep(now), self.tick)
        return committed

    def _sleep(self, now: int) -> float:
        """
        Return the seconds until the next interval or cap boundary, at most
        L{MAX_SLEEP} and at least one second.
        """
        state = self.ledger.state
        boundaries: list[float] = [i.end for i in state.live_intervals()]
        boundaries += [cap.start for cap in state.caps.values() if cap.start > now]
        boundaries += [i.end + self.retention for i in state.intervals.values() if i.expired]
        upcoming = [moment - now for moment in boundaries if moment > now]
        return max(1.0, min(upcoming + [MAX_SLEEP]))
