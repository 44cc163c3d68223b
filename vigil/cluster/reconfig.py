"""A configuration change, as the cluster applies it live: what may change, and what stops.

Every node holds the whole configuration, and nodes whose configurations differ keep each
other out of the cluster. A change therefore switches every member at once, in one
transition (docs/operations.md, "Changing the configuration"): each node *stages* the new
file (its shell read and checked it), and once every member of the view has staged the
same one, the master declares an epoch that places the groups under the new configuration,
stops first the groups it *retires* (removed, or their definition changed: they start
again from the new definition), and switches every member when it accepts the placement.

This module is the pure part: :func:`refusals` says what cannot change while the cluster
runs (and what to do instead), :func:`retired` which groups must stop for the change.
"""

from __future__ import annotations

from collections.abc import Mapping

from vigil.cluster.placement import stop_bound
from vigil.cluster.strategy import colocation_sets
from vigil.config import ClusterConfig, GroupConfig, ResourceConfig

__all__ = ["refusals", "resource_restarts", "retired", "summary"]

#: what an operator does with a change that cannot be applied live
RESTART_ALL = ("stop every node (`systemctl stop vigil` on each), then start them all with "
               "the new file")


def refusals(old: ClusterConfig, new: ClusterConfig) -> list[str]:
    """Why ``new`` cannot replace ``old`` while the cluster runs; [] when it can."""
    out: list[str] = []

    def same(what: str, a: object, b: object, why: str) -> None:
        if a != b:
            out.append(f"{what} changed: {why}")

    same("the cluster's name", old.name, new.name,
         "nodes of different clusters do not talk to each other; " + RESTART_ALL)
    same("key_file", old.key_file, new.key_file,
         "change the key itself with the rolling rotation of docs/security.md")
    for node in sorted(set(old.nodes) | set(new.nodes)):
        if node not in new.nodes:
            out.append(f"node {node} removed: the quorum and the links change with the "
                       f"nodes; {RESTART_ALL}")
        elif node not in old.nodes:
            out.append(f"node {node} added: the quorum and the links change with the nodes; "
                       f"{RESTART_ALL}")
        elif old.nodes[node] != new.nodes[node]:
            out.append(f"node {node} changed (addresses, links, votes or its directories): "
                       f"{RESTART_ALL}")
    for what in ("two_node", "wait_for_all", "no_quorum_policy", "fencer"):
        same(what, getattr(old, what), getattr(new, what),
             f"the quorum and the fencing rules must be the same on every node; {RESTART_ALL}")
    same("[fence_devices]", old.fence_devices, new.fence_devices, RESTART_ALL)
    same("[fencing]", old.fencing, new.fencing, RESTART_ALL)
    same("[guardian]", old.guardian, new.guardian,
         "the guardians run with the file they started with; " + RESTART_ALL)
    t0, t1 = old.timing, new.timing
    # A lost node's lease and stops bound the others' fencing waits. During a switch some
    # nodes run each file, and a master on either may have to wait for a node on the other:
    # the bounds must be the same in both (shorter leaves a node on the old file unwaited
    # for; longer, one that switched already).
    for what, before, after in (("lease_time", t0.lease_time, t1.lease_time),
                                ("fence_margin", t0.fence_margin, t1.fence_margin),
                                ("guard_time", t0.guard_time, t1.guard_time)):
        if after != before:
            out.append(f"timing.{what} changed ({before:g}s -> {after:g}s): a node lost "
                       "during the switch would be waited for by the other file's value; "
                       f"{RESTART_ALL}")
    if old.fencer == "silence":
        # The silence fencer waits for a lost node's stops (stop_bound of its own file: the
        # slowest colocation set; sets stop in parallel). A node lost during the switch may
        # run the other file: every group both files know, which the waiting master may
        # start elsewhere, must stop there within this file's bound. (The guardian fencer
        # waits for the guardian, whatever the stop timeouts.)
        for first, second, when in ((old, new, "before"), (new, old, "after")):
            sets, bound = _set_stops(first), stop_bound(second)
            slow = sorted(g for g in second.groups if sets.get(g, 0.0) > bound)
            if slow:
                out.append(f"stop timeouts changed: {', '.join(slow)} took up to "
                           f"{sets[slow[0]]:g}s to stop {when} the change, but a master on "
                           f"the {'new' if when == 'before' else 'old'} file waits "
                           f"{bound:g}s for a lost node's stops (the silence fencer); a "
                           f"node lost during the switch may run the other file; "
                           f"{RESTART_ALL} (a new group of its own may have any stop "
                           "timeout)")
                break
    mirrors = sorted({r for c in (old, new) for r, rc in c.resources.items()
                      if rc.type == "mirror"})
    for r in mirrors:
        if old.resources.get(r) != new.resources.get(r):
            out.append(f"mirror resource {r} added, removed or changed: its replication "
                       f"runs beside the daemon; {RESTART_ALL}")
    return out


def _set_stops(config: ClusterConfig) -> dict[str, float]:
    """Group -> how long the groups tied to it by ``depends_on`` take to stop on one node
    (one after the other; the sets stop in parallel: placement.stop_bound is the largest)."""
    out: dict[str, float] = {}
    for groups in colocation_sets(config):
        total = sum(config.resources[r].stop_timeout for g in groups
                    for r in config.groups[g].resources)
        out.update(dict.fromkeys(groups, total))
    return out


def resource_restarts(a: ResourceConfig | None, b: ResourceConfig | None) -> bool:
    """Whether a resource must stop and start again to take its new definition (monitor
    settings, timeouts and on_fail apply to the next operation: no restart)."""
    if a is None or b is None:
        return a is not b
    return not a.same_instance(b)


def _group_restarts(old: ClusterConfig, new: ClusterConfig, a: GroupConfig,
                    b: GroupConfig) -> bool:
    if (a.resources, a.depends_on) != (b.resources, b.depends_on):
        return True
    return any(resource_restarts(old.resources.get(r), new.resources.get(r))
               for r in a.resources)


def retired(old: ClusterConfig, new: ClusterConfig) -> dict[str, str]:
    """Groups of ``old`` that must be out of service before the switch -> why: removed,
    their members' definition changed, or they depend on such a group (a dependent runs
    only on top of what it depends on). Placement settings (stickiness, preferences,
    thresholds) change nothing that runs: those groups stay."""
    out: dict[str, str] = {}
    for g, a in old.groups.items():
        b = new.groups.get(g)
        if b is None:
            out[g] = "removed from the configuration"
        elif _group_restarts(old, new, a, b):
            out[g] = "its definition changed: it starts again from the new one"
    dependents: Mapping[str, list[str]] = {
        g: sorted(d for d, c in old.groups.items() if g in c.depends_on) for g in old.groups}
    todo = list(out)
    while todo:
        g = todo.pop()
        for d in dependents[g]:
            if d not in out:
                out[d] = f"depends on {g}, which stops for the change"
                todo.append(d)
    return out


def summary(old: ClusterConfig, new: ClusterConfig) -> str:
    """One line for people: what the change does to the groups."""
    added = sorted(set(new.groups) - set(old.groups))
    gone = retired(old, new)
    removed = sorted(g for g in gone if g not in new.groups)
    restarted = sorted(g for g in gone if g in new.groups)
    parts = ([f"adds {', '.join(added)}"] if added else []) + (
        [f"removes {', '.join(removed)}"] if removed else []) + (
        [f"restarts {', '.join(restarted)}"] if restarted else [])
    return "; ".join(parts) or "no group stops"
