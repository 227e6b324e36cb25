"""
C{twistd volumecap-master}: options and the master's service tree.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from volumecap.amounts import MAX_SCALE
from volumecap.config import Setting, merge, nonempty, option_parameters, percent, positive_number
from volumecap.intervals import zone
from volumecap.master.admin import AdminLocator
from volumecap.master.interval import DEFAULT_RETENTION, IntervalHandler
from volumecap.master.ledger import Ledger, LedgerService
from volumecap.master.local import DEFAULT_RECALL_TIMEOUT, LocalHandler
from volumecap.master.meta import MetaHandler
from volumecap.master.protocol import MasterFactory
from volumecap.store import DATABASE_NAME, Journal, StoreMismatchError


def _timezone(text: str) -> str:
    return zone(text).key


def _scale(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SCALE:
        raise ValueError(f"expected decimal places from 0 to {MAX_SCALE}, not {text!r}")
    return value


def _seconds(text: str) -> float:
    return positive_number(text)


SETTINGS = [
    Setting("dc", "dc1", nonempty, "Name of this data center."),
    Setting("listen", "tcp:7100:interface=127.0.0.1", nonempty, "Endpoint for servers and the volumecap command."),
    Setting("data_dir", "./run/master", nonempty, "Directory of the master's SQLite database."),
    Setting("timezone", "UTC", _timezone, "Default IANA time zone of caps defined without one."),
    Setting("scale", 2, _scale, "Decimal places of amounts; fixed once the data directory exists."),
    Setting("topup_percent", 10, percent, "A top-up is this per cent of an interval's share."),
    Setting("threshold_percent", 10, percent, "Servers top up when a holding falls to this per cent of a top-up."),
    Setting("recall_timeout", DEFAULT_RECALL_TIMEOUT, _seconds, "Seconds a top-up waits for amounts recalled from other servers."),
    Setting("retention", float(DEFAULT_RETENTION), _seconds, "Seconds expired intervals stay queryable."),
]


class Options(usage.Options):
    """
    Options of C{twistd volumecap-master}; see C{conf/master.toml}.
    """

    optParameters = option_parameters(SETTINGS)

    def postOptions(self) -> None:
        self.settings = merge(self, SETTINGS)


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the master's service tree.

    Children start in this order and stop in reverse: the ledger (journal
    writer), the meta, interval and local handlers, then the listener, so
    nothing is accepted before the state is loaded and the journal is closed
    only after the listener and handlers have stopped.
    """
    if reactor is None:
        from twisted.internet import reactor
    settings = options.settings
    journal = Journal(os.path.join(settings["data_dir"], DATABASE_NAME))
    try:
        state = journal.open(settings["dc"], settings["scale"])
    except StoreMismatchError as error:
        raise usage.UsageError(str(error))
    ledger = Ledger(state, journal, settings["scale"])

    intervals = IntervalHandler(ledger, reactor, retention=settings["retention"])
    meta = MetaHandler(ledger, intervals, reactor, settings["timezone"])
    local = LocalHandler(
        ledger,
        reactor,
        topup_percent=settings["topup_percent"],
        threshold_percent=settings["threshold_percent"],
        recall_timeout=settings["recall_timeout"],
    )
    admin = AdminLocator(meta, local, reactor.seconds(), role=lambda: "primary")

    top = MultiService()
    LedgerService(ledger, reactor).setServiceParent(top)
    meta.setServiceParent(top)
    intervals.setServiceParent(top)
    local.setServiceParent(top)
    listener = StreamServerEndpointService(
        serverFromString(reactor, settings["listen"]), MasterFactory(local, admin)
    )
    listener.setName("listener")
    listener.setServiceParent(top)
    return top
