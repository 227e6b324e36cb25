"""
The remote handler: this data center's side of the other data centers.

Through an L{IMessaging} broker it

 - publishes cap changes made here and applies those made elsewhere (the
   higher version wins, see L{MetaHandler.apply_remote});
 - publishes the figures of this data center's intervals and keeps the
   newest figures of the others (a higher sequence number wins, so
   reordered updates cannot roll a view back);
 - requests more of an interval from the data center with the most spare
   capacity when this one runs low, and grants such requests.

A request has an id.  The requester journals it before sending and sends it
again until a grant arrives or L{MAX_ATTEMPTS} sends have gone unanswered.
It applies the first grant for an id and ignores the rest.  The donor
journals what it gives before sending the grant, so a repeated request gets
the same grant and nothing moves twice.  A donor
moves at most half of its own available, rounded up to a whole unit, so the
last unit can move too.

On every (re)connection the handler publishes every cap definition and
deletion it has and the figures of every live interval, so changes made
while the broker was away reach the others once it is back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from volumecap.amounts import decimal_to_units, format_units
from volumecap.errors import InvalidAmountError
from volumecap.intervals import INTERVAL_KINDS, CapDefinition, interval_name, zone
from volumecap.master.ledger import Ledger
from volumecap.master.messages import BATCH, Message, decode, encode
from volumecap.master.meta import MetaHandler
from volumecap.master.state import Interval, MasterState, Record
from volumecap.messaging import Delivery, IMessaging, MalformedMessage

# Sequence numbers reserved per journal record.
SEQ_BLOCK = 10_000

# Maximum number of sends of a request before it is abandoned, so that a
# data center that is down does not keep this one from asking another.  A donor's late grant for
# an abandoned request is ignored: that capacity is lost to the interval,
# never served twice.
MAX_ATTEMPTS = 3

# Figures older than this many publication periods are stale: their data
# center is asked only when no data center with fresh figures has spare
# capacity.
STALE_PERIODS = 10


@dataclass
class View:
    """
    The newest figures of one interval of another data center, in units.
    """

    seq: int
    end: int
    total: int
    available: int
    consumed: int
    updated: float


class RemoteHandler(Service):
    """
    Cap changes, interval figures and top-ups between data centers.

    @param dcs: every data center, this one included.
    @param topup_units: returns the top-up size of an interval.  A data
        center requests more when its available falls below one top-up, and
        requests two top-ups.
    @param state_interval: seconds between publications of changed figures.
    @param retry_interval: seconds before an unanswered request goes again.
    @param request_timeout: maximum seconds a top-up waits for a grant from
        another data center.
    """

    log = Logger()

    def __init__(
        self,
        ledger: Ledger,
        meta: MetaHandler,
        messaging: IMessaging,
        clock: IReactorTime,
        dcs: Sequence[str],
        topup_units: Callable[[Interval], int],
        state_interval: float = 1.0,
        retry_interval: float = 2.0,
        request_timeout: float = 0.2,
        full_sync_interval: float = 30.0,
    ) -> None:
        self.name = "remote"
        self.ledger = ledger
        self.meta = meta
        self.messaging = messaging
        self.clock = clock
        self.dc = ledger.state.dc
        self.dcs = sorted(set(dcs) | {self.dc})
        self.others = sorted(set(dcs) - {self.dc})
        self.topup_units = topup_units
        self.state_interval = state_interval
        self.retry_interval = retry_interval
        self.request_timeout = request_timeout
        self.full_sync_interval = full_sync_interval
        self.views: dict[tuple[str, str, int], View] = {}
        self._published: dict[tuple[str, int], tuple[int, int, int, int]] = {}
        self._sent: dict[str, float] = {}
        self._covered: dict[tuple[str, str, int], int] = {}
        self._mismatch_logged: dict[str, float] = {}
        self._attempts: dict[str, int] = {}
        self._waiters: dict[str, list[Deferred[None]]] = {}
        self._seq = 0
        self._last_full_sync = 0.0
        self._ticks = LoopingCall(self.tick)
        self._ticks.clock = clock

    @property
    def state(self) -> MasterState:
        return self.ledger.state

    @property
    def scale(self) -> int:
        return self.ledger.scale

    def startService(self) -> None:
        super().startService()
        self._seq = self.state.seq_reserved
        self.ledger.commit([{"type": "seq.reserve", "upto": self._seq + SEQ_BLOCK}])
        self.messaging.consume(self.receive)
        self.messaging.on_connect(self.connected)
        self.ledger.observe(self.committed)
        self._ticks.start(self.state_interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._ticks.running:
            self._ticks.stop()

    # Publishing.

    def _next_seq(self) -> int:
        self._seq += 1
        if self._seq + SEQ_BLOCK // 2 > self.state.seq_reserved:
            self.ledger.commit([{"type": "seq.reserve", "upto": self.state.seq_reserved + SEQ_BLOCK}])
        return self._seq

    def publish(self, routing_key: str, message_type: str, body: dict[str, Any]) -> "Deferred[None]":
        """
        Publish one message, unless the broker is disconnected.  A failure is
        only logged, because every message is either repeated later or
        superseded.
        """
        if not self.messaging.connected:
            return succeed(None)
        data = encode(message_type, self.dc, self._next_seq(), body, self.dcs)
        published = self.messaging.publish(routing_key, data)
        return published.addErrback(self._publish_failed, message_type, routing_key)

    def _publish_failed(self, failure: Failure, message_type: str, routing_key: str) -> None:
        self.log.warn(
            "Publishing {type} to {key} from {dc} failed: {error}",
            type=message_type,
            key=routing_key,
            dc=self.dc,
            error=failure.getErrorMessage(),
        )

    def connected(self) -> None:
        """
        Publish every cap and interval figure this data center has, and send
        unanswered requests again.
        """
        self.log.info("Data center {dc} connected to the broker, publishing caps and figures", dc=self.dc)
        self.publish_caps(sorted(set(self.state.caps) | set(self.state.tombstones)))
        self.publish_intervals(everything=True)
        self._last_full_sync = self.clock.seconds()
        for request in list(self.state.remote_requests):
            self._send_request(request)

    def committed(self, records: list[Record]) -> None:
        """
        Publish cap changes made in this data center as soon as they are
        durable.
        """
        changed = [
            record.get("id") or record["cap"]["id"]
            for record in records
            if record["type"] in ("cap.set", "cap.delete") and (record.get("version") or [0, ""])[1] == self.dc
        ]
        if changed:
            self.publish_caps(changed)

    def publish_caps(self, cap_ids: list[str]) -> None:
        entries = [self._cap_entry(cap_id) for cap_id in cap_ids]
        for offset in range(0, len(entries), BATCH):
            self.publish("all.caps", "caps", {"caps": entries[offset : offset + BATCH]})

    def _cap_entry(self, cap_id: str) -> dict[str, Any]:
        cap = self.state.caps.get(cap_id)
        definition = None
        if cap is not None:
            definition = {
                "id": cap.id,
                "interval": cap.interval,
                "start": cap.start,
                "end": cap.end,
                "total": format_units(cap.total, self.scale),
                "first_total": None if cap.first_total is None else format_units(cap.first_total, self.scale),
                "timezone": cap.timezone,
            }
        return {"id": cap_id, "version": self.state.version(cap_id), "cap": definition}

    def publish_intervals(self, everything: bool = False) -> None:
        """
        Publish the figures of live intervals that changed since they were
        last published, or of all of them.

        NOTE: this compares every live interval on each call, once per
        C{state_interval}; with hundreds of thousands of intervals a set of
        changed intervals kept by the ledger would be cheaper.
        """
        items = []
        for interval in self.state.live_intervals():
            figures = (interval.end, interval.total, interval.available, interval.consumed)
            if not everything and self._published.get(interval.key) == figures:
                continue
            self._published[interval.key] = figures
            items.append(
                {
                    "cap": interval.cap_id,
                    "start": interval.start,
                    "end": interval.end,
                    "total": format_units(interval.total, self.scale),
                    "available": format_units(interval.available, self.scale),
                    "consumed": format_units(interval.consumed, self.scale),
                }
            )
        for offset in range(0, len(items), BATCH):
            self.publish("all.intervals", "intervals", {"intervals": items[offset : offset + BATCH]})

    def tick(self) -> None:
        """
        Publish changed figures, send old unanswered requests again and,
        now and then, publish everything.
        """
        now = self.clock.seconds()
        if now - self._last_full_sync >= self.full_sync_interval and self.messaging.connected:
            self._last_full_sync = now
            self.publish_caps(sorted(set(self.state.caps) | set(self.state.tombstones)))
            self.publish_intervals(everything=True)
        else:
            self.publish_intervals()
        for request in list(self.state.remote_requests):
            if now - self._sent.get(request, 0.0) < self.retry_interval:
                continue
            if self._attempts.get(request, 0) >= MAX_ATTEMPTS:
                self._abandon(request)
            else:
                self._send_request(request)
        for key in [key for key in self._published if key not in self.state.intervals]:
            del self._published[key]

    # Receiving.

    def receive(self, delivery: Delivery) -> "Deferred[Any] | None":
        """
        Apply one delivery.  The returned Deferred fires once its effect is
        durable, and L{None} means that nothing had to be written.

        @raise MalformedMessage: the message is malformed or comes from a
            data center that is not configured.
        """
        message = decode(delivery.body)
        if message.sender == self.dc:
            return None
        if message.dcs != self.dcs:
            self._mismatch(message)
        if message.sender not in self.others:
            raise MalformedMessage(f"message from unknown data center {message.sender!r}")
        if message.type == "caps":
            return self._receive_caps(message)
        if message.type == "intervals":
            for item in message.body["intervals"]:
                self._update_view(message.sender, message.seq, item)
            self.cover_deficits()
            return None
        if message.type == "topup.request":
            return self._give(message)
        return self._received(message)

    def _mismatch(self, message: Message) -> None:
        """
        Reject a message from a master configured with other data centers,
        because its shares do not add up with this one's.

        @raise MalformedMessage: always.
        """
        now = self.clock.seconds()
        if now - self._mismatch_logged.get(message.sender, -3600.0) >= 60.0:
            self._mismatch_logged[message.sender] = now
            self.log.error(
                "Data center {sender} shares caps with {theirs}, but {dc} with {ours}; "
                "start every master with the same --dcs",
                sender=message.sender,
                theirs=",".join(message.dcs),
                dc=self.dc,
                ours=",".join(self.dcs),
            )
        raise MalformedMessage(
            f"data center {message.sender!r} shares caps with {','.join(message.dcs)}, not {','.join(self.dcs)}"
        )

    def _units(self, text: str) -> int:
        negative = text.startswith("-")
        try:
            units = decimal_to_units(Decimal(text.lstrip("-")), self.scale)
        except InvalidAmountError as error:
            raise MalformedMessage(str(error)) from None
        return -units if negative else units

    def _receive_caps(self, message: Message) -> "Deferred[Any]":
        applied = []
        for entry in message.body["caps"]:
            cap = None if entry["cap"] is None else self._definition(entry["cap"])
            applied.append(self.meta.apply_remote(entry["id"], cap, entry["version"]))
        return DeferredList(applied, fireOnOneErrback=True, consumeErrors=True)

    def _definition(self, fields: dict[str, Any]) -> CapDefinition:
        if fields["interval"] not in INTERVAL_KINDS or fields["end"] <= fields["start"]:
            raise MalformedMessage(f"invalid definition of cap {fields['id']!r}")
        try:
            zone(fields["timezone"])
        except ValueError:
            raise MalformedMessage(f"invalid time zone {fields['timezone']!r}") from None
        first = fields["first_total"]
        return CapDefinition(
            id=fields["id"],
            interval=fields["interval"],
            start=fields["start"],
            end=fields["end"],
            total=self._units(fields["total"]),
            first_total=None if first is None else self._units(first),
            timezone=fields["timezone"],
        )

    def _update_view(self, dc: str, seq: int, item: dict[str, Any]) -> None:
        key = (dc, item["cap"], item["start"])
        known = self.views.get(key)
        if known is not None and known.seq >= seq:
            return
        self.views[key] = View(
            seq=seq,
            end=item["end"],
            total=self._units(item["total"]),
            available=self._units(item["available"]),
            consumed=self._units(item["consumed"]),
            updated=self.clock.seconds(),
        )

    # Requests for more, as the requester.

    def pending_for(self, interval: Interval) -> str | None:
        """
        Return the id of the unanswered request for C{interval}, if any.
        """
        for request, record in self.state.remote_requests.items():
            if (record["cap"], record["start"]) == interval.key:
                return request
        return None

    def others_exhausted(self, interval: Interval) -> bool:
        """
        Return whether, by the latest figures this data center has, no other
        data center has anything left of C{interval} and no request is open.
        """
        if self.pending_for(interval) is not None:
            return False
        for dc in self.others:
            view = self.views.get((dc, interval.cap_id, interval.start))
            if view is None or view.available > 0:
                return False
        return True

    def _donor(self, interval: Interval) -> str | None:
        """
        Return the data center with the most spare capacity by fresh
        figures, else one whose figures are stale or missing.
        """
        fresh: list[tuple[int, str]] = []
        others: list[tuple[int, str]] = []
        oldest = self.clock.seconds() - STALE_PERIODS * self.state_interval
        for dc in self.others:
            view = self.views.get((dc, interval.cap_id, interval.start))
            if view is None:
                others.append((0, dc))
            elif view.available > 0:
                (fresh if view.updated >= oldest else others).append((-view.available, dc))
        if fresh:
            return min(fresh)[1]
        return min(others)[1] if others else None

    def check(self, interval: Interval) -> None:
        """
        Ask another data center for more of C{interval} when its available
        has fallen below one top-up.
        """
        if interval.available < self.topup_units(interval) and self.pending_for(interval) is None:
            self.request_more(interval, 0)

    def request_more(self, interval: Interval, wanted: int) -> "Deferred[None]":
        """
        Request the larger of C{wanted} and two top-ups of C{interval} from
        the data center with the most spare capacity.  When a request for
        C{interval} is already open, wait for it instead of sending another.

        @return: a Deferred that fires when the grant is applied, after
            C{request_timeout} seconds, or at once when no data center can
            be asked.
        """
        request = self.pending_for(interval)
        if request is None:
            donor = self._donor(interval)
            if donor is None:
                return succeed(None)
            request = uuid.uuid4().hex
            amount = max(wanted, 2 * self.topup_units(interval))
            record: Record = {
                "type": "remote.request",
                "request": request,
                "dc": donor,
                "cap": interval.cap_id,
                "start": interval.start,
                "amount": amount,
                "version": self.state.version(interval.cap_id),
            }
            self.log.info(
                "Asking data center {donor} for {amount} of {interval} (request {request})",
                donor=donor,
                amount=format_units(amount, self.scale),
                interval=interval_name(interval.cap_id, interval.start),
                request=request,
            )
            self.ledger.commit([record]).addCallback(lambda _: self._send_request(request))
        waiter: Deferred[None] = Deferred()
        self._waiters.setdefault(request, []).append(waiter)
        waiter.addTimeout(self.request_timeout, self.clock, onTimeoutCancel=lambda result, timeout: None)
        return waiter

    def _abandon(self, request: str) -> None:
        record = self.state.remote_requests[request]
        self.log.warn(
            "Abandoning request {request} for {interval}: data center {dc} did not respond in {attempts} attempts",
            dc=record["dc"],
            request=request,
            interval=interval_name(record["cap"], record["start"]),
            attempts=self._attempts.get(request, 0),
        )
        self._sent.pop(request, None)
        self._attempts.pop(request, None)
        abandoned = {"type": "remote.received", "request": request, "cap": record["cap"], "start": record["start"], "amount": 0}
        self.ledger.commit([abandoned]).addCallback(lambda _: self._wake(request))

    def _send_request(self, request: str) -> None:
        record = self.state.remote_requests.get(request)
        if record is None:
            return
        self._sent[request] = self.clock.seconds()
        self._attempts[request] = self._attempts.get(request, 0) + 1
        body = {
            "request": request,
            "cap": record["cap"],
            "start": record["start"],
            "amount": format_units(record["amount"], self.scale),
            "version": record["version"],
        }
        self.publish(f"dc.{record['dc']}.topup", "topup.request", body)

    def _received(self, message: Message) -> "Deferred[Any] | None":
        body = message.body
        request = body["request"]
        view = self.views.get((message.sender, body["cap"], body["start"]))
        if view is not None and view.seq < message.seq:
            view.seq = message.seq
            view.available = self._units(body["available"])
            view.updated = self.clock.seconds()

        pending = self.state.remote_requests.get(request)
        if pending is None:
            return self._receive_cover(message)

        amount = self._units(body["amount"])

        record = {"type": "remote.received", "request": request, "cap": body["cap"], "start": body["start"], "amount": amount}
        self.log.info(
            "Received {amount} of {interval} from data center {dc} (request {request})",
            amount=format_units(amount, self.scale),
            interval=interval_name(body["cap"], body["start"]),
            dc=message.sender,
            request=request,
        )
        self._sent.pop(request, None)
        self._attempts.pop(request, None)
        committed = self.ledger.commit([record])
        return committed.addCallback(lambda _: self._wake(request))

    def _receive_cover(self, message: Message) -> "Deferred[Any] | None":
        """
        Apply capacity another data center moved here unasked to cover a
        deficit, once per id.
        """
        body = message.body
        interval = self.state.interval(body["cap"], body["start"])
        if not body["request"].startswith("cover-") or interval is None or body["request"] in interval.requests:
            return None
        amount = self._units(body["amount"])
        self.log.info(
            "Received {amount} of {interval} from data center {dc} to cover a deficit",
            amount=body["amount"],
            interval=interval_name(body["cap"], body["start"]),
            dc=message.sender,
        )
        record = {"type": "remote.received", "request": body["request"], "cap": body["cap"], "start": body["start"], "amount": amount}
        return self.ledger.commit([record])

    def cover_deficits(self) -> None:
        """
        Move capacity to data centers whose share fell below what they have
        consumed, after a total was lowered.

        Consumption already made remains, so such a data center serves
        nothing more, and the rest of the interval's total is no longer
        enough for the others' shares.  This data center gives up to its
        available to cover the deficit, once per figure received.

        NOTE: until the deficit's figures arrive (about one publication
        period), this data center's servers may still consume from what they
        hold, so the interval can end above its lowered total by that much.
        """
        for key, view in list(self.views.items()):
            dc, cap_id, start = key
            deficit = view.consumed - view.total
            interval = self.state.interval(cap_id, start)
            if deficit <= 0 or self._covered.get(key) == view.seq or interval is None or interval.expired:
                continue
            amount = min(deficit, interval.available)
            if amount <= 0:
                continue
            self._covered[key] = view.seq
            request = f"cover-{uuid.uuid4().hex}"
            record = {"type": "remote.give", "request": request, "dc": dc, "cap": cap_id, "start": start, "amount": amount}
            self.log.info(
                "Giving {amount} of {interval} to data center {dc} to cover its deficit",
                amount=format_units(amount, self.scale),
                interval=interval_name(cap_id, start),
                dc=dc,
            )
            body = {"request": request, "cap": cap_id, "start": start, "amount": format_units(amount, self.scale)}
            grant = {**body, "version": self.state.version(cap_id)}
            self.ledger.commit([record]).addCallback(self._publish_grant, dc, grant, interval)

    def _publish_grant(self, result: object, dc: str, body: dict[str, Any], interval: Interval) -> None:
        body["available"] = format_units(interval.available, self.scale)
        self.publish(f"dc.{dc}.topup", "topup.grant", body)

    def _wake(self, request: str) -> None:
        for waiter in self._waiters.pop(request, []):
            if not waiter.called:
                waiter.callback(None)

    # Requests for more, as the donor.

    def _give(self, message: Message) -> "Deferred[Any]":
        body = message.body
        interval = self.state.interval(body["cap"], body["start"])
        request = body["request"]
        if interval is None or interval.expired:
            return self._answer(message, 0, interval)
        if request in interval.requests:
            return self._answer(message, interval.requests[request], interval)
        wanted = self._units(body["amount"])
        amount = min(wanted, -(-max(0, interval.available) // 2))
        record = {
            "type": "remote.give",
            "request": request,
            "dc": message.sender,
            "cap": interval.cap_id,
            "start": interval.start,
            "amount": amount,
        }
        self.log.info(
            "Giving {amount} of {interval} to data center {dc} (request {request})",
            amount=format_units(amount, self.scale),
            interval=interval_name(interval.cap_id, interval.start),
            dc=message.sender,
            request=request,
        )
        return self.ledger.commit([record]).addCallback(lambda _: self._answer(message, amount, interval))

    def _answer(self, message: Message, amount: int, interval: Interval | None) -> "Deferred[None]":
        body = dict(message.body)
        body["amount"] = format_units(amount, self.scale)
        body["version"] = self.state.version(body["cap"])
        body["available"] = format_units(interval.available if interval is not None else 0, self.scale)
        return self.publish(f"dc.{message.sender}.topup", "topup.grant", body)
