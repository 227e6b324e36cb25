"""
Responders for the C{volumecap} command: cap definitions, reports and the
master's status.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.protocols import amp

import volumecap
from volumecap.amounts import format_units
from volumecap.errors import UnknownCapError
from volumecap.intervals import describe_cap, format_instant, parse_when, plan
from volumecap.master.local import LocalHandler, format_time
from volumecap.master.meta import MetaHandler
from volumecap.master.remote import RemoteHandler, View
from volumecap.master.state import Interval
from volumecap.wire import admincommands

# Maximum number of intervals in one PlanCap response.
PLAN_LIMIT = 400


def _fields(**arguments: Any) -> dict[str, Any]:
    return {key: value for key, value in arguments.items() if value is not None}


class AdminLocator(amp.CommandLocator):
    """
    Responders for L{volumecap.wire.admincommands}.

    @param role: a callable that returns the master's current role, such as
        C{primary}.
    """

    def __init__(
        self,
        meta: MetaHandler,
        local: LocalHandler,
        started: float,
        role: Callable[[], str],
        remote: RemoteHandler | None = None,
    ) -> None:
        self.meta = meta
        self.local = local
        self.started = started
        self.role = role
        self.remote = remote

    @property
    def state(self) -> Any:
        return self.meta.ledger.state

    @property
    def scale(self) -> int:
        return self.meta.ledger.scale

    @admincommands.SetCap.responder
    def set_cap(self, **fields: Any) -> "Deferred[dict[str, str]]":
        return self.meta.set_cap(_fields(**fields)).addCallback(lambda outcome: {"outcome": outcome})

    @admincommands.CheckCap.responder
    def check_cap(self, **fields: Any) -> dict[str, str]:
        return {"outcome": self.meta.check(_fields(**fields))[1]}

    @admincommands.DeleteCap.responder
    def delete_cap(self, id: str) -> "Deferred[dict[str, Any]]":
        return self.meta.delete_cap(id).addCallback(lambda _: {})

    @admincommands.ListCaps.responder
    def list_caps(self, after: str) -> dict[str, Any]:
        ids = sorted(cap_id for cap_id in self.state.caps if cap_id > after)
        page = ids[: admincommands.LIST_PAGE]
        caps = [self._definition(cap_id) for cap_id in page]
        return {"caps": caps, "more": len(ids) > len(page)}

    def _definition(self, cap_id: str) -> dict[str, Any]:
        cap = self.state.caps.get(cap_id)
        if cap is None:
            raise UnknownCapError(f"cap {cap_id!r} not found")
        return {key: value for key, value in describe_cap(cap, self.scale).items() if value is not None}

    @admincommands.ShowCap.responder
    def show_cap(self, id: str) -> dict[str, Any]:
        result = self._definition(id)
        intervals = [self._interval(i) for i in self.state.intervals_of(id)]
        if self.remote is not None:
            intervals += [
                self._view(dc, start, view)
                for (dc, cap_id, start), view in sorted(self.remote.views.items())
                if cap_id == id and view.end > self.meta.clock.seconds() - self.meta.intervals.retention
            ]
        result["intervals"] = sorted(intervals, key=lambda item: (item["start"], item["dc"]))
        return result

    def _view(self, dc: str, start: int, view: View) -> dict[str, Any]:
        return {
            "dc": dc,
            "start": format_instant(start),
            "end": format_instant(view.end),
            "total": format_units(view.total, self.scale),
            "available": format_units(view.available, self.scale),
            "consumed": format_units(view.consumed, self.scale),
            "state": "remote",
            "updated": format_time(view.updated),
            "servers": [],
        }

    def _interval(self, interval: Interval) -> dict[str, Any]:
        units = self.scale
        return {
            "dc": interval.dc,
            "start": format_instant(interval.start),
            "end": format_instant(interval.end),
            "total": format_units(interval.total, units),
            "available": format_units(interval.available, units),
            "consumed": format_units(interval.consumed, units),
            "state": "expired" if interval.expired else "live",
            "servers": [
                {
                    "name": name,
                    "available": format_units(holding.available, units),
                    "consumed": format_units(holding.consumed, units),
                }
                for name, holding in sorted(interval.holdings.items())
            ],
        }

    @admincommands.PlanCap.responder
    def plan_cap(self, id: str, until: str) -> dict[str, Any]:
        cap = self.state.caps.get(id)
        if cap is None:
            raise UnknownCapError(f"cap {id!r} not found")
        spans = plan(cap, parse_when(until, cap.timezone), limit=PLAN_LIMIT + 1)
        return {
            "intervals": [
                {
                    "start": format_instant(span.start),
                    "end": format_instant(span.end),
                    "total": format_units(span.total, self.scale),
                }
                for span in spans[:PLAN_LIMIT]
            ],
            "truncated": len(spans) > PLAN_LIMIT,
        }

    def _broker(self) -> str:
        if self.remote is None:
            return "none"
        return "connected" if self.remote.messaging.connected else "disconnected"

    @admincommands.Status.responder
    def status(self) -> dict[str, Any]:
        state = self.state
        servers = []
        for joined in sorted(self.local.servers.values(), key=lambda j: j.name):
            held = sum(
                1 for i in state.live_intervals() if joined.name in i.holdings and i.holdings[joined.name].available > 0
            )
            servers.append(
                {"name": joined.name, "peer": joined.peer, "joined": format_time(joined.joined), "holdings": held}
            )
        return {
            "dc": state.dc,
            "role": self.role(),
            "version": volumecap.__version__,
            "started": format_time(self.started),
            "scale": self.scale,
            "timezone": self.meta.default_timezone,
            "caps": len(state.caps),
            "intervals": sum(1 for _ in state.live_intervals()),
            "journal": state.seq,
            "dcs": ",".join(self.meta.intervals.dcs),
            "broker": self._broker(),
            "servers": servers,
        }
