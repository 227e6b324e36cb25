"""
Exceptions that applications, servers and masters raise to each other.

Each error that crosses an AMP connection is declared in the C{errors} of the
commands that may raise it, so it arrives at the caller as the same class and
the connection stays up.  L{AMP_ERRORS} is the shared code table.
"""


class VolumecapError(Exception):
    """
    Base class of every error volumecap raises on purpose.
    """


class CappedError(VolumecapError):
    """
    The interval cannot supply the amount: this server, its master and, by
    this data center's latest figures, the other data centers are out.
    """


class UnknownCapError(VolumecapError):
    """
    No such cap, or the cap has no current interval.
    """


class InvalidAmountError(VolumecapError, ValueError):
    """
    An amount is not a positive decimal within the configured scale and limit.
    """


class UnavailableError(VolumecapError):
    """
    The server cannot respond safely: it has not joined a master, or its
    holding is too small and a top-up failed, timed out or cannot reach the
    master.  Clients also raise it when no server is reachable.
    """


class InvalidCapError(VolumecapError, ValueError):
    """
    A cap definition is malformed.  The message names the field and value.
    """


class UnknownIntervalError(VolumecapError):
    """
    A master does not have the interval a server named, because it was
    deleted or has expired.
    """


class NotJoinedError(VolumecapError):
    """
    A server sent a command to a master before joining it.
    """


AMP_ERRORS: dict[type[Exception], bytes] = {
    CappedError: b"CAPPED",
    UnknownCapError: b"UNKNOWN_CAP",
    InvalidAmountError: b"INVALID_AMOUNT",
    UnavailableError: b"UNAVAILABLE",
    InvalidCapError: b"INVALID_CAP",
    UnknownIntervalError: b"UNKNOWN_INTERVAL",
    NotJoinedError: b"NOT_JOINED",
}
