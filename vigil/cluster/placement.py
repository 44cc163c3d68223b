"""The master's decision, as one pure function: where every group goes, what must stop
first, and which nodes must be fenced before anything starts.

``plan()`` knows nothing of messages or time: it takes what the members reported and what
they cost, and returns a :class:`Plan`. The safety rules that make a plan safe to carry out
are here, next to the placement they protect (docs/protocol.md, "Why the invariants hold"):

- every group active on a member but placed elsewhere is stopped there first;
- a group placed somewhere whose *possible* holder is not a member (any placement that may be
  in effect names a node outside the view, and that node did not leave cleanly) is held until
  that node is fenced: it may still run the group;
- with ``two_node`` every absent node is suspect (two single-node quorums need not intersect);
- a group whose stop failed on a member stays named there (blocked): it may still run there,
  and naming it keeps that node a suspect should it be lost before it is fenced;
- with a power fencer (``hold``), a group that a suspect not known to be off may still run is
  *held*: named on that suspect, so nothing starts it elsewhere and the next transition still
  sees the suspect, until the suspect is fenced (the rest of the placement goes ahead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vigil.cluster.mirrors import CopyFact
from vigil.cluster.strategy import DecisionContext, Strategy, colocation_sets
from vigil.cluster.wire import MAINTENANCE, Accepted
from vigil.config import ClusterConfig


@dataclass(frozen=True, slots=True)
class Plan:
    placement: dict[str, str | None]
    reasons: dict[str, str]
    stops: dict[str, tuple[str, ...]]  # member -> groups it must stop first
    suspects: frozenset[str]  # nodes that must be off before the start phase
    blocked: dict[str, str] = field(default_factory=dict)  # group -> why it cannot move
    held: dict[str, str] = field(default_factory=dict)  # group -> suspect it waits for
    unclean: dict[str, str] = field(default_factory=dict)  # group -> member its stop failed on


def stop_bound(config: ClusterConfig) -> float:
    """Seconds a node may need to take everything out of service (the silence fencer waits
    this long after a lost node's lease ran out): groups stop in parallel, but the resources
    of one colocation set (groups tied by ``depends_on``) stop one after the other."""
    return max((sum(config.resources[r].stop_timeout
                    for g in groups for r in config.groups[g].resources)
                for groups in colocation_sets(config)), default=0.0)


def plan(
    config: ClusterConfig,
    strategy: Strategy,
    *,
    view: Sequence[str],
    reports: Mapping[str, Mapping[str, str]],
    costs: Mapping[str, Mapping[str, float]],
    known: Sequence[Accepted],
    admin: frozenset[str],
    moves: Mapping[str, str],
    departed: Mapping[str, int],
    two_node: bool,
    off: frozenset[str] = frozenset(),
    hold: bool = False,
    copies: Mapping[str, Mapping[str, CopyFact | None]] | None = None,
    forced: frozenset[str] = frozenset(),
) -> Plan:
    """``reports``: member -> group active there -> its local state; ``known``: every
    placement possibly in effect, oldest first (the last is the highest accepted); ``off``:
    nodes known to be off (fenced, or confirmed off by an operator): no suspects; ``hold``:
    hold the groups of the other suspects instead of waiting for them (a power fencer);
    ``copies``: member -> mirror resource -> its copy of the data; ``forced``: groups whose
    move may go where that copy is beyond max_lag."""
    holders: dict[str, str] = {}
    active_on: dict[str, set[str]] = {}
    blocked: dict[str, str] = {}
    unclean: dict[str, str] = {}
    for node, states in reports.items():
        for g, state in states.items():
            active_on.setdefault(node, set()).add(g)
            if state in ("running", "starting"):
                holders.setdefault(g, node)
            if state == "unclean":
                blocked[g] = f"a stop failed on {node}; it needs fencing"
                unclean.setdefault(g, node)
    if MAINTENANCE in admin:
        # Nothing moves, starts or stops: the placement is what runs where it runs. A holder
        # that is not a member stays named (it may still run the group): the transition after
        # maintenance must fence it before starting the group elsewhere.
        last = known[-1].placement if known else {}
        placement = {g: holders.get(g) or (last.get(g) if last.get(g) not in view else None)
                     for g in config.groups}
        reasons = dict.fromkeys(config.groups, "maintenance mode: left as it is")
    else:
        decision = strategy.decide(DecisionContext(
            config=config, members=tuple(view), costs=costs, holders=holders, moves=moves,
            blocked=blocked, copies=copies or {}, forced=forced))
        placement = dict(decision.placement)
        reasons = dict(decision.reasons)
    for g, node in unclean.items():
        placement[g] = node
    suspects: set[str] = set()
    possible: dict[str, list[str]] = {}  # group -> non-members that may run it, newest last
    for acc in known:
        for g, previous in acc.placement.items():
            if previous is not None and previous not in view and previous not in departed:
                if placement.get(g) is not None:
                    suspects.add(previous)
                if previous in possible.setdefault(g, []):
                    possible[g].remove(previous)
                possible[g].append(previous)
    absent = sorted(n for n in config.nodes if n not in view and n not in departed)
    if two_node and any(t is not None for t in placement.values()):
        # Each of two nodes is a quorum alone, so quorums need not intersect and the highest
        # accepted placement may not be the last one: whoever is not with us could be
        # running anything and must be fenced.
        suspects |= set(absent)
    held: dict[str, str] = {}
    if hold:
        for g in config.groups:
            if g in holders or g in unclean:
                continue  # running on a member, or blocked there: it is not on a suspect
            maybe = possible.get(g, []) + (absent if two_node else [])
            waiting = [n for n in maybe if n not in off]
            if waiting:
                held[g] = waiting[-1]
                placement[g] = held[g]
                reasons[g] = f"held: {held[g]} may still run it and is not known to be off"
        suspects |= set(held.values())
        hold_partners(config, placement, reasons, held, holders)
    stops: dict[str, list[str]] = {}
    for node, groups in active_on.items():
        for g in groups:
            if placement.get(g) != node:
                stops.setdefault(node, []).append(g)
    return Plan(placement=placement, reasons=reasons,
                stops={n: tuple(sorted(gs)) for n, gs in stops.items()},
                suspects=frozenset(suspects - off), blocked=blocked, held=held,
                unclean=unclean)


def hold_partners(config: ClusterConfig, placement: dict[str, str | None],
                  reasons: dict[str, str], held: Mapping[str, str | None],
                  running: Mapping[str, str]) -> None:
    """The groups tied by ``depends_on`` to a held group (``held``: group -> where it is
    held) go nowhere with it, unless they run already (``running``: group -> member): a
    colocation set runs on one node, and its held group cannot start anywhere yet."""
    for groups in colocation_sets(config):
        stuck = [g for g in groups if g in held]
        if not stuck:
            continue
        for g in groups:
            if g in held or g in running or placement.get(g) is None:
                continue
            placement[g] = None
            reasons[g] = f"waits with {stuck[0]}, held on {held[stuck[0]]}"
