"""
Cap definitions and the calendar intervals they produce.

Everything here is pure: functions take the instant they reason about as an
argument and never read a clock.  Instants are integer seconds since the Unix
epoch (UTC); calendar arithmetic happens in the cap's IANA time zone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterator, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from volumecap.amounts import MAX_AMOUNT, format_units, parse_units
from volumecap.errors import InvalidAmountError, InvalidCapError

INTERVAL_KINDS = ("single", "day", "week", "month")
# Cap ids are at most this many bytes in UTF-8, which keeps pages of caps
# and intervals within AMP's 65,535-byte limit on one value.
MAX_CAP_ID_LENGTH = 200


@dataclass(frozen=True)
class CapDefinition:
    """
    A cap as an operator defines it.

    @ivar start: first instant of the cap (inclusive), epoch seconds.
    @ivar end: end of the cap (exclusive), epoch seconds.
    @ivar total: units per interval.
    @ivar first_total: units of the first interval, or L{None} for C{total}.
    """

    id: str
    interval: str
    start: int
    end: int
    total: int
    first_total: int | None
    timezone: str

    def to_record(self) -> dict[str, Any]:
        """
        Return the definition as a JSON-compatible dictionary.
        """
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "CapDefinition":
        """
        Rebuild a definition from L{to_record} output.
        """
        return cls(**record)



@dataclass(frozen=True)
class IntervalSpan:
    """
    One interval of a cap: C{[start, end)} with its total in units.
    """

    start: int
    end: int
    total: int


def zone(name: str) -> ZoneInfo:
    """
    Return the IANA time zone C{name}.

    @raise InvalidCapError: no such zone.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidCapError(
            f"invalid time zone {name!r}: expected an IANA name such as "
            f"'Europe/Paris' or 'UTC'"
        ) from None


def parse_when(text: str, tz_name: str) -> int:
    """
    Parse an ISO 8601 date or datetime into epoch seconds.

    A date means local midnight in C{tz_name}; a datetime must carry its UTC
    offset (C{Z} or C{+02:00}) so that it names one instant.

    @raise InvalidCapError: the text is neither.
    """
    text = text.strip()
    tz = zone(tz_name)
    try:
        if len(text) == 10:
            return local_midnight(date.fromisoformat(text), tz)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidCapError(
            f"invalid time {text!r}: expected a date (2027-01-05) or a datetime "
            f"with offset (2027-01-05T12:00:00+01:00)"
        ) from None
    if moment.tzinfo is None:
        raise InvalidCapError(
            f"invalid time {text!r}: a datetime needs a UTC offset such as Z or "
            f"+01:00; give a plain date for local midnight"
        )
    return int(moment.timestamp())


def format_instant(instant: int) -> str:
    """
    Format epoch seconds as ISO 8601 UTC, for example C{2027-03-14T05:00:00Z}.
    """
    moment = datetime.fromtimestamp(instant, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def local_midnight(day: date, tz: ZoneInfo) -> int:
    """
    Return the first instant of C{day} in C{tz}.

    Where a DST change skips midnight, zoneinfo resolves the missing local time
    with the offset before the change, which is the first instant of the day.
    """
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())


def _period_start(kind: str, day: date) -> date:
    if kind == "week":
        return day - timedelta(days=day.weekday())
    if kind == "month":
        return day.replace(day=1)
    return day


def _period_after(kind: str, start: date) -> date:
    if kind == "week":
        return start + timedelta(days=7)
    if kind == "month":
        return date(start.year + start.month // 12, start.month % 12 + 1, 1)
    return start + timedelta(days=1)


def interval_at(cap: CapDefinition, instant: int) -> IntervalSpan | None:
    """
    Return the interval of C{cap} that contains C{instant}, or L{None} when
    the cap is not active then.
    """
    if not cap.start <= instant < cap.end:
        return None
    if cap.interval == "single":
        return IntervalSpan(cap.start, cap.end, _total_for(cap, cap.start))
    tz = zone(cap.timezone)
    local_day = datetime.fromtimestamp(instant, tz).date()
    period = _period_start(cap.interval, local_day)
    start = max(cap.start, local_midnight(period, tz))
    end = min(cap.end, local_midnight(_period_after(cap.interval, period), tz))
    return IntervalSpan(start, end, _total_for(cap, start))


def _total_for(cap: CapDefinition, start: int) -> int:
    if cap.first_total is not None and start == cap.start:
        return cap.first_total
    return cap.total


def intervals_from(cap: CapDefinition, instant: int) -> Iterator[IntervalSpan]:
    """
    Yield the intervals of C{cap} in order, from the one containing
    C{instant} (or the first one, when the cap starts later) to the end.
    """
    span = interval_at(cap, max(instant, cap.start))
    while span is not None:
        yield span
        span = interval_at(cap, span.end)


def current_and_next(cap: CapDefinition, now: int) -> list[IntervalSpan]:
    """
    Return the intervals a master keeps for C{cap} at C{now}: the current one
    and the next one, or fewer near the cap's end and none when it is not
    active.
    """
    if not cap.start <= now < cap.end:
        return []
    spans = []
    for span in intervals_from(cap, now):
        spans.append(span)
        if len(spans) == 2:
            break
    return spans


def plan(cap: CapDefinition, until: int, limit: int = 10_000) -> list[IntervalSpan]:
    """
    Return every interval of C{cap} that starts before C{until}, at most
    C{limit} of them.
    """
    spans: list[IntervalSpan] = []
    for span in intervals_from(cap, cap.start):
        if span.start >= until or len(spans) >= limit:
            break
        spans.append(span)
    return spans


def build_cap(
    fields: Mapping[str, Any], scale: int, default_timezone: str
) -> CapDefinition:
    """
    Validate operator input and build a L{CapDefinition}.

    @param fields: C{id}, C{interval}, C{start}, C{end}, C{total}, optional
        C{first_total} and C{timezone}; times are ISO 8601 strings and amounts
        decimal strings.
    @raise InvalidCapError: naming every invalid field at once.
    """
    problems: list[str] = []
    known = {"id", "interval", "start", "end", "total", "first_total", "timezone"}
    for key in sorted(set(fields) - known):
        problems.append(f"unknown field {key!r}; expected one of {', '.join(sorted(known))}")

    cap_id = str(fields.get("id") or "").strip()
    if not cap_id:
        problems.append("missing field 'id'")
    elif len(cap_id.encode("utf-8")) > MAX_CAP_ID_LENGTH or not cap_id.isprintable():
        problems.append(
            f"invalid id {cap_id[:40]!r}: use printable characters, at most "
            f"{MAX_CAP_ID_LENGTH} bytes in UTF-8"
        )

    kind = str(fields.get("interval") or "")
    if not kind:
        problems.append(f"missing field 'interval'; expected one of {', '.join(INTERVAL_KINDS)}")
    elif kind not in INTERVAL_KINDS:
        problems.append(f"invalid interval {kind!r}: expected one of {', '.join(INTERVAL_KINDS)}")

    tz_name = str(fields.get("timezone") or default_timezone)
    try:
        zone(tz_name)
    except InvalidCapError as error:
        problems.append(str(error))
        tz_name = "UTC"

    instants = {}
    for key in ("start", "end"):
        value = fields.get(key)
        if value in (None, ""):
            problems.append(f"missing field {key!r}")
            continue
        try:
            instants[key] = parse_when(str(value), tz_name)
        except InvalidCapError as error:
            problems.append(f"{key}: {error}")
    if len(instants) == 2 and instants["end"] <= instants["start"]:
        problems.append(f"end {fields['end']!r} is not after start {fields['start']!r}")

    amounts: dict[str, int | None] = {"first_total": None}
    for key in ("total", "first_total"):
        value = fields.get(key)
        if value in (None, ""):
            if key == "total":
                problems.append("missing field 'total'")
            continue
        try:
            amounts[key] = parse_units(str(value), scale)
        except InvalidAmountError as error:
            problems.append(f"{key}: {error}")

    if problems:
        raise InvalidCapError("; ".join(problems))
    total = amounts["total"]
    assert total is not None
    return CapDefinition(
        id=cap_id,
        interval=kind,
        start=instants["start"],
        end=instants["end"],
        total=total,
        first_total=amounts["first_total"],
        timezone=tz_name,
    )


def describe_cap(cap: CapDefinition, scale: int) -> dict[str, Any]:
    """
    Return the operator's view of C{cap}: ISO 8601 UTC times and decimal
    string amounts.
    """
    return {
        "id": cap.id,
        "interval": cap.interval,
        "start": format_instant(cap.start),
        "end": format_instant(cap.end),
        "total": format_units(cap.total, scale),
        "first_total": None if cap.first_total is None else format_units(cap.first_total, scale),
        "timezone": cap.timezone,
    }


__all__ = [
    "CapDefinition",
    "IntervalSpan",
    "INTERVAL_KINDS",
    "MAX_AMOUNT",
    "build_cap",
    "current_and_next",
    "describe_cap",
    "format_instant",
    "interval_at",
    "parse_when",
    "plan",
]


def interval_name(cap_id: str, start: int) -> str:
    """
    Name one interval of a cap for logs, for example
    C{campaign-1111@2027-03-14T05:00:00Z}.
    """
    return f"{cap_id}@{format_instant(start)}"
