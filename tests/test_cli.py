"""
Tests for the C{volumecap} command and the caps file import.

Parsing, progress and argument tests need no network.  The command tests run
L{volumecap.cli.run} against in-memory fakes of a master and a volumecap
server listening on 127.0.0.1, on the real reactor through pytest-twisted.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, TypeVar

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.python.failure import Failure

from volumecap.capsfile import (
    CapRow,
    CapsFileError,
    ImportSummary,
    Progress,
    RowRejected,
    detect_format,
    import_rows,
    read_csv,
    read_jsonl,
    read_rows,
    write_summary,
)
from volumecap.cli import DEFAULT_MASTER, CommandFailed, Connection, parse_arguments, run
from volumecap.errors import CappedError, InvalidAmountError, UnknownCapError
from volumecap.intervals import build_cap, describe_cap, format_instant, parse_when, plan
from volumecap.wire.admincommands import (
    CheckCap,
    DeleteCap,
    ListCaps,
    PlanCap,
    SetCap,
    ShowCap,
    Status,
)
from volumecap.wire.clientcommands import Consume, Query

T = TypeVar("T")
HEADER = "id,interval,start,end,total,first_total,timezone\n"


class FakeMaster(amp.CommandLocator):
    """
    A master that keeps cap definitions in a dictionary and validates them
    with the real L{build_cap}.  It lists caps two per page.

    @ivar disconnect_on_set: when true, L{SetCap} closes every connection
        instead of responding.
    """

    PAGE = 2
    PLAN_LIMIT = 3

    def __init__(self) -> None:
        self.caps: dict[str, Any] = {}
        self.calls: Counter[str] = Counter()
        self.connections: list[amp.AMP] = []
        self.disconnect_on_set = False

    def _check(self, fields: dict[str, Any]) -> tuple[Any, str]:
        if fields["id"] == "explode":
            raise RuntimeError("a fault the command does not declare")
        cap = build_cap(fields, 2, "UTC")
        existing = self.caps.get(cap.id)
        if existing is None:
            return cap, "created"
        return cap, "unchanged" if existing == cap else "updated"

    @SetCap.responder
    def set_cap(self, **fields: Any) -> dict[str, str] | Deferred[dict[str, str]]:
        self.calls["SetCap"] += 1
        if self.disconnect_on_set:
            for connection in self.connections:
                connection.transport.loseConnection()
            return Deferred()
        cap, outcome = self._check(fields)
        self.caps[cap.id] = cap
        return {"outcome": outcome}

    @CheckCap.responder
    def check_cap(self, **fields: Any) -> dict[str, str]:
        self.calls["CheckCap"] += 1
        return {"outcome": self._check(fields)[1]}

    @DeleteCap.responder
    def delete_cap(self, id: str) -> dict[str, Any]:
        if self.caps.pop(id, None) is None:
            raise UnknownCapError(f"cap {id!r} not found")
        return {}

    @ListCaps.responder
    def list_caps(self, after: str) -> dict[str, Any]:
        self.calls["ListCaps"] += 1
        ids = sorted(cap_id for cap_id in self.caps if cap_id > after)
        page = [describe_cap(self.caps[cap_id], 2) for cap_id in ids[: self.PAGE]]
        return {"caps": page, "more": len(ids) > self.PAGE}

    def _cap(self, cap_id: str) -> Any:
        if cap_id not in self.caps:
            raise UnknownCapError(f"cap {cap_id!r} not found")
        return self.caps[cap_id]

    @ShowCap.responder
    def show_cap(self, id: str) -> dict[str, Any]:
        cap = self._cap(id)
        servers = [
            {"name": "web-1", "available": "40.00", "consumed": "10.00"},
            {"name": "web-2", "available": "5.00", "consumed": "45.00"},
        ]
        intervals = [
            {
                "dc": "eu",
                "start": format_instant(span.start),
                "end": format_instant(span.end),
                "total": "1000.00",
                "available": "900.00",
                "consumed": "55.00",
                "state": "live",
                "servers": servers,
            }
            for span in plan(cap, cap.end, limit=2)
        ]
        return {**describe_cap(cap, 2), "intervals": intervals}

    @PlanCap.responder
    def plan_cap(self, id: str, until: str) -> dict[str, Any]:
        cap = self._cap(id)
        spans = plan(cap, parse_when(until, cap.timezone), limit=self.PLAN_LIMIT + 1)
        intervals = [
            {"start": format_instant(span.start), "end": format_instant(span.end), "total": "10.00"}
            for span in spans[: self.PLAN_LIMIT]
        ]
        return {"intervals": intervals, "truncated": len(spans) > self.PLAN_LIMIT}

    @Status.responder
    def status(self) -> dict[str, Any]:
        return {
            "dc": "eu",
            "role": "primary",
            "version": "0.1.0",
            "started": "2027-01-05T00:00:00Z",
            "scale": 2,
            "timezone": "UTC",
            "caps": len(self.caps),
            "intervals": 0,
            "journal": 7,
            "dcs": "eu,us",
            "broker": "connected",
            "servers": [{"name": "web-1", "peer": "127.0.0.1:5000", "joined": "2027-01-05T00:00:01Z", "holdings": 2}],
        }


class FakeServer(amp.CommandLocator):
    """
    A volumecap server holding 50.00 of cap C{c1} and nothing else.
    """

    def __init__(self) -> None:
        self.available = 5000

    @Consume.responder
    def consume(self, cap: str, amount: str) -> dict[str, str]:
        if cap != "c1":
            raise UnknownCapError(f"cap {cap!r} not found")
        if amount == "0":
            raise InvalidAmountError(f"invalid amount {amount!r}: must be greater than zero")
        units = int(amount) * 100
        if units > self.available:
            raise CappedError(f"cap {cap!r} is capped")
        self.available -= units
        return {"remaining": f"{self.available / 100:.2f}"}

    @Query.responder
    def query(self, cap: str) -> dict[str, Any]:
        return {"available": "50.00", "consumed": "0.00", "start": 1799020800, "end": 1799107200}


class LocatorFactory(Factory):
    """
    Build AMP protocols that dispatch to one shared locator.
    """

    def __init__(self, locator: amp.CommandLocator, protocols: list[amp.AMP]) -> None:
        self.locator = locator
        self.protocols = protocols

    def buildProtocol(self, addr: Any) -> amp.AMP:
        protocol = amp.AMP(locator=self.locator)
        self.protocols.append(protocol)
        return protocol


def listen(locator: amp.CommandLocator, protocols: list[amp.AMP]) -> Iterator[str]:
    factory = LocatorFactory(locator, protocols)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    yield f"tcp:127.0.0.1:{port.getHost().port}"
    for protocol in factory.protocols:
        if protocol.transport is not None:
            protocol.transport.loseConnection()
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def fake_master() -> FakeMaster:
    return FakeMaster()


@pytest.fixture
def master_endpoint(fake_master: FakeMaster) -> Iterator[str]:
    yield from listen(fake_master, fake_master.connections)


@pytest.fixture
def server_endpoint() -> Iterator[str]:
    yield from listen(FakeServer(), [])


async def invoke(*argv: str) -> tuple[int, str, str]:
    args = parse_arguments(list(argv), environ={})
    out, err = io.StringIO(), io.StringIO()
    status = await run(reactor, args, out, err)
    return status, out.getvalue(), err.getvalue()


def cap_args(endpoint: str, cap_id: str = "c1", total: str = "100") -> list[str]:
    return [
        "--master", endpoint, "caps", "set", cap_id, "--interval", "day",
        "--start", "2027-01-05", "--end", "2027-01-31", "--total", total,
    ]


# Caps file parsing


def test_format_from_extension() -> None:
    """
    The format follows the extension, in any letter case.
    """
    assert detect_format("caps.csv") == "csv"
    assert detect_format("caps.JSONL") == "jsonl"
    assert detect_format("caps.ndjson") == "jsonl"


def test_format_override() -> None:
    """
    An explicit format wins over the extension.
    """
    assert detect_format("caps.txt", "jsonl") == "jsonl"
    assert detect_format("caps.csv", "jsonl") == "jsonl"


def test_format_unknown() -> None:
    """
    An unknown extension without an override raises and names --format.
    """
    with pytest.raises(CapsFileError, match="--format"):
        detect_format("caps.txt")


def test_csv_rows() -> None:
    """
    CSV columns may come in any order; values are stripped and empty
    optional fields are left out.
    """
    lines = [
        "total, id ,interval,start,end,timezone,first_total\n",
        "100, c1 ,day,2027-01-05,2027-01-31,,\n",
        "5.5,c2,week,2027-01-05,2027-03-01,Europe/Paris,2\n",
    ]
    rows = list(read_csv(lines))
    assert rows[0] == CapRow(
        2, "c1", {"id": "c1", "interval": "day", "start": "2027-01-05", "end": "2027-01-31", "total": "100"}
    )
    assert rows[1].line == 3
    assert rows[1].fields["timezone"] == "Europe/Paris"
    assert rows[1].fields["first_total"] == "2"


def test_csv_line_numbers() -> None:
    """
    A CSV row's line number is where it starts, counting blank lines and
    quoted line breaks before it.
    """
    text = HEADER + "\n" + 'c1,day,2027-01-05,2027-01-31,1,,"Europe/\nParis"\n' + "c2,day,2027-01-05,2027-01-31,1,,\n"
    rows = list(read_csv(io.StringIO(text, newline="")))
    assert [row.line for row in rows] == [3, 5]
    assert rows[0].fields["timezone"] == "Europe/\nParis"


def test_csv_wrong_columns() -> None:
    """
    A CSV row with more or fewer cells than the header is a row problem.
    """
    rows = list(read_csv([HEADER, "c1,day,2027-01-05\n", "c2,day,2027-01-05,2027-01-31,1,,,extra\n"]))
    assert rows[0].problem == "expected 7 columns as in the header, found 3"
    assert rows[0].cap_id == "c1"
    assert rows[1].problem == "expected 7 columns as in the header, found 8"


def test_csv_missing_value() -> None:
    """
    An empty required CSV cell is a row problem naming the field.
    """
    [row] = read_csv([HEADER, "c1,day,2027-01-05,2027-01-31,,,\n"])
    assert row.problem == "missing values for total"


@pytest.mark.parametrize(
    "header, message",
    [
        ("id,interval,start,end,total,colour\n", "unknown columns 'colour'"),
        ("id,interval,start,total\n", "missing columns end"),
        ("id,interval,start,end,total,id\n", "repeated columns id"),
        ("", "no header row"),
    ],
)
def test_csv_header_invalid(header: str, message: str) -> None:
    """
    An invalid CSV header fails the whole file with a message naming the
    problem.
    """
    with pytest.raises(CapsFileError, match=message):
        list(read_csv([header, "c1,day,2027-01-05,2027-01-31,1\n"]))


def test_jsonl_rows() -> None:
    """
    JSON Lines take numbers for id and amounts, keep decimal fractions exact,
    treat null as absent and skip blank lines.
    """
    lines = [
        '{"id": 1111, "interval": "day", "start": "2027-01-05", "end": "2027-01-31", "total": 0.10}\n',
        "\n",
        '{"id": "c2", "interval": "single", "start": "2027-01-05", "end": "2027-01-06",'
        ' "total": "7", "first_total": 1e1, "timezone": null}\n',
    ]
    rows = list(read_jsonl(lines))
    assert rows[0].fields == {
        "id": "1111", "interval": "day", "start": "2027-01-05", "end": "2027-01-31", "total": "0.10"
    }
    assert rows[1].line == 3
    assert rows[1].fields["first_total"] == "10"
    assert "timezone" not in rows[1].fields


@pytest.mark.parametrize(
    "line, cap_id, problem",
    [
        ('{"id": "c1",\n', "", "invalid JSON: "),
        ('["c1"]\n', "", "expected a JSON object, found an array"),
        ('{"id": "c1", "interval": 1}\n', "c1", "field 'interval' must be a string, not a number"),
        ('{"id": "c1", "total": true}\n', "c1", "field 'total' must be a string, not a boolean"),
        ('{"id": "c1", "colour": "red"}\n', "c1", "unknown fields 'colour'"),
        ('{"id": "c1", "interval": "day"}\n', "c1", "missing values for start, end, total"),
    ],
)
def test_jsonl_problems(line: str, cap_id: str, problem: str) -> None:
    """
    An invalid JSON line is a row problem with its line number and, where
    readable, its id.
    """
    [row] = read_jsonl(["\n", line])
    assert row.line == 2
    assert row.cap_id == cap_id
    assert row.problem is not None
    assert row.problem.startswith(problem)


def test_duplicate_ids() -> None:
    """
    A repeated id is a problem naming the first line, and an invalid row does
    not claim its id.
    """
    lines = [
        HEADER,
        "c1,day,2027-01-05,,1,,\n",
        "c1,day,2027-01-05,2027-01-31,1,,\n",
        "c1,day,2027-01-05,2027-01-31,2,,\n",
    ]
    rows = list(read_rows(lines, "csv"))
    assert rows[1].problem is None
    assert rows[2].problem == "cap 'c1' is already defined on line 3"


def test_invalid_utf8() -> None:
    """
    A file that is not UTF-8 fails as a whole.
    """
    lines = io.TextIOWrapper(io.BytesIO(HEADER.encode() + b"c\xff1,day\n"), encoding="utf-8", newline="")
    with pytest.raises(CapsFileError, match="not valid UTF-8"):
        list(read_rows(lines, "csv"))


# Progress, summary and the import driver


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_plain() -> None:
    """
    Without a terminal, progress is a plain line at most every five seconds
    and once at the end.
    """
    clock = Clock()
    stream = io.StringIO()
    progress = Progress(stream, 20, clock.seconds)
    progress.advance()
    assert stream.getvalue() == ""
    clock.advance(5)
    progress.advance()
    assert stream.getvalue() == "import: 2/20 rows, 0 rows/s\n"
    clock.advance(1)
    progress.advance()
    progress.finish()
    assert stream.getvalue().splitlines()[-1] == "import: 3/20 rows, 0 rows/s"


def test_progress_bar() -> None:
    """
    On a terminal, progress is a bar redrawn in place, ended by a newline.
    """
    clock = Clock()
    stream = TerminalStream()
    progress = Progress(stream, 2, clock.seconds)
    clock.advance(1)
    progress.advance()
    assert stream.getvalue() == "\r[" + "#" * 15 + "-" * 15 + "] 1/2 rows, 1 rows/s\x1b[K"
    progress.advance()
    progress.finish()
    assert stream.getvalue().endswith("\r[" + "#" * 30 + "] 2/2 rows, 2 rows/s\x1b[K\n")


def result_of(deferred: Deferred[T]) -> T:
    results: list[T | Failure] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def valid_rows(count: int) -> Iterator[CapRow]:
    return (CapRow(line, f"c{line}", {"id": f"c{line}"}) for line in range(1, count + 1))


def test_import_concurrency() -> None:
    """
    The import keeps at most the given number of rows in flight and sends
    every row.
    """
    pending: list[Deferred[str]] = []
    peak = 0

    def send(row: CapRow) -> Deferred[str]:
        nonlocal peak
        pending.append(Deferred())
        peak = max(peak, len(pending))
        return pending[-1]

    importing = ensureDeferred(import_rows(send, valid_rows(10), Progress(io.StringIO(), 10, Clock().seconds), 3))
    while pending:
        pending.pop(0).callback("created")
    summary = result_of(importing)
    assert peak == 3
    assert summary.outcomes == Counter(created=10)


def test_import_rejections() -> None:
    """
    Rows with a local problem are not sent, and a row the master rejects is
    counted with its reason.
    """
    sent: list[str] = []

    async def send(row: CapRow) -> str:
        sent.append(row.cap_id)
        if row.cap_id == "c2":
            raise RowRejected("invalid interval 'hourly'")
        return "updated"

    rows = iter([*valid_rows(2), CapRow(3, "c3", problem="invalid JSON")])
    summary = result_of(ensureDeferred(import_rows(send, rows, Progress(io.StringIO(), 3, Clock().seconds))))
    assert sent == ["c1", "c2"]
    assert summary.outcomes == Counter(updated=1)
    assert [(row.line, reason) for row, reason in summary.rejected] == [
        (2, "invalid interval 'hourly'"),
        (3, "invalid JSON"),
    ]


def test_import_failure() -> None:
    """
    An error other than a rejection ends the import once every worker stops.
    """
    sent: list[str] = []

    async def send(row: CapRow) -> str:
        sent.append(row.cap_id)
        raise CommandFailed("the master closed the connection")

    importing = ensureDeferred(import_rows(send, valid_rows(100), Progress(io.StringIO(), 100, Clock().seconds), 4))
    with pytest.raises(CommandFailed, match="closed"):
        result_of(importing)
    assert len(sent) == 4


def test_summary_output() -> None:
    """
    The summary counts each outcome and lists rejected rows in file order.
    """
    summary = ImportSummary(Counter(created=2, unchanged=1))
    summary.rejected.append((CapRow(9, "c9"), "invalid total"))
    summary.rejected.append((CapRow(4, ""), "invalid JSON"))
    out = io.StringIO()
    write_summary(out, summary, dry_run=True)
    assert out.getvalue().splitlines() == [
        "dry run: no cap was changed; the counts say what an import would do",
        "created 2, updated 0, unchanged 1, rejected 2",
        "  line 4: invalid JSON",
        "  line 9, id 'c9': invalid total",
    ]


# Command-line arguments


def test_master_default() -> None:
    """
    The master endpoint comes from --master, else VOLUMECAP_MASTER, else the
    default.
    """
    assert parse_arguments(["status"], environ={}).master == DEFAULT_MASTER
    environ = {"VOLUMECAP_MASTER": "tcp:127.0.0.1:7200"}
    assert parse_arguments(["status"], environ=environ).master == "tcp:127.0.0.1:7200"
    assert parse_arguments(["--master", "unix:/run/m", "status"], environ=environ).master == "unix:/run/m"


def test_set_arguments() -> None:
    """
    caps set reads the cap fields, leaving unset optional ones as None.
    """
    args = parse_arguments(cap_args(DEFAULT_MASTER) + ["--first-total", "50"], environ={})
    assert (args.id, args.interval, args.total, args.first_total) == ("c1", "day", "100", "50")
    assert args.timezone is None


@pytest.mark.parametrize(
    "argv",
    [
        ["caps", "set", "c1", "--interval", "hourly", "--start", "a", "--end", "b", "--total", "1"],
        ["caps", "set", "c1", "--interval", "day", "--start", "a", "--end", "b"],
        ["caps", "plan", "c1"],
        ["caps", "import", "caps.csv", "--format", "xml"],
        ["consume", "c1", "1"],
        ["--timeout", "0", "status"],
        ["caps"],
    ],
)
def test_invalid_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """
    Invalid or missing arguments exit with status 2 and a usage message.
    """
    with pytest.raises(SystemExit) as exit:
        parse_arguments(argv, environ={})
    assert exit.value.code == 2
    assert "usage: volumecap" in capsys.readouterr().err


def test_server_from_environment() -> None:
    """
    VOLUMECAP_SERVER makes --server optional.
    """
    args = parse_arguments(["query", "c1"], environ={"VOLUMECAP_SERVER": "tcp:127.0.0.1:7300"})
    assert args.server == "tcp:127.0.0.1:7300"


def test_call_timeout() -> None:
    """
    A request without a response fails after the timeout with a message
    naming the endpoint and command.
    """

    class SilentProtocol:
        def callRemote(self, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
            return Deferred()

    clock = Clock()
    connection = Connection(clock, "master", "tcp:127.0.0.1:7100", 2.5)
    connection.protocol = SilentProtocol()  # type: ignore[assignment]
    calling = ensureDeferred(connection.call(Status))
    clock.advance(2.5)
    expected = "timed out after 2.5 s waiting for the master at tcp:127.0.0.1:7100 to respond to Status"
    with pytest.raises(CommandFailed, match=expected):
        result_of(calling)


# Commands against a fake master and server


@pytest_twisted.ensureDeferred
async def test_set_outcomes(master_endpoint: str) -> None:
    """
    caps set prints created, then unchanged, then updated.
    """
    assert await invoke(*cap_args(master_endpoint)) == (0, "created\n", "")
    assert await invoke(*cap_args(master_endpoint)) == (0, "unchanged\n", "")
    assert await invoke(*cap_args(master_endpoint, total="200")) == (0, "updated\n", "")


@pytest_twisted.ensureDeferred
async def test_set_invalid(master_endpoint: str) -> None:
    """
    A cap the master rejects exits with status 2 and its message.
    """
    status, out, err = await invoke(*cap_args(master_endpoint, total="1.234"))
    assert status == 2
    assert out == ""
    assert err.startswith("volumecap: error: total: invalid amount '1.234': more than 2 decimals")
    assert "Traceback" not in err


@pytest_twisted.ensureDeferred
async def test_list_pages(fake_master: FakeMaster, master_endpoint: str) -> None:
    """
    caps list --json follows ListCaps pages until the last one.
    """
    for cap_id in ("c5", "c1", "c4", "c2", "c3"):
        await invoke(*cap_args(master_endpoint, cap_id))
    status, out, _ = await invoke("--master", master_endpoint, "caps", "list", "--json")
    assert status == 0
    caps = json.loads(out)
    assert [cap["id"] for cap in caps] == ["c1", "c2", "c3", "c4", "c5"]
    assert caps[0] == {
        "id": "c1",
        "interval": "day",
        "start": "2027-01-05T00:00:00Z",
        "end": "2027-01-31T00:00:00Z",
        "total": "100.00",
        "first_total": None,
        "timezone": "UTC",
    }
    assert fake_master.calls["ListCaps"] == 3


@pytest_twisted.ensureDeferred
async def test_list_table(master_endpoint: str) -> None:
    """
    caps list prints a header and one aligned row per cap.
    """
    await invoke(*cap_args(master_endpoint))
    status, out, _ = await invoke("--master", master_endpoint, "caps", "list")
    assert status == 0
    assert out.splitlines() == [
        "ID  INTERVAL  START                 END                   TOTAL   FIRST_TOTAL  TIMEZONE",
        "c1  day       2027-01-05T00:00:00Z  2027-01-31T00:00:00Z  100.00  -            UTC",
    ]


@pytest_twisted.ensureDeferred
async def test_show_json(master_endpoint: str) -> None:
    """
    caps show --json has the definition and intervals with servers keyed by
    name.
    """
    await invoke(*cap_args(master_endpoint))
    status, out, _ = await invoke("--master", master_endpoint, "caps", "show", "c1", "--json")
    assert status == 0
    record = json.loads(out)
    assert set(record) == {"id", "interval", "timezone", "total", "start", "end", "first_total", "intervals"}
    assert record["total"] == "100.00"
    assert len(record["intervals"]) == 2
    assert record["intervals"][1] == {
        "dc": "eu",
        "start": "2027-01-06T00:00:00Z",
        "end": "2027-01-07T00:00:00Z",
        "total": "1000.00",
        "available": "900.00",
        "consumed": "55.00",
        "state": "live",
        "updated": None,
        "servers": {
            "web-1": {"available": "40.00", "consumed": "10.00"},
            "web-2": {"available": "5.00", "consumed": "45.00"},
        },
    }


@pytest_twisted.ensureDeferred
async def test_show_table(master_endpoint: str) -> None:
    """
    caps show prints the definition, the intervals and one row per server.
    """
    await invoke(*cap_args(master_endpoint))
    status, out, _ = await invoke("--master", master_endpoint, "caps", "show", "c1")
    lines = out.splitlines()
    assert status == 0
    assert lines[0] == "id: c1"
    assert "first_total: -" in lines
    assert lines[8].split() == ["DC", "START", "END", "TOTAL", "AVAILABLE", "CONSUMED", "STATE", "UPDATED"]
    assert lines[-1].split() == ["eu", "2027-01-06T00:00:00Z", "web-2", "5.00", "45.00"]


@pytest_twisted.ensureDeferred
async def test_show_unknown(master_endpoint: str) -> None:
    """
    Showing a missing cap exits with status 1 and the master's message.
    """
    assert await invoke("--master", master_endpoint, "caps", "show", "nope") == (
        1,
        "",
        "volumecap: error: cap 'nope' not found\n",
    )


@pytest_twisted.ensureDeferred
async def test_plan_truncated(master_endpoint: str) -> None:
    """
    caps plan --json lists intervals and warns on stderr when truncated.
    """
    await invoke(*cap_args(master_endpoint))
    status, out, err = await invoke(
        "--master", master_endpoint, "caps", "plan", "c1", "--until", "2027-01-20", "--json"
    )
    assert status == 0
    assert json.loads(out)[0] == {"start": "2027-01-05T00:00:00Z", "end": "2027-01-06T00:00:00Z", "total": "10.00"}
    assert len(json.loads(out)) == 3
    assert err == (
        "volumecap: warning: the plan is truncated to the first 3 intervals; "
        "more start before 2027-01-20\n"
    )


@pytest_twisted.ensureDeferred
async def test_delete(fake_master: FakeMaster, master_endpoint: str) -> None:
    """
    caps delete removes the cap, and deleting it again fails.
    """
    await invoke(*cap_args(master_endpoint))
    assert await invoke("--master", master_endpoint, "caps", "delete", "c1") == (0, "deleted c1\n", "")
    assert fake_master.caps == {}
    status, _, err = await invoke("--master", master_endpoint, "caps", "delete", "c1")
    assert status == 1
    assert err == "volumecap: error: cap 'c1' not found\n"


@pytest_twisted.ensureDeferred
async def test_status_json(master_endpoint: str) -> None:
    """
    status --json has every Status field and the servers as objects.
    """
    status, out, _ = await invoke("--master", master_endpoint, "status", "--json")
    record = json.loads(out)
    assert status == 0
    assert record["role"] == "primary"
    assert record["scale"] == 2
    assert record["servers"] == [
        {"name": "web-1", "peer": "127.0.0.1:5000", "joined": "2027-01-05T00:00:01Z", "holdings": 2}
    ]


def write_caps_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


IMPORT_CSV = (
    HEADER
    + "c1,day,2027-01-05,2027-01-31,100,,\n"
    + "c2,hourly,2027-01-05,2027-01-31,100,,\n"
    + "c3,day,2027-01-05\n"
    + "explode,day,2027-01-05,2027-01-31,100,,\n"
    + "c4,week,2027-01-05,2027-03-01,7,2,Europe/Paris\n"
)


@pytest_twisted.ensureDeferred
async def test_import_summary(fake_master: FakeMaster, master_endpoint: str, tmp_path: Path) -> None:
    """
    caps import sends valid rows, lists every rejected row and exits with
    status 1.
    """
    await invoke(*cap_args(master_endpoint))
    path = write_caps_file(tmp_path, "caps.csv", IMPORT_CSV)
    status, out, err = await invoke("--master", master_endpoint, "caps", "import", path)
    assert status == 1
    assert out.splitlines() == [
        "created 1, updated 0, unchanged 1, rejected 3",
        "  line 3, id 'c2': invalid interval 'hourly': expected one of single, day, week, month",
        "  line 4, id 'c3': expected 7 columns as in the header, found 3",
        f"  line 5, id 'explode': the master at {master_endpoint} failed to handle SetCap "
        "(Unknown Error). Its log has the details.",
    ]
    assert err.startswith("import: 5/5 rows, ")
    assert err.count("\n") == 1
    assert sorted(fake_master.caps) == ["c1", "c4"]


@pytest_twisted.ensureDeferred
async def test_import_dry_run(fake_master: FakeMaster, master_endpoint: str, tmp_path: Path) -> None:
    """
    caps import --dry-run checks every row with CheckCap and changes nothing.
    """
    text = '{"id": "c1", "interval": "day", "start": "2027-01-05", "end": "2027-01-31", "total": 1}\n'
    path = write_caps_file(tmp_path, "caps.ndjson", text)
    status, out, _ = await invoke("--master", master_endpoint, "caps", "import", path, "--dry-run")
    assert status == 0
    assert out.splitlines()[1] == "created 1, updated 0, unchanged 0, rejected 0"
    assert fake_master.calls["CheckCap"] == 1
    assert fake_master.calls["SetCap"] == 0
    assert fake_master.caps == {}


@pytest_twisted.ensureDeferred
async def test_import_bad_header(fake_master: FakeMaster, master_endpoint: str, tmp_path: Path) -> None:
    """
    An invalid CSV header exits with status 2 before anything is sent.
    """
    path = write_caps_file(tmp_path, "caps.csv", "id,colour\nc1,red\n")
    status, out, err = await invoke("--master", master_endpoint, "caps", "import", path)
    assert status == 2
    assert out == ""
    assert err.startswith(f"volumecap: error: {path}: invalid CSV header on line 1: unknown columns 'colour'")
    assert fake_master.calls == Counter()


@pytest.fixture
def refusing_endpoint() -> Iterator[str]:
    """
    A 127.0.0.1 port that is bound but not listening, so connections to it
    are refused.
    """
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"tcp:127.0.0.1:{bound.getsockname()[1]}"


@pytest_twisted.ensureDeferred
async def test_import_connection_lost(fake_master: FakeMaster, master_endpoint: str, tmp_path: Path) -> None:
    """
    A connection lost during an import ends it with status 1 and says how
    far it got.
    """

    rows = "".join(f"c{index},day,2027-01-05,2027-01-31,1,,\n" for index in range(3))
    path = write_caps_file(tmp_path, "caps.csv", HEADER + rows)
    fake_master.disconnect_on_set = True
    status, out, err = await invoke("--master", master_endpoint, "caps", "import", path)
    assert status == 1
    assert out == ""
    assert err == (
        f"volumecap: error: the master at {master_endpoint} closed the connection. The import stopped "
        "after 0 of 3 rows. Importing the file again is safe: rows already applied come back unchanged.\n"
    )


@pytest_twisted.ensureDeferred
async def test_connection_refused(refusing_endpoint: str) -> None:
    """
    A master that is not listening gives one line naming the endpoint.
    """
    endpoint = refusing_endpoint
    assert await invoke("--master", endpoint, "status") == (
        1,
        "",
        f"volumecap: error: cannot connect to the master at {endpoint}: connection refused. "
        "Check that the master is running there, or pass another endpoint with --master.\n",
    )


@pytest_twisted.ensureDeferred
async def test_invalid_endpoint() -> None:
    """
    An endpoint string Twisted cannot parse exits with status 2.
    """
    status, _, err = await invoke("--master", "tcp:127.0.0.1:abc", "status")
    assert status == 2
    assert err.startswith("volumecap: error: invalid master endpoint 'tcp:127.0.0.1:abc'")


@pytest_twisted.ensureDeferred
async def test_unsupported_command(server_endpoint: str) -> None:
    """
    A peer without the command, such as a server taken for the master, is
    named in the error.
    """
    status, _, err = await invoke("--master", server_endpoint, "status")
    assert status == 1
    assert err == (
        f"volumecap: error: the peer at {server_endpoint} does not support Status. Check that "
        "it is a volumecap master of this version (0.1.0).\n"
    )


@pytest_twisted.ensureDeferred
async def test_consume(server_endpoint: str) -> None:
    """
    consume prints the remaining holding, then fails with status 1 when
    capped and 2 for an invalid amount.
    """
    server = ["--server", server_endpoint]
    assert await invoke("consume", *server, "c1", "45") == (0, "remaining: 5.00\n", "")
    assert await invoke("consume", *server, "c1", "6") == (1, "", "volumecap: error: cap 'c1' is capped\n")
    status, _, err = await invoke("consume", *server, "c1", "0")
    assert status == 2
    assert err == "volumecap: error: invalid amount '0': must be greater than zero\n"


@pytest_twisted.ensureDeferred
async def test_query(server_endpoint: str) -> None:
    """
    query prints the holding with its interval bounds as ISO 8601 UTC.
    """
    assert await invoke("query", "--server", server_endpoint, "c1") == (
        0,
        "available: 50.00\nconsumed: 0.00\nstart: 2027-01-04T00:00:00Z\nend: 2027-01-05T00:00:00Z\n",
        "",
    )


def test_main_exit_status(refusing_endpoint: str) -> None:
    """
    The console command exits with status 1 and no traceback when the
    master refuses the connection.
    """
    endpoint = refusing_endpoint
    command = [sys.executable, "-c", "from volumecap.cli import main; main()", "--master", endpoint, "status"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith(f"volumecap: error: cannot connect to the master at {endpoint}")
    assert "Traceback" not in result.stderr


def test_main_interrupted() -> None:
    """
    The console command exits with status 130 when SIGINT stops it while a
    request is in flight.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(60)
        endpoint = f"tcp:127.0.0.1:{listener.getsockname()[1]}"
        command = [sys.executable, "-c", "from volumecap.cli import main; main()", "--master", endpoint, "status"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        connection, _ = listener.accept()
        with connection:
            # The request arrives only once the reactor runs with its signal
            # handlers installed.
            assert b"Status" in connection.recv(4096)
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert out == ""
    assert err == (
        "\nvolumecap: error: interrupted before the command finished. "
        "Requests already sent may have taken effect.\n"
    )
