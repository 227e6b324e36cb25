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

# The longest the handler sleeps between two checks, in seconds, so a clock
# step (NTP, a suspended VM) is noticed within this time.
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

    def changes_for(self, cap_id: str, cap: CapDefinition | None, now: int) -> list[Record]:
        """
        Return the records that make the live intervals of C{cap_id} match
        C{cap} (L{None} for a deleted cap) at C{now}.
        """
        wanted = {span.start: span for span in current_and_next(cap, now)} if cap else {}
        records: list[Record] = []
        for interval in self.ledger.state.intervals_of(cap_id):
            span = wanted.pop(interval.start, None)
            if span is None:
                if not interval.expired:
                    records.append({"type": "interval.delete", "cap": cap_id, "start": interval.start})
                continue
            share = self.share(span.total)
            if interval.expired or span.end != interval.end or share != interval.total:
                records.append(
                    {"type": "interval.update", "cap": cap_id, "start": span.start, "end": span.end, "total": share}
                )
        for span in wanted.values():
            records.append(
                {
                    "type": "interval.create",
                    "cap": cap_id,
                    "start": span.start,
                    "end": span.end,
                    "total": self.share(span.total),
                }
            )
        return records

    def tick(self) -> "Deferred[None]":
        """
        Expire ended intervals, create due ones and purge old ones, then
        schedule the next check at the next boundary.
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
