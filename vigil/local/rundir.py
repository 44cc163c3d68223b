"""The node's runtime directory and the files Vigil makes in it, safe from other local users.

The runtime directory (``runtime_dir/<node>``) holds state.json (the node's promise to the
transition protocol), the control, event and guardian sockets, the application logs and the
agents' state. The daemon usually runs as root; the danger is a local user without
privileges who can create names where root writes: a symbolic link planted at a temporary or
log path turns root's write into a write to any file, and a directory that user owns, or may
write in, lets them swap what the daemon reads. Hence:

* The directory is the daemon's user's own, mode 0700; 0711 when ``admin_group`` or
  ``status_group`` is set (their members must reach the sockets, whose own modes and the
  daemon's per-request check decide who gets in; nobody but its owner may list it). Missing
  parents are made with the same mode; a directory an older Vigil made wider is narrowed, and
  files left in it readable by others are made private.
* :func:`prepare_runtime_dir` refuses (:class:`UnsafePath`) when the directory, or any
  directory above it, is owned by a user other than root and the daemon's, or is writable by
  others (or by a group that is not the daemon's own) without the sticky bit; /tmp's 1777 is
  fine: there nobody may remove or rename what another user owns. A symbolic link on the way
  must belong to root or the daemon's user.
* New files are created with ``O_EXCL | O_NOFOLLOW`` (a name that exists is never followed
  and never reused) and put in place by rename (:func:`write_atomic`); a log is opened
  ``O_NOFOLLOW`` for appending and must be a regular file of the daemon's user with one link
  (:func:`open_append`). Files are mode 0600.
* :class:`NodeLock`: one daemon per node; a second one is refused before it binds anything.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import logging
import os
import pwd
import stat
from pathlib import Path
from typing import Final

__all__ = [
    "FILE_MODE",
    "LOCK_NAME",
    "PRIVATE_DIR_MODE",
    "SHARED_DIR_MODE",
    "AlreadyRunning",
    "NodeLock",
    "UnsafePath",
    "open_append",
    "open_private",
    "prepare_runtime_dir",
    "private_dir",
    "read_private",
    "runtime_dir_mode",
    "temp_path",
    "write_atomic",
]

log = logging.getLogger(__name__)

PRIVATE_DIR_MODE: Final = 0o700
#: with admin_group or status_group: traversable (the sockets), not listable
SHARED_DIR_MODE: Final = 0o711
FILE_MODE: Final = 0o600
LOCK_NAME: Final = "node.lock"

_NEW: Final = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINK_HOPS: Final = 8


class UnsafePath(OSError):
    """A path in or above the runtime directory that another user could control; the
    message says which, why it matters and what to do."""


class AlreadyRunning(Exception):
    """Another daemon holds this node's lock."""


def runtime_dir_mode(shared: bool) -> int:
    return SHARED_DIR_MODE if shared else PRIVATE_DIR_MODE


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _who_writes(st: os.stat_result) -> str:
    if st.st_mode & stat.S_IWOTH:
        return "everyone"
    try:
        return f"group {grp.getgrgid(st.st_gid).gr_name}"
    except KeyError:
        return f"group {st.st_gid}"


def _directory_problem(path: Path, st: os.stat_result, final: bool, runtime_dir: Path) -> str:
    """Why the directory ``path`` (on the way to ``runtime_dir``, or that directory itself
    when ``final``) is unsafe; "" when it is fine."""
    me, mode = os.geteuid(), stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory; remove it, or choose another runtime_dir"
    if final:
        if st.st_uid != me:
            return (f"{path} is owned by {_user(st.st_uid)}, not by {_user(me)} who runs "
                    f"the daemon: chown {_user(me)} {path} (after checking what is in it), "
                    "or remove it: the daemon makes it")
        if mode & 0o022:
            return (f"{path} is writable by {_who_writes(st)} (mode {mode:04o}): they could "
                    f"plant files and links in it; chmod {PRIVATE_DIR_MODE:o} {path} after "
                    "checking what is in it, or remove it: the daemon makes it")
        return ""
    if st.st_uid not in (0, me):
        return (f"{path}, above the runtime directory {runtime_dir}, is owned by "
                f"{_user(st.st_uid)}: whoever owns a directory can replace what is below it; "
                f"chown root {path}, or choose a runtime_dir below directories owned by root "
                "(the default is /var/lib/vigil)")
    sticky = st.st_mode & stat.S_ISVTX
    writable = mode & stat.S_IWOTH or (mode & stat.S_IWGRP and st.st_gid != os.getegid())
    if writable and not sticky:
        return (f"{path}, above the runtime directory {runtime_dir}, is writable by "
                f"{_who_writes(st)} (mode {mode:04o}) without the sticky bit: they can rename "
                f"or replace what is below it; chmod go-w {path} (or chmod +t {path}), or "
                "choose another runtime_dir")
    return ""


def _walk(path: Path, runtime_dir: Path, to_runtime_dir: bool, hops: int = 0) -> str:
    """The first problem on the way from / to ``path`` (absolute), which is the runtime
    directory itself when ``to_runtime_dir``; links are followed here, one component at a
    time, and each must belong to root or the daemon's user."""
    if hops > _MAX_LINK_HOPS:
        return f"too many symbolic links on the way to {runtime_dir}"
    parts = path.parts[1:]
    current = Path(path.anchor)
    problem = _directory_problem(current, os.lstat(current), to_runtime_dir and not parts,
                                 runtime_dir)
    for i, part in enumerate(parts):
        if problem:
            break
        current = current / part
        last = to_runtime_dir and i == len(parts) - 1
        st = os.lstat(current)
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in (0, os.geteuid()):
                return (f"{current}, on the way to the runtime directory {runtime_dir}, is a "
                        f"symbolic link owned by {_user(st.st_uid)}, who can point it anywhere; "
                        "remove it, or choose another runtime_dir")
            current = Path(os.path.realpath(current))
            problem = _walk(current, runtime_dir, last, hops + 1)
        else:
            problem = _directory_problem(current, st, last, runtime_dir)
    return problem


def _fchmod_if(fd: int, path: Path, mode: int, what: str) -> None:
    old = stat.S_IMODE(os.fstat(fd).st_mode)
    if old != mode:
        os.fchmod(fd, mode)
        log.info("%s %s was mode %04o: now %04o", what, path, old, mode)


def prepare_runtime_dir(directory: Path, shared: bool = False) -> None:
    """Make ``directory`` (and missing parents) the daemon's own, with the mode ``shared``
    asks for (:func:`runtime_dir_mode`); raise :class:`UnsafePath` when it, or a directory
    above it, could be changed by another user. Idempotent: each of the daemon's parts that
    uses the directory calls it."""
    directory = Path(os.path.abspath(directory))
    mode = runtime_dir_mode(shared)
    _make_missing(directory, directory, mode)
    problem = _walk(directory, directory, to_runtime_dir=True)
    if problem:
        raise UnsafePath(f"unsafe runtime directory: {problem}")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _fchmod_if(fd, directory, mode, "runtime directory")
        _make_contents_private(fd, directory)
    finally:
        os.close(fd)


def _make_missing(directory: Path, runtime_dir: Path, mode: int) -> None:
    """Make ``directory`` and its missing parents with ``mode``; nothing is made below a
    directory that is already unsafe (:class:`UnsafePath`)."""
    missing = []
    parent = directory
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = parent.parent
    if not missing:
        return
    problem = _walk(parent, runtime_dir, to_runtime_dir=False)
    if problem:
        raise UnsafePath(f"unsafe runtime directory: {problem}")
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile: checked after
            os.mkdir(path, mode)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, mode)  # the umask may have taken the o+x that groups need
            finally:
                os.close(fd)


def _make_contents_private(dir_fd: int, directory: Path) -> None:
    """What an older Vigil left readable by others (state.json 0644, logs/ 0755): private.
    Sockets keep their modes (their actors set them); links are never followed."""
    me = os.geteuid()
    for entry in os.scandir(dir_fd):
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # gone meanwhile (the event socket's staging directory)
        if st.st_uid != me or not stat.S_IMODE(st.st_mode) & 0o077:
            continue
        if stat.S_ISDIR(st.st_mode):
            flags, mode = os.O_RDONLY | os.O_DIRECTORY, PRIVATE_DIR_MODE
        elif stat.S_ISREG(st.st_mode):
            flags, mode = os.O_RDONLY | os.O_NONBLOCK, FILE_MODE
        else:
            continue
        try:
            fd = os.open(entry.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            continue  # gone meanwhile
        try:
            _fchmod_if(fd, directory / entry.name, mode, "left by an older daemon:")
        finally:
            os.close(fd)


def _refuse_link(path: Path) -> UnsafePath:
    return UnsafePath(f"{path} is a symbolic link: Vigil never follows one in its runtime "
                      "directory (whoever made it could point it at a file to overwrite); "
                      "remove it and find out who made it")


def _check_own_file(fd: int, path: Path, kind: str) -> os.stat_result:
    st = os.fstat(fd)
    if stat.S_IFMT(st.st_mode) != (stat.S_IFDIR if kind == "directory" else stat.S_IFREG):
        raise UnsafePath(f"{path} is not a {kind}; remove it")
    if st.st_uid != os.geteuid():
        raise UnsafePath(f"{path} is owned by {_user(st.st_uid)}, not by {_user(os.geteuid())} "
                         "who runs the daemon: remove it (the daemon makes its own)")
    if kind == "file" and st.st_nlink > 1:
        raise UnsafePath(f"{path} has {st.st_nlink} hard links: it may be another file under "
                         "a second name; remove it")
    return st


def private_dir(path: Path) -> Path:
    """The sub-directory ``path`` of the runtime directory (logs/, dummy/), made 0700 when
    missing (with missing parents, where those above are safe: the runtime directory may
    have been deleted); an existing one must be a directory of the daemon's user (not a
    link)."""
    path = Path(os.path.abspath(path))
    _make_missing(path, path.parent, PRIVATE_DIR_MODE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise _refuse_link(path) from None
        raise
    try:
        _check_own_file(fd, path, "directory")
        _fchmod_if(fd, path, PRIVATE_DIR_MODE, "directory")
    finally:
        os.close(fd)
    return path


def temp_path(path: Path) -> Path:
    """Where :func:`write_atomic` writes ``path``'s next content before the rename."""
    return path.with_name(path.name + ".tmp")


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` by rename: a reader sees the old or the new content,
    never part of one. The temporary file is made anew (``O_EXCL | O_NOFOLLOW``): whatever
    was at its name (a stale one, a planted link) is removed, never followed."""
    tmp = temp_path(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # unlink removes a link itself, not what it points to
    fd = os.open(tmp, os.O_WRONLY | _NEW, mode)
    try:
        os.fchmod(fd, mode)  # the umask can only narrow it; say it exactly
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def open_append(path: Path, mode: int = FILE_MODE) -> int:
    """A descriptor appending to the log ``path`` (made with ``mode`` when missing); an
    existing one must be a regular file of the daemon's user with one link, and is narrowed
    to ``mode``. A link at ``path`` is refused (:class:`UnsafePath`), never followed."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_NONBLOCK | os.O_CLOEXEC, mode)  # NONBLOCK: a planted FIFO
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse_link(path) from None
        raise
    try:
        _check_own_file(fd, path, "file")
        _fchmod_if(fd, path, mode, "log")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private(path: Path) -> int:
    """A read-only descriptor of the regular file ``path``, never through a link
    (:class:`UnsafePath`); FileNotFoundError when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse_link(path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(f"{path} is not a regular file; remove it")
    return fd


def read_private(path: Path, limit: int = 1 << 24) -> bytes:
    """The content of the regular file ``path`` (:func:`open_private`), at most ``limit``
    bytes."""
    with os.fdopen(open_private(path), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnsafePath(f"{path} is larger than {limit} bytes; remove it")
    return data


class NodeLock:
    """An exclusive lock on ``<runtime_dir>/node.lock``, held while the daemon lives (the
    kernel drops it when the process ends, however it ends). The file holds the holder's pid
    for the message a second daemon prints."""

    def __init__(self, directory: Path, node: str) -> None:
        self.path = directory / LOCK_NAME
        self.node = node
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; :class:`AlreadyRunning` when another process holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refuse_link(self.path) from None
            raise
        try:
            _check_own_file(fd, self.path, "file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                pid = f"pid {holder}" if holder.isdigit() else "another process"
                how = f"kill -TERM {holder}, or " if holder.isdigit() else ""
                raise AlreadyRunning(
                    f"node {self.node} is already running on this machine ({pid} holds "
                    f"{self.path}); stop that daemon first ({how}systemctl stop vigil)"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the lock goes with its descriptor
            self.fd = None
