"""
Integration tests of several data centers: real C{twistd} masters and
volumecap servers on 127.0.0.1, sharing caps through the RabbitMQ broker at
127.0.0.1:5672 (user guest).

Each test declares its own exchange, C{vct-<8 hex digits>}, and deletes it,
its dead-letter exchange and the queues of its data centers afterwards.  The
outage test stops and starts the broker's application on this machine with
C{rabbitmqctl}, which cuts every other client of the broker too.

Every cap is daily, from a year ago to a year ahead, in a time zone where it
is now about noon (L{tests.processes.cap_window}), so no run crosses a day's
boundary.  With two data centers and a total of 1000 each share is 500, a
server's top-up is 50 (10 per cent of the share) and its threshold 5 (10 per
cent of a top-up).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.broker import PASSWORD, URL, publish, queue_counts, rabbitmqctl, remove_topology
from tests.processes import Cluster, Process, admin, cap_known, consume_until_capped, set_cap, wait_until
from volumecap.amqp import PASSWORD_VARIABLE
from volumecap.client import BlockingClient
from volumecap.errors import CappedError, UnavailableError, UnknownCapError
from volumecap.wire.admincommands import DeleteCap, ListCaps, ShowCap, Status

pytestmark = pytest.mark.integration

CAP = "campaign-1111"

# Seconds within which a cap change or new figures must reach another data
# center.  Masters publish changed figures every second, so the rest leaves
# room for a loaded machine.
PROPAGATION_TIMEOUT = 5.0

# Seconds after the broker's application starts again within which a change
# made during the outage must reach the other data center.  Most of it goes
# to the masters' reconnection backoff, which is at most 5 s between attempts.
RETURN_TIMEOUT = 10.0

# The fields of a cap definition in ShowCap and ListCaps responses.
DEFINITION_FIELDS = ("id", "interval", "start", "end", "total", "first_total", "timezone")

VOLUMECAP = Path(sys.executable).parent / "volumecap"


class DataCenters:
    """
    The masters of several data centers on one exchange of the broker, and
    the servers a test starts for them.
    """

    def __init__(self, cluster: Cluster, names: tuple[str, ...]) -> None:
        self.cluster = cluster
        self.names = names
        self.exchange = f"vct-{uuid.uuid4().hex[:8]}"
        self.masters: dict[str, Process] = {}

    def start(self) -> None:
        """
        Start one master per data center and wait until all are connected
        to the broker.
        """
        options = ["--dcs", ",".join(self.names), "--amqp", URL, "--amqp-exchange", self.exchange]
        built = [
            self.cluster.master(
                name=f"master-{dc}", dc=dc, options=options, environment={PASSWORD_VARIABLE: PASSWORD}
            )
            for dc in self.names
        ]
        self.cluster.start_masters(built)
        self.masters = dict(zip(self.names, built))
        self.wait_broker("connected")

    def port(self, dc: str) -> int:
        return self.masters[dc].port

    def queue(self, dc: str) -> str:
        """
        Return the name of data center C{dc}'s queue.
        """
        return f"{self.exchange}.{dc}"

    def wait_broker(self, state: str, timeout: float = 20.0) -> None:
        """
        Wait until every master reports its broker connection as C{state}:
        C{connected} or C{disconnected}.
        """
        for dc, master in self.masters.items():
            wait_until(
                lambda: admin(master.port, Status)["broker"] == state,
                f"the master of {dc} reports the broker {state}",
                timeout=timeout,
                processes=self.masters.values(),
            )

    def serve(self, dc: str, *names: str) -> list[BlockingClient]:
        """
        Start servers of data center C{dc} and return a client of each.
        """
        servers = self.cluster.start_servers(self.masters[dc], names)
        return [self.cluster.client(server) for server in servers]

    def wait_everywhere(self, cap_id: str) -> None:
        """
        Wait until every master has the current interval of every data
        center for C{cap_id}: its own live one and the others' figures.
        """
        for dc in self.names:
            wait_until(
                lambda: set(current_rows(self.port(dc), cap_id)) == set(self.names),
                f"the master of {dc} shows the current interval of {cap_id} of every data center",
                timeout=PROPAGATION_TIMEOUT,
                processes=self.masters.values(),
            )

    def share(self, dc: str, cap_id: str) -> Decimal:
        """
        Return data center C{dc}'s share of the current interval, from its
        own master's live row.
        """
        return Decimal(own_row(self.port(dc), dc, cap_id)["total"])

    def close(self) -> None:
        """
        Delete the queues and exchanges of this test from the broker.
        """
        remove_topology(self.exchange, self.names)


@pytest.fixture
def start_dcs(tmp_path: Path) -> Iterator[Callable[[tuple[str, ...]], DataCenters]]:
    """
    A function that starts the masters of the data centers it is given.
    After the test, every process is ended and the broker topology deleted.
    """
    cluster = Cluster(tmp_path)
    started: list[DataCenters] = []

    def start(names: tuple[str, ...]) -> DataCenters:
        world = DataCenters(cluster, names)
        started.append(world)
        world.start()
        return world

    try:
        yield start
    finally:
        try:
            cluster.close()
        finally:
            for world in started:
                world.close()


def parse_instant(text: str) -> datetime:
    """
    Parse an instant as the master formats it, such as
    C{2027-03-14T05:00:00Z}.
    """
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def current_rows(port: int, cap_id: str) -> dict[str, dict[str, Any]]:
    """
    Return the rows of C{cap_id}'s current interval in the master's
    C{ShowCap} response, by data center.  The result is empty while the
    master does not know the cap.
    """
    try:
        intervals = admin(port, ShowCap, id=cap_id)["intervals"]
    except UnknownCapError:
        return {}
    now = datetime.now(timezone.utc)
    return {
        row["dc"]: row
        for row in intervals
        if row["state"] != "expired" and parse_instant(row["start"]) <= now < parse_instant(row["end"])
    }


def own_row(port: int, dc: str, cap_id: str) -> dict[str, Any]:
    """
    Return the master's own row of the current interval of C{cap_id}.
    """
    row = current_rows(port, cap_id)[dc]
    assert row["state"] == "live", f"the master of {dc} lists its own current interval as {row['state']}"
    return row


def figures(row: dict[str, Any]) -> tuple[Decimal, ...]:
    """
    Return C{(total, available, consumed)} of a C{ShowCap} row.
    """
    return Decimal(row["total"]), Decimal(row["available"]), Decimal(row["consumed"])


def amounts(*values: int) -> tuple[Decimal, ...]:
    """
    Return C{values} as Decimals, to compare with L{figures}.
    """
    return tuple(Decimal(value) for value in values)


def definition(port: int, cap_id: str) -> dict[str, Any] | None:
    """
    Return the master's definition of C{cap_id}, or None when it does not
    know the cap.
    """
    try:
        response = admin(port, ShowCap, id=cap_id)
    except UnknownCapError:
        return None
    return {name: response.get(name) for name in DEFINITION_FIELDS}


def list_caps(port: int) -> list[dict[str, Any]]:
    """
    Return every cap definition the master lists, in id order.
    """
    response = admin(port, ListCaps, after="")
    assert not response["more"], "the test defines fewer caps than one ListCaps page"
    return [{name: cap.get(name) for name in DEFINITION_FIELDS} for cap in response["caps"]]


class RandomConsumer(threading.Thread):
    """
    A thread that consumes random amounts from 1 to 5 from one server until
    C{stop_at} (a C{time.monotonic} value), counting what succeeded.

    It carries on after L{CappedError}, because a smaller amount may still
    succeed, and after L{UnavailableError}, with a short pause after either.

    @param pause: seconds between two consumes, to make demand uneven.
    """

    RETRY_PAUSE = 0.005

    def __init__(self, client: BlockingClient, cap_id: str, seed: int, stop_at: float, pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.cap_id = cap_id
        self.random = random.Random(seed)
        self.stop_at = stop_at
        self.pause = pause
        self.consumed = 0
        self.capped = 0
        self.unavailable = 0
        self.error: Exception | None = None

    def run(self) -> None:
        while time.monotonic() < self.stop_at:
            amount = self.random.randint(1, 5)
            try:
                self.client.consume(self.cap_id, amount)
            except CappedError:
                self.capped += 1
                time.sleep(self.RETRY_PAUSE)
                continue
            except UnavailableError:
                self.unavailable += 1
                time.sleep(self.RETRY_PAUSE)
                continue
            except Exception as error:
                self.error = error
                return
            self.consumed += amount
            if self.pause:
                time.sleep(self.pause)


def test_shares_and_top_ups(start_dcs: Callable[[tuple[str, ...]], DataCenters]) -> None:
    """A total of 1000 is 500 per data center, and a server tops up by 50 at first and again at 5."""
    world = start_dcs(("a", "b"))
    (client,) = world.serve("a", "a-1")
    assert set_cap(world.port("a"), CAP) == "created"
    world.wait_everywhere(CAP)

    for at in world.names:
        rows = current_rows(world.port(at), CAP)
        for dc in world.names:
            assert Decimal(rows[dc]["total"]) == 500, f"the master of {at} lists {dc}'s share as {rows[dc]['total']}"
            expected_state = "live" if dc == at else "remote"
            assert rows[dc]["state"] == expected_state
    assert Decimal(own_row(world.port("a"), "a", CAP)["available"]) == 500

    wait_until(lambda: cap_known(client, CAP), f"the server knows {CAP}")
    assert client.consume(CAP, 1) == 49
    assert Decimal(own_row(world.port("a"), "a", CAP)["available"]) == 450

    for _ in range(43):
        client.consume(CAP, 1)
    assert client.consume(CAP, 1) == 5

    wait_until(lambda: client.query(CAP).available == 55, "the server holds 55 after its threshold top-up")
    assert Decimal(own_row(world.port("a"), "a", CAP)["available"]) == 400
    assert figures(own_row(world.port("b"), "b", CAP)) == amounts(500, 500, 0)


def test_demand_at_one_dc(start_dcs: Callable[[tuple[str, ...]], DataCenters]) -> None:
    """With demand only at A, A serves exactly 1000 by drawing B's share, then raises CappedError."""
    world = start_dcs(("a", "b"))
    (client,) = world.serve("a", "a-1")
    set_cap(world.port("a"), CAP)
    world.wait_everywhere(CAP)
    wait_until(lambda: cap_known(client, CAP), f"the server knows {CAP}")

    assert consume_until_capped(client, CAP, timeout=90.0) == 1000
    with pytest.raises(CappedError):
        client.consume(CAP, 1)

    wait_until(
        lambda: Decimal(own_row(world.port("a"), "a", CAP)["consumed"]) == 1000,
        "the server reported 1000 consumed to the master of a",
    )
    wait_until(
        lambda: world.share("a", CAP) + world.share("b", CAP) == 1000,
        "the shares of a and b add up to 1000",
        timeout=PROPAGATION_TIMEOUT,
    )
    assert figures(own_row(world.port("a"), "a", CAP)) == amounts(1000, 0, 1000)
    assert figures(own_row(world.port("b"), "b", CAP)) == amounts(0, 0, 0)


def test_remote_view(start_dcs: Callable[[tuple[str, ...]], DataCenters]) -> None:
    """After consumes at A, B's caps show lists A's current interval as remote with A's figures."""
    world = start_dcs(("a", "b"))
    (client,) = world.serve("a", "a-1")
    set_cap(world.port("a"), CAP)
    world.wait_everywhere(CAP)
    wait_until(lambda: cap_known(client, CAP), f"the server knows {CAP}")
    for _ in range(7):
        client.consume(CAP, 1)
    wait_until(
        lambda: Decimal(own_row(world.port("a"), "a", CAP)["consumed"]) == 7,
        "the server reported 7 consumed to the master of a",
    )
    at_a = own_row(world.port("a"), "a", CAP)
    assert figures(at_a) == amounts(500, 450, 7)

    wait_until(
        lambda: figures(current_rows(world.port("b"), CAP)["a"]) == figures(at_a),
        "the master of b has a's figures",
        timeout=PROPAGATION_TIMEOUT,
    )
    caps_show = subprocess.run(
        [str(VOLUMECAP), "--master", world.masters["b"].endpoint, "caps", "show", CAP, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert caps_show.returncode == 0, caps_show.stderr
    intervals = json.loads(caps_show.stdout)["intervals"]
    rows = [row for row in intervals if row["dc"] == "a" and row["start"] == at_a["start"]]
    assert len(rows) == 1, caps_show.stdout
    (row,) = rows
    assert row["state"] == "remote"
    assert (row["end"], row["total"], row["available"], row["consumed"]) == (
        at_a["end"],
        at_a["total"],
        at_a["available"],
        at_a["consumed"],
    )
    assert row["updated"] is not None


def test_broker_outages(start_dcs: Callable[[tuple[str, ...]], DataCenters]) -> None:
    """Cap changes made at A in three broker outages reach B within 10 s of each return, while B's server serves."""
    world = start_dcs(("a", "b"))
    (client,) = world.serve("b", "b-1")
    set_cap(world.port("a"), CAP)
    world.wait_everywhere(CAP)
    wait_until(lambda: cap_known(client, CAP), f"the server of b knows {CAP}")
    assert client.consume(CAP, 1) == 49
    holding = Decimal(49)
    queues = [world.queue(dc) for dc in world.names]

    for outage in (1, 2, 3):
        try:
            rabbitmqctl("stop_app")
            world.wait_broker("disconnected")
            total = 1000 + 100 * outage
            assert set_cap(world.port("a"), CAP, total=str(total)) == "updated"
            assert set_cap(world.port("a"), f"new-{outage}", total="10") == "created"
            for _ in range(3):
                holding -= 1
                assert client.consume(CAP, 1) == holding, f"outage {outage}"
            assert f"new-{outage}" not in [cap["id"] for cap in list_caps(world.port("b"))]
        finally:
            rabbitmqctl("start_app")
            returned = time.monotonic()
            rabbitmqctl("await_startup")

        expected = list_caps(world.port("a"))
        assert [cap["id"] for cap in expected] == [CAP] + [f"new-{number}" for number in range(1, outage + 1)]
        assert Decimal(expected[0]["total"]) == total
        wait_until(
            lambda: list_caps(world.port("b")) == expected,
            f"the changes of outage {outage} reach b",
            timeout=max(0.0, returned + RETURN_TIMEOUT - time.monotonic()),
            processes=world.masters.values(),
        )
        world.wait_broker("connected")
        assert queue_counts("consumers", queues) == {queue: 1 for queue in queues}, f"after outage {outage}"


def test_cap_changes_everywhere(start_dcs: Callable[[tuple[str, ...]], DataCenters]) -> None:
    """A cap created, raised, lowered and deleted at A is the same at B and C."""
    world = start_dcs(("a", "b", "c"))
    for total, share in (("900", 300), ("1200", 400), ("300", 100)):
        set_cap(world.port("a"), CAP, total=total)
        expected = definition(world.port("a"), CAP)
        assert expected is not None
        assert Decimal(expected["total"]) == Decimal(total)
        for dc in ("b", "c"):
            wait_until(
                lambda: definition(world.port(dc), CAP) == expected,
                f"{dc} has the definition with total {total}",
                timeout=PROPAGATION_TIMEOUT,
                processes=world.masters.values(),
            )
        for dc in world.names:
            wait_until(
                lambda: dc in current_rows(world.port(dc), CAP) and world.share(dc, CAP) == share,
                f"{dc}'s share of a total of {total} is {share}",
                timeout=PROPAGATION_TIMEOUT,
                processes=world.masters.values(),
            )

    admin(world.port("a"), DeleteCap, id=CAP)
    for dc in world.names:
        wait_until(
            lambda: definition(world.port(dc), CAP) is None,
            f"{dc} no longer knows {CAP}",
            timeout=PROPAGATION_TIMEOUT,
            processes=world.masters.values(),
        )
        with pytest.raises(UnknownCapError):
            admin(world.port(dc), ShowCap, id=CAP)
        assert list_caps(world.port(dc)) == []


def test_malformed_dead_lettered(start_dcs: Callable[[tuple[str, ...]], DataCenters]) -> None:
    """A message that is not JSON goes to A's dead-letter queue and the log, and A keeps working."""
    world = start_dcs(("a", "b"))
    master = world.masters["a"]
    journal = admin(master.port, Status)["journal"]
    dead = [f"{world.queue(dc)}.dead" for dc in world.names]

    publish(world.exchange, "dc.a.topup", b"not json")
    wait_until(
        lambda: queue_counts("messages", dead) == {f"{world.queue('a')}.dead": 1, f"{world.queue('b')}.dead": 0},
        "the message is in a's dead-letter queue and in no other",
        timeout=PROPAGATION_TIMEOUT,
        processes=world.masters.values(),
    )
    wait_until(
        lambda: "Dead-lettering a message with routing key dc.a.topup" in master.log_path.read_text(),
        "a's log names the dead-lettered message",
        timeout=PROPAGATION_TIMEOUT,
        processes=world.masters.values(),
    )
    assert "not JSON" in master.log_path.read_text()
    assert admin(master.port, Status)["journal"] == journal

    set_cap(world.port("b"), CAP)
    expected = definition(world.port("b"), CAP)
    wait_until(
        lambda: definition(master.port, CAP) == expected,
        "a cap set at b reaches a",
        timeout=PROPAGATION_TIMEOUT,
        processes=world.masters.values(),
    )
    assert admin(master.port, Status)["broker"] == "connected"


def test_random_demand_three_dcs(start_dcs: Callable[[tuple[str, ...]], DataCenters]) -> None:
    """Random demand at three data centers serves at most the total, and the shares settle to add up to it."""
    total = 3000
    world = start_dcs(("a", "b", "c"))
    clients = {
        "a": world.serve("a", "a-1", "a-2"),
        "b": world.serve("b", "b-1"),
        "c": world.serve("c", "c-1"),
    }
    set_cap(world.port("a"), CAP, total=str(total))
    world.wait_everywhere(CAP)
    for dc_clients in clients.values():
        for client in dc_clients:
            wait_until(lambda: cap_known(client, CAP), f"the server knows {CAP}")

    # Demand is heaviest at a and lightest at c, so capacity has to move.
    stop_at = time.monotonic() + 4.0
    consumers = [
        RandomConsumer(clients["a"][0], CAP, seed=1, stop_at=stop_at),
        RandomConsumer(clients["a"][1], CAP, seed=2, stop_at=stop_at),
        RandomConsumer(clients["b"][0], CAP, seed=3, stop_at=stop_at, pause=0.002),
        RandomConsumer(clients["c"][0], CAP, seed=4, stop_at=stop_at, pause=0.02),
    ]
    for consumer in consumers:
        consumer.start()
    for consumer in consumers:
        consumer.join(timeout=30)
    assert not any(consumer.is_alive() for consumer in consumers)
    assert [consumer.error for consumer in consumers] == [None] * len(consumers)
    served = sum(consumer.consumed for consumer in consumers)
    assert served <= total, f"served {served} of a total of {total}: {[c.consumed for c in consumers]}"

    def settled() -> bool:
        rows = {dc: own_row(world.port(dc), dc, CAP) for dc in world.names}
        shares = sum(Decimal(row["total"]) for row in rows.values())
        consumed = sum(Decimal(row["consumed"]) for row in rows.values())
        return shares == total and consumed == served

    wait_until(settled, f"the shares add up to {total} and the masters count {served} consumed", timeout=20.0)
    for dc in world.names:
        row = own_row(world.port(dc), dc, CAP)
        held_by_servers = sum(Decimal(server["available"]) for server in row["servers"])
        share, available, consumed = figures(row)
        assert available >= 0, f"{dc}: {row}"
        assert share == available + held_by_servers + consumed, f"{dc} does not account for its share: {row}"
