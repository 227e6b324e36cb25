"""
Generate the sample caps in this directory for trying a bulk import with
the `volumecap` command.

Writes caps-sample.csv (300 caps) and caps-sample.jsonl (20 more caps in
JSON Lines) next to this script.  Run it from anywhere with the project's
Python (3.11 or later) and the system's IANA time zone data.  It needs no
other packages:

    python conf/make_sample_caps.py

The random generator is seeded, so every run writes the same files as long
as the time zone data gives the same UTC offsets.  The dates are chosen
around 2026-12-04: most caps are active on that day, about 15% start in
2027, and every cap ends after 2026-12-05.  A start given as a date means
local midnight in the cap's time zone, and a start given as a datetime
carries its UTC offset.  An empty time zone leaves the zone to the master's
`timezone` setting, and the generator assumes UTC for such caps.
"""

from __future__ import annotations

import csv
import json
import random
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

SEED = 20261204
REFERENCE_DAY = date(2026, 12, 4)
FIELDS = ["id", "interval", "start", "end", "total", "first_total", "timezone"]
CENT = Decimal("0.01")

# Time zone names with relative weights.  The empty name stands for caps that
# leave the zone to the master's default.
TIME_ZONES = [
    ("UTC", 16),
    ("America/New_York", 14),
    ("America/Los_Angeles", 10),
    ("America/Chicago", 5),
    ("America/Sao_Paulo", 4),
    ("Europe/London", 10),
    ("Europe/Paris", 10),
    ("Europe/Berlin", 6),
    ("Asia/Tokyo", 7),
    ("Asia/Kolkata", 6),
    ("Asia/Singapore", 4),
    ("Australia/Sydney", 5),
    ("", 3),
]

TENANTS = [
    "acme", "globex", "initech", "umbrella", "hooli", "piedpiper", "stark",
    "wayne", "wonka", "soylent", "tyrell", "cyberdyne", "aperture", "oscorp",
    "vandelay", "dunder", "massive", "nakatomi", "gekko", "monarch", "blueth",
    "contoso", "fabrikam", "northwind", "tailspin", "adventure", "litware",
    "proseware", "woodgrove", "lucerne", "fourth-coffee", "wingtip",
    "alpine-ski", "coho-winery", "margies-travel", "treyresearch", "humongous",
    "blue-yonder", "datum", "relecloud",
]

# Metric suffix, typical amount per day (low, high), and whether amounts
# carry cents.
CAMPAIGN_METRICS = [
    ("impressions", (5_000, 2_000_000), False),
    ("clicks", (100, 20_000), False),
    ("conversions", (20, 1_500), False),
    ("spend-usd", (50, 8_000), True),
    ("spend-eur", (50, 6_000), True),
]
TENANT_METRICS = [
    ("api-calls", (10_000, 5_000_000), False),
    ("sms", (500, 40_000), False),
    ("emails", (1_000, 250_000), False),
    ("webhooks", (5_000, 800_000), False),
    ("exports", (10, 400), False),
    ("llm-tokens", (100_000, 20_000_000), False),
    ("egress-gb", (5, 2_000), True),
]
PROMO_DAILY = [
    "daily-deal", "flash-sale", "free-shipping", "welcome-offer",
    "app-install", "referral", "loyalty-bonus", "student-discount",
]

# Single-interval promotions with dates that fit the event.  The first seven
# cover 2026-12-04 and the rest start in 2027.
PROMOTIONS = [
    ("promo-holiday-2026-coupons", "2026-12-01", "2026-12-26", "America/New_York", "40000"),
    ("promo-advent-2026-vouchers", "2026-12-01", "2026-12-25", "Europe/Berlin", "24000"),
    ("promo-winter-sale-2026-coupons", "2026-11-30", "2027-01-05", "Europe/London", "150000"),
    ("promo-cyberweek-2026-codes", "2026-11-30T09:00:00-08:00", "2026-12-07", "America/Los_Angeles", "75000"),
    ("promo-year-end-2026-points", "2026-11-15", "2027-01-01", "Asia/Tokyo", "2500000"),
    ("promo-summer-2026-au-coupons", "2026-12-01", "2027-03-01", "Australia/Sydney", "60000"),
    ("promo-wedding-season-2026-vouchers", "2026-11-01", "2027-02-15", "Asia/Kolkata", "18000"),
    ("promo-newyear-2027-coupons", "2027-01-01", "2027-01-08", "Asia/Tokyo", "50000"),
    ("promo-lunar-newyear-2027-vouchers", "2027-02-01", "2027-02-21", "Asia/Singapore", "88888"),
    ("promo-valentines-2027-coupons", "2027-02-07", "2027-02-15", "Europe/Paris", "14000"),
    ("promo-easter-2027-coupons", "2027-03-22", "2027-03-30", "Europe/London", "12500"),
    ("promo-diwali-2027-offers", "2027-10-25", "2027-11-05", "Asia/Kolkata", "300000"),
    ("promo-blackfriday-2027-coupons", "2027-11-26T00:00:00-05:00", "2027-11-30", "America/New_York", "100000"),
    ("promo-boxingday-2027-coupons", "2027-12-26", "2027-12-27", "Europe/London", "30000"),
]

# Caps per interval kind as (count, how many of them start in 2027).  The
# single caps in CSV_KINDS come on top of PROMOTIONS.
CSV_KINDS = {"day": (180, 25), "week": (45, 6), "month": (45, 6), "single": (16, 2)}
JSONL_KINDS = {"day": (10, 2), "week": (3, 1), "month": (2, 0), "single": (2, 0)}

# Days an interval of each kind covers, to scale a daily amount.
KIND_DAYS = {"day": 1, "week": 7, "month": 30}


def round_amount(value: float, cents: bool, rng: random.Random) -> Decimal:
    """
    Round C{value} to a figure an operator would type: two significant
    digits, plus cents on most money amounts under 10000.
    """
    exponent = max(0, len(str(int(value))) - 2)
    whole = Decimal(round(value / 10**exponent) * 10**exponent)
    if cents and whole < 10_000:
        return whole + Decimal(rng.choice(["0", "0.50", "0.99", "0.25", "0.75", "0.49"]))
    return whole


def zone_of(name: str) -> ZoneInfo:
    return ZoneInfo(name or "UTC")


def local_instant(day: date, hour: int, zone_name: str) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=zone_of(zone_name))


def format_datetime(moment: datetime, rng: random.Random) -> str:
    text = moment.isoformat(timespec="seconds")
    if text.endswith("+00:00") and rng.random() < 0.5:
        text = text[:-6] + "Z"
    return text


def period_bounds(kind: str, moment: datetime) -> tuple[datetime, datetime]:
    """
    Return the local start and end of the day, week or month that contains
    C{moment}, in the same time zone.
    """
    day = moment.date()
    if kind == "week":
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
    elif kind == "month":
        first = day.replace(day=1)
        after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    else:
        first = day
        after = day + timedelta(days=1)
    zone = moment.tzinfo
    return (
        datetime(first.year, first.month, first.day, tzinfo=zone),
        datetime(after.year, after.month, after.day, tzinfo=zone),
    )


def prorated_first_total(kind: str, start: datetime, total: Decimal, cents: bool) -> Decimal | None:
    """
    Return the part of C{total} that matches the share of the first interval
    left after C{start}, or L{None} when the cap starts on the boundary.
    """
    first, after = period_bounds(kind, start)
    if start == first:
        return None
    left = int(after.timestamp() - start.timestamp())
    length = int(after.timestamp() - first.timestamp())
    step = CENT if cents else Decimal(1)
    steps = int(total / step) * left // length
    amount = steps * step
    if not 0 < amount < total:
        return None
    return amount


def first_of_month_after(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


class CapGenerator:
    """
    Source of unique, plausible cap definitions as rows of strings.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.ids: set[str] = set()

    def pick_zone(self) -> str:
        names = [name for name, _ in TIME_ZONES]
        weights = [weight for _, weight in TIME_ZONES]
        return self.rng.choices(names, weights)[0]

    def pick_family(self, kind: str) -> str:
        """
        Choose who owns a new cap: an ad campaign, an API tenant or, for
        daily caps only, a coupon promotion.
        """
        roll = self.rng.random()
        if kind == "single":
            return "campaign" if roll < 0.6 else "tenant"
        if roll < 0.5:
            return "campaign"
        if roll < 0.9 or kind != "day":
            return "tenant"
        return "promo"

    def new_id(self, kind: str) -> tuple[str, tuple[int, int], bool]:
        """
        Return an unused id with the daily amount range and the cents flag of
        its metric.
        """
        rng = self.rng
        while True:
            family = self.pick_family(kind)
            if family == "campaign":
                metric, daily_range, cents = rng.choice(CAMPAIGN_METRICS)
                number = rng.randint(1000, 9999)
                if kind == "single":
                    cap_id = f"campaign-{number}-flight-{metric}"
                else:
                    cap_id = f"campaign-{number}-{metric}"
            elif family == "tenant":
                metric, daily_range, cents = rng.choice(TENANT_METRICS)
                tenant = rng.choice(TENANTS)
                if kind == "single":
                    cap_id = f"tenant-{tenant}-trial-{metric}"
                else:
                    cap_id = f"tenant-{tenant}-{metric}"
                if rng.random() < 0.15:
                    cap_id += "-" + rng.choice(["eu", "us", "apac"])
            else:
                cap_id = f"promo-{rng.choice(PROMO_DAILY)}-{rng.randint(10, 99)}-coupons"
                daily_range, cents = (100, 5_000), False
            if cap_id not in self.ids:
                self.ids.add(cap_id)
                return cap_id, daily_range, cents

    def start_of(
        self, kind: str, future: bool, zone_name: str, during_day: bool
    ) -> tuple[date, datetime | None]:
        """
        Return the start day and, for a cap that starts during the day, its
        start instant.  With C{during_day} the cap always starts during the
        day, else only sometimes.
        """
        rng = self.rng
        if future:
            day = date(2027, 1, 1) + timedelta(days=rng.randint(0, 180))
        elif kind == "month":
            day = date(2026, rng.choice([9, 10, 11, 12]), 1)
        else:
            day = date(2026, 10, 5) + timedelta(days=rng.randint(0, 59))
        if kind == "week" and rng.random() < 0.7:
            day -= timedelta(days=day.weekday())
        if kind == "month":
            day = day.replace(day=1)
        if kind == "month" and rng.random() < 0.25:
            day = day.replace(day=rng.randint(2, 28))
        if not future and day >= REFERENCE_DAY:
            day = REFERENCE_DAY - timedelta(days=1)
        if future and day.year < 2027:
            day = date(2027, 1, 1)
        moment = None
        if during_day or rng.random() < 0.22:
            moment = local_instant(day, rng.randint(8, 18), zone_name)
        return day, moment

    def end_of(self, kind: str, start: date, future: bool) -> date:
        rng = self.rng
        if kind == "single":
            end = start + timedelta(days=rng.randint(7, 90))
            while not future and end <= REFERENCE_DAY + timedelta(days=1):
                end += timedelta(days=14)
            return end
        months = rng.choice([1, 2, 3, 4, 6, 6, 9, 12, 12, 18])
        end = first_of_month_after(max(start, REFERENCE_DAY), months)
        if kind == "week" and rng.random() < 0.5:
            end -= timedelta(days=end.weekday())
        elif rng.random() < 0.2:
            end -= timedelta(days=1)
        if end <= start:
            end = first_of_month_after(start, 1)
        return end

    def row(
        self, kind: str, future: bool, zone_name: str | None = None, partial_first: bool = False
    ) -> dict[str, str]:
        """
        Return one cap as a row of strings.  C{zone_name} fixes the time zone
        instead of a random one, and C{partial_first} makes the cap start
        during the day with a prorated first total.
        """
        rng = self.rng
        cap_id, (low, high), cents = self.new_id(kind)
        if zone_name is None:
            zone_name = self.pick_zone()
        start_day, start_moment = self.start_of(kind, future, zone_name, partial_first)
        end_day = self.end_of(kind, start_day, future)

        daily = rng.uniform(low**0.5, high**0.5) ** 2
        days = KIND_DAYS.get(kind, (end_day - start_day).days)
        total = round_amount(daily * days, cents, rng)

        # A single cap has one interval, so only periodic caps get a first
        # total.
        first_total = None
        if kind != "single" and start_moment is not None:
            if partial_first or rng.random() < 0.4:
                first_total = prorated_first_total(kind, start_moment, total, cents)
        elif kind == "month" and start_day.day != 1 and rng.random() < 0.5:
            first_total = prorated_first_total(kind, local_instant(start_day, 0, zone_name), total, cents)

        if start_moment is not None:
            start = format_datetime(start_moment, rng)
        else:
            start = start_day.isoformat()
        return {
            "id": cap_id,
            "interval": kind,
            "start": start,
            "end": end_day.isoformat(),
            "total": str(total),
            "first_total": "" if first_total is None else str(first_total),
            "timezone": zone_name,
        }

    def rows(self, kinds: dict[str, tuple[int, int]]) -> list[dict[str, str]]:
        specs = []
        for kind, (count, future_count) in kinds.items():
            specs += [(kind, index < future_count) for index in range(count)]
        self.rng.shuffle(specs)
        return [self.row(kind, future) for kind, future in specs]


def promotion_rows(generator: CapGenerator) -> list[dict[str, str]]:
    rows = []
    for cap_id, start, end, zone_name, total in PROMOTIONS:
        generator.ids.add(cap_id)
        rows.append({
            "id": cap_id,
            "interval": "single",
            "start": start,
            "end": end,
            "total": total,
            "first_total": "",
            "timezone": zone_name,
        })
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            record = {key: value for key, value in row.items() if value != ""}
            handle.write(json.dumps(record) + "\n")


def main() -> None:
    generator = CapGenerator(SEED)
    conf_dir = Path(__file__).resolve().parent

    csv_rows = promotion_rows(generator) + generator.rows(CSV_KINDS)
    random.Random(SEED + 2).shuffle(csv_rows)
    write_csv(conf_dir / "caps-sample.csv", csv_rows)

    # Beside the random rows, show a cap without a time zone and caps with a
    # first total, because the JSON Lines file leaves out empty fields.
    jsonl_rows = generator.rows(JSONL_KINDS)
    jsonl_rows.append(generator.row("day", False, zone_name=""))
    jsonl_rows.append(generator.row("day", False, partial_first=True))
    jsonl_rows.append(generator.row("month", True, zone_name="", partial_first=True))
    write_jsonl(conf_dir / "caps-sample.jsonl", jsonl_rows)
    print(f"wrote {len(csv_rows)} caps to caps-sample.csv and {len(jsonl_rows)} to caps-sample.jsonl")


if __name__ == "__main__":
    main()
