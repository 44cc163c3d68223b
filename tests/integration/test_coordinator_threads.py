"""The coordinator handles a routine heartbeat on the link's reader thread and its deadline on
the timer's (vigil/actors/coordinator.py). These tests hold it to what its mailbox promised:
a failure there fails the actor, which its supervisor starts again from the persisted state,
and nothing more reaches or leaves the core that failed (no second core of one life
heartbeating beside the new one, no promise sent that is not on disk)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_harness import MemoryCluster, memory_cluster, wait_for
from vigil.actors.coordinator import CoordinatorActor
from vigil.cluster.events import Output

NODES = ("alpha", "beta", "gamma")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MemoryCluster]:
    with memory_cluster(tmp_path) as mc:
        for n in NODES:
            mc.start(n)
        wait_for(lambda: whole(mc), 30, "the three nodes in one epoch")
        yield mc


def whole(mc: MemoryCluster) -> bool:
    statuses = [mc.status(n) for n in mc.nodes]
    return (len({s["epoch"] for s in statuses}) == 1 and statuses[0]["epoch"] != "0"
            and all((s["transition"] or {}).get("phase", "done") == "done" for s in statuses)
            and all(s["nodes"][n]["state"] == "online" for s in statuses for n in mc.nodes))


def coordinator(mc: MemoryCluster, node: str) -> CoordinatorActor:
    # the object, to fault it and watch it: the one whose short path the directory holds
    take = wait_for(lambda: mc.nodes[node].directory._direct.get("coordinator"), 10,
                    f"{node}'s coordinator started")
    actor = take.__self__
    assert isinstance(actor, CoordinatorActor)
    return actor


def watch(old: CoordinatorActor) -> list[str]:
    """What reaches the core of ``old`` and what leaves it, from now on."""
    seen: list[str] = []
    handle, routine, send = old.core.handle, old.core.handle_routine, old._send

    def on_handle(event: Any, now: float) -> Output:
        seen.append(f"handle {type(event).__name__}")
        return handle(event, now)

    def on_routine(event: Any, now: float) -> Output | None:
        seen.append("routine")
        return routine(event, now)

    def on_send(messages: Any) -> None:
        messages = list(messages)
        # with the epoch the core had promised when they left
        seen.extend(f"send {m.type} promised {old.core.promise.promised}" for m in messages)
        send(messages)

    old.core.handle, old.core.handle_routine = on_handle, on_routine  # type: ignore[method-assign]
    old._send = on_send  # type: ignore[method-assign]
    return seen


def restarted(mc: MemoryCluster, node: str, old: CoordinatorActor) -> CoordinatorActor:
    wait_for(lambda: mc.nodes[node].directory.get("coordinator") not in (None, old.actor_ref),
             10, f"a new coordinator on {node}")
    new = coordinator(mc, node)
    # the new one is at work: many heartbeats on its short path (reader and timer threads)
    wait_for(lambda: new.core.routine_handled > 40 and whole(mc), 30,
             "the new coordinator handling heartbeats, the cluster whole")
    return new


def timers(node: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"vigil-timer-{node}"]


def test_a_core_that_raises_on_the_reader_thread_fails_its_actor_and_handles_nothing_more(
        cluster: MemoryCluster) -> None:
    old = coordinator(cluster, "gamma")
    routine = old.core.handle_routine
    calls = {"n": 0}

    def fault(event: Any, now: float) -> Output | None:
        calls["n"] += 1
        if calls["n"] == 5:  # a fault injected on the link's reader thread
            raise RuntimeError("injected")
        return routine(event, now)

    old.core.handle_routine = fault  # type: ignore[method-assign]
    wait_for(lambda: old._broken is not None, 10, "the injected fault")
    seen = watch(old)
    new = restarted(cluster, "gamma", old)
    assert new is not old
    assert seen == [], f"the failed core still handled or sent: {seen[:10]}"
    # its timer ended with it: one timer, the new coordinator's
    wait_for(lambda: len(timers("gamma")) == 1, 5, "one coordinator timer on gamma")
    assert cluster.status("gamma")["nodes"]["gamma"]["state"] == "online"


def test_a_promise_that_cannot_be_persisted_never_leaves_the_node(
        cluster: MemoryCluster, tmp_path: Path) -> None:
    old = coordinator(cluster, "gamma")
    state_path, epoch = old.state_path, old.core.promise.promised
    # the state file's directory is gone: the next promise cannot be written (a full or
    # failing disk does the same)
    old.state_path = tmp_path / "gone" / "state.json"
    seen = watch(old)
    cluster.kill("alpha")  # the master: beta declares a new epoch, gamma must promise it
    wait_for(lambda: cluster.nodes["gamma"].directory.get("coordinator")
             not in (None, old.actor_ref), 20, "gamma's coordinator failing and starting again")
    assert isinstance(old._broken, FileNotFoundError)
    assert old.core.promise.promised != epoch  # the core had promised the new epoch...
    sent = [s for s in seen if s.startswith("send")]
    assert sent, "gamma sent nothing before the failure: the test saw nothing"
    # ... and nothing that left it carried it: every message went out under the old promise
    assert all(s.endswith(f"promised {epoch}") for s in sent), sent
    new = coordinator(cluster, "gamma")
    assert new.state_path == state_path
    wait_for(lambda: whole(cluster), 30, "beta and gamma in one epoch")
