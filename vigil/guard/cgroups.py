"""A cgroup (v2) per resource, so that the guardian can kill everything a resource started,
daemonized children included, in one write.

Layout: ``<cgroup2 mount>/vigil-<cluster>.<node>/<resource>``. The cluster's and the node's
names are in the path because nodes may share one kernel (and one cgroup tree): the test
clusters' hosts do, and two test clusters both have a node ``n1``; a fence of one must not
kill the other's processes. The daemon and the guardian of a node compute the same path from
the cluster file. (``.`` cannot be part of a name, so the path is unambiguous.) No
controllers are enabled: the cgroups only group processes, so the "no internal processes"
rule never bites and nothing is limited.

The mount is found in ``/proc/self/mountinfo``: ``/sys/fs/cgroup`` on a unified system,
``/sys/fs/cgroup/unified`` on a hybrid one. Where there is no cgroup2 mount, or it cannot be
written (a container without delegation), :meth:`NodeCgroups.problem` says why, the daemon
starts commands as they are, and the guardian kills process groups only; both say so in
their logs and status.

Killing: ``cgroup.kill`` (Linux 5.14) SIGKILLs every process of the cgroup and its
descendants at once, even those forking at that moment. Without it, every process listed in
``cgroup.procs`` (recursively) gets SIGKILL, again and again until none is left.

The system layer of Vigil: touches /proc and cgroupfs, nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vigil.messages import NAME_RE
from vigil.resources.mountinfo import read_mountinfo

__all__ = [
    "PREFIX",
    "CgroupError",
    "CgroupKill",
    "NodeCgroups",
    "cgroup_pids",
    "cgroup_populated",
    "find_cgroup2_mount",
    "kill_cgroup",
    "remove_cgroup",
]

log = logging.getLogger(__name__)

PREFIX: Final = "vigil-"
#: Moves the shell into the cgroup named by $0, then replaces it by the command (same pid).
_ENTER: Final = 'echo 0 > "$0" || { echo "vigil: cannot enter cgroup $0" >&2; exit 126; }; ' \
    'exec "$@"'
_SHELL: Final = "/bin/sh"
_POLL: Final = 0.002


class CgroupError(Exception):
    """A cgroup could not be created, entered or removed; the text says which and why."""


def find_cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` preferred), or None."""
    try:
        mounts = [m for m in read_mountinfo(mountinfo) if m.fstype == "cgroup2"]
    except OSError:
        return None
    for mount in mounts:
        if mount.mount_point == "/sys/fs/cgroup":
            return Path(mount.mount_point)
    return Path(mounts[0].mount_point) if mounts else None


def cgroup_pids(path: Path) -> list[int]:
    """Every process in cgroup ``path`` and its descendants ([] if it does not exist)."""
    pids: list[int] = []
    for directory, _, _ in os.walk(path):
        with contextlib.suppress(OSError):  # removed while we walk
            text = Path(directory, "cgroup.procs").read_text()
            pids.extend(int(p) for p in text.split())
    return pids


def cgroup_populated(path: Path) -> bool:
    """Whether a live process is in ``path`` or below (one read of ``cgroup.events``)."""
    try:
        text = (path / "cgroup.events").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return bool(cgroup_pids(path))
    return "populated 1" in text


@dataclass(frozen=True, slots=True)
class CgroupKill:
    """What :func:`kill_cgroup` did."""

    path: Path
    processes: int  # how many there were when the kill began
    method: str  # "cgroup.kill", "SIGKILL to each process", or "" (nothing to kill)
    survivors: tuple[int, ...] = ()  # still there when the wait ended
    error: str = ""  # cgroup.kill exists but could not be written

    @property
    def ok(self) -> bool:
        return not self.survivors and not self.error

    def describe(self, wait: float) -> str:
        if self.ok:
            return f"killed {self.processes} process(es) in {self.path} ({self.method})" \
                if self.processes else f"nothing ran in {self.path}"
        text = f"{self.error}; " if self.error else ""
        if self.survivors:
            shown = ", ".join(map(str, self.survivors[:10]))
            text += (f"{len(self.survivors)} process(es) of {self.path} still there "
                     f"{wait:g}s after SIGKILL (uninterruptible sleep?): {shown}")
        return text.removesuffix("; ")


def kill_cgroup(path: Path, wait: float = 1.0, *, use_cgroup_kill: bool = True) -> CgroupKill:
    """SIGKILL every process in ``path`` and below, and wait up to ``wait`` seconds until
    they are gone (0: look once). Nothing to kill where the cgroup does not exist.
    ``use_cgroup_kill=False`` takes the way of kernels without ``cgroup.kill`` (tests)."""
    if not path.is_dir():
        return CgroupKill(path, 0, "")
    before = cgroup_pids(path)
    deadline = time.monotonic() + wait
    method, error = "cgroup.kill", ""
    try:
        if not use_cgroup_kill:
            raise FileNotFoundError(errno.ENOENT, "not used")
        (path / "cgroup.kill").write_text("1")
    except OSError as exc:
        method = "SIGKILL to each process"
        if exc.errno != errno.ENOENT:  # ENOENT: a kernel before 5.14 (said at start-up)
            error = f"cannot write {path / 'cgroup.kill'}: {exc.strerror or exc}"
    while True:
        if method != "cgroup.kill":
            # Forks between reading cgroup.procs and the signals are caught on the next pass.
            for pid in cgroup_pids(path):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if not cgroup_populated(path):
            return CgroupKill(path, len(before), method if before else "", (), error)
        if time.monotonic() >= deadline:
            return CgroupKill(path, len(before), method, tuple(cgroup_pids(path)), error)
        time.sleep(_POLL)


def remove_cgroup(path: Path) -> list[str]:
    """Remove ``path`` and its descendants, deepest first, if empty; problems as sentences
    ([] when all went, or there was nothing)."""
    problems = []
    if not path.is_dir():
        return []
    for directory, _, _ in sorted(os.walk(path), key=lambda w: -len(Path(w[0]).parts)):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"cannot remove cgroup {directory}: {exc.strerror}"
                            + (" (processes are still in it)" if exc.errno == errno.EBUSY
                               else ""))
    return problems


class NodeCgroups:
    """The cgroups of one node's resources: ``<root>/vigil-<cluster>.<node>/<resource>``
    (``vigil-<node>`` without a cluster name).

    ``root``: where the node's cgroup goes (default: the cgroup2 mount, found in
    ``/proc/self/mountinfo``). Creating nothing until asked: :meth:`problem` checks (and
    creates the node's cgroup), :meth:`create` and :meth:`wrap` make a resource's.
    """

    def __init__(self, node: str, root: Path | None = None, *, cluster: str = "",
                 mountinfo: str = "/proc/self/mountinfo") -> None:
        if not NAME_RE.fullmatch(node):
            raise ValueError(f"invalid node name {node!r}")
        if cluster and not NAME_RE.fullmatch(cluster):
            raise ValueError(f"invalid cluster name {cluster!r}")
        self.node = node
        self.cluster = cluster
        self.root = root if root is not None else find_cgroup2_mount(mountinfo)

    @property
    def path(self) -> Path | None:
        """The node's cgroup (None: no cgroup v2 here)."""
        if self.root is None:
            return None
        return self.root / (f"{PREFIX}{self.cluster}.{self.node}" if self.cluster
                            else f"{PREFIX}{self.node}")

    def problem(self) -> str | None:
        """Why cgroups cannot be used here, None when they can (the node's cgroup exists
        afterwards)."""
        if self.path is None:
            return ("no cgroup v2 hierarchy is mounted (none in /proc/self/mountinfo): "
                    "processes are killed by process group only, and a daemonized child "
                    "escapes; mount cgroup2 (e.g. on /sys/fs/cgroup) to close that gap")
        try:
            self.path.mkdir(exist_ok=True)
        except OSError as exc:
            return (f"cannot create {self.path}: {exc.strerror}: processes are killed by "
                    "process group only (run as root, with the cgroup tree writable)")
        if not (self.path / "cgroup.procs").exists():
            return f"{self.path} is not a cgroup v2 directory (no cgroup.procs)"
        if not (self.path / "cgroup.kill").exists():
            log.info("%s has no cgroup.kill (Linux before 5.14): killing means SIGKILL to "
                     "each process listed", self.path)
        return None

    def holds(self, pid: int) -> bool:
        """Whether process ``pid`` is inside the node's cgroup (a fence would kill it)."""
        if self.path is None or self.root is None:
            return False
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return False
        for line in text.splitlines():
            if line.startswith("0::"):
                where = self.root / line[3:].lstrip("/")
                return where == self.path or self.path in where.parents
        return False

    def describe(self) -> str:
        """For logs and status: where the cgroups are, or why there are none."""
        problem = self.problem()
        return problem if problem is not None else f"cgroup v2: {self.path}"

    def resource_path(self, resource: str) -> Path:
        if not NAME_RE.fullmatch(resource):
            raise ValueError(f"invalid resource name {resource!r}")
        if self.path is None:
            raise CgroupError(f"resource {resource}: no cgroup v2 hierarchy is mounted")
        return self.path / resource

    def create(self, resource: str) -> Path:
        """The resource's cgroup, created if missing. Raises :class:`CgroupError`."""
        path = self.resource_path(resource)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CgroupError(f"resource {resource}: cannot create cgroup {path}: "
                              f"{exc.strerror}") from None
        return path

    def wrap(self, resource: str, argv: Sequence[str]) -> list[str]:
        """``argv`` made to run inside the resource's cgroup (created now): a shell moves
        itself into it and execs the command, which keeps the shell's pid, so process-group
        and pid handling stay as they were. Costs one ``/bin/sh`` start; a command that
        cannot enter exits 126 with "vigil: cannot enter cgroup ..." on stderr."""
        procs = self.create(resource) / "cgroup.procs"
        return [_SHELL, "-c", _ENTER, str(procs), *argv]

    def move(self, resource: str, pid: int) -> None:
        """Move a running process into the resource's cgroup (its later children follow;
        children it already has do not: prefer :meth:`wrap`)."""
        procs = self.create(resource) / "cgroup.procs"
        try:
            procs.write_text(str(pid))
        except OSError as exc:
            raise CgroupError(f"resource {resource}: cannot move pid {pid} into "
                              f"{procs.parent}: {exc.strerror}") from None

    def pids(self, resource: str | None = None) -> list[int]:
        """The processes of a resource, or of the whole node (None)."""
        path = self.path if resource is None else self.resource_path(resource)
        return [] if path is None else cgroup_pids(path)

    def kill(self, resource: str | None = None, wait: float = 1.0) -> CgroupKill | None:
        """Kill a resource's processes, or the whole node's (None); None: no cgroups."""
        path = self.path if resource is None else self.resource_path(resource)
        return None if path is None else kill_cgroup(path, wait)

    def remove(self, resource: str | None = None) -> list[str]:
        """Remove a resource's cgroup, or the node's with all below it, if empty."""
        path = self.path if resource is None else self.resource_path(resource)
        return [] if path is None else remove_cgroup(path)
