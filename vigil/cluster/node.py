"""The pure core of one node: ``NodeCore.handle(event, now)``.

It does no I/O: it takes an event and the current time and returns the messages to send, the
actions to take, the notifications of what it decided, and the next deadline. The coordinator
actor wraps it; the simulation drives thousands of them. The concepts live in their own
modules and meet here:

- :mod:`~vigil.cluster.wire`: every protocol message, parsed once (a peer's malformed message
  is a :class:`~vigil.cluster.wire.RemoteProtocolError`, dropped and counted here; anything
  else raised is our bug and propagates);
- :mod:`~vigil.cluster.membership`: who is alive, heartbeats, the quorum lease;
- :mod:`~vigil.cluster.promise`: the member's promise and accepted placements (persisted);
- :mod:`~vigil.cluster.round`: the transition master; :mod:`~vigil.cluster.placement` its
  pure decision; :mod:`~vigil.cluster.admin` the operators' requests;
- :mod:`~vigil.cluster.local`: the groups this node runs, recovery, fail counts;
- :mod:`~vigil.cluster.changes`: notifications of what it saw change;
  :mod:`~vigil.cluster.view` builds the typed status from it.

docs/protocol.md has the full protocol and its safety argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from vigil.cluster.admin import Requests
from vigil.cluster.changes import Changes
from vigil.cluster.events import (
    Action,
    AdminRequest,
    ClearFailures,
    CopyReceived,
    Event,
    FenceDone,
    GroupDone,
    GroupFailed,
    GroupProbed,
    GuardFenced,
    LoadConfig,
    MarkedOutOfService,
    NicChanged,
    Output,
    Received,
    Shutdown,
    StageConfig,
    SwitchConfig,
    Tick,
)
from vigil.cluster.fencing import Fencing
from vigil.cluster.history import ClusterHistory
from vigil.cluster.journal import Journal
from vigil.cluster.local import Allowed, LocalGroups, LocalState
from vigil.cluster.membership import Heard, Membership
from vigil.cluster.mirrors import (
    CLOCK_SLACK,
    CopyFact,
    MirrorLag,
    MirrorState,
    max_lag,
    mirror_resources,
)
from vigil.cluster.placement import stop_bound
from vigil.cluster.promise import Persisted, Promise
from vigil.cluster.reconfig import refusals, retired, summary
from vigil.cluster.round import Master, Phase, Round
from vigil.cluster.strategy import (
    CostExplanation,
    LocalCostContext,
    Strategy,
    builtin_strategy,
    nic_limit,
)
from vigil.cluster.wire import (
    INFINITY,
    NO_EPOCH,
    Accept,
    Accepted,
    AcceptedReply,
    Ack,
    Body,
    Bye,
    Cleanup,
    CostReply,
    CostRequest,
    Declare,
    Echo,
    Envelope,
    Epoch,
    Heartbeat,
    News,
    Reload,
    RemoteProtocolError,
    Reply,
    Report,
    ReportRequest,
    Start,
    Started,
    Stopped,
    StopRequest,
    decode,
    fmt_epoch,
    to_message,
)
from vigil.config import ClusterConfig
from vigil.messages import BROADCAST, Message
from vigil.notifications import (
    FailCountsCleared,
    MirrorCaughtUp,
    MirrorDiverged,
    MirrorLagging,
    NicDown,
    NicUp,
    TransitionCompleted,
    TransitionStarted,
)
from vigil.status import seconds

__all__ = ["RELOAD_AGAIN", "NodeCore"]

#: seconds between two asks to a peer that has not staged our staged configuration
RELOAD_AGAIN = 1.0


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
        strategies: Callable[[str], Strategy] | None = None,
        guardian: bool = False,
    ) -> None:
        if name not in config.nodes:
            known = ", ".join(sorted(config.nodes))
            raise ValueError(f"node {name!r} is not in the configuration (nodes: {known})")
        self.config = config
        self.name = name
        self.incarnation = incarnation
        #: the strategy of a name (a configuration change may name another)
        self.strategies = strategies or builtin_strategy
        self.strategy = strategy or self.strategies(config.strategy)
        self.missing_types = missing_types
        #: the configuration staged to switch to, and the resource types of it this node
        #: cannot run (vigil.cluster.reconfig)
        self.staged: ClusterConfig | None = None
        self.staged_missing: frozenset[str] = frozenset()
        #: (digest asked, digest of our file) of the last reload we could not follow (said
        #: once), and when we last asked each peer to reload (asked again while it has not)
        self.refused_reload: tuple[str, str] = ("", "")
        #: why the last file offered to stage could not be applied live ("" it could)
        self.stage_refused = ""
        self.reload_asked: dict[str, float] = {}
        #: the digest of a reload asked here that the cluster does not run yet: asked again
        #: after a restart too, if our file is still that one (a node restarted with a file
        #: nobody asked to reload stays out instead; see _on_heartbeat)
        self.reload_pending = (persisted.reload if persisted and persisted.reload == config.digest
                               else "")
        #: the epoch we had promised when we switched files by ourselves (switch_config)
        self.switched_in: Epoch = NO_EPOCH
        #: this node's NICs that its NIC monitors believe down -> why (for the costs)
        self.nics_down: dict[str, str] = {}
        #: mirror resource -> this node's copy of its data (the shell's word; for the costs)
        self.mirrors: dict[str, MirrorState] = {}
        #: mirror resource -> how far the other nodes' copies are behind (here, its source)
        self.mirror_lags: dict[str, MirrorLag] = {}
        #: mirror resource -> when our newest copy arrived, and how far behind it is known
        #: to be (:meth:`_copy_behind`)
        self.copy_arrived: dict[str, tuple[float, float]] = {}
        #: mirror resources whose best standby is beyond max_lag, as last notified here
        self.mirror_lagging: set[str] = set()
        self.started_at = now
        self.now = now
        self.leaving = False
        self.left = False
        self.dropped = 0  # peers' messages that did not parse
        self._out = Output()
        self._inbox: list[Envelope] = []
        self.journal = Journal(name, now)
        self.membership = Membership(config, name, now)
        self.promise = Promise(persisted)
        self.groups = LocalGroups(config, name, self.journal, self._act)
        self.requests = Requests(name, incarnation, persisted.requests if persisted else ())
        self.fencing = Fencing(config, name, self.journal, self._act, self._incarnation_of,
                               lambda n: self.membership.last_heard.get(n, -math.inf))
        self.master = Master(config, name, strategy=self.strategy,
                             fencer=fencer or config.fencer, stop_bound=stop_bound(config),
                             membership=self.membership, promise=self.promise,
                             requests=self.requests, journal=self.journal, send=self._send,
                             act=self._act, now=now, fencing=self.fencing,
                             strategies=self.strategies)
        self.changes = Changes(name)
        self.history = ClusterHistory(name, incarnation)
        #: the deadline of the last full handling: until then a routine heartbeat takes the
        #: short path (:meth:`_routine`), and how many did
        self._due = -math.inf
        self._due_else = -math.inf  # the same, but for our next heartbeat
        #: of those, the ones heartbeats do not move (the master's, the groups'), and when
        #: they were all worked out last (see :meth:`_put_off`)
        self._due_fixed = -math.inf
        self._planned_at = -math.inf
        #: the lease the guardian was told last (inf: nothing told yet), and when this core
        #: last counted what ran here as killed because it ran out
        self._guarded = guardian  # the shell reports to a guardian (none: tests, no fencer)
        self._told_lease = math.inf
        self._self_fenced_at = -math.inf
        self.routine_handled = 0
        self._decoded: tuple[Message, Envelope] | None = None
        if self.reload_pending:
            self.journal.note("config", f"the reload to configuration {config.digest[:12]} "
                              "asked here before this daemon restarted is not done yet: "
                              "asking every node again to reload its file")

    # ---- the one entry point -------------------------------------------------------------

    def handle(self, event: Event, now: float) -> Output:
        """Feed one event at time ``now``; returns what to send and do, and the next deadline.

        Expired deadlines are processed *before* the event, with the state as it was: a lease
        that ran out is noticed even if the message that would renew it arrives at that very
        instant (the safety argument of the silence fencer relies on it).
        """
        if isinstance(event, Received):
            routine = self.handle_routine(event, now)
            if routine is not None:
                return routine
        self.now = max(self.now, now)
        if (isinstance(event, Tick) and not self._inbox
                and self.staged is None and not self.reload_pending and not self.leaving
                and (self.now < self._due_else or self._put_off())
                and self.membership.quiet(self.now)):
            return self._heartbeat_only()
        self.journal.now = self.now
        self._out = Output()
        if self._guarded and self.now >= self._told_lease and self.groups.busy:
            # The guardian kills what ran here when the lease it was told runs out, and
            # says so later: until then a start's late success, or a group thought to run,
            # would make its dependents start on nothing. What it was told is known here.
            self.groups.fenced("the lease it was told ran out (counted here at once)")
            self._self_fenced_at = self.now
        self.membership.advance(self.now)
        self.master.advance()
        self.groups.expire(self.now)
        if isinstance(event, Received):
            self._receive(event)
        elif isinstance(event, CopyReceived):
            if event.sender in self.config.nodes and event.sender != self.name:
                self.membership.heard(event.sender, event.link)
        elif isinstance(event, GroupDone):
            self.groups.group_done(event, self.promise.promised)
            if event.op == "stop" and self.promise.stop_orders:
                self._confirm_stops(self.promise.master)
        elif isinstance(event, GroupFailed):
            standby = self.groups.group_failed(
                event, may_restart=self.membership.lease_valid() and self.promise.may_run(),
                maintenance=self.accepted.maintenance, promised=self.promise.promised)
            if standby:
                self._queue(AdminRequest("standby", node=self.name))
        elif isinstance(event, AdminRequest):
            refused = self.fence_refusal(event.kind, event.node)
            if refused:
                self.journal.note("request", f"request {event.kind} {event.node} refused: "
                                  f"{refused}", node=event.node)
            else:
                self._queue(event)
        elif isinstance(event, ClearFailures):
            self._clear_failures(event.group, "as asked here", self.name)
            if event.everywhere:
                self._send(Cleanup(event.group), BROADCAST)
        elif isinstance(event, MarkedOutOfService):
            self.groups.marked_out(event.resource, self.promise.promised)
            if self.promise.stop_orders:
                self._confirm_stops(self.promise.master)
        elif isinstance(event, FenceDone):
            self.master.fence_done(event)
        elif isinstance(event, GroupProbed):
            if event.active and self.groups.state[event.group] is LocalState.STOPPED:
                self.groups.set(event.group, LocalState.RUNNING)
                self.journal.note("group", f"{event.group} found in service at start; the "
                                  "next transition decides where it stays", group=event.group)
        elif isinstance(event, GuardFenced):
            if event.at >= self._self_fenced_at:  # else counted already, when it happened
                self.groups.fenced(event.reason)
        elif isinstance(event, NicChanged):
            self._nic_changed(event)
        elif isinstance(event, MirrorState):
            self._mirror_state(event)
        elif isinstance(event, MirrorLag):
            self._mirror_lag(event)
        elif isinstance(event, StageConfig):
            self._stage(event)
        elif isinstance(event, Shutdown) and not self.leaving:
            self.leaving = True
            self.journal.note("membership", f"{self.name} is leaving the cluster: stopping "
                              "every group here")
        self._settle()
        self.master.fence()  # what this event made due (a level failed: the next one now)
        # In the order a person would tell it: who came or went (that is what led to the
        # decisions), the decisions, then where groups went as a result.
        seen, moves = self.changes.observe(self.membership, self.accepted)
        self._out.notifications = seen + self.journal.take() + moves
        for news in self.history.local(self._out.notifications):
            self._out.messages.append(to_message(news, self.name))
        self._out.deadline = self._due = self._next_deadline()
        self._out.lease_until = self._told()
        return self._out

    def _settle(self) -> None:
        # Messages to ourselves are handled at once, and may produce more; bounded because
        # every reply to self is answered by a phase change, never by another request.
        for _ in range(64):
            self._reconcile()
            if not self.leaving:
                self.master.maybe_declare(local_failures=self.groups.failures,
                                          started_at=self.started_at)
            stage = self._round_stage()
            self.master.progress()
            # a round that moved on (finished, say) may make the master declare again (a
            # request that waited for it): look once more now, since in a calm cluster no
            # other full handling may come for a long time (the short paths take the rest)
            if not self._inbox and self._round_stage() == stage:
                break
            inbox, self._inbox = self._inbox, []
            for envelope in inbox:
                self._dispatch(envelope.sender, envelope.body)
        if self.membership.heartbeat_due():
            self._out.messages.append(to_message(self._heartbeat(), self.name))

    def _round_stage(self) -> tuple[Epoch, str, str] | None:
        r = self.master.round
        return None if r is None else (r.epoch, r.phase.value, r.aborted)

    # ---- what others may ask ---------------------------------------------------------------

    def persisted(self) -> Persisted:
        return replace(self.promise.persisted(self.requests.refs()), reload=self.reload_pending)

    @property
    def promised(self) -> tuple[int, str]:
        return self.promise.promised

    @property
    def accepted(self) -> Accepted:
        return self.promise.accepted

    @property
    def closed(self) -> bool:
        return self.promise.closed

    @property
    def round(self) -> Round | None:
        return self.master.round

    @property
    def local(self) -> dict[str, LocalState]:
        """Group -> its state on this node."""
        return self.groups.state

    @property
    def decisions(self) -> list[tuple[float, str]]:
        return self.journal.decisions

    def alive(self) -> frozenset[str]:
        return self.membership.alive()

    def quorate(self) -> bool:
        return self.membership.quorate()

    def lease_valid(self) -> bool:
        return self.membership.lease_valid()

    def fail_counts(self) -> dict[str, int]:
        return self.groups.fail_counts()

    def cost_context(self, admin: frozenset[str]) -> LocalCostContext:
        """What this node knows when it prices the groups, under the administrative state
        ``admin`` (the master's, in a cost request)."""
        return LocalCostContext(
            node=self.name, config=self.config,
            active=frozenset(g for g, s in self.groups.state.items()
                             if s in (LocalState.RUNNING, LocalState.STARTING)),
            fail_counts=self.fail_counts(), standby=admin,
            missing_types=self.missing_types, nics_down=dict(self.nics_down))

    def explain_costs(self) -> dict[str, CostExplanation]:
        """Each group's cost here now and why (the strategy's words), under the accepted
        administrative state: `vigil simulate --show-costs`."""
        return self.strategy.explain_costs(self.cost_context(self.accepted.admin))

    def copies(self) -> dict[str, CopyFact | None]:
        """Mirror resource -> this node's newest copy of its data (None: none), as the shell
        last said, with how far it is known to be behind at least: what the cost reply
        carries, so that the master lets the freshest win and refuses a stale one."""
        out: dict[str, CopyFact | None] = {}
        for r in mirror_resources(self.config):
            state = self.mirrors.get(r)
            copy = state.copy if state is not None else None
            if copy is not None and not copy.live:
                copy = replace(copy, behind=self._copy_behind(r))
            out[r] = copy
        return out

    def _copy_behind(self, resource: str) -> float:
        """How long the node holding the resource's group (another node: the source) was heard
        alive after our newest copy arrived: writes made there meanwhile are not in it (none
        are while the resource is out of service by hand: that time does not count). Kept
        (never lowered) until a newer copy arrives, so that it outlives the source's death
        and the placements that follow it."""
        arrived, known = self.copy_arrived.get(resource, (self.started_at, 0.0))
        holder = self.accepted.placement.get(self.config.resources[resource].group)
        # heard in this life only: after a cold start without the old source, nothing says
        # how long it went on, and the copies compare among themselves
        heard = self.membership.last_heard.get(holder) if holder is not None else None
        if heard is not None and holder != self.name:
            if self._out_of_service_by_hand(resource):
                # nothing is written there meanwhile (an operator stopped it, e.g. to
                # promote a copy here): that time does not count
                arrived = max(arrived, heard)
            known = max(known, heard - arrived)
            self.copy_arrived[resource] = (arrived, known)
        return known

    def _out_of_service_by_hand(self, resource: str) -> bool:
        """Whether ``resource``, or one it depends on, is out of service by hand."""
        dependents = self.groups.resource_dependents
        return any(r == resource or resource in dependents.get(r, ())
                   for r in self.accepted.disabled())

    def fence_refusal(self, kind: str, node: str) -> str:
        """Why a manual fencing request (``fence`` or ``confirm_off``) of ``node`` is refused
        here and now, or "" (also "" for the other kinds of requests)."""
        if kind not in ("fence", "confirm_off"):
            return ""
        if node not in self.config.nodes:
            return (f"no node named {node!r} (nodes: {', '.join(self.config.node_names)})")
        alive = self.alive()
        if not self.quorate():
            return (f"{self.name} has no quorum ({self.membership.quorum.describe(alive)}): "
                    "fencing requests are refused without quorum; ask a node of the quorate "
                    "partition")
        if kind == "fence" and not self.fencing.can_fence(node):
            return (f"no fence device can fence {node}: add a [fence_devices.NAME] whose "
                    "hosts list it (docs/fencing.md)")
        if kind == "confirm_off" and node in alive:
            heard = ("this node" if node == self.name else
                     f"heard {self.membership.silent_for(node):.1f}s ago")
            return (f"{node} is online ({heard}): confirm-off is for a lost node that is "
                    "known to be off")
        return ""

    def _incarnation_of(self, node: str) -> int:
        peer = self.membership.peers.get(node)
        return peer.incarnation if peer is not None else 0

    # ---- outputs ----------------------------------------------------------------------------

    def _send(self, body: Body, dest: str) -> None:
        if dest == self.name:
            self._inbox.append(Envelope(self.name, dest, body))
            return
        self._out.messages.append(to_message(body, self.name, dest))
        if dest == BROADCAST:
            self._inbox.append(Envelope(self.name, dest, body))
        r = self.master.round
        if r is not None and r.phase is not Phase.DONE:
            r.messages += 1

    def _act(self, action: Action) -> None:
        self._out.actions.append(action)

    def _queue(self, req: AdminRequest) -> None:
        self.requests.queue(req)
        self.journal.note("request", f"request {req.kind} "
                          f"{req.target or req.node or ('on' if req.on else 'off')} queued for "
                          "the next transition")

    # ---- receiving ----------------------------------------------------------------------

    def _receive(self, event: Received) -> None:
        msg = event.msg
        if msg.sender not in self.config.nodes:
            self.dropped += 1
            return
        if msg.sender != self.name:
            self.membership.heard(msg.sender, event.link)
        decoded, self._decoded = self._decoded, None
        if decoded is not None and decoded[0] is msg:
            envelope = decoded[1]  # by _routine, which found it not routine
        else:
            try:
                envelope = decode(msg)
            except RemoteProtocolError:
                self.dropped += 1
                return
        self._dispatch(envelope.sender, envelope.body)

    def handle_routine(self, event: Received, now: float) -> Output | None:
        """Only the short path of :meth:`handle`: the output of a heartbeat or echo that
        changes nothing but times, or None (nothing changed but the clock): :meth:`handle`
        must take it. The shell tries this on the link's reader thread and hands the
        coordinator only what it refuses."""
        self.now = max(self.now, now)
        if not self._inbox and (self.now < self._due or (
                self.now < self.membership.next_hb
                and event.msg.type in (Heartbeat.TYPE, Echo.TYPE) and self._put_off())):
            return self._routine(event)
        return None

    def _put_off(self) -> bool:
        """The deadline given last (not our heartbeat) has come; if it was only a peer's
        silence or support, and heartbeats since have put it off, nothing is due yet: the
        deadlines are worked out again from the times as they are now (True), as the full
        path would. In a calm cluster that was every other tick and more, each a full
        handling: O(groups + nodes), for nothing."""
        if self.now >= self._due_fixed or self.membership.expiring(self._planned_at, self.now):
            return False
        self._due = self._next_deadline()
        return self.now < self._due_else

    def _heartbeat_only(self) -> Output:
        """The short path of a tick at which only our heartbeat is due, nothing changed
        since the last full handling and no other deadline has come (see :meth:`_routine`):
        send it, and nothing else runs."""
        self.membership.advance(self.now)
        self.routine_handled += 1
        out = Output(routine=True)
        if self.membership.heartbeat_due():
            out.messages.append(to_message(self._heartbeat(), self.name))
        out.deadline = self._due = self._next_deadline()
        out.lease_until = self._told()
        return out

    def _heartbeat(self) -> Heartbeat:
        return self.membership.heartbeat(
            incarnation=self.incarnation, promised=self.promise.promised,
            accepted=self.accepted, closed=self.promise.closed, groups=self.groups.active(),
            failures=self.groups.failures, requests=self.requests.refs())

    def _told(self) -> float:
        """The lease to tell the guardian now (every output carries it), remembered: once
        it has run out, the guardian has killed what ran here (see :meth:`handle`)."""
        self._told_lease = self._lease_until()
        return self._told_lease

    def _lease_until(self) -> float:
        # freeze: a partition without quorum keeps running, so only a power fencer is safe
        # (config check) and the guardian must not kill on a lost lease
        return (math.inf if self.config.no_quorum_policy == "freeze"
                else self.membership.lease_until())

    def _routine(self, event: Received) -> Output | None:
        """The short path of a heartbeat or echo that changes nothing but times (see
        ``Membership.routine``): recorded, echoed if asked, and nothing else runs, since
        nothing else could decide otherwise before the last deadline given. In a calm
        cluster that is nearly every message, and the full path costs O(groups + nodes).
        None: not routine; the full path handles it."""
        msg = event.msg
        if (msg.type not in (Heartbeat.TYPE, Echo.TYPE) or msg.sender == self.name
                or msg.sender not in self.config.nodes or self.staged is not None
                or self.reload_pending or self.leaving):
            return None
        try:
            envelope = decode(msg)
        except RemoteProtocolError:
            return None  # counted by the full path
        self._decoded = (msg, envelope)
        body, promised = envelope.body, self.promise.promised
        hb = body if isinstance(body, Heartbeat) else None
        echo = body if isinstance(body, Echo) else None
        if (hb is not None and promised[1] == self.name
                and hb.failures > self.master.handled_failures.get(msg.sender, 0)):
            return None  # a failure this master has not acted on (it looks after a round)
        if not self.membership.routine(msg.sender, event.link, self.now, hb, echo, promised,
                                       self.incarnation):
            return None
        self._decoded = None
        self.routine_handled += 1
        out = Output(deadline=self._due, routine=True, lease_until=self._told())
        if hb is not None and hb.ask and hb.promised == promised:
            out.messages.append(to_message(Echo(hb.n, hb.incarnation, promised), self.name,
                                           msg.sender))
        return out

    def _dispatch(self, sender: str, body: Body) -> None:
        if isinstance(body, Heartbeat):
            if sender != self.name:
                self._on_heartbeat(sender, body)
        elif isinstance(body, Echo):
            if sender != self.name:
                self.membership.on_echo(sender, body, self.promise.promised, self.incarnation)
        elif isinstance(body, Bye):
            if sender != self.name and self.membership.on_bye(sender, body):
                self.journal.note("membership", f"{sender} left the cluster: its daemon died "
                                  "and its guardian removed everything it ran (nothing to "
                                  "fence)" if body.fenced else f"{sender} left the cluster "
                                  "cleanly (nothing in service there)")
        elif isinstance(body, Cleanup):
            if sender != self.name and body.group in self.config.groups:
                self._clear_failures(body.group, f"by a request from {sender}", sender)
        elif isinstance(body, Reload):
            if sender != self.name and body.digest not in (
                    self.config.digest, self.staged.digest if self.staged else ""):
                self.journal.note("config", f"{sender} asks every node to reload its "
                                  f"configuration file (digest {body.digest[:12]})")
                self._act(LoadConfig(body.digest))
        elif isinstance(body, News):
            if sender != self.name:
                heard = self.history.heard(sender, body, self.now)
                if heard is not None:
                    self._out.heard.append(heard)
        elif isinstance(body, Declare):
            self._on_declare(sender, body)
        elif isinstance(body, Reply):
            self.promise.saw(body.epoch)
            self.master.collect(sender, body)
        else:
            self.promise.saw(body.epoch)
            if body.epoch == self.promise.promised and sender == body.epoch[1]:
                self._on_request(sender, body)
            # others are stale, or forged by a member that is not the master

    def _on_heartbeat(self, sender: str, hb: Heartbeat) -> None:
        heard = self.membership.on_heartbeat(sender, hb, self.promise.promised,
                                             self.incarnation)
        if heard is Heard.MISMATCH:
            if self.reload_pending == self.config.digest:
                # restarted before the cluster switched to the file reloaded here: it runs
                # the old one, we the new one; ask until it has staged ours (then we are
                # compatible and it switches without us, and we join)
                self._ask_reload(sender, hb, self.reload_pending)
            m = self.membership
            if hb.promised > self.promise.promised or m.quorum.quorate(
                    m.running(hb.digest), seen_all=m.seen_all):
                # The peer's cluster moved on without us (it is ahead of us, or a quorum runs
                # its file): perhaps we missed the reload that switched it (we were cut off).
                # Read our file again; if it is what the peer runs, we stage it and follow.
                # (Not for a lone peer behind us: a node restarted with a file not yet
                # reloaded must not switch the cluster. The quorum: we may be the one
                # "ahead", with the epoch of a round we could not finish alone.)
                self._act(LoadConfig(hb.digest, quiet=True, also=hb.next))
            self.journal.warn(
                "config", f"node {sender} runs a different configuration (digest "
                f"{hb.digest[:12]} vs ours {self.config.digest[:12]}); it is kept out of "
                f"the cluster: `vigil config diff` on {sender} shows how its file differs "
                f"from what its daemon runs, and here how ours does; put the same file on "
                "every node and run `vigil config reload` (docs/operations.md)")
            return
        if heard is Heard.NOTHING:
            return
        staged = self.staged
        if staged is not None:
            # it missed our reload (a lost message, or it was restarting): ask again
            self._ask_reload(sender, hb, staged.digest)
        if staged is not None and hb.digest == staged.digest and (
                (not self.groups.busy and hb.promised > self.promise.promised)
                or (hb.accepted >= self.promise.promised
                    and not self.groups.busy & set(retired(self.config, staged)))):
            # The cluster switched in an epoch we were not part of (or whose accept we
            # missed: its master may be gone), and nothing the switch retires runs here (its
            # stop phase stopped them): follow it. What we accepted stays older, so nothing
            # new starts here before the next transition.
            self.journal.note("config", f"{sender} runs configuration {staged.digest[:12]} "
                              f"in epoch {fmt_epoch(hb.promised)}, which we missed: switching "
                              "to it too")
            self.switch_config(staged, local=True)
        elif (staged is not None and hb.digest == staged.digest and not self.groups.busy
              and self._stranded(staged)):
            self.journal.note("config", f"the live nodes on configuration "
                              f"{self.config.digest[:12]} make no quorum, those on or ready "
                              f"for {staged.digest[:12]} do ({sender} runs it): switching to "
                              "it, as nothing runs here")
            self.switch_config(staged, local=True)
        if heard is Heard.RESTARTED:
            self.journal.note("membership", f"node {sender} restarted (incarnation changed)")
        if heard is not Heard.UPDATED:
            self.master.forget_failures(sender)
        self.promise.saw(hb.promised)
        if hb.ask and hb.promised == self.promise.promised:
            # not through _send: an echo is membership's, not a transition's, message
            self._out.messages.append(to_message(
                Echo(hb.n, hb.incarnation, self.promise.promised), self.name, sender))

    def _stranded(self, staged: ClusterConfig) -> bool:
        """The live nodes that run our file cannot make a quorum, and those that run or
        staged ``staged`` can: nodes restarted with the new file before the cluster switched
        to it (they run it and stay out), and too few left on the old one to declare the
        switch. Nobody could lead then, on either file; a node that runs nothing here may
        switch by itself (no group runs under both definitions), and once enough have, the
        new file's side forms. The simulation found the deadlock: 4 nodes, a reload, then two
        of them restarted before the switch."""
        m = self.membership
        alive = m.alive()
        peers = m.peers
        master = self.promise.master
        if (master != self.name and master in alive and master in peers
                and peers[master].digest == self.config.digest):
            return False  # it leads our epoch on our file: it will see to the switch
        ours = {n for n in alive if n == self.name
                or (n in peers and peers[n].digest == self.config.digest)}
        new = {n for n in alive if n == self.name
               or (n in peers and staged.digest in (peers[n].digest, peers[n].next))}
        return (not m.quorum.quorate(ours, seen_all=m.seen_all)
                and m.quorum.quorate(new, seen_all=m.seen_all))

    def _ask_reload(self, peer: str, hb: Heartbeat, digest: str) -> None:
        if (digest not in (hb.digest, hb.next)
                and self.now >= self.reload_asked.get(peer, -math.inf) + RELOAD_AGAIN):
            self.reload_asked[peer] = self.now
            self._send(Reload(digest), peer)

    def _nic_changed(self, event: NicChanged) -> None:
        groups = self.config.groups
        before = {g: nic_limit(self.config, c, self.nics_down) for g, c in groups.items()}
        self._nic_note(event)
        # A group that no node could place (its NICs were down everywhere) is placed again
        # once a NIC is back here: the master looks again, as after a cleanup. A NIC that
        # only makes a node a better or worse home changes nothing now (no transition).
        lifted = sorted(g for g, c in groups.items() if before[g] is not None
                        and nic_limit(self.config, c, self.nics_down) is None
                        and self.accepted.placement.get(g) is None)
        if lifted:
            self.groups.failures += 1
            self.journal.note("group", f"{', '.join(lifted)} placed nowhere, and {self.name} "
                              f"can carry its addresses again: asking for a new placement")

    def _nic_note(self, event: NicChanged) -> None:
        if event.up:
            if self.nics_down.pop(event.nic, None) is None:
                return
            self.journal.emit(NicUp(node=self.name, time=self.now, nic=event.nic,
                                    reason=event.reason,
                                    text=f"NIC {event.nic} of {self.name} is up: {event.reason}"))
        else:
            was_down = event.nic in self.nics_down
            self.nics_down[event.nic] = event.reason
            if was_down:
                return
            self.journal.emit(NicDown(node=self.name, time=self.now, nic=event.nic,
                                      reason=event.reason,
                                      text=f"NIC {event.nic} of {self.name} is down: "
                                           f"{event.reason}"))

    def _mirror_state(self, event: MirrorState) -> None:
        r = event.resource
        if r not in self.config.resources:
            return
        new = event.copy
        if new is not None and (new.source not in self.config.nodes
                                or not math.isfinite(new.taken) or new.taken < 0
                                or (event.reported_at
                                    and new.taken > event.reported_at + CLOCK_SLACK)):
            # never into a cost reply: every master would refuse it, and every round with it
            self.journal.note("mirror", f"the copy of {r} here cannot be reported ({new}): "
                              "it counts as none", node=self.name)
            event = replace(event, copy=None)
            new = None
        before = self.mirrors.get(r)
        self.mirrors[r] = event
        old = before.copy if before is not None else None
        if new is None:
            self.copy_arrived[r] = (self.now, 0.0)
        elif old is None or new.taken < old.taken:
            # first word in this life, or a step back to an older copy: it did not arrive now;
            # count from when it was taken, as old as it was when the shell looked
            age = max(0.0, event.reported_at - new.taken) if event.reported_at else 0.0
            self.copy_arrived[r] = (self.now - age, 0.0)
        elif (new.seq, new.source) != (old.seq, old.source):
            self.copy_arrived[r] = (self.now, 0.0)  # a newer copy, arrived just now
        if event.copy is None or not event.copy.live:
            # no longer the source: how far the others are behind is the new source's to tell
            self.mirror_lagging.discard(r)
        # A daemon's first word names what it already held aside too: a reminder, once per
        # life, of what an operator still has to decide on.
        gained = tuple(a for a in event.aside if before is None or a not in before.aside)
        rc = self.config.resources.get(r)
        if gained and rc is not None:
            self.journal.emit(MirrorDiverged(
                node=self.name, time=self.now, resource=r, group=rc.group, names=gained,
                text=f"{self.name} holds set aside {', '.join(gained)} of mirror resource {r} "
                     f"(group {rc.group}): kept until an operator discards or promotes "
                     "it"))

    def _mirror_lag(self, event: MirrorLag) -> None:
        """On the source: notify once each time the best standby's copy (the smallest lag
        elsewhere) crosses max_lag, either way."""
        r = event.resource
        self.mirror_lags[r] = event
        rc = self.config.resources.get(r)
        if rc is None or not event.lags:
            return
        known = [lag for lag in event.lags.values() if lag is not None]
        best = min(known) if known else None
        limit = max_lag(rc)
        lagging = best is None or best > limit
        if lagging == (r in self.mirror_lagging):
            return
        where = f"mirror resource {r} (group {rc.group})"
        if lagging:
            self.mirror_lagging.add(r)
            behind = ("no other node has a copy" if best is None else
                      f"the freshest copy elsewhere is {seconds(best)} behind")
            self.journal.emit(MirrorLagging(
                node=self.name, time=self.now, resource=r, group=rc.group, lag=best,
                max_lag=limit, text=f"{where}: {behind}, beyond max_lag {seconds(limit)}: "
                                    f"should {self.name} fail now, no node may take the "
                                    "group over (unless an operator forces a move)"))
        else:
            assert best is not None
            self.mirror_lagging.discard(r)
            self.journal.emit(MirrorCaughtUp(
                node=self.name, time=self.now, resource=r, group=rc.group, lag=best,
                max_lag=limit, text=f"{where} caught up: the freshest copy elsewhere is "
                                    f"{seconds(best)} behind (max_lag {seconds(limit)})"))

    # ---- configuration changes (vigil.cluster.reconfig) ---------------------------------------

    def _stage(self, event: StageConfig) -> None:
        new = event.config
        self.stage_refused = ""
        who = ("a peer runs it" if event.quiet else "asked by another node" if event.wanted
               else "asked here")
        if not event.wanted:  # an operator's reload here replaces any earlier one
            self.reload_pending = ""
        if new is None or event.problem:
            self.journal.warn("config", f"configuration file not staged ({who}): "
                              f"{event.problem or 'it did not load'}")
            return
        if event.wanted and new.digest not in {event.wanted, event.also} - {""}:
            if event.quiet or self.refused_reload == (event.wanted, new.digest):
                return  # said already (a reload is asked again until every node staged it)
            self.refused_reload = (event.wanted, new.digest)
            self.journal.warn(
                "config", f"the configuration file of {self.name} (digest {new.digest[:12]}) "
                f"is not the one the cluster was asked to switch to ({event.wanted[:12]}): "
                f"nothing staged here; `vigil config diff` on {self.name} shows how it "
                "differs from what runs; put the same file on every node and reload again")
            return
        if new.digest == self.config.digest:
            self.reload_pending = ""  # the file is the running one again
            if self.staged is not None:
                self.journal.note("config", "the configuration file is the running one "
                                  f"again: configuration {self.staged.digest[:12]} unstaged")
                self._unstage()
            return
        problems = refusals(self.config, new)
        if problems:
            self.stage_refused = (f"configuration {new.digest[:12]} cannot be applied while "
                                  f"the cluster runs ({who}): " + "; ".join(problems))
            self.journal.warn("config", self.stage_refused)
            return
        self.staged, self.staged_missing = new, event.missing_types
        self.membership.next = new.digest
        self.master.staged = new
        self.membership.next_hb = self.now  # tell the others now, not an interval later
        self.journal.note("config", f"configuration {new.digest[:12]} staged ({who}; "
                          f"{summary(self.config, new)}): the cluster switches to it in one "
                          "transition once every member has staged it")
        if not event.wanted:
            self.reload_pending = new.digest
            self._send(Reload(new.digest), BROADCAST)

    def _unstage(self) -> None:
        self.staged, self.staged_missing = None, frozenset()
        self.membership.next = ""
        self.master.staged = None

    def switch_config(self, new: ClusterConfig, *, local: bool = False) -> None:
        """Run ``new`` from now on (the master's accept, or the cluster switched while we
        were out): every part built from the configuration takes the new one; the groups it
        keeps keep their state here, those it retires were stopped first.

        ``local``: not by an accept. What we accepted was placed by the old file, so it is
        no longer ours to start (its groups may be defined otherwise now): nothing starts
        here until a round under the new file closes, what runs goes on, and the requests
        of the epoch we promised before are not answered (its master places by the old
        file; the round goes on without us, the next one has us)."""
        if local:
            self.promise.closed = False
            self.promise.stop_orders.clear()  # that epoch's: not answered any more
            self.switched_in = self.promise.promised
        old = self.config
        gone = retired(old, new)
        still = sorted(g for g in gone if self.groups.state.get(g, LocalState.STOPPED)
                       is not LocalState.STOPPED)
        if still:  # the protocol stops them first: a bug if this is ever seen
            self.journal.warn("config", f"switching while {', '.join(still)} is not stopped "
                              "here")
        self.config = new
        # a stop order of a group the new file removed has nothing left to confirm (its stop
        # ran before the accept, or the group is gone with the old file)
        self.promise.stop_orders.intersection_update(new.groups)
        if new.strategy != old.strategy:
            self.strategy = self.strategies(new.strategy)
        self.missing_types = self.staged_missing
        self.membership.reconfigure(new)
        self.groups = self.groups.reconfigured(new, keep=frozenset(
            g for g in new.groups if g in old.groups and g not in gone))
        self.fencing.config = new
        self.master.reconfigure(new, stop_bound(new))
        self._unstage()
        self._act(SwitchConfig(new, frozenset(
            g for g in new.groups if g not in old.groups or g in gone)))
        self.journal.note("config", f"now running configuration {new.digest[:12]} "
                          f"({summary(old, new)})")

    def _clear_failures(self, group: str, how: str, asked_on: str) -> None:
        """A cleanup (asked here, or on ``asked_on``, which told every node): the fail
        count here, and the failed actions of every node, are gone. Told on every node, so
        that each shell forgets what it keeps of the group's failures too."""
        changed = self.groups.clear_failures(group)
        self.history.clear(group)
        self.master.cleanups[group] = asked_on
        self.journal.emit(FailCountsCleared(
            node=self.name, time=self.now, group=group,
            text=f"fail count of {group} cleared on {self.name} {how}" if changed else
            f"cleanup of {group} on {self.name} {how}: no fail count to clear here"))

    # ---- the member's side of a transition ------------------------------------------------

    def _on_declare(self, sender: str, d: Declare) -> None:
        self.promise.saw(d.epoch)
        if (self.name not in d.view or d.epoch[1] != sender or min(d.view) != sender
                or self.leaving):
            return
        promised = self.promise.promise(d.epoch, d.view)
        if promised:
            self.membership.in_view(d.view)
            # Only echoes of the same epoch support a lease: a heartbeat in the new epoch at
            # once, rather than up to an interval later, keeps every member's lease from
            # thinning out while a transition runs.
            self.membership.next_hb = self.now
        if promised and sender != self.name:
            self.master.cleanups.clear()  # the master that declared it takes them into account
            self.journal.emit(TransitionStarted(
                node=self.name, time=self.now, epoch=fmt_epoch(d.epoch), master=sender,
                reason=d.reason, text=f"joined epoch {fmt_epoch(d.epoch)} declared by "
                                      f"{sender}: {d.reason}"))
        if d.epoch == self.promise.promised:
            m = self.membership
            silent = {n: math.floor(1000 * m.silent_for(n)) for n in self.config.nodes
                      if n not in d.view}
            self._send(Ack(d.epoch, silent), sender)

    def _on_request(self, master: str, body: Body) -> None:
        """A request of the master of the epoch we promised."""
        promise = self.promise
        epoch = promise.promised
        if epoch == self.switched_in:
            return  # promised under the old file: see switch_config
        if isinstance(body, ReportRequest):
            active = {g: s.value for g, s in self.groups.state.items()
                      if s is not LocalState.STOPPED}
            # requests some live node still carries that a placement accepted here applied:
            # the master may not know (it missed that placement, or restarted since)
            alive = self.membership.alive()
            carried = {r.rid for r in self.requests.refs()} | {
                r.rid for n, p in self.membership.peers.items() if n in alive
                for r in p.requests}
            self._send(Report(epoch, active, tuple(a for a in promise.history
                                                   if fmt_epoch(a.epoch) not in body.known),
                              tuple(a for a in promise.applied_seen if a in carried)),
                       master)
        elif isinstance(body, CostRequest):
            ctx = self.cost_context(body.admin)
            config = self.config
            if body.config and body.config == (self.staged.digest if self.staged else ""):
                # the transition that switches to it: price its groups by the staged file
                assert self.staged is not None
                config = self.staged
                ctx = replace(ctx, config=config, missing_types=self.staged_missing)
            strategy = (self.strategy if config.strategy == self.config.strategy
                        else self.strategies(config.strategy))  # the master decides by it
            costs = strategy.local_costs(ctx)
            self._send(CostReply(epoch, {g: costs.get(g, INFINITY) for g in config.groups},
                                 self.copies(), self.groups.failures), master)
        elif isinstance(body, StopRequest):
            promise.stop_orders.update(g for g in body.groups if g in self.groups.state)
            self._reconcile()
            self._confirm_stops(master)
        elif isinstance(body, Accept):
            switch = body.config not in ("", self.config.digest)
            if switch and (self.staged is None or self.staged.digest != body.config):
                # nothing accepted: the master declares again, without us if need be
                self.journal.warn("config", f"{master} switches the cluster to configuration "
                                  f"{body.config[:12]}, which is not staged here (ours: "
                                  f"{self.config.digest[:12]}, staged: "
                                  f"{self.staged.digest[:12] if self.staged else 'none'})")
                return
            if promise.accept(Accepted(epoch, body.placement, body.admin, body.applied)):
                self.requests.applied(body.applied)
            if switch:
                assert self.staged is not None
                self.switch_config(self.staged)
            if self.reload_pending == self.config.digest:
                self.reload_pending = ""  # the cluster runs it: the reload is done
            self._send(AcceptedReply(epoch), master)
        elif isinstance(body, Start):
            if promise.accepted.epoch != epoch:
                return
            if promise.close():
                self.groups.epoch_closed()
                self.master.completed()  # a round got through: ours need not wait long
                mine = sorted(g for g, n in self.accepted.placement.items() if n == self.name)
                self.journal.emit(TransitionCompleted(
                    node=self.name, time=self.now, epoch=fmt_epoch(epoch),
                    placement=tuple(sorted((g, n or "")
                                           for g, n in self.accepted.placement.items())),
                    text=f"epoch {fmt_epoch(epoch)} closed; here: "
                         f"{', '.join(mine) or 'nothing'}"))
            self._send(Started(epoch), master)

    def _confirm_stops(self, master: str) -> None:
        orders = self.promise.stop_orders
        state = self.groups.state
        pending = [g for g in orders if state[g] not in (LocalState.STOPPED, LocalState.UNCLEAN)]
        if pending or not orders:
            return
        self._send(Stopped(self.promise.promised, tuple(sorted(orders)),
                           tuple(sorted(g for g in orders if state[g] is LocalState.UNCLEAN))),
                   master)

    # ---- local groups ---------------------------------------------------------------------

    def _reconcile(self) -> None:
        may_run = self.promise.may_run()
        lease_ok = self.membership.lease_valid()
        self.groups.reconcile(Allowed(
            lease_ok=lease_ok, freeze=self.config.no_quorum_policy == "freeze",
            placement=self.accepted.placement if may_run else None,
            maintenance=self.accepted.maintenance and may_run, leaving=self.leaving,
            stop_orders=frozenset(self.promise.stop_orders), promised=self.promise.promised),
            self.accepted)
        if self.leaving and not self.left and not self.groups.busy:
            self.left = True
            self._send(Bye(self.incarnation), BROADCAST)
            self.journal.note("membership", f"{self.name} stopped everything and said goodbye")

    # ---- deadlines ------------------------------------------------------------------------

    def _next_deadline(self) -> float:
        next_hb, *moving = self.membership.deadlines()
        fixed = self.master.deadlines() + self.groups.deadlines()
        if self.now < self.started_at + self.config.timing.dead_time:
            fixed.append(self.started_at + self.config.timing.dead_time)
        # only the future: what is due now was handled before this returned
        self._due_fixed = min((c for c in fixed if c > self.now), default=math.inf)
        self._due_else = min(min((c for c in moving if c > self.now), default=math.inf),
                             self._due_fixed)
        self._planned_at = self.now
        return min(self._due_else, next_hb) if next_hb > self.now else self._due_else
