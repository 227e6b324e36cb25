"""
Unit tests of the calendar: cap definitions and the intervals they produce.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from volumecap.errors import InvalidCapError
from volumecap.intervals import (
    MAX_CAP_ID_LENGTH,
    CapDefinition,
    IntervalSpan,
    build_cap,
    current_and_next,
    describe_cap,
    format_instant,
    interval_at,
    parse_when,
    plan,
)

SCALE = 2
HOUR = 3600
DAY = 24 * HOUR


def instant(text: str, tz: str = "UTC") -> int:
    """
    Return the epoch seconds of an ISO 8601 date or datetime, read in zone
    C{tz} unless the text carries its own offset.
    """
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(tz))
    return int(moment.timestamp())


def make_cap(
    interval: str = "day",
    start: str = "2027-01-01",
    end: str = "2028-01-01",
    tz: str = "UTC",
    total: int = 10000,
    first_total: int | None = None,
) -> CapDefinition:
    """
    Return a cap whose start and end are read in its own time zone.
    """
    return CapDefinition(
        id="c1",
        interval=interval,
        start=instant(start, tz),
        end=instant(end, tz),
        total=total,
        first_total=first_total,
        timezone=tz,
    )


def cap_fields(**changes: Any) -> dict[str, Any]:
    """
    Return valid build_cap input with C{changes} applied.
    """
    fields: dict[str, Any] = {
        "id": "campaign-1111",
        "interval": "day",
        "start": "2027-01-05",
        "end": "2027-02-01",
        "total": "1000",
    }
    fields.update(changes)
    return fields


def invalid_cap_message(fields: dict[str, Any]) -> str:
    """
    Return the message of the InvalidCapError that build_cap raises for C{fields}.
    """
    with pytest.raises(InvalidCapError) as raised:
        build_cap(fields, SCALE, "UTC")
    return str(raised.value)


def test_day_spring_forward() -> None:
    """
    The New York day of the 2027 spring change runs 05:00Z to 04:00Z next day, 23 hours, with the full total.
    """
    cap = make_cap(start="2027-03-01", end="2027-04-01", tz="America/New_York", first_total=500)
    span = interval_at(cap, instant("2027-03-14T12:00:00Z"))
    assert span is not None
    assert span.start == instant("2027-03-14T05:00:00Z")
    assert span.end == instant("2027-03-15T04:00:00Z")
    assert span.end - span.start == 23 * HOUR
    assert span.total == 10000


def test_day_fall_back() -> None:
    """
    The New York day of the 2027 autumn change runs 04:00Z to 05:00Z next day, 25 hours.
    """
    cap = make_cap(start="2027-11-01", end="2027-12-01", tz="America/New_York")
    span = interval_at(cap, instant("2027-11-07T12:00:00Z"))
    assert span is not None
    assert span.start == instant("2027-11-07T04:00:00Z")
    assert span.end == instant("2027-11-08T05:00:00Z")
    assert span.end - span.start == 25 * HOUR


def test_days_start_at_local_midnight() -> None:
    """
    Every daily interval starts at local midnight and ends where the next one starts.
    """
    tz = "America/New_York"
    cap = make_cap(start="2027-03-01", end="2027-12-01", tz=tz)
    spans = plan(cap, cap.end)
    assert len(spans) == 275
    for span, following in zip(spans, spans[1:]):
        assert span.end == following.start
    for span in spans:
        local = datetime.fromtimestamp(span.start, ZoneInfo(tz))
        assert (local.hour, local.minute) == (0, 0), format_instant(span.start)


def test_host_zone_ignored() -> None:
    """
    The host's TZ setting does not change intervals, parsed times or descriptions.
    """

    def compute() -> list[object]:
        cap = make_cap(start="2027-03-01", end="2027-12-01", tz="America/New_York")
        return [
            plan(cap, cap.end),
            interval_at(cap, instant("2027-11-07T12:00:00Z")),
            parse_when("2027-03-14", "America/New_York"),
            parse_when("2027-03-14T12:00:00+01:00", "America/New_York"),
            describe_cap(cap, SCALE),
            build_cap(cap_fields(timezone="Europe/Paris"), SCALE, "UTC"),
        ]

    saved = os.environ.get("TZ")
    try:
        os.environ["TZ"] = "UTC"
        time.tzset()
        in_utc = compute()
        os.environ["TZ"] = "Asia/Kolkata"
        time.tzset()
        assert time.strftime("%z", time.localtime(0)) == "+0530"
        in_kolkata = compute()
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()
    assert in_kolkata == in_utc


def test_week_starts_monday() -> None:
    """
    A weekly interval runs from Monday 00:00 local to the next Monday 00:00.
    """
    cap = make_cap(interval="week", start="2026-12-28", tz="Europe/Paris")
    span = interval_at(cap, instant("2027-01-07T12:00:00Z"))
    assert span is not None
    assert span.start == instant("2027-01-03T23:00:00Z")
    assert span.end == instant("2027-01-10T23:00:00Z")
    assert datetime.fromtimestamp(span.start, ZoneInfo("Europe/Paris")).weekday() == 0


def test_week_across_dst() -> None:
    """
    The Paris week of the 2027 spring change is one hour short of seven days.
    """
    cap = make_cap(interval="week", start="2026-12-28", tz="Europe/Paris")
    span = interval_at(cap, instant("2027-03-28T12:00:00Z"))
    assert span is not None
    assert span.start == instant("2027-03-22", "Europe/Paris")
    assert span.end == instant("2027-03-29", "Europe/Paris")
    assert span.end - span.start == 7 * DAY - HOUR


def test_month_starts_first() -> None:
    """
    A monthly interval runs from the 1st 00:00 local to the next 1st.
    """
    cap = make_cap(interval="month", tz="Asia/Tokyo")
    span = interval_at(cap, instant("2027-02-15T12:00:00Z"))
    assert span is not None
    assert span.start == instant("2027-01-31T15:00:00Z")
    assert span.end == instant("2027-02-28T15:00:00Z")


def test_month_december_rollover() -> None:
    """
    December ends on 1 January of the next year, and monthly intervals continue into it.
    """
    cap = make_cap(interval="month", start="2027-11-01", end="2028-03-01", tz="America/New_York")
    december = interval_at(cap, instant("2027-12-20T12:00:00Z"))
    assert december is not None
    assert december.start == instant("2027-12-01T05:00:00Z")
    assert december.end == instant("2028-01-01T05:00:00Z")
    starts = [format_instant(span.start) for span in plan(cap, cap.end)]
    assert starts == [
        "2027-11-01T04:00:00Z",
        "2027-12-01T05:00:00Z",
        "2028-01-01T05:00:00Z",
        "2028-02-01T05:00:00Z",
    ]


def test_clipped_to_cap() -> None:
    """
    The first interval starts at the cap's start and the last ends at its end.
    """
    cap = make_cap(start="2027-01-05T12:00:00", end="2027-01-07T06:00:00")
    assert plan(cap, cap.end) == [
        IntervalSpan(instant("2027-01-05T12:00:00Z"), instant("2027-01-06"), 10000),
        IntervalSpan(instant("2027-01-06"), instant("2027-01-07"), 10000),
        IntervalSpan(instant("2027-01-07"), instant("2027-01-07T06:00:00Z"), 10000),
    ]


def test_week_clipped_to_cap() -> None:
    """
    A weekly cap that starts on a Wednesday has a first interval from then to Monday.
    """
    cap = make_cap(interval="week", start="2027-01-06", end="2027-01-20")
    spans = plan(cap, cap.end)
    assert [(span.start, span.end) for span in spans] == [
        (instant("2027-01-06"), instant("2027-01-11")),
        (instant("2027-01-11"), instant("2027-01-18")),
        (instant("2027-01-18"), instant("2027-01-20")),
    ]


def test_first_total_first_only() -> None:
    """
    first_total applies to the first interval and total to every later one.
    """
    cap = make_cap(start="2027-01-01", end="2027-01-04", first_total=2500)
    totals = [span.total for span in plan(cap, cap.end)]
    assert totals == [2500, 10000, 10000]


def test_first_total_mid_period() -> None:
    """
    A cap starting at noon gets first_total for the rest of that day only.
    """
    cap = make_cap(start="2027-01-01T12:00:00", end="2027-01-03", first_total=5000)
    spans = plan(cap, cap.end)
    assert spans[0] == IntervalSpan(instant("2027-01-01T12:00:00Z"), instant("2027-01-02"), 5000)
    assert spans[1] == IntervalSpan(instant("2027-01-02"), instant("2027-01-03"), 10000)
    assert len(spans) == 2


def test_first_total_later_lookup() -> None:
    """
    interval_at of a later instant gives total, not first_total.
    """
    cap = make_cap(start="2027-01-01T12:00:00", first_total=5000)
    span = interval_at(cap, instant("2027-06-01T12:00:00Z"))
    assert span is not None
    assert span.total == 10000


def test_single_one_interval() -> None:
    """
    A single cap has one interval [start, end) whatever the calendar.
    """
    cap = make_cap(interval="single", start="2027-01-05T10:00:00", end="2027-03-20T07:00:00", tz="Europe/Paris")
    expected = IntervalSpan(cap.start, cap.end, 10000)
    assert plan(cap, cap.end + 100 * DAY) == [expected]
    assert interval_at(cap, cap.start) == expected
    assert interval_at(cap, cap.end - 1) == expected
    assert interval_at(cap, cap.end) is None
    assert current_and_next(cap, cap.start + DAY) == [expected]


def test_interval_at_outside() -> None:
    """
    interval_at returns None before the start and from the end on.
    """
    cap = make_cap(start="2027-01-05", end="2027-01-10")
    assert interval_at(cap, cap.start - 1) is None
    assert interval_at(cap, cap.end) is None
    assert interval_at(cap, cap.end + DAY) is None


def test_current_and_next_two() -> None:
    """
    Mid-cap, current_and_next returns the interval containing now and the one after it.
    """
    cap = make_cap(start="2027-01-01", end="2027-02-01")
    now = instant("2027-01-10T18:00:00Z")
    assert current_and_next(cap, now) == [
        IntervalSpan(instant("2027-01-10"), instant("2027-01-11"), 10000),
        IntervalSpan(instant("2027-01-11"), instant("2027-01-12"), 10000),
    ]


def test_current_and_next_boundary() -> None:
    """
    At an interval's first instant, that interval is the current one.
    """
    cap = make_cap(start="2027-01-01", end="2027-02-01")
    spans = current_and_next(cap, instant("2027-01-11"))
    assert spans[0].start == instant("2027-01-11")
    assert spans[1].start == instant("2027-01-12")


def test_current_and_next_near_end() -> None:
    """
    In the cap's last interval, current_and_next returns only that one.
    """
    cap = make_cap(start="2027-01-01", end="2027-02-01")
    spans = current_and_next(cap, instant("2027-01-31T23:59:59Z"))
    assert spans == [IntervalSpan(instant("2027-01-31"), instant("2027-02-01"), 10000)]


def test_current_and_next_inactive() -> None:
    """
    Before the start and from the end on, current_and_next returns nothing.
    """
    cap = make_cap(start="2027-01-01", end="2027-02-01")
    assert current_and_next(cap, cap.start - 1) == []
    assert current_and_next(cap, cap.end) == []
    assert current_and_next(cap, cap.end + 30 * DAY) == []


def test_plan_until() -> None:
    """
    plan lists the intervals that start before `until`, from the cap's first.
    """
    cap = make_cap(start="2027-01-01", end="2027-02-01")
    spans = plan(cap, instant("2027-01-04"))
    assert [span.start for span in spans] == [
        instant("2027-01-01"),
        instant("2027-01-02"),
        instant("2027-01-03"),
    ]
    assert plan(cap, instant("2027-01-04T00:00:01Z"))[-1].start == instant("2027-01-04")
    assert plan(cap, cap.start) == []


def test_plan_limit() -> None:
    """
    plan returns at most `limit` intervals.
    """
    cap = make_cap(start="2027-01-01", end="2037-01-01")
    assert len(plan(cap, cap.end, limit=3)) == 3
    assert len(plan(cap, cap.end, limit=0)) == 0
    assert len(plan(cap, cap.end)) == 3653


def test_parse_date_local_midnight() -> None:
    """
    A plain date is local midnight in the given zone.
    """
    assert parse_when("2027-03-14", "America/New_York") == instant("2027-03-14T05:00:00Z")
    assert parse_when("2027-07-01", "Asia/Kolkata") == instant("2027-06-30T18:30:00Z")
    assert parse_when("2027-01-05", "UTC") == instant("2027-01-05T00:00:00Z")


def test_parse_datetime_offset() -> None:
    """
    A datetime with an offset names one instant, whatever zone is given.
    """
    expected = instant("2027-01-05T11:00:00Z")
    assert parse_when("2027-01-05T12:00:00+01:00", "UTC") == expected
    assert parse_when("2027-01-05T12:00:00+01:00", "Asia/Tokyo") == expected
    assert parse_when("2027-01-05T11:00:00Z", "America/New_York") == expected
    assert parse_when(" 2027-01-05T11:00:00Z ", "UTC") == expected


def test_parse_rejects_naive() -> None:
    """
    A datetime without an offset is rejected with a message naming it.
    """
    with pytest.raises(InvalidCapError) as raised:
        parse_when("2027-01-05T12:00:00", "UTC")
    assert "'2027-01-05T12:00:00'" in str(raised.value)
    assert "offset" in str(raised.value)


@pytest.mark.parametrize("text", ["yesterday", "2027-13-01", "2027-02-30", "", "12:00", "2027-01-05T25:00Z"])
def test_parse_rejects_garbage(text: str) -> None:
    """
    Text that is no ISO 8601 date or datetime is rejected with a message naming it.
    """
    with pytest.raises(InvalidCapError) as raised:
        parse_when(text, "UTC")
    assert repr(text) in str(raised.value)


def test_parse_rejects_bad_zone() -> None:
    """
    A plain date in an unknown zone is rejected with a message naming the zone.
    """
    with pytest.raises(InvalidCapError) as raised:
        parse_when("2027-01-05", "Mars/Olympus")
    assert "'Mars/Olympus'" in str(raised.value)


def test_build_cap_valid() -> None:
    """
    build_cap turns operator strings into instants and units.
    """
    cap = build_cap(
        cap_fields(start="2027-01-05T12:00:00-05:00", first_total="2.5", timezone="America/New_York"),
        SCALE,
        "UTC",
    )
    assert cap == CapDefinition(
        id="campaign-1111",
        interval="day",
        start=instant("2027-01-05T17:00:00Z"),
        end=instant("2027-02-01T05:00:00Z"),
        total=100000,
        first_total=250,
        timezone="America/New_York",
    )


def test_build_cap_default_zone() -> None:
    """
    A cap without a time zone gets the default zone, and its dates are local to it.
    """
    cap = build_cap(cap_fields(), SCALE, "Europe/Paris")
    assert cap.timezone == "Europe/Paris"
    assert cap.start == instant("2027-01-04T23:00:00Z")
    assert cap.first_total is None


def test_build_cap_all_problems() -> None:
    """
    build_cap lists every invalid field in one InvalidCapError.
    """
    message = invalid_cap_message(
        {
            "id": "",
            "interval": "hourly",
            "timezone": "Mars/Olympus",
            "start": "yesterday",
            "end": "2027-02-01",
            "total": "-1",
            "first_total": "0.001",
            "colour": "red",
        }
    )
    assert "unknown field 'colour'" in message
    assert "missing field 'id'" in message
    assert "'hourly'" in message
    assert "'Mars/Olympus'" in message
    assert "'yesterday'" in message
    assert "'-1'" in message
    assert "'0.001'" in message


def test_build_cap_end_before_start() -> None:
    """
    An end before the start is reported together with the other problems.
    """
    message = invalid_cap_message(cap_fields(start="2027-02-01", end="2027-01-05", total="abc", size=3))
    assert "end '2027-01-05' is not after start '2027-02-01'" in message
    assert "'abc'" in message
    assert "unknown field 'size'" in message


def test_build_cap_end_equals_start() -> None:
    """
    A cap whose end equals its start is rejected.
    """
    message = invalid_cap_message(cap_fields(start="2027-01-05", end="2027-01-05T00:00:00Z"))
    assert "is not after start" in message


@pytest.mark.parametrize("field", ["start", "end", "total", "id"])
def test_build_cap_missing(field: str) -> None:
    """
    A missing required field is named.
    """
    fields = cap_fields()
    del fields[field]
    assert f"missing field '{field}'" in invalid_cap_message(fields)


def test_build_cap_id_length() -> None:
    """
    A cap id may have 200 UTF-8 bytes and no more, counting bytes, not characters.
    """
    assert MAX_CAP_ID_LENGTH == 200
    assert build_cap(cap_fields(id="a" * 200), SCALE, "UTC").id == "a" * 200
    assert build_cap(cap_fields(id="é" * 100), SCALE, "UTC").id == "é" * 100
    assert "invalid id" in invalid_cap_message(cap_fields(id="a" * 201))
    assert "invalid id" in invalid_cap_message(cap_fields(id="é" * 101))


def test_build_cap_unprintable_id() -> None:
    """
    A cap id with a control character is rejected.
    """
    assert "invalid id 'a\\tb'" in invalid_cap_message(cap_fields(id="a\tb"))


def test_describe_cap() -> None:
    """
    describe_cap gives ISO 8601 UTC times ending in Z and decimal strings.
    """
    cap = make_cap(start="2027-01-05", end="2027-02-01", tz="America/New_York", total=100000, first_total=5)
    assert describe_cap(cap, SCALE) == {
        "id": "c1",
        "interval": "day",
        "start": "2027-01-05T05:00:00Z",
        "end": "2027-02-01T05:00:00Z",
        "total": "1000.00",
        "first_total": "0.05",
        "timezone": "America/New_York",
    }


def test_describe_cap_no_first_total() -> None:
    """
    describe_cap gives None for a missing first_total, and integers at scale 0.
    """
    description = describe_cap(make_cap(total=42), 0)
    assert description["first_total"] is None
    assert description["total"] == "42"


def test_cap_record_round_trip() -> None:
    """
    A cap rebuilt from its record equals the original.
    """
    cap = make_cap(first_total=5)
    assert CapDefinition.from_record(cap.to_record()) == cap
