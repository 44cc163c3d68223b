"""A cluster of real "hosts" on one machine: Linux network namespaces on a bridged switch, each
host running a real ``vigil node run`` daemon. For the system tests and the benchmarks.

Layout (all of it in namespaces this harness creates; nothing is added to the machine's own
network namespace, and every address is from 198.18.0.0/15, the benchmarking range)::

    switch namespace  <prefix>-sw: one Linux bridge per link network
        br0  link "lan0", 198.18.0.0/24     br1  link "lan1", 198.18.1.0/24
    host namespaces   <prefix>-<node>: interface eth<k> on link k, address 198.18.<k>.<i>/24
                      for the i-th host (1-based), plus lo; with ``spare_nic``, a second
                      NIC on network 0, eth0b, without an address of its own
    client namespace  <prefix>-cl: eth0 = 198.18.0.250/24 on br0, an outside client

``<prefix>`` is ``vg<pid>c<counter>``, unique per harness. Host i's switch-side port on link k is
named ``h<i>l<k>`` (the client's is ``cl0``; the spare NIC's ``h<i>s0``). Every host has
``arp_ignore = 1`` and ``ignore_routes_with_linkdown = 1``, as a host with two NICs on one
network wants (docs/resources.md, ``ip``).

Each host also has its own mount and UTS namespaces, held by one long-lived *keeper* process
(``sleep infinity``): its host name is the node name, and it has private tmpfs mounts over
``/run/resource-agents`` (OCF agents' state files, HA_RSCTMP), ``/run/lock`` and ``/run/mount``
(libmount's utab), as a real machine has its own /run. Every later process of a host (daemon,
commands) enters the keeper's namespaces with ``nsenter``, so whatever a daemon mounts is
invisible outside its host and vanishes when the host is powered off (all its processes die).
The rest of the file system, ``/tmp`` included, is shared: the harness directory (config, key,
logs, and each node's ``runtime_dir``, ``<tmp>/run/<node>``) survives a power cycle, as a disk
would.

**Disks of their own.** :meth:`NsCluster.add_disks` gives hosts each a filesystem of its own
(btrfs by default, as the ``mirror`` resource wants): an image file ``<tmp>/disks/<node>.img``
on a loop device, mounted at the same path on every host, each in its own mount namespace (a
:class:`~tests.support.loopfs.LoopFilesystem` whose mount runs inside the host). Powering a
host off kills its keeper with the rest and lets go of its mount namespace, which the kernel
then tears down: the filesystem is unmounted and its loop device (auto-clear) detached,
within milliseconds. The
image stays, and :meth:`~NsCluster.power_on` mounts it again in the new keeper's namespace
before the daemon starts: the host's data survives its power cycle, as a real disk's does.
One difference from a power loss: that unmount commits what the page cache held, so writes a
process made but did not fsync survive too (tests count only what was fsynced). Closing the
harness waits for every disk's loop device to go and removes the images; a test process that
dies leaves nothing mounted (its hosts' namespaces die with their processes), and its images
go with its tmp dir (swept by the next harness).

Processes are started through :func:`vigil.resources.proc.spawn`, so they get SIGKILL if the
test process dies (an observer that must outlive a host runs on the machine itself, started
by :meth:`NsCluster.popen`); namespaces and tmp dirs left by a test process that died anyway
are removed by the next harness (only those whose creator PID is gone).

Operations: :meth:`NsCluster.start`, :meth:`~NsCluster.sigkill`, :meth:`~NsCluster.sigterm`
(the daemon; :meth:`~NsCluster.start_all` also starts the guardians first, and keeps each in
``Host.guardian``); :meth:`~NsCluster.power_off` / :meth:`~NsCluster.power_on` (the whole host);
:meth:`~NsCluster.cut_link` / :meth:`~NsCluster.restore_link` (one switch port down/up);
:meth:`~NsCluster.pull_cable` / :meth:`~NsCluster.plug_cable` (the same by NIC name, the spare
included); :meth:`~NsCluster.dead_port` (a port that keeps its link but passes nothing);
:meth:`~NsCluster.partition` / :meth:`~NsCluster.heal`. A partition moves the switch ports of
each side onto a bridge of its own (``br<k>s<side>``), so the sides cannot talk while each
side still forms one network; the client stays on the original bridge unless
``client_side`` names a side. (The simpler-looking VLAN filtering is not used: many kernels,
those of small VMs among them, are built without ``CONFIG_BRIDGE_VLAN_FILTERING``.)

Use it as a context manager, or through the pytest fixtures made by :func:`nscluster_fixture`
and :func:`nscluster_factory`; :func:`require_nscluster` skips a test where it cannot run
(not root, a tool missing, namespaces not allowed)::

    with NsCluster(hosts=3, links=2) as c:
        c.write_config(GROUPS_TOML)
        c.start_all()
        c.wait_for(lambda: c.holder("web"), 30, "web running somewhere")
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final

from tests.support.cluster_harness import wait_for as _wait_for
from tests.support.loopfs import LoopFilesystem
from vigil.config import write_key
from vigil.fencing.netns import held, kill_all, ns_id, pids_in
from vigil.local.protocol import request
from vigil.resources import proc

__all__ = [
    "Client",
    "Host",
    "NsCluster",
    "NsClusterError",
    "nscluster_factory",
    "nscluster_fixture",
    "nscluster_unavailable",
    "require_nscluster",
]

PREFIX: Final = "vg"
#: Link k's network is 198.18.k.0/24 (198.18.0.0/15 is reserved for benchmarking, RFC 2544).
MAX_LINKS: Final = 2
#: the second NIC of every host on network 0, with ``spare_nic``
SPARE_NIC: Final = "eth0b"
MAX_HOSTS: Final = 200
CLIENT_OCTET: Final = 250
DEFAULT_PORT: Final = 7400
DEFAULT_TIMING: Final = {
    "heartbeat_interval": "100ms",
    "dead_time": "600ms",
    "step_timeout": "2s",
    "fence_margin": "200ms",
}
#: Directories each host gets its own tmpfs over (see the module docstring), with their modes.
PRIVATE_RUN_DIRS: Final = (("/run/resource-agents", "0755"), ("/run/lock", "1777"),
                           ("/run/mount", "0755"))
REQUIRED_TOOLS: Final = ("ip", "nsenter", "unshare")
#: Bound of every wait for processes to die after SIGKILL.
KILL_WAIT: Final = 10.0
_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_STALE_RE: Final = re.compile(rf"^{PREFIX}(\d+)c\d+-")
_counter = itertools.count(1)
_live: set[NsCluster] = set()
_live_lock = threading.Lock()


class NsClusterError(RuntimeError):
    """The harness could not do what was asked (a command failed, a host is off...)."""


# ---- availability -------------------------------------------------------------------------

_unavailable: list[str | None] = []


def nscluster_unavailable() -> str | None:
    """Why namespace clusters cannot run here (a reason for pytest.skip), or None if they can.

    Checked once per process: root, the tools, and creating (and deleting) one namespace.
    """
    if _unavailable:
        return _unavailable[0]
    reason: str | None = None
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if not sys.platform.startswith("linux"):
        reason = "needs Linux network namespaces"
    elif os.geteuid() != 0:
        reason = "needs root: creates network namespaces (run the tests as root)"
    elif missing:
        reason = (f"needs {', '.join(missing)} (Debian: apt-get install iproute2 util-linux)")
    else:
        probe = f"{PREFIX}{os.getpid()}c0-probe"
        out = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                             timeout=30)
        if out.returncode != 0:
            reason = f"cannot create a network namespace: {out.stderr.strip()}"
        else:
            probe_bridge = subprocess.run(
                ["ip", "-n", probe, "link", "add", "br0", "type", "bridge"],
                capture_output=True, text=True, timeout=30)
            if probe_bridge.returncode != 0:
                reason = f"cannot create a Linux bridge: {probe_bridge.stderr.strip()}"
            subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    _unavailable.append(reason)
    return reason


def require_nscluster() -> None:
    """pytest.skip the calling test, with the reason, where namespace clusters cannot run."""
    reason = nscluster_unavailable()
    if reason is not None:
        import pytest

        pytest.skip(reason)


# ---- low-level helpers --------------------------------------------------------------------


def _cmd(argv: Sequence[str], timeout: float = 30) -> str:
    """Run a set-up command on the machine; raise NsClusterError with its stderr if it fails."""
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise NsClusterError(f"`{shlex.join(argv)}` failed (exit {out.returncode}): "
                             f"{out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def _sweep_stale() -> None:
    """Delete namespaces and tmp dirs a dead test process left behind (only if its PID is
    gone)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir("/tmp"):
            m = _STALE_RE.match(entry.name)
            if m is not None and entry.is_dir(follow_symlinks=False) \
                    and not Path(f"/proc/{m.group(1)}").exists():
                shutil.rmtree(entry.path, ignore_errors=True)
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return
    for name in names:
        m = _STALE_RE.match(name)
        if m is None or Path(f"/proc/{m.group(1)}").exists():
            continue
        with held(f"/run/netns/{name}") as ns:
            if ns is not None:
                kill_all(functools.partial(pids_in, [("net", ns)]), name, wait=KILL_WAIT)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def _vigil_argv() -> list[str]:
    script = Path(sys.executable).parent / "vigil"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "vigil.cli.main"]


def _link_index(link: int | str) -> int:
    """0 for 0, "lan0" or "eth0"; 1 for 1, "lan1", "eth1"."""
    if isinstance(link, int) and not isinstance(link, bool):
        return link
    if isinstance(link, str):
        for stem in ("lan", "eth"):
            if link.startswith(stem) and link[len(stem):].isdigit():
                return int(link[len(stem):])
    raise ValueError(f"link {link!r}: give an index (0, 1) or a name such as 'lan0' or 'eth0'")


# ---- hosts --------------------------------------------------------------------------------


class _Namespace:
    """Something that runs commands in namespaces (a host or the client)."""

    netns: str
    cluster: NsCluster

    def _prefix(self, wd: Path | None = None) -> list[str]:
        raise NotImplementedError

    def popen(self, argv: Sequence[str], *, cwd: str | Path | None = None,
              **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside; it is SIGKILLed when the host powers off or the harness
        closes (and when the test process dies)."""
        wd = Path(cwd) if cwd is not None else self.cluster.tmp
        process = proc.spawn([*self._prefix(wd), *argv], **popen_kwargs)
        self.cluster._track(process)
        return process

    def run(self, argv: Sequence[str], *, timeout: float = 30, input: str | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside and wait (at most ``timeout`` s: then it is killed and the
        result has returncode -9 and what it printed so far)."""
        process = self.popen(argv, cwd=cwd, stdin=subprocess.PIPE if input is not None
                             else subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate(timeout=KILL_WAIT)
            err += f"\n[nscluster: killed after {timeout:g}s]"
        return subprocess.CompletedProcess(list(argv), process.returncode, out, err)


class Host(_Namespace):
    """One machine: a network namespace plus the keeper's mount and UTS namespaces."""

    def __init__(self, cluster: NsCluster, name: str, index: int) -> None:
        self.cluster = cluster
        self.name = name
        self.index = index
        self.netns = f"{cluster.prefix}-{name}"
        self.keeper: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        #: the guardian :meth:`NsCluster.start_all` started here (None: none, or the daemon
        #: started its own)
        self.guardian: subprocess.Popen[bytes] | None = None
        self.powered = False
        self.cut: set[int] = set()
        self._mnt_ns: tuple[int, int] | None = None
        #: the host's own disk (:meth:`NsCluster.add_disks`), mounted while it is powered on
        self.disk: LoopFilesystem | None = None
        # The keeper's mount namespace, held open while the host is on: a namespace's number
        # is given to a new one as soon as it is freed, so a kill loop that goes on looking
        # for processes in it after its last one died would kill in someone else's.
        self._mnt_fd: int | None = None

    def release_namespace(self) -> None:
        """Let the host's mount namespace go (after its processes are killed)."""
        if self._mnt_fd is not None:
            os.close(self._mnt_fd)
            self._mnt_fd = None
        self._mnt_ns = None

    def __repr__(self) -> str:
        return f"Host({self.name}, {self.netns}, {'on' if self.powered else 'off'})"

    def address(self, link: int | str = 0) -> str:
        """This host's address on a link (198.18.<link>.<index>)."""
        return f"198.18.{_link_index(link)}.{self.index}"

    def port(self, link: int | str) -> str:
        """The switch-side port of this host on a link."""
        return f"h{self.index}l{_link_index(link)}"

    def spare_port(self) -> str:
        """The switch-side port of this host's spare NIC (``eth0b``) on network 0."""
        return f"h{self.index}s0"

    def nic_port(self, nic: str) -> str:
        """The switch-side port of one of this host's NICs (``eth0``, ``eth1``, ``eth0b``)."""
        if nic == SPARE_NIC and self.cluster.spare_nic:
            return self.spare_port()
        if nic.startswith("eth") and nic[3:].isdigit() and int(nic[3:]) < self.cluster.links:
            return self.port(int(nic[3:]))
        raise ValueError(f"host {self.name} has no NIC {nic!r}")

    def _prefix(self, wd: Path | None = None) -> list[str]:
        if not self.powered or self.keeper is None:
            raise NsClusterError(f"host {self.name} is powered off: power_on() it first")
        return ["nsenter", "--target", str(self.keeper.pid), "--net", "--mount", "--uts",
                f"--wd={wd or self.cluster.tmp}", "--"]

    def pids(self) -> list[int]:
        """Every live process of this host (in its network or mount namespace)."""
        namespaces = [("net", ns) for ns in [ns_id(f"/run/netns/{self.netns}")] if ns]
        if self._mnt_ns is not None:
            namespaces.append(("mnt", self._mnt_ns))
        return pids_in(namespaces)

    def inside(self, path: str | Path) -> Path:
        """``path`` as this host sees it (its mounts), to read from the test process:
        through its keeper's root, ``/proc/<keeper>/root/<path>``. Valid while the host is
        powered on (and until its keeper changes)."""
        if not self.powered or self.keeper is None:
            raise NsClusterError(f"host {self.name} is powered off: power_on() it first")
        return Path(f"/proc/{self.keeper.pid}/root") / Path(path).relative_to("/")

    @property
    def daemon_running(self) -> bool:
        return self.daemon is not None and self.daemon.poll() is None


class Client(_Namespace):
    """The outside client on link lan0 (198.18.0.250): no daemon, the machine's mounts."""

    def __init__(self, cluster: NsCluster) -> None:
        self.cluster = cluster
        self.netns = f"{cluster.prefix}-cl"
        self.address = f"198.18.0.{CLIENT_OCTET}"
        self.port = "cl0"

    def _prefix(self, wd: Path | None = None) -> list[str]:
        return ["ip", "netns", "exec", self.netns]

    def answers(self, address: str, port: int = 7, timeout: float = 1.0) -> bool:
        """Whether ``address`` answers at all: a ping reply if ``ping`` is installed, else a
        TCP connect to ``port`` that is accepted or refused (a refusal is an answer too)."""
        if shutil.which("ping"):
            out = self.run(["ping", "-n", "-c1", f"-W{max(1, round(timeout))}", address],
                           timeout=timeout + 10)
            return out.returncode == 0
        probe = ("import socket,sys\n"
                 "s=socket.socket(); s.settimeout(float(sys.argv[3]))\n"
                 "try: s.connect((sys.argv[1], int(sys.argv[2])))\n"
                 "except ConnectionRefusedError: pass\n"
                 "except OSError: sys.exit(1)\n")
        out = self.run([sys.executable, "-c", probe, address, str(port), str(timeout)],
                       timeout=timeout + 10)
        return out.returncode == 0

    def http_get(self, url: str, timeout: float = 2.0) -> str | None:
        """The body of ``url`` fetched from the client, or None if that failed."""
        fetch = ("import sys,urllib.request\n"
                 "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))"
                 ".read().decode(errors='replace'))\n")
        out = self.run([sys.executable, "-c", fetch, url, str(timeout)], timeout=timeout + 10)
        return out.stdout if out.returncode == 0 else None


HostRef = Host | str


# ---- the cluster --------------------------------------------------------------------------


class NsCluster:
    """N hosts (network namespaces) on a switch namespace, each running ``vigil node run``.

    ``hosts``: how many (names ``n1``, ``n2``...) unless ``names`` gives them; ``links``: 1 or
    2 networks (``lan0``/``eth0``, ``lan1``/``eth1``); ``port``: the cluster port on every
    link; ``timing``: the ``[timing]`` table (defaults: short, as in tests/test_daemons.py);
    ``tmp``: the directory for config, key, logs and runtime dirs (default: a new one under
    /tmp, removed on close; it must be short, Unix socket paths are limited to 107 bytes).
    """

    def __init__(self, hosts: int = 3, links: int = 1, *, names: Sequence[str] | None = None,
                 port: int = DEFAULT_PORT, timing: dict[str, str] | None = None,
                 tmp: str | Path | None = None, cluster_name: str | None = None,
                 spare_nic: bool = False) -> None:
        if names is not None:
            names = list(names)
            hosts = len(names)
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"hosts={hosts}: a namespace cluster has 1 to {MAX_HOSTS} hosts")
        if not 1 <= links <= MAX_LINKS:
            raise ValueError(f"links={links}: a namespace cluster has 1 or {MAX_LINKS} links")
        names = names or [f"n{i}" for i in range(1, hosts + 1)]
        for n in names:
            if not isinstance(n, str) or not _NAME_RE.match(n):
                raise ValueError(f"host name {n!r}: use a node name (lowercase letter first, "
                                 "then lowercase letters, digits, '_' or '-')")
        if len(set(names)) != len(names):
            raise ValueError(f"host names {names}: each name must be unique")
        if not 1 <= port <= 65535:
            raise ValueError(f"port={port}: must be 1..65535")
        self.prefix = f"{PREFIX}{os.getpid()}c{next(_counter)}"
        self.links = links
        #: each host has a second NIC on network 0, ``eth0b``, without an address of its own
        self.spare_nic = spare_nic
        #: cables pulled by :meth:`pull_cable`: (host, switch port)
        self._pulled: set[tuple[str, str]] = set()
        self.port = port
        self.timing = dict(DEFAULT_TIMING if timing is None else timing)
        # unique, like the prefix: nodes' cgroups are named after cluster and node
        self.cluster_name = cluster_name or self.prefix
        self.hosts: dict[str, Host] = {n: Host(self, n, i) for i, n in enumerate(names, 1)}
        self.client = Client(self)
        self.switch = f"{self.prefix}-sw"
        self._own_tmp = tmp is None
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-", dir="/tmp") if tmp is None
                        else tmp)
        self.config = self.tmp / "cluster.toml"
        self.key = self.tmp / "cluster.key"
        longest = self.tmp / "run" / max(names, key=len) / "control.sock"
        if len(str(longest).encode()) > 107:
            if self._own_tmp:
                shutil.rmtree(self.tmp, ignore_errors=True)
            raise ValueError(f"tmp={self.tmp}: too long for the control socket path {longest} "
                             "(Unix socket paths are limited to 107 bytes); use a shorter one")
        self._namespaces: list[str] = []  # created, in order
        self._started: list[subprocess.Popen[Any]] = []
        self._logs: dict[str, IO[bytes]] = {}
        self._sides: dict[str, int] = {}  # switch port -> side bridge number, while partitioned
        self._closed = False

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> NsCluster:
        with _live_lock:
            _live.add(self)
        try:
            _sweep_stale()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        except NsClusterError:
            if exc[0] is None:
                raise  # else the test's own failure is the one to show

    def _ip(self, netns: str, *args: str) -> str:
        # Every interface command names one of our namespaces: nothing touches the machine's.
        if netns not in self._namespaces:
            raise NsClusterError(f"{netns} is not a namespace of this harness")
        return _cmd(["ip", "-n", netns, *args])

    def _add_netns(self, name: str) -> None:
        _cmd(["ip", "netns", "add", name])
        self._namespaces.append(name)
        self._ip(name, "link", "set", "lo", "up")
        # a route through a NIC without carrier is not used (what a host with two NICs on
        # one network needs, so that answers leave by the NIC that still works)
        # and only the NIC that holds an address answers ARP for it
        for scope in ("all", "default"):
            _cmd(["ip", "netns", "exec", name, "sysctl", "-qw",
                  f"net.ipv4.conf.{scope}.ignore_routes_with_linkdown=1",
                  f"net.ipv4.conf.{scope}.arp_ignore=1"])

    def _build(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        if not self.key.exists():
            write_key(self.key)
        self._add_netns(self.switch)
        for k in range(self.links):
            self._ip(self.switch, "link", "add", f"br{k}", "type", "bridge")
            self._ip(self.switch, "link", "set", f"br{k}", "up")
        for host in self.hosts.values():
            self._add_netns(host.netns)
            for k in range(self.links):
                self._plug(host.netns, f"eth{k}", host.port(k), f"br{k}",
                           f"{host.address(k)}/24")
            self._plug_spare(host)
            self._boot(host)
        self._add_netns(self.client.netns)
        self._plug(self.client.netns, "eth0", self.client.port, "br0",
                   f"{self.client.address}/24")

    def _plug(self, netns: str, ifname: str, port: str, bridge: str, address: str | None,
              up: bool = True) -> None:
        # The pair is born in the switch namespace with its far end moved straight into the
        # host's: neither end ever exists in the machine's own namespace.
        self._ip(self.switch, "link", "add", port, "type", "veth", "peer", "name", ifname,
                 "netns", netns)
        self._ip(self.switch, "link", "set", port, "master", bridge, "up" if up else "down")
        if address is not None:
            self._ip(netns, "addr", "add", address, "dev", ifname)
        self._ip(netns, "link", "set", ifname, "up")

    def _plug_spare(self, h: Host) -> None:
        if self.spare_nic:
            port = h.spare_port()
            self._plug(h.netns, SPARE_NIC, port, "br0", None,
                       up=(h.name, port) not in self._pulled)

    def pull_cable(self, host: HostRef, nic: str) -> None:
        """Pull the cable of one NIC of the host (``eth0``, ``eth1``, ``eth0b``): its
        switch port goes down, so the host's NIC loses its carrier."""
        self._cable(host, nic, plugged=False)

    def dead_port(self, host: HostRef, nic: str, dead: bool = True) -> None:
        """A switch port that keeps its link but passes nothing (``dead``: taken off its
        bridge), as a broken switch or uplink: the host's NIC keeps its carrier. Only on an
        unpartitioned network."""
        h = self.host(host)
        port = h.nic_port(nic)
        if dead:
            self._ip(self.switch, "link", "set", port, "nomaster")
        else:
            self._ip(self.switch, "link", "set", port, "master", f"br{nic[3]}")

    def plug_cable(self, host: HostRef, nic: str) -> None:
        """Plug it back (it stays down while the host is powered off)."""
        self._cable(host, nic, plugged=True)

    def _cable(self, host: HostRef, nic: str, *, plugged: bool) -> None:
        h = self.host(host)
        port = h.nic_port(nic)
        if nic != SPARE_NIC:  # a link's NIC: as cut_link and restore_link
            (self.restore_link if plugged else self.cut_link)(h, int(nic[3:]))
            return
        if plugged:
            self._pulled.discard((h.name, port))
        else:
            self._pulled.add((h.name, port))
        if h.powered or not plugged:
            self._ip(self.switch, "link", "set", port, "up" if plugged else "down")

    def _boot(self, host: Host) -> None:
        """Start the host's keeper: new mount and UTS namespaces with a private /run."""
        mounts = "; ".join(f"mkdir -p {d}; mount -t tmpfs -o mode={mode} tmpfs {d}"
                           for d, mode in PRIVATE_RUN_DIRS)
        # `ip netns exec` mounts a sysfs of its own, without the cgroup v2 hierarchy: bring
        # it back, so that the node's guardian can kill its resources' cgroups
        cgroup2 = "mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null || true"
        script = (f"set -e; {mounts}; {cgroup2}; mkdir -p /run/lock/subsys; "
                  f"echo {host.name} > /proc/sys/kernel/hostname; exec sleep infinity")
        log = self._log(host)
        log.write(f"--- nscluster {time.strftime('%H:%M:%S')}: power on {host.name}\n".encode())
        log.flush()
        keeper = proc.spawn(["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts",
                             "--propagation", "private", "--", "sh", "-c", script],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.tmp)
        self._track(keeper)
        host.keeper = keeper

        def ready() -> bool:
            if keeper.poll() is not None:
                raise NsClusterError(f"host {host.name}: the keeper exited with "
                                     f"{keeper.returncode} while setting up; see "
                                     f"{self.log_path(host)}:\n{self.log(host)[-2000:]}")
            try:
                return os.readlink(f"/proc/{keeper.pid}/exe").endswith("/sleep")
            except OSError:
                return False

        _wait_for(ready, 20, f"the keeper of host {host.name} to set up its namespaces", 0.01)
        host._mnt_fd = os.open(f"/proc/{keeper.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(host._mnt_fd)
        host._mnt_ns = (st.st_dev, st.st_ino)
        host.powered = True

    def close(self) -> None:
        """Kill every process of ours, delete our namespaces and (if ours) the tmp dir.
        Raises NsClusterError naming what could not be cleaned up (after trying it all)."""
        if self._closed:
            return
        self._closed = True
        problems: list[str] = []
        namespaces: list[tuple[str, tuple[int, int]]] = []
        for name in self._namespaces:
            ns = ns_id(f"/run/netns/{name}")
            if ns is not None:
                namespaces.append(("net", ns))
        namespaces += [("mnt", h._mnt_ns) for h in self.hosts.values() if h._mnt_ns]
        problems += kill_all(lambda: [*pids_in(namespaces), *self._own_live()], self.prefix,
                             wait=KILL_WAIT, reap=self._started)
        for host in self.hosts.values():
            host.powered = False
            host.release_namespace()
        for name in reversed(self._namespaces):
            out = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True,
                                 timeout=30)
            if out.returncode != 0 and Path(f"/run/netns/{name}").exists():
                problems.append(f"ip netns del {name}: {out.stderr.strip()}")
        problems += self._remove_disks()
        for log in self._logs.values():
            log.close()
        if self._own_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        with _live_lock:
            _live.discard(self)
        if problems:
            raise NsClusterError("cleanup incomplete: " + "; ".join(problems))

    # -- disks ------------------------------------------------------------------------------

    def add_disks(self, mount_point: str | Path, *, hosts: Iterable[HostRef] | None = None,
                  size_mb: int = 256, fstype: str = "btrfs", mount_options: str = "subvolid=5"
                  ) -> None:
        """Give each host (default: all) a new ``fstype`` filesystem of its own, mounted at
        ``mount_point`` inside the host (the module docstring: "Disks of their own"); a host
        powered off gets it mounted when it is powered on. The default options mount a
        btrfs's top level (subvolume id 5), as the ``mirror`` resource's ``root`` wants.

        Prefer a mount point under :attr:`tmp` (the same path on every host all the same):
        a directory elsewhere, such as /srv/mirror, is made on the machine and stays."""
        for h in [self.host(x) for x in hosts] if hosts is not None else self.hosts.values():
            if h.disk is not None:
                raise NsClusterError(f"host {h.name} already has a disk "
                                     f"({h.disk.image} on {h.disk.mount_point})")
            disk = LoopFilesystem(
                self.tmp / "disks", h.name, fstype=fstype, size_mb=size_mb,
                mount_options=mount_options, mount_point=Path(mount_point),
                run=functools.partial(self._run_on, h),
                mountinfo=functools.partial(self._mountinfo_of, h))
            disk.image.parent.mkdir(exist_ok=True)
            disk.create()
            h.disk = disk
            if h.powered:
                self._mount_disk(h, disk)

    @staticmethod
    def _run_on(h: Host, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return h.run(argv, timeout=60)

    @staticmethod
    def _mountinfo_of(h: Host) -> str:
        return f"/proc/{h.keeper.pid if h.keeper else 0}/mountinfo"

    def _mount_disk(self, h: Host, disk: LoopFilesystem) -> None:
        # The filesystem of the host's previous life goes with its mount namespace, a moment
        # after its last process: mounting the image again before would meet it still there.
        try:
            _wait_for(disk.released, KILL_WAIT, "", 0.02)
        except AssertionError:
            raise NsClusterError(
                f"host {h.name}: its disk {disk.image} is still attached to a loop device "
                f"{KILL_WAIT:g}s after its previous mount namespace ended (`losetup -j "
                f"{disk.image}`: who holds it?)") from None
        disk.mount()

    def _remove_disks(self) -> list[str]:
        """After every process is gone: wait for each disk's loop device to go, remove the
        images. What could not be removed, for close()'s report."""
        problems = []
        for h in self.hosts.values():
            if h.disk is None:
                continue
            try:
                _wait_for(h.disk.released, KILL_WAIT, "", 0.02)
            except AssertionError:
                problems.append(f"the loop device of {h.disk.image} is still attached "
                                f"(`losetup -j {h.disk.image}`: who holds it?)")
            h.disk.remove()
        return problems

    def popen(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` on the machine itself, outside every host: an observer that must
        outlive a host's power-off. It is SIGKILLed when the harness closes (and when the
        test process dies)."""
        popen_kwargs.setdefault("cwd", self.tmp)
        process = proc.spawn(list(argv), **popen_kwargs)
        self._track(process)
        return process

    def _track(self, process: subprocess.Popen[Any]) -> None:
        # poll() reaps the finished ones, so the list stays short however many commands ran.
        self._started = [p for p in self._started if p.poll() is None]
        self._started.append(process)

    def _own_live(self) -> list[int]:
        return [p.pid for p in self._started if p.poll() is None]

    # -- configuration ------------------------------------------------------------------------

    def config_text(self, groups: str = "", *, cluster_extra: str = "") -> str:
        """The cluster file: ``[cluster]``, ``[timing]`` and ``[nodes]`` made from the layout,
        then ``groups`` (the ``[groups.*]`` and ``[resources.*]`` tables) as given.
        ``cluster_extra`` adds lines to ``[cluster]`` (e.g. ``no_quorum_policy = "stop"``)."""
        lines = ["[cluster]", f'name = "{self.cluster_name}"', f'key_file = "{self.key}"',
                 f'runtime_dir = "{self.tmp}/run"', cluster_extra, "", "[timing]"]
        lines += [f'{k} = "{v}"' for k, v in self.timing.items()]
        lines.append("")
        for host in self.hosts.values():
            links = ", ".join(f'{{ name = "lan{k}", address = "{host.address(k)}", '
                              f"port = {self.port} }}" for k in range(self.links))
            lines += [f"[nodes.{host.name}]", f"links = [{links}]", ""]
        return "\n".join(lines) + "\n" + groups

    def write_config(self, groups: str = "", *, cluster_extra: str = "",
                     check: bool = True) -> Path:
        """Write the cluster file (see :meth:`config_text`) and return its path. With
        ``check``, ``vigil config check`` on a host must accept it (else NsClusterError with its
        complaints), so a typo fails here rather than as daemons that never come up."""
        self.config.write_text(self.config_text(groups, cluster_extra=cluster_extra))
        if check:
            # on a host, whose interfaces the resources name
            argv = [*_vigil_argv(), "config", "check", str(self.config)]
            host = next((h for h in self.hosts.values() if h.powered), None)
            out = (host.run(argv, timeout=60) if host is not None else
                   subprocess.run(argv, capture_output=True, text=True, timeout=60))
            if out.returncode != 0:
                raise NsClusterError(f"vigil config check refused {self.config}:\n"
                                     f"{out.stderr.strip() or out.stdout.strip()}")
        return self.config

    def runtime_dir(self, host: HostRef) -> Path:
        return self.tmp / "run" / self.host(host).name

    # -- hosts and daemons --------------------------------------------------------------------

    def host(self, host: HostRef) -> Host:
        if isinstance(host, Host):
            return host
        try:
            return self.hosts[host]
        except KeyError:
            raise KeyError(f"no host named {host!r} (hosts: {', '.join(self.hosts)})") from None

    def log_path(self, host: HostRef) -> Path:
        return self.tmp / f"{self.host(host).name}.log"

    def _log(self, host: Host) -> IO[bytes]:
        if host.name not in self._logs:
            self._logs[host.name] = open(self.log_path(host), "ab")  # noqa: SIM115 - close()
        return self._logs[host.name]

    def log(self, host: HostRef) -> str:
        """The host's log: its daemon's output (every run), with harness markers."""
        path = self.log_path(host)
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, host: HostRef, *, log_level: str = "debug") -> subprocess.Popen[bytes]:
        """Start ``vigil node run`` in the host (after :meth:`write_config`)."""
        h = self.host(host)
        if not self.config.exists():
            raise NsClusterError(f"no cluster file at {self.config}: call write_config() first")
        if not h.powered:
            raise NsClusterError(f"host {h.name} is powered off: power_on() it instead")
        if h.daemon is not None and h.daemon.poll() is None:
            raise NsClusterError(f"host {h.name} already runs a daemon (pid {h.daemon.pid})")
        log = self._log(h)
        log.write(f"--- nscluster {time.strftime('%H:%M:%S')}: start daemon\n".encode())
        log.flush()
        h.daemon = h.popen([*_vigil_argv(), "node", "run", "-c", str(self.config), "-n", h.name,
                            "--log-level", log_level],
                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        return h.daemon

    def start_all(self) -> None:
        """Start every powered host's daemon. Their guardians are started first, all at
        once, so that no daemon comes up a second later than the others because it had to
        start its own (the first transition would then go without it)."""
        hosts = [h for h in self.hosts.values() if h.powered and not h.daemon_running]
        if self._guarded():
            for h in hosts:
                if not (self.runtime_dir(h) / "guard.sock").exists():
                    self.runtime_dir(h).mkdir(parents=True, exist_ok=True)
                    h.guardian = h.popen(
                        [*_vigil_argv(), "guard", "-c", str(self.config), "-n", h.name,
                         "--follow-daemon"], stdin=subprocess.DEVNULL, stdout=self._log(h),
                        stderr=subprocess.STDOUT)
            for h in hosts:
                sock = self.runtime_dir(h) / "guard.sock"
                _wait_for(sock.exists, 30, f"the guardian of {h.name}", 0.05)
        for h in hosts:
            self.start(h)

    def _guarded(self) -> bool:
        """The cluster file's fencer is the guardian (its default)."""
        from vigil.config import ConfigError, load

        try:
            return load(self.config).fencer == "guardian"
        except (ConfigError, OSError):  # a broken file is the daemon's to report
            return False

    def sigkill(self, host: HostRef) -> None:
        """SIGKILL the host's daemon only (its children die with it: see vigil's proc)."""
        h = self.host(host)
        if h.daemon is None or h.daemon.poll() is not None:
            raise NsClusterError(f"host {h.name} runs no daemon")
        h.daemon.send_signal(signal.SIGKILL)
        h.daemon.wait(KILL_WAIT)
        h.daemon = None

    def sigterm(self, host: HostRef, timeout: float = 20) -> int | None:
        """SIGTERM the host's daemon and wait for it to leave; its exit code, or None if it
        was still running after ``timeout`` s (then it is left running)."""
        h = self.host(host)
        if h.daemon is None or h.daemon.poll() is not None:
            raise NsClusterError(f"host {h.name} runs no daemon")
        daemon = h.daemon
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        h.daemon = None
        return code

    def power_off(self, host: HostRef, *, cable_first: bool = False) -> None:
        """The host dies at once: SIGKILL for every process of the host, keeper included (so its
        mounts go), then its switch ports go down (its addresses vanish from the network).

        The dying processes' kernel closes their TCP connections, and the FIN/RST still
        reach the peers, which therefore learn of the death. With ``cable_first`` the ports
        go down first, so nothing leaves the host: that is how a real power loss looks to
        the peers (their connections to it stay open until they notice on their own)."""
        h = self.host(host)
        if not h.powered:
            raise NsClusterError(f"host {h.name} is already powered off")
        h.powered = False
        if cable_first:
            for k in range(self.links):
                self._ip(self.switch, "link", "set", h.port(k), "down")
        problems = kill_all(h.pids, h.name, wait=KILL_WAIT,
                            reap=[p for p in (h.keeper, h.daemon) if p])
        for k in range(self.links):
            self._ip(self.switch, "link", "set", h.port(k), "down")
        if self.spare_nic:
            self._ip(self.switch, "link", "set", h.spare_port(), "down")
        self._log(h).write(
            f"--- nscluster {time.strftime('%H:%M:%S')}: power off {h.name}\n".encode())
        self._log(h).flush()
        h.keeper = h.daemon = h.guardian = None
        h.release_namespace()
        if problems:
            raise NsClusterError("; ".join(problems))

    def power_on(self, host: HostRef, *, start_daemon: bool = True) -> None:
        """Boot the host again, as a fresh kernel: a new network namespace (no TCP state
        left from before the crash: its peers' old connections get RST, as from a rebooted
        machine) with the same interfaces and addresses, plugged in as the old ones were
        (cut links stay cut, a partition holds); a new keeper (fresh /run); and its daemon
        unless ``start_daemon`` is false."""
        h = self.host(host)
        if h.powered:
            raise NsClusterError(f"host {h.name} is already powered on")
        ports = [h.port(k) for k in range(self.links)]
        # Its cables are pulled out for good: the old namespace may outlive its name for
        # minutes (closing TCP sockets hold it), and must not keep a way onto the switch.
        for port in ports + ([h.spare_port()] if self.spare_nic else []):
            self._ip(self.switch, "link", "del", port)
        _cmd(["ip", "netns", "del", h.netns])
        self._namespaces.remove(h.netns)
        self._add_netns(h.netns)
        for k, port in enumerate(ports):
            side = self._sides.get(port)
            self._plug(h.netns, f"eth{k}", port, f"br{k}s{side}" if side else f"br{k}",
                       f"{h.address(k)}/24", up=k not in h.cut)
        self._plug_spare(h)
        self._boot(h)
        if h.disk is not None:
            self._mount_disk(h, h.disk)
        if start_daemon and self.config.exists():
            self.start(h)

    def cut_link(self, host: HostRef, link: int | str) -> None:
        """Unplug the host's cable on ``link`` (its switch port goes down)."""
        h = self.host(host)
        k = self._check_link(link)
        h.cut.add(k)
        self._ip(self.switch, "link", "set", h.port(k), "down")

    def restore_link(self, host: HostRef, link: int | str) -> None:
        """Plug it back (the port stays down while the host is powered off)."""
        h = self.host(host)
        k = self._check_link(link)
        h.cut.discard(k)
        if h.powered:
            self._ip(self.switch, "link", "set", h.port(k), "up")

    def _check_link(self, link: int | str) -> int:
        k = _link_index(link)
        if not 0 <= k < self.links:
            raise ValueError(f"link {link!r}: this cluster has links "
                             f"{', '.join(f'lan{i}' for i in range(self.links))}")
        return k

    def partition(self, *sides: Iterable[HostRef], client_side: int | None = None) -> None:
        """Split the network on every link: the hosts of each side (a list) can talk among
        themselves only. Hosts named in no side, and the client, stay on the original bridges
        together, unless ``client_side`` (0 = first side) puts the client on a side. An
        earlier partition is healed first; cut links and powered-off hosts stay so."""
        groups = [[self.host(h) for h in side] for side in sides]
        if len(groups) < 2:
            raise ValueError("partition() needs at least two sides, e.g. "
                             "partition(['n1'], ['n2', 'n3'])")
        seen: dict[str, int] = {}
        for i, side in enumerate(groups):
            for h in side:
                if h.name in seen:
                    raise ValueError(f"host {h.name} is in side {seen[h.name]} and side {i}: "
                                     "each host can be on one side only")
                seen[h.name] = i
        if client_side is not None and not 0 <= client_side < len(groups):
            raise ValueError(f"client_side={client_side}: there are sides 0..{len(groups) - 1}")
        self.heal()
        for i, side in enumerate(groups, 1):
            for k in range(self.links):
                bridge = f"br{k}s{i}"
                self._ip(self.switch, "link", "add", bridge, "type", "bridge")
                self._ip(self.switch, "link", "set", bridge, "up")
                ports = [h.port(k) for h in side]
                if k == 0 and client_side == i - 1:
                    ports.append(self.client.port)
                for port in ports:
                    self._ip(self.switch, "link", "set", port, "master", bridge)
                    self._sides[port] = i

    def heal(self) -> None:
        """Undo :meth:`partition`: every port back on its link's bridge."""
        if not self._sides:
            return
        for port in sorted(self._sides):
            k = 0 if port == self.client.port else int(port.rpartition("l")[2])
            self._ip(self.switch, "link", "set", port, "master", f"br{k}")
        for bridge in sorted({f"br{k}s{i}" for i in set(self._sides.values())
                              for k in range(self.links)}):
            self._ip(self.switch, "link", "del", bridge)
        self._sides.clear()

    # -- observation --------------------------------------------------------------------------

    def vigil(self, host: HostRef, *args: str, timeout: float = 20
              ) -> subprocess.CompletedProcess[str]:
        """Run the ``vigil`` command line inside the host (with ``-c`` the cluster file for
        the commands that take one: give it yourself among ``args`` if needed)."""
        return self.host(host).run([*_vigil_argv(), *args], timeout=timeout)

    def status(self, host: HostRef, timeout: float = 10, *, cli: bool = False
               ) -> dict[str, Any] | None:
        """The host's daemon's view of the cluster, the JSON of ``vigil status --json``; None
        if no daemon answers there (or the host is off).

        By default the harness sends the status request itself to the daemon's control
        socket (the request the command makes, and the same answer), which costs next to
        nothing; with ``cli`` it runs ``vigil status --json`` inside the host, as an operator
        logged in there would (a Python start-up each: slow to poll with on a busy machine).
        """
        h = self.host(host)
        if not h.powered:
            return None
        if cli:
            return self._parse_status(h.run(self._status_argv(h), timeout=timeout))
        try:
            answer = request(self.runtime_dir(h) / "control.sock", "status", timeout=timeout)
        except (OSError, ValueError):  # no daemon (yet), or it died mid-answer
            return None
        if not answer.get("ok") or not isinstance(answer.get("status"), dict):
            return None
        st: dict[str, Any] = answer["status"]
        return st

    def statuses(self, hosts: Iterable[HostRef] | None = None, timeout: float = 10, *,
                 cli: bool = False) -> dict[str, dict[str, Any] | None]:
        """:meth:`status` of several hosts (default: all powered on); with ``cli`` the
        commands run concurrently."""
        chosen = [self.host(h) for h in hosts] if hosts is not None else \
            [h for h in self.hosts.values() if h.powered]
        if not cli:
            return {h.name: self.status(h, timeout) for h in chosen}
        running: dict[str, subprocess.Popen[str]] = {}
        result: dict[str, dict[str, Any] | None] = {}
        for h in chosen:
            if h.powered:
                running[h.name] = h.popen(self._status_argv(h), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, start_new_session=True)
            else:
                result[h.name] = None
        deadline = time.monotonic() + timeout
        for name, p in running.items():
            try:
                out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.communicate(timeout=KILL_WAIT)
                result[name] = None
                continue
            result[name] = self._parse_status(
                subprocess.CompletedProcess(p.args, p.returncode, out, err))
        return result

    def _status_argv(self, h: Host) -> list[str]:
        return [*_vigil_argv(), "status", "--json", "-c", str(self.config), "-n", h.name]

    @staticmethod
    def _parse_status(out: subprocess.CompletedProcess[str]) -> dict[str, Any] | None:
        if out.returncode != 0:
            return None
        try:
            st: dict[str, Any] = json.loads(out.stdout)
        except ValueError:
            return None
        return st

    def group_on(self, group: str, via: HostRef) -> str | None:
        """Where ``via``'s daemon says ``group`` is running (None: not running, or no answer)."""
        st = self.status(via)
        if st is None or st["groups"][group]["state"] != "running":
            return None
        node: str | None = st["groups"][group]["node"]
        return node

    def active(self, group: str) -> dict[str, str]:
        """Each powered host's own word on ``group`` where it is active there: node ->
        "starting", "running", "stopping" or "unclean". Hosts whose daemon does not answer
        are left out."""
        found = {}
        for name, st in self.statuses().items():
            if st is None:
                continue
            state = st["groups"][group].get("active_on", {}).get(name)
            if state is not None:
                found[name] = state
        return found

    def holders(self, group: str) -> list[str]:
        """Hosts that say they run ``group`` themselves (more than one is a double start)."""
        return sorted(n for n, state in self.active(group).items() if state == "running")

    def holder(self, group: str) -> str | None:
        """The one host running ``group`` (by its own word), or None if none or several."""
        holders = self.holders(group)
        return holders[0] if len(holders) == 1 else None

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str,
                 interval: float = 0.1, *, check_daemons: bool = True) -> Any:
        """Poll ``condition`` until it is truthy (its value is returned); on timeout fail
        with ``what`` and the tail of every host's log. With ``check_daemons``, a daemon
        that exits on its own (not by :meth:`sigkill`, :meth:`sigterm` or :meth:`power_off`)
        fails the wait at once."""
        def checked() -> Any:
            for h in self.hosts.values():
                if h.daemon is not None and h.daemon.poll() is not None:
                    raise AssertionError(
                        f"while waiting for {what}: the daemon of {h.name} exited with "
                        f"{h.daemon.returncode}; its log:\n{self.log(h)[-3000:]}")
            return condition()

        try:
            return _wait_for(checked if check_daemons else condition, timeout, what, interval)
        except AssertionError as exc:
            if not str(exc).startswith("timed out"):
                raise
            tails = "".join(f"\n--- {n} log (tail) ---\n{self.log(n)[-3000:]}"
                            for n in self.hosts)
            raise AssertionError(f"{exc}{tails}") from None


@atexit.register
def _close_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
    for c in leftovers:
        with contextlib.suppress(Exception):
            c.close()


# ---- pytest fixtures ----------------------------------------------------------------------


def nscluster_fixture(**options: Any) -> Any:
    """A pytest fixture giving an entered :class:`NsCluster` made with ``options`` (skips
    where namespace clusters cannot run). In a test file::

        cluster = nscluster_fixture(hosts=3, links=2)

        def test_something(cluster: NsCluster) -> None: ...
    """
    import pytest

    @pytest.fixture
    def _cluster() -> Iterator[NsCluster]:
        require_nscluster()
        with NsCluster(**options) as c:
            yield c

    return _cluster


def nscluster_factory() -> Any:
    """A pytest fixture giving a function that makes entered clusters (``make(hosts=3,
    links=2)``), all closed after the test. In a test file: ``make_cluster =
    nscluster_factory()``."""
    import pytest

    @pytest.fixture
    def _factory() -> Iterator[Callable[..., NsCluster]]:
        require_nscluster()
        with contextlib.ExitStack() as stack:
            yield lambda **options: stack.enter_context(NsCluster(**options))

    return _factory


# ---- the shared disk ------------------------------------------------------------------------


class SharedDisk:
    """A loop device over an image file: the "shared disk" every host sees (/dev is the
    machine's), with an ext4 filesystem labelled ``label`` holding ``files``.

    A context manager: on exit the loop device is detached (after unmounting it wherever
    the machine's own mount table has it: hosts' mounts die with their mount namespaces) and
    the image removed. Skips the test (pytest) where loop devices or mkfs.ext4 are missing.
    """

    def __init__(self, directory: Path, *, size_mb: int = 32, label: str = "vigil-shared",
                 files: dict[str, str] | None = None) -> None:
        self.image = directory / f"{label}.img"
        self.label = label
        self.files = files or {}
        self.size_mb = size_mb
        self.device = ""

    def __enter__(self) -> SharedDisk:
        import pytest

        for tool in ("losetup", "mkfs.ext4", "mount", "umount", "unshare"):
            if shutil.which(tool) is None:
                pytest.skip(f"needs {tool} for the shared disk (util-linux, e2fsprogs)")
        with self.image.open("wb") as f:
            f.truncate(self.size_mb * 1024 * 1024)
        _cmd(["mkfs.ext4", "-q", "-F", "-L", self.label, str(self.image)], timeout=60)
        try:
            self.device = _cmd(["losetup", "--find", "--show", str(self.image)]).strip()
        except NsClusterError as exc:
            pytest.skip(f"loop devices do not work here: {exc}")
        try:
            self._fill()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _fill(self) -> None:
        """Write ``files`` through a mount in a private mount namespace of its own, so the
        machine's mount table never shows it."""
        if not self.files:
            return
        mnt = self.image.with_suffix(".mnt")
        mnt.mkdir(exist_ok=True)
        script = [f"mount -t ext4 {shlex.quote(self.device)} {shlex.quote(str(mnt))}"]
        for name, text in self.files.items():
            script.append(f"printf %s {shlex.quote(text)} > {shlex.quote(str(mnt / name))}")
        script.append(f"umount {shlex.quote(str(mnt))}")
        _cmd(["unshare", "--mount", "--propagation", "private", "sh", "-ec",
              " && ".join(script)], timeout=60)

    def __exit__(self, *exc: object) -> None:
        if self.device:
            for _ in range(50):  # a host's mount may take a moment to go with its namespace
                out = subprocess.run(["losetup", "-d", self.device], capture_output=True,
                                     text=True, timeout=30)
                if out.returncode == 0 or "No such device" in out.stderr:
                    break
                time.sleep(0.2)
            self.device = ""
        self.image.unlink(missing_ok=True)
