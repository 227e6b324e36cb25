"""
A volumecap server's connection to its master.

L{MasterLink} keeps one AMP connection open through Twisted's
L{ClientService}, which reconnects with jittered exponential backoff and
never gives up.  On each new connection the server joins and fetches every
live interval.  Only then does the connection become L{MasterLink.protocol},
so commands always go over a synchronised connection.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from volumecap.errors import UnavailableError
from volumecap.wire import servercommands


class LinkListener(Protocol):
    """
    The server's callbacks for the link's join and connection events.
    """

    def syncing(self, dc: str, scale: int) -> None:
        """
        Note that the master accepted a join.  Intervals that the server has
        now but that are missing from the list that follows were deleted
        while the server was away.
        """

    def joined(self, intervals: list[dict[str, Any]]) -> "Deferred[Any] | None":
        """
        Take the full interval list of a newly joined master connection.
        """

    def link_lost(self) -> None:
        """
        Note that the synchronised connection is gone.
        """


class MasterProtocol(amp.AMP):
    """
    The server's end of the master connection.  Its responders are on the
    locator that the server supplies.
    """

    def __init__(
        self,
        locator: Callable[["MasterProtocol"], amp.CommandLocator],
        made: Callable[["MasterProtocol"], None],
        lost: Callable[["MasterProtocol"], None],
    ) -> None:
        super().__init__(locator=locator(self))
        self._made = made
        self._lost = lost

    def connectionMade(self) -> None:
        super().connectionMade()
        self._made(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._lost(self)


class MasterLink(ClientService):
    """
    The synchronised connection to the master.

    @ivar protocol: the joined connection, or L{None} while there is none.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        name: str,
        locator: Callable[["MasterProtocol"], amp.CommandLocator],
        listener: LinkListener,
        clock: IReactorTime,
        retry_policy: Callable[[int], float] | None = None,
    ) -> None:
        self.server_name = name
        self.listener = listener
        self.protocol: amp.AMP | None = None
        self._connecting: MasterProtocol | None = None
        self._fresh = True
        self._joined_waiters: list[Deferred[None]] = []
        factory = Factory.forProtocol(lambda: MasterProtocol(locator, self._connection_made, self._connection_lost))
        # The join runs on each new connection rather than as ClientService's
        # prepareConnection step: on Twisted 26.10 a connection lost during
        # that step makes ClientService log an unhandled NoTransition error.
        super().__init__(
            endpoint,
            factory,
            retryPolicy=retry_policy or backoffPolicy(initialDelay=0.2, maxDelay=5.0),
            clock=clock,
        )
        self.setName("master-link")

    def _connection_made(self, protocol: MasterProtocol) -> None:
        self._connecting = protocol
        self._join(protocol).addErrback(self._join_failed, protocol)

    def _join_failed(self, failure: Failure, protocol: MasterProtocol) -> None:
        if protocol.transport is None:
            return
        if not failure.check(ConnectionClosed):
            self.log.failure("Joining the master failed; reconnecting", failure)
        protocol.transport.loseConnection()

    def when_joined(self) -> "Deferred[None]":
        """
        Return a Deferred that fires once the server has joined a master.
        """
        waiter: Deferred[None] = Deferred()
        if self.protocol is not None:
            waiter.callback(None)
        else:
            self._joined_waiters.append(waiter)
        return waiter

    @inlineCallbacks
    def _join(self, protocol: MasterProtocol) -> Any:
        joined = yield protocol.callRemote(servercommands.Join, server=self.server_name, fresh=self._fresh)
        self.listener.syncing(joined["dc"], joined["scale"])
        intervals: list[dict[str, Any]] = []
        after_cap, after_start, more = "", -1, True
        while more:
            page = yield protocol.callRemote(servercommands.Intervals, after_cap=after_cap, after_start=after_start)
            intervals.extend(page["intervals"])
            more = page["more"]
            if intervals:
                after_cap, after_start = intervals[-1]["cap"], intervals[-1]["start"]
        self._fresh = False
        self.protocol = protocol
        self.log.info(
            "Joined master of {dc} as {server}: {count} intervals",
            dc=joined["dc"],
            server=self.server_name,
            count=len(intervals),
        )
        yield self.listener.joined(intervals)
        waiters, self._joined_waiters = self._joined_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _connection_lost(self, protocol: MasterProtocol) -> None:
        if protocol is self.protocol:
            self.protocol = None
            if self.running:
                self.log.warn("Lost the connection to the master; reconnecting")
            else:
                self.log.info("Disconnected from the master")
            self.listener.link_lost()

    def is_current(self, protocol: amp.AMP) -> bool:
        """
        Return whether C{protocol} is the joined connection or the one
        joining now.
        """
        return protocol is self.protocol or protocol is self._connecting

    def call(self, command: type[amp.Command], **arguments: Any) -> "Deferred[dict[str, Any]]":
        """
        Send C{command} on the joined connection.

        @raise UnavailableError: there is no joined connection.
        """
        if self.protocol is None:
            raise UnavailableError("not connected to a master")
        result: Deferred[dict[str, Any]] = self.protocol.callRemote(command, **arguments)
        return result
