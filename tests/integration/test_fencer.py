"""The FencerActor with real agents (small shell agents the tests write): it runs the level
the core asks for on a worker thread and answers FenceDone, keeps answering while a level
hangs, kills what runs when it stops, monitors every device; and in a cluster of real
actors, a lost holder's group moves only once an agent powered the holder off, and a device
that fails keeps it stopped until the next pass works.
"""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from tests.support.cluster_harness import MemoryCluster, cluster_toml, wait_for
from vigil.actors.base import Directory
from vigil.actors.fencer import FencerActor
from vigil.actors.messages import FenceDeviceState
from vigil.cluster.events import FenceDone, FenceNode
from vigil.config import ClusterConfig, load_key, loads
from vigil.resources.proc import pid_alive


def fence_agent(directory: Path, name: str = "fence_test") -> Path:
    """A fence agent that records every run (``runs``: "action node") and powers nodes off
    by writing their names to ``off``. It fails (the fence-agents way: an ``ERROR:`` line,
    exit 1) while the file ``broken`` exists, and hangs on the node named in the file
    ``hang`` (its pid in ``pid``)."""
    path = directory / name
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        input=$(cat)
        action=$(printf '%s\\n' "$input" | sed -n 's/^action=//p')
        node=$(printf '%s\\n' "$input" | sed -n 's/^nodename=//p')
        echo "$action $node" >> {directory}/runs
        if [ -n "$node" ] && grep -qx "$node" {directory}/hang 2>/dev/null; then
            echo $$ > {directory}/pid
            sleep 60 & wait
        fi
        if [ -e {directory}/broken ]; then
            why="Failed: Unable to connect/login to fencing device"
            echo "2026-01-01 10:00:00,000 ERROR: $why" >&2
            exit 1
        fi
        [ "$action" = off ] && echo "$node" >> {directory}/off
        exit 0
        """))
    path.chmod(0o755)
    return path


def runs(directory: Path) -> list[str]:
    path = directory / "runs"
    return path.read_text().splitlines() if path.exists() else []


def devices_toml(agent: Path, *, monitor: str = "60s", timeout: str = "20s") -> str:
    return f"""
[fence_devices.board]
agent = "{agent}"
hosts = ["alpha", "beta", "gamma"]
host_argument = "none"
timeout = "{timeout}"
retries = 0
monitor_interval = "{monitor}"

[fencing]
retry_interval = "1s"
"""


class Inbox(pykka.ThreadingActor):
    """Stands in for the coordinator: keeps what the fencer tells it."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[Any] = []
        self.lock = threading.Lock()

    def on_receive(self, message: Any) -> Any:
        if message == "got":
            with self.lock:
                return list(self.got)
        with self.lock:
            self.got.append(message)
        return None


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=10)


def fencer(tmp_path: Path, **options: str) -> tuple[pykka.ActorRef[Any], pykka.ActorRef[Any],
                                                      ClusterConfig]:
    cfg = loads(cluster_toml(tmp_path, extra=devices_toml(fence_agent(tmp_path), **options)),
                tmp_path / "cluster.toml")
    directory = Directory()
    inbox = Inbox.start()
    directory.set("coordinator", inbox)
    ref = FencerActor.start("fencer", directory, cfg)
    directory.set("fencer", ref)
    return ref, inbox, cfg


def told(inbox: pykka.ActorRef[Any], kind: type) -> list[Any]:
    return [m for m in inbox.ask("got", timeout=5) if isinstance(m, kind)]


def test_a_level_runs_the_agent_and_answers_with_the_attempt(tmp_path: Path) -> None:
    ref, inbox, _ = fencer(tmp_path)
    ref.tell(FenceNode("alpha", 1, ("board",), attempt=7))
    (done,) = wait_for(lambda: told(inbox, FenceDone), 20, "the level's answer")
    assert (done.node, done.ok, done.level, done.attempt) == ("alpha", True, 1, 7)
    assert done.detail == "off of alpha by board (fence_test): done"
    assert (tmp_path / "off").read_text() == "alpha\n"
    assert "off alpha" in runs(tmp_path)


def test_a_failed_level_carries_the_agents_reason(tmp_path: Path) -> None:
    (tmp_path / "broken").touch()
    ref, inbox, _ = fencer(tmp_path)
    ref.tell(FenceNode("beta", 2, ("board",), attempt=3))
    (done,) = wait_for(lambda: told(inbox, FenceDone), 20, "the level's answer")
    assert (done.ok, done.level, done.attempt) == (False, 2, 3)
    assert done.detail == ("off of beta by board (fence_test): exit 1 (EC_GENERIC_ERROR): "
                           "Failed: Unable to connect/login to fencing device")
    assert not (tmp_path / "off").exists()


def test_a_device_the_configuration_lacks_is_a_failed_level(tmp_path: Path) -> None:
    ref, inbox, _ = fencer(tmp_path)
    ref.tell(FenceNode("alpha", 1, ("nosuch",), attempt=1))
    (done,) = wait_for(lambda: told(inbox, FenceDone), 20, "the level's answer")
    assert not done.ok and done.detail == "cannot run level 1: 'nosuch'"


def test_a_hung_level_blocks_nothing_and_stopping_kills_it(tmp_path: Path) -> None:
    (tmp_path / "hang").write_text("alpha\n")
    ref, inbox, _ = fencer(tmp_path, timeout="60s")
    ref.tell(FenceNode("alpha", 1, ("board",), attempt=1))
    pid = int(wait_for(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text(),
                       20, "the agent to hang"))
    # the actor still answers, and another level runs beside the hung one
    ref.tell(FenceNode("gamma", 1, ("board",), attempt=2))
    (done,) = wait_for(lambda: told(inbox, FenceDone), 20, "the second level's answer")
    assert (done.node, done.ok, done.attempt) == ("gamma", True, 2)
    started = time.monotonic()
    ref.stop(timeout=10)
    wait_for(lambda: not pid_alive(pid), 10, "the hung agent killed on stop")
    assert time.monotonic() - started < 10
    time.sleep(0.2)
    assert [d.node for d in told(inbox, FenceDone)] == ["gamma"], "answered after stopping"


def test_every_device_is_monitored_at_its_interval(tmp_path: Path) -> None:
    _, inbox, _ = fencer(tmp_path, monitor="300ms")
    first = wait_for(lambda: told(inbox, FenceDeviceState), 20, "the first monitor")[0]
    assert (first.device, first.ok, first.reason) == ("board", True, "done")
    (tmp_path / "broken").touch()
    failed = wait_for(lambda: [m for m in told(inbox, FenceDeviceState) if not m.ok], 20,
                      "a monitor to find the device broken")[0]
    assert failed.reason == ("exit 1 (EC_GENERIC_ERROR): Failed: Unable to connect/login to "
                             "fencing device")
    assert runs(tmp_path).count("monitor ") >= 2


# ---- in a cluster of real actors --------------------------------------------------------------


def holders(cluster: MemoryCluster) -> list[str]:
    return [n for n in cluster.holders("web")
            if cluster.status(n)["groups"]["web"]["state"] == "running"]


@pytest.fixture
def fenced(tmp_path: Path) -> Iterator[MemoryCluster]:
    text = cluster_toml(tmp_path, extra=devices_toml(fence_agent(tmp_path)))
    text = text.replace('name = "test"', 'name = "test"\nfencer = "devices"')
    cfg = loads(text, tmp_path / "cluster.toml")
    mc = MemoryCluster(cfg, load_key(cfg))
    try:
        yield mc
    finally:
        mc.stop()


def test_a_lost_holders_group_moves_only_once_an_agent_powered_it_off(
        fenced: MemoryCluster, tmp_path: Path) -> None:
    for n in ("alpha", "beta", "gamma"):
        fenced.start(n)
    wait_for(lambda: holders(fenced) == ["alpha"], 15, "web on alpha")
    (tmp_path / "broken").touch()  # the board fails: alpha stays held, web stays down
    fenced.kill("alpha")
    wait_for(lambda: runs(tmp_path).count("off alpha") >= 2, 20,
             "the board tried twice (a retry after every level failed)")
    assert holders(fenced) == []
    st = fenced.status("beta")
    assert st["groups"]["web"]["placed"] == "alpha"
    wait = st["fencing"]["pending"]["alpha"]
    assert wait.startswith("waiting for fencing of alpha: ") and "confirm-off alpha" in wait
    assert "Unable to connect/login to fencing device" in wait
    # the board works again: the next pass powers alpha off, then web starts on beta
    (tmp_path / "broken").unlink()
    wait_for(lambda: holders(fenced) == ["beta"], 20, "web on beta once alpha is off")
    assert (tmp_path / "off").read_text() == "alpha\n"
    history = fenced.status("beta")["fencing"]["history"]
    assert [(e["requester"], e["target"], e["result"]) for e in history][-1] == (
        "beta", "alpha", "off")
    assert {e["result"] for e in history[:-1]} == {"failed"}


def test_fence_and_confirm_off_by_hand_through_the_control_requests(
        fenced: MemoryCluster, tmp_path: Path) -> None:
    for n in ("alpha", "beta", "gamma"):
        fenced.start(n)
    wait_for(lambda: holders(fenced) == ["alpha"], 15, "web on alpha")
    beta = fenced.nodes["beta"]
    refused = beta.control("confirm_off", node="gamma")
    assert not refused["ok"] and refused["error"].startswith("gamma is online (heard ")
    assert beta.control("fence", node="gamma") == {
        "ok": True, "message": "fence of gamma requested: the next transition's master runs "
        "its fence levels (watch `vigil status`)"}
    wait_for(lambda: (tmp_path / "off").exists() and "gamma" in (tmp_path / "off").read_text(),
             20, "gamma powered off by hand")
    history = wait_for(lambda: fenced.status("alpha")["fencing"]["history"], 10, "history")
    assert (history[0]["requester"], history[0]["target"], history[0]["result"]) == (
        "an operator via beta", "gamma", "off")
    assert holders(fenced) == ["alpha"]
