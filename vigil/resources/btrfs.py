"""Btrfs snapshot replication: the layer under the ``mirror`` resource type (issue 14).

A node's copy of the data lives on a btrfs filesystem of its own. The node in service writes
into a writable subvolume; every interval it takes a read-only snapshot and streams it to the
other nodes with ``btrfs send`` (incrementally, against a snapshot they already have), and they
store it with ``btrfs receive``. Every copy on a standby is then a crash-consistent point in
time, never a half-copied tree. This module is that mechanism and nothing above it: no
transport, no timer, no resource type. It runs the ``btrfs`` program (btrfs-progs), every run
bounded by a timeout, and needs root.

Layout, on each node (``root`` is the filesystem's top level, subvolume id 5, mounted)::

    <root>/<subvol>                           the data subvolume: writable, on the source
    <root>/.snapshots/<subvol>.<node>.<seq>   read-only snapshots, taken here or received
    <root>/.snapshots/<name>.aside            a snapshot set aside (diverged), read-only
    <root>/.snapshots/<subvol>.<node>.<seq>.data.aside
                                              a former data subvolume set aside (writable)
    <root>/.snapshots/.receiving.<name>       a receive in progress (or killed): see below

Names. ``<node>`` is the node that took the snapshot (where its writes were made) and
``<seq>`` its sequence number: one more than the highest number in the snapshot directory,
aside names included (pruning always keeps the newest snapshot, so numbers only grow, unless
an operator discards the newest things set aside). Subvolume and node names are
letters, digits, ``_`` and ``-`` (no dots), so a name splits on its dots.

Identity. A snapshot's *ident* is its received UUID if it has one, else its own UUID. ``btrfs
receive`` stores the UUID the stream carries as the new subvolume's received UUID, and the
kernel's send puts a subvolume's received UUID (if any) in the stream, so through any number of
hops the ident stays the UUID of the original snapshot on the node that took it. Two snapshots
on two nodes hold the same data if and only if their idents are equal. It is also how btrfs
finds the parent of an incremental stream on the receiver (by received UUID, then UUID), so
:func:`common` (the newest snapshot whose ident the other side has) is the parent of the next
incremental send.

Order. Snapshots are ordered by ``seq``. A node takes a number above every number it holds, and
a node that takes over continues from the newest snapshot it received, so along one history
(snapshots taken by a source, received by the others, continued by the node that took over)
the numbers strictly increase. Two histories that split can reuse numbers (different nodes in
the names): numbers compare only within one history.

**One chain per node.** The complete snapshots in a node's snapshot directory always form one
history: each is an ancestor of the next. :meth:`Volume.receive` keeps it so: an incremental
stream is accepted only if its parent is the newest complete snapshot here, a full stream only
into a snapshot directory with no complete snapshot, and the stream's number must be above all
of them; :meth:`Volume.promote` continues only from the newest snapshot. Snapshots that do not
belong to the chain a node is about to follow are *set aside* (renamed ``.aside``), never
deleted: they take no part in listing, pruning or parents (only in numbering).

**The divergence rule** (:func:`diverged`). Given this node's chain and the idents the new
source has, let C be the newest local snapshot whose ident the source has (the last common
snapshot). The local snapshots after C are diverged: they were taken, or received, on a branch
the source's history does not contain -- typically the old source kept writing after the
others lost it, and one of them took over from C. The snapshots up to C are C's ancestors, so
ancestors of what the source has, even where the source has pruned them. With no common
snapshot, every local snapshot is diverged: nothing shows they are ancestors (the source may
have pruned past them, or they may be an old source's own writes), and keeping them aside costs
only disk space. Diverged snapshots are set aside; then the node receives from the source, from
C (or in full). The same goes for the data subvolume of a node that stops being the source: it
holds the writes after its last snapshot, which no other node has; :meth:`Volume.promote` and
:meth:`Volume.set_aside_data` set it aside. Of DRBD's split-brain policies this is
``discard-secondary`` (the node the cluster keeps in service wins, the returning one follows
it), except that the returning node's own writes are kept aside instead of discarded: only the
operator, who knows what they are worth, discards them (:meth:`Volume.discard`) or brings one
back (:meth:`Volume.reinstate`: it becomes the newest snapshot again, and what is not in its
history is set aside in turn).

**What is complete.** ``btrfs receive`` creates the subvolume at the first command of the
stream, writes into it, and only when the stream's end marker has been applied sets its
received UUID (``BTRFS_IOC_SET_RECEIVED_SUBVOL``) and then makes it read-only. A receive that is
killed, or fails, or reads a truncated stream, leaves a writable subvolume without a received
UUID (or, killed between the two ioctls, a writable one with it). So a subvolume in the
snapshot directory counts as complete only if it is read-only (snapshots taken here are created
read-only, atomically). That alone leaves one gap: ``btrfs receive`` does not sync. The kernel
commits the received UUID at once (the ioctl ends with a transaction commit), but file data
still waiting for writeback is not in that commit, so a power loss soon after a receive can
leave, after reboot, a read-only received subvolume whose last files lack data. Hence the
marker: before it starts ``btrfs receive``, :meth:`Volume.receive` creates
``.receiving.<name>`` (fsynced) and holds an exclusive ``flock`` on it; it removes the marker
only after the received subvolume has been checked and the filesystem synced (``btrfs
filesystem sync``). A name with a marker is never
complete; :meth:`Volume.cleanup_partial` deletes the subvolumes of markers that no live receive
holds (and their markers), and every writable subvolume with a snapshot name. A receive whose
process dies leaves its marker unlocked (the kernel drops the lock with the process).

Time and errors. Every ``btrfs`` run has a timeout (the volume's ``timeout`` for the quick
commands; its own for :meth:`Volume.send` and :meth:`Volume.receive`, which also take a
``cancel`` event); a run out of time is killed (its whole process group), and the error says
so. The stream object handed to send or receive is read or written from the calling thread:
give a socket a timeout of its own, or a stalled peer holds the call until the socket gives
up. The few file operations done here directly (the markers, renames, directory syncs) are not
bounded: like any file access they hang on a hung filesystem, so run replication in a thread
of its own. Errors are :class:`BtrfsError` (or :class:`ParentMissing`), whose message names the
command, the path and what to do. A :class:`Volume` may be used from several threads; taking a
snapshot is serialised within it, and a receive and :meth:`Volume.cleanup_partial` exclude each
other through the marker's lock (also across processes). The snapshot directory belongs to this
module: do not receive into it by hand.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import selectors
import shlex
import shutil
import signal
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Final

from vigil.resources import proc
from vigil.resources.mountinfo import Mount, read_mountinfo

__all__ = [
    "DEFAULT_TIMEOUT",
    "SNAPSHOT_DIR",
    "Aside",
    "BtrfsError",
    "ParentMissing",
    "Promoted",
    "Reinstated",
    "Snapshot",
    "StreamStart",
    "Subvolume",
    "Volume",
    "btrfs_available",
    "common",
    "diverged",
    "idents",
    "is_name",
    "parse_subvolume_list",
    "read_stream_start",
]

log = logging.getLogger(__name__)

#: The snapshot directory, under the filesystem's top level.
SNAPSHOT_DIR: Final = ".snapshots"
#: Default bound of the quick commands (list, create, snapshot, delete, sync).
DEFAULT_TIMEOUT: Final = 60.0
#: How long a killed ``btrfs`` may take to go before it is reported as stuck.
KILL_WAIT: Final = 5.0
_MARKER_PREFIX: Final = ".receiving."
_ASIDE: Final = "aside"
_DATA: Final = "data"
_OUTPUT_LIMIT: Final = 64 * 1024
_CHUNK: Final = 1024 * 1024
_POLL: Final = 0.2


class BtrfsError(Exception):
    """A btrfs operation failed; the message says what, where and what to do."""


class ParentMissing(BtrfsError):
    """An incremental stream's parent is not on the receiver: send it in full instead."""

    def __init__(self, message: str, *, parent: str, snapshot: str) -> None:
        super().__init__(message)
        self.parent = parent  # the parent's ident
        self.snapshot = snapshot  # the name of the snapshot the stream carries


# -- what btrfs says about subvolumes ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subvolume:
    """One subvolume, as ``btrfs subvolume list`` reports it (UUIDs lower-case, None for
    "-"); ``path`` is relative to the filesystem's top level."""

    id: int
    generation: int  # the transaction that last changed it
    created: int  # the transaction that created it ("cgen")
    path: str
    uuid: str
    parent_uuid: str | None  # the subvolume it is a snapshot of (here, on this filesystem)
    received_uuid: str | None  # set by btrfs receive, at the very end
    read_only: bool = False

    @property
    def ident(self) -> str:
        """The UUID of the original snapshot, on whichever node took it."""
        return self.received_uuid or self.uuid

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _uuid_or_none(value: str) -> str | None:
    return None if value == "-" else value.lower()


def parse_subvolume_list(text: str, read_only_ids: Collection[int] = ()) -> list[Subvolume]:
    """The subvolumes in the output of ``btrfs subvolume list -c -u -q -R`` (run on the top
    level), read by key rather than by position; ``read_only_ids`` are those that ``btrfs
    subvolume list -r`` names. Lines that are not a subvolume (or lack a field) are skipped."""
    found = []
    for line in text.splitlines():
        # The path comes last and may contain anything but a newline, " path " included.
        head, sep, path = line.partition(" path ")
        if not sep or not head.startswith("ID "):
            continue
        words = head.replace("top level", "top_level").split()
        fields = dict(zip(words[::2], words[1::2], strict=False))
        try:
            subvolume = Subvolume(
                id=int(fields["ID"]), generation=int(fields["gen"]),
                created=int(fields["cgen"]), path=path, uuid=fields["uuid"].lower(),
                parent_uuid=_uuid_or_none(fields["parent_uuid"]),
                received_uuid=_uuid_or_none(fields["received_uuid"]))
        except (KeyError, ValueError):
            log.warning("cannot parse btrfs subvolume list line %r", line)
            continue
        found.append(replace(subvolume, read_only=subvolume.id in read_only_ids))
    return found


def _ids(text: str) -> set[int]:
    return {int(line.split()[1]) for line in text.splitlines()
            if line.startswith("ID ") and line.split()[1].isdigit()}


# -- snapshots ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A complete, read-only snapshot in the snapshot directory."""

    name: str  # <subvol>.<node>.<seq>
    node: str  # the node that took it
    seq: int
    path: Path
    subvolume: Subvolume

    @property
    def ident(self) -> str:
        return self.subvolume.ident

    @property
    def uuid(self) -> str:
        return self.subvolume.uuid

    @property
    def received_uuid(self) -> str | None:
        return self.subvolume.received_uuid

    @property
    def generation(self) -> int:
        return self.subvolume.generation

    @property
    def received(self) -> bool:
        return self.subvolume.received_uuid is not None


@dataclass(frozen=True, slots=True)
class Aside:
    """A subvolume set aside: a diverged snapshot, or a former data subvolume (``writable``,
    holding the writes made after its last snapshot). Only :meth:`Volume.discard` deletes it."""

    name: str
    node: str
    seq: int
    writable: bool
    path: Path
    subvolume: Subvolume


@dataclass(frozen=True, slots=True)
class Promoted:
    """What :meth:`Volume.promote` did: the new data subvolume, the snapshot it copies and the
    former data subvolume it set aside (None if there was none)."""

    data: Path
    source: Snapshot
    set_aside: Aside | None


@dataclass(frozen=True, slots=True)
class Reinstated:
    """What :meth:`Volume.reinstate` did: the snapshot now newest here (the one set aside,
    renamed, or a read-only snapshot of a former data subvolume), what it was made from, and
    what was set aside to make room (oldest first)."""

    snapshot: Snapshot
    origin: Aside
    set_aside: tuple[Aside, ...]


def common(local: Sequence[Snapshot], other: Collection[str]) -> Snapshot | None:
    """The newest of ``local`` whose ident is in ``other`` (the idents the other side has):
    the parent of the next incremental send to it, or the last snapshot both have."""
    shared = [s for s in local if s.ident in other]
    return max(shared, key=_order) if shared else None


def diverged(local: Sequence[Snapshot], source: Collection[str]) -> list[Snapshot]:
    """The snapshots of ``local`` (this node's chain) that are not in the history of a source
    that has the snapshots whose idents are ``source``: those after the last common snapshot,
    or all of them if there is none (see the module's divergence rule). Oldest first."""
    last = common(local, source)
    ordered = sorted(local, key=_order)
    if last is None:
        return ordered
    return [s for s in ordered if _order(s) > _order(last)]


def idents(snapshots: Iterable[Snapshot]) -> set[str]:
    """What a node tells the others it has: the idents of its snapshots."""
    return {s.ident for s in snapshots}


def _order(snapshot: Snapshot) -> tuple[int, int]:
    # Within one chain numbers never repeat; the creation transaction breaks a tie between
    # chains deterministically.
    return snapshot.seq, snapshot.subvolume.created


# -- the start of a send stream ---------------------------------------------------------------

_STREAM_MAGIC: Final = b"btrfs-stream\0"
_STREAM_HEADER: Final = struct.Struct("<13sI")
_COMMAND_HEADER: Final = struct.Struct("<IHI")  # length, command, crc32c
_TLV_HEADER: Final = struct.Struct("<HH")
_CMD_SUBVOL: Final = 1
_CMD_SNAPSHOT: Final = 2
_ATTR_UUID: Final = 1
_ATTR_CTRANSID: Final = 2
_ATTR_PATH: Final = 15
_ATTR_CLONE_UUID: Final = 20
_MAX_FIRST_COMMAND: Final = 64 * 1024
_STREAM_VERSIONS: Final = (1, 2, 3)


@dataclass(frozen=True, slots=True)
class StreamStart:
    """What the first command of a send stream says: the subvolume it makes and, for an
    incremental stream, the ident of the parent the receiver must have."""

    name: str
    ident: str
    ctransid: int
    parent: str | None
    raw: bytes  # the bytes read, to be passed on to btrfs receive


def read_stream_start(read: Callable[[int], bytes]) -> StreamStart:
    """Read the stream header and first command with ``read(n)`` (at most ``n`` bytes, b"" at
    end of stream); raises :class:`BtrfsError` if it is not the start of a send stream."""
    raw = bytearray()

    def take(count: int) -> bytes:
        while len(raw) < count:
            chunk = read(count - len(raw))
            if not chunk:
                raise BtrfsError(f"the send stream ended after {len(raw)} bytes, before its "
                                 "first command: the sender stopped or is not btrfs send")
            raw.extend(chunk)
        return bytes(raw[:count])

    header = take(_STREAM_HEADER.size)
    magic, version = _STREAM_HEADER.unpack(header)
    if magic != _STREAM_MAGIC:
        raise BtrfsError(f"not a btrfs send stream (it starts with {header[:13]!r})")
    if version not in _STREAM_VERSIONS:
        raise BtrfsError(f"btrfs send stream version {version} is not supported here "
                         "(1 to 3 are): use the same btrfs-progs version on every node")
    start = _STREAM_HEADER.size + _COMMAND_HEADER.size
    length, command, _ = _COMMAND_HEADER.unpack(take(start)[_STREAM_HEADER.size:])
    if command not in (_CMD_SUBVOL, _CMD_SNAPSHOT) or length > _MAX_FIRST_COMMAND:
        raise BtrfsError(f"the send stream does not start with a subvolume or snapshot "
                         f"(command {command}, {length} bytes)")
    body = take(start + length)[start:]
    attributes: dict[int, bytes] = {}
    offset = 0
    while offset + _TLV_HEADER.size <= len(body):
        kind, size = _TLV_HEADER.unpack_from(body, offset)
        offset += _TLV_HEADER.size
        attributes[kind] = body[offset:offset + size]
        offset += size
    try:
        name = attributes[_ATTR_PATH].decode()
        ident = str(uuid.UUID(bytes=attributes[_ATTR_UUID]))
        ctransid = struct.unpack("<Q", attributes[_ATTR_CTRANSID])[0]
        parent = (str(uuid.UUID(bytes=attributes[_ATTR_CLONE_UUID]))
                  if command == _CMD_SNAPSHOT else None)
    except (KeyError, ValueError, UnicodeDecodeError, struct.error) as exc:
        raise BtrfsError(f"the send stream's first command is malformed ({exc!r})") from exc
    return StreamStart(name, ident, ctransid, parent, bytes(raw))


# -- running btrfs ------------------------------------------------------------------------------


def _shown(argv: Sequence[str]) -> str:
    text = shlex.join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


def _output(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _btrfs(args: Sequence[str], timeout: float, hint: str) -> str:
    """Run ``btrfs args``; its stdout, or :class:`BtrfsError` naming the command, what it
    said, and ``hint`` (what to do)."""
    argv = ["btrfs", *args]
    ran = proc.run(argv, timeout=timeout, kill_wait=KILL_WAIT,
                   env=proc.tool_environment(), stdout_limit=4 * 1024 * 1024)
    if ran.start_error is not None:
        raise BtrfsError(f"{ran.start_problem()}: install btrfs-progs")
    if ran.timed_out:
        stuck = f"; still stuck after SIGKILL: {ran.describe_stuck()}" if ran.stuck else ""
        raise BtrfsError(f"{_shown(argv)} did not finish within {timeout:g}s (killed{stuck}): "
                         f"the filesystem is slow or hung (see dmesg); {hint}")
    if not ran.ok:
        said = _output(ran.stderr) or _output(ran.stdout) or "no message"
        raise BtrfsError(f"{_shown(argv)} failed (exit code {ran.returncode}): {said}; {hint}")
    return ran.stdout


class _Child:
    """A streaming ``btrfs send`` or ``receive``: spawned like every child of Vigil (own
    process group, killed with the daemon), its messages kept, killed at the deadline."""

    def __init__(self, argv: list[str], *, feed: bool) -> None:
        self.argv = argv
        try:
            self.process = proc.spawn(
                argv, stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT if feed else subprocess.PIPE,
                env=proc.tool_environment(), start_new_session=True)
        except OSError as exc:
            raise BtrfsError(f"cannot run btrfs: {exc.strerror or exc}: install btrfs-progs"
                             ) from exc
        self.messages = bytearray()
        self.selector = selectors.DefaultSelector()
        # The stream's pipe, then the messages' pipe (for receive, its stdout and stderr).
        self.data = self.process.stdin if feed else self.process.stdout
        self.talk = self.process.stdout if feed else self.process.stderr
        for pipe in (self.data, self.talk):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _CHUNK)
        assert self.talk is not None
        self.selector.register(self.talk, selectors.EVENT_READ, "talk")

    def said(self) -> str:
        return _output(self.messages.decode(errors="replace"))

    def hear(self) -> bool:
        """Read the messages waiting; False at their end of file."""
        assert self.talk is not None
        while True:
            try:
                chunk = os.read(self.talk.fileno(), 65536)
            except BlockingIOError:
                return True
            if not chunk:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(self.talk)
                return False
            self.messages += chunk
            del self.messages[:-_OUTPUT_LIMIT]

    def data_ready(self, deadline: float, cancel: threading.Event | None) -> bool:
        """Wait a moment (within ``deadline``) for the stream's pipe, reading messages
        meanwhile; whether it can be read or written now. Raises _OutOfTime."""
        _check_time(deadline, cancel)
        ready = False
        for key, _ in self.selector.select(min(_POLL, deadline - time.monotonic())):
            if key.data == "talk":
                self.hear()
            else:
                ready = True
        return ready

    def wait(self, deadline: float, cancel: threading.Event | None) -> int:
        """Wait for the exit, reading messages; the exit code. Raises _OutOfTime."""
        while True:
            code = self.process.poll()
            if code is not None:
                self.hear()
                return code
            _check_time(deadline, cancel)
            if self.selector.get_map():
                for _key, _ in self.selector.select(min(_POLL, deadline - time.monotonic())):
                    self.hear()
            else:
                time.sleep(min(_POLL / 4, max(0.0, deadline - time.monotonic())))

    def kill(self) -> str:
        """Kill the whole group; "" or a note about processes that survived SIGKILL."""
        with contextlib.suppress(ProcessLookupError):
            proc.kill_group(self.process.pid, signal.SIGKILL)
        try:
            self.process.wait(KILL_WAIT)
        except subprocess.TimeoutExpired:
            return (f"; pid {self.process.pid} survived SIGKILL for {KILL_WAIT:g}s (stuck in "
                    "the kernel: see dmesg)")
        return ""

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        self.selector.close()
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class _OutOfTime(Exception):
    def __init__(self, cancelled: bool) -> None:
        super().__init__("cancelled" if cancelled else "timed out")
        self.cancelled = cancelled


def _check_time(deadline: float, cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise _OutOfTime(cancelled=True)
    if time.monotonic() >= deadline:
        raise _OutOfTime(cancelled=False)


# -- the volume -------------------------------------------------------------------------------


class Volume:
    """The btrfs filesystem whose top level is mounted on ``root``, holding the data subvolume
    ``subvol`` of this node ``node`` and the snapshot directory. Creating the object touches
    nothing; every method checks the mount first (once) and raises :class:`BtrfsError`."""

    def __init__(self, root: str | Path, subvol: str, node: str, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        for what, value in (("subvolume", subvol), ("node", node)):
            if not is_name(value):
                raise ValueError(f"{what} name {value!r} must be letters, digits, '_' and '-' "
                                 "(starting with a letter or digit; no dots)")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.root = Path(os.path.abspath(root))
        self.subvol = subvol
        self.node = node
        self.timeout = timeout
        self.data = self.root / subvol
        self.snapshot_dir = self.root / SNAPSHOT_DIR
        self._checked = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Volume({str(self.root)!r}, {self.subvol!r}, {self.node!r})"

    # -- checks and listing -------------------------------------------------------------------

    def top_mount(self) -> Mount:
        """The mount of ``root``: the top level of a btrfs filesystem, or BtrfsError."""
        # The kernel shows mount points with symbolic links resolved.
        where = os.path.realpath(self.root)
        here = [m for m in read_mountinfo() if m.mount_point == where]
        if not here:
            raise BtrfsError(f"{self.root} is not a mount point: mount the btrfs filesystem's "
                             f"top level there (mount -o subvolid=5 DEVICE {self.root})")
        top = here[-1]
        if top.fstype != "btrfs":
            raise BtrfsError(f"{self.root} holds {top.describe()}, not btrfs: replication "
                             "needs a btrfs filesystem (mkfs.btrfs)")
        if top.root != "/":
            raise BtrfsError(f"{self.root} has the subvolume {top.root} of {top.source} "
                             f"mounted, not the top level: mount it with -o subvolid=5")
        return top

    def check(self) -> None:
        """Raise BtrfsError unless ``root`` is the mounted top level of a btrfs filesystem."""
        if not self._checked:
            self.top_mount()
            self._checked = True

    def subvolumes(self) -> list[Subvolume]:
        """Every subvolume of the filesystem, with its read-only flag."""
        self.check()
        hint = f"check that {self.root} is a mounted btrfs filesystem"
        # Read-only first: a receive finishing in between then looks writable (incomplete),
        # never read-only without its received UUID.
        read_only = _ids(_btrfs(["subvolume", "list", "-r", str(self.root)], self.timeout, hint))
        listed = _btrfs(["subvolume", "list", "-c", "-u", "-q", "-R", str(self.root)],
                        self.timeout, hint)
        return parse_subvolume_list(listed, read_only)

    def _in_snapshot_dir(self, subvolumes: Iterable[Subvolume] | None = None
                         ) -> Iterator[Subvolume]:
        prefix = SNAPSHOT_DIR + "/"
        for subvolume in self.subvolumes() if subvolumes is None else subvolumes:
            if subvolume.path.startswith(prefix) and "/" not in subvolume.path[len(prefix):]:
                yield subvolume

    def _markers(self) -> set[str]:
        try:
            names = os.listdir(self.snapshot_dir)
        except FileNotFoundError:
            return set()
        return {n[len(_MARKER_PREFIX):] for n in names if n.startswith(_MARKER_PREFIX)}

    def _parse(self, name: str) -> tuple[str, int, str] | None:
        """(node, seq, kind) of a name in the snapshot directory: kind "" for a snapshot,
        "aside" or "data.aside"; None for a name that is not ours."""
        parts = name.split(".")
        if len(parts) < 3 or parts[0] != self.subvol or not is_name(parts[1]) \
                or not parts[2].isdigit() or parts[2] != str(int(parts[2])):
            return None
        kind = ".".join(parts[3:])
        if kind not in ("", _ASIDE, f"{_DATA}.{_ASIDE}"):
            return None
        return parts[1], int(parts[2]), kind

    def _snapshot(self, subvolume: Subvolume) -> Snapshot | None:
        parsed = self._parse(subvolume.name)
        if parsed is None or parsed[2]:
            return None
        return Snapshot(subvolume.name, parsed[0], parsed[1],
                        self.snapshot_dir / subvolume.name, subvolume)

    def snapshots(self) -> list[Snapshot]:
        """The complete snapshots, oldest first: read-only, named ``<subvol>.<node>.<seq>``,
        and not the object of a receive in progress or killed (a marker)."""
        return self._complete(self.subvolumes())

    def _complete(self, subvolumes: Iterable[Subvolume],
                  markers: Collection[str] | None = None) -> list[Snapshot]:
        markers = self._markers() if markers is None else markers
        found = [s for sub in self._in_snapshot_dir(subvolumes) if sub.read_only
                 and sub.name not in markers and (s := self._snapshot(sub)) is not None]
        return sorted(found, key=_order)

    def partial(self) -> list[Subvolume]:
        """Half-received subvolumes: writable ones with a snapshot's name, and those named by
        a receive marker (a receive in progress among them)."""
        markers = self._markers()
        return [sub for sub in self._in_snapshot_dir()
                if (parsed := self._parse(sub.name)) is not None and not parsed[2]
                and (not sub.read_only or sub.name in markers)]

    def aside(self) -> list[Aside]:
        """What has been set aside, oldest first."""
        return self._asides(self.subvolumes())

    def _asides(self, subvolumes: Iterable[Subvolume]) -> list[Aside]:
        found = []
        for sub in self._in_snapshot_dir(subvolumes):
            parsed = self._parse(sub.name)
            if parsed is not None and parsed[2]:
                node, seq, kind = parsed
                found.append(Aside(sub.name, node, seq, kind != _ASIDE,
                                   self.snapshot_dir / sub.name, sub))
        return sorted(found, key=lambda a: (a.seq, a.subvolume.created))

    def next_seq(self) -> int:
        """The number the next snapshot taken here gets."""
        numbers = [parsed[1] for sub in self._in_snapshot_dir()
                   if (parsed := self._parse(sub.name)) is not None]
        numbers += [parsed[1] for name in self._markers()
                    if (parsed := self._parse(name)) is not None]
        return max(numbers, default=0) + 1

    def find(self, ident: str) -> Snapshot | None:
        """The complete snapshot here with this ident, if any."""
        return next((s for s in self.snapshots() if s.ident == ident), None)

    # -- the source's side --------------------------------------------------------------------

    def create_data(self) -> bool:
        """Create the data subvolume if it is missing; True if created."""
        self.check()
        if os.path.lexists(self.data):
            if not any(s.path == self.subvol for s in self.subvolumes()):
                raise BtrfsError(f"{self.data} exists but is not a subvolume: move it away "
                                 "(replication needs a subvolume to snapshot)")
            return False
        _btrfs(["subvolume", "create", str(self.data)], self.timeout,
               f"check that {self.root} is writable and has free space")
        return True

    def has_data(self) -> bool:
        """Whether the data subvolume exists."""
        return any(s.path == self.subvol for s in self.subvolumes())

    def delete_data(self, snapshot: Snapshot) -> None:
        """Delete the data subvolume, of which ``snapshot`` (the newest snapshot here) is a
        copy taken after its last write: the final snapshot of a source going out of service.
        Refuses while it is mounted, or if ``snapshot`` is not the newest or not of it."""
        subvolumes = self.subvolumes()
        data = next((s for s in subvolumes if s.path == self.subvol), None)
        if data is None:
            return
        chain = self._complete(subvolumes)
        if not chain or chain[-1].name != snapshot.name \
                or chain[-1].subvolume.parent_uuid != data.uuid:
            raise BtrfsError(f"{snapshot.name} is not the newest snapshot of {self.data}: "
                             "the data subvolume is kept (set it aside or snapshot it first)")
        self._refuse_if_mounted()
        self._delete(self.data, "delete the data subvolume")
        log.info("deleted the data subvolume %s: %s holds all of it", self.data, snapshot.name)

    def snapshot(self) -> Snapshot:
        """Take a read-only snapshot of the data subvolume, numbered after everything here."""
        self.check()
        with self._lock:
            subvolumes = self.subvolumes()
            data = next((s for s in subvolumes if s.path == self.subvol), None)
            if data is None:
                raise BtrfsError(f"there is no data subvolume {self.data} to snapshot: create "
                                 "it (on the source) or promote a snapshot (on a standby)")
            chain = self._complete(subvolumes)
            newest = chain[-1] if chain else None
            # The data must continue the chain: made from its newest snapshot, or the source
            # of it. Data left from an earlier turn as the source would start a new history.
            if newest is not None and data.uuid != newest.subvolume.parent_uuid \
                    and data.parent_uuid != newest.uuid:
                raise BtrfsError(
                    f"the data subvolume {self.data} does not continue from the newest snapshot "
                    f"here ({newest.name}): it is left from an earlier time; promote "
                    f"{newest.name} (which sets it aside) before taking snapshots")
            self._make_snapshot_dir()
            name = f"{self.subvol}.{self.node}.{self.next_seq()}"
            target = self.snapshot_dir / name
            _btrfs(["subvolume", "snapshot", "-r", str(self.data), str(target)], self.timeout,
                   f"check that {self.root} has free space (prune old snapshots)")
        found = next((s for s in self.snapshots() if s.name == name), None)
        if found is None:
            raise BtrfsError(f"btrfs made the snapshot {target}, but it is not listed as a "
                             "read-only subvolume: check the filesystem (dmesg)")
        return found

    def send(self, snapshot: Snapshot, parent: Snapshot | None, out: BinaryIO, *,
             timeout: float, cancel: threading.Event | None = None) -> int:
        """Stream ``btrfs send`` of ``snapshot`` (incrementally from ``parent``, which the
        receiver must have: see :func:`common`) to ``out``; the number of bytes written.
        Out of time or cancelled, btrfs send is killed and BtrfsError raised; so is it when
        writing to ``out`` fails (the receiver gave up: see its error)."""
        self.check()
        for given in (snapshot, parent):
            if given is not None and given.path.parent != self.snapshot_dir:
                raise BtrfsError(f"snapshot {given.path} is not in {self.snapshot_dir}")
        argv = ["btrfs", "send", "-q"]
        if parent is not None:
            argv += ["-p", str(parent.path)]
        argv.append(str(snapshot.path))
        what = (f"btrfs send of {snapshot.path}"
                + (f" (incremental from {parent.name})" if parent is not None else ""))
        deadline = time.monotonic() + timeout
        sent = 0
        child = _Child(argv, feed=False)

        def deliver(chunk: bytes | None) -> None:
            """Write ``chunk`` to ``out`` (None: flush it)."""
            try:
                if chunk is not None:
                    _write_all(out, chunk)
                elif (flush := getattr(out, "flush", None)) is not None:
                    flush()
            except (OSError, ValueError) as exc:
                note = child.kill()
                raise BtrfsError(f"{what}: writing the stream failed after {sent} bytes "
                                 f"({_reason(exc)}){note}: the receiver stopped reading (see "
                                 "its error)") from exc

        try:
            assert child.data is not None
            child.selector.register(child.data, selectors.EVENT_READ, "data")
            while child.selector.get_map():
                if not child.data_ready(deadline, cancel):
                    continue
                try:
                    chunk = os.read(child.data.fileno(), _CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    child.selector.unregister(child.data)
                    continue
                deliver(chunk)
                sent += len(chunk)
            code = child.wait(deadline, cancel)
            if code == 0:
                deliver(None)
        except _OutOfTime as exc:
            note = child.kill()
            why = "was cancelled" if exc.cancelled else f"did not finish within {timeout:g}s"
            raise BtrfsError(f"{what} {why} after {sent} bytes (killed{note}): the receiver "
                             "or this filesystem is too slow; try again later") from None
        finally:
            child.close()
        if code != 0:
            raise BtrfsError(f"{what} failed (exit code {code}): {child.said() or 'no message'}"
                             f"; check that both snapshots are read-only and on {self.root}")
        return sent

    def prune(self, keep: int, *, protect: Collection[str] = ()) -> list[Snapshot]:
        """Delete the complete snapshots but the newest ``keep`` and those whose ident is in
        ``protect`` (on a source: the newest snapshot each receiver has, which the next
        incremental send needs); the deleted, oldest first. Asides are never touched."""
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the next incremental needs the newest "
                             f"snapshot), got {keep!r}")
        snapshots = self.snapshots()
        doomed = [s for s in snapshots[:-keep] if s.ident not in protect]
        for snapshot in doomed:
            self._delete(snapshot.path, "prune")
        return doomed

    # -- the receiver's side ------------------------------------------------------------------

    def receive(self, stream: BinaryIO, *, timeout: float,
                cancel: threading.Event | None = None) -> Snapshot:
        """Store the send stream read from ``stream`` with ``btrfs receive``; the new snapshot,
        complete and synced to disk. One snapshot per call: btrfs receive stops at the
        stream's end marker, and ``stream`` must reach its end of file there. Raises
        :class:`ParentMissing`, before btrfs receive runs, when the stream is incremental from
        a snapshot that is not here (send it in full); :class:`BtrfsError` when the stream
        does not continue this volume's chain (see the module docstring) or the receive fails,
        times out or is cancelled: the half-received subvolume is deleted then (what a killed
        process leaves, :meth:`cleanup_partial` deletes)."""
        self.check()
        deadline = time.monotonic() + timeout
        reader: Callable[[int], bytes] = getattr(stream, "read1", stream.read)
        try:
            start = read_stream_start(reader)
        except OSError as exc:
            raise BtrfsError(f"reading the send stream for {self.snapshot_dir} failed: "
                             f"{exc.strerror or exc}") from exc
        parsed = self._parse(start.name)
        if parsed is None or parsed[2]:  # before the name makes a marker's
            raise BtrfsError(f"the stream carries the subvolume {start.name!r}, not a snapshot "
                             f"named {self.subvol}.<node>.<seq>: refusing it (is the sender "
                             f"replicating another subvolume into {self.snapshot_dir}?)")
        self._make_snapshot_dir()
        locked = self._lock_marker(start.name)
        if locked is None:
            raise BtrfsError(f"another receive of {start.name} into {self.snapshot_dir} is in "
                             "progress")
        fd, stale = locked
        marker = self._marker_path(start.name)
        try:
            subvolumes = self.subvolumes()
            # A marker left by a killed receive makes its subvolume incomplete; ours does not.
            markers = self._markers() - (set() if stale else {start.name})
            try:
                self._admit(start, parsed[1], self._complete(subvolumes, markers))
            except BtrfsError:
                if not stale:
                    marker.unlink(missing_ok=True)
                raise
            # What an earlier, killed receive of the same name left goes first.
            if any(sub.name == start.name for sub in self._in_snapshot_dir(subvolumes)):
                self._remove_partial(start.name)
            os.fsync(fd)
            _fsync_dir(self.snapshot_dir)
            failure = self._run_receive(start, reader, deadline, timeout, cancel)
            snapshot = None
            if not failure:
                failure, snapshot = self._settle(start)
            if snapshot is not None:
                marker.unlink(missing_ok=True)
                _fsync_dir(self.snapshot_dir)
                log.info("received %s (%s)", snapshot.path,
                         f"incremental from {start.parent}" if start.parent else "full")
                return snapshot
            try:
                removed = self._remove_partial(start.name)
            except BtrfsError as exc:
                note = f"; the half-received {start.name} could not be deleted: {exc}"
            else:
                marker.unlink(missing_ok=True)
                note = f"; the half-received {start.name} was deleted" if removed else ""
            raise BtrfsError(f"{failure}{note}; the sender should send it again")
        finally:
            os.close(fd)

    def _run_receive(self, start: StreamStart, reader: Callable[[int], bytes],
                     deadline: float, timeout: float, cancel: threading.Event | None) -> str:
        """Run btrfs receive on the stream; "" when it succeeded, else why not."""
        what = f"btrfs receive of {start.name} into {self.snapshot_dir}"
        fed = [0]
        child = _Child(["btrfs", "receive", "-e", str(self.snapshot_dir)], feed=True)
        try:
            self._feed(child, start.raw, reader, fed, deadline, cancel)
            code = child.wait(deadline, cancel)
        except _OutOfTime as exc:
            note = child.kill()
            why = "was cancelled" if exc.cancelled else f"did not finish within {timeout:g}s"
            return (f"{what} {why} after {fed[0]} bytes (killed{note}): the sender or this "
                    "filesystem is too slow")
        except (OSError, ValueError) as exc:
            note = child.kill()
            return (f"reading the send stream of {start.name} failed after {fed[0]} bytes: "
                    f"{_reason(exc)}{note}")
        finally:
            child.close()
        if code != 0:
            return (f"{what} failed (exit code {code}) after {fed[0]} bytes: "
                    f"{child.said() or 'no message'}")
        return ""

    def _admit(self, start: StreamStart, seq: int, snapshots: list[Snapshot]) -> None:
        """Refuse a stream (numbered ``seq``) that does not continue the chain ``snapshots``."""
        same = next((s for s in snapshots if s.name == start.name), None)
        if same is not None:
            which = "the same" if same.ident == start.ident else "another"
            raise BtrfsError(f"{same.path} is already here ({which} snapshot, ident "
                             f"{same.ident}): the sender should send only what this node lacks "
                             "(see common())")
        newest = snapshots[-1] if snapshots else None
        if start.parent is None:
            if newest is not None:
                raise BtrfsError(
                    f"a full stream of {start.name} cannot join {self.snapshot_dir}: it holds "
                    f"snapshots ({', '.join(s.name for s in snapshots[-3:])}) the sender does "
                    "not build on; set them aside (see diverged()) or delete them first")
            return
        parent = next((s for s in snapshots if s.ident == start.parent), None)
        if parent is None:
            raise ParentMissing(
                f"the stream of {start.name} is incremental from the snapshot {start.parent}, "
                f"which {self.snapshot_dir} does not have: send {start.name} in full",
                parent=start.parent, snapshot=start.name)
        if newest is not None and newest.name != parent.name:
            later = [s.name for s in snapshots if _order(s) > _order(parent)]
            raise BtrfsError(
                f"the stream of {start.name} builds on {parent.name}, but {self.snapshot_dir} "
                f"has later snapshots ({', '.join(later)}) that are not in the sender's history: "
                "set them aside first (see diverged())")
        if newest is not None and seq <= newest.seq:
            raise BtrfsError(f"the stream of {start.name} is numbered {seq}, not after "
                             f"the newest snapshot here ({newest.name}): refusing it")

    def _marker_path(self, name: str) -> Path:
        return self.snapshot_dir / f"{_MARKER_PREFIX}{name}"

    def _lock_marker(self, name: str, create: bool = True) -> tuple[int, bool] | None:
        """``name``'s marker, exclusively locked: (its file descriptor, whether it was there
        before, i.e. left by a receive that died: a live one removes its marker before it lets
        go of the lock). None if a live receive (or cleanup) holds it, or if there is none
        and ``create`` is false."""
        path = self._marker_path(name)
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
        while True:
            existed = True
            try:
                try:
                    fd = os.open(path, flags)
                except FileNotFoundError:
                    if not create:
                        return None
                    existed = False
                    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue  # made by another receive meanwhile: lock that one
            except OSError as exc:
                raise BtrfsError(f"cannot open {path}: {exc.strerror or exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            # Whoever held it may have removed it meanwhile: a lock on a file that is no
            # longer the marker would protect nothing.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                return fd, existed
            os.close(fd)

    @staticmethod
    def _feed(child: _Child, first: bytes, read: Callable[[int], bytes], fed: list[int],
              deadline: float, cancel: threading.Event | None) -> None:
        """Write ``first`` and then what ``read`` gives to btrfs receive until end of stream
        or until receive stops reading (after the end marker, or an error), counting the
        bytes in ``fed[0]``."""
        assert child.data is not None
        fd = child.data.fileno()
        child.selector.register(child.data, selectors.EVENT_WRITE, "data")
        pending = memoryview(first)
        while True:
            if not pending:
                _check_time(deadline, cancel)
                if child.process.poll() is not None:
                    break
                chunk = read(_CHUNK)
                if not chunk:
                    break
                pending = memoryview(chunk)
            if child.data_ready(deadline, cancel):
                try:
                    written = os.write(fd, pending[:_CHUNK])
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    return  # receive has stopped: its exit code tells why
                pending = pending[written:]
                fed[0] += written
            if child.process.poll() is not None and pending:
                return
        with contextlib.suppress(OSError, KeyError, ValueError):
            child.selector.unregister(child.data)
            child.data.close()

    def _settle(self, start: StreamStart) -> tuple[str, Snapshot | None]:
        """After btrfs receive succeeded: the snapshot, checked and synced to disk, or why
        not."""
        found = next((s for s in self._in_snapshot_dir() if s.name == start.name), None)
        if found is None:
            return (f"btrfs receive ended well, but {self.snapshot_dir / start.name} does not "
                    "exist", None)
        if not found.read_only or found.received_uuid != start.ident:
            return (f"btrfs receive ended well, but {self.snapshot_dir / start.name} is not "
                    f"complete (read-only: {found.read_only}, received UUID "
                    f"{found.received_uuid}, the stream's {start.ident})", None)
        try:
            _btrfs(["filesystem", "sync", str(self.root)], self.timeout,
                   "the snapshot is not known to be on disk")
        except BtrfsError as exc:
            return str(exc), None
        snapshot = self._snapshot(found)
        assert snapshot is not None  # _admit checked the name
        return "", snapshot

    def _remove_partial(self, name: str) -> bool:
        """Delete the subvolume ``name`` if it is in the snapshot directory (its marker held);
        whether there was one."""
        if not any(s.name == name for s in self._in_snapshot_dir()):
            return False
        log.warning("deleting %s: a receive did not finish it", self.snapshot_dir / name)
        self._delete(self.snapshot_dir / name, "delete a half-received snapshot")
        return True

    def cleanup_partial(self) -> list[str]:
        """Delete what killed or failed receives left: the subvolume of every marker that no
        live receive holds (and the marker), and every writable subvolume with a snapshot's
        name. A receive in progress is left alone. The names deleted."""
        self.check()
        removed: list[str] = []
        candidates = sorted(self._markers() | {sub.name for sub in self.partial()})
        for name in candidates:
            locked = self._lock_marker(name)
            if locked is None:
                continue  # a live receive holds it
            fd, marked = locked
            try:
                for sub in self._in_snapshot_dir():
                    if sub.name == name and (marked or not sub.read_only):
                        self._delete(self.snapshot_dir / name, "delete a half-received snapshot")
                        removed.append(name)
                self._marker_path(name).unlink(missing_ok=True)
            finally:
                os.close(fd)
        if candidates:
            _fsync_dir(self.snapshot_dir)
        if removed:
            log.warning("deleted half-received snapshots in %s: %s", self.snapshot_dir,
                        ", ".join(removed))
        return removed

    # -- takeover and divergence --------------------------------------------------------------

    def promote(self, snapshot: Snapshot) -> Promoted:
        """Make the data subvolume a writable copy of ``snapshot``, the newest snapshot here,
        for a takeover. A data subvolume already there is set aside first (it may hold writes
        that no other node has). Refuses while the data subvolume is mounted."""
        snapshots = self.snapshots()
        if snapshot.name not in {s.name for s in snapshots}:
            raise BtrfsError(f"{snapshot.path} is not a complete snapshot here: promote one of "
                             f"{', '.join(s.name for s in snapshots[-3:]) or '(none)'}")
        if snapshots[-1].name != snapshot.name:
            later = [s.name for s in snapshots if _order(s) > _order(snapshot)]
            raise BtrfsError(f"cannot promote {snapshot.name}: newer snapshots are here "
                             f"({', '.join(later)}); set them aside first to continue from it")
        aside = self.set_aside_data()
        _btrfs(["subvolume", "snapshot", str(snapshot.path), str(self.data)], self.timeout,
               f"check that {self.root} is writable and has free space")
        log.info("promoted %s to %s%s", snapshot.path, self.data,
                 f" (the former data subvolume is set aside as {aside.path})" if aside else "")
        return Promoted(self.data, snapshot, aside)

    def set_aside(self, snapshot: Snapshot) -> Aside:
        """Rename a snapshot ``<name>.aside``: out of the chain, kept until discarded."""
        self.check()
        parsed = self._parse(snapshot.name)
        if snapshot.path.parent != self.snapshot_dir or parsed is None or parsed[2]:
            raise BtrfsError(f"{snapshot.path} is not a snapshot in {self.snapshot_dir}")
        target = self.snapshot_dir / f"{snapshot.name}.{_ASIDE}"
        self._rename(snapshot.path, target)
        log.warning("set %s aside as %s", snapshot.path, target)
        return self._aside_named(target.name)

    def set_aside_data(self) -> Aside | None:
        """Move the data subvolume into the snapshot directory as
        ``<subvol>.<node>.<seq>.data.aside`` (None if there is none). Refuses while it is
        mounted."""
        self.check()
        if not any(s.path == self.subvol for s in self.subvolumes()):
            if os.path.lexists(self.data):
                raise BtrfsError(f"{self.data} exists but is not a subvolume: move it away")
            return None
        self._refuse_if_mounted()
        self._make_snapshot_dir()
        with self._lock:
            target = self.snapshot_dir / (f"{self.subvol}.{self.node}.{self.next_seq()}."
                                          f"{_DATA}.{_ASIDE}")
            self._rename(self.data, target)
        log.warning("set the data subvolume %s aside as %s", self.data, target)
        return self._aside_named(target.name)

    def discard(self, aside: Aside) -> None:
        """Delete something set aside: the operator's decision, never taken automatically."""
        self.check()
        parsed = self._parse(aside.name)
        if aside.path.parent != self.snapshot_dir or parsed is None or not parsed[2]:
            raise BtrfsError(f"{aside.path} is not set aside in {self.snapshot_dir}")
        self._delete(aside.path, "discard")

    def reinstate(self, aside: Aside) -> Reinstated:
        """Make something set aside this node's newest snapshot again, on purpose (the
        operator's decision, never taken automatically). First the data subvolume, and every
        complete snapshot here that is not known to be in ``aside``'s history, are set aside
        (see :meth:`ancestors`); then a diverged snapshot is renamed back into the chain,
        numbered after everything here, its ident kept, while of a former data subvolume a
        read-only snapshot is taken, and it stays set aside itself. Nothing is deleted.
        Refuses while the data subvolume is mounted. The caller makes sure that no receive or
        snapshot runs meanwhile (the resource is out of service everywhere)."""
        self.check()
        parsed = self._parse(aside.name)
        if aside.path.parent != self.snapshot_dir or parsed is None or not parsed[2]:
            raise BtrfsError(f"{aside.path} is not set aside in {self.snapshot_dir}")
        subvolumes = self.subvolumes()
        current = next((a for a in self._asides(subvolumes) if a.name == aside.name), None)
        if current is None:
            raise BtrfsError(f"{aside.path} is no longer set aside here (discarded or brought "
                             "back meanwhile?)")
        chain = self._complete(subvolumes)
        history = self.ancestors(current, subvolumes, chain)
        moved = []
        data = self.set_aside_data()  # first: it refuses while mounted, before any change
        if data is not None:
            moved.append(data)
        moved += [self.set_aside(s) for s in chain if s.name not in {h.name for h in history}]
        with self._lock:
            seq = self.next_seq()
            if current.writable:
                target = self.snapshot_dir / f"{self.subvol}.{self.node}.{seq}"
                _btrfs(["subvolume", "snapshot", "-r", str(current.path), str(target)],
                       self.timeout, f"check that {self.root} has free space")
            else:
                target = self.snapshot_dir / f"{self.subvol}.{current.node}.{seq}"
                self._rename(current.path, target)
        chain = self.snapshots()
        if not chain or chain[-1].name != target.name:
            raise BtrfsError(f"{target} was made from {current.name}, but it is not the newest "
                             f"complete snapshot in {self.snapshot_dir}: check the filesystem "
                             "(dmesg)")
        log.warning("brought %s back as %s, the newest snapshot here%s", current.path,
                    target.name, f"; set aside: {', '.join(a.name for a in moved)}"
                    if moved else "")
        return Reinstated(chain[-1], current, tuple(moved))

    def ancestors(self, aside: Aside, subvolumes: Sequence[Subvolume] | None = None,
                  chain: Sequence[Snapshot] | None = None) -> list[Snapshot]:
        """The complete snapshots here (oldest first) that are in the history of ``aside``:
        the chain up to the newest one that btrfs's own records tie to it. Those records are
        each subvolume's parent UUID: a received snapshot's is the local snapshot its stream
        built on; a snapshot taken here, and a data subvolume, has the data subvolume's, and
        the snapshot it was promoted from. Snapshots taken of one data subvolume follow one
        another in the order they were created. What cannot be tied (a parent pruned, a data
        subvolume deleted) counts as not in the history: setting too much aside loses
        nothing."""
        subvolumes = self.subvolumes() if subvolumes is None else subvolumes
        chain = self._complete(subvolumes) if chain is None else chain
        by_uuid = {s.uuid: s for s in subvolumes}

        def taken_of(origin: str, before: int | None) -> list[Subvolume]:
            return [s for s in subvolumes if s.read_only and s.received_uuid is None
                    and s.parent_uuid == origin and (before is None or s.created < before)]

        tied: set[str] = set()
        todo, seen = [aside.subvolume], set()
        while todo:
            sub = todo.pop()
            if sub.uuid in seen:
                continue
            seen.add(sub.uuid)
            found: list[Subvolume] = []
            parent = by_uuid.get(sub.parent_uuid) if sub.parent_uuid else None
            if not sub.read_only:  # a data subvolume: every snapshot taken of it
                found += taken_of(sub.uuid, None)
            elif sub.received_uuid is None and sub.parent_uuid is not None:
                # taken here: the earlier snapshots of the same data, and what the data came
                # from (not the data itself: it went on after this snapshot)
                found += taken_of(sub.parent_uuid, sub.created)
                parent = (by_uuid.get(parent.parent_uuid)
                          if parent is not None and parent.parent_uuid else None)
            if parent is not None:
                found.append(parent)
            tied |= {s.uuid for s in found}
            todo += found
        newest = max((s for s in chain if s.uuid in tied), key=_order, default=None)
        return [] if newest is None else [s for s in chain if _order(s) <= _order(newest)]

    def _aside_named(self, name: str) -> Aside:
        found = next((a for a in self.aside() if a.name == name), None)
        if found is None:
            raise BtrfsError(f"{self.snapshot_dir / name} is not listed after being set aside: "
                             "check the filesystem (dmesg)")
        return found

    def _refuse_if_mounted(self) -> None:
        top = self.top_mount()
        inside = [m for m in read_mountinfo() if m.fstype == "btrfs"
                  and (m.major, m.minor) == (top.major, top.minor)
                  and (m.root == f"/{self.subvol}" or m.root.startswith(f"/{self.subvol}/"))]
        if inside:
            raise BtrfsError(f"the data subvolume {self.data} is mounted on "
                             f"{', '.join(m.mount_point for m in inside)}: unmount it first")

    # -- small steps ----------------------------------------------------------------------------

    def _make_snapshot_dir(self) -> None:
        try:
            self.snapshot_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise BtrfsError(f"cannot create {self.snapshot_dir}: {exc.strerror or exc}"
                             ) from exc

    def _rename(self, source: Path, target: Path) -> None:
        if os.path.lexists(target):
            raise BtrfsError(f"cannot move {source} to {target}: the target exists")
        try:
            os.rename(source, target)
        except OSError as exc:
            hint = (": a read-only snapshot can only be renamed within its directory"
                    if exc.errno == errno.EROFS else "")
            raise BtrfsError(f"cannot move {source} to {target}: {exc.strerror or exc}{hint}"
                             ) from exc
        _fsync_dir(target.parent)
        if source.parent != target.parent:
            _fsync_dir(source.parent)

    def _delete(self, path: Path, why: str) -> None:
        _btrfs(["subvolume", "delete", str(path)], self.timeout,
               f"could not {why}; delete it by hand (btrfs subvolume delete {path})")


def is_name(value: object) -> bool:
    """Whether ``value`` may name a subvolume or a node here: letters, digits, ``_`` and
    ``-``, starting with a letter or digit (no dots: names split on them)."""
    return isinstance(value, str) and bool(value) and value[0].isascii() \
        and value[0].isalnum() and all(c.isascii() and (c.isalnum() or c in "_-")
                                       for c in value)


def _reason(exc: BaseException) -> str:
    return (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)


def _write_all(out: BinaryIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = out.write(view)
        if written is None:  # a non-blocking raw stream that cannot take more now
            raise BlockingIOError(errno.EAGAIN, "the stream takes no more data now")
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    """Make a rename, creation or removal in ``path`` durable (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.warning("fsync of %s failed: %s", path, exc.strerror or exc)
    finally:
        os.close(fd)


def btrfs_available() -> str | None:
    """None if btrfs can be used here, else why not (for validation and tests)."""
    if shutil.which("btrfs", path=proc.tool_environment()["PATH"]) is None:
        return "the btrfs program is not installed (install btrfs-progs)"
    try:
        with open("/proc/filesystems") as f:
            if any(line.split()[-1:] == ["btrfs"] for line in f):
                return None
    except OSError:
        return None
    return "the kernel has no btrfs support loaded (modprobe btrfs)"
