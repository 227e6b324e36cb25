"""
An in-process data center for deterministic tests.

A real master (handlers, ledger and SQLite journal) and real volumecap
servers run on one L{Clock}; their AMP connections are L{iosim} transport
pairs that move bytes only when the test calls L{Network.flush}.  A journal
runner that the test drives decides when writes reach the disk, so a crash
can lose exactly the writes that were not yet committed.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test import iosim
from zope.interface import implementer

from volumecap.intervals import parse_when
from volumecap.master.admin import AdminLocator
from volumecap.master.interval import IntervalHandler
from volumecap.master.ledger import Ledger, LedgerService
from volumecap.master.local import LocalHandler
from volumecap.master.meta import MetaHandler
from volumecap.master.remote import RemoteHandler
from volumecap.messaging import MemoryBroker, MemoryMessaging
from volumecap.master.protocol import MasterFactory, MasterProtocol
from volumecap.server.service import VolumecapServer
from volumecap.store import DATABASE_NAME, Journal

# 2027-03-14T12:00:00Z, a Sunday, the day New York moves to summer time.
START = parse_when("2027-03-14T12:00:00Z", "UTC")


class ManualRunner:
    """
    A journal runner whose writes wait until the test runs them.
    """

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, function: Callable[[], Any]) -> "Deferred[Any]":
        done: Deferred[Any] = Deferred()
        self.queue.append((function, done))
        return done

    def run_all(self) -> int:
        """
        Run queued writes, including those queued while running, and return
        how many ran.
        """
        count = 0
        while self.queue:
            function, done = self.queue.pop(0)
            done.callback(function())
            count += 1
        return count

    def drop_all(self) -> None:
        """
        Forget queued writes, as a crash would.
        """
        self.queue.clear()


class CountingMasterProtocol(MasterProtocol):
    """
    A master protocol that counts the commands it receives, by name.
    """

    def __init__(self, local: LocalHandler, admin: AdminLocator, counts: collections.Counter[bytes]) -> None:
        super().__init__(local, admin)
        self.counts = counts

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        if b"_command" in box:
            self.counts[box[b"_command"]] += 1
        super().ampBoxReceived(box)


class CountingFactory(MasterFactory):
    def __init__(self, local: LocalHandler, admin: AdminLocator) -> None:
        super().__init__(local, admin)
        self.counts: collections.Counter[bytes] = collections.Counter()

    def buildProtocol(self, addr: Any) -> CountingMasterProtocol:
        return CountingMasterProtocol(self.local, self.admin, self.counts)


class Network:
    """
    The iosim connections of one test, pumped together.
    """

    def __init__(self) -> None:
        self.pumps: list[iosim.IOPump] = []

    def flush(self, rounds: int = 1000) -> None:
        """
        Move bytes until every connection is quiet.
        """
        for _ in range(rounds):
            moved = False
            for pump in list(self.pumps):
                moved = pump.pump() or moved
            self.pumps = [p for p in self.pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)]
            if not moved:
                return
        counts = self.pumps[0].server.counts if self.pumps and hasattr(self.pumps[0].server, "counts") else None
        raise AssertionError(f"network still busy after {rounds} rounds: {counts}")


@implementer(IStreamClientEndpoint)
class LoopbackEndpoint:
    """
    Connects to whatever master factory is current, through L{Network}.
    """

    def __init__(self, network: Network, target: Callable[[], "MasterFactory | None"]) -> None:
        self.network = network
        self.target = target
        self.connections: list[tuple[iosim.FakeTransport, iosim.FakeTransport]] = []

    def connect(self, factory: Any) -> "Deferred[Any]":
        master = self.target()
        if master is None:
            from twisted.internet.error import ConnectionRefusedError

            failed: Deferred[Any] = Deferred()
            failed.errback(ConnectionRefusedError("master is down"))
            return failed
        server_protocol = master.buildProtocol(None)
        client_protocol = factory.buildProtocol(None)
        server_transport = iosim.makeFakeServer(server_protocol)
        client_transport = iosim.makeFakeClient(client_protocol)
        pump = iosim.connect(server_protocol, server_transport, client_protocol, client_transport, greet=False)
        self.network.pumps.append(pump)
        self.connections.append((server_transport, client_transport))
        return succeed(client_protocol)

    def cut(self) -> None:
        """
        Close every connection made through this endpoint.
        """
        for server_transport, client_transport in self.connections:
            client_transport.loseConnection()
        self.connections = []


class MasterRig:
    """
    A real master on a L{Clock}, with its journal in C{directory}.
    """

    def __init__(
        self,
        directory: str,
        clock: Clock,
        network: Network,
        scale: int = 2,
        manual: bool = False,
        dc: str = "dc1",
        dcs: tuple[str, ...] = (),
        broker: MemoryBroker | None = None,
    ) -> None:
        self.directory = directory
        self.clock = clock
        self.network = network
        self.scale = scale
        self.manual = manual
        self.dc = dc
        self.dcs = dcs or (dc,)
        self.broker = broker
        self.remote: RemoteHandler | None = None
        self.factory: CountingFactory | None = None
        self.start()

    def start(self) -> None:
        self.runner = ManualRunner() if self.manual else None
        runner = self.runner if self.runner is not None else _synchronous
        self.journal = Journal(f"{self.directory}/{DATABASE_NAME}", runner=runner)
        state = self.journal.open(self.dc, self.scale)
        self.ledger = Ledger(state, self.journal, self.scale)
        self.intervals = IntervalHandler(self.ledger, self.clock, dcs=self.dcs)
        self.meta = MetaHandler(self.ledger, self.intervals, self.clock, "UTC")
        self.local = LocalHandler(self.ledger, self.clock, recall_timeout=0.2)
        children: list[Any] = [LedgerService(self.ledger, self.clock), self.meta, self.intervals, self.local]
        if self.broker is not None:
            self.messaging = MemoryMessaging(self.broker, self.dc)
            self.remote = RemoteHandler(
                self.ledger, self.meta, self.messaging, self.clock, self.dcs, self.local.topup_units
            )
            self.local.remote = self.remote
            children += [self.remote, self.messaging]
        self.admin = AdminLocator(self.meta, self.local, self.clock.seconds(), role=lambda: "primary", remote=self.remote)
        self.service = MultiService()
        for child in children:
            child.setServiceParent(self.service)
        self.service.startService()
        self.factory = CountingFactory(self.local, self.admin)

    def crash(self) -> None:
        """
        Lose the process: unwritten journal entries and every connection.
        """
        if self.runner is not None:
            self.runner.drop_all()
        self.intervals.stopService()
        if self.remote is not None:
            self.remote.stopService()
            assert self.broker is not None
            self.broker.drop(self.dc)
        self.factory = None
        assert self.journal._connection is not None
        self.journal._connection.close()

    def commit_writes(self) -> None:
        if self.runner is not None:
            self.runner.run_all()

    @property
    def state(self) -> Any:
        return self.ledger.state

    def set_cap(self, **fields: Any) -> Any:
        """
        Create or replace a cap and return the outcome, once durable.
        """
        fields.setdefault("interval", "day")
        fields.setdefault("start", "2027-01-01")
        fields.setdefault("end", "2028-01-01")
        result = self.meta.set_cap({key: str(value) for key, value in fields.items()})
        self.commit_writes()
        self.network.flush()
        return _result(result)

    def interval(self, cap_id: str) -> Any:
        """
        Return the live interval of C{cap_id} that contains the clock's time.
        """
        now = self.clock.seconds()
        for interval in self.state.intervals_of(cap_id):
            if interval.start <= now < interval.end and not interval.expired:
                return interval
        raise AssertionError(f"no current interval for {cap_id}")


def _synchronous(function: Callable[[], Any]) -> "Deferred[Any]":
    return succeed(function())


def _result(deferred: "Deferred[Any]") -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def result_of(deferred: "Deferred[Any] | Any") -> Any:
    """
    Return the result of an already fired Deferred, raising its failure.
    """
    if isinstance(deferred, Deferred):
        return _result(deferred)
    return deferred


class ServerRig:
    """
    A real volumecap server connected to a L{MasterRig} through the network.
    """

    def __init__(self, name: str, master: MasterRig, **options: Any) -> None:
        self.master = master
        self.endpoint = LoopbackEndpoint(master.network, lambda: master.factory)
        options.setdefault("report_interval", 1.0)
        options.setdefault("retry_policy", lambda attempt: 0.5)
        self.server = VolumecapServer(name, self.endpoint, master.clock, **options)
        self.server.startService()
        for _ in range(5):
            master.commit_writes()
            master.network.flush()

    def consume(self, cap_id: str, units: int) -> Any:
        """
        Consume, moving the network and the journal until the outcome is
        known, and return it: the units left, or the exception raised.
        """
        try:
            outcome = self.server.consume(cap_id, units)
        except Exception as error:
            return error
        if isinstance(outcome, int):
            return outcome
        results: list[Any] = []
        outcome.addBoth(results.append)
        for _ in range(50):
            if results:
                break
            self.master.commit_writes()
            self.master.network.flush()
        if not results:
            self.master.clock.advance(self.server.topup_wait)
            self.master.network.flush()
        assert results, "consume did not finish"
        return results[0].value if hasattr(results[0], "raiseException") else results[0]

    def held(self, cap_id: str) -> Any:
        return self.server.holdings.current(cap_id, self.master.clock.seconds())
