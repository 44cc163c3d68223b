"""Cluster configurations built in code for the simulation and unit tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vigil.config import (
    ClusterConfig,
    FenceDevice,
    FencingConfig,
    GroupConfig,
    LinkConfig,
    NodeConfig,
    ResourceConfig,
    Timing,
)

NODE_NAMES = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota",
              "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau",
              "upsilon", "phi", "chi", "psi", "omega"]


def node_names(n: int) -> list[str]:
    if n <= len(NODE_NAMES):
        return NODE_NAMES[:n]
    return [f"n{i:02d}" for i in range(n)]


def sim_config(
    nodes: int = 3,
    groups: int = 2,
    *,
    resources_per_group: int | Sequence[int] = 2,
    group_chain: bool = True,
    chain: int = 2,
    strategy: str = "cost",
    prefer: bool = True,
    migration_threshold: int = 2,
    two_node: bool | None = None,
    stop_timeout: float = 0.1,
    timing: Timing | None = None,
    fencer: str = "silence",
    fence: bool = False,
    delay_max: float = 0.0,
    priority_delay: float = 0.0,
    retry_interval: float = 0.5,
    nics: bool = False,
) -> ClusterConfig:
    """``resources_per_group``: one count for all, or one per group (cycled). With
    ``group_chain``, groups form dependency chains of ``chain`` groups (g1 after g0, g2
    after g1...), each chain followed by one group on its own. With ``fence``, two fencing
    levels per node: its own board ``ipmi-NODE`` (timeout 0.3 s, one retry), then a switch
    ``pdu`` feeding every node (timeout 0.3 s), with the ``[fencing]`` values given. With
    ``nics``, the first resource of each group is an address on NICs ``eth0`` then ``eth1``
    (every third group: on ``eth1`` alone)."""
    names = node_names(nodes)
    counts = ([resources_per_group] if isinstance(resources_per_group, int)
              else list(resources_per_group))
    node_cfgs = {
        n: NodeConfig(n, (LinkConfig("lan0", "127.0.0.1", 7400 + i),),
                      runtime_dir=Path("/nonexistent") / n)
        for i, n in enumerate(names)
    }
    group_cfgs: dict[str, GroupConfig] = {}
    res_cfgs: dict[str, ResourceConfig] = {}
    for gi in range(groups):
        gname = f"g{gi}"
        rnames = [f"{gname}-r{ri}" for ri in range(counts[gi % len(counts)])]
        for ri, r in enumerate(rnames):
            address = nics and ri == 0
            on: list[str] = ["eth1"] if gi % 3 == 2 else ["eth0", "eth1"]
            res_cfgs[r] = ResourceConfig(r, "ip" if address else "dummy", gname,
                                         params={"address": f"198.18.9.{gi + 1}", "nic": on}
                                         if address else {},
                                         depends_on=(rnames[ri - 1],) if ri else (),
                                         stop_timeout=stop_timeout, start_timeout=stop_timeout)
        deps = (f"g{gi - 1}",) if group_chain and 0 < gi % (chain + 1) < chain else ()
        pref = {names[(gi + k) % nodes]: float(k * 10) for k in range(nodes)} if prefer else {}
        group_cfgs[gname] = GroupConfig(gname, tuple(rnames), depends_on=deps, prefer=pref,
                                        nodes=tuple(names), migration_threshold=migration_threshold)
    devices: dict[str, FenceDevice] = {}
    if fence:
        devices = {f"ipmi-{n}": FenceDevice(f"ipmi-{n}", "simulated", (n,), timeout=0.3,
                                            retries=1) for n in names}
        devices["pdu"] = FenceDevice("pdu", "simulated", tuple(names), timeout=0.3, retries=0)
    fencing = FencingConfig(
        levels={n: ((f"ipmi-{n}",), ("pdu",)) for n in names} if fence else {},
        delay_max=delay_max, priority_delay=priority_delay, retry_interval=retry_interval)
    return ClusterConfig(
        name="sim", key_file=Path("/nonexistent"), nodes=node_cfgs, groups=group_cfgs,
        resources=res_cfgs, fencer=fencer, fence_devices=devices, fencing=fencing,
        timing=timing or Timing(heartbeat_interval=0.1, dead_time=0.5, lease_time=0.5,
                                step_timeout=1.0, retransmit_interval=0.1, fence_margin=0.05),
        strategy=strategy, two_node=(nodes == 2) if two_node is None else two_node,
        digest="sim",
    )
