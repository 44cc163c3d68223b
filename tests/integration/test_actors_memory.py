"""Integration: the real actors of three nodes in one process, over the in-memory network.

Every actor is real (coordinator, links, groups, resources, diagnostics, notifier, control
socket); only the wire is in memory, so tests can cut it. A recording resource type (a
dummy that writes every start and stop to a shared journal) shows the order in which the
resources really went in and out of service.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from tests.support.cluster_harness import MemoryCluster, cluster_toml, wait_for
from vigil.config import ClusterConfig, ResourceConfig, load_key, loads
from vigil.notifications import (
    GroupMoved,
    GroupStateChanged,
    NodeLost,
    Notification,
    ResourceStateChanged,
    TransitionCompleted,
)
from vigil.resources.dummy import DummyResource, DummyType
from vigil.resources.model import OpResult, ServiceState
from vigil.resources.registry import ResourceTypeRegistry

JOURNAL: list[tuple[float, str, str, str]] = []  # (time, node, op, resource)
JOURNAL_LOCK = threading.Lock()
BREAK_ONCE: set[tuple[str, str]] = set()  # (node, resource): its next monitor fails
FAIL_STOP: set[tuple[str, str]] = set()  # (node, resource): its stops fail


class RecordingResource(DummyResource):
    def _start(self, cancel: threading.Event) -> OpResult:
        result = super()._start(cancel)
        if result.ok:
            with JOURNAL_LOCK:
                JOURNAL.append((time.monotonic(), self.node, "start", self.name))
        return result

    def _stop(self, force: bool) -> OpResult:
        with JOURNAL_LOCK:
            if (self.node, self.name) in FAIL_STOP:
                return OpResult.failure(ServiceState.UNCLEAN, "stop broken by the test")
        was_running = self.state_file.exists()
        result = super()._stop(force)
        if was_running:
            with JOURNAL_LOCK:
                JOURNAL.append((time.monotonic(), self.node, "stop", self.name))
        return result


    def _monitor(self) -> OpResult:
        with JOURNAL_LOCK:
            if (self.node, self.name) in BREAK_ONCE:
                BREAK_ONCE.discard((self.node, self.name))
                return OpResult.failure(ServiceState.FAILED, "broken by the test")
        return super()._monitor()


class RecordingType(DummyType):
    def typename(self) -> str:
        return "dummy"

    def instantiate(self, config: ResourceConfig, node: str,
                    runtime_dir: Path) -> RecordingResource:
        return RecordingResource(self, config, node, runtime_dir)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MemoryCluster]:
    yield from recording_cluster(loads(cluster_toml(tmp_path), tmp_path / "cluster.toml"))


def recording_cluster(cfg: ClusterConfig) -> Iterator[MemoryCluster]:
    """A cluster of ``cfg`` whose dummy resources record their starts and stops in
    :data:`JOURNAL` (emptied first); stopped at the end."""
    JOURNAL.clear()
    FAIL_STOP.clear()
    registry = ResourceTypeRegistry()
    registry.register(RecordingType())
    mc = MemoryCluster(cfg, load_key(cfg), registry=registry)
    try:
        yield mc
    finally:
        mc.stop()
        pykka.ActorRegistry.stop_all(timeout=10)


def running_on(mc: MemoryCluster, group: str) -> list[str]:
    return [n for n in mc.holders(group)
            if mc.status(n)["groups"][group]["state"] == "running"]


def journal(node: str, op: str) -> list[str]:
    with JOURNAL_LOCK:
        return [r for _, n, o, r in JOURNAL if n == node and o == op]


def test_group_starts_once_in_dependency_order(cluster: MemoryCluster) -> None:
    for n in ("alpha", "beta", "gamma"):
        cluster.start(n)
    holders = wait_for(lambda: running_on(cluster, "web"), 15, "web in service")
    assert holders == ["alpha"]  # prefer: alpha = 0
    time.sleep(0.5)  # several heartbeats later, still exactly once
    assert running_on(cluster, "web") == ["alpha"]
    assert journal("alpha", "start") == ["web-ip", "web-data", "web-app"]
    assert journal("beta", "start") == [] and journal("gamma", "start") == []
    # all in one epoch led by alpha, whichever number: on a busy machine a first round may
    # time out and a second one take over
    wait_for(lambda: len({cluster.status(n)["epoch"] for n in ("alpha", "beta", "gamma")}) == 1,
             15, "one epoch on every node")
    for n in ("alpha", "beta", "gamma"):
        st = cluster.status(n)
        assert st["master"] == "alpha"
        assert st["groups"]["web"]["node"] == "alpha"
        assert st["resources"]["web-app"]["state"] == "IN_SERVICE"
    assert journal("alpha", "start") == ["web-ip", "web-data", "web-app"]  # still once


def test_killing_the_holder_moves_the_group(cluster: MemoryCluster) -> None:
    for n in ("alpha", "beta", "gamma"):
        cluster.start(n)
    wait_for(lambda: running_on(cluster, "web") == ["alpha"], 15, "web on alpha")
    cluster.kill("alpha")
    wait_for(lambda: running_on(cluster, "web") == ["beta"], 20, "web moved to beta")
    st = cluster.status("gamma")
    assert st["nodes"]["alpha"]["state"] == "offline"
    assert st["master"] == "beta"
    assert journal("beta", "start") == ["web-ip", "web-data", "web-app"]


def test_moving_a_group_stops_it_in_reverse_order_before_it_starts_elsewhere(
        cluster: MemoryCluster) -> None:
    for n in ("alpha", "beta", "gamma"):
        cluster.start(n)
    wait_for(lambda: running_on(cluster, "web") == ["alpha"], 15, "web on alpha")
    answer = cluster.nodes["gamma"].control("move", group="web", node="gamma")
    assert answer["ok"], answer
    wait_for(lambda: running_on(cluster, "web") == ["gamma"], 15, "web moved to gamma")
    # `vigil group move --force` is a move too (it only overrides a mirror's max_lag)
    answer = cluster.nodes["beta"].control("move", group="web", node="gamma", force="1")
    assert answer["ok"] and answer["message"].startswith("forced move of web"), answer
    assert journal("alpha", "stop") == ["web-app", "web-data", "web-ip"]
    with JOURNAL_LOCK:
        last_stop = max(t for t, n, o, _ in JOURNAL if n == "alpha" and o == "stop")
        first_start = min(t for t, n, o, _ in JOURNAL if n == "gamma" and o == "start")
    assert last_stop < first_start, "started on gamma before alpha had stopped"


def test_a_node_cut_off_stops_its_groups_and_the_majority_takes_over(
        cluster: MemoryCluster) -> None:
    for n in ("alpha", "beta", "gamma"):
        cluster.start(n)
    wait_for(lambda: running_on(cluster, "web") == ["alpha"], 15, "web on alpha")
    cluster.net.partition({"alpha"}, {"beta", "gamma"})
    # alpha loses its quorum lease and stops; only then may beta start (silence fencer)
    wait_for(lambda: journal("alpha", "stop") == ["web-app", "web-data", "web-ip"], 15,
             "alpha to stop web")
    wait_for(lambda: cluster.status("beta")["groups"]["web"]["node"] == "beta"
             and cluster.status("beta")["groups"]["web"]["state"] == "running", 20,
             "web on beta")
    with JOURNAL_LOCK:
        last_stop = max(t for t, n, o, _ in JOURNAL if n == "alpha" and o == "stop")
        first_start = min(t for t, n, o, _ in JOURNAL if n == "beta" and o == "start")
    assert last_stop < first_start
    assert cluster.status("alpha")["quorate"] is False
    cluster.net.heal()
    wait_for(lambda: cluster.status("alpha")["epoch"] == cluster.status("beta")["epoch"], 15,
             "alpha to rejoin")
    time.sleep(1.0)
    st = cluster.status("alpha")
    assert running_on(cluster, "web") == ["beta"], st  # failback is off: it stays


@pytest.mark.parametrize(("broken", "restarted"), [
    ("web-data", ["web-data", "web-app"]),  # it and its dependent; web-ip stays up
    ("web-app", ["web-app"]),
])
def test_monitor_failure_restarts_the_resource_and_its_dependents_in_place(
        cluster: MemoryCluster, broken: str, restarted: list[str]) -> None:
    for n in ("alpha", "beta", "gamma"):
        cluster.start(n)
    wait_for(lambda: running_on(cluster, "web") == ["alpha"], 15, "web on alpha")
    epoch = cluster.status("alpha")["epoch"]
    with JOURNAL_LOCK:
        BREAK_ONCE.add(("alpha", broken))
    wait_for(lambda: journal("alpha", "start").count(broken) == 2
             and running_on(cluster, "web") == ["alpha"], 15, "web restarted in place")
    assert journal("alpha", "stop") == list(reversed(restarted))  # dependents first
    assert journal("alpha", "start") == ["web-ip", "web-data", "web-app", *restarted]
    st = cluster.status("alpha")
    assert st["epoch"] == epoch  # recovered without a transition
    assert st["fail_counts"] == {"web": 1}
    assert st["resources"][broken]["fail_count"] == 1
    assert st["resources"][broken]["last_failure"]["reason"] == "broken by the test"
    assert not journal("beta", "start") and not journal("gamma", "start")


def test_application_actors_receive_typed_notifications_of_a_failover_in_order(
        cluster: MemoryCluster) -> None:
    seen: list[Notification] = []
    moved = threading.Event()

    class Listener(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> None:
            if isinstance(message, Notification):
                seen.append(message)
                if isinstance(message, GroupStateChanged) and message.state == "running":
                    moved.set()

    listener = Listener.start()
    rt = cluster.start("beta")
    rt.subscribe(listener)
    cluster.start("alpha")
    cluster.start("gamma")
    wait_for(lambda: running_on(cluster, "web") == ["alpha"], 15, "web on alpha")
    del seen[:]
    cluster.kill("alpha")
    assert moved.wait(20), [str(n) for n in seen]
    kinds = [n.kind for n in seen]
    # the order of a failover, as beta (the new holder and master) lives it
    order = ["node_lost", "transition_started", "fencing_requested", "fencing_completed",
             "group_moved", "transition_completed", "group_state_changed"]
    positions = [kinds.index(k) for k in order]
    assert positions == sorted(positions), kinds
    lost = next(n for n in seen if isinstance(n, NodeLost))
    assert lost.member == "alpha" and not lost.clean
    move = next(n for n in seen if isinstance(n, GroupMoved))
    assert (move.group, move.from_node, move.to_node) == ("web", "alpha", "beta")
    done = next(n for n in seen if isinstance(n, TransitionCompleted))
    assert done.where("web") == "beta"
    assert [n.seq for n in seen] == sorted(n.seq for n in seen)  # numbered in order
    assert all(n.node == "beta" for n in seen)
    resources = [(n.resource, n.state) for n in seen if isinstance(n, ResourceStateChanged)]
    assert resources[-3:] == [("web-ip", "IN_SERVICE"), ("web-data", "IN_SERVICE"),
                              ("web-app", "IN_SERVICE")]
    with pytest.raises(dataclasses.FrozenInstanceError):
        move.group = "other"  # type: ignore[misc]


def test_a_child_actor_that_dies_is_restarted_and_keeps_working(
        cluster: MemoryCluster) -> None:
    from vigil.actors.messages import ResourceOp

    for n in ("alpha", "beta", "gamma"):
        cluster.start(n)
    wait_for(lambda: running_on(cluster, "web") == ["alpha"], 15, "web on alpha")
    directory = cluster.nodes["gamma"].directory
    before = directory.get("resource:web-app")
    assert before is not None
    # an operation no agent has: the actor fails (Pykka stops it and calls on_failure)
    before.tell(ResourceOp("explode", 1, "group:web"))  # type: ignore[arg-type]
    wait_for(lambda: directory.get("resource:web-app") not in (None, before), 10,
             "the supervisor to restart resource:web-app")
    assert not before.is_alive()
    # the restarted actor does its job: web can move to gamma and run there
    assert cluster.nodes["beta"].control("move", group="web", node="gamma")["ok"]
    wait_for(lambda: running_on(cluster, "web") == ["gamma"], 20, "web on gamma")
    assert journal("gamma", "start") == ["web-ip", "web-data", "web-app"]


# ---- manual requests: resources by hand, maintenance, mark_oos -----------------------------


def web_states(mc: MemoryCluster, via: str) -> dict[str, str]:
    st = mc.status(via)
    return {r: st["resources"][r]["state"] for r in ("web-ip", "web-data", "web-app")}


def test_a_resource_taken_out_by_hand_stays_out_across_a_failover_until_in_service(
        cluster: MemoryCluster) -> None:
    for n in ("alpha", "beta", "gamma"):
        cluster.start(n)
    wait_for(lambda: running_on(cluster, "web") == ["alpha"], 15, "web on alpha")
    answer = cluster.nodes["gamma"].control("oo_service", resource="web-data")
    assert answer["ok"], answer
    wait_for(lambda: web_states(cluster, "alpha") == {
        "web-ip": "IN_SERVICE", "web-data": "OOS", "web-app": "OOS"}, 15,
        "web-data and its dependent web-app out of service, web-ip still up")
    assert journal("alpha", "stop") == ["web-app", "web-data"]
    st = cluster.status("beta")
    assert st["resources"]["web-data"]["by_hand"] == "oo_service"
    assert st["resources"]["web-app"]["state"] == "OOS"  # as the other nodes see it too

    cluster.kill("alpha")  # the administrative state survives the failover
    wait_for(lambda: running_on(cluster, "web") == ["beta"], 20, "web on beta")
    wait_for(lambda: web_states(cluster, "beta")["web-ip"] == "IN_SERVICE", 10, "web-ip")
    assert journal("beta", "start") == ["web-ip"]

    assert cluster.nodes["beta"].control("in_service", resource="web-data")["ok"]
    wait_for(lambda: set(web_states(cluster, "beta").values()) == {"IN_SERVICE"}, 15,
             "everything back in service on beta")
    assert journal("beta", "start") == ["web-ip", "web-data", "web-app"]
    refused = cluster.nodes["beta"].control("oo_service", resource="web-dat")
    assert not refused["ok"] and "did you mean 'web-data'" in refused["error"]


def test_maintenance_mode_pauses_recovery_and_failover(cluster: MemoryCluster) -> None:
    for n in ("alpha", "beta", "gamma"):
        cluster.start(n)
    wait_for(lambda: running_on(cluster, "web") == ["alpha"], 15, "web on alpha")
    assert cluster.nodes["beta"].control("maintenance", state="on")["ok"]
    wait_for(lambda: all(cluster.status(n)["maintenance"] for n in cluster.nodes), 10,
             "maintenance on everywhere")
    with JOURNAL_LOCK:
        BREAK_ONCE.add(("alpha", "web-app"))
    refused = cluster.nodes["beta"].control("move", group="web", node="gamma")
    assert not refused["ok"] and "maintenance mode" in refused["error"]
    cluster.kill("gamma")  # not even a lost node changes anything
    time.sleep(2.0)  # what should not happen has had time to happen
    assert ("alpha", "web-app") in BREAK_ONCE, "monitors ran in maintenance mode"
    assert running_on(cluster, "web") == ["alpha"]
    assert journal("alpha", "stop") == []

    assert cluster.nodes["beta"].control("maintenance", state="off")["ok"]
    wait_for(lambda: journal("alpha", "start").count("web-app") == 2, 20,
             "monitors and recovery back: the broken web-app restarted in place")
    assert not cluster.status("alpha")["maintenance"]
    assert running_on(cluster, "web") == ["alpha"]


def test_mark_oos_clears_an_unclean_group_so_it_can_run_elsewhere(
        cluster: MemoryCluster) -> None:
    for n in ("alpha", "beta", "gamma"):
        cluster.start(n)
    wait_for(lambda: running_on(cluster, "web") == ["alpha"], 15, "web on alpha")
    with JOURNAL_LOCK:
        FAIL_STOP.add(("alpha", "web-app"))
    cluster.nodes["alpha"].control("move", group="web", node="beta")
    wait_for(lambda: cluster.status("alpha")["groups"]["web"].get("active_on", {}).get(
        "alpha") == "unclean", 15, "the failed stop to leave web unclean on alpha")
    time.sleep(1.0)
    assert "beta" not in cluster.holders("web"), "started on beta while alpha is unclean"
    # the operator stops it by hand, then says so
    with JOURNAL_LOCK:
        FAIL_STOP.clear()
    # the failed member alone is not enough: the stop never reached the members below it
    assert cluster.nodes["alpha"].control("mark_oos", resource="web-app")["ok"]
    time.sleep(1.0)
    assert cluster.status("alpha")["groups"]["web"]["active_on"].get("alpha") == "unclean"
    assert "beta" not in cluster.holders("web"), "started on beta while web-data may run"
    for r in ("web-data", "web-ip"):
        assert cluster.nodes["alpha"].control("mark_oos", resource=r)["ok"]
    wait_for(lambda: running_on(cluster, "web") == ["beta"], 20, "web on beta after mark_oos")
