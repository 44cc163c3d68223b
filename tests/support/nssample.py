"""Who holds a service address, and where its server runs, seen from inside every host of a
namespace cluster (tests/support/nscluster.py) every few milliseconds.

Used by the system tests of the guardian and by the failover benchmark: the old copy of a
service must be gone before the new one appears, and two hosts must never hold the address at
once. Each host runs a :data:`SAMPLER` that prints every change with the system-wide
monotonic clock (hosts share one kernel, so their times compare with each other and with
``time.monotonic()`` of the test process).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from tests.support.nscluster import Client, Host, NsCluster

__all__ = [
    "SAMPLER",
    "Reader",
    "Sampler",
    "Timeline",
    "overlaps",
    "server_command",
    "start_samplers",
    "stop_samplers",
    "web_group",
]

#: Sampling period of the samplers, in seconds.
PERIOD = 0.01

# Runs inside one host: every PERIOD, whether the address is on one of its interfaces and
# whether the server runs in its network namespace; prints each change with the system-wide
# monotonic clock, so that hosts compare.
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


#: The server's program (run with ``-I -S``: no site, no environment, a fast start).
TINY_HTTP = Path(__file__).resolve().with_name("tiny_http.py")


def server_command(marker: str, bind: str) -> list[str]:
    """A small HTTP server on port 80 bound to ``bind`` (an address, or 0.0.0.0 to serve
    whatever address the host has); ``marker`` in its command line lets the sampler find
    it."""
    return [sys.executable, "-I", "-S", str(TINY_HTTP), marker, bind]


def web_group(vip: str, marker: str) -> str:
    """Group ``web``: a plain address and a server bound to it (no disk), preferring n1, then
    n2, then n3: what a client needs, and nothing whose own start-up would hide the cluster's
    time (such as an fsck)."""
    return f"""
[groups.web]
resources = ["web-ip", "web-server"]
prefer = {{ n1 = 0, n2 = 10, n3 = 20 }}

[resources.web-ip]
type = "ip"
params = {{ address = "{vip}", prefix = 24, nic = "eth0", arp_count = 1 }}
monitor = {{ interval = "1s", timeout = "2s" }}

[resources.web-server]
type = "application"
depends_on = ["web-ip"]
monitor = {{ interval = "1s", timeout = "2s" }}
stop_timeout = "5s"
[resources.web-server.params]
start = {json.dumps(server_command(marker, vip))}
health_url = "http://{vip}/"
"""


@dataclass
class Timeline:
    """What one host's sampler saw: (time, holds the address, runs the server) per change."""

    host: str
    changes: list[tuple[float, bool, bool]]

    def intervals(self, which: int, until: float = float("inf")) -> list[tuple[float, float]]:
        """(from, to) while the address (0) or the server (1) was there; one still there at
        the end lasts until ``until`` (e.g. when the host was powered off, which killed its
        sampler too)."""
        out: list[tuple[float, float]] = []
        since: float | None = None
        for t, *state in self.changes:
            if t >= until:
                break
            if state[which] and since is None:
                since = t
            elif not state[which] and since is not None:
                out.append((since, t))
                since = None
        if since is not None:
            out.append((since, until))
        return out


class Reader:
    """A program started inside a host or the client whose output is read, as it comes, by a
    thread: each line but "ready" goes, split, to :meth:`parse`."""

    def __init__(self, where: Host | Client, argv: list[str]) -> None:
        self.process = where.popen(argv, stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip() != "ready":
                self.parse(line.split())

    def parse(self, fields: list[str]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self.thread.join(10)


class Sampler(Reader):
    """The SAMPLER of one host, its changes read as they come."""

    def __init__(self, host: Host, vip: str, marker: str, period: float = PERIOD) -> None:
        self.host = host.name
        self.changes: list[tuple[float, bool, bool]] = []
        super().__init__(host, [sys.executable, "-c", SAMPLER, vip, marker, str(period)])

    def parse(self, fields: list[str]) -> None:
        t, vip, srv = fields
        self.changes.append((float(t), vip == "1", srv == "1"))

    def now(self) -> tuple[bool, bool] | None:
        """(holds the address, runs the server) as last seen; None before the first sample."""
        return (self.changes[-1][1], self.changes[-1][2]) if self.changes else None

    def stop(self) -> Timeline:
        self.close()
        return Timeline(self.host, list(self.changes))


def start_samplers(c: NsCluster, vip: str, marker: str,
                   expect: dict[str, tuple[bool, bool]]) -> dict[str, Sampler]:
    """A sampler in every host; returns once each has seen what ``expect`` says of it
    (host -> (address, server)) and stops them all if that does not happen."""
    running = {name: Sampler(host, vip, marker) for name, host in c.hosts.items()}
    try:
        c.wait_for(lambda: all(s.now() == expect[n] for n, s in running.items()), 20,
                   f"every host sampled as {expect}")
    except BaseException:
        stop_samplers(running)
        raise
    return running


def stop_samplers(running: dict[str, Sampler]) -> dict[str, Timeline]:
    return {name: sampler.stop() for name, sampler in running.items()}


def overlaps(lines: dict[str, Timeline], which: int, until: dict[str, float] | None = None
             ) -> list[tuple[str, float, float, str, float, float]]:
    """Pairs of intervals of different hosts that overlap, for the address (0) or the
    server (1): (host, from, to, other host, from, to). ``until``: host -> when its
    timeline ends (see :meth:`Timeline.intervals`)."""
    ends = until or {}
    spans = [(h, a, b) for h, line in lines.items()
             for a, b in line.intervals(which, ends.get(h, float("inf")))]
    found = []
    for i, (h1, a1, b1) in enumerate(spans):
        for h2, a2, b2 in spans[i + 1:]:
            if h1 != h2 and a1 < b2 and a2 < b1:
                found.append((h1, a1, b1, h2, a2, b2))
    return found
