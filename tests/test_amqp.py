"""
Tests of L{volumecap.amqp}: URL parsing and construction as unit tests, and
messaging through the RabbitMQ broker at 127.0.0.1:5672 (user guest) as
integration tests.

Each integration test uses its own exchange, C{vctest-<random>}, and
deletes its exchanges and queues afterwards.  The broker restart test stops
and starts the RabbitMQ application on this machine with C{rabbitmqctl}.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any, AsyncIterator, Callable

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from txamqp.client import TwistedDelegate
from txamqp.spec import load as load_spec
from zope.interface import provider
from zope.interface.verify import verifyObject

from volumecap.amqp import (
    DEFAULT_SPEC_PATH,
    PASSWORD_VARIABLE,
    AMQPMessaging,
    PatchedAMQClient,
    PublishRejected,
    parse_amqp_url,
)
from volumecap.messaging import Delivery, IMessaging, MalformedMessage, MessagingUnavailable

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
integration = pytest.mark.integration


def the_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def fast_retry(attempt: int) -> float:
    return 0.2


async def wait_for(condition: Callable[[], bool], description: str, timeout: float = 15.0) -> None:
    """
    Poll C{condition} until it holds, failing after C{timeout} seconds.
    """
    reactor = the_reactor()
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {description}")
        await deferLater(reactor, 0.05)


def bounded(deferred: Deferred[Any], seconds: float = 15.0) -> Deferred[Any]:
    """
    Return C{deferred}, made to fail with TimeoutError if it has not fired
    after C{seconds}, so that a lost callback fails the test instead of
    hanging it.
    """
    return deferred.addTimeout(seconds, the_reactor())


async def rabbitmqctl(*arguments: str) -> str:
    """
    Run C{rabbitmqctl} without blocking the reactor, and return its output.
    """
    executable = shutil.which("rabbitmqctl")
    assert executable is not None, "rabbitmqctl is not on PATH"
    output: bytes
    errors: bytes
    output, errors, code = await getProcessOutputAndValue(executable, arguments, env=os.environ)
    assert code == 0, f"rabbitmqctl {' '.join(arguments)} exited with {code}: {errors.decode()}"
    return output.decode()


async def broker_connection(messaging: AMQPMessaging) -> dict[str, Any]:
    """
    Return the pid, heartbeat timeout and socket read count that
    C{rabbitmqctl} lists for the connection of C{messaging}, found by the
    connection name it sends in its client properties.
    """
    name = '"' + messaging.client_properties["connection_name"] + '"'
    # The JSON formatter writes pids in a form close_connection rejects.
    columns = ("pid", "timeout", "recv_cnt", "client_properties")
    listed = await rabbitmqctl("list_connections", "-q", "--no-table-headers", *columns)
    found = [line.split("\t") for line in listed.splitlines() if name in line]
    assert len(found) == 1, f"expected one connection named {name}, found {found}"
    pid, timeout, reads, properties = found[0]
    return {"pid": pid, "timeout": int(timeout), "recv_cnt": int(reads)}


class Rig:
    """
    The services of one test and a plain txAMQP channel to inspect the
    broker with, all on one exchange.
    """

    def __init__(self) -> None:
        self.exchange = f"vctest-{uuid.uuid4().hex[:12]}"
        self.services: list[AMQPMessaging] = []
        self.queues: set[str] = set()
        self.client: Any = None
        self.channel: Any = None

    async def open(self) -> None:
        """
        Open the inspecting connection, closing any earlier one.
        """
        from twisted.internet.endpoints import TCP4ClientEndpoint
        from twisted.internet.protocol import Factory

        if self.client is not None:
            await bounded(self.client.close(within=5))
        spec = load_spec(DEFAULT_SPEC_PATH)
        endpoint = TCP4ClientEndpoint(the_reactor(), "127.0.0.1", 5672)
        factory = Factory.forProtocol(lambda: PatchedAMQClient(TwistedDelegate(), "/", spec, clock=the_reactor()))
        self.client = await bounded(endpoint.connect(factory))
        await bounded(self.client.authenticate("guest", "guest"))
        self.channel = await bounded(self.client.channel(1))
        await bounded(self.channel.channel_open())

    def start(self, dc: str, handler: Callable[[Delivery], Any] | None = None, **options: Any) -> AMQPMessaging:
        """
        Start an L{AMQPMessaging} for data center C{dc}, consuming with C{handler}.
        """
        options.setdefault("retry_policy", fast_retry)
        messaging = AMQPMessaging(the_reactor(), URL, dc, exchange=self.exchange, **options)
        if handler is not None:
            messaging.consume(handler)
        self.services.append(messaging)
        self.queues.update({f"{self.exchange}.{dc}", f"{self.exchange}.{dc}.dead"})
        messaging.startService()
        return messaging

    async def started(self, dc: str, handler: Callable[[Delivery], Any] | None = None, **options: Any) -> AMQPMessaging:
        messaging = self.start(dc, handler, **options)
        await wait_for(lambda: messaging.connected, f"data center {dc} to connect")
        return messaging

    async def counts(self, queue: str) -> tuple[int, int]:
        """
        Return the ready messages and the consumers of C{queue}.
        """
        declared = await bounded(self.channel.queue_declare(queue=queue, passive=True))
        return declared.message_count, declared.consumer_count

    async def wait_for_consumers(self, queue: str, expected: int, timeout: float = 15.0) -> None:
        """
        Poll C{queue} until it has C{expected} consumers.
        """
        reactor = the_reactor()
        deadline = reactor.seconds() + timeout
        while (await self.counts(queue))[1] != expected:
            assert reactor.seconds() < deadline, f"timed out waiting for {expected} consumers of {queue}"
            await deferLater(reactor, 0.05)

    async def get(self, queue: str) -> Any:
        """
        Take the next message of C{queue}, or return None when it is empty.
        """
        message = await bounded(self.channel.basic_get(queue=queue, no_ack=True))
        return None if message.method.name == "get-empty" else message

    async def close(self) -> None:
        """
        Stop the services, then delete the test's queues and exchanges.
        """
        try:
            for messaging in self.services:
                if messaging.running:
                    await bounded(messaging.stopService())
        finally:
            # A new connection, because a failed test can leave the old
            # channel closed.
            await self.open()
            for queue in sorted(self.queues):
                await bounded(self.channel.queue_delete(queue=queue))
            for exchange in (self.exchange, f"{self.exchange}.dead"):
                await bounded(self.channel.exchange_delete(exchange=exchange))
            await bounded(self.client.close(within=5))


@pytest_twisted.async_yield_fixture
async def rig() -> AsyncIterator[Rig]:
    created = Rig()
    try:
        await created.open()
        yield created
    finally:
        await created.close()


@pytest.mark.parametrize(
    "url, expected",
    [
        ("amqp://guest:guest@127.0.0.1:5672/%2F", ("127.0.0.1", 5672, "/", "guest", "guest")),
        ("amqp://guest:guest@localhost", ("localhost", 5672, "/", "guest", "guest")),
        ("amqp://guest:guest@localhost/", ("localhost", 5672, "/", "guest", "guest")),
        ("amqp://u%40x:p%2Fw%40rd@[::1]:5673/prod%2Feu", ("::1", 5673, "prod/eu", "u@x", "p/w@rd")),
    ],
)
def test_url_parts(url: str, expected: tuple[str, int, str, str, str]) -> None:
    """The URL gives host, port, decoded vhost, user and password."""
    assert parse_amqp_url(url, {}) == expected


def test_url_password_from_env() -> None:
    """A URL without a password takes it from the environment."""
    parsed = parse_amqp_url("amqp://volumecap@mq.example:5672/dc", {PASSWORD_VARIABLE: "s3cret"})
    assert parsed == ("mq.example", 5672, "dc", "volumecap", "s3cret")


@pytest.mark.parametrize(
    "url, problem",
    [
        ("amqps://u:s3cret@host/", "scheme must be amqp://"),
        ("amqp://u:s3cret@/", "missing host name"),
        ("amqp://:s3cret@host/", "missing user name"),
        ("amqp://u:s3cret@host:99999/", "invalid port"),
        ("amqp://u:s3c/ret@host/", "invalid port"),
        ("amqp://u:s3cret@host/a/b", "one URL-encoded path segment"),
        ("amqp://u:s3cret@host/?heartbeat=5", "not supported"),
        ("amqp://u@host/", PASSWORD_VARIABLE),
    ],
)
def test_url_invalid(url: str, problem: str) -> None:
    """An invalid URL raises ValueError naming the problem, not the password."""
    with pytest.raises(ValueError) as raised:
        parse_amqp_url(url, {})
    assert problem in str(raised.value)
    assert "s3cret" not in str(raised.value)
    assert "s3c" not in str(raised.value)


def test_spec_missing(tmp_path: Any) -> None:
    """A missing spec file fails at construction with the path and the fix."""
    path = str(tmp_path / "amqp0-9-1.xml")
    with pytest.raises(FileNotFoundError) as raised:
        AMQPMessaging(the_reactor(), URL, "a", spec_path=path)
    assert path in str(raised.value)
    assert "amqp-specs" in str(raised.value)
    assert "--amqp-spec" in str(raised.value)


@pytest.mark.parametrize("dc, exchange", [("a.b", "volumecap"), ("#", "volumecap"), ("a", "x y"), ("a", "")])
def test_names_invalid(dc: str, exchange: str) -> None:
    """Data center and exchange names that would break routing raise ValueError."""
    with pytest.raises(ValueError):
        AMQPMessaging(the_reactor(), URL, dc, exchange=exchange)


def test_body_too_large() -> None:
    """A body over the maximum size raises ValueError."""
    messaging = AMQPMessaging(the_reactor(), URL, "a")
    verifyObject(IMessaging, messaging)
    with pytest.raises(ValueError):
        messaging.publish("all.x", b"x" * 100_001)


@integration
@pytest_twisted.ensureDeferred
async def test_round_trip_routing(rig: Rig) -> None:
    """all.* reaches both data centers, dc.b.* only b."""
    received: dict[str, list[tuple[str, bytes]]] = {"a": [], "b": []}
    a = await rig.started("a", lambda delivery: received["a"].append((delivery.routing_key, delivery.body)))
    await rig.started("b", lambda delivery: received["b"].append((delivery.routing_key, delivery.body)))

    for key in ("all.x", "dc.b.x", "all.y"):
        await bounded(a.publish(key, json.dumps({"key": key}).encode()))
    await wait_for(lambda: len(received["a"]) == 2 and len(received["b"]) == 3, "all deliveries")

    # One publisher's messages to one queue keep their order, so dc.b.x
    # would have reached a before all.y.
    assert received["a"] == [("all.x", b'{"key": "all.x"}'), ("all.y", b'{"key": "all.y"}')]
    assert [key for key, body in received["b"]] == ["all.x", "dc.b.x", "all.y"]
    assert await rig.counts(f"{rig.exchange}.a") == (0, 1)

    await bounded(a.stopService())
    assert not a.connected
    assert await rig.counts(f"{rig.exchange}.a") == (0, 0)


@integration
@pytest_twisted.ensureDeferred
async def test_publish_confirmed(rig: Rig) -> None:
    """The publish Deferred fires once the broker has taken the persistent message."""
    a = await rig.started("a")
    result = await bounded(a.publish("dc.a.x", b'{"n": 1}'))
    assert result is None

    # The broker routes a message before it confirms it.
    assert await rig.counts(f"{rig.exchange}.a") == (1, 0)
    message = await rig.get(f"{rig.exchange}.a")
    assert message.content.body == b'{"n": 1}'
    assert message.content["delivery-mode"] == 2
    assert message.content["content-type"] == "application/json"


@integration
@pytest_twisted.ensureDeferred
async def test_publish_burst_confirmed(rig: Rig) -> None:
    """Every publish of a burst fires, including those a multiple ack covers."""
    a = await rig.started("a")
    pending = [a.publish("dc.a.x", json.dumps({"n": number}).encode()) for number in range(500)]
    results = await bounded(DeferredList(pending, consumeErrors=True))
    assert [success for success, value in results] == [True] * 500
    assert await rig.counts(f"{rig.exchange}.a") == (500, 0)


@integration
@pytest_twisted.ensureDeferred
async def test_publish_nacked(rig: Rig) -> None:
    """A basic.nack fails the publish with PublishRejected."""
    a = await rig.started("a")
    full = f"{rig.exchange}.full"
    rig.queues.add(full)
    await rig.channel.queue_declare(queue=full, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    await rig.channel.queue_bind(queue=full, exchange=rig.exchange, routing_key="dc.full.#")

    with pytest.raises(PublishRejected):
        await bounded(a.publish("dc.full.x", b"{}"))
    await bounded(a.publish("dc.a.x", b"{}"))


@integration
@pytest_twisted.ensureDeferred
async def test_publish_unavailable(rig: Rig) -> None:
    """Publishing without a connection, or losing it before the confirm, fails."""
    a = rig.start("a")
    with pytest.raises(MessagingUnavailable):
        await bounded(a.publish("all.x", b"{}"))

    await wait_for(lambda: a.connected, "data center a to connect")
    pending = a.publish("all.x", b"{}")
    # Aborting drops the unsent publish and stops reading, so no confirm can arrive.
    a._link.client.transport.abortConnection()  # type: ignore[union-attr]
    with pytest.raises(MessagingUnavailable):
        await bounded(pending)
    assert not a.connected


@integration
@pytest_twisted.ensureDeferred
async def test_body_multiframe(rig: Rig) -> None:
    """Bodies of several frames, and empty ones, arrive as the bytes sent."""
    bodies = [
        b"a" * 200_000 + b"\xff" * 100_000,
        b"\xff" * 200_000 + b"a" * 100_000,
        "\u00e9".encode() * 150_000,
        b"",
    ]
    received: list[bytes] = []
    a = await rig.started("a", lambda delivery: received.append(delivery.body), max_body_size=1_000_000)
    for body in bodies:
        await bounded(a.publish("dc.a.x", body))
    await wait_for(lambda: len(received) == len(bodies), "all bodies")
    assert [len(body) for body in received] == [len(body) for body in bodies]
    assert received == bodies


@integration
@pytest_twisted.ensureDeferred
async def test_malformed_dead_lettered(rig: Rig) -> None:
    """A MalformedMessage handler failure moves the message to the dead-letter queue."""
    seen: list[Delivery] = []

    def handler(delivery: Delivery) -> None:
        seen.append(delivery)
        raise MalformedMessage("not JSON")

    a = await rig.started("a", handler)
    await bounded(a.publish("dc.a.x", b"not json"))
    await wait_for(lambda: len(seen) == 1, "the delivery")

    dead: list[Any] = []

    async def poll_dead() -> None:
        while not dead:
            message = await rig.get(f"{rig.exchange}.a.dead")
            if message is not None:
                dead.append(message)
                return
            await deferLater(the_reactor(), 0.05)

    await Deferred.fromCoroutine(poll_dead()).addTimeout(15, the_reactor())
    assert dead[0].content.body == b"not json"
    assert dead[0].routing_key == "a"
    assert await rig.counts(f"{rig.exchange}.a") == (0, 1)
    assert a.connected


@integration
@pytest_twisted.ensureDeferred
async def test_failed_redelivered(rig: Rig) -> None:
    """A failed delivery stays unacked and returns, redelivered, after a reconnect."""
    seen: list[Delivery] = []
    connects: list[int] = []

    def handler(delivery: Delivery) -> None:
        seen.append(delivery)
        if len(seen) == 1:
            raise RuntimeError("store unavailable")

    a = rig.start("a", handler)
    a.on_connect(lambda: connects.append(1))
    await wait_for(lambda: a.connected, "data center a to connect")
    await bounded(a.publish("dc.a.x", b'{"n": 1}'))
    await wait_for(lambda: len(seen) == 1, "the first delivery")
    assert seen[0].redelivered is False
    assert await rig.counts(f"{rig.exchange}.a") == (0, 1)

    connection = await broker_connection(a)
    await rabbitmqctl("close_connection", connection["pid"], "test closes the connection")
    await wait_for(lambda: len(seen) == 2, "the redelivery")
    assert seen[1].redelivered is True
    assert seen[1].body == b'{"n": 1}'
    assert len(connects) == 2
    assert await rig.counts(f"{rig.exchange}.a") == (0, 1)

    # Unacknowledged messages return to the queue when the consumer stops.
    await bounded(a.stopService())
    assert await rig.counts(f"{rig.exchange}.a") == (0, 0)
    assert await rig.get(f"{rig.exchange}.a.dead") is None


@integration
@pytest_twisted.ensureDeferred
async def test_reconnect_after_restart(rig: Rig) -> None:
    """After a broker restart the service reconnects with exactly one consumer."""
    replaced: list[bytes] = []
    received: list[bytes] = []
    connects: list[int] = []
    a = rig.start("a")
    a.on_connect(lambda: connects.append(1))
    await wait_for(lambda: a.connected, "data center a to connect")
    # A handler set on a live connection starts the consumer, and a second
    # one only replaces the handler.
    a.consume(lambda delivery: replaced.append(delivery.body))
    a.consume(lambda delivery: received.append(delivery.body))
    await rig.wait_for_consumers(f"{rig.exchange}.a", 1)
    # The broker handles a channel's methods in order, so a second
    # basic.consume would be in place before this message arrives.
    await bounded(a.publish("dc.a.x", b'{"before": "restart"}'))
    await wait_for(lambda: len(received) == 1, "the delivery before the restart")
    assert await rig.counts(f"{rig.exchange}.a") == (0, 1)

    try:
        await rabbitmqctl("stop_app")
        await wait_for(lambda: not a.connected, "the connection loss")
        with pytest.raises(MessagingUnavailable):
            await bounded(a.publish("dc.a.x", b"{}"))
    finally:
        await rabbitmqctl("start_app")
        await rabbitmqctl("await_startup")
    await wait_for(lambda: a.connected, "the reconnect", timeout=30)
    assert len(connects) == 2

    # The broker closed the inspecting connection too.
    await rig.open()
    await bounded(a.publish("dc.a.x", b'{"after": "restart"}'))
    await wait_for(lambda: len(received) == 2, "the delivery after the restart")
    assert received == [b'{"before": "restart"}', b'{"after": "restart"}']
    assert replaced == []
    assert await rig.counts(f"{rig.exchange}.a") == (0, 1)


@integration
@pytest_twisted.ensureDeferred
async def test_heartbeat_sent(rig: Rig) -> None:
    """The broker lists the heartbeat timeout and receives heartbeats while idle."""
    connects: list[int] = []
    a = rig.start("a", heartbeat=1)
    a.on_connect(lambda: connects.append(1))
    await wait_for(lambda: a.connected, "data center a to connect")

    first = await broker_connection(a)
    assert first["timeout"] == 1

    # With no traffic, only heartbeats make the broker read the socket.
    latest = first
    reactor = the_reactor()
    deadline = reactor.seconds() + 15
    while latest["recv_cnt"] < first["recv_cnt"] + 2:
        assert reactor.seconds() < deadline, f"no heartbeats received: {first} then {latest}"
        latest = await broker_connection(a)
    assert latest["pid"] == first["pid"]
    assert connects == [1]


@integration
@pytest_twisted.ensureDeferred
async def test_password_not_logged(rig: Rig) -> None:
    """A refused login is logged and retried, without the password."""
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    def failed_setups() -> int:
        return sum(1 for event in events if "Setting up the connection" in (formatEvent(event) or ""))

    globalLogPublisher.addObserver(observe)
    try:
        url = "amqp://guest:wrong-pw-7f3a@127.0.0.1/"
        wrong = AMQPMessaging(the_reactor(), url, "a", exchange=rig.exchange, retry_policy=fast_retry)
        rig.services.append(wrong)
        wrong.startService()
        await wait_for(lambda: failed_setups() >= 2, "two refused logins")
        assert not wrong.connected
        await bounded(wrong.stopService())
    finally:
        globalLogPublisher.removeObserver(observe)

    text = "\n".join(formatEvent(event) or "" for event in events)
    assert "failed while logging in as guest to vhost /" in text
    assert "guest:***@127.0.0.1" in text
    assert "wrong-pw-7f3a" not in text
    assert "wrong-pw-7f3a" not in repr(events)
