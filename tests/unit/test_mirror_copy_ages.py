"""The mirror placement rule against copies that lie about their age: a copy that did not
arrive now (after a restart, or a step back), one from the future, and facts the wire cannot
carry (which must never wedge the rounds)."""

from __future__ import annotations

from tests.unit.test_mirror_placement import T, simulated
from vigil.cluster.events import AdminRequest
from vigil.cluster.mirrors import CopyFact, MirrorState


def test_a_restarted_standby_with_an_old_copy_does_not_take_over_when_the_source_dies() -> None:
    """beta's daemon was down for an hour (its copy is an hour old); it comes back, and alpha
    (the source, live) dies a few seconds later, before any new snapshot reached beta. The
    lone copy left is an hour behind: the group goes nowhere (max_lag 30 s). (Counted only
    from beta's restart, it would look a few seconds behind.)"""
    c = simulated()
    c.request("beta", AdminRequest("standby", node="gamma"))
    c.inject("gamma", MirrorState("g0-r0", None))  # a new disk: no copy at all
    c.run_for(1.0)
    c.crash("beta")
    c.run_for(2.0)
    c.power_on("beta")
    c.inject("beta", MirrorState("g0-r0", CopyFact(5, T - 3600.0, "alpha"), (), T + 6.0))
    c.run_for(3.0)
    assert c.where() == {"g0": "alpha"}
    c.crash("alpha")
    c.run_for(4.0)
    assert c.where() == {"g0": None}, c.core("beta").decisions[-3:]


def test_a_copy_that_goes_back_to_an_older_snapshot_is_not_counted_fresh() -> None:
    """beta's newest copy changes to an older one (its newer snapshots were set aside as
    diverged, and the receive that followed failed): it did not arrive now, and counts from
    when it was taken."""
    c = simulated()
    c.request("beta", AdminRequest("standby", node="gamma"))
    c.inject("gamma", MirrorState("g0-r0", None))
    c.inject("beta", MirrorState("g0-r0", CopyFact(99, T - 1.0, "alpha")))
    c.run_for(40.0)  # alpha goes on serving; nothing more reaches beta: 40 s behind
    c.inject("beta", MirrorState("g0-r0", CopyFact(60, T - 600.0, "alpha"), (), T + 40.0))
    c.run_for(0.5)
    c.crash("alpha")
    c.run_for(4.0)
    assert c.where() == {"g0": None}, c.core("beta").decisions[-3:]


def test_a_copy_with_a_taken_time_in_the_future_does_not_outrank_a_fresh_one() -> None:
    """A copy whose time lies an hour ahead of its node's clock (a clock gone wrong, or a
    buggy peer) is not believed: it would make gamma, which really holds alpha's last writes,
    look an hour behind, and beta, whose copy is 45 s old, take over."""
    c = simulated()
    c.inject("beta", MirrorState("g0-r0", CopyFact(55, T + 3600.0, "alpha"), (), T))
    c.run_for(0.5)
    c.crash("alpha")
    c.run_for(4.0)
    assert c.where() == {"g0": "gamma"}, c.core("beta").decisions[-3:]


def test_a_copy_with_an_infinite_taken_time_does_not_wedge_every_round() -> None:
    """``taken`` = Infinity (JSON allows it): carried in gamma's cost reply, every master's
    parser would refuse the reply, and every round's cost step would time out waiting for
    gamma, for ever (no group could be placed any more). The core counts it as no copy."""
    c = simulated()
    c.inject("gamma", MirrorState("g0-r0", CopyFact(99, float("inf"), "alpha")))
    c.run_for(0.5)
    c.crash("alpha")
    c.run_for(10.0)
    stuck = [t for _, t in c.core("beta").decisions if "cost timed out waiting for gamma" in t]
    assert not stuck, stuck[-2:]


def test_a_copy_named_after_a_node_the_wire_cannot_name_does_not_wedge_every_round() -> None:
    """A copy whose source is no node of the cluster (a name the wire cannot carry, as
    "Gamma") counts as no copy, as with an infinite taken time, rather than wedge the
    rounds."""
    c = simulated()
    c.inject("gamma", MirrorState("g0-r0", CopyFact(99, T - 1.0, "Gamma")))
    c.run_for(0.5)
    c.crash("alpha")
    c.run_for(10.0)
    stuck = [t for _, t in c.core("beta").decisions if "cost timed out waiting for gamma" in t]
    assert not stuck, stuck[-2:]
