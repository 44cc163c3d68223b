"""The application resource type: a real process, started, health-checked and stopped.

Parameters:

``start`` (required)
    The command: a string (split like a shell would, with :func:`shlex.split`, but never run
    by a shell) or a list of strings. It must stay in the foreground.
``health``
    A command (string or list) that exits 0 while the service is healthy. Run at every
    monitor, with the monitor timeout, and during start until it first succeeds.
``health_tcp``
    Instead of a command: ``"HOST:PORT"`` (``"[::1]:80"`` for IPv6) that accepts a TCP
    connection while the service is healthy.
``health_url``
    Instead of a command: an ``http://`` or ``https://`` URL whose GET answers 2xx or 3xx while
    the service is healthy. At most one of ``health``, ``health_tcp``, ``health_url``.
``stop_signal``
    The signal of a graceful stop (default ``"TERM"``; ``"INT"``, ``"SIGHUP"``, 15... work).
``cwd``, ``env``
    Working directory; extra environment as a list of ``"KEY=VALUE"`` strings. The child also
    gets ``VIGIL_RESOURCE``, ``VIGIL_GROUP`` and ``VIGIL_NODE``.
``pid_file``
    For a program that forks away: after start, the PID to watch is read from this file
    instead of the child's. (Such a process escapes the die-with-the-daemon guarantee of
    :mod:`vigil.resources.proc`; prefer foreground programs.)
``start_grace``
    How long the process must stay alive before the start can succeed (default ``"0.2s"``).

Start succeeds once the process has lived ``start_grace`` and, if ``health`` is set, once the
health command succeeds (polled every 0.1 s) within ``start_timeout``. A failed start kills what
it started. Stop sends ``stop_signal`` to the process group, waits ``stop_timeout``, then sends
SIGKILL to the group; a process that survives SIGKILL for 5 s makes the stop fail (UNCLEAN).
The child runs in its own session with stdout and stderr appended to
``<runtime_dir>/logs/<name>.log``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from vigil.config import MonitorConfig, ParamValue, ResourceConfig
from vigil.local.rundir import open_append, open_private, private_dir
from vigil.resources import proc
from vigil.resources.model import (
    OpResult,
    Resource,
    ResourceType,
    ServiceState,
    parse_seconds,
    unknown_params,
)

__all__ = ["ApplicationResource", "ApplicationType"]

_PARAMS: Final = ("cwd", "env", "health", "health_tcp", "health_url", "pid_file", "start",
                   "start_grace", "stop_signal")
_HEALTH_KEYS: Final = ("health", "health_tcp", "health_url")
#: How long a process may survive SIGKILL before the stop is declared failed.
KILL_WAIT: Final = 5.0
_POLL: Final = 0.1


def _command(value: ParamValue, key: str) -> list[str]:
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"parameter {key!r}: cannot split {value!r}: {exc}") from None
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        argv = list(value)
    else:
        raise ValueError(f"parameter {key!r} must be a command string or a list of strings, "
                         f"got {value!r}")
    if not argv:
        raise ValueError(f"parameter {key!r} is an empty command")
    return argv


def _tcp_target(value: ParamValue) -> tuple[str, int]:
    if not isinstance(value, str):
        raise ValueError(f"parameter 'health_tcp' must be \"HOST:PORT\", got {value!r}")
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"parameter 'health_tcp' must be \"HOST:PORT\" with a port 1-65535, "
                         f"got {value!r}")
    return host, int(port)


def _url(value: ParamValue) -> str:
    if not isinstance(value, str) or urllib.parse.urlsplit(value).scheme not in (
            "http", "https") or not urllib.parse.urlsplit(value).hostname:
        raise ValueError(f"parameter 'health_url' must be an http:// or https:// URL, got "
                         f"{value!r}")
    return value


def _probe_tcp(target: tuple[str, int], timeout: float) -> str | None:
    """None when a connection is accepted; else why not."""
    try:
        with socket.create_connection(target, timeout=timeout):
            return None
    except OSError as exc:
        return f"TCP connect to {target[0]}:{target[1]} failed: {exc.strerror or exc}"


def _probe_url(url: str, timeout: float) -> str | None:
    """None when a GET answers 2xx/3xx (redirects are not followed); else why not."""
    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=timeout) as answer:
            code = int(answer.status)
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"GET {url} failed: {reason}"
    return None if 200 <= code < 400 else f"GET {url} answered HTTP {code}"


def _signal(value: ParamValue) -> signal.Signals:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return signal.Signals(value)
        except ValueError:
            raise ValueError(f"parameter 'stop_signal': no signal number {value}") from None
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return signal.Signals[name]
        except KeyError:
            pass
    raise ValueError(f"parameter 'stop_signal' must name a signal such as \"TERM\" or \"INT\", "
                     f"got {value!r}")


def _environment_entries(value: ParamValue) -> dict[str, str]:
    if not isinstance(value, list):
        raise ValueError(f"parameter 'env' must be a list of \"KEY=VALUE\" strings, got {value!r}")
    entries = {}
    for item in value:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ValueError(f"parameter 'env': {item!r} is not of the form \"KEY=VALUE\"")
        entries[key] = val
    return entries


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class ApplicationType(ResourceType):
    """Factory of :class:`ApplicationResource` (``type = "application"``)."""

    def typename(self) -> str:
        return "application"

    def instantiate(
        self, config: ResourceConfig, node: str, runtime_dir: Path
    ) -> ApplicationResource:
        return ApplicationResource(self, config, node, runtime_dir)

    def check_params(self, params: Mapping[str, ParamValue]) -> list[str]:
        problems = unknown_params(params, _PARAMS)
        if "start" not in params:
            problems.append("parameter 'start' (the command to run) is missing")
        given = [k for k in _HEALTH_KEYS if k in params]
        if len(given) > 1:
            problems.append(f"parameters {' and '.join(repr(k) for k in given)}: give at most "
                            "one health check")
        checks = {
            "start": lambda v: _command(v, "start"),
            "health": lambda v: _command(v, "health"),
            "health_tcp": _tcp_target,
            "health_url": _url,
            "stop_signal": _signal,
            "env": _environment_entries,
            "start_grace": parse_seconds,
        }
        for key, check in checks.items():
            if key in params:
                try:
                    check(params[key])
                except ValueError as exc:
                    text = str(exc)
                    problems.append(text if text.startswith("parameter") else
                                    f"parameter {key!r}: {text}")
        for key in ("cwd", "pid_file"):
            if key in params and not isinstance(params[key], str):
                problems.append(f"parameter {key!r} must be a path string, got {params[key]!r}")
        return problems

    def default_monitor(self) -> MonitorConfig:
        return MonitorConfig(interval=10.0, timeout=10.0)


class ApplicationResource(Resource):
    """One application process on this node (see the module docstring)."""

    def __init__(
        self, rtype: ApplicationType, config: ResourceConfig, node: str, runtime_dir: Path
    ) -> None:
        super().__init__(rtype, config, node, runtime_dir)  # checks the params
        params = config.params
        self.argv = _command(params["start"], "start")
        self.health = _command(params["health"], "health") if "health" in params else None
        self.health_tcp = _tcp_target(params["health_tcp"]) if "health_tcp" in params else None
        self.health_url = _url(params["health_url"]) if "health_url" in params else None
        self.has_health = any(k in params for k in _HEALTH_KEYS)
        self.stop_signal = _signal(params.get("stop_signal", "TERM"))
        cwd = params.get("cwd")
        self.cwd = Path(cwd) if isinstance(cwd, str) else None
        self.extra_env = _environment_entries(params["env"]) if "env" in params else {}
        pid_file = params.get("pid_file")
        self.pid_file = Path(pid_file) if isinstance(pid_file, str) else None
        self.start_grace = parse_seconds(params.get("start_grace", "0.2s"))
        self.log_file = runtime_dir / "logs" / f"{config.name}.log"
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None  # the PID watched: the child's, or the pid file's

    @property
    def pid(self) -> int | None:
        """The PID being watched, while there is one."""
        with self._lock:
            return self._pid

    # -- agent operations ---------------------------------------------------------------------

    def _start(self, cancel: threading.Event) -> OpResult:
        timeout = self.config.start_timeout
        deadline = time.monotonic() + timeout
        if not self._leader_alive():
            spawned = self._spawn()
            if isinstance(spawned, OpResult):
                return spawned
        with self._lock:
            process = self._process
        if cancel.wait(max(0.0, min(self.start_grace, deadline - time.monotonic()))):
            return self._abandon_start("start interrupted")
        if self.pid_file is not None:
            failure = self._adopt_pid_file(process, cancel, deadline)
            if failure is not None:
                return failure
        elif process is not None and process.poll() is not None:
            return self._abandon_start(
                f"{self._command_text()} {_describe_exit(process.returncode)} within "
                f"start_grace {self.start_grace:g}s{self._log_tail()}")
        if self.has_health:
            failure = self._await_health(cancel, deadline)
            if failure is not None:
                return failure
        return OpResult.success(ServiceState.IN_SERVICE, f"started, pid {self.pid}"
                                + (", healthy" if self.has_health else ""))

    def _stop(self, force: bool) -> OpResult:
        with self._lock:
            pid = self._pid
        if pid is None and self.pid_file is not None:
            pid = self._read_pid_file()
        if pid is None:
            return OpResult.success(ServiceState.OOS, "was not running")
        gone = self._gone_check(pid)
        if gone():
            self._forget()
            return OpResult.success(ServiceState.OOS, f"was not running (process {pid} had "
                                    "already ended)")
        if not force:
            self._signal(pid, self.stop_signal)
            stop_timeout = self.config.stop_timeout
            begun = time.monotonic()
            if proc.wait_until(gone, stop_timeout, interval=_POLL / 2):
                self._forget()
                return OpResult.success(ServiceState.OOS, f"stopped by {self.stop_signal.name} "
                                        f"after {time.monotonic() - begun:.2f}s")
            why = (f"killed with SIGKILL: still running {stop_timeout:g}s (stop_timeout) after "
                   f"{self.stop_signal.name}")
        else:
            why = "killed with SIGKILL (forced stop)"
        self._signal(pid, signal.SIGKILL)
        if proc.wait_until(gone, KILL_WAIT, interval=_POLL / 2):
            self._forget()
            return OpResult.success(ServiceState.OOS, why)
        return OpResult.failure(ServiceState.UNCLEAN,
                                f"process {pid} (or its group) survived SIGKILL for {KILL_WAIT:g}s")

    def _monitor(self) -> OpResult:
        with self._lock:
            process, pid = self._process, self._pid
        if pid is None and self.pid_file is not None:
            # After a daemon restart: a pid file naming a live process means it runs.
            pid = self._read_pid_file()
            if pid is not None and proc.pid_alive(pid):
                with self._lock:
                    self._pid = pid
            else:
                pid = None
        if pid is None:
            return OpResult.success(ServiceState.OOS, "not running")
        if process is not None and process.pid == pid and process.poll() is not None:
            return OpResult.failure(ServiceState.FAILED, f"process {pid} "
                                    f"{_describe_exit(process.returncode)}{self._log_tail()}")
        if not proc.pid_alive(pid):
            return OpResult.failure(ServiceState.FAILED, f"process {pid} is gone")
        unhealthy = self._check_health(self.config.monitor.timeout)
        if unhealthy is not None:
            return OpResult.failure(ServiceState.FAILED, unhealthy)
        return OpResult.success(ServiceState.IN_SERVICE, f"running, pid {pid}"
                                + (", healthy" if self.has_health else ""))

    # -- helpers ------------------------------------------------------------------------------

    def _command_text(self) -> str:
        return f"command '{shlex.join(self.argv)}'"

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(VIGIL_RESOURCE=self.name, VIGIL_GROUP=self.group, VIGIL_NODE=self.node)
        env.update(self.extra_env)
        return env

    def _spawn(self) -> OpResult | None:
        try:
            private_dir(self.log_file.parent)
            fd = open_append(self.log_file)
        except OSError as exc:
            return OpResult.failure(ServiceState.FAILED, f"cannot open its log: {exc}")
        with os.fdopen(fd, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- vigil {stamp}: starting {shlex.join(self.argv)}\n".encode())
            log.flush()
            try:
                process = proc.spawn(
                    self.in_cgroup(self.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=self.cwd,
                    env=self._environment(),
                    start_new_session=True,
                )
            except OSError as exc:
                return OpResult.failure(ServiceState.FAILED,
                                        f"cannot run {self._command_text()}: {exc}")
        with self._lock:
            self._process = process
            self._pid = process.pid
        return None

    def _adopt_pid_file(
        self, process: subprocess.Popen[bytes] | None, cancel: threading.Event, deadline: float
    ) -> OpResult | None:
        assert self.pid_file is not None
        # A launcher that forks away exits 0; any other exit means the start failed.
        if process is not None and process.poll() not in (None, 0):
            return self._abandon_start(
                f"{self._command_text()} {_describe_exit(process.returncode or 0)}"
                f"{self._log_tail()}")
        found: list[int] = []

        def readable() -> bool:
            pid = self._read_pid_file()
            if pid is not None and proc.pid_alive(pid):
                found.append(pid)
                return True
            return False

        if not proc.wait_until(readable, max(0.0, deadline - time.monotonic()),
                               interval=_POLL, cancel=cancel):
            if cancel.is_set():
                return self._abandon_start("start interrupted")
            return self._abandon_start(
                f"start timed out after {self.config.start_timeout:g}s: pid file "
                f"{self.pid_file} did not name a live process")
        with self._lock:
            self._pid = found[0]
        return None

    def _await_health(self, cancel: threading.Event, deadline: float) -> OpResult | None:
        last = "never ran"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._abandon_start(
                    f"start timed out after {self.config.start_timeout:g}s waiting for health "
                    f"({last})")
            unhealthy = self._check_health(min(self.config.monitor.timeout, remaining), cancel)
            if unhealthy is None:
                return None
            last = unhealthy
            if cancel.is_set():
                return self._abandon_start("start interrupted")
            with self._lock:
                process, pid = self._process, self._pid
            if process is not None and process.pid == pid and process.poll() is not None:
                return self._abandon_start(
                    f"{self._command_text()} {_describe_exit(process.returncode)} before it "
                    f"became healthy ({last}){self._log_tail()}")
            if cancel.wait(min(_POLL, max(0.0, deadline - time.monotonic()))):
                return self._abandon_start("start interrupted")

    def _check_health(self, timeout: float, cancel: threading.Event | None = None) -> str | None:
        """None while healthy (or no check is configured); else why not. ``cancel`` interrupts
        a health command (a start that is being forced out of service)."""
        if self.health_tcp is not None:
            return _probe_tcp(self.health_tcp, timeout)
        if self.health_url is not None:
            return _probe_url(self.health_url, timeout)
        if self.health is None:
            return None
        check = proc.run(self.health, timeout=timeout, cancel=cancel, cwd=self.cwd,
                         env=self._environment(), merge_stderr=True)
        return None if check.ok else self._health_failure(check)

    def _health_failure(self, result: proc.CommandResult) -> str:
        assert self.health is not None
        command = f"health command '{shlex.join(self.health)}'"
        if result.start_error is not None:
            return f"cannot run {command}: {result.start_error}"
        if result.cancelled:
            return f"{command} interrupted"
        if result.timed_out:
            text = f"{command} timed out after {self.config.monitor.timeout:g}s"
        elif result.returncode is not None and result.returncode < 0:
            text = f"{command} {_describe_exit(result.returncode)}"
        else:
            text = f"exit code {result.returncode} from {command}"
        last = proc.last_line(result.stdout, 400)
        if last:
            text += f": {last}"
        if result.stuck:
            text += f"; its processes {', '.join(map(str, result.stuck))} survived SIGKILL"
        return text

    def _abandon_start(self, reason: str) -> OpResult:
        """Kill whatever the failed start left behind, so FAILED never means 'still running'."""
        with self._lock:
            pid = self._pid
        if pid is not None:
            self._signal(pid, signal.SIGKILL)
            if proc.wait_until(self._gone_check(pid), KILL_WAIT, interval=_POLL / 2):
                self._forget()
            else:
                reason += f"; process {pid} survived SIGKILL for {KILL_WAIT:g}s"
        return OpResult.failure(ServiceState.FAILED, reason)

    def _leader_alive(self) -> bool:
        with self._lock:
            process, pid = self._process, self._pid
        if pid is None:
            return False
        if process is not None and process.pid == pid:
            return process.poll() is None
        return proc.pid_alive(pid)

    def _gone_check(self, pid: int) -> Callable[[], bool]:
        with self._lock:
            process = self._process if self._process and self._process.pid == pid else None
        pgid = self._group_of(pid)

        def gone() -> bool:
            leader_gone = process.poll() is not None if process else not proc.pid_alive(pid)
            return leader_gone and (pgid is None or not proc.group_members(pgid))

        return gone

    def _group_of(self, pid: int) -> int | None:
        """The process group to signal for ``pid``: its own, unless that is the daemon's."""
        with self._lock:
            if self._process is not None and self._process.pid == pid:
                return pid  # started in a new session: pid == pgid
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            return None
        return None if pgid in (os.getpgrp(), 0, 1) else pgid

    def _signal(self, pid: int, sig: signal.Signals) -> None:
        pgid = self._group_of(pid)
        if pgid is not None:
            proc.kill_group(pgid, sig)
            if pgid == pid:
                return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _forget(self) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return  # still alive: keep tracking it
            self._process = None
            self._pid = None

    def _read_pid_file(self) -> int | None:
        assert self.pid_file is not None
        try:
            text = self.pid_file.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() and int(text) > 1 else None

    def _log_tail(self, lines: int = 3) -> str:
        try:
            with os.fdopen(open_private(self.log_file), "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 2048))
                tail = log.read().decode(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        tail = [line for line in tail if not line.startswith("--- vigil ")]
        return f"; log {self.log_file}: " + " | ".join(tail) if tail else f"; log {self.log_file}"

