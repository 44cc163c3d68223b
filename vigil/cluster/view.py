"""What a core shows: the typed status tree.

:func:`build_status` is the one function that builds :class:`vigil.status.ClusterStatus`, from
the core's state and what the shell observed of the resources here (:class:`ResourceFacts`).
`vigil status`, ``--json``, /ha and the Python API all read what it builds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from vigil.cluster.local import ACTIVE
from vigil.cluster.node import NodeCore
from vigil.cluster.wire import fmt_epoch
from vigil.status import (
    ClusterStatus,
    FenceDeviceStatus,
    FenceEvent,
    FencingStatus,
    GroupStatus,
    NicStatus,
    NodeStatus,
    Operation,
    ResourceStatus,
    Transition,
)


@dataclass(frozen=True, slots=True)
class ResourceFacts:
    """What the shell saw of the resources on this node."""

    states: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # -> (state, reason)
    fail_counts: Mapping[str, int] = field(default_factory=dict)
    last_failure: Mapping[str, Operation] = field(default_factory=dict)
    last_diagnostic: Mapping[str, Operation] = field(default_factory=dict)
    messages: Mapping[str, int] = field(default_factory=dict)  # the codec's counters
    #: fence device -> what its last monitor here found (devices never monitored: absent)
    fence_devices: Mapping[str, FenceDeviceStatus] = field(default_factory=dict)
    nics: Mapping[str, NicStatus] = field(default_factory=dict)  # as the NIC monitors say


def _core_time(t: float) -> str:
    return f"{t:.3f}"


def build_status(core: NodeCore, facts: ResourceFacts | None = None, *,
                 wall: Callable[[float], str] = _core_time) -> ClusterStatus:
    """The cluster as ``core`` sees it; ``wall`` turns core times into what people read."""
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
            fail_count=facts.fail_counts.get(r, 0), last_failure=facts.last_failure.get(r),
            last_diagnostic=facts.last_diagnostic.get(r))
    links = membership.link_state()
    nodes = {n: NodeStatus(state="online" if n in alive else "offline",
                           standby=n in accepted.admin, links=links.get(n, {}))
             for n in config.node_names}
    # This node's own links are up when some peer is heard on them.
    own = {link.name: any(v.get(link.name, False) for v in links.values())
           for link in config.nodes[core.name].links}
    nodes[core.name] = NodeStatus(state="online", standby=core.name in accepted.admin,
                                  links=own)
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
        fencing=fence_status, nics=dict(facts.nics))
