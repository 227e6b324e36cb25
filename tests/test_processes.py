"""
Integration tests: a master and volumecap servers as real C{twistd}
processes on 127.0.0.1, driven through the client library and admin commands.

Every cap here is daily, from a year ago to a year ahead in a time zone
where it is now about noon (see L{tests.processes.cap_window}), with a total
of 1000 unless a test sets another.  With one data center the master's
share is the whole total, so a top-up is 100 (10 per cent of the share) and
a server requests a top-up when its holding falls to 10 (10 per cent of a
top-up).
"""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.processes import (
    Cluster,
    admin,
    cap_known,
    consume_until_capped,
    current_interval,
    joined_servers,
    master_available,
    server_figures,
    set_cap,
    wait_until,
)
from volumecap.client import BlockingClient
from volumecap.errors import CappedError, UnavailableError, UnknownCapError
from volumecap.wire.admincommands import DeleteCap, ShowCap

pytestmark = pytest.mark.integration

CAP = "campaign-1111"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """
    A cluster whose processes are all ended after the test, pass or fail.
    """
    started = Cluster(tmp_path)
    try:
        yield started
    finally:
        started.close()


def wait_cap_known(clients: list[BlockingClient], cap_id: str) -> None:
    """
    Wait until every server has received the current interval of C{cap_id}.
    """
    for client in clients:
        wait_until(lambda: cap_known(client, cap_id), f"the server knows cap {cap_id}")


def reported_consumed(master_port: int, cap_id: str) -> Decimal:
    """
    Return the sum of what the servers reported as consumed of the current
    interval.
    """
    return sum((consumed for _, consumed in server_figures(master_port, cap_id).values()), Decimal(0))


def wait_reported(master_port: int, cap_id: str, expected: int) -> None:
    """
    Wait until the servers' reports to the master add up to C{expected}.
    """
    wait_until(
        lambda: reported_consumed(master_port, cap_id) == expected,
        f"the servers reported {expected} consumed of {cap_id}",
    )


def negative_amounts(show: dict[str, Any]) -> list[str]:
    """
    Return a description of every negative amount in a C{ShowCap} response.
    """
    found = []
    for interval in show["intervals"]:
        for field in ("total", "available", "consumed"):
            if Decimal(interval[field]) < 0:
                found.append(f"interval {interval['start']} {field} {interval[field]}")
        for server in interval["servers"]:
            for field in ("available", "consumed"):
                if Decimal(server[field]) < 0:
                    found.append(f"interval {interval['start']} server {server['name']} {field} {server[field]}")
    return found


def interval_totals(show: dict[str, Any]) -> list[tuple[str, str, str]]:
    """
    Return C{(start, total, available)} of every interval in a C{ShowCap}
    response.
    """
    return [(interval["start"], interval["total"], interval["available"]) for interval in show["intervals"]]


def held_figures(show: dict[str, Any]) -> dict[str, dict[str, tuple[str, str]]]:
    """
    Return C{(available, consumed)} per interval start and server name from
    a C{ShowCap} response, leaving out servers with nothing in either.

    Servers that report all their slices after joining again appear in the
    next interval with zero figures, which is no change of state.
    """
    return {
        interval["start"]: {
            server["name"]: (server["available"], server["consumed"])
            for server in interval["servers"]
            if Decimal(server["available"]) or Decimal(server["consumed"])
        }
        for interval in show["intervals"]
    }


class Consumer(threading.Thread):
    """
    A thread that consumes 1 at a time from one server until the server
    raises L{CappedError} or L{halt} is called.

    While the server raises L{UnavailableError} (its master is down and its
    holding is too small), the thread retries every few milliseconds.

    @param pause: seconds between two consumes, to slow the thread down
        enough that a test can act while it runs.
    """

    RETRY_PAUSE = 0.005

    def __init__(self, client: BlockingClient, cap_id: str, pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.cap_id = cap_id
        self.pause = pause
        self.successes = 0
        self.unavailable = 0
        self.error: Exception | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.client.consume(self.cap_id, 1)
            except CappedError:
                return
            except UnavailableError:
                self.unavailable += 1
                self._halt.wait(self.RETRY_PAUSE)
                continue
            except Exception as error:
                self.error = error
                return
            self.successes += 1
            if self.pause:
                self._halt.wait(self.pause)

    def halt(self) -> None:
        """
        Stop the thread after its current consume.
        """
        self._halt.set()


def drain(clients: list[BlockingClient], master_port: int, cap_id: str) -> int:
    """
    Consume 1 at a time from every server until the master and every server
    hold nothing more of the current interval, and return how many
    consumes succeeded.

    A server may raise L{CappedError} while another server still has an
    unconsumed holding, because after an empty top-up it waits a moment
    before it requests one again.  So this repeats rounds until the master's
    figures show nothing left.
    """
    successes = 0

    def nothing_left() -> bool:
        nonlocal successes
        for client in clients:
            successes += consume_until_capped(client, cap_id)
        interval = current_interval(master_port, cap_id)
        holdings = [Decimal(server["available"]) for server in interval["servers"]]
        return Decimal(interval["available"]) <= 0 and not any(holdings)

    wait_until(nothing_left, f"nothing of {cap_id} is left to consume")
    return successes


def test_top_up_sizes(cluster: Cluster) -> None:
    """A server takes a top-up of 100 on its first consume and another when it falls to 10."""
    master = cluster.start_master()
    (server,) = cluster.start_servers(master, ["s1"])
    client = cluster.client(server)
    assert set_cap(master.port, CAP) == "created"
    wait_cap_known([client], CAP)
    assert master_available(master.port, CAP) == 1000

    assert client.consume(CAP, 1) == 99
    assert master_available(master.port, CAP) == 900

    for _ in range(88):
        client.consume(CAP, 1)
    assert client.consume(CAP, 1) == 10

    wait_until(lambda: client.query(CAP).available == 110, "the server holds 110 after its threshold top-up")
    assert master_available(master.port, CAP) == 800


def test_ten_servers_consume_exactly_total(cluster: Cluster) -> None:
    """Ten servers consuming in parallel serve exactly the total of 1000, then all raise CappedError."""
    master = cluster.start_master()
    servers = cluster.start_servers(master, [f"s{number}" for number in range(10)])
    clients = [cluster.client(server) for server in servers]
    set_cap(master.port, CAP)
    wait_cap_known(clients, CAP)

    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        successes = list(pool.map(lambda client: consume_until_capped(client, CAP), clients))
    assert sum(successes) == 1000, f"successes per server: {successes}"
    for client in clients:
        with pytest.raises(CappedError):
            client.consume(CAP, 1)
    wait_reported(master.port, CAP, 1000)
    show = admin(master.port, ShowCap, id=CAP)
    assert negative_amounts(show) == []
    assert Decimal(show["intervals"][0]["available"]) == 0
    assert Decimal(show["intervals"][0]["consumed"]) == 1000


def test_one_server_consumes_total(cluster: Cluster) -> None:
    """One server alone serves the whole total of 1000, then raises CappedError."""
    master = cluster.start_master()
    (server,) = cluster.start_servers(master, ["s1"])
    client = cluster.client(server)
    set_cap(master.port, CAP)
    wait_cap_known([client], CAP)

    assert consume_until_capped(client, CAP) == 1000

    with pytest.raises(CappedError):
        client.consume(CAP, 1)
    assert master_available(master.port, CAP) == 0
    wait_reported(master.port, CAP, 1000)


def test_consume_larger_than_top_up(cluster: Cluster) -> None:
    """A consume of 150, more than one top-up, succeeds while the master has enough."""
    master = cluster.start_master()
    fresh, busy = cluster.start_servers(master, ["fresh", "busy"])
    fresh_client, busy_client = cluster.client(fresh), cluster.client(busy)
    set_cap(master.port, CAP)
    wait_cap_known([fresh_client, busy_client], CAP)

    assert fresh_client.consume(CAP, 150) == 0

    assert busy_client.consume(CAP, 1) == 99
    assert busy_client.consume(CAP, 150) == 49

    wait_reported(master.port, CAP, 301)


def test_master_kill_and_restart(cluster: Cluster) -> None:
    """A master killed with kill -9 keeps caps and grants, and its servers carry on up to the total."""
    master = cluster.start_master()
    servers = cluster.start_servers(master, ["s1", "s2"])
    clients = [cluster.client(server) for server in servers]
    set_cap(master.port, CAP)
    wait_cap_known(clients, CAP)
    for client, count in zip(clients, (150, 30)):
        for _ in range(count):
            client.consume(CAP, 1)
    consumed = 180
    wait_reported(master.port, CAP, consumed)
    before = admin(master.port, ShowCap, id=CAP)

    master.kill()
    cluster.start_master(master)
    after = admin(master.port, ShowCap, id=CAP)
    assert interval_totals(after) == interval_totals(before)

    for server in servers:
        cluster.wait_joined(master, server)
    wait_until(
        lambda: held_figures(admin(master.port, ShowCap, id=CAP)) == held_figures(before),
        "the servers' figures after the restart match those before it",
    )

    # About 1000 consumes a second in all, so the holdings last well past
    # the kill below.
    consumers = [Consumer(client, CAP, pause=0.002) for client in clients]
    for consumer in consumers:
        consumer.start()
    try:
        wait_until(lambda: sum(c.successes for c in consumers) >= 100, "the consumers served 100 more")
        master.kill()
        at_kill = sum(c.successes for c in consumers)
        wait_until(
            lambda: sum(c.successes for c in consumers) > at_kill,
            "servers serve from their holdings while the master is down",
        )
        at_restart = sum(c.successes for c in consumers)
        cluster.start_master(master)
        for server in servers:
            cluster.wait_joined(master, server)
        for consumer in consumers:
            consumer.join(timeout=20)
    finally:
        for consumer in consumers:
            consumer.halt()
    assert [consumer.error for consumer in consumers] == [None, None]
    assert not any(consumer.is_alive() for consumer in consumers)
    assert sum(consumer.successes for consumer in consumers) > at_restart

    consumed += sum(consumer.successes for consumer in consumers)
    assert consumed <= 1000
    consumed += drain(clients, master.port, CAP)
    assert consumed == 1000
    assert set(joined_servers(master.port)) == {"s1", "s2"}


def test_stopped_server_returns_holding(cluster: Cluster) -> None:
    """A server stopped with SIGTERM returns its holding to the master before it exits."""
    master = cluster.start_master()
    (server,) = cluster.start_servers(master, ["s1"])
    client = cluster.client(server)
    set_cap(master.port, CAP)
    wait_cap_known([client], CAP)
    for _ in range(5):
        client.consume(CAP, 1)
    holding = client.query(CAP).available
    available = master_available(master.port, CAP)
    assert holding == 95

    # twistd ends with the signal it received once it has shut down cleanly.
    assert server.stop() == -signal.SIGTERM
    assert "Server Shut Down." in server.log_path.read_text()

    assert master_available(master.port, CAP) == available + holding
    assert server_figures(master.port, CAP) == {"s1": (Decimal(0), Decimal(5))}


def test_delete_cap_with_holding(cluster: Cluster) -> None:
    """Deleting a cap that a server has a holding of makes its consumes fail as not found, on the same master link."""
    deleted, other = "deleted-cap", "other-cap"
    master = cluster.start_master()
    (server,) = cluster.start_servers(master, ["s1"])
    client = cluster.client(server)
    set_cap(master.port, deleted)
    set_cap(master.port, other)
    wait_cap_known([client], deleted)
    wait_cap_known([client], other)
    client.consume(deleted, 1)
    client.consume(other, 1)
    peer = joined_servers(master.port)["s1"]["peer"]

    consumer = Consumer(cluster.client(server), deleted)
    consumer.start()
    try:
        wait_until(lambda: consumer.successes >= 50, "the consumer has consumed 50 of the cap to delete")
        admin(master.port, DeleteCap, id=deleted)
        consumer.join(timeout=10)
    finally:
        consumer.halt()
    assert isinstance(consumer.error, UnknownCapError), repr(consumer.error)

    with pytest.raises(UnknownCapError):
        client.consume(deleted, 1)
    with pytest.raises(UnknownCapError):
        client.query(deleted)
    with pytest.raises(UnknownCapError):
        admin(master.port, ShowCap, id=deleted)
    assert joined_servers(master.port)["s1"]["peer"] == peer
    assert client.consume(other, 1) == 98


def test_cap_changes_while_serving(cluster: Cluster) -> None:
    """Raising a total adds the difference, and lowering it below consumption recalls and stops serving."""
    master = cluster.start_master()
    (server,) = cluster.start_servers(master, ["s1"])
    client = cluster.client(server)
    set_cap(master.port, CAP)
    wait_cap_known([client], CAP)
    client.consume(CAP, 1)
    available = master_available(master.port, CAP)

    assert set_cap(master.port, CAP, total="2000") == "updated"
    assert master_available(master.port, CAP) == available + 1000

    for _ in range(99):
        client.consume(CAP, 1)
    wait_reported(master.port, CAP, 100)
    assert set_cap(master.port, CAP, total="50") == "updated"

    def recalled() -> bool:
        interval = current_interval(master.port, CAP)
        holdings = [Decimal(server["available"]) for server in interval["servers"]]
        return Decimal(interval["available"]) <= 0 and not any(holdings)

    wait_until(recalled, "the master recalled every unconsumed holding")
    with pytest.raises(CappedError):
        client.consume(CAP, 1)
    assert client.query(CAP).available == 0
    assert client.query(CAP).consumed == 100
    interval = current_interval(master.port, CAP)
    assert Decimal(interval["consumed"]) == 100
    assert Decimal(interval["total"]) == 50
    assert Decimal(interval["available"]) <= 0

    assert set_cap(master.port, CAP, total="50") == "unchanged"
