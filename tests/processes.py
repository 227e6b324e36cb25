"""
Helpers for integration tests that run real C{twistd} processes on loopback.

L{Cluster} starts masters and volumecap servers as child processes, waits
until each one is ready by polling for an observable condition, and stops or
kills them.  Its L{Cluster.close} ends every process it started, so a test
fixture can call it in its finalizer.  L{admin} sends one admin command to a
master over a plain blocking socket.  Every address is 127.0.0.1.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, TypeVar

from twisted.protocols import amp

from volumecap.client import BlockingClient
from volumecap.errors import CappedError, UnavailableError, UnknownCapError
from volumecap.wire.admincommands import SetCap, ShowCap, Status

HOST = "127.0.0.1"

# Seconds a process gets to become ready, and to exit after SIGTERM.  Both
# are generous because the test machine may run a dozen processes on two
# cores.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

# Seconds between two checks of a polled condition.
POLL_INTERVAL = 0.02

# Lines of a process's log quoted in a failure message.
TAIL_LINES = 40

# Runs twistd from the interpreter running the tests, so the processes use
# the same virtual environment.  "python -m twisted" would run twist, which
# does not take twistd's options.
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

T = TypeVar("T")


class AdminError(Exception):
    """
    A master responded to an admin command with an error that the command
    does not declare.
    """


def free_port() -> int:
    """
    Return a TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) < size:
        raise ConnectionResetError("the master closed the connection before it responded")
    return data


def _read_box(stream: BinaryIO) -> dict[bytes, bytes]:
    box: dict[bytes, bytes] = {}
    while True:
        (length,) = struct.unpack("!H", _read_exactly(stream, 2))
        if length == 0:
            return box
        key = _read_exactly(stream, length)
        (length,) = struct.unpack("!H", _read_exactly(stream, 2))
        box[key] = _read_exactly(stream, length)


def admin(port: int, command: type[amp.Command], timeout: float = 5.0, **arguments: Any) -> dict[str, Any]:
    """
    Send one admin C{command} to the master on C{port} and return its parsed
    response.

    @raise OSError: the master is not reachable or closed the connection.
    @raise AdminError: the master returned an undeclared error.
    @raise Exception: an error the command declares, such as
        L{UnknownCapError}, as its own class.
    """
    box = command.makeArguments(arguments, None)
    box[b"_command"] = command.commandName
    box[b"_ask"] = b"1"
    with socket.create_connection((HOST, port), timeout=timeout) as connection:
        connection.sendall(box.serialize())
        with connection.makefile("rb") as stream:
            answer = _read_box(stream)
    if b"_answer" in answer:
        response: dict[str, Any] = command.parseResponse(answer, None)
        return response
    code = answer.get(b"_error_code", b"")
    description = answer.get(b"_error_description", b"").decode("utf-8", "replace")
    error_class = {error_code: error for error, error_code in command.errors.items()}.get(code)
    if error_class is None:
        raise AdminError(f"{command.commandName.decode()} failed with {code.decode()}: {description}")
    raise error_class(description)


def cap_window() -> tuple[str, str, str]:
    """
    Return the start, end and time zone of the caps these tests define.

    Caps run from a year ago to a year ahead, in a fixed-offset zone whose
    local time is now between noon and 13:00, so no run crosses a day's
    boundary.
    """
    now = datetime.now(timezone.utc)
    offset = 12 - now.hour
    # The signs of the Etc zones are inverted: Etc/GMT-3 is three hours
    # ahead of UTC.
    zone = "Etc/GMT" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"
    start = (now - timedelta(days=365)).date().isoformat()
    end = (now + timedelta(days=365)).date().isoformat()
    return start, end, zone


def set_cap(port: int, cap_id: str, total: str = "1000") -> str:
    """
    Define a daily cap over L{cap_window} and return the outcome:
    C{created}, C{updated} or C{unchanged}.
    """
    start, end, zone = cap_window()
    response = admin(
        port,
        SetCap,
        id=cap_id,
        interval="day",
        start=start,
        end=end,
        total=total,
        timezone=zone,
    )
    outcome: str = response["outcome"]
    return outcome


def current_interval(port: int, cap_id: str) -> dict[str, Any]:
    """
    Return the master's figures for the current interval of C{cap_id}: the
    first one that C{ShowCap} lists, because the master keeps only the
    current and the next interval of an active cap.
    """
    interval: dict[str, Any] = admin(port, ShowCap, id=cap_id)["intervals"][0]
    return interval


def master_available(port: int, cap_id: str) -> Decimal:
    """
    Return what the master has not handed out of the current interval.
    """
    return Decimal(current_interval(port, cap_id)["available"])


def server_figures(port: int, cap_id: str) -> dict[str, tuple[Decimal, Decimal]]:
    """
    Return C{(available, consumed)} of the current interval per server name,
    as the master last heard them.
    """
    return {
        server["name"]: (Decimal(server["available"]), Decimal(server["consumed"]))
        for server in current_interval(port, cap_id)["servers"]
    }


def joined_servers(port: int) -> dict[str, dict[str, Any]]:
    """
    Return the servers joined to the master on C{port}, by name.
    """
    return {server["name"]: server for server in admin(port, Status)["servers"]}


def cap_known(client: BlockingClient, cap_id: str) -> bool:
    """
    Return whether the server behind C{client} has a current interval of
    C{cap_id}.
    """
    try:
        client.query(cap_id)
    except UnknownCapError:
        return False
    return True


class Process:
    """
    One C{twistd} child process, with its log file and listening port.

    @ivar environment: variables added to the test's environment for the
        process, such as the broker password.
    """

    def __init__(
        self,
        name: str,
        port: int,
        arguments: list[str],
        directory: Path,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.arguments = arguments
        self.directory = directory
        self.environment = environment or {}
        self.log_path = directory / f"{name}.log"
        self.output_path = directory / f"{name}.out"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """
        The client endpoint string of this process's listener.
        """
        return f"tcp:{HOST}:{self.port}"

    def start(self) -> None:
        """
        Start the process; its standard output and error go to a file beside
        the log, where twistd writes start-up errors.
        """
        command = TWISTD + ["-n", "--pidfile=", f"--logfile={self.log_path}"] + self.arguments
        environment = {**os.environ, **self.environment}
        with open(self.output_path, "ab") as output:
            self.popen = subprocess.Popen(
                command,
                cwd=self.directory,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    @property
    def is_master(self) -> bool:
        """
        Whether this process is a master rather than a volumecap server.
        """
        return "volumecap-master" in self.arguments

    @property
    def running(self) -> bool:
        """
        Whether the process was started and has not exited.
        """
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = TAIL_LINES) -> str:
        """
        Return the last C{lines} lines of the process's log and output.
        """
        parts = []
        for path in (self.log_path, self.output_path):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            if text.strip():
                last = "\n".join(text.splitlines()[-lines:])
                parts.append(f"--- {path.name} (last {lines} lines) ---\n{last}")
        return "\n".join(parts) or f"--- {self.name}: no log output ---"

    def check_running(self) -> None:
        """
        Fail if the process has exited.

        @raise AssertionError: with the exit status and the log tail.
        """
        if self.popen is not None and self.popen.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with status {self.popen.returncode}\n{self.tail()}"
            )

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """
        Send SIGTERM and wait for the process to exit.

        @return: the exit status.
        @raise AssertionError: the process did not exit in time; it is then
            killed.
        """
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} did not exit within {timeout} s of SIGTERM; killed it\n{self.tail()}"
            ) from None

    def kill(self) -> None:
        """
        Kill the process with SIGKILL, as C{kill -9} does, and reap it.
        """
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(STOP_TIMEOUT)


def wait_until(
    condition: Callable[[], T],
    description: str,
    timeout: float = START_TIMEOUT,
    processes: Iterable[Process] = (),
) -> T:
    """
    Call C{condition} until it returns a true value, and return that value.

    @param description: the awaited condition, for the failure message.
    @param processes: processes that must keep running meanwhile; their log
        tails go into the failure message.
    @raise AssertionError: C{timeout} seconds passed or a process exited.
    """
    watched = list(processes)
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        for process in watched:
            process.check_running()
        last = condition()
        if last:
            return last
        if time.monotonic() > deadline:
            tails = "\n".join(process.tail() for process in watched)
            raise AssertionError(
                f"timed out after {timeout} s waiting until {description}; last value: {last!r}\n{tails}"
            )
        time.sleep(POLL_INTERVAL)


def _master_responds(port: int) -> bool:
    try:
        admin(port, Status, timeout=1.0)
    except OSError:
        return False
    return True


def _server_synchronised(master_port: int, server: Process, client: BlockingClient) -> bool:
    """
    Return whether C{server} has joined its master and fetched its
    intervals: the master lists it, and a consume of an unknown cap gets
    "not found" instead of "unavailable".
    """
    try:
        if server.name not in joined_servers(master_port):
            return False
        client.consume("readiness-probe-cap-that-does-not-exist", 1)
    except UnknownCapError:
        return True
    except (OSError, UnavailableError):
        return False
    return False


class Cluster:
    """
    Masters and volumecap servers started for one test, in one directory.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: list[Process] = []
        self.clients: list[BlockingClient] = []

    def master(
        self,
        name: str = "master",
        port: int | None = None,
        data_dir: Path | None = None,
        dc: str = "dc1",
        options: Iterable[str] = (),
        environment: dict[str, str] | None = None,
    ) -> Process:
        """
        Build (without starting) a master of data center C{dc}.

        @param options: more twistd plugin options, such as C{--dcs}.
        @param environment: variables added to the master's environment.
        """
        port = port or free_port()
        data_dir = data_dir or self.directory / f"{name}-data"
        arguments = [
            "volumecap-master",
            "--dc",
            dc,
            "--listen",
            f"tcp:{port}:interface={HOST}",
            "--data-dir",
            str(data_dir),
            *options,
        ]
        return Process(name, port, arguments, self.directory, environment)

    def server(self, master: Process, name: str, *options: str) -> Process:
        """
        Build (without starting) a volumecap server of C{master} that
        reports every 0.2 s; C{options} are more twistd plugin options.
        """
        port = free_port()
        arguments = [
            "volumecap-server",
            "--master",
            master.endpoint,
            "--listen",
            f"tcp:{port}:interface={HOST}",
            "--name",
            name,
            "--state-dir",
            str(self.directory / f"{name}-state"),
            "--report-interval",
            "0.2",
            *options,
        ]
        return Process(name, port, arguments, self.directory)

    def start_master(self, master: Process | None = None) -> Process:
        """
        Start a master and wait until it responds to C{Status}.  Given a
        stopped or killed C{master}, start it again with the same port and
        data directory.
        """
        master = master or self.master()
        self._start(master)
        wait_until(
            lambda: _master_responds(master.port),
            f"{master.name} responds to Status",
            processes=[master],
        )
        return master

    def start_masters(self, masters: Iterable[Process]) -> list[Process]:
        """
        Start built masters in parallel and wait until every one of them
        responds to C{Status}.
        """
        started = list(masters)
        for master in started:
            self._start(master)
        for master in started:
            wait_until(
                functools.partial(_master_responds, master.port),
                f"{master.name} responds to Status",
                processes=[master],
            )
        return started

    def start_servers(self, master: Process, names: Iterable[str], *options: str) -> list[Process]:
        """
        Start servers of C{master} in parallel and wait until every one of
        them has joined it.
        """
        servers = [self.server(master, name, *options) for name in names]
        for server in servers:
            self._start(server)
        for server in servers:
            self.wait_joined(master, server)
        return servers

    def wait_joined(self, master: Process, server: Process) -> None:
        """
        Wait until C{server} has joined C{master} and can serve.
        """
        with BlockingClient(server.endpoint, timeout=2.0) as client:
            wait_until(
                lambda: _server_synchronised(master.port, server, client),
                f"{server.name} has joined {master.name}",
                processes=[master, server],
            )

    def client(self, server: Process) -> BlockingClient:
        """
        Return a blocking client of C{server}, closed by L{close}.
        """
        client = BlockingClient(server.endpoint)
        self.clients.append(client)
        return client

    def _start(self, process: Process) -> None:
        if process not in self.processes:
            self.processes.append(process)
        process.start()

    def close(self) -> None:
        """
        End every process this cluster started: SIGTERM first, SIGKILL for
        any that does not exit in time.  Clients are closed first.
        """
        for client in self.clients:
            client.close()
        servers = [process for process in self.processes if not process.is_master]
        masters = [process for process in self.processes if process.is_master]
        # Servers go first: a server that loses its master while stopping
        # waits for it to come back before it gives up its holdings.
        for wave in (servers, masters):
            for process in wave:
                if process.running:
                    assert process.popen is not None
                    process.popen.send_signal(signal.SIGTERM)
            for process in wave:
                if process.popen is None:
                    continue
                try:
                    process.popen.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()


def consume_until_capped(client: BlockingClient, cap_id: str, timeout: float = 60.0) -> int:
    """
    Consume 1 of C{cap_id} until the server raises L{CappedError}, retrying
    on L{UnavailableError}, and return the number of consumes that
    succeeded.

    @raise AssertionError: C{timeout} seconds passed first.
    """
    deadline = time.monotonic() + timeout
    successes = 0
    while time.monotonic() < deadline:
        try:
            client.consume(cap_id, 1)
        except CappedError:
            return successes
        except UnavailableError:
            # A top-up took longer than the server waits, for example while
            # the master asked another data center, so ask again.
            continue
        successes += 1
    raise AssertionError(f"timed out after {timeout} s without CappedError, after {successes} successful consumes")
