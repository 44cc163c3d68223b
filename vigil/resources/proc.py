"""Starting, signalling and watching the processes that agents run.

Every child that Vigil starts must die when the daemon dies: the demo runs three "nodes" on one
host, and a SIGKILLed node must not leave its services running (another node is about to
start them). Linux offers ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, set in the child between fork
and exec. Its catch: the signal fires when the *thread* that forked the child exits, not the
process. Agents run in worker threads that come and go, so every child is forked by one
long-lived spawner thread instead: :func:`spawn` hands the ``Popen`` call to a module-level
single-worker :class:`~concurrent.futures.ThreadPoolExecutor` and waits for it. The executor is
created on first use and never shut down before the interpreter exits (at exit its thread ends
and, as intended, the children get their SIGKILL).

A child that daemonizes itself (forks and lets its parent exit) escapes this: its new parent is
init, not the spawner thread. Services that need the guarantee should run in the foreground.

Children get their own session (so their own process group: pgid == pid); the agent signals
the whole group, which also reaches the children's children.

Process checks read ``/proc`` and treat zombies as gone: an orphaned child is reaped by
whatever PID 1 the machine has, and in a container that may be slow or never.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "CommandResult",
    "group_members",
    "kill_group",
    "pid_alive",
    "run",
    "spawn",
    "wait_until",
]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG: Final = 1

_SPAWNER_NAME: Final = "vigil-spawner"
_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _load_prctl() -> Callable[..., int] | None:
    # Resolved once in the parent: looking a symbol up after fork (in the child) could take a
    # lock some other thread held at fork time.
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError) as exc:  # pragma: no cover - every Linux libc has prctl
        log.warning("prctl unavailable (%s): children will outlive a killed daemon", exc)
        return None
    return prctl


_prctl: Final = _load_prctl()


def _die_with_parent(parent_pid: int, then: Callable[[], Any] | None) -> Callable[[], None]:
    def preexec() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            # The parent may have died between fork and prctl; then no signal will ever come.
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGKILL)
        if then is not None:
            then()

    return preexec


def _executor() -> ThreadPoolExecutor:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_SPAWNER_NAME)
        return _spawner


def spawn(argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` from the spawner thread, set to receive SIGKILL when this process dies.

    ``popen_kwargs`` go to :class:`subprocess.Popen` (``preexec_fn`` is chained after the
    death-signal setup). Raises what Popen raises (e.g. ``FileNotFoundError``).
    """
    kwargs = dict(popen_kwargs)
    kwargs["preexec_fn"] = _die_with_parent(os.getpid(), kwargs.get("preexec_fn"))
    command = list(argv)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, **kwargs)

    if threading.current_thread().name.startswith(_SPAWNER_NAME):
        return start()  # already on the spawner thread: waiting on it would deadlock
    return _executor().submit(start).result()


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A finished short command: exit status (None when it timed out), output tail, time."""

    returncode: int | None
    output: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    output_limit: int = 400,
) -> CommandResult:
    """Run a short command (a health check) in its own process group, with a hard timeout.

    On timeout the whole group is killed. The output (stdout and stderr together) is kept
    up to its last ``output_limit`` characters, for reasons shown to humans.
    """
    started = time.monotonic()
    process = spawn(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=timeout)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        kill_group(process.pid, signal.SIGKILL)
        try:
            out, _ = process.communicate(timeout=5.0)
        except subprocess.TimeoutExpired:
            out = b""
        code = None
    finally:
        if process.poll() is None:
            kill_group(process.pid, signal.SIGKILL)
    text = out.decode(errors="replace").strip()
    if len(text) > output_limit:
        text = "..." + text[-output_limit:]
    return CommandResult(returncode=code, output=text, duration=time.monotonic() - started)


def kill_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False if the group no longer exists.

    Refuses to signal this process's own group (a PID read from a stale pid file could name
    it), which would kill the daemon itself.
    """
    if pgid <= 1 or pgid == os.getpgrp():
        raise ValueError(f"refusing to signal process group {pgid} (it is ours or init's)")
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, pgid) of ``pid`` from /proc, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[2])


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (zombies count as dead)."""
    if pid <= 0:
        return False
    if Path("/proc/self/stat").exists():
        stat = _stat(pid)
        return stat is not None and stat[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of group ``pgid``."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.05,
    cancel: threading.Event | None = None,
) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` passes or ``cancel`` is set."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if cancel is not None:
            if cancel.wait(min(interval, remaining)):
                return condition()
        else:
            time.sleep(min(interval, remaining))
