"""
Commands that a master sends to the volumecap servers that joined it.
"""

from twisted.protocols import amp

from volumecap.wire.arguments import Amount
from volumecap.wire.servercommands import INTERVAL_FIELDS


class IntervalsCreated(amp.Command):
    """
    Announce new intervals.  A server serves an interval from its C{start}
    once it holds a slice of it.
    """

    arguments = [(b"intervals", amp.AmpList(INTERVAL_FIELDS))]
    response = []


class IntervalsUpdated(amp.Command):
    """
    Announce changed intervals: a new end, top-up size or threshold after a
    cap change.
    """

    arguments = [(b"intervals", amp.AmpList(INTERVAL_FIELDS))]
    response = []


class IntervalsDeleted(amp.Command):
    """
    Announce deleted intervals.  A server drops them and serves none of their
    holding.
    """

    arguments = [(b"intervals", amp.AmpList([(b"cap", amp.Unicode()), (b"start", amp.Integer())]))]
    response = []


class Recall(amp.Command):
    """
    Ask a server to give back up to C{amount} of its unconsumed holding.

    The server sends the amount back with a L{volumecap.wire.servercommands.Return}
    under request id C{request} and then responds with C{returned}, the amount
    it gave back, so the master has applied the return before the response
    arrives.  C{consumed} is what the server has consumed of the interval,
    which keeps the master's figures current.
    """

    arguments = [
        (b"request", amp.Unicode()),
        (b"cap", amp.Unicode()),
        (b"start", amp.Integer()),
        (b"amount", Amount()),
    ]
    response = [(b"returned", Amount()), (b"consumed", Amount())]
