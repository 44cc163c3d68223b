"""The processes of a Linux namespace, found and killed: a namespace "host" powered off.

Shared by the ``fence_vigil_ns`` agent and the namespace test cluster
(``tests/support/nscluster.py``), so that the agent powers a host off exactly as the harness
does: every process in the host's namespaces gets SIGKILL, again and again until none is left
(a process may fork while we look), within a bound.

A namespace is named by its identity, ``(st_dev, st_ino)`` of its ``/proc/PID/ns/KIND`` or
``/run/netns/NAME`` file, never by a name: names can be reused, identities cannot while the
namespace lives. While it lives: the kernel gives a freed namespace's number to the next new
one at once, so a loop that kills by identity must hold the namespace (:func:`held`) until it
is done, or after the last process died it could find, and kill, the processes of a namespace
someone else just made. Processes are found through ``/proc/*/ns/*``; zombies have no
namespaces left and count as gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

__all__ = ["KILL_WAIT", "NamespaceId", "held", "kill_all", "ns_id", "pids_in"]

#: Bound of a wait for processes to die after SIGKILL.
KILL_WAIT: Final = 10.0

#: ``(st_dev, st_ino)`` of a namespace file.
NamespaceId = tuple[int, int]


def ns_id(path: str) -> NamespaceId | None:
    """The identity of the namespace file ``path``; None if it is gone (or a zombie's)."""
    try:
        st = os.stat(path)
    except OSError:  # gone, or a zombie (its namespaces are already released)
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def held(path: str) -> Iterator[NamespaceId | None]:
    """Hold the namespace file ``path`` open for the block, so that the namespace, and with it
    its identity, lives until the block ends; yields the identity (None if there is no such
    file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        yield None
        return
    try:
        st = os.fstat(fd)
        yield st.st_dev, st.st_ino
    finally:
        os.close(fd)


def pids_in(namespaces: Iterable[tuple[str, NamespaceId]]) -> list[int]:
    """Live processes, other than this one, in any of the given namespaces ((kind, id):
    kind is a name under /proc/PID/ns, e.g. "net" or "mnt")."""
    wanted = set(namespaces)
    if not wanted:
        return []
    kinds = {kind for kind, _ in wanted}
    own = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        for kind in kinds:
            ns = ns_id(f"/proc/{entry.name}/ns/{kind}")
            if ns is not None and (kind, ns) in wanted:
                found.append(int(entry.name))
                break
    return found


def kill_all(pids_of: Callable[[], list[int]], what: str, *, wait: float = KILL_WAIT,
             reap: Iterable[subprocess.Popen[Any]] = ()) -> list[str]:
    """SIGKILL every PID ``pids_of()`` names until it names none, for at most ``wait``
    seconds; ``reap`` are children of ours among them, waited for so they do not linger as
    zombies. Returns problems (processes that would not die), naming them after ``what``."""
    deadline = time.monotonic() + wait
    children = list(reap)
    while True:
        pids = pids_of()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(0.01)
        if not pids:
            return []
        if time.monotonic() > deadline:
            return [f"{what}: processes {pids} survived SIGKILL for {wait:g}s "
                    "(stuck in the kernel, e.g. on a FUSE or NFS mount?)"]
        time.sleep(0.02)
