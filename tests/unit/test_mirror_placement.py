"""The freshest copy wins: how the members' copies of mirrored data weigh in the master's
decision (vigil.cluster.strategy.weigh_copies, through both built-in strategies), and how a
copy travels from the shell's MirrorState into the cost reply and a forced move through the
requests."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.support.simconfig import sim_config
from tests.unit.test_core import Recorder, formed
from vigil.cluster.admin import Requests, apply
from vigil.cluster.events import AdminRequest, Received
from vigil.cluster.mirrors import CopyFact, MirrorState, copy_lags, max_lag
from vigil.cluster.node import NodeCore
from vigil.cluster.strategy import (
    INFINITY,
    TAKEOVER_COPY_WEIGHT,
    CostStrategy,
    Decision,
    DecisionContext,
    PreferredListStrategy,
    Strategy,
)
from vigil.cluster.wire import CostReply, CostRequest, Declare, decode, to_message
from vigil.config import ClusterConfig, GroupConfig, LinkConfig, NodeConfig, ResourceConfig

NODES = ("alpha", "beta", "gamma")
T = 1_700_000_000.0  # when the freshest snapshot was taken


def config(max_lag: object = None, *, app: bool = False) -> ClusterConfig:
    """Group ``db`` with mirror resource ``db-data`` (and, with ``app``, a group ``web`` that
    depends on db, so the two go together)."""
    params: dict[str, object] = {"root": "/srv/mirror", "mount_point": "/var/lib/db"}
    if max_lag is not None:
        params["max_lag"] = max_lag
    resources = {"db-data": ResourceConfig("db-data", "mirror", "db", params=params),  # type: ignore[arg-type]
                 "db-app": ResourceConfig("db-app", "dummy", "db", depends_on=("db-data",))}
    groups = {"db": GroupConfig("db", ("db-data", "db-app"))}
    if app:
        resources["web-r"] = ResourceConfig("web-r", "dummy", "web")
        groups["web"] = GroupConfig("web", ("web-r",), depends_on=("db",))
    return ClusterConfig(
        name="unit", key_file=Path("/nonexistent"),
        nodes={n: NodeConfig(n, (LinkConfig("lan0", "127.0.0.1", 7600 + i),))
               for i, n in enumerate(NODES)},
        groups=groups, resources=resources, digest="unit")


def copy(behind: float, *, live: bool = False, source: str = "alpha") -> CopyFact:
    return CopyFact(seq=int(1000 - behind), taken=T - behind, source=source, live=live)


def decide(cfg: ClusterConfig, copies: Mapping[str, CopyFact | None], *,
           costs: Mapping[str, float] | None = None, strategy: Strategy | None = None,
           holders: Mapping[str, str] | None = None, moves: Mapping[str, str] | None = None,
           forced: frozenset[str] = frozenset()) -> Decision:
    members = tuple(sorted(copies))
    base = costs or {}
    ctx = DecisionContext(
        config=cfg, members=members,
        costs={n: dict.fromkeys(cfg.groups, base.get(n, 0.0)) for n in members},
        holders=holders or {}, moves=moves or {},
        copies={n: {"db-data": c} for n, c in copies.items()}, forced=forced)
    return (strategy or CostStrategy()).decide(ctx)


@pytest.mark.parametrize("strategy", [CostStrategy(), PreferredListStrategy()],
                         ids=["cost", "preferred"])
def test_the_freshest_copy_wins_over_a_cheaper_staler_one(strategy: Strategy) -> None:
    # alpha (the source) is gone; beta is cheaper (or first in the list) but 5 s behind
    d = decide(config(), {"beta": copy(5.0), "gamma": copy(1.0)},
               costs={"beta": 0.0, "gamma": 2.0}, strategy=strategy)
    assert d.placement["db"] == "gamma"
    assert "it holds the freshest copy of db-data" in d.reasons["db"]


def test_the_lag_costs_takeover_copy_weight_per_second_when_no_member_runs_it() -> None:
    d = decide(config(), {"beta": copy(1.0), "gamma": copy(4.0)},
               costs={"beta": 3.0 * TAKEOVER_COPY_WEIGHT, "gamma": 0.0})
    # beta: 3 W + 0 (it holds the freshest); gamma: 0 + 3 s behind: a tie, the lower name wins
    assert d.placement["db"] == "beta"
    d = decide(config(), {"beta": copy(1.0), "gamma": copy(4.0)},
               costs={"beta": 3.5 * TAKEOVER_COPY_WEIGHT, "gamma": 0.0})
    assert d.placement["db"] == "gamma"
    assert d.reasons["db"] == "lowest cost on gamma (3000); its copy of db-data is 3 s behind"
    # a preference (10 here) never outweighs a tenth of a second of writes lost for good
    d = decide(config(), {"beta": copy(1.1), "gamma": copy(1.0)},
               costs={"beta": 0.0, "gamma": 10.0})
    assert d.placement["db"] == "gamma"


def test_while_a_member_runs_it_the_lag_costs_copy_weight_per_second() -> None:
    # alpha runs db (a move is graceful: the final snapshot brings the rest): beta, 3 s
    # behind but preferred by 10, is where a move goes
    d = decide(config(), {"alpha": copy(0.0, live=True), "beta": copy(3.0),
                          "gamma": copy(1.0)},
               costs={"alpha": 20.0, "beta": 0.0, "gamma": 10.0}, holders={"db": "alpha"},
               moves={})
    assert d.placement["db"] == "beta"
    assert "lowest cost on beta (3)" in d.reasons["db"]


def test_a_copy_beyond_max_lag_is_refused_and_the_reason_says_so() -> None:
    d = decide(config("30s"), {"beta": copy(0.0), "gamma": copy(45.0)},
               costs={"beta": 100.0, "gamma": 0.0})
    assert d.placement["db"] == "beta"
    # alone, gamma cannot take it: the group goes nowhere and the decision says why
    d = decide(config("30s"), {"alpha": copy(0.0, live=True), "gamma": copy(45.0)},
               holders={"db": "alpha"})
    assert d.placement["db"] == "alpha"
    d = decide(config("30s"), {"gamma": copy(45.0), "beta": None, "alpha": copy(0.0)},
               costs={"alpha": INFINITY})
    assert d.placement["db"] is None
    assert d.reasons["db"] == (
        "no member can run it: beta has no copy of db-data (another member has one); "
        "gamma's copy of db-data is 45 s behind (max_lag 30 s)")


def test_max_lag_defaults_to_30_seconds_and_takes_durations() -> None:
    cfg = config()
    assert max_lag(cfg.resources["db-data"]) == 30.0
    assert max_lag(config("2m").resources["db-data"]) == 120.0
    assert max_lag(config("nonsense").resources["db-data"]) == 30.0  # config check refuses it
    # within max_lag a copy may serve (beta cannot here), beyond it not
    assert decide(cfg, {"gamma": copy(29.0), "beta": copy(0.0)},
                  costs={"beta": INFINITY}).placement["db"] == "gamma"
    assert decide(cfg, {"gamma": copy(31.0), "beta": copy(0.0)},
                  costs={"beta": INFINITY}).placement["db"] is None


def test_a_live_copy_is_never_behind() -> None:
    # alpha runs db (live) from an older snapshot than beta holds: alpha's data is current
    lags = copy_lags({"alpha": copy(50.0, live=True), "beta": copy(0.0), "gamma": None})
    assert lags == {"alpha": 0.0, "beta": 0.0, "gamma": None}
    d = decide(config(), {"alpha": copy(50.0, live=True), "beta": copy(0.0)},
               holders={"db": "alpha"})
    assert d.placement["db"] == "alpha"
    assert "its copy of db-data is live" in d.reasons["db"]


def test_the_holder_counts_as_live_before_its_shell_says_so() -> None:
    """A group just started on a node (its copy not yet reported live) stays there."""
    d = decide(config(), {"alpha": copy(45.0), "beta": copy(0.0)}, holders={"db": "alpha"},
               costs={"beta": -5.0})
    assert d.placement["db"] == "beta"  # cheaper and fresh: it may move (failback)
    d = decide(config(), {"alpha": copy(45.0), "beta": copy(0.0)}, holders={"db": "alpha"})
    assert d.placement["db"] == "alpha"  # not refused for a lag its live data does not have


def test_a_first_start_without_any_copy_changes_nothing() -> None:
    d = decide(config(), {"alpha": None, "beta": None, "gamma": None},
               costs={"alpha": 2.0, "beta": 1.0, "gamma": 3.0})
    assert d.placement["db"] == "beta"
    assert d.reasons["db"] == "lowest cost on beta (1)"


def test_a_dependent_group_follows_the_freshest_copy() -> None:
    d = decide(config(app=True), {"beta": copy(40.0), "gamma": copy(0.0)},
               costs={"beta": 0.0, "gamma": 10.0})
    assert d.placement == {"db": "gamma", "web": "gamma"}


def test_a_move_beyond_max_lag_is_refused_unless_forced() -> None:
    copies = {"alpha": copy(0.0, live=True), "gamma": copy(45.0)}
    d = decide(config(), copies, holders={"db": "alpha"}, moves={"db": "gamma"})
    assert d.placement["db"] == "alpha"
    assert ("not moved to gamma: gamma's copy of db-data is 45 s behind (max_lag 30 s) "
            "(`vigil group move --force`") in d.reasons["db"]
    d = decide(config(), copies, holders={"db": "alpha"}, moves={"db": "gamma"},
               forced=frozenset({"db"}))
    assert d.placement["db"] == "gamma"
    assert d.reasons["db"] == "moved to gamma by request"
    # forcing a move of the dependent group takes the whole set there
    d = decide(config(app=True), copies, holders={"db": "alpha", "web": "alpha"},
               moves={"web": "gamma"}, forced=frozenset({"web"}))
    assert d.placement == {"db": "gamma", "web": "gamma"}


def test_force_travels_as_its_own_request_kind_and_the_latest_move_decides() -> None:
    cfg = config()
    reqs = Requests("alpha", 1)
    forced = reqs.queue(AdminRequest("move", group="db", node="gamma", force=True))
    assert forced.kind == "force_move"
    plain = reqs.queue(AdminRequest("move", group="db", node="beta"))
    assert plain.kind == "move"
    assert apply(cfg, frozenset(), {forced.rid: forced}).forced == {"db"}
    both = apply(cfg, frozenset(), {forced.rid: forced, plain.rid: plain})
    assert both.moves == {"db": "beta"} and both.forced == frozenset()


def test_the_cost_reply_carries_this_nodes_copy_of_each_mirror_resource() -> None:
    cfg = config()
    core = NodeCore(cfg, "beta", incarnation=1, now=0.0)
    epoch = (1, "alpha")
    core.handle(Received(to_message(Declare(epoch, ("alpha", "beta")), "alpha"), "lan0"), 0.1)

    def reply(now: float) -> CostReply:
        out = core.handle(Received(to_message(CostRequest(epoch), "alpha", "beta"), "lan0"),
                          now)
        bodies = [decode(m).body for m in out.messages if m.type == "cost"]
        assert len(bodies) == 1 and isinstance(bodies[0], CostReply)
        return bodies[0]

    assert reply(0.2).copies == {"db-data": None}
    core.handle(MirrorState("db-data", copy(2.0), ("db.beta.7.aside",)), now=0.3)
    assert reply(0.4).copies == {"db-data": copy(2.0)}


# ---- through the protocol: cost replies, the master's round, the requests --------------------


def simulated(max_lag: str = "30s") -> Recorder:
    """sim_config's g0 (prefers alpha 0, beta 10, gamma 20) with a mirror resource, formed:
    alpha runs it and its copy is live; beta's copy is 45 s behind, gamma's 1 s."""
    cfg = sim_config(3, 1)
    resources = {**cfg.resources, "g0-r0": dataclasses.replace(
        cfg.resources["g0-r0"], type="mirror", params={"max_lag": max_lag})}
    # no simulated replication: the copies are the ones told here
    c = formed(dataclasses.replace(cfg, resources=resources), mirror_interval=None)
    assert c.where() == {"g0": "alpha"}
    c.inject("alpha", MirrorState("g0-r0", CopyFact(100, T, "alpha", live=True)))
    c.inject("beta", MirrorState("g0-r0", CopyFact(55, T - 45.0, "alpha")))
    c.inject("gamma", MirrorState("g0-r0", CopyFact(99, T - 1.0, "alpha")))
    c.run_for(0.05)
    return c


def test_after_a_crash_the_freshest_copy_takes_over_not_the_preferred_stale_one() -> None:
    c = simulated()
    c.crash("alpha")
    c.run_for(4.0)
    assert c.where() == {"g0": "gamma"}
    # gamma's copy arrived a few ms before alpha's last heartbeat: that little behind
    assert any("g0: lowest cost on gamma (2" in text and "its copy of g0-r0 is 0 s behind"
               in text for _, text in c.core("beta").decisions)


def test_a_lone_copy_the_source_outlived_by_more_than_max_lag_does_not_take_over() -> None:
    """Beta's copy was fresh when it arrived, but alpha (the source) went on for 40 s without
    another reaching beta (replication cut, heartbeats fine). With alpha gone and gamma in
    standby, beta's is the freshest copy among the members, yet 40 s of writes are missing
    from it: the group goes nowhere, and the decision says why."""
    c = simulated()
    c.inject("beta", MirrorState("g0-r0", CopyFact(99, T - 1.0, "alpha")))
    c.request("beta", AdminRequest("standby", node="gamma"))
    c.run_for(40.0)
    c.crash("alpha")
    c.run_for(4.0)
    assert c.where() == {"g0": None}
    assert any("no member can run it: beta's copy of g0-r0 is 4" in text
               and "behind (max_lag 30 s)" in text for _, text in c.core("beta").decisions)


def test_without_a_copy_within_max_lag_the_group_goes_nowhere_and_says_why() -> None:
    c = simulated()
    c.inject("gamma", MirrorState("g0-r0", CopyFact(40, T - 50.0, "alpha")))
    c.run_for(0.05)
    c.crash("alpha")
    c.run_for(4.0)
    # lags count from the freshest copy among the members: beta's is that now
    assert c.where() == {"g0": "beta"}
    # gamma holds the freshest copy but may not run it: beta's is too far behind it
    c = simulated()
    c.request("beta", AdminRequest("standby", node="gamma"))
    c.run_for(2.0)
    c.crash("alpha")
    c.run_for(4.0)
    assert c.where() == {"g0": None}
    assert any("g0: no member can run it: beta's copy of g0-r0 is 44 s behind (max_lag 30 s)"
               in text for _, text in c.core("beta").decisions)


def test_a_move_beyond_max_lag_is_refused_and_a_forced_one_goes() -> None:
    c = simulated()
    c.request("gamma", AdminRequest("move", group="g0", node="beta"))
    c.run_for(2.0)
    assert c.where() == {"g0": "alpha"}
    assert any("cannot move g0 to beta" in text and "beta's copy of g0-r0 is 45 s behind "
               "(max_lag 30 s)" in text for _, text in c.core("alpha").decisions)
    c.request("gamma", AdminRequest("move", group="g0", node="beta", force=True))
    c.run_for(2.0)
    assert c.where() == {"g0": "beta"}
    # beta runs it now: it stays, though its shell has not said its copy is live yet
    c.request("alpha", AdminRequest("standby", node="gamma"))
    c.run_for(2.0)
    assert c.where() == {"g0": "beta"}


def test_a_copy_promoted_while_the_mirror_is_out_of_service_may_be_moved_to_later() -> None:
    """`vigil resource promote`: the operator takes the mirror out of service on alpha (no
    writes there from then on) and makes beta's diverged copy beta's newest, taken now; it
    may take a while before they move the group: time while the mirror is out of service by
    hand does not count as beta's copy falling behind alpha, which writes nothing."""
    c = simulated()
    c.request("alpha", AdminRequest("disable", resource="g0-r0"))
    c.run_for(2.0)
    assert c.where() == {"g0": None}
    assert c.core("alpha").accepted.placement.get("g0") == "alpha"
    c.inject("alpha", MirrorState("g0-r0", CopyFact(101, T + 2.0, "alpha")))  # its final one
    c.inject("beta", MirrorState("g0-r0", CopyFact(102, T + 60.0, "beta")))  # promoted
    c.run_for(45.0)
    c.request("gamma", AdminRequest("move", group="g0", node="beta"))
    c.run_for(2.0)
    assert c.core("beta").accepted.placement.get("g0") == "beta", c.core("beta").decisions[-3:]
    c.request("gamma", AdminRequest("enable", resource="g0-r0"))
    c.run_for(2.0)
    assert c.where() == {"g0": "beta"}
