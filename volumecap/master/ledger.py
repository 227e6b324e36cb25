"""
The ledger: the master's state and its journal, kept in step.

Handlers never mutate L{MasterState} directly.  They build records and hand
them to L{Ledger.commit}, which applies them in memory at once, so the next
decision uses them, and appends them to the journal.  A handler responds to a peer
only after the Deferred from C{commit} fires, so anything acknowledged is
durable, and a crash before that loses only changes nobody was told about.
"""

from __future__ import annotations

from typing import Callable, Iterable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger

from volumecap.master.state import MasterState, Record
from volumecap.store import Journal

# Records between snapshots: a restart replays at most this many.
SNAPSHOT_EVERY = 2000


class Ledger:
    """
    The master's state with its journal.
    """

    log = Logger()

    def __init__(self, state: MasterState, journal: Journal, scale: int) -> None:
        self.state = state
        self.journal = journal
        self.scale = scale
        self._observers: list[Callable[[list[Record]], None]] = []

    def observe(self, observer: Callable[[list[Record]], None]) -> None:
        """
        Call C{observer} with each committed batch of records once it is
        durable, in commit order.
        """
        self._observers.append(observer)

    def commit(self, records: Iterable[Record]) -> "Deferred[None]":
        """
        Apply C{records} in order and journal them.

        @return: a Deferred that fires once all of them are durable.
        """
        batch = list(records)
        last: Deferred[None] | None = None
        for record in batch:
            self.state.apply(record)
            last = self.journal.append(self.state.seq, record)
        if last is None:
            return self.synced()
        if self.journal.records_since_snapshot >= SNAPSHOT_EVERY:
            self.journal.snapshot(self.state).addErrback(
                lambda failure: self.log.failure("Writing a snapshot failed", failure)
            )
        last.addCallback(self._notify, batch)
        return last

    def _notify(self, result: None, batch: list[Record]) -> None:
        for observer in self._observers:
            try:
                observer(batch)
            except Exception:
                self.log.failure("Observer {observer!r} failed on committed records", observer=observer)
        return result

    def synced(self) -> "Deferred[None]":
        """
        Return a Deferred that fires once every record committed so far is
        durable.
        """
        return self.journal.barrier()


class LedgerService(Service):
    """
    Starts the journal's writer thread and, on stop, writes a final snapshot
    and closes the journal once pending writes are done.
    """

    def __init__(self, ledger: Ledger, reactor: IReactorThreads) -> None:
        self.name = "ledger"
        self.ledger = ledger
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        self.ledger.journal.start(self.reactor)

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        self.ledger.journal.snapshot(self.ledger.state)
        return self.ledger.journal.close()
