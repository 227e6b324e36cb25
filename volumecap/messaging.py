"""
Messaging between data centers: a small interface and an in-memory broker.

The remote handler talks to the other data centers only through
L{IMessaging}: it publishes bodies under routing keys and consumes the
deliveries of its own data center's queue.  L{volumecap.amqp} implements
the interface with RabbitMQ through txAMQP; L{MemoryMessaging} implements it
in memory, for deterministic tests.

Routing follows one topic exchange: a key C{all.TYPE} reaches every data
center's queue, and C{dc.NAME.TYPE} only the queue of data center NAME.  A
data center receives its own broadcasts too, and ignores them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer


class MessagingUnavailable(Exception):
    """
    The broker cannot take a message now: the connection is down.
    """


class MalformedMessage(Exception):
    """
    A delivery is invalid, so it goes to the dead-letter queue.
    """


@dataclass
class Delivery:
    """
    One message received from this data center's queue.

    @ivar tag: the implementation's handle for acknowledging it.
    @ivar redelivered: the broker delivered it before without an ack.
    """

    routing_key: str
    body: bytes
    redelivered: bool = False
    tag: Any = None


Handler = Callable[[Delivery], "Deferred[Any] | None"]


class IMessaging(Interface):
    """
    Publish to the data centers and consume this data center's queue.
    """

    connected = Attribute("True while a broker connection is open and set up.")

    def publish(routing_key: str, body: bytes) -> "Deferred[None]":
        """
        Publish C{body} as a persistent message.

        @return: a Deferred that fires once the broker has confirmed it, or
            fails with L{MessagingUnavailable} when there is no connection.
        """

    def consume(handler: Handler) -> None:
        """
        Call C{handler} with each delivery of this data center's queue.

        A delivery is acknowledged once the handler's result succeeds, so
        the handler returns a Deferred that fires after the message's effect
        is durable.  A L{MalformedMessage} failure sends it to the
        dead-letter queue.  Any other failure leaves it unacknowledged, to be
        delivered again after the next reconnect.
        """

    def on_connect(callback: Callable[[], None]) -> None:
        """
        Call C{callback} after every (re)connection is set up.
        """


def settle(messaging_log: Logger, delivery: Delivery, result: object, ack: Callable[[], None], dead: Callable[[], None]) -> None:
    """
    Acknowledge or dead-letter C{delivery} by the outcome of its handler.
    """
    if not isinstance(result, Failure):
        ack()
    elif result.check(MalformedMessage):
        messaging_log.warn(
            "Dead-lettering a message with routing key {key}: {error}",
            key=delivery.routing_key,
            error=result.getErrorMessage(),
        )
        dead()
    else:
        # NOTE: the broker delivers it again only after a reconnect, so enough
        # such failures in a row fill the prefetch window and stall the queue.
        messaging_log.failure(
            "Handling a message with routing key {key} failed, so it stays unacknowledged",
            result,
            key=delivery.routing_key,
        )


@dataclass
class _Queued:
    number: int
    routing_key: str
    body: bytes
    redelivered: bool = False


@dataclass
class _Queue:
    name: str
    ready: list[_Queued] = field(default_factory=list)
    unacked: dict[int, _Queued] = field(default_factory=dict)
    dead: list[_Queued] = field(default_factory=list)
    consumer: "MemoryMessaging | None" = None


class MemoryBroker:
    """
    An in-memory broker with RabbitMQ's topic routing, one queue per data
    center, manual acknowledgements and dead-letter queues.

    Nothing moves until the test calls L{deliver}, so a test decides the
    order of events.  L{duplicate} and L{reorder} reproduce faults that a
    real network can cause.
    """

    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}
        self.up = True
        self._numbers = itertools.count(1)

    def queue(self, dc: str) -> _Queue:
        return self.queues.setdefault(dc, _Queue(dc))

    def route(self, routing_key: str, body: bytes) -> None:
        parts = routing_key.split(".")
        if parts[0] == "all":
            targets = list(self.queues.values())
        elif parts[0] == "dc" and len(parts) > 2:
            targets = [self.queue(parts[1])]
        else:
            targets = []
        for queue in targets:
            queue.ready.append(_Queued(next(self._numbers), routing_key, body))

    def deliver(self, only: str | None = None, limit: int = 100_000) -> int:
        """
        Hand ready messages to their consumers, only those of data center
        C{only} when given, and return how many moved.
        """
        moved = 0
        progress = True
        while progress and moved < limit:
            progress = False
            for queue in self.queues.values():
                if only is not None and queue.name != only:
                    continue
                consumer = queue.consumer
                if consumer is None or not consumer.connected or not queue.ready:
                    continue
                message = queue.ready.pop(0)
                queue.unacked[message.number] = message
                consumer.receive(queue, message)
                moved += 1
                progress = True
        return moved

    def duplicate(self, dc: str, index: int = -1) -> None:
        """
        Queue a second copy of a ready message for data center C{dc}.
        """
        queue = self.queue(dc)
        original = queue.ready[index]
        queue.ready.append(_Queued(next(self._numbers), original.routing_key, original.body, True))

    def reorder(self, dc: str) -> None:
        """
        Reverse the order of the ready messages for data center C{dc}.
        """
        self.queue(dc).ready.reverse()

    def stop(self) -> None:
        """
        Stop the broker: every connection drops and unacknowledged messages
        return to their queues.
        """
        self.up = False
        for queue in self.queues.values():
            if queue.consumer is not None:
                queue.consumer.disconnected()
            self._requeue(queue)

    def drop(self, dc: str) -> None:
        """
        Drop data center C{dc}'s connection, as when its process dies:
        unacknowledged messages return to its queue.
        """
        queue = self.queue(dc)
        if queue.consumer is not None:
            queue.consumer.disconnected()
            queue.consumer = None
        self._requeue(queue)

    def _requeue(self, queue: _Queue) -> None:
        returned = sorted(queue.unacked.values(), key=lambda message: message.number)
        for message in returned:
            message.redelivered = True
        queue.ready[:0] = returned
        queue.unacked.clear()

    def start(self) -> None:
        """
        Start the broker again; consumers reconnect.
        """
        self.up = True
        for queue in self.queues.values():
            if queue.consumer is not None:
                queue.consumer.reconnect()


@implementer(IMessaging)
class MemoryMessaging(Service):
    """
    One data center's connection to a L{MemoryBroker}.
    """

    log = Logger()

    def __init__(self, broker: MemoryBroker, dc: str) -> None:
        self.broker = broker
        self.dc = dc
        self.connected = False
        self.published: list[tuple[str, bytes]] = []
        self._handler: Handler | None = None
        self._listeners: list[Callable[[], None]] = []
        broker.queue(dc).consumer = self

    def startService(self) -> None:
        super().startService()
        self.reconnect()

    def stopService(self) -> None:
        super().stopService()
        self.disconnected()

    def reconnect(self) -> None:
        if not self.running or not self.broker.up:
            return
        self.connected = True
        for listener in list(self._listeners):
            listener()

    def disconnected(self) -> None:
        self.connected = False

    def publish(self, routing_key: str, body: bytes) -> "Deferred[None]":
        if not self.connected:
            return fail(MessagingUnavailable("the broker is not connected"))
        self.published.append((routing_key, body))
        self.broker.route(routing_key, body)
        return succeed(None)

    def consume(self, handler: Handler) -> None:
        self._handler = handler

    def on_connect(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def receive(self, queue: _Queue, message: _Queued) -> None:
        assert self._handler is not None, "consume() was not called"
        delivery = Delivery(message.routing_key, message.body, message.redelivered, message.number)
        outcome = maybeDeferred(self._handler, delivery)

        def ack() -> None:
            queue.unacked.pop(message.number, None)

        def dead() -> None:
            if queue.unacked.pop(message.number, None) is not None:
                queue.dead.append(message)

        outcome.addBoth(lambda result: settle(self.log, delivery, result, ack, dead))
