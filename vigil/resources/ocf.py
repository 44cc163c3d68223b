"""The ``ocf`` resource family: OCF resource agents, run unmodified as Pacemaker runs them.

A resource of type ``"ocf:<provider>:<agent>"`` (``"ocf:heartbeat:IPaddr2"``,
``"ocf:heartbeat:Filesystem"``...) is managed by the executable
``$OCF_ROOT/resource.d/<provider>/<agent>``. ``OCF_ROOT`` is ``/usr/lib/ocf`` unless the
environment variable ``VIGIL_OCF_ROOT`` names another directory (for tests and unusual
installations). The agents come from packages such as ``resource-agents``; ``<agent>
meta-data`` lists what each one takes.

Parameters:

The agent's own parameters, exactly as its meta-data names them, e.g.
``params = { ip = "198.18.0.100", cidr_netmask = "24", nic = "eth0" }``. Each is passed as
``OCF_RESKEY_<name>``, written as a string: a string as is, ``true``/``false`` for a boolean,
an integer in decimal, a float in decimal (``2.0`` as ``2``), and an array of strings joined
by single spaces (``["a", "b"]`` as ``a b``). ``vigil config check`` reports parameters the
meta-data does not list (with a spelling hint), required ones (``required="1"``) that are
missing, and then runs the agent's ``validate-all`` (exit 0 or 3, "unimplemented", pass).

Timeouts and monitoring: ``start_timeout``, ``stop_timeout``, ``monitor.interval`` and
``monitor.timeout`` left out of the file are taken from the agent's meta-data actions
(``timeout="20s"``, ``"20"`` and ``"20000ms"`` are all 20 seconds); where the meta-data gives
none, 10 s monitor interval and 20 s timeouts. ``monitor.depth`` is passed as
``OCF_CHECK_LEVEL`` (0, 10 or 20 for most agents).

The agent's environment is the daemon's (``PATH`` and the rest; inherited ``OCF_RESKEY_*``
and ``OCF_CHECK_LEVEL`` are dropped so that only configured parameters reach it) plus what
Pacemaker sets: ``OCF_ROOT``, ``OCF_RA_VERSION_MAJOR=1``, ``OCF_RA_VERSION_MINOR=1``,
``OCF_EXIT_REASON_PREFIX=ocf-exit-reason:``, ``OCF_RESOURCE_INSTANCE`` (the resource's name),
``OCF_RESOURCE_TYPE``, ``OCF_RESOURCE_PROVIDER``, ``OCF_RESKEY_CRM_meta_name`` (the action),
``OCF_RESKEY_CRM_meta_timeout`` (the action's timeout in milliseconds),
``OCF_RESKEY_CRM_meta_interval`` (milliseconds: the monitor interval for a recurring monitor,
0 for every other action and for a probe), ``OCF_RESKEY_CRM_meta_on_node`` (this node) and,
for monitor, ``OCF_CHECK_LEVEL``. ``HA_RSCTMP`` and ``HA_VARRUN`` are not set: the agents'
``ocf-shellfuncs`` choose them, as under Pacemaker.

Like Pacemaker, a monitor of a resource not known to be running here (never probed, or out of
service) is a *probe*, interval 0: agents then answer "not running" where a recurring monitor
would report a missing device or binary as an error.

Each action runs as ``<agent> <action>`` with stdin from ``/dev/null``, working directory
``/`` (so that no agent holds a mount point busy) and in a new session, so in its own
process group; if it outlives its timeout the whole group gets SIGKILL, grandchildren too.
The action is over when the agent itself exits: a daemon it started and left in the
background is not waited for, even if it kept the agent's stdout or stderr open (it stays in
the agent's process group, which is not signalled after a successful action). Those pipes are
closed then, so such a daemon gets EPIPE if it writes to them later; agents redirect their
daemons' output, as they must under Pacemaker too.

Exit codes, by their OCF names: 0 ``OCF_SUCCESS``, 1 ``OCF_ERR_GENERIC``, 2 ``OCF_ERR_ARGS``,
3 ``OCF_ERR_UNIMPLEMENTED``, 4 ``OCF_ERR_PERM``, 5 ``OCF_ERR_INSTALLED``, 6
``OCF_ERR_CONFIGURED``, 7 ``OCF_NOT_RUNNING``, 8 ``OCF_RUNNING_PROMOTED``, 9
``OCF_FAILED_PROMOTED``, 190 ``OCF_DEGRADED``, 191 ``OCF_DEGRADED_PROMOTED``. An agent that
cannot be executed counts as 5 (missing) or 4 (not executable), as under Pacemaker.

- start: 0 is in service; anything else, or a timeout, is FAILED.
- stop: 0 is out of service; anything else, or a timeout, is UNCLEAN (fence the node). OCF
  has no forced stop: ``force_oos`` kills a start still running, then runs the agent's stop.
- monitor: 0, 8, 190 and 191 are in service (190/191 say "degraded" in the reason); 7 is
  cleanly stopped; anything else, or a timeout, is FAILED.

The reason of a result names the action, exit code and name, and the agent's exit reason: the
last line of its stderr starting with ``ocf-exit-reason:``, e.g. ``start: exit 5
(OCF_ERR_INSTALLED): Couldn't find device [/dev/sdz1]``. Without one, the last line of stderr
is shown. A short tail of the rest of the output goes to the log.

The meta-data is read once per agent and kept for the life of the process (a failure to
read it is retried after 30 s); restart the daemon after upgrading agents.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import os
import re
import signal
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vigil.config import MonitorConfig, ParamValue, ResourceConfig, TypeDefaults
from vigil.resources import proc
from vigil.resources.model import (
    OpResult,
    Resource,
    ResourceType,
    ServiceState,
    UnknownResourceType,
    unknown_params,
)

__all__ = [
    "DEFAULT_OCF_ROOT",
    "REASON_PREFIX",
    "ROOT_VARIABLE",
    "AgentRun",
    "MissingOcfAgent",
    "OcfAction",
    "OcfExit",
    "OcfMetadata",
    "OcfMetadataError",
    "OcfParameter",
    "OcfResource",
    "OcfType",
    "agent_environment",
    "exit_name",
    "ocf_family",
    "ocf_root",
    "param_string",
    "parse_ocf_duration",
    "run_agent",
]

log = logging.getLogger(__name__)

DEFAULT_OCF_ROOT: Final = Path("/usr/lib/ocf")
#: Overrides :data:`DEFAULT_OCF_ROOT` (tests point it at a directory of their own agents).
ROOT_VARIABLE: Final = "VIGIL_OCF_ROOT"
REASON_PREFIX: Final = "ocf-exit-reason:"

#: Pacemaker's own limit for meta-data: it only matters for an agent that hangs.
METADATA_TIMEOUT: Final = 30.0
VALIDATE_TIMEOUT: Final = 20.0
#: A meta-data failure is remembered this long, so that a broken agent does not cost a
#: meta-data run (up to METADATA_TIMEOUT) for every question asked about its type.
METADATA_RETRY: Final = 30.0
FALLBACK_INTERVAL: Final = 10.0
FALLBACK_TIMEOUT: Final = 20.0
#: meta-data of a large agent is some 50 KB; more than this is not an agent's meta-data.
_STDOUT_LIMIT: Final = 4 * 1024 * 1024
_STDERR_LIMIT: Final = 64 * 1024
_REASON_LIMIT: Final = 500
_TAIL_LIMIT: Final = 400

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_.+-]+$")


class OcfExit(enum.IntEnum):
    """The exit codes of the OCF resource agent API (1.1)."""

    SUCCESS = 0
    ERR_GENERIC = 1
    ERR_ARGS = 2
    ERR_UNIMPLEMENTED = 3
    ERR_PERM = 4
    ERR_INSTALLED = 5
    ERR_CONFIGURED = 6
    NOT_RUNNING = 7
    RUNNING_PROMOTED = 8
    FAILED_PROMOTED = 9
    DEGRADED = 190
    DEGRADED_PROMOTED = 191


_MONITOR_RUNNING: Final = frozenset(
    {OcfExit.SUCCESS, OcfExit.RUNNING_PROMOTED, OcfExit.DEGRADED, OcfExit.DEGRADED_PROMOTED})
_MONITOR_DEGRADED: Final = frozenset({OcfExit.DEGRADED, OcfExit.DEGRADED_PROMOTED})


def exit_name(code: int) -> str:
    """``"OCF_ERR_INSTALLED"`` for 5; a code outside the API is named as such."""
    try:
        return f"OCF_{OcfExit(code).name}"
    except ValueError:
        return "not an OCF exit code"


def ocf_root() -> Path:
    """``$VIGIL_OCF_ROOT`` when set, else ``/usr/lib/ocf``."""
    override = os.environ.get(ROOT_VARIABLE, "").strip()
    return Path(override) if override else DEFAULT_OCF_ROOT


# -- durations and parameter values ----------------------------------------------------------

_OCF_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
#: The units Pacemaker accepts in operation timeouts and intervals; a bare number is seconds.
_OCF_UNITS: Final = {
    "": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "msec": 0.001, "us": 1e-6, "usec": 1e-6,
    "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0,
}


def parse_ocf_duration(text: str) -> float:
    """Seconds for a meta-data duration: ``"20s"``, ``"20"``, ``"20000ms"``, ``"2min"``...

    Raises ValueError for anything else.
    """
    match = _OCF_DURATION_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _OCF_UNITS:
        raise ValueError(f"{text!r} is not a duration such as \"20s\", \"20\" or \"20000ms\"")
    return float(match.group(1)) * _OCF_UNITS[unit]


def param_string(value: ParamValue) -> str:
    """A parameter value as its ``OCF_RESKEY_`` variable holds it (see the module docstring)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # An agent doing shell arithmetic on "2.0" fails; the operator meant 2.
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, list):
        return " ".join(value)
    return value


def _milliseconds(seconds: float) -> str:
    return str(round(seconds * 1000))


# -- meta-data ---------------------------------------------------------------------------------


class OcfMetadataError(ValueError):
    """An agent's meta-data could not be run or read; the message says which agent and why."""


@dataclass(frozen=True, slots=True)
class OcfParameter:
    """One ``<parameter>`` of an agent's meta-data."""

    name: str
    required: bool = False
    unique: bool = False
    content_type: str = "string"
    default: str | None = None
    shortdesc: str = ""


@dataclass(frozen=True, slots=True)
class OcfAction:
    """One ``<action>`` of an agent's meta-data; durations in seconds, None when absent."""

    name: str
    timeout: float | None = None
    interval: float | None = None
    depth: int | None = None
    role: str | None = None


def _true(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes", "on", "y")


@dataclass(frozen=True, slots=True)
class OcfMetadata:
    """What ``<agent> meta-data`` says: parameters and actions."""

    name: str
    version: str
    parameters: tuple[OcfParameter, ...]
    actions: tuple[OcfAction, ...]

    @classmethod
    def parse(cls, text: str, where: str) -> OcfMetadata:
        """Parse the XML ``text`` printed by agent ``where``; OcfMetadataError if unusable."""
        if not text.strip():
            raise OcfMetadataError(f"{where} meta-data printed nothing")
        try:
            root = ElementTree.fromstring(text)
        except ElementTree.ParseError as exc:
            raise OcfMetadataError(f"{where} meta-data is not well-formed XML: {exc}") from None
        if root.tag != "resource-agent":
            raise OcfMetadataError(f"{where} meta-data is not OCF meta-data: the top element is "
                                   f"<{root.tag}>, not <resource-agent>")
        parameters = []
        for element in root.iterfind("parameters/parameter"):
            name = element.get("name", "").strip()
            if not name:
                raise OcfMetadataError(f"{where} meta-data has a <parameter> without a name")
            content = element.find("content")
            parameters.append(OcfParameter(
                name=name,
                required=_true(element.get("required")),
                unique=_true(element.get("unique")),
                content_type=(content.get("type", "string") if content is not None
                              else "string"),
                default=content.get("default") if content is not None else None,
                shortdesc=" ".join((element.findtext("shortdesc") or "").split()),
            ))
        actions = []
        for element in root.iterfind("actions/action"):
            name = element.get("name", "").strip()
            if name:
                actions.append(OcfAction(
                    name=name,
                    timeout=_action_duration(element, "timeout", where),
                    interval=_action_duration(element, "interval", where),
                    depth=_action_depth(element, where),
                    role=element.get("role"),
                ))
        version = (root.findtext("version") or root.get("version") or "").strip()
        return cls(name=root.get("name", ""), version=version, parameters=tuple(parameters),
                   actions=tuple(actions))

    def parameter_names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def action(self, name: str) -> OcfAction | None:
        """The action called ``name``: the first without a role (a monitor may be listed per
        role, with different intervals), else the first."""
        matching = [a for a in self.actions if a.name == name]
        plain = [a for a in matching if not a.role]
        chosen = plain or matching
        return chosen[0] if chosen else None


def _action_duration(element: ElementTree.Element, key: str, where: str) -> float | None:
    text = element.get(key)
    if text is None or not text.strip():
        return None
    try:
        return parse_ocf_duration(text)
    except ValueError as exc:
        # A bad number in one action's hints must not make the whole agent unusable.
        log.warning("%s meta-data: action %s: %s %s; using the default", where,
                    element.get("name"), key, exc)
        return None


def _action_depth(element: ElementTree.Element, where: str) -> int | None:
    text = element.get("depth")
    if text is None or not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        log.warning("%s meta-data: action %s: depth %r is not a whole number; ignored", where,
                    element.get("name"), text)
        return None


# -- running an agent --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentRun:
    """One finished (or killed) agent action.

    ``returncode`` is the exit status (negative: killed by that signal), None when the agent
    was killed by us for ``timed_out`` or ``cancelled``; ``stuck`` lists the processes of its
    group that survived the SIGKILL. ``stdout`` and ``stderr`` are kept in
    full up to a limit (their ends); ``exit_reason`` is the agent's ``ocf-exit-reason:`` line.
    """

    action: str
    returncode: int | None
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    cancelled: bool = False
    stdout_truncated: bool = False
    stuck: tuple[int, ...] = ()

    @property
    def exit_reason(self) -> str:
        for line in reversed(self.stderr.splitlines()):
            line = line.strip()
            if line.startswith(REASON_PREFIX):
                return _shorten(line[len(REASON_PREFIX):].strip(), _REASON_LIMIT)
        return ""

    def tail(self, limit: int = _TAIL_LIMIT) -> str:
        """The last lines of output other than the exit reason, for the log."""
        lines = [line.rstrip() for line in (self.stdout + "\n" + self.stderr).splitlines()]
        kept = [line for line in lines if line and not line.lstrip().startswith(REASON_PREFIX)]
        text = " | ".join(kept[-5:])
        return text if len(text) <= limit else "..." + text[-limit:]

    def last_error_line(self) -> str:
        lines = [line.strip() for line in self.stderr.splitlines()]
        kept = [line for line in lines if line and not line.startswith(REASON_PREFIX)]
        return _shorten(kept[-1], _REASON_LIMIT) if kept else ""

    def describe(self, timeout: float, *, detail: bool = False) -> str:
        """``"start: exit 5 (OCF_ERR_INSTALLED): <exit reason>"`` and the like; ``detail``
        adds the last line of stderr after an exit reason too."""
        if self.cancelled:
            return f"{self.action}: interrupted; killed the agent's process group{self._stuck()}"
        if self.timed_out:
            text = (f"{self.action}: timed out after {timeout:g}s; killed the agent's process "
                    f"group{self._stuck()}")
        elif self.returncode is not None and self.returncode < 0:
            try:
                signame = signal.Signals(-self.returncode).name
            except ValueError:
                signame = f"signal {-self.returncode}"
            text = f"{self.action}: the agent was killed by {signame}"
        else:
            code = self.returncode
            text = f"{self.action}: exit {code} ({exit_name(code or 0)})"
        reason = self.exit_reason
        if reason:
            text = f"{text}: {reason}"
        if self.returncode not in (None, OcfExit.SUCCESS, OcfExit.NOT_RUNNING) and (
                detail or not reason):
            last = self.last_error_line()
            if last:
                text = f"{text}; last output: {last}"
        return text

    def _stuck(self) -> str:
        if not self.stuck:
            return ""
        pids = ", ".join(str(pid) for pid in self.stuck)
        return f", but processes {pids} survived SIGKILL (see the log)"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def agent_environment(
    *,
    root: Path,
    provider: str,
    agent: str,
    instance: str,
    params: Mapping[str, ParamValue],
    action: str,
    timeout: float,
    interval: float = 0.0,
    depth: int | None = None,
    node: str | None = None,
) -> dict[str, str]:
    """The environment Pacemaker gives an agent for ``action`` (see the module docstring)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("OCF_RESKEY_") and key != "OCF_CHECK_LEVEL"}
    env.update(
        OCF_ROOT=str(root),
        OCF_RA_VERSION_MAJOR="1",
        OCF_RA_VERSION_MINOR="1",
        OCF_EXIT_REASON_PREFIX=REASON_PREFIX,
        OCF_RESOURCE_INSTANCE=instance,
        OCF_RESOURCE_TYPE=agent,
        OCF_RESOURCE_PROVIDER=provider,
    )
    for key, value in params.items():
        env[f"OCF_RESKEY_{key}"] = param_string(value)
    env["OCF_RESKEY_CRM_meta_name"] = action
    env["OCF_RESKEY_CRM_meta_timeout"] = _milliseconds(timeout)
    env["OCF_RESKEY_CRM_meta_interval"] = _milliseconds(interval)
    if node is not None:
        env["OCF_RESKEY_CRM_meta_on_node"] = node
    if depth is not None:
        env["OCF_CHECK_LEVEL"] = str(depth)
    return env


def run_agent(
    agent: Path,
    action: str,
    *,
    env: Mapping[str, str],
    timeout: float,
    cancel: threading.Event | None = None,
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> AgentRun:
    """Run ``<agent> <action>`` in its own process group; see the module docstring.

    Returns when the agent exits, when ``timeout`` passes or when ``cancel`` is set; in the
    last two cases the agent's whole process group is killed with SIGKILL first.
    """
    argv = [str(agent), action]
    ran = proc.run(wrap(argv) if wrap else argv, timeout=timeout, cancel=cancel, cwd="/", env=env,
                   stdout_limit=_STDOUT_LIMIT, stderr_limit=_STDERR_LIMIT)
    stderr = ran.stderr
    returncode = ran.returncode
    if ran.start_error is not None:
        # What Pacemaker reports for an agent it cannot execute.
        exc = ran.start_error
        returncode = int(OcfExit.ERR_INSTALLED if isinstance(exc, FileNotFoundError)
                         else OcfExit.ERR_PERM if isinstance(exc, PermissionError)
                         else OcfExit.ERR_GENERIC)
        stderr = f"{REASON_PREFIX}{ran.start_problem()}"
    return AgentRun(
        action=action,
        returncode=returncode,
        stdout=ran.stdout,
        stderr=stderr,
        duration=ran.duration,
        timed_out=ran.timed_out,
        cancelled=ran.cancelled,
        stdout_truncated=ran.stdout_truncated,
        stuck=ran.stuck,
    )


# -- the resource type -------------------------------------------------------------------------


class MissingOcfAgent(UnknownResourceType):
    """An ``ocf:...`` type whose agent is not installed (or whose name is malformed)."""

    def __init__(self, typename: str, message: str) -> None:
        super().__init__(typename, ())
        self.message = message
        self.args = (message,)


def _split_typename(typename: str) -> tuple[str, str]:
    parts = typename.split(":")
    if len(parts) != 3 or parts[0] != "ocf":
        raise ValueError(f"resource type {typename!r} is not of the form "
                         "\"ocf:<provider>:<agent>\", e.g. \"ocf:heartbeat:IPaddr2\"")
    _, provider, agent = parts
    for what, name in (("provider", provider), ("agent", agent)):
        if not _NAME_RE.match(name) or name in (".", ".."):
            raise ValueError(f"resource type {typename!r}: {what} {name!r} is not a valid name "
                             "(letters, digits, '_', '-', '.', '+')")
    return provider, agent


class OcfType(ResourceType):
    """One OCF agent as a resource type (``type = "ocf:heartbeat:IPaddr2"``).

    ``root`` overrides the OCF root (default :func:`ocf_root`). Making one does no I/O; the
    meta-data is read on first need.
    """

    def __init__(self, typename: str, *, root: Path | None = None) -> None:
        self.provider, self.agent = _split_typename(typename)
        self._typename = typename
        self.root = root if root is not None else ocf_root()
        self.agent_path = self.root / "resource.d" / self.provider / self.agent
        self._metadata_lock = threading.Lock()
        self._metadata: OcfMetadata | None = None
        self._metadata_error: tuple[float, OcfMetadataError] | None = None

    def typename(self) -> str:
        return self._typename

    def instantiate(self, config: ResourceConfig, node: str, runtime_dir: Path) -> OcfResource:
        return OcfResource(self, config, node, runtime_dir)

    # -- meta-data --------------------------------------------------------------------------

    def metadata(self) -> OcfMetadata:
        """The agent's meta-data (run once, then kept); OcfMetadataError if unusable."""
        with self._metadata_lock:
            if self._metadata is not None:
                return self._metadata
            if self._metadata_error is not None:
                when, error = self._metadata_error
                if time.monotonic() - when < METADATA_RETRY:
                    raise error
            try:
                self._metadata = self._read_metadata()
            except OcfMetadataError as exc:
                self._metadata_error = (time.monotonic(), exc)
                raise
            self._metadata_error = None
            return self._metadata

    def _read_metadata(self) -> OcfMetadata:
        where = f"agent {self.agent_path}"
        env = agent_environment(root=self.root, provider=self.provider, agent=self.agent,
                                instance=self.agent, params={}, action="meta-data",
                                timeout=METADATA_TIMEOUT)
        run = run_agent(self.agent_path, "meta-data", env=env, timeout=METADATA_TIMEOUT)
        if run.returncode != OcfExit.SUCCESS:
            detail = run.describe(METADATA_TIMEOUT)
            tail = run.tail()
            raise OcfMetadataError(f"{where}: {detail}" + (f" ({tail})" if tail else ""))
        if run.stdout_truncated:
            raise OcfMetadataError(f"{where} printed more than {_STDOUT_LIMIT} bytes of "
                                   "meta-data")
        return OcfMetadata.parse(run.stdout, where)

    # -- configuration ----------------------------------------------------------------------

    def check_params(self, params: Mapping[str, ParamValue]) -> list[str]:
        problems = []
        for key, value in sorted(params.items()):
            if not key or "=" in key or "\0" in key:
                problems.append(f"parameter {key!r}: an OCF parameter name cannot be empty or "
                                "hold '=' or a NUL character (it becomes an environment "
                                "variable name)")
            text = param_string(value)
            if "\0" in text:
                problems.append(f"parameter {key!r} contains a NUL character, which no "
                                "environment variable can hold")
        try:
            metadata = self.metadata()
        except OcfMetadataError as exc:
            problems.append(f"cannot check the parameters: {exc}")
            return problems
        problems += unknown_params(params, metadata.parameter_names())
        for parameter in metadata.parameters:
            if parameter.required and parameter.name not in params:
                what = f" ({parameter.shortdesc})" if parameter.shortdesc else ""
                problems.append(f"parameter {parameter.name!r}{what} is required by "
                                f"{self._typename} and missing")
        return problems

    def defaults(self) -> TypeDefaults:
        """Timeouts and monitor interval from the meta-data's actions (see module docstring)."""
        try:
            metadata = self.metadata()
        except OcfMetadataError as exc:
            log.warning("%s: using default timeouts: %s", self._typename, exc)
            return TypeDefaults(MonitorConfig(FALLBACK_INTERVAL, FALLBACK_TIMEOUT),
                                FALLBACK_TIMEOUT, FALLBACK_TIMEOUT)

        def timeout(name: str) -> float:
            action = metadata.action(name)
            value = action.timeout if action is not None else None
            return value if value else FALLBACK_TIMEOUT

        monitor = metadata.action("monitor")
        interval = monitor.interval if monitor is not None else None
        return TypeDefaults(
            MonitorConfig(interval=interval if interval else FALLBACK_INTERVAL,
                          timeout=timeout("monitor")),
            start_timeout=timeout("start"),
            stop_timeout=timeout("stop"),
        )

    def default_monitor(self) -> MonitorConfig:
        return self.defaults().monitor

    def validate(self, config: ResourceConfig) -> list[str]:
        """Run ``<agent> validate-all`` with the resource's parameters (changes nothing)."""
        timeout = VALIDATE_TIMEOUT
        with contextlib.suppress(OcfMetadataError):
            action = self.metadata().action("validate-all")
            if action is not None and action.timeout:
                timeout = action.timeout
        env = agent_environment(root=self.root, provider=self.provider, agent=self.agent,
                                instance=config.name, params=config.params,
                                action="validate-all", timeout=timeout)
        run = run_agent(self.agent_path, "validate-all", env=env, timeout=timeout)
        if run.returncode in (OcfExit.SUCCESS, OcfExit.ERR_UNIMPLEMENTED):
            return []
        tail = run.tail()
        if tail:
            log.info("%s validate-all of %s: %s", self._typename, config.name, tail)
        return [f"{self._typename} {run.describe(timeout, detail=True)}"]


def ocf_family(typename: str) -> OcfType:
    """The registry's factory for ``ocf:...`` types: raises UnknownResourceType (naming the
    agent path) when the agent is not installed."""
    try:
        rtype = OcfType(typename)
    except ValueError as exc:
        raise MissingOcfAgent(typename, str(exc)) from None
    path = rtype.agent_path
    if not path.is_file():
        raise MissingOcfAgent(typename, f"no OCF agent {path} (is the package providing it, "
                              "e.g. resource-agents, installed?)")
    if not os.access(path, os.X_OK):
        raise MissingOcfAgent(typename, f"OCF agent {path} is not executable "
                              f"(chmod +x {path})")
    return rtype


# -- the resource ------------------------------------------------------------------------------


class OcfResource(Resource):
    """One resource managed by an OCF agent (see the module docstring)."""

    def __init__(
        self, rtype: OcfType, config: ResourceConfig, node: str, runtime_dir: Path
    ) -> None:
        super().__init__(rtype, config, node, runtime_dir)  # checks the params
        self._ocf = rtype
        self._last_run: AgentRun | None = None
        self._last_run_lock = threading.Lock()

    @property
    def agent_path(self) -> Path:
        return self._ocf.agent_path

    @property
    def last_run(self) -> AgentRun | None:
        """The last agent action run for this resource, output and all (for debugging)."""
        with self._last_run_lock:
            return self._last_run

    def environment(self, action: str, timeout: float, interval: float = 0.0,
                    depth: int | None = None) -> dict[str, str]:
        """The environment of ``action`` for this resource."""
        t = self._ocf
        return agent_environment(root=t.root, provider=t.provider, agent=t.agent,
                                 instance=self.name, params=self.config.params, action=action,
                                 timeout=timeout, interval=interval, depth=depth,
                                 node=self.node)

    def _run(self, action: str, timeout: float, *, interval: float = 0.0,
             depth: int | None = None, cancel: threading.Event | None = None) -> AgentRun:
        env = self.environment(action, timeout, interval, depth)
        run = run_agent(self.agent_path, action, env=env, timeout=timeout, cancel=cancel,
                        wrap=self.in_cgroup)
        with self._last_run_lock:
            self._last_run = run
        tail = run.tail()
        if tail:
            # "not running" is the everyday answer of a probe; only trouble is worth a line.
            quiet = run.returncode in (OcfExit.SUCCESS, OcfExit.NOT_RUNNING)
            log.log(logging.DEBUG if quiet else logging.INFO, "resource %s: %s output: %s",
                    self.name, action, tail)
        return run

    def _start(self, cancel: threading.Event) -> OpResult:
        timeout = self.config.start_timeout
        run = self._run("start", timeout, cancel=cancel)
        reason = run.describe(timeout)
        if run.returncode == OcfExit.SUCCESS:
            return OpResult.success(ServiceState.IN_SERVICE, reason)
        return OpResult.failure(ServiceState.FAILED, reason)

    def _stop(self, force: bool) -> OpResult:
        timeout = self.config.stop_timeout
        run = self._run("stop", timeout)
        reason = run.describe(timeout)
        if run.returncode == OcfExit.SUCCESS:
            return OpResult.success(ServiceState.OOS, reason)
        return OpResult.failure(ServiceState.UNCLEAN, reason)

    def _monitor(self) -> OpResult:
        monitor = self.config.monitor
        # Where the resource is not known to run, Pacemaker probes (interval 0), and agents
        # answer "not running" rather than "not installed" for what is absent here.
        recurring = self.service_state() in (ServiceState.IN_SERVICE, ServiceState.FAILED)
        run = self._run("monitor", monitor.timeout, interval=monitor.interval if recurring else 0,
                        depth=monitor.depth)
        reason = run.describe(monitor.timeout)
        code = run.returncode
        if code is not None and code in _MONITOR_RUNNING:
            if code in _MONITOR_DEGRADED:
                reason = f"degraded: {reason}"
            return OpResult.success(ServiceState.IN_SERVICE, reason)
        if code == OcfExit.NOT_RUNNING:
            return OpResult.success(ServiceState.OOS, reason)
        return OpResult.failure(ServiceState.FAILED, reason)
