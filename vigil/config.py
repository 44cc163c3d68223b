"""The cluster configuration: one TOML file, identical on every node.

Every node holds the whole cluster configuration (the seed's presumption): when the cluster
re-forms it must know which resources of missing nodes to bring up elsewhere. The data classes
here are plain, frozen data; :func:`load` reads and validates a file and raises
:class:`ConfigError` naming the file, the key path and what is wrong.

HELPER-OWNED: the loader and validator below this data model are implemented by the config
work package; the data model itself is the contract other packages code against.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import errno
import hashlib
import ipaddress
import json
import math
import os
import pwd
import re
import secrets
import shlex
import socket
import stat
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal

from vigil.graph import DependencyGraph, find_cycles
from vigil.messages import NAME_RE
from vigil.notifications import KINDS

ParamValue = str | int | float | bool | list[str]

INFINITY = math.inf

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: A node's replication port when ``replication_port`` is not given: its first link's + 20.
REPLICATION_PORT_OFFSET: Final = 20


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """One network link (NIC) of a node. Links with the same name on different nodes form
    one heartbeat network."""

    name: str
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    links: tuple[LinkConfig, ...]
    votes: int = 1
    runtime_dir: Path = Path("/var/lib/vigil")
    #: where mirrored data arrives (key ``replication_port``; None: the first link's port +
    #: :data:`REPLICATION_PORT_OFFSET`), on the first link's address
    replication_port: int | None = None
    #: (address, port) where this node serves Prometheus metrics (``[metrics] listen`` or
    #: its own ``metrics``); None: no metrics endpoint
    metrics: tuple[str, int] | None = None

    @property
    def replication_endpoint(self) -> tuple[str, int]:
        """(address, port) of this node's mirror receiver (docs/configuration.md)."""
        first = self.links[0]
        port = (self.replication_port if self.replication_port is not None
                else first.port + REPLICATION_PORT_OFFSET)
        return first.address, port

    @property
    def control_socket(self) -> Path:
        return self.runtime_dir / "control.sock"

    @property
    def event_socket(self) -> Path:
        """The local event stream (ZeroMQ PUB over ipc), read by `vigil events`."""
        return self.runtime_dir / "events.sock"

    @property
    def guard_socket(self) -> Path:
        """Where the node's guardian (`vigil guard`) listens for its daemon."""
        return self.runtime_dir / "guard.sock"


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    interval: float  # seconds; 0 disables scheduled monitoring
    timeout: float
    depth: int = 0  # deeper checks cost more (OCF_CHECK_LEVEL: 0, 10, 20)


@dataclass(frozen=True, slots=True)
class ResourceConfig:
    name: str
    type: str
    group: str
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    monitor: MonitorConfig = MonitorConfig(interval=10.0, timeout=20.0)
    start_timeout: float = 20.0
    stop_timeout: float = 20.0
    on_fail: str = "restart"  # one of ON_FAIL_POLICIES
    #: the keys the file gave ("start_timeout", "monitor.interval", ...): the others take the
    #: resource type's defaults (:func:`apply_type_defaults`)
    explicit: frozenset[str] = frozenset()

    def same_instance(self, other: ResourceConfig) -> bool:
        """Whether ``other`` defines the same running thing (name, type, group, parameters,
        dependencies): what else differs (timeouts, monitor, on_fail) applies to the next
        operation, without a restart (a configuration change, vigil.cluster.reconfig)."""
        return (self.name, self.type, self.group, dict(self.params), self.depends_on) == (
            other.name, other.type, other.group, dict(other.params), other.depends_on)


@dataclass(frozen=True, slots=True)
class GroupConfig:
    name: str
    resources: tuple[str, ...]  # members, in the order written
    depends_on: tuple[str, ...] = ()  # other groups: start after them, on the same node
    prefer: Mapping[str, float] = field(default_factory=dict)  # node -> cost
    nodes: tuple[str, ...] = ()  # ordered preference list (strategy "preferred")
    failback: bool = False
    stickiness: float = 100.0
    migration_threshold: int = 3
    failure_timeout: float = 0.0  # seconds; 0 = fail counts never expire


@dataclass(frozen=True, slots=True)
class Timing:
    heartbeat_interval: float = 0.2
    dead_time: float = 0.8  # defaults to 4 x heartbeat_interval
    lease_time: float = 0.5  # defaults to dead_time - guard_time - fence_margin
    step_timeout: float = 2.4  # a transition step waiting longer restarts from step 1
    retransmit_interval: float = 0.2  # defaults to heartbeat_interval
    #: added to every time-based fencing wait (timer and clock slack); defaults to
    #: heartbeat_interval, at most 200 ms
    fence_margin: float = 0.2
    #: how long a node's guardian may take, after the node's lease ran out or its daemon
    #: died, to kill everything the node ran (the guardian fencer waits for it)
    guard_time: float = 0.1


@dataclass(frozen=True, slots=True)
class GuardianConfig:
    """``[guardian]``: how the node's guardian (`vigil guard`, docs/fencing.md) fences."""

    self_fence: Literal["kill", "reboot"] = "kill"  # "reboot": kill, then reboot at once
    watchdog_device: Path | None = None  # petted only while the node may hold its groups
    watchdog_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class NicsConfig:
    """``[nics]``: how the NIC monitors judge a node's network interfaces
    (:mod:`vigil.cluster.nics`, docs/configuration.md)."""

    up_hold: float = 1.0  # a NIC that came back is believed after it stayed usable this long
    max_up_hold: float = 30.0  # each fall within flap_window doubles the hold, up to this
    flap_window: float = 60.0
    #: NIC name -> addresses to probe through it; the NIC is down while none answers
    targets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    probe_interval: float = 1.0
    probe_failures: int = 3  # unanswered probes in a row before the NIC counts as down


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """An alert command: run on every notification of the given kinds (all when empty)."""

    command: tuple[str, ...]
    kinds: frozenset[str] = frozenset()
    timeout: float = 30.0


#: A fence agent parameter's value: written on the agent's stdin as ``name=value``.
FenceParamValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class FenceDevice:
    """A power switch, management board or hypervisor that powers nodes off, run through an
    unmodified fence agent (``fence-agents``); docs/fencing.md, "Fence agents".

    ``agent`` is as written: a name (looked up in /usr/sbin, then beside the running Python's
    scripts) or an absolute path; it is resolved only when used, so loading the file runs and
    finds nothing. ``params`` may hold secrets (``password``...): it is left out of ``repr``
    and never logged.
    """

    name: str
    agent: str
    hosts: tuple[str, ...]  # the nodes it can fence, in the order written
    plugs: Mapping[str, str] = field(default_factory=dict)  # node -> plug, where not the name
    params: Mapping[str, FenceParamValue] = field(default_factory=dict, repr=False)
    timeout: float = 60.0  # of one attempt
    retries: int = 1  # attempts after a failed one
    monitor_interval: float = 60.0  # 0: never monitored
    #: the agent parameter that takes the plug; None: ``plug`` or ``port``, as the agent's
    #: metadata lists them; ``"none"``: none is passed
    host_argument: str | None = None

    def can_fence(self, node: str) -> bool:
        return node in self.hosts

    def plug(self, node: str) -> str:
        """What the agent calls ``node``: its entry in ``plugs``, else the node's name."""
        return self.plugs.get(node, node)


@dataclass(frozen=True, slots=True)
class FencingConfig:
    """``[fencing]``: how the fence devices are used (docs/fencing.md)."""

    #: node -> levels, tried in order; a level is the devices that must all succeed
    levels: Mapping[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    delay_max: float = 0.0  # a random delay up to this before fencing (pcmk_delay_max)
    #: added to the delay before fencing a node that ran more groups than the side fencing it,
    #: so that the side running more shoots first (priority-fencing-delay)
    priority_delay: float = 0.0
    #: after every level of a node failed, the whole topology is tried again this much later
    retry_interval: float = 10.0


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    key_file: Path
    nodes: Mapping[str, NodeConfig]
    groups: Mapping[str, GroupConfig]
    resources: Mapping[str, ResourceConfig]
    timing: Timing = Timing()
    strategy: str = "cost"
    no_quorum_policy: Literal["stop", "freeze"] = "stop"
    two_node: bool = False
    wait_for_all: bool = True
    fencer: str = "silence"
    #: Unix group whose members may control the cluster through the local interfaces
    #: (control socket, /ha); root always may. Empty: root only.
    admin_group: str = ""
    #: Unix group whose members may read status and events (admins may too). Empty: root and
    #: the admin group only.
    status_group: str = ""
    alerts: tuple[AlertConfig, ...] = ()
    fence_devices: Mapping[str, FenceDevice] = field(default_factory=dict)
    fencing: FencingConfig = FencingConfig()
    guardian: GuardianConfig = GuardianConfig()
    nics: NicsConfig = NicsConfig()
    path: Path = Path("<memory>")
    digest: str = ""  # sha256 of the canonical form; carried in heartbeats
    #: the parsed TOML document the configuration was read from (as :func:`tomllib.loads`
    #: returns it): what `vigil config diff` compares
    document: Mapping[str, object] = field(default_factory=dict, compare=False, repr=False)

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.nodes))

    @property
    def total_votes(self) -> int:
        return sum(n.votes for n in self.nodes.values())

    def max_stop_timeout(self) -> float:
        return max((r.stop_timeout for r in self.resources.values()), default=0.0)

    def max_start_timeout(self) -> float:
        return max((r.start_timeout for r in self.resources.values()), default=0.0)

    def fence_levels(self, node: str) -> tuple[tuple[str, ...], ...]:
        """The levels tried to fence ``node``, in order: its ``[fencing] levels`` entry; else
        one level per device that can fence it, in the file's order; () when none can."""
        if node in self.fencing.levels:
            return self.fencing.levels[node]
        return tuple((d.name,) for d in self.fence_devices.values() if d.can_fence(node))


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration: where (file, dotted key path) and what."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.key, self.message) if part)


class ConfigError(Exception):
    """A configuration cannot be used; ``problems`` lists everything found, not just the first."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class UnknownNode(ConfigError):
    """This machine (or the node asked for) is not a node of the configuration."""


_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(us|ms|s|m|h)?")
_UNITS: Final = {"us": (1, 1_000_000), "ms": (1, 1000), "s": (1, 1), "m": (60, 1),
                 "h": (3600, 1)}  # unit -> (multiplier, divisor), exact for decimal input
_DURATION_HINT: Final = "a duration such as '500us', '150ms', '2s', '1.5s', '1m' or seconds"

# Floats from "3 * 200ms" are not exact: compare timing rules with a tolerance far below 1us.
_EPSILON: Final = 1e-9

#: Every duration in the file is at most a day: a longer one would mean "never" (and timers
#: refuse values beyond a few centuries).
MAX_DURATION: Final = 24 * 3600.0
#: heartbeat_interval: faster than 10 ms and the daemons do little but heartbeats (and a
#: loaded machine misses them); slower than 10 s and failures go unnoticed for a minute.
MIN_HEARTBEAT: Final = 0.010
MAX_HEARTBEAT: Final = 10.0
#: The default heartbeat_interval: HEARTBEAT_BASE up to HEARTBEAT_NODES nodes, then
#: HEARTBEAT_PER_NODE more per node beyond them. Every node hears every other, so at a fixed
#: interval each node's work grows with the node count and the cluster's with its square; like
#: Corosync's token_coefficient (650 ms more token timeout per node past two), the interval
#: grows instead, which holds what each node receives near 40 heartbeats a second at any size
#: (docs/benchmarks.md, "Scale") while detection slows gently (dead_time 3.2 s at 32 nodes).
HEARTBEAT_BASE: Final = 0.2
HEARTBEAT_NODES: Final = 8
HEARTBEAT_PER_NODE: Final = 0.025


def default_heartbeat(nodes: int) -> float:
    """heartbeat_interval when the file does not set it, for a cluster of ``nodes``."""
    return round(HEARTBEAT_BASE + HEARTBEAT_PER_NODE * max(0, nodes - HEARTBEAT_NODES), 6)
#: The other [timing] durations: the cluster notices a failure within dead_time, and a
#: transition step waits step_timeout; longer than 10 minutes is a mistake.
MAX_TIMING: Final = 600.0


def parse_duration(text: str | int | float, where: str) -> float:
    """Seconds for ``"150ms"``, ``"2s"``, ``"1m"``, ``"500us"`` or a bare number of seconds.

    Raises :class:`ConfigError` naming ``where`` for anything else, including negative,
    infinite and NaN values.
    """

    def error(message: str) -> ConfigError:
        return ConfigError([ConfigProblem("", where, message)])

    seconds: float
    if isinstance(text, str):
        match = _DURATION_RE.fullmatch(text.strip())
        if match is None:
            raise error(f"expected {_DURATION_HINT}, got {_describe(text)}")
        multiplier, divisor = _UNITS[match[2] or "s"]
        seconds = float(match[1]) * multiplier / divisor
    elif isinstance(text, int | float) and not isinstance(text, bool):
        try:
            seconds = float(text)
        except OverflowError:
            seconds = math.inf
    else:
        raise error(f"expected {_DURATION_HINT}, got {_describe(text)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise error(f"a duration must be finite and not negative, got {_describe(text)}")
    return seconds


def _span(seconds: float) -> str:
    """A limit as the file would write it: "10ms", "10s", "10m", "24h"."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms"


def _describe(value: object) -> str:
    """A value as the operator wrote it, with its TOML type: "string 'one'", "integer 5"."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}" if abs(value) < 10**30 else "a huge integer"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f"string {_quote(value)}"
    if isinstance(value, list):
        first_odd = next((v for v in value if not isinstance(v, str)), None)
        return "an array" if first_odd is None else f"an array holding {_describe(first_odd)}"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"  # TOML dates and times


def _quote(text: object) -> str:
    """``'text'`` for messages, shortened if long."""
    quoted = repr(str(text))
    return quoted if len(quoted) <= 60 else quoted[:56] + "...'"


_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


def _join(path: str, key: object) -> str:
    """Dotted key path as TOML writes it; odd keys are quoted (``nodes."Web App"``)."""
    text = str(key)
    if not _BARE_KEY_RE.fullmatch(text):
        text = json.dumps(text)
    return f"{path}.{text}" if path else text


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def _known(choices: Iterable[str]) -> str:
    names = sorted(choices)
    return ", ".join(names) if names else "none"


_NAME_RULE: Final = ("names start with a lowercase letter and use only lowercase letters, "
                     "digits, '_' and '-' (at most 63 characters)")


class _Checker:
    """Reads values out of a parsed TOML document, recording a problem for each bad one.

    Every getter returns a usable stand-in (the default, or None) after a problem, so that
    checking goes on and reports everything in one pass; the caller builds a configuration
    only when no problem was recorded.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[ConfigProblem] = []

    def add(self, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(self.file, key, message))

    def table(self, value: object, key: str,
              known: Collection[str] | None = None) -> dict[str, object] | None:
        if not isinstance(value, dict):
            self.add(key, f"expected a table, got {_describe(value)}")
            return None
        for name in value:
            if known is not None and name not in known:
                self.add(_join(key, name), f"unknown key {_quote(name)} "
                         f"({_suggest(str(name), known)}known keys: {_known(known)})")
        return value

    def name(self, name: object, key: str, kind: str) -> bool:
        if isinstance(name, str) and NAME_RE.fullmatch(name):
            return True
        self.add(key, f"invalid {kind} name {_quote(name)}: {_NAME_RULE}")
        return False

    def string(self, t: Mapping[str, object], path: str, key: str,
               default: str | None = None, required: str = "") -> str | None:
        """A non-empty string; ``required`` is the hint given when the key is missing."""
        where = _join(path, key)
        if key not in t:
            if required:
                self.add(where, f"missing required key '{key}': {required}")
            return default
        value = t[key]
        if not isinstance(value, str):
            self.add(where, f"expected a string, got {_describe(value)}")
        elif not value.strip():
            self.add(where, "must not be empty")
        elif "\0" in value:
            self.add(where, "must not contain a NUL character")
        else:
            return value
        return default

    def integer(self, t: Mapping[str, object], path: str, key: str,
                default: int, minimum: int, maximum: int | None = None) -> int:
        where = _join(path, key)
        value = t.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            self.add(where, f"expected an integer, got {_describe(value)}")
        elif value < minimum or (maximum is not None and value > maximum):
            allowed = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            self.add(where, f"must be an integer {allowed}, got {_describe(value)}")
        else:
            return value
        return default

    def number(self, value: object, where: str, allow_infinite: bool = False) -> float | None:
        """A number >= 0 (integer or float)."""
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.add(where, f"expected a number, got {_describe(value)}")
            return None
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isnan(number) or number < 0 or (math.isinf(number) and not allow_infinite):
            limit = ">= 0 (inf allowed)" if allow_infinite else "finite and >= 0"
            self.add(where, f"must be a number {limit}, got {_describe(value)}")
            return None
        return number

    def boolean(self, t: Mapping[str, object], path: str, key: str, default: bool) -> bool:
        value = t.get(key, default)
        if isinstance(value, bool):
            return value
        self.add(_join(path, key), f"expected true or false, got {_describe(value)}")
        return default

    def duration(self, t: Mapping[str, object], path: str, key: str,
                 default: float | None, positive: bool = False,
                 minimum: float = 0.0, maximum: float = MAX_DURATION) -> float | None:
        """Seconds, or None when absent without a default or when invalid (outside
        ``minimum``..``maximum`` included)."""
        where = _join(path, key)
        if key not in t:
            return default
        value = t[key]
        try:
            if not isinstance(value, str | int | float):
                raise ConfigError([ConfigProblem("", where, f"expected {_DURATION_HINT}, "
                                                 f"got {_describe(value)}")])
            seconds = parse_duration(value, where)
        except ConfigError as err:
            self.problems.extend(ConfigProblem(self.file, p.key, p.message) for p in err.problems)
            return None
        if positive and seconds <= 0:
            self.add(where, f"must be longer than 0, got {_describe(value)}")
            return None
        if seconds > maximum + _EPSILON or 0 < seconds < minimum - _EPSILON:
            limit = (f"at most {_span(maximum)}" if seconds > maximum
                     else f"at least {_span(minimum)}")
            self.add(where, f"must be {limit}, got {_describe(value)} (docs/configuration.md, "
                     "\"Limits\")")
            return None
        return seconds

    def names(self, t: Mapping[str, object], path: str, key: str) -> list[str]:
        """An array of strings naming other things; duplicates are reported and dropped."""
        where = _join(path, key)
        value = t.get(key, [])
        if not isinstance(value, list):
            self.add(where, f"expected an array of names, got {_describe(value)}")
            return []
        result: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.add(f"{where}[{i}]", f"expected a name (string), got {_describe(item)}")
            elif item in result:
                self.add(f"{where}[{i}]", f"'{item}' is listed twice; list it once")
            else:
                result.append(item)
        return result


_TOP_KEYS: Final = ("cluster", "timing", "nodes", "groups", "resources", "alerts",
                    "fence_devices", "fencing", "guardian", "nics", "metrics")
_METRICS_KEYS: Final = ("listen",)
_NICS_KEYS: Final = ("up_hold", "max_up_hold", "flap_window", "targets", "probe_interval",
                     "probe_failures")
_CLUSTER_KEYS: Final = ("name", "key_file", "strategy", "no_quorum_policy", "two_node",
                        "wait_for_all", "fencer", "runtime_dir", "admin_group",
                        "status_group")
_ALERT_KEYS: Final = ("command", "events", "timeout")
#: How late a heartbeat echo may come, beyond its interval, without the derived lease running
#: out: scheduling delay of a Python daemon at nice -10 on a machine whose every core is
#: busy. In 10 minutes of bench/stability.py (docs/benchmarks.md) a lease of a 200 ms
#: heartbeat plus 300 ms never ran out; one of a 100 ms heartbeat plus 200 ms ran out three
#: times and its guardian fenced the node nine times.
LEASE_SLACK: Final = 0.3
_TIMING_KEYS: Final = ("heartbeat_interval", "dead_time", "lease_time", "step_timeout",
                       "retransmit_interval", "fence_margin", "guard_time")
_GUARDIAN_KEYS: Final = ("self_fence", "watchdog_device", "watchdog_interval")
_NODE_KEYS: Final = ("votes", "runtime_dir", "links", "replication_port", "metrics")
_LINK_KEYS: Final = ("name", "address", "port")
_GROUP_KEYS: Final = ("resources", "depends_on", "prefer", "nodes", "failback", "stickiness",
                      "migration_threshold", "failure_timeout")
_RESOURCE_KEYS: Final = ("type", "depends_on", "start_timeout", "stop_timeout", "params",
                         "monitor", "on_fail")
_MONITOR_KEYS: Final = ("interval", "timeout", "depth")
_FENCE_DEVICE_KEYS: Final = ("agent", "params", "hosts", "plugs", "timeout", "retries",
                             "monitor_interval", "host_argument")
_FENCING_KEYS: Final = ("levels", "delay_max", "priority_delay", "retry_interval")
#: The fencers that wait for time to pass; every other ``[cluster] fencer`` powers nodes off
#: through the fence devices (docs/fencing.md, "What each fencer protects against").
TIME_FENCERS: Final = ("guardian", "silence")
#: Arguments Vigil gives a fence agent for each operation: never parameters of a device.
_FENCE_ARGUMENTS: Final = ("action", "nodename")
_FENCE_AGENT_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_FENCE_PARAM_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
#: What a failed monitor (or an operation past its timeout) does; docs/resources.md.
ON_FAIL_POLICIES: Final = ("restart", "ignore", "stop", "standby")
_DEFAULT_RUNTIME_DIR: Final = "/var/lib/vigil"
_MEMORY: Final = "<memory>"


def load(path: str | Path) -> ClusterConfig:
    """Read, parse and validate a cluster file; raise :class:`ConfigError` for any problem."""
    file = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError([ConfigProblem(file, "", f"cannot read the configuration file: "
                                         f"{err.strerror or err}")]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigProblem(file, "", f"larger than {MAX_CONFIG_BYTES >> 20} MiB: "
                                         "not a cluster file (is the path right?)")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError([ConfigProblem(file, "", f"not UTF-8 text (byte {err.start}); "
                                         "save the file as UTF-8")]) from None
    return loads(text, path)


def loads(text: str, path: str | Path = _MEMORY) -> ClusterConfig:
    """Parse and validate TOML text; ``path`` names it in problems and anchors relative paths."""
    file = str(path)
    try:
        document = tomllib.loads(text)
    except ValueError as err:  # TOMLDecodeError, or an integer literal too long to convert
        message = str(err)
        where = re.search(r"\s*\(at (line \d+, column \d+|end of document)\)$", message)
        if where is not None:
            message = message[: where.start()]
        location = where[1] if where is not None else ""
        raise ConfigError([ConfigProblem(file, location, f"invalid TOML: {message}")]) from None
    except RecursionError:  # tomllib recurses once per level of nested arrays and tables
        raise ConfigError([ConfigProblem(file, "", _TOO_DEEP)]) from None
    depth = _depth(document)
    if depth > MAX_NESTING:
        raise ConfigError([ConfigProblem(file, "", _TOO_DEEP + f" (found {depth} levels)")])
    return from_dict(document, path)


#: Arrays and tables inside each other: a cluster file needs 5 levels; more is not one.
MAX_NESTING: Final = 32
_TOO_DEEP: Final = (f"arrays and tables nested more than {MAX_NESTING} levels deep: not a "
                    "cluster file (docs/configuration.md, \"Limits\")")
#: A cluster file of a thousand resources is well under 1 MiB.
MAX_CONFIG_BYTES: Final = 16 << 20


def _depth(document: object) -> int:
    """How deeply arrays and tables nest in ``document`` (without recursion)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(document, 0)]
    while stack:
        value, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(value, dict):
            stack.extend((v, level + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, level + 1) for v in value)
    return deepest


def from_dict(document: Mapping[str, object], path: str | Path = _MEMORY) -> ClusterConfig:
    """Validate an already parsed TOML document (as :func:`tomllib.loads` returns it)."""
    file = str(path)
    resolved = Path(path).resolve() if file != _MEMORY else Path(_MEMORY)
    base = resolved.parent if file != _MEMORY else Path.cwd()
    c = _Checker(file)
    root = c.table(document, "", _TOP_KEYS)
    if root is None:
        raise ConfigError(c.problems)

    cluster = _read_cluster(c, root)
    timing = _read_timing(c, root)
    nodes = _read_nodes(c, root, base, cluster.runtime_dir, _read_metrics(c, root))
    raw_resources = root.get("resources", {})
    resources_table = c.table(raw_resources, "resources") or {}
    node_names = set(_as_table(root.get("nodes")))  # also those whose table has problems
    groups, owner = _read_groups(c, root, node_names, set(resources_table))
    resources = _read_resources(c, resources_table, owner)
    _check_replication(c, nodes, resources)
    two_node, fencer = _check_cluster_rules(c, cluster, nodes, len(node_names))
    alerts = _read_alerts(c, root)
    devices = _read_fence_devices(c, root, node_names)
    fencing = _read_fencing(c, root, node_names, devices)
    _check_fencer(c, fencer, two_node, sorted(node_names), devices, fencing)
    guardian = _read_guardian(c, root, base)
    nics = _read_nics(c, root)
    if c.problems:
        raise ConfigError(c.problems)

    try:
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError) as err:  # only reachable through from_dict() misuse
        raise ConfigError([ConfigProblem(file, "", f"not a TOML document: {err}")]) from None
    assert cluster.name and cluster.key_file and cluster.strategy
    return ClusterConfig(
        name=cluster.name,
        key_file=base / cluster.key_file,
        nodes=nodes,
        groups=groups,
        resources=resources,
        timing=timing,
        strategy=cluster.strategy,
        no_quorum_policy=cluster.no_quorum_policy,
        two_node=two_node,
        wait_for_all=cluster.wait_for_all,
        fencer=fencer,
        admin_group=cluster.admin_group,
        status_group=cluster.status_group,
        alerts=alerts,
        fence_devices=devices,
        fencing=fencing,
        guardian=guardian,
        nics=nics,
        path=resolved,
        digest=hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        document=copy.deepcopy(dict(document)),  # the caller's stays the caller's
    )


@dataclass(slots=True)
class _ClusterSection:
    """What [cluster] says; None where a required value is missing or bad."""

    name: str | None
    key_file: str | None
    strategy: str | None
    no_quorum_policy: Literal["stop", "freeze"]
    two_node: bool | None  # None: not written, the default depends on the node count
    wait_for_all: bool
    fencer: str | None
    runtime_dir: str
    admin_group: str = ""
    status_group: str = ""


def _read_cluster(c: _Checker, root: Mapping[str, object]) -> _ClusterSection:
    if "cluster" not in root:
        c.add("cluster", 'missing required table [cluster]: add it, with at least '
              'name = "..." and key_file = "..."')
    t = c.table(root.get("cluster", {}), "cluster", _CLUSTER_KEYS) or {}
    p = "cluster"
    name = c.string(t, p, "name", required='name the cluster, e.g. name = "demo"')
    if name is not None:
        c.name(name, "cluster.name", "cluster")
    policy = c.string(t, p, "no_quorum_policy", "stop")
    if policy not in ("stop", "freeze"):
        c.add("cluster.no_quorum_policy",
              f"must be 'stop' or 'freeze', got {_describe(t['no_quorum_policy'])}")
    return _ClusterSection(
        name=name,
        key_file=c.string(t, p, "key_file", required='name the shared key file, e.g. '
                          'key_file = "demo.key", and create it with `vigil keygen FILE`'),
        strategy=c.string(t, p, "strategy", "cost"),
        no_quorum_policy="freeze" if policy == "freeze" else "stop",
        two_node=c.boolean(t, p, "two_node", False) if "two_node" in t else None,
        wait_for_all=c.boolean(t, p, "wait_for_all", True),
        # None: not written; the default depends on two_node (_check_cluster_rules)
        fencer=c.string(t, p, "fencer", "") or None if "fencer" in t else None,
        runtime_dir=c.string(t, p, "runtime_dir", _DEFAULT_RUNTIME_DIR) or _DEFAULT_RUNTIME_DIR,
        admin_group=_unix_group(c, t, "admin_group"),
        status_group=_unix_group(c, t, "status_group"),
    )


_GROUP_NAME_RE: Final = re.compile(r"^[a-z_][a-z0-9_-]*[$]?$", re.IGNORECASE)


def _unix_group(c: _Checker, t: Mapping[str, object], key: str) -> str:
    """A Unix group name (whether it exists is checked where it is used: groups differ
    between machines, and a missing one only means nobody is in it)."""
    name = c.string(t, "cluster", key, "") or ""
    if name and not _GROUP_NAME_RE.match(name):
        c.add(f"cluster.{key}", f"not a Unix group name: {_describe(name)}")
        return ""
    return name


def _read_alerts(c: _Checker, root: Mapping[str, object]) -> tuple[AlertConfig, ...]:
    raw = root.get("alerts", [])
    if not isinstance(raw, list):
        c.add("alerts", "expected an array of tables: [[alerts]] command = \"...\"")
        return ()
    alerts = []
    for i, item in enumerate(raw):
        key = f"alerts[{i}]"
        t = c.table(item, key, _ALERT_KEYS)
        if t is None:
            continue
        command = t.get("command")
        argv: list[str] = []
        if isinstance(command, str):
            try:
                argv = shlex.split(command)
            except ValueError as exc:
                c.add(f"{key}.command", f"cannot split {_describe(command)}: {exc}")
        elif isinstance(command, list) and all(isinstance(a, str) for a in command):
            argv = list(command)
        if not argv:
            c.add(f"{key}.command", "give the command to run: a string or a list of strings, "
                  'e.g. command = "/usr/local/bin/page-oncall"')
        events = c.names(t, key, "events") if "events" in t else []
        for kind in events:
            if kind not in KINDS:
                c.add(f"{key}.events", f"unknown notification kind '{kind}' "
                      f"({_suggest(kind, KINDS)}kinds: {_known(KINDS)})")
        timeout = c.duration(t, key, "timeout", 30.0, positive=True)
        alerts.append(AlertConfig(tuple(argv), frozenset(events), timeout or 30.0))
    return tuple(alerts)


def _read_fence_devices(c: _Checker, root: Mapping[str, object],
                        node_names: Collection[str]) -> dict[str, FenceDevice]:
    devices: dict[str, FenceDevice] = {}
    for name, raw in (c.table(root.get("fence_devices", {}), "fence_devices") or {}).items():
        key = _join("fence_devices", name)
        c.name(name, key, "fence device")
        t = c.table(raw, key, _FENCE_DEVICE_KEYS)
        if t is None:
            continue
        agent = c.string(t, key, "agent", required='name the fence agent, e.g. agent = '
                         '"fence_ipmilan" (see `ls /usr/sbin/fence_*`) or an absolute path')
        if agent is not None and not agent.startswith("/") \
                and not _FENCE_AGENT_RE.fullmatch(agent):
            c.add(f"{key}.agent", f"{_describe(agent)} is neither an agent's name (such as "
                  "'fence_ipmilan', looked up in /usr/sbin) nor an absolute path; give one")
        host_argument = c.string(t, key, "host_argument")
        if host_argument is not None and not _FENCE_PARAM_RE.fullmatch(host_argument):
            c.add(f"{key}.host_argument", f"{_describe(host_argument)} is not a parameter "
                  "name: give the agent's parameter that takes the plug, or \"none\"")
        plugs = _read_plugs(c, t, key, node_names)
        hosts = c.names(t, key, "hosts") if "hosts" in t else list(plugs)
        if "hosts" not in t and not plugs:
            c.add(f"{key}.hosts", "missing required key 'hosts': list the nodes this device "
                  'can fence, e.g. hosts = ["alpha", "beta"]')
        for i, node in enumerate(hosts if "hosts" in t else ()):
            if node not in node_names:
                c.add(f"{key}.hosts[{i}]", _unknown_node(node, node_names))
        for node in plugs:
            if node in node_names and node not in hosts:
                c.add(_join(f"{key}.plugs", node), f"node '{node}' has a plug but is not in "
                      f"hosts: add it to {key}.hosts")
        retries = c.integer(t, key, "retries", 1, minimum=0)
        devices[name] = FenceDevice(
            name=name,
            agent=agent or "",
            hosts=tuple(hosts),
            plugs=plugs,
            params=_read_fence_params(c, t, key, host_argument),
            timeout=c.duration(t, key, "timeout", 60.0, positive=True) or 60.0,
            retries=retries,
            monitor_interval=_or(c.duration(t, key, "monitor_interval", 60.0), 60.0),
            host_argument=host_argument,
        )
    return devices


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _fence_value_problem(text: str) -> str:
    """Why ``text`` cannot reach a fence agent intact as ``name=text``, or ""."""
    if any(ch in text for ch in "\n\r\0"):
        return "holds a line break or NUL character, which the agent's stdin protocol " \
            "(one name=value per line) cannot carry"
    if text != text.strip():
        return "begins or ends with white space, which fence agents strip from the value"
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        return "is wrapped in double quotes, which fence agents strip from the value"
    return ""


def _read_fence_params(c: _Checker, t: Mapping[str, object], key: str,
                       host_argument: str | None) -> dict[str, FenceParamValue]:
    where = f"{key}.params"
    # The plug is given per operation, from hosts and plugs: a fixed one would fence the same
    # plug whichever node is meant.
    plug_names = (() if host_argument == "none" else
                  (host_argument,) if host_argument is not None else ("plug", "port"))
    params: dict[str, FenceParamValue] = {}
    for name, value in (c.table(t.get("params", {}), where) or {}).items():
        at = _join(where, name)
        if not _FENCE_PARAM_RE.fullmatch(name):
            c.add(at, f"{_quote(name)} is not a parameter name a fence agent can take "
                  "(letters, digits, '_', '-' and '.')")
        elif name in _FENCE_ARGUMENTS:
            c.add(at, f"'{name}' is given by Vigil for each operation; remove it")
        elif name in plug_names:
            c.add(at, f"'{name}' takes the plug of the node being fenced, which Vigil passes "
                  f"for each operation: remove it and map nodes to plugs with {key}.plugs, "
                  'e.g. plugs = { alpha = "vm-alpha" }')
        if not isinstance(value, str | int | float | bool):
            c.add(at, f"a fence agent parameter is a string, number or boolean, got "
                  f"{_describe(value)}")
            continue
        problem = _fence_value_problem(value) if isinstance(value, str) else ""
        if problem:
            c.add(at, f"the value {problem}")
        params[name] = value
    return params


def _read_plugs(c: _Checker, t: Mapping[str, object], key: str,
                node_names: Collection[str]) -> dict[str, str]:
    plugs: dict[str, str] = {}
    for node, plug in (c.table(t.get("plugs", {}), f"{key}.plugs") or {}).items():
        at = _join(f"{key}.plugs", node)
        if node not in node_names:
            c.add(at, _unknown_node(node, node_names))
        if not isinstance(plug, str) or not plug:
            c.add(at, f"expected the plug's name (a non-empty string), got {_describe(plug)}")
        elif problem := _fence_value_problem(plug):
            c.add(at, f"the plug {problem}")
        else:
            plugs[node] = plug
    return plugs


def _read_fencing(c: _Checker, root: Mapping[str, object], node_names: Collection[str],
                  devices: Mapping[str, FenceDevice]) -> FencingConfig:
    t = c.table(root.get("fencing", {}), "fencing", _FENCING_KEYS) or {}
    levels: dict[str, tuple[tuple[str, ...], ...]] = {}
    for node, raw in (c.table(t.get("levels", {}), "fencing.levels") or {}).items():
        key = _join("fencing.levels", node)
        if node not in node_names:
            c.add(key, _unknown_node(node, node_names))
        if not isinstance(raw, list) or not raw or not all(isinstance(x, list) for x in raw):
            c.add(key, f"expected an array of levels, each an array of fence devices, e.g. "
                  f'{node} = [["ipmi-{node}"], ["pdu-a", "pdu-b"]], got {_describe(raw)}')
            continue
        node_levels = []
        for i, level in enumerate(raw):
            at = f"{key}[{i}]"
            members: list[str] = []
            for j, device in enumerate(level):
                if not isinstance(device, str):
                    c.add(f"{at}[{j}]", f"expected a fence device's name, got "
                          f"{_describe(device)}")
                elif device in members:
                    c.add(f"{at}[{j}]", f"'{device}' is listed twice; list it once")
                else:
                    members.append(device)
            if not level:
                c.add(at, "a level needs at least one fence device")
            for device in members:
                if device not in devices:
                    c.add(at, f"unknown fence device '{device}' ({_suggest(device, devices)}"
                          f"configured devices: {_known(devices)})")
                elif node in node_names and not devices[device].can_fence(node):
                    c.add(at, f"fence device '{device}' cannot fence node '{node}' (its hosts: "
                          f"{_known(devices[device].hosts)}): add '{node}' to "
                          f"{_join('fence_devices', device)}.hosts or take the device out of "
                          "this level")
            node_levels.append(tuple(members))
        levels[node] = tuple(node_levels)
    return FencingConfig(
        levels=levels,
        delay_max=_or(c.duration(t, "fencing", "delay_max", 0.0), 0.0),
        priority_delay=_or(c.duration(t, "fencing", "priority_delay", 0.0), 0.0),
        retry_interval=_or(c.duration(t, "fencing", "retry_interval", 10.0, positive=True),
                           10.0),
    )


def _read_timing(c: _Checker, root: Mapping[str, object]) -> Timing:
    t = c.table(root.get("timing", {}), "timing", _TIMING_KEYS) or {}
    p = "timing"
    nodes = root.get("nodes")
    hb = c.duration(t, p, "heartbeat_interval",
                    default_heartbeat(len(nodes) if isinstance(nodes, Mapping) else 0),
                    positive=True, minimum=MIN_HEARTBEAT, maximum=MAX_HEARTBEAT)
    # dead_time and fence_margin follow the heartbeat unless written: an operator who makes
    # heartbeats faster gets faster detection and takeover with the same tolerance for
    # missed heartbeats (docs/benchmarks.md, "Stability under load", is what chose 4).
    dead = c.duration(t, p, "dead_time", None if hb is None else 4 * hb, positive=True,
                      maximum=MAX_TIMING)
    # None for these three: not written (the default derives from the values above) or bad.
    lease = c.duration(t, p, "lease_time", None, positive=True, maximum=MAX_TIMING)
    step = c.duration(t, p, "step_timeout", None, positive=True, maximum=MAX_TIMING)
    retransmit = c.duration(t, p, "retransmit_interval", None, positive=True,
                            maximum=MAX_TIMING)
    margin = c.duration(t, p, "fence_margin", None if hb is None else min(0.2, hb),
                        maximum=MAX_TIMING)
    guard = c.duration(t, p, "guard_time", 0.1, positive=True, maximum=MAX_TIMING)

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:g}ms"

    # Derived defaults (lease below, step = 3 x dead, retransmit = heartbeat) satisfy their
    # rules whenever the written values satisfy theirs: check only what the operator wrote,
    # so that one mistake gives one problem.
    if hb is not None and dead is not None and dead < 3 * hb - _EPSILON:
        got = ms(dead) if "dead_time" in t else f"the default {ms(dead)}"
        c.add("timing.dead_time", f"must be at least 3 x heartbeat_interval ({ms(3 * hb)}), "
              f"got {got}: raise dead_time or lower heartbeat_interval")
    if hb is not None and lease is not None and lease < 2 * hb - _EPSILON:
        c.add("timing.lease_time", f"must be at least 2 x heartbeat_interval ({ms(2 * hb)}), "
              f"got {ms(lease)}")
    if dead is not None and lease is not None and lease > dead + _EPSILON:
        c.add("timing.lease_time", f"must not be longer than dead_time ({ms(dead)}), "
              f"got {ms(lease)}: a lease must run out before its node is declared dead")
    if hb is not None and step is not None and step <= 2 * hb + _EPSILON:
        c.add("timing.step_timeout", f"must be longer than 2 x heartbeat_interval "
              f"({ms(2 * hb)}), got {ms(step)}")
    if retransmit is not None and dead is not None and (step is not None
                                                        or "step_timeout" not in t):
        limit = (step if step is not None else 3 * dead) / 2
        if retransmit > limit + _EPSILON:
            c.add("timing.retransmit_interval", f"must be at most step_timeout / 2 "
                  f"({ms(limit)}), got {ms(retransmit)}: a step must survive a lost message")
    if hb is None or dead is None or margin is None or guard is None:
        return Timing()  # a stand-in: problems were recorded, no configuration will be built
    if lease is None:
        # Short enough that a lost node's lease has run out, and its guardian has acted, by
        # the time the others declare it dead: their fencing wait is then already over.
        # Never shorter than one heartbeat plus LEASE_SLACK, though: a renewal that comes
        # that late on a saturated machine must not cost the node its groups.
        lease = min(dead, max(2 * hb, hb + LEASE_SLACK, dead - guard - margin))
    return Timing(heartbeat_interval=hb, dead_time=dead, lease_time=lease, guard_time=guard,
                  step_timeout=3 * dead if step is None else step,
                  retransmit_interval=hb if retransmit is None else retransmit,
                  fence_margin=margin)


def _read_guardian(c: _Checker, root: Mapping[str, object], base: Path) -> GuardianConfig:
    t = c.table(root.get("guardian", {}), "guardian", _GUARDIAN_KEYS) or {}
    p = "guardian"
    mode = c.string(t, p, "self_fence", "kill")
    if mode not in ("kill", "reboot"):
        c.add("guardian.self_fence", f"must be 'kill' or 'reboot', got "
              f"{_describe(t['self_fence'])}: 'kill' kills, removes and unmounts what the "
              "node holds; 'reboot' does that and then reboots the node at once")
    device = c.string(t, p, "watchdog_device")
    interval = c.duration(t, p, "watchdog_interval", 1.0, positive=True)
    return GuardianConfig(self_fence="reboot" if mode == "reboot" else "kill",
                          watchdog_device=None if device is None else base / device,
                          watchdog_interval=1.0 if interval is None else interval)


def _read_nics(c: _Checker, root: Mapping[str, object]) -> NicsConfig:
    p = "nics"
    t = c.table(root.get(p, {}), p, _NICS_KEYS) or {}
    d = NicsConfig()
    hold = c.duration(t, p, "up_hold", d.up_hold, minimum=0.0, maximum=3600.0)
    most = c.duration(t, p, "max_up_hold", d.max_up_hold, minimum=0.0, maximum=86400.0)
    window = c.duration(t, p, "flap_window", d.flap_window, minimum=0.0, maximum=86400.0)
    if hold is not None and most is not None and most < hold:
        c.add("nics.max_up_hold", f"must be at least up_hold ({_span(hold)}), got {_span(most)}")
    interval = c.duration(t, p, "probe_interval", d.probe_interval, positive=True,
                          minimum=0.01, maximum=3600.0)
    failures = c.integer(t, p, "probe_failures", d.probe_failures, minimum=1, maximum=1000)
    targets: dict[str, tuple[str, ...]] = {}
    raw = c.table(t.get("targets", {}), "nics.targets") or {}
    for nic, addresses in raw.items():
        where = _join("nics.targets", nic)
        if not isinstance(addresses, list) or not addresses:
            c.add(where, "expected a non-empty array of addresses to probe through that NIC, "
                  f"got {_describe(addresses)}")
            continue
        good: list[str] = []
        for i, address in enumerate(addresses):
            try:
                ip = ipaddress.ip_address(address) if isinstance(address, str) else None
            except ValueError:
                ip = None
            if ip is None or ip.version != 4:
                c.add(f"{where}[{i}]", f"expected an IPv4 address (probes are ICMP echo), got "
                      f"{_describe(address)}")
            else:
                good.append(str(ip))
        targets[str(nic)] = tuple(good)
    return NicsConfig(up_hold=d.up_hold if hold is None else hold,
                      max_up_hold=d.max_up_hold if most is None else most,
                      flap_window=d.flap_window if window is None else window,
                      targets=targets,
                      probe_interval=d.probe_interval if interval is None else interval,
                      probe_failures=failures)


def _read_metrics(c: _Checker, root: Mapping[str, object]) -> tuple[str, int] | None:
    """``[metrics] listen``: where every node serves metrics unless its own says else."""
    if "metrics" not in root:
        return None
    t = c.table(root["metrics"], "metrics", _METRICS_KEYS)
    if t is None:
        return None
    listen = c.string(t, "metrics", "listen", required='give the address and port to serve '
                      'metrics on, e.g. listen = "127.0.0.1:9664"')
    return None if listen is None else _read_listen(c, listen, "metrics.listen", off=False)


def _read_listen(c: _Checker, text: str, where: str, off: bool) -> tuple[str, int] | None:
    """``ADDRESS:PORT`` (``[ADDRESS]:PORT`` for IPv6), or ``off`` where ``off`` is allowed."""
    if off and text == "off":
        return None
    example = 'e.g. "127.0.0.1:9664", "[::1]:9664" or "0.0.0.0:9664"' + (
        ', or "off"' if off else "")
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        c.add(where, f"{_describe(text)} is not ADDRESS:PORT with an IP address ({example})")
        return None
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        c.add(where, f"{_describe(text)}: the port must be a number from 1 to 65535 "
              f"({example})")
        return None
    return str(ip), int(port)


def _read_nodes(c: _Checker, root: Mapping[str, object], base: Path,
                runtime_dir: object, metrics: tuple[str, int] | None = None
                ) -> dict[str, NodeConfig]:
    if "nodes" not in root:
        c.add("nodes", "missing required table [nodes]: add one [nodes.NAME] table per node")
        return {}
    table = c.table(root["nodes"], "nodes")
    if table is None:
        return {}
    if not table:
        c.add("nodes", "no nodes configured: add at least one [nodes.NAME] table")
    nodes: dict[str, NodeConfig] = {}
    endpoints: dict[tuple[IPAddress, int], str] = {}  # (address, port) -> key of first user
    for name, raw in table.items():
        key = _join("nodes", name)
        c.name(name, key, "node")
        if name == "maintenance":  # the cluster's administrative state uses that word
            c.add(key, "'maintenance' is reserved (it names maintenance mode in the cluster's "
                  "state); call the node something else")
        t = c.table(raw, key, _NODE_KEYS)
        if t is None:
            continue
        votes = c.integer(t, key, "votes", 1, minimum=0)
        own_dir = c.string(t, key, "runtime_dir")
        node_dir = base / own_dir if own_dir else base / str(runtime_dir) / str(name)
        links = _read_links(c, t, key, endpoints)
        replication = (c.integer(t, key, "replication_port", 0, minimum=1, maximum=65535)
                       or None) if "replication_port" in t else None
        own_metrics = c.string(t, key, "metrics")
        nodes[name] = NodeConfig(
            name=name, links=links, votes=votes, runtime_dir=node_dir,
            replication_port=replication,
            metrics=metrics if own_metrics is None else _read_listen(
                c, own_metrics, f"{key}.metrics", off=True))
    return nodes


def _check_replication(c: _Checker, nodes: Mapping[str, NodeConfig],
                       resources: Mapping[str, ResourceConfig]) -> None:
    """With a mirror resource, every node receives on its replication endpoint: it must be
    a valid port and clash with no link's (address, port) and no other node's endpoint."""
    if not any(r.type == "mirror" for r in resources.values()):
        return
    used: dict[tuple[IPAddress, int], str] = {}
    for name, node in nodes.items():
        for i, link in enumerate(node.links):
            with contextlib.suppress(ValueError):
                used.setdefault((ipaddress.ip_address(link.address), link.port),
                                f"{_join('nodes', name)}.links[{i}]")
    for name, node in nodes.items():
        if not node.links:
            continue
        key = f"{_join('nodes', name)}.replication_port"
        address, port = node.replication_endpoint
        if port > 65535:
            c.add(key, f"the default replication port ({node.links[0].port} + "
                  f"{REPLICATION_PORT_OFFSET}) is beyond 65535: give replication_port")
            continue
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue  # the link's address is reported already
        first = used.setdefault((ip, port), key)
        if first != key:
            given = "" if node.replication_port is not None else (
                f" (the default: the first link's port + {REPLICATION_PORT_OFFSET})")
            c.add(key, f"the replication endpoint {address} port {port}{given} is already "
                  f"used by {first}; give this node a replication_port of its own")


def _read_links(c: _Checker, t: Mapping[str, object], key: str,
                endpoints: dict[tuple[IPAddress, int], str]) -> tuple[LinkConfig, ...]:
    where = f"{key}.links"
    raw = t.get("links")
    if not isinstance(raw, list) or not raw:
        hint = 'links = [{ name = "lan0", address = "192.0.2.1", port = 7401 }]'
        c.add(where, "a node needs at least one link: "
              f"{'add' if raw is None else 'expected an array of tables, e.g.'} {hint}")
        return ()
    links: list[LinkConfig] = []
    for i, raw_link in enumerate(raw):
        lk = f"{where}[{i}]"
        lt = c.table(raw_link, lk, _LINK_KEYS)
        if lt is None:
            continue
        name = c.string(lt, lk, "name", required='name the network, e.g. name = "lan0"')
        if (name is not None and c.name(name, f"{lk}.name", "link")
                and any(link.name == name for link in links)):
            c.add(f"{lk}.name", f"link '{name}' appears twice on this node; "
                  "give each link of a node its own name")
        address = c.string(lt, lk, "address", required='give the IP address of this node on '
                           'this network, e.g. address = "192.0.2.1"')
        ip = _read_address(c, address, f"{lk}.address")
        port = c.integer(lt, lk, "port", 0, minimum=1, maximum=65535)
        if "port" not in lt:
            c.add(f"{lk}.port", "missing required key 'port': give a UDP/TCP port, e.g. 7401")
        if ip is not None and port:
            first = endpoints.setdefault((ip, port), lk)
            if first != lk:
                c.add(f"{lk}.port", f"port {port} on {ip} is already used by {first}; "
                      "every link needs its own address and port")
        links.append(LinkConfig(name=name or "", address=address or "", port=port))
    return tuple(links)


def _read_address(c: _Checker, address: str | None, where: str) -> IPAddress | None:
    if address is None:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        c.add(where, f"{_describe(address)} is not an IPv4 or IPv6 address; write the "
              "address itself (host names are not resolved), e.g. \"192.0.2.1\" or \"fd00::1\"")
        return None
    if ip.is_unspecified:
        c.add(where, f"{ip} is not an address the other nodes can reach; "
              "give this node's own address on this network")
        return None
    return ip


def _read_groups(c: _Checker, root: Mapping[str, object], node_names: set[str],
                 resource_names: set[str]) -> tuple[dict[str, GroupConfig], dict[str, str]]:
    """The groups, and which group each listed resource belongs to."""
    table = c.table(root.get("groups", {}), "groups") or {}
    groups: dict[str, GroupConfig] = {}
    owner: dict[str, str] = {}
    for name, raw in table.items():
        key = _join("groups", name)
        c.name(name, key, "group")
        t = c.table(raw, key, _GROUP_KEYS)
        if t is None:
            continue
        members = c.names(t, key, "resources")
        if not members and "resources" in t and isinstance(t["resources"], list):
            c.add(f"{key}.resources", "a group needs at least one resource")
        elif "resources" not in t:
            c.add(f"{key}.resources", "missing required key 'resources': list the group's "
                  'resources, e.g. resources = ["web-ip", "web-app"]')
        for member in members:
            if member not in resource_names:
                hint = _suggest(member, resource_names)
                c.add(f"{key}.resources", f"unknown resource '{member}' "
                      f"({hint}define it in a [resources.{member}] table)")
            elif member in owner:
                c.add(f"{key}.resources", f"resource '{member}' is already in group "
                      f"'{owner[member]}'; a resource belongs to exactly one group")
            else:
                owner[member] = name
        prefer: dict[str, float] = {}
        for node, cost in (c.table(t.get("prefer", {}), f"{key}.prefer") or {}).items():
            where = _join(f"{key}.prefer", node)
            if node not in node_names:
                c.add(where, _unknown_node(node, node_names))
            number = c.number(cost, where, allow_infinite=True)
            if number is not None:
                prefer[node] = number
        preferred = c.names(t, key, "nodes")
        for i, node in enumerate(preferred):
            if node not in node_names:
                c.add(f"{key}.nodes[{i}]", _unknown_node(node, node_names))
        stickiness = c.number(t.get("stickiness", 100.0), f"{key}.stickiness")
        groups[name] = GroupConfig(
            name=name,
            resources=tuple(members),
            depends_on=tuple(c.names(t, key, "depends_on")),
            prefer=prefer,
            nodes=tuple(preferred),
            failback=c.boolean(t, key, "failback", False),
            stickiness=100.0 if stickiness is None else stickiness,
            migration_threshold=c.integer(t, key, "migration_threshold", 3, minimum=1),
            failure_timeout=c.duration(t, key, "failure_timeout", 0.0) or 0.0,
        )
    for name, group in groups.items():
        key = _join(_join("groups", name), "depends_on")
        for other in group.depends_on:
            if other == name:
                c.add(key, f"group '{name}' depends on itself; remove '{name}'")
            elif other not in groups:
                c.add(key, f"unknown group '{other}' ({_suggest(other, groups)}"
                      f"configured groups: {_known(groups)})")
    graph = {n: [d for d in g.depends_on if d != n and d in groups] for n, g in groups.items()}
    for cycle in find_cycles(graph):
        c.add(_join(_join("groups", cycle[0]), "depends_on"),
              f"groups depend on each other in a cycle: {' -> '.join(cycle)}; "
              "remove one of these dependencies")
    return groups, owner


def _unknown_node(node: str, node_names: Collection[str]) -> str:
    return f"unknown node '{node}' ({_suggest(node, node_names)}configured nodes: " \
        f"{_known(node_names)})"


def _read_resources(c: _Checker, table: Mapping[str, object],
                    owner: Mapping[str, str]) -> dict[str, ResourceConfig]:
    resources: dict[str, ResourceConfig] = {}
    for name, raw in table.items():
        key = _join("resources", name)
        c.name(name, key, "resource")
        t = c.table(raw, key, _RESOURCE_KEYS)
        if t is None:
            continue
        if name not in owner:
            c.add(key, f"resource '{name}' is in no group; add it to a group's resources, "
                  f'e.g. [groups.{name}] resources = ["{name}"]')
        monitor = c.table(t.get("monitor", {}), f"{key}.monitor", _MONITOR_KEYS) or {}
        interval = c.duration(monitor, f"{key}.monitor", "interval", 10.0)
        timeout = c.duration(monitor, f"{key}.monitor", "timeout", 20.0, positive=True)
        depth = monitor.get("depth", 0)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            c.add(f"{key}.monitor.depth", f"expected a whole number >= 0 (0, 10 or 20 for OCF "
                  f"agents), got {depth!r}")
            depth = 0
        on_fail = t.get("on_fail", "restart")
        if on_fail not in ON_FAIL_POLICIES:
            c.add(f"{key}.on_fail", f"expected one of {', '.join(ON_FAIL_POLICIES)}, got "
                  f"{on_fail!r}")
            on_fail = "restart"
        explicit = frozenset(
            [k for k in ("start_timeout", "stop_timeout") if k in t]
            + [f"monitor.{k}" for k in ("interval", "timeout") if k in monitor])
        resources[name] = ResourceConfig(
            name=name,
            type=c.string(t, key, "type", required='give the resource type, e.g. type = '
                          '"application"') or "",
            group=owner.get(name, ""),
            params=_read_params(c, t, key),
            depends_on=tuple(c.names(t, key, "depends_on")),
            monitor=MonitorConfig(interval=10.0 if interval is None else interval,
                                  timeout=timeout or 20.0, depth=depth),
            start_timeout=c.duration(t, key, "start_timeout", 20.0, positive=True) or 20.0,
            stop_timeout=c.duration(t, key, "stop_timeout", 20.0, positive=True) or 20.0,
            on_fail=str(on_fail),
            explicit=explicit,
        )
    for name, resource in resources.items():
        key = _join(_join("resources", name), "depends_on")
        for other in resource.depends_on:
            if other == name:
                c.add(key, f"resource '{name}' depends on itself; remove '{name}'")
            elif other not in resources:
                c.add(key, f"unknown resource '{other}' ({_suggest(other, resources)}"
                      f"configured resources: {_known(resources)})")
            elif resources[other].group != resource.group and resource.group:
                theirs = resources[other].group
                c.add(key, f"'{other}' is in group '{theirs}', not in '{resource.group}': a "
                      "resource depends only on resources of its own group; to start after "
                      f"the other group, set groups.{resource.group}.depends_on = ['{theirs}']")
    graph = {n: [d for d in r.depends_on if d != n and d in resources
                 and resources[d].group == r.group] for n, r in resources.items()}
    for cycle in find_cycles(graph):
        c.add(_join(_join("resources", cycle[0]), "depends_on"),
              f"resources depend on each other in a cycle: {' -> '.join(cycle)}; "
              "remove one of these dependencies")
    return resources


def _read_params(c: _Checker, t: Mapping[str, object], key: str) -> dict[str, ParamValue]:
    params: dict[str, ParamValue] = {}
    for name, value in (c.table(t.get("params", {}), f"{key}.params") or {}).items():
        if isinstance(value, str | int | float | bool):
            params[name] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            params[name] = list(value)
        else:
            c.add(_join(f"{key}.params", name), "a parameter is a string, number, boolean or "
                  f"array of strings, got {_describe(value)}")
    return params


def _as_table(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _check_cluster_rules(c: _Checker, cluster: _ClusterSection,
                         nodes: Mapping[str, NodeConfig], node_count: int
                         ) -> tuple[bool, str]:
    """Rules joining [cluster] and [nodes]; returns the effective two_node and fencer.

    ``node_count`` counts the [nodes.X] tables written, ``nodes`` those that were readable.
    """
    two_node = node_count == 2 if cluster.two_node is None else cluster.two_node
    if two_node and node_count != 2:
        c.add("cluster.two_node", f"two_node = true needs exactly 2 nodes, but {node_count} "
              "are configured; remove two_node or set it to false")
    if nodes and len(nodes) == node_count and sum(n.votes for n in nodes.values()) == 0:
        c.add("nodes", "the nodes have 0 votes in total, so no partition could ever have "
              "quorum: give at least one node votes >= 1")
    # The guardian's bound rests on the quorum lease, which a two-node cluster does not use
    # (each half is quorate alone): there the default stays "silence" (docs/fencing.md).
    fencer = cluster.fencer or ("silence" if two_node else "guardian")
    if cluster.no_quorum_policy == "freeze" and fencer == "silence":
        c.add("cluster.no_quorum_policy",
              "'freeze' cannot be used with fencer 'silence': a frozen partition keeps running "
              "its resources while the majority, trusting silence as proof that they stopped, "
              "restarts them elsewhere, so both would run at once; use no_quorum_policy = "
              "'stop', or a fencer that really powers nodes off")
    if cluster.no_quorum_policy == "freeze" and fencer == "guardian":
        c.add("cluster.no_quorum_policy",
              "'freeze' cannot be used with fencer 'guardian': the others count on the "
              "guardian to kill what a node without quorum runs; use no_quorum_policy = "
              "'stop', or a fencer that really powers nodes off")
    return two_node, fencer


def _check_fencer(c: _Checker, fencer: str | None, two_node: bool, node_names: list[str],
                  devices: Mapping[str, FenceDevice], fencing: FencingConfig) -> None:
    """Rules joining [cluster] fencer with the nodes and the fence devices."""
    if fencer == "devices":
        for node in node_names:
            if node not in fencing.levels and not any(d.can_fence(node)
                                                      for d in devices.values()):
                c.add("cluster.fencer", f"fencer 'devices' powers every lost node off through "
                      f"its fence levels, but no fence device can fence node '{node}': add a "
                      f"[fence_devices.NAME] table whose hosts list '{node}' (and, for "
                      "several, [fencing] levels), or choose another fencer")
    if two_node and fencer == "guardian":
        c.add("cluster.fencer", "fencer 'guardian' cannot protect a two-node cluster: both "
              "halves of a split keep quorum (two_node), so their leases never run out and "
              "no guardian acts; use fencer = 'devices' with a fence device for each node, or "
              "'silence' with two links between the nodes")


def validate_against_registry(
        cfg: ClusterConfig, known_types: Collection[str],
        load_errors: Mapping[str, str] | None = None) -> list[ConfigProblem]:
    """Problems for resources whose type no installed resource-type plug-in provides, or
    whose code fails to load (``load_errors``: type -> why)."""
    problems = []
    for name, resource in cfg.resources.items():
        why = (load_errors or {}).get(resource.type)
        if why is not None:
            problems.append(ConfigProblem(
                str(cfg.path), _join(_join("resources", name), "type"),
                f"type '{resource.type}' cannot be loaded: {why}"))
        elif resource.type not in known_types:
            problems.append(ConfigProblem(
                str(cfg.path), _join(_join("resources", name), "type"),
                f"unknown resource type '{resource.type}'; {_suggest(resource.type, known_types)}"
                f"known types: {_known(known_types)} (install the package providing it, or "
                "fix the type)"))
    return problems


_KEY_BYTES: Final = 32
_MIN_KEY_BYTES: Final = 16
_KEY_FILE_LIMIT: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class TypeDefaults:
    """What a resource type proposes where the file is silent (an OCF agent's meta-data)."""

    monitor: MonitorConfig
    start_timeout: float = 20.0
    stop_timeout: float = 20.0


def apply_type_defaults(
    cfg: ClusterConfig, defaults: Callable[[ResourceConfig], TypeDefaults | None]
) -> ClusterConfig:
    """``cfg`` with every timeout the file did not give taken from the resource's type.

    ``defaults`` answers None for a type that is not installed here (its values stay). Only
    keys absent from the file change, so a node without an agent and one with it agree on
    everything the operator wrote.
    """
    resources = dict(cfg.resources)
    for name, r in cfg.resources.items():
        d = defaults(r)
        if d is None:
            continue
        given = r.explicit
        monitor = MonitorConfig(
            interval=r.monitor.interval if "monitor.interval" in given else d.monitor.interval,
            timeout=r.monitor.timeout if "monitor.timeout" in given else d.monitor.timeout,
            depth=r.monitor.depth)
        resources[name] = replace(
            r, monitor=monitor,
            start_timeout=r.start_timeout if "start_timeout" in given else d.start_timeout,
            stop_timeout=r.stop_timeout if "stop_timeout" in given else d.stop_timeout)
    return replace(cfg, resources=resources)


def load_key(cfg: ClusterConfig) -> bytes:
    """The cluster's shared key (the file's bytes without a trailing newline)."""
    file = str(cfg.key_file)
    how = _how_to_make(cfg.key_file)
    try:
        key = _read_key_file(cfg.key_file)
    except _UnsafeKey as err:
        raise ConfigError([ConfigProblem(file, "cluster.key_file", str(err))]) from None
    except OSError as err:
        raise ConfigError([ConfigProblem(file, "cluster.key_file", f"cannot read the key "
                                         f"file ({err.strerror or err}): {how}")]) from None
    if key.endswith(b"\n"):
        key = key[:-1].removesuffix(b"\r")
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError([ConfigProblem(file, "cluster.key_file", f"the key is {len(key)} "
                                         f"bytes, shorter than {_MIN_KEY_BYTES}: {how}")])
    return key


class _UnsafeKey(Exception):
    pass


def _read_key_file(path: Path) -> bytes:
    """The key file's bytes; :class:`_UnsafeKey` when anyone but the user who runs Vigil
    could read or change it (whoever reads the key can forge every message)."""
    me = _user_name(os.geteuid())
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        target = os.path.realpath(path)
        raise _UnsafeKey(f"the key file is a symbolic link (to {target}): whoever may change "
                         "the link chooses the key; put the key itself there: cp "
                         f"--remove-destination {target} {path} && chmod 600 {path}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _UnsafeKey(f"not a regular file: {_how_to_make(path)}")
        if st.st_uid != os.geteuid():
            raise _UnsafeKey(f"the key file is owned by {_user_name(st.st_uid)}, not by {me} "
                             f"who runs Vigil: its owner can change it; chown {me} {path} "
                             f"&& chmod 600 {path}")
        if st.st_mode & 0o077:
            raise _UnsafeKey(f"the key file is readable or writable by group or others (mode "
                             f"{stat.S_IMODE(st.st_mode):04o}): whoever reads it can forge "
                             f"every message; chmod 600 {path}")
        return f.read(_KEY_FILE_LIMIT)


def _how_to_make(path: Path) -> str:
    return f"create one with `vigil keygen {path}` and copy it to every node"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def write_key(path: Path) -> None:
    """Write a new random key (hex, mode 0600); never overwrite (FileExistsError)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        os.fchmod(fd, 0o600)  # the umask can only take bits away, but be explicit
        out.write(secrets.token_hex(_KEY_BYTES) + "\n")


def check_file(path: str | Path) -> list[str]:
    """Problem lines for ``vigil config check``: [] when the file and its key are usable."""
    try:
        load_key(load(path))
    except ConfigError as err:
        return [str(p) for p in err.problems]
    return []


def resolve_node(cfg: ClusterConfig, node: str | None) -> str:
    """The node ``node`` names, or this machine's (its short host name) when None; raises
    :class:`UnknownNode` when the configuration has no such node."""
    name = node or socket.gethostname().split(".")[0]
    if name not in cfg.nodes:
        how = "--node NAME" if node is None else "a node name from the file"
        raise UnknownNode([ConfigProblem(
            str(cfg.path), "", f"this machine is node {name!r}, which is not in the "
            f"configuration (nodes: {', '.join(cfg.node_names)}); pass {how}")])
    return name


def member_graphs(config: ClusterConfig) -> dict[str, DependencyGraph]:
    """One graph per resource group of ``config``: its members and their ``depends_on``."""
    return {g: DependencyGraph({r: config.resources[r].depends_on for r in c.resources})
            for g, c in config.groups.items()}
