"""System: three real `vigil node run` processes over real ZeroMQ on 127.0.0.1, driven and
observed only through the command line, as an operator would."""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster_harness import wait_for
from tests.support.daemons import NODES, Daemons, app_pid, daemons_in


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path)


def test_holder_sigkilled_group_runs_on_a_survivor(daemons: Daemons) -> None:
    holder = all_online(daemons)
    survivors = [n for n in NODES if n != holder]
    st = daemons.status(survivors[0])
    assert st is not None
    assert st["resources"]["web-app"] == {**st["resources"]["web-app"], "node": holder,
                                          "state": "IN_SERVICE"}
    app = app_pid(daemons, holder)
    assert app is not None

    daemons.procs[holder].send_signal(signal.SIGKILL)
    daemons.procs[holder].wait(10)
    wait_for(lambda: daemons.group_on(survivors[1]) in survivors, 30, "web on a survivor")
    st = daemons.status(survivors[1])
    assert st is not None
    assert st["nodes"][holder]["state"] == "offline"
    assert st["resources"]["web-app"]["state"] == "IN_SERVICE"
    # the killed node's service died with it (it must not keep running beside the new one)
    wait_for(lambda: not Path(f"/proc/{app}").exists()
             or "Z" in Path(f"/proc/{app}/stat").read_text().split()[2], 10, "old app gone")


def all_online(daemons: Daemons) -> str:
    """Start every node and wait until all are online and web runs: where it runs. (Two of the
    three make quorum: if one daemon starts slowly, the other two place web without it.)"""
    for n in NODES:
        daemons.start(n)

    def sees_all(node: str) -> bool:
        st = daemons.status(node)
        return st is not None and all(v["state"] == "online" for v in st["nodes"].values())

    for n in NODES:
        wait_for(functools.partial(sees_all, n), 30, f"all online for {n}")
    holder = wait_for(lambda: daemons.group_on("beta"), 30, "web in service")
    assert isinstance(holder, str)
    return holder


def test_operator_moves_a_group_and_uses_standby(daemons: Daemons) -> None:
    holder = all_online(daemons)
    cfg = str(daemons.config)
    if holder == "gamma":  # (a slow alpha: beta and gamma placed it without alpha)
        out = daemons.vigil("group", "move", "web", "alpha", "-c", cfg, "--via", "beta")
        assert out.returncode == 0, out.stderr
        wait_for(lambda: daemons.group_on("beta") == "alpha", 30, "web moved to alpha")

    out = daemons.vigil("group", "move", "web", "gamma", "-c", cfg, "--via", "beta")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: daemons.group_on("alpha") == "gamma", 30, "web moved to gamma")

    out = daemons.vigil("node", "standby", "gamma", "-c", cfg, "--via", "alpha")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: daemons.group_on("gamma") == "alpha", 30, "web off gamma, on alpha")
    st = daemons.status("beta")
    assert st is not None and st["nodes"]["gamma"]["standby"] is True

    out = daemons.vigil("node", "online", "gamma", "-c", cfg, "--via", "gamma")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: (s := daemons.status("alpha")) and not s["nodes"]["gamma"]["standby"],
             30, "gamma online")
    time.sleep(1.0)
    assert daemons.group_on("beta") == "alpha"  # failback is off: it stays

    out = daemons.vigil("group", "move", "nosuch", "gamma", "-c", cfg, "--via", "beta")
    assert out.returncode == 2 and "no group named 'nosuch'" in out.stderr


def test_sigterm_leaves_cleanly_and_the_group_moves(daemons: Daemons) -> None:
    holder = all_online(daemons)
    survivors = [n for n in NODES if n != holder]
    proc = daemons.procs[holder]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    log = daemons.log(holder)
    # reverse dependency order on the way out
    assert log.index("resource web-app: stop") < log.index("resource web-state: stop")
    assert "said goodbye" in log
    wait_for(lambda: daemons.group_on(survivors[0]) in survivors, 20, "web on a survivor")
    assert all("left the cluster cleanly" in daemons.log(n) for n in survivors)


def test_status_without_a_daemon_says_so(daemons: Daemons) -> None:
    out = daemons.vigil("status", "-c", str(daemons.config), "--node", "alpha")
    assert out.returncode == 3
    assert "no daemon for node alpha" in out.stderr
