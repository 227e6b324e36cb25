"""
Shared fixtures: an in-process data center on a L{Clock}.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from twisted.internet.task import Clock

from tests.harness import START, MasterRig, Network


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(START)
    return clock


@pytest.fixture
def network() -> Network:
    return Network()


@pytest.fixture
def master(tmp_path: object, clock: Clock, network: Network) -> Iterator[MasterRig]:
    rig = MasterRig(str(tmp_path), clock, network)
    yield rig
    rig.service.stopService()
