"""
Responders for applications: C{Consume}, C{ConsumeMany} and C{Query}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from volumecap.amounts import format_units, parse_units
from volumecap.errors import AMP_ERRORS, InvalidAmountError, UnavailableError, VolumecapError
from volumecap.server.service import VolumecapServer
from volumecap.wire import clientcommands


def _error_code(error: VolumecapError) -> str:
    return AMP_ERRORS[type(error)].decode("ascii")


def _fill(units: int, remaining: list[str], index: int, scale: int) -> None:
    remaining[index] = format_units(units, scale)


def _fill_error(failure: Any, errors: list[str], messages: list[str], index: int) -> None:
    error = failure.value
    if not isinstance(error, VolumecapError) or type(error) not in AMP_ERRORS:
        error = UnavailableError(f"internal error: {failure.getErrorMessage()}")
    errors[index], messages[index] = _error_code(error), str(error)


class ApplicationLocator(amp.CommandLocator):
    """
    Responders for application commands, served from the server's holdings.
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
    def consume_many(self, caps: list[str], amounts: list[str]) -> "dict[str, Any] | Deferred[dict[str, Any]]":
        if len(caps) != len(amounts):
            raise InvalidAmountError(f"{len(caps)} caps but {len(amounts)} amounts; send one amount per cap")
        if len(caps) > clientcommands.MAX_BATCH:
            raise InvalidAmountError(f"batch of {len(caps)} pairs is larger than {clientcommands.MAX_BATCH}; split it")
        scale = self._scale()
        remaining = [""] * len(caps)
        errors = [""] * len(caps)
        messages = [""] * len(caps)
        waiting: list[Deferred[Any]] = []
        for index, (cap, amount) in enumerate(zip(caps, amounts, strict=True)):
            try:
                outcome = self.server.consume(cap, parse_units(amount, scale))
            except VolumecapError as error:
                errors[index], messages[index] = _error_code(error), str(error)
                continue
            if isinstance(outcome, int):
                remaining[index] = format_units(outcome, scale)
            else:
                outcome.addCallbacks(
                    _fill, _fill_error, callbackArgs=(remaining, index, scale), errbackArgs=(errors, messages, index)
                )
                waiting.append(outcome)
        response = {"remaining": remaining, "errors": errors, "messages": messages}
        if not waiting:
            return response
        return gatherResults(waiting).addCallback(lambda _: response)

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


class ApplicationProtocol(amp.AMP):
    """
    AMP for one application connection, with a fast path for C{Consume}.

    Twisted's command machinery (argument parsing, Deferreds, response
    building) cost about half of the server's time per consume in py-spy
    profiles from C{bench/consume.py --profile-server}, so C{Consume} boxes
    are read and responded to here directly, with the same wire format and
    error codes.  Every other command, and a malformed
    C{Consume}, goes through the machinery and the locator.
    """

    def __init__(self, locator: ApplicationLocator) -> None:
        super().__init__(locator=locator)
        self._server = locator.server

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        if box.get(amp.COMMAND) != b"Consume" or amp.ASK not in box:
            super().ampBoxReceived(box)
            return
        try:
            cap = box[b"cap"].decode("utf-8")
            amount = box[b"amount"].decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            super().ampBoxReceived(box)
            return
        tag = box[amp.ASK]
        scale = self._server.scale
        try:
            if scale is None:
                raise UnavailableError("this server has not yet joined a master")
            outcome = self._server.consume(cap, parse_units(amount, scale))
        except VolumecapError as error:
            self._send_error(tag, error)
            return
        if isinstance(outcome, int):
            self._send_remaining(outcome, tag, scale)
            return
        outcome.addCallbacks(self._send_remaining, self._send_failure, (tag,), {"scale": scale}, (tag,))

    def _send(self, box: amp.AmpBox) -> None:
        # Like AMP for its own responses, send nothing on a connection that
        # is gone.  The consume still counts.
        try:
            box._sendTo(self.boxSender)
        except (amp.ProtocolSwitched, ConnectionLost):
            pass

    def _send_remaining(self, units: int, tag: bytes, scale: int) -> None:
        self._send(amp.AmpBox({amp.ANSWER: tag, b"remaining": format_units(units, scale).encode("ascii")}))

    def _send_failure(self, failure: Any, tag: bytes) -> None:
        error = failure.value
        if not isinstance(error, VolumecapError) or type(error) not in AMP_ERRORS:
            error = UnavailableError(f"internal error: {failure.getErrorMessage()}")
        self._send_error(tag, error)

    def _send_error(self, tag: bytes, error: VolumecapError) -> None:
        box = {
            amp.ERROR: tag,
            amp.ERROR_CODE: AMP_ERRORS[type(error)],
            amp.ERROR_DESCRIPTION: str(error).encode("utf-8"),
        }
        self._send(amp.AmpBox(box))


class ApplicationFactory(Factory):
    """
    Builds one AMP protocol per application connection.
    """

    def __init__(self, server: VolumecapServer) -> None:
        self.locator = ApplicationLocator(server)

    def buildProtocol(self, addr: Any) -> ApplicationProtocol:
        return ApplicationProtocol(self.locator)
