"""Reading ``/proc/<pid>/mountinfo``, and the processes that use a filesystem (found in
/proc): one small module that the filesystem and mirror resource types, the guardian's
cgroup discovery and its fence all use (and that imports nothing of Vigil: the guardian
loads no resource type)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of ``/proc/<pid>/mountinfo``."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str  # the directory of the filesystem mounted here ("/" unless a bind mount)
    mount_point: str
    options: tuple[str, ...]  # per-mount options ("rw", "noatime", ...)
    fstype: str
    source: str
    super_options: tuple[str, ...] = field(default=())

    @property
    def read_only(self) -> bool:
        return "ro" in self.options or "ro" in self.super_options

    def describe(self) -> str:
        where = "" if self.root == "/" else f" (its subdirectory {self.root})"
        return f"{self.source}{where} ({self.fstype})"


_ESCAPE_RE: Final = re.compile(rb"\\([0-7]{3})")


def _unescape(raw: bytes) -> str:
    # The kernel writes space, tab, newline and backslash in paths as octal escapes.
    return os.fsdecode(_ESCAPE_RE.sub(lambda m: bytes([int(m[1], 8)]), raw))


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[Mount]:
    """The mounts of a mount namespace (default: this process's), in the kernel's order."""
    with open(path, "rb") as f:
        data = f.read()
    mounts = []
    for line in data.splitlines():
        fields = line.split(b" ")
        try:
            dash = fields.index(b"-", 6)
            major, minor = fields[2].split(b":")
            mounts.append(Mount(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                major=int(major),
                minor=int(minor),
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                options=tuple(_unescape(fields[5]).split(",")),
                fstype=_unescape(fields[dash + 1]),
                source=_unescape(fields[dash + 2]),
                super_options=tuple(_unescape(fields[dash + 3]).split(","))
                if len(fields) > dash + 3 else (),
            ))
        except (ValueError, IndexError):
            log.warning("cannot parse mountinfo line %r", line)
    return mounts


def under(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or inside it (by name, without touching either)."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


# -- processes that use a filesystem ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Holder:
    """A process that keeps a filesystem busy, and how."""

    pid: int
    command: str
    uses: tuple[str, ...]  # "cwd", "open file /srv/data/x", ...

    def describe(self) -> str:
        shown = ", ".join(self.uses[:3]) + (", ..." if len(self.uses) > 3 else "")
        me = ", this daemon itself" if self.pid == os.getpid() else ""
        return f"pid {self.pid} ({self.command}{me}: {shown})"


def _command_of(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        text = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if not text:
            text = "[" + Path(f"/proc/{pid}/comm").read_text().strip() + "]"
    except OSError:
        return "?"
    return text if len(text) <= 60 else text[:57] + "..."


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _uses_of(pid: int, directory: str, dev_hex: str | None) -> list[str]:
    # Only readlink and reading /proc: nothing here touches the filesystem itself, which may be
    # hung. The paths are as this process sees them, which is right for processes in our own
    # mount namespace; a memory map also names its device, which holds in any namespace.
    uses = []
    for link in ("cwd", "root", "exe"):
        target = _readlink(f"/proc/{pid}/{link}")
        if target is not None and under(target, directory):
            uses.append(link)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        fds = []
    for fd in fds:
        target = _readlink(f"/proc/{pid}/fd/{fd}")
        if target is not None and under(target, directory):
            uses.append(f"open file {target}")
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            maps = f.read().decode(errors="replace")
    except OSError:
        maps = ""
    mapped: set[str] = set()
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        path = parts[5] if len(parts) == 6 else ""
        if (dev_hex is not None and parts[3] == dev_hex) or (path and under(path, directory)):
            mapped.add(path or f"inode {parts[4]}")
    uses.extend(f"mapped {path}" for path in sorted(mapped))
    return uses


def find_holders(directory: str, device: tuple[int, int] | None = None) -> list[Holder]:
    """The processes using the filesystem mounted on ``directory`` (of device number
    ``device`` = (major, minor), if known), this process included, by PID."""
    dev_hex = f"{device[0]:02x}:{device[1]:02x}" if device is not None else None
    holders = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        uses = _uses_of(pid, directory, dev_hex)
        if uses:
            holders.append(Holder(pid, _command_of(pid), tuple(uses)))
    return holders
