"""Who may use this node's local interfaces (the control socket, the event socket and /ha),
and who is asking. Pykka-free: the daemon's socket actors and /ha (a separate process) apply
the same rules.

Access control (``[cluster] admin_group`` and ``status_group``), for the control socket
(:mod:`vigil.actors.control`) and the event socket (:mod:`vigil.actors.notifier`):

* root may do everything; members of ``admin_group`` may send any request; members of
  ``status_group`` (and admins) may only read: the ``status`` request and the event stream.
  ``diagnose`` runs a monitor now (and a failed one leads to recovery), so it is an admin's.
* Who asks is read from the connection itself (``SO_PEERCRED``: pid, uid, gid at connect
  time; the supplementary groups from ``SO_PEERGROUPS``, else ``/proc/PID/status``), i.e. the
  groups the client process really has, as for file permissions: after ``usermod -aG``, the
  user logs in again. Anyone else is refused before the coordinator is asked, with an answer
  that says who they are and which group they lack, and a warning in the daemon's log.
* Because the daemon checks every request, the control socket file is mode 0666 when either
  group is set (so the refused get that clear answer instead of EACCES), 0600 when neither is
  (root only, as the file mode already tells).
* The event socket cannot check its readers: only its file mode protects it: 0660 with the
  group ``status_group`` (``admin_group`` when there is no ``status_group``), else 0600. A
  file has one group: admins read the event stream only if they are in ``status_group`` too.
* With either group set, the node's runtime directory is made traversable (mode 0711, not
  listable by others; 0700 without groups); its parents must be traversable too (a warning
  names the first that is not; ``/var/lib`` is).
"""

from __future__ import annotations

import grp
import logging
import os
import platform
import pwd
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vigil.local import rundir

__all__ = [
    "MAX_SOCKET_PATH",
    "READ_ONLY_COMMANDS",
    "Access",
    "Peer",
    "group_id",
    "peer_of",
    "prepare_runtime_dir",
    "proc_groups",
    "socket_in_use",
    "socket_problem",
]

log = logging.getLogger(__name__)

#: Requests members of status_group may send; every other request needs admin_group.
READ_ONLY_COMMANDS: Final = frozenset({"status", "history"})

# Linux >= 4.13. Python does not name it; 59 is its number where the architecture uses the
# generic socket options (elsewhere another option may have that number: /proc is read).
_SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", None) or (
    59 if platform.machine() in ("x86_64", "i386", "i686", "aarch64", "armv7l", "armv6l",
                                 "riscv64", "ppc64le", "ppc64", "s390x") else None)
_GROUPS_BUFFER: Final = 1024  # Python's getsockopt limit: 256 groups, else /proc is read


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of a local socket, as the kernel saw it at connect."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]  # the primary group and the supplementary ones

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)

    def __str__(self) -> str:
        return f"user {self.user} (uid {self.uid}, pid {self.pid})"


def peer_of(sock: socket.socket) -> Peer:
    """Who is connected to ``sock`` (a connected AF_UNIX socket)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    groups: set[int] | None = None
    if _SO_PEERGROUPS is not None:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, _GROUPS_BUFFER)
            groups = set(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
        except OSError:  # an old kernel, or more groups than the buffer holds
            pass
    if groups is None:
        groups = proc_groups(pid, uid)
    return Peer(pid, uid, gid, frozenset((groups or set()) | {gid}))


def proc_groups(pid: int, uid: int, *, uid_field: int = 1) -> set[int] | None:
    """The supplementary groups of ``pid``, if it still is the process of ``uid`` that
    asked (a pid can be reused: then None, the least privilege). ``uid_field`` says which
    of the status file's uids to compare: 1 the effective one (a socket's peer), 3 the
    filesystem one (what a FUSE request carries)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    uids = fields.get("Uid", "").split()
    if len(uids) <= uid_field or int(uids[uid_field]) != uid:
        return None
    return {int(g) for g in fields.get("Groups", "").split()}


def group_id(name: str) -> int | None:
    """The gid of Unix group ``name``, None when it does not exist on this machine."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


@dataclass(frozen=True, slots=True)
class Access:
    """Who may use the local interfaces: ``[cluster] admin_group`` and ``status_group``."""

    admin_group: str = ""
    status_group: str = ""

    @property
    def shared(self) -> bool:
        """Whether anyone but root may use the local interfaces at all."""
        return bool(self.admin_group or self.status_group)

    def refusal(self, peer: Peer, command: str) -> str | None:
        """Why ``peer`` may not send ``command`` (None: it may). Group names are looked up
        now: a group created after the daemon started counts."""
        if peer.uid == 0:
            return None
        read_only = command in READ_ONLY_COMMANDS
        names = [("admin_group", self.admin_group)]
        if read_only:
            names.insert(0, ("status_group", self.status_group))
        for _, name in names:
            gid = group_id(name)
            if gid is not None and gid in peer.groups:
                return None
        who = f"user {peer.user} (uid {peer.uid})"
        wanted = [f"{key} {name!r}" for key, name in names if name]
        if not wanted:
            keys = " or ".join(key for key, _ in names)
            return (f"permission denied: {who} is not root, and no {keys} is set in the "
                    "cluster configuration ([cluster])")
        return f"permission denied: {who} is not root or in {' or '.join(wanted)}"

    @property
    def control_mode(self) -> int:
        # Every request is checked: the refused get a clear answer rather than EACCES.
        return 0o666 if self.shared else 0o600

    def event_socket_owner(self) -> tuple[int, int | None]:
        """(mode, gid or None) of the event socket: its readers are whom its mode lets in."""
        for key, name in (("status_group", self.status_group),
                          ("admin_group", self.admin_group)):
            if not name:
                continue
            gid = group_id(name)
            if gid is not None:
                return 0o660, gid
            log.warning("%s %r does not exist on this machine: the event socket is for root "
                        "only", key, name)
            break
        return 0o600, None


_untraversable: set[Path] = set()


def prepare_runtime_dir(directory: Path, access: Access) -> None:
    """Create ``directory``, the daemon's own (:mod:`vigil.local.rundir`; raises
    :class:`~vigil.local.rundir.UnsafePath` when another user could change it); with groups
    set it is traversable for their members, whose way to it must be open too."""
    rundir.prepare_runtime_dir(directory, access.shared)
    if not access.shared:
        return
    for parent in directory.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            if parent in _untraversable:
                break  # said once (both sockets' actors come here)
            _untraversable.add(parent)
            log.warning("%s is not traversable by others (mode %o): members of %s cannot "
                        "reach the sockets in %s; chmod o+x it or choose another runtime_dir",
                        parent, parent.stat().st_mode & 0o7777,
                        " / ".join(filter(None, (access.admin_group, access.status_group))),
                        directory)
            break


#: The longest path an AF_UNIX socket can be bound to (sun_path, less its final NUL).
MAX_SOCKET_PATH = 107


def socket_problem(path: Path, what: str) -> str | None:
    """Why the daemon cannot listen on the local socket ``path`` (its ``what``, e.g.
    "control socket"), in one line, or None: checked before any actor starts, so that the
    daemon refuses with this line rather than with an actor's traceback."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return (f"the {what} path {path} is {len(os.fsencode(path))} bytes long, longer than "
                f"the {MAX_SOCKET_PATH} a Unix socket allows: choose a shorter runtime_dir")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        pid, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                     struct.calcsize("3i")))
        who = f"pid {pid}" if pid > 0 else "another process"
    except BlockingIOError:  # its queue of new connections is full: someone listens
        who = "another process"
    except OSError:
        return None
    finally:
        s.close()
    return (f"the {what} {path} is in use by {who}: is another vigil daemon running for "
            "this node? Stop it first")


def socket_in_use(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        return True
    except BlockingIOError:  # its queue of new connections is full: someone listens
        return True
    except OSError:
        return False
    finally:
        s.close()
