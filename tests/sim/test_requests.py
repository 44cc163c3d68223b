"""Requests across restarts and stalls: each is applied once, in the order the cluster
learns of it, whoever is master when it arrives."""

from __future__ import annotations

from tests.support.simconfig import sim_config
from tests.unit.test_core import formed
from vigil.cluster.events import AdminRequest
from vigil.cluster.wire import MAINTENANCE


def test_a_request_applied_while_the_new_master_was_down_is_not_applied_again() -> None:
    """gamma takes "maintenance on" but hears nobody: beta's transition applies it (gamma's
    heartbeats carry it) without gamma, which keeps it, then stalls. alpha, down meanwhile,
    comes back (lowest name: master) and the operator ends maintenance through it just as
    gamma thaws, still carrying its request: alpha never saw it applied, and must learn so
    from the members' reports instead of applying it again after the operator's "off"."""
    cfg = sim_config(5, 1, group_chain=False)
    c = formed(cfg, fencer="guardian")
    c.crash("alpha")
    for other in ("beta", "delta", "epsilon"):
        c.block(other, "gamma")
    c.request("gamma", AdminRequest("maintenance", on=True))
    c.run_for(8.0)
    assert MAINTENANCE in c.core("beta").accepted.admin
    assert c.core("gamma").requests.queued  # gamma never heard it was applied
    c.pause("gamma", 60.0)
    c.heal()
    c.power_on("alpha")
    c.run_for(4.0)
    assert c.core("alpha").promised[1] == "alpha"
    c.request("alpha", AdminRequest("maintenance", on=False))
    c.resume_all()
    c.run_for(4.0)
    assert c.settled()
    assert MAINTENANCE not in c.core("alpha").accepted.admin, c.describe()
    assert not c.unapplied_requests()
    assert not c.core("gamma").requests.queued
