"""Who holds a service address, and where its server runs, seen from inside every host of a
namespace cluster (tests/support/nscluster.py) every few milliseconds.

Used by the system tests of the guardian and by the failover benchmark: the old copy of a
service must be gone before the new one appears, and two hosts must never hold the address at
once. Each host runs a :data:`SAMPLER` that prints every change with the system-wide
monotonic clock (hosts share one kernel, so their times compare with each other and with
``time.monotonic()`` of the test process).

Where a host may be powered off (its own sampler would die with it) or a disk is shared, one
:data:`OUTSIDE_SAMPLER` on the machine itself looks into every host at each sample: the
address (on an interface that is up), the server, and the shared disk in the host's mount
table, so that one sample sees all hosts at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from tests.support.nscluster import Client, Host, NsCluster

__all__ = [
    "ADDRESS",
    "MOUNT",
    "OUTSIDE_SAMPLER",
    "SAMPLER",
    "SERVER",
    "Changes",
    "OutsideSampler",
    "OutsideTimeline",
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
#: What :meth:`Changes.intervals` and :func:`overlaps` look at: the address, the server, and
#: (outside samplers only) the shared disk mounted.
ADDRESS, SERVER, MOUNT = 0, 1, 2

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

# Runs on the machine, outside every host: every PERIOD, for each host (NAME:NETNS:KEEPER),
# whether the address is on one of its interfaces that is up (an address on an interface a
# fence set down answers nobody), whether the server runs in its network namespace, and
# whether the device (MAJOR:MINOR, or "-") is in the mount table of its keeper's mount
# namespace (once the keeper is gone, the host and its mounts are gone too). Prints each change
# of a host with the system-wide monotonic clock, and every second the number of samples and
# the longest time between two of them. Netlink is spoken raw, through a socket opened in each
# host's network namespace at start: a sample of three hosts costs about a millisecond, where
# pyroute2's parsing alone would take several. It runs at real-time priority 1 (below the
# guardian's 10; else at the daemons' nice -10): on a machine whose cores are busy, a process
# of ordinary priority wakes up to a few milliseconds late, and the samples would drift apart.
OUTSIDE_SAMPLER = """
import ctypes, os, socket, struct, sys, time
period, vip, marker, device = float(sys.argv[1]), sys.argv[2], sys.argv[3].encode(), sys.argv[4]
vip = socket.inet_aton(vip)
CLONE_NEWNET, RTM_GETLINK, RTM_GETADDR, IFA_LOCAL, IFF_UP = 0x40000000, 18, 22, 2, 1
libc = ctypes.CDLL(None, use_errno=True)
def netlink_in(netns):
    own, fd = os.open("/proc/self/ns/net", os.O_RDONLY), os.open(netns, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # a socket stays there
    finally:
        if libc.setns(own, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")
        os.close(fd)
        os.close(own)
def dump(sock, kind, payload):
    sock.send(struct.pack("=IHHII", 16 + len(payload), kind, 0x301, 1, 0) + payload)
    bodies = []
    while True:
        data, off = sock.recv(1 << 16), 0
        while off < len(data):
            length, typ = struct.unpack_from("=IH", data, off)
            if typ == 3:
                return bodies
            if typ == 2:
                raise OSError(f"netlink error {struct.unpack_from('=i', data, off + 16)[0]}")
            bodies.append(data[off + 16:off + length])
            off += (length + 3) & ~3
def has_vip(sock):
    where = set()
    for body in dump(sock, RTM_GETADDR, struct.pack("=BBBBI", socket.AF_INET, 0, 0, 0, 0)):
        off = 8
        while off + 4 <= len(body):
            length, typ = struct.unpack_from("=HH", body, off)
            if typ == IFA_LOCAL and body[off + 4:off + 8] == vip:
                where.add(struct.unpack_from("=I", body, 4)[0])
            off += (max(length, 4) + 3) & ~3
    if not where:
        return False
    for body in dump(sock, RTM_GETLINK, struct.pack("=BxHiII", 0, 0, 0, 0, 0)):
        index, flags = struct.unpack_from("=iI", body, 4)
        if index in where and flags & IFF_UP:
            return True
    return False
hosts = []
for spec in sys.argv[5:]:
    name, netns, keeper = spec.split(":")
    path = f"/run/netns/{netns}"
    hosts.append((name, netlink_in(path), os.stat(path).st_ino, f"/proc/{keeper}/mountinfo"))
def servers():
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{pid}/ns/net").st_ino
            if any(ns == h[2] for h in hosts):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker in f.read():
                        found.add(ns)
        except OSError:
            pass
    return found
def mounted(path):
    if device == "-":
        return False
    try:
        with open(path) as f:
            return any(line.split()[2] == device for line in f)
    except OSError:
        return False
try:
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
except OSError:
    try:
        os.nice(-10)
    except OSError:
        pass
last = {}
samples, longest, previous = 0, 0.0, None
due = report = time.monotonic()
print("ready", flush=True)
while True:
    now = time.monotonic()
    running = servers()
    for name, sock, ns, mountinfo in hosts:
        state = (has_vip(sock), ns in running, mounted(mountinfo))
        if state != last.get(name):
            print(f"{now:.4f} {name} {' '.join(str(int(x)) for x in state)}", flush=True)
            last[name] = state
    samples += 1
    if previous is not None:
        longest = max(longest, now - previous)
    previous = now
    if now >= report + 1:
        print(f"stats {samples} {longest:.4f}", flush=True)
        samples, longest, report = 0, 0.0, now
    due = max(due + period, time.monotonic())  # on a fixed grid: no drift
    time.sleep(max(0.0, due - time.monotonic()))
"""


#: The server's program (run with ``-I -S``: no site, no environment, a fast start).
TINY_HTTP = Path(__file__).resolve().with_name("tiny_http.py")


def server_command(marker: str, bind: str) -> list[str]:
    """A small HTTP server on port 80 bound to ``bind`` (an address, or 0.0.0.0 to serve
    whatever address the host has); ``marker`` in its command line lets the sampler find
    it."""
    return [sys.executable, "-I", "-S", str(TINY_HTTP), marker, bind]


def web_group(vip: str, marker: str, nodes: Sequence[str] = ("n1", "n2", "n3"), *,
              disk: tuple[str, Path] | None = None) -> str:
    """Group ``web``: a plain address and a server bound to it, preferring the ``nodes`` in
    that order: what a client needs, and nothing whose own start-up would hide the cluster's
    time (such as an fsck). With ``disk`` (a block device and a mount point), a shared disk
    too, between the two, and the server's working directory on it (so that the disk is busy
    while the server runs)."""
    prefer = ", ".join(f"{n} = {10 * i}" for i, n in enumerate(nodes))
    resources = ["web-ip", "web-server"] if disk is None else ["web-ip", "web-disk", "web-server"]
    filesystem = cwd = ""
    if disk is not None:
        device, mnt = disk
        filesystem = f"""
[resources.web-disk]
type = "filesystem"
depends_on = ["web-ip"]
params = {{ device = "{device}", directory = "{mnt}", fstype = "ext4" }}
monitor = {{ interval = "1s", timeout = "3s" }}
start_timeout = "20s"
stop_timeout = "4s"
"""
        cwd = f'cwd = "{mnt}"\n'
    return f"""
[groups.web]
resources = {json.dumps(resources)}
prefer = {{ {prefer} }}

[resources.web-ip]
type = "ip"
params = {{ address = "{vip}", prefix = 24, nic = "eth0", arp_count = 1 }}
monitor = {{ interval = "1s", timeout = "2s" }}
{filesystem}
[resources.web-server]
type = "application"
depends_on = ["{resources[-2]}"]
monitor = {{ interval = "1s", timeout = "2s" }}
stop_timeout = "5s"
[resources.web-server.params]
start = {json.dumps(server_command(marker, vip))}
{cwd}health_url = "http://{vip}/"
"""


#: One change a sampler saw: its time, then whether each thing watched is there.
Change = TypeVar("Change", bound=tuple[float, ...])


@dataclass
class Changes(Generic[Change]):
    """What one host's sampler saw, one tuple per change."""

    host: str
    changes: list[Change]

    def intervals(self, which: int, until: float = float("inf")) -> list[tuple[float, float]]:
        """(from, to) while the address (0), the server (1) or the mount (2) was there; one
        still there at the end lasts until ``until`` (e.g. when the host was powered off,
        which killed its sampler too)."""
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


#: From a :class:`Sampler`: (time, holds the address, runs the server) per change.
Timeline = Changes[tuple[float, bool, bool]]
#: From an :class:`OutsideSampler`: (time, address, server, has the disk mounted) per change.
OutsideTimeline = Changes[tuple[float, bool, bool, bool]]


class Reader:
    """A program started inside a host, the client or (a :class:`NsCluster`) on the machine
    itself, whose output is read, as it comes, by a thread: each line but "ready" goes,
    split, to :meth:`parse`."""

    def __init__(self, where: Host | Client | NsCluster, argv: list[str]) -> None:
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


class OutsideSampler(Reader):
    """The :data:`OUTSIDE_SAMPLER` of a cluster's powered hosts, on the machine itself; its
    changes read as they come. ``device``: the shared disk's block device, or None."""

    def __init__(self, c: NsCluster, vip: str, marker: str, device: str | None = None,
                 period: float = PERIOD) -> None:
        self.changes: dict[str, list[tuple[float, bool, bool, bool]]] = {
            name: [] for name, h in c.hosts.items() if h.powered}
        self.samples = 0
        self.longest = 0.0  # the longest time between two samples
        rdev = os.stat(device).st_rdev if device else None
        majmin = "-" if rdev is None else f"{os.major(rdev)}:{os.minor(rdev)}"
        specs = [f"{h.name}:{h.netns}:{h.keeper.pid}" for h in c.hosts.values()
                 if h.powered and h.keeper is not None]
        super().__init__(c, [sys.executable, "-c", OUTSIDE_SAMPLER, str(period), vip, marker,
                             majmin, *specs])

    def parse(self, fields: list[str]) -> None:
        if fields[0] == "stats":
            self.samples += int(fields[1])
            self.longest = max(self.longest, float(fields[2]))
            return
        t, host, *state = fields
        vip, srv, mnt = (x == "1" for x in state)
        self.changes[host].append((float(t), vip, srv, mnt))

    def now(self, host: str) -> tuple[bool, bool, bool] | None:
        """(address, server, mounted) on ``host`` as last seen; None before the first
        sample."""
        changes = self.changes[host]
        return (changes[-1][1], changes[-1][2], changes[-1][3]) if changes else None

    def wait_until(self, c: NsCluster, expect: dict[str, tuple[bool, bool, bool]],
                   timeout: float = 20) -> None:
        """Return once each host is sampled as ``expect`` says (host -> (address, server,
        mounted))."""
        c.wait_for(lambda: all(self.now(n) == e for n, e in expect.items()), timeout,
                   f"every host sampled as {expect}")

    def stop(self) -> dict[str, OutsideTimeline]:
        self.close()
        return {host: OutsideTimeline(host, list(changes))
                for host, changes in self.changes.items()}

    def summary(self) -> str:
        """How often it sampled, in words (for the test's output)."""
        return (f"{self.samples} samples of every host, at most "
                f"{1000 * self.longest:.1f} ms apart")


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


def overlaps(lines: Mapping[str, Changes[Any]], which: int, until: dict[str, float] | None = None
             ) -> list[tuple[str, float, float, str, float, float]]:
    """Pairs of intervals of different hosts that overlap, for the address (0), the server
    (1) or the mount (2): (host, from, to, other host, from, to). ``until``: host -> when its
    timeline ends (see :meth:`Changes.intervals`)."""
    ends = until or {}
    spans = [(h, a, b) for h, line in lines.items()
             for a, b in line.intervals(which, ends.get(h, float("inf")))]
    found = []
    for i, (h1, a1, b1) in enumerate(spans):
        for h2, a2, b2 in spans[i + 1:]:
            if h1 != h2 and a1 < b2 and a2 < b1:
                found.append((h1, a1, b1, h2, a2, b2))
    return found
