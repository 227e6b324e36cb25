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
from volumecap.amounts import format_units
from volumecap.intervals import CapDefinition, build_cap, format_instant
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
        Validate C{fields} and return the cap with the outcome that setting
        it would have.

        @raise volumecap.errors.InvalidCapError: naming every invalid field.
        """
        cap = build_cap(fields, self.ledger.scale, self.default_timezone)
        existing = self.ledger.state.caps.get(cap.id)
        if existing is None:
            return cap, CREATED
        return cap, UNCHANGED if existing == cap else UPDATED

    def next_version(self, cap_id: str) -> list[Any]:
        """
        Return a version for a change made here: the time in milliseconds and
        this data center, above every version the cap had.
        """
        latest = self.ledger.state.version(cap_id)
        milliseconds = max(int(self.clock.seconds() * 1000), int(latest[0]) + 1)
        return [milliseconds, self.ledger.state.dc]

    def set_cap(self, fields: Mapping[str, Any]) -> "Deferred[str]":
        """
        Create or replace a cap.  The Deferred fires with the outcome once
        the change is durable.
        """
        cap, outcome = self.check(fields)
        if outcome == UNCHANGED:
            return succeed(outcome)
        self.log.info(
            "Cap {cap} {outcome}: {interval} from {start} to {end}, total {total}",
            cap=cap.id,
            outcome=outcome,
            interval=cap.interval,
            start=format_instant(cap.start),
            end=format_instant(cap.end),
            total=format_units(cap.total, self.ledger.scale),
        )
        return self._commit_set(cap, self.next_version(cap.id)).addCallback(lambda _: outcome)

    def _commit_set(self, cap: CapDefinition, version: list[Any]) -> "Deferred[None]":
        now = int(self.clock.seconds())
        records: list[Record] = [{"type": "cap.set", "cap": cap.to_record(), "version": version}]
        records += self.intervals.changes_for(cap.id, cap, now)
        return self.ledger.commit(records)

    def delete_cap(self, cap_id: str) -> "Deferred[None]":
        """
        Delete a cap and its intervals.  The Deferred fires once the
        deletion is durable.

        @raise UnknownCapError: no such cap.
        """
        if cap_id not in self.ledger.state.caps:
            raise UnknownCapError(f"cap {cap_id!r} not found")
        self.log.info("Cap {cap} deleted", cap=cap_id)
        return self._commit_delete(cap_id, self.next_version(cap_id))

    def _commit_delete(self, cap_id: str, version: list[Any]) -> "Deferred[None]":
        now = int(self.clock.seconds())
        records: list[Record] = [{"type": "cap.delete", "id": cap_id, "version": version}]
        records += self.intervals.changes_for(cap_id, None, now)
        return self.ledger.commit(records)

    def apply_remote(self, cap_id: str, cap: CapDefinition | None, version: list[Any]) -> "Deferred[bool]":
        """
        Apply a definition (or, for L{None}, a deletion) made in another data
        center, if its version is newer than what this one has.

        Concurrent changes resolve the same way everywhere: the higher
        C{[milliseconds, data center]} version wins.

        @return: a Deferred firing with whether anything changed, once durable.
        """
        state = self.ledger.state
        if list(version) <= state.version(cap_id):
            return succeed(False)
        if cap is None:
            if cap_id not in state.caps:
                committed = self.ledger.commit([{"type": "cap.delete", "id": cap_id, "version": list(version)}])
            else:
                committed = self._commit_delete(cap_id, list(version))
            self.log.info("Cap {cap} deleted in data center {dc}", cap=cap_id, dc=version[1])
        else:
            committed = self._commit_set(cap, list(version))
            self.log.info("Cap {cap} set in data center {dc}", cap=cap_id, dc=version[1])
        return committed.addCallback(lambda _: True)
