"""NICs in the simulation: directed cases of the cost rule (docs/resources.md, "NICs"): a
node that cannot carry a group's address is never chosen for it, and one that lost one of two
NICs is chosen only when no node with both can serve."""

from __future__ import annotations

import random

import pytest

from tests.sim.test_guardian import holder_of
from tests.support.simconfig import sim_config
from tests.unit.test_core import formed


@pytest.mark.parametrize("seed", range(3))
def test_a_group_never_starts_where_no_nic_can_carry_its_address(seed: int) -> None:
    """g0's address may use eth0 or eth1. Both are down on the node that would come next:
    when the holder is lost, the group goes to the third node with no failed start on the
    one without NICs, which priced it INFINITY."""
    cfg = sim_config(3, 1, prefer=True, nics=True)
    c = formed(cfg, fencer="silence", rng=random.Random(seed))
    holder = holder_of(c, "g0")
    others = [n for n in cfg.node_names if n != holder]
    cut, spare = others[0], others[1]
    t0 = c.now
    c.nic(cut, "eth0", up=False)
    c.nic(cut, "eth1", up=False)
    c.run_for(0.5)
    assert holder_of(c, "g0") == holder  # the NICs of another node move nothing
    c.crash(holder)
    c.run_for(6.0)
    assert holder_of(c, "g0") == spare, c.describe()
    assert c.ops_since(t0, node=cut, group="g0") == []


@pytest.mark.parametrize("seed", range(3))
def test_a_holder_that_loses_every_nic_of_its_address_hands_the_group_over(seed: int) -> None:
    cfg = sim_config(3, 1, prefer=False, nics=True)
    c = formed(cfg, fencer="silence", rng=random.Random(seed))
    holder = holder_of(c, "g0")
    c.nic(holder, "eth0", up=False)
    c.run_for(1.0)
    assert holder_of(c, "g0") == holder  # eth1 still carries it: nothing moves
    c.nic(holder, "eth1", up=False)
    c.run_for(8.0)
    assert holder_of(c, "g0") != holder, c.describe()
    assert c.settled()


def test_a_node_with_one_nic_down_costs_more_than_one_with_both() -> None:
    """Without preferences, a node that lost one of the two NICs of g0's address reports a
    higher cost, and the master places g0 elsewhere when the holder is lost."""
    cfg = sim_config(3, 1, prefer=False, nics=True)
    c = formed(cfg, fencer="silence", rng=random.Random(1))
    holder = holder_of(c, "g0")
    others = sorted(n for n in cfg.node_names if n != holder)
    t0 = c.now
    c.nic(others[0], "eth0", up=False)  # the one that wins ties by name
    c.crash(holder)
    c.run_for(6.0)
    assert holder_of(c, "g0") == others[1], c.describe()
    assert c.ops_since(t0, node=others[0], group="g0") == []


def test_a_group_placed_nowhere_for_want_of_nics_is_placed_when_one_comes_back() -> None:
    """Every node lost both NICs of g0's address (the service switch rebooted): g0 runs
    nowhere. When one node's NIC is back, that node asks the master to place again, and g0
    starts there, with no other event to prompt it."""
    cfg = sim_config(3, 1, prefer=False, nics=True)
    c = formed(cfg, fencer="silence", rng=random.Random(2))
    for node in cfg.node_names:
        c.nic(node, "eth0", up=False)
        c.nic(node, "eth1", up=False)
    c.run_for(8.0)
    assert c.placement()["g0"] == [], c.describe()
    assert c.settled()
    c.nic("gamma", "eth1", up=True)
    c.run_for(6.0)
    assert c.placement()["g0"] == ["gamma"], c.describe()
