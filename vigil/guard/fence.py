"""Fencing this node locally: everything the daemon said it holds is killed, removed and
unmounted, at once, without asking the daemon.

Order, chosen so that nothing waits on something slower than itself:

1. SIGKILL: the node's cgroup (``cgroup.kill``: every resource's processes, daemonized
   children included) and any other cgroup named in the holdings, and every process group
   named.
2. The addresses are removed over netlink (the dying processes do not matter to that).
3. The wait, within the budget (``guard_time``), until the cgroups and process groups are
   empty: the resources' own processes are usually all that keeps their filesystems busy.
4. Each mount is unmounted (``umount2``, no fork). While it is busy, the processes that use
   it (found in /proc: a scan costs some 15 ms per hundred processes, so it is made only
   then) get SIGKILL, and it is tried again. A mount still busy when the budget is spent is
   detached lazily (``MNT_DETACH``) and reported as a problem, with what is left in
   ``remaining``: its users may still write the device, which only a reboot
   (``self_fence = "reboot"``) or a fence device ends.

Everything that happens is in the :class:`~vigil.guard.protocol.FenceReport`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from vigil.guard.cgroups import NodeCgroups, cgroup_populated, kill_cgroup
from vigil.guard.holdings import Address, Holdings, MountHolding, ResourceHolding
from vigil.guard.protocol import FenceReport, Killed
from vigil.resources import proc
from vigil.resources.mountinfo import find_holders, read_mountinfo

__all__ = ["Fencer"]

log = logging.getLogger(__name__)

_MNT_DETACH: Final = 2
_IFA_F_SECONDARY: Final = 0x01
_POLL: Final = 0.001
_MAX_PAUSE: Final = 0.008
#: How often a busy unmount looks for new users of the filesystem (a /proc scan).
_RESCAN: Final = 0.02
#: How often, at most, a guardian whose node holds an address tries again to open netlink
#: after it failed (each try may import pyroute2: 0.1-0.2 s of the guardian's loop).
NETLINK_RETRY: Final = 5.0


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


_LIBC: Final = _libc()


def _umount2(target: str, flags: int) -> int:
    """0, or the errno of umount2(2)."""
    if _LIBC.umount2(os.fsencode(target), flags) == 0:
        return 0
    return ctypes.get_errno()


def _device_number(device: str) -> tuple[int, int] | None:
    try:
        st = os.stat(device)
    except OSError:
        return None
    return (os.major(st.st_rdev), os.minor(st.st_rdev)) if stat.S_ISBLK(st.st_mode) else None


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


@dataclass(slots=True)
class _Run:
    """One fence underway."""

    holdings: Holdings
    deadline: float
    killed: list[Killed] = field(default_factory=list)
    removed: list[Address] = field(default_factory=list)
    unmounted: list[MountHolding] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # What is not done yet, by resource: the parts that remain.
    left_pgids: set[int] = field(default_factory=set)
    left_cgroups: set[str] = field(default_factory=set)
    left_addresses: set[Address] = field(default_factory=set)
    left_mounts: set[MountHolding] = field(default_factory=set)

    def remaining(self) -> Holdings:
        kept = []
        for r in self.holdings.resources:
            part = ResourceHolding(
                r.name,
                pgids=tuple(p for p in r.pgids if p in self.left_pgids),
                cgroup=r.cgroup if r.cgroup in self.left_cgroups else None,
                addresses=tuple(a for a in r.addresses if a in self.left_addresses),
                mounts=tuple(m for m in r.mounts if m in self.left_mounts))
            if part.pgids or part.cgroup or part.addresses or part.mounts:
                kept.append(part)
        return Holdings.of(kept)


class Fencer:
    """Carries out fences for one node: its cgroups, and netlink in this process's network
    namespace (opened by :meth:`open`, or by :meth:`ready_for` once the node holds an
    address, before any fence can need it: loading pyroute2 alone takes longer than a fence
    may; reopened after an error). A node that holds no address never loads pyroute2 (22 MB
    locked in memory in every guardian)."""

    def __init__(self, cgroups: NodeCgroups, budget: float) -> None:
        self.cgroups = cgroups
        self.budget = budget
        self._ipr: Any = None
        self._tried_at: float | None = None  # when open() last tried (monotonic)
        self._failure: str | None = None  # why it failed then (None: it did not)

    def open(self, now: float | None = None) -> str:
        """Open netlink now; what to say about it in the log (a failure is also logged here,
        as the warning it is)."""
        self._tried_at = time.monotonic() if now is None else now
        try:
            self._netlink()
        except Exception as exc:  # pyroute2 raises more than OSError
            why = str(exc)
            if why != self._failure:  # a retry that fails alike is not news
                log.warning("%s; the node's addresses may not be removable at a fence: trying "
                            "again every %g s while it holds one", why, NETLINK_RETRY)
            self._failure = why
            return f"netlink unavailable ({why})"
        if self._failure is not None:
            log.info("netlink open now (after: %s)", self._failure)
            self._failure = None
        return "netlink open"

    def ready_for(self, holdings: Holdings, now: float) -> str | None:
        """Open netlink if ``holdings`` has an address and it is not open (again after a
        failure, at most every :data:`NETLINK_RETRY` seconds: a fence that must import
        pyroute2 itself overruns its budget); what to say about it in the log (None:
        nothing, or a failure :meth:`open` logged)."""
        if self._ipr is not None or not holdings.addresses:
            return None
        if self._tried_at is not None and now - self._tried_at < NETLINK_RETRY:
            return None
        said = self.open(now)
        return said if self._ipr is not None else None

    def close(self) -> None:
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None

    def fence(self, holdings: Holdings, reason: str, reboot: bool = False) -> FenceReport:
        started = time.monotonic()
        run = _Run(holdings, started + self.budget)
        cgroups = self._kill_cgroups(run)
        pgids = self._kill_pgids(run)
        self._remove_addresses(run, holdings.addresses)
        self._wait(run, cgroups, pgids)
        for mount in holdings.mounts:
            self._unmount(run, mount)
        return FenceReport(
            at=started, took=time.monotonic() - started, reason=reason,
            resources=holdings.names, killed=tuple(run.killed), removed=tuple(run.removed),
            unmounted=tuple(run.unmounted), problems=tuple(run.problems),
            remaining=run.remaining(), reboot=reboot)

    # -- processes ----------------------------------------------------------------------------

    def _shown(self, path: Path) -> str:
        root = self.cgroups.root
        if root is not None and _under(str(path), str(root)) and path != root:
            return str(path.relative_to(root))
        return str(path)

    def _kill_cgroups(self, run: _Run) -> list[tuple[Path, str | None]]:
        """SIGKILL (no wait) the node's cgroup and the holdings' others; [(path, the
        resource cgroup it stands for or None)]."""
        node = self.cgroups.path
        targets: list[tuple[Path, str | None]] = []
        if node is not None and node.is_dir():
            targets.append((node, None))
        for cgroup in run.holdings.cgroups:
            if node is None or not _under(cgroup, str(node)):
                targets.append((Path(cgroup), cgroup))
        for path, _ in targets:
            result = kill_cgroup(path, wait=0.0)
            if result.processes:
                run.killed.append(Killed("cgroup", self._shown(path), result.processes))
            if result.error:
                run.problems.append(result.error)
        # A resource cgroup inside the node's counts as done when the node's is empty.
        run.left_cgroups.update(run.holdings.cgroups)
        return targets

    def _kill_pgids(self, run: _Run) -> list[int]:
        pgids = [p for p in run.holdings.pgids if p > 1 and p != os.getpgrp()]
        if not pgids:
            return []
        members = proc.process_groups()
        for pgid in pgids:
            count = len(members.get(pgid, []))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            if count:
                run.killed.append(Killed("pgid", str(pgid), count))
        run.left_pgids.update(pgids)
        return pgids

    @staticmethod
    def _signal_holders(mount: MountHolding) -> set[int]:
        pids = {h.pid for h in find_holders(mount.mountpoint, _device_number(mount.device))
                if h.pid not in (os.getpid(), 1)}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def _wait(self, run: _Run, cgroups: list[tuple[Path, str | None]],
              pgids: list[int]) -> None:
        """Until the killed cgroups and groups are empty, within the budget."""
        left_groups = set(pgids)
        left_paths = {path for path, _ in cgroups}
        pause = _POLL
        while True:
            left_paths = {p for p in left_paths if cgroup_populated(p)}
            if left_groups:
                members = proc.process_groups()  # a /proc scan: zombies do not count
                left_groups = {p for p in left_groups if p in members}
            if not left_paths and not left_groups:
                break
            if time.monotonic() >= run.deadline:
                break
            # At real-time priority a tight loop would take the CPU from the dying processes.
            time.sleep(pause)
            pause = min(2 * pause, _MAX_PAUSE)
        for path in left_paths:
            # Another pass (cgroup.kill again, or SIGKILL to each) names the survivors.
            result = kill_cgroup(path, wait=0.0)
            if result.survivors:
                run.problems.append(result.describe(self.budget))
        for pgid in left_groups:
            run.problems.append(f"process group {pgid} survived SIGKILL for "
                                f"{self.budget * 1000:.0f} ms (uninterruptible sleep?)")
        node = self.cgroups.path
        node_empty = node is None or node not in left_paths
        run.left_cgroups = {
            c for c in run.left_cgroups
            if Path(c) in left_paths or (node is not None and _under(c, str(node))
                                         and not node_empty)}
        run.left_pgids = left_groups

    # -- addresses ----------------------------------------------------------------------------

    def _netlink(self) -> Any:
        if self._ipr is None:
            try:
                from pyroute2 import IPRoute
            except Exception as exc:  # not installed, or broken: any error of its modules
                raise OSError(f"netlink cannot be opened: importing pyroute2 failed: "
                              f"{type(exc).__name__}: {exc}") from exc
            try:
                self._ipr = IPRoute()
            except Exception as exc:
                raise OSError(f"netlink cannot be opened: pyroute2's IPRoute(): "
                              f"{type(exc).__name__}: {exc}") from exc
        return self._ipr

    def _remove_addresses(self, run: _Run, addresses: Iterable[Address]) -> None:
        for address in addresses:
            try:
                self._remove_address(run, address)
            except Exception as exc:  # pyroute2's NetlinkError, OSError, a broken socket
                self.close()  # a fresh netlink socket next time
                code = getattr(exc, "code", None)
                text = os.strerror(code) if isinstance(code, int) and code > 0 else str(exc)
                run.problems.append(f"cannot remove {address}: {text}")
                run.left_addresses.add(address)

    def _remove_address(self, run: _Run, address: Address) -> None:
        ipr = self._netlink()
        from pyroute2 import NetlinkError  # loaded by _netlink()

        found = ipr.link_lookup(ifname=address.ifname)
        if not found:
            return  # the interface is gone, and the address with it
        index = int(found[0])
        interface = address.interface
        family = socket.AF_INET if interface.version == 4 else socket.AF_INET6
        if interface.version == 4:
            self._keep_other_addresses(ipr, index, address)
        try:
            ipr.addr("del", index=index, address=str(interface.ip),
                     prefixlen=interface.network.prefixlen, family=family)
        except NetlinkError as exc:
            if exc.code in (errno.EADDRNOTAVAIL, errno.ENODEV):
                return  # not there: nothing to remove
            raise
        run.removed.append(address)

    @staticmethod
    def _keep_other_addresses(ipr: Any, index: int, address: Address) -> None:
        """Removing a primary IPv4 address also removes the secondaries of its subnet unless
        the interface promotes them; another resource's, or the node's own, must stay."""
        interface = address.interface
        others = primary = False
        for msg in ipr.addr("dump", index=index, family=socket.AF_INET):
            if msg["index"] != index:
                continue
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            try:
                ip = ipaddress.ip_address(str(text))
            except ValueError:
                continue
            flags = int(msg.get_attr("IFA_FLAGS") or msg["flags"])
            if ip == interface.ip:
                primary = not flags & _IFA_F_SECONDARY
            elif ip in interface.network and flags & _IFA_F_SECONDARY:
                others = True
        if not (primary and others):
            return
        setting = Path("/proc/sys/net/ipv4/conf", address.ifname, "promote_secondaries")
        with contextlib.suppress(OSError):
            if setting.read_text().strip() == "0":
                setting.write_text("1\n")
                log.warning("turned on net.ipv4.conf.%s.promote_secondaries so that removing "
                            "primary %s keeps the other addresses of its subnet",
                            address.ifname, address.address)

    # -- mounts -------------------------------------------------------------------------------

    def _unmount(self, run: _Run, mount: MountHolding) -> None:
        devnum = _device_number(mount.device)
        point = mount.mountpoint.rstrip("/") or "/"

        def ours() -> list[str]:
            """Our mount (if still there) and those below it, deepest first."""
            table = read_mountinfo()
            here = [m for m in table if m.mount_point == point
                    and (m.source == mount.device or (m.major, m.minor) == devnum)]
            if not here:
                others = [m for m in table if m.mount_point == point]
                if others:
                    run.problems.append(f"{point} has {others[-1].describe()} mounted, not "
                                        f"{mount.device}: left alone")
                return []
            below = {m.mount_point for m in table if _under(m.mount_point, point)
                     and m.mount_point != point}
            return [*sorted(below, key=len, reverse=True), point]

        targets = ours()
        if not targets:
            return
        killed: set[int] = set()
        next_scan = time.monotonic()  # busy at the first try: look for its users at once
        while True:
            busy = [t for t in targets if _umount2(t, 0) not in (0, errno.EINVAL, errno.ENOENT)]
            if not busy:
                run.unmounted.append(mount)
                return
            now = time.monotonic()
            if now >= run.deadline:
                break
            if now >= next_scan:
                fresh = self._signal_holders(mount) - killed
                if fresh:
                    killed |= fresh
                    run.killed.append(Killed("holders", point, len(fresh)))
                next_scan = now + _RESCAN
            targets = busy
            time.sleep(_POLL)
        users = sorted(h.pid for h in find_holders(point, devnum))
        for target in targets:
            _umount2(target, _MNT_DETACH)
        held = (f"used by pid {', '.join(map(str, users))}" if users
                else "no user found in this mount namespace")
        run.problems.append(f"{point} was still busy after {self.budget * 1000:.0f} ms "
                            f"({held}): detached lazily; until its users are gone the device "
                            "can still be written")
        run.left_mounts.add(mount)
