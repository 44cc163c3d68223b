"""Reading ``/proc/<pid>/mountinfo``: one small module that the filesystem resource type and
the guardian's cgroup discovery both use (and that imports nothing of Vigil)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
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
