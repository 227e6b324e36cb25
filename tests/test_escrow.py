"""
Escrow between one master and its servers, in process on a Clock.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.harness import MasterRig, ServerRig
from volumecap.errors import CappedError, InvalidAmountError, UnavailableError, UnknownCapError

UNIT = 100  # units per whole amount at scale 2


def test_first_topup_and_threshold(master: MasterRig) -> None:
    """
    A server's first top-up is 10% of the total and it tops up again when
    its holding falls to 10% of a top-up.
    """
    master.set_cap(id="c", total=1000)
    server = ServerRig("s1", master)
    interval = master.interval("c")
    assert interval.available == 1000 * UNIT

    assert server.consume("c", UNIT) == 99 * UNIT
    assert interval.available == 900 * UNIT

    for _ in range(88):
        server.consume("c", UNIT)
    assert server.held("c").available == 11 * UNIT
    assert interval.available == 900 * UNIT

    assert server.consume("c", UNIT) == 10 * UNIT
    master.network.flush()
    assert server.held("c").available == 110 * UNIT
    assert interval.available == 800 * UNIT


def test_ten_servers_consume_exactly_total(master: MasterRig) -> None:
    """
    Ten servers consuming 1 in random order, each until it is first capped,
    succeed exactly 1000 times in total, and nothing anywhere goes negative.
    """
    master.set_cap(id="c", total=1000)
    servers = [ServerRig(f"s{i}", master) for i in range(10)]

    chooser = random.Random(7)
    succeeded = 0
    retries = 0
    capped: set[str] = set()
    while len(capped) < len(servers):
        server = chooser.choice(servers)
        if server.server.server_name in capped:
            continue
        outcome = server.consume("c", UNIT)
        if isinstance(outcome, CappedError):
            capped.add(server.server.server_name)
        elif isinstance(outcome, UnavailableError):
            # The top-up outlived the wait; an application retries.
            retries += 1
            assert retries < 1000
        else:
            assert isinstance(outcome, int) and outcome >= 0
            succeeded += 1
        if chooser.random() < 0.1:
            master.clock.advance(0.3)
            master.network.flush()

    assert succeeded == 1000
    for server in servers:
        assert isinstance(server.consume("c", UNIT), CappedError)
        assert server.held("c").available == 0
    interval = master.interval("c")
    assert interval.available == 0
    assert all(holding.granted >= 0 for holding in interval.holdings.values())


def test_one_server_consumes_all(master: MasterRig) -> None:
    """
    One server alone consumes the whole total: partial grants serve the
    last units.
    """
    master.set_cap(id="c", total=1000)
    server = ServerRig("s1", master)
    results = [server.consume("c", 3 * UNIT) for _ in range(333)]
    assert all(isinstance(result, int) for result in results)
    assert server.consume("c", UNIT) == 0
    assert isinstance(server.consume("c", UNIT), CappedError)
    assert master.interval("c").available == 0


def test_large_consume_tops_up(master: MasterRig) -> None:
    """
    A consume larger than the holding succeeds after a top-up while the
    master has enough.
    """
    master.set_cap(id="c", total=1000)
    server = ServerRig("s1", master)
    assert server.consume("c", UNIT) == 99 * UNIT
    assert server.consume("c", 450 * UNIT) == 0
    master.network.flush()
    assert server.held("c").available == 100 * UNIT
    assert master.interval("c").available == 449 * UNIT
    assert isinstance(server.consume("c", 550 * UNIT), CappedError)
    assert server.consume("c", 549 * UNIT) == 0


def test_fractional_amounts(master: MasterRig) -> None:
    """
    A total of 1.00 serves ten consumes of 0.10, then is capped.
    """
    master.set_cap(id="c", total="1.00")
    server = ServerRig("s1", master)
    results = [server.consume("c", 10) for _ in range(10)]
    assert all(isinstance(result, int) for result in results)
    assert server.held("c").available == 0
    assert isinstance(server.consume("c", 10), CappedError)


def test_unknown_cap_no_round_trip(master: MasterRig) -> None:
    """
    An unknown cap id fails locally every time, with no command to the
    master and no record created.
    """
    master.set_cap(id="c", total=1000)
    server = ServerRig("s1", master)
    assert master.factory is not None
    before = sum(master.factory.counts.values())
    seq = master.state.seq
    for _ in range(100):
        assert isinstance(server.consume("nope", UNIT), UnknownCapError)
    master.network.flush()
    assert sum(master.factory.counts.values()) == before
    assert master.state.seq == seq
    assert "nope" not in master.state.caps


def test_not_joined_is_unavailable(master: MasterRig) -> None:
    """
    A server that has not joined a master raises UnavailableError.
    """
    master.set_cap(id="c", total=1000)
    factory, master.factory = master.factory, None
    server = ServerRig("s1", master)
    assert isinstance(server.consume("c", UNIT), UnavailableError)
    master.factory = factory


def test_master_keeps_current_and_next(master: MasterRig) -> None:
    """
    The master keeps the current and the next interval of a daily cap, and
    creates the following one at the boundary.
    """
    master.set_cap(id="c", total=1000, timezone="America/New_York")
    live = [i for i in master.state.intervals_of("c") if not i.expired]
    assert len(live) == 2
    assert live[0].end == live[1].start
    assert live[0].end - live[0].start == 23 * 3600
    master.clock.advance(live[0].end - master.clock.seconds())
    live_after = [i for i in master.state.intervals_of("c") if not i.expired]
    assert [i.start for i in live_after] == [live[1].start, live[1].end]


def test_switch_at_boundary_without_round_trip(master: MasterRig) -> None:
    """
    A server with demand fetches a slice of the next interval before the
    boundary and serves it after the boundary with no command to the master.
    The expired interval is not served.
    """
    master.set_cap(id="c", total=1000)
    server = ServerRig("s1", master, prefetch=60.0)
    server.consume("c", UNIT)
    current = server.held("c")
    master.clock.advance(current.end - master.clock.seconds() - 30)
    master.network.flush()
    following = server.server.holdings.following(current)
    assert following is not None and following.available == 100 * UNIT

    assert master.factory is not None
    before = master.factory.counts[b"TopUp"]
    master.clock.advance(30)
    assert server.consume("c", UNIT) == 99 * UNIT
    assert master.factory.counts[b"TopUp"] == before
    assert server.held("c") is following


def test_expired_interval_not_served(master: MasterRig) -> None:
    """
    A cap whose single interval ended raises UnknownCapError.
    """
    master.set_cap(id="c", interval="single", start="2027-03-14T00:00:00Z", end="2027-03-14T13:00:00Z", total=10)
    server = ServerRig("s1", master)
    assert isinstance(server.consume("c", UNIT), int)
    master.clock.advance(3600)
    master.network.flush()
    assert isinstance(server.consume("c", UNIT), UnknownCapError)
    assert master.state.intervals_of("c")[0].expired


def test_raise_total(master: MasterRig) -> None:
    """
    Raising a total grows the master's available by the difference.
    """
    master.set_cap(id="c", total=1000)
    server = ServerRig("s1", master)
    server.consume("c", UNIT)
    assert master.set_cap(id="c", total=1500) == "updated"
    assert master.interval("c").available == 1400 * UNIT
    assert master.interval("c").total == 1500 * UNIT


def test_lower_total_recalls_excess(master: MasterRig) -> None:
    """
    Lowering a total below what was handed out recalls the excess from the
    servers' unconsumed holdings, and consumption already made remains.
    """
    master.set_cap(id="c", total=1000)
    server = ServerRig("s1", master)
    for _ in range(95):
        server.consume("c", UNIT)
    master.network.flush()
    assert server.held("c").available == 105 * UNIT
    master.set_cap(id="c", total=100)
    master.network.flush()
    interval = master.interval("c")
    assert server.held("c").available == 5 * UNIT
    assert interval.available == 0
    for _ in range(5):
        assert isinstance(server.consume("c", UNIT), int)
    assert isinstance(server.consume("c", UNIT), CappedError)


def test_lower_below_consumed(master: MasterRig) -> None:
    """
    Lowering a total below what was consumed stops serving: everything
    unconsumed is recalled and nothing more is granted.
    """
    master.set_cap(id="c", total=1000)
    server = ServerRig("s1", master)
    for _ in range(50):
        server.consume("c", UNIT)
    master.set_cap(id="c", total=20)
    master.network.flush()
    assert server.held("c").available == 0
    assert master.interval("c").available == -30 * UNIT
    assert isinstance(server.consume("c", UNIT), CappedError)


def test_dates_moved_out_of_range(master: MasterRig) -> None:
    """
    Moving a cap's start into the future expires its intervals, keeping
    their figures, and servers drop them.
    """
    master.set_cap(id="c", total=1000)
    server = ServerRig("s1", master)
    server.consume("c", UNIT)
    master.set_cap(id="c", total=1000, start="2027-06-01")
    intervals = master.state.intervals_of("c")
    assert [interval.expired for interval in intervals] == [True, True]
    assert list(master.state.live_intervals()) == []
    assert isinstance(server.consume("c", UNIT), UnknownCapError)


def test_dates_moved_back_keep_consumption(master: MasterRig) -> None:
    """
    Moving a cap's dates away and back revives the same interval with what
    was consumed, so the period is never served twice.
    """
    master.set_cap(id="c", total=100)
    server = ServerRig("s1", master)
    for _ in range(60):
        assert isinstance(server.consume("c", UNIT), int)
    master.set_cap(id="c", total=100, end="2027-02-01")
    master.set_cap(id="c", total=100)
    served = 0
    while isinstance(server.consume("c", UNIT), int):
        served += 1
    assert 60 + served <= 100
    assert master.interval("c").consumed + master.interval("c").available <= 100 * UNIT


def test_start_moved_within_day(master: MasterRig) -> None:
    """
    Moving a cap's start later within the current day keeps the day's
    interval and its consumption.
    """
    master.set_cap(id="c", total=100)
    server = ServerRig("s1", master)
    for _ in range(60):
        server.consume("c", UNIT)
    before = master.interval("c")
    master.set_cap(id="c", total=100, start="2027-03-14T06:00:00Z")
    after = master.interval("c")
    assert after is before
    assert after.holdings["s1"].granted >= 60 * UNIT


def test_delete_cap(master: MasterRig) -> None:
    """
    Deleting a cap deletes its intervals and servers drop them.  A top-up
    for the deleted interval gets an error response, and the connection
    stays up.
    """
    master.set_cap(id="c", total=1000)
    master.set_cap(id="d", total=1000)
    server = ServerRig("s1", master)
    server.consume("c", UNIT)
    held = server.held("c")
    master.meta.delete_cap("c")
    assert "c" not in master.state.caps
    assert master.state.intervals_of("c") == []
    master.network.flush()
    assert isinstance(server.consume("c", UNIT), UnknownCapError)

    # A top-up sent for the deleted interval, as a server that missed the
    # broadcast would.
    server.server.holdings.upsert(held.cap_id, held.start, held.end, held.topup, held.threshold)
    restored = server.server.holdings.get(held.cap_id, held.start)
    assert restored is not None
    restored.available = 0
    assert isinstance(server.consume("c", 500 * UNIT), UnknownCapError)
    assert server.server.link.protocol is not None
    assert isinstance(server.consume("d", UNIT), int)


def test_same_definition_twice(master: MasterRig) -> None:
    """
    Setting the same definition twice changes nothing and broadcasts
    nothing.
    """
    master.set_cap(id="c", total=1000)
    server = ServerRig("s1", master)
    seq = master.state.seq
    sent: list[object] = []
    master.local.ledger.observe(sent.append)
    assert master.set_cap(id="c", total=1000) == "unchanged"
    assert master.state.seq == seq
    assert sent == []
    assert server.server.synced


def test_server_stop_returns_holdings(master: MasterRig) -> None:
    """
    A server stopped normally returns what it holds; the master's available
    rises by exactly that.
    """
    master.set_cap(id="c", total=1000)
    server = ServerRig("s1", master)
    for _ in range(30):
        server.consume("c", UNIT)
    held = server.held("c").available
    before = master.interval("c").available
    stopping = server.server.stopService()
    master.network.flush()
    master.network.flush()
    assert stopping.called
    interval = master.interval("c")
    assert interval.available == before + held
    assert interval.holdings["s1"].available == 0
    assert interval.holdings["s1"].consumed == 30 * UNIT


@pytest.mark.parametrize("amount", [-5, 0, "NaN", "inf", "abc", "0.001", 10**30])
def test_invalid_amount_changes_nothing(master: MasterRig, amount: object) -> None:
    """
    Invalid amounts are rejected by the server's protocol and change
    nothing.
    """
    from volumecap.server.protocol import ApplicationLocator

    master.set_cap(id="c", total=1000)
    server = ServerRig("s1", master)
    server.consume("c", UNIT)
    locator = ApplicationLocator(server.server)
    before = (server.held("c").available, server.held("c").consumed, master.state.seq)
    with pytest.raises(InvalidAmountError):
        locator.consume("c", str(amount))
    assert (server.held("c").available, server.held("c").consumed, master.state.seq) == before


def test_consume_fast_path(master: MasterRig) -> None:
    """
    The application protocol's fast path returns Consume responses and typed
    errors to an AMP client, including consumes that wait for a top-up.
    """
    from twisted.protocols import amp
    from twisted.test import iosim

    from volumecap.server.protocol import ApplicationFactory
    from volumecap.wire.clientcommands import Consume, Query

    master.set_cap(id="c", total=1000)
    server = ServerRig("s1", master)
    application = ApplicationFactory(server.server).buildProtocol(None)
    client = amp.AMP()
    pump = iosim.connect(
        application, iosim.makeFakeServer(application), client, iosim.makeFakeClient(client), greet=False
    )
    master.network.pumps.append(pump)

    def call(command: type[amp.Command], **arguments: str) -> Any:
        results: list[Any] = []
        client.callRemote(command, **arguments).addBoth(results.append)
        for _ in range(5):
            master.network.flush()
        assert results, "no answer"
        return results[0]

    assert call(Consume, cap="c", amount="1") == {"remaining": "99.00"}
    assert call(Consume, cap="c", amount="500") == {"remaining": "0.00"}
    assert call(Query, cap="c")["consumed"] == "501.00"
    assert call(Consume, cap="nope", amount="1").check(UnknownCapError)
    assert call(Consume, cap="c", amount="0.001").check(InvalidAmountError)
    assert call(Consume, cap="c", amount="600").check(CappedError)


def test_new_scale_drops_holdings(master: MasterRig, tmp_path: Any) -> None:
    """
    A server that rejoins a master with another amount scale drops its
    holdings instead of misreading them.
    """
    master.set_cap(id="c", total=1000)
    server = ServerRig("s1", master)
    assert server.consume("c", UNIT) == 99 * UNIT
    other = MasterRig(str(tmp_path / "other"), master.clock, master.network, scale=3)
    server.endpoint.target = lambda: other.factory
    server.endpoint.cut()
    master.network.flush()
    master.clock.advance(1.0)
    master.network.flush()
    assert server.server.scale == 3
    assert len(server.server.holdings) == 0
    assert isinstance(server.consume("c", 1000), UnknownCapError)
