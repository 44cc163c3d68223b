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

:func:`run` is the one way Vigil runs a command to completion: OCF agent actions, fence
agents (their arguments on stdin), the filesystem type's fsck, mount, umount, blkid and
probe, application health commands and alert commands. Its semantics are those of
Pacemaker's runner of OCF agents (``lib/services/services_linux.c``): the child in its own
process group, the whole group killed on timeout, the action over when the child itself
exits. On top of that, what the callers need: a ``cancel`` event (a forced stop interrupts a
start that is running), an optional SIGTERM grace before the SIGKILL, stdout and stderr kept
apart (or merged), input on stdin, a wait until the killed group is gone, and the processes
that survive SIGKILL (uninterruptible sleep on a hung disk) named in the result and the log
instead of waited for without end.

Process checks read ``/proc`` and treat zombies as gone: an orphaned child is reaped by
whatever PID 1 the machine has, and in a container that may be slow or never.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "KILL_WAIT",
    "OUTPUT_LIMIT",
    "CommandResult",
    "group_members",
    "kill_group",
    "last_line",
    "pid_alive",
    "process_groups",
    "run",
    "spawn",
    "wait_until",
]

log = logging.getLogger(__name__)

#: How long the process group of a killed command may take to vanish before its survivors
#: are reported as stuck.
KILL_WAIT: Final = 5.0
#: What :func:`run` keeps of each output stream by default (its end).
OUTPUT_LIMIT: Final = 64 * 1024
_POLL: Final = 0.05

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


#: the nice value children get back (None: they keep this process's): the daemon raises its
#: own priority, the programs it starts must not inherit that
_child_nice: int | None = None


def set_child_nice(value: int | None) -> None:
    global _child_nice
    _child_nice = value


def _die_with_parent(parent_pid: int, then: Callable[[], Any] | None) -> Callable[[], None]:
    child_nice = _child_nice

    def preexec() -> None:
        if child_nice is not None:
            os.setpriority(os.PRIO_PROCESS, 0, child_nice)
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


def tool_environment() -> dict[str, str]:
    """The environment for a system tool (mount, fsck, btrfs): messages are matched and shown,
    so they must not be translated; and a daemon started with a user's PATH still needs the
    tools in the sbin directories."""
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    path = env.get("PATH", "/usr/bin:/bin").split(":")
    env["PATH"] = ":".join(path + [d for d in ("/usr/sbin", "/sbin") if d not in path])
    return env


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


def process_groups() -> dict[int, list[int]]:
    """Every live (non-zombie) process by process group, from one pass over /proc."""
    groups: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None \
                and stat[0] not in ("Z", "X"):
            groups.setdefault(stat[1], []).append(int(entry.name))
    return groups


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


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A command run to completion by :func:`run`, or killed by it.

    ``pid`` is the command's (and its process group's) id. ``returncode`` is the exit status
    (negative: killed by that signal, not by us), None when :func:`run` killed it
    (``timed_out`` or ``cancelled``) or could not start it (``start_error``). ``stdout`` and
    ``stderr`` are the ends of each stream, up to the limits given to :func:`run` (with
    ``merge_stderr`` both are in ``stdout``). ``stuck`` lists the processes of the command's
    group still alive after SIGKILL (uninterruptible sleep on a hung disk or server): nothing
    more can be done about them than to say so.
    """

    argv: tuple[str, ...]
    returncode: int | None
    pid: int | None = None  # also the process group's id; None when it never started
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0
    timed_out: bool = False
    cancelled: bool = False
    start_error: OSError | ValueError | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stuck: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def start_problem(self) -> str:
        """``"cannot run fsck: No such file or directory"`` when it could not start, else ""."""
        exc = self.start_error
        if exc is None:
            return ""
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return f"cannot run {self.argv[0] if self.argv else '(nothing)'}: {detail}"

    def describe_stuck(self) -> str:
        """``"pid 812 (fsck.ext4, state D)"`` for each process in ``stuck`` that still lives."""
        return ", ".join(_describe_process(pid) for pid in self.stuck)


def _describe_process(pid: int) -> str:
    stat = _stat(pid)
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        name = "?"
    state = f", state {stat[0]}" if stat is not None else ", gone"
    return f"pid {pid} ({name}{state})"


#: The selector's mark of the stdin pipe (output pipes carry their _Tail, the pidfd None).
_STDIN: Final = object()


class _Tail:
    """The last ``limit`` bytes written to a stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]
            self.truncated = True

    def text(self) -> str:
        return self.data.decode(errors="replace")


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    cancel: threading.Event | None = None,
    term_grace: float = 0.0,
    kill_wait: float = KILL_WAIT,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    capture_stdout: bool = True,
    merge_stderr: bool = False,
    stdout_limit: int = OUTPUT_LIMIT,
    stderr_limit: int = OUTPUT_LIMIT,
    input: bytes | None = None,
) -> CommandResult:
    """Run ``argv`` to completion, as Pacemaker runs an OCF agent; the one runner of Vigil.

    The command runs in a new session (its own process group), with stdin from ``/dev/null``
    and stdout and stderr read through pipes, each kept up to its last ``*_limit`` bytes
    (``capture_stdout=False``: stdout goes to ``/dev/null``; ``merge_stderr``: stderr goes to
    stdout, in the order written). With ``input``, stdin is a pipe that gets those bytes and
    then end of file (how fence agents take their arguments, which then never show in
    ``/proc/PID/cmdline``); a command that exits or closes stdin before reading them all is
    not an error of the run.

    It is over when the command itself exits: what it left running in the background is not
    waited for and not signalled (an agent's start may leave its daemon behind), even if that
    keeps the pipes open; the pipes are closed then.

    If ``timeout`` passes or ``cancel`` is set first, the whole process group (grandchildren
    too) gets SIGTERM and ``term_grace`` seconds to go (0: none), then SIGKILL; then the run
    waits up to ``kill_wait`` seconds until no process of the group is left. Processes still
    there are listed in ``stuck`` and logged. A start that cannot happen (a missing or not
    executable program) is ``start_error``, never an exception.
    """
    command = tuple(argv)
    started = time.monotonic()
    if cancel is not None and cancel.is_set():
        return CommandResult(command, None, cancelled=True)
    try:
        process = spawn(
            command,
            stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
            stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in argv or env
        return CommandResult(command, None, start_error=exc,
                             duration=time.monotonic() - started)
    running = _Running(process, stdout_limit, stderr_limit, input)
    timed_out = cancelled = False
    stuck: tuple[int, ...] = ()
    try:
        ended = running.wait(started + timeout, cancel)
        timed_out, cancelled = ended == "timeout", ended == "cancel"
        if timed_out or cancelled:
            stuck = running.stop(term_grace, kill_wait)
    finally:
        running.close()
    result = CommandResult(
        command,
        None if timed_out or cancelled else process.returncode,
        pid=process.pid,
        stdout=running.out.text(),
        stderr=running.err.text(),
        duration=time.monotonic() - started,
        timed_out=timed_out,
        cancelled=cancelled,
        stdout_truncated=running.out.truncated,
        stderr_truncated=running.err.truncated,
        stuck=stuck,
    )
    if stuck:
        shown = shlex.join(command)
        log.error("%s (process group %d) was killed, but processes of its group survived "
                  "SIGKILL for %gs: %s; SIGKILL takes effect only when the kernel call they "
                  "are in returns (a hung disk or server?)",
                  shown if len(shown) <= 100 else shown[:97] + "...", process.pid, kill_wait,
                  result.describe_stuck())
    return result


class _Running:
    """One command of :func:`run` while it runs: its pipes, and its exit as a pidfd."""

    def __init__(self, process: subprocess.Popen[bytes], stdout_limit: int,
                 stderr_limit: int, input: bytes | None = None) -> None:
        self.process = process
        self.pgid = process.pid  # a new session: pgid == pid
        self.out, self.err = _Tail(stdout_limit), _Tail(stderr_limit)
        self.selector = selectors.DefaultSelector()
        self.pipes = [(pipe, sink) for pipe, sink in ((process.stdout, self.out),
                                                      (process.stderr, self.err))
                      if pipe is not None]
        for pipe, sink in self.pipes:
            os.set_blocking(pipe.fileno(), False)
            self.selector.register(pipe, selectors.EVENT_READ, sink)
        # Written as the command reads, in the same loop: input larger than the pipe buffer
        # must not block the run (and its timeout) on a command that reads nothing.
        self.pending = memoryview(input or b"")
        self.stdin = process.stdin
        if self.stdin is not None:
            os.set_blocking(self.stdin.fileno(), False)
            if self.pending:
                self.selector.register(self.stdin, selectors.EVENT_WRITE, _STDIN)
            else:
                self._close_stdin()
        # The leader's exit wakes the selector at once; without pidfds, poll every _POLL.
        self.pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self.pidfd = os.pidfd_open(process.pid)
            self.selector.register(self.pidfd, selectors.EVENT_READ, None)

    def wait(self, deadline: float, cancel: threading.Event | None) -> str:
        """Read output until the leader exits (``"exit"``), ``deadline`` passes
        (``"timeout"``) or ``cancel`` is set (``"cancel"``)."""
        while True:
            if self.process.poll() is not None:
                # All the leader wrote is in the pipes now; what it left behind may hold
                # them open for ever, so read what is there and stop.
                self._read(final=True)
                return "exit"
            if cancel is not None and cancel.is_set():
                return "cancel"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            self._pause(remaining if cancel is None else min(_POLL, remaining), cancel)

    def stop(self, term_grace: float, kill_wait: float) -> tuple[int, ...]:
        """Kill the whole group, TERM first if ``term_grace``; the processes that stay."""
        if term_grace > 0:
            self._signal(signal.SIGTERM)
            if self._wait_gone(time.monotonic() + term_grace):
                return ()
        self._signal(signal.SIGKILL)
        if self._wait_gone(time.monotonic() + kill_wait):
            return ()
        members = group_members(self.pgid)
        if self.process.poll() is None and self.process.pid not in members:
            members.insert(0, self.process.pid)
        return tuple(members)

    def close(self) -> None:
        if self.process.poll() is None:  # only on an exception in wait or stop
            self._signal(signal.SIGKILL)
        self.selector.close()
        self._close_stdin()
        for pipe, _ in self.pipes:
            with contextlib.suppress(OSError):
                pipe.close()
        if self.pidfd is not None:
            os.close(self.pidfd)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            kill_group(self.pgid, sig)

    def _wait_gone(self, deadline: float) -> bool:
        """Read output until no process of the group is left (True) or ``deadline``."""
        while True:
            if self.process.poll() is not None and not group_members(self.pgid):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._pause(min(_POLL, remaining), None)

    def _pause(self, seconds: float, cancel: threading.Event | None) -> None:
        """Wait up to ``seconds`` for output or the leader's exit, reading what comes."""
        if self.pidfd is None or self.pidfd not in self.selector.get_map():
            seconds = min(seconds, _POLL)  # nothing tells us of the leader's exit: poll
        if not self.selector.get_map():
            if cancel is not None:
                cancel.wait(seconds)
            else:
                time.sleep(seconds)
            return
        ready = self.selector.select(seconds)
        for key, _ in ready:
            if key.data is None:  # the pidfd: the leader has exited, poll() will reap it
                self.selector.unregister(key.fileobj)
            elif key.data is _STDIN:
                self._write()
        if any(isinstance(key.data, _Tail) for key, _ in ready):
            self._read(final=False)

    def _write(self) -> None:
        """Write what the stdin pipe takes now; close it when all is written or refused."""
        assert self.stdin is not None
        try:
            written = os.write(self.stdin.fileno(), self.pending)
        except BlockingIOError:
            return
        except OSError:  # EPIPE: the command closed stdin or exited without reading it all
            written = len(self.pending)
        self.pending = self.pending[written:]
        if not self.pending:
            self.selector.unregister(self.stdin)
            self._close_stdin()

    def _close_stdin(self) -> None:
        if self.stdin is not None:
            with contextlib.suppress(OSError):
                self.stdin.close()
            self.stdin = None

    def _read(self, *, final: bool) -> None:
        """Read what the pipes hold now; unregister those at end of file."""
        for key in list(self.selector.get_map().values()):
            sink = key.data
            if not isinstance(sink, _Tail):
                continue  # the pidfd or stdin
            while True:
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    chunk = b""
                if not chunk:
                    self.selector.unregister(key.fileobj)
                    break
                sink.add(chunk)
                if not final:
                    break  # one chunk per stream per round keeps the deadline checks regular


def last_line(text: str, limit: int = 300) -> str:
    """The last non-empty line of ``text`` (a command's output), at most ``limit`` long."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if len(lines[-1]) <= limit else lines[-1][: limit - 3] + "..."
