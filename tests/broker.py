"""
Helpers for integration tests that use the RabbitMQ broker at
127.0.0.1:5672 with the guest account.

L{rabbitmqctl} runs the broker's command line tool, L{queue_table} parses its
queue listing, and L{remove_topology} deletes the queues and exchanges that
the masters of one test declared.  L{publish} and the exchange deletion speak
AMQP through txAMQP in a child process (C{python -m tests.broker}), so a
synchronous test needs no reactor of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

HOST = "127.0.0.1"
PORT = 5672
USER = "guest"
PASSWORD = "guest"
URL = f"amqp://{USER}@{HOST}:{PORT}/"

# Seconds one rabbitmqctl command may take before the test fails.  The
# slowest is start_app, which starts the broker's application.
CTL_TIMEOUT = 120.0

# Seconds the AMQP child process may take to connect and do its work.
AMQP_TIMEOUT = 30.0

_REPOSITORY = Path(__file__).resolve().parents[1]


class BrokerError(AssertionError):
    """
    A rabbitmqctl command or an AMQP operation failed.
    """


def rabbitmqctl(*arguments: str, timeout: float = CTL_TIMEOUT) -> str:
    """
    Run C{rabbitmqctl} with C{arguments} and return its standard output.

    @raise BrokerError: it exited with a non-zero status, which the
        message gives with its standard error.
    """
    executable = shutil.which("rabbitmqctl")
    if executable is None:
        raise BrokerError("rabbitmqctl not found on PATH: install RabbitMQ (Debian package rabbitmq-server)")
    finished = subprocess.run(
        [executable, *arguments], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if finished.returncode != 0:
        raise BrokerError(
            f"rabbitmqctl {' '.join(arguments)} exited with status {finished.returncode}: {finished.stderr.strip()}"
        )
    return finished.stdout


def queue_table(*columns: str) -> dict[str, list[str]]:
    """
    Return the broker's queues in the default vhost as
    C{{name: [value of each column]}}, parsed from C{rabbitmqctl list_queues}.
    """
    output = rabbitmqctl("list_queues", "--quiet", "--no-table-headers", "name", *columns)
    table: dict[str, list[str]] = {}
    for line in output.splitlines():
        if not line.strip():
            continue
        name, *values = line.split("\t")
        if len(values) != len(columns):
            raise BrokerError(f"rabbitmqctl list_queues printed {line!r}; expected a name and {len(columns)} columns")
        table[name] = values
    return table


def queue_counts(column: str, names: Iterable[str]) -> dict[str, int | None]:
    """
    Return one integer column of C{rabbitmqctl list_queues}, such as
    C{consumers} or C{messages}, for the queues C{names}.  A queue that does
    not exist maps to None.
    """
    table = queue_table(column)
    return {name: int(table[name][0]) if name in table else None for name in names}


def queue_names(exchange: str, dcs: Iterable[str]) -> list[str]:
    """
    Return the names of the queues that the masters of C{dcs} declare on
    C{exchange}: C{EXCHANGE.DC} and C{EXCHANGE.DC.dead} for each.
    """
    return [name for dc in dcs for name in (f"{exchange}.{dc}", f"{exchange}.{dc}.dead")]


def publish(exchange: str, routing_key: str, body: bytes) -> None:
    """
    Publish C{body} as a persistent message to C{exchange} with
    C{routing_key}.

    It returns once the broker has routed the message, because the child
    process closes its channel afterwards and a broker handles the methods
    of a channel in order.
    """
    _amqp_child(["publish", exchange, routing_key], body)


def delete_exchanges(names: Sequence[str]) -> None:
    """
    Delete the exchanges C{names}.  RabbitMQ 3.10 accepts the deletion of an
    exchange that does not exist.
    """
    _amqp_child(["delete-exchanges", *names], b"")


def remove_topology(exchange: str, dcs: Iterable[str]) -> None:
    """
    Delete the queues of C{dcs} on C{exchange} with C{rabbitmqctl
    delete_queue}, then the exchange and its dead-letter exchange.

    Every deletion is tried, and the failures are raised together at the
    end.  A queue that is already gone is no failure.

    @raise BrokerError: a queue or an exchange could not be deleted.
    """
    existing = set(queue_table())
    executable = shutil.which("rabbitmqctl") or "rabbitmqctl"
    deletions = {
        name: subprocess.Popen(
            [executable, "delete_queue", name],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in queue_names(exchange, dcs)
        if name in existing
    }
    failures = []
    for name, deletion in deletions.items():
        _, errors = deletion.communicate(timeout=CTL_TIMEOUT)
        if deletion.returncode != 0:
            failures.append(f"rabbitmqctl delete_queue {name} exited with {deletion.returncode}: {errors.strip()}")
    try:
        delete_exchanges([exchange, f"{exchange}.dead"])
    except BrokerError as error:
        failures.append(str(error))
    left = sorted(name for name in queue_table() if name.startswith(f"{exchange}."))
    if left:
        failures.append(f"queues left on the broker: {left}")
    if failures:
        raise BrokerError("removing the broker topology failed:\n" + "\n".join(failures))


def _amqp_child(arguments: list[str], stdin: bytes) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "tests.broker", *arguments],
        cwd=_REPOSITORY,
        input=stdin,
        capture_output=True,
        timeout=AMQP_TIMEOUT,
    )
    if finished.returncode != 0:
        output = (finished.stdout + finished.stderr).decode("utf-8", "replace").strip()
        raise BrokerError(f"AMQP {' '.join(arguments)} failed with status {finished.returncode}: {output}")


async def _run_amqp(reactor: Any, command: str, arguments: list[str], body: bytes) -> None:
    """
    Connect to the broker, run one command on channel 1 and close cleanly.
    """
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory
    from txamqp.client import TwistedDelegate  # type: ignore[import-untyped]
    from txamqp.content import Content  # type: ignore[import-untyped]
    from txamqp.spec import load as load_spec  # type: ignore[import-untyped]

    from volumecap.amqp import DEFAULT_SPEC_PATH, PatchedAMQClient

    spec = load_spec(DEFAULT_SPEC_PATH)
    endpoint = TCP4ClientEndpoint(reactor, HOST, PORT, timeout=10)
    factory = Factory.forProtocol(lambda: PatchedAMQClient(TwistedDelegate(), "/", spec, clock=reactor))
    client: Any = await endpoint.connect(factory)
    await client.authenticate(USER, PASSWORD)
    channel = await client.channel(1)
    await channel.channel_open()
    if command == "publish":
        exchange, routing_key = arguments
        content = Content(body, properties={"delivery-mode": 2})
        await channel.basic_publish(exchange=exchange, routing_key=routing_key.encode("utf-8"), content=content)
    elif command == "delete-exchanges":
        for name in arguments:
            await channel.exchange_delete(exchange=name)
    else:
        raise SystemExit(f"unknown command {command!r}; expected publish or delete-exchanges")
    await channel.channel_close(reply_code=200, reply_text="done")
    await client.close(within=5)


def main(argv: list[str]) -> None:
    """
    Run C{publish EXCHANGE ROUTING_KEY} (the body comes from standard input)
    or C{delete-exchanges NAME...} against the broker.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    if not argv:
        raise SystemExit("usage: python -m tests.broker publish EXCHANGE KEY < BODY | delete-exchanges NAME...")
    body = sys.stdin.buffer.read() if argv[0] == "publish" else b""
    react(lambda reactor: Deferred.fromCoroutine(_run_amqp(reactor, argv[0], argv[1:], body)))


if __name__ == "__main__":
    main(sys.argv[1:])
