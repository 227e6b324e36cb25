"""
Messages between data centers: versioned JSON, checked field by field.

Every message is an envelope::

    {"v": 1, "id": "<hex>", "type": "<type>", "sender": "<dc>",
     "dcs": ["<dc>", ...], "seq": <int>, "body": {...}}

C{dcs} lists the data centers the sender shares caps with, so a master
started with another list is noticed instead of taking a share that the
others do not count.
C{seq} rises with every message a sender publishes, across restarts, so a
receiver can keep the newest of reordered updates.  Amounts are decimal
strings and instants integer epoch seconds.  The types and their bodies:

 - C{caps}: C{{"caps": [{"id", "version": [ms, dc], "cap": {...} or null}]}},
   definitions (null for a deletion) with the version that made them.
 - C{intervals}: C{{"intervals": [{"cap", "start", "end", "total",
   "available", "consumed"}]}}, the sender's figures of its intervals.
 - C{topup.request}: C{{"request", "cap", "start", "amount", "version"}}.
 - C{topup.grant}: the same fields and C{"available"}, what the donor has
   left after the grant.

L{decode} raises L{MalformedMessage} for anything else, so a bad message is
dead-lettered without touching the state.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Mapping

from volumecap.messaging import MalformedMessage

VERSION = 1

# Items per caps or intervals message, which keeps bodies far below one AMQP
# frame (128 KiB by default).
BATCH = 100


@dataclass(frozen=True)
class Message:
    """
    A decoded, checked message.
    """

    id: str
    type: str
    sender: str
    dcs: list[str]
    seq: int
    body: dict[str, Any]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 400


def _is_amount(value: object) -> bool:
    if not isinstance(value, str) or len(value) > 40:
        return False
    try:
        number = Decimal(value)
    except InvalidOperation:
        return False
    return number.is_finite() and number >= 0


def _is_version(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and _is_int(value[0]) and isinstance(value[1], str)


_CAP_FIELDS: dict[str, Callable[[object], bool]] = {
    "id": _is_str,
    "interval": _is_str,
    "start": _is_int,
    "end": _is_int,
    "total": _is_amount,
    "first_total": lambda value: value is None or _is_amount(value),
    "timezone": _is_str,
}

_CAP_ENTRY: dict[str, Callable[[object], bool]] = {
    "id": _is_str,
    "version": _is_version,
    "cap": lambda value: value is None or _fields_ok(value, _CAP_FIELDS),
}

_INTERVAL_ENTRY: dict[str, Callable[[object], bool]] = {
    "cap": _is_str,
    "start": _is_int,
    "end": _is_int,
    "total": lambda value: isinstance(value, str) and _is_signed_amount(value),
    "available": lambda value: isinstance(value, str) and _is_signed_amount(value),
    "consumed": _is_amount,
}

_TOPUP: dict[str, Callable[[object], bool]] = {
    "request": _is_str,
    "cap": _is_str,
    "start": _is_int,
    "amount": _is_amount,
    "version": _is_version,
}


def _is_signed_amount(value: str) -> bool:
    return _is_amount(value[1:] if value.startswith("-") else value)


def _list_of(entry: Mapping[str, Callable[[object], bool]]) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        return isinstance(value, list) and len(value) <= BATCH and all(_fields_ok(item, entry) for item in value)

    return check


BODIES: dict[str, dict[str, Callable[[object], bool]]] = {
    "caps": {"caps": _list_of(_CAP_ENTRY)},
    "intervals": {"intervals": _list_of(_INTERVAL_ENTRY)},
    "topup.request": _TOPUP,
    "topup.grant": {**_TOPUP, "available": _INTERVAL_ENTRY["available"]},
}


def _fields_ok(value: object, fields: Mapping[str, Callable[[object], bool]]) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == set(fields)
        and all(check(value[name]) for name, check in fields.items())
    )


def encode(message_type: str, sender: str, seq: int, body: dict[str, Any], dcs: list[str] | None = None) -> bytes:
    """
    Build the JSON bytes of a message with a fresh id.

    @param dcs: the sender's data centers; only the sender by default.
    """
    envelope = {
        "v": VERSION,
        "id": uuid.uuid4().hex,
        "type": message_type,
        "sender": sender,
        "dcs": sorted(dcs or [sender]),
        "seq": seq,
        "body": body,
    }
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")


def decode(data: bytes) -> Message:
    """
    Parse and check a message.

    @raise MalformedMessage: not JSON, another version, an unknown type, or a
        missing, extra or mistyped field.  The message names which.
    """
    try:
        envelope = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise MalformedMessage(f"not JSON: {error}") from None
    if not isinstance(envelope, dict):
        raise MalformedMessage("the message is not a JSON object")
    if envelope.get("v") != VERSION:
        raise MalformedMessage(f"unsupported version {envelope.get('v')!r}; expected {VERSION}")
    message_type = envelope.get("type")
    if not isinstance(message_type, str) or message_type not in BODIES:
        raise MalformedMessage(f"unknown message type {message_type!r}")
    envelope_fields = {"v", "id", "type", "sender", "dcs", "seq", "body"}
    if set(envelope) != envelope_fields:
        raise MalformedMessage(f"envelope fields {sorted(envelope)}; expected {sorted(envelope_fields)}")
    if not (_is_str(envelope["id"]) and _is_str(envelope["sender"]) and _is_int(envelope["seq"])):
        raise MalformedMessage("id and sender must be strings and seq an integer")
    dcs = envelope["dcs"]
    if not (isinstance(dcs, list) and 0 < len(dcs) <= 100 and all(_is_str(name) for name in dcs)):
        raise MalformedMessage("dcs must be a list of data center names")
    if not _fields_ok(envelope["body"], BODIES[message_type]):
        raise MalformedMessage(f"invalid body for {message_type}: missing, extra or mistyped fields")
    return Message(envelope["id"], message_type, envelope["sender"], dcs, envelope["seq"], envelope["body"])
