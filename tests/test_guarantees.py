"""
Randomized fault schedules against one data center, checking the escrow
guarantees after every step and at quiescence.

Each schedule mixes consumes of random sizes at random servers with master
crashes that lose the journal writes not yet committed, cut connections,
graceful server stops and restarts, raised and lowered totals, and time
passing.  The checks:

 - never overspend: successful consumes never exceed the total, or what was
   consumed or held out of reach when the total was lowered;
 - conservation: at quiescence the share equals the master's available
   plus what the servers hold plus what they consumed;
 - acknowledged means durable: after a crash and restart the master still
   counts every grant a server received.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from twisted.internet.task import Clock

from tests.harness import MasterRig, Network, ServerRig
from volumecap.errors import CappedError, UnavailableError, UnknownCapError

UNIT = 100


@dataclass
class Run:
    master: MasterRig
    chooser: random.Random
    servers: dict[str, ServerRig] = field(default_factory=dict)
    stopped: list[ServerRig] = field(default_factory=list)
    succeeded: int = 0
    lost: int = 0
    limit: int = 0
    total: int = 0
    generation: int = 0

    def live(self) -> list[ServerRig]:
        return list(self.servers.values())

    def add_server(self) -> None:
        self.generation += 1
        name = f"s{self.generation}"
        self.servers[name] = ServerRig(name, self.master, topup_wait=0.25)

    def set_total(self, whole: int) -> None:
        units = whole * UNIT
        if units < self.total:
            # What disconnected servers hold or have in flight is out of
            # reach of a recall; the master's figure covers both.
            holdings = self.master.interval("c").holdings
            unreachable = sum(
                holdings[name].available
                for name in holdings
                if name not in self.master.local.servers
            )
            self.limit = max(units, self.succeeded + unreachable)
        else:
            self.limit = max(self.limit, units)
        self.total = units
        self.master.set_cap(id="c", total=whole)

    def consume(self) -> None:
        rig = self.chooser.choice(self.live())
        units = self.chooser.choice([1, 10, 50, UNIT, 3 * UNIT, 40 * UNIT])
        outcome = rig.consume("c", units)
        if isinstance(outcome, int):
            assert outcome >= 0
            self.succeeded += units
        else:
            assert isinstance(outcome, (CappedError, UnavailableError, UnknownCapError)), outcome

    def crash_master(self) -> None:
        self.master.crash()
        for rig in self.live():
            rig.endpoint.cut()
        self.master.network.flush()
        self.master.start()

    def cut_server(self) -> None:
        rig = self.chooser.choice(self.live())
        rig.endpoint.cut()
        self.master.network.flush()

    def stop_server(self) -> None:
        if len(self.servers) < 2:
            return
        name = self.chooser.choice(sorted(self.servers))
        rig = self.servers.pop(name)
        stopping = rig.server.stopService()
        for _ in range(20):
            if stopping.called:
                break
            self.settle(0.5)
        assert stopping.called
        self.lost += sum(held.available for held in rig.server.holdings)
        self.lost += sum(units for _, _, units in rig.server._returns.values())
        self.stopped.append(rig)

    def settle(self, seconds: float = 0.0) -> None:
        """
        Let writes commit, bytes move and timers fire.
        """
        for _ in range(5):
            self.master.commit_writes()
            self.master.network.flush()
        if seconds:
            self.master.clock.advance(seconds)
            for _ in range(5):
                self.master.commit_writes()
                self.master.network.flush()

    def check_spend(self) -> None:
        assert self.succeeded <= self.limit, (self.succeeded, self.limit)

    def quiesce(self) -> None:
        for _ in range(12):
            self.settle(1.0)

    def check_conservation(self) -> None:
        interval = self.master.interval("c")
        held = sum(rig.held("c").available for rig in self.live() if _has_current(rig))
        assert interval.total == self.total
        assert interval.available + held + self.succeeded + self.lost == interval.total
        for rig in self.live():
            if not _has_current(rig):
                continue
            slice = rig.held("c")
            holding = interval.holdings.get(rig.server.server_name)
            granted = holding.granted if holding else 0
            assert granted == slice.available + slice.consumed
            assert holding is None or holding.consumed == slice.consumed


def _has_current(rig: ServerRig) -> bool:
    try:
        rig.held("c")
    except UnknownCapError:
        return False
    return True


@pytest.mark.parametrize("seed", range(40))
def test_random_fault_schedule(tmp_path: object, seed: int) -> None:
    """
    Random consumes, crashes, cuts, stops and total changes never overspend
    and conserve every unit at quiescence.
    """
    clock = Clock()
    clock.advance(1804982400 + 3600)
    network = Network()
    master = MasterRig(str(tmp_path), clock, network, manual=True)
    run = Run(master, random.Random(seed))
    run.set_total(1000)
    for _ in range(3):
        run.add_server()
    run.settle()

    actions = [
        (run.consume, 60),
        (lambda: run.settle(), 10),
        (lambda: run.settle(run.chooser.choice([0.1, 0.3, 1.0])), 8),
        (run.crash_master, 2),
        (run.cut_server, 3),
        (run.stop_server, 1),
        (run.add_server, 1),
        (lambda: run.set_total(run.chooser.choice([200, 600, 1000, 1500])), 2),
    ]
    population = [action for action, weight in actions for _ in range(weight)]
    for _ in range(400):
        run.chooser.choice(population)()
        run.check_spend()

    run.quiesce()
    run.check_spend()
    run.check_conservation()


def crashable(directory: object) -> tuple[MasterRig, ServerRig]:
    """
    Return a master whose journal writes wait for the test, with a cap of
    1000 and one joined server.
    """
    clock = Clock()
    clock.advance(1804982400 + 3600)
    master = MasterRig(str(directory), clock, Network(), manual=True)
    master.set_cap(id="c", total=1000)
    return master, ServerRig("s1", master)


def test_acknowledged_grant_survives_crash(tmp_path: object) -> None:
    """
    A grant the server received is still counted after a master crash that
    loses every write not yet committed.
    """
    master, rig = crashable(tmp_path)
    network = master.network
    assert rig.consume("c", UNIT) == 99 * UNIT
    granted_before = master.interval("c").holdings["s1"].granted

    master.crash()
    rig.endpoint.cut()
    network.flush()
    master.start()
    assert master.interval("c").holdings["s1"].granted == granted_before
    assert master.interval("c").available == 900 * UNIT


def test_unacknowledged_grant_retried_once(tmp_path: object) -> None:
    """
    A top-up whose grant was lost with the master's uncommitted writes is
    sent again under the same request id after the restart and granted
    once.
    """
    master, rig = crashable(tmp_path)
    network, clock = master.network, master.clock
    outcome = rig.server.consume("c", UNIT)
    network.flush()
    assert not outcome.called
    assert master.interval("c").available == 900 * UNIT

    master.crash()
    rig.endpoint.cut()
    network.flush()
    master.start()
    assert master.interval("c").available == 1000 * UNIT

    clock.advance(1.0)
    for _ in range(5):
        master.commit_writes()
        network.flush()
    assert rig.server.synced
    assert rig.held("c").available == 100 * UNIT
    interval = master.interval("c")
    assert interval.available == 900 * UNIT
    assert len(interval.requests) == 1
