"""
The client library against small AMP servers on 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
from decimal import Decimal
from typing import Iterator

import pytest
import pytest_twisted
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from volumecap.client import BlockingClient, VolumecapClient
from volumecap.errors import UnavailableError
from volumecap.wire.clientcommands import Consume


class FixedServer(amp.CommandLocator):
    """
    A server whose every consume succeeds with 1.00 remaining.
    """

    @Consume.responder
    def consume(self, cap: str, amount: str) -> dict[str, str]:
        return {"remaining": "1.00"}


def closed_port() -> int:
    """
    Return a port on 127.0.0.1 that nothing listens on.
    """
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


@pytest_twisted.ensureDeferred
async def test_second_endpoint_serves() -> None:
    """
    With the first endpoint down, a call goes to the second one.
    """
    from twisted.internet import reactor

    listening = reactor.listenTCP(0, Factory.forProtocol(lambda: amp.AMP(locator=FixedServer())), interface="127.0.0.1")
    port = listening.getHost().port
    client = VolumecapClient(reactor, [f"tcp:127.0.0.1:{closed_port()}", f"tcp:127.0.0.1:{port}"], connect_timeout=5)
    try:
        assert await client.consume("c", 1) == Decimal("1.00")
    finally:
        await client.close()
        await listening.stopListening()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """
    A port on 127.0.0.1 that accepts connections and never responds.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def test_blocking_timeout_message(silent_port: int) -> None:
    """
    A server that never responds makes BlockingClient raise UnavailableError
    saying the consume may have been applied.
    """
    client = BlockingClient(f"tcp:127.0.0.1:{silent_port}", timeout=0.2)
    with pytest.raises(UnavailableError) as raised:
        client.consume("c", 1)
    assert "may or may not have been applied" in str(raised.value)


def test_blocking_refused() -> None:
    """
    A refused connection makes BlockingClient raise UnavailableError naming
    the endpoint.
    """
    port = closed_port()
    with pytest.raises(UnavailableError) as raised:
        BlockingClient(f"tcp:127.0.0.1:{port}", timeout=1).consume("c", 1)
    assert f"tcp:127.0.0.1:{port}" in str(raised.value)


def test_float_amount_rejected() -> None:
    """
    A binary float amount is rejected before anything is sent.
    """
    from volumecap.errors import InvalidAmountError

    with pytest.raises(InvalidAmountError):
        BlockingClient("tcp:127.0.0.1:1").consume("c", 0.1)  # type: ignore[arg-type]


