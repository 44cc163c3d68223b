"""Configuration strategy modules: the seed's pluggable "configuration strategy".

A strategy answers two questions of the transition protocol (docs/protocol.md):

* on every member, :meth:`Strategy.local_costs`: what does it cost *this* node to provide each
  group (``INFINITY`` when it cannot)? Only the member knows its fail counts, load and what it
  runs, which is why the seed has the master ask every node.
* on the transition master, :meth:`Strategy.decide`: given every member's costs, where does
  each group go (or nowhere)?

The core knows the built-in strategies by name (:data:`BUILTIN_STRATEGIES`); the daemon also
loads plug-ins from the entry-point group ``vigil.strategies`` (:mod:`vigil.actors.strategies`:
finding installed packages is the shell's business, not the pure core's). Both methods are
pure functions of their arguments: the simulation runs them thousands of times.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final

from vigil.cluster.mirrors import CopyFact, copy_lags, group_mirrors, max_lag
from vigil.cluster.nics import address_nics
from vigil.config import ClusterConfig, GroupConfig
from vigil.graph import DependencyGraph
from vigil.status import seconds

INFINITY = math.inf
#: Added to a member's cost of a group for each second its copy of one of the group's mirror
#: resources is behind the freshest copy among the members (docs/resources.md, "mirror"),
#: while the group runs on a member: a move is graceful then (the final snapshot brings the
#: rest), and the lag only costs transfer time.
COPY_WEIGHT: Final = 1.0
#: The same when no member runs the group (a takeover after its holder died): what a copy
#: lacks is lost for good, so freshness outweighs any preference (0.1 s behind outweighs a
#: preference of 100).
TAKEOVER_COPY_WEIGHT: Final = 1000.0


@dataclass(frozen=True, slots=True)
class LocalCostContext:
    """What a member knows when it prices the groups."""

    node: str
    config: ClusterConfig
    active: frozenset[str]  # groups in service (or starting) here
    fail_counts: Mapping[str, int]
    standby: frozenset[str]  # nodes in standby, cluster-wide administrative state
    missing_types: frozenset[str] = frozenset()  # resource types this node cannot run
    nics_down: Mapping[str, str] = field(default_factory=dict)  # NIC -> why it is unusable


@dataclass(frozen=True, slots=True)
class DecisionContext:
    """What the transition master knows when it decides placement."""

    config: ClusterConfig
    members: tuple[str, ...]  # sorted
    costs: Mapping[str, Mapping[str, float]]  # node -> group -> cost
    holders: Mapping[str, str]  # group -> member that has it active now
    moves: Mapping[str, str] = field(default_factory=dict)  # group -> node (manual requests)
    blocked: Mapping[str, str] = field(default_factory=dict)  # group -> why it may not run
    #: node -> mirror resource -> its newest copy of the data (None: none), from the cost
    #: replies
    copies: Mapping[str, Mapping[str, CopyFact | None]] = field(default_factory=dict)
    #: groups whose manual move (in ``moves``) was forced: it may go to a node whose copy is
    #: beyond max_lag (`vigil group move --force`)
    forced: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Decision:
    placement: Mapping[str, str | None]  # group -> node, None = nowhere
    reasons: Mapping[str, str]  # group -> why, for the log and `vigil simulate`


@dataclass(frozen=True, slots=True)
class CostExplanation:
    """A group's cost on one node, and the terms that make it up (or why it is INFINITY)."""

    cost: float
    reasons: tuple[str, ...]


def group_order(config: ClusterConfig) -> list[str]:
    """Groups with the ones they depend on first (deterministic)."""
    graph = DependencyGraph({g.name: g.depends_on for g in config.groups.values()})
    return graph.start_order()


class Strategy(ABC):
    """A configuration strategy. Guarantees an implementation must keep:

    * ``local_costs`` returns INFINITY for every group the node cannot run (standby, a missing
      resource type, fail count at ``migration_threshold``); the protocol never places a group
      on a node that priced it at INFINITY.
    * ``decide`` only names members, places a group that depends on another group on the same
      node as that group (or nowhere), and is deterministic for equal inputs: two masters with
      the same reports must decide the same thing.
    """

    name: str = ""

    @abstractmethod
    def local_costs(self, ctx: LocalCostContext) -> dict[str, float]: ...

    @abstractmethod
    def decide(self, ctx: DecisionContext) -> Decision: ...

    def explain_costs(self, ctx: LocalCostContext) -> dict[str, CostExplanation]:
        """Each group's cost on this node (as :meth:`local_costs`) and why, in words (`vigil
        simulate --show-costs`). A strategy that cannot say why gives its costs alone."""
        return {g: CostExplanation(c, (f"strategy {self.name or type(self).__name__} gives "
                                       "no reasons",))
                for g, c in self.local_costs(ctx).items()}

    @staticmethod
    def hard_limit(ctx: LocalCostContext, group: GroupConfig) -> str | None:
        """Why this node can never run the group now, or None."""
        if ctx.node in ctx.standby:
            return "node in standby"
        if ctx.fail_counts.get(group.name, 0) >= group.migration_threshold:
            return f"fail count reached migration_threshold {group.migration_threshold}"
        for rname in group.resources:
            rtype = ctx.config.resources[rname].type
            if rtype in ctx.missing_types:
                return f"resource type {rtype!r} not available on this node"
        return nic_limit(ctx.config, group, ctx.nics_down)

    @staticmethod
    def paths_lost(ctx: LocalCostContext, group: GroupConfig) -> int:
        """How many of the NICs the group's addresses may use are down on this node: a node
        with fewer healthy paths is a worse home, though it can still serve the group."""
        return sum(n in ctx.nics_down for nics in network_paths(ctx.config, group).values()
                   for n in nics)


def nic_limit(config: ClusterConfig, group: GroupConfig,
              nics_down: Mapping[str, str]) -> str | None:
    """Why no NIC of this node can carry one of the group's addresses, or None."""
    for rname, nics in network_paths(config, group).items():
        if nics and all(n in nics_down for n in nics):
            why = "; ".join(f"{n}: {nics_down[n]}" for n in nics)
            return f"no NIC of resource {rname} can carry its address here ({why})"
    return None


def network_paths(config: ClusterConfig, group: GroupConfig) -> dict[str, tuple[str, ...]]:
    """Resource -> the NICs it may put its address on, for the group's ip resources."""
    return {r: nics for r in group.resources if (nics := address_nics(config.resources[r]))}


def colocation_sets(config: ClusterConfig) -> list[list[str]]:
    """Groups joined by ``depends_on`` (which means "same node"), each in start order."""
    parent = {g: g for g in config.groups}

    def root(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for g, cfg in config.groups.items():
        for dep in cfg.depends_on:
            parent[root(g)] = root(dep)
    sets: dict[str, list[str]] = {}
    for g in group_order(config):
        sets.setdefault(root(g), []).append(g)
    return sorted(sets.values(), key=lambda gs: gs[0])


def runnable_on(ctx: DecisionContext, node: str, groups: list[str]) -> list[str]:
    """The groups of one colocation set that can run on ``node`` (with their dependencies)."""
    costs = ctx.costs.get(node, {})
    ok: list[str] = []
    for g in groups:
        if g in ctx.blocked or costs.get(g, INFINITY) == INFINITY:
            continue
        if all(dep in ok for dep in ctx.config.groups[g].depends_on):
            ok.append(g)
    return ok


#: Orders the candidate nodes of one colocation set: (sort key, why) for a node.
Ranker = Callable[[DecisionContext, str, list[str], str | None, int], tuple[float, str]]


@dataclass(frozen=True, slots=True)
class CopyWeights:
    """What the members' copies of mirrored data make of the costs (:func:`weigh_copies`)."""

    ctx: DecisionContext  # the context with the costs raised
    refused: Mapping[str, Mapping[str, str]]  # group -> member -> why its copy cannot serve
    notes: Mapping[str, Mapping[str, str]]  # group -> member -> its copy, in words


def weigh_copies(ctx: DecisionContext) -> CopyWeights:
    """The freshest copy wins: a member's cost of a group with mirror resources rises by
    :data:`COPY_WEIGHT` (:data:`TAKEOVER_COPY_WEIGHT` when no member runs the group) for
    each second its copy is behind the freshest copy among the members, and is INFINITY when
    that lag exceeds the resource's ``max_lag`` or when it has no copy while another member
    has one. A live copy (the data in service there, or the
    group's current holder, which starts it or runs it) is never behind. When no member has
    a copy (a first start), nothing changes; nor for the target of a forced move."""
    costs = {n: dict(c) for n, c in ctx.costs.items()}
    refused: dict[str, dict[str, str]] = {}
    notes: dict[str, dict[str, str]] = {}
    forced_to: dict[str, str] = {}
    for groups in colocation_sets(ctx.config):
        for g in groups:
            if g in ctx.forced and g in ctx.moves:
                forced_to.update(dict.fromkeys(groups, ctx.moves[g]))
    for g, gc in ctx.config.groups.items():
        for r in group_mirrors(ctx.config, gc):
            lags = copy_lags({n: ctx.copies.get(n, {}).get(r) for n in ctx.members})
            if all(lag is None for lag in lags.values()):
                continue  # a first start: nobody holds any data yet
            holder = ctx.holders.get(g)
            weight = TAKEOVER_COPY_WEIGHT
            if holder in lags:
                lags[holder] = 0.0
                weight = COPY_WEIGHT
            limit = max_lag(ctx.config.resources[r])
            for n, lag in lags.items():
                if n not in costs or forced_to.get(g) == n:
                    continue
                if lag is None:
                    why = f"{n} has no copy of {r} (another member has one)"
                elif lag > limit:
                    why = f"{n}'s copy of {r} is {seconds(lag)} behind (max_lag {seconds(limit)})"
                else:
                    costs[n][g] = costs[n].get(g, INFINITY) + weight * lag
                    live = n == holder or ((c := ctx.copies[n].get(r)) is not None and c.live)
                    notes.setdefault(g, {})[n] = (
                        f"its copy of {r} is live" if live else
                        f"it holds the freshest copy of {r}" if lag == 0 else
                        f"its copy of {r} is {seconds(lag)} behind")
                    continue
                if costs[n].get(g, INFINITY) < INFINITY:
                    refused.setdefault(g, {})[n] = why
                costs[n][g] = INFINITY
    if not refused and not notes:
        return CopyWeights(ctx, {}, {})
    return CopyWeights(replace(ctx, costs=costs), refused, notes)


def _place_sets(ctx: DecisionContext, rank: Ranker) -> Decision:
    """Place each colocation set on the member that can run most of it, then by ``rank``.

    A set is placed as a whole because ``depends_on`` between groups means "on the same node":
    choosing the node for the first group alone could strand a dependent that another node
    could have run together with it. The members' copies of mirrored data weigh in first
    (:func:`weigh_copies`).
    """
    weights = weigh_copies(ctx)
    ctx = weights.ctx
    placement: dict[str, str | None] = {}
    reasons: dict[str, str] = {}
    assigned: dict[str, int] = dict.fromkeys(ctx.members, 0)
    for groups in colocation_sets(ctx.config):
        holder = next((ctx.holders[g] for g in groups if g in ctx.holders), None)
        options = {n: runnable_on(ctx, n, groups) for n in ctx.members}
        options = {n: ok for n, ok in options.items() if ok}
        chosen: str | None = None
        why = ""
        most = max((len(ok) for ok in options.values()), default=0)
        for g in groups:
            move = ctx.moves.get(g)
            # A move that would strand a group of the set that could run elsewhere is
            # refused (the master says why) rather than silently stopping that group.
            if move is not None and g in options.get(move, ()) and len(options[move]) == most:
                chosen, why = move, f"moved to {move} by request"
                break
        if chosen is None and options:
            ranked = {n: rank(ctx, n, ok, holder, assigned[n]) for n, ok in options.items()}
            chosen = min(options, key=lambda n: (-len(options[n]), ranked[n][0],
                                                 0 if n == holder else 1, n))
            why = ranked[chosen][1]
        if chosen is not None:
            why = "; ".join([why, *(weights.notes[g][chosen] for g in groups
                                    if chosen in weights.notes.get(g, {}))])
        refusals = [w for g in groups for w in weights.refused.get(g, {}).values()]
        moved = [ctx.moves[g] for g in groups if g in ctx.moves]
        for g in groups:
            if chosen is not None and g in options[chosen]:
                placement[g] = chosen
                reasons[g] = why
                assigned[chosen] += 1
            else:
                placement[g] = None
                reasons[g] = (f"blocked: {ctx.blocked[g]}" if g in ctx.blocked else
                              "no member can run it" + (
                                  f" together with {', '.join(ctx.config.groups[g].depends_on)}"
                                  if ctx.config.groups[g].depends_on else "") + (
                                  f": {'; '.join(refusals)}" if refusals else ""))
            for target in moved:
                refused = weights.refused.get(g, {}).get(target)
                if refused and placement[g] != target:
                    reasons[g] += (f"; not moved to {target}: {refused} (`vigil group move "
                                   "--force` moves it there anyway, losing what its copy "
                                   "lacks)")
    return Decision(placement=placement, reasons=reasons)


class CostStrategy(Strategy):
    """Default: lowest cost wins; ties go to the current holder, then the lowest node name.

    A member's cost is its configured preference (``prefer``; nodes not listed cost 10 more
    than the worst listed one) minus ``stickiness`` where the group already runs (unless
    ``failback``), plus ``PATH_WEIGHT`` for each NIC down among those its ip resources may use
    (a node that lost one of two NICs still serves, but one with both is a better home;
    every NIC of one resource down is INFINITY), and the master adds ``LOAD_WEIGHT`` for each
    group it has already placed on a node in the same decision, so that unpinned groups
    spread out.
    """

    name = "cost"
    LOAD_WEIGHT = 1.0
    #: added for each NIC down among those the group's addresses may use
    PATH_WEIGHT = 1.0

    def local_costs(self, ctx: LocalCostContext) -> dict[str, float]:
        return {g: e.cost for g, e in self.explain_costs(ctx).items()}

    def explain_costs(self, ctx: LocalCostContext) -> dict[str, CostExplanation]:
        out: dict[str, CostExplanation] = {}
        for group in ctx.config.groups.values():
            limit = self.hard_limit(ctx, group)
            if limit is not None:
                out[group.name] = CostExplanation(INFINITY, (limit,))
                continue
            why: list[str] = []
            if group.prefer and ctx.node in group.prefer:
                base = group.prefer[ctx.node]
                why.append(f"prefer {ctx.node} = {base:g}")
            elif group.prefer:
                base = max(group.prefer.values()) + 10.0
                why.append(f"not in prefer: the worst preference + 10 = {base:g}")
            else:
                base = 0.0
                why.append("no preferences: 0")
            if group.name in ctx.active and not group.failback:
                base -= group.stickiness
                why.append(f"runs here: stickiness -{group.stickiness:g}")
            lost = self.paths_lost(ctx, group)
            if lost:
                why.append(f"{lost} NIC(s) of its addresses down: +{self.PATH_WEIGHT * lost:g}")
            failures = ctx.fail_counts.get(group.name, 0)
            if failures:
                why.append(f"{failures} failure(s) here, INFINITY at migration_threshold "
                           f"{group.migration_threshold}")
            out[group.name] = CostExplanation(base + self.PATH_WEIGHT * lost, tuple(why))
        return out

    def decide(self, ctx: DecisionContext) -> Decision:
        return _place_sets(ctx, _rank_by_cost)


def _rank_by_cost(
    ctx: DecisionContext, node: str, groups: list[str], holder: str | None, load: int
) -> tuple[float, str]:
    cost = sum(ctx.costs[node][g] for g in groups) + CostStrategy.LOAD_WEIGHT * load
    if node == holder:
        return cost, f"stays on {node} (cost {cost:g})"
    return cost, f"lowest cost on {node} ({cost:g})"


class PreferredListStrategy(Strategy):
    """heartbeat's haresources: the first node of the group's ``nodes`` list that is up runs
    it; no costs beyond "can" or "cannot". With ``failback = false`` a group stays where it
    runs when a more preferred node comes back."""

    name = "preferred"

    def local_costs(self, ctx: LocalCostContext) -> dict[str, float]:
        return {g: e.cost for g, e in self.explain_costs(ctx).items()}

    def explain_costs(self, ctx: LocalCostContext) -> dict[str, CostExplanation]:
        out: dict[str, CostExplanation] = {}
        for group in ctx.config.groups.values():
            order = group.nodes or tuple(sorted(ctx.config.nodes))
            limit = self.hard_limit(ctx, group)
            if ctx.node not in order:
                out[group.name] = CostExplanation(INFINITY, (f"{ctx.node} is not in the "
                                                             "group's nodes",))
            elif limit is not None:
                out[group.name] = CostExplanation(INFINITY, (limit,))
            else:
                index = order.index(ctx.node)
                out[group.name] = CostExplanation(float(index), (
                    f"position {index + 1} in the group's nodes ({', '.join(order)})",))
        return out

    def decide(self, ctx: DecisionContext) -> Decision:
        return _place_sets(ctx, _rank_by_list)


def _rank_by_list(
    ctx: DecisionContext, node: str, groups: list[str], holder: str | None, load: int
) -> tuple[float, str]:
    if node == holder and not ctx.config.groups[groups[0]].failback:
        return -math.inf, f"stays on {node} (failback off)"
    return ctx.costs[node][groups[0]], f"first available in the preference list: {node}"


#: Where the daemon finds strategy plug-ins (named here for the error that mentions it).
ENTRY_POINT_GROUP: Final = "vigil.strategies"
#: The strategies the core knows without plug-ins (the simulation and ``NodeCore(strategy=None)``
#: use these; the daemon adds the entry-point plug-ins: :mod:`vigil.actors.strategies`).
BUILTIN_STRATEGIES: Final[Mapping[str, type[Strategy]]] = MappingProxyType(
    {"cost": CostStrategy, "preferred": PreferredListStrategy})


class UnknownStrategy(LookupError):
    """No strategy of that name; the message lists the known ones."""


def unknown_strategy(name: str, known: Iterable[str]) -> UnknownStrategy:
    return UnknownStrategy(
        f"unknown strategy {name!r}; known strategies: {', '.join(sorted(known))} "
        f"(plug-ins register in the entry-point group {ENTRY_POINT_GROUP!r})")


def builtin_strategy(name: str) -> Strategy:
    """A new instance of the built-in strategy ``name``; :class:`UnknownStrategy` if none."""
    try:
        return BUILTIN_STRATEGIES[name]()
    except KeyError:
        raise unknown_strategy(name, BUILTIN_STRATEGIES) from None
