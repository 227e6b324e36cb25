"""
The master's AMP listener: one protocol per connection, for servers and for
the C{volumecap} command alike.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure

from volumecap.master.admin import AdminLocator
from volumecap.master.local import LocalHandler, ServerSession


class ChainedLocator(amp.CommandLocator):
    """
    A locator that queries several locators in turn for a command's responder.
    """

    def __init__(self, locators: Sequence[amp.CommandLocator]) -> None:
        self.locators = locators

    def locateResponder(self, name: bytes) -> Callable[..., Any] | None:
        for locator in self.locators:
            responder: Callable[..., Any] | None = locator.locateResponder(name)
            if responder is not None:
                return responder
        return None


class MasterProtocol(amp.AMP):
    """
    One connection to the master.  Responders live on the server session
    and the admin locator; this class only ties their lifetime to the
    connection.
    """

    def __init__(self, local: LocalHandler, admin: AdminLocator) -> None:
        self.session = ServerSession(local, self)
        super().__init__(locator=ChainedLocator([self.session, admin]))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.session.connection_lost()


class MasterFactory(Factory):
    """
    Builds L{MasterProtocol}s for the master's listener.
    """

    def __init__(self, local: LocalHandler, admin: AdminLocator) -> None:
        self.local = local
        self.admin = admin

    def buildProtocol(self, addr: Any) -> MasterProtocol:
        return MasterProtocol(self.local, self.admin)
