"""
Commands that a volumecap server sends to its master.

A server first sends L{Join}.  The master binds the connection to the
server's name and handles every other command under that name.  Top-ups and
returns carry a request id chosen by the server.  The master applies each id
once and responds to a repeated id with the first result, so a server may
retry any of them after a lost connection.
"""

from twisted.protocols import amp

from volumecap.errors import AMP_ERRORS, NotJoinedError, UnknownIntervalError
from volumecap.wire.arguments import Amount

INTERVAL_FIELDS = [
    (b"cap", amp.Unicode()),
    (b"start", amp.Integer()),
    (b"end", amp.Integer()),
    (b"topup", Amount()),
    (b"threshold", Amount()),
]

HOLDING_FIELDS = [
    (b"cap", amp.Unicode()),
    (b"start", amp.Integer()),
    (b"available", Amount()),
    (b"consumed", Amount()),
]

_INTERVAL_ERRORS: dict[type[Exception], bytes] = {
    UnknownIntervalError: AMP_ERRORS[UnknownIntervalError],
    NotJoinedError: AMP_ERRORS[NotJoinedError],
}


class Join(amp.Command):
    """
    Register a server with the master under the name C{server}.

    C{fresh} is true for a server process that starts without holdings.  The
    master then writes off whatever it still had recorded as held by that
    name, because the old process may have consumed any of it.  Joining again
    under the same name replaces the earlier connection.  After joining, a
    server fetches the intervals with L{Intervals} and sends its figures with
    L{Report}.
    """

    arguments = [(b"server", amp.Unicode()), (b"fresh", amp.Boolean())]
    response = [(b"dc", amp.Unicode()), (b"scale", amp.Integer())]


# Maximum items per AmpList value: 200 intervals or holdings with 200-character cap
# ids stay below AMP's 65,535-byte limit on one value.
PAGE = 200


class Intervals(amp.Command):
    """
    Return up to L{PAGE} live intervals that sort after C{(after_cap,
    after_start)}, ordered by cap id and start.
    """

    arguments = [(b"after_cap", amp.Unicode()), (b"after_start", amp.Integer())]
    response = [(b"intervals", amp.AmpList(INTERVAL_FIELDS)), (b"more", amp.Boolean())]
    errors = {NotJoinedError: AMP_ERRORS[NotJoinedError]}


class TopUp(amp.Command):
    """
    Request up to C{amount} more of an interval.

    The master grants all of it, part of it when it has less, or zero when it
    has nothing left.  C{available} is what the master has left afterwards.
    C{exhausted} is true when the master has nothing left, nothing to recall
    from other servers and, by their latest figures, nothing to get from
    other data centers, so a consume beyond the holding is capped.
    """

    arguments = [
        (b"request", amp.Unicode()),
        (b"cap", amp.Unicode()),
        (b"start", amp.Integer()),
        (b"amount", Amount()),
    ]
    response = [(b"granted", Amount()), (b"available", Amount()), (b"exhausted", amp.Boolean())]
    errors = _INTERVAL_ERRORS


class Return(amp.Command):
    """
    Give C{amount} of unconsumed holding back to the master.

    Once the response arrives the amount is the master's again, durably.
    """

    arguments = [
        (b"request", amp.Unicode()),
        (b"cap", amp.Unicode()),
        (b"start", amp.Integer()),
        (b"amount", Amount()),
    ]
    response = [(b"available", Amount())]
    errors = _INTERVAL_ERRORS


class Report(amp.Command):
    """
    Report what the server holds and has consumed of the intervals whose
    figures changed since the last report.
    """

    arguments = [(b"holdings", amp.AmpList(HOLDING_FIELDS))]
    response = []
    errors = {NotJoinedError: AMP_ERRORS[NotJoinedError]}
