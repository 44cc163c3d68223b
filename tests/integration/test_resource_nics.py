"""A resource actor told of NIC changes (NicsDown): the resource's nics_changed runs on the
worker pool, one at a time, the latest waiting set applied next and the stale ones dropped; a
move is reported to the coordinator, and a failed one makes diagnostics monitor the resource at
once.

The resource is a real one (the dummy, with a nics_changed that the test can hold); the
diagnostics actor is the real one; the coordinator's place is taken by an actor that keeps what
it is told (the real one needs a whole node).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pykka
import pytest

from tests.support.cluster_harness import cluster_toml, wait_for
from vigil.actors.base import Directory
from vigil.actors.diagnostics import DiagnosticsActor
from vigil.actors.messages import NicsDown, ResourceState
from vigil.actors.resource import ResourceActor
from vigil.config import ClusterConfig, loads
from vigil.resources.dummy import DummyResource, DummyType
from vigil.resources.model import OpResult, Resource, ServiceState

WAIT = 10.0

GROUPS = """
[groups.web]
resources = ["vip"]

[resources.vip]
type = "dummy"
monitor = { interval = "0s", timeout = "5s" }
"""


class Follower(DummyResource):
    """A dummy that follows NICs as the test says: its first nics_changed waits for ``gate``;
    a set with "eth9" cannot be followed (a failure), an empty one needs nothing (None)."""

    def __init__(self, config: ClusterConfig, runtime_dir: Path) -> None:
        super().__init__(DummyType(), config.resources["vip"], "alpha", runtime_dir)
        self.lock = threading.Lock()
        self.calls: list[frozenset[str]] = []
        self.monitors = 0
        self.entered = threading.Event()
        self.gate = threading.Event()

    def nics_changed(self, down: frozenset[str]) -> OpResult | None:
        with self.lock:
            self.calls.append(down)
        self.entered.set()
        self.gate.wait(WAIT)
        if "eth9" in down:
            return OpResult.failure(ServiceState.FAILED, "no NIC can carry it: eth9 is down")
        if not down:
            return None
        return OpResult.success(ServiceState.IN_SERVICE, f"moved off {', '.join(sorted(down))}")

    def _monitor(self) -> OpResult:
        with self.lock:
            self.monitors += 1
        return super()._monitor()


class Keeper(pykka.ThreadingActor):
    """In the coordinator's place: keeps every message."""

    def __init__(self, kept: list[Any], lock: threading.Lock) -> None:
        super().__init__()
        self.kept = kept
        self.lock = lock

    def on_receive(self, message: Any) -> Any:
        with self.lock:
            self.kept.append(message)
        return None


class Node:
    """One node's resource actor, its diagnostics and a keeper as its coordinator."""

    def __init__(self, tmp: Path, resource: Resource, config: ClusterConfig) -> None:
        self.kept: list[Any] = []
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=4)
        self.directory = Directory()
        d = self.directory
        d.set("coordinator", Keeper.start(self.kept, self.lock))
        d.set("diagnostics", DiagnosticsActor.start("diagnostics", d, config))
        d.set("resource:vip", ResourceActor.start("resource:vip", d, resource, self.executor))

    def states(self, op: str) -> list[ResourceState]:
        with self.lock:
            return [m for m in self.kept if isinstance(m, ResourceState) and m.op == op]

    def tell(self, down: set[str]) -> None:
        assert self.directory.tell("resource:vip", NicsDown(frozenset(down)))

    def stop(self) -> None:
        self.directory.stop_all()
        self.executor.shutdown(wait=True)


@pytest.fixture
def config(tmp_path: Path) -> ClusterConfig:
    return loads(cluster_toml(tmp_path, groups=GROUPS), tmp_path / "cluster.toml")


@pytest.fixture
def stopped_after() -> Iterator[list[Node]]:
    nodes: list[Node] = []
    yield nodes
    for node in nodes:
        node.stop()
    pykka.ActorRegistry.stop_all(timeout=10)


def test_sets_that_arrive_during_a_move_are_coalesced_to_the_latest(
        tmp_path: Path, config: ClusterConfig, stopped_after: list[Node]) -> None:
    resource = Follower(config, tmp_path / "run")
    assert resource.in_service().ok
    node = Node(tmp_path, resource, config)
    stopped_after.append(node)

    node.tell({"eth0"})
    assert resource.entered.wait(WAIT)
    for down in ({"eth0", "eth1"}, {"eth1"}, {"eth0"}):  # stale before they could be applied
        node.tell(down)
    node.tell({"eth1", "eth2"})
    resource.gate.set()
    moves = wait_for(lambda: node.states("move") if len(node.states("move")) == 2 else None,
                     WAIT, "two moves reported")
    assert resource.calls == [frozenset({"eth0"}), frozenset({"eth1", "eth2"})]
    assert [(m.ok, m.state, m.reason) for m in moves] == [
        (True, "IN_SERVICE", "moved off eth0"), (True, "IN_SERVICE", "moved off eth1, eth2")]
    assert all(m.resource == "vip" and m.group == "web" for m in moves)

    node.tell(set())  # nothing to do: nothing reported
    wait_for(lambda: len(resource.calls) == 3, WAIT, "the third call")
    node.tell({"eth3"})
    wait_for(lambda: len(node.states("move")) == 3, WAIT, "the third move")
    assert resource.calls[2:] == [frozenset(), frozenset({"eth3"})]
    assert resource.monitors == 0  # a move that worked asks for no monitor


def test_a_move_that_fails_makes_diagnostics_monitor_the_resource_at_once(
        tmp_path: Path, config: ClusterConfig, stopped_after: list[Node]) -> None:
    resource = Follower(config, tmp_path / "run")
    resource.gate.set()
    assert resource.in_service().ok
    node = Node(tmp_path, resource, config)
    stopped_after.append(node)

    node.tell({"eth0", "eth9"})
    failed = wait_for(lambda: node.states("move"), WAIT, "the failed move")
    assert [(m.ok, m.state, m.reason) for m in failed] == [
        (False, "FAILED", "no NIC can carry it: eth9 is down")]
    monitored = wait_for(lambda: node.states("monitor"), WAIT,
                         "the monitor diagnostics runs at once (scheduled ones are off)")
    assert resource.monitors == 1 and monitored[0].state == "IN_SERVICE"


def test_a_resource_that_cannot_follow_nics_ignores_them(
        tmp_path: Path, config: ClusterConfig, stopped_after: list[Node]) -> None:
    resource = DummyType().instantiate(config.resources["vip"], "alpha", tmp_path / "run")
    assert not hasattr(resource, "nics_changed")
    node = Node(tmp_path, resource, config)
    stopped_after.append(node)
    node.tell({"eth0"})
    ref = node.directory.get("resource:vip")
    assert ref is not None
    ref.ask(NicsDown(frozenset()), timeout=WAIT)  # answered after the first was handled
    assert ref.is_alive() and node.states("move") == []


def test_a_nic_monitor_started_again_asks_the_kernel_at_once(
        stopped_after: list[Node]) -> None:
    """The netlink watch tells changes only: a NIC monitor actor that the node starts again
    after a failure (no event coming) still says what its NIC is, from one query of its own.
    The loopback interface is up in every namespace."""
    from vigil.actors.messages import ChildRestarted
    from vigil.actors.nic import NicMonitorActor
    from vigil.cluster.events import NicChanged
    from vigil.cluster.nics import Dampening

    kept: list[Any] = []
    lock = threading.Lock()
    d = Directory()
    d.set("coordinator", Keeper.start(kept, lock))
    d.set("nic:lo", NicMonitorActor.start("nic:lo", d, "lo", Dampening()))
    d.set("nic:nothere0", NicMonitorActor.start("nic:nothere0", d, "nothere0", Dampening()))

    def said() -> dict[str, NicChanged] | None:
        with lock:
            seen = {m.nic: m for m in kept if isinstance(m, NicChanged)}
        return seen if len(seen) == 2 else None

    seen = wait_for(said, WAIT, "both monitors reporting")
    assert seen["lo"].up and seen["lo"].reason == "usable"
    assert not seen["nothere0"].up and seen["nothere0"].reason == "no such interface"
    # a coordinator started again hears from every monitor what it believes
    with lock:
        kept.clear()
    for name in ("nic:lo", "nic:nothere0"):
        assert d.tell(name, ChildRestarted("coordinator"))
    seen = wait_for(said, WAIT, "both monitors saying it again")
    assert seen["lo"].up and not seen["nothere0"].up
    d.stop_all()
