"""Property-based cluster simulation: N node cores over a simulated clock and network.

Rules are faults (crash, restart, partitions including one-way ones, loss, duplication,
delay, resource failures) and operator requests; the network's per-message choices (delay,
loss, duplication) come from a ``random.Random`` whose seed Hypothesis draws, so a failure
replays exactly and shrinks (towards seed 0 and fewer, simpler steps). Invariants are
checked after every step and, inside the simulator, at every single resource operation
(exclusivity, dependency order, agreement on closed epochs, epochs only grow, no start
from a minority epoch). When faults stop, the cluster must converge within the bound of
``convergence_bound`` (derived in docs/protocol.md).

Environment knobs: VIGIL_SIM_EXAMPLES, VIGIL_SIM_STEPS and VIGIL_SIM_LARGE (comma-separated
large cluster sizes); ``make soak`` raises all three.
"""

from __future__ import annotations

import os
import random

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.support.simconfig import sim_config
from vigil.cluster.events import AdminRequest
from vigil.cluster.placement import stop_bound
from vigil.cluster.sim import SimCluster
from vigil.config import ClusterConfig

EXAMPLES = int(os.environ.get("VIGIL_SIM_EXAMPLES", "60"))
STEPS = int(os.environ.get("VIGIL_SIM_STEPS", "40"))
LARGE = [int(n) for n in os.environ.get("VIGIL_SIM_LARGE", "9").split(",")]


def convergence_bound(cfg: ClusterConfig, groups: int) -> float:
    """Simulated seconds within which a healed cluster settles (docs/protocol.md)."""
    t = cfg.timing
    detect = t.dead_time + t.heartbeat_interval  # notice a change (or a heal)
    unresponsive_backoff = 2 * t.step_timeout  # nodes excluded for not answering
    one_round = 6 * t.step_timeout  # ack, report, cost, stop, accept, start
    fencing = t.lease_time + stop_bound(cfg) + t.fence_margin
    # simulated start + stop of every group, worst case in series (stops up to their timeout)
    group_ops = 2 * groups * 0.1 + sum(r.stop_timeout for r in cfg.resources.values())
    # a heal can cost one aborted round, then one full round with fencing; then the
    # cluster must stay settled for 2 * dead_time to count as converged
    calm = 2 * t.dead_time
    return detect + unresponsive_backoff + 2 * (one_round + fencing) + group_ops + calm


class ClusterMachine(RuleBasedStateMachine):
    cluster: SimCluster
    names: list[str]

    @initialize(
        # 2 to 9 nodes; `make soak` adds large clusters (16 and 32 nodes)
        nodes=st.integers(min_value=2, max_value=9) | st.sampled_from(LARGE),
        groups=st.integers(min_value=1, max_value=4),
        seed=st.integers(min_value=0, max_value=2**32 - 1),
        strategy=st.sampled_from(["cost", "cost", "preferred"]),
        slow_stops=st.booleans(),
    )
    def setup(self, nodes: int, groups: int, seed: int, strategy: str,
              slow_stops: bool) -> None:
        cfg = sim_config(nodes, groups, strategy=strategy)
        # two_node clusters need a fencer that powers nodes off (docs/protocol.md); slow
        # stops take most of their stop_timeout, so the silence fencer's wait is really tested
        self.cluster = SimCluster(cfg, rng=random.Random(seed),
                                  fencer="power" if nodes == 2 else None,
                                  stop_duration=None if slow_stops else 0.02)
        self.names = cfg.node_names
        self.groups = sorted(cfg.groups)
        self.cluster.run_for(2.0)

    # ---- faults --------------------------------------------------------------------------

    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        live = self.cluster.live()
        if live:
            self.cluster.crash(data.draw(st.sampled_from(live)))

    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        off = [n for n in self.names if n not in self.cluster.live()]
        if off:
            self.cluster.power_on(data.draw(st.sampled_from(off)))

    @rule(data=st.data())
    def partition(self, data: st.DataObject) -> None:
        side = data.draw(st.sets(st.sampled_from(self.names), min_size=1,
                                 max_size=len(self.names) - 1))
        self.cluster.partition(side, set(self.names) - side)

    @rule(data=st.data())
    def one_way_block(self, data: st.DataObject) -> None:
        src = data.draw(st.sampled_from(self.names))
        dst = data.draw(st.sampled_from([n for n in self.names if n != src]))
        self.cluster.block(src, dst)

    @rule(loss=st.floats(0.0, 0.5), dup=st.floats(0.0, 0.3),
          delay=st.tuples(st.floats(0.0005, 0.01), st.floats(0.0, 0.3)))
    def degrade_network(self, loss: float, dup: float, delay: tuple[float, float]) -> None:
        self.cluster.net.loss = loss
        self.cluster.net.duplicate = dup
        self.cluster.net.delay = (delay[0], delay[0] + delay[1])

    @rule()
    def heal(self) -> None:
        self.cluster.heal()

    @rule(data=st.data())
    def resource_fails(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(self.names))
        group = data.draw(st.sampled_from(self.groups))
        resource = data.draw(st.sampled_from(sorted(self.cluster.config.groups[group].resources)))
        policy = data.draw(st.sampled_from(["restart", "restart", "ignore", "stop", "standby"]))
        self.cluster.fail_group(node, group, resource, policy)

    @rule(data=st.data())
    def start_fails(self, data: st.DataObject) -> None:
        self.cluster.fail_next_start(data.draw(st.sampled_from(self.names)),
                                     data.draw(st.sampled_from(self.groups)))

    @rule(index=st.integers(0, 299))
    def stale_message(self, index: int) -> None:
        """An old protocol message arrives again (held back by the network, or replayed)."""
        self.cluster.redeliver(index)

    # ---- operator requests ---------------------------------------------------------------

    @rule(data=st.data())
    def move(self, data: st.DataObject) -> None:
        via = data.draw(st.sampled_from(self.names))
        self.cluster.request(via, AdminRequest("move", group=data.draw(
            st.sampled_from(self.groups)), node=data.draw(st.sampled_from(self.names))))

    @rule(data=st.data(), online=st.booleans())
    def standby(self, data: st.DataObject, online: bool) -> None:
        via = data.draw(st.sampled_from(self.names))
        self.cluster.request(via, AdminRequest("online" if online else "standby",
                                               node=data.draw(st.sampled_from(self.names))))

    @rule(data=st.data(), how=st.sampled_from(["enable", "disable", "kill"]))
    def resource_by_hand(self, data: st.DataObject, how: str) -> None:
        via = data.draw(st.sampled_from(self.names))
        resource = data.draw(st.sampled_from(sorted(self.cluster.config.resources)))
        self.cluster.request(via, AdminRequest(how, resource=resource))  # type: ignore[arg-type]

    @rule(data=st.data(), on=st.booleans())
    def maintenance(self, data: st.DataObject, on: bool) -> None:
        via = data.draw(st.sampled_from(self.names))
        self.cluster.request(via, AdminRequest("maintenance", on=on))

    # ---- time ----------------------------------------------------------------------------

    @rule(seconds=st.floats(0.01, 3.0))
    def advance(self, seconds: float) -> None:
        self.cluster.run_for(seconds)

    # ---- invariants ----------------------------------------------------------------------

    @invariant()
    def exclusive(self) -> None:
        self.cluster.check_exclusivity()

    @precondition(lambda self: hasattr(self, "cluster"))
    @rule()
    def faults_stop_and_cluster_converges(self) -> None:
        """Heal everything, bring every node back, and wait: it must settle in bound."""
        c = self.cluster
        c.heal()
        for name in self.names:
            c.power_on(name)
        # Requests still pending are applied first (in an order the master picks: requests
        # through different nodes have none of their own); then the operator ends maintenance
        # and puts every resource back in service, and reboots a node fenced meanwhile.
        settle_by = c.now + convergence_bound(c.config, len(self.groups))
        while c.now < settle_by and any(c.nodes[n].core.requests.queued for n in self.names
                                         if c.nodes[n].core is not None):
            c.run_for(0.1)
        for name in self.names:
            if c.nodes[name].core is None:
                c.power_on(name)
        c.request(self.names[0], AdminRequest("maintenance", on=False))
        for r in sorted(c.config.resources):
            c.request(self.names[0], AdminRequest("enable", resource=r))
        for name in self.names:
            core = c.nodes[name].core
            assert core is not None
        bound = convergence_bound(c.config, len(self.groups))
        deadline = c.now + bound
        # A fault that began before the heal may still be detected after it (a heartbeat
        # gap that reaches dead_time a moment later): settled means settled for a while.
        calm_needed = 2 * c.config.timing.dead_time
        calm_since: float | None = None
        while c.now < deadline:
            c.run_for(0.1)
            if c.settled() and not c.expected_placement_ok():
                calm_since = c.now if calm_since is None else calm_since
                if c.now - calm_since >= calm_needed:
                    break
            else:
                calm_since = None
        assert c.settled(), f"not settled after {bound:.1f}s:\n{c.describe()}"
        assert not c.expected_placement_ok(), (
            f"{c.expected_placement_ok()} after {bound:.1f}s:\n{c.describe()}")
        # Stability: with heartbeats flowing and no faults, nothing moves.
        before, story = c.placement(), c.describe()
        c.run_for(5 * c.config.timing.dead_time)
        assert c.placement() == before, (
            f"a group moved while nothing failed:\n{story}\n{c.describe()}")


ClusterMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                          HealthCheck.large_base_example],
)
# generation and shrinking together may take minutes on a shared two-core machine
TestClusterSimulation = pytest.mark.timeout(1800)(ClusterMachine.TestCase)
