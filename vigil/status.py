"""The status of a cluster as one node sees it: one frozen, typed tree.

One pure function builds it from the core's state and the shell's observations
(:func:`vigil.cluster.view.build_status`); `vigil status`, ``--json``, /ha and
:class:`vigil.api.Client` all read this same tree. ``to_json()`` is the documented JSON
(docs/api.md, "The status tree"), and ``from_json()`` reads it back, so a client process gets
the typed tree from the control socket without importing the daemon.

This module imports nothing else of Vigil: it is part of the base layer.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def seconds(value: float) -> str:
    """A span of seconds as status and decisions write it: ``0.8 s``, ``45 s``."""
    return f"{round(value, 1):g} s"


def iso_time(unix: float) -> str:
    """A wall-clock time (Unix seconds) as JSON carries it: ISO 8601 with date and offset,
    ``2026-12-01T17:40:12.345+00:00`` (the local zone)."""
    return datetime.datetime.fromtimestamp(unix).astimezone().isoformat(timespec="milliseconds")


def parse_time(text: str) -> float | None:
    """The Unix time of an ISO 8601 time with an offset (as :func:`iso_time` writes it);
    None for anything else (an older daemon's ``HH:MM:SS``)."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


def local_time(text: str) -> str:
    """An ISO time as a person reads it, in this machine's zone: ``2026-12-01 17:40:12``
    (anything else unchanged)."""
    unix = parse_time(text)
    if unix is None:
        return text
    return datetime.datetime.fromtimestamp(unix).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """The last failure or the last diagnostic of a resource on this node."""

    ok: bool
    op: str
    state: str
    reason: str
    at: str  # wall-clock time, ISO 8601 with offset (:func:`iso_time`)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "op": self.op, "state": self.state, "reason": self.reason,
                "at": self.at}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Operation | None:
        if not data:
            return None
        return cls(ok=bool(data["ok"]), op=str(data["op"]), state=str(data["state"]),
                   reason=str(data["reason"]), at=str(data["at"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    state: str  # online, offline
    standby: bool
    #: link -> up: for a peer, heard on that link within dead_time; for this node, its own
    #: link's state (``ClusterStatus.links``)
    links: Mapping[str, bool]


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerLink:
    """One peer on one of this node's links."""

    up: bool  # heard on this link within dead_time
    heard_ago: float | None  # seconds since it was last heard on this link; None: never
    #: our connection to the peer on this link (the socket this node reads it with):
    #: "connected", "connecting", "waiting" (to retry), or "unknown" (the link does not say)
    connection: str

    def to_json(self) -> dict[str, Any]:
        return {"up": self.up, "heard_ago": self.heard_ago, "connection": self.connection}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PeerLink:
        ago = data["heard_ago"]
        return cls(up=bool(data["up"]), heard_ago=None if ago is None else float(ago),
                   connection=str(data["connection"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkStatus:
    """One of this node's links (docs/operations.md, "02:10 — a heartbeat link goes down")."""

    up: bool
    why: str  # what made it up or down, in words
    peers: Mapping[str, PeerLink]  # every peer with this link
    rejected: Mapping[str, int]  # reason -> messages that arrived on it and were dropped
    cut: int  # connections to its listening socket cut (too many not yet authenticated)

    def to_json(self) -> dict[str, Any]:
        return {"up": self.up, "why": self.why,
                "peers": {p: v.to_json() for p, v in self.peers.items()},
                "rejected": dict(self.rejected), "cut": self.cut}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LinkStatus:
        return cls(up=bool(data["up"]), why=str(data["why"]),
                   peers={str(p): PeerLink.from_json(v) for p, v in data["peers"].items()},
                   rejected={str(r): int(n) for r, n in data["rejected"].items()},
                   cut=int(data["cut"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class NicStatus:
    """One NIC of the answering node, as its NIC monitor believes it."""

    state: str  # up, down
    reason: str
    since: str  # wall-clock time of the last change, ISO 8601

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "since": self.since}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NicStatus:
        return cls(state=str(data["state"]), reason=str(data["reason"]),
                   since=str(data["since"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyStatus:
    """The answering node's newest complete copy of a mirror resource's data."""

    seq: int  # the snapshot's number along its history
    source: str  # the node that took it
    taken: float  # when (Unix seconds, the source's clock)
    age: float | None  # seconds since then, on the answering node's clock; None: unknown
    live: bool  # the data is in service here (this node is the source)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "source": self.source, "taken": self.taken, "age": self.age,
                "live": self.live}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> CopyStatus | None:
        if data is None:
            return None
        age = data["age"]
        return cls(seq=int(data["seq"]), source=str(data["source"]),
                   taken=float(data["taken"]), age=None if age is None else float(age),
                   live=bool(data["live"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorStatus:
    """A mirror resource as the answering node sees it (docs/resources.md, "mirror")."""

    group: str
    source: str | None  # where its data is in service (the group's node), if anywhere
    max_lag: float  # seconds
    copy: CopyStatus | None  # this node's newest copy; None: it has none
    aside: tuple[str, ...]  # what this node holds set aside (diverged snapshots, old data)
    #: on the source only: each other node -> seconds its copy is behind (None: it has no
    #: copy of this history, or cannot be reached)
    lags: Mapping[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "source": self.source, "max_lag": self.max_lag,
                "copy": None if self.copy is None else self.copy.to_json(),
                "aside": list(self.aside), "lags": dict(self.lags)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MirrorStatus:
        return cls(group=str(data["group"]), source=data["source"],
                   max_lag=float(data["max_lag"]), copy=CopyStatus.from_json(data["copy"]),
                   aside=tuple(str(a) for a in data["aside"]),
                   lags={str(n): None if v is None else float(v)
                         for n, v in data["lags"].items()})


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupStatus:
    node: str | None  # where it is active, as far as this node knows
    state: str  # its local state there, "stopped", or "conflict" (active on several)
    placed: str | None  # where the accepted placement puts it
    active_on: Mapping[str, str]  # node -> local state, for every node where it is active
    resources: tuple[str, ...]
    fail_count: int  # on this node


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceStatus:
    group: str
    type: str
    service_state: str  # IN_SERVICE, OOS, FAILED, UNCLEAN, UNKNOWN, ...
    provided_by: str | None
    reason: str
    depends_on: tuple[str, ...]
    dependents: tuple[str, ...]
    by_hand: str | None  # "oo_service" / "force_oos" when taken out of service by hand
    on_fail: str
    #: its group's fail count on this node after its last failure here (as the line of
    #: ``ClusterStatus.failed_actions`` says), 0 when it has none here
    fail_count: int
    last_failure: Operation | None
    last_diagnostic: Operation | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    phase: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FenceEvent:
    """One entry of the fencing history: a level run on a node, a time-based wait over, or
    an operator's confirmation that a node is off."""

    at: str  # when it ended (wall clock, ISO 8601)
    requester: str  # the node that asked (the master), or "operator via NODE"
    target: str
    level: int  # 1 for the first of the node's levels; 0: no device (a wait, an operator)
    devices: tuple[str, ...]
    result: str  # "off", "failed", "no answer", "confirmed off", "waited out"
    duration: float  # seconds
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "requester": self.requester, "target": self.target,
                "level": self.level, "devices": list(self.devices), "result": self.result,
                "duration": self.duration, "detail": self.detail}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FenceEvent:
        return cls(at=str(data["at"]), requester=str(data["requester"]),
                   target=str(data["target"]), level=int(data["level"]),
                   devices=tuple(data["devices"]), result=str(data["result"]),
                   duration=float(data["duration"]), detail=str(data["detail"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedAction:
    """The last failure of a resource (or of a group's start) on one node of the cluster, as
    crm_mon's "Failed Resource Actions": heard from that node, kept until a cleanup."""

    node: str
    group: str
    resource: str  # "" when the group failed as a whole (a start that failed)
    op: str  # monitor, start, stop
    at: str  # wall clock, ISO 8601
    reason: str
    fail_count: int  # the group's fail count on ``node`` after this failure
    threshold: int  # its migration_threshold

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "group": self.group, "resource": self.resource,
                "op": self.op, "at": self.at, "reason": self.reason,
                "fail_count": self.fail_count, "threshold": self.threshold}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FailedAction:
        return cls(node=str(data["node"]), group=str(data["group"]),
                   resource=str(data["resource"]), op=str(data["op"]), at=str(data["at"]),
                   reason=str(data["reason"]), fail_count=int(data["fail_count"]),
                   threshold=int(data["threshold"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterEvent:
    """A significant event of any node (failures, fencing, transitions and their reasons,
    operators' requests), as this node recorded or heard it."""

    at: str  # wall clock, ISO 8601
    node: str  # where it happened
    kind: str  # the notification's kind
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "node": self.node, "kind": self.kind, "text": self.text}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClusterEvent:
        return cls(at=str(data["at"]), node=str(data["node"]), kind=str(data["kind"]),
                   text=str(data["text"]))


@dataclass(frozen=True, slots=True, kw_only=True)
class FenceDeviceStatus:
    """A fence device as this node's periodic ``monitor`` of it found it."""

    state: str  # "ok", "failed", or "unknown" (not monitored yet, or monitor_interval 0)
    reason: str
    checked: str  # when (wall clock, ISO 8601), "" if never
    hosts: tuple[str, ...]  # the nodes it can fence


@dataclass(frozen=True, slots=True, kw_only=True)
class FencingStatus:
    """Fencing as this node saw it: what it waits for now (as master), what it ran or
    asked for lately, and the state of every fence device."""

    pending: Mapping[str, str] = field(default_factory=dict)  # node -> what it waits for
    history: tuple[FenceEvent, ...] = ()  # oldest first
    devices: Mapping[str, FenceDeviceStatus] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"pending": dict(self.pending), "history": [e.to_json() for e in self.history],
                "devices": {n: {"state": d.state, "reason": d.reason, "checked": d.checked,
                                "hosts": list(d.hosts)} for n, d in self.devices.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> FencingStatus:
        if not data:
            return cls()
        return cls(pending={str(k): str(v) for k, v in data.get("pending", {}).items()},
                   history=tuple(FenceEvent.from_json(e) for e in data.get("history", [])),
                   devices={str(n): FenceDeviceStatus(
                       state=str(d["state"]), reason=str(d["reason"]),
                       checked=str(d["checked"]), hosts=tuple(d["hosts"]))
                       for n, d in data.get("devices", {}).items()})


@dataclass(frozen=True, slots=True)
class ConfigState:
    digest: str  # of the configuration a node runs
    staged: str = ""  # of the one it staged to switch to


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterStatus:
    cluster: str
    node: str  # the node that answered
    epoch: str
    accepted: str
    closed: bool
    master: str | None
    quorate: bool
    quorum: str
    lease_valid: bool
    members: tuple[str, ...]
    alive: tuple[str, ...]
    transition: Transition | None
    maintenance: bool
    standby: tuple[str, ...]
    disabled: Mapping[str, str]  # resource -> oo_service / force_oos
    nodes: Mapping[str, NodeStatus]
    groups: Mapping[str, GroupStatus]
    resources: Mapping[str, ResourceStatus]  # in start order
    local: Mapping[str, str]  # group -> its state on this node
    fail_counts: Mapping[str, int]  # group -> failures on this node
    mismatched: tuple[str, ...]
    dropped: int
    messages: Mapping[str, int] = field(default_factory=dict)  # the codec's counters
    decisions: tuple[tuple[str, str], ...] = ()  # (when, why), newest last
    fencing: FencingStatus = field(default_factory=FencingStatus)
    nics: Mapping[str, NicStatus] = field(default_factory=dict)  # this node's NICs
    #: this node's links (its own; ``nodes[NODE].links`` has each peer's as seen from here)
    links: Mapping[str, LinkStatus] = field(default_factory=dict)
    mirrors: Mapping[str, MirrorStatus] = field(default_factory=dict)  # mirror resource ->
    #: the configuration each node runs and has staged ("" none), as heard here (this node
    #: included): a change under way shows who has not staged it yet
    configs: Mapping[str, ConfigState] = field(default_factory=dict)
    #: the last failure of each resource on each node, cluster-wide, oldest first
    failed_actions: tuple[FailedAction, ...] = ()
    #: the cluster's recent significant events, every node's, oldest first
    events: tuple[ClusterEvent, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster, "node": self.node, "epoch": self.epoch,
            "accepted": self.accepted, "closed": self.closed, "master": self.master,
            "quorate": self.quorate, "quorum": self.quorum, "lease_valid": self.lease_valid,
            "members": list(self.members), "alive": list(self.alive),
            "transition": (None if self.transition is None else
                           {"phase": self.transition.phase, "reason": self.transition.reason}),
            "maintenance": self.maintenance, "standby": list(self.standby),
            "disabled": dict(self.disabled),
            "nodes": {n: {"state": v.state, "standby": v.standby, "links": dict(v.links)}
                      for n, v in self.nodes.items()},
            "groups": {g: {"node": v.node, "state": v.state, "placed": v.placed,
                           "active_on": dict(v.active_on), "resources": list(v.resources),
                           "fail_count": v.fail_count} for g, v in self.groups.items()},
            "resources": {r: {"node": v.provided_by, "provided_by": v.provided_by,
                              "group": v.group, "type": v.type, "state": v.service_state,
                              "service_state": v.service_state, "reason": v.reason,
                              "depends_on": list(v.depends_on),
                              "dependents": list(v.dependents), "by_hand": v.by_hand,
                              "on_fail": v.on_fail, "fail_count": v.fail_count,
                              "last_failure": _op(v.last_failure),
                              "last_diagnostic": _op(v.last_diagnostic)}
                          for r, v in self.resources.items()},
            "local": dict(self.local), "fail_counts": dict(self.fail_counts),
            "mismatched": list(self.mismatched), "dropped": self.dropped,
            "messages": dict(self.messages), "decisions": [list(d) for d in self.decisions],
            "fencing": self.fencing.to_json(),
            "nics": {n: v.to_json() for n, v in self.nics.items()},
            "links": {name: v.to_json() for name, v in self.links.items()},
            "mirrors": {r: v.to_json() for r, v in self.mirrors.items()},
            "configs": {n: {"digest": v.digest, "staged": v.staged}
                        for n, v in self.configs.items()},
            "failed_actions": [a.to_json() for a in self.failed_actions],
            "events": [e.to_json() for e in self.events],
        }

    def config_line(self) -> str:
        """One line on a configuration change under way ("" when there is none)."""
        mine = self.configs.get(self.node)
        staged = {v.staged for v in self.configs.values()} - {""}
        if mine is None or not staged:
            return ""
        target = mine.staged or sorted(staged)[0]
        missing = sorted(n for n, v in self.configs.items()
                         if v.staged != target and v.digest != target)
        return (f"configuration {target[:12]} staged; the cluster switches once every node "
                "has staged it" + (f" (not yet: {', '.join(missing)})" if missing else ""))

    def links_down(self) -> str:
        """The links down as the node that answered sees them, in one line ("" if none): per
        link, whether it is down on this node itself, and the pairs of nodes that do not hear
        each other on it (this node and each online peer it does not hear there), e.g.
        ``lan1 (n1-n3)`` or ``lan1 on n3, this node (n3-n1, n3-n2); lan0 (n3-n2)``."""
        parts = []
        for name, link in self.links.items():
            pairs = [f"{self.node}-{peer}" for peer, v in link.peers.items()
                     if not v.up and peer in self.nodes and self.nodes[peer].state == "online"]
            if link.up and not pairs:
                continue
            where = "" if link.up else f" on {self.node}, this node"
            parts.append(f"{name}{where}" + (f" ({', '.join(pairs)})" if pairs else ""))
        return "; ".join(parts)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClusterStatus:
        """Raises KeyError/TypeError/ValueError for data that is not a status tree."""
        t = data.get("transition")
        return cls(
            cluster=str(data["cluster"]), node=str(data["node"]), epoch=str(data["epoch"]),
            accepted=str(data["accepted"]), closed=bool(data["closed"]),
            master=data["master"], quorate=bool(data["quorate"]), quorum=str(data["quorum"]),
            lease_valid=bool(data["lease_valid"]), members=tuple(data["members"]),
            alive=tuple(data["alive"]),
            transition=None if t is None else Transition(phase=t["phase"], reason=t["reason"]),
            maintenance=bool(data["maintenance"]), standby=tuple(data["standby"]),
            disabled=dict(data["disabled"]),
            nodes={n: NodeStatus(state=v["state"], standby=bool(v["standby"]),
                                 links=dict(v["links"])) for n, v in data["nodes"].items()},
            groups={g: GroupStatus(node=v["node"], state=v["state"], placed=v["placed"],
                                   active_on=dict(v["active_on"]),
                                   resources=tuple(v["resources"]),
                                   fail_count=int(v["fail_count"]))
                    for g, v in data["groups"].items()},
            resources={r: ResourceStatus(
                group=v["group"], type=v["type"], service_state=v["service_state"],
                provided_by=v["provided_by"], reason=v["reason"],
                depends_on=tuple(v["depends_on"]), dependents=tuple(v["dependents"]),
                by_hand=v["by_hand"], on_fail=v["on_fail"], fail_count=int(v["fail_count"]),
                last_failure=Operation.from_json(v["last_failure"]),
                last_diagnostic=Operation.from_json(v["last_diagnostic"]))
                for r, v in data["resources"].items()},
            local=dict(data["local"]), fail_counts=dict(data["fail_counts"]),
            mismatched=tuple(data["mismatched"]), dropped=int(data["dropped"]),
            messages=dict(data.get("messages", {})),
            decisions=tuple((str(w), str(t)) for w, t in data.get("decisions", [])),
            fencing=FencingStatus.from_json(data.get("fencing")),
            nics={n: NicStatus.from_json(v) for n, v in data.get("nics", {}).items()},
            links={str(name): LinkStatus.from_json(v)
                   for name, v in data.get("links", {}).items()},
            mirrors={str(r): MirrorStatus.from_json(v)
                     for r, v in data.get("mirrors", {}).items()},
            configs={str(n): ConfigState(str(v["digest"]), str(v["staged"]))
                     for n, v in data.get("configs", {}).items()},
            failed_actions=tuple(FailedAction.from_json(a)
                                 for a in data.get("failed_actions", [])),
            events=tuple(ClusterEvent.from_json(e) for e in data.get("events", [])),
        )


def _op(op: Operation | None) -> dict[str, Any] | None:
    return None if op is None else op.to_json()
