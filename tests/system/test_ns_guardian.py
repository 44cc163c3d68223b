"""System: the guardian on the namespace cluster (docs/fencing.md). Each host's address and
server are sampled from inside every host every few milliseconds while the holder's daemon
is SIGKILLed or frozen: the old copy must be gone before the new one appears, and two hosts
never hold the address at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.nscluster import NsCluster, nscluster_fixture

cluster = nscluster_fixture(hosts=3)

VIP = "198.18.0.100"
MARKER = "vigil-guardian-test-server"

# the server: the marker in its command line lets the sampler find it
SERVER = (f"import http.server; mark = \\\"{MARKER}\\\"; http.server.test("
          f"HandlerClass=http.server.SimpleHTTPRequestHandler, port=80, bind=\\\"{VIP}\\\")")

# A plain address and a server bound to it: what a client needs. Default timings and the
# default fencer (guardian) apply.
GROUP = f"""
[groups.web]
resources = ["web-ip", "web-server"]
prefer = {{ n1 = 0, n2 = 10, n3 = 20 }}

[resources.web-ip]
type = "ip"
params = {{ address = "{VIP}", prefix = 24, nic = "eth0", arp_count = 1 }}
monitor = {{ interval = "1s", timeout = "2s" }}

[resources.web-server]
type = "application"
depends_on = ["web-ip"]
monitor = {{ interval = "1s", timeout = "2s" }}
stop_timeout = "5s"
[resources.web-server.params]
start = "{sys.executable} -c '{SERVER}'"
health_url = "http://{VIP}/"
"""

# Runs inside one host: every few milliseconds, whether the address is on one of its
# interfaces and whether the server runs in its network namespace; prints each change with
# the system-wide monotonic clock, so that hosts compare.
SAMPLER = """
import os, sys, time
from pyroute2 import IPRoute
vip, marker, period = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
me = os.stat("/proc/self/ns/net").st_ino
self = str(os.getpid())
ipr = IPRoute()
def has_vip():
    return any(a.get_attr("IFA_ADDRESS") == vip for a in ipr.get_addr(family=2))
def runs():
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == self:
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != me:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker in f.read():
                    return True
        except OSError:
            pass
    return False
last = None
print("ready", flush=True)
while True:
    now = time.monotonic()
    state = (has_vip(), runs())
    if state != last:
        print(f"{now:.4f} {int(state[0])} {int(state[1])}", flush=True)
        last = state
    time.sleep(max(0.0, period - (time.monotonic() - now)))
"""


@dataclass
class Timeline:
    host: str
    changes: list[tuple[float, bool, bool]]

    def intervals(self, which: int) -> list[tuple[float, float]]:
        """(from, to) while the address (0) or the server (1) was there."""
        out, since = [], None
        for t, *state in self.changes:
            if state[which] and since is None:
                since = t
            elif not state[which] and since is not None:
                out.append((since, t))
                since = None
        if since is not None:
            out.append((since, float("inf")))
        return out


class Sampler:
    """The SAMPLER of one host, its changes read as they come."""

    def __init__(self, c: NsCluster, host: str) -> None:
        self.host = host
        self.changes: list[tuple[float, bool, bool]] = []
        self.process = c.hosts[host].popen(
            [sys.executable, "-c", SAMPLER, VIP, MARKER, "0.01"], stdout=subprocess.PIPE,
            text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip() != "ready":
                t, vip, srv = line.split()
                self.changes.append((float(t), vip == "1", srv == "1"))

    def now(self) -> tuple[bool, bool] | None:
        return self.changes[-1][1:] if self.changes else None

    def stop(self) -> Timeline:
        self.process.kill()
        self.process.wait(10)
        self.thread.join(10)
        return Timeline(self.host, list(self.changes))


@pytest.fixture
def samplers(cluster: NsCluster) -> Iterator[dict[str, Sampler]]:
    running: dict[str, Sampler] = {}
    yield running
    for sampler in running.values():
        sampler.stop()


def sample(c: NsCluster, running: dict[str, Sampler], holder: str) -> None:
    """Sample every host; return once each has seen how things are (the holder has both)."""
    for name in c.hosts:
        running[name] = Sampler(c, name)
    c.wait_for(lambda: all(s.now() == ((True, True) if n == holder else (False, False))
                           for n, s in running.items()), 20, "every host sampled")


def timelines(running: dict[str, Sampler]) -> dict[str, Timeline]:
    return {name: sampler.stop() for name, sampler in running.items()}


def overlaps(lines: dict[str, Timeline], which: int) -> list[str]:
    found = []
    spans = [(h, a, b) for h, line in lines.items() for a, b in line.intervals(which)]
    for i, (h1, a1, b1) in enumerate(spans):
        for h2, a2, b2 in spans[i + 1:]:
            if h1 != h2 and a1 < b2 and a2 < b1:
                found.append(f"{h1} {a1:.3f}-{b1:.3f} and {h2} {a2:.3f}-{b2:.3f}")
    return found


def start(c: NsCluster) -> None:
    c.write_config(GROUP)
    c.start_all()
    c.wait_for(lambda: c.holders("web") == ["n1"], 40, "web on n1")
    c.wait_for(lambda: c.client.http_get(f"http://{VIP}/") is not None, 20, "the server")


def test_a_killed_holders_address_and_server_are_gone_before_another_host_has_them(
        cluster: NsCluster, samplers: dict[str, Sampler]) -> None:
    start(cluster)
    sample(cluster, samplers, "n1")
    killed = time.monotonic()
    cluster.sigkill("n1")  # the daemon alone: its guardian lives on
    cluster.wait_for(lambda: cluster.group_on("web", "n2") == "n2", 30, "web on n2")
    cluster.wait_for(lambda: cluster.client.http_get(f"http://{VIP}/") is not None, 20,
                     "the server on n2")
    time.sleep(0.5)
    lines = timelines(samplers)
    n1_vip, n1_srv = lines["n1"].intervals(0), lines["n1"].intervals(1)
    n2_vip, n2_srv = lines["n2"].intervals(0), lines["n2"].intervals(1)
    assert n1_vip and n1_vip[-1][1] < float("inf"), "the address stayed on n1"
    assert n1_srv and n1_srv[-1][1] < float("inf"), f"the server survived on n1: {lines}"
    assert n2_vip and n2_srv
    assert n1_vip[-1][1] <= n2_vip[0][0], (n1_vip, n2_vip)
    assert n1_srv[-1][1] <= n2_srv[0][0], (n1_srv, n2_srv)
    assert overlaps(lines, 0) == [] and overlaps(lines, 1) == []
    print(f"\nn1 killed at {killed:.3f}: its address gone after "
          f"{n1_vip[-1][1] - killed:.3f}s, on n2 after {n2_vip[0][0] - killed:.3f}s")


def test_a_frozen_holders_server_dies_before_another_host_starts_it_and_it_rejoins_quietly(
        cluster: NsCluster, samplers: dict[str, Sampler]) -> None:
    start(cluster)
    sample(cluster, samplers, "n1")
    daemon = cluster.hosts["n1"].daemon
    assert daemon is not None
    frozen = time.monotonic()
    daemon.send_signal(signal.SIGSTOP)
    try:
        cluster.wait_for(lambda: cluster.group_on("web", "n2") == "n2", 30, "web on n2")
        cluster.wait_for(lambda: cluster.client.http_get(f"http://{VIP}/") is not None, 20,
                         "the server on n2")
        time.sleep(max(0.0, 10.0 - (time.monotonic() - frozen)))
    finally:
        daemon.send_signal(signal.SIGCONT)
    epoch = (cluster.status("n2") or {}).get("epoch")
    # it rejoins: n1 answers again, runs nothing, and the service stays where it is
    cluster.wait_for(lambda: (cluster.status("n1") or {}).get("epoch") not in (None, ""), 30,
                     "n1 answering again")
    cluster.wait_for(lambda: len((cluster.status("n2") or {}).get("members", [])) == 3, 30,
                     "n1 back among the members")
    time.sleep(2.0)
    lines = timelines(samplers)
    assert cluster.group_on("web", "n2") == "n2"
    n1_srv, n2_srv = lines["n1"].intervals(1), lines["n2"].intervals(1)
    assert n1_srv and n1_srv[-1][1] < float("inf"), "the server survived on frozen n1"
    assert n1_srv[-1][1] <= n2_srv[0][0], (n1_srv, n2_srv)
    assert len(n2_srv) == 1 and lines["n1"].intervals(0)[-1][1] < float("inf")
    assert overlaps(lines, 0) == [] and overlaps(lines, 1) == []
    print(f"\nn1 frozen at {frozen:.3f}: its server killed after "
          f"{n1_srv[-1][1] - frozen:.3f}s, on n2 after {n2_srv[0][0] - frozen:.3f}s; "
          f"epoch before the thaw {epoch}")
