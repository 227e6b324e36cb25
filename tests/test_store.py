"""
Unit tests of the master's state records and their SQLite journal.

The journal runs its writes with L{run_synchronously} or a runner the test
steps by hand, so no thread and no reactor are involved.
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any, Callable

import pytest
from twisted.internet.defer import Deferred

from volumecap.intervals import CapDefinition
from volumecap.master.state import Holding, MasterState, Record
from volumecap.store import Journal, StoreMismatchError, run_synchronously

DC = "dc1"
SCALE = 2
DAY = 86400
START = 1799020800  # 2027-01-04T00:00:00Z
CAP = CapDefinition(
    id="c1",
    interval="day",
    start=START,
    end=START + 30 * DAY,
    total=100000,
    first_total=None,
    timezone="UTC",
)


def create(total: int = 100000, start: int = START, cap: str = "c1") -> Record:
    return {"type": "interval.create", "cap": cap, "start": start, "end": start + DAY, "total": total}


def grant(server: str, request: str, amount: int, start: int = START) -> Record:
    return {
        "type": "grant",
        "cap": "c1",
        "start": start,
        "server": server,
        "request": request,
        "amount": amount,
        "at": start + 60,
    }


def give_back(server: str, request: str, amount: int) -> Record:
    return {
        "type": "return",
        "cap": "c1",
        "start": START,
        "server": server,
        "request": request,
        "amount": amount,
        "at": START + 120,
    }


def revoke(server: str, request: str, amount: int) -> Record:
    return {"type": "revoke", "cap": "c1", "start": START, "server": server, "request": request, "amount": amount}


def writeoff(server: str, amount: int) -> Record:
    return {"type": "writeoff", "cap": "c1", "start": START, "server": server, "amount": amount}


def interval_record(kind: str, start: int = START) -> Record:
    return {"type": kind, "cap": "c1", "start": start}


def history() -> list[Record]:
    """
    Return records of a day's work: a cap, three intervals (one of them
    expired), grants, a return, a revoke and a write-off.
    """
    return [
        {"type": "cap.set", "cap": CAP.to_record()},
        create(start=START - DAY),
        create(),
        create(start=START + DAY),
        grant("s1", "r1", 10000),
        grant("s2", "r2", 10000),
        give_back("s2", "r3", 2500),
        grant("s3", "r4", 700),
        revoke("s3", "r4", 200),
        writeoff("s1", 1500),
        interval_record("interval.expire", START - DAY),
    ]


def open_journal(path: Path, dc: str = DC, scale: int = SCALE) -> tuple[Journal, MasterState]:
    journal = Journal(str(path / "master.sqlite3"), runner=run_synchronously)
    return journal, journal.open(dc, scale)


def commit(journal: Journal, state: MasterState, records: list[Record]) -> None:
    """
    Apply C{records} and journal each under its sequence number, as the
    master's ledger does.
    """
    for record in records:
        state.apply(record)
        journal.append(state.seq, record)


def reopen(journal: Journal, path: Path) -> tuple[Journal, MasterState]:
    closed = journal.close()
    assert closed.called
    return open_journal(path)


def normalised(state: MasterState) -> dict[str, Any]:
    """
    Return the snapshot of C{state} with caps and intervals in a fixed order.
    """
    snapshot = state.to_snapshot()
    snapshot["caps"].sort(key=lambda cap: cap["id"])
    snapshot["intervals"].sort(key=lambda item: (item["cap"], item["start"]))
    return snapshot


def fresh_state() -> MasterState:
    state = MasterState(DC)
    state.apply({"type": "cap.set", "cap": CAP.to_record()})
    state.apply(create(total=1000))
    return state


class SteppedRunner:
    """
    A journal runner that queues each write until the test runs it.
    """

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, function: Callable[[], Any]) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()
        self.queue.append((function, done))
        return done

    def step(self) -> None:
        function, done = self.queue.pop(0)
        done.callback(function())


def test_reopen_same_state(tmp_path: Path) -> None:
    """
    Reopening the journal replays every record into the same caps, intervals, holdings and requests.
    """
    journal, state = open_journal(tmp_path)
    commit(journal, state, history())
    journal, reopened = reopen(journal, tmp_path)
    assert reopened.seq == state.seq == len(history())
    assert reopened.caps == state.caps
    assert set(reopened.intervals) == set(state.intervals)
    live = reopened.interval("c1", START)
    assert live is not None
    assert live.available == 100000 - 10000 - 7500 - 500
    assert live.holdings == {"s1": Holding(8500, 0), "s2": Holding(7500, 0), "s3": Holding(500, 0)}
    assert live.requests == {"r1": 10000, "r2": 10000, "r3": 2500, "r4": 500}
    assert live.written_off == 1500
    expired = reopened.interval("c1", START - DAY)
    assert expired is not None
    assert expired.expired
    assert normalised(reopened) == normalised(state)


def test_empty_database(tmp_path: Path) -> None:
    """
    A new database opens as an empty state of the given data center.
    """
    journal, state = open_journal(tmp_path)
    assert state.dc == DC
    assert state.seq == 0
    assert state.caps == {}
    assert state.intervals == {}
    assert journal.count() == 0


def test_snapshot_then_records(tmp_path: Path) -> None:
    """
    After a snapshot, reopening replays only the later records and rebuilds the same state.
    """
    records = history()
    journal, state = open_journal(tmp_path)
    commit(journal, state, records[:6])
    journal.snapshot(state)
    commit(journal, state, records[6:])
    assert journal.records_since_snapshot == len(records) - 6

    journal, reopened = reopen(journal, tmp_path)
    assert journal.records_since_snapshot == len(records) - 6
    assert journal.count() == len(records)
    assert normalised(reopened) == normalised(state)


def test_snapshot_keeps_consumed(tmp_path: Path) -> None:
    """
    Consumption figures survive a reopen through the snapshot.
    """
    journal, state = open_journal(tmp_path)
    commit(journal, state, history())
    state.note_consumed("s1", "c1", START, 4000)
    journal.snapshot(state)
    journal, reopened = reopen(journal, tmp_path)
    interval = reopened.interval("c1", START)
    assert interval is not None
    assert interval.holdings["s1"].consumed == 4000


def test_consumed_not_journaled(tmp_path: Path) -> None:
    """
    Consumption figures noted after the last snapshot are not in the journal.
    """
    journal, state = open_journal(tmp_path)
    commit(journal, state, history())
    state.note_consumed("s1", "c1", START, 4000)
    journal, reopened = reopen(journal, tmp_path)
    interval = reopened.interval("c1", START)
    assert interval is not None
    assert interval.holdings["s1"].consumed == 0


def test_other_dc_rejected(tmp_path: Path) -> None:
    """
    Opening a database with another data center name raises StoreMismatchError naming both.
    """
    journal, _ = open_journal(tmp_path, dc="dc1")
    journal.close()
    with pytest.raises(StoreMismatchError) as raised:
        open_journal(tmp_path, dc="dc2")
    assert "'dc1'" in str(raised.value)
    assert "'dc2'" in str(raised.value)


def test_other_scale_rejected(tmp_path: Path) -> None:
    """
    Opening a database with another scale raises StoreMismatchError naming both.
    """
    journal, _ = open_journal(tmp_path, scale=2)
    journal.close()
    with pytest.raises(StoreMismatchError) as raised:
        open_journal(tmp_path, scale=3)
    assert "'2'" in str(raised.value)
    assert "'3'" in str(raised.value)


def test_mismatch_changes_nothing(tmp_path: Path) -> None:
    """
    After a rejected open, the database still opens with its own settings and state.
    """
    journal, state = open_journal(tmp_path)
    commit(journal, state, history())
    journal.close()
    with pytest.raises(StoreMismatchError):
        open_journal(tmp_path, dc="dc2", scale=3)
    _, reopened = open_journal(tmp_path)
    assert normalised(reopened) == normalised(state)


def test_wal_mode(tmp_path: Path) -> None:
    """
    The database is in WAL mode.
    """
    journal, _ = open_journal(tmp_path)
    connection = sqlite3.connect(journal.path)
    try:
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        connection.close()
    assert mode == "wal"


def test_append_fires_on_commit(tmp_path: Path) -> None:
    """
    An append's Deferred fires once its record is on disk, not before.
    """
    runner = SteppedRunner()
    journal = Journal(str(tmp_path / "master.sqlite3"), runner=runner)
    state = journal.open(DC, SCALE)
    state.apply(history()[0])
    written = journal.append(state.seq, history()[0])
    assert not written.called
    assert journal.count() == 0
    runner.step()
    assert written.called
    assert journal.count() == 1


def test_group_commit(tmp_path: Path) -> None:
    """
    Records appended while a write is running are written together in the next one.
    """
    runner = SteppedRunner()
    journal = Journal(str(tmp_path / "master.sqlite3"), runner=runner)
    state = journal.open(DC, SCALE)
    records = history()[:4]
    written = []
    for record in records:
        state.apply(record)
        written.append(journal.append(state.seq, record))
    assert len(runner.queue) == 1
    runner.step()
    assert len(runner.queue) == 1
    runner.step()
    assert all(done.called for done in written)
    assert journal.count() == 4


def test_barrier_after_appends(tmp_path: Path) -> None:
    """
    barrier() fires only once every earlier append is committed.
    """
    runner = SteppedRunner()
    journal = Journal(str(tmp_path / "master.sqlite3"), runner=runner)
    state = journal.open(DC, SCALE)
    first, second = history()[:2]
    state.apply(first)
    journal.append(state.seq, first)
    state.apply(second)
    second_written = journal.append(state.seq, second)
    synced = journal.barrier()
    assert not synced.called

    runner.step()
    assert journal.count() == 1
    assert not synced.called

    runner.step()
    assert second_written.called
    assert synced.called
    assert journal.count() == 2


def test_barrier_synchronous(tmp_path: Path) -> None:
    """
    With the synchronous runner, barrier() has fired when it returns.
    """
    journal, state = open_journal(tmp_path)
    commit(journal, state, history())
    synced = journal.barrier()
    assert synced.called
    assert journal.count() == len(history())


def test_snapshot_round_trip() -> None:
    """
    A state rebuilt from its JSON snapshot has the same snapshot.
    """
    state = MasterState(DC)
    for record in history():
        state.apply(record)
    state.note_consumed("s1", "c1", START, 3000)
    state.note_consumed("s2", "c1", START, 7500)
    snapshot = state.to_snapshot()
    rebuilt = MasterState.from_snapshot(json.loads(json.dumps(snapshot)))
    assert rebuilt.to_snapshot() == snapshot
    assert rebuilt.seq == state.seq
    assert rebuilt.caps == state.caps


def test_apply_counts_records() -> None:
    """
    Each applied record raises seq by one.
    """
    state = MasterState(DC)
    for count, record in enumerate(history(), start=1):
        state.apply(record)
        assert state.seq == count


def test_apply_unknown_type() -> None:
    """
    A record of an unknown type raises KeyError, as documented.
    """
    state = MasterState(DC)
    with pytest.raises(KeyError):
        state.apply({"type": "interval.rename", "cap": "c1", "start": START})


def test_apply_cap_set() -> None:
    """
    cap.set stores the definition, and a second one replaces it.
    """
    state = MasterState(DC)
    state.apply({"type": "cap.set", "cap": CAP.to_record()})
    assert state.caps == {"c1": CAP}
    changed = CapDefinition(**{**CAP.to_record(), "total": 500})
    state.apply({"type": "cap.set", "cap": changed.to_record()})
    assert state.caps == {"c1": changed}


def test_apply_cap_delete() -> None:
    """
    cap.delete removes the definition and ignores an unknown id.
    """
    state = fresh_state()
    state.apply({"type": "cap.delete", "id": "c1"})
    assert state.caps == {}
    state.apply({"type": "cap.delete", "id": "absent"})
    assert state.caps == {}


def test_apply_interval_create() -> None:
    """
    interval.create makes the whole total available.
    """
    state = fresh_state()
    interval = state.interval("c1", START)
    assert interval is not None
    assert interval.total == 1000
    assert interval.available == 1000
    assert interval.end == START + DAY
    assert not interval.expired
    assert interval.holdings == {}


def test_update_raises_total() -> None:
    """
    interval.update raises available by the increase of the total and sets the new end.
    """
    state = fresh_state()
    state.apply(grant("s1", "r1", 300))
    state.apply({"type": "interval.update", "cap": "c1", "start": START, "end": START + 2 * DAY, "total": 1500})
    interval = state.interval("c1", START)
    assert interval is not None
    assert interval.total == 1500
    assert interval.available == 1200
    assert interval.end == START + 2 * DAY
    assert interval.holdings["s1"].granted == 300


def test_update_lowers_total() -> None:
    """
    interval.update below what is handed out leaves available negative.
    """
    state = fresh_state()
    state.apply(grant("s1", "r1", 800))
    state.apply({"type": "interval.update", "cap": "c1", "start": START, "end": START + DAY, "total": 500})
    interval = state.interval("c1", START)
    assert interval is not None
    assert interval.total == 500
    assert interval.available == -300


def test_update_revives_expired() -> None:
    """
    interval.update of an expired interval makes it live again.
    """
    state = fresh_state()
    state.apply(interval_record("interval.expire"))
    state.apply({"type": "interval.update", "cap": "c1", "start": START, "end": START + 2 * DAY, "total": 1000})
    interval = state.interval("c1", START)
    assert interval is not None
    assert not interval.expired
    assert list(state.live_intervals()) == [interval]


def test_apply_expire() -> None:
    """
    interval.expire stops serving an interval but keeps it for queries.
    """
    state = fresh_state()
    state.apply(grant("s1", "r1", 300))
    state.note_consumed("s1", "c1", START, 200)
    state.apply(interval_record("interval.expire"))
    interval = state.interval("c1", START)
    assert interval is not None
    assert interval.expired
    assert interval.consumed == 200
    assert list(state.live_intervals()) == []


@pytest.mark.parametrize("kind", ["interval.delete", "interval.purge"])
def test_apply_delete(kind: str) -> None:
    """
    interval.delete and interval.purge remove the interval, and ignore a missing one.
    """
    state = fresh_state()
    state.apply(create(start=START + DAY))
    state.apply(interval_record(kind))
    assert state.interval("c1", START) is None
    assert state.interval("c1", START + DAY) is not None
    state.apply(interval_record(kind))
    assert state.interval("c1", START) is None


def test_apply_grant() -> None:
    """
    grant moves the amount from available to the server's holding and records the request.
    """
    state = fresh_state()
    state.apply(grant("s1", "r1", 300))
    state.apply(grant("s1", "r2", 100))
    interval = state.interval("c1", START)
    assert interval is not None
    assert interval.available == 600
    assert interval.holdings["s1"].granted == 400
    assert interval.requests == {"r1": 300, "r2": 100}


def test_apply_return() -> None:
    """
    return moves the amount from the holding back to available and records the request.
    """
    state = fresh_state()
    state.apply(grant("s1", "r1", 300))
    state.apply(give_back("s1", "r2", 120))
    interval = state.interval("c1", START)
    assert interval is not None
    assert interval.available == 820
    assert interval.holdings["s1"].granted == 180
    assert interval.requests["r2"] == 120


def test_apply_revoke() -> None:
    """
    revoke takes part of a grant back and lowers the amount recorded for its request.
    """
    state = fresh_state()
    state.apply(grant("s1", "r1", 300))
    state.apply(revoke("s1", "r1", 100))
    interval = state.interval("c1", START)
    assert interval is not None
    assert interval.available == 800
    assert interval.holdings["s1"].granted == 200
    assert interval.requests["r1"] == 200


def test_apply_writeoff() -> None:
    """
    writeoff removes the amount from the holding without making it available again.
    """
    state = fresh_state()
    state.apply(grant("s1", "r1", 300))
    state.apply(writeoff("s1", 250))
    interval = state.interval("c1", START)
    assert interval is not None
    assert interval.available == 700
    assert interval.holdings["s1"].granted == 50
    assert interval.written_off == 250


def test_records_conserve_total() -> None:
    """
    Under random grants, returns, revokes and write-offs, total = available + granted + written off.
    """
    rng = random.Random(1111)
    state = fresh_state()
    interval = state.interval("c1", START)
    assert interval is not None
    grants: dict[str, tuple[str, int]] = {}
    for number in range(2000):
        server = rng.choice(["s1", "s2", "s3"])
        granted = interval.holding(server).granted
        action = rng.random()
        if action < 0.4 and interval.available > 0:
            amount = rng.randint(1, interval.available)
            state.apply(grant(server, f"g{number}", amount))
            grants[f"g{number}"] = (server, amount)
        elif action < 0.6 and granted > 0:
            state.apply(give_back(server, f"b{number}", rng.randint(1, granted)))
        elif action < 0.8 and grants:
            request = rng.choice(sorted(grants))
            owner, amount = grants.pop(request)
            limit = min(amount, interval.holding(owner).granted)
            if limit > 0:
                state.apply(revoke(owner, request, rng.randint(1, limit)))
        elif granted > 0:
            state.apply(writeoff(server, rng.randint(1, granted)))
        granted_total = sum(holding.granted for holding in interval.holdings.values())
        assert interval.available + granted_total + interval.written_off == interval.total
        assert interval.available >= 0
        assert all(holding.granted >= 0 for holding in interval.holdings.values())


def test_consumed_never_lowered() -> None:
    """
    A lower consumption figure reported later does not lower the recorded one.
    """
    state = fresh_state()
    state.apply(grant("s1", "r1", 500))
    state.note_consumed("s1", "c1", START, 300)
    state.note_consumed("s1", "c1", START, 200)
    interval = state.interval("c1", START)
    assert interval is not None
    assert interval.holdings["s1"].consumed == 300
    assert interval.holdings["s1"].available == 200


def test_consumed_clamped_to_granted() -> None:
    """
    A consumption figure above what the server was granted is recorded as the granted amount.
    """
    state = fresh_state()
    state.apply(grant("s1", "r1", 500))
    state.note_consumed("s1", "c1", START, 9000)
    interval = state.interval("c1", START)
    assert interval is not None
    assert interval.holdings["s1"].consumed == 500
    assert interval.holdings["s1"].available == 0
    assert interval.consumed == 500


def test_consumed_unknown_interval() -> None:
    """
    A consumption figure for an interval the master does not have is ignored.
    """
    state = fresh_state()
    before = state.to_snapshot()
    state.note_consumed("s1", "c1", START + 5 * DAY, 100)
    state.note_consumed("s1", "absent", START, 100)
    assert state.to_snapshot() == before


def test_consumed_not_a_record() -> None:
    """
    note_consumed leaves seq unchanged, because consumption figures are not journaled.
    """
    state = fresh_state()
    state.apply(grant("s1", "r1", 500))
    seq = state.seq
    state.note_consumed("s1", "c1", START, 100)
    assert state.seq == seq
