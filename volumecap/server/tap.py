"""
C{twistd volumecap-server}: options and the server's service tree.
"""

from __future__ import annotations

import gc
import os
import socket
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.lockfile import FilesystemLock

from volumecap.config import Setting, merge, nonempty, option_parameters, positive_number
from volumecap.server.protocol import ApplicationFactory
from volumecap.server.service import (
    DEFAULT_CAPPED_BACKOFF,
    DEFAULT_PREFETCH,
    DEFAULT_REPORT_INTERVAL,
    DEFAULT_TOPUP_WAIT,
    VolumecapServer,
)

SETTINGS = [
    Setting("master", "tcp:127.0.0.1:7100", nonempty, "Client endpoint of the master."),
    Setting("listen", "tcp:7200:interface=127.0.0.1", nonempty, "Endpoint for applications."),
    Setting("name", "", str, "Server name, unique in the data center; empty means host name and listen port."),
    Setting("state_dir", "./run/server", nonempty, "Directory of this server's state and lock file."),
    Setting("topup_wait", DEFAULT_TOPUP_WAIT, positive_number, "Seconds a consume beyond the holding waits for a top-up."),
    Setting("report_interval", DEFAULT_REPORT_INTERVAL, positive_number, "Seconds between consumption reports."),
    Setting("prefetch", DEFAULT_PREFETCH, positive_number, "Seconds before an interval ends to fetch the next one."),
    Setting("capped_backoff", DEFAULT_CAPPED_BACKOFF, positive_number, "Seconds a consume beyond the holding fails as capped, without asking the master, after it reported the interval exhausted."),
]


class Options(usage.Options):
    """
    Options of C{twistd volumecap-server}; see C{conf/server.toml}.
    """

    optParameters = option_parameters(SETTINGS)

    def postOptions(self) -> None:
        self.settings = merge(self, SETTINGS)
        if not self.settings["name"]:
            port = self.settings["listen"].split(":")[1] if ":" in self.settings["listen"] else "0"
            self.settings["name"] = f"{socket.gethostname()}-{port}"


class StateDirectoryLock(Service):
    """
    Holds a lock file in the state directory, so two servers never share it.
    """

    log = Logger()

    def __init__(self, directory: str) -> None:
        self.name = "state-lock"
        self.lock = FilesystemLock(os.path.join(directory, "lock"))

    def startService(self) -> None:
        super().startService()
        if not self.lock.lock():
            from twisted.internet import reactor

            self.log.critical("State directory {path} is in use by another server; stopping", path=self.lock.name)
            reactor.stop()

    def stopService(self) -> None:
        super().stopService()
        if self.lock.locked:
            self.lock.unlock()


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the server's service tree.

    Children start in this order and stop in reverse: the state directory
    lock, the server core (with its master link), then the listener for
    applications.  So on stop, applications are cut off first, then the core
    returns its holdings while the master link is still up.
    """
    if reactor is None:
        from twisted.internet import reactor
    settings = options.settings
    os.makedirs(settings["state_dir"], exist_ok=True)
    # NOTE: holdings live in memory only, so a server killed with kill -9
    # loses them; the master writes them off when it joins again.
    top = MultiService()
    StateDirectoryLock(settings["state_dir"]).setServiceParent(top)
    server = VolumecapServer(
        settings["name"],
        clientFromString(reactor, settings["master"]),
        reactor,
        topup_wait=settings["topup_wait"],
        report_interval=settings["report_interval"],
        prefetch=settings["prefetch"],
        capped_backoff=settings["capped_backoff"],
    )
    server.setServiceParent(top)
    listener = StreamServerEndpointService(serverFromString(reactor, settings["listen"]), ApplicationFactory(server))
    listener.setName("listener")
    listener.setServiceParent(top)
    # The objects made at start-up live as long as the process.  Keeping them
    # out of later garbage collections shortens the pauses that stall every
    # consume: a full collection took 28 to 44 ms in a process that had
    # imported the server (see BENCHMARKS.md).
    reactor.callWhenRunning(gc.freeze)
    return top
