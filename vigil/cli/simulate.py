"""`vigil simulate`: what the cluster would do, computed by the real protocol code (every node's
:class:`~vigil.cluster.node.NodeCore`) over the simulated clock and network.

The events apply in the order given; the start is the configuration file's cluster with every
node up, or (``--live``) the running cluster's state as a daemon reports it (:class:`Live`);
``--show-costs`` adds each group's cost on each node and why, in the strategy's words
(:meth:`~vigil.cluster.strategy.Strategy.explain_costs`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vigil.actors.strategies import load_strategy
from vigil.cluster.events import AdminRequest
from vigil.cluster.placement import stop_bound
from vigil.cluster.sim import SimCluster
from vigil.config import ClusterConfig
from vigil.status import ClusterStatus

#: The kinds of event, as the command line names them (its options are --KIND).
EVENT_KINDS = ("node-down", "node-up", "resource-fail", "partition", "heal")


class SimulateError(ValueError):
    pass


@dataclass(frozen=True)
class Live:
    """The running cluster's state that the simulation starts from (``--live``)."""

    node: str  # whose daemon said so
    online: frozenset[str]
    standby: frozenset[str]
    disabled: Mapping[str, str]  # resource -> "oo_service" / "force_oos"
    maintenance: bool
    placement: Mapping[str, str | None]  # group -> the node where it runs
    fail_counts: Mapping[str, int]  # group -> failures on ``node`` (what it knows)

    @classmethod
    def of(cls, st: ClusterStatus) -> Live:
        return cls(node=st.node,
                   online=frozenset(n for n, v in st.nodes.items() if v.state == "online"),
                   standby=frozenset(st.standby), disabled=dict(st.disabled),
                   maintenance=st.maintenance,
                   placement={g: v.node for g, v in st.groups.items()},
                   fail_counts=dict(st.fail_counts))


@dataclass(frozen=True)
class Scenario:
    events: list[tuple[str, str]]
    live: Live | None = None
    show_costs: bool = False


def _settle(sim: SimCluster, bound: float) -> None:
    end = sim.now + bound
    quiet = 0
    while sim.now < end:
        sim.run_for(0.1)
        quiet = quiet + 1 if sim.settled() else 0
        if quiet >= 5:
            return


def _placement(sim: SimCluster) -> dict[str, str | None]:
    return {g: (where[0] if len(where) == 1 else None if not where else ",".join(where))
            for g, where in sim.placement().items()}


def costs(sim: SimCluster) -> dict[str, dict[str, dict[str, Any]]]:
    """group -> node -> {"cost": float or "INFINITY", "why": [...]} for every configured
    node (a node that is down can run nothing)."""
    out: dict[str, dict[str, dict[str, Any]]] = {g: {} for g in sim.config.groups}
    for name, node in sorted(sim.nodes.items()):
        if node.core is None:
            for g in out:
                out[g][name] = {"cost": "INFINITY", "why": [f"{name} is down"]}
            continue
        for g, e in node.core.explain_costs().items():
            out[g][name] = {"cost": "INFINITY" if math.isinf(e.cost) else e.cost,
                            "why": list(e.reasons)}
    return out


def _start_from(sim: SimCluster, cfg: ClusterConfig, live: Live) -> None:
    """Bring the simulated cluster to the state ``live`` reported: the same nodes up, the
    same administrative state, the groups where they run, the fail counts the daemon asked
    knows (its own: the others' are not in its status)."""
    for n in cfg.nodes:
        if n not in live.online:
            sim.crash(n)
    asker = live.node if live.node in live.online else min(live.online, default=None)
    if asker is None:
        return
    for n in sorted(live.standby):
        sim.request(asker, AdminRequest("standby", node=n))
    for r, how in sorted(live.disabled.items()):
        sim.request(asker, AdminRequest("kill" if how == "force_oos" else "disable",
                                        resource=r))
    for g, where in sorted(live.placement.items()):
        if where is not None and where in live.online:
            sim.request(asker, AdminRequest("move", group=g, node=where))
    for g, count in sorted(live.fail_counts.items()):
        if count and live.node in live.online:
            sim.set_fail_count(live.node, g, count)


def _event(sim: SimCluster, cfg: ClusterConfig, kind: str, arg: str) -> None:
    names = set(cfg.nodes)
    if kind in ("node-down", "node-up"):
        if arg not in names:
            raise SimulateError(f"--{kind} {arg}: no such node (nodes: "
                                f"{', '.join(sorted(names))})")
        if kind == "node-down":
            sim.crash(arg)
        else:
            sim.power_on(arg)
    elif kind == "resource-fail":
        name, _, node = arg.partition("@")
        if node not in names:
            raise SimulateError(f"--resource-fail {arg}: write RESOURCE@NODE with a "
                                f"configured node (nodes: {', '.join(sorted(names))})")
        if name in cfg.resources:
            # the named resource fails, with its own on_fail: not the group's first member
            rc = cfg.resources[name]
            sim.fail_group(node, rc.group, name, policy=rc.on_fail)
        elif name in cfg.groups:
            sim.fail_group(node, name)
        else:
            raise SimulateError(f"--resource-fail {arg}: no resource or group named "
                                f"{name!r}")
    elif kind == "partition":
        sides = [set(s.split(",")) - {""} for s in arg.split("/")]
        unknown = set().union(*sides) - names
        if len(sides) < 2 or unknown:
            raise SimulateError(f"--partition {arg}: write A,B/C with configured nodes"
                                + (f" (unknown: {', '.join(sorted(unknown))})"
                                   if unknown else ""))
        rest = names - set().union(*sides)
        sides[0] |= rest
        sim.partition(*sides)
    elif kind == "heal":
        sim.heal()
    else:
        raise SimulateError(f"unknown event {kind!r} (events: {', '.join(EVENT_KINDS)})")


def run_scenario(cfg: ClusterConfig, scenario: Scenario) -> dict[str, Any]:
    # The daemon's strategy, plug-ins included: the simulation is of what the nodes would do.
    sim = SimCluster(cfg, strategy=lambda: load_strategy(cfg.strategy))
    t = cfg.timing
    bound = (t.dead_time * 3 + 8 * t.step_timeout + t.lease_time + stop_bound(cfg)
             + t.fence_margin + 2.0)
    steps: list[dict[str, Any]] = []
    reported: set[tuple[float, str, str]] = set()

    def record(title: str, extra: list[str] | None = None) -> None:
        # the decisions of every node, in time order, not reported by an earlier step
        lines = sorted((at, name, text) for name, node in sim.nodes.items()
                       if node.core is not None for at, text in node.core.decisions)
        fresh = [f"{name}: {text}" for line in lines if line not in reported
                 for _, name, text in [line]]
        reported.update(lines)
        changes = [c for c in fresh if any(word in c for word in (
            "placement", "declaring", "fencing", "failed", "cannot", "waiting"))]
        steps.append({"title": title, "time": sim.now, "placement": _placement(sim),
                      "changes": (extra or []) + changes})

    live = scenario.live
    if live is not None:
        _start_from(sim, cfg, live)
    _settle(sim, bound + 2 * t.dead_time)
    if live is not None and live.maintenance:
        # last: in maintenance mode nothing would move to where the cluster has it
        sim.request(live.node, AdminRequest("maintenance", on=True))
        _settle(sim, bound)
    if live is None:
        record("initial placement")
    else:
        placed = _placement(sim)
        differ = [f"the simulation has {g} {('on ' + n) if n else 'stopped'}; the cluster "
                  f"runs it {('on ' + w) if w else 'nowhere'}"
                  for g, n in sorted(placed.items()) if (w := live.placement.get(g)) != n]
        record(f"live state (as {live.node}'s daemon reports it)", differ)
    for kind, arg in scenario.events:
        _event(sim, cfg, kind, arg)
        _settle(sim, bound)
        record(f"after {kind} {arg}".strip())
    report: dict[str, Any] = {"cluster": cfg.name, "steps": steps}
    if scenario.show_costs:
        report["costs"] = costs(sim)
    return report


def format_costs(table: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """``--show-costs`` as text: one line per group and node, lowest cost first."""
    lines = ["Costs after the last step (lower wins; the master adds 1 for each group it "
             "already placed on a node, and mirror copy lags):"]

    def order(item: tuple[str, Mapping[str, Any]]) -> tuple[float, str]:
        cost = item[1]["cost"]
        return (math.inf if cost == "INFINITY" else float(cost), item[0])

    for g, by_node in sorted(table.items()):
        for n, entry in sorted(by_node.items(), key=order):
            cost = entry["cost"]
            shown = "INFINITY" if cost == "INFINITY" else f"{cost:g}"
            lines.append(f"  {g:<14} {n:<12} {shown:>9}  {'; '.join(entry['why'])}")
    return lines
