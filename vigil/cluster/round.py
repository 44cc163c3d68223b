"""The transition master: declare an epoch, then lead it through its phases.

1. The lowest-named live node of a quorate view *declares* epoch ``(n, name)`` with that view.
2. Every node of the view *acks* (promises to ignore older epochs). Timeouts restart at 1.
3. The master asks for *reports*: what each member has active and the placements it has
   *accepted* that the master does not know.
4. The master asks every member the *cost* of each group; ``placement.plan()`` decides.
5. *Stop phase*: members stop what moves away; groups that a non-member may still hold wait
   for fencing: the ``guardian`` fencer waits until the non-member's quorum lease has surely
   run out (bounded from the silences the acks report) and its guardian had ``guard_time`` to
   kill what it ran; ``silence`` waits until its own stops had time to finish instead. A
   power fencer (``devices``) does not wait: the groups such a node may run are *held* (named
   on it, started nowhere) while :mod:`~vigil.cluster.fencing` powers it off, and the
   transition that follows its fencing moves them. A group whose stop failed stays named on
   its member (blocked), and that member is fenced when a device can.
6. *Accept*: every member records the placement; only then
7. *Start*: members start what is theirs. The epoch is complete when all confirmed.

A phase waits for every member's reply and retransmits its request to those missing; a
member that does not answer within the round's step wait makes the master declare again (twice
in a row, and it is left out of the next view for a while). The step wait is ``step_timeout``,
doubled after each round in a row that timed out, up to ``STEP_BACKOFF_CAP`` times it: a
cluster too slow for one step_timeout (a starved CPU) still completes a round. It affects
liveness only (docs/protocol.md, "Graceful overload").
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from vigil.cluster import admin
from vigil.cluster.events import Action, FenceDone
from vigil.cluster.fencing import Fencing, fence_delay
from vigil.cluster.journal import Journal
from vigil.cluster.membership import Membership
from vigil.cluster.mirrors import CopyFact
from vigil.cluster.placement import hold_partners, plan
from vigil.cluster.promise import Promise
from vigil.cluster.reconfig import retired, summary
from vigil.cluster.strategy import Strategy, builtin_strategy
from vigil.cluster.wire import (
    MAINTENANCE,
    NO_ACCEPTED,
    NO_EPOCH,
    Accept,
    Accepted,
    AcceptedReply,
    Ack,
    Body,
    CostReply,
    CostRequest,
    Declare,
    Epoch,
    Reply,
    Report,
    ReportRequest,
    RequestRef,
    Start,
    Started,
    Stopped,
    StopRequest,
    fmt_epoch,
)
from vigil.config import TIME_FENCERS, ClusterConfig
from vigil.messages import BROADCAST
from vigil.notifications import FencingCompleted, FencingRequested, TransitionStarted
from vigil.status import seconds

#: The longest a step waits, in step_timeouts, after rounds in a row that timed out (1, 2, 4,
#: then 8): long enough for a node that lags by several seconds, short enough that a node
#: that is heard but never answers is still left out within a minute at the defaults.
STEP_BACKOFF_CAP = 8


class Phase(enum.Enum):
    ACK = "ack"
    REPORT = "report"
    COST = "cost"
    STOP = "stop"
    ACCEPT = "accept"
    START = "start"
    DONE = "done"


#: The reply each phase waits for.
_REPLY: dict[Phase, type[Reply]] = {
    Phase.ACK: Ack, Phase.REPORT: Report, Phase.COST: CostReply, Phase.STOP: Stopped,
    Phase.ACCEPT: AcceptedReply, Phase.START: Started}


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
    replies: dict[str, Reply] = field(default_factory=dict)
    acked_at: float = 0.0
    #: node outside the view -> the latest moment a member of the view may have heard it
    #: (from the silences the acks report): the lost node's lease cannot outlast that by
    #: more than lease_time
    heard_by_view: dict[str, float] = field(default_factory=dict)
    known: list[Accepted] = field(default_factory=list)  # every placement possibly in effect
    admin: frozenset[str] = frozenset()
    applied: tuple[str, ...] = ()
    moves: dict[str, str] = field(default_factory=dict)
    forced: frozenset[str] = frozenset()  # groups whose move may go beyond max_lag
    #: member -> mirror resource -> its copy, as the cost replies said (the decision's input)
    copies: dict[str, Mapping[str, CopyFact | None]] = field(default_factory=dict)
    placement: dict[str, str | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    stops: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fence_until: float = 0.0
    silenced: tuple[str, ...] = ()  # suspects the silence fencer waits out
    held: dict[str, str] = field(default_factory=dict)  # group -> suspect it waits for
    reports: dict[str, Mapping[str, str]] = field(default_factory=dict)  # member -> active
    incarnations: dict[str, int] = field(default_factory=dict)
    done_at: float = math.inf
    messages: int = 0
    #: the configuration every member switches to as it accepts this round's placement
    #: (placed by it; None: no change), and the groups of the running one that stop first
    config: ClusterConfig | None = None
    retire: dict[str, str] = field(default_factory=dict)
    #: why this round goes no further (the master declares again)
    aborted: str = ""
    #: how long each phase waits for replies (the STOP phase more: the fencing wait):
    #: step_timeout, or longer after rounds that timed out (Master.step_wait)
    step_wait: float = 0.0

    def waiting_for(self) -> set[str]:
        return set(self.stops) if self.phase is Phase.STOP else set(self.view)


Send = Callable[[Body, str], None]


class Master:
    def __init__(self, config: ClusterConfig, name: str, *, strategy: Strategy, fencer: str,
                 stop_bound: float, membership: Membership, promise: Promise,
                 requests: admin.Requests, journal: Journal, send: Send,
                 act: Callable[[Action], None], now: float, fencing: Fencing,
                 strategies: Callable[[str], Strategy] = builtin_strategy) -> None:
        self.config = config
        self.name = name
        self.timing = config.timing
        self.strategy = strategy
        self.strategies = strategies
        self.fencer = fencer
        #: power fencing (every fencer that is not time-based): hold, fence, move after
        self.power = fencer not in TIME_FENCERS
        self.fencing = fencing
        self.stop_bound = stop_bound
        self.membership = membership
        self.promise = promise
        self.requests = requests
        self.journal = journal
        self.send = send
        self.act = act
        self.round: Round | None = None
        self.unresponsive: dict[str, float] = {}  # heard but not answering: left out until
        self.last_alive: frozenset[str] = frozenset({name})
        self.settle_until = now
        self.missed: dict[str, int] = {}
        #: rounds declared here in a row whose step timed out: the next waits longer
        self.timed_out = 0
        #: each member's failure count that the current round has seen: when it was declared,
        #: then as its cost reply says (a change the costs already reflect needs no round)
        self.handled_failures: dict[str, int] = {}
        #: groups cleaned up (`vigil resource cleanup`) since the last declaration -> the
        #: node it was asked on: one transition for the cleanup, with that as its reason
        self.cleanups: dict[str, str] = {}
        self.applied_ids: list[str] = []
        #: the configuration staged here (vigil.cluster.reconfig): a round declared while
        #: every member staged it too switches to it
        self.staged: ClusterConfig | None = None

    def reconfigure(self, config: ClusterConfig, stop_bound: float) -> None:
        """Switch to ``config`` (see :meth:`NodeCore.switch_config`)."""
        if config.strategy != self.config.strategy:
            self.strategy = self.strategies(config.strategy)
        self.config = config
        self.timing = config.timing
        self.stop_bound = stop_bound
        self.staged = None

    def _strategy_for(self, config: ClusterConfig) -> Strategy:
        return (self.strategy if config.strategy == self.config.strategy
                else self.strategies(config.strategy))

    def switch_ready(self, view: Iterable[str]) -> bool:
        """Every member of ``view`` staged the configuration staged here."""
        staged = self.staged
        if staged is None:
            return False
        peers = self.membership.peers
        return all(n == self.name or (n in peers and peers[n].next == staged.digest)
                   for n in view)

    @property
    def now(self) -> float:
        return self.journal.now

    def step_wait(self) -> float:
        """How long the next round's phases wait: doubled per round in a row that timed out,
        at most STEP_BACKOFF_CAP x step_timeout. Nothing safe depends on it: every wait
        that keeps two nodes from running a group at once is counted from leases and acks."""
        doublings = min(self.timed_out, STEP_BACKOFF_CAP.bit_length())  # no huge numbers
        return self.timing.step_timeout * min(1 << doublings, STEP_BACKOFF_CAP)

    def completed(self) -> None:
        """A round completed (this master's, or one this node took part in): the cluster
        keeps up again, so the steps wait step_timeout again. Not while nodes are left out
        as unresponsive: they come back to a round that waits as long as the one they
        missed, or a node that is merely slow would be left out and taken back for ever."""
        if not self.unresponsive:
            self.timed_out = 0

    def active(self) -> Round | None:
        """The round this node leads in the epoch it promised, if any and not done."""
        r = self.round
        if r is None or r.epoch != self.promise.promised or r.phase is Phase.DONE:
            return None
        return r

    def advance(self) -> None:
        for node in [n for n, t in self.unresponsive.items() if t <= self.now]:
            del self.unresponsive[node]
        self.fence()

    def fence(self) -> None:
        """Start the fencing levels that are due. Only a quorate master fences: a minority,
        or a former master, shoots nobody."""
        master = self.promise.promised[1] == self.name
        if not master:
            # Another node leads now and fences what it needs: a job kept here could shoot,
            # should this node lead again, a node that is back by then.
            self.fencing.retain(())
        self.fencing.advance(master and self.membership.quorate())

    def alive(self) -> frozenset[str]:
        """The live nodes, less those a fence powered off: nothing more will come from a
        node that is off, even before it falls silent for dead_time."""
        alive = self.membership.alive()
        off = {n for n in alive if n != self.name and self.fencing.is_off(n)}
        return alive - off if off else alive

    def forget_failures(self, node: str) -> None:
        """``node`` started a new life: its failure counter starts again from zero."""
        self.handled_failures.pop(node, None)

    def _carried(self) -> list[tuple[RequestRef, ...]]:
        """The requests queued here and those live members carry in their heartbeats."""
        alive = self.membership.alive()
        return [self.requests.refs()] + [p.requests for n, p in self.membership.peers.items()
                                         if n in alive]

    def _applied(self, reported: Iterable[str] = ()) -> set[str]:
        """Requests known to be applied: by this master, by any placement accepted here
        (also in a previous life), or, as members report, by one accepted there."""
        return {*self.applied_ids, *self.promise.applied_seen, *reported}

    def pending_requests(self, reported: Iterable[str] = ()) -> dict[str, RequestRef]:
        return admin.pending(self._carried(), self._applied(reported))

    def stale_requests(self, reported: Iterable[str] = ()) -> list[str]:
        """Requests already applied that a node still carries (it missed the accept that
        applied them, so it was not a member then): the next placement names them again so
        that node drops them, or a later master, which may not know they were applied,
        would apply them twice. That node joining is itself a reason to declare."""
        done = self._applied(reported)
        return sorted({r.rid for src in self._carried() for r in src if r.rid in done})

    # ---- declaring -----------------------------------------------------------------------

    def maybe_declare(self, *, local_failures: int, started_at: float) -> None:
        if self.now < started_at + self.timing.dead_time:
            return  # learn who is there before declaring anything
        # a peer running another configuration (about to switch, or started with the file
        # the cluster is about to switch to) neither leads nor joins a view until it runs ours
        alive = self.alive() - self.membership.unswitched()
        if alive - self.last_alive:
            # Someone (re)appeared: others are likely coming back too (a healed partition,
            # a rebooted switch). Wait a few heartbeats so one transition takes them all.
            self.settle_until = self.now + 3 * self.timing.heartbeat_interval
        self.last_alive = alive
        if min(alive) != self.name or self.now < self.settle_until:
            return
        if self.membership.in_doubt():
            # Someone is about to be declared dead: on a partition the whole other side goes
            # silent at the same moment, give or take a few milliseconds, so wait until it
            # has (at most a heartbeat interval) instead of declaring a view with half of it.
            return
        view = tuple(sorted(alive - set(self.unresponsive)))
        if not self.membership.quorum.quorate(view, seen_all=self.membership.seen_all):
            return
        reason = self._declare_reason(view, alive, local_failures)
        if reason:
            # a node the timeout just left out is out of this very view (if the rest is
            # quorate): taken in, it would make a round that waits longer time out again
            rest = tuple(n for n in view if n not in self.unresponsive)
            if rest != view and self.membership.quorum.quorate(
                    rest, seen_all=self.membership.seen_all):
                view = rest
            self._declare(view, reason, local_failures)

    def _declare_reason(self, view: tuple[str, ...], alive: frozenset[str],
                        local_failures: int) -> str:
        r = self.round
        promised = self.promise.promised
        if r is None or r.epoch != promised:
            if promised == NO_EPOCH:
                return "forming the cluster"
            if self.promise.master not in alive:
                return f"master {self.promise.master} lost"
            return "taking over as the lowest-named live node"
        if r.phase is not Phase.DONE:
            if r.aborted:
                return r.aborted
            lost = set(r.view) - alive
            if lost:
                return f"lost {', '.join(sorted(lost))} during the transition"
            # every reply in, however late a busy master handled it, is no timeout:
            # progress moves the round on
            missing = (sorted(r.waiting_for() - set(r.replies))
                       if self.now >= r.phase_deadline else [])
            if missing:
                # A node that is heard but does not answer twice in a row (a one-way link)
                # is left out for a while so the rest can proceed; once is not enough, the
                # reply may have been lost or the node unreachable only for a moment.
                for node in missing:
                    self.missed[node] = self.missed.get(node, 0) + 1
                    if self.missed[node] >= 2:
                        self.unresponsive[node] = self.now + 2 * self.timing.step_timeout
                self.timed_out += 1
                return (f"step {r.phase.value} timed out waiting for {', '.join(missing)} "
                        f"(waited {seconds(r.step_wait)}; the next round waits "
                        f"{seconds(self.step_wait())})")
            return ""
        if view != r.view:
            joined = sorted(set(view) - set(r.view))
            left = sorted(set(r.view) - set(view))
            parts = ([f"joined: {', '.join(joined)}"] if joined else []) + (
                [f"left: {', '.join(left)}"] if left else [])
            return "membership changed (" + "; ".join(parts) + ")"
        pending = self.pending_requests()
        if pending:
            return f"{len(pending)} request(s) pending"
        if self.cleanups:
            return "cleanup of " + ", ".join(f"{g} (asked on {n})" for g, n in sorted(
                self.cleanups.items())) + ": fail counts cleared"
        if self.staged is not None and self.switch_ready(view):
            return (f"configuration change to {self.staged.digest[:12]} "
                    f"({summary(self.config, self.staged)})")
        fenced = sorted({x for x in r.held.values() if self.fencing.is_off(x)})
        if fenced:
            return f"{', '.join(fenced)} fenced: the groups held for it may move"
        for node in view:
            if node == self.name:
                continue
            peer = self.membership.peers.get(node)
            if peer is None:
                continue
            if peer.incarnation != r.incarnations.get(node, peer.incarnation):
                return f"{node} restarted"
            if peer.received_at <= r.done_at:
                continue
            if peer.promised != promised:
                return f"{node} is not in epoch {fmt_epoch(promised)}"
            if peer.failures > self.handled_failures.get(node, 0):
                return f"{node} reported a failure"
        if local_failures > self.handled_failures.get(self.name, 0):
            return "a local failure"
        return ""

    def _declare(self, view: tuple[str, ...], reason: str, local_failures: int) -> None:
        epoch: Epoch = (max(self.promise.max_seen, self.promise.promised[0]) + 1, self.name)
        self.promise.saw(epoch)
        self.cleanups = {}  # the costs this round asks for are after them
        peers = self.membership.peers
        for node in view:
            peer = peers.get(node)
            self.handled_failures[node] = local_failures if node == self.name else (
                peer.failures if peer else 0)
        wait = self.step_wait()
        self.round = Round(epoch=epoch, view=view, reason=reason, phase=Phase.ACK,
                           started=self.now, phase_deadline=self.now + wait,
                           next_retransmit=self.now + self.timing.retransmit_interval,
                           step_wait=wait)
        if self.staged is not None and self.switch_ready(view):
            self.round.config = self.staged
            self.round.retire = retired(self.config, self.staged)
        self.journal.emit(TransitionStarted(
            node=self.name, time=self.now, epoch=fmt_epoch(epoch), master=self.name,
            reason=reason, text=f"declaring epoch {fmt_epoch(epoch)}: {reason}; view "
                                f"{', '.join(view)}"))
        self.send(Declare(epoch, view, reason), BROADCAST)

    # ---- phases ---------------------------------------------------------------------------

    def collect(self, sender: str, reply: Reply) -> None:
        r = self.round
        if r is None or r.phase is Phase.DONE or r.epoch != reply.epoch:
            return
        if isinstance(reply, _REPLY[r.phase]) and sender in r.view:
            r.replies[sender] = reply
            if isinstance(reply, CostReply) and reply.failures is not None:
                # its costs count every failure and cleanup up to this: a heartbeat that
                # tells of them later is no news (one cleanup, one transition)
                self.handled_failures[sender] = max(self.handled_failures.get(sender, 0),
                                                    reply.failures)
            if isinstance(reply, Ack):
                # the ack left its sender no later than now: its silence ends no earlier
                # than now minus what it says, so the bound errs late, which is safe
                for node, ms in reply.silent_ms.items():
                    heard = self.now - ms / 1000
                    if heard > r.heard_by_view.get(node, -math.inf):
                        r.heard_by_view[node] = heard

    def _enter(self, r: Round, phase: Phase, timeout: float | None = None) -> None:
        r.phase = phase
        r.replies = {}
        r.phase_deadline = self.now + (timeout or r.step_wait)
        r.next_retransmit = self.now + self.timing.retransmit_interval

    def _request(self, r: Round, dest: str = BROADCAST) -> None:
        e = r.epoch
        if r.phase is Phase.ACK:
            self.send(Declare(e, r.view, r.reason), dest)
        elif r.phase is Phase.REPORT:
            self.send(ReportRequest(e, frozenset(fmt_epoch(a.epoch)
                                                 for a in self.promise.history)), dest)
        elif r.phase is Phase.COST:
            self.send(CostRequest(e, r.admin, r.config.digest if r.config else ""), dest)
        elif r.phase is Phase.STOP:
            for node in ([dest] if dest != BROADCAST else sorted(r.stops)):
                if node in r.stops:
                    self.send(StopRequest(e, r.stops[node]), node)
        elif r.phase is Phase.ACCEPT:
            self.send(Accept(e, r.placement, r.admin, r.applied,
                             r.config.digest if r.config else ""), dest)
        elif r.phase is Phase.START:
            self.send(Start(e), dest)

    def progress(self) -> None:
        r = self.active()
        if r is None:
            return
        missing = sorted(r.waiting_for() - set(r.replies))
        if missing and not set(missing) <= self.alive():
            return  # a member is lost: the next declaration (if quorate) replaces this round
        if missing:
            if self.now >= r.next_retransmit:
                r.next_retransmit = self.now + self.timing.retransmit_interval
                for node in missing:
                    if node != self.name:
                        self._request(r, node)
            return
        if r.phase is Phase.ACK:
            r.acked_at = self.now
            peers = self.membership.peers
            r.incarnations = {n: peers[n].incarnation for n in r.view if n in peers}
            self._enter(r, Phase.REPORT)
        elif r.phase is Phase.REPORT:
            self._absorb_reports(r)
            self._enter(r, Phase.COST)
        elif r.phase is Phase.COST:
            self._decide(r)
            if not r.stops and self.now >= r.fence_until:
                self._silence_over(r)
                self._enter(r, Phase.ACCEPT)
            else:
                extra = max(0.0, r.fence_until - self.now) + 2 * self.stop_bound
                self._enter(r, Phase.STOP, r.step_wait + extra)
        elif r.phase is Phase.STOP:
            if self.now < r.fence_until:
                return
            if self._switch_stop_failed(r):
                return
            self._failed_stops(r)
            self._silence_over(r)
            self._enter(r, Phase.ACCEPT)
        elif r.phase is Phase.ACCEPT:
            self._enter(r, Phase.START)
        elif r.phase is Phase.START:
            r.phase = Phase.DONE
            r.done_at = self.now
            self.missed = {}
            self.completed()
            self.applied_ids = (self.applied_ids + list(r.applied))[-1000:]
            self.journal.note("transition", f"epoch {fmt_epoch(r.epoch)} complete in "
                              f"{self.now - r.started:.3f}s ({r.messages} messages)",
                              epoch=fmt_epoch(r.epoch))
            return
        self._request(r)

    def _absorb_reports(self, r: Round) -> None:
        known = {a.epoch: a for a in self.promise.history}
        for node, reply in r.replies.items():
            assert isinstance(reply, Report)
            r.reports[node] = reply.active
            for acc in reply.history:
                known.setdefault(acc.epoch, acc)
        r.known = [known[e] for e in sorted(known)]
        highest = r.known[-1] if r.known else NO_ACCEPTED
        reported = {a for reply in r.replies.values() if isinstance(reply, Report)
                    for a in reply.applied}
        if r.config is not None:
            self._check_switch(r, highest.admin)
        config = r.config or self.config
        result = admin.apply(config, highest.admin, self.pending_requests(reported))
        for why in result.ignored:
            self.journal.note("request", why)
        r.admin, r.moves, r.forced = result.admin, result.moves, result.forced
        if r.config is not None:  # what the new file no longer has, nothing can clear later
            r.admin = frozenset(t for t in r.admin if not (
                t.partition(":")[0] in ("off", "kill")
                and t.partition(":")[2] not in r.config.resources))
        r.applied = result.applied + tuple(self.stale_requests(reported))
        for kind, node, who in result.fencing:
            self._fence_by_hand(r, kind, node, who)

    def _fence_by_hand(self, r: Round, kind: str, node: str, who: str) -> None:
        """`vigil node confirm-off` (``node`` counts as fenced) or `vigil node fence` (run
        its levels now, once), as the master applies them."""
        if kind == "confirm_off":
            if node in r.view:
                self.journal.note("request", f"confirm-off of {node} by {who} ignored: "
                                  f"{node} is a member of epoch {fmt_epoch(r.epoch)}, so it "
                                  "is not off", node=node)
            else:
                self.fencing.confirm_off(node, who)
        elif not self.fencing.request(node, why=f"asked by {who}", requester=who, retry=False):
            self.journal.note("request", f"fence of {node} by {who} ignored: no fence device "
                              "can fence it", node=node)

    def _decide(self, r: Round) -> None:
        replies = {n: c for n, c in r.replies.items() if isinstance(c, CostReply)}
        r.copies = {n: c.copies for n, c in replies.items()}
        config = r.config or self.config
        decided = plan(config, self._strategy_for(config), view=r.view, reports=r.reports,
                       costs={n: c.costs for n, c in replies.items()}, copies=r.copies,
                       known=r.known, admin=r.admin, moves=r.moves, forced=r.forced,
                       departed=self.membership.departed,
                       two_node=self.membership.quorum.two_node,
                       off=frozenset(n for n in self.config.nodes
                                     if n not in r.view and self.fencing.is_off(n)),
                       hold=self.power)
        r.placement, r.reasons, r.stops = decided.placement, decided.reasons, decided.stops
        if r.config is not None:
            self._retire(r)
        for g, node in sorted(r.moves.items()):
            if r.placement.get(g) != node:
                self.journal.note("request", f"cannot move {g} to {node}: "
                                  f"{r.reasons.get(g, 'it cannot run there')}", group=g)
        suspects = sorted(decided.suspects)
        if suspects and not self.power:
            r.silenced = tuple(suspects)
            if self.fencer == "guardian":
                r.fence_until = (self.lease_end(r, suspects) + self.timing.guard_time
                                 + self.timing.fence_margin)
                how = "its guardian has killed what it ran"
            else:
                # Counted from the acks, not from when the suspect was last heard: its own
                # daemon must stop what it runs, and a daemon that stalled for up to dead_time
                # before it noticed its lease was gone still has time to.
                r.fence_until = (r.acked_at + self.timing.lease_time + self.stop_bound
                                 + self.timing.fence_margin)
                how = "its stops had time to finish"
            # a span, not the core's clock: the shell adds the wall-clock end (``until``)
            why = (f"waiting {seconds(max(0.0, r.fence_until - self.now))} for "
                   f"{', '.join(suspects)} to be off (fencing by {self.fencer}: its lease has "
                   f"run out and {how})")
            for i, member in enumerate(suspects):
                self._fencing(FencingRequested(node=self.name, time=self.now, member=member,
                                               detail=why, text=why, until=r.fence_until),
                              first=i == 0)
        wanted = set(suspects) if self.power else set()
        for member in suspects if self.power else ():
            self._fence_lost(r, member, decided.held)
        self.fence()
        r.held = dict(decided.held)
        for g, member in r.held.items():
            r.reasons[g] = self.fencing.waiting(member)
        for member in sorted(set(decided.unclean.values())):
            groups = sorted(g for g, n in decided.unclean.items() if n == member)
            if self._fence_unclean(r, member, groups):
                wanted.add(member)
        self.fencing.retain(wanted)
        placed = r.known[-1].placement if r.known else {}
        moved = [f"{g}: {r.reasons.get(g, '')}" for g, n in sorted(r.placement.items())
                 if n != placed.get(g) or g in r.held]
        self.journal.note("placement", f"epoch {fmt_epoch(r.epoch)} placement decided"
                          + (f"; changes: {'; '.join(moved)}" if moved else "; no changes"),
                          epoch=fmt_epoch(r.epoch))

    def _check_switch(self, r: Round, admin_state: frozenset[str]) -> None:
        """A switch needs every group it retires stopped first: not in maintenance mode
        (nothing stops then), nor while one is blocked where its stop failed (only fencing
        or an operator ends that). Otherwise this round places by the running file."""
        blocked = sorted(f"{g} on {n}" for n, active in r.reports.items()
                         for g, s in active.items() if s == "unclean" and g in r.retire)
        why = ("maintenance mode is on: nothing stops until it ends"
               if MAINTENANCE in admin_state and any(
                   g in r.retire for active in r.reports.values() for g in active)
               else f"a stop failed ({', '.join(blocked)}): it must be stopped first "
                    "(fencing, or `vigil resource mark-oos`)" if blocked else "")
        if why:
            assert r.config is not None
            self.journal.warn("config", f"the switch to configuration "
                              f"{r.config.digest[:12]} waits: {why}")
            r.config, r.retire = None, {}

    def _retire(self, r: Round) -> None:
        """The groups the switch retires stop wherever they are active, even where the new
        placement keeps them: they start again from their new definition (or not at all)."""
        stops = {n: set(gs) for n, gs in r.stops.items()}
        for node, active in r.reports.items():
            for g in active:
                if g in r.retire:
                    stops.setdefault(node, set()).add(g)
        r.stops = {n: tuple(sorted(gs)) for n, gs in stops.items()}
        for g, why in r.retire.items():
            if r.placement.get(g) is not None:
                r.reasons[g] = f"{why}; {r.reasons.get(g, '')}".rstrip("; ")

    def _switch_stop_failed(self, r: Round) -> bool:
        """A group the switch retires failed to stop: the round goes no further (the next
        one, which sees it blocked, places by the running file and fences as usual)."""
        if r.config is None:
            return False
        failed = sorted(f"{g} on {n}" for n, reply in r.replies.items()
                        if isinstance(reply, Stopped) for g in reply.unclean if g in r.retire)
        if not failed:
            return False
        r.aborted = (f"the switch to configuration {r.config.digest[:12]} stopped: the stop "
                     f"of {', '.join(failed)} failed")
        self.journal.warn("config", r.aborted)
        return True

    def _fence_lost(self, r: Round, member: str, held: Mapping[str, str]) -> None:
        """A power fencer's suspect: fence it after the delays against a split's race."""
        mine = sorted(g for g, n in held.items() if n == member)
        why = (f"lost while it may run {', '.join(mine)}" if mine else
               "lost while it may run groups")
        placed = r.known[-1].placement if r.known else {}
        theirs = sum(1 for n in placed.values() if n == member)
        ours = sum(1 for n in placed.values() if n in r.view)
        delay, delay_why = fence_delay(self.config, fmt_epoch(r.epoch), member, theirs, ours)
        if not self.fencing.request(member, why=why, requester=self.name, delay=delay,
                                    delay_why=delay_why):
            self.journal.note("fencing", f"{member} must be fenced ({why}), but no fence "
                              f"device can fence it: {self.fencing.waiting(member)}",
                              node=member)

    def _fence_unclean(self, r: Round, member: str, groups: list[str]) -> bool:
        """A member whose stop of ``groups`` failed: fence it if a device can (True), so
        that they may move (the master too: it powers itself off, and the next master moves
        them); else they stay blocked there until an operator marks their members out of
        service. Their reasons say which."""
        asked = self.fencing.request(member, why=f"the stop of {', '.join(groups)} failed "
                                     "there", requester=self.name)
        tail = (self.fencing.waiting(member) if asked else
                "no fence device can fence it: an operator marks the members out of service "
                "(`vigil resource mark-oos`) once they are stopped")
        for g in groups:
            r.reasons[g] = f"blocked: a stop failed on {member}; {tail}"
        return asked

    def _failed_stops(self, r: Round) -> None:
        """Groups whose stop failed in this stop phase stay named where it failed
        (blocked), their colocation partners go nowhere, and that member is fenced when a
        device can: nothing starts them elsewhere while they may still run there."""
        blocked: dict[str, str | None] = {}
        for sender, reply in sorted(r.replies.items()):
            assert isinstance(reply, Stopped)
            if not reply.unclean:
                continue
            self._fence_unclean(r, sender, sorted(reply.unclean))
            for g in reply.unclean:
                r.placement[g] = sender
                blocked[g] = sender
                self.journal.note("placement", f"{g} is blocked: its stop failed on "
                                  f"{sender} ({r.reasons[g]})", group=g)
        if blocked:
            running = {g: n for n, active in r.reports.items() for g, s in active.items()
                       if s in ("running", "starting") and r.placement.get(g) == n}
            hold_partners(r.config or self.config, r.placement, r.reasons, blocked, running)

    def lease_end(self, r: Round, suspects: list[str]) -> float:
        """When the leases of ``suspects`` have surely run out. A lease needs a quorum, so a
        member of this (quorate) view must support it, with the echo of a heartbeat it
        received from the suspect, valid lease_time from when that heartbeat was sent; and
        since acking this epoch no member supports a node outside it."""
        heard = max((r.heard_by_view.get(n, r.acked_at) for n in suspects), default=r.acked_at)
        return min(heard, r.acked_at) + self.timing.lease_time

    def _fencing(self, note: FencingRequested | FencingCompleted, *, first: bool) -> None:
        """One notification per member, one line in the decisions for all of them."""
        if first:
            self.journal.emit(note)
        else:
            self.journal.pending.append(note)

    def _silence_over(self, r: Round) -> None:
        if r.silenced:
            text = (f"{', '.join(r.silenced)} counted as off: the {self.fencer} fencer's "
                    "wait is over")
            for i, member in enumerate(r.silenced):
                self.fencing.waited_out(member, text)
                self._fencing(FencingCompleted(node=self.name, time=self.now, member=member,
                                               ok=True, detail=text, text=text),
                              first=i == 0)
            r.silenced = ()

    def fence_done(self, ev: FenceDone) -> None:
        """A level's result: the fencing decides what follows; a node now off lets the
        groups held for it move (``_declare_reason``) or leaves the view."""
        if self.fencing.done(ev):
            r = self.round
            held = sorted(g for g, n in r.held.items() if n == ev.node) if r else []
            if held:
                self.journal.note("fencing", f"{ev.node} is off: {', '.join(held)} may move "
                                  "in the next transition", node=ev.node)

    def deadlines(self) -> list[float]:
        out = list(self.unresponsive.values())
        if self.settle_until > self.now:
            out.append(self.settle_until)
        r = self.active()
        if r is not None:
            out += [r.phase_deadline, r.next_retransmit]
            if r.fence_until > self.now:
                out.append(r.fence_until)
        return out + self.fencing.deadlines()

