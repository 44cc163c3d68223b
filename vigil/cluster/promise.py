"""A member's promise and the placements it accepted: what must survive a restart.

A member that acks epoch E promises to ignore every older epoch; it *accepts* E's placement
in the accept phase and *closes* E when the start phase arrives. Only a closed epoch lets it
start anything. A master must treat every placement accepted since the last closed one as
possibly in effect: a placement accepted by only some members may rest on a fencing wait
that a newer epoch made void (docs/protocol.md, "Why the invariants hold").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from vigil.cluster.wire import (
    NO_ACCEPTED,
    NO_EPOCH,
    Accepted,
    Epoch,
    RequestRef,
    fmt_epoch,
    parse_epoch,
)

ADMIN_KINDS: Final = ("move", "force_move", "standby", "online", "enable", "disable", "kill",
                      "maintenance", "fence", "confirm_off")


@dataclass(frozen=True, slots=True)
class Persisted:
    """What a node must remember across a restart (the shell writes it to disk before it
    sends anything): a promise forgotten by a rebooted node could let an older epoch
    complete beside a newer one, and a forgotten epoch number could be declared twice. The
    manual requests it took and no accepted placement has applied yet are kept too: a
    request survives a crash or fencing of the node that took it, and is carried out once
    that node is back (it is lost only if the node never returns)."""

    promised: Epoch = NO_EPOCH
    promised_view: tuple[str, ...] = ()
    history: tuple[Accepted, ...] = ()  # last closed placement, then those accepted since
    max_seen: int = 0
    requests: tuple[RequestRef, ...] = ()  # queued here, not applied yet
    #: ids of the requests applied by the latest placements accepted here (newest last)
    applied: tuple[str, ...] = ()
    #: the digest of a configuration reload asked on this node that the cluster does not
    #: run yet ("" none): like a manual request, it survives a restart of this node
    reload: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "promised": fmt_epoch(self.promised),
            "promised_view": list(self.promised_view),
            "history": [{"epoch": fmt_epoch(a.epoch), "placement": dict(a.placement),
                         "standby": sorted(a.admin)} for a in self.history],
            "max_seen": self.max_seen,
            "requests": [{"id": r.rid, "kind": r.kind, "group": r.target, "node": r.node}
                         for r in self.requests],
            "applied": list(self.applied),
            "reload": self.reload,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Persisted:
        """Raises ValueError/KeyError/TypeError on a damaged file."""
        view = data["promised_view"]
        history = data["history"]
        max_seen = data["max_seen"]
        if not (isinstance(history, list) and isinstance(view, list)
                and isinstance(max_seen, int)):
            raise TypeError("damaged node state")
        entries = []
        for item in history:
            placement, admin = item["placement"], item["standby"]
            if not isinstance(placement, dict) or not isinstance(admin, list):
                raise TypeError("damaged node state")
            entries.append(Accepted(parse_epoch(str(item["epoch"])),
                                    {str(g): (None if n is None else str(n))
                                     for g, n in placement.items()},
                                    frozenset(str(n) for n in admin)))
        requests = data.get("requests", [])  # absent in files written before it was kept
        if not isinstance(requests, list):
            raise TypeError("damaged node state")
        pending = []
        for item in requests:
            if item["kind"] not in ADMIN_KINDS:
                raise ValueError(f"damaged node state: unknown request kind {item['kind']!r}")
            pending.append(RequestRef(str(item["id"]), str(item["kind"]), str(item["group"]),
                                      str(item["node"])))
        applied = data.get("applied", [])  # absent in files written before it was kept
        if not isinstance(applied, list):
            raise TypeError("damaged node state")
        reload = data.get("reload", "")  # absent in files written before it was kept
        if not isinstance(reload, str):
            raise TypeError("damaged node state")
        return cls(
            reload=reload,
            applied=tuple(str(a) for a in applied),
            promised=parse_epoch(str(data["promised"])),
            promised_view=tuple(str(v) for v in view),
            history=tuple(entries),
            max_seen=max_seen,
            requests=tuple(pending),
        )


#: how many applied request ids a node remembers (requests are rare: hundreds of operator
#: actions between two restarts of the node that missed them)
APPLIED_KEPT = 1000


class Promise:
    """The member side of the protocol's state."""

    def __init__(self, persisted: Persisted | None) -> None:
        self.promised: Epoch = NO_EPOCH
        self.view: tuple[str, ...] = ()
        #: The last placement known to be fully accepted (its START arrived), then every one
        #: accepted since.
        self.history: list[Accepted] = []
        self.closed = False  # START of the accepted epoch received
        self.stop_orders: set[str] = set()
        self.max_seen = 0  # the highest epoch number seen anywhere
        #: ids of requests that placements accepted here applied (bounded, newest last): a
        #: node that missed those placements may still carry them, and no later master may
        #: apply them a second time
        self.applied_seen: list[str] = []
        if persisted is not None:
            self.applied_seen = list(persisted.applied)
            self.promised = persisted.promised
            self.view = persisted.promised_view
            self.history = list(persisted.history)
            self.max_seen = max(persisted.max_seen, persisted.promised[0])

    def persisted(self, requests: tuple[RequestRef, ...]) -> Persisted:
        return Persisted(self.promised, self.view, tuple(self.history), self.max_seen,
                         requests, tuple(self.applied_seen))

    @property
    def accepted(self) -> Accepted:
        return self.history[-1] if self.history else NO_ACCEPTED

    @property
    def master(self) -> str:
        return self.promised[1]

    def saw(self, epoch: Epoch) -> None:
        self.max_seen = max(self.max_seen, epoch[0])

    def may_run(self) -> bool:
        """Only a closed epoch lets this node start anything."""
        return (self.closed and self.accepted.epoch == self.promised
                and self.accepted.epoch != NO_EPOCH)

    def promise(self, epoch: Epoch, view: tuple[str, ...]) -> bool:
        """Promise ``epoch`` (True) if it is newer than what we promised."""
        if epoch <= self.promised:
            return False
        self.promised = epoch
        self.view = view
        self.stop_orders = set()
        return True

    def accept(self, accepted: Accepted) -> bool:
        """Record the promised epoch's placement (True the first time)."""
        if self.accepted.epoch == accepted.epoch:
            return False
        self.history.append(accepted)
        self.closed = False
        if accepted.applied:
            known = set(self.applied_seen)
            self.applied_seen += [a for a in accepted.applied if a not in known]
            del self.applied_seen[:-APPLIED_KEPT]
        return True

    def close(self) -> bool:
        """The start phase of the accepted epoch arrived (True the first time)."""
        if self.closed:
            return False
        self.closed = True
        self.history = [self.accepted]
        self.stop_orders = set()
        return True
