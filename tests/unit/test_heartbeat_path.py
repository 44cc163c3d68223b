"""The heartbeat path: what a calm cluster does most (every node hears every other a few
times a second), so it must cost little, and its short cut must decide nothing differently.
docs/protocol.md, "The heartbeat path"."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.support.simconfig import sim_config
from vigil.cluster.events import Received
from vigil.cluster.membership import Membership
from vigil.cluster.sim import SimCluster
from vigil.cluster.wire import Echoes, Heartbeat, decode, to_message
from vigil.config import Timing


def test_a_silent_node_is_dead_at_its_deadline_not_a_rounding_error_later() -> None:
    """At 73.2999 + 0.6, ``now - heard < dead_time`` still holds in floating point: the
    node outlived the deadline the core had asked to be woken at, and its death was noticed
    only at the next event (before the heartbeat short path, the next peer's heartbeat hid
    it; with it, up to a heartbeat interval later)."""
    heard, dead_time = 73.2999, 0.6
    assert (heard + dead_time) - heard < dead_time  # the rounding this is about
    cfg = sim_config(3, 1, timing=Timing(heartbeat_interval=0.15, dead_time=dead_time,
                                         lease_time=0.3))
    m = Membership(cfg, "alpha", now=heard - 1.0)
    m.advance(heard)
    m.heard("beta", "lan0")
    assert "beta" in m.alive()
    due = min(t for t in m.deadlines() if t > heard and t != m.next_hb)
    assert due == heard + dead_time
    m.advance(due)
    assert "beta" not in m.alive()


def test_a_calm_cluster_handles_nearly_every_heartbeat_on_the_short_path() -> None:
    c = SimCluster(sim_config(5, 10, group_chain=False))
    c.run_for(5.0)
    assert c.settled(), c.describe()
    before = {n: c.nodes[n].core.routine_handled for n in c.nodes}  # type: ignore[union-attr]
    leases = {n: c.nodes[n].core.membership.lease_until() for n in c.nodes}  # type: ignore[union-attr]
    c.run_for(5.0)
    for n, node in c.nodes.items():
        core = node.core
        assert core is not None
        # four peers, a heartbeat each per interval (echoes come on top of that)
        heard = 4 * 5.0 / c.config.timing.heartbeat_interval
        assert core.routine_handled - before[n] >= 0.9 * heard, (n, core.routine_handled)
        # ... and those heartbeats still carried the lease forward
        assert core.membership.lease_until() > leases[n] + 4.0
    assert c.settled()


def test_a_heartbeat_that_says_something_new_takes_the_full_path() -> None:
    """A peer's heartbeat that carries another epoch, other groups or requests is handled in
    full: here beta's heartbeat says it runs one more group, and alpha takes note."""
    c = SimCluster(sim_config(3, 3, group_chain=False))
    c.run_for(5.0)
    alpha = c.nodes["alpha"].core
    assert alpha is not None
    beta_groups = dict(alpha.membership.peers["beta"].groups)
    hb = Heartbeat(n=10**6, incarnation=alpha.membership.peers["beta"].incarnation,
                   promised=alpha.promise.promised, accepted=alpha.promise.promised,
                   closed=True, echo={}, groups={**beta_groups, "g9": "running"},
                   failures=alpha.membership.peers["beta"].failures,
                   digest=alpha.config.digest)
    routine = alpha.routine_handled
    alpha.handle(Received(to_message(hb, "beta"), "lan0"), c.now)
    assert alpha.routine_handled == routine
    assert alpha.membership.peers["beta"].groups["g9"] == "running"


def test_only_the_receivers_echo_is_read_and_a_bad_list_is_refused_whole() -> None:
    echo = Echoes("alpha:3:17,xbeta:4:5,beta:9:10")
    assert echo.get("beta") == (9, 10)
    assert echo.get("alpha") == (3, 17)
    assert echo.get("gamma") is None
    assert dict(echo) == {"alpha": (3, 17), "xbeta": (4, 5), "beta": (9, 10)}
    assert len(Echoes("")) == 0 and Echoes("").get("alpha") is None
    hb = decode(to_message(Heartbeat(n=1, incarnation=1, promised=(2, "alpha"),
                                     accepted=(2, "alpha"), closed=True,
                                     echo={"alpha": (5, 7)}, groups={}, failures=0,
                                     digest=""), "beta")).body
    assert isinstance(hb, Heartbeat) and hb.echo.get("alpha") == (5, 7)


@given(st.dictionaries(st.sampled_from(["beta", "gamma", "delta", "epsilon"]),
                       st.floats(min_value=10.0, max_value=11.0), min_size=1),
       st.floats(min_value=10.0, max_value=11.0))
def test_the_lease_changes_only_at_its_end_so_only_its_end_is_a_deadline(
        support: dict[str, float], later: float) -> None:
    """The core asks to be woken at the lease's end, not at each peer's support running out
    (in a calm cluster those were half the timer's wakeups): a support that ends before the
    lease changes no answer, at any time before the lease's end."""
    m = Membership(sim_config(5, 1), "alpha", now=9.0)
    m.seen_all = True
    m.advance(10.0)
    m.support.update(support)
    lease = m.lease_until()
    deadlines = [t for t in m.deadlines() if t > m.now]
    assert (lease in deadlines) == (lease > m.now and lease != float("inf"))
    assert not (set(support.values()) - {lease}) & set(deadlines)
    m.advance(later)
    if later < lease:
        assert m.lease_until() == lease and m.lease_valid()
    else:
        assert not m.lease_valid()
