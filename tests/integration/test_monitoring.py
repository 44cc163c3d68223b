"""Integration: scheduled and manual monitoring, as a user sees it in `vigil status`, the
notifications and the recovery, with the real actors of one node over the in-memory network.

The resources are dummies that count their monitors (a real type, subclassed for the
count and for a failure on demand)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from tests.support.cluster_harness import MemoryCluster, cluster_toml, wait_for
from vigil.actors.messages import Diagnose
from vigil.config import ResourceConfig, load_key, loads
from vigil.resources.dummy import DummyResource, DummyType
from vigil.resources.model import OpResult, ServiceState
from vigil.resources.registry import ResourceTypeRegistry

WAIT = 15.0
INTERVAL = 0.3  # every resource's monitor.interval here

GROUPS = f"""
[groups.web]
resources = ["web-ip", "web-app"]

[resources.web-ip]
type = "dummy"
monitor = {{ interval = "{INTERVAL}s", timeout = "2s" }}

[resources.web-app]
type = "dummy"
depends_on = ["web-ip"]
monitor = {{ interval = "{INTERVAL}s", timeout = "2s" }}
"""


class Counted(DummyResource):
    """A dummy whose monitors are counted (with their start times) and can be made to fail."""

    lock = threading.Lock()
    monitors: dict[str, list[float]] = {}
    fail_next: set[str] = set()

    def _monitor(self) -> OpResult:
        with self.lock:
            self.monitors.setdefault(self.name, []).append(time.monotonic())
            if self.name in self.fail_next:
                self.fail_next.discard(self.name)
                return OpResult.failure(ServiceState.FAILED, "broken by the test")
        return super()._monitor()


class CountedType(DummyType):
    def typename(self) -> str:
        return "dummy"

    def instantiate(self, config: ResourceConfig, node: str, runtime_dir: Path) -> Counted:
        return Counted(self, config, node, runtime_dir)


def monitors(resource: str) -> list[float]:
    with Counted.lock:
        return list(Counted.monitors.get(resource, []))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[MemoryCluster]:
    """One node, alpha, running the group web."""
    with Counted.lock:
        Counted.monitors.clear()
        Counted.fail_next.clear()
    cfg = loads(cluster_toml(tmp_path, nodes=("alpha",), groups=GROUPS),
                tmp_path / "cluster.toml")
    registry = ResourceTypeRegistry()
    registry.register(CountedType())
    mc = MemoryCluster(cfg, load_key(cfg), registry=registry)
    try:
        mc.start("alpha")
        wait_for(lambda: mc.status("alpha")["groups"]["web"]["state"] == "running", WAIT,
                 "web running on alpha")
        yield mc
    finally:
        mc.stop()
        pykka.ActorRegistry.stop_all(timeout=10)


def diagnose(mc: MemoryCluster, resource: str) -> dict[str, Any]:
    """`vigil resource diagnose RESOURCE`, as the control actor asks it."""
    ref = mc.nodes["alpha"].directory.get("diagnostics")
    assert ref is not None
    answer = ref.ask(Diagnose(resource), timeout=WAIT)
    if isinstance(answer, pykka.Future):
        answer = answer.get(timeout=WAIT)
    assert isinstance(answer, dict)
    return answer


def test_manual_diagnoses_do_not_add_scheduled_monitors(node: MemoryCluster) -> None:
    wait_for(lambda: len(monitors("web-app")) >= 2, WAIT, "scheduled monitors of web-app")
    for _ in range(4):
        answer = diagnose(node, "web-app")
        assert answer["ok"] and answer["healthy"] and answer["state"] == "IN_SERVICE", answer
    before, window = len(monitors("web-app")), 3.0
    time.sleep(window)
    ran = len(monitors("web-app")) - before
    # one per interval at most (a slow machine runs fewer); each diagnosis by hand used to
    # add a scheduled monitor of its own for good
    assert ran <= window / INTERVAL + 2, ran
