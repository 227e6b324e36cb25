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

# The largest batch one ConsumeMany carries.  An AMP value is at most 65,535
# bytes, and this many items with 200-character cap ids stay below that.
MAX_BATCH = 250


class Consume(amp.Command):
    """
    Consume C{amount} of cap C{cap}, all or nothing.

    Responds with the amount this server still holds for the cap's current
    interval, as a decimal string.  The amount is a decimal string so that the
    server, which knows the scale, validates it.
    """

    arguments = [(b"cap", amp.Unicode()), (b"amount", amp.Unicode())]
    response = [(b"remaining", amp.Unicode())]
    errors = CONSUME_ERRORS


class ConsumeMany(amp.Command):
    """
    Consume several independent C{(cap, amount)} pairs in one round trip.

    Each result has either C{remaining} or an C{error} code (a key of
    L{CONSUME_ERRORS}'s values) with a C{message}; one pair failing changes
    nothing for the others.
    """

    arguments = [(b"items", amp.AmpList([(b"cap", amp.Unicode()), (b"amount", amp.Unicode())]))]
    response = [
        (
            b"results",
            amp.AmpList(
                [
                    (b"remaining", amp.Unicode(optional=True)),
                    (b"error", amp.Unicode(optional=True)),
                    (b"message", amp.Unicode(optional=True)),
                ]
            ),
        )
    ]
    errors = {InvalidAmountError: AMP_ERRORS[InvalidAmountError]}


class Query(amp.Command):
    """
    Return what this server holds of cap C{cap}'s current interval.
    """

    arguments = [(b"cap", amp.Unicode())]
    response = [
        (b"available", amp.Unicode()),
        (b"consumed", amp.Unicode()),
        (b"start", amp.Integer()),
        (b"end", amp.Integer()),
    ]
    errors = {UnknownCapError: AMP_ERRORS[UnknownCapError]}
