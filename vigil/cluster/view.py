"""What a core shows: the typed status tree.

:func:`build_status` is the one function that builds :class:`vigil.status.ClusterStatus`, from
the core's state and what the shell observed of the resources here (:class:`ResourceFacts`).
`vigil status`, ``--json``, /ha and the Python API all read what it builds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from vigil.cluster.local import ACTIVE
from vigil.cluster.mirrors import max_lag, mirror_resources
from vigil.cluster.node import NodeCore
from vigil.cluster.wire import fmt_epoch
from vigil.status import (
    ClusterEvent,
    ClusterStatus,
    ConfigState,
    CopyStatus,
    FailedAction,
    FenceDeviceStatus,
    FenceEvent,
    FencingStatus,
    GroupStatus,
    LinkStatus,
    MirrorStatus,
    NicStatus,
    NodeStatus,
    Operation,
    PeerLink,
    ResourceStatus,
    Transition,
)


@dataclass(frozen=True, slots=True)
class LinkFacts:
    """What one of this node's links said of itself (its LinkActor tells it once it is bound,
    then whenever it changes)."""

    link: str
    #: peer -> our connection to it on this link: connected, connecting, waiting (to retry);
    #: a peer left out: the transport does not say
    connections: Mapping[str, str] = field(default_factory=dict)
    rejected: Mapping[str, int] = field(default_factory=dict)  # reason -> dropped on it
    cut: int = 0  # connections to its listening socket cut (not yet authenticated, too many)


@dataclass(frozen=True, slots=True)
class ResourceFacts:
    """What the shell saw of the resources on this node."""

    states: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # -> (state, reason)
    last_failure: Mapping[str, Operation] = field(default_factory=dict)
    last_diagnostic: Mapping[str, Operation] = field(default_factory=dict)
    messages: Mapping[str, int] = field(default_factory=dict)  # the codec's counters
    #: fence device -> what its last monitor here found (devices never monitored: absent)
    fence_devices: Mapping[str, FenceDeviceStatus] = field(default_factory=dict)
    nics: Mapping[str, NicStatus] = field(default_factory=dict)  # as the NIC monitors say
    #: link -> what it last said of itself; a link left out is not bound (yet)
    links: Mapping[str, LinkFacts] = field(default_factory=dict)
    #: link -> why the NIC that carries it is down, as its NIC monitor believes (no carrier,
    #: ...): the link is down whatever is heard on it
    nic_down: Mapping[str, str] = field(default_factory=dict)


def _core_time(t: float) -> str:
    return f"{t:.3f}"


def build_status(core: NodeCore, facts: ResourceFacts | None = None, *,
                 wall: Callable[[float], str] = _core_time,
                 unix_now: float | None = None) -> ClusterStatus:
    """The cluster as ``core`` sees it; ``wall`` turns core times into what people read;
    ``unix_now`` (the wall clock, Unix seconds) dates the copies of mirrored data."""
    facts = facts or ResourceFacts()
    config = core.config
    alive = core.alive()
    accepted = core.accepted
    membership = core.membership
    active: dict[str, dict[str, str]] = {}
    for node, peer in membership.peers.items():
        if node in alive:
            for g, state in peer.groups.items():
                active.setdefault(g, {})[node] = state
    for g, s in core.local.items():
        if s in ACTIVE:
            active.setdefault(g, {})[core.name] = s.value
    fail_counts = core.fail_counts()
    failed_actions = _failed_actions(core, fail_counts, wall)
    failed_here = {a.resource: a.fail_count for a in failed_actions if a.node == core.name}
    groups: dict[str, GroupStatus] = {}
    for g, gc in config.groups.items():
        where = active.get(g, {})
        holder: str | None = None
        state = "stopped" if not where else "conflict"
        if len(where) == 1:
            holder, state = next(iter(where.items()))
        groups[g] = GroupStatus(node=holder, state=state, placed=accepted.placement.get(g),
                                active_on=dict(sorted(where.items())),
                                resources=tuple(gc.resources), fail_count=fail_counts.get(g, 0))
    disabled = {r: ("force_oos" if force else "oo_service")
                for r, force in sorted(accepted.disabled().items())}
    layout = core.groups
    left_out = {d: r for r in disabled if r in layout.resource_dependents
                for d in (r, *layout.resource_dependents[r])}
    resources: dict[str, ResourceStatus] = {}
    for r in layout.start_order:
        rc = config.resources[r]
        holder = groups[rc.group].node
        if holder == core.name:
            state, reason = facts.states.get(r, ("UNKNOWN", "not yet probed"))
        elif holder is not None and r in left_out:
            state, reason = "OOS", f"{left_out[r]} taken out of service by hand"
        elif holder is not None:
            state, reason = "IN_SERVICE", f"reported by {holder}"
        else:
            local, reason = facts.states.get(r, ("UNKNOWN", "not yet probed"))
            state = local if local in ("FAILED", "UNCLEAN") else "OOS"
        resources[r] = ResourceStatus(
            group=rc.group, type=rc.type, service_state=state,
            provided_by=holder if state == "IN_SERVICE" else None, reason=reason,
            depends_on=tuple(rc.depends_on), dependents=layout.direct_dependents[r],
            by_hand=disabled.get(r), on_fail=rc.on_fail,
            fail_count=failed_here.get(r, 0), last_failure=facts.last_failure.get(r),
            last_diagnostic=facts.last_diagnostic.get(r))
    links = _links(core, facts)
    nodes = {n: NodeStatus(state="online" if n in alive else "offline",
                           standby=n in accepted.admin,
                           links={name: v.peers[n].up for name, v in links.items()
                                  if n in v.peers})
             for n in config.node_names}
    nodes[core.name] = NodeStatus(state="online", standby=core.name in accepted.admin,
                                  links={name: v.up for name, v in links.items()})
    rnd = core.master.round
    fencing = core.fencing
    pending = fencing.pending()
    if rnd is not None and rnd.epoch == core.promised:
        for target in sorted(set(rnd.held.values()) - set(pending)):
            pending[target] = fencing.waiting(target)
    fence_status = FencingStatus(
        pending=pending,
        history=tuple(FenceEvent(at=wall(e.at), requester=e.requester, target=e.target,
                                 level=e.level, devices=e.devices, result=e.result,
                                 duration=round(e.duration, 3), detail=e.detail)
                      for e in fencing.history[-20:]),
        devices={d: facts.fence_devices.get(d, FenceDeviceStatus(
            state="unknown", reason="not monitored yet" if dc.monitor_interval > 0 else
            "monitor_interval is 0: never monitored", checked="", hosts=dc.hosts))
                 for d, dc in sorted(config.fence_devices.items())})
    return ClusterStatus(
        cluster=config.name, node=core.name, epoch=fmt_epoch(core.promised),
        accepted=fmt_epoch(accepted.epoch), closed=core.closed,
        master=core.promised[1] or None, quorate=core.quorate(),
        quorum=membership.quorum.describe(alive), lease_valid=core.lease_valid(),
        members=tuple(core.promise.view), alive=tuple(sorted(alive)),
        transition=(None if rnd is None or rnd.epoch != core.promised else
                    Transition(phase=rnd.phase.value, reason=rnd.reason)),
        maintenance=accepted.maintenance, standby=tuple(accepted.standby(config.nodes)),
        disabled=disabled, nodes=nodes, groups=groups, resources=resources,
        local={g: s.value for g, s in core.local.items()}, fail_counts=fail_counts,
        mismatched=tuple(sorted(membership.mismatched)), dropped=core.dropped,
        messages=dict(facts.messages),
        decisions=tuple((wall(t), text) for t, text in core.decisions[-20:]),
        fencing=fence_status, nics=dict(facts.nics), links=links,
        mirrors=_mirrors(core, groups, unix_now),
        configs={core.name: ConfigState(config.digest, membership.next), **{
            n: ConfigState(p.digest, p.next) for n, p in sorted(membership.peers.items())
            if n in alive}},
        failed_actions=failed_actions,
        events=tuple(ClusterEvent(at=wall(n.time), node=n.node, kind=n.kind, text=n.text)
                     for n in list(core.history.recent)[-20:]))


def _failed_actions(core: NodeCore, fail_counts: Mapping[str, int],
                    wall: Callable[[float], str]) -> tuple[FailedAction, ...]:
    """The last failure of each resource on each node since its group's cleanup. The fail
    count of one of this node's is the group's now (a failure_timeout may have lowered
    it); another node's, as that node said with the failure."""
    groups = core.config.groups
    return tuple(
        FailedAction(node=n.node, group=n.group, resource=n.resource, op=n.op,
                     at=wall(n.time), reason=n.reason,
                     fail_count=(fail_counts.get(n.group, 0) if n.node == core.name
                                 else n.fail_count),
                     threshold=groups[n.group].migration_threshold)
        for n in core.history.failed.values() if n.group in groups)


def _mirrors(core: NodeCore, groups: Mapping[str, GroupStatus],
             unix_now: float | None) -> dict[str, MirrorStatus]:
    """Each mirror resource: this node's copy and what it holds aside; on the source (the
    group runs here), how far each other node's copy is behind."""
    out = {}
    for r in mirror_resources(core.config):
        rc = core.config.resources[r]
        source = groups[rc.group].node
        state = core.mirrors.get(r)
        fact = state.copy if state is not None else None
        lag = core.mirror_lags.get(r)
        out[r] = MirrorStatus(
            group=rc.group, source=source, max_lag=max_lag(rc),
            copy=None if fact is None else CopyStatus(
                seq=fact.seq, source=fact.source, taken=fact.taken, live=fact.live,
                age=None if unix_now is None else round(max(0.0, unix_now - fact.taken), 3)),
            aside=state.aside if state is not None else (),
            lags=dict(sorted(lag.lags.items())) if lag is not None and source == core.name
            else {})
    return out


def _links(core: NodeCore, facts: ResourceFacts) -> dict[str, LinkStatus]:
    """This node's links: each peer on each, and each link's own state."""
    config, membership = core.config, core.membership
    dead_time = config.timing.dead_time
    peers: dict[str, dict[str, PeerLink]] = {}
    for link in config.nodes[core.name].links:
        seen = facts.links.get(link.name)
        on_link = peers[link.name] = {}
        for n in config.node_names:
            if n == core.name or all(c.name != link.name for c in config.nodes[n].links):
                continue
            ago = membership.link_silent_for(n, link.name)
            on_link[n] = PeerLink(
                up=ago < dead_time, heard_ago=round(ago, 3) if ago < math.inf else None,
                connection=seen.connections.get(n, "unknown") if seen else "unknown")
    heard_on = [name for name, ps in peers.items() if any(p.up for p in ps.values())]
    out = {}
    for name, ps in peers.items():
        seen = facts.links.get(name)
        up, why = own_link_state(ps, [h for h in heard_on if h != name], bound=seen is not None,
                                 nic_down=facts.nic_down.get(name, ""))
        out[name] = LinkStatus(up=up, why=why, peers=ps,
                               rejected=dict(sorted(seen.rejected.items())) if seen else {},
                               cut=seen.cut if seen else 0)
    return out


def own_link_state(peers: Mapping[str, PeerLink], heard_elsewhere: Sequence[str], *,
                   bound: bool, nic_down: str = "") -> tuple[bool, str]:
    """Whether one of this node's links is up, and why: up while some peer is heard on it;
    down while none is but some peer is heard on another link (``heard_elsewhere``: those
    links), as that is the link that fails; with no peer heard anywhere (a cluster of one, or
    every peer gone), up when its socket is ``bound``. ``nic_down`` (why its NIC is down, from
    a NIC monitor) makes it down whatever is heard."""
    if nic_down:
        return False, nic_down
    heard = [p for p, v in peers.items() if v.up]
    if heard:
        return True, f"{', '.join(heard)} heard on it"
    if heard_elsewhere:
        return False, f"no peer heard on it, while heard on {', '.join(heard_elsewhere)}"
    if not bound:
        return False, "its socket is not bound (the link is starting, or failed: see the log)"
    if not peers:
        return True, "bound (no peer on this link)"
    return True, "bound; no peer is heard on any link"
