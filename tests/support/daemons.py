"""Real `vigil node run` processes over real ZeroMQ on 127.0.0.1, driven and observed only
through the command line, as an operator would (tests/system/test_daemons.py and the attack
tests of tests/system/test_link_attacks.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.cluster_harness import wait_for
from vigil.config import write_key

NODES = ("alpha", "beta", "gamma")
#: The ``[timing]`` of most tests: things happen fast.
FAST = ('heartbeat_interval = "100ms"', 'dead_time = "600ms"', 'step_timeout = "2s"',
        'fence_margin = "200ms"')
#: For tests that assert that no node ever lost its lease while something else loads the
#: machine: the shared test machines stall processes for a few hundred milliseconds at times,
#: which a 300 ms lease does not survive, and which is not what those tests are about.
CALM = ('heartbeat_interval = "200ms"', 'dead_time = "2s"', 'step_timeout = "6s"',
        'fence_margin = "200ms"')


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
    """A cluster of ``nodes`` (one link, ``lan0``, each on its own port of 127.0.0.1) with one
    group, ``web`` (a dummy and a ``sleep 600`` application), preferring the nodes in order;
    or, with ``groups``, those lines of TOML (groups and resources) instead."""

    def __init__(self, tmp: Path, nodes: tuple[str, ...] = NODES,
                 timing: tuple[str, ...] = FAST, groups: Sequence[str] | None = None,
                 name: str = "sys") -> None:
        self.tmp = tmp
        self.name = name
        self.nodes = nodes
        self.config = tmp / "cluster.toml"
        self.key_file = tmp / "cluster.key"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        write_key(self.key_file)
        self.ports = dict(zip(nodes, free_ports(len(nodes)), strict=True))
        lines = [
            "[cluster]", f'name = "{name}"', 'key_file = "cluster.key"',
            f'runtime_dir = "{tmp}/run"', "",
            "[timing]", *timing, "",
        ]
        for node, port in self.ports.items():
            lines += [f"[nodes.{node}]",
                      f'links = [{{ name = "lan0", address = "127.0.0.1", port = {port} }}]', ""]
        if groups is not None:
            self.config.write_text("\n".join([*lines, *groups]))
            return
        prefer = ", ".join(f"{node} = {10 * i}" for i, node in enumerate(nodes))
        lines += [
            "[groups.web]", 'resources = ["web-state", "web-app"]',
            f"prefer = {{ {prefer} }}", "",
            "[resources.web-state]", 'type = "dummy"', 'stop_timeout = "1s"', "",
            "[resources.web-app]", 'type = "application"', 'depends_on = ["web-state"]',
            'params = { start = "sleep 600" }', 'monitor = { interval = "500ms", timeout = "2s" }',
            'stop_timeout = "1s"', "",
        ]
        self.config.write_text("\n".join(lines))

    def vigil(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vigil.cli.main", *args],
                              capture_output=True, text=True, timeout=timeout)

    def start(self, node: str, env: Mapping[str, str] | None = None) -> None:
        """Start ``node``'s daemon, its output appended to its log; ``env``: variables added
        to this process's environment for it."""
        log = open(self.tmp / f"{node}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.procs[node] = subprocess.Popen(
            [sys.executable, "-m", "vigil.cli.main", "node", "run", "-c", str(self.config),
             "--node", node], stdout=log, stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env})

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

    def wait_group_on(self, node: str, via: str, timeout: float = 30.0,
                      group: str = "web") -> None:
        """Wait until ``via`` reports ``group`` running on ``node``; on timeout the error
        carries the tail of every daemon's log (a start that went wrong says why there)."""
        try:
            wait_for(lambda: self.group_on(via, group) == node, timeout, f"{group} on {node}")
        except AssertionError as exc:
            tails = "\n".join(f"--- {n} log (tail) ---\n{self.log(n)[-3000:]}"
                              for n in self.nodes)
            raise AssertionError(f"{exc}\n{tails}") from None

    def stop_node(self, node: str) -> int:
        """SIGTERM one daemon and wait for it (it stops its groups and says goodbye)."""
        proc = self.procs[node]
        proc.send_signal(signal.SIGTERM)
        return proc.wait(20)

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


def app_pid(d: Daemons, node: str) -> int | None:
    """PID of the web-app process (``sleep 600``) a node's daemon started (from its process
    tree)."""
    proc = d.procs[node]
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(proc.pid)],
                         capture_output=True, text=True)
    for line in out.stdout.splitlines():
        pid, _, args = line.strip().partition(" ")
        if args.strip() == "sleep 600":
            return int(pid)
    return None


def settled(d: Daemons, holder: str | None = "alpha") -> str:
    """Wait until every running node sees every other online, in one epoch, with ``web``
    running (on ``holder`` unless None) and no transition under way; that epoch."""
    running = [n for n, p in d.procs.items() if p.poll() is None]

    def check() -> str | None:
        epochs = set()
        for node in running:
            st = d.status(node)
            if st is None or not st["lease_valid"]:
                return None
            if st["transition"] is not None and st["transition"]["phase"] != "done":
                return None
            if any(st["nodes"][peer]["state"] != "online" for peer in running):
                return None
            web = st["groups"]["web"]
            if web["state"] != "running" or (holder is not None and web["node"] != holder):
                return None
            epochs.add(st["epoch"])
        return epochs.pop() if len(epochs) == 1 else None

    epoch: str = wait_for(check, 60, f"{', '.join(running)} settled with web on "
                          f"{holder or 'a node'}", interval=0.2)
    return epoch


def daemons_in(tmp_path: Path, nodes: tuple[str, ...] = NODES,
               timing: tuple[str, ...] = FAST) -> Iterator[Daemons]:
    """A :class:`Daemons` in a short directory (Unix socket paths are limited to 107 bytes),
    stopped and removed afterwards: the body of a pytest fixture."""
    base = Path(f"/tmp/vigil-sys-{os.getpid()}-{tmp_path.name}"[:60])
    base.mkdir(parents=True, exist_ok=True)
    d = Daemons(base, nodes, timing)
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)
