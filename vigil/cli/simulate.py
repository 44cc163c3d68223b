"""`vigil simulate`: what the cluster would do, computed by the real protocol code (every node's
:class:`~vigil.cluster.node.NodeCore`) over the simulated clock and network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vigil.actors.strategies import load_strategy
from vigil.cluster.placement import stop_bound
from vigil.cluster.sim import SimCluster
from vigil.config import ClusterConfig


class SimulateError(ValueError):
    pass


@dataclass(frozen=True)
class Scenario:
    events: list[tuple[str, str]]


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


def run_scenario(cfg: ClusterConfig, scenario: Scenario) -> dict[str, Any]:
    names = set(cfg.nodes)
    # The daemon's strategy, plug-ins included: the simulation is of what the nodes would do.
    sim = SimCluster(cfg, strategy=lambda: load_strategy(cfg.strategy))
    t = cfg.timing
    bound = (t.dead_time * 3 + 8 * t.step_timeout + t.lease_time + stop_bound(cfg)
             + t.fence_margin + 2.0)
    steps: list[dict[str, Any]] = []
    reported: set[tuple[float, str, str]] = set()

    def record(title: str) -> None:
        # the decisions of every node, in time order, not reported by an earlier step
        lines = sorted((at, name, text) for name, node in sim.nodes.items()
                       if node.core is not None for at, text in node.core.decisions)
        fresh = [f"{name}: {text}" for line in lines if line not in reported
                 for _, name, text in [line]]
        reported.update(lines)
        changes = [c for c in fresh if any(word in c for word in (
            "placement", "declaring", "fencing", "failed", "cannot", "waiting"))]
        steps.append({"title": title, "time": sim.now, "placement": _placement(sim),
                      "changes": changes})

    _settle(sim, bound + 2 * t.dead_time)
    record("initial placement")
    for kind, arg in scenario.events:
        if kind in ("node-down", "node-up"):
            if arg not in names:
                raise SimulateError(f"--{kind} {arg}: no such node (nodes: "
                                    f"{', '.join(sorted(names))})")
            if kind == "node-down":
                sim.crash(arg)
            else:
                sim.power_on(arg)
        elif kind == "resource-fail":
            resource, _, node = arg.partition("@")
            if node not in names:
                raise SimulateError(f"--resource-fail {arg}: write RESOURCE@NODE with a "
                                    f"configured node (nodes: {', '.join(sorted(names))})")
            group = (cfg.resources[resource].group if resource in cfg.resources
                     else resource if resource in cfg.groups else None)
            if group is None:
                raise SimulateError(f"--resource-fail {arg}: no resource or group named "
                                    f"{resource!r}")
            sim.fail_group(node, group)
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
        _settle(sim, bound)
        record(f"after {kind} {arg}".strip())
    return {"cluster": cfg.name, "steps": steps}
