"""
Messaging between data centers through RabbitMQ, with txAMQP.

L{AMQPMessaging} implements L{IMessaging} over one AMQP 0-9-1 connection
with one channel.  Every connection declares the whole topology again, so a
broker that lost its definitions gets them back:

  - C{EXCHANGE}, a durable topic exchange that carries every message;
  - C{EXCHANGE.dead}, a durable direct exchange for rejected messages;
  - C{EXCHANGE.DC}, this data center's durable queue, bound with C{all.#}
    and C{dc.DC.#}, which dead-letters to C{EXCHANGE.dead} with key C{DC};
  - C{EXCHANGE.DC.dead}, bound to C{EXCHANGE.dead} with key C{DC}.

Messages are persistent and published with publisher confirms, so a publish
succeeds only once the broker has taken the message.

txAMQP 0.8.2 ships no 0-9-1 spec file, so L{DEFAULT_SPEC_PATH} names the
one in Debian's C{amqp-specs} package.  On Python 3 it also decodes each body
frame that is valid UTF-8 to C{str}.  A body of several frames then arrives as
C{str}, truncated, or as a TypeError that drops the connection.  And txAMQP
drops the connection on a content header with an array in a field table,
which every dead-lettered message has.  L{PatchedAMQClient} works around both.
"""

from __future__ import annotations

import enum
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import unquote, urlsplit

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.client import Closed, TwistedDelegate  # type: ignore[import-untyped]
from txamqp.connection import Body, Frame, Header  # type: ignore[import-untyped]
from txamqp.content import Content  # type: ignore[import-untyped]
from txamqp.message import Message  # type: ignore[import-untyped]
from txamqp.protocol import AMQClient  # type: ignore[import-untyped]
from txamqp.spec import load as load_spec  # type: ignore[import-untyped]
from zope.interface import implementer

from volumecap.messaging import Delivery, Handler, IMessaging, MessagingUnavailable, settle

DEFAULT_SPEC_PATH = "/usr/share/amqp/specs/0-9-1-rabbit/amqp0-9-1.stripped.extended.xml"
PASSWORD_VARIABLE = "VOLUMECAP_AMQP_PASSWORD"
MAX_BODY_SIZE = 100_000
"""Default maximum body size in bytes: messages between data centers are
small JSON documents, so a larger one is a bug, not a load to carry."""

_CONTENT_HEADER_FRAME = 2  # The frame type of a content header in AMQP 0-9-1.
_DC_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
_EXCHANGE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}\Z")


class PublishRejected(MessagingUnavailable):
    """
    The broker rejected a publish with C{basic.nack}, so it did not take the
    message, which may be published again later.
    """


def _mask_password(url: str) -> str:
    # Everything from the colon after the user name to the last "@" is masked,
    # so a password that contains "/" or "@" without percent-encoding is too.
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/]*:).*@", r"\1***@", url, flags=re.DOTALL)


def parse_amqp_url(url: str, environ: Mapping[str, str]) -> tuple[str, int, str, str, str]:
    """
    Split an C{amqp://user:password@host:port/vhost} URL into its parts.

    The port defaults to 5672 and the URL-encoded vhost (C{%2F} for C{/}) to
    C{/}.  A URL without a password takes it from C{environ[PASSWORD_VARIABLE]}.

    @return: C{(host, port, vhost, user, password)}
    @raise ValueError: the URL is invalid, or no password is given.
    """
    masked = _mask_password(url)
    try:
        parts = urlsplit(url)
        port = parts.port or 5672
    except ValueError:
        # urllib's message can quote part of the password, so it is not shown.
        raise ValueError(f"invalid AMQP URL {masked}: invalid port or IPv6 address") from None
    if parts.scheme != "amqp":
        raise ValueError(f"invalid AMQP URL {masked}: the scheme must be amqp://, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError(f"invalid AMQP URL {masked}: missing host name")
    if not parts.username:
        raise ValueError(f"invalid AMQP URL {masked}: missing user name, as in amqp://USER:PASSWORD@HOST")
    if parts.query or parts.fragment:
        raise ValueError(f"invalid AMQP URL {masked}: query parameters and fragments are not supported")
    if parts.path.count("/") > 1:
        raise ValueError(f"invalid AMQP URL {masked}: the vhost must be one URL-encoded path segment (%2F for /)")
    vhost = unquote(parts.path[1:]) or "/"
    password = parts.password
    if password is None:
        password = environ.get(PASSWORD_VARIABLE)
        if password is None:
            raise ValueError(f"missing password for AMQP URL {masked}: put it in the URL or set {PASSWORD_VARIABLE}")
    else:
        password = unquote(password)
    return parts.hostname, port, vhost, unquote(parts.username), password


def _describe(error: object) -> str:
    """
    Return the reason for an error, with the broker's reply code and text
    when the broker closed the channel or connection.
    """
    if isinstance(error, Failure):
        error = error.value
    if isinstance(error, Closed) and error.args:
        return _describe(error.args[0])
    if isinstance(error, Message) and error.method.name == "close":
        return f"{error.reply_code} {error.reply_text}"
    return str(error)


def _text(value: str | bytes) -> str:
    # txAMQP returns a short string as bytes when it is not valid UTF-8.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class _State(enum.Enum):
    """
    The lifecycle of L{AMQPMessaging}'s broker connection.
    """

    STOPPED = "stopped"
    CONNECTING = "connecting"  # No connection, while ClientService connects or waits to retry.
    SETTING_UP = "setting up"  # Logging in, opening the channel and declaring the topology.
    READY = "ready"
    STOPPING = "stopping"


@dataclass
class _Link:
    """
    A connection that is set up, with the publishes it has not yet had
    confirmed, by publish sequence number.
    """

    client: _Client
    channel: Any
    next_tag: int = 1
    unconfirmed: dict[int, Deferred[None]] = field(default_factory=dict)
    consuming: bool = False

    def expect_confirm(self) -> Deferred[None]:
        """
        Return a Deferred for the confirm of the next publish on the channel.
        """
        confirmed: Deferred[None] = Deferred()
        self.unconfirmed[self.next_tag] = confirmed
        self.next_tag += 1
        return confirmed

    def resolve(self, tag: int, multiple: bool, error: Exception | None) -> None:
        """
        Fire the publishes that a C{basic.ack} or C{basic.nack} covers: tag
        C{tag} alone, or with C{multiple} every tag up to it.
        """
        tags = sorted(number for number in self.unconfirmed if number <= tag) if multiple else [tag]
        for number in tags:
            confirmed = self.unconfirmed.pop(number, None)
            if confirmed is None:
                continue
            if error is None:
                confirmed.callback(None)
            else:
                confirmed.errback(error)

    def fail_unconfirmed(self, error: Exception) -> None:
        unconfirmed, self.unconfirmed = self.unconfirmed, {}
        for number in sorted(unconfirmed):
            unconfirmed[number].errback(error)


class _Delegate(TwistedDelegate):  # type: ignore[misc]
    """
    The handler of the methods that the broker sends: login, deliveries and confirms.
    """

    def __init__(self, service: AMQPMessaging) -> None:
        super().__init__()
        self.service = service

    def connection_start(self, channel: Any, message: Any) -> None:
        channel.connection_start_ok(
            client_properties=self.service.client_properties,
            mechanism=self.client.mechanism,
            response=self.client.response,
            locale=self.client.locale,
        )

    def connection_close(self, channel: Any, message: Any) -> None:
        self.client.close_message = message
        super().connection_close(channel, message)

    def basic_deliver(self, channel: Any, message: Any) -> None:
        self.service._deliver(channel, message)

    def basic_ack(self, channel: Any, message: Any) -> None:
        if self.client.link is not None:
            self.client.link.resolve(message.delivery_tag, message.multiple, None)

    def basic_nack(self, channel: Any, message: Any) -> None:
        if self.client.link is not None:
            error = PublishRejected(f"RabbitMQ at {self.service.broker} rejected the message (basic.nack)")
            self.client.link.resolve(message.delivery_tag, message.multiple, error)


class PatchedAMQClient(AMQClient):  # type: ignore[misc]
    """
    A txAMQP 0.8.2 client that receives every body as the bytes sent and
    survives content headers whose field tables it cannot decode.
    """

    def _unpack_frame(self, data: bytes) -> Any:
        try:
            frame = super()._unpack_frame(data)
        except ValueError:
            if data[0] != _CONTENT_HEADER_FRAME:
                raise
            # txAMQP decodes field tables with values of types S, I, F and t
            # only, and a dead-lettered message has an array (A) in its
            # x-death header.  The header keeps its size but loses its
            # properties, which volumecap does not read.
            _, channel, _, class_id, weight, size = struct.unpack_from("!BHIHHQ", data)
            return Frame(channel, Header(self.spec.classes.byid[class_id], weight, size))
        if isinstance(frame.payload, Body) and isinstance(frame.payload.content, str):
            # txAMQP decoded this frame as UTF-8.  Encoding it again gives
            # back exactly the bytes received, because a strict UTF-8 round
            # trip is lossless.
            frame.payload.content = frame.payload.content.encode("utf-8")
        return frame


class _Client(PatchedAMQClient):
    """
    A client that reports its connection and channel failures to the service.
    """

    link: _Link | None = None
    lost_reason: Failure | None = None
    close_message: Any = None  # The broker's connection.close, if it sent one.
    step = "connecting"

    def __init__(self, service: AMQPMessaging, spec: Any) -> None:
        super().__init__(
            _Delegate(service),
            service.vhost.encode("utf-8"),
            spec,
            heartbeat=service.heartbeat,
            clock=service.reactor,
        )
        self.service = service

    def connectionMade(self) -> None:
        super().connectionMade()
        self.service._connection_made(self)

    def connectionLost(self, reason: Failure) -> None:
        # Set first: txAMQP fails the running setup step from connectionLost.
        self.lost_reason = reason
        super().connectionLost(reason)
        self.service._connection_lost(self, reason)

    def channel_failed(self, channel: Any, reason: Failure) -> None:
        self.service._channel_failed(self, channel, reason)


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, service: AMQPMessaging, spec: Any) -> None:
        self.service = service
        self.spec = spec

    def buildProtocol(self, addr: IAddress | None) -> _Client:
        return _Client(self.service, self.spec)


@implementer(IMessaging)
class AMQPMessaging(Service):
    """
    This data center's connection to RabbitMQ, which reconnects with jittered
    exponential backoff and never gives up.

    @ivar broker: C{host:port} of the broker, for log and error messages.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: str,
        dc: str,
        exchange: str = "volumecap",
        spec_path: str = DEFAULT_SPEC_PATH,
        heartbeat: int = 10,
        prefetch: int = 100,
        retry_policy: Callable[[int], float] | None = None,
        max_body_size: int = MAX_BODY_SIZE,
        setup_timeout: float = 30.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """
        @param url: C{amqp://user:password@host:port/vhost}; see L{parse_amqp_url}.
        @param heartbeat: seconds between AMQP heartbeats, 0 to turn them off.
        @param prefetch: maximum number of unacknowledged deliveries.
        @param retry_policy: seconds to wait before reconnect attempt N.
        @param setup_timeout: seconds a new connection may take to log in and declare.
        @raise ValueError: an argument is invalid.
        @raise FileNotFoundError: C{spec_path} does not exist.
        """
        host, port, self.vhost, self._user, self._password = parse_amqp_url(
            url, os.environ if environ is None else environ
        )

        if not _DC_NAME.match(dc):
            raise ValueError(f"invalid data center name {dc!r}: use letters, digits, - and _")
        if not _EXCHANGE_NAME.match(exchange):
            raise ValueError(f"invalid exchange name {exchange!r}: use letters, digits, -, _, . and :")
        if not 0 <= heartbeat <= 65535 or not 0 <= prefetch <= 65535:
            raise ValueError(f"heartbeat ({heartbeat}) and prefetch ({prefetch}) must be from 0 to 65535")
        if not os.path.isfile(spec_path):
            raise FileNotFoundError(
                f"AMQP 0-9-1 spec file {spec_path} not found: install Debian's amqp-specs package"
                " (apt-get install amqp-specs) or name a copy of amqp0-9-1.stripped.extended.xml"
                " with the master's --amqp-spec option"
            )
        spec = load_spec(spec_path)
        if "confirm" not in spec.classes.byname:
            raise ValueError(f"AMQP spec file {spec_path} lacks confirm.select: use RabbitMQ's extended 0-9-1 spec")

        self.reactor = reactor
        self.dc = dc
        self.exchange = exchange
        self.heartbeat = heartbeat
        self.broker = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.client_properties = {"product": "volumecap", "connection_name": f"volumecap {dc} {exchange}"}
        self._url = _mask_password(url)
        self._queue = f"{exchange}.{dc}"
        self._prefetch = prefetch
        self._max_body_size = max_body_size
        self._setup_timeout = setup_timeout
        self._ids = {"broker": self.broker, "dc": dc, "exchange": exchange}
        self._state = _State.STOPPED
        self._client: _Client | None = None
        self._link: _Link | None = None
        self._handler: Handler | None = None
        self._listeners: list[Callable[[], None]] = []
        self._failed_setups = 0

        # At most 5 s between attempts, so a master is back on the broker
        # within seconds of the broker's return, however long it was away.
        policy = retry_policy or backoffPolicy(initialDelay=1.0, maxDelay=5.0)
        self._client_service = ClientService(
            HostnameEndpoint(reactor, host, port, timeout=10),
            _ClientFactory(self, spec),
            # ClientService counts only failed TCP connects.  Adding failed
            # setups, such as rejected logins, makes those back off as well.
            retryPolicy=lambda attempt: policy(attempt + self._failed_setups),
            clock=reactor,
        )

    @property
    def connected(self) -> bool:
        """
        Whether a broker connection is open and set up.
        """
        return self._state is _State.READY

    def startService(self) -> None:
        super().startService()
        self._state = _State.CONNECTING
        self.log.info(
            "Connecting to RabbitMQ at {url} for data center {dc} on exchange {exchange}", url=self._url, **self._ids
        )
        self._client_service.startService()

    def stopService(self) -> Deferred[None]:
        """
        Close the channel and connection cleanly, and stop reconnecting.
        """
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._state = _State.STOPPING
        link, self._link = self._link, None
        if link is not None:
            try:
                await self._close(link)
            except Exception as error:
                error_text = _describe(error)
                self.log.warn(
                    "Closing the connection to RabbitMQ at {broker} failed: {error}", error=error_text, **self._ids
                )
        await self._client_service.stopService()
        self._state = _State.STOPPED
        self.log.info("Disconnected data center {dc} from RabbitMQ at {broker}", **self._ids)

    async def _close(self, link: _Link) -> None:
        # Confirms that arrive before close-ok still fire their publishes, and
        # the connection loss fails the rest.
        await link.channel.channel_close(reply_code=200, reply_text="volumecap stopping").addTimeout(5, self.reactor)
        connection = await link.client.channel(0)
        await connection.connection_close(reply_code=200, reply_text="volumecap stopping").addTimeout(5, self.reactor)

    def publish(self, routing_key: str, body: bytes) -> Deferred[None]:
        """
        Publish C{body} as a persistent JSON message.

        @return: a Deferred that fires when the broker confirms the message,
            or fails with L{MessagingUnavailable} when there is no connection
            or it is lost first, or with L{PublishRejected}.  A message whose
            confirm was lost may still have reached the broker, so a caller
            that publishes it again must keep its message id.
        @raise TypeError: C{body} is not bytes.
        @raise ValueError: C{body} is longer than C{max_body_size} bytes, or
            C{routing_key} longer than 255 bytes.
        """
        if not isinstance(body, bytes):
            raise TypeError(f"message body must be bytes, not {type(body).__name__}")
        if len(body) > self._max_body_size:
            raise ValueError(f"message body of {len(body)} bytes is larger than the maximum of {self._max_body_size}")
        # txAMQP sends the length of a str before encoding it, which is wrong
        # for non-ASCII text, so the key goes out as bytes.
        key = routing_key.encode("utf-8")
        if len(key) > 255:
            raise ValueError(f"routing key {routing_key!r} is longer than 255 bytes")
        link = self._link
        if link is None or self._state is not _State.READY:
            return fail(MessagingUnavailable(f"not connected to RabbitMQ at {self.broker}"))
        confirmed = link.expect_confirm()
        content = Content(body, properties={"delivery-mode": 2, "content-type": "application/json"})
        sent = link.channel.basic_publish(exchange=self.exchange, routing_key=key, content=content)
        # Only a closed channel fails here, and its connection is then being
        # dropped, which fails the unconfirmed publishes.
        sent.addErrback(lambda failure: None)
        return confirmed

    def consume(self, handler: Handler) -> None:
        """
        Call C{handler} with each delivery of this data center's queue; see
        L{IMessaging.consume}.  A later call replaces the handler.
        """
        self._handler = handler
        link = self._link
        if link is not None and not link.consuming:
            started = Deferred.fromCoroutine(self._start_consuming(link))
            started.addErrback(self._setup_failed, link.client)

    def on_connect(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _connection_made(self, client: _Client) -> None:
        if self._state is not _State.CONNECTING:
            return
        self._state = _State.SETTING_UP
        self._client = client
        setting_up = Deferred.fromCoroutine(self._set_up(client))
        setting_up.addTimeout(self._setup_timeout, self.reactor)
        setting_up.addCallbacks(self._ready, self._setup_failed, errbackArgs=(client,))

    async def _set_up(self, client: _Client) -> _Link:
        # RabbitMQ closes the socket when it rejects a login, so only the step
        # name in the error points the operator to the credentials.
        client.step = f"logging in as {self._user} to vhost {self.vhost}"
        response = b"\0" + self._user.encode("utf-8") + b"\0" + self._password.encode("utf-8")
        await client.start(response, mechanism="PLAIN")
        client.step = "opening channel 1 with publisher confirms"
        channel = await client.channel(1)
        await channel.channel_open()
        await channel.confirm_select()
        client.step = f"declaring the exchanges and queues of {self._queue}"
        await self._declare(channel)
        await channel.basic_qos(prefetch_count=self._prefetch)
        link = _Link(client, channel)
        if self._handler is not None:
            client.step = f"starting to consume {self._queue}"
            await self._start_consuming(link)
        return link

    async def _declare(self, channel: Any) -> None:
        dead = f"{self.exchange}.dead"
        await channel.exchange_declare(exchange=self.exchange, type="topic", durable=True)
        await channel.exchange_declare(exchange=dead, type="direct", durable=True)
        arguments = {"x-dead-letter-exchange": dead, "x-dead-letter-routing-key": self.dc}
        await channel.queue_declare(queue=self._queue, durable=True, arguments=arguments)
        await channel.queue_bind(queue=self._queue, exchange=self.exchange, routing_key="all.#")
        await channel.queue_bind(queue=self._queue, exchange=self.exchange, routing_key=f"dc.{self.dc}.#")
        await channel.queue_declare(queue=f"{self._queue}.dead", durable=True)
        await channel.queue_bind(queue=f"{self._queue}.dead", exchange=dead, routing_key=self.dc)

    async def _start_consuming(self, link: _Link) -> None:
        link.consuming = True
        await link.channel.basic_consume(queue=self._queue, no_ack=False)

    def _ready(self, link: _Link) -> None:
        if link.client is not self._client or self._state is not _State.SETTING_UP:
            return
        self._failed_setups = 0
        link.client.link = self._link = link
        self._state = _State.READY
        self.log.info("Connected to RabbitMQ at {broker} as data center {dc} on exchange {exchange}", **self._ids)
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                self.log.failure("An on_connect callback of data center {dc} failed", dc=self.dc)

    def _setup_failed(self, failure: Failure, client: _Client) -> None:
        if client is not self._client or self._state is _State.STOPPING:
            return
        self._failed_setups += 1
        self.log.error(
            "Setting up the connection to RabbitMQ at {broker} for data center {dc} on exchange {exchange}"
            " failed while {step}: {error}; reconnecting{hint}",
            step=client.step,
            hint=(
                ". RabbitMQ closes the connection without a reason when it rejects a login,"
                " so check the user name and password"
                if client.step.startswith("logging in")
                else ""
            ),
            error=_describe(client.lost_reason or failure),
            **self._ids,
        )
        client.transport.abortConnection()

    def _channel_failed(self, client: _Client, channel: Any, reason: Failure) -> None:
        # During setup the failed step reports the error instead.
        if client is self._client and self._state is _State.READY:
            self.log.warn(
                "RabbitMQ at {broker} closed channel {channel} of data center {dc}: {error}; reconnecting",
                channel=channel.id,
                error=_describe(reason),
                **self._ids,
            )
        client.transport.loseConnection()

    def _connection_lost(self, client: _Client, reason: Failure) -> None:
        if client is not self._client:
            return
        self._client = None
        if self._link is not None and self._link is client.link:
            self._link = None
        if self._state is _State.READY:
            self.log.warn(
                "Lost the connection to RabbitMQ at {broker} of data center {dc} on exchange {exchange}:"
                " {error}; reconnecting",
                error=_describe(reason if client.close_message is None else client.close_message),
                **self._ids,
            )
        if self._state in (_State.SETTING_UP, _State.READY):
            self._state = _State.CONNECTING
        # Last, because the errbacks may publish, and must find no connection.
        if client.link is not None:
            client.link.fail_unconfirmed(
                MessagingUnavailable(f"the connection to RabbitMQ at {self.broker} was lost before the confirm")
            )

    def _deliver(self, channel: Any, message: Any) -> None:
        body = message.content.body
        delivery = Delivery(
            _text(message.routing_key),
            body.encode("utf-8") if isinstance(body, str) else body,  # txAMQP returns an empty body as "".
            bool(message.redelivered),
            tag=message.delivery_tag,
        )
        handler = self._handler
        assert handler is not None, "basic.consume is only sent once a handler is set"

        def ack() -> None:
            self._settle_on(channel, delivery, "basic_ack", delivery_tag=delivery.tag)

        def dead() -> None:
            self._settle_on(channel, delivery, "basic_reject", delivery_tag=delivery.tag, requeue=False)

        outcome = maybeDeferred(handler, delivery)
        outcome.addBoth(lambda result: settle(self.log, delivery, result, ack, dead))
        outcome.addErrback(
            lambda failure: self.log.failure(
                "Settling delivery {tag} ({key}) of data center {dc} failed",
                failure,
                tag=delivery.tag,
                key=delivery.routing_key,
                dc=self.dc,
            )
        )

    def _settle_on(self, channel: Any, delivery: Delivery, method: str, **arguments: Any) -> None:
        # A delivery tag is only valid on the channel that delivered it.
        if channel.closed:
            self.log.info(
                "Not settling delivery {tag} ({key}): its connection is gone, and RabbitMQ will deliver it again",
                tag=delivery.tag,
                key=delivery.routing_key,
            )
            return
        sent = getattr(channel, method)(**arguments)
        sent.addErrback(
            lambda failure: self.log.warn(
                "Sending {method} for delivery {tag} ({key}) of data center {dc} failed: {error}",
                method=method,
                tag=delivery.tag,
                key=delivery.routing_key,
                dc=self.dc,
                error=_describe(failure),
            )
        )
