"""
Commands that the C{volumecap} command sends to a master.

Times go out as ISO 8601 strings and amounts as decimal strings, exactly as
the operator typed them, so the master validates them against its own scale
and default time zone.
"""

from twisted.protocols import amp

from volumecap.errors import AMP_ERRORS, InvalidCapError, UnknownCapError

_CAP_FIELDS = [
    (b"id", amp.Unicode()),
    (b"interval", amp.Unicode()),
    (b"start", amp.Unicode()),
    (b"end", amp.Unicode()),
    (b"total", amp.Unicode()),
    (b"first_total", amp.Unicode(optional=True)),
    (b"timezone", amp.Unicode()),
]

_INVALID: dict[type[Exception], bytes] = {InvalidCapError: AMP_ERRORS[InvalidCapError]}
_UNKNOWN: dict[type[Exception], bytes] = {UnknownCapError: AMP_ERRORS[UnknownCapError]}

# Maximum caps per ListCaps page: 100 definitions with 200-byte ids stay under AMP's
# 65,535-byte limit on one value.
LIST_PAGE = 100


class SetCap(amp.Command):
    """
    Create or replace a cap definition.

    C{outcome} is C{created}, C{updated} or C{unchanged}.  The change is
    durable before the response is sent.
    """

    arguments = [
        (b"id", amp.Unicode()),
        (b"interval", amp.Unicode()),
        (b"start", amp.Unicode()),
        (b"end", amp.Unicode()),
        (b"total", amp.Unicode()),
        (b"first_total", amp.Unicode(optional=True)),
        (b"timezone", amp.Unicode(optional=True)),
    ]
    response = [(b"outcome", amp.Unicode())]
    errors = _INVALID


class CheckCap(amp.Command):
    """
    Validate a cap definition and return the outcome L{SetCap} would have,
    changing nothing.
    """

    arguments = SetCap.arguments
    response = [(b"outcome", amp.Unicode())]
    errors = _INVALID


class DeleteCap(amp.Command):
    """
    Delete a cap and all of its intervals, which servers then drop.
    """

    arguments = [(b"id", amp.Unicode())]
    response = []
    errors = _UNKNOWN


class ListCaps(amp.Command):
    """
    Return up to L{LIST_PAGE} cap definitions whose ids sort after C{after}.
    """

    arguments = [(b"after", amp.Unicode())]
    response = [(b"caps", amp.AmpList(_CAP_FIELDS)), (b"more", amp.Boolean())]


_SERVER_FIELDS = [
    (b"name", amp.Unicode()),
    (b"available", amp.Unicode()),
    (b"consumed", amp.Unicode()),
]

_INTERVAL_FIELDS = [
    (b"dc", amp.Unicode()),
    (b"start", amp.Unicode()),
    (b"end", amp.Unicode()),
    (b"total", amp.Unicode()),
    (b"available", amp.Unicode()),
    (b"consumed", amp.Unicode()),
    (b"state", amp.Unicode()),
    (b"updated", amp.Unicode(optional=True)),
    (b"servers", amp.AmpList(_SERVER_FIELDS)),
]


class ShowCap(amp.Command):
    """
    Return a cap's definition and the intervals the master keeps, with what
    each server holds and has consumed.  Intervals of other data centers
    come from their latest figures: their C{state} is C{remote} and
    C{updated} is when the figures arrived.

    NOTE: the intervals go in one AMP value, which fits about 800 server
    entries.  A cap served by more servers over its retained intervals fails
    to encode until this command is paged.
    """

    arguments = [(b"id", amp.Unicode())]
    response = _CAP_FIELDS + [(b"intervals", amp.AmpList(_INTERVAL_FIELDS))]
    errors = _UNKNOWN


class PlanCap(amp.Command):
    """
    Return the intervals a cap will have that start before C{until}.
    """

    arguments = [(b"id", amp.Unicode()), (b"until", amp.Unicode())]
    response = [
        (
            b"intervals",
            amp.AmpList([(b"start", amp.Unicode()), (b"end", amp.Unicode()), (b"total", amp.Unicode())]),
        ),
        (b"truncated", amp.Boolean()),
    ]
    errors = {**_UNKNOWN, **_INVALID}


class Status(amp.Command):
    """
    Return the master's role, data center, figures and joined servers.

    C{intervals} counts live intervals and C{journal} the journal's records.
    C{dcs} lists the data centers that share caps, comma-separated, and
    C{broker} is C{connected}, C{disconnected} or C{none} for a data center
    alone.
    Each server's C{holdings} is the number of live intervals of which it
    holds an unconsumed part.
    """

    arguments = []
    response = [
        (b"dc", amp.Unicode()),
        (b"role", amp.Unicode()),
        (b"version", amp.Unicode()),
        (b"started", amp.Unicode()),
        (b"scale", amp.Integer()),
        (b"timezone", amp.Unicode()),
        (b"caps", amp.Integer()),
        (b"intervals", amp.Integer()),
        (b"journal", amp.Integer()),
        (b"dcs", amp.Unicode()),
        (b"broker", amp.Unicode()),
        (
            b"servers",
            amp.AmpList(
                [
                    (b"name", amp.Unicode()),
                    (b"peer", amp.Unicode()),
                    (b"joined", amp.Unicode()),
                    (b"holdings", amp.Integer()),
                ]
            ),
        ),
    ]
