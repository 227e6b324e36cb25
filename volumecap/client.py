"""
The client library: how applications call volumecap servers.

L{VolumecapClient} is for Twisted applications: its methods return
Deferreds, which C{async def} code can C{await}.  L{BlockingClient} is for
applications that do not run a reactor: the same methods return values, over
a plain socket.

Amounts go in as C{int}, L{Decimal} or decimal strings and come back as
L{Decimal}.  Binary floats are rejected, because they cannot represent most
decimal fractions exactly.  Failures are the exceptions of
L{volumecap.errors}: L{CappedError}, L{UnknownCapError},
L{InvalidAmountError} and L{UnavailableError}.

Example::

    client = VolumecapClient(reactor, "tcp:127.0.0.1:7200")
    remaining = await client.consume("campaign-1111", 1)
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterable, Sequence, Union, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, DeferredList, FirstError, fail, gatherResults
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure

from volumecap.errors import AMP_ERRORS, InvalidAmountError, UnavailableError, VolumecapError
from volumecap.wire.clientcommands import MAX_BATCH, Consume, ConsumeMany, Query

AmountLike = Union[int, Decimal, str]
ConsumeResult = Union[Decimal, VolumecapError]

_ERRORS_BY_CODE: dict[str, type[VolumecapError]] = {
    code.decode("ascii"): error for error, code in AMP_ERRORS.items() if issubclass(error, VolumecapError)
}


@dataclass(frozen=True)
class Holding:
    """
    One server's holding of a cap's current interval, with the interval's
    bounds.
    """

    available: Decimal
    consumed: Decimal
    start: datetime
    end: datetime


def wire_amount(amount: object) -> str:
    """
    Convert an application's amount to the decimal string sent to a server,
    which checks it against the scale.

    @raise InvalidAmountError: a float, a bool or another type.
    """
    if isinstance(amount, str):
        return amount
    if isinstance(amount, int) and not isinstance(amount, bool):
        return str(amount)
    if isinstance(amount, Decimal):
        return format(amount, "f") if amount.is_finite() else str(amount)
    raise InvalidAmountError(
        f"invalid amount {amount!r}: pass an int, a Decimal or a decimal string, "
        f"not a {type(amount).__name__}"
    )


def _holding(response: dict[str, Any]) -> Holding:
    return Holding(
        available=Decimal(response["available"]),
        consumed=Decimal(response["consumed"]),
        start=datetime.fromtimestamp(response["start"], timezone.utc),
        end=datetime.fromtimestamp(response["end"], timezone.utc),
    )


def _results(response: dict[str, Any]) -> list[ConsumeResult]:
    results: list[ConsumeResult] = []
    for remaining, code, message in zip(response["remaining"], response["errors"], response["messages"]):
        if not code:
            results.append(Decimal(remaining))
        else:
            error = _ERRORS_BY_CODE.get(code, UnavailableError)
            results.append(error(message or code))
    return results


def _batches(pairs: Iterable[tuple[str, AmountLike]]) -> list[dict[str, list[str]]]:
    caps: list[str] = []
    amounts: list[str] = []
    for cap_id, amount in pairs:
        caps.append(cap_id)
        amounts.append(wire_amount(amount))
    return [
        {"caps": caps[offset : offset + MAX_BATCH], "amounts": amounts[offset : offset + MAX_BATCH]}
        for offset in range(0, len(caps), MAX_BATCH)
    ]


def _call_remote(
    protocol: IProtocol, command: type[amp.Command], arguments: dict[str, Any]
) -> Deferred[dict[str, Any]]:
    # Every connection is a _TrackingProtocol, built by the factory in
    # VolumecapClient.__init__, but whenConnected() is typed as IProtocol.
    response: Deferred[dict[str, Any]] = cast(amp.AMP, protocol).callRemote(command, **arguments)
    return response


def _first_failure(failure: Failure) -> Failure:
    # gatherResults(consumeErrors=True) wraps the first failed call in FirstError.
    return cast(FirstError, failure.value).subFailure


class _TrackingProtocol(amp.AMP):
    def __init__(self, client: "VolumecapClient") -> None:
        super().__init__()
        self._client = client

    def connectionMade(self) -> None:
        super().connectionMade()
        self._client._connected.append(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self in self._client._connected:
            self._client._connected.remove(self)


class VolumecapClient:
    """
    A Twisted client of one or more volumecap servers.

    Each endpoint gets a connection that reconnects by itself.  Calls go to
    the connected servers in turn.  With none connected, a call waits up to
    C{connect_timeout} seconds for any endpoint to connect, then fails with
    L{UnavailableError}.

    @param endpoints: Twisted client endpoint strings, such as
        C{tcp:127.0.0.1:7200}.
    """

    def __init__(
        self, reactor: Any, endpoints: str | Sequence[str], connect_timeout: float = 5.0
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ValueError("VolumecapClient needs at least one endpoint")
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._connected: list[amp.AMP] = []
        self._turn = itertools.count()
        self._services = []
        for description in endpoints:
            service = ClientService(
                clientFromString(reactor, description),
                Factory.forProtocol(lambda: _TrackingProtocol(self)),
                retryPolicy=backoffPolicy(initialDelay=0.1, maxDelay=2.0),
                clock=reactor,
            )
            service.startService()
            self._services.append(service)

    def _call(self, command: type[amp.Command], **arguments: Any) -> "Deferred[dict[str, Any]]":
        connected = self._connected
        if connected:
            protocol = connected[next(self._turn) % len(connected)]
            return _call_remote(protocol, command, arguments).addErrback(self._lost)
        waiting = self._first_connection()
        waiting.addTimeout(self._connect_timeout, self._reactor)
        waiting.addErrback(self._not_connected)
        return waiting.addCallback(_call_remote, command, arguments).addErrback(self._lost)

    def _first_connection(self) -> "Deferred[Any]":
        """
        Return a Deferred of the first protocol any endpoint connects,
        cancelling the waits on the other endpoints.
        """
        waits = [service.whenConnected() for service in self._services]
        first: Deferred[Any] = DeferredList(waits, fireOnOneCallback=True, consumeErrors=True)

        def cancel_others(result: Any) -> Any:
            for wait in waits:
                if not wait.called:
                    wait.cancel()
            return result

        first.addBoth(cancel_others)
        return first.addCallback(lambda protocol_and_index: protocol_and_index[0])

    @staticmethod
    def _not_connected(failure: Failure) -> Failure:
        raise UnavailableError(f"no volumecap server reachable: {failure.getErrorMessage()}")

    @staticmethod
    def _lost(failure: Failure) -> Failure:
        if failure.check(ConnectionClosed):
            raise UnavailableError(
                "connection to the volumecap server closed before it responded, so "
                "the call may or may not have been applied"
            )
        return failure

    def consume(self, cap_id: str, amount: AmountLike) -> "Deferred[Decimal]":
        """
        Consume C{amount} of C{cap_id}, all or nothing.

        @return: a Deferred of the amount the server still holds for the
            cap's current interval.
        """
        try:
            wire = wire_amount(amount)
        except InvalidAmountError:
            return fail()
        return self._call(Consume, cap=cap_id, amount=wire).addCallback(
            lambda response: Decimal(response["remaining"])
        )

    def consume_many(self, pairs: Iterable[tuple[str, AmountLike]]) -> "Deferred[list[ConsumeResult]]":
        """
        Consume independent C{(cap_id, amount)} pairs.

        @return: a Deferred of one result per pair, in order: the remaining
            amount as a L{Decimal}, or the L{VolumecapError} for that pair.
            Lists longer than L{MAX_BATCH} go out as several concurrent
            calls.
        """
        try:
            batches = _batches(pairs)
        except InvalidAmountError:
            return fail()
        calls = [self._call(ConsumeMany, **batch).addCallback(_results) for batch in batches]
        gathered = gatherResults(calls, consumeErrors=True)
        gathered.addErrback(_first_failure)
        return gathered.addCallback(lambda lists: [result for results in lists for result in results])

    def query(self, cap_id: str) -> "Deferred[Holding]":
        """
        Return what the server holds of C{cap_id}'s current interval.
        """
        return self._call(Query, cap=cap_id).addCallback(_holding)

    def close(self) -> "Deferred[Any]":
        """
        Close every connection and stop reconnecting.
        """
        return gatherResults([service.stopService() for service in self._services])


def parse_endpoint(description: str) -> tuple[int, Any]:
    """
    Parse a C{tcp:} or C{unix:} client endpoint string for a plain socket.

    @return: the socket family and address.
    @raise ValueError: another endpoint type, or a malformed string.
    """
    kind, _, rest = description.partition(":")
    fields = rest.split(":")
    named = dict(field.split("=", 1) for field in fields if "=" in field)
    positional = [field for field in fields if "=" not in field]
    if kind == "tcp":
        host = named.get("host") or (positional[0] if positional else "")
        port = named.get("port") or (positional[1] if len(positional) > 1 else "")
        if not host or not port.isdigit():
            raise ValueError(f"invalid endpoint {description!r}: expected tcp:HOST:PORT")
        return socket.AF_INET6 if ":" in host else socket.AF_INET, (host, int(port))
    if kind == "unix":
        path = named.get("path") or (positional[0] if positional else "")
        if not path:
            raise ValueError(f"invalid endpoint {description!r}: expected unix:PATH")
        return socket.AF_UNIX, path
    raise ValueError(
        f"invalid endpoint {description!r}: BlockingClient supports tcp:HOST:PORT and unix:PATH"
    )


class BlockingClient:
    """
    A client for applications that do not run a reactor.

    It speaks AMP over one plain socket, connecting on first use and again
    after a failure.  It is safe to share between threads: calls are
    serialised by a lock.

    @param endpoint: C{tcp:HOST:PORT} or C{unix:PATH}.
    @param timeout: seconds to wait for a connection or a response.
    """

    def __init__(self, endpoint: str, timeout: float = 5.0) -> None:
        self._family, self._address = parse_endpoint(endpoint)
        self._endpoint = endpoint
        self._timeout = timeout
        self._socket: socket.socket | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        self._tags = itertools.count(1)

    def consume(self, cap_id: str, amount: AmountLike) -> Decimal:
        """
        Consume C{amount} of C{cap_id}; see L{VolumecapClient.consume}.
        """
        response = self._call(Consume, cap=cap_id, amount=wire_amount(amount))
        return Decimal(response["remaining"])

    def consume_many(self, pairs: Iterable[tuple[str, AmountLike]]) -> list[ConsumeResult]:
        """
        Consume independent pairs; see L{VolumecapClient.consume_many}.
        """
        results: list[ConsumeResult] = []
        for batch in _batches(pairs):
            results.extend(_results(self._call(ConsumeMany, **batch)))
        return results

    def query(self, cap_id: str) -> Holding:
        """
        Return the server's holding of C{cap_id}; see L{VolumecapClient.query}.
        """
        return _holding(self._call(Query, cap=cap_id))

    def close(self) -> None:
        """
        Close the socket.  The next call connects again.
        """
        with self._lock:
            self._disconnect()

    def __enter__(self) -> "BlockingClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _disconnect(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._socket = None
        self._buffer = b""

    def _call(self, command: type[amp.Command], **arguments: Any) -> dict[str, Any]:
        box = command.makeArguments(arguments, None)
        box[b"_command"] = command.commandName
        with self._lock:
            tag = str(next(self._tags)).encode("ascii")
            box[b"_ask"] = tag
            try:
                if self._socket is None:
                    self._socket = self._connect()
                self._socket.sendall(box.serialize())
                answer = self._read_box()
            except TimeoutError:
                self._disconnect()
                raise UnavailableError(
                    f"volumecap server {self._endpoint} did not respond within {self._timeout} s; "
                    f"the call may or may not have been applied"
                ) from None
            except OSError as error:
                self._disconnect()
                raise UnavailableError(f"volumecap server {self._endpoint} not reachable: {error}") from None
        if answer.get(b"_answer") == tag:
            response: dict[str, Any] = command.parseResponse(answer, None)
            return response
        if answer.get(b"_error") == tag:
            code = answer.get(b"_error_code", b"")
            description = answer.get(b"_error_description", b"").decode("utf-8", "replace")
            # Command's metaclass sets reverseErrors, so Twisted's annotations omit it.
            reverse_errors: dict[bytes, type[Exception]] = getattr(command, "reverseErrors")
            error_class = reverse_errors.get(code)
            if error_class is None:
                raise UnavailableError(f"volumecap server error {code.decode('ascii', 'replace')}: {description}")
            raise error_class(description)
        self._disconnect()
        raise UnavailableError(f"volumecap server {self._endpoint} sent an unexpected response")

    def _connect(self) -> socket.socket:
        connection = socket.socket(self._family, socket.SOCK_STREAM)
        connection.settimeout(self._timeout)
        if self._family != socket.AF_UNIX:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            connection.connect(self._address)
        except OSError:
            connection.close()
            raise
        return connection

    def _read_box(self) -> dict[bytes, bytes]:
        box: dict[bytes, bytes] = {}
        while True:
            key = self._read_field()
            if not key:
                return box
            box[key] = self._read_field()

    def _read_field(self) -> bytes:
        length = struct.unpack("!H", self._read_exactly(2))[0]
        return self._read_exactly(length)

    def _read_exactly(self, size: int) -> bytes:
        assert self._socket is not None
        while len(self._buffer) < size:
            chunk = self._socket.recv(65536)
            if not chunk:
                raise ConnectionResetError("connection closed by the server")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data
