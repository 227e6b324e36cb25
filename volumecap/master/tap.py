"""
C{twistd volumecap-master}: options and the master's service tree.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage
from txamqp.spec import load as load_spec  # type: ignore[import-untyped]

from volumecap.amounts import MAX_SCALE
from volumecap.config import Setting, merge, nonempty, option_parameters, percent, positive_number
from volumecap.intervals import zone
from volumecap.master.admin import AdminLocator
from volumecap.master.interval import DEFAULT_RETENTION, IntervalHandler
from volumecap.master.ledger import Ledger, LedgerService
from volumecap.master.local import DEFAULT_RECALL_TIMEOUT, LocalHandler
from volumecap.master.meta import MetaHandler
from volumecap.amqp import DEFAULT_SPEC_PATH, AMQPMessaging, parse_amqp_url
from volumecap.master.protocol import MasterFactory
from volumecap.master.remote import RemoteHandler
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


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


def _dc_name(text: str) -> str:
    if not _NAME.fullmatch(text):
        raise ValueError(
            f"invalid data center name {text!r}: use letters, digits, '-' and '_', "
            f"starting with a letter or digit, at most 63 characters"
        )
    return text


def _dc_names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        _dc_name(name)
    if len(set(names)) != len(names):
        raise ValueError(f"data center names repeat in {text!r}")
    return names


SETTINGS = [
    Setting("dc", "dc1", _dc_name, "Name of this data center."),
    Setting("dcs", (), _dc_names, "Comma-separated names of all data centers sharing the caps, this one included; empty for one alone."),
    Setting("amqp", "amqp://guest@127.0.0.1:5672/", nonempty, "RabbitMQ URL amqp://user[:password]@host:port/vhost; the password may come from $VOLUMECAP_AMQP_PASSWORD."),
    Setting("amqp_spec", DEFAULT_SPEC_PATH, nonempty, "AMQP 0-9-1 specification file for txAMQP (Debian package amqp-specs)."),
    Setting("amqp_exchange", "volumecap", _dc_name, "Name of the RabbitMQ exchange; queues are named after it."),
    Setting("listen", "tcp:7100:interface=127.0.0.1", nonempty, "Endpoint for servers and the volumecap command."),
    Setting("data_dir", "./run/master", nonempty, "Directory of the master's SQLite database."),
    Setting("timezone", "UTC", _timezone, "Default IANA time zone of caps defined without one."),
    Setting("scale", 2, _scale, "Decimal places of amounts; fixed once the data directory exists."),
    Setting("topup_percent", 10, percent, "A top-up is this per cent of an interval's share."),
    Setting("threshold_percent", 10, percent, "Servers top up when a holding falls to this per cent of a top-up."),
    Setting("recall_timeout", DEFAULT_RECALL_TIMEOUT, _seconds, "Seconds a top-up waits for amounts recalled from other servers."),
    Setting("retention", float(DEFAULT_RETENTION), _seconds, "Seconds expired intervals stay queryable."),
]


def _check_spec(path: str) -> None:
    """
    Check that C{path} is an AMQP specification file txAMQP can read.

    @raise usage.UsageError: it is missing, not a file, or not a valid
        specification.
    """
    hint = (
        "install Debian's amqp-specs package (apt-get install amqp-specs) or name "
        "a copy of amqp0-9-1.stripped.extended.xml"
    )
    if not os.path.exists(path):
        raise usage.UsageError(f"--amqp-spec {path}: file not found; {hint}")
    if not os.path.isfile(path):
        raise usage.UsageError(f"--amqp-spec {path}: not a file; {hint}")
    try:
        load_spec(path)
    except Exception as error:
        raise usage.UsageError(f"--amqp-spec {path}: not a valid AMQP specification ({error}); {hint}") from None


class Options(usage.Options):
    """
    Options of C{twistd volumecap-master}; see C{conf/master.toml}.
    """

    optParameters = option_parameters(SETTINGS)

    def postOptions(self) -> None:
        self.settings = merge(self, SETTINGS)
        dcs = self.settings["dcs"]
        if dcs and self.settings["dc"] not in dcs:
            raise usage.UsageError(
                f"--dcs {','.join(dcs)} does not include this data center {self.settings['dc']!r}; add it"
            )
        if len(dcs) > 1:
            try:
                parse_amqp_url(self.settings["amqp"], os.environ)
            except ValueError as error:
                raise usage.UsageError(f"invalid --amqp: {error}") from None
            _check_spec(self.settings["amqp_spec"])


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the master's service tree.

    Children start in this order and stop in reverse: the ledger (journal
    writer), the meta, interval and local handlers, the remote handler and
    its broker connection when there are several data centers, then the
    listener.  So nothing is accepted before the state is loaded, and the
    journal is closed only after everything else has stopped.
    """
    if reactor is None:
        from twisted.internet import reactor
    settings = options.settings
    journal = Journal(os.path.join(settings["data_dir"], DATABASE_NAME))
    try:
        state = journal.open(settings["dc"], settings["scale"])
    except StoreMismatchError as error:
        raise usage.UsageError(str(error)) from None
    ledger = Ledger(state, journal, settings["scale"])

    intervals = IntervalHandler(ledger, reactor, dcs=settings["dcs"], retention=settings["retention"])
    meta = MetaHandler(ledger, intervals, reactor, settings["timezone"])
    local = LocalHandler(
        ledger,
        reactor,
        topup_percent=settings["topup_percent"],
        threshold_percent=settings["threshold_percent"],
        recall_timeout=settings["recall_timeout"],
    )
    remote, messaging = _remote(settings, ledger, meta, local, reactor)
    admin = AdminLocator(meta, local, reactor.seconds(), role=lambda: "primary", remote=remote)

    top = MultiService()
    LedgerService(ledger, reactor).setServiceParent(top)
    meta.setServiceParent(top)
    intervals.setServiceParent(top)
    local.setServiceParent(top)
    # The remote handler registers for deliveries before the broker
    # connection starts, and the connection stops first.
    if remote is not None and messaging is not None:
        remote.setServiceParent(top)
        messaging.setServiceParent(top)
    listener = StreamServerEndpointService(
        serverFromString(reactor, settings["listen"]), MasterFactory(local, admin)
    )
    listener.setName("listener")
    listener.setServiceParent(top)
    return top


def _remote(
    settings: dict[str, Any], ledger: Ledger, meta: MetaHandler, local: LocalHandler, reactor: Any
) -> tuple[RemoteHandler | None, AMQPMessaging | None]:
    """
    Build the remote handler and its broker connection, when this data
    center shares caps with others.
    """
    if len(settings["dcs"]) < 2:
        return None, None
    try:
        messaging = AMQPMessaging(
            reactor,
            settings["amqp"],
            settings["dc"],
            exchange=settings["amqp_exchange"],
            spec_path=settings["amqp_spec"],
        )
    except (OSError, ValueError) as error:
        raise usage.UsageError(str(error)) from None
    remote = RemoteHandler(ledger, meta, messaging, reactor, settings["dcs"], local.topup_units)
    local.remote = remote
    return remote, messaging
