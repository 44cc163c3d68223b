"""Local users for the tests of the local interfaces: Unix groups made for one test, and
clients run as another user (``nobody`` or any uid) through ``setpriv``, with exactly the
groups a case gives them, using the system's Python (as a user's own script would; the venv
is not needed to talk to a daemon); and the peak memory of the daemon they talk to."""

from __future__ import annotations

import grp
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"


def missing() -> str | None:
    """Why the tests of local users cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root: creates groups and runs clients as another user"
    for tool in ("setpriv", "groupadd", "groupdel"):
        if shutil.which(tool) is None:
            return f"needs {tool} (util-linux / passwd)"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"needs {SYSTEM_PYTHON} for the unprivileged client"
    return None


@dataclass
class Groups:
    admin: str
    admin_gid: int
    status: str
    status_gid: int


@contextmanager
def unix_groups() -> Iterator[Groups]:
    """An admin group and a status group, deleted afterwards."""
    made: list[str] = []
    try:
        for role in ("a", "s"):
            name = f"vgl{role}{os.getpid() % 100000}{secrets.token_hex(3)}"
            subprocess.run(["groupadd", name], check=True, capture_output=True, timeout=30)
            made.append(name)
        yield Groups(made[0], grp.getgrnam(made[0]).gr_gid, made[1], grp.getgrnam(made[1]).gr_gid)
    finally:
        for name in made:
            subprocess.run(["groupdel", name], capture_output=True, timeout=30)


@contextmanager
def reachable_tmp(prefix: str) -> Iterator[Path]:
    """A directory of root's in /tmp that other users may pass through (0711) but not list:
    pytest's tmp_path is 0700, below /tmp/pytest-of-root. Removed afterwards (rmtree never
    follows the links in it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        path.chmod(0o711)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def setpriv(uid: int, gid: int, groups: tuple[int, ...] = ()) -> list[str]:
    """The argv prefix that runs a command as ``uid``:``gid`` with exactly ``groups``."""
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}",
            f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"]


#: the environment of a client run as another user
CLIENT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def peak_memory(pid: int) -> int:
    """The peak resident memory of process ``pid`` (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def reset_peak_memory(pid: int) -> int:
    """Start measuring ``pid``'s peak resident memory afresh (the kernel's clear_refs);
    returns its resident memory now, in bytes."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return peak_memory(pid)


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_N = TypeVar("_N", bound=_Stoppable)


def stopped_after(build: Callable[..., _N]) -> Iterator[Callable[..., _N]]:
    """A fixture's body: yields ``build``, and stops everything it built, also when the test
    failed (``yield from stopped_after(...)``)."""
    built: list[_N] = []

    def make(*args: Any, **kwargs: Any) -> _N:
        node = build(*args, **kwargs)
        built.append(node)
        return node

    try:
        yield make
    finally:
        for node in built:
            node.stop()
