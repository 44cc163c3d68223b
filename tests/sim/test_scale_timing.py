"""A big cluster at its default timings (issue #16, "fewer messages"): past 8 nodes the
default heartbeat interval grows with the node count (vigil/config.py, default_heartbeat),
and everything derived from it grows along. The lease argument is written in those
parameters, so it holds at any size; these cases run it at 16 and 32 nodes in the
simulation: a frozen holder's groups move only after its guardian killed them, and not
before the others could have noticed (dead_time), and the cluster is whole again within a
bound of the same parameters."""

from __future__ import annotations

import random

import pytest

from tests.sim.test_guardian import holder_of, killed_at
from tests.support.simconfig import node_names, sim_config
from tests.unit.test_core import Recorder
from vigil.config import Timing, loads


def default_timing(nodes: int) -> Timing:
    """The [timing] a configuration file of ``nodes`` nodes gets when it sets none."""
    text = "[cluster]\nname = \"big\"\nkey_file = \"k\"\n" + "".join(
        f'[nodes.{n}]\nlinks = [{{ name = "lan0", address = "127.0.0.1", port = {7400 + i} }}]\n'
        for i, n in enumerate(node_names(nodes)))
    return loads(text).timing


@pytest.mark.parametrize("nodes", [16, 32])
def test_a_frozen_holder_of_a_big_cluster_is_replaced_safely_at_the_default_timings(
        nodes: int) -> None:
    t = default_timing(nodes)
    assert t.heartbeat_interval == pytest.approx(0.2 + 0.025 * (nodes - 8))
    c = Recorder(sim_config(nodes, 4, group_chain=False, timing=t), fencer="guardian",
                 rng=random.Random(nodes))
    c.run_for(10 * t.dead_time)
    assert c.settled(), c.describe()
    holder = holder_of(c, "g1")
    t0 = c.now
    # detection (dead_time), a round whose six steps each wait at most one step_timeout, its
    # fencing wait (the lease and guard_time) and the starts
    bound = t.dead_time + 6 * t.step_timeout + t.lease_time + t.guard_time + 1.0
    c.pause(holder, 2 * bound)  # frozen: it sends nothing, what it runs runs on
    c.run_for(bound)
    gone = killed_at(c, holder)  # its guardian, when the lease it was told ran out
    taker = holder_of(c, "g1")
    assert taker != holder
    started = c.first(t0, taker, "g1", "start")
    assert started > gone  # never two nodes running g1
    assert started >= t0 + t.dead_time - t.heartbeat_interval  # nobody jumped the gun
    assert c.settled() or c.expected_placement_ok() == [], c.describe()
