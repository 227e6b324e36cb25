"""
AMP argument types shared by the command modules.
"""

from decimal import Decimal

from twisted.protocols import amp

from volumecap.amounts import decimal_from_wire


class Amount(amp.Argument):
    """
    A finite L{Decimal} sent as its plain decimal string.

    A peer that sends anything else gets an AMP error response and nothing
    is changed, because decoding fails before the responder runs.
    """

    def toString(self, inObject: Decimal) -> bytes:
        if not isinstance(inObject, Decimal) or not inObject.is_finite():
            raise TypeError(f"Amount needs a finite Decimal, not {inObject!r}")
        return format(inObject, "f").encode("ascii")

    def fromString(self, inString: bytes) -> Decimal:
        return decimal_from_wire(inString.decode("ascii", errors="replace"))
