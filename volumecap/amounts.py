"""
Exact amounts.

Amounts travel as decimal strings and are held as integer counts of the
smallest unit (C{10 ** -scale}), so arithmetic on the hot path is integer
arithmetic and never rounds.  The scale is a deployment setting: every process
of a data center uses the master's.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Sequence

from volumecap.errors import InvalidAmountError

DEFAULT_SCALE = 2
MAX_SCALE = 9

# The largest amount accepted anywhere, in whole units: a trillion, far
# beyond any real interval total, so larger values are typing errors.
MAX_AMOUNT = 10**12

_PLAIN_DECIMAL = re.compile(r"([0-9]{1,40})(?:\.([0-9]{1,40}))?")


def parse_units(value: object, scale: int) -> int:
    """
    Convert an amount to a positive count of units of C{10 ** -scale}.

    @param value: a C{str}, C{int} or L{Decimal}.  Binary floats are rejected
        because they cannot hold most decimal fractions exactly.
    @raise InvalidAmountError: the value is not a positive plain decimal with
        at most C{scale} decimals and at most L{MAX_AMOUNT}.
    """
    if isinstance(value, str):
        if value.isascii() and value.isdigit() and len(value) <= 13:
            # Whole amounts, the common case on the consume path.
            return _checked(int(value) * 10**scale, value, scale)
        match = _PLAIN_DECIMAL.fullmatch(value)
        if match is None:
            raise InvalidAmountError(
                f"invalid amount {value!r}: expected a positive decimal such as "
                f"'12' or '0.5' with at most {scale} decimals"
            )
        whole, fraction = match.group(1), match.group(2) or ""
        if len(fraction) > scale:
            fraction = fraction.rstrip("0")
            if len(fraction) > scale:
                raise InvalidAmountError(
                    f"invalid amount {value!r}: more than {scale} decimals; "
                    f"the smallest unit is {format_units(1, scale)}"
                )
        units = int(whole) * 10**scale + int(fraction.ljust(scale, "0") or "0")
        return _checked(units, value, scale)
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidAmountError(
            f"invalid amount {value!r}: pass an int, a Decimal or a decimal "
            f"string, not a {type(value).__name__}"
        )
    if isinstance(value, int):
        if value > MAX_AMOUNT:
            raise InvalidAmountError(_too_large(value))
        return _checked(value * 10**scale, value, scale)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidAmountError(f"invalid amount {value!r}: not a finite number")
        return parse_units(format(value, "f"), scale) if value > 0 else _checked(0, value, scale)
    raise InvalidAmountError(
        f"invalid amount {value!r}: pass an int, a Decimal or a decimal string"
    )


def _checked(units: int, value: object, scale: int) -> int:
    if units <= 0:
        raise InvalidAmountError(f"invalid amount {value!r}: must be greater than zero")
    if units > MAX_AMOUNT * 10**scale:
        raise InvalidAmountError(_too_large(value))
    return units


def _too_large(value: object) -> str:
    return f"invalid amount {value!r}: larger than the maximum {MAX_AMOUNT}"


def format_units(units: int, scale: int) -> str:
    """
    Format a unit count as a decimal string with exactly C{scale} decimals.
    """
    if scale == 0:
        return str(units)
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), 10**scale)
    return f"{sign}{whole}.{fraction:0{scale}d}"


def units_to_decimal(units: int, scale: int) -> Decimal:
    """
    Convert a unit count to a L{Decimal} with exactly C{scale} decimals.
    """
    return Decimal(units).scaleb(-scale)


def decimal_from_wire(text: str) -> Decimal:
    """
    Parse a decimal string received from a peer process.

    @raise InvalidAmountError: the text is not a finite decimal.
    """
    try:
        result = Decimal(text)
    except InvalidOperation:
        raise InvalidAmountError(f"invalid amount {text!r}: not a decimal number") from None
    if not result.is_finite():
        raise InvalidAmountError(f"invalid amount {text!r}: not a finite number")
    return result


def split_shares(total: int, dcs: Sequence[str]) -> dict[str, int]:
    """
    Split a total (in units) exactly between data centers.

    Every data center gets C{total // len(dcs)} units, and the remainder goes
    one unit each to the data centers first in sorted name order, so every
    process computes the same split: 100.00 over C{a}, C{b} and C{c} is 33.34,
    33.33 and 33.33.
    """
    names = sorted(set(dcs))
    if not names:
        raise ValueError("split_shares needs at least one data center")
    base, remainder = divmod(total, len(names))
    return {name: base + (1 if index < remainder else 0) for index, name in enumerate(names)}


def fraction_of(units: int, percent: int) -> int:
    """
    Return C{percent} per cent of C{units}, rounded up to a whole unit and at
    least one unit, so that small intervals still move in slices.
    """
    return max(1, -(-units * percent // 100))


def decimal_to_units(value: Decimal, scale: int) -> int:
    """
    Convert a non-negative L{Decimal} from a peer to units, exactly.

    @raise InvalidAmountError: not finite, negative, or finer than the scale.
    """
    if not value.is_finite():
        raise InvalidAmountError(f"invalid amount {value}: not a finite number")
    scaled = value.scaleb(scale)
    if value < 0 or scaled != scaled.to_integral_value():
        raise InvalidAmountError(
            f"invalid amount {value}: expected a non-negative amount with at most "
            f"{scale} decimals"
        )
    return int(scaled)
