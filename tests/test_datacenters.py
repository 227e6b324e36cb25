"""
Several data centers sharing caps through the in-memory broker, on a Clock.
"""

from __future__ import annotations

import json
import random
from typing import Any, Iterator

import pytest
from twisted.internet.task import Clock

from tests.harness import START, MasterRig, Network, ServerRig
from volumecap.errors import CappedError, UnavailableError, UnknownCapError
from volumecap.master.messages import encode
from volumecap.messaging import MemoryBroker

UNIT = 100


class World:
    """
    Data centers with their own masters, one broker and one clock.
    """

    def __init__(self, directory: str, names: tuple[str, ...]) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.network = Network()
        self.broker = MemoryBroker()
        self.directory = directory
        self.names = names
        self.masters = {
            name: MasterRig(f"{directory}/{name}", self.clock, self.network, dc=name, dcs=names, broker=self.broker)
            for name in names
        }
        self.settle()

    def settle(self, seconds: float = 0.0) -> None:
        """
        Move messages, bytes and journal writes until nothing moves, then let
        C{seconds} pass and settle again.
        """
        for _ in range(50):
            moved = self.broker.deliver()
            for master in self.masters.values():
                master.commit_writes()
            self.network.flush()
            if not moved:
                break
        if seconds:
            self.clock.advance(seconds)
            self.settle()

    def interval(self, name: str, cap_id: str = "c") -> Any:
        return self.masters[name].interval(cap_id)

    def shares(self, cap_id: str = "c") -> dict[str, int]:
        return {name: self.interval(name, cap_id).total for name in self.names}


@pytest.fixture
def two(tmp_path: Any) -> Iterator[World]:
    world = World(str(tmp_path), ("a", "b"))
    yield world
    for master in world.masters.values():
        master.service.stopService()


@pytest.fixture
def three(tmp_path: Any) -> Iterator[World]:
    world = World(str(tmp_path), ("a", "b", "c"))
    yield world
    for master in world.masters.values():
        master.service.stopService()


def test_shares_and_topups(two: World) -> None:
    """
    A total of 1000 over two data centers is 500 each.  A server's top-up is
    50 and its threshold 5, so its holding goes 50, 5, 55 and its master's
    available 500, 450, 400.
    """
    two.masters["a"].set_cap(id="c", total=1000)
    two.settle()
    assert two.shares() == {"a": 500 * UNIT, "b": 500 * UNIT}
    server = ServerRig("s1", two.masters["a"])
    assert server.consume("c", UNIT) == 49 * UNIT
    assert two.interval("a").available == 450 * UNIT
    for _ in range(43):
        server.consume("c", UNIT)
    assert server.consume("c", UNIT) == 5 * UNIT
    two.settle()
    assert server.held("c").available == 55 * UNIT
    assert two.interval("a").available == 400 * UNIT


def test_shares_split_exactly(three: World) -> None:
    """
    100.00 over three data centers is 33.34, 33.33 and 33.33, the extra
    unit going to the first name in sorted order.
    """
    three.masters["b"].set_cap(id="c", total="100.00")
    three.settle()
    assert three.shares() == {"a": 3334, "b": 3333, "c": 3333}


def test_demand_at_one_data_center(two: World) -> None:
    """
    With demand only at A and no server at B, A serves exactly the whole
    1000 by drawing B's share, then raises CappedError.  The shares still
    add up to the total.
    """
    two.masters["a"].set_cap(id="c", total=1000)
    two.settle()
    server = ServerRig("s1", two.masters["a"])
    served = 0
    for _ in range(5000):
        outcome = server.consume("c", UNIT)
        if isinstance(outcome, CappedError):
            break
        if isinstance(outcome, UnavailableError):
            two.settle(0.3)
            continue
        assert isinstance(outcome, int)
        served += 1
        two.settle()
    assert served == 1000
    assert sum(two.shares().values()) == 1000 * UNIT
    assert two.interval("b").available == 0


def test_duplicate_grant_and_request(two: World) -> None:
    """
    A request and its grant delivered twice move 100 once: shares end
    600/400, not 700/300.
    """
    two.masters["a"].set_cap(id="c", total=1000)
    two.settle()
    remote = two.masters["a"].remote
    assert remote is not None
    interval = two.interval("a")
    remote.request_more(interval, 100 * UNIT)
    for master in two.masters.values():
        master.commit_writes()
    requests = [m for m in two.broker.queue("b").ready if json.loads(m.body)["type"] == "topup.request"]
    assert len(requests) == 1
    two.broker.duplicate("b", two.broker.queue("b").ready.index(requests[0]))
    for _ in range(3):
        two.broker.deliver(only="b")
        two.masters["b"].commit_writes()
    grants = [m for m in two.broker.queue("a").ready if json.loads(m.body)["type"] == "topup.grant"]
    assert len(grants) == 2
    two.broker.duplicate("a", two.broker.queue("a").ready.index(grants[0]))
    two.settle()
    assert two.shares() == {"a": 600 * UNIT, "b": 400 * UNIT}
    assert two.interval("a").available == 600 * UNIT


def test_reordered_figures(two: World) -> None:
    """
    Figures from B with sequence 8 arriving before 7 leave A with 8's.
    """
    two.masters["a"].set_cap(id="c", total=1000)
    two.settle()
    interval = two.interval("b")
    remote = two.masters["a"].remote
    assert remote is not None

    def figures(seq: int, available: str) -> bytes:
        item = {
            "cap": "c",
            "start": interval.start,
            "end": interval.end,
            "total": "500.00",
            "available": available,
            "consumed": "0.00",
        }
        return encode("intervals", "b", 10**9 + seq, {"intervals": [item]}, ["a", "b"])

    two.broker.route("all.intervals", figures(8, "123.00"))
    two.broker.route("all.intervals", figures(7, "456.00"))
    two.settle()
    view = remote.views[("b", "c", interval.start)]
    assert view.available == 123 * UNIT
    assert view.seq == 10**9 + 8


def test_cap_changes_reach_everyone(three: World) -> None:
    """
    A cap created, raised, lowered and deleted at A is the same at B and C.
    """
    a = three.masters["a"]
    a.set_cap(id="c", total=900)
    three.settle()
    for name in ("b", "c"):
        assert three.masters[name].state.caps["c"] == a.state.caps["c"]
    assert sum(three.shares().values()) == 900 * UNIT
    a.set_cap(id="c", total=1200)
    three.settle()
    assert three.shares() == {"a": 400 * UNIT, "b": 400 * UNIT, "c": 400 * UNIT}
    a.set_cap(id="c", total=300)
    three.settle()
    assert three.shares() == {"a": 100 * UNIT, "b": 100 * UNIT, "c": 100 * UNIT}
    a.meta.delete_cap("c")
    a.commit_writes()
    three.settle()
    for master in three.masters.values():
        assert "c" not in master.state.caps
        assert list(master.state.live_intervals()) == []


def test_concurrent_edits_resolve_alike(two: World) -> None:
    """
    Two data centers editing the same cap at once end with the same
    definition: the higher version wins everywhere.
    """
    two.masters["a"].set_cap(id="c", total=1000)
    two.masters["b"].set_cap(id="c", total=2000)
    two.settle()
    a, b = two.masters["a"].state, two.masters["b"].state
    assert a.caps["c"] == b.caps["c"]
    assert a.version("c") == b.version("c")
    assert a.caps["c"].total == 2000 * UNIT


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        json.dumps({"v": 1, "id": "x", "type": "nonsense", "sender": "b", "seq": 1, "body": {}}).encode(),
        json.dumps({"v": 1, "id": "x", "type": "topup.request", "sender": "b", "seq": "1", "body": {}}).encode(),
        encode("topup.request", "b", 5, {"request": "r", "cap": "c", "start": "noon", "amount": "1", "version": [1, "b"]}),
        encode("intervals", "zz", 5, {"intervals": []}),
    ],
)
def test_malformed_dead_lettered(two: World, body: bytes) -> None:
    """
    A malformed or unknown message goes to the dead-letter queue, changes
    nothing, and later messages are still handled.
    """
    a = two.masters["a"]
    seq = a.state.seq
    two.broker.route("dc.a.topup", body)
    two.settle()
    assert [message.body for message in two.broker.queue("a").dead] == [body]
    assert a.state.seq == seq
    two.masters["b"].set_cap(id="c", total=1000)
    two.settle()
    assert "c" in a.state.caps


def test_changes_during_outage(two: World) -> None:
    """
    Cap changes made while the broker is down reach the other data center
    once it is back, and servers keep serving from their holdings.
    """
    two.masters["a"].set_cap(id="c", total=1000)
    two.settle()
    server = ServerRig("s1", two.masters["b"])
    assert isinstance(server.consume("c", UNIT), int)
    for _ in range(3):
        two.broker.stop()
        two.masters["a"].set_cap(id="c", total=two.masters["a"].state.caps["c"].total // UNIT + 100)
        two.masters["a"].set_cap(id=f"new-{two.clock.seconds()}", total=10)
        assert isinstance(server.consume("c", UNIT), int)
        two.broker.start()
        two.settle()
        assert two.masters["b"].state.caps == two.masters["a"].state.caps
    assert two.masters["b"].state.caps["c"].total == 1300 * UNIT


def test_three_data_centers_random_demand(three: World) -> None:
    """
    Random demand at three data centers never serves more than the total,
    and at quiescence the shares add up to the total.
    """
    three.masters["a"].set_cap(id="c", total=600)
    three.settle()
    servers = [ServerRig(f"{name}-s{i}", three.masters[name]) for name in three.names for i in range(2)]
    chooser = random.Random(11)
    served = 0
    for _ in range(3000):
        server = chooser.choice(servers)
        units = chooser.choice([UNIT, 3 * UNIT, 7 * UNIT])
        outcome = server.consume("c", units)
        if isinstance(outcome, int):
            served += units
        else:
            assert isinstance(outcome, (CappedError, UnavailableError, UnknownCapError))
        if chooser.random() < 0.2:
            three.settle(chooser.choice([0.0, 0.3, 1.0]))
        assert served <= 600 * UNIT
    for _ in range(10):
        three.settle(1.0)
    assert sum(three.shares().values()) == 600 * UNIT
    held = sum(server.held("c").available for server in servers)
    available = sum(three.interval(name).available for name in three.names)
    assert served + held + available == 600 * UNIT


def test_request_to_silent_data_center_abandoned(three: World) -> None:
    """
    A request to a data center that never responds is abandoned after three
    attempts, and the next request goes to one that responds.
    """
    a = three.masters["a"]
    a.set_cap(id="c", total=900)
    three.settle(1.0)
    three.broker.drop("c")
    remote = a.remote
    assert remote is not None
    interval = three.interval("a")
    views = remote.views
    views[("c", "c", interval.start)].available = 10**6
    remote.request_more(interval, 50 * UNIT)
    three.settle()
    (request,) = a.state.remote_requests
    assert a.state.remote_requests[request]["dc"] == "c"
    for _ in range(4):
        three.settle(2.0)
    assert request not in a.state.remote_requests
    views[("c", "c", interval.start)].updated = 0.0
    remote.request_more(interval, 50 * UNIT)
    three.settle()
    three.settle(1.0)
    # A requests two top-ups (2 x 30); B has 300 and gives all of that.
    assert three.shares()["a"] == 360 * UNIT
    assert three.interval("b").total == 240 * UNIT


def drain(world: World, server: ServerRig, units: int = UNIT) -> int:
    """
    Consume C{units} at a time until capped and return how many succeeded.
    """
    served = 0
    for _ in range(5000):
        outcome = server.consume("c", units)
        if isinstance(outcome, CappedError):
            return served
        if isinstance(outcome, UnavailableError):
            world.settle(0.3)
            continue
        assert isinstance(outcome, int)
        served += 1
        world.settle()
    raise AssertionError("never capped")


def test_raise_after_draws_keeps_moves(two: World) -> None:
    """
    Raising a total after A drew and consumed B's share adds each data
    center's split of the difference to its share: the data centers serve
    exactly the new total, not a fresh split of it.
    """
    two.masters["a"].set_cap(id="c", total=100)
    two.settle()
    at_a = ServerRig("sa", two.masters["a"])
    assert drain(two, at_a) == 100
    two.masters["b"].set_cap(id="c", total=120)
    two.settle(1.0)
    assert two.shares() == {"a": 110 * UNIT, "b": 10 * UNIT}
    at_b = ServerRig("sb", two.masters["b"])
    served = drain(two, at_b) + drain(two, at_a)
    assert served == 20


def test_end_change_keeps_shares(two: World) -> None:
    """
    Changing only a cap's end after draws keeps the moves, so the data
    centers still serve exactly the total.
    """
    two.masters["a"].set_cap(id="c", total=100)
    two.settle()
    at_a = ServerRig("sa", two.masters["a"])
    for _ in range(80):
        at_a.consume("c", UNIT)
        two.settle()
    assert two.interval("a").moved > 0
    at_b = ServerRig("sb", two.masters["b"])
    two.masters["b"].set_cap(id="c", total=100, end="2028-06-01")
    two.settle()
    assert two.interval("a").moved > 0
    assert sum(two.shares().values()) == 100 * UNIT
    assert drain(two, at_b) + drain(two, at_a) == 20


def test_lower_after_draws_covers_deficit(two: World) -> None:
    """
    Lowering a total below B's split after A drew B's share leaves B with a
    negative share; A covers the deficit, so the interval serves exactly
    the new total.
    """
    two.masters["a"].set_cap(id="c", total=100)
    two.settle()
    at_a = ServerRig("sa", two.masters["a"])
    for _ in range(60):
        at_a.consume("c", UNIT)
        two.settle()
    for _ in range(3):
        two.settle(1.0)
    left_at_b = two.interval("b").total // UNIT
    assert 0 < left_at_b < 19
    # B's split of the decrease is one more than what B has left.
    lowered = 100 - 2 * left_at_b - 2
    two.masters["a"].set_cap(id="c", total=lowered)
    two.settle()
    assert two.interval("b").total == -UNIT
    for _ in range(3):
        two.settle(1.0)
    assert sum(two.shares().values()) == lowered * UNIT
    assert two.interval("b").total == 0
    at_b = ServerRig("sb", two.masters["b"])
    assert 60 + drain(two, at_a) + drain(two, at_b) == lowered


def test_mismatched_data_centers_rejected(two: World) -> None:
    """
    A message from a master started with another list of data centers is
    dead-lettered and changes nothing.
    """
    a = two.masters["a"]
    seq = a.state.seq
    cap = {
        "id": "x",
        "interval": "day",
        "start": START - 86400,
        "end": START + 86400,
        "total": "30.00",
        "first_total": None,
        "timezone": "UTC",
    }
    body = encode("caps", "b", 5, {"caps": [{"id": "x", "version": [1, "b"], "cap": cap}]}, ["a", "b", "north"])
    two.broker.route("all.caps", body)
    two.settle()
    assert "x" not in a.state.caps
    assert a.state.seq == seq
    assert [message.body for message in two.broker.queue("a").dead] == [body]
