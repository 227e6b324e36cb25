"""
Measure consume throughput and latency of one volumecap server on this host.

Run it from the repository root with the virtualenv that has volumecap
installed, so that C{twistd} finds the volumecap plugins::

    /work/venv/bin/python bench/consume.py
    /work/venv/bin/python bench/consume.py --json results.json
    /work/venv/bin/python bench/consume.py --requests 20000 --duration 5
    /work/venv/bin/python bench/consume.py --profile-server /tmp/volumecap-profile

A run starts a master and a server with C{twistd -n} on free 127.0.0.1
ports, with their state and logs in a temporary directory.  It defines daily
caps through the master's C{SetCap} command (from 1 January of this year to
1 January two years later, with a total so large that no consume is capped),
then measures, in this order:

 1. single consumes through L{VolumecapClient} on one connection, with a
    fixed number of requests in flight (closed loop): consumes/s and
    latency, alternating over several rounds with
 2. the floor: a bare AMP server (a subprocess whose only command has the
    wire format of C{Consume} and returns a constant) driven by the same
    client code;
 3. the aggregate consumes/s of several client processes, each with its own
    L{VolumecapClient};
 4. C{consume_many} batches, several calls in flight: pairs/s;
 5. a fixed rate of consumes sent by the clock (open loop), with latency
    counted from each request's scheduled send time;
 6. with C{--profile-server DIR}, py-spy profiles of the server under
    single consumes and under C{consume_many} batches (py-spy must be
    installed and allowed to trace);
 7. if Redis listens on 127.0.0.1:6379, a Lua "decrement if enough remains"
    script through redis-py (EVALSHA), pipelined and sequential.  Its keys
    start with C{volumecap-bench:PID:} and are deleted at the end.

It prints machine information, a table, the ratios against their targets
and a check that the server's consumed figures match the successful
consumes.  Before each measurement the load generators collect their garbage
and freeze the collector, so that their own bookkeeping does not stall them.
Beside each rate it shows the CPU used by the measured server, by
the load-generating client processes and by the whole host, because the
clients run on the same host and share its cores.  A process at 100% of a
core is the bottleneck.  Host CPU well above server plus client means that
other processes disturbed the measurement, and the report marks such phases.

Every process the run starts is stopped by its PID at the end, also after an
error or Ctrl-C.  The defaults took about 90 s on a 2-core machine, and
C{--profile-server} adds about 45 s.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, clientFromString, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.protocols import amp
from twisted.python.failure import Failure

from volumecap.client import VolumecapClient
from volumecap.errors import UnavailableError, UnknownCapError, VolumecapError
from volumecap.wire.admincommands import SetCap

HOST = "127.0.0.1"
REDIS_PORT = 6379

# Each cap's daily total, in whole units.  A top-up is 10% of it by default,
# so after the first top-up no consume of this run waits for the master.
CAP_TOTAL = "900000000"

# Seconds to wait for a process to start listening, for the server to join
# its master, and for a stopped process to exit before it is killed.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

# Seconds a measurement may run past its time limit while its last
# responses arrive.  A server silent for longer fails the run.
DRAIN_TIMEOUT = 30.0

# The Lua script of the Redis comparison: take ARGV[1] units from KEYS[1]
# only when that many remain, and return the rest, or -1 when capped.
REDIS_CONSUME_SCRIPT = """
local remaining = tonumber(redis.call('GET', KEYS[1]) or '0')
local units = tonumber(ARGV[1])
if remaining >= units then
  return redis.call('DECRBY', KEYS[1], units)
end
return -1
"""
REDIS_BATCH = 100

# Cores that processes other than the measured server and clients may keep
# busy during a phase before the report marks it as disturbed.  In quiet
# runs, everything else, the master and the idle volumecap server included,
# used 0.01 to 0.03 cores.
OTHER_CPU_WARNING = 0.25


# Results.


@dataclass
class Measurement:
    """
    The outcome of one measured phase.

    @ivar count: completed operations (consumes, pairs, commands or Redis
        calls), not counting failures.
    @ivar rate: completed operations per second.
    @ivar latency_ms: percentiles of the request latency in milliseconds,
        keyed C{p50}, C{p90}, C{p99}, C{p99.9} and C{max}.
    @ivar cpu: cores used during the phase (1.0 is one core) by the measured
        C{server}, by the load-generating C{client} processes, and by the
        whole C{host}.
    """

    name: str
    count: int
    seconds: float
    rate: float
    unit: str
    latency_ms: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    first_error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def server_microseconds(self) -> float | None:
        """
        Server CPU microseconds per operation.
        """
        if "server" not in self.cpu or not self.count:
            return None
        return self.cpu["server"] * self.seconds / self.count * 1e6


def percentiles(samples: list[float]) -> dict[str, float]:
    """
    Return nearest-rank percentiles of latencies in seconds, in milliseconds.
    """
    if not samples:
        return {}
    ordered = sorted(samples)
    result = {}
    for label, percent in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)):
        rank = max(1, math.ceil(percent / 100 * len(ordered)))
        result[label] = ordered[rank - 1] * 1000
    result["max"] = ordered[-1] * 1000
    return result


# Processes and CPU accounting.


class Processes:
    """
    The subprocesses of one run, stopped by PID in reverse start order.
    """

    def __init__(self) -> None:
        self._running: list[tuple[str, subprocess.Popen[Any]]] = []

    def start(self, name: str, argv: list[str], **popen: Any) -> subprocess.Popen[Any]:
        process = subprocess.Popen(argv, **popen)
        self._running.append((name, process))
        return process

    def stop(self, process: subprocess.Popen[Any]) -> None:
        """
        Send SIGTERM, wait up to L{STOP_TIMEOUT} seconds, then send SIGKILL.
        """
        self._running = [(name, running) for name, running in self._running if running is not process]
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        for name, process in reversed(list(self._running)):
            try:
                self.stop(process)
            except OSError as error:
                print(f"failed to stop {name} (PID {process.pid}): {error}", file=sys.stderr)


def free_port() -> int:
    """
    Return a TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def is_listening(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def twistd_path() -> str:
    beside = Path(sys.executable).with_name("twistd")
    if beside.exists():
        return str(beside)
    found = shutil.which("twistd")
    if found is None:
        raise RuntimeError("twistd not found; run this script with the python of volumecap's virtualenv")
    return found


TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """
    Return the user and system CPU seconds process C{pid} has used so far.
    """
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # Counting from the state after the command name, utime and stime are
    # the 12th and 13th fields (fields 14 and 15 of proc(5)).
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


def host_busy_seconds() -> float:
    """
    Return the CPU seconds all cores of the host have spent busy so far.
    """
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    # The first eight fields are user, nice, system, idle, iowait, irq,
    # softirq and steal.  Idle and iowait are not busy, and the guest fields
    # that follow are already counted in user.
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS_PER_SECOND


class CpuMeter:
    """
    A meter of the cores used by a server process, by this process and by
    the whole host, from its creation to each L{read}.
    """

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self._server = process_cpu_seconds(server_pid) if server_pid else 0.0
        self._client = time.process_time()
        self._host = host_busy_seconds()
        self._wall = time.perf_counter()

    def read(self, client_seconds: float | None = None) -> dict[str, float]:
        """
        @param client_seconds: CPU seconds of the load-generating processes,
            when they are not this process.
        """
        wall = time.perf_counter() - self._wall
        if client_seconds is None:
            client_seconds = time.process_time() - self._client
        shares = {
            "client": client_seconds / wall,
            "host": (host_busy_seconds() - self._host) / wall,
        }
        if self.server_pid:
            shares["server"] = (process_cpu_seconds(self.server_pid) - self._server) / wall
        return shares


# Load generators.


class ClosedLoop:
    """
    A closed-loop load generator that keeps C{in_flight} requests
    outstanding.  Each response sends the next request, until C{total}
    requests were sent or C{seconds} have passed.

    The first failure stops new sends, because the figures of a run with
    failures would not be comparable.

    @param send: starts one request and returns its Deferred.
    """

    def __init__(self, send: Callable[[], Deferred[Any]], total: int, in_flight: int, seconds: float) -> None:
        self.send = send
        self.total = total
        self.in_flight = in_flight
        self.seconds = seconds
        self.latencies: list[float] = []
        self.sent = 0
        self.completed = 0
        self.errors = 0
        self.first_error: str | None = None
        self.elapsed = 0.0
        self._finished: Deferred[ClosedLoop] = Deferred()

    def run(self, reactor: Any) -> "Deferred[ClosedLoop]":
        self.started = time.perf_counter()
        self.deadline = self.started + self.seconds
        for _ in range(min(self.in_flight, self.total)):
            self._send_one()
        return self._finished.addTimeout(self.seconds + DRAIN_TIMEOUT, reactor)

    def _send_one(self) -> None:
        self.sent += 1
        sent_at = time.perf_counter()
        self.send().addCallbacks(self._succeeded, self._failed, (sent_at,), errbackArgs=(sent_at,))

    def _succeeded(self, result: object, sent_at: float) -> None:
        now = time.perf_counter()
        self.latencies.append(now - sent_at)
        self.completed += 1
        self._continue(now)

    def _failed(self, failure: Failure, sent_at: float) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = describe_failure(failure)
        self._continue(time.perf_counter())

    def _continue(self, now: float) -> None:
        if self.errors == 0 and self.sent < self.total and now < self.deadline:
            self._send_one()
        elif self.completed + self.errors == self.sent and not self._finished.called:
            self.elapsed = now - self.started
            self._finished.callback(self)

    @property
    def rate(self) -> float:
        return self.completed / self.elapsed if self.elapsed else 0.0


class OpenLoop:
    """
    An open-loop load generator that sends requests at a fixed rate by the
    clock, whatever the responses do.  It measures each latency from the
    request's scheduled send time, so that a stalled client or server counts
    against the latency.

    The reactor's timers fire with about a millisecond of resolution, so
    each timer call sends every request that has fallen due since the last.
    """

    def __init__(self, send: Callable[[], Deferred[Any]], rate: float, seconds: float) -> None:
        self.send = send
        self.rate = rate
        self.total = max(1, int(rate * seconds))
        self.from_schedule: list[float] = []
        self.from_send: list[float] = []
        self.sent = 0
        self.completed = 0
        self.errors = 0
        self.first_error: str | None = None
        self.max_in_flight = 0
        self.max_send_lag = 0.0
        self.elapsed = 0.0
        self._finished: Deferred[OpenLoop] = Deferred()

    def run(self, reactor: Any) -> "Deferred[OpenLoop]":
        self.reactor = reactor
        self.started = time.perf_counter()
        self._send_due()
        return self._finished.addTimeout(self.total / self.rate + DRAIN_TIMEOUT, reactor)

    def _send_due(self) -> None:
        now = time.perf_counter()
        due = min(self.total, int((now - self.started) * self.rate) + 1)
        while self.sent < due:
            scheduled = self.started + self.sent / self.rate
            self.sent += 1
            sent_at = time.perf_counter()
            self.max_send_lag = max(self.max_send_lag, sent_at - scheduled)
            self.send().addCallbacks(
                self._succeeded, self._failed, (scheduled, sent_at), errbackArgs=(scheduled,)
            )
        self.max_in_flight = max(self.max_in_flight, self.sent - self.completed - self.errors)
        if self.sent < self.total:
            next_due = self.started + self.sent / self.rate
            self.reactor.callLater(max(0.0, next_due - time.perf_counter()), self._send_due)

    def _succeeded(self, result: object, scheduled: float, sent_at: float) -> None:
        now = time.perf_counter()
        self.from_schedule.append(now - scheduled)
        self.from_send.append(now - sent_at)
        self.completed += 1
        self._check_finished(now)

    def _failed(self, failure: Failure, scheduled: float) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = describe_failure(failure)
        self._check_finished(time.perf_counter())

    def _check_finished(self, now: float) -> None:
        if self.sent == self.total and self.completed + self.errors == self.total:
            self.elapsed = now - self.started
            self._finished.callback(self)


def describe_failure(failure: Failure) -> str:
    return f"{failure.value.__class__.__name__}: {failure.getErrorMessage()}"


def freeze_collector() -> None:
    """
    Collect garbage, then exclude every object that exists now from later
    collections.

    A full collection of the objects left by imports and earlier phases
    stalled the load generator for about 17 ms on the 2-core host of
    BENCHMARKS.md, and every request in flight waited for it.
    """
    gc.collect()
    gc.freeze()


def consume_sender(client: VolumecapClient, cap_id: str) -> Callable[[], Deferred[Any]]:
    return lambda: client.consume(cap_id, 1)


def batch_sender(client: VolumecapClient, pairs: list[tuple[str, int]]) -> Callable[[], Deferred[Any]]:
    """
    Return a sender of one C{consume_many} call whose Deferred fails when
    any pair failed.
    """

    def check(results: list[Any]) -> list[Any]:
        for result in results:
            if isinstance(result, VolumecapError):
                raise result
        return results

    return lambda: client.consume_many(pairs).addCallback(check)


# The bare AMP server of the floor measurement.


class BareConsume(amp.Command):
    """
    A command with the wire format of volumecap's C{Consume}, so that the
    unchanged L{VolumecapClient} can call it.
    """

    commandName = b"Consume"
    arguments = [(b"cap", amp.Unicode()), (b"amount", amp.Unicode())]
    response = [(b"remaining", amp.Unicode())]


class BareLocator(amp.CommandLocator):
    @BareConsume.responder
    def consume(self, cap: str, amount: str) -> dict[str, str]:
        return {"remaining": "1.00"}


def serve_bare_amp() -> None:
    """
    Run the bare AMP server on a free 127.0.0.1 port, print the port on
    stdout, and serve until SIGTERM.
    """
    from twisted.internet import reactor

    locator = BareLocator()
    factory = Factory.forProtocol(lambda: amp.AMP(locator=locator))
    endpoint = TCP4ServerEndpoint(reactor, 0, interface=HOST)

    def listening(port: Any) -> None:
        print(port.getHost().port, flush=True)

    def failed(failure: Failure) -> None:
        print(f"bare AMP server failed to listen: {failure.getErrorMessage()}", file=sys.stderr)
        reactor.stop()

    endpoint.listen(factory).addCallbacks(listening, failed)
    reactor.run()


# Client worker processes.


def run_worker(config: dict[str, Any]) -> None:
    """
    Warm up one client, print C{ready}, wait for a line on stdin, run a
    closed loop and print its figures as one JSON line.
    """

    async def work(reactor: Any) -> dict[str, Any]:
        client = VolumecapClient(reactor, config["endpoint"])
        send = consume_sender(client, config["cap"])
        warmup = await ClosedLoop(send, config["warmup"], config["in_flight"], config["seconds"]).run(reactor)
        if warmup.errors:
            return {"error": f"warm-up failed: {warmup.first_error}"}
        freeze_collector()
        print("ready", flush=True)
        sys.stdin.readline()
        cpu_before = time.process_time()
        loop = await ClosedLoop(send, config["requests"], config["in_flight"], config["seconds"]).run(reactor)
        cpu = time.process_time() - cpu_before
        await client.close()
        return {
            "warmup_completed": warmup.completed,
            "completed": loop.completed,
            "elapsed": loop.elapsed,
            "cpu_seconds": cpu,
            "errors": loop.errors,
            "first_error": loop.first_error,
            "latency_ms": percentiles(loop.latencies),
        }

    result = run_in_reactor(work)
    print(json.dumps(result), flush=True)


def run_in_reactor(work: Callable[[Any], Any]) -> Any:
    """
    Run the coroutine function C{work(reactor)} in the global reactor and
    return its result.  Ctrl-C stops the reactor and raises
    L{KeyboardInterrupt}.
    """
    from twisted.internet import reactor

    outcome: list[Any] = []

    def start() -> None:
        finished = Deferred.fromCoroutine(work(reactor))
        finished.addBoth(outcome.append)
        finished.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    if not outcome:
        raise KeyboardInterrupt
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


# The benchmark.


@dataclass
class Settings:
    requests: int
    duration: float
    in_flight: int
    rounds: int
    clients: int
    client_in_flight: int
    client_seconds: float
    batch_size: int
    batch_calls: int
    batch_in_flight: int
    rate: float
    rate_seconds: float
    redis_ops: int
    redis_sequential_ops: int
    caps: int
    warmup: int
    profile_server: str | None
    no_redis: bool


@dataclass
class Round:
    """
    One closed-loop measurement and the CPU it used.
    """

    loop: ClosedLoop
    cpu: dict[str, float]


# The order in which the report lists the phases.
SINGLE = "single"
CLIENTS = "clients"
BATCHES = "batches"
BARE = "bare"
REDIS_PIPELINED = "redis-pipelined"
REDIS_SEQUENTIAL = "redis-sequential"
OPEN_LOOP = "open-loop"
PHASES = [SINGLE, CLIENTS, BATCHES, BARE, REDIS_PIPELINED, REDIS_SEQUENTIAL, OPEN_LOOP]


class Benchmark:
    """
    One run: the processes it started, the caps it defined, its results.
    """

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.processes = Processes()
        self.results: dict[str, Measurement] = {}
        self.cap_ids = [f"bench-{index}" for index in range(settings.caps)]
        # Successful consumes per cap, for the consistency check.
        self.consumed: collections.Counter[str] = collections.Counter()
        self.consistency: dict[str, Any] = {}
        self.ratios: dict[str, Any] = {}
        self.load_average: dict[str, list[float]] = {}
        self.profiles: dict[str, str] = {}

    def progress(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def record(self, phase: str, measurement: Measurement) -> None:
        cpu = measurement.cpu
        if "host" in cpu:
            others = cpu["host"] - cpu.get("server", 0.0) - cpu.get("client", 0.0)
            if others > OTHER_CPU_WARNING:
                measurement.notes.append(
                    f"disturbed: other processes kept about {others:.2f} cores busy during this phase"
                )
        self.results[phase] = measurement
        text = f"{measurement.name}: {measurement.rate:,.0f} {measurement.unit}"
        if "server" in measurement.cpu:
            text += f", server CPU {measurement.cpu['server']:.0%}"
        self.progress(text + f", client CPU {measurement.cpu.get('client', 0):.0%}")

    # Set-up.

    def start_volumecap(self) -> None:
        self.master_port = free_port()
        self.server_port = free_port()
        self.master = self.start_twistd("master", [
            "volumecap-master",
            "--listen", f"tcp:{self.master_port}:interface={HOST}",
            "--data-dir", str(self.workdir / "master"),
        ])
        self.wait_twistd(self.master, self.master_port, "master")
        self.server = self.start_twistd("server", [
            "volumecap-server",
            "--master", f"tcp:{HOST}:{self.master_port}",
            "--listen", f"tcp:{self.server_port}:interface={HOST}",
            "--state-dir", str(self.workdir / "server"),
            "--name", "bench-server",
        ])
        self.wait_twistd(self.server, self.server_port, "server")
        self.progress(
            f"master PID {self.master.pid} on port {self.master_port}, "
            f"server PID {self.server.pid} on port {self.server_port}, logs in {self.workdir}"
        )

    def start_twistd(self, name: str, plugin_arguments: list[str]) -> subprocess.Popen[Any]:
        """
        Start C{twistd -n} with its log in C{NAME.log} and, for errors
        before logging starts, its output in C{NAME.out} in the work
        directory.
        """
        log = self.workdir / f"{name}.log"
        with open(self.workdir / f"{name}.out", "wb") as output:
            return self.processes.start(
                name,
                [twistd_path(), "-n", "--pidfile=", f"--logfile={log}", *plugin_arguments],
                cwd=self.workdir,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def wait_twistd(self, process: subprocess.Popen[Any], port: int, name: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        logs = f"{self.workdir / name}.log and .out"
        while not is_listening(port):
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode} at start-up; see {logs}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not listen on port {port} within {START_TIMEOUT} s; see {logs}")
            time.sleep(0.05)

    @property
    def server_endpoint(self) -> str:
        return f"tcp:{HOST}:{self.server_port}"

    async def define_caps(self, reactor: Any) -> None:
        this_year = date.today().year
        start, end = f"{this_year}-01-01", f"{this_year + 2}-01-01"
        master = await connectProtocol(clientFromString(reactor, f"tcp:{HOST}:{self.master_port}"), amp.AMP())
        try:
            for cap_id in self.cap_ids:
                await master.callRemote(
                    SetCap, id=cap_id, interval="day", start=start, end=end, total=CAP_TOTAL, timezone="UTC"
                )
        finally:
            master.transport.loseConnection()
        self.progress(f"defined {len(self.cap_ids)} daily caps of {CAP_TOTAL} from {start} to {end}")

    async def first_consumes(self, reactor: Any, client: VolumecapClient) -> None:
        """
        Consume once from every cap, retrying while the server has not yet
        joined its master or received the caps' intervals, which the master
        sends after it acknowledged C{SetCap}.  The first consume of a cap
        waits for a top-up.
        """
        deadline = time.monotonic() + START_TIMEOUT
        for cap_id in self.cap_ids:
            while True:
                try:
                    await client.consume(cap_id, 1)
                    break
                except (UnavailableError, UnknownCapError):
                    if time.monotonic() > deadline:
                        raise
                    await deferLater(reactor, 0.1, lambda: None)
            self.consumed[cap_id] += 1

    # Closed-loop phases.

    async def warm_up(self, reactor: Any, send: Callable[[], Deferred[Any]], calls: int, in_flight: int) -> int:
        """
        Send C{calls} calls before a measurement.

        @return: the calls that succeeded.
        """
        warmup = await ClosedLoop(send, max(1, calls), in_flight, self.settings.duration).run(reactor)
        if warmup.errors:
            raise RuntimeError(f"warm-up failed: {warmup.first_error}")
        return warmup.completed

    async def measure_round(
        self, reactor: Any, send: Callable[[], Deferred[Any]], total: int, in_flight: int, server_pid: int
    ) -> Round:
        meter = CpuMeter(server_pid)
        loop = await ClosedLoop(send, total, in_flight, self.settings.duration).run(reactor)
        return Round(loop, meter.read())

    def from_rounds(self, name: str, rounds: list[Round], total: int, per_call: int, unit: str) -> Measurement:
        """
        Describe the round with the median rate; the notes give every
        round's rate.
        """
        ordered = sorted(rounds, key=lambda round_: round_.loop.rate)
        median = ordered[(len(ordered) - 1) // 2]
        loop = median.loop
        measurement = Measurement(
            name=name,
            count=loop.completed * per_call,
            seconds=loop.elapsed,
            rate=loop.rate * per_call,
            unit=unit,
            latency_ms=percentiles(loop.latencies),
            cpu=median.cpu,
            errors=sum(round_.loop.errors for round_ in rounds),
            first_error=next((round_.loop.first_error for round_ in rounds if round_.loop.first_error), None),
        )
        if len(rounds) > 1:
            rates = ", ".join(f"{round_.loop.rate * per_call:,.0f}" for round_ in rounds)
            measurement.notes.append(f"median of {len(rounds)} rounds; rates in run order: {rates}")
        if any(round_.loop.sent < total for round_ in rounds if not round_.loop.errors):
            measurement.notes.append(f"--duration stopped a round before its {total} calls")
        if per_call > 1:
            measurement.notes.append(f"latency per call of {per_call}")
        return measurement

    async def measure_single_and_bare(self, reactor: Any, client: VolumecapClient) -> None:
        """
        Alternate rounds of single consumes and of bare AMP commands, so
        that both see the same disturbance from other processes.
        """
        s = self.settings
        cap_id = self.cap_ids[0]
        bare = self.processes.start(
            "bare AMP server",
            [sys.executable, __file__, "--bare-amp-server"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert bare.stdout is not None
            line = bare.stdout.readline().strip()
            if not line.isdigit():
                raise RuntimeError(f"bare AMP server failed to start: {line or 'no output'}")
            bare_client = VolumecapClient(reactor, f"tcp:{HOST}:{line}")
            try:
                send_consume = consume_sender(client, cap_id)
                send_bare = consume_sender(bare_client, cap_id)
                self.consumed[cap_id] += await self.warm_up(reactor, send_consume, s.warmup, s.in_flight)
                await self.warm_up(reactor, send_bare, s.warmup, s.in_flight)
                single_rounds, bare_rounds = [], []
                freeze_collector()
                for _ in range(s.rounds):
                    single = await self.measure_round(reactor, send_consume, s.requests, s.in_flight, self.server.pid)
                    self.consumed[cap_id] += single.loop.completed
                    single_rounds.append(single)
                    bare_rounds.append(await self.measure_round(reactor, send_bare, s.requests, s.in_flight, bare.pid))
            finally:
                await bare_client.close()
        finally:
            self.processes.stop(bare)
        self.record(SINGLE, self.from_rounds(
            f"single consume, 1 connection, {s.in_flight} in flight", single_rounds, s.requests, 1, "consumes/s"
        ))
        self.record(BARE, self.from_rounds(
            f"bare AMP command, 1 connection, {s.in_flight} in flight", bare_rounds, s.requests, 1, "commands/s"
        ))

    def measure_clients(self) -> None:
        """
        Run the client worker processes together and add up their rates.
        """
        s = self.settings
        workers: list[tuple[subprocess.Popen[Any], dict[str, Any]]] = []
        for index in range(s.clients):
            config: dict[str, Any] = {
                "endpoint": self.server_endpoint,
                "cap": self.cap_ids[(1 + index) % len(self.cap_ids)],
                "in_flight": s.client_in_flight,
                "requests": s.requests,
                "seconds": s.client_seconds,
                "warmup": s.warmup,
            }
            worker = self.processes.start(
                f"client worker {index}",
                [sys.executable, __file__, "--worker", json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            workers.append((worker, config))
        try:
            for worker, _ in workers:
                assert worker.stdout is not None
                line = worker.stdout.readline().strip()
                if line != "ready":
                    raise RuntimeError(f"client worker PID {worker.pid} failed to start: {line or 'no output'}")
            meter = CpuMeter(self.server.pid)
            for worker, _ in workers:
                assert worker.stdin is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
            reports = []
            for worker, config in workers:
                output, _ = worker.communicate(timeout=s.client_seconds + DRAIN_TIMEOUT)
                report = json.loads(output.strip().splitlines()[-1])
                if "error" in report:
                    raise RuntimeError(f"client worker PID {worker.pid}: {report['error']}")
                reports.append(report)
                self.consumed[config["cap"]] += report["warmup_completed"] + report["completed"]
            cpu = meter.read(client_seconds=sum(report["cpu_seconds"] for report in reports))
        finally:
            for worker, _ in workers:
                self.processes.stop(worker)
        measurement = Measurement(
            name=f"single consume, {s.clients} client processes x {s.client_in_flight} in flight",
            count=sum(report["completed"] for report in reports),
            seconds=max(report["elapsed"] for report in reports),
            rate=sum(report["completed"] / report["elapsed"] for report in reports),
            unit="consumes/s",
            latency_ms=max((report["latency_ms"] for report in reports), key=lambda figures: figures.get("p99", 0)),
            cpu=cpu,
            errors=sum(report["errors"] for report in reports),
            first_error=next((report["first_error"] for report in reports if report["first_error"]), None),
            notes=["latency of the client process with the highest p99"],
        )
        self.record(CLIENTS, measurement)

    async def measure_batches(self, reactor: Any, client: VolumecapClient) -> None:
        s = self.settings
        pairs = [(self.cap_ids[index % len(self.cap_ids)], 1) for index in range(s.batch_size)]
        send = batch_sender(client, pairs)
        calls = await self.warm_up(reactor, send, s.warmup // s.batch_size, s.batch_in_flight)
        freeze_collector()
        measured = await self.measure_round(reactor, send, s.batch_calls, s.batch_in_flight, self.server.pid)
        calls += measured.loop.completed
        for cap_id, _ in pairs:
            self.consumed[cap_id] += calls
        name = f"consume_many, {s.batch_size} pairs per call, {s.batch_in_flight} calls in flight"
        self.record(BATCHES, self.from_rounds(name, [measured], s.batch_calls, s.batch_size, "pairs/s"))

    async def measure_open_loop(self, reactor: Any, client: VolumecapClient) -> None:
        s = self.settings
        cap_id = self.cap_ids[0]
        freeze_collector()
        meter = CpuMeter(self.server.pid)
        loop = await OpenLoop(consume_sender(client, cap_id), s.rate, s.rate_seconds).run(reactor)
        cpu = meter.read()
        self.consumed[cap_id] += loop.completed
        from_send = percentiles(loop.from_send)
        measurement = Measurement(
            name=f"open loop, {s.rate:,.0f} consumes/s for {s.rate_seconds:g} s, 1 connection",
            count=loop.completed,
            seconds=loop.elapsed,
            rate=loop.completed / loop.elapsed,
            unit="consumes/s",
            latency_ms=percentiles(loop.from_schedule),
            cpu=cpu,
            errors=loop.errors,
            first_error=loop.first_error,
            notes=[
                "latency from the scheduled send time; from the actual send: "
                + ", ".join(f"{label} {value:.3f}" for label, value in from_send.items() if label != "p90"),
                f"the client sent up to {loop.max_send_lag * 1000:.1f} ms late; "
                f"at most {loop.max_in_flight} requests were in flight",
            ],
        )
        self.record(OPEN_LOOP, measurement)

    async def profile_server(self, reactor: Any, client: VolumecapClient, directory: Path) -> None:
        """
        Record the server with py-spy, first under single consumes, then
        under C{consume_many} batches, and summarize each profile.
        """
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(py_spy).exists():
            self.progress("py-spy not found (pip install py-spy); skipping --profile-server")
            return
        directory.mkdir(parents=True, exist_ok=True)
        s = self.settings
        cap_id = self.cap_ids[0]
        pairs = [(self.cap_ids[index % len(self.cap_ids)], 1) for index in range(s.batch_size)]
        loads = [
            ("consume", consume_sender(client, cap_id), s.in_flight, {cap_id: 1}),
            ("consume-many", batch_sender(client, pairs), s.batch_in_flight, collections.Counter(c for c, _ in pairs)),
        ]
        for name, send, in_flight, consumed_per_call in loads:
            profile, calls = await self.record_profile(reactor, py_spy, directory / f"server-{name}.txt", send, in_flight)
            self.consumed.update({cap: count * calls for cap, count in consumed_per_call.items()})
            if profile is not None:
                self.profiles[name] = profile
                (directory / f"server-{name}-top.txt").write_text(profile + "\n")
        self.progress(f"server profiles written to {directory}")

    async def record_profile(
        self, reactor: Any, py_spy: str, raw: Path, send: Callable[[], Deferred[Any]], in_flight: int
    ) -> tuple[str | None, int]:
        """
        Record the server with py-spy while a closed loop runs.

        @return: the summary of the profile, or L{None} when py-spy failed,
            and the calls of the closed loop that succeeded.
        """
        seconds = max(5, int(self.settings.duration))
        recorder = self.processes.start(
            "py-spy",
            [py_spy, "record", "--pid", str(self.server.pid), "--rate", "500", "--duration", str(seconds),
             "--function", "--format", "raw", "--output", str(raw)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

        # Give py-spy time to attach before the load starts, and stop the
        # load a second before py-spy stops.
        await deferLater(reactor, 1.0, lambda: None)
        loop = await ClosedLoop(send, 10**9, in_flight, seconds - 2).run(reactor)
        try:
            _, errors = recorder.communicate(timeout=seconds + DRAIN_TIMEOUT)
        finally:
            self.processes.stop(recorder)
        if recorder.returncode != 0 or not raw.exists():
            self.progress(f"py-spy failed with status {recorder.returncode}: {errors.strip()[-500:]}")
            return None, loop.completed
        self.progress(f"recorded {raw.name} at {loop.rate:,.0f} calls/s, slowed by py-spy")
        return summarize_profile(raw), loop.completed

    async def check_consistency(self, client: VolumecapClient) -> None:
        """
        Compare each cap's consumed figure on the server with the count of
        successful consumes of this run (each consumed 1).
        """
        mismatches = {}
        for cap_id in self.cap_ids:
            holding = await client.query(cap_id)
            if holding.consumed != Decimal(self.consumed[cap_id]):
                mismatches[cap_id] = {"server": str(holding.consumed), "client": self.consumed[cap_id]}
        self.consistency = {"caps": len(self.cap_ids), "mismatches": mismatches}

    async def run_twisted(self, reactor: Any) -> None:
        s = self.settings
        await self.define_caps(reactor)
        client = VolumecapClient(reactor, self.server_endpoint)
        try:
            await self.first_consumes(reactor, client)
            await self.measure_single_and_bare(reactor, client)
            self.measure_clients()
            await self.measure_batches(reactor, client)
            await self.measure_open_loop(reactor, client)
            if s.profile_server:
                await self.profile_server(reactor, client, Path(s.profile_server))
            await self.check_consistency(client)
        finally:
            await client.close()

    # Redis.

    def measure_redis(self) -> None:
        s = self.settings
        if s.no_redis or not is_listening(REDIS_PORT):
            self.progress("no Redis on 127.0.0.1:6379, or --no-redis: skipping the Redis comparison")
            return
        import redis
        from redis.utils import HIREDIS_AVAILABLE

        connection = redis.Redis(host=HOST, port=REDIS_PORT)
        prefix = f"volumecap-bench:{os.getpid()}:"
        keys = [prefix + cap_id for cap_id in self.cap_ids]
        try:
            # Reading the Redis server's CPU figures from /proc works when it
            # runs on this host as a user whose /proc entries are readable.
            redis_pid = connection.info("server").get("process_id")
            if redis_pid is not None and not os.access(f"/proc/{redis_pid}/stat", os.R_OK):
                redis_pid = None
            connection.mset({key: 90_000_000_000 for key in keys})
            sha = connection.script_load(REDIS_CONSUME_SCRIPT)
            pipelined = self.redis_pipelined(connection, sha, keys, redis_pid)
            parser = "hiredis" if HIREDIS_AVAILABLE else "pure Python (hiredis missing)"
            pipelined.notes.append(f"latency per batch of {REDIS_BATCH}; redis-py parser: {parser}")
            self.record(REDIS_PIPELINED, pipelined)
            self.record(REDIS_SEQUENTIAL, self.redis_sequential(connection, sha, keys, redis_pid))
        finally:
            connection.delete(*keys)
            connection.close()

    def redis_pipelined(self, connection: Any, sha: str, keys: list[str], redis_pid: int | None) -> Measurement:
        s = self.settings
        latencies: list[float] = []
        completed = capped = 0
        meter = CpuMeter(redis_pid)
        started = time.perf_counter()
        deadline = started + s.duration
        while completed < s.redis_ops and time.perf_counter() < deadline:
            pipe = connection.pipeline(transaction=False)
            for index in range(REDIS_BATCH):
                pipe.evalsha(sha, 1, keys[index % len(keys)], 100)
            sent_at = time.perf_counter()
            replies = pipe.execute()
            latencies.append(time.perf_counter() - sent_at)
            completed += len(replies)
            capped += sum(1 for reply in replies if reply < 0)
        elapsed = time.perf_counter() - started
        return Measurement(
            name=f"Redis EVALSHA, pipelined, {REDIS_BATCH} per batch",
            count=completed,
            seconds=elapsed,
            rate=completed / elapsed,
            unit="ops/s",
            latency_ms=percentiles(latencies),
            cpu=meter.read(),
            errors=capped,
        )

    def redis_sequential(self, connection: Any, sha: str, keys: list[str], redis_pid: int | None) -> Measurement:
        s = self.settings
        latencies: list[float] = []
        capped = 0
        meter = CpuMeter(redis_pid)
        started = time.perf_counter()
        deadline = started + s.duration
        while len(latencies) < s.redis_sequential_ops and time.perf_counter() < deadline:
            sent_at = time.perf_counter()
            if connection.evalsha(sha, 1, keys[len(latencies) % len(keys)], 100) < 0:
                capped += 1
            latencies.append(time.perf_counter() - sent_at)
        elapsed = time.perf_counter() - started
        return Measurement(
            name="Redis EVALSHA, sequential",
            count=len(latencies),
            seconds=elapsed,
            rate=len(latencies) / elapsed,
            unit="ops/s",
            latency_ms=percentiles(latencies),
            cpu=meter.read(),
            errors=capped,
        )

    # The whole run.

    def run(self) -> None:
        self.started = datetime.now(timezone.utc)
        self.load_average["start"] = [round(value, 2) for value in os.getloadavg()]
        try:
            self.start_volumecap()
            run_in_reactor(self.run_twisted)
        finally:
            self.processes.stop_all()
        self.measure_redis()
        self.load_average["end"] = [round(value, 2) for value in os.getloadavg()]
        self.finished = datetime.now(timezone.utc)
        self.compute_ratios()

    def compute_ratios(self) -> None:
        results = self.results
        if SINGLE in results and BARE in results:
            value = results[SINGLE].rate / results[BARE].rate
            self.ratios["single consume / bare AMP, rate"] = {"value": value, "target": ">= 0.8", "met": value >= 0.8}
            single_cost, bare_cost = results[SINGLE].server_microseconds, results[BARE].server_microseconds
            if single_cost and bare_cost:
                # This ratio has no target.  It compares the server CPU per
                # request, which the rate ratio understates because the
                # client's time is part of both rates.
                self.ratios["bare AMP / single consume, server CPU per request"] = {"value": bare_cost / single_cost}
        if BATCHES in results and REDIS_PIPELINED in results:
            value = results[BATCHES].rate / results[REDIS_PIPELINED].rate
            self.ratios["consume_many pairs / Redis pipelined ops"] = {
                "value": value, "target": ">= 1.0", "met": value >= 1.0,
            }
        if OPEN_LOOP in results and "p99" in results[OPEN_LOOP].latency_ms:
            value = results[OPEN_LOOP].latency_ms["p99"]
            self.ratios["open-loop p99 latency, ms"] = {"value": value, "target": "< 2", "met": value < 2.0}


# Reporting.


def machine_info() -> dict[str, Any]:
    import hiredis
    import redis
    import twisted

    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "redis-py": redis.__version__,
        "hiredis": hiredis.__version__,
    }


def format_report(benchmark: Benchmark, machine: dict[str, Any], command: str) -> str:
    seconds = (benchmark.finished - benchmark.started).total_seconds()
    lines = [
        f"volumecap consume benchmark, {benchmark.started:%Y-%m-%d %H:%M} UTC, {seconds:.0f} s",
        f"command: {command}",
        "machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()),
        "load average (1, 5, 15 min): "
        + ", ".join(f"{moment} {values}" for moment, values in benchmark.load_average.items()),
        "",
    ]
    header = (
        f"{'measurement':<64} {'count':>8} {'s':>5} {'rate':>9} {'unit':<10}"
        f" {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7}  {'server':>6} {'us/op':>5} {'client':>6} {'host':>5}"
    )
    lines += [header, "-" * len(header)]
    for phase in PHASES:
        result = benchmark.results.get(phase)
        if result is None:
            continue
        latency = " ".join(
            f"{result.latency_ms[label]:7.3f}" if label in result.latency_ms else f"{'-':>7}"
            for label in ("p50", "p90", "p99", "p99.9")
        )
        server = f"{result.cpu['server']:6.0%}" if "server" in result.cpu else f"{'-':>6}"
        cost = result.server_microseconds
        cost_text = f"{cost:5.0f}" if cost is not None else f"{'-':>5}"
        client = f"{result.cpu['client']:6.0%}" if "client" in result.cpu else f"{'-':>6}"
        host = f"{result.cpu['host']:5.2f}" if "host" in result.cpu else f"{'-':>5}"
        lines.append(
            f"{result.name:<64} {result.count:>8} {result.seconds:>5.1f} {result.rate:>9,.0f} "
            f"{result.unit:<10} {latency}  {server} {cost_text} {client} {host}"
        )
        for note in result.notes:
            lines.append(f"    {note}")
        if result.errors:
            lines.append(f"    {result.errors} failed; first failure: {result.first_error}")
    lines += [
        "",
        "Latencies are in ms.  server: CPU of the measured server process (volumecap server, bare AMP",
        "server or redis-server; 100% is one core); us/op: its CPU microseconds per operation; client:",
        "CPU of the load-generating processes; host: busy cores of the whole host, all processes.",
        "",
    ]
    for name, ratio in benchmark.ratios.items():
        if "target" in ratio:
            verdict = "met" if ratio["met"] else "NOT met"
            lines.append(f"{name:<52} {ratio['value']:8.3f}   target {ratio['target']:<6} {verdict}")
        else:
            lines.append(f"{name:<52} {ratio['value']:8.3f}")
    consistency = benchmark.consistency
    if consistency.get("mismatches"):
        lines.append(f"consistency: FAILED, the server's consumed figures differ: {consistency['mismatches']}")
    elif consistency:
        lines.append(f"consistency: the server's consumed figures match the client counts on all {consistency['caps']} caps")
    for name, profile in benchmark.profiles.items():
        lines += ["", f"Server profile (py-spy) under the {name} load:", profile]
    return "\n".join(lines)


def summarize_profile(raw: Path, top: int = 20) -> str:
    """
    Summarize py-spy's raw (collapsed) stacks: the functions with the most
    samples on top of the stack (self), and the volumecap and AMP functions
    with the most samples anywhere on the stack (total).
    """
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [shorten_frame(frame) for frame in stack.split(";")]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return "py-spy recorded no samples of the server"

    def table(counts: collections.Counter[str], heading: str, keep: Callable[[str], bool]) -> list[str]:
        rows = [(frame, count) for frame, count in counts.most_common() if keep(frame)][:top]
        return ["", f"{heading:>7}  function"] + [f"{100 * count / samples:7.1f}  {frame}" for frame, count in rows]

    lines = [f"{samples} samples of the server's busy threads; percentages of all samples"]
    lines += table(own, "self %", lambda frame: True)
    lines += table(total, "total %", lambda frame: "volumecap/" in frame)
    lines += table(total, "total %", lambda frame: "protocols/amp.py" in frame)
    return "\n".join(lines)


def shorten_frame(frame: str) -> str:
    """
    Turn C{function (/long/path/package/module.py:12)} into
    C{function (package/module.py:12)}.
    """
    name, _, location = frame.partition(" (")
    path = location.rstrip(")")
    for marker in ("site-packages/", f"{Path(__file__).resolve().parent.parent}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


# Command line.


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure volumecap consume throughput and latency on this host (127.0.0.1 only).",
    )
    add = parser.add_argument

    add("--requests", type=int, default=100_000,
        help="requests per round of the single-connection and bare AMP measurements, and the "
             "maximum per client process [default: %(default)s]")
    add("--duration", type=float, default=20.0,
        help="maximum seconds of each closed-loop round and Redis measurement [default: %(default)s]")
    add("--in-flight", type=int, default=200,
        help="requests in flight on the single connection [default: %(default)s]")
    add("--rounds", type=int, default=3,
        help="alternating rounds of single consumes and bare AMP commands; the report shows the "
             "round with the median rate [default: %(default)s]")
    add("--warmup", type=int, default=5_000,
        help="consumes (or pairs) sent before the closed-loop measurements [default: %(default)s]")
    add("--caps", type=int, default=8, help="caps to define [default: %(default)s]")

    add("--clients", type=int, default=2, help="client processes of the aggregate measurement [default: %(default)s]")
    add("--client-in-flight", type=int, default=100, help="requests in flight per client process [default: %(default)s]")
    add("--client-seconds", type=float, default=10.0, help="seconds the client processes run [default: %(default)s]")

    add("--batch-size", type=int, default=100, help="pairs per consume_many call, at most 250 [default: %(default)s]")
    add("--batch-calls", type=int, default=3_000, help="consume_many calls of the batch measurement [default: %(default)s]")
    add("--batch-in-flight", type=int, default=8, help="consume_many calls in flight [default: %(default)s]")

    add("--rate", type=float, default=5_000, help="consumes per second of the open-loop measurement [default: %(default)s]")
    add("--rate-seconds", type=float, default=10.0, help="seconds of the open-loop measurement [default: %(default)s]")

    add("--redis-ops", type=int, default=300_000,
        help="script calls of the pipelined Redis measurement [default: %(default)s]")
    add("--redis-sequential-ops", type=int, default=50_000,
        help="script calls of the sequential Redis measurement [default: %(default)s]")
    add("--no-redis", action="store_true", help="skip the Redis comparison")

    add("--profile-server", metavar="DIR",
        help="also record the server with py-spy under single consumes and write the profile to DIR")
    add("--json", metavar="PATH", help="also write the results as JSON to PATH")
    add("--keep-logs", action="store_true",
        help="keep the temporary directory with the master's and server's state and logs")

    # Modes of the subprocesses that this script starts itself.
    add("--worker", help=argparse.SUPPRESS)
    add("--bare-amp-server", action="store_true", help=argparse.SUPPRESS)

    arguments = parser.parse_args(argv)
    positive = ["requests", "duration", "in_flight", "rounds", "clients", "client_in_flight", "client_seconds",
                "batch_size", "batch_calls", "batch_in_flight", "rate", "rate_seconds", "redis_ops",
                "redis_sequential_ops", "caps", "warmup"]
    for name in positive:
        if getattr(arguments, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be greater than zero, not {getattr(arguments, name)}")
    if arguments.batch_size > 250:
        parser.error(f"--batch-size must be at most 250 (the wire's batch limit), not {arguments.batch_size}")
    return arguments


def main(argv: list[str]) -> int:
    arguments = parse_arguments(argv)
    if arguments.bare_amp_server:
        serve_bare_amp()
        return 0
    if arguments.worker:
        run_worker(json.loads(arguments.worker))
        return 0

    settings = Settings(**{name: getattr(arguments, name) for name in Settings.__dataclass_fields__})
    workdir = Path(tempfile.mkdtemp(prefix="volumecap-bench-"))
    benchmark = Benchmark(settings, workdir)
    now = datetime.now(timezone.utc)
    if now.hour == 23 and now.minute >= 55:
        # NOTE: the caps are daily in UTC, so a run across midnight switches
        # intervals and its first consumes of the new day wait for top-ups.
        print("warning: the run may cross midnight UTC, when the caps' daily intervals switch", file=sys.stderr)
    try:
        benchmark.run()
    except BaseException:
        print(f"benchmark failed; the master's and server's logs are in {workdir}", file=sys.stderr)
        raise
    machine = machine_info()
    command = " ".join(["python", "bench/consume.py", *argv])
    print(format_report(benchmark, machine, command))
    if arguments.json:
        document = {
            "started": benchmark.started.isoformat(),
            "finished": benchmark.finished.isoformat(),
            "command": command,
            "machine": machine,
            "load_average": benchmark.load_average,
            "settings": asdict(settings),
            "results": {
                phase: {**asdict(result), "server_us_per_op": result.server_microseconds}
                for phase, result in benchmark.results.items()
            },
            "ratios": benchmark.ratios,
            "consistency": benchmark.consistency,
            "server_profiles": benchmark.profiles,
        }
        Path(arguments.json).write_text(json.dumps(document, indent=2) + "\n")
    if not arguments.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if benchmark.consistency.get("mismatches") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
