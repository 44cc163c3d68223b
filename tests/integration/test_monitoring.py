"""Integration: scheduled and manual monitoring, as a user sees it in `vigil status`, the
notifications and the recovery, with the real actors of one node over the in-memory network.

The resources are dummies that count their monitors (a real type, subclassed for the
count and for a failure on demand)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from tests.support.cluster_harness import MemoryCluster, cluster_toml, wait_for
from vigil.actors.coordinator import CoordinatorActor
from vigil.actors.messages import Diagnose, ResourceState
from vigil.config import ResourceConfig, load_key, loads
from vigil.notifications import Notification, ResourceStateChanged
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
    held: dict[str, threading.Event] = {}  # resource -> its monitors wait for this

    def _monitor(self) -> OpResult:
        with self.lock:
            self.monitors.setdefault(self.name, []).append(time.monotonic())
            gate = self.held.get(self.name)
            if self.name in self.fail_next:
                self.fail_next.discard(self.name)
                return OpResult.failure(ServiceState.FAILED, "broken by the test")
        if gate is not None:
            gate.wait(WAIT)
            return OpResult.failure(ServiceState.FAILED, "held by the test")
        return super()._monitor()


class CountedType(DummyType):
    def typename(self) -> str:
        return "dummy"

    def instantiate(self, config: ResourceConfig, node: str, runtime_dir: Path) -> Counted:
        return Counted(self, config, node, runtime_dir)


def monitors(resource: str) -> list[float]:
    with Counted.lock:
        return list(Counted.monitors.get(resource, []))


def counted_node(tmp_path: Path, groups: str) -> MemoryCluster:
    """One node, alpha, of counted resources (not started), the counts cleared."""
    with Counted.lock:
        Counted.monitors.clear()
        Counted.fail_next.clear()
        Counted.held.clear()
    cfg = loads(cluster_toml(tmp_path, nodes=("alpha",), groups=groups),
                tmp_path / "cluster.toml")
    registry = ResourceTypeRegistry()
    registry.register(CountedType())
    return MemoryCluster(cfg, load_key(cfg), registry=registry)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[MemoryCluster]:
    """One node, alpha, running the group web."""
    mc = counted_node(tmp_path, GROUPS)
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


def coordinator(mc: MemoryCluster) -> CoordinatorActor:
    # the object (the one whose short path the directory holds), to watch what it is told
    take = wait_for(lambda: mc.nodes["alpha"].directory._direct.get("coordinator"), WAIT,
                    "alpha's coordinator")
    actor = take.__self__
    assert isinstance(actor, CoordinatorActor)
    return actor


def told(actor: CoordinatorActor) -> list[ResourceState]:
    """The resource reports the coordinator handles from now on."""
    seen: list[ResourceState] = []
    record = actor._resource_state

    def watched(m: ResourceState) -> None:
        seen.append(m)
        record(m)

    actor._resource_state = watched  # type: ignore[method-assign]
    return seen


def diagnostic(mc: MemoryCluster, resource: str) -> dict[str, Any] | None:
    diag = mc.status("alpha")["resources"][resource]["last_diagnostic"]
    assert diag is None or isinstance(diag, dict)
    return diag


def test_status_shows_every_monitor_though_the_coordinator_hears_only_of_changes(
        node: MemoryCluster) -> None:
    seen = told(coordinator(node))
    wait_for(lambda: len(monitors("web-app")) >= 2, WAIT, "two monitors of web-app")
    first = diagnostic(node, "web-app")
    assert first is not None
    assert (first["ok"], first["op"], first["state"], first["reason"]) == (
        True, "monitor", "IN_SERVICE", "running")
    assert node.status("alpha")["resources"]["web-app"]["state"] == "IN_SERVICE"
    # each monitor's time shows, later and later
    later = wait_for(lambda: (d := diagnostic(node, "web-app")) and d["at"] > first["at"]
                     and d, WAIT, "a later diagnostic of web-app")
    assert (later["ok"], later["state"], later["reason"]) == (True, "IN_SERVICE", "running")
    ran = len(monitors("web-app")) + len(monitors("web-ip"))
    assert ran >= 4
    # a monitor that found what the last report said wakes no one: the one after the
    # start's report ("started ...", another reason) is told, and no more
    assert len([m for m in seen if m.op == "monitor"]) <= 2, seen
    st = node.status("alpha")
    assert st["resources"]["web-app"]["last_failure"] is None
    assert st["resources"]["web-app"]["fail_count"] == 0


def test_a_failed_monitor_among_quiet_ones_is_reported_and_recovered_as_before(
        node: MemoryCluster) -> None:
    notes: list[Notification] = []
    lock = threading.Lock()

    class Listener(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> None:
            if isinstance(message, Notification):
                with lock:
                    notes.append(message)

    listener = Listener.start()
    try:
        node.nodes["alpha"].subscribe(listener)
        seen = told(coordinator(node))
        wait_for(lambda: len(monitors("web-app")) >= 3, WAIT, "quiet monitors of web-app")
        starts = len(monitors("web-app"))
        with Counted.lock:
            Counted.fail_next.add("web-app")
        # recovered in place: the failure reported, web-app restarted, monitored again
        wait_for(lambda: node.status("alpha")["resources"]["web-app"]["fail_count"] == 1
                 and node.status("alpha")["groups"]["web"]["state"] == "running"
                 and (d := diagnostic(node, "web-app")) is not None and d["ok"]
                 and len(monitors("web-app")) > starts + 1, WAIT,
                 "web-app failed, restarted and monitored healthy")
        st = node.status("alpha")
        failure = st["resources"]["web-app"]["last_failure"]
        assert (failure["ok"], failure["op"], failure["state"], failure["reason"]) == (
            False, "monitor", "FAILED", "broken by the test")
        assert st["fail_counts"] == {"web": 1}
        assert st["resources"]["web-app"]["state"] == "IN_SERVICE"
        assert st["resources"]["web-ip"]["fail_count"] == 0
        # the coordinator heard the failure, and the states that followed, in order
        states = [(m.op, m.state) for m in seen if m.resource == "web-app"]
        assert ("monitor", "FAILED") in states
        after = states[states.index(("monitor", "FAILED")):]
        assert [s for s in after if s[0] != "monitor"][:2] == [
            ("stop", "OOS"), ("start", "IN_SERVICE")], states
        # and so did subscribers: FAILED, then out of service, then in service again
        with lock:
            changes = [n.state for n in notes if isinstance(n, ResourceStateChanged)
                       and n.resource == "web-app"]
        assert changes[:3] == ["FAILED", "OOS", "IN_SERVICE"], changes
    finally:
        listener.stop()


def test_a_monitor_that_returns_after_its_actor_stopped_reports_nothing(
        node: MemoryCluster) -> None:
    rt = node.nodes["alpha"]
    wait_for(lambda: diagnostic(node, "web-ip") is not None, WAIT, "web-ip monitored")
    gate = threading.Event()
    with Counted.lock:
        Counted.held["web-ip"] = gate
        before = len(Counted.monitors["web-ip"])
    wait_for(lambda: len(monitors("web-ip")) > before, WAIT, "a monitor of web-ip held")
    last = diagnostic(node, "web-ip")
    ref = rt.directory.get("resource:web-ip")
    assert ref is not None
    ref.stop(timeout=WAIT)
    gate.set()  # the held monitor returns (a failure) to a worker whose actor is gone
    time.sleep(3 * INTERVAL)
    # nothing of it reached the status, nothing else went wrong
    st = node.status("alpha")
    assert st["resources"]["web-ip"]["last_diagnostic"] == last
    assert st["resources"]["web-ip"]["last_failure"] is None
    assert st["resources"]["web-ip"]["state"] == "IN_SERVICE"
    assert rt.directory.get("coordinator") is not None
    assert st["groups"]["web"]["state"] == "running"
    assert (d := diagnostic(node, "web-app")) is not None and d["ok"]


STEP = 3.0  # the monitor.interval of the test below: its monitors may run 0.3 s early

TWO_GROUPS = f"""
[groups.quick]
resources = ["quick-app"]

[groups.slow]
resources = ["slow-app"]

[resources.quick-app]
type = "dummy"
monitor = {{ interval = "{STEP}s", timeout = "2s" }}

[resources.slow-app]
type = "dummy"
params = {{ start_delay = "0.2s" }}
monitor = {{ interval = "{STEP}s", timeout = "2s" }}
"""


def test_monitors_that_may_run_early_never_run_more_often_than_their_slack_allows(
        tmp_path: Path) -> None:
    """slow-app comes into service 0.2 s after quick-app: its monitors may run up to 0.3 s
    early, with quick-app's, but one never follows the last sooner than that allows (that
    they fall into step is checked without a clock in tests/unit/test_monitor_schedule.py:
    here it would be a wall-clock assertion)."""
    mc = counted_node(tmp_path, TWO_GROUPS)
    try:
        mc.start("alpha")
        wait_for(lambda: all(g["state"] == "running"
                             for g in mc.status("alpha")["groups"].values()), WAIT,
                 "both groups running")
        probes = {r: len(monitors(r)) for r in ("quick-app", "slow-app")}  # the start's
        wait_for(lambda: all(len(monitors(r)) >= probes[r] + 2 for r in probes), 4 * STEP,
                 "two scheduled monitors of each")
        quick, slow = (monitors(r)[probes[r]:] for r in ("quick-app", "slow-app"))
        # never earlier than its slack allows (the interval counts from the last one's end)
        for times in (quick, slow):
            assert all(b - a >= STEP - 0.3 for a, b in itertools.pairwise(times)), times
    finally:
        mc.stop()
        pykka.ActorRegistry.stop_all(timeout=10)
