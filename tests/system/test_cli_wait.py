"""System: the operator's commands that wait (``--wait``), ``resource restart``, ``group
stop``/``start``, ``status --watch`` stopped by Ctrl-C and ``simulate --live``, on three
real `vigil node run` processes, through the command line only."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster_harness import wait_for
from tests.support.daemons import NODES, Daemons, app_pid, daemons_in, settled


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path)


@pytest.fixture
def cluster(daemons: Daemons) -> Daemons:
    for n in NODES:
        daemons.start(n)
    settled(daemons, holder=None)
    if daemons.group_on("alpha") != "alpha":  # a slow alpha: the others placed web first
        assert cli(daemons, "group", "move", "web", "alpha", "--wait", "30").returncode == 0
    settled(daemons)
    return daemons


def cli(d: Daemons, *args: str, node: str = "beta", timeout: float = 90
        ) -> subprocess.CompletedProcess[str]:
    return d.vigil(*args, "-c", str(d.config), "-n", node, timeout=timeout)


def test_move_standby_online_and_maintenance_wait_until_done(cluster: Daemons) -> None:
    d = cluster
    out = cli(d, "group", "move", "web", "gamma", "--wait")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "done: web running on gamma"
    assert d.group_on("alpha") == "gamma"  # true at once, asked anywhere

    out = cli(d, "node", "standby", "gamma", "--wait=30", node="alpha")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "done: gamma in standby"
    st = d.status("alpha")
    assert st is not None and "gamma" not in st["groups"]["web"]["active_on"]

    # the cluster cannot put web on a node in standby: the wait says so, exit 1
    out = cli(d, "group", "move", "web", "gamma", "--wait=30")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "vigil: the change failed: web running on" in out.stderr
    assert "the cluster placed it on" in out.stderr

    out = cli(d, "node", "online", "gamma", "--wait", node="gamma")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "done: gamma online"

    out = cli(d, "maintenance", "on", "--wait")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "done: maintenance on"
    out = cli(d, "maintenance", "off", "--wait")
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "done: maintenance off"


def test_a_wait_that_runs_out_exits_4_and_says_what_it_saw(cluster: Daemons) -> None:
    # a done state must hold for a moment: 10 ms is never enough
    out = cli(cluster, "group", "move", "web", "beta", "--wait=0.01")
    assert out.returncode == 4, out.stdout + out.stderr
    assert "vigil: the change is not done after 0.01 s; last seen: web " in out.stderr
    wait_for(lambda: cluster.group_on("alpha") == "beta", 30, "web on beta all the same")


def test_resource_restart_restarts_in_place_without_a_failure(cluster: Daemons) -> None:
    d = cluster
    before = app_pid(d, "alpha")
    assert before is not None
    out = cli(d, "resource", "restart", "web-app", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == [
        "restarting web-app on alpha: stopping it",
        "done: web-app OOS [oo_service by hand]",
        "starting web-app again",
        "done: web-app IN_SERVICE"]
    after = app_pid(d, "alpha")
    assert after is not None and after != before  # a new process, on the same node
    st = d.status("alpha")
    assert st is not None
    assert st["groups"]["web"]["node"] == "alpha"
    assert st["resources"]["web-state"]["service_state"] == "IN_SERVICE"
    assert st["resources"]["web-app"]["fail_count"] == 0

    # out of service by hand: restart refuses (in-service is what brings it back)
    assert cli(d, "resource", "oo-service", "web-app", "--wait").returncode == 0
    out = cli(d, "resource", "restart", "web-app")
    assert out.returncode == 1 and "in-service web-app" in out.stderr
    assert cli(d, "resource", "in-service", "web-app", "--wait").returncode == 0
    assert app_pid(d, "alpha") is not None


def test_group_stop_and_start_cluster_wide(cluster: Daemons) -> None:
    d = cluster
    out = cli(d, "group", "stop", "web", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].startswith("done: web-state OOS [oo_service by hand], "
                                                  "web-app OOS")
    assert app_pid(d, "alpha") is None
    shown = cli(d, "status").stdout
    assert "(stopped by hand: `vigil group start web`)" in shown
    for n in NODES:  # stopped everywhere, as each node sees it
        st = d.status(n)
        assert st is not None
        assert all(st["resources"][r]["service_state"] != "IN_SERVICE"
                   for r in ("web-state", "web-app")), n
    # the holder's loss does not start it elsewhere
    assert d.stop_node("alpha") == 0
    time.sleep(2.0)
    st = d.status("beta")
    assert st is not None
    assert all(st["resources"][r]["service_state"] != "IN_SERVICE"
               for r in ("web-state", "web-app"))
    out = cli(d, "group", "start", "web", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == "done: web-state IN_SERVICE, web-app IN_SERVICE"
    holder = d.group_on("beta")
    assert holder in ("beta", "gamma")
    assert app_pid(d, holder) is not None


def test_cleanup_wait_and_simulate_live(cluster: Daemons) -> None:
    d = cluster
    app = app_pid(d, "alpha")
    assert app is not None
    subprocess.run(["kill", "-KILL", str(app)], check=True)  # a failure, restarted in place
    wait_for(lambda: (s := d.status("alpha")) and s["fail_counts"].get("web"), 30,
             "alpha counts web's failure")
    wait_for(lambda: app_pid(d, "alpha") is not None, 30, "web-app restarted")

    out = cli(d, "simulate", "--live", "--show-costs", "--json", node="alpha")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["steps"][0]["placement"] == {"web": "alpha"}
    # the simulation agrees with the cluster (else its first step says where they differ)
    assert not [c for c in report["steps"][0]["changes"] if "the cluster runs it" in c]
    assert any(r.startswith("1 failure(s) here") for r in report["costs"]["web"]["alpha"]["why"])

    out = cli(d, "resource", "cleanup", "web-app", "--wait", node="alpha")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == "done: web running on alpha, no failures"


def test_status_watch_ends_on_ctrl_c_with_0(cluster: Daemons, tmp_path: Path) -> None:
    # into files, not pipes: a full pipe nobody reads (a few refreshes of a long status)
    # would hold the command in a write, which is not what this is about
    out_file, err_file = tmp_path / "out", tmp_path / "err"
    with open(out_file, "w") as out, open(err_file, "w") as err:
        # Ctrl-C as a terminal delivers it: a test run started in the background (`make
        # test &`) ignores SIGINT, and its children would inherit that
        proc = subprocess.Popen([sys.executable, "-m", "vigil.cli.main", "status", "--watch",
                                 "--interval", "0.2", "-c", str(cluster.config), "-n", "beta"],
                                stdout=out, stderr=err, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        wait_for(lambda: out_file.read_text().count("Cluster sys: epoch") >= 2, 30,
                 "two refreshes")
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    stdout, stderr = out_file.read_text(), err_file.read_text()
    assert proc.returncode == 0, stderr
    assert "Aborted!" not in stdout + stderr and "Traceback" not in stderr
    assert stdout.count("Cluster sys: epoch") >= 2  # it refreshed


def test_confirm_off_waits_for_the_fencing_entry(cluster: Daemons) -> None:
    d = cluster
    out = cli(d, "node", "confirm-off", "gamma", "--wait=20")
    assert out.returncode == 1 and "online" in out.stderr  # refused: gamma runs
    d.procs["gamma"].send_signal(signal.SIGKILL)
    d.procs["gamma"].wait(10)
    wait_for(lambda: (s := d.status("alpha")) and s["nodes"]["gamma"]["state"] == "offline",
             30, "gamma offline")
    for asked in ("alpha", "beta"):  # the master (its fencing history), and another node
        out = cli(d, "node", "confirm-off", "gamma", "--wait=30", node=asked)
        assert out.returncode == 0, out.stdout + out.stderr
        last = out.stdout.splitlines()[-1]
        assert last.startswith(("done: fencing of gamma: confirmed off",
                                "done: gamma offline, no fencing of gamma pending")), last
