"""System: three real `vigil node run` processes over real ZeroMQ on 127.0.0.1, driven and
observed only through the command line, as an operator would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_harness import wait_for
from vigil.config import write_key

NODES = ("alpha", "beta", "gamma")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Daemons:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.config = tmp / "cluster.toml"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        write_key(tmp / "cluster.key")
        ports = free_ports(len(NODES))
        lines = [
            "[cluster]", 'name = "sys"', 'key_file = "cluster.key"',
            f'runtime_dir = "{tmp}/run"', "",
            "[timing]", 'heartbeat_interval = "100ms"', 'dead_time = "600ms"',
            'step_timeout = "2s"', 'fence_margin = "200ms"', "",
        ]
        for node, port in zip(NODES, ports, strict=True):
            lines += [f"[nodes.{node}]",
                      f'links = [{{ name = "lan0", address = "127.0.0.1", port = {port} }}]', ""]
        lines += [
            "[groups.web]", 'resources = ["web-state", "web-app"]',
            "prefer = { alpha = 0, beta = 10, gamma = 20 }", "",
            "[resources.web-state]", 'type = "dummy"', 'stop_timeout = "1s"', "",
            "[resources.web-app]", 'type = "application"', 'depends_on = ["web-state"]',
            'params = { start = "sleep 600" }', 'monitor = { interval = "500ms", timeout = "2s" }',
            'stop_timeout = "1s"', "",
        ]
        self.config.write_text("\n".join(lines))

    def vigil(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vigil.cli.main", *args],
                              capture_output=True, text=True, timeout=timeout)

    def start(self, node: str) -> None:
        log = open(self.tmp / f"{node}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.procs[node] = subprocess.Popen(
            [sys.executable, "-m", "vigil.cli.main", "node", "run", "-c", str(self.config),
             "--node", node], stdout=log, stderr=subprocess.STDOUT)

    def status(self, via: str) -> dict[str, Any] | None:
        out = self.vigil("status", "-c", str(self.config), "--node", via, "--json")
        if out.returncode != 0:
            return None
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def group_on(self, via: str, group: str = "web") -> str | None:
        st = self.status(via)
        if st is None or st["groups"][group]["state"] != "running":
            return None
        node: str | None = st["groups"][group]["node"]
        return node

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def log(self, node: str) -> str:
        return (self.tmp / f"{node}.log").read_text(errors="replace")


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    # short path: Unix socket paths are limited to 107 bytes
    base = Path(f"/tmp/vigil-sys-{os.getpid()}-{tmp_path.name}"[:60])
    base.mkdir(parents=True, exist_ok=True)
    d = Daemons(base)
    try:
        yield d
    finally:
        d.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def app_pid(d: Daemons, node: str) -> int | None:
    """PID of the web-app process a node's daemon started (from its process tree)."""
    proc = d.procs[node]
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(proc.pid)],
                         capture_output=True, text=True)
    for line in out.stdout.splitlines():
        pid, _, args = line.strip().partition(" ")
        if args.strip() == "sleep 600":
            return int(pid)
    return None


def test_holder_sigkilled_group_runs_on_a_survivor(daemons: Daemons) -> None:
    for n in NODES:
        daemons.start(n)
    assert wait_for(lambda: daemons.group_on("gamma"), 30, "web in service") == "alpha"
    st = daemons.status("beta")
    assert st is not None
    assert {n: v["state"] for n, v in st["nodes"].items()} == dict.fromkeys(NODES, "online")
    assert st["resources"]["web-app"] == {**st["resources"]["web-app"], "node": "alpha",
                                          "state": "IN_SERVICE"}
    app = app_pid(daemons, "alpha")
    assert app is not None

    daemons.procs["alpha"].send_signal(signal.SIGKILL)
    daemons.procs["alpha"].wait(10)
    # gamma may still report alpha's last heartbeat for up to dead_time: wait for beta
    wait_for(lambda: daemons.group_on("gamma") == "beta", 30, "web on beta, a survivor")
    st = daemons.status("gamma")
    assert st is not None
    assert st["nodes"]["alpha"]["state"] == "offline"
    assert st["resources"]["web-app"]["state"] == "IN_SERVICE"
    # the killed node's service died with it (it must not keep running beside beta's)
    wait_for(lambda: not Path(f"/proc/{app}").exists()
             or "Z" in Path(f"/proc/{app}/stat").read_text().split()[2], 10, "old app gone")


def test_operator_moves_a_group_and_uses_standby(daemons: Daemons) -> None:
    for n in NODES:
        daemons.start(n)
    wait_for(lambda: daemons.group_on("beta") == "alpha", 30, "web on alpha")
    cfg = str(daemons.config)

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
    assert out.returncode == 1 and "no group named 'nosuch'" in out.stderr


def test_sigterm_leaves_cleanly_and_the_group_moves(daemons: Daemons) -> None:
    for n in NODES:
        daemons.start(n)
    wait_for(lambda: daemons.group_on("beta") == "alpha", 30, "web on alpha")
    proc = daemons.procs["alpha"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    log = daemons.log("alpha")
    # reverse dependency order on the way out
    assert log.index("resource web-app: stop") < log.index("resource web-state: stop")
    assert "said goodbye" in log
    wait_for(lambda: daemons.group_on("gamma") == "beta", 20, "web on beta")
    assert "left the cluster cleanly" in daemons.log("beta")


def test_status_without_a_daemon_says_so(daemons: Daemons) -> None:
    out = daemons.vigil("status", "-c", str(daemons.config), "--node", "alpha")
    assert out.returncode == 3
    assert "no daemon for node alpha" in out.stderr
