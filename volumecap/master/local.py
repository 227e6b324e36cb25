"""
The local handler: the master's side of its volumecap servers.

It keeps the set of joined servers, sends them interval changes, grants
top-ups and accepts returns.  When the master's own C{available} cannot cover
a top-up, it recalls part of the unconsumed holdings of the other servers
first, so that demand at one server can consume the last units of an
interval.  After a total is lowered it recalls the excess.
"""

from __future__ import annotations

import collections
import itertools
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Iterable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from volumecap.amounts import decimal_to_units, format_units, fraction_of, units_to_decimal
from volumecap.errors import NotJoinedError, UnknownIntervalError
from volumecap.intervals import interval_name
from volumecap.master.ledger import Ledger
from volumecap.master.state import Interval, IntervalKey, Record

if TYPE_CHECKING:
    from volumecap.master.remote import RemoteHandler
from volumecap.wire import mastercommands, servercommands

DEFAULT_TOPUP_PERCENT = 10
DEFAULT_THRESHOLD_PERCENT = 10
DEFAULT_RECALL_TIMEOUT = 0.2


@dataclass
class JoinedServer:
    """
    A server connected to this master.
    """

    name: str
    protocol: amp.AMP
    peer: str
    joined: float


class LocalHandler(Service):
    """
    Joined servers, top-ups, returns, recalls and interval broadcasts.

    @param topup_percent: a top-up is this per cent of the interval's share.
    @param threshold_percent: a server tops up when its holding falls to this
        per cent of a top-up.
    @param recall_timeout: seconds a top-up waits for recalled amounts.
    """

    log = Logger()

    def __init__(
        self,
        ledger: Ledger,
        clock: IReactorTime,
        topup_percent: int = DEFAULT_TOPUP_PERCENT,
        threshold_percent: int = DEFAULT_THRESHOLD_PERCENT,
        recall_timeout: float = DEFAULT_RECALL_TIMEOUT,
    ) -> None:
        self.name = "local"
        self.ledger = ledger
        self.clock = clock
        self.topup_percent = topup_percent
        self.threshold_percent = threshold_percent
        self.recall_timeout = recall_timeout
        self.servers: dict[str, JoinedServer] = {}
        # The remote handler, when this data center shares caps with others.
        self.remote: RemoteHandler | None = None
        self._recalling: collections.Counter[IntervalKey] = collections.Counter()
        self._recall_ids = itertools.count(1)
        self._instance = uuid.uuid4().hex[:12]

    @property
    def scale(self) -> int:
        return self.ledger.scale

    def startService(self) -> None:
        super().startService()
        self.ledger.observe(self.broadcast)

    # Joining and leaving.

    def join(self, name: str, fresh: bool, protocol: amp.AMP, peer: str) -> "Deferred[None]":
        """
        Register server C{name} on C{protocol}, replacing an earlier
        connection of the same name.  For a fresh process, first write off
        what the master still records as held by that name.

        The server is registered only once the write-offs are durable, just
        before the master responds to the join, so it receives no broadcast
        before its join response.
        """
        records: list[Record] = []
        if fresh:
            for interval in self.ledger.state.intervals.values():
                holding = interval.holdings.get(name)
                if holding is not None and holding.available > 0:
                    records.append(
                        {
                            "type": "writeoff",
                            "cap": interval.cap_id,
                            "start": interval.start,
                            "server": name,
                            "amount": holding.available,
                        }
                    )
        for record in records:
            self.log.warn(
                "Writing off {amount} of {interval} held by {server}, "
                "which restarted without its holdings",
                amount=format_units(record["amount"], self.scale),
                interval=interval_name(record["cap"], record["start"]),
                server=name,
            )
        return self.ledger.commit(records).addCallback(lambda _: self._register(name, fresh, protocol, peer))

    def _register(self, name: str, fresh: bool, protocol: amp.AMP, peer: str) -> None:
        previous = self.servers.get(name)
        if previous is not None and previous.protocol is not protocol:
            self.log.warn(
                "Server {server} joined again from {peer}; dropping its connection from {old}",
                server=name,
                peer=peer,
                old=previous.peer,
            )
            # A joined protocol leaves self.servers when its connection is
            # lost, which is also when AMP clears its transport.
            transport = previous.protocol.transport
            assert transport is not None
            transport.loseConnection()
        self.servers[name] = JoinedServer(name, protocol, peer, self.clock.seconds())
        self.log.info("Server {server} joined from {peer} (fresh: {fresh})", server=name, peer=peer, fresh=fresh)
        # Recall after the join response is on its way, so the server has
        # the scale when the recall arrives.
        self.clock.callLater(0, self._recall_over_share, name)

    def _recall_over_share(self, name: str) -> None:
        """
        Recall from server C{name} what it holds of intervals that are over
        their share, because it was away when their total was lowered.
        """
        if name not in self.servers:
            return
        for interval in self.ledger.state.live_intervals():
            holding = interval.holdings.get(name)
            if interval.available < 0 and holding is not None and holding.available > 0:
                self._recall_from(name, interval, min(-interval.available, holding.available))

    def disconnected(self, name: str, protocol: amp.AMP) -> None:
        """
        Forget server C{name} if C{protocol} is still its connection.  Its
        holdings stay recorded, because it may come back with them.
        """
        joined = self.servers.get(name)
        if joined is not None and joined.protocol is protocol:
            del self.servers[name]
            self.log.info("Server {server} disconnected", server=name)

    # Intervals as servers see them.

    def topup_units(self, interval: Interval) -> int:
        """
        Return the top-up size of C{interval}, in units.
        """
        return fraction_of(interval.total, self.topup_percent) if interval.total > 0 else 0

    def threshold_units(self, interval: Interval) -> int:
        """
        Return the holding at which servers top up C{interval}, in units.
        """
        topup = self.topup_units(interval)
        return fraction_of(topup, self.threshold_percent) if topup > 0 else 0

    def describe(self, interval: Interval) -> dict[str, Any]:
        """
        Return the broadcast form of C{interval}: its bounds, top-up size and
        threshold.
        """
        return {
            "cap": interval.cap_id,
            "start": interval.start,
            "end": interval.end,
            "topup": units_to_decimal(self.topup_units(interval), self.scale),
            "threshold": units_to_decimal(self.threshold_units(interval), self.scale),
        }

    def page(self, after_cap: str, after_start: int) -> tuple[list[dict[str, Any]], bool]:
        """
        Return one page of live intervals after C{(after_cap, after_start)}
        and whether more follow.
        """
        keys = sorted(
            interval.key
            for interval in self.ledger.state.live_intervals()
            if interval.key > (after_cap, after_start)
        )
        chosen = keys[: servercommands.PAGE]
        intervals = self.ledger.state.intervals
        return [self.describe(intervals[key]) for key in chosen], len(keys) > len(chosen)

    # Top-ups and returns.

    def _live(self, cap_id: str, start: int) -> Interval:
        interval = self.ledger.state.interval(cap_id, start)
        if interval is None or interval.expired:
            raise UnknownIntervalError(
                f"no live interval of cap {cap_id!r} starting at {start}: it was "
                f"deleted or has expired"
            )
        return interval

    def top_up(
        self, server: str, request: str, cap_id: str, start: int, amount: Decimal
    ) -> "Deferred[dict[str, Decimal]]":
        """
        Grant up to C{amount} of an interval to C{server}, durably.

        A repeated C{request} id gets the first grant again.  When the master
        has less than C{amount}, other servers are asked to return part of
        what they hold, and other data centers for more, before the grant is
        made.
        """
        units = decimal_to_units(amount, self.scale)
        interval = self._live(cap_id, start)
        if request in interval.requests or interval.available >= units:
            return self._grant(server, request, cap_id, start, units)
        wanted = units - max(0, interval.available)
        waits = []
        recalled = self._recall(interval, wanted, exclude=server, share=True)
        if recalled is not None:
            waits.append(recalled)
        if self.remote is not None:
            waits.append(self.remote.request_more(interval, wanted))
        if not waits:
            return self._grant(server, request, cap_id, start, units)
        gathered = DeferredList(waits, consumeErrors=True)
        return gathered.addCallback(lambda _: self._grant(server, request, cap_id, start, units))

    def _grant(
        self, server: str, request: str, cap_id: str, start: int, units: int
    ) -> "Deferred[dict[str, Decimal]]":
        interval = self._live(cap_id, start)
        if request in interval.requests:
            return self._grant_again(server, request, interval)
        granted = min(units, max(0, interval.available))
        if granted == 0:
            return succeed(self._granted(interval, 0, server))
        record = {
            "type": "grant",
            "cap": cap_id,
            "start": start,
            "server": server,
            "request": request,
            "amount": granted,
            "at": self.clock.seconds(),
        }
        self.log.debug(
            "Granting {amount} of {interval} to {server} (request {request})",
            amount=format_units(granted, self.scale),
            interval=interval_name(cap_id, start),
            server=server,
            request=request,
        )
        committed = self.ledger.commit([record])
        if self.remote is not None:
            committed.addCallback(lambda _: self.remote.check(interval) if self.remote is not None else None)
        return committed.addCallback(lambda _: self._granted(interval, granted, server))

    def _grant_again(self, server: str, request: str, interval: Interval) -> "Deferred[dict[str, Decimal]]":
        """
        Respond to a repeated top-up request with the first grant.

        The server never received that grant, so while the interval is over
        its share (after a lowered total) the master revokes as much of it
        as the excess instead of handing it out late.
        """
        granted = interval.requests[request]
        revoked = min(granted, max(0, -interval.available))
        if revoked == 0:
            return self.ledger.synced().addCallback(lambda _: self._granted(interval, granted, server))
        record = {
            "type": "revoke",
            "cap": interval.cap_id,
            "start": interval.start,
            "server": server,
            "request": request,
            "amount": revoked,
        }
        self.log.info(
            "Revoking {amount} of undelivered grant {request} of {interval} to {server}",
            amount=format_units(revoked, self.scale),
            request=request,
            interval=interval_name(interval.cap_id, interval.start),
            server=server,
        )
        return self.ledger.commit([record]).addCallback(lambda _: self._granted(interval, granted - revoked, server))

    def _granted(self, interval: Interval, granted: int, server: str) -> dict[str, Any]:
        return {
            "granted": units_to_decimal(granted, self.scale),
            "available": units_to_decimal(max(0, interval.available), self.scale),
            "exhausted": self.exhausted(interval, server),
        }

    def exhausted(self, interval: Interval, server: str) -> bool:
        """
        Return whether C{interval} has nothing left for C{server}.

        That is the case when the master has nothing, no other joined server
        holds anything, no recall is on its way back and, by their latest
        figures, the other data centers have nothing left either.
        """
        if interval.available > 0 or self._recalling[interval.key] > 0:
            return False
        if self.remote is not None and not self.remote.others_exhausted(interval):
            return False
        return not any(
            holding.available > 0 and name != server and name in self.servers
            for name, holding in interval.holdings.items()
        )

    def give_back(
        self, server: str, request: str, cap_id: str, start: int, amount: Decimal
    ) -> "Deferred[dict[str, Decimal]]":
        """
        Take C{amount} back from C{server} into the master's C{available},
        durably.  A repeated C{request} id changes nothing.
        """
        units = decimal_to_units(amount, self.scale)
        interval = self._live(cap_id, start)
        holding = interval.holdings.get(server)
        held = holding.granted if holding is not None else 0
        if request in interval.requests or units == 0:
            return self.ledger.synced().addCallback(lambda _: self._available(interval))

        if units > held:
            self.log.warn(
                "Server {server} returned {amount} of {interval} but was "
                "granted only {held}, so only {held} is accepted",
                server=server,
                amount=format_units(units, self.scale),
                interval=interval_name(cap_id, start),
                held=format_units(held, self.scale),
            )
            units = held

        record = {
            "type": "return",
            "cap": cap_id,
            "start": start,
            "server": server,
            "request": request,
            "amount": units,
            "at": self.clock.seconds(),
        }
        return self.ledger.commit([record]).addCallback(lambda _: self._available(interval))

    def _available(self, interval: Interval) -> dict[str, Decimal]:
        return {"available": units_to_decimal(max(0, interval.available), self.scale)}

    def report(self, server: str, holdings: Iterable[dict[str, Any]]) -> None:
        """
        Take a server's consumption figures.
        """
        for item in holdings:
            consumed = decimal_to_units(item["consumed"], self.scale)
            self.ledger.state.note_consumed(server, item["cap"], item["start"], consumed)

    # Recalls.

    def _recall(
        self, interval: Interval, wanted: int, exclude: str | None, share: bool
    ) -> "Deferred[Any] | None":
        """
        Ask joined servers other than C{exclude} to return up to C{wanted}
        units of C{interval}, largest holdings first.

        With C{share}, a server is asked for half of its holding (rounded
        up), so a busy server keeps serving while an idle one gives back.  A
        holding of at most two thresholds is asked for whole, because halves
        of the last units can leave every server too little for one consume.

        Without C{share}, every holder is asked for up to C{wanted}.  The
        master's figures lag behind consumption, so asking only the largest
        holders could leave the excess with a server that was not asked.
        Returning more than needed is harmless.

        @return: L{None} when no joined server has anything to recall, else a
            Deferred that fires once the returns are applied or
            C{recall_timeout} has passed.
        """
        holders = sorted(
            (
                (holding.available, name)
                for name, holding in interval.holdings.items()
                if name != exclude and name in self.servers and holding.available > 0
            ),
            reverse=True,
        )
        calls = []
        remaining = wanted
        small = 2 * self.threshold_units(interval)
        for available, name in holders:
            if remaining <= 0:
                break
            if share:
                asked = min(remaining, available if available <= small else -(-available // 2))
                remaining -= asked
            else:
                asked = min(wanted, available)
            calls.append(self._recall_from(name, interval, asked))
        if not calls:
            return None
        waiting = DeferredList(calls, consumeErrors=True)
        waiting.addTimeout(self.recall_timeout, self.clock, onTimeoutCancel=lambda result, timeout: None)
        return waiting

    def _recall_from(self, name: str, interval: Interval, units: int) -> "Deferred[Any]":
        request = f"recall-{self._instance}-{next(self._recall_ids)}"
        self.log.info(
            "Recalling {amount} of {interval} from {server} (request {request})",
            amount=format_units(units, self.scale),
            interval=interval_name(interval.cap_id, interval.start),
            server=name,
            request=request,
        )
        call: Deferred[dict[str, Any]] = self.servers[name].protocol.callRemote(
            mastercommands.Recall,
            request=request,
            cap=interval.cap_id,
            start=interval.start,
            amount=units_to_decimal(units, self.scale),
        )
        key = interval.key
        self._recalling[key] += 1

        def finished(result: object) -> object:
            self._recalling[key] -= 1
            if not self._recalling[key]:
                del self._recalling[key]
            return result

        def answered(result: dict[str, Any]) -> dict[str, Any]:
            consumed = decimal_to_units(result["consumed"], self.scale)
            self.ledger.state.note_consumed(name, interval.cap_id, interval.start, consumed)
            return result

        call.addCallback(answered)
        return call.addBoth(finished).addErrback(self._recall_failed, name, interval, request)

    def _recall_failed(self, failure: Failure, name: str, interval: Interval, request: str) -> None:
        self.log.warn(
            "Recall {request} of {interval} from {server} failed: {error}",
            request=request,
            interval=interval_name(interval.cap_id, interval.start),
            server=name,
            error=failure.getErrorMessage(),
        )

    def recall_excess(self, interval: Interval) -> None:
        """
        Recall what this data center has handed out beyond its share, after
        the total of C{interval} was lowered.
        """
        if interval.available < 0:
            self._recall(interval, -interval.available, exclude=None, share=False)

    # Broadcasts.

    def broadcast(self, records: list[Record]) -> None:
        """
        Send committed interval changes to every joined server and recall
        excess from intervals whose total fell below what was handed out.
        """
        created: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        deleted: list[dict[str, Any]] = []
        state = self.ledger.state
        for record in records:
            kind = record["type"]
            if kind in ("interval.create", "interval.update"):
                interval = state.interval(record["cap"], record["start"])
                if interval is None or interval.expired:
                    continue
                (created if kind == "interval.create" else updated).append(self.describe(interval))
                if kind == "interval.update":
                    self.recall_excess(interval)
            elif kind in ("interval.delete", "interval.expire"):
                deleted.append({"cap": record["cap"], "start": record["start"]})
        for command, items in (
            (mastercommands.IntervalsCreated, created),
            (mastercommands.IntervalsUpdated, updated),
            (mastercommands.IntervalsDeleted, deleted),
        ):
            for offset in range(0, len(items), servercommands.PAGE):
                self._send_all(command, items[offset : offset + servercommands.PAGE])

    def _send_all(self, command: type[amp.Command], items: list[dict[str, Any]]) -> None:
        for joined in list(self.servers.values()):
            call = joined.protocol.callRemote(command, intervals=items)
            call.addErrback(self._send_failed, joined.name, command)

    def _send_failed(self, failure: Failure, server: str, command: type[amp.Command]) -> None:
        self.log.warn(
            "Sending {command} to {server} failed: {error}",
            command=command.__name__,
            server=server,
            error=failure.getErrorMessage(),
        )


class ServerSession(amp.CommandLocator):
    """
    Responders for one server connection, bound to the server's name once it
    has joined.
    """

    def __init__(self, handler: LocalHandler, protocol: amp.AMP) -> None:
        self.handler = handler
        self.protocol = protocol
        self.server: str | None = None

    def _name(self) -> str:
        if self.server is None:
            raise NotJoinedError("send Join before any other command")
        return self.server

    def peer(self) -> str:
        """
        Return the server's address as C{host:port}, or its description for
        other transports.
        """
        transport = self.protocol.transport
        if transport is None:
            return "unknown"
        address = transport.getPeer()
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        return f"{host}:{port}" if host is not None else str(address)

    @servercommands.Join.responder
    def join(self, server: str, fresh: bool) -> "Deferred[dict[str, Any]]":
        self.server = server
        joined = self.handler.join(server, fresh, self.protocol, self.peer())
        return joined.addCallback(lambda _: {"dc": self.handler.ledger.state.dc, "scale": self.handler.scale})

    @servercommands.Intervals.responder
    def intervals(self, after_cap: str, after_start: int) -> dict[str, Any]:
        self._name()
        items, more = self.handler.page(after_cap, after_start)
        return {"intervals": items, "more": more}

    @servercommands.TopUp.responder
    def top_up(self, request: str, cap: str, start: int, amount: Decimal) -> "Deferred[dict[str, Decimal]]":
        return self.handler.top_up(self._name(), request, cap, start, amount)

    @servercommands.Return.responder
    def give_back(self, request: str, cap: str, start: int, amount: Decimal) -> "Deferred[dict[str, Decimal]]":
        return self.handler.give_back(self._name(), request, cap, start, amount)

    @servercommands.Report.responder
    def report(self, holdings: list[dict[str, Any]]) -> dict[str, Any]:
        self.handler.report(self._name(), holdings)
        return {}

    def connection_lost(self) -> None:
        if self.server is not None:
            self.handler.disconnected(self.server, self.protocol)


def format_time(instant: float) -> str:
    """
    Format epoch seconds as ISO 8601 UTC with seconds.
    """
    return datetime.fromtimestamp(instant, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
