"""Fence agents, run unmodified as Pacemaker's fencer runs them.

A fence device (``[fence_devices.NAME]``, :class:`~vigil.config.FenceDevice`) names an agent of
the ``fence-agents`` project (``fence_ipmilan``, ``fence_apc``, ``fence_virsh``...), or any
program that keeps the same contract; Vigil's own ``fence_vigil_ns`` (network-namespace test
hosts) is one.

**Finding the agent.** An absolute path is used as is. A name is looked up in ``/usr/sbin``
(where ``fence-agents`` installs, Pacemaker's fence agent directory), then in the scripts
directory of the Python running Vigil (where ``pip`` installed ``vigil`` and
``fence_vigil_ns``). Nothing is looked up in ``$PATH``: what fences a node must not depend on
the environment a daemon was started from.

**Arguments.** The agent gets no command-line arguments; its arguments are ``name=value``
lines on stdin, then end of file (``fencing.py``'s ``_parse_input_stdin``), so no password
shows in ``/proc/PID/cmdline``. Like Pacemaker's ``make_args``: ``action=<action>`` first;
when the operation targets a node, ``nodename=<node>`` and the host argument with the node's
plug (the device's ``plugs`` entry, else the node's name); then the device's parameters, in
name order, booleans as ``true``/``false`` (``fencing.py`` reads ``1/yes/on/true`` and
``0/no/off/false``), numbers in decimal (``2.0`` as ``2``). The host argument is the device's
``host_argument``, else ``plug`` when the agent's metadata lists it, else ``port`` when it
lists that, else none (Pacemaker's ``stonith__default_host_arg``).

The environment is the daemon's. Pacemaker's fencer also exports
``PCMK_service=pacemaker-fenced``, which makes ``fencing.py`` disable the agent's own login,
shell and power timeouts; Vigil does not, so an agent can still report its own reason
("Connection timed out") before Vigil's ``timeout`` kills it. A device that wants
Pacemaker's behaviour sets ``disable_timeout = true``.

**Exit codes** (``fencing.py``: ``EC_OK`` 0 ... ``EC_FETCH_VM_UUID`` 12): 0 is success;
``status`` exits 0 when the plug is on and 2 when it is off (both are answers, the operation
succeeded); anything else is a failure. The library's ``fail()`` logs the reason on stderr
(``... ERROR: Failed: Timed out waiting to power OFF``) and exits 1, so the reason of a
result is the agent's last ``ERROR:`` line (else its last line of stderr).

**Time.** Each attempt runs with the device's ``timeout``, in its own process group
(:func:`vigil.resources.proc.run`), killed whole when the timeout passes or ``cancel`` is set.
A failed attempt (a timeout included: unlike Pacemaker, whose ``pcmk_<action>_retries`` share
one timeout, each attempt has its own) is tried again ``retries`` times, after a pause of
:data:`RETRY_PAUSE` (Pacemaker's too); an agent that cannot be started is not. So one
operation lasts at most :func:`max_duration`.

**Secrets.** Parameters whose names say they are secrets (:func:`is_secret`: ``password``,
``passwd``, ``community``, ``secret_key``, ``token``...) never appear in logs or results: their
values are masked wherever the agent's output repeats them.

The metadata (``action=metadata``) is read once per agent path and kept for the life of the
process; a failure to read it is retried after :data:`METADATA_RETRY` seconds.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import signal
import sysconfig
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Literal, NamedTuple

from vigil.config import FenceDevice
from vigil.fencing.metadata import FenceMetadata, FenceMetadataError
from vigil.resources import proc
from vigil.resources.ocf import METADATA_RETRY, METADATA_TIMEOUT, param_string

__all__ = [
    "ACTIONS",
    "AGENT_DIR",
    "METADATA_RETRY",
    "METADATA_TIMEOUT",
    "RETRY_PAUSE",
    "FenceAgentError",
    "FenceExit",
    "FenceResult",
    "LevelResult",
    "Outcome",
    "PowerState",
    "agent_arguments",
    "agent_dirs",
    "encode_arguments",
    "exit_name",
    "forget_metadata",
    "host_argument",
    "interpret",
    "is_secret",
    "max_duration",
    "read_metadata",
    "resolve_agent",
    "run_device",
    "run_level",
]

log = logging.getLogger(__name__)

#: Where ``fence-agents`` installs its agents (Pacemaker's ``PCMK__FENCE_BINDIR``).
AGENT_DIR: Final = Path("/usr/sbin")
#: Actions :func:`run_device` runs. ``off``, ``on`` and ``reboot`` act on a target's power;
#: ``status`` asks it; ``monitor`` and ``list`` ask the device itself.
ACTIONS: Final = ("off", "on", "reboot", "status", "monitor", "list", "metadata")
_POWER_ACTIONS: Final = ("off", "on", "reboot")
#: Pacemaker waits this long before trying a failed agent again.
RETRY_PAUSE: Final = 1.0
#: What is kept of an agent's stderr for the operator, and of its stdout.
_STDERR_TAIL_LINES: Final = 10
_STDERR_TAIL_CHARS: Final = 2000
_STDOUT_LIMIT: Final = 4 * 1024 * 1024  # metadata and long plug lists
_REASON_LIMIT: Final = 500
_MASK: Final = "***"

_SECRET_RE: Final = re.compile(r"passw|secret|token|community|apikey|(^|_)key$|(^|_)kg$",
                               re.IGNORECASE)
_ERROR_LINE_RE: Final = re.compile(r"\b(?:ERROR|CRITICAL):\s*(.*\S)")
#: ``fail_usage()`` adds it after the real reason.
_USAGE_HINT: Final = "Please use '-h' for usage"

PowerState = Literal["on", "off"]


class FenceExit(enum.IntEnum):
    """The exit codes of the ``fence-agents`` library (``fencing.py``'s ``EC_*``)."""

    OK = 0
    GENERIC_ERROR = 1
    BAD_ARGS = 2  # also what ``status`` exits with for a plug that is off
    LOGIN_DENIED = 3
    CONNECTION_LOST = 4
    TIMED_OUT = 5
    WAITING_ON = 6
    WAITING_OFF = 7
    STATUS = 8
    STATUS_HMC = 9
    PASSWORD_MISSING = 10
    INVALID_PRIVILEGES = 11
    FETCH_VM_UUID = 12


def exit_name(code: int) -> str:
    """``"EC_GENERIC_ERROR"`` for 1; a code outside the library's is named as such."""
    try:
        return f"EC_{FenceExit(code).name}"
    except ValueError:
        return "not a fence-agents exit code"


class FenceAgentError(Exception):
    """A fence agent cannot be found or used; the message says which, where and what to do."""


# -- finding agents ---------------------------------------------------------------------------


def agent_dirs() -> tuple[Path, ...]:
    """Where an agent given by name is looked for, in order."""
    scripts = Path(sysconfig.get_path("scripts"))
    return (AGENT_DIR,) if scripts == AGENT_DIR else (AGENT_DIR, scripts)


def resolve_agent(agent: str) -> Path:
    """The executable of ``agent`` (a name or an absolute path); FenceAgentError if none."""
    if agent.startswith("/"):
        candidates = [Path(agent)]
    elif agent and "/" not in agent and agent not in (".", ".."):
        candidates = [directory / agent for directory in agent_dirs()]
    else:
        raise FenceAgentError(f"fence agent {agent!r}: give an agent's name (such as "
                              "'fence_ipmilan') or an absolute path")
    for path in candidates:
        if path.is_file():
            if not os.access(path, os.X_OK):
                raise FenceAgentError(f"fence agent {path} is not executable (chmod +x {path})")
            return path
    where = " or ".join(str(p) for p in candidates)
    hint = (" (is the package providing it, e.g. fence-agents, installed?)"
            if not agent.startswith("/") else "")
    raise FenceAgentError(f"no fence agent {where}{hint}")


# -- arguments ----------------------------------------------------------------------------------


def is_secret(name: str) -> bool:
    """Whether parameter ``name`` holds a secret, by its name (``passwd``, ``password``,
    ``snmp_priv_passwd``, ``community``, ``secret_key``, ``hexadecimal_kg``, ``token``...)."""
    return _SECRET_RE.search(name) is not None


def agent_arguments(device: FenceDevice, action: str, target: str | None,
                    host_arg: str | None) -> dict[str, str]:
    """The ``name=value`` arguments of ``action`` on ``device`` (see the module docstring);
    ``host_arg`` is the parameter taking the target's plug (None: none is passed)."""
    arguments = {"action": action}
    if target is not None:
        arguments["nodename"] = target
        if host_arg is not None and host_arg != "none":
            arguments[host_arg] = device.plug(target)
    for name in sorted(device.params):
        arguments.setdefault(name, param_string(device.params[name]))
    return arguments


def encode_arguments(arguments: Mapping[str, str]) -> bytes:
    """``name=value`` lines, as an agent reads them on stdin; ValueError for an argument no
    line can carry (the configuration refuses those before they get here)."""
    lines = []
    for name, value in arguments.items():
        if not name or any(ch in name for ch in "=\n\r\0") or name.startswith("#"):
            raise ValueError(f"fence agent argument name {name!r} cannot be written as a "
                             "name=value line")
        if any(ch in value for ch in "\n\r\0"):
            shown = _MASK if is_secret(name) else repr(value)
            raise ValueError(f"fence agent argument {name}={shown} holds a line break or NUL "
                             "character, which one name=value line cannot carry")
        lines.append(f"{name}={value}\n")
    return "".join(lines).encode()


def _secret_values(device: FenceDevice) -> tuple[str, ...]:
    return tuple(sorted({text for name, value in device.params.items()
                         if is_secret(name) and (text := param_string(value))}, key=len,
                        reverse=True))


def _mask(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:  # longest first: one secret may contain another
        text = text.replace(secret, _MASK)
    return text


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FenceResult:
    """One operation of a fence device, all its attempts; secrets masked throughout.

    ``ok``: the operation did what was asked (for ``status``, an answer was had: ``power``
    says which). ``exit_code`` is the last attempt's (None: killed by us for a timeout or
    ``cancel``, or never started). ``reason`` says what happened in words, for the log and the
    operator; ``stderr_tail`` is the end of the last attempt's stderr; ``output`` its stdout
    (the plug list of ``list``, the XML of ``metadata``).
    """

    device: str
    agent: str  # the executable, or the agent as configured when it could not be found
    action: str
    target: str | None
    plug: str | None
    ok: bool
    exit_code: int | None
    reason: str
    duration: float
    attempts: int
    power: PowerState | None = None  # status only: what the device says of the plug
    timed_out: bool = False
    cancelled: bool = False
    stderr_tail: str = ""
    output: str = ""

    def describe(self) -> str:
        """``"off of alpha (plug vm-alpha) by pdu (fence_apc): exit 1 (EC_GENERIC_ERROR):
        Failed: Unable to connect/login to fencing device; 2 attempts"``."""
        what = self.action if self.target is None else f"{self.action} of {self.target}"
        if self.plug is not None and self.plug != self.target:
            what += f" (plug {self.plug})"
        attempts = f"; {self.attempts} attempts" if self.attempts > 1 else ""
        return (f"{what} by {self.device} ({Path(self.agent).name}): {self.reason}"
                f"{attempts}")


def _stderr_tail(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    tail = "\n".join(lines[-_STDERR_TAIL_LINES:])
    return tail if len(tail) <= _STDERR_TAIL_CHARS else "..." + tail[-_STDERR_TAIL_CHARS:]


def _agent_reason(stderr: str) -> str:
    """The agent's own word on a failure: its last ``ERROR:`` line, else its last line."""
    errors = [m[1] for line in stderr.splitlines()
              if (m := _ERROR_LINE_RE.search(line)) and _USAGE_HINT not in m[1]]
    reason = errors[-1] if errors else proc.last_line(stderr, _REASON_LIMIT)
    return reason if len(reason) <= _REASON_LIMIT else reason[: _REASON_LIMIT - 3] + "..."


class Outcome(NamedTuple):
    """What one run of an agent means: done or not, the power state ``status`` reported,
    and why, in words."""

    ok: bool
    power: PowerState | None
    reason: str


def interpret(action: str, ran: proc.CommandResult, timeout: float) -> Outcome:
    """The outcome of one run of ``action`` (``timeout``: the one it ran with), by the exit
    codes of the fence-agents library (see the module docstring)."""
    if ran.start_error is not None:
        return Outcome(False, None, ran.start_problem())
    if ran.cancelled:
        return Outcome(False, None, "interrupted; killed the agent's process group")
    if ran.timed_out:
        stuck = (f", but processes {', '.join(map(str, ran.stuck))} survived SIGKILL"
                 if ran.stuck else "")
        return Outcome(False, None, f"timed out after {timeout:g}s; killed the agent's "
                       f"process group{stuck}")
    code = ran.returncode
    assert code is not None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return Outcome(False, None, f"the agent was killed by {name}")
    if action == "status" and code in (FenceExit.OK, FenceExit.BAD_ARGS):
        power: PowerState = "on" if code == FenceExit.OK else "off"
        return Outcome(True, power, f"the plug is {power}")
    if code == FenceExit.OK:
        return Outcome(True, None, "done")
    reason = _agent_reason(ran.stderr)
    return Outcome(False, None, f"exit {code} ({exit_name(code)})"
                   + (f": {reason}" if reason else ""))


# -- running ------------------------------------------------------------------------------------


def max_duration(device: FenceDevice) -> float:
    """The longest one operation of ``device`` can take: every attempt to its timeout, the
    pauses between them, and the kill of each (:data:`vigil.resources.proc.KILL_WAIT`)."""
    attempts = 1 + device.retries
    return attempts * (device.timeout + proc.KILL_WAIT) + device.retries * RETRY_PAUSE


def host_argument(device: FenceDevice, agent: Path) -> str | None:
    """The parameter that takes the target's plug for ``device`` (see the module docstring);
    reads the agent's metadata (kept) unless the device names it."""
    if device.host_argument is not None:
        return None if device.host_argument == "none" else device.host_argument
    try:
        return _cache.get(agent).host_argument
    except FenceMetadataError as exc:
        log.warning("fence device %s: passing no plug (as Pacemaker does when it has no "
                    "metadata): %s", device.name, exc)
        return None


def run_device(device: FenceDevice, action: str, target: str | None = None, *,
               cancel: threading.Event | None = None) -> FenceResult:
    """Run ``action`` of ``device``, for node ``target`` (``off``, ``on``, ``reboot``,
    ``status``) or for the device itself (``monitor``, ``list``, ``metadata``), with the
    device's timeout and retries; see the module docstring. Blocks: call it from a worker
    thread. ``cancel`` interrupts it (the running agent's process group is killed).

    Raises ValueError for an action not in :data:`ACTIONS`, or a target the device cannot
    fence (not in its ``hosts``): the caller's mistakes. Everything that goes wrong with the
    agent is a failed result.
    """
    if action not in ACTIONS:
        raise ValueError(f"fence action {action!r}: expected one of {', '.join(ACTIONS)}")
    if target is not None and not device.can_fence(target):
        raise ValueError(f"fence device {device.name} cannot fence {target!r} (its hosts: "
                         f"{', '.join(device.hosts) or 'none'})")
    started = time.monotonic()
    plug = device.plug(target) if target is not None else None
    try:
        agent = resolve_agent(device.agent)
    except FenceAgentError as exc:
        return FenceResult(device.name, device.agent, action, target, plug, False, None,
                           str(exc), time.monotonic() - started, 0)
    host_arg = host_argument(device, agent) if target is not None else None
    if target is not None and (host_arg is None or host_arg == "none"):
        plug = None
    stdin = encode_arguments(agent_arguments(device, action, target, host_arg))
    secrets = _secret_values(device)
    attempts = 1 if action == "metadata" else 1 + device.retries
    attempt = 0
    while True:
        attempt += 1
        ran = proc.run([str(agent)], timeout=device.timeout, cancel=cancel, cwd="/",
                       input=stdin, stdout_limit=_STDOUT_LIMIT)
        ok, power, reason = interpret(action, ran, device.timeout)
        result = FenceResult(
            device=device.name, agent=str(agent), action=action, target=target, plug=plug,
            ok=ok, exit_code=ran.returncode, reason=_mask(reason, secrets),
            duration=time.monotonic() - started, attempts=attempt, power=power,
            timed_out=ran.timed_out, cancelled=ran.cancelled,
            stderr_tail=_mask(_stderr_tail(ran.stderr), secrets),
            output=_mask(ran.stdout, secrets))
        final = ok or ran.cancelled or ran.start_error is not None or attempt >= attempts
        if not ok:
            log.log(logging.ERROR if final else logging.WARNING,
                    "fence device %s: attempt %d of %d: %s%s", device.name, attempt, attempts,
                    result.describe(),
                    f"; stderr: {result.stderr_tail[-400:]!r}" if result.stderr_tail else "")
        elif action in _POWER_ACTIONS:
            log.info("fence device %s: %s", device.name, result.describe())
        if final:
            return result
        if cancel is not None and cancel.wait(RETRY_PAUSE):
            return replace(result, cancelled=True, duration=time.monotonic() - started,
                           reason=f"{result.reason}; interrupted before attempt {attempt + 1}")
        if cancel is None:
            time.sleep(RETRY_PAUSE)


@dataclass(frozen=True, slots=True)
class LevelResult:
    """One fencing level run for a node: the results of its devices, in the order run."""

    action: str
    target: str
    results: tuple[FenceResult, ...]
    ok: bool

    def describe(self) -> str:
        verdict = "done" if self.ok else "failed"
        return f"{self.action} of {self.target}: level {verdict}: " + "; ".join(
            r.describe() for r in self.results)


def run_level(devices: Sequence[FenceDevice], action: str, target: str, *,
              cancel: threading.Event | None = None) -> LevelResult:
    """Run one fencing level (``[fencing] levels``): ``action`` (``off``, ``on`` or
    ``reboot``) on ``target`` with every device of the level, in order; the level succeeds
    when every device does, and stops at the first that fails.

    A ``reboot`` of a level of several devices (a node fed by two power supplies: rebooting
    one leaves it running on the other) is, as Pacemaker does it, ``off`` on every device and
    then ``on`` on every device; the node was fenced once every ``off`` succeeded, so a failed
    ``on`` is in the results but does not fail the level. Blocks (see :func:`run_device`).
    """
    if action not in _POWER_ACTIONS:
        raise ValueError(f"a fencing level runs off, on or reboot, not {action!r}")
    if not devices:
        raise ValueError(f"an empty fencing level cannot fence {target}")
    if action == "reboot" and len(devices) > 1:
        offs = _run_all(devices, "off", target, cancel)
        if not all(r.ok for r in offs):
            return LevelResult(action, target, offs, False)
        ons = _run_all(devices, "on", target, cancel)
        return LevelResult(action, target, offs + ons, True)
    results = _run_all(devices, action, target, cancel)
    return LevelResult(action, target, results, all(r.ok for r in results))


def _run_all(devices: Sequence[FenceDevice], action: str, target: str,
             cancel: threading.Event | None) -> tuple[FenceResult, ...]:
    results: list[FenceResult] = []
    for device in devices:
        results.append(run_device(device, action, target, cancel=cancel))
        if not results[-1].ok and action != "on":
            break
    return tuple(results)


# -- metadata -----------------------------------------------------------------------------------


class _MetadataCache:
    """Metadata per agent path: read once; a failure remembered for METADATA_RETRY seconds,
    so that a broken agent does not cost a run (up to METADATA_TIMEOUT) per question."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[Path, threading.Lock] = {}
        self._known: dict[Path, FenceMetadata] = {}
        self._failed: dict[Path, tuple[float, FenceMetadataError]] = {}

    def get(self, agent: Path) -> FenceMetadata:
        with self._lock:
            lock = self._locks.setdefault(agent, threading.Lock())
        with lock:  # one run per agent at a time; other agents are not held up
            if agent in self._known:
                return self._known[agent]
            if agent in self._failed:
                when, error = self._failed[agent]
                if time.monotonic() - when < METADATA_RETRY:
                    raise error
            try:
                metadata = _run_metadata(agent)
            except FenceMetadataError as exc:
                self._failed[agent] = (time.monotonic(), exc)
                raise
            self._failed.pop(agent, None)
            self._known[agent] = metadata
            return metadata

    def clear(self) -> None:
        with self._lock:
            self._known.clear()
            self._failed.clear()


_cache = _MetadataCache()


def _run_metadata(agent: Path) -> FenceMetadata:
    where = f"fence agent {agent}"
    ran = proc.run([str(agent)], timeout=METADATA_TIMEOUT, cwd="/",
                   input=encode_arguments({"action": "metadata"}), stdout_limit=_STDOUT_LIMIT)
    ok, _, reason = interpret("metadata", ran, METADATA_TIMEOUT)
    if not ok:
        raise FenceMetadataError(f"{where} does not answer action=metadata: {reason}")
    if ran.stdout_truncated:
        raise FenceMetadataError(f"{where} printed more than {_STDOUT_LIMIT} bytes of metadata")
    return FenceMetadata.parse(ran.stdout, where)


def read_metadata(agent: str | Path) -> FenceMetadata:
    """The metadata of ``agent`` (a name, or a path), read once and kept.

    Raises FenceAgentError when there is no such agent, FenceMetadataError when it does not
    answer ``action=metadata`` with metadata.
    """
    path = agent if isinstance(agent, Path) else resolve_agent(agent)
    return _cache.get(path)


def forget_metadata() -> None:
    """Drop every agent's kept metadata (after agents were upgraded; for tests)."""
    _cache.clear()
