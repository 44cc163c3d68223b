"""The pure core of one node: membership, quorum lease and the transition protocol.

Everything that must be right under faults lives in this file: who is alive, who is master,
where a group goes and when it is safe to start it. It does no I/O: ``handle(event, now)``
takes an event and the current time and returns the messages to send, the actions to take and
the next deadline. The coordinator actor wraps it; the simulation drives thousands of them.

The protocol (docs/protocol.md has the full story and the safety argument):

1. The lowest-named live node of a quorate view *declares* epoch ``(n, name)`` with that view.
2. Every node of the view *acks* (promises to ignore older epochs). Timeouts restart at 1.
3. The master (the declarer, lowest-named) asks for *reports*: what each member has active and
   the highest placement it has *accepted*.
4. The master asks every member the *cost* of each group; the strategy decides placement.
5. *Stop phase*: members stop what moves away; groups that a non-member may still hold wait
   for fencing (the ``silence`` fencer: the non-member's quorum lease has surely run out and
   its stops had time to finish).
6. *Accept*: every member records the placement; only then
7. *Start*: members start what is theirs. The epoch is complete when all confirmed.

A node keeps groups in service only while it holds a *lease*: heartbeat echoes, from nodes in
the same promised epoch, that together with itself make a quorum. A node cut off from the
quorum loses the lease within ``lease_time`` and stops everything; the silence fencer waits
for exactly that.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from vigil.cluster.events import (
    NO_EPOCH,
    Action,
    AdminRequest,
    ClearFailures,
    Epoch,
    Event,
    FenceDone,
    FenceNode,
    GroupDone,
    GroupFailed,
    GroupProbed,
    Notice,
    Output,
    Received,
    RestartResource,
    Shutdown,
    StartGroup,
    StopGroup,
    fmt_epoch,
    parse_epoch,
)
from vigil.cluster.quorum import Quorum
from vigil.cluster.strategy import (
    INFINITY,
    DecisionContext,
    LocalCostContext,
    Strategy,
    colocation_sets,
    group_order,
    load_strategy,
)
from vigil.config import ClusterConfig
from vigil.messages import BROADCAST, NAME_RE, Message
from vigil.resources.graph import member_graphs


class LocalState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    UNCLEAN = "unclean"  # a stop failed: only fencing can make this node safe again


ACTIVE = frozenset({LocalState.STARTING, LocalState.RUNNING, LocalState.STOPPING,
                    LocalState.UNCLEAN})


class Phase(enum.Enum):
    ACK = "ack"
    REPORT = "report"
    COST = "cost"
    STOP = "stop"
    ACCEPT = "accept"
    START = "start"
    DONE = "done"


class ProtocolError(ValueError):
    """A peer sent something that does not parse: it is dropped and counted."""


# ---- small codecs for name/value fields ----------------------------------------------------


def _names(text: str) -> list[str]:
    out = [n for n in text.split(",") if n]
    for n in out:
        if not NAME_RE.match(n):
            raise ProtocolError(f"bad name {n!r}")
    return out


def _admin(text: str) -> frozenset[str]:
    """The administrative state tokens of :attr:`Accepted.standby`: node names in standby,
    ``off:R`` / ``kill:R``, ``maintenance``."""
    out = [t for t in text.split(",") if t]
    for token in out:
        how, sep, name = token.partition(":")
        if not NAME_RE.match(name if sep else how) or (sep and how not in ("off", "kill")):
            raise ProtocolError(f"bad administrative state {token!r}")
    return frozenset(out)


def _pairs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not NAME_RE.match(key):
            raise ProtocolError(f"bad pair {item!r}")
        out[key] = value
    return out


def _enc_pairs(pairs: Iterable[tuple[str, object]]) -> str:
    return ",".join(f"{k}={v}" for k, v in pairs)


def _enc_placement(placement: Mapping[str, str | None]) -> str:
    return _enc_pairs(sorted((g, n or "-") for g, n in placement.items()))


def _dec_placement(text: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for group, node in _pairs(text).items():
        if node != "-" and not NAME_RE.match(node):
            raise ProtocolError(f"bad node {node!r} in placement")
        out[group] = None if node == "-" else node
    return out


def _dec_costs(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for group, value in _pairs(text).items():
        try:
            cost = float(value)
        except ValueError:
            raise ProtocolError(f"bad cost {value!r}") from None
        if math.isnan(cost):
            raise ProtocolError("cost is NaN")
        out[group] = cost
    return out


def _dec_history(entry: str) -> Accepted:
    parts = entry.split("|")
    if len(parts) != 3:
        raise ProtocolError(f"bad history entry {entry[:40]!r}")
    epoch = parse_epoch(parts[0])
    return Accepted(epoch, _dec_placement(parts[1]), _admin(parts[2]))


def _enc_cost(cost: float) -> str:
    return "inf" if cost == INFINITY else repr(cost)


# ---- state records ----------------------------------------------------------------------


@dataclass(slots=True)
class PeerInfo:
    """What the latest heartbeat of a peer said."""

    incarnation: int = 0
    hb: int = 0
    promised: Epoch = NO_EPOCH
    groups: dict[str, str] = field(default_factory=dict)  # active group -> local state
    want: int = 0
    digest: str = ""
    requests: tuple[str, ...] = ()
    received_at: float = -math.inf


@dataclass(slots=True)
class Round:
    """A transition this node declared and leads as master."""

    epoch: Epoch
    view: tuple[str, ...]
    reason: str
    phase: Phase
    started: float
    phase_deadline: float
    next_retransmit: float
    replies: dict[str, Message] = field(default_factory=dict)
    acked_at: float = 0.0
    known: list[Accepted] = field(default_factory=list)  # every placement possibly in effect
    standby: frozenset[str] = frozenset()
    applied: tuple[str, ...] = ()
    moves: dict[str, str] = field(default_factory=dict)
    placement: dict[str, str | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    stops: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fence_until: float = 0.0
    silenced: tuple[str, ...] = ()  # suspects the silence fencer waits out
    fence_pending: set[str] = field(default_factory=set)
    reports: dict[str, dict[str, str]] = field(default_factory=dict)
    incarnations: dict[str, int] = field(default_factory=dict)
    done_at: float = math.inf
    costs: dict[str, dict[str, float]] = field(default_factory=dict)  # parsed cost replies
    messages: int = 0


@dataclass(frozen=True, slots=True)
class Accepted:
    epoch: Epoch
    placement: Mapping[str, str | None]
    #: The cluster's administrative state, carried with every placement so that it survives
    #: failovers: node names in standby, ``off:R`` / ``kill:R`` for a resource taken out of
    #: service by hand (gracefully / at once), and ``maintenance``. The tokens cannot clash:
    #: names never contain ':'.
    standby: frozenset[str]
    applied: tuple[str, ...] = ()

    @property
    def maintenance(self) -> bool:
        return MAINTENANCE in self.standby

    def disabled(self) -> dict[str, bool]:
        """Resources taken out of service by hand -> whether at once (force_oos)."""
        out: dict[str, bool] = {}
        for token in self.standby:
            how, _, name = token.partition(":")
            if name and how in ("off", "kill"):
                out[name] = how == "kill" or out.get(name, False)
        return out


MAINTENANCE: Final = "maintenance"


NO_ACCEPTED = Accepted(NO_EPOCH, {}, frozenset())
ADMIN_KINDS: Final = ("move", "standby", "online", "enable", "disable", "kill", "maintenance")


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
    requests: tuple[tuple[str, AdminRequest], ...] = ()  # (request id, request), pending

    def to_json(self) -> dict[str, object]:
        return {
            "promised": fmt_epoch(self.promised),
            "promised_view": list(self.promised_view),
            "history": [{"epoch": fmt_epoch(a.epoch), "placement": dict(a.placement),
                         "standby": sorted(a.standby)} for a in self.history],
            "max_seen": self.max_seen,
            "requests": [{"id": rid, "kind": r.kind, "group": r.group, "node": r.node}
                         for rid, r in self.requests],
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
            placement, standby = item["placement"], item["standby"]
            if not isinstance(placement, dict) or not isinstance(standby, list):
                raise TypeError("damaged node state")
            entries.append(Accepted(parse_epoch(str(item["epoch"])),
                                    {str(g): (None if n is None else str(n))
                                     for g, n in placement.items()},
                                    frozenset(str(n) for n in standby)))
        requests = data.get("requests", [])  # absent in files written before it was kept
        if not isinstance(requests, list):
            raise TypeError("damaged node state")
        pending = []
        for item in requests:
            kind = item["kind"]
            if kind not in ADMIN_KINDS:
                raise ValueError(f"damaged node state: unknown request kind {kind!r}")
            pending.append((str(item["id"]), AdminRequest(kind, group=str(item["group"]),
                                                          node=str(item["node"]))))
        return cls(
            promised=parse_epoch(str(data["promised"])),
            promised_view=tuple(str(v) for v in view),
            history=tuple(entries),
            max_seen=max_seen,
            requests=tuple(pending),
        )


def stop_bound(config: ClusterConfig) -> float:
    """Seconds a node may need to take everything out of service (the silence fencer waits
    this long after a lost node's lease ran out)."""
    return max((sum(config.resources[r].stop_timeout
                    for g in groups for r in config.groups[g].resources)
                for groups in colocation_sets(config)), default=0.0)


class NodeCore:
    """One node's membership, lease and transition protocol, as a pure state machine."""

    def __init__(
        self,
        config: ClusterConfig,
        name: str,
        *,
        incarnation: int,
        now: float,
        strategy: Strategy | None = None,
        missing_types: frozenset[str] = frozenset(),
        fencer: str | None = None,
        persisted: Persisted | None = None,
    ) -> None:
        if name not in config.nodes:
            known = ", ".join(sorted(config.nodes))
            raise ValueError(f"node {name!r} is not in the configuration (nodes: {known})")
        self.config = config
        self.name = name
        self.incarnation = incarnation
        self.strategy = strategy or load_strategy(config.strategy)
        self.missing_types = missing_types
        self.fencer = fencer or config.fencer
        t = config.timing
        self.timing = t
        self.quorum = Quorum({n: c.votes for n, c in config.nodes.items()},
                             two_node=config.two_node, wait_for_all=config.wait_for_all)
        self.group_order = group_order(config)
        self.group_index = {g: i for i, g in enumerate(self.group_order)}
        self.expiring = [g for g, c in config.groups.items() if c.failure_timeout > 0]
        self.group_deps = {g: tuple(c.depends_on) for g, c in config.groups.items()}
        self.group_dependents: dict[str, tuple[str, ...]] = {
            g: tuple(sorted(k for k, deps in self.group_deps.items() if g in deps))
            for g in config.groups
        }
        # The longest a node needs to stop everything: groups stop in parallel, but the
        # resources of one colocation set stop one after the other.
        self.stop_bound = stop_bound(config)
        self.started_at = now
        self.now = now
        # membership
        self.last_heard: dict[str, float] = {}
        self.link_heard: dict[tuple[str, str], float] = {}
        self.peers: dict[str, PeerInfo] = {}
        self.seen_all = False
        self.mismatched: set[str] = set()
        self.departed: dict[str, int] = {}  # node -> incarnation that said goodbye
        self.leaving = False
        self.left = False
        # heartbeats and lease
        self.hb_counter = 0
        self.next_hb = now
        self.hb_sent_at: dict[int, float] = {}
        self.support: dict[str, float] = {}
        # protocol, member side
        self.max_seen = 0
        self.promised: Epoch = NO_EPOCH
        self.promised_view: tuple[str, ...] = ()
        # The last placement known to be fully accepted (its START arrived), then every one
        # accepted since. A master must treat all of them as possibly in effect: a
        # placement accepted by only some members may rest on a fencing wait that a newer
        # epoch made void (docs/protocol.md, "partially accepted epochs").
        self.history: list[Accepted] = []
        self.closed = False  # START of the accepted epoch received
        self.stop_orders: set[str] = set()
        # local groups
        self.local: dict[str, LocalState] = dict.fromkeys(config.groups, LocalState.STOPPED)
        self.busy: set[str] = set()  # groups not STOPPED here (kept with _set)
        self._busy_order: list[str] | None = []  # busy, dependents first (None: recompute)
        self._hb_groups: dict[str, tuple[str, dict[str, str]]] = {}
        self._placed_cache: tuple[Epoch, list[str]] = (NO_EPOCH, [])
        self._skip_cache: tuple[Epoch, dict[str, tuple[frozenset[str], frozenset[str]]]] = (
            NO_EPOCH, {})
        self.group_skip: dict[str, frozenset[str]] = {}  # what each running group left out
        self.resource_dependents = {  # one graph per group, not per resource: this is start-up
            r: tuple(graph.transitive_dependents(r))
            for graph in member_graphs(config).values() for r in graph.names()}
        self.failed_hold: set[str] = set()
        self.hold_epoch: dict[str, Epoch] = {}  # the epoch in which a group was held
        self.fail_times: dict[str, list[float]] = {g: [] for g in config.groups}
        self.want = 0
        self.requests: dict[str, AdminRequest] = {}
        self.request_counter = 0
        # protocol, master side
        self.round: Round | None = None
        self.unresponsive: dict[str, float] = {}
        self.last_alive: frozenset[str] = frozenset({name})
        self.settle_until = now
        self.missed: dict[str, int] = {}
        self.handled_want: dict[str, int] = {}
        self.applied_ids: list[str] = []
        if persisted is not None:
            self.promised = persisted.promised
            self.promised_view = persisted.promised_view
            self.history = list(persisted.history)
            self.max_seen = max(persisted.max_seen, persisted.promised[0])
            self.requests = dict(persisted.requests)
        # bookkeeping
        self.dropped = 0
        self.decisions: list[tuple[float, str]] = []  # (core time, why)
        self._out = Output()
        self._inbox: list[Message] = []

    # ---- the one entry point -------------------------------------------------------------

    def handle(self, event: Event, now: float) -> Output:
        """Feed one event at time ``now``; returns what to send and do, and the next deadline.

        Expired deadlines are processed *before* the event, with the state as it was: a lease
        that ran out is noticed even if the message that would renew it arrives at that very
        instant (the safety argument of the silence fencer relies on it).
        """
        self.now = max(self.now, now)
        self._out = Output()
        self._advance()
        if isinstance(event, Received):
            self._receive(event.msg, event.link)
        elif isinstance(event, GroupDone):
            self._group_done(event)
        elif isinstance(event, GroupFailed):
            self._group_failed(event)
        elif isinstance(event, AdminRequest):
            self._admin_request(event)
        elif isinstance(event, ClearFailures):
            self._clear_failures(event.group, "here")
            if event.everywhere:
                self._send("cleanup", group=event.group)
        elif isinstance(event, FenceDone):
            self._fence_done(event)
        elif isinstance(event, GroupProbed):
            if event.active and self.local[event.group] is LocalState.STOPPED:
                self._set(event.group, LocalState.RUNNING)
                self._note("group", f"{event.group} found in service at start; the next "
                           "transition decides where it stays", group=event.group)
        elif isinstance(event, Shutdown) and not self.leaving:
            self.leaving = True
            self._note("membership", f"{self.name} is leaving the cluster: stopping "
                       "every group here")
        self._settle()
        self._out.deadline = self._next_deadline()
        return self._out

    def _settle(self) -> None:
        # Messages to ourselves are handled at once, and may produce more; bounded because
        # every reply to self is answered by a phase change, never by another request.
        for _ in range(64):
            self._reconcile()
            self._maybe_declare()
            self._master_progress()
            if not self._inbox:
                break
            inbox, self._inbox = self._inbox, []
            for msg in inbox:
                self._receive(msg, "")
        self._heartbeat_if_due()

    def persisted(self) -> Persisted:
        return Persisted(self.promised, self.promised_view, tuple(self.history), self.max_seen,
                         tuple(sorted(self.requests.items())))

    @property
    def accepted(self) -> Accepted:
        return self.history[-1] if self.history else NO_ACCEPTED

    # ---- outputs ----------------------------------------------------------------------------

    def _send(self, mtype: str, dest: str = BROADCAST, **fields: str) -> None:
        msg = Message(type=mtype, sender=self.name, dest=dest, fields=fields)
        if dest == self.name:
            self._inbox.append(msg)
            return
        self._out.messages.append(msg)
        if dest == BROADCAST:
            self._inbox.append(msg)
        if self.round is not None and self.round.phase is not Phase.DONE:
            self.round.messages += 1

    def _act(self, action: Action) -> None:
        self._out.actions.append(action)

    def _note(self, kind: str, text: str, **fields: str) -> None:
        self.decisions.append((self.now, text))
        del self.decisions[:-200]
        self._act(Notice(kind, text, tuple(sorted(fields.items()))))

    # ---- membership ----------------------------------------------------------------------

    def alive(self) -> frozenset[str]:
        """Nodes heard within ``dead_time`` (and ourselves), minus config mismatches."""
        dead_time = self.timing.dead_time
        heard = {n for n, t in self.last_heard.items()
                 if self.now - t < dead_time and n not in self.mismatched
                 and n not in self.departed}
        return frozenset(heard | {self.name})

    def link_state(self) -> dict[str, dict[str, bool]]:
        """node -> link -> heard on that link within dead_time."""
        out: dict[str, dict[str, bool]] = {}
        for (node, link), t in self.link_heard.items():
            out.setdefault(node, {})[link] = self.now - t < self.timing.dead_time
        return out

    def quorate(self) -> bool:
        return self.quorum.quorate(self.alive(), seen_all=self.seen_all)

    def lease_until(self) -> float:
        """Until when a quorum (ourselves included) is known to support us."""
        if self.quorum.quorate([self.name], seen_all=self.seen_all):
            return math.inf
        votes = self.quorum.votes
        weight = votes.get(self.name, 0)
        total = self.quorum.total
        for node, expiry in sorted(self.support.items(), key=lambda kv: -kv[1]):
            if expiry <= self.now:
                break
            weight += votes.get(node, 0)
            if 2 * weight > total:
                return expiry
        return -math.inf

    def lease_valid(self) -> bool:
        return self.lease_until() > self.now

    def _advance(self) -> None:
        alive = self.alive()
        if alive == frozenset(self.config.nodes) and not self.seen_all:
            self.seen_all = True
        for node in list(self.support):
            if self.support[node] <= self.now:
                del self.support[node]
        horizon = self.now - self.timing.lease_time - self.timing.heartbeat_interval
        for n in [n for n, t in self.hb_sent_at.items() if t < horizon]:
            del self.hb_sent_at[n]
        for node in [n for n, t in self.unresponsive.items() if t <= self.now]:
            del self.unresponsive[node]
        for g in self.expiring:
            limit = self.now - self.config.groups[g].failure_timeout
            self.fail_times[g] = [t for t in self.fail_times[g] if t > limit]

    def _heartbeat_if_due(self) -> None:
        if self.now < self.next_hb:
            return
        self.hb_counter += 1
        self.hb_sent_at[self.hb_counter] = self.now
        self.next_hb = self.now + self.timing.heartbeat_interval
        alive = self.alive()
        echo = ",".join(f"{n}:{self.peers[n].hb}" for n in sorted(alive)
                        if n != self.name and n in self.peers)
        active = sorted(f"{g}={self.local[g].value}" for g in self.busy)
        msg = Message(type="hb", sender=self.name, fields={
            "n": str(self.hb_counter), "inc": str(self.incarnation),
            "epoch": fmt_epoch(self.promised), "acc": fmt_epoch(self.accepted.epoch),
            "closed": "1" if self.closed else "0", "echo": echo,
            "groups": ",".join(active), "want": str(self.want),
            "digest": self.config.digest,
            "reqs": ";".join(f"{rid}:{r.kind}:{r.group}:{r.node}"
                             for rid, r in sorted(self.requests.items())),
        })
        self._out.messages.append(msg)

    def _heartbeat(self, msg: Message) -> None:
        sender = msg.sender
        f = msg.fields
        try:
            incarnation = int(f["inc"])
            hb = int(f["n"])
            promised = parse_epoch(f["epoch"])
            parse_epoch(f["acc"])  # carried for people reading the wire; checked, not used
            echo = {k: int(v) for k, v in (p.split(":", 1) for p in f["echo"].split(",") if p)}
            raw = f["groups"]
            cached = self._hb_groups.get(sender)
            if cached is not None and cached[0] == raw:
                groups = cached[1]
            else:
                groups = _pairs(raw)
                self._hb_groups[sender] = (raw, groups)
            want = int(f["want"])
            reqs = tuple(r for r in f["reqs"].split(";") if r)
        except (KeyError, ValueError, ProtocolError):
            self.dropped += 1
            return
        if f.get("digest", "") != self.config.digest:
            if sender not in self.mismatched:
                self.mismatched.add(sender)
                self._note("config", f"node {sender} runs a different configuration "
                           f"(digest {f.get('digest', '')[:12]} vs ours "
                           f"{self.config.digest[:12]}); it is kept out of the cluster")
            return
        self.mismatched.discard(sender)
        peer = self.peers.get(sender)
        if peer is None or incarnation != peer.incarnation:
            if peer is not None and incarnation < peer.incarnation:
                return  # a late heartbeat of a previous life
            if peer is not None:
                self._note("membership", f"node {sender} restarted (incarnation changed)")
            # its failure counter starts again from zero in the new life
            self.handled_want.pop(sender, None)
            if self.departed.get(sender, incarnation) != incarnation:
                del self.departed[sender]
            peer = self.peers[sender] = PeerInfo(incarnation=incarnation)
        elif hb <= peer.hb:
            return  # reordered: an older heartbeat says nothing new
        peer.hb = hb
        peer.promised = promised
        peer.groups = groups
        peer.want = want
        peer.requests = reqs
        peer.received_at = self.now
        self.max_seen = max(self.max_seen, promised[0])
        mine = echo.get(self.name)
        if promised == self.promised and mine is not None and mine in self.hb_sent_at:
            expiry = self.hb_sent_at[mine] + self.timing.lease_time
            if expiry > self.support.get(sender, -math.inf):
                self.support[sender] = expiry

    # ---- receiving ----------------------------------------------------------------------

    def _receive(self, msg: Message, link: str) -> None:
        if msg.sender not in self.config.nodes:
            self.dropped += 1
            return
        if msg.sender != self.name:
            # Any message is proof of life: a node we can hear is not dead, whatever channel
            # carried it (it also stops two would-be masters fighting over an asymmetric link).
            self.last_heard[msg.sender] = self.now
            if link:
                self.link_heard[(msg.sender, link)] = self.now
        handler = getattr(self, f"_on_{msg.type}", None)
        if handler is None:
            self.dropped += 1
            return
        try:
            handler(msg)
        except (KeyError, ValueError, ProtocolError):
            self.dropped += 1

    def _on_bye(self, msg: Message) -> None:
        if msg.sender == self.name:
            return
        peer = self.peers.get(msg.sender)
        incarnation = int(msg.fields["inc"])
        if peer is not None and peer.incarnation != incarnation:
            return
        self.departed[msg.sender] = incarnation
        self.support.pop(msg.sender, None)
        self._note("membership", f"{msg.sender} left the cluster cleanly (nothing in service "
                   "there)")

    def _on_cleanup(self, msg: Message) -> None:
        group = msg.fields["group"]
        if msg.sender != self.name and group in self.config.groups:
            self._clear_failures(group, f"by a request from {msg.sender}")

    def _clear_failures(self, group: str, how: str) -> None:
        if group not in self.fail_times:
            return
        self.fail_times[group] = []
        self.failed_hold.discard(group)
        self.want += 1  # its cost here changed: let the master look again
        self._note("group", f"fail count of {group} cleared on {self.name} {how}", group=group,
                   cleared=group)

    def _on_hb(self, msg: Message) -> None:
        if msg.sender != self.name:
            self._heartbeat(msg)

    def _epoch_of(self, msg: Message) -> Epoch:
        epoch = parse_epoch(msg.fields["epoch"])
        self.max_seen = max(self.max_seen, epoch[0])
        return epoch

    def _reply(self, msg: Message, mtype: str, **fields: str) -> None:
        self._send(mtype, msg.sender, epoch=msg.fields["epoch"], **fields)

    def _on_declare(self, msg: Message) -> None:
        epoch = parse_epoch(msg.fields["epoch"])
        view = tuple(_names(msg.fields["view"]))
        self.max_seen = max(self.max_seen, epoch[0])  # only once the whole message parsed
        if (self.name not in view or epoch[1] != msg.sender or min(view) != msg.sender
                or self.leaving):
            return
        if epoch > self.promised:
            self.promised = epoch
            self.promised_view = view
            self.stop_orders = set()
            if msg.sender != self.name:
                self._note("transition", f"joined epoch {fmt_epoch(epoch)} declared by "
                           f"{msg.sender}: {msg.fields.get('reason', '')}",
                           epoch=fmt_epoch(epoch), master=msg.sender,
                           reason=msg.fields.get("reason", ""), event="transition_started")
        if epoch == self.promised:
            self._reply(msg, "ack")

    def _for_current(self, msg: Message) -> bool:
        """A request of the master of the epoch we promised (others are stale or forged)."""
        epoch = self._epoch_of(msg)
        return epoch == self.promised and msg.sender == epoch[1]

    def _on_report_req(self, msg: Message) -> None:
        if not self._for_current(msg):
            return
        active = ",".join(f"{g}={s.value}" for g, s in sorted(self.local.items())
                          if s in ACTIVE)
        known = set(msg.fields.get("known", "").split(","))
        history = ";".join(
            f"{fmt_epoch(a.epoch)}|{_enc_placement(a.placement)}|{','.join(sorted(a.standby))}"
            for a in self.history if fmt_epoch(a.epoch) not in known)
        self._reply(msg, "report", active=active, hist=history)

    def _on_cost_req(self, msg: Message) -> None:
        if not self._for_current(msg):
            return
        standby = _admin(msg.fields.get("standby", ""))
        ctx = LocalCostContext(
            node=self.name, config=self.config,
            active=frozenset(g for g, s in self.local.items()
                             if s in (LocalState.RUNNING, LocalState.STARTING)),
            fail_counts=self.fail_counts(), standby=standby,
            missing_types=self.missing_types)
        costs = self.strategy.local_costs(ctx)
        self._reply(msg, "cost", costs=_enc_pairs(
            (g, _enc_cost(costs.get(g, INFINITY))) for g in sorted(self.config.groups)))

    def _on_stop(self, msg: Message) -> None:
        if not self._for_current(msg):
            return
        groups = _names(msg.fields["groups"])
        self.stop_orders.update(g for g in groups if g in self.local)
        self._reconcile()
        self._confirm_stops(msg.sender)

    def _confirm_stops(self, master: str) -> None:
        pending = [g for g in self.stop_orders if self.local[g] not in
                   (LocalState.STOPPED, LocalState.UNCLEAN)]
        if pending or not self.stop_orders:
            return
        unclean = sorted(g for g in self.stop_orders if self.local[g] is LocalState.UNCLEAN)
        self._send("stopped", master, epoch=fmt_epoch(self.promised),
                   groups=",".join(sorted(self.stop_orders)), unclean=",".join(unclean))

    def _on_accept(self, msg: Message) -> None:
        if not self._for_current(msg):
            return
        epoch = self.promised
        if self.accepted.epoch != epoch:
            self.history.append(Accepted(
                epoch, _dec_placement(msg.fields["placement"]),
                _admin(msg.fields.get("standby", "")),
                tuple(r for r in msg.fields.get("applied", "").split(",") if r)))
            self.closed = False
            for rid in self.accepted.applied:
                self.requests.pop(rid, None)
        self._reply(msg, "accepted")

    def _on_start(self, msg: Message) -> None:
        if not self._for_current(msg) or self.accepted.epoch != self.promised:
            return
        if not self.closed:
            self.closed = True
            self.history = [self.accepted]
            self.stop_orders = set()
            # A failed group still on its way out (its dependents stop first) stays held,
            # or it would never be stopped and restarted; it asks for a transition of its
            # own once stopped (_group_done).
            self.failed_hold = {g for g in self.failed_hold if self.local[g] in ACTIVE}
            mine = sorted(g for g, n in self.accepted.placement.items() if n == self.name)
            self._note("transition", f"epoch {fmt_epoch(self.promised)} closed; here: "
                       f"{', '.join(mine) or 'nothing'}", epoch=fmt_epoch(self.promised),
                       event="transition_completed")
        self._reply(msg, "started")

    def _on_ack(self, msg: Message) -> None:
        self._collect(msg, Phase.ACK)

    def _on_report(self, msg: Message) -> None:
        _pairs(msg.fields["active"])  # a malformed reply is dropped here, never later
        for entry in msg.fields.get("hist", "").split(";"):
            if entry:
                _dec_history(entry)
        self._collect(msg, Phase.REPORT)

    def _on_cost(self, msg: Message) -> None:
        costs = _dec_costs(msg.fields["costs"])
        self._collect(msg, Phase.COST)
        r = self.round
        if r is not None and r.replies.get(msg.sender) is msg:
            r.costs[msg.sender] = costs

    def _on_stopped(self, msg: Message) -> None:
        self._collect(msg, Phase.STOP)

    def _on_accepted(self, msg: Message) -> None:
        self._collect(msg, Phase.ACCEPT)

    def _on_started(self, msg: Message) -> None:
        self._collect(msg, Phase.START)

    def _collect(self, msg: Message, phase: Phase) -> None:
        r = self.round
        epoch = self._epoch_of(msg)
        if r is None or r.epoch != epoch or r.phase is not phase or msg.sender not in r.view:
            return
        r.replies[msg.sender] = msg

    # ---- local groups ---------------------------------------------------------------------

    def fail_counts(self) -> dict[str, int]:
        return {g: len(ts) for g, ts in self.fail_times.items() if ts}

    def _may_run_here(self) -> bool:
        return (self.closed and self.accepted.epoch == self.promised
                and self.accepted.epoch != NO_EPOCH)

    def _set(self, group: str, state: LocalState) -> None:
        self.local[group] = state
        if (state is LocalState.STOPPED) == (group in self.busy):
            self._busy_order = None
        if state is LocalState.STOPPED:
            self.busy.discard(group)
        else:
            self.busy.add(group)

    def _placed_here(self) -> list[str]:
        """Groups the accepted placement gives this node, in start order (cached: this runs
        on every event, and a cluster may have thousands of groups)."""
        epoch = self.accepted.epoch
        if self._placed_cache[0] != epoch:
            placement = self.accepted.placement
            self._placed_cache = (epoch, [g for g in self.group_order
                                          if placement.get(g) == self.name])
        return self._placed_cache[1]

    def _reconcile(self) -> None:
        lease_ok = self.lease_valid()
        freeze = self.config.no_quorum_policy == "freeze"
        placement = self.accepted.placement if self._may_run_here() else None
        maintenance = self.accepted.maintenance and placement is not None
        # stops: dependents before what they depend on
        if self._busy_order is None:
            self._busy_order = sorted(self.busy, key=self.group_index.__getitem__, reverse=True)
        for g in self._busy_order:
            state = self.local[g]
            if state not in (LocalState.RUNNING, LocalState.STARTING):
                continue
            why = ""
            if self.leaving:
                why = "shutting down"
            elif not lease_ok and not freeze:
                # Also in maintenance mode: the others' silence fencer counts on it.
                why = "lost the quorum lease"
            elif maintenance:
                continue  # resources stay as they are
            elif g in self.stop_orders:
                why = f"stop phase of epoch {fmt_epoch(self.promised)}"
            elif g in self.failed_hold and state is LocalState.RUNNING:
                why = "recovering from a failure"
            elif placement is not None and placement.get(g) != self.name:
                why = "placed elsewhere"
            if not why:
                continue
            if any(self.local[k] in ACTIVE for k in self.group_dependents[g]):
                # its dependents go first; make sure they are going
                self._stop_dependents(g, f"{why} (depends on {g})")
                continue
            self._stop_group(g, why)
        if self.leaving:
            if not self.left and not self.busy:
                self.left = True
                self._send("bye", inc=str(self.incarnation))
                self._note("membership", f"{self.name} stopped everything and said goodbye")
            return
        if placement is None or not lease_ok or maintenance:
            return
        skips = self._skips()
        for g in self._placed_here():
            skip, kill = skips.get(g, (frozenset(), frozenset()))
            if (self.local[g] is LocalState.STOPPED and g not in self.failed_hold
                    and all(self.local[d] is LocalState.RUNNING for d in self.group_deps[g])):
                self._set(g, LocalState.STARTING)
                self.group_skip[g] = skip
                self._act(StartGroup(g, self.promised, skip, kill))
                self._note("group", f"starting {g} on {self.name} (epoch "
                           f"{fmt_epoch(self.promised)})"
                           + (f" without {', '.join(sorted(skip))}" if skip else ""),
                           group=g, state="starting", event="group_state")
            elif (self.local[g] is LocalState.RUNNING
                  and self.group_skip.get(g, frozenset()) != skip
                  and all(self.local[d] is LocalState.RUNNING for d in self.group_deps[g])):
                if skip - self.group_skip.get(g, frozenset()) and any(
                        self.local[k] in ACTIVE for k in self.group_dependents[g]):
                    # groups that depend on this one leave first; they come back after
                    self._stop_dependents(g, f"{g} loses members taken out of service by hand")
                    continue
                self._set(g, LocalState.STARTING)
                self.group_skip[g] = skip
                self._act(StartGroup(g, self.promised, skip, kill, converge=True))
                self._note("group", f"{g} on {self.name}: resources out of service by hand "
                           f"now {', '.join(sorted(skip)) or 'none'}", group=g,
                           state="starting", event="group_state")

    def _skips(self) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
        """Per group with members taken out of service by hand: (those and their
        dependents, the ones to stop at once). Cached per accepted epoch."""
        epoch = self.accepted.epoch
        if self._skip_cache[0] != epoch:
            out: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
            for r, force in self.accepted.disabled().items():
                if r not in self.config.resources:
                    continue
                g = self.config.resources[r].group
                skip, kill = out.get(g, (frozenset(), frozenset()))
                hit = {r, *self.resource_dependents[r]}
                out[g] = (skip | hit, kill | (hit if force else set()))
            self._skip_cache = (epoch, out)
        return self._skip_cache[1]

    def _stop_dependents(self, group: str, why: str) -> None:
        """Stop the groups here that depend on ``group``, the end of a chain first: a group
        is stopped only once nothing active here depends on it any more."""
        for k in self.group_dependents[group]:
            if any(self.local[d] in ACTIVE for d in self.group_dependents[k]):
                self._stop_dependents(k, why)
            elif self.local[k] in (LocalState.RUNNING, LocalState.STARTING):
                self._stop_group(k, why)

    def _stop_group(self, group: str, why: str) -> None:
        force = self.local[group] is LocalState.STARTING
        self._set(group, LocalState.STOPPING)
        self._act(StopGroup(group, self.promised, why, force=force))
        self._note("group", f"stopping {group} on {self.name}: {why}", group=group,
                   state="stopping", reason=why, event="group_state")

    def _group_done(self, ev: GroupDone) -> None:
        state = self.local.get(ev.group)
        if state is None:
            return
        if ev.op == "start":
            if state is not LocalState.STARTING:
                return  # a stop overtook it; the stop's result decides
            if ev.ok:
                self._set(ev.group, LocalState.RUNNING)
                self._note("group", f"{ev.group} in service on {self.name}", group=ev.group,
                           state="running", event="group_state")
            else:
                # A failed start is fatal here (as Pacemaker's start-failure-is-fatal): retrying
                # where it just failed rarely helps, so the fail count jumps to the threshold
                # and the group goes elsewhere until cleanup or failure_timeout.
                self._fill_fail_count(ev.group)
                self._record_failure(ev.group, f"start failed: {ev.reason}")
                # What did start is in service: it stops like a running group. A converging
                # start may fail under running dependents: held, _reconcile stops them first.
                self._set(ev.group, LocalState.RUNNING)
                if not any(self.local[k] in ACTIVE for k in self.group_dependents[ev.group]):
                    self._stop_group(ev.group, "clean up after a failed start")
            return
        if ev.ok:
            self._set(ev.group, LocalState.STOPPED)
            self._note("group", f"{ev.group} out of service on {self.name}", group=ev.group,
                       state="stopped", event="group_state")
            if ev.group in self.failed_hold and self.hold_epoch.get(ev.group) != self.promised:
                self.want += 1  # held through a transition: the next one may restart it
        else:
            self._set(ev.group, LocalState.UNCLEAN)
            self._note("group", f"stop of {ev.group} failed on {self.name}: {ev.reason}; "
                       "the node is unclean and the group stays blocked until fenced",
                       group=ev.group, state="unclean", reason=ev.reason, event="group_state")
        if self.stop_orders:
            self._confirm_stops(self.promised[1])

    def _group_failed(self, ev: GroupFailed) -> None:
        g = ev.group
        if self.local.get(g) is not LocalState.RUNNING:
            return  # already stopping, restarting or stopped: that path decides
        if self.accepted.maintenance:
            self._note("group", f"{ev.resource or g} failed on {self.name}; maintenance mode: "
                       f"no recovery ({ev.reason})", group=g, reason=ev.reason)
            return
        if ev.policy == "ignore":
            self._note("group", f"{ev.resource or g} failed on {self.name} and its on_fail "
                       f"is ignore: left as it is ({ev.reason})", group=g, reason=ev.reason)
            return
        if ev.policy == "standby":
            self._record_failure(g, ev.reason)
            self._admin_request(AdminRequest("standby", node=self.name))
            return
        if ev.policy == "stop":
            # Held stopped here (its fail count reaches the threshold, so its cost here is
            # infinite); it is not restarted in place, and may run elsewhere.
            self._fill_fail_count(g)
            self._record_failure(g, ev.reason)
            return
        threshold = self.config.groups[g].migration_threshold
        # In place only while no group that depends on this one is active here: restarting
        # under it would break its order; the full path stops it first.
        alone = not any(self.local[k] in ACTIVE for k in self.group_dependents[g])
        safe = self.lease_valid() and self._may_run_here()  # as for any start
        left_out = ev.resource in self.group_skip.get(g, frozenset())
        if ev.resource and alone and safe and not left_out and (
                len(self.fail_times[g]) + 1 < threshold):
            self.fail_times[g].append(self.now)
            count = len(self.fail_times[g])
            self._set(g, LocalState.STARTING)
            self._act(RestartResource(g, ev.resource, self.promised,
                                      self.group_skip.get(g, frozenset())))
            self._note("group", f"{ev.resource} failed on {self.name} ({count} of "
                       f"{threshold} failures before {g} moves): restarting it in place: "
                       f"{ev.reason}", group=g, resource=ev.resource, reason=ev.reason,
                       state="failed", event="group_state")
            return
        self._record_failure(g, ev.reason)  # _reconcile stops it, dependents first

    def _fill_fail_count(self, group: str) -> None:
        """Bring the fail count to one below the threshold (the failure being recorded makes
        it reach it): the group's cost here becomes infinite."""
        missing = max(1, self.config.groups[group].migration_threshold) - len(
            self.fail_times[group])
        self.fail_times[group].extend([self.now] * max(0, missing - 1))

    def _record_failure(self, group: str, reason: str) -> None:
        self.fail_times[group].append(self.now)
        self.failed_hold.add(group)
        self.hold_epoch[group] = self.promised
        self.want += 1
        count = len(self.fail_times[group])
        self._note("group", f"{group} failed on {self.name} ({count} failure(s)): {reason}",
                   group=group, reason=reason, state="failed", event="group_state")

    def _admin_request(self, req: AdminRequest) -> None:
        self.request_counter += 1
        rid = f"{self.name}-{self.incarnation}-{self.request_counter}"
        self.requests[rid] = req
        self._note("request", f"request {req.kind} {req.group or req.node} queued for the "
                   "next transition")

    # ---- master --------------------------------------------------------------------------

    def master(self) -> str:
        return self.promised[1]

    def _maybe_declare(self) -> None:
        if self.leaving or self.now < self.started_at + self.timing.dead_time:
            return  # learn who is there before declaring anything
        alive = self.alive()
        if alive - self.last_alive:
            # Someone (re)appeared: others are likely coming back too (a healed partition,
            # a rebooted switch). Wait a few heartbeats so one transition takes them all.
            self.settle_until = self.now + 3 * self.timing.heartbeat_interval
        self.last_alive = alive
        if min(alive) != self.name or self.now < self.settle_until:
            return
        view = tuple(sorted(alive - set(self.unresponsive)))
        if not self.quorum.quorate(view, seen_all=self.seen_all):
            return
        reason = self._declare_reason(view, alive)
        if reason:
            self._declare(view, reason)

    def _declare_reason(self, view: tuple[str, ...], alive: frozenset[str]) -> str:
        r = self.round
        if r is None or r.epoch != self.promised:
            if self.promised == NO_EPOCH:
                return "forming the cluster"
            if self.master() not in alive:
                return f"master {self.master()} lost"
            return "taking over as the lowest-named live node"
        if r.phase is not Phase.DONE:
            lost = set(r.view) - alive
            if lost:
                return f"lost {', '.join(sorted(lost))} during the transition"
            if self.now >= r.phase_deadline:
                expected = set(r.stops) if r.phase is Phase.STOP else set(r.view)
                missing = sorted(expected - set(r.replies))
                # A node that is heard but does not answer twice in a row (a one-way link)
                # is left out for a while so the rest can proceed; once is not enough, the
                # reply may have been lost or the node unreachable only for a moment.
                for node in missing:
                    self.missed[node] = self.missed.get(node, 0) + 1
                    if self.missed[node] >= 2:
                        self.unresponsive[node] = self.now + 2 * self.timing.step_timeout
                return (f"step {r.phase.value} timed out waiting for "
                        f"{', '.join(missing)}")
            return ""
        if view != r.view:
            joined = sorted(set(view) - set(r.view))
            left = sorted(set(r.view) - set(view))
            parts = ([f"joined: {', '.join(joined)}"] if joined else []) + (
                [f"left: {', '.join(left)}"] if left else [])
            return "membership changed (" + "; ".join(parts) + ")"
        pending = self._pending_requests()
        if pending:
            return f"{len(pending)} request(s) pending"
        for node in view:
            if node == self.name:
                continue
            peer = self.peers.get(node)
            if peer is None:
                continue
            if peer.incarnation != r.incarnations.get(node, peer.incarnation):
                return f"{node} restarted"
            if peer.received_at <= r.done_at:
                continue
            if peer.promised != self.promised:
                return f"{node} is not in epoch {fmt_epoch(self.promised)}"
            if peer.want > self.handled_want.get(node, 0):
                return f"{node} reported a failure"
        if self.want > self.handled_want.get(self.name, 0):
            return "a local failure"
        return ""

    def _pending_requests(self) -> dict[str, tuple[str, str, str]]:
        out: dict[str, tuple[str, str, str]] = {}
        alive = self.alive()
        sources: list[Iterable[str]] = [
            [f"{rid}:{r.kind}:{r.group}:{r.node}" for rid, r in self.requests.items()]]
        sources += [p.requests for n, p in self.peers.items() if n in alive]
        for src in sources:
            for item in src:
                rid, kind, group, node = [*item.split(":"), "", "", ""][:4]
                if rid and rid not in self.applied_ids:
                    out[rid] = (kind, group, node)
        return out

    def _declare(self, view: tuple[str, ...], reason: str) -> None:
        epoch: Epoch = (max(self.max_seen, self.promised[0]) + 1, self.name)
        self.max_seen = epoch[0]
        for node in view:
            peer = self.peers.get(node)
            self.handled_want[node] = self.want if node == self.name else (
                peer.want if peer else 0)
        self.round = Round(epoch=epoch, view=view, reason=reason, phase=Phase.ACK,
                           started=self.now, phase_deadline=self.now + self.timing.step_timeout,
                           next_retransmit=self.now + self.timing.retransmit_interval)
        self._note("transition", f"declaring epoch {fmt_epoch(epoch)}: {reason}; view "
                   f"{', '.join(view)}", epoch=fmt_epoch(epoch), reason=reason,
                   master=self.name, event="transition_started")
        self._send("declare", epoch=fmt_epoch(epoch), view=",".join(view), reason=reason)

    def _enter(self, phase: Phase, timeout: float | None = None) -> None:
        r = self.round
        assert r is not None
        r.phase = phase
        r.replies = {}
        r.phase_deadline = self.now + (timeout or self.timing.step_timeout)
        r.next_retransmit = self.now + self.timing.retransmit_interval

    def _phase_request(self, r: Round, dest: str = BROADCAST) -> None:
        e = fmt_epoch(r.epoch)
        if r.phase is Phase.ACK:
            self._send("declare", dest, epoch=e, view=",".join(r.view), reason=r.reason)
        elif r.phase is Phase.REPORT:
            self._send("report_req", dest, epoch=e,
                       known=",".join(fmt_epoch(a.epoch) for a in self.history))
        elif r.phase is Phase.COST:
            self._send("cost_req", dest, epoch=e, standby=",".join(sorted(r.standby)))
        elif r.phase is Phase.STOP:
            targets = [dest] if dest != BROADCAST else sorted(r.stops)
            for node in targets:
                if node in r.stops:
                    self._send("stop", node, epoch=e, groups=",".join(r.stops[node]))
        elif r.phase is Phase.ACCEPT:
            self._send("accept", dest, epoch=e, placement=_enc_placement(r.placement),
                       standby=",".join(sorted(r.standby)), applied=",".join(r.applied))
        elif r.phase is Phase.START:
            self._send("start", dest, epoch=e)

    def _master_progress(self) -> None:
        r = self.round
        if r is None or r.epoch != self.promised or r.phase is Phase.DONE:
            return
        waiting_for = set(r.stops) if r.phase is Phase.STOP else set(r.view)
        missing = sorted(waiting_for - set(r.replies))
        if missing:
            if self.now >= r.next_retransmit:
                r.next_retransmit = self.now + self.timing.retransmit_interval
                for node in missing:
                    if node != self.name:
                        self._phase_request(r, node)
            return
        if r.phase is Phase.ACK:
            r.acked_at = self.now
            r.incarnations = {n: self.peers[n].incarnation for n in r.view if n in self.peers}
            self._enter(Phase.REPORT)
        elif r.phase is Phase.REPORT:
            self._absorb_reports(r)
            self._enter(Phase.COST)
        elif r.phase is Phase.COST:
            self._decide(r)
            if not r.stops and not r.fence_pending and self.now >= r.fence_until:
                self._silence_over(r)
                self._enter(Phase.ACCEPT)
            else:
                extra = max(0.0, r.fence_until - self.now) + 2 * self.stop_bound
                self._enter(Phase.STOP, self.timing.step_timeout + extra)
                for node in sorted(r.fence_pending):
                    self._act(FenceNode(node))
        elif r.phase is Phase.STOP:
            if r.fence_pending or self.now < r.fence_until:
                return
            for msg in r.replies.values():
                for g in _names(msg.fields.get("unclean", "")):
                    self._note("placement", f"{g} is blocked: its stop failed on "
                               f"{msg.sender}", group=g)
            self._silence_over(r)
            self._enter(Phase.ACCEPT)
        elif r.phase is Phase.ACCEPT:
            self._enter(Phase.START)
        elif r.phase is Phase.START:
            r.phase = Phase.DONE
            r.done_at = self.now
            self.missed = {}
            self.applied_ids = (self.applied_ids + list(r.applied))[-1000:]
            self._note("transition", f"epoch {fmt_epoch(r.epoch)} complete in "
                       f"{self.now - r.started:.3f}s ({r.messages} messages)",
                       epoch=fmt_epoch(r.epoch))
            return
        self._phase_request(r)

    def _absorb_reports(self, r: Round) -> None:
        known = {a.epoch: a for a in self.history}
        for node, msg in r.replies.items():
            r.reports[node] = _pairs(msg.fields["active"])
            for entry in msg.fields.get("hist", "").split(";"):
                if entry:
                    acc = _dec_history(entry)
                    known.setdefault(acc.epoch, acc)
        r.known = [known[e] for e in sorted(known)]
        highest = r.known[-1] if r.known else NO_ACCEPTED
        standby = set(highest.standby)
        applied: list[str] = []
        for rid, (kind, group, node) in sorted(self._pending_requests().items()):
            if kind == "standby" and node in self.config.nodes:
                standby.add(node)
            elif kind == "online" and node in self.config.nodes:
                standby.discard(node)
            elif kind in ("enable", "disable", "kill") and group in self.config.resources:
                standby -= {f"off:{group}", f"kill:{group}"}
                if kind != "enable":
                    standby.add(f"{'off' if kind == 'disable' else 'kill'}:{group}")
            elif kind == "maintenance" and node in ("on", "off"):
                if node == "on":
                    standby.add(MAINTENANCE)
                else:
                    standby.discard(MAINTENANCE)
            elif kind == "move" and group in self.config.groups and node in self.config.nodes:
                r.moves[group] = node
            else:
                self._note("request", f"request {rid} ignored: unknown {kind} {group} {node}")
            applied.append(rid)
        r.standby = frozenset(standby)
        r.applied = tuple(applied)

    def _decide(self, r: Round) -> None:
        holders: dict[str, str] = {}
        active_on: dict[str, set[str]] = {}
        blocked: dict[str, str] = {}
        for node, states in r.reports.items():
            for g, state in states.items():
                active_on.setdefault(node, set()).add(g)
                if state in ("running", "starting"):
                    holders.setdefault(g, node)
                if state == "unclean":
                    blocked[g] = f"a stop failed on {node}; it needs fencing"
        costs = {node: r.costs[node] for node in r.replies}
        ctx = DecisionContext(config=self.config, members=r.view, costs=costs,
                              holders=holders, moves=r.moves, blocked=blocked)
        if MAINTENANCE in r.standby:
            # Nothing moves, starts or stops: the placement is what runs where it runs.
            # A holder that is not a member stays named (it may still run the group): the
            # transition after maintenance must fence it before starting the group elsewhere.
            last = r.known[-1].placement if r.known else {}
            r.placement = {g: holders.get(g) or (last.get(g) if last.get(g) not in r.view
                                                 else None)
                           for g in self.config.groups}
            r.reasons = {g: "maintenance mode: left as it is" for g in self.config.groups}
        else:
            decision = self.strategy.decide(ctx)
            r.placement = dict(decision.placement)
            r.reasons = dict(decision.reasons)
        for g, node in sorted(r.moves.items()):
            if r.placement.get(g) != node:
                self._note("request", f"cannot move {g} to {node}: "
                           f"{r.reasons.get(g, 'it cannot run there')}", group=g)
        stops: dict[str, list[str]] = {}
        for node, groups in active_on.items():
            for g in groups:
                if r.placement.get(g) != node:
                    stops.setdefault(node, []).append(g)
        r.stops = {n: tuple(sorted(gs)) for n, gs in stops.items()}
        suspects: set[str] = set()
        for g, target in r.placement.items():
            if target is None:
                continue
            for acc in r.known:
                previous = acc.placement.get(g)
                if (previous is not None and previous not in r.view
                        and previous not in self.departed):
                    suspects.add(previous)
        placed = r.known[-1].placement if r.known else {}
        if self.quorum.two_node and any(t is not None for t in r.placement.values()):
            # Each of two nodes is a quorum alone, so quorums need not intersect and the
            # highest accepted placement may not be the last one: whoever is not with us
            # could be running anything and must be fenced.
            suspects |= {n for n in self.config.nodes
                         if n not in r.view and n not in self.departed}
        if suspects:
            if self.fencer == "silence":
                r.silenced = tuple(sorted(suspects))
                r.fence_until = (r.acked_at + self.timing.lease_time
                                 + self.stop_bound + self.timing.fence_margin)
                self._note("fencing", f"waiting until {r.fence_until:.3f} for "
                           f"{', '.join(sorted(suspects))} to be off (silence: its lease has "
                           "run out and its stops had time to finish)",
                           members=",".join(sorted(suspects)), event="fencing_requested")
            else:
                r.fence_pending = set(suspects)
                self._note("fencing", f"fencing {', '.join(sorted(suspects))}",
                           members=",".join(sorted(suspects)), event="fencing_requested")
        moved = [f"{g}: {r.reasons.get(g, '')}" for g, n in sorted(r.placement.items())
                 if n != placed.get(g)]
        self._note("placement", f"epoch {fmt_epoch(r.epoch)} placement decided"
                   + (f"; changes: {'; '.join(moved)}" if moved else "; no changes"),
                   epoch=fmt_epoch(r.epoch))

    def _silence_over(self, r: Round) -> None:
        if r.silenced:
            members = ",".join(r.silenced)
            self._note("fencing", f"{', '.join(r.silenced)} counted as off: the silence "
                       "fencer's wait is over", members=members, ok="1",
                       event="fencing_completed")
            r.silenced = ()

    def _fence_done(self, ev: FenceDone) -> None:
        r = self.round
        if r is None or ev.node not in r.fence_pending:
            return
        if ev.ok:
            r.fence_pending.discard(ev.node)
            self._note("fencing", f"{ev.node} fenced", members=ev.node, ok="1",
                       event="fencing_completed")
        else:
            self._note("fencing", f"fencing {ev.node} failed; retrying", members=ev.node,
                       ok="0", event="fencing_completed")
            self._act(FenceNode(ev.node))

    # ---- deadlines and status --------------------------------------------------------------

    def _next_deadline(self) -> float:
        t = self.timing
        candidates = [self.next_hb]
        if self.now < self.started_at + t.dead_time:
            candidates.append(self.started_at + t.dead_time)
        if self.settle_until > self.now:
            candidates.append(self.settle_until)
        candidates += [h + t.dead_time for h in self.last_heard.values()
                       if h + t.dead_time > self.now]
        candidates += [e for e in self.support.values() if e > self.now]
        candidates += [u for u in self.unresponsive.values()]
        r = self.round
        if r is not None and r.phase is not Phase.DONE and r.epoch == self.promised:
            candidates += [r.phase_deadline, r.next_retransmit]
            if r.fence_until > self.now:
                candidates.append(r.fence_until)
        for g in self.expiring:
            if self.fail_times[g]:
                candidates.append(self.fail_times[g][0] + self.config.groups[g].failure_timeout)
        # only the future: what is due now was handled before this returned
        return min(c for c in candidates if c > self.now)

    def status(self) -> dict[str, object]:
        """The node's view of the cluster, for `vigil status` and /ha."""
        alive = self.alive()
        r = self.round
        groups: dict[str, dict[str, object]] = {}
        active: dict[str, dict[str, str]] = {}
        for node, peer in self.peers.items():
            if node in alive:
                for g, state in peer.groups.items():
                    active.setdefault(g, {})[node] = state
        for g, s in self.local.items():
            if s in ACTIVE:
                active.setdefault(g, {})[self.name] = s.value
        for g in self.config.groups:
            where = active.get(g, {})
            holder: str | None = None
            state = "stopped" if not where else "conflict"
            if len(where) == 1:
                holder, state = next(iter(where.items()))
            groups[g] = {
                "node": holder,
                "state": state,
                "placed": self.accepted.placement.get(g),
                "active_on": dict(sorted(where.items())),
            }
        return {
            "node": self.name,
            "epoch": fmt_epoch(self.promised),
            "accepted": fmt_epoch(self.accepted.epoch),
            "closed": self.closed,
            "master": self.promised[1] or None,
            "quorate": self.quorate(),
            "quorum": self.quorum.describe(alive),
            "lease_valid": self.lease_valid(),
            "members": list(self.promised_view),
            "alive": sorted(alive),
            "mismatched": sorted(self.mismatched),
            "standby": sorted(n for n in self.accepted.standby if n in self.config.nodes),
            "maintenance": self.accepted.maintenance,
            "disabled": {r: ("force_oos" if force else "oo_service")
                         for r, force in sorted(self.accepted.disabled().items())},
            "transition": (None if r is None or r.epoch != self.promised else
                           {"phase": r.phase.value, "reason": r.reason}),
            "groups": groups,
            "local": {g: s.value for g, s in self.local.items()},
            "fail_counts": self.fail_counts(),
            "links": self.link_state(),
            "dropped": self.dropped,
            "decisions": self.decisions[-20:],
        }
