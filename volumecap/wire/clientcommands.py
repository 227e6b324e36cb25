"""
Commands that applications send to a volumecap server.
"""

from twisted.protocols import amp

from volumecap.errors import (
    AMP_ERRORS,
    CappedError,
    InvalidAmountError,
    UnavailableError,
    UnknownCapError,
)

CONSUME_ERRORS: dict[type[Exception], bytes] = {
    error: AMP_ERRORS[error]
    for error in (CappedError, UnknownCapError, InvalidAmountError, UnavailableError)
}

# Maximum number of pairs in one ConsumeMany.  An AMP value is at most 65,535
# bytes, and this many items with 200-character cap ids stay below that.
MAX_BATCH = 250


class Consume(amp.Command):
    """
    Consume C{amount} of cap C{cap}, all or nothing.

    Responds with the amount this server still holds for the cap's current
    interval, as a decimal string.  The amount is a decimal string so that the
    server, which has the scale, validates it.
    """

    arguments = [(b"cap", amp.Unicode()), (b"amount", amp.Unicode())]
    response = [(b"remaining", amp.Unicode())]
    errors = CONSUME_ERRORS


class ConsumeMany(amp.Command):
    """
    Consume several independent pairs C{(caps[i], amounts[i])} in one round
    trip.

    The response has one entry per pair in each list: C{remaining[i]} is the
    amount the server still holds, or empty when the pair failed, and then
    C{errors[i]} is the error code (one of L{CONSUME_ERRORS}'s values) and
    C{messages[i]} its text.  One pair failing changes nothing for the
    others.  Flat lists rather than an C{AmpList} of boxes keep encoding and
    parsing cheap: for 100 pairs, parsing took 111 us instead of 806 us (see
    BENCHMARKS.md).
    """

    arguments = [(b"caps", amp.ListOf(amp.Unicode())), (b"amounts", amp.ListOf(amp.Unicode()))]
    response = [
        (b"remaining", amp.ListOf(amp.Unicode())),
        (b"errors", amp.ListOf(amp.Unicode())),
        (b"messages", amp.ListOf(amp.Unicode())),
    ]
    errors = {InvalidAmountError: AMP_ERRORS[InvalidAmountError]}


class Query(amp.Command):
    """
    Return this server's holding of cap C{cap}'s current interval, with the
    interval's bounds.
    """

    arguments = [(b"cap", amp.Unicode())]
    response = [
        (b"available", amp.Unicode()),
        (b"consumed", amp.Unicode()),
        (b"start", amp.Integer()),
        (b"end", amp.Integer()),
    ]
    errors = {UnknownCapError: AMP_ERRORS[UnknownCapError]}
