"""The guardian fencer in the simulation: directed cases that the property-based run may
reach only rarely (docs/fencing.md, "The bound").

The guardian kills what its node runs once the lease the daemon last told it has run out
(or at once when the daemon dies); the survivors wait for the lost node's lease, bounded from
what the members of the new view last heard of it, plus ``guard_time``.
"""

from __future__ import annotations

import math
import random

import pytest

from tests.support.simconfig import sim_config
from tests.unit.test_core import Recorder, formed
from vigil.cluster.events import AdminRequest


def holder_of(c: Recorder, group: str) -> str:
    where = c.placement()[group]
    assert len(where) == 1, where
    return where[0]


def killed_at(c: Recorder, node: str) -> float:
    """When the guardian of ``node`` killed what it ran (from the simulation's log)."""
    times = [float(line.split()[0]) for line in c.log if f"guardian of {node} kills" in line]
    assert times, f"the guardian of {node} killed nothing:\n" + "\n".join(c.log[-20:])
    return times[-1]


@pytest.mark.parametrize("seed", range(4))
def test_a_killed_daemons_resources_die_before_another_node_starts_them(seed: int) -> None:
    cfg = sim_config(3, 3, group_chain=False)
    c = formed(cfg, fencer="guardian", rng=random.Random(seed))
    beta = holder_of(c, "g1")
    t0 = c.now
    c.kill_daemon(beta)
    assert c.nodes[beta].resources  # what it ran is still running...
    c.run_for(3.0)
    gone = killed_at(c, beta)
    assert gone - t0 <= cfg.timing.guard_time  # ...until its guardian saw the daemon die
    taker = holder_of(c, "g1")
    assert taker != beta
    assert c.first(t0, taker, "g1", "start") > gone


def said(c: Recorder, node: str, since: float) -> list[str]:
    return [text for when, text in c.core(node).decisions if when >= since]


@pytest.mark.parametrize("seed", range(4))
def test_a_killed_daemons_guardian_tells_the_peers_who_take_over_before_dead_time(
        seed: int) -> None:
    """Once its kill is done, the guardian says goodbye in the dead daemon's name: the peers
    count the node out and start its groups without waiting to hear nothing for dead_time,
    let alone for its lease."""
    cfg = sim_config(3, 3, group_chain=False)
    c = formed(cfg, fencer="guardian", rng=random.Random(seed))
    beta = holder_of(c, "g1")
    t0 = c.now
    c.kill_daemon(beta)
    c.run_for(3.0)
    gone = killed_at(c, beta)
    taker = holder_of(c, "g1")
    started = c.first(t0, taker, "g1", "start")
    assert gone < started < t0 + cfg.timing.dead_time
    assert any(f"{beta} left the cluster: its daemon died and its guardian removed everything"
               in text for text in said(c, taker, t0))
    assert not any("fencing" in text for text in said(c, taker, t0))


def test_when_the_guardians_word_is_lost_the_peers_wait_out_the_lease_as_before() -> None:
    cfg = sim_config(3, 3, group_chain=False)
    c = formed(cfg, fencer="guardian")
    beta = holder_of(c, "g1")
    t0 = c.now
    c.kill_daemon(beta)
    for other in ("alpha", "gamma"):
        c.block(beta, other)  # its links are down: only the word is lost, it sent nothing else
    c.run_for(3.0)
    taker = holder_of(c, "g1")
    assert c.first(t0, taker, "g1", "start") > t0 + cfg.timing.dead_time
    assert not any("its guardian removed everything" in text for text in said(c, taker, t0))


def test_a_daemon_back_before_the_word_arrives_keeps_its_place_in_the_cluster() -> None:
    """The goodbye names the dead incarnation: the restarted daemon (a new one) is not
    counted out by a late copy, and exclusivity holds throughout (the simulator checks)."""
    cfg = sim_config(3, 3, group_chain=False)
    c = formed(cfg, fencer="guardian", rng=random.Random(7))
    beta = holder_of(c, "g1")
    c.kill_daemon(beta)
    c.run_for(0.05)
    c.power_on(beta)
    c.run_for(3.0)
    assert c.settled()
    assert beta in c.core("alpha").alive() and beta in c.core("gamma").alive()


def test_a_goodbye_of_a_past_life_does_not_exempt_the_new_one_from_fencing() -> None:
    """beta heard gamma's guardian say goodbye, then never heard gamma's new life (the link
    from gamma to beta fails), yet joins epochs whose view has gamma, and gamma holds g2 again.
    When beta becomes master and counts gamma out, it must wait for gamma as for anyone: an
    old goodbye said nothing of the new life (the simulator checks exclusivity throughout)."""
    cfg = sim_config(5, 5, group_chain=False)
    c = formed(cfg, fencer="guardian")
    assert c.placement()["g2"] == ["gamma"]
    c.kill_daemon("gamma")
    c.run_for(0.4)
    assert "gamma" in c.core("beta").membership.departed
    c.block("gamma", "beta")
    c.power_on("gamma")
    c.run_for(3.0)
    c.request("alpha", AdminRequest("move", group="g2", node="gamma"))
    c.run_for(3.0)
    assert c.placement()["g2"] == ["gamma"]
    assert "gamma" not in c.core("beta").membership.departed
    t0 = c.now
    c.crash("alpha")
    c.run_for(5.0)
    taker = holder_of(c, "g2")
    assert taker not in ("gamma", "alpha")
    assert c.first(t0, taker, "g2", "start") > killed_at(c, "gamma")


@pytest.mark.parametrize("seed", range(4))
def test_a_frozen_daemons_resources_die_when_its_lease_runs_out(seed: int) -> None:
    cfg = sim_config(3, 3, group_chain=False)
    c = formed(cfg, fencer="guardian", rng=random.Random(seed))
    beta = holder_of(c, "g1")
    t0 = c.now
    lease = c.nodes[beta].guard_lease
    c.pause(beta, 10.0)
    c.run_for(3.0)
    gone = killed_at(c, beta)
    assert lease <= gone <= lease + cfg.timing.guard_time
    taker = holder_of(c, "g1")
    assert taker != beta and c.first(t0, taker, "g1", "start") > gone
    # when it thaws, it learns its groups were killed, rejoins, and nothing else moves
    before = c.placement()
    c.resume_all()
    c.run_for(3.0)
    assert c.settled() and c.placement() == before
    assert not c.nodes[beta].resources


def test_a_member_that_still_hears_the_lost_node_makes_the_master_wait() -> None:
    """alpha (the master) stops hearing beta, gamma still does until it acks: beta's lease may
    last until then, so the master waits from what gamma heard, not from what it heard."""
    cfg = sim_config(3, 3, group_chain=False)
    c = formed(cfg, fencer="guardian")
    assert holder_of(c, "g1") == "beta"
    c.block("beta", "alpha")
    c.block("alpha", "beta")
    t0 = c.now
    c.run_for(0.3)
    # gamma echoes beta's heartbeats in the same epoch: beta keeps its lease
    assert c.nodes["beta"].core is not None and c.nodes["beta"].core.lease_valid()
    c.block("beta", "gamma")  # now beta is cut off from both
    t_cut = c.now
    c.run_for(3.0)
    r = c.core("alpha").round
    assert r is not None and r.view == ("alpha", "gamma")
    heard_by_gamma = r.heard_by_view["beta"]
    # gamma heard beta until the cut (its last heartbeat before it)...
    assert heard_by_gamma >= t_cut - cfg.timing.heartbeat_interval - 0.01
    assert c.core("alpha").membership.last_heard["beta"] < t0 + 0.01  # ...alpha long before
    t = cfg.timing
    start = c.first(t0, holder_of(c, "g1"), "g1", "start")
    assert start >= heard_by_gamma + t.lease_time + t.guard_time + t.fence_margin - 1e-9
    assert not c.nodes["beta"].resources  # stopped by its daemon, or killed by its guardian


def test_the_guardians_word_takes_every_group_out_of_service_here() -> None:
    """The daemon runs on, but its guardian killed everything (its lease had run out while it
    was busy): the core learns it, and counts every group as out of service here."""
    cfg = sim_config(3, 2)  # g1 depends on g0: both on beta
    c = Recorder(cfg, fencer="guardian")
    c.run_for(3.0)
    beta = c.nodes["beta"]
    assert c.core("beta").local["g1"].value == "running"
    t0 = c.now
    # as if the daemon had reported a lease that has run out: its guardian fences at once
    c._guard_report(beta, lease_until=-math.inf)
    c.run_for(0.0)  # its word reaches the daemon as an event of its own
    killed = [text for t, text in c.core("beta").decisions
              if t >= t0 and "killed on beta by its guardian" in text]
    assert len(killed) == 2  # g1 and g0
    # its lease is in fact still valid and the placement unchanged: it starts them again,
    # in order, rather than believing they still run
    c.run_for(1.0)
    assert [o[2:] for o in c.ops_since(t0, node="beta", what="start")] == [
        ("g0", "start"), ("g1", "start")]
    assert c.placement() == {"g0": ["beta"], "g1": ["beta"]}


@pytest.mark.parametrize("seed", range(6))
def test_without_a_guardian_a_holder_that_stalls_for_dead_time_still_stops_in_time(
        seed: int) -> None:
    """The silence fencer trusts the lost node's own daemon, which may notice its lease is
    gone only after a stall of up to dead_time: the wait counts from the acks (after the
    others noticed), not from when the node was last heard."""
    cfg = sim_config(3, 2)  # g1 on g0: stops take their time, one after the other
    t = cfg.timing
    c = formed(cfg, fencer="silence", stop_duration=None, rng=random.Random(seed))
    c.pause(holder_of(c, "g0"), 0.95 * (t.dead_time + t.lease_time))
    c.run_for(5.0)  # the simulator checks exclusivity after every step
    assert c.settled() and not c.expected_placement_ok(), c.describe()
