"""Unit tests of the configuration strategies' pure functions (vigil.cluster.strategy).

Contexts are built by hand: ``local_costs`` gets a LocalCostContext (one node's view),
``decide`` a DecisionContext (the master's view: every member's costs, who holds what,
manual moves and blocked groups).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from vigil.actors.strategies import available_strategies, load_strategy
from vigil.cluster.strategy import (
    INFINITY,
    CostStrategy,
    Decision,
    DecisionContext,
    LocalCostContext,
    PreferredListStrategy,
    Strategy,
    UnknownStrategy,
    builtin_strategy,
    colocation_sets,
    group_order,
)
from vigil.config import (
    ClusterConfig,
    GroupConfig,
    LinkConfig,
    NodeConfig,
    ResourceConfig,
)

NODES = ("alpha", "beta", "gamma")


def config(*groups: GroupConfig, nodes: tuple[str, ...] = NODES,
           types: Mapping[str, str] | None = None) -> ClusterConfig:
    """A cluster whose groups each have one resource ``<group>-r`` (type ``dummy`` unless
    ``types`` says otherwise)."""
    types = types or {}
    resources = {}
    named = []
    for g in groups:
        rname = f"{g.name}-r"
        resources[rname] = ResourceConfig(rname, types.get(g.name, "dummy"), g.name)
        named.append(GroupConfig(
            g.name, (rname,), depends_on=g.depends_on, prefer=g.prefer, nodes=g.nodes,
            failback=g.failback, stickiness=g.stickiness,
            migration_threshold=g.migration_threshold))
    return ClusterConfig(
        name="unit", key_file=Path("/nonexistent"),
        nodes={n: NodeConfig(n, (LinkConfig("lan0", "127.0.0.1", 7600 + i),))
               for i, n in enumerate(nodes)},
        groups={g.name: g for g in named}, resources=resources, digest="unit")


def group(name: str, **kwargs: object) -> GroupConfig:
    return GroupConfig(name, (), **kwargs)  # type: ignore[arg-type]


def local(cfg: ClusterConfig, node: str, *, active: tuple[str, ...] = (),
          fails: Mapping[str, int] | None = None, standby: tuple[str, ...] = (),
          missing: tuple[str, ...] = ()) -> LocalCostContext:
    return LocalCostContext(node=node, config=cfg, active=frozenset(active),
                            fail_counts=dict(fails or {}), standby=frozenset(standby),
                            missing_types=frozenset(missing))


def decide(strategy: Strategy, cfg: ClusterConfig, costs: Mapping[str, Mapping[str, float]],
           *, holders: Mapping[str, str] | None = None,
           moves: Mapping[str, str] | None = None,
           blocked: Mapping[str, str] | None = None,
           members: tuple[str, ...] | None = None) -> Decision:
    ctx = DecisionContext(config=cfg, members=members or tuple(sorted(costs)), costs=costs,
                          holders=holders or {}, moves=moves or {}, blocked=blocked or {})
    return strategy.decide(ctx)


def priced(strategy: Strategy, cfg: ClusterConfig, *, members: tuple[str, ...] = NODES,
           active: Mapping[str, tuple[str, ...]] | None = None,
           **kwargs: object) -> dict[str, dict[str, float]]:
    """Every member's local_costs, the way the master collects them."""
    active = active or {}
    return {n: strategy.local_costs(local(cfg, n, active=active.get(n, ()), **kwargs))  # type: ignore[arg-type]
            for n in members}


# ---- CostStrategy.decide -------------------------------------------------------------------


def test_the_lowest_cost_wins() -> None:
    cfg = config(group("web"))
    d = decide(CostStrategy(), cfg, {"alpha": {"web": 5.0}, "beta": {"web": 1.0},
                                     "gamma": {"web": 3.0}})
    assert d.placement == {"web": "beta"}
    assert "beta" in d.reasons["web"]


def test_a_tie_goes_to_the_current_holder() -> None:
    cfg = config(group("web"))
    costs = {n: {"web": 2.0} for n in NODES}
    d = decide(CostStrategy(), cfg, costs, holders={"web": "gamma"})
    assert d.placement == {"web": "gamma"}
    assert d.reasons["web"].startswith("stays on gamma")


def test_a_tie_without_a_holder_goes_to_the_lowest_name() -> None:
    cfg = config(group("web"))
    costs = {n: {"web": 2.0} for n in ("gamma", "beta")}
    assert decide(CostStrategy(), cfg, costs).placement == {"web": "beta"}
    # a holder that is not among the tied cheapest does not win the tie
    costs = {"alpha": {"web": 9.0}, "beta": {"web": 2.0}, "gamma": {"web": 2.0}}
    assert decide(CostStrategy(), cfg, costs, holders={"web": "alpha"}).placement == {
        "web": "beta"}


def test_infinite_cost_everywhere_places_the_group_nowhere() -> None:
    cfg = config(group("web"))
    d = decide(CostStrategy(), cfg, {n: {"web": INFINITY} for n in NODES})
    assert d.placement == {"web": None}
    assert d.reasons["web"] == "no member can run it"


def test_a_group_is_never_placed_where_it_costs_infinity_nor_on_a_non_member() -> None:
    cfg = config(group("web"))
    costs = {"alpha": {"web": INFINITY}, "beta": {"web": 50.0}, "zulu": {"web": 0.0}}
    d = decide(CostStrategy(), cfg, costs, members=("alpha", "beta"))
    assert d.placement == {"web": "beta"}
    # a member missing from the costs (it did not answer) counts as "cannot"
    d = decide(CostStrategy(), cfg, {"alpha": {}, "beta": {"web": 7.0}})
    assert d.placement == {"web": "beta"}


def test_a_blocked_group_is_placed_nowhere_and_says_why() -> None:
    cfg = config(group("web"), group("db"))
    costs = {n: {"web": 0.0, "db": 0.0} for n in NODES}
    d = decide(CostStrategy(), cfg, costs, blocked={"db": "a stop failed on beta"})
    assert d.placement["db"] is None
    assert d.reasons["db"] == "blocked: a stop failed on beta"
    assert d.placement["web"] is not None


# ---- CostStrategy.local_costs --------------------------------------------------------------


def test_local_costs_follow_prefer_and_charge_unlisted_nodes_more() -> None:
    cfg = config(group("web", prefer={"alpha": 0.0, "beta": 5.0}), group("any"))
    s = CostStrategy()
    assert s.local_costs(local(cfg, "alpha")) == {"web": 0.0, "any": 0.0}
    assert s.local_costs(local(cfg, "beta")) == {"web": 5.0, "any": 0.0}
    assert s.local_costs(local(cfg, "gamma")) == {"web": 15.0, "any": 0.0}


def test_stickiness_keeps_a_group_where_it_runs_unless_failback() -> None:
    sticky = config(group("web", prefer={"alpha": 0.0, "beta": 10.0}))
    s = CostStrategy()
    assert s.local_costs(local(sticky, "beta", active=("web",))) == {"web": 10.0 - 100.0}
    costs = priced(s, sticky, active={"beta": ("web",)})
    assert decide(s, sticky, costs, holders={"web": "beta"}).placement == {"web": "beta"}

    back = config(group("web", prefer={"alpha": 0.0, "beta": 10.0}, failback=True))
    assert s.local_costs(local(back, "beta", active=("web",))) == {"web": 10.0}
    costs = priced(s, back, active={"beta": ("web",)})
    assert decide(s, back, costs, holders={"web": "beta"}).placement == {"web": "alpha"}


def test_small_stickiness_loses_to_a_much_cheaper_node() -> None:
    cfg = config(group("web", prefer={"alpha": 0.0, "beta": 50.0}, stickiness=10.0))
    s = CostStrategy()
    costs = priced(s, cfg, active={"beta": ("web",)})
    assert costs["beta"]["web"] == 40.0
    assert decide(s, cfg, costs, holders={"web": "beta"}).placement == {"web": "alpha"}


@pytest.mark.parametrize("strategy", [CostStrategy(), PreferredListStrategy()],
                         ids=["cost", "preferred"])
def test_standby_missing_type_and_fail_count_at_threshold_cost_infinity(
    strategy: Strategy,
) -> None:
    cfg = config(group("web", migration_threshold=3), group("db", migration_threshold=3),
                 types={"db": "postgres"})
    finite = strategy.local_costs(local(cfg, "alpha"))
    assert all(v != INFINITY for v in finite.values())
    # standby: nothing can run here
    assert strategy.local_costs(local(cfg, "alpha", standby=("alpha",))) == {
        "web": INFINITY, "db": INFINITY}
    # standby of another node changes nothing here
    assert strategy.local_costs(local(cfg, "alpha", standby=("beta",))) == finite
    # a missing resource type: only the groups that use it
    costs = strategy.local_costs(local(cfg, "alpha", missing=("postgres",)))
    assert costs["db"] == INFINITY and costs["web"] == finite["web"]
    # fail counts: below the threshold still finite, at it infinite
    assert strategy.local_costs(local(cfg, "alpha", fails={"web": 2}))["web"] == finite["web"]
    costs = strategy.local_costs(local(cfg, "alpha", fails={"web": 3}))
    assert costs["web"] == INFINITY and costs["db"] == finite["db"]


def test_hard_limit_says_why_a_node_cannot_run_a_group() -> None:
    cfg = config(group("db", migration_threshold=2), types={"db": "postgres"})
    g = cfg.groups["db"]
    assert Strategy.hard_limit(local(cfg, "alpha"), g) is None
    assert Strategy.hard_limit(local(cfg, "alpha", standby=("alpha",)), g) == "node in standby"
    assert "migration_threshold 2" in str(Strategy.hard_limit(
        local(cfg, "alpha", fails={"db": 2}), g))
    assert "'postgres'" in str(Strategy.hard_limit(local(cfg, "alpha", missing=("postgres",)),
                                                   g))


# ---- colocation sets -----------------------------------------------------------------------


def chain_config(**app: object) -> ClusterConfig:
    """ip <- app (app depends on ip: same node, started after it), plus a free group."""
    return config(group("ip", prefer={"alpha": 0.0, "beta": 10.0, "gamma": 20.0}),
                  group("app", depends_on=("ip",), **app),
                  group("free"))


def test_colocation_sets_join_groups_by_depends_on_in_start_order() -> None:
    cfg = config(group("c", depends_on=("b",)), group("b", depends_on=("a",)), group("a"),
                 group("z"), group("y", depends_on=("z",)))
    assert colocation_sets(cfg) == [["a", "b", "c"], ["z", "y"]]
    order = group_order(cfg)
    assert order.index("a") < order.index("b") < order.index("c")
    assert order.index("z") < order.index("y")


def test_a_colocation_set_goes_as_a_whole_to_the_node_that_can_run_most_of_it() -> None:
    cfg = chain_config()
    # alpha is the cheapest for ip but cannot run app; beta can run both
    costs = {"alpha": {"ip": 0.0, "app": INFINITY, "free": 0.0},
             "beta": {"ip": 10.0, "app": 0.0, "free": 0.0},
             "gamma": {"ip": 20.0, "app": 0.0, "free": 0.0}}
    d = decide(CostStrategy(), cfg, costs)
    assert d.placement["ip"] == d.placement["app"] == "beta"


def test_part_of_a_set_runs_where_the_rest_cannot_run_anywhere() -> None:
    cfg = chain_config()
    costs = {n: {"ip": 10.0 * i, "app": INFINITY, "free": 0.0} for i, n in enumerate(NODES)}
    d = decide(CostStrategy(), cfg, costs)
    assert d.placement["ip"] == "alpha"
    assert d.placement["app"] is None
    assert d.reasons["app"] == "no member can run it together with ip"


def test_a_dependent_is_never_placed_without_what_it_depends_on() -> None:
    cfg = chain_config()
    # app could run on gamma but ip cannot: app cannot go there alone
    costs = {"alpha": {"ip": INFINITY, "app": INFINITY, "free": 0.0},
             "beta": {"ip": INFINITY, "app": INFINITY, "free": 0.0},
             "gamma": {"ip": INFINITY, "app": 0.0, "free": 0.0}}
    d = decide(CostStrategy(), cfg, costs)
    assert d.placement["ip"] is None and d.placement["app"] is None


def test_the_sum_of_the_set_decides_between_nodes_that_can_run_all_of_it() -> None:
    cfg = chain_config()
    costs = {"alpha": {"ip": 0.0, "app": 30.0, "free": 0.0},
             "beta": {"ip": 10.0, "app": 5.0, "free": 0.0},
             "gamma": {"ip": 20.0, "app": 0.0, "free": 0.0}}
    d = decide(CostStrategy(), cfg, costs)
    assert d.placement["ip"] == d.placement["app"] == "beta"  # 15 < 20 < 30


# ---- manual moves --------------------------------------------------------------------------


def test_a_manual_move_is_honoured_even_to_a_more_expensive_node() -> None:
    cfg = config(group("web", prefer={"alpha": 0.0, "beta": 10.0, "gamma": 20.0}))
    s = CostStrategy()
    costs = priced(s, cfg, active={"alpha": ("web",)})
    d = decide(s, cfg, costs, holders={"web": "alpha"}, moves={"web": "gamma"})
    assert d.placement == {"web": "gamma"}
    assert d.reasons["web"] == "moved to gamma by request"


def test_a_move_of_any_group_of_a_set_moves_the_whole_set() -> None:
    cfg = chain_config()
    costs = {n: {"ip": 0.0, "app": 0.0, "free": 0.0} for n in NODES}
    d = decide(CostStrategy(), cfg, costs, moves={"app": "gamma"})
    assert d.placement["ip"] == d.placement["app"] == "gamma"


def test_a_move_that_would_strand_a_group_of_the_set_is_refused() -> None:
    cfg = chain_config()
    # alpha runs the set (sticky); beta could run ip but not app
    costs = {"alpha": {"ip": -100.0, "app": -100.0, "free": 0.0},
             "beta": {"ip": 0.0, "app": INFINITY, "free": 0.0},
             "gamma": {"ip": 0.0, "app": 0.0, "free": 0.0}}
    d = decide(CostStrategy(), cfg, costs, holders={"ip": "alpha", "app": "alpha"},
               moves={"ip": "beta"})
    assert d.placement["ip"] == d.placement["app"] == "alpha"
    assert "by request" not in d.reasons["ip"]


def test_a_move_to_a_node_that_cannot_run_the_group_or_is_not_a_member_is_refused() -> None:
    cfg = config(group("web"))
    costs = {"alpha": {"web": 0.0}, "beta": {"web": INFINITY}}
    s = CostStrategy()
    assert decide(s, cfg, costs, holders={"web": "alpha"}, moves={"web": "beta"}).placement == {
        "web": "alpha"}
    assert decide(s, cfg, costs, holders={"web": "alpha"},
                  moves={"web": "gamma"}).placement == {"web": "alpha"}


# ---- load spreading ------------------------------------------------------------------------


def test_unpinned_groups_spread_over_the_members() -> None:
    cfg = config(*(group(f"g{i}") for i in range(6)))
    s = CostStrategy()
    d = decide(s, cfg, priced(s, cfg))
    per_node = {n: sum(1 for v in d.placement.values() if v == n) for n in NODES}
    assert per_node == {"alpha": 2, "beta": 2, "gamma": 2}


def test_load_does_not_outweigh_a_real_preference() -> None:
    cfg = config(*(group(f"g{i}", prefer={"alpha": 0.0}) for i in range(3)))
    s = CostStrategy()
    costs = priced(s, cfg)
    assert costs["beta"]["g0"] == 10.0  # unlisted: 10 more than the worst listed
    d = decide(s, cfg, costs)
    assert set(d.placement.values()) == {"alpha"}  # loads 0+1+2 stay below 10


def test_a_member_that_runs_its_groups_keeps_them_when_a_new_node_joins() -> None:
    cfg = config(*(group(f"g{i}") for i in range(4)))
    s = CostStrategy()
    active = {"alpha": ("g0", "g1"), "beta": ("g2", "g3")}
    holders = {g: n for n, gs in active.items() for g in gs}
    d = decide(s, cfg, priced(s, cfg, active=active), holders=holders)
    assert d.placement == holders  # gamma joins empty; nothing moves to it


# ---- PreferredListStrategy -----------------------------------------------------------------


def test_preferred_list_costs_are_the_position_in_nodes() -> None:
    cfg = config(group("web", nodes=("gamma", "alpha")), group("any"))
    s = PreferredListStrategy()
    assert s.local_costs(local(cfg, "gamma")) == {"web": 0.0, "any": 2.0}
    assert s.local_costs(local(cfg, "alpha")) == {"web": 1.0, "any": 0.0}
    assert s.local_costs(local(cfg, "beta")) == {"web": INFINITY, "any": 1.0}


def test_preferred_list_picks_the_first_available_node() -> None:
    cfg = config(group("web", nodes=("gamma", "beta", "alpha")))
    s = PreferredListStrategy()
    assert decide(s, cfg, priced(s, cfg)).placement == {"web": "gamma"}
    members = ("alpha", "beta")
    d = decide(s, cfg, priced(s, cfg, members=members), members=members)
    assert d.placement == {"web": "beta"}
    assert d.reasons["web"] == "first available in the preference list: beta"
    d = decide(s, cfg, priced(s, cfg, standby=("gamma",)))
    assert d.placement == {"web": "beta"}


def test_preferred_list_keeps_the_holder_without_failback_and_moves_back_with_it() -> None:
    s = PreferredListStrategy()
    stay = config(group("web", nodes=("gamma", "beta", "alpha")))
    d = decide(s, stay, priced(s, stay), holders={"web": "alpha"})
    assert d.placement == {"web": "alpha"}
    assert d.reasons["web"] == "stays on alpha (failback off)"
    back = config(group("web", nodes=("gamma", "beta", "alpha"), failback=True))
    assert decide(s, back, priced(s, back), holders={"web": "alpha"}).placement == {
        "web": "gamma"}


def test_preferred_list_never_uses_a_node_outside_the_list() -> None:
    cfg = config(group("web", nodes=("gamma",)))
    s = PreferredListStrategy()
    members = ("alpha", "beta")
    d = decide(s, cfg, priced(s, cfg, members=members), members=members)
    assert d.placement == {"web": None}


# ---- loading and determinism ---------------------------------------------------------------


@pytest.mark.parametrize("load", [builtin_strategy, load_strategy],
                         ids=["core built-ins", "daemon with plug-ins"])
def test_built_in_strategies_load_by_name(load: Callable[[str], Strategy]) -> None:
    assert isinstance(load("cost"), CostStrategy)
    assert isinstance(load("preferred"), PreferredListStrategy)
    assert {"cost", "preferred"} <= set(available_strategies())


@pytest.mark.parametrize("load", [builtin_strategy, load_strategy],
                         ids=["core built-ins", "daemon with plug-ins"])
def test_an_unknown_strategy_names_the_known_ones(load: Callable[[str], Strategy]) -> None:
    with pytest.raises(UnknownStrategy) as info:
        load("nope")
    text = str(info.value)
    assert "'nope'" in text and "cost" in text and "preferred" in text
    assert isinstance(info.value, LookupError)


def test_plug_in_strategies_are_the_shells_the_core_knows_only_its_built_ins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "vigil_test_strategy.py").write_text(
        "from vigil.cluster.strategy import CostStrategy\n\n"
        "class Thrifty(CostStrategy):\n    pass\n")
    dist = tmp_path / "vigil_test_strategy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vigil-test-strategy\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[vigil.strategies]\nthrifty = vigil_test_strategy:Thrifty\n"
        "broken = no_such_module_for_vigil:Strategy\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert type(load_strategy("thrifty")).__name__ == "Thrifty"
    assert "broken" not in available_strategies()  # skipped, the others still load
    with pytest.raises(UnknownStrategy, match="'thrifty'"):
        builtin_strategy("thrifty")


@pytest.mark.parametrize("strategy", [CostStrategy(), PreferredListStrategy()],
                         ids=["cost", "preferred"])
def test_decide_is_deterministic_whatever_the_order_of_its_inputs(strategy: Strategy) -> None:
    groups = [group(f"g{i}", nodes=NODES[i % 3:] + NODES[:i % 3]) for i in range(5)]
    groups.append(group("dep", depends_on=("g1",)))
    cfg = config(*groups)
    active = {"beta": ("g1", "dep"), "gamma": ("g4",)}
    holders = {"g1": "beta", "dep": "beta", "g4": "gamma"}
    costs = priced(strategy, cfg, active=active)
    first = decide(strategy, cfg, costs, holders=holders)
    assert decide(strategy, cfg, costs, holders=holders) == first
    shuffled = {n: dict(reversed(list(costs[n].items()))) for n in reversed(list(costs))}
    again = decide(strategy, cfg, shuffled, holders=dict(reversed(list(holders.items()))))
    assert again.placement == first.placement and again.reasons == first.reasons
    # every group is placed on a member, with its dependency
    assert all(n in NODES for n in first.placement.values())
    assert first.placement["dep"] == first.placement["g1"]


def test_infinity_is_math_inf() -> None:
    assert math.inf == INFINITY


# ---- explanations (`vigil simulate --show-costs`) -----------------------------------------


@pytest.mark.parametrize("strategy", [CostStrategy(), PreferredListStrategy()],
                         ids=["cost", "preferred"])
def test_explained_costs_are_the_local_costs(strategy: Strategy) -> None:
    cfg = config(group("web", prefer={"alpha": 0.0, "beta": 5.0}, nodes=("beta", "alpha"),
                       migration_threshold=2), group("db"), types={"db": "postgres"})
    for ctx in (local(cfg, "alpha"), local(cfg, "beta", active=("web",), fails={"web": 1}),
                local(cfg, "gamma", missing=("postgres",)), local(cfg, "alpha", fails={"web": 2}),
                local(cfg, "beta", standby=("beta",))):
        explained = strategy.explain_costs(ctx)
        assert {g: e.cost for g, e in explained.items()} == strategy.local_costs(ctx)
        assert all(e.reasons for e in explained.values())


def test_cost_explanations_name_every_term() -> None:
    cfg = config(group("web", prefer={"alpha": 0.0, "beta": 5.0}, stickiness=30.0,
                       migration_threshold=3))
    s = CostStrategy()
    assert s.explain_costs(local(cfg, "alpha"))["web"].reasons == ("prefer alpha = 0",)
    beta = s.explain_costs(local(cfg, "beta", active=("web",), fails={"web": 1}))["web"]
    assert beta.cost == -25.0
    assert beta.reasons == ("prefer beta = 5", "runs here: stickiness -30",
                            "1 failure(s) here, INFINITY at migration_threshold 3")
    gamma = s.explain_costs(local(cfg, "gamma"))["web"]
    assert (gamma.cost, gamma.reasons) == (15.0, ("not in prefer: the worst preference + 10 "
                                                  "= 15",))
    standby = s.explain_costs(local(cfg, "alpha", standby=("alpha",)))["web"]
    assert (standby.cost, standby.reasons) == (INFINITY, ("node in standby",))


def test_preferred_list_explanations_give_the_position() -> None:
    cfg = config(group("web", nodes=("beta", "alpha")))
    s = PreferredListStrategy()
    assert s.explain_costs(local(cfg, "alpha"))["web"].reasons == (
        "position 2 in the group's nodes (beta, alpha)",)
    assert s.explain_costs(local(cfg, "gamma"))["web"].reasons == (
        "gamma is not in the group's nodes",)


def test_a_strategy_without_explanations_still_gives_its_costs() -> None:
    class Flat(Strategy):
        name = "flat"

        def local_costs(self, ctx: LocalCostContext) -> dict[str, float]:
            return dict.fromkeys(ctx.config.groups, 1.0)

        def decide(self, ctx: DecisionContext) -> Decision:
            return Decision({}, {})

    explained = Flat().explain_costs(local(config(group("web")), "alpha"))
    assert explained["web"].cost == 1.0
    assert explained["web"].reasons == ("strategy flat gives no reasons",)
