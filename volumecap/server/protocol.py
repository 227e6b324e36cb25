"""
Responders for applications: C{Consume}, C{ConsumeMany} and C{Query}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from volumecap.amounts import format_units, parse_units
from volumecap.errors import AMP_ERRORS, InvalidAmountError, UnavailableError, VolumecapError
from volumecap.server.service import VolumecapServer
from volumecap.wire import clientcommands


def _error_result(error: VolumecapError) -> dict[str, str]:
    return {"error": AMP_ERRORS[type(error)].decode("ascii"), "message": str(error)}


class ApplicationLocator(amp.CommandLocator):
    """
    Answers applications from the server's holdings.
    """

    def __init__(self, server: VolumecapServer) -> None:
        self.server = server

    def _scale(self) -> int:
        scale = self.server.scale
        if scale is None:
            raise UnavailableError("this server has not yet joined a master")
        return scale

    @clientcommands.Consume.responder
    def consume(self, cap: str, amount: str) -> "dict[str, str] | Deferred[dict[str, str]]":
        scale = self._scale()
        remaining = self.server.consume(cap, parse_units(amount, scale))
        if isinstance(remaining, int):
            return {"remaining": format_units(remaining, scale)}
        return remaining.addCallback(lambda units: {"remaining": format_units(units, scale)})

    @clientcommands.ConsumeMany.responder
    def consume_many(self, items: list[dict[str, str]]) -> "dict[str, Any] | Deferred[dict[str, Any]]":
        if len(items) > clientcommands.MAX_BATCH:
            raise InvalidAmountError(
                f"batch of {len(items)} pairs is larger than {clientcommands.MAX_BATCH}; split it"
            )
        scale = self._scale()
        results: list[dict[str, str]] = []
        waiting: list[Deferred[None]] = []
        for item in items:
            try:
                remaining = self.server.consume(item["cap"], parse_units(item["amount"], scale))
            except VolumecapError as error:
                results.append(_error_result(error))
                continue
            if isinstance(remaining, int):
                results.append({"remaining": format_units(remaining, scale)})
            else:
                slot: dict[str, str] = {}
                results.append(slot)
                waiting.append(remaining.addCallbacks(self._fill, self._fill_error, (slot, scale), errbackArgs=(slot,)))
        if not waiting:
            return {"results": results}
        return gatherResults(waiting).addCallback(lambda _: {"results": results})

    @staticmethod
    def _fill(units: int, slot: dict[str, str], scale: int) -> None:
        slot["remaining"] = format_units(units, scale)

    @staticmethod
    def _fill_error(failure: Any, slot: dict[str, str]) -> None:
        error = failure.value
        if not isinstance(error, VolumecapError) or type(error) not in AMP_ERRORS:
            error = UnavailableError(f"internal error: {failure.getErrorMessage()}")
        slot.update(_error_result(error))

    @clientcommands.Query.responder
    def query(self, cap: str) -> dict[str, Any]:
        scale = self._scale()
        held = self.server.holdings.current(cap, self.server.clock.seconds())
        return {
            "available": format_units(held.available, scale),
            "consumed": format_units(held.consumed, scale),
            "start": held.start,
            "end": held.end,
        }


class ApplicationFactory(Factory):
    """
    Builds one AMP protocol per application connection.
    """

    def __init__(self, server: VolumecapServer) -> None:
        self.locator = ApplicationLocator(server)

    def buildProtocol(self, addr: Any) -> amp.AMP:
        return amp.AMP(locator=self.locator)
