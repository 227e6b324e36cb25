"""
The master's durable journal in an embedded SQLite database.

The journal is an ordered table of L{volumecap.master.state} records plus
periodic snapshots of the whole state.  Writes run on one dedicated thread,
so the reactor does not wait for them.  Records appended while a write is in
flight are committed together in the next transaction (group commit).  A
record's Deferred fires once its transaction is committed.  Because writes
are ordered, every earlier record is then durable too.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from volumecap.master.state import MasterState, Record

T = TypeVar("T")
Runner = Callable[[Callable[[], T]], "Deferred[T]"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY, written REAL NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (
    seq INTEGER PRIMARY KEY, written REAL NOT NULL, state TEXT NOT NULL);
"""

DATABASE_NAME = "master.sqlite3"


class StoreMismatchError(Exception):
    """
    The data directory belongs to another data center or amount scale.
    """


def run_synchronously(function: Callable[[], T]) -> "Deferred[T]":
    """
    Run C{function} at once: the runner for unit tests, which then see every
    write complete before the call returns.
    """
    return maybeDeferred(function)


class Journal:
    """
    The SQLite journal of one master.

    @param runner: runs a blocking callable and returns a Deferred of its
        result.  Without it, L{start} creates a one-thread pool.
    """

    log = Logger()

    def __init__(
        self, path: str, synchronous: str = "FULL", runner: Runner[Any] | None = None
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self._runner = runner
        self._pool: ThreadPool | None = None
        self._connection: sqlite3.Connection | None = None
        self._pending: list[tuple[str, int, str, Deferred[None]]] = []
        self._writing = False
        self.records_since_snapshot = 0

    def open(self, dc: str, scale: int) -> MasterState:
        """
        Open or create the database and return the state stored in it.

        This runs before the reactor does, so that a twistd start fails at
        once with a clear message.  L{start} then starts the writer thread.

        @raise StoreMismatchError: the database was made for another data
            center or scale.
        """
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={self.synchronous}")
        connection.executescript(_SCHEMA)
        self._connection = connection
        try:
            self._check_settings({"dc": dc, "scale": str(scale)})
        except StoreMismatchError:
            connection.close()
            self._connection = None
            raise
        return self._load(dc)

    def start(self, reactor: IReactorThreads) -> None:
        """
        Start the writer thread, unless a runner was given.
        """
        if self._runner is None:
            pool = ThreadPool(minthreads=1, maxthreads=1, name="volumecap-journal")
            pool.start()
            self._pool = pool
            self._runner = lambda function: deferToThreadPool(reactor, pool, function)

    def _check_settings(self, wanted: dict[str, str]) -> None:
        assert self._connection is not None
        stored = dict(self._connection.execute("SELECT name, value FROM settings"))
        for name, value in wanted.items():
            if name not in stored:
                self._connection.execute(
                    "INSERT INTO settings (name, value) VALUES (?, ?)", (name, value)
                )
            elif stored[name] != value:
                raise StoreMismatchError(
                    f"{self.path} was created with {name} {stored[name]!r}, not "
                    f"{value!r}. Use that {name} or another data directory"
                )

    def _load(self, dc: str) -> MasterState:
        assert self._connection is not None
        row = self._connection.execute(
            "SELECT state FROM snapshots ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        state = MasterState.from_snapshot(json.loads(row[0])) if row else MasterState(dc)
        replayed = 0
        for (text,) in self._connection.execute(
            "SELECT record FROM journal WHERE seq > ? ORDER BY seq", (state.seq,)
        ):
            state.apply(json.loads(text))
            replayed += 1
        self.records_since_snapshot = replayed
        self.log.info(
            "Loaded {path}: {caps} caps, {intervals} intervals, journal at {seq} "
            "({replayed} records replayed)",
            path=self.path,
            caps=len(state.caps),
            intervals=len(state.intervals),
            seq=state.seq,
            replayed=replayed,
        )
        return state

    def append(self, seq: int, record: Record) -> "Deferred[None]":
        """
        Write C{record} as journal entry C{seq}.  The Deferred fires once it
        is committed.
        """
        return self._enqueue("journal", seq, json.dumps(record, separators=(",", ":")))

    def snapshot(self, state: MasterState) -> "Deferred[None]":
        """
        Write a snapshot of C{state}, ordered after every record appended
        before it.
        """
        self.records_since_snapshot = 0
        return self._enqueue("snapshots", state.seq, json.dumps(state.to_snapshot()))

    def barrier(self) -> "Deferred[None]":
        """
        Return a Deferred that fires once everything enqueued so far is
        committed.
        """
        return self._enqueue("", 0, "")

    def _enqueue(self, table: str, seq: int, text: str) -> "Deferred[None]":
        done: Deferred[None] = Deferred()
        self._pending.append((table, seq, text, done))
        if table == "journal":
            self.records_since_snapshot += 1
        self._flush()
        return done

    def _flush(self) -> None:
        if self._writing or not self._pending:
            return
        assert self._runner is not None
        batch, self._pending = self._pending, []
        self._writing = True
        rows = [(table, seq, text) for table, seq, text, _ in batch]
        self._runner(lambda: self._write(rows)).addBoth(self._written, batch)

    def _write(self, rows: list[tuple[str, int, str]]) -> None:
        assert self._connection is not None
        now = time.time()
        with self._connection:
            self._connection.execute("BEGIN IMMEDIATE")
            for table, seq, text in rows:
                if not table:
                    continue
                column = "record" if table == "journal" else "state"
                self._connection.execute(
                    f"INSERT OR REPLACE INTO {table} (seq, written, {column}) VALUES (?, ?, ?)",
                    (seq, now, text),
                )
                if table == "snapshots":
                    self._connection.execute(
                        "DELETE FROM snapshots WHERE seq < (SELECT MAX(seq) FROM snapshots)"
                    )

    def _written(self, result: object, batch: list[tuple[str, int, str, Deferred[None]]]) -> None:
        self._writing = False
        if isinstance(result, Failure):
            self.log.failure(
                "Writing {count} journal entries to {path} failed",
                result,
                count=len(batch),
                path=self.path,
            )
            for _, _, _, done in batch:
                done.errback(result)
        else:
            for _, _, _, done in batch:
                done.callback(None)
        self._flush()

    def count(self) -> int:
        """
        Return the number of journal entries on disk.
        """
        assert self._connection is not None
        return int(self._connection.execute("SELECT COUNT(*) FROM journal").fetchone()[0])

    def close(self) -> "Deferred[None]":
        """
        Wait for pending writes, then close the database and its thread.
        """
        finished: Deferred[None] = Deferred()

        def wait() -> None:
            if self._writing or self._pending:
                assert self._runner is not None
                self._runner(lambda: None).addBoth(lambda _: wait())
                return
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            if self._pool is not None:
                self._pool.stop()
                self._pool = None
            finished.callback(None)

        wait()
        return finished
