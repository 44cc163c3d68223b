"""Configuration changes while the cluster runs (vigil.cluster.reconfig), simulated: every
member switches in the same epoch, the groups the change retires stop first and start again
from their new definition, the others are not touched, and faults during the switch (a node
powered off, its daemon killed, a partition) leave the cluster on one configuration with
every invariant of the simulation kept."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.support.simconfig import sim_config
from vigil.cluster.events import AdminRequest
from vigil.cluster.local import LocalState
from vigil.cluster.reconfig import refusals, retired
from vigil.cluster.sim import SimCluster
from vigil.config import ClusterConfig, GroupConfig, ResourceConfig
from vigil.messages import Message

pytestmark = pytest.mark.sim


def digest(cfg: ClusterConfig) -> ClusterConfig:
    """The configuration with a digest of its own, as a file's would be."""
    text = repr((sorted(cfg.groups.items()), sorted(cfg.resources.items()), cfg.timing))
    return replace(cfg, digest=hashlib.sha256(text.encode()).hexdigest())


def base(fencer: str = "silence") -> ClusterConfig:
    # g0 <- g1 (a chain), g2 alone, g3 alone
    return digest(sim_config(3, 4, group_chain=True, chain=2, fencer=fencer))


def changed(cfg: ClusterConfig) -> ClusterConfig:
    """g2's resource gets another parameter (it restarts), g3 goes, g4 comes, g0's
    stickiness and a timing change (nothing restarts for those)."""
    resources = dict(cfg.resources)
    groups = dict(cfg.groups)
    resources["g2-r0"] = replace(resources["g2-r0"], params={"state": "v2"})
    for r in groups.pop("g3").resources:
        del resources[r]
    resources["g4-r0"] = ResourceConfig("g4-r0", "dummy", "g4", stop_timeout=0.1,
                                        start_timeout=0.1)
    groups["g4"] = GroupConfig("g4", ("g4-r0",), nodes=tuple(cfg.node_names))
    groups["g0"] = replace(groups["g0"], stickiness=250.0)
    timing = replace(cfg.timing, step_timeout=cfg.timing.step_timeout * 1.5)
    return digest(replace(cfg, groups=groups, resources=resources, timing=timing))


def running(c: SimCluster) -> SimCluster:
    c.run_for(3.0)
    assert c.settled(), c.describe()
    assert all(c.placement()[g] for g in c.config.groups), c.describe()
    return c


def settle(c: SimCluster, bound: float = 20.0) -> None:
    end = c.now + bound
    while c.now < end:
        c.run_for(0.5)
        if c.settled() and not c.expected_placement_ok():
            return
    raise AssertionError(f"not settled within {bound}s:\n{c.describe()}")


def test_the_change_is_live_applicable_and_retires_what_it_should() -> None:
    old = base()
    new = changed(old)
    assert refusals(old, new) == []
    assert retired(old, new) == {"g2": "its definition changed: it starts again from the "
                                       "new one", "g3": "removed from the configuration"}


def test_every_node_switches_in_one_epoch_and_only_what_changed_restarts() -> None:
    old = base()
    c = running(SimCluster(old))
    new = changed(old)
    starts_before = dict(c.ops_done)
    c.stage(new, on="beta")
    settle(c)
    cores = [c.nodes[n].core for n in c.live()]
    assert all(core is not None and core.config.digest == new.digest for core in cores)
    # one epoch switched them all: every member accepted it with the new configuration
    switched = {core.accepted.epoch for core in cores if core is not None}
    assert len(switched) == 1, c.describe()
    stopped = {r for (r, op), n in c.ops_done.items() if op == "stop"
               and n > starts_before.get((r, op), 0)}
    assert stopped == {"g2-r0", "g2-r1", "g3-r0", "g3-r1"}, (stopped, c.describe())
    placement = c.placement()
    assert placement["g4"] and placement["g2"] and "g3" not in placement, c.describe()
    assert all(not any(r in node.resources for r in ("g3-r0", "g3-r1"))
               for node in c.nodes.values())
    # and it stays calm
    before = c.placement()
    c.run_for(5.0)
    assert c.placement() == before


def test_a_node_whose_file_differs_keeps_the_cluster_from_switching_and_says_so() -> None:
    old = base()
    c = running(SimCluster(old))
    new = changed(old)
    other = digest(replace(new, timing=replace(new.timing, step_timeout=9.0)))
    c.stage(new, on="alpha", files=["alpha", "beta"])
    c.files["gamma"] = other
    c.run_for(3.0)
    assert all(c.nodes[n].core.config.digest == old.digest  # type: ignore[union-attr]
               for n in c.live())
    gamma = c.nodes["gamma"].core
    assert gamma is not None and gamma.staged is None
    assert any("is not the one the cluster was asked to switch to" in text
               for _, text in gamma.decisions), gamma.decisions[-5:]
    # the operator fixes gamma's file and reloads again: the cluster switches
    c.stage(new, on="gamma", files=["gamma"])
    settle(c)
    assert all(c.nodes[n].core.config.digest == new.digest  # type: ignore[union-attr]
               for n in c.live())


def test_a_change_that_cannot_be_applied_live_is_refused_with_what_to_do() -> None:
    old = base()
    c = running(SimCluster(old))
    shorter = digest(replace(old, timing=replace(old.timing, lease_time=0.3)))
    c.stage(shorter, on="alpha")
    c.run_for(2.0)
    alpha = c.nodes["alpha"].core
    assert alpha is not None and alpha.staged is None
    assert alpha.config.digest == old.digest
    text = alpha.decisions[-1][1]
    assert "lease_time changed" in text and "start them all with the new file" in text


def test_a_retired_group_whose_stop_fails_holds_the_switch_back() -> None:
    old = base()
    c = running(SimCluster(old))
    holder = c.placement()["g2"][0]
    c.nodes[holder].fail_next_stop.add("g2")
    c.stage(changed(old), on="alpha")
    c.run_for(3.0)
    assert all(c.nodes[n].core.config.digest == old.digest  # type: ignore[union-attr]
               for n in c.live()), c.describe()
    master = c.nodes["alpha"].core
    assert master is not None
    assert any(("the switch to configuration" in text and "waits" in text) or "stopped" in text
               for _, text in master.decisions), master.decisions[-8:]
    core = c.nodes[holder].core
    assert core is not None and core.local["g2"] is LocalState.UNCLEAN


FAULTS = st.sampled_from(["crash", "kill", "partition", "none"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fault=FAULTS, victim=st.sampled_from(["alpha", "beta", "gamma"]),
       at=st.floats(min_value=0.0, max_value=0.4), seed=st.integers(0, 2**16),
       fencer=st.sampled_from(["silence", "guardian"]))
def test_faults_during_the_switch_leave_one_configuration_and_the_invariants(
        fault: str, victim: str, at: float, seed: int, fencer: str) -> None:
    import random

    # a daemon that dies alone leaves its resources running unless a guardian kills them
    assume(fault != "kill" or fencer == "guardian")
    old = base(fencer)
    c = running(SimCluster(old, rng=random.Random(seed)))
    new = changed(old)
    c.stage(new, on="beta")
    c.run_for(at)
    if fault == "crash":
        c.crash(victim)
    elif fault == "kill":
        c.kill_daemon(victim)
    elif fault == "partition":
        c.partition([victim], [n for n in c.config.node_names if n != victim])
    c.run_for(3.0)
    c.check_exclusivity()
    c.heal()
    for n in c.config.node_names:
        c.power_on(n)  # a crashed node comes back with its file: the new one
    settle(c, 40.0)
    c.check_exclusivity()
    digests = {c.nodes[n].core.config.digest for n in c.live()}  # type: ignore[union-attr]
    assert digests == {new.digest}, c.describe()
    assert not c.expected_placement_ok(), c.describe()


def test_the_master_lost_during_the_accept_of_a_switch_leaves_the_others_able_to_go_on(
        ) -> None:
    """The accept reaches one member, then the master is powered off: the member that did
    not switch follows the one that did (its stop phase stopped what the switch retires),
    and the two take over the master's groups."""
    old = base()
    c = running(SimCluster(old))
    new = changed(old)
    seen: list[float] = []
    transmit = c._transmit

    def only_to_beta(msg: Message) -> None:
        if msg.type == "accept" and msg.fields.get("config") and not seen:
            seen.append(c.now)
            c.block("alpha", "gamma")
            transmit(msg)
            c.unblock("alpha", "gamma")
            return
        transmit(msg)

    c._transmit = only_to_beta  # type: ignore[method-assign]
    c.stage(new, on="beta")
    end = c.now + 10.0
    while not seen and c.now < end:
        c.run_for(0.0005)
    assert seen, "the switch never reached its accept"
    c.crash("alpha")
    settle(c, 30.0)
    assert {c.nodes[n].core.config.digest for n in c.live()} == {  # type: ignore[union-attr]
        new.digest}
    assert all(c.placement()[g] for g in new.groups), c.describe()


def test_a_node_restarted_with_a_file_not_yet_reloaded_does_not_switch_the_cluster() -> None:
    """The operator copied the new file everywhere but has not reloaded: a node that
    restarts meanwhile runs it and stays out; the others do not pick it up on their own."""
    old = base()
    c = running(SimCluster(old))
    new = changed(old)
    for n in c.config.node_names:
        c.files[n] = new  # copied, not reloaded
    c.crash("gamma")
    c.run_for(1.0)
    c.power_on("gamma")
    c.run_for(3.0)
    for n in ("alpha", "beta"):
        core = c.nodes[n].core
        assert core is not None and core.config.digest == old.digest and core.staged is None
        assert "gamma" in core.membership.mismatched
    # the reload then switches them, and gamma joins
    c.stage(new, on="alpha")
    settle(c)
    assert {c.nodes[n].core.config.digest for n in c.live()} == {  # type: ignore[union-attr]
        new.digest}


def reload_on_alpha_cut_off() -> tuple[SimCluster, ClusterConfig, ClusterConfig]:
    """A running cluster, the old and the new file: the new one on every node, reloaded on
    alpha while it is cut off from the others."""
    old = base()
    c = running(SimCluster(old))
    new = changed(old)
    c.partition(["alpha"], ["beta", "gamma"])
    c.run_for(0.3)
    c.stage(new, on="alpha")
    return c, old, new


def test_a_reload_taken_by_a_node_that_restarts_before_anyone_heard_it_is_not_lost() -> None:
    """The operator reloads on alpha while it is cut off, and alpha's daemon restarts
    before the others heard the reload: it comes back running the new file and asks again
    (the reload is persisted like a manual request), so the cluster switches once alpha is
    reachable, with no second command. The simulation found it lost (6 nodes, a reload on
    a node cut off, then its quick restart: the cluster stayed split on two files)."""
    c, old, new = reload_on_alpha_cut_off()
    assert c.nodes["alpha"].persisted.reload == new.digest  # type: ignore[union-attr]
    c.crash("alpha")
    c.run_for(0.5)
    c.power_on("alpha")
    alpha = c.nodes["alpha"].core
    assert alpha is not None and alpha.config.digest == new.digest
    assert any("asked here before this daemon restarted" in t for _, t in alpha.decisions)
    c.run_for(1.0)
    for n in ("beta", "gamma"):  # nothing switched while they could not hear alpha
        assert c.nodes[n].core.config.digest == old.digest  # type: ignore[union-attr]
    c.heal()
    settle(c)
    assert {c.nodes[n].core.config.digest for n in c.live()} == {  # type: ignore[union-attr]
        new.digest}
    assert c.nodes["alpha"].persisted.reload == ""  # type: ignore[union-attr]


def test_a_reload_pending_at_restart_is_dropped_if_the_file_changed_meanwhile() -> None:
    """A restarted node asks again only for the file it was asked to reload: if its file
    is another one by then, the earlier reload is over (and it stays out, as any node
    started with a file not reloaded)."""
    c, old, new = reload_on_alpha_cut_off()
    c.crash("alpha")
    other = digest(replace(new, timing=replace(new.timing, step_timeout=9.0)))
    c.files["alpha"] = other
    c.power_on("alpha")
    c.heal()
    c.run_for(5.0)
    assert c.nodes["alpha"].persisted.reload == ""  # type: ignore[union-attr]
    for n in ("beta", "gamma"):
        core = c.nodes[n].core
        assert core is not None and core.config.digest == old.digest and core.staged is None


def test_a_node_kept_out_follows_when_the_cluster_switches_to_the_file_it_has() -> None:
    """gamma restarts with file X while the others run the old file (an operator copied X
    to alpha and gamma, reloaded on alpha, then put the old file back there): it is kept
    out, as it should. Then the operator copies Y everywhere and reloads while gamma is cut
    off: the others switch to Y. Back, gamma hears them run Y in a later epoch and must read
    its file (Y by now) again: its peers run another file than when it first kept them out.
    The simulation found gamma out for good (6 nodes, two reloads and a restart between):
    it re-read its file only the first time it kept a peer out."""
    old = base()
    c = running(SimCluster(old))
    x = changed(old)
    y = digest(replace(x, timing=replace(x.timing, step_timeout=x.timing.step_timeout * 2)))
    c.stage(x, on="alpha", files=["alpha", "gamma"])
    c.run_for(0.5)
    c.stage(old, on="alpha", files=["alpha"])  # put back
    c.crash("gamma")
    c.power_on("gamma")
    c.run_for(1.0)
    gamma = c.nodes["gamma"].core
    assert gamma is not None and gamma.config.digest == x.digest
    assert gamma.membership.mismatched == {"alpha", "beta"}
    c.partition(["alpha", "beta"], ["gamma"])
    c.stage(y, on="alpha")
    c.run_for(3.0)
    assert c.nodes["alpha"].core.config.digest == y.digest  # type: ignore[union-attr]
    c.heal()
    settle(c)
    assert {c.nodes[n].core.config.digest for n in c.live()} == {  # type: ignore[union-attr]
        y.digest}


def test_nodes_restarted_with_the_new_file_before_the_switch_do_not_deadlock_it() -> None:
    """A reload on alpha of four nodes; gamma and alpha restart before the switch (with the
    new file, which they run). beta and delta staged it but are two of four: no quorum to
    declare the switch, and alpha and gamma, on the new file, keep them out. Neither side
    could lead; idle nodes on the old file with the new one staged switch by themselves
    when those on or ready for the new file make a quorum (the simulation found it stuck:
    4 nodes, a reload, two restarts)."""
    old = digest(sim_config(4, 4, group_chain=True, chain=2))
    c = running(SimCluster(old))
    new = changed(old)
    c.stage(new, on="alpha")
    c.crash("gamma")
    # a request makes alpha declare a round (beta and delta promise it) that alpha's crash
    # leaves open: what alpha and gamma accepted is older than what the others promised
    c.request("alpha", AdminRequest("move", group="g2", node="beta"))
    c.run_for(0.002)
    assert c.nodes["beta"].core.promised > c.nodes["beta"].core.accepted.epoch  # type: ignore[union-attr]
    c.crash("alpha")
    c.run_for(3.0)
    assert {c.nodes[n].core.config.digest for n in c.live()} == {  # type: ignore[union-attr]
        old.digest}
    c.power_on("alpha")
    c.power_on("gamma")
    beta = c.nodes["beta"].core
    assert beta is not None
    for _ in range(300):
        c.run_for(0.01)
        if beta.config.digest == new.digest:
            break
    # switched by itself: what it accepted was placed by the old file, so nothing of it may
    # start here before a round under the new file
    assert beta.config.digest == new.digest and not beta.promise.may_run()
    assert any("make no quorum" in text for _, text in beta.decisions)
    settle(c)
    assert {c.nodes[n].core.config.digest for n in c.live()} == {  # type: ignore[union-attr]
        new.digest}
