"""/ha: one node's view of the cluster as a FUSE filesystem, and control through writable files.

The filesystem is a client of the node's daemon, like the CLI: every read comes from the
``status`` answer of the control socket, fetched at most every 0.5 s and shared by all
readers (a ``grep -r`` over /ha costs one request); every write to a control file is one
control request, made inside the write() call, so the write returns once the daemon has
accepted (or refused) it. Files hold one value and a newline, lists one item per line; a value
the daemon does not report is an empty file.

Layout (``ro`` value files are mode 0444; ``rw`` control files are root's, mode 0644, or
0664 with the admin group as their group)::

    cluster/   name epoch master quorate quorum transition seen_from       ro
               links_down (the line of `vigil status`)      ro
               maintenance                                  rw: on | off
    links/LINK/      state (up | down) why cut              ro
                     rejected (REASON COUNT, one a line)    ro
                     peers/PEER/ state heard_ago connection ro
    nodes/NODE/      state standby links/LINK (up | down)   ro
                     nics/NIC (up | down: why; this node's) ro
                     mirrors/RES/ (this node's copy of mirror resource RES) group source
                       max_lag seq copy_source taken age live aside
                       lags (on the source: PEER SECONDS, or PEER none; one a line)  ro
                     fencing (what its fencing waits for)   ro
                     control                 rw: standby | online | fence | confirm_off
    fencing/         pending (NODE: what it waits for)      ro
                     history (one line per level run, newest last)             ro
                     devices/DEVICE/ state reason checked hosts               ro
    groups/GROUP/    node state resources fail_count        ro
                     move                                   rw: a node name
                     control                                rw: cleanup
    resources/RES/   type group node provided_by service_state depends_on dependents
                     fail_count last_failure last_diagnostic reason on_fail diagnosis   ro
                     control  rw: in_service | oo_service | force_oos | mark_oos |
                                  diagnose | cleanup

Writes: one word per write() (surrounding whitespace and the newline of ``echo`` are
ignored). A write fails with an errno and a log line on the mount's stderr saying why:
EACCES when the writer is neither root nor in ``cluster.admin_group`` (or the file is a value
file), EINVAL for a word the file does not take or a request the daemon refuses, EAGAIN when
the daemon asks to try again, ENOTCONN when no daemon listens, EIO when it does not answer.
Mutating requests are logged too (who, what, the daemon's answer). ``diagnosis`` holds the
answer to the last ``diagnose`` written through this mount (empty before one).

Reading is open to everyone who can reach the mount point (it is mounted ``allow_other``);
the kernel's own permission checks are off (no ``default_permissions``) so that every refused
write reaches this code and is logged.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import math
import os
import pwd
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigil.local.access import Access as SocketAccess
from vigil.local.access import Peer, group_id, proc_groups
from vigil.local.protocol import (
    MANUAL_OP_TIMEOUT,
    REQUEST_TIMEOUT,
    MalformedAnswer,
    request,
    status_of,
)
from vigil.status import ClusterStatus, MirrorStatus, Operation, Transition

log = logging.getLogger("vigil.ha")

#: How long one status answer serves all reads.
CACHE_SECONDS = 0.5
#: A status request that takes longer fails the reads waiting for it (EIO), rather than
#: hanging every process that looks at /ha.
STATUS_TIMEOUT = 5.0
#: A control word is short; more is a mistake (a file copied onto a control file).
MAX_WRITE = 4096
#: While the daemon stays unreachable, the reason is logged again at most this often.
RELOG_SECONDS = 60.0

NODE_WORDS = ("standby", "online", "fence", "confirm_off")
GROUP_WORDS = ("cleanup",)
RESOURCE_WORDS = ("in_service", "oo_service", "force_oos", "mark_oos", "diagnose", "cleanup")
MAINTENANCE_WORDS = ("on", "off")

TOP_DIRS = ("cluster", "links", "nodes", "groups", "resources", "fencing")


class HaError(OSError):
    """A filesystem call fails with ``errno``; ``strerror`` says why, for the log."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)


class MountError(Exception):
    """/ha could not be mounted; the message says why and what to do."""


@dataclass(frozen=True)
class Control:
    """What a control file does: ``kind`` is node, move, group, resource or maintenance."""

    kind: str
    target: str
    choices: tuple[str, ...]
    group: str = ""


@dataclass(frozen=True)
class Entry:
    """A file (``children`` is None) or a directory of the tree."""

    content: bytes = b""
    children: tuple[str, ...] | None = None
    control: Control | None = None
    nlink: int = 1


Tree = dict[str, Entry]

# What stays visible while the daemon does not answer: the mount point still looks like /ha,
# and anything below names the problem through its errno.
_TOP: Tree = {"/": Entry(children=TOP_DIRS, nlink=2 + len(TOP_DIRS)),
              **{f"/{d}": Entry(children=(), nlink=2) for d in TOP_DIRS}}


# ---- rendering --------------------------------------------------------------------------


def _one(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _text(value: object) -> bytes:
    """A value as file content: one value and a newline, a list one item a line; nothing at
    all for a missing value."""
    if value is None:
        return b""
    if isinstance(value, tuple):
        return "".join(f"{_one(v)}\n" for v in value).encode()
    return f"{_one(value)}\n".encode()


def _transition(value: Transition | None) -> bytes:
    if value is None:
        return b""
    return f"{value.phase}: {value.reason}\n".encode() if value.reason else _text(value.phase)


def _op_result(value: Operation | None) -> bytes:
    """A resource operation's outcome, as the coordinator keeps the last failure and the last
    monitor: ``2026-12-01T19:30:12.345+00:00 monitor ok, IN_SERVICE: running``."""
    if value is None:
        return b""
    verdict = "ok" if value.ok else "failed"
    return f"{value.at} {value.op} {verdict}, {value.state}: {value.reason}\n".encode()


def diagnosis_text(answer: Mapping[str, Any], at: float | None = None) -> str:
    """The answer to a manual ``diagnose``, as the ``diagnosis`` file shows it."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() if at is None else at))
    verdict = "healthy" if answer.get("healthy") else "FAILED"
    duration = answer.get("duration")
    took = f" ({duration:.2f}s)" if isinstance(duration, int | float) else ""
    return (f"{when} diagnose {verdict}, {answer.get('state', '?')}{took}: "
            f"{answer.get('reason', '')}\n")


def _safe(name: str) -> bool:
    """Whether a name from the status can be a directory entry."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


# ---- the tree ---------------------------------------------------------------------------


class _Builder:
    def __init__(self) -> None:
        self.files: Tree = {}
        self.dirs: dict[str, list[str]] = {"/": []}

    def dir(self, path: str) -> str:
        self.dirs[path] = []
        self._link(path)
        return path

    def file(self, path: str, content: bytes, control: Control | None = None) -> None:
        self.files[path] = Entry(content=content, control=control)
        self._link(path)

    def _link(self, path: str) -> None:
        parent, name = path.rsplit("/", 1)
        self.dirs[parent or "/"].append(name)

    def done(self) -> Tree:
        tree = dict(self.files)
        for path, names in self.dirs.items():
            prefix = path.rstrip("/")
            subdirs = sum(1 for n in names if f"{prefix}/{n}" in self.dirs)
            tree[path] = Entry(children=tuple(names), nlink=2 + subdirs)
        return tree


def _mirror(b: _Builder, path: str, mv: MirrorStatus) -> None:
    """/ha/nodes/SELF/mirrors/RES: the facts `vigil status` shows of a mirror resource."""
    d = b.dir(path)
    c = mv.copy
    b.file(f"{d}/group", _text(mv.group))
    b.file(f"{d}/source", _text(mv.source))
    b.file(f"{d}/max_lag", _text(mv.max_lag))
    b.file(f"{d}/seq", _text(None if c is None else c.seq))
    b.file(f"{d}/copy_source", _text(None if c is None else c.source))
    b.file(f"{d}/taken", _text(None if c is None else c.taken))
    b.file(f"{d}/age", _text(None if c is None else c.age))
    b.file(f"{d}/live", _text(None if c is None else c.live))
    b.file(f"{d}/aside", _text(mv.aside))
    b.file(f"{d}/lags", _text(tuple(f"{n} {'none' if lag is None else lag}"
                                    for n, lag in mv.lags.items())))


def build_tree(st: ClusterStatus, diagnoses: Mapping[str, str] | None = None) -> Tree:
    """The /ha tree of one status (see the module docstring). Names that cannot be file names
    are left out."""
    diagnoses = diagnoses or {}
    b = _Builder()
    nodes = {n: v for n, v in st.nodes.items() if _safe(n)}

    c = b.dir("/cluster")
    b.file(f"{c}/name", _text(st.cluster))
    b.file(f"{c}/seen_from", _text(st.node))
    b.file(f"{c}/epoch", _text(st.epoch))
    b.file(f"{c}/master", _text(st.master))
    b.file(f"{c}/quorate", _text(st.quorate))
    b.file(f"{c}/quorum", _text(st.quorum))
    b.file(f"{c}/transition", _transition(st.transition))
    b.file(f"{c}/links_down", _text(st.links_down() or None))
    b.file(f"{c}/maintenance", b"on\n" if st.maintenance else b"off\n",
           Control("maintenance", "", MAINTENANCE_WORDS))

    b.dir("/links")
    for link, lv in st.links.items():
        if not _safe(link):
            continue
        d = b.dir(f"/links/{link}")
        b.file(f"{d}/state", b"up\n" if lv.up else b"down\n")
        b.file(f"{d}/why", _text(lv.why))
        b.file(f"{d}/cut", _text(lv.cut))
        b.file(f"{d}/rejected", _text(tuple(f"{r} {count}" for r, count in lv.rejected.items())))
        b.dir(f"{d}/peers")
        for peer, pv in lv.peers.items():
            if peer in nodes:
                p = b.dir(f"{d}/peers/{peer}")
                b.file(f"{p}/state", b"up\n" if pv.up else b"down\n")
                b.file(f"{p}/heard_ago", _text(pv.heard_ago))
                b.file(f"{p}/connection", _text(pv.connection))

    b.dir("/nodes")
    for n, v in nodes.items():
        d = b.dir(f"/nodes/{n}")
        b.file(f"{d}/state", _text(v.state))
        b.file(f"{d}/standby", _text(v.standby))
        links = b.dir(f"{d}/links")
        for link, up in v.links.items():
            if _safe(link):
                b.file(f"{links}/{link}", b"up\n" if up else b"down\n")
        b.file(f"{d}/fencing", _text(st.fencing.pending.get(n)))
        b.file(f"{d}/control", b"", Control("node", n, NODE_WORDS))
        if n == st.node:  # a node knows its own NICs only
            nics = b.dir(f"{d}/nics")
            for nic, nv in st.nics.items():
                if _safe(nic):
                    b.file(f"{nics}/{nic}", _text(nv.state if nv.state == "up"
                                                   else f"{nv.state}: {nv.reason}"))
            mirrors = b.dir(f"{d}/mirrors")
            for r, mv in st.mirrors.items():
                if _safe(r):
                    _mirror(b, f"{mirrors}/{r}", mv)

    b.dir("/groups")
    for g, gv in st.groups.items():
        if not _safe(g):
            continue
        d = b.dir(f"/groups/{g}")
        b.file(f"{d}/node", _text(gv.node))
        b.file(f"{d}/state", _text(gv.state))
        b.file(f"{d}/resources", _text(gv.resources))
        b.file(f"{d}/fail_count", _text(gv.fail_count))
        b.file(f"{d}/move", b"", Control("move", g, tuple(nodes)))
        b.file(f"{d}/control", b"", Control("group", g, GROUP_WORDS))

    b.dir("/resources")
    for r, rv in st.resources.items():
        if not _safe(r):
            continue
        d = b.dir(f"/resources/{r}")
        b.file(f"{d}/type", _text(rv.type))
        b.file(f"{d}/group", _text(rv.group))
        b.file(f"{d}/node", _text(rv.provided_by))
        b.file(f"{d}/provided_by", _text(rv.provided_by))
        b.file(f"{d}/service_state", _text(rv.service_state))
        b.file(f"{d}/depends_on", _text(rv.depends_on))
        b.file(f"{d}/dependents", _text(rv.dependents))
        b.file(f"{d}/fail_count", _text(rv.fail_count))
        b.file(f"{d}/last_failure", _op_result(rv.last_failure))
        b.file(f"{d}/last_diagnostic", _op_result(rv.last_diagnostic))
        b.file(f"{d}/reason", _text(rv.reason))
        b.file(f"{d}/on_fail", _text(rv.on_fail))
        b.file(f"{d}/diagnosis", diagnoses.get(r, "").encode())
        b.file(f"{d}/control", b"", Control("resource", r, RESOURCE_WORDS, group=rv.group))

    f = b.dir("/fencing")
    b.file(f"{f}/pending", _text(tuple(f"{n}: {text}"
                                       for n, text in st.fencing.pending.items())))
    b.file(f"{f}/history", _text(tuple(
        f"{e.at} {e.requester} -> {e.target} level {e.level} "
        f"{'+'.join(e.devices) or '-'}: {e.result} in {e.duration:.1f}s: {e.detail}"
        for e in st.fencing.history)))
    b.dir("/fencing/devices")
    for name, dv in st.fencing.devices.items():
        if not _safe(name):
            continue
        d = b.dir(f"/fencing/devices/{name}")
        b.file(f"{d}/state", _text(dv.state))
        b.file(f"{d}/reason", _text(dv.reason))
        b.file(f"{d}/checked", _text(dv.checked or None))
        b.file(f"{d}/hosts", _text(dv.hosts))
    return b.done()


# ---- the daemon -------------------------------------------------------------------------


def refusal_errno(error: str) -> int:
    """The errno a write fails with when the daemon refuses the request with ``error``."""
    low = error.lower()
    if "try again" in low:
        return errno.EAGAIN
    if "did not answer in time" in low:
        return errno.EIO
    if "permission" in low or "not allowed" in low or "only root" in low:
        return errno.EPERM
    return errno.EINVAL  # an unknown command or name, or a request not valid now


class StatusSource:
    """The node's daemon as seen from /ha: its status, kept for :data:`CACHE_SECONDS`, as a
    tree; and requests. Failures raise :class:`HaError` with ENOTCONN (no daemon) or EIO."""

    def __init__(self, socket_path: Path, node: str, *, ttl: float = CACHE_SECONDS,
                 timeout: float = STATUS_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.node = node
        self.ttl = ttl
        self.timeout = timeout
        self._lock = threading.Lock()
        self._tree: Tree | None = None
        self._error: HaError | None = None
        self._fetched = float("-inf")
        self._wall = 0.0
        self._diagnoses: dict[str, str] = {}
        self._logged: tuple[str, float] | None = None

    def tree(self) -> tuple[Tree, float]:
        """The current tree and the wall-clock time of its status."""
        with self._lock:
            if time.monotonic() - self._fetched >= self.ttl:
                self._refresh()
            if self._error is not None or self._tree is None:
                raise self._error or HaError(errno.EIO, "no status yet")
            return self._tree, self._wall

    def invalidate(self) -> None:
        """The next read asks the daemon again (after a request changed something)."""
        with self._lock:
            self._fetched = float("-inf")

    def record_diagnosis(self, resource: str, text: str) -> None:
        with self._lock:
            self._diagnoses[resource] = text
            self._fetched = float("-inf")

    def _refresh(self) -> None:
        try:
            answer = self.ask("status", {}, self.timeout)
            if not answer.get("ok"):
                raise HaError(errno.EIO, f"node {self.node}'s daemon gave no status: "
                              f"{answer.get('error', 'no reason given')}")
            try:
                tree = build_tree(status_of(answer, self.node), self._diagnoses)
            except MalformedAnswer as exc:
                raise HaError(errno.EIO, str(exc)) from exc
        except HaError as exc:
            self._tree, self._error = None, exc
            self._log_failure(exc)
        else:
            if self._logged is not None:
                log.info("node %s's daemon answers again on %s", self.node, self.socket_path)
                self._logged = None
            self._tree, self._error = tree, None
        self._fetched = time.monotonic()
        self._wall = time.time()

    def _log_failure(self, exc: HaError) -> None:
        now = time.monotonic()
        if (self._logged is None or self._logged[0] != exc.strerror
                or now - self._logged[1] >= RELOG_SECONDS):
            log.warning("/ha cannot show the cluster: %s (reads below /ha fail with %s)",
                        exc.strerror, errno.errorcode.get(exc.errno or 0, exc.errno))
            self._logged = (str(exc.strerror), now)

    def ask(self, command: str, args: Mapping[str, str], timeout: float) -> dict[str, Any]:
        path, node = self.socket_path, self.node
        try:
            answer = request(path, command, args, timeout=timeout)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise HaError(errno.ENOTCONN, f"no daemon for node {node} listens on {path} "
                          "(is `vigil node run` running for this node?)") from exc
        except PermissionError as exc:
            raise HaError(errno.EIO, f"permission denied on {path}: the control socket is "
                          "root's; run `vigil mount` as root") from exc
        except TimeoutError as exc:
            raise HaError(errno.EIO, f"node {node}'s daemon did not answer {command!r} within "
                          f"{timeout:g}s") from exc
        except (OSError, ValueError) as exc:
            raise HaError(errno.EIO, f"no answer from node {node}'s daemon on {path}: "
                          f"{exc}") from exc
        if not isinstance(answer, dict):
            raise HaError(errno.EIO, f"node {node}'s daemon answered {command!r} with "
                          f"something else than a JSON object: {answer!r:.80}")
        return answer


# ---- who writes -------------------------------------------------------------------------


def _groups_of(uid: int, pid: int) -> set[int]:
    """The caller's supplementary groups: the process's own (what the kernel checks), or, when
    the process is gone or is another by now, the user's groups in the group database."""
    groups = proc_groups(pid, uid, uid_field=3)  # the fs uid, as the FUSE request carries it
    if groups is not None:
        return groups
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return set()
    return set(os.getgrouplist(user.pw_name, user.pw_gid))


def describe_caller(uid: int, pid: int) -> str:
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = "?"
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        comm = "?"
    return f"uid {uid} ({user}), pid {pid} ({comm})"


class Access:
    """Who may read and who may control /ha: the same rules as the control socket
    (:class:`vigil.local.access.Access`: root; ``admin_group`` may control;
    ``status_group`` and ``admin_group`` may read), applied to the FUSE caller."""

    GID_CACHE_SECONDS = 10.0
    REFUSAL_LOG_SECONDS = 60.0

    def __init__(self, rules: SocketAccess) -> None:
        self.rules = rules
        self.admin_group = rules.admin_group
        self._gid: tuple[int | None, float] = (None, float("-inf"))
        self._logged: dict[int, float] = {}  # uid -> when its last read refusal was logged

    def gid(self) -> int | None:
        """The admin group's gid on this machine (None: no such group, or none configured)."""
        if not self.admin_group:
            return None
        gid, at = self._gid
        if time.monotonic() - at >= self.GID_CACHE_SECONDS:
            gid = group_id(self.admin_group)
            self._gid = (gid, time.monotonic())
        return gid

    def refusal(self, uid: int, gid: int, pid: int, command: str = "move") -> str | None:
        """Why this caller may not send ``command`` (writes: any control request; reads:
        ``status``); None when it may."""
        if uid == 0:
            return None
        peer = Peer(pid=pid, uid=uid, gid=gid, groups=frozenset({gid} | _groups_of(uid, pid)))
        return self.rules.refusal(peer, command)

    def read_refusal(self, uid: int, gid: int, pid: int, path: str) -> str | None:
        why = self.refusal(uid, gid, pid, "status")
        if why is not None and time.monotonic() - self._logged.get(uid, -math.inf) >= (
                self.REFUSAL_LOG_SECONDS):
            self._logged[uid] = time.monotonic()  # one line a minute per user, not per file
            log.warning("%s: read by %s refused: %s", path, describe_caller(uid, pid), why)
        return why


# ---- the filesystem ---------------------------------------------------------------------


class HaOperations:
    """The FUSE operations of /ha, for mfusepy (path-based, high-level libfuse API)."""

    use_ns = True  # mfusepy: times in nanoseconds (its float seconds are deprecated)

    def __init__(self, source: StatusSource, access: Access,
                 context: Callable[[], tuple[int, int, int]],
                 on_ready: Callable[[], None] | None = None) -> None:
        self.source = source
        self.permissions = access
        self._context = context
        self._on_ready = on_ready
        self._handles: dict[int, bytes] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        #: The kernel has talked to us: the mount was up (so a nonzero end is not a failure).
        self.served = False

    # -- lifecycle

    def init(self, path: str) -> None:
        self.served = True
        log.info("serving /ha of node %s (daemon at %s)", self.source.node,
                 self.source.socket_path)
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path: str) -> None:
        log.info("/ha of node %s unmounted", self.source.node)

    # -- reading

    def _lookup(self, path: str, listing: bool = False) -> tuple[Entry, float]:
        try:
            tree, wall = self.source.tree()
        except HaError:
            if path == "/" or (path in _TOP and not listing):
                return _TOP[path], time.time()
            raise
        entry = tree.get(path)
        if entry is None:
            raise HaError(errno.ENOENT, f"{path}: no such entry")
        return entry, wall

    def _may_read(self, path: str) -> None:
        uid, gid, pid = self._context()
        why = self.permissions.read_refusal(uid, gid, pid, path)
        if why is not None:
            raise HaError(errno.EACCES, why)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        self._may_read(path)
        entry, wall = self._lookup(path)
        ns = int(wall * 1e9)
        attrs: dict[str, Any] = {"st_uid": 0, "st_gid": 0, "st_nlink": entry.nlink,
                                 "st_atime": ns, "st_mtime": ns, "st_ctime": ns}
        if entry.children is not None:
            attrs.update(st_mode=stat.S_IFDIR | 0o555, st_size=0)
            return attrs
        content = entry.content
        if fh is not None:
            with self._lock:
                content = self._handles.get(fh, content)
        mode = 0o444
        if entry.control is not None:
            admin = self.permissions.gid()
            mode = 0o644 if admin is None else 0o664
            attrs["st_gid"] = admin or 0
        attrs.update(st_mode=stat.S_IFREG | mode, st_size=len(content))
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        self._may_read(path)
        entry, _ = self._lookup(path, listing=True)
        if entry.children is None:
            raise HaError(errno.ENOTDIR, f"{path} is a file")
        return [".", "..", *entry.children]

    def open(self, path: str, flags: int) -> int:
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        if not writing:
            self._may_read(path)
        entry = self._entry_for_write(path) if writing else self._lookup(path)[0]
        if entry.children is not None:
            raise HaError(errno.EISDIR, f"{path} is a directory")
        # What was read at open stays what this file handle reads: a value is never torn
        # between two status answers.
        with self._lock:
            fh = next(self._numbers)
            self._handles[fh] = entry.content
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._lock:
            content = self._handles.get(fh)
        if content is None:
            content = self._lookup(path)[0].content
        return content[offset:offset + size]

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._handles.pop(fh, None)
        return 0

    def access(self, path: str, amode: int) -> int:
        entry, _ = self._lookup(path)
        if amode & os.W_OK:
            if entry.control is None:
                raise HaError(errno.EACCES, f"{path} is read-only")
            uid, gid, pid = self._context()
            if self.permissions.refusal(uid, gid, pid) is not None:
                raise HaError(errno.EACCES, f"{path}: not an administrator")
        if amode & os.X_OK and entry.children is None:
            raise HaError(errno.EACCES, f"{path} is not executable")
        return 0

    # -- writing

    def _entry_for_write(self, path: str) -> Entry:
        uid, gid, pid = self._context()
        who = describe_caller(uid, pid)
        try:
            entry, _ = self._lookup(path)
        except HaError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("%s: write by %s failed: %s", path, who, exc.strerror)
            raise
        if entry.control is None:
            why = ("a directory" if entry.children is not None else
                   "a value file; the writable files are control, move and maintenance")
            log.warning("%s: write by %s refused: %s", path, who, why)
            raise HaError(errno.EACCES, f"{path} is {why}")
        refusal = self.permissions.refusal(uid, gid, pid)
        if refusal is not None:
            log.warning("%s: write by %s refused: %s", path, who, refusal)
            raise HaError(errno.EACCES, refusal)
        return entry

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._entry_for_write(path)  # `>` truncates first: allowed on control files only
        return 0

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        uid, _, pid = self._context()
        log.warning("%s: refused to %s: /ha has no room for new files", path,
                    describe_caller(uid, pid))
        raise HaError(errno.EACCES, "no new files in /ha")

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        entry = self._entry_for_write(path)
        assert entry.control is not None  # _entry_for_write refuses anything else
        uid, _, pid = self._context()
        who = describe_caller(uid, pid)
        word = self._word(path, entry.control, data, who)
        command, args, timeout = self._request(entry.control, word)
        try:
            answer = self.source.ask(command, args, timeout)
        except HaError as exc:
            log.warning("%s: %r by %s failed: %s", path, word, who, exc.strerror)
            raise
        if not answer.get("ok"):
            error = str(answer.get("error") or "refused without a reason")
            code = refusal_errno(error)
            log.warning("%s: %r by %s refused by node %s's daemon (request %s %s, %s): %s",
                        path, word, who, self.source.node, command, json.dumps(args),
                        errno.errorcode.get(code, code), error)
            raise HaError(code, error)
        if command == "diagnose":
            self.source.record_diagnosis(args["resource"], diagnosis_text(answer))
        else:
            self.source.invalidate()
        log.info("%s: %r by %s: %s", path, word, who, answer.get("message") or
                 (diagnosis_text(answer).strip() if command == "diagnose" else "done"))
        return len(data)

    @staticmethod
    def _word(path: str, control: Control, data: bytes, who: str) -> str:
        choices = " | ".join(control.choices) or "(none known)"
        why = None
        try:
            word = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            word, why = "", "not UTF-8 text"
        if why is None:
            if len(data) > MAX_WRITE:
                why = f"{len(data)} bytes are not a word"
            elif not word:
                why = "an empty write"
            elif any(c.isspace() for c in word):
                why = "more than one word in one write"
        if why is not None:
            shown = repr(data[:60]) + ("..." if len(data) > 60 else "")
            log.warning("%s: %s by %s refused: %s; this file takes one of: %s", path, shown,
                        who, why, choices)
            raise HaError(errno.EINVAL, f"{why}; write one of: {choices}")
        if word not in control.choices:
            what = {"move": "no node named", "maintenance": "not a maintenance state:"}.get(
                control.kind, "not a command of this file:")
            log.warning("%s: %r by %s refused: %s %r; this file takes one of: %s", path, word,
                        who, what, word, choices)
            raise HaError(errno.EINVAL, f"{what} {word!r}; write one of: {choices}")
        return word

    @staticmethod
    def _request(control: Control, word: str) -> tuple[str, dict[str, str], float]:
        """The control request a word written to a control file stands for."""
        if control.kind == "node":
            return word, {"node": control.target}, REQUEST_TIMEOUT
        if control.kind == "move":
            return "move", {"group": control.target, "node": word}, REQUEST_TIMEOUT
        if control.kind == "group":
            return word, {"group": control.target}, REQUEST_TIMEOUT
        if control.kind == "maintenance":
            return "maintenance", {"state": word}, REQUEST_TIMEOUT
        if word == "diagnose":  # the agent's monitor may take its whole timeout
            return word, {"resource": control.target}, MANUAL_OP_TIMEOUT + REQUEST_TIMEOUT
        if word == "cleanup":  # the daemon cleans up a whole group today; later one resource
            return word, {"resource": control.target, "group": control.group}, REQUEST_TIMEOUT
        return word, {"resource": control.target}, REQUEST_TIMEOUT


# ---- mounting ---------------------------------------------------------------------------


def load_fuse() -> Any:
    """The mfusepy module; it loads libfuse3 when imported."""
    try:
        import mfusepy
    except (ImportError, OSError) as exc:
        raise MountError(f"cannot load the FUSE binding: {exc}; install mfusepy (pip install "
                         "'mfusepy>=3.1,<4') and libfuse3 (Debian: apt install fuse3)") from exc
    return mfusepy


def serve(mountpoint: Path, socket_path: Path, node: str, access: SocketAccess, *,
          allow_other: bool = True, on_ready: Callable[[], None] | None = None) -> None:
    """Mount /ha of ``node`` at ``mountpoint`` and serve it in this thread until it is
    unmounted (``fusermount3 -u``) or the process gets SIGTERM, SIGINT or SIGHUP (libfuse's
    own handlers end the loop and unmount). ``on_ready`` runs once the mount is up.
    Raises :class:`MountError` when it could not mount."""
    fuse = load_fuse()
    ops = HaOperations(StatusSource(socket_path, node), Access(access),
                       fuse.fuse_get_context, on_ready)
    options: dict[str, Any] = {"foreground": True, "fsname": f"vigil:{node}",
                               "subtype": "vigil",
                               # sizes change between reads: no page cache, reads come here
                               "direct_io": True}
    if allow_other:
        options["allow_other"] = True
    try:
        fuse.FUSE(ops, str(mountpoint), **options)
    except RuntimeError as exc:
        # libfuse ends with a nonzero status also after a signal and a clean unmount.
        if not ops.served:
            raise MountError(f"could not mount /ha at {mountpoint} (libfuse status {exc}; "
                             "its message is above)") from exc
