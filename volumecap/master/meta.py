"""
The meta handler: creates, updates and deletes cap definitions.

Each change is one C{cap.set} or C{cap.delete} record, committed together
with the interval records the interval handler derives from it, so a change
and its effect on intervals are durable together or not at all.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from volumecap.errors import UnknownCapError
from volumecap.intervals import CapDefinition, build_cap
from volumecap.master.interval import IntervalHandler
from volumecap.master.ledger import Ledger
from volumecap.master.state import Record

CREATED = "created"
UPDATED = "updated"
UNCHANGED = "unchanged"


class MetaHandler(Service):
    """
    Cap definitions: validation, creation, update and deletion.

    @param default_timezone: the time zone of caps defined without one.
    """

    log = Logger()

    def __init__(
        self,
        ledger: Ledger,
        intervals: IntervalHandler,
        clock: IReactorTime,
        default_timezone: str,
    ) -> None:
        self.name = "meta"
        self.ledger = ledger
        self.intervals = intervals
        self.clock = clock
        self.default_timezone = default_timezone

    def check(self, fields: Mapping[str, Any]) -> tuple[CapDefinition, str]:
        """
        Validate C{fields} and say what setting them would do.

        @raise volumecap.errors.InvalidCapError: naming every invalid field.
        """
        cap = build_cap(fields, self.ledger.scale, self.default_timezone)
        existing = self.ledger.state.caps.get(cap.id)
        if existing is None:
            return cap, CREATED
        return cap, UNCHANGED if existing == cap else UPDATED

    def set_cap(self, fields: Mapping[str, Any]) -> "Deferred[str]":
        """
        Create or replace a cap; fires with the outcome once it is durable.
        """
        cap, outcome = self.check(fields)
        if outcome == UNCHANGED:
            return succeed(outcome)
        now = int(self.clock.seconds())
        records: list[Record] = [{"type": "cap.set", "cap": cap.to_record()}]
        records += self.intervals.changes_for(cap.id, cap, now)
        self.log.info(
            "Cap {cap} {outcome}: {interval} from {start} to {end}, total {total} units",
            cap=cap.id,
            outcome=outcome,
            interval=cap.interval,
            start=cap.start,
            end=cap.end,
            total=cap.total,
        )
        return self.ledger.commit(records).addCallback(lambda _: outcome)

    def delete_cap(self, cap_id: str) -> "Deferred[None]":
        """
        Delete a cap and its intervals; fires once that is durable.

        @raise UnknownCapError: no such cap.
        """
        if cap_id not in self.ledger.state.caps:
            raise UnknownCapError(f"cap {cap_id!r} not found")
        now = int(self.clock.seconds())
        records: list[Record] = [{"type": "cap.delete", "id": cap_id}]
        records += self.intervals.changes_for(cap_id, None, now)
        self.log.info("Cap {cap} deleted with {count} live intervals", cap=cap_id, count=len(records) - 1)
        return self.ledger.commit(records)
