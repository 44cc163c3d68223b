"""Administrative requests: move, standby/online, maintenance, resources in or out of service
by hand, fencing by hand (fence a node now; confirm that a node is off). They go through the
protocol like everything else.

A request is queued on the node that received it and travels in that node's heartbeats until
a transition applies it; the master folds every pending request (its own and those its live
members carry) into the cluster's administrative state (:attr:`Accepted.admin`) and its
moves, and the placement it announces names the ids it applied, so every node forgets them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vigil.cluster.events import AdminRequest
from vigil.cluster.wire import MAINTENANCE, RequestRef
from vigil.config import ClusterConfig


class Requests:
    """The requests queued on this node."""

    def __init__(self, name: str, incarnation: int, kept: Iterable[RequestRef] = ()) -> None:
        self.prefix = f"{name}-{incarnation}"
        self.counter = 0
        #: persisted with the promise until a transition applies them (they survive a crash)
        self.queued: dict[str, RequestRef] = {r.rid: r for r in kept}

    def queue(self, req: AdminRequest) -> RequestRef:
        self.counter += 1
        node = ("on" if req.on else "off") if req.kind == "maintenance" else req.node
        kind = "force_move" if req.kind == "move" and req.force else req.kind
        ref = RequestRef(f"{self.prefix}-{self.counter}", kind, req.target, node)
        self.queued[ref.rid] = ref
        return ref

    def refs(self) -> tuple[RequestRef, ...]:
        return tuple(r for _, r in sorted(self.queued.items()))

    def applied(self, rids: Iterable[str]) -> None:
        for rid in rids:
            self.queued.pop(rid, None)


def pending(sources: Iterable[Iterable[RequestRef]], applied: Iterable[str]
            ) -> dict[str, RequestRef]:
    """Every request of ``sources`` not yet applied, by id."""
    done = set(applied)
    return {r.rid: r for src in sources for r in src if r.rid not in done}


@dataclass(frozen=True, slots=True)
class Applied:
    admin: frozenset[str]
    moves: dict[str, str]  # group -> node
    applied: tuple[str, ...]  # request ids
    ignored: tuple[str, ...]  # why, for each request that names nothing known
    #: (kind, node, who) of each fencing request, in order: for the master to carry out
    fencing: tuple[tuple[str, str, str], ...] = ()
    #: groups whose move is forced: it may go where its mirrored data is beyond max_lag
    forced: frozenset[str] = frozenset()


def requester(rid: str) -> str:
    """The node that took request ``rid`` (ids are NODE-INCARNATION-COUNTER)."""
    return rid.rsplit("-", 2)[0]


def apply(config: ClusterConfig, admin: frozenset[str], requests: Mapping[str, RequestRef]
          ) -> Applied:
    """The administrative state and moves after ``requests`` (in id order)."""
    state = set(admin)
    moves: dict[str, str] = {}
    applied: list[str] = []
    ignored: list[str] = []
    fencing: list[tuple[str, str, str]] = []
    forced: set[str] = set()
    for rid, r in sorted(requests.items()):
        kind, target, node = r.kind, r.target, r.node
        if kind == "standby" and node in config.nodes:
            state.add(node)
        elif kind == "online" and node in config.nodes:
            state.discard(node)
        elif kind in ("enable", "disable", "kill") and target in config.resources:
            state -= {f"off:{target}", f"kill:{target}"}
            if kind != "enable":
                state.add(f"{'off' if kind == 'disable' else 'kill'}:{target}")
        elif kind == "maintenance" and node in ("on", "off"):
            if node == "on":
                state.add(MAINTENANCE)
            else:
                state.discard(MAINTENANCE)
        elif kind in ("move", "force_move") and target in config.groups and node in config.nodes:
            moves[target] = node
            # the latest move of a group decides, forced or not
            if kind == "force_move":
                forced.add(target)
            else:
                forced.discard(target)
        elif kind in ("fence", "confirm_off") and node in config.nodes:
            fencing.append((kind, node, f"an operator via {requester(rid)}"))
        else:
            ignored.append(f"request {rid} ignored: unknown {kind} {target} {node}")
        applied.append(rid)
    return Applied(frozenset(state), moves, tuple(applied), tuple(ignored), tuple(fencing),
                   frozenset(forced))
