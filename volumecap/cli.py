"""
The C{volumecap} command: define, list, show, plan, import and delete caps on
a master, show the master's status, and consume from or query a volumecap
server by hand.

Each run opens one AMP connection, sends its commands and closes it.  An
expected failure is printed as one C{volumecap: error:} line on stderr, and
the exit status is 2 for invalid input and 1 for any other failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Mapping, NoReturn, Sequence, TextIO

from twisted.internet.defer import CancelledError, TimeoutError, ensureDeferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.error import ConnectError, ConnectionClosed, ConnectionRefusedError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import react
from twisted.protocols import amp

from volumecap import __version__
from volumecap.capsfile import (
    FORMATS,
    CapRow,
    CapsFileError,
    Progress,
    RowRejected,
    detect_format,
    import_rows,
    open_caps_file,
    read_rows,
    write_summary,
)
from volumecap.errors import InvalidAmountError, InvalidCapError, VolumecapError
from volumecap.intervals import INTERVAL_KINDS, format_instant
from volumecap.wire.admincommands import CheckCap, DeleteCap, ListCaps, PlanCap, SetCap, ShowCap, Status
from volumecap.wire.clientcommands import Consume, Query

DEFAULT_MASTER = "tcp:127.0.0.1:7100"
DEFAULT_TIMEOUT = 30.0

CAP_COLUMNS = ("id", "interval", "start", "end", "total", "first_total", "timezone")
INTERVAL_COLUMNS = ("dc", "start", "end", "total", "available", "consumed", "state")
STATUS_FIELDS = (
    "dc",
    "dcs",
    "broker",
    "role",
    "version",
    "started",
    "scale",
    "timezone",
    "caps",
    "intervals",
    "journal",
)
SERVER_COLUMNS = ("name", "peer", "joined", "holdings")

# Errors in what the operator typed, which end the command with exit status 2.
USAGE_ERRORS = (InvalidCapError, InvalidAmountError)


class CommandFailed(Exception):
    """
    An expected failure: C{message} goes to stderr and C{status} is the exit
    status.
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class RemoteFault(CommandFailed):
    """
    The peer failed to handle one request with an error it did not declare.
    """


class Connection:
    """
    An AMP connection to the master or to a volumecap server, opened and
    closed by C{async with}.

    @ivar role: C{master} or C{server}, used in error messages.
    """

    def __init__(self, reactor: IReactorTime, role: str, endpoint: str, timeout: float) -> None:
        self.reactor = reactor
        self.role = role
        self.endpoint = endpoint
        self.timeout = timeout
        self.protocol: amp.AMP | None = None

    async def __aenter__(self) -> Connection:
        try:
            endpoint = clientFromString(self.reactor, self.endpoint)
        except (ValueError, TypeError) as error:
            raise self._invalid_endpoint(error) from None
        connecting = connectProtocol(endpoint, amp.AMP())
        connecting.addTimeout(self.timeout, self.reactor)
        try:
            self.protocol = await connecting
        except (ConnectError, TimeoutError) as error:
            raise CommandFailed(self._connect_failure(error)) from None
        except OverflowError as error:
            # clientFromString accepts a port above 65535, and the socket
            # module rejects it only when connecting.
            raise self._invalid_endpoint(error) from None
        return self

    def _invalid_endpoint(self, error: Exception) -> CommandFailed:
        return CommandFailed(f"invalid {self.role} endpoint {self.endpoint!r}: {error}", 2)

    def _connect_failure(self, error: Exception) -> str:
        if isinstance(error, ConnectionRefusedError):
            reason = "connection refused"
        elif isinstance(error, TimeoutError):
            reason = f"timed out after {self.timeout:g} s"
        else:
            reason = str(error)
        return (
            f"cannot connect to the {self.role} at {self.endpoint}: {reason}. Check that "
            f"the {self.role} is running there, or pass another endpoint with --{self.role}."
        )

    async def __aexit__(self, *exc_info: object) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.loseConnection()

    async def call(self, command: type[amp.Command], **arguments: Any) -> dict[str, Any]:
        """
        Send C{command} and return its response.

        @raise VolumecapError: an error the command declares.
        @raise CommandFailed: a timeout, a closed connection, or a peer that
            does not know the command or failed to handle it.
        """
        assert self.protocol is not None, "call() needs an open connection"
        name = command.__name__
        requesting = self.protocol.callRemote(command, **arguments)
        requesting.addTimeout(self.timeout, self.reactor)
        try:
            response: dict[str, Any] = await requesting
        except TimeoutError:
            raise CommandFailed(
                f"timed out after {self.timeout:g} s waiting for the {self.role} at "
                f"{self.endpoint} to respond to {name}. Check its log, or pass a larger --timeout."
            ) from None
        except ConnectionClosed:
            raise CommandFailed(f"the {self.role} at {self.endpoint} closed the connection") from None
        except amp.UnhandledCommand:
            raise CommandFailed(
                f"the peer at {self.endpoint} does not support {name}. Check that it is a "
                f"volumecap {self.role} of this version ({__version__})."
            ) from None
        except amp.UnknownRemoteError as error:
            raise RemoteFault(
                f"the {self.role} at {self.endpoint} failed to handle {name} "
                f"({error.description}). Its log has the details."
            ) from None
        return response


@dataclass
class Session:
    """
    The context of one subcommand: the reactor, the output streams and the
    global options.
    """

    reactor: IReactorTime
    out: TextIO
    err: TextIO
    master_endpoint: str = DEFAULT_MASTER
    timeout: float = DEFAULT_TIMEOUT

    def master(self) -> Connection:
        """
        Return an unopened connection to the master.
        """
        return Connection(self.reactor, "master", self.master_endpoint, self.timeout)

    def server(self, endpoint: str) -> Connection:
        """
        Return an unopened connection to the volumecap server at C{endpoint}.
        """
        return Connection(self.reactor, "server", endpoint, self.timeout)


def write_json(out: TextIO, value: object) -> None:
    """
    Write C{value} as indented JSON followed by a newline.
    """
    out.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def write_table(out: TextIO, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """
    Write rows as left-aligned columns under upper-case headers, showing
    L{None} cells as C{-}.
    """
    cells = [[header.upper() for header in headers]]
    cells += [["-" if value is None else str(value) for value in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    for row in cells:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")


async def caps_set(session: Session, args: argparse.Namespace) -> int:
    """
    Create or update one cap and print the outcome.
    """
    fields = {name: getattr(args, name) for name in CAP_COLUMNS}
    fields = {name: value for name, value in fields.items() if value is not None}
    async with session.master() as master:
        response = await master.call(SetCap, **fields)
    session.out.write(f"{response['outcome']}\n")
    return 0


async def list_caps(master: Connection) -> list[dict[str, Any]]:
    """
    Fetch every cap definition, one L{ListCaps} page after another.
    """
    caps: list[dict[str, Any]] = []
    after = ""
    while True:
        page = await master.call(ListCaps, after=after)
        caps.extend(page["caps"])
        if not page["more"] or not page["caps"]:
            return caps
        after = page["caps"][-1]["id"]


async def caps_list(session: Session, args: argparse.Namespace) -> int:
    """
    Print every cap definition.
    """
    async with session.master() as master:
        caps = await list_caps(master)
    records = [{name: cap.get(name) for name in CAP_COLUMNS} for cap in caps]
    if args.json:
        write_json(session.out, records)
    else:
        write_table(session.out, CAP_COLUMNS, [list(record.values()) for record in records])
    return 0


def show_record(response: Mapping[str, Any]) -> dict[str, Any]:
    """
    Convert a L{ShowCap} response to the C{caps show --json} object, with
    each interval's servers as an object keyed by server name.
    """
    record = {name: response.get(name) for name in CAP_COLUMNS}
    intervals = []
    for interval in response["intervals"]:
        item = {name: interval[name] for name in INTERVAL_COLUMNS}
        item["updated"] = interval.get("updated")
        item["servers"] = {
            server["name"]: {"available": server["available"], "consumed": server["consumed"]}
            for server in interval["servers"]
        }
        intervals.append(item)
    record["intervals"] = intervals
    return record


async def caps_show(session: Session, args: argparse.Namespace) -> int:
    """
    Print a cap's definition, its intervals and what each server holds.
    """
    async with session.master() as master:
        response = await master.call(ShowCap, id=args.id)
    record = show_record(response)
    if args.json:
        write_json(session.out, record)
        return 0
    for name in CAP_COLUMNS:
        session.out.write(f"{name}: {'-' if record[name] is None else record[name]}\n")
    session.out.write("\n")
    intervals = record["intervals"]
    columns = INTERVAL_COLUMNS + ("updated",)
    rows = [[item[name] if item.get(name) is not None else "-" for name in columns] for item in intervals]
    write_table(session.out, columns, rows)
    holdings = [
        [item["dc"], item["start"], server, figures["available"], figures["consumed"]]
        for item in intervals
        for server, figures in sorted(item["servers"].items())
    ]
    if holdings:
        session.out.write("\n")
        write_table(session.out, ("dc", "start", "server", "available", "consumed"), holdings)
    return 0


async def caps_plan(session: Session, args: argparse.Namespace) -> int:
    """
    Print the intervals a cap will have that start before C{--until}.
    """
    async with session.master() as master:
        response = await master.call(PlanCap, id=args.id, until=args.until)
    intervals = [{name: item[name] for name in ("start", "end", "total")} for item in response["intervals"]]
    if response["truncated"]:
        session.err.write(
            f"volumecap: warning: the plan is truncated to the first {len(intervals)} "
            f"intervals; more start before {args.until}\n"
        )
    if args.json:
        write_json(session.out, intervals)
    else:
        write_table(session.out, ("start", "end", "total"), [list(item.values()) for item in intervals])
    return 0


async def caps_delete(session: Session, args: argparse.Namespace) -> int:
    """
    Delete a cap and all of its intervals.
    """
    async with session.master() as master:
        await master.call(DeleteCap, id=args.id)
    session.out.write(f"deleted {args.id}\n")
    return 0


async def show_status(session: Session, args: argparse.Namespace) -> int:
    """
    Print the master's role, data center, figures and joined servers.
    """
    async with session.master() as master:
        response = await master.call(Status)
    record = {name: response[name] for name in STATUS_FIELDS}
    record["servers"] = [{name: server[name] for name in SERVER_COLUMNS} for server in response["servers"]]
    if args.json:
        write_json(session.out, record)
        return 0
    for name in STATUS_FIELDS:
        session.out.write(f"{name}: {record[name]}\n")
    session.out.write("\n")
    servers = [list(server.values()) for server in record["servers"]]
    if servers:
        write_table(session.out, SERVER_COLUMNS, servers)
    else:
        session.out.write("no volumecap server has joined\n")
    return 0


async def consume(session: Session, args: argparse.Namespace) -> int:
    """
    Consume an amount of a cap on one volumecap server and print what the
    server still holds.
    """
    async with session.server(args.server) as server:
        response = await server.call(Consume, cap=args.id, amount=args.amount)
    session.out.write(f"remaining: {response['remaining']}\n")
    return 0


async def query(session: Session, args: argparse.Namespace) -> int:
    """
    Print one volumecap server's holding of a cap's current interval.
    """
    async with session.server(args.server) as server:
        response = await server.call(Query, cap=args.id)
    session.out.write(f"available: {response['available']}\n")
    session.out.write(f"consumed: {response['consumed']}\n")
    session.out.write(f"start: {format_instant(response['start'])}\n")
    session.out.write(f"end: {format_instant(response['end'])}\n")
    return 0


async def caps_import(session: Session, args: argparse.Namespace) -> int:
    """
    Create or update every cap of a CSV or JSON Lines file and print a
    summary.  The exit status is 1 when any row was rejected.
    """
    file_format = detect_format(args.file, args.format)
    with open_caps_file(args.file) as lines:
        total = sum(1 for _ in read_rows(lines, file_format))
    command = CheckCap if args.dry_run else SetCap
    with open_caps_file(args.file) as lines:
        async with session.master() as master:

            async def send(row: CapRow) -> str:
                try:
                    response = await master.call(command, **row.fields)
                except (VolumecapError, RemoteFault) as error:
                    raise RowRejected(str(error)) from None
                return str(response["outcome"])

            progress = Progress(session.err, total, session.reactor.seconds)
            try:
                summary = await import_rows(send, read_rows(lines, file_format), progress)
            except CommandFailed as failure:
                raise CommandFailed(
                    f"{failure.message.rstrip('.')}. The import stopped after {progress.done} of {total} rows. "
                    f"Importing the file again is safe: rows already applied come back unchanged.",
                    failure.status,
                ) from None
    write_summary(session.out, summary, args.dry_run)
    return 1 if summary.rejected else 0


def positive_seconds(text: str) -> float:
    """
    Parse a positive number of seconds for C{--timeout}.
    """
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return value


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """
    Build the argument parser, taking the endpoint defaults from C{environ}.
    """
    parser = argparse.ArgumentParser(prog="volumecap", description="Manage volume caps on a volumecap master.")
    parser.add_argument("--version", action="version", version=f"volumecap {__version__}")
    parser.add_argument(
        "--master",
        metavar="ENDPOINT",
        default=environ.get("VOLUMECAP_MASTER", DEFAULT_MASTER),
        help="Twisted client endpoint of the master [env VOLUMECAP_MASTER, default %(default)s]",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for a connection or a response [default %(default)g]",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_caps_commands(commands.add_parser("caps", help="define, list, show, plan, import and delete caps"))
    status = commands.add_parser("status", help="show the master's role, figures and joined servers")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=show_status)
    _add_server_commands(commands, environ.get("VOLUMECAP_SERVER"))
    return parser


def _add_caps_commands(caps: argparse.ArgumentParser) -> None:
    commands = caps.add_subparsers(dest="caps_command", required=True, metavar="COMMAND")
    define = commands.add_parser("set", help="create or update a cap")
    define.add_argument("id", help="cap id")
    define.add_argument("--interval", required=True, choices=INTERVAL_KINDS, help="calendar period of each interval")
    when = "ISO 8601 date (local midnight in the cap's time zone) or datetime with UTC offset"
    define.add_argument("--start", required=True, metavar="WHEN", help=f"first instant of the cap: {when}")
    define.add_argument("--end", required=True, metavar="WHEN", help=f"end of the cap, exclusive: {when}")
    define.add_argument("--total", required=True, metavar="AMOUNT", help="decimal amount per interval")
    define.add_argument("--first-total", metavar="AMOUNT", help="decimal amount of the first interval [default: --total]")
    define.add_argument("--timezone", metavar="TZ", help="IANA time zone [default: the master's]")
    define.set_defaults(handler=caps_set)

    listing = commands.add_parser("list", help="list every cap definition")
    show = commands.add_parser("show", help="show a cap, its intervals and what each server holds")
    show.add_argument("id", help="cap id")
    plan = commands.add_parser("plan", help="list the intervals a cap will have")
    plan.add_argument("id", help="cap id")
    plan.add_argument("--until", required=True, metavar="WHEN", help=f"list intervals that start before this {when}")
    for parser, handler in ((listing, caps_list), (show, caps_show), (plan, caps_plan)):
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(handler=handler)

    delete = commands.add_parser("delete", help="delete a cap and all of its intervals")
    delete.add_argument("id", help="cap id")
    delete.set_defaults(handler=caps_delete)

    load = commands.add_parser("import", help="create or update caps from a CSV or JSON Lines file")
    load.add_argument("file", help="CSV with a header row, or JSON Lines with one object per line")
    load.add_argument("--format", choices=FORMATS, help="file format [default: from the extension]")
    load.add_argument("--dry-run", action="store_true", help="validate every row and change nothing")
    load.set_defaults(handler=caps_import)


def _add_server_commands(commands: "argparse._SubParsersAction[Any]", server: str | None) -> None:
    for name, handler, summary in (
        ("consume", consume, "consume an amount of a cap on a volumecap server"),
        ("query", query, "show what a volumecap server holds of a cap"),
    ):
        parser = commands.add_parser(name, help=summary)
        parser.add_argument(
            "--server",
            metavar="ENDPOINT",
            default=server,
            required=server is None,
            help="Twisted client endpoint of the volumecap server [env VOLUMECAP_SERVER]",
        )
        parser.add_argument("id", help="cap id")
        if name == "consume":
            parser.add_argument("amount", help="decimal amount to consume")
        parser.set_defaults(handler=handler)


def parse_arguments(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> argparse.Namespace:
    """
    Parse the command line.  Invalid arguments exit with status 2 after
    argparse prints the usage.
    """
    return build_parser(environ).parse_args(argv)


async def run(reactor: IReactorTime, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """
    Run the parsed command and return its exit status.

    Expected failures are written to C{err} as one line without a traceback.
    """
    session = Session(reactor, out, err, args.master, args.timeout)
    try:
        status: int = await args.handler(session, args)
    except CommandFailed as failure:
        message, status = failure.message, failure.status
    except VolumecapError as error:
        message, status = str(error), 2 if isinstance(error, USAGE_ERRORS) else 1
    except CapsFileError as error:
        message, status = f"{args.file}: {error}", 2
    else:
        return status
    err.write(f"volumecap: error: {message}\n")
    return status


async def _main(reactor: Any, args: argparse.Namespace) -> None:
    running = ensureDeferred(run(reactor, args, sys.stdout, sys.stderr))

    def interrupt() -> None:
        if not running.called:
            running.cancel()

    # A signal stops the reactor without firing the command's Deferred, and
    # react() would then exit with status 0.
    reactor.addSystemEventTrigger("before", "shutdown", interrupt)
    try:
        status = await running
    except CancelledError:
        sys.stderr.write(
            "\nvolumecap: error: interrupted before the command finished. "
            "Requests already sent may have taken effect.\n"
        )
        status = 130
    except BrokenPipeError:
        # The reader of stdout, such as head, has exited.  Pointing stdout at
        # the null device stops Python from failing again on its final flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 1
    if status:
        raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """
    Run the C{volumecap} command and exit with its status.
    """
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    react(_main, (args,))
