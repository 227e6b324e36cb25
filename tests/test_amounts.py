"""
Unit tests of exact amounts: parsing, formatting, shares and slices.
"""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from volumecap.amounts import (
    MAX_AMOUNT,
    decimal_to_units,
    format_units,
    fraction_of,
    parse_units,
    split_shares,
    units_to_decimal,
)
from volumecap.errors import InvalidAmountError

SCALE = 2


@pytest.mark.parametrize(
    "value, units",
    [
        ("1", 100),
        ("0.10", 10),
        ("0.1", 10),
        ("0.01", 1),
        ("1.000", 100),
        ("12.50000", 1250),
        (str(MAX_AMOUNT), MAX_AMOUNT * 100),
        (7, 700),
        (MAX_AMOUNT, MAX_AMOUNT * 100),
        (Decimal("2.5"), 250),
        (Decimal("1.000"), 100),
        (Decimal("1E+2"), 10000),
    ],
)
def test_parse_accepts(value: object, units: int) -> None:
    """
    parse_units converts a valid amount to a count of 0.01 units.
    """
    assert parse_units(value, SCALE) == units


@pytest.mark.parametrize(
    "value",
    [
        -5,
        0,
        "0",
        "0.00",
        "NaN",
        "inf",
        float("nan"),
        float("inf"),
        0.5,
        True,
        False,
        None,
        "abc",
        "0.001",
        "1.001",
        10**30,
        "1" + "0" * 30,
        MAX_AMOUNT + 1,
        "1e3",
        " 1",
        "1 ",
        "+1",
        "-1",
        "",
        "1.",
        ".5",
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("-1"),
        Decimal("0.001"),
    ],
)
def test_parse_rejects(value: object) -> None:
    """
    parse_units rejects the value with an InvalidAmountError that names it.
    """
    # A finite Decimal may be named by its decimal string, such as '0.001'.
    if isinstance(value, Decimal) and value.is_finite():
        expected_text = format(value, "f")
    else:
        expected_text = repr(value)
    with pytest.raises(InvalidAmountError) as raised:
        parse_units(value, SCALE)
    assert expected_text in str(raised.value)


def test_parse_scale_zero() -> None:
    """
    At scale 0 a unit is 1, trailing zero decimals are accepted and 0.5 is not.
    """
    assert parse_units("3", 0) == 3
    assert parse_units("2.0", 0) == 2
    assert parse_units(4, 0) == 4
    with pytest.raises(InvalidAmountError):
        parse_units("0.5", 0)


def test_parse_max_scale() -> None:
    """
    At scale 9 the smallest amount is one unit and a tenth of it is rejected.
    """
    assert parse_units("0.000000001", 9) == 1
    with pytest.raises(InvalidAmountError):
        parse_units("0.0000000001", 9)


@pytest.mark.parametrize(
    "units, scale, text",
    [
        (150, 2, "1.50"),
        (5, 2, "0.05"),
        (0, 2, "0.00"),
        (100000, 2, "1000.00"),
        (-150, 2, "-1.50"),
        (-5, 2, "-0.05"),
        (42, 0, "42"),
        (-42, 0, "-42"),
        (0, 0, "0"),
        (1, 9, "0.000000001"),
    ],
)
def test_format_units(units: int, scale: int, text: str) -> None:
    """
    format_units writes exactly `scale` decimals, with a sign when negative.
    """
    assert format_units(units, scale) == text


def test_format_parse_round_trip() -> None:
    """
    Parsing the formatted text of a positive unit count returns the count.
    """
    rng = random.Random(1742)
    for _ in range(500):
        scale = rng.randint(0, 9)
        units = rng.randint(1, MAX_AMOUNT * 10**scale)
        assert parse_units(format_units(units, scale), scale) == units


def test_units_to_decimal() -> None:
    """
    units_to_decimal returns the exact Decimal with `scale` decimals.
    """
    assert units_to_decimal(150, 2) == Decimal("1.5")
    assert str(units_to_decimal(150, 2)) == "1.50"
    assert str(units_to_decimal(0, 2)) == "0.00"
    assert str(units_to_decimal(1, 9)) == "1E-9"
    assert units_to_decimal(7, 0) == Decimal(7)


@pytest.mark.parametrize(
    "value, units",
    [
        (Decimal("1.50"), 150),
        (Decimal("1.5"), 150),
        (Decimal("1.500"), 150),
        (Decimal("12"), 1200),
        (Decimal("0"), 0),
        (Decimal("0.01"), 1),
    ],
)
def test_decimal_to_units(value: Decimal, units: int) -> None:
    """
    decimal_to_units converts a non-negative Decimal exactly, zero included.
    """
    assert decimal_to_units(value, SCALE) == units


@pytest.mark.parametrize("value", [Decimal("0.001"), Decimal("1.005"), Decimal("-1"), Decimal("-0.01")])
def test_decimal_to_units_rejects(value: Decimal) -> None:
    """
    decimal_to_units rejects a negative amount or one finer than the scale, naming it.
    """
    with pytest.raises(InvalidAmountError) as raised:
        decimal_to_units(value, SCALE)
    assert str(value) in str(raised.value)


def test_split_three_dcs() -> None:
    """
    100.00 over three data centers is 33.34, 33.33 and 33.33 in name order.
    """
    shares = split_shares(10000, ["dc1", "dc2", "dc3"])
    assert shares == {"dc1": 3334, "dc2": 3333, "dc3": 3333}


def test_split_ignores_input_order() -> None:
    """
    The remainder goes to the first names in sorted order, whatever the input order.
    """
    expected = {"amsterdam": 3334, "berlin": 3333, "paris": 3333}
    assert split_shares(10000, ["paris", "amsterdam", "berlin"]) == expected
    assert split_shares(10000, ["berlin", "paris", "amsterdam"]) == expected


def test_split_remainder_order() -> None:
    """
    Each unit of the remainder goes to one data center, first names first.
    """
    assert split_shares(5, ["c", "a", "b"]) == {"a": 2, "b": 2, "c": 1}
    assert split_shares(1, ["b", "a"]) == {"a": 1, "b": 0}


def test_split_one_dc() -> None:
    """
    A single data center gets the whole total.
    """
    assert split_shares(12345, ["dc1"]) == {"dc1": 12345}


def test_split_no_dcs() -> None:
    """
    Splitting between no data centers raises ValueError.
    """
    with pytest.raises(ValueError):
        split_shares(100, [])


def test_split_sums_to_total() -> None:
    """
    For random totals and data center counts, shares sum to the total and differ by at most one unit.
    """
    rng = random.Random(20270314)
    pool = [f"dc{number:02d}" for number in range(40)]
    for _ in range(2000):
        names = rng.sample(pool, rng.randint(1, 12))
        total = rng.randint(0, MAX_AMOUNT * 100)
        shares = split_shares(total, names)
        ordered = [shares[name] for name in sorted(names)]
        assert sum(ordered) == total, (total, names)
        assert set(shares) == set(names), (total, names)
        assert max(ordered) - min(ordered) <= 1, (total, names)
        assert ordered == sorted(ordered, reverse=True), (total, names)


@pytest.mark.parametrize(
    "units, percent, expected",
    [
        (100000, 10, 10000),
        (50000, 10, 5000),
        (5000, 10, 500),
        (15, 10, 2),
        (101, 10, 11),
        (1000, 100, 1000),
        (1, 10, 1),
        (5, 1, 1),
        (0, 10, 1),
    ],
)
def test_fraction_of(units: int, percent: int, expected: int) -> None:
    """
    fraction_of returns the percentage rounded up to a unit, and at least one unit.
    """
    assert fraction_of(units, percent) == expected
