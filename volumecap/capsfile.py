"""
Bulk import of cap definitions from CSV or JSON Lines files, for
C{volumecap caps import}.

Parsing is pure: the functions take an iterable of text lines and yield one
L{CapRow} per record, with its line number, so that they can be tested without
a file or a network.  A row that cannot be sent carries a C{problem} instead of
raising, so that one bad row does not stop the import of the others.  Only
problems with the file as a whole raise L{CapsFileError}.

L{import_rows} sends the rows concurrently through a function that the caller
supplies, and L{Progress} and L{write_summary} report on it; none of them
opens a connection.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Awaitable, Callable, Iterable, Iterator, TextIO

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.python.failure import Failure

FIELDS = ("id", "interval", "start", "end", "total", "first_total", "timezone")
REQUIRED_FIELDS = ("id", "interval", "start", "end", "total")
# Fields whose JSON value may be a number as well as a string.
NUMBER_FIELDS = ("id", "total", "first_total")

FORMATS = ("csv", "jsonl")
OUTCOMES = ("created", "updated", "unchanged")
# Rows that one import keeps in flight.
IMPORT_CONCURRENCY = 32
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class CapsFileError(Exception):
    """
    A caps file cannot be read at all: unknown format, invalid CSV header,
    invalid UTF-8 or broken CSV quoting.
    """


@dataclass(frozen=True)
class CapRow:
    """
    One record of a caps file.

    @ivar line: the line number where the record starts, counting from 1.
    @ivar cap_id: the record's id, or an empty string when it has none.
    @ivar fields: L{volumecap.wire.admincommands.SetCap} arguments, with
        empty optional fields left out.
    @ivar problem: why the record cannot be sent, or L{None}.
    """

    line: int
    cap_id: str
    fields: dict[str, str] = field(default_factory=dict)
    problem: str | None = None


class _RowProblem(Exception):
    """
    An invalid record, with the reason as its message.
    """


def detect_format(path: str, override: str | None = None) -> str:
    """
    Return the format of the caps file at C{path}: C{override} when given,
    else the one its extension names.

    @raise CapsFileError: no override and an unknown extension.
    """
    if override is not None:
        return override
    for extension, file_format in EXTENSIONS.items():
        if path.lower().endswith(extension):
            return file_format
    raise CapsFileError(
        f"cannot tell the format from the file name: use the extension "
        f"{', '.join(EXTENSIONS)} or pass --format {' or '.join(FORMATS)}"
    )


def open_caps_file(path: str) -> TextIO:
    """
    Open a caps file as UTF-8 text for L{read_rows}, skipping a byte order
    mark.

    @raise CapsFileError: the file cannot be opened.
    """
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except OSError as error:
        raise CapsFileError(f"cannot read the file: {error.strerror}") from None


def read_rows(lines: Iterable[str], file_format: str) -> Iterator[CapRow]:
    """
    Parse the records of a caps file and reject repeated ids.

    @param lines: the file's text lines; for CSV, opened with C{newline=""}.
    @param file_format: C{csv} or C{jsonl}.
    @raise CapsFileError: the file as a whole is invalid.
    """
    parse = read_csv if file_format == "csv" else read_jsonl
    try:
        yield from reject_duplicates(parse(lines))
    except UnicodeDecodeError as error:
        raise CapsFileError(f"the file is not valid UTF-8 text: {error.reason}") from None


def read_csv(lines: Iterable[str]) -> Iterator[CapRow]:
    """
    Parse CSV with a header row that names the columns, in any order.

    Blank lines are skipped and values are stripped of surrounding spaces.

    @raise CapsFileError: the header is missing, repeats a column, names an
        unknown one or lacks a required one, or the quoting is broken.
    """
    reader = csv.reader(lines)
    try:
        header = _csv_header(next(reader, []), reader.line_num)
        start = reader.line_num + 1
        for values in reader:
            if values:
                yield _csv_row(start, header, values)
            start = reader.line_num + 1
    except csv.Error as error:
        raise CapsFileError(f"line {reader.line_num}: invalid CSV: {error}") from None


def _csv_header(names: list[str], line: int) -> list[str]:
    header = [name.strip().lower() for name in names]
    if not header:
        raise CapsFileError(f"the CSV file has no header row; expected {', '.join(FIELDS)}")
    problems = []
    unknown = [name for name in header if name not in FIELDS]
    if unknown:
        problems.append(f"unknown columns {', '.join(map(repr, unknown))}")
    missing = [name for name in REQUIRED_FIELDS if name not in header]
    if missing:
        problems.append(f"missing columns {', '.join(missing)}")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        problems.append(f"repeated columns {', '.join(repeated)}")
    if problems:
        raise CapsFileError(
            f"invalid CSV header on line {line}: {'; '.join(problems)}; "
            f"the columns are {', '.join(FIELDS)}"
        )
    return header


def _csv_row(line: int, header: list[str], values: list[str]) -> CapRow:
    record = dict(zip(header, (value.strip() for value in values)))
    cap_id = record.get("id", "")
    if len(values) != len(header):
        problem = f"expected {len(header)} columns as in the header, found {len(values)}"
        return CapRow(line, cap_id, problem=problem)
    return _checked_row(line, record)


def read_jsonl(lines: Iterable[str]) -> Iterator[CapRow]:
    """
    Parse JSON Lines: one JSON object per line, keyed by field name.

    Blank lines are skipped.  Values are strings, or numbers for C{id},
    C{total} and C{first_total}.  JSON fractions are read as exact decimals,
    and a C{null} value counts as absent.
    """
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            value = _json_object(text)
        except _RowProblem as error:
            yield CapRow(number, "", problem=str(error))
            continue
        try:
            yield _checked_row(number, _json_record(value))
        except _RowProblem as error:
            yield CapRow(number, _json_id(value), problem=str(error))


def _json_object(text: str) -> dict[str, object]:
    try:
        value = json.loads(text, parse_float=Decimal)
    except ValueError as error:
        raise _RowProblem(f"invalid JSON: {error}") from None
    if not isinstance(value, dict):
        raise _RowProblem(f"expected a JSON object, found {_json_type(value)}")
    return value


def _json_record(value: dict[str, object]) -> dict[str, str]:
    record = {}
    for key, item in value.items():
        text = _json_text(key, item)
        if text is not None:
            record[key] = text
    return record


def _json_id(value: dict[str, object]) -> str:
    try:
        return _json_text("id", value.get("id")) or ""
    except _RowProblem:
        return ""


def _json_text(key: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value.strip() if isinstance(value, str) else None
    is_number = isinstance(value, (int, Decimal)) and not isinstance(value, bool)
    if is_number and key in NUMBER_FIELDS:
        return format(value, "f") if isinstance(value, Decimal) else str(value)
    raise _RowProblem(f"field {key!r} must be a string, not {_json_type(value)}")


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", bool: "a boolean", str: "a string"}
    return names.get(type(value), "a number")


def _checked_row(line: int, record: dict[str, str]) -> CapRow:
    """
    Check a record's field names and required values and build its row.
    """
    cap_id = record.get("id", "")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        problem = f"unknown fields {', '.join(map(repr, unknown))}; expected {', '.join(FIELDS)}"
        return CapRow(line, cap_id, problem=problem)
    missing = [name for name in REQUIRED_FIELDS if not record.get(name)]
    if missing:
        return CapRow(line, cap_id, problem=f"missing values for {', '.join(missing)}")
    fields = {name: value for name, value in record.items() if value}
    return CapRow(line, cap_id, fields)


def reject_duplicates(rows: Iterable[CapRow]) -> Iterator[CapRow]:
    """
    Mark each row that repeats the id of an earlier valid row with a problem.

    Rows are sent concurrently, so two definitions of one cap would be
    applied in no fixed order; the first one wins here instead.
    """
    first_lines: dict[str, int] = {}
    for row in rows:
        if row.problem is None and row.cap_id in first_lines:
            problem = f"cap {row.cap_id!r} is already defined on line {first_lines[row.cap_id]}"
            row = CapRow(row.line, row.cap_id, problem=problem)
        elif row.problem is None:
            first_lines[row.cap_id] = row.line
        yield row


class RowRejected(Exception):
    """
    A row that the master rejected, with the reason as its message.
    """


class Progress:
    """
    Import progress on a stream: a bar redrawn in place when the stream is a
    terminal, else a plain line at most every C{PLAIN_PERIOD} seconds.

    @param now: returns the current time in seconds.
    """

    BAR_WIDTH = 30
    BAR_PERIOD = 0.1
    PLAIN_PERIOD = 5.0

    def __init__(self, stream: TextIO, total: int, now: Callable[[], float]) -> None:
        self.stream = stream
        self.total = total
        self.now = now
        self.terminal = stream.isatty()
        self.done = 0
        self.started = self.last_drawn = now()

    def advance(self) -> None:
        """
        Count one finished row and redraw when the period has passed.
        """
        self.done += 1
        period = self.BAR_PERIOD if self.terminal else self.PLAIN_PERIOD
        if self.now() - self.last_drawn >= period:
            self.show()

    def show(self) -> None:
        """
        Draw the count of finished rows and the rate since the start.
        """
        self.last_drawn = self.now()
        rate = self.done / max(self.last_drawn - self.started, 1e-3)
        figures = f"{self.done}/{self.total} rows, {rate:.0f} rows/s"
        if self.terminal:
            filled = self.BAR_WIDTH * self.done // max(self.total, 1)
            bar = "#" * filled + "-" * (self.BAR_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {figures}\x1b[K")
        else:
            self.stream.write(f"import: {figures}\n")
        self.stream.flush()

    def finish(self) -> None:
        """
        Draw the final figures and end the bar's line.
        """
        self.show()
        if self.terminal:
            self.stream.write("\n")


@dataclass
class ImportSummary:
    """
    Counts of the outcomes of an import, and the rejected rows with reasons.
    """

    outcomes: Counter[str] = field(default_factory=Counter)
    rejected: list[tuple[CapRow, str]] = field(default_factory=list)


async def import_rows(
    send: Callable[[CapRow], Awaitable[str]],
    rows: Iterator[CapRow],
    progress: Progress,
    concurrency: int = IMPORT_CONCURRENCY,
) -> ImportSummary:
    """
    Send every row that has no problem, with at most C{concurrency} in flight.

    Each worker takes the next row from the shared iterator, so memory stays
    bounded however long the file is.

    @param send: sends one row and returns its outcome, or raises
        L{RowRejected}.
    @raise Exception: the first other exception C{send} raised, once every
        worker has stopped; each worker stops at its first exception.
    """
    summary = ImportSummary()

    async def work() -> None:
        for row in rows:
            await _import_row(send, row, summary)
            progress.advance()

    workers = [ensureDeferred(work()) for _ in range(concurrency)]
    for _, result in await DeferredList(workers, consumeErrors=True):
        if isinstance(result, Failure):
            result.raiseException()
    progress.finish()
    return summary


async def _import_row(send: Callable[[CapRow], Awaitable[str]], row: CapRow, summary: ImportSummary) -> None:
    if row.problem is not None:
        summary.rejected.append((row, row.problem))
        return
    try:
        outcome = await send(row)
    except RowRejected as error:
        summary.rejected.append((row, str(error)))
    else:
        summary.outcomes[outcome] += 1


def write_summary(out: TextIO, summary: ImportSummary, dry_run: bool) -> None:
    """
    Write the outcome counts, then each rejected row with its line number,
    id and reason, in file order.
    """
    if dry_run:
        out.write("dry run: no cap was changed; the counts say what an import would do\n")
    counts = [f"{outcome} {summary.outcomes[outcome]}" for outcome in OUTCOMES]
    counts.append(f"rejected {len(summary.rejected)}")
    out.write(", ".join(counts) + "\n")
    for row, reason in sorted(summary.rejected, key=lambda rejection: rejection[0].line):
        label = f"line {row.line}, id {row.cap_id!r}" if row.cap_id else f"line {row.line}"
        out.write(f"  {label}: {reason}\n")
