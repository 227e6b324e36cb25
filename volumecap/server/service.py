"""
The volumecap server: serves applications' consumes from the slices it
holds and keeps those slices topped up from its master.

A consume that the holding covers succeeds at once, with no I/O.  When the
holding falls to the interval's threshold, a top-up starts in the background.
A consume larger than the holding starts a top-up at once and waits for it
for at most C{topup_wait} seconds.  It fails as capped when the master
reports the interval exhausted, and as unavailable when the wait times out.
"""

from __future__ import annotations

import itertools
import uuid
from decimal import Decimal
from typing import Any, Callable, Iterable

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from volumecap.amounts import decimal_to_units, format_units, units_to_decimal
from volumecap.errors import CappedError, UnavailableError, UnknownCapError, UnknownIntervalError
from volumecap.intervals import interval_name
from volumecap.server.holdings import Holdings, Slice
from volumecap.server.link import MasterLink
from volumecap.wire import mastercommands, servercommands

DEFAULT_TOPUP_WAIT = 0.25
DEFAULT_REPORT_INTERVAL = 1.0
DEFAULT_PREFETCH = 60.0
DEFAULT_CAPPED_BACKOFF = 1.0

# Seconds a stopping server waits for the master to accept its returns.
STOP_TIMEOUT = 5.0

# Seconds a waiting consume pauses before asking again after a top-up that
# granted nothing while the master was still recalling from other servers.
RETRY_DELAY = 0.02


class PendingTopUp:
    """
    A top-up request in flight, with the consumes waiting for it.

    The request id stays the same across reconnects, so the master grants
    it at most once however often it is sent.
    """

    def __init__(self, request: str, slice: Slice, units: int) -> None:
        self.request = request
        self.slice = slice
        self.units = units
        self._waiters: list[Deferred[int]] = []

    def wait(self) -> "Deferred[int]":
        """
        Return a Deferred that fires with the units granted, or zero when the
        request failed or is still unanswered after a lost connection.
        """
        waiter: Deferred[int] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def notify(self, granted: int = 0) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(granted)


class VolumecapServer(MultiService):
    """
    Holdings, top-ups, returns and reports of one volumecap server.

    @param topup_wait: seconds a consume larger than the holding waits for a
        top-up.
    @param report_interval: seconds between consumption reports.
    @param prefetch: seconds before an interval ends that a slice of the
        next interval is fetched, for caps consumed in the current one.
    @param capped_backoff: seconds after the master reports an interval
        exhausted during which consumes beyond the holding fail as capped
        without asking the master again.
    @param retry_policy: seconds before reconnection attempt N to the
        master; the default backs off exponentially with jitter.
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        master: IStreamClientEndpoint,
        clock: IReactorTime,
        topup_wait: float = DEFAULT_TOPUP_WAIT,
        report_interval: float = DEFAULT_REPORT_INTERVAL,
        prefetch: float = DEFAULT_PREFETCH,
        capped_backoff: float = DEFAULT_CAPPED_BACKOFF,
        retry_policy: Callable[[int], float] | None = None,
    ) -> None:
        super().__init__()
        self.setName("server")
        self.server_name = name
        self.clock = clock
        self.topup_wait = topup_wait
        self.report_interval = report_interval
        self.prefetch = prefetch
        self.capped_backoff = capped_backoff
        self.holdings = Holdings()
        self.scale: int | None = None
        self.dc: str | None = None
        self.synced = False
        self._pending: dict[tuple[str, int], PendingTopUp] = {}
        self._returns: dict[str, tuple[str, int, int]] = {}
        self._active: set[Slice] = set()
        self._finished: list[Slice] = []
        self._known_before_sync: set[tuple[str, int]] = set()
        self._request_ids = itertools.count(1)
        self._instance = uuid.uuid4().hex[:12]
        self._reports = LoopingCall(self.tick)
        self._reports.clock = clock
        self.link = MasterLink(
            master, name, lambda protocol: MasterCommands(self, protocol), self, clock, retry_policy
        )
        self.link.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self._reports.start(self.report_interval, now=False)

    @inlineCallbacks
    def stopService(self) -> Any:
        """
        Return every holding to the master, report the final figures, then
        close the master connection.

        A server that is not connected waits up to L{STOP_TIMEOUT} seconds
        for the master; what it cannot return then is lost to this interval,
        never served twice.
        """
        if self._reports.running:
            self._reports.stop()
        if self.link.protocol is None and self.synced:
            waiting = self.link.when_joined()
            waiting.addTimeout(STOP_TIMEOUT, self.clock)
            yield waiting.addErrback(lambda failure: None)
            # Leave ClientService's callback first, because ClientService
            # rejects a stop from inside its own notification as reentrant.
            yield deferLater(self.clock, 0, lambda: None)
        if self.link.protocol is not None and self._pending:
            # A grant that arrives after the returns would stay with this server.
            granting = DeferredList([pending.wait() for pending in self._pending.values()])
            granting.addTimeout(STOP_TIMEOUT, self.clock, onTimeoutCancel=lambda result, timeout: None)
            yield granting
        if self.link.protocol is not None:
            returns = list(self.return_all()) + [self._send_return(request) for request in list(self._returns)]
            returning = DeferredList(returns, consumeErrors=True)
            returning.addTimeout(STOP_TIMEOUT, self.clock, onTimeoutCancel=lambda result, timeout: None)
            yield returning
            yield self.report().addErrback(self._log_failure, "Final report")
        unreturned = sum(held.available for held in self.holdings) + sum(units for _, _, units in self._returns.values())
        if unreturned:
            self.log.warn(
                "Stopping with {amount} not returned to the master. That amount "
                "stays unserved until its intervals end",
                amount=format_units(unreturned, self.scale or 0),
            )
        yield super().stopService()

    def _next_request(self) -> str:
        return f"{self.server_name}-{self._instance}-{next(self._request_ids)}"

    # Consuming.

    def consume(self, cap_id: str, units: int) -> "int | Deferred[int]":
        """
        Consume C{units} of C{cap_id}'s current interval, all or nothing.

        @return: the units this server still holds, or a Deferred of them
            when a top-up is needed first.
        @raise UnknownCapError: no such cap, or no current interval.
        @raise CappedError: the master reported the interval exhausted less
            than C{capped_backoff} seconds ago.
        @raise UnavailableError: not yet synchronised with a master, or the
            holding is too small and the master is not connected.
        """
        if not self.synced:
            raise UnavailableError("this server has not yet joined a master")
        now = self.clock.seconds()
        held = self.holdings.current(cap_id, now)
        if held.available >= units:
            self._take(held, units)
            return held.available
        if now < held.exhausted_until and held.key not in self._pending:
            raise CappedError(f"cap {cap_id!r} is capped for the current interval")
        return self._wait_for_top_up(held, units, now + self.topup_wait)

    def _take(self, held: Slice, units: int) -> None:
        held.available -= units
        held.consumed += units
        self._active.add(held)
        if held.available <= held.threshold and held.key not in self._pending:
            self._top_up(held, 0)

    def _wait_for_top_up(self, held: Slice, units: int, deadline: float) -> "Deferred[int]":
        if self.link.protocol is None:
            raise UnavailableError(
                f"cap {held.cap_id!r}: this server's holding is too small and its master is not connected"
            )
        waiting = self._top_up(held, units)
        waiting.addTimeout(max(0.0, deadline - self.clock.seconds()), self.clock)
        return waiting.addBoth(self._consume_again, held, units, deadline)

    def _consume_again(self, result: object, held: Slice, units: int, deadline: float) -> "int | Deferred[int]":
        """
        Retry a consume after a top-up.  A top-up that was already in flight
        for less than C{units} is followed by another until C{deadline}.
        """
        if self.holdings.get(held.cap_id, held.start) is not held:
            raise UnknownCapError(f"cap {held.cap_id!r} has no current interval")
        if held.available >= units:
            self._take(held, units)
            return held.available
        now = self.clock.seconds()
        if now < held.exhausted_until:
            raise CappedError(f"cap {held.cap_id!r} is capped for the current interval")
        if now + RETRY_DELAY < deadline and result == 0:
            paused = deferLater(self.clock, RETRY_DELAY, lambda: None)
            return paused.addCallback(lambda _: self._wait_for_top_up(held, units, deadline))
        if now < deadline and result != 0:
            return self._wait_for_top_up(held, units, deadline)
        if self.link.protocol is None:
            raise UnavailableError(
                f"cap {held.cap_id!r}: this server's holding is too small and its master is not connected"
            )
        raise UnavailableError(
            f"cap {held.cap_id!r}: timed out waiting {self.topup_wait} s for a top-up; retry"
        )

    # Top-ups.

    def _top_up(self, held: Slice, needed: int) -> "Deferred[int]":
        pending = self._pending.get(held.key)
        if pending is None:
            units = max(held.topup, needed - held.available)
            pending = PendingTopUp(self._next_request(), held, units)
            self._pending[held.key] = pending
            self._send_top_up(pending)
        return pending.wait()

    def _send_top_up(self, pending: PendingTopUp) -> None:
        assert self.scale is not None
        held = pending.slice
        try:
            call = self.link.call(
                servercommands.TopUp,
                request=pending.request,
                cap=held.cap_id,
                start=held.start,
                amount=units_to_decimal(pending.units, self.scale),
            )
        except UnavailableError:
            # The request stays pending and is sent again after the next join.
            pending.notify()
            return
        call.addCallbacks(self._granted, self._top_up_failed, (pending,), errbackArgs=(pending,))

    def _granted(self, result: dict[str, Any], pending: PendingTopUp) -> None:
        assert self.scale is not None
        held = pending.slice
        self._pending.pop(held.key, None)
        granted = decimal_to_units(result["granted"], self.scale)
        if self.holdings.get(held.cap_id, held.start) is held:
            held.available += granted
            exhausted = result["exhausted"]
            held.exhausted_until = self.clock.seconds() + self.capped_backoff if exhausted else 0.0
        else:
            granted = 0
        self.log.debug(
            "Top-up {request} of {interval}: granted {granted}",
            request=pending.request,
            interval=interval_name(held.cap_id, held.start),
            granted=format_units(granted, self.scale or 0),
        )
        pending.notify(granted)

    def _top_up_failed(self, failure: Failure, pending: PendingTopUp) -> None:
        held = pending.slice
        if failure.check(ConnectionClosed, amp.ProtocolSwitched) or self.link.protocol is None:
            # Kept pending: the same request id goes out again after the next join.
            pending.notify()
            return
        self._pending.pop(held.key, None)
        if failure.check(UnknownIntervalError):
            self.log.info(
                "Dropping {interval}: the master no longer has it", interval=interval_name(held.cap_id, held.start)
            )
            self.holdings.remove(held.cap_id, held.start)
        else:
            self.log.failure(
                "Top-up {request} of {interval} failed",
                failure,
                request=pending.request,
                interval=interval_name(held.cap_id, held.start),
            )
        pending.notify()

    # Returns.

    def give_back(self, cap_id: str, start: int, units: int, request: str | None = None) -> "Deferred[None]":
        """
        Return C{units} (already taken out of the slice) to the master.

        The return stays in an outbox until the master accepts it or no
        longer has the interval.  After a reconnect it is sent again under
        the same request id.
        """
        request = request or self._next_request()
        self._returns[request] = (cap_id, start, units)
        return self._send_return(request)

    def _send_return(self, request: str) -> "Deferred[None]":
        assert self.scale is not None
        cap_id, start, units = self._returns[request]
        try:
            call = self.link.call(
                servercommands.Return,
                request=request,
                cap=cap_id,
                start=start,
                amount=units_to_decimal(units, self.scale),
            )
        except UnavailableError as error:
            failed: Deferred[None] = Deferred()
            failed.errback(error)
            return failed

        def accepted(result: object) -> None:
            self._returns.pop(request, None)

        def rejected(failure: Failure) -> Failure | None:
            if failure.check(UnknownIntervalError):
                self._returns.pop(request, None)
                return None
            return failure

        return call.addCallbacks(accepted, rejected)

    def return_all(self) -> Iterable["Deferred[None]"]:
        """
        Return the unconsumed part of every slice to the master.
        """
        for held in list(self.holdings):
            if held.available > 0:
                units, held.available = held.available, 0
                self.log.info(
                    "Returning {amount} of {interval}",
                    amount=format_units(units, self.scale or 0),
                    interval=interval_name(held.cap_id, held.start),
                )
                yield self.give_back(held.cap_id, held.start, units)

    def recall(self, request: str, cap_id: str, start: int, units: int) -> "Deferred[int]":
        """
        Give back up to C{units} of a slice at the master's request, and
        fire with the units given back.
        """
        held = self.holdings.get(cap_id, start)
        given = min(units, held.available) if held is not None else 0
        if given == 0:
            finished: Deferred[int] = Deferred()
            finished.callback(0)
            return finished
        assert held is not None
        held.available -= given
        # The master was exhausted apart from this holding.  Now part of it
        # is elsewhere, so a consume beyond the holding must ask again.
        held.exhausted_until = 0.0
        self.log.info(
            "Master recalled {amount} of {interval} (request {request})",
            amount=format_units(given, self.scale or 0),
            interval=interval_name(cap_id, start),
            request=request,
        )
        return self.give_back(cap_id, start, given, request).addCallback(lambda _: given)

    # The master's interval broadcasts.

    def syncing(self, dc: str, scale: int) -> None:
        """
        Take the master's data center and scale, and record which intervals
        this server had before the master's list arrives.
        """
        if self.scale is not None and scale != self.scale:
            # Holdings are unit counts of the old scale, so they cannot be
            # carried over.  Dropping them can lose capacity, never overspend.
            self.log.error(
                "Master of {dc} uses scale {scale}, but this server used {old}; "
                "dropping {count} holdings and their pending top-ups and returns",
                dc=dc,
                scale=scale,
                old=self.scale,
                count=len(self.holdings),
            )
            for held in list(self.holdings):
                self._drop(held.cap_id, held.start)
            self._returns.clear()
            self._finished = []
        self.dc, self.scale = dc, scale
        self._known_before_sync = {held.key for held in self.holdings}

    def joined(self, intervals: list[dict[str, Any]]) -> "Deferred[Any]":
        """
        Take the master's full list of live intervals, then send what
        is still outstanding: pending top-ups, returns and a full report.
        """
        listed = {(item["cap"], item["start"]) for item in intervals}
        self.upsert(intervals)
        for cap_id, start in self._known_before_sync - listed:
            self._drop(cap_id, start)
        self.synced = True
        for pending in list(self._pending.values()):
            self._send_top_up(pending)
        for request in list(self._returns):
            self._send_return(request).addErrback(self._log_failure, "Resending return")
        return self.report(everything=True)

    def link_lost(self) -> None:
        """
        Wake the consumes that wait for top-ups.  The server keeps serving
        from its holdings, and consumes beyond them fail as unavailable until
        the master is back.
        """
        for pending in list(self._pending.values()):
            pending.notify()

    def upsert(self, intervals: Iterable[dict[str, Any]]) -> None:
        assert self.scale is not None
        for item in intervals:
            held = self.holdings.upsert(
                item["cap"],
                item["start"],
                item["end"],
                decimal_to_units(item["topup"], self.scale),
                decimal_to_units(item["threshold"], self.scale),
            )
            held.exhausted_until = 0.0

    def delete(self, intervals: Iterable[dict[str, Any]]) -> None:
        for item in intervals:
            self._drop(item["cap"], item["start"])

    def _drop(self, cap_id: str, start: int) -> None:
        removed = self.holdings.remove(cap_id, start)
        if removed is None:
            return
        self._active.discard(removed)
        if removed.consumed != removed.reported:
            self._finished.append(removed)
        pending = self._pending.pop(removed.key, None)
        if pending is not None:
            pending.notify()

    # Reports, expiry and prefetch.

    def tick(self) -> None:
        """
        Report changed figures, drop ended intervals and prefetch slices of
        the next interval for caps that have demand.
        """
        now = self.clock.seconds()
        for held in list(self._active):
            if held.end <= now:
                self._drop(held.cap_id, held.start)
            elif held.end - now <= self.prefetch:
                self._prefetch(held, now)
        if self.link.protocol is not None:
            self.report().addErrback(self._log_failure, "Report")

    def _prefetch(self, held: Slice, now: float) -> None:
        following = self.holdings.following(held)
        if (
            following is not None
            and following.available == 0
            and following.key not in self._pending
            and now >= following.exhausted_until
        ):
            self._top_up(following, 0)

    def report(self, everything: bool = False) -> "Deferred[Any]":
        """
        Send the figures that changed since the last report, or all of them.
        """
        assert self.scale is not None
        scale = self.scale
        slices = [held for held in self.holdings if everything or held.consumed != held.reported]
        slices += self._finished
        self._finished = []
        calls = []
        for offset in range(0, len(slices), servercommands.PAGE):
            chunk = slices[offset : offset + servercommands.PAGE]
            figures = [(held, held.consumed) for held in chunk]
            items = [
                {
                    "cap": held.cap_id,
                    "start": held.start,
                    "available": units_to_decimal(held.available, scale),
                    "consumed": units_to_decimal(consumed, scale),
                }
                for held, consumed in figures
            ]
            call = self.link.call(servercommands.Report, holdings=items)
            call.addCallback(self._reported, figures)
            calls.append(call)
        return DeferredList(calls, fireOnOneErrback=True, consumeErrors=True)

    @staticmethod
    def _reported(result: object, figures: list[tuple[Slice, int]]) -> None:
        for held, consumed in figures:
            held.reported = max(held.reported, consumed)

    def _log_failure(self, failure: Failure, what: str) -> None:
        self.log.warn("{what} to the master failed: {error}", what=what, error=failure.getErrorMessage())


class MasterCommands(amp.CommandLocator):
    """
    Responders for the commands the master sends on one connection.

    Commands that arrive on a connection other than the current one, such
    as the tail of a connection that was cut while joining, change nothing:
    the next join lists every interval anyway.
    """

    log = Logger()

    def __init__(self, server: VolumecapServer, protocol: amp.AMP) -> None:
        self.server = server
        self.protocol = protocol

    def _current(self, command: str) -> bool:
        if self.server.link.is_current(self.protocol) and self.server.scale is not None:
            return True
        self.log.info("Ignoring {command} from a stale master connection", command=command)
        return False

    @mastercommands.IntervalsCreated.responder
    def created(self, intervals: list[dict[str, Any]]) -> dict[str, Any]:
        if self._current("IntervalsCreated"):
            self.server.upsert(intervals)
        return {}

    @mastercommands.IntervalsUpdated.responder
    def updated(self, intervals: list[dict[str, Any]]) -> dict[str, Any]:
        if self._current("IntervalsUpdated"):
            self.server.upsert(intervals)
        return {}

    @mastercommands.IntervalsDeleted.responder
    def deleted(self, intervals: list[dict[str, Any]]) -> dict[str, Any]:
        if self._current("IntervalsDeleted"):
            self.server.delete(intervals)
        return {}

    @mastercommands.Recall.responder
    def recall(self, request: str, cap: str, start: int, amount: Decimal) -> "Deferred[dict[str, Decimal]] | dict[str, Decimal]":
        scale = self.server.scale
        if scale is None or not self._current("Recall"):
            return {"returned": Decimal(0), "consumed": Decimal(0)}
        given = self.server.recall(request, cap, start, decimal_to_units(amount, scale))
        return given.addCallback(self._recalled, cap, start, scale)

    def _recalled(self, units: int, cap: str, start: int, scale: int) -> dict[str, Decimal]:
        held = self.server.holdings.get(cap, start)
        consumed = held.consumed if held is not None else 0
        return {"returned": units_to_decimal(units, scale), "consumed": units_to_decimal(consumed, scale)}
