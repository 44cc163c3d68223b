"""A simulated cluster: N pure node cores over a simulated clock and network.

Time moves only when the simulation moves it, every random choice comes from one
``random.Random`` (Hypothesis hands in its own, so failures shrink and replay), and the
resources are modelled one by one so that the invariants of docs/protocol.md can be checked
after every step: exclusivity, dependency order, agreement, epochs only grow, no action
from a minority. ``vigil simulate`` and the benchmarks use the same code.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from vigil.cluster.events import (
    AdminRequest,
    Event,
    FenceDone,
    FenceNode,
    GroupDone,
    GroupFailed,
    GuardFenced,
    LoadConfig,
    NicChanged,
    Output,
    Received,
    RestartResource,
    StageConfig,
    StartGroup,
    StopGroup,
    SwitchConfig,
    Tick,
)
from vigil.cluster.local import LocalState
from vigil.cluster.mirrors import (
    CopyFact,
    MirrorLag,
    MirrorState,
    group_mirrors,
    max_lag,
    mirror_resources,
)
from vigil.cluster.nics import address_nics
from vigil.cluster.node import NodeCore
from vigil.cluster.promise import Persisted
from vigil.cluster.round import Phase, Round
from vigil.cluster.steps import GroupAction, GroupSteps, Step, group_steps
from vigil.cluster.strategy import Strategy, colocation_sets, network_paths, nic_limit
from vigil.cluster.wire import NO_EPOCH, Bye, Epoch, fmt_epoch, to_message
from vigil.config import TIME_FENCERS, ClusterConfig, FenceDevice, member_graphs
from vigil.guard.core import Announce, Fence, GuardCore
from vigil.guard.core import Output as GuardOutput
from vigil.guard.holdings import Holdings, ResourceHolding
from vigil.messages import BROADCAST, Message


class InvariantViolation(AssertionError):
    pass


@dataclass(slots=True)
class SimNode:
    name: str
    core: NodeCore | None
    incarnation: int
    # resource -> "in" / "starting" / "stopping" ; absent = out of service
    resources: dict[str, str] = field(default_factory=dict)
    # group -> (op, token) of the operation the executor is running
    ops: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: group -> the ``order`` of the core's command its operation answers (GroupDone says)
    op_orders: dict[str, int] = field(default_factory=dict)
    deadline: float = math.inf
    fail_next_start: set[str] = field(default_factory=set)
    fail_next_stop: set[str] = field(default_factory=set)  # its resources stay in service
    persisted: Persisted | None = None
    skips: dict[str, frozenset[str]] = field(default_factory=dict)  # group -> left out
    # a paused process handles nothing until then; its events wait, in order, in ``held``
    paused_until: float = -math.inf
    held: list[Event] = field(default_factory=list)
    # a slow process (CPU starved) handles every event ``lag`` after it came, in order,
    # until ``lag_until``: (when, event) waiting in ``lagged``
    lag: float = 0.0
    lag_until: float = -math.inf
    lagged: deque[tuple[float, Event]] = field(default_factory=deque)
    # for the lease check: when this life sent each heartbeat still recent, and per peer
    # the latest moment its echoes can support this node (sent_at(s) + lease_time)
    hb_sent: dict[int, float] = field(default_factory=dict)
    support_bound: dict[str, float] = field(default_factory=dict)
    # the heartbeats this node's cores really handled, in any life: (sender, its
    # incarnation, number) -> when; an echo supports its addressee only for a heartbeat its
    # sender heard
    hb_heard: dict[tuple[str, int, int], float] = field(default_factory=dict)
    # the guardian: the real rules (vigil.guard.core), told what the daemon tells it; it
    # outlives the daemon, not a power-off. It acts guard_react after its deadline or after
    # the daemon's death (drawn per life, within guard_time).
    guard: GuardCore | None = None
    guard_react: float = 0.0
    guard_at: float = math.inf  # when its next deadline is handled
    # the host's NICs that cannot pass traffic (they outlive the daemon; its NIC monitors
    # tell each new life at once)
    nics_down: set[str] = field(default_factory=set)

    @property
    def guard_lease(self) -> float:
        """The lease the daemon last told its guardian."""
        return -math.inf if self.guard is None else self.guard.lease_until


@dataclass(frozen=True, slots=True)
class SimDevice:
    """How a simulated fence device behaves. Each attempt of an operation (``1 + retries``
    of them, as the device's configuration says) succeeds after a time drawn from
    ``duration``, fails after such a time (probability ``fail``), or hangs until the device's
    ``timeout`` and fails (probability ``hang``). A level powers its node off only when every
    device of it succeeded, at the moment the last one did: a node is off only once a device
    really switched it off."""

    duration: tuple[float, float] = (0.05, 0.2)
    fail: float = 0.0
    hang: float = 0.0


#: The device a power fencer gets when the configuration has none (one switch feeding every
#: node, that always works), so that a simulation can name a power fencer alone.
SIM_SWITCH = "sim-switch"
#: When a guardian's goodbye for its dead daemon first reaches the peers (their links
#: reconnect to it: vigil.guard.announce), and how often it is repeated after (a coarser
#: repeat than the real one's, enough against loss).
ANNOUNCE_DELAY = (0.02, 0.2)
ANNOUNCE_REPEAT = 0.1
#: How many heard heartbeats a node keeps for the lease check before old ones are dropped.
HEARD_KEPT = 4096


@dataclass(slots=True)
class NetworkFaults:
    blocked: set[tuple[str, str]] = field(default_factory=set)  # (src, dst) one-way
    loss: float = 0.0
    duplicate: float = 0.0
    delay: tuple[float, float] = (0.001, 0.005)
    # (src, dst) -> (min, max) delay of that direction only, instead of ``delay``
    link_delay: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)


@dataclass(slots=True)
class Stats:
    messages: int = 0
    deliveries: int = 0
    bytes: int = 0


class SimCluster:
    def __init__(
        self,
        config: ClusterConfig,
        *,
        rng: random.Random | None = None,
        start_duration: float = 0.02,
        stop_duration: float | None = 0.02,
        fencer: str | None = None,
        guardian: bool | None = None,
        check: bool = True,
        measure_bytes: bool = False,
        strategy: Callable[[], Strategy] | None = None,
        devices: Mapping[str, SimDevice] | None = None,
        mirror_interval: float | None = 0.1,
    ) -> None:
        if (fencer or config.fencer) not in TIME_FENCERS and not config.fence_devices:
            config = replace(config, fence_devices={SIM_SWITCH: FenceDevice(
                SIM_SWITCH, "simulated", tuple(config.node_names), timeout=1.0, retries=0)})
        self.config = config
        #: how each fence device behaves (default: works, in 0.05 to 0.2 s)
        self.devices = {d: (devices or {}).get(d, SimDevice()) for d in config.fence_devices}
        self.fenced: list[tuple[float, str, str]] = []  # (time, requester, target) powered off
        #: makes each core's strategy (None: the core's built-in of the configuration's name)
        self.strategy = strategy
        self.rng = rng or random.Random(0)
        #: the delivery of ``news`` (vigil/cluster/history.py): not part of the protocol, so
        #: drawn apart, and every seed's protocol story stays as it was without them
        self.news_rng = random.Random(0)
        self.now = 0.0
        self.start_duration = start_duration
        self.stop_duration = stop_duration
        self.fencer = fencer
        #: every node runs a guardian (default: when the fencer counts on one)
        self.guardian = ((fencer or config.fencer) == "guardian" if guardian is None
                         else guardian)
        self.check = check
        self.measure_bytes = measure_bytes
        self.net = NetworkFaults()
        self.stats = Stats()
        #: the last protocol messages sent (for :meth:`redeliver`)
        self.sent_protocol: deque[Message] = deque(maxlen=300)
        self._queue: list[tuple[float, int, str, str, int, object]] = []
        self._seq = itertools.count()
        self._tokens = itertools.count(1)
        self._incarnations = itertools.count(1)
        self.group_resources = member_graphs(config)
        self.member_dependents = {g: {r: graph.transitive_dependents(r) for r in graph.names()}
                                  for g, graph in self.group_resources.items()}
        self.resource_group = {r: c.group for r, c in config.resources.items()}
        self.group_deps = {g: tuple(c.depends_on) for g, c in config.groups.items()}
        self._graphs_of = config.digest  # the configuration the four tables above are of
        #: configuration changes: each node's file where it is not ``config`` (what a node
        #: powered on or asked to reload reads), every group's members in any configuration
        #: seen (for the invariants), and each resource's starts and stops
        self.files: dict[str, ClusterConfig] = {}
        #: operators' reloads a daemon never answered (it died paused, holding them)
        self.reloads_lost: list[ClusterConfig] = []
        self.members_ever: dict[str, set[str]] = {g: set(c.resources)
                                                  for g, c in config.groups.items()}
        self.resources_ever = dict(config.resources)
        self.ops_done: dict[tuple[str, str], int] = {}
        self.nodes: dict[str, SimNode] = {}
        self.closed_epochs: dict[Epoch, dict[str, str | None]] = {}
        self.promised_seen: dict[str, Epoch] = {}  # per node, across its restarts
        self.epoch_views: dict[Epoch, tuple[str, ...]] = {}
        self.declared_at: dict[Epoch, float] = {}  # when its round began (one declaration)
        #: called with (declarer, epoch) when an epoch is declared for the first time
        self.on_declare: Callable[[str, Epoch], None] | None = None
        self.votes = {n: c.votes for n, c in config.nodes.items()}
        self.log: list[str] = []
        self.starts = 0
        #: mirror resources: each node's newest copy of their data (its disk: it survives a
        #: power cycle); the source snapshots and sends every ``mirror_interval`` and when
        #: it stops (None: no replication; the copies are what a test tells the cores)
        self.mirrors = mirror_resources(config)
        self.mirror_interval = mirror_interval
        self.copies: dict[str, dict[str, CopyFact]] = {n: {} for n in config.node_names}
        self.mirror_checked: set[Epoch] = set()  # decisions checked against the copies
        for name in config.node_names:
            self.nodes[name] = SimNode(name, None, 0)
            self.power_on(name)
        if self.mirrors and mirror_interval is not None:
            self._push(self.now + mirror_interval, "replicate", config.node_names[0])

    # ---- faults ---------------------------------------------------------------------------

    def power_on(self, name: str) -> None:
        node = self.nodes[name]
        if node.core is not None:
            return
        node.incarnation = next(self._incarnations)
        # The disk survives a power cycle: the node comes back with what it persisted.
        node.core = NodeCore(self.file(name), name, incarnation=node.incarnation, now=self.now,
                             fencer=self.fencer, persisted=node.persisted,
                             strategy=self.strategy() if self.strategy else None,
                             guardian=self.guardian)
        node.resources = {}
        node.ops = {}
        node.paused_until, node.held = -math.inf, []
        node.lag, node.lag_until, node.lagged = 0.0, -math.inf, deque()
        # hb_heard outlives a life: an echo a previous life sent may still be on its way, and
        # supports as what it is (that life heard the heartbeat; docs/protocol.md)
        node.hb_sent, node.support_bound = {}, {}
        node.guard_at = math.inf
        node.guard_react = self.rng.uniform(0.0, self.config.timing.guard_time)
        if self.guardian:
            if node.guard is None:
                node.guard = GuardCore(self.now)
            self._guard_out(node, node.guard.hello(f"{name} life {node.incarnation}", self.now))
        self._check_restored(node)
        self._deliver(name, Tick())
        for r, fact in sorted(self.copies[name].items()):  # what the disk holds, not live
            self._tell_copy(node, r, replace(fact, live=False))
        for nic in sorted(node.nics_down):
            self._deliver(name, NicChanged(nic, False, "simulated: no carrier"))

    def nic(self, name: str, nic: str, up: bool) -> None:
        """A NIC of host ``name`` loses or regains its carrier. The NIC monitor tells the
        daemon (the dampening is a unit's business: here it is believed at once), and an ip
        resource whose every NIC is down fails its monitor where its group runs."""
        node = self.nodes[name]
        (node.nics_down.discard if up else node.nics_down.add)(nic)
        self.log.append(f"{self.now:.3f} nic {nic} of {name} {'up' if up else 'down'}")
        if node.core is None:
            return
        self._deliver(name, NicChanged(nic, up, "simulated: carrier " + ("back" if up
                                                                          else "lost")))
        for group, cfg in self.config.groups.items():
            for resource, nics in network_paths(self.config, cfg).items():
                if nics and set(nics) <= node.nics_down:
                    self.fail_group(name, group, resource)

    def _lost_with(self, node: SimNode) -> None:
        """The daemon of ``node`` dies with events still held (it was paused): an operator's
        reload among them was never answered, and the operator, told so by the command, runs
        it again (:meth:`retry_lost_reloads`)."""
        waiting = [*node.held, *(e for _, e in node.lagged)]
        self.reloads_lost += [e.config for e in waiting if isinstance(e, StageConfig)
                              and not e.wanted and e.config is not None]
        node.paused_until, node.held = -math.inf, []
        node.lag, node.lag_until, node.lagged = 0.0, -math.inf, deque()

    def retry_lost_reloads(self) -> None:
        live = self.live()
        if live:
            for config in self.reloads_lost:
                self.stage(config, on=live[0], files=())
            self.reloads_lost = []

    def crash(self, name: str) -> None:
        """Power off: the daemon and everything it ran are gone at once."""
        node = self.nodes[name]
        self._lost_with(node)
        node.core = None
        node.resources = {}
        node.ops = {}
        node.deadline = math.inf
        node.guard, node.guard_at = None, math.inf
        self.log.append(f"{self.now:.3f} crash {name}")

    def kill_daemon(self, name: str) -> None:
        """The daemon alone dies (SIGKILL, OOM): what it ran goes on running until its
        guardian, which sees the daemon's channel close, kills it."""
        node = self.nodes[name]
        if node.core is None:
            return
        self._lost_with(node)
        node.core = None
        node.ops = {}
        node.deadline = math.inf
        self.log.append(f"{self.now:.3f} kill daemon {name} (still running: "
                        f"{sorted(node.resources) or 'nothing'})")
        if node.guard is not None:
            # it sees the channel close within its reaction time
            heapq.heappush(self._queue, (self.now + node.guard_react, next(self._seq),
                                         "guard-gone", name, -1, node.guard))

    # ---- the guardian -----------------------------------------------------------------------

    def _guard_report(self, node: SimNode, lease_until: float) -> None:
        """What the coordinator tells the guardian after each event: the lease and what the
        groups not stopped here hold (vigil/actors/coordinator.py)."""
        assert node.core is not None and node.guard is not None
        held = Holdings.of(ResourceHolding(name=r) for g in sorted(node.core.groups.busy)
                           for r in node.core.config.groups[g].resources)
        self._guard_out(node, node.guard.report(lease_until, held, self.now,
                                                node.core.incarnation))

    def _guard_out(self, node: SimNode, out: GuardOutput) -> None:
        """Carry out the guardian's actions (what vigil.guard.process does for real) and plan
        its next deadline, handled ``guard_react`` after it is due."""
        guard = node.guard
        assert guard is not None
        for action in out.actions:
            if isinstance(action, Fence):
                names = set(action.holdings.names)
                self.log.append(f"{self.now:.3f} guardian of {node.name} kills "
                                f"{sorted(r for r in node.resources if r in names)} "
                                f"({action.cause})")
                for r in names:
                    node.resources.pop(r, None)
                for g in [g for g in node.ops if names & self.members_ever[g]]:
                    del node.ops[g]
                self._guard_out(node, guard.fence_done(action, Holdings(), self.now))
                if node.core is not None:
                    # its word comes over a socket: an event of its own, after the one that
                    # made the daemon report (handled at once, a core whose every report
                    # ends in a kill recursed here without end)
                    self._push(self.now, "event", node.name,
                               GuardFenced(f"the guardian fenced ({action.cause})", self.now))
            elif isinstance(action, Announce):
                self._announce(node, action.incarnation)
        if out.deadline < math.inf:
            at = max(self.now, out.deadline) + node.guard_react
            if at != node.guard_at:
                node.guard_at = at
                heapq.heappush(self._queue, (at, next(self._seq), "guard", node.name, -1, guard))

    def _announce(self, node: SimNode, incarnation: int) -> None:
        """The guardian tells the peers the daemon is dead (vigil.guard.announce): they
        reconnect to it within ANNOUNCE_DELAY, and it repeats the goodbye until dead_time has
        passed, unless a daemon is back by then."""
        self.log.append(f"{self.now:.3f} guardian of {node.name} says its daemon "
                        f"(incarnation {incarnation}) is dead")
        msg = to_message(Bye(incarnation, fenced=True), node.name)
        at = self.now + self.rng.uniform(*ANNOUNCE_DELAY)
        while at < self.now + self.config.timing.dead_time:
            heapq.heappush(self._queue, (at, next(self._seq), "announce", node.name, -1,
                                         (node.guard, msg)))
            at += ANNOUNCE_REPEAT

    def _guard(self, node: SimNode) -> None:
        """The guardian's deadline is due (test hook too)."""
        node.guard_at = math.inf
        if node.guard is not None:
            self._guard_out(node, node.guard.tick(self.now))

    def pause(self, name: str, seconds: float) -> None:
        """The node's daemon handles nothing for ``seconds`` (a stalled process or VM, a
        long GC): messages, timers and results of resource operations wait, in order, and
        are all handled when it resumes. Its resources go on as they were."""
        node = self.nodes[name]
        if node.core is None:
            return
        until = max(node.paused_until, self.now + seconds)
        node.paused_until = until
        self._push(until, "resume", name)
        self.log.append(f"{self.now:.3f} pause {name} until {until:.3f}")

    def resume_all(self) -> None:
        """End every pause now."""
        for node in self.nodes.values():
            if node.core is not None and node.paused_until > self.now:
                node.paused_until = self.now
                self._resume(node)

    def _resume(self, node: SimNode) -> None:
        if node.core is None or node.paused_until > self.now:
            return  # crashed meanwhile, or the pause was extended
        held, node.held = node.held, []
        for event in [*held, Tick()]:
            if node.core is None:
                return
            self._handle(node.name, event)  # each waited already: not again behind a lag

    def slow(self, name: str, lag: float, seconds: float) -> None:
        """The node's daemon cannot keep up (CPU starved) for ``seconds``: every event it
        handles (messages, its timer ticks, so the heartbeats it sends, and the results of
        resource operations) is handled ``lag`` after it came, in order. Unlike a pause it
        goes on handling, late; its resources go on as they were. When the load stops, what
        came meanwhile is still handled at the time it was due (the backlog drains)."""
        node = self.nodes[name]
        if node.core is None:
            return
        node.lag, node.lag_until = lag, self.now + seconds
        self.log.append(f"{self.now:.3f} {name} lags {lag:.3f}s until {node.lag_until:.3f}")

    def end_lags(self) -> None:
        """The load stops everywhere now: every slow daemon handles its backlog at once."""
        for node in self.nodes.values():
            node.lag_until = min(node.lag_until, self.now)
            while node.lagged and node.core is not None:
                self._handle(node.name, node.lagged.popleft()[1])

    def _unlag(self, node: SimNode) -> None:
        """The lagged events that are due now, in the order they came."""
        while node.lagged and node.lagged[0][0] <= self.now and node.core is not None:
            self._handle(node.name, node.lagged.popleft()[1])

    def slow_link(self, src: str, dst: str, delay: tuple[float, float]) -> None:
        """Messages from ``src`` to ``dst`` (that direction only) take ``delay`` (min, max)."""
        self.net.link_delay[(src, dst)] = delay

    def file(self, name: str) -> ClusterConfig:
        """The configuration file of node ``name``."""
        return self.files.get(name, self.config)

    def stage(self, config: ClusterConfig, on: str, files: Iterable[str] | None = None) -> None:
        """An operator puts ``config`` in the file of ``files`` (default: every node) and
        runs `vigil config reload` on ``on``: it stages it, and asks the others to."""
        for name in self.config.node_names if files is None else files:
            self.files[name] = config
        if all(self.files.get(n) is config for n in self.config.node_names):
            self.config = config  # what the cluster converges to, and is checked against
        for g, c in config.groups.items():
            self.members_ever.setdefault(g, set()).update(c.resources)
        self.resources_ever.update(config.resources)
        self.log.append(f"{self.now:.3f} configuration {config.digest[:8]} on "
                        f"{', '.join(sorted(n for n in self.files if self.files[n] is config))}"
                        f"; reload on {on}")
        if self.nodes[on].core is not None:  # taken now, as `vigil config reload` answers
            self._deliver(on, self._loaded(on, ""))

    def _loaded(self, name: str, wanted: str) -> StageConfig:
        """What the shell of ``name`` makes of its file (vigil/actors/coordinator.py)."""
        return StageConfig(self.file(name), wanted=wanted)

    def inject(self, name: str, event: Event, at: float | None = None) -> None:
        """Deliver ``event`` to ``name`` at ``at`` (default now), after what is due before."""
        self._push(self.now if at is None else at, "event", name, event)

    def partition(self, *sides: Iterable[str]) -> None:
        groups = [set(s) for s in sides]
        self.net.blocked = {(a, b) for g1 in groups for g2 in groups if g1 is not g2
                            for a in g1 for b in g2}

    def block(self, src: str, dst: str) -> None:
        self.net.blocked.add((src, dst))

    def unblock(self, src: str, dst: str) -> None:
        """Messages from ``src`` to ``dst`` flow again (the other blocks stay)."""
        self.net.blocked.discard((src, dst))

    def heal(self) -> None:
        self.net = NetworkFaults()

    def fail_group(self, name: str, group: str, resource: str | None = None,
                   policy: str = "restart") -> None:
        """A monitor finds the group broken where it runs (no-op where it does not):
        ``resource`` (default the first, so all its dependents restart) with its on_fail
        ``policy``."""
        node = self.nodes[name]
        if node.core is not None and node.core.local.get(group) is LocalState.RUNNING:
            self._graphs(node.core.config)
            failed = resource or self.group_resources[group].start_order()[0]
            self._deliver(name, GroupFailed(group, "simulated monitor failure",
                                            resource=failed, policy=policy))

    def set_fail_count(self, name: str, group: str, count: int) -> None:
        """``group`` has failed ``count`` times on ``name`` (`vigil simulate --live` starts
        from the fail counts a daemon reports); the master prices it again."""
        node = self.nodes[name]
        if node.core is not None:
            groups = node.core.groups
            groups.fail_times[group] = [self.now] * count
            groups.failures += 1

    def fail_next_start(self, name: str, group: str) -> None:
        self.nodes[name].fail_next_start.add(group)

    def fail_next_stop(self, name: str, group: str) -> None:
        """The next stop of ``group`` on ``name`` fails (a hung agent): what was in service
        stays in service, and the group is unclean there until the node is powered off."""
        self.nodes[name].fail_next_stop.add(group)

    def request(self, name: str, req: AdminRequest) -> None:
        if self.nodes[name].core is not None:
            self._deliver(name, req)

    # ---- running --------------------------------------------------------------------------

    def run_for(self, duration: float, *, max_events: int = 2_000_000) -> None:
        self.run_until(self.now + duration, max_events=max_events)

    def run_until(self, end: float, *, max_events: int = 2_000_000) -> None:
        for _ in range(max_events):
            if not self._queue or self._queue[0][0] > end:
                break
            t, _, kind, name, inc, payload = heapq.heappop(self._queue)
            self.now = max(self.now, t)
            node = self.nodes[name]
            if kind == "replicate":
                assert self.mirror_interval is not None
                self._replicate()
                self._push(self.now + self.mirror_interval, "replicate", name)
                continue
            if kind == "announce":
                assert isinstance(payload, tuple)
                guard, bye = payload
                if node.guard is guard and node.core is None:  # no daemon back since
                    self._transmit(bye)
                continue
            if kind in ("guard", "guard-gone"):
                if node.guard is None or node.guard is not payload:
                    continue  # a guardian that died with a power-off
                if kind == "guard-gone":
                    self._guard_out(node, node.guard.daemon_gone(self.now))
                elif t == node.guard_at:
                    self._guard(node)
                continue
            if node.core is None or node.incarnation != inc:
                continue
            if kind == "wake":
                if t != node.deadline:
                    continue
                self._deliver(name, Tick())
            elif kind == "msg":
                assert isinstance(payload, Message)
                self._deliver(name, Received(payload, "lan0"))
            elif kind == "op":
                assert isinstance(payload, tuple)
                self._op_step(node, *payload)
            elif kind == "resume":
                self._resume(node)
            elif kind == "lagged":
                self._unlag(node)
            elif kind == "event":
                self._deliver(name, payload)  # type: ignore[arg-type]
            elif kind == "fence":
                assert isinstance(payload, FenceDone)
                if payload.ok:
                    # off, whatever it ran: a daemon killed alone left its resources running
                    self.crash(payload.node)
                    self.fenced.append((self.now, name, payload.node))
                    self.log.append(f"{self.now:.3f} {name} powered {payload.node} off "
                                    f"(level {payload.level})")
                if node.core is not None:  # not when it powered itself off
                    self._deliver(name, payload)
        else:
            raise RuntimeError("simulation did not settle: too many events")
        self.now = max(self.now, end)

    def _push(self, t: float, kind: str, name: str, payload: object = None) -> None:
        inc = self.nodes[name].incarnation
        heapq.heappush(self._queue, (t, next(self._seq), kind, name, inc, payload))

    def _deliver(self, name: str, event: Event) -> None:
        node = self.nodes[name]
        assert node.core is not None
        lag = node.lag if self.now < node.lag_until else 0.0
        if lag > 0 or node.lagged:
            # behind whatever still waits, even once the lag ended: a backlog keeps order
            at = max(self.now + lag, node.lagged[-1][0] if node.lagged else self.now)
            node.lagged.append((at, event))
            self._push(at, "lagged", name)
            return
        self._handle(name, event)

    def _handle(self, name: str, event: Event) -> None:
        """The daemon of ``name`` handles ``event`` now (unless it is paused)."""
        node = self.nodes[name]
        assert node.core is not None
        if node.paused_until > self.now:
            node.held.append(event)
            return
        if isinstance(event, Received) and event.msg.type in ("hb", "echo"):
            self._note_echo(node, event.msg)
            fields = event.msg.fields
            if event.msg.type == "hb" and fields.get("inc", "").isdigit() \
                    and fields.get("n", "").isdigit():
                node.hb_heard[(event.msg.sender, int(fields["inc"]), int(fields["n"]))] = \
                    self.now
        out = node.core.handle(event, self.now)
        if node.guard is not None:
            # before any start leaves, as the coordinator does
            self._guard_report(node, out.lease_until)
        self._apply(node, out)
        if self.check and node.core is not None:
            self._check_lease(node)

    def _note_echo(self, node: SimNode, msg: Message) -> None:
        assert node.core is not None
        if msg.type == "echo":  # a heartbeat answered at once
            items = [f"{node.name}:{msg.fields.get('n', '')}:{msg.fields.get('inc', '')}"]
        else:
            items = msg.fields.get("echo", "").split(",")
        heard = self.nodes[msg.sender].hb_heard
        life = str(node.core.incarnation)
        for item in items:
            peer, number, inc = [*item.split(":"), "", ""][:3]
            # of this life only, and of a heartbeat the echoing node's core really handled
            if peer == node.name and inc == life and number.isdigit() \
                    and int(number) in node.hb_sent \
                    and (node.name, node.core.incarnation, int(number)) in heard:
                bound = node.hb_sent[int(number)] + node.core.config.timing.lease_time
                if bound > node.support_bound.get(msg.sender, -math.inf):
                    node.support_bound[msg.sender] = bound

    def _check_lease(self, node: SimNode) -> None:
        """A node's lease never outlasts what the echoes it received allow: each supports it
        until the echoed heartbeat was *sent* plus lease_time (docs/protocol.md, "The
        lease"), whenever it arrived or was handled. Worked out here from what was sent."""
        core = node.core
        assert core is not None
        if self.expected_quorate([node.name]):
            return  # a quorum alone (two_node): no lease needed
        claimed = core.membership.lease_until()
        if claimed <= self.now:
            return
        allowed, supporters = -math.inf, [node.name]
        for peer, bound in sorted(node.support_bound.items(), key=lambda kv: -kv[1]):
            if bound <= self.now:
                break
            supporters.append(peer)
            if self.expected_quorate(supporters):
                allowed = bound
                break
        if claimed > allowed + 1e-9:
            raise self._violation(
                f"lease: {node.name} holds a lease until {claimed:.3f}, but the heartbeats "
                f"its supporters echoed allow only until {allowed:.3f}")

    def _apply(self, node: SimNode, out: Output) -> None:
        core = node.core
        assert core is not None
        node.persisted = core.persisted()
        previous = self.promised_seen.get(node.name, NO_EPOCH)
        if self.check and core.promised < previous:
            raise self._violation(
                f"epochs must only grow: {node.name} went from {fmt_epoch(previous)} to "
                f"{fmt_epoch(core.promised)}")
        self.promised_seen[node.name] = core.promised
        if self.check:
            self._check_persisted(node)
        if core.round is not None and core.round.epoch not in self.epoch_views:
            self.epoch_views[core.round.epoch] = core.round.view
            self.declared_at[core.round.epoch] = core.round.started
            if self.check and not self.expected_quorate(core.round.view):
                raise self._violation(
                    f"minority epoch: {node.name} declared {fmt_epoch(core.round.epoch)} "
                    f"with view {core.round.view}, which has no quorum")
            if self.on_declare is not None:
                self.on_declare(node.name, core.round.epoch)
        elif (self.check and core.round is not None
              and self.declared_at[core.round.epoch] != core.round.started):
            raise self._violation(
                f"epoch declared twice: {node.name} declared {fmt_epoch(core.round.epoch)} "
                "again (a restart lost the highest epoch number it had seen)")
        rnd = core.round
        if (self.check and self.mirrors and rnd is not None and rnd.epoch not in
                self.mirror_checked and rnd.phase not in (Phase.ACK, Phase.REPORT, Phase.COST)):
            self.mirror_checked.add(rnd.epoch)
            self._check_copies(rnd)
        if core.closed and core.accepted.epoch != NO_EPOCH:
            placement = dict(core.accepted.placement)
            agreed = self.closed_epochs.setdefault(core.accepted.epoch, placement)
            if self.check and agreed != placement:
                raise self._violation(
                    f"agreement: members of epoch {fmt_epoch(core.accepted.epoch)} disagree "
                    f"on its placement ({agreed} vs {placement} at {node.name})")
        for msg in out.messages:
            if msg.type == "hb":
                node.hb_sent[int(msg.fields["n"])] = self.now
            self._transmit(msg)
        horizon = self.now - self.config.timing.lease_time
        for number in [n for n, t in node.hb_sent.items() if t < horizon]:
            del node.hb_sent[number]
        if len(node.hb_heard) > HEARD_KEPT:  # a fact stays true: forgotten only for memory
            long_ago = self.now - 2 * (self.config.timing.dead_time
                                       + self.config.timing.lease_time)
            for key in [k for k, t in node.hb_heard.items() if t < long_ago]:
                del node.hb_heard[key]
        for action in out.actions:
            if isinstance(action, StartGroup | RestartResource):
                self._check_quorate_action(node, action.epoch)
                node.skips[action.group] = action.skip
                node.op_orders[action.group] = action.order
                self._begin(node, action.group, self._steps(node, action))
            elif isinstance(action, StopGroup):
                node.op_orders[action.group] = action.order
                self._begin(node, action.group, self._steps(node, action))
            elif isinstance(action, FenceNode):
                self._fence(node, action)
            elif isinstance(action, LoadConfig):
                self.inject(node.name, replace(self._loaded(node.name, action.wanted),
                                               quiet=action.quiet, also=action.also))
            elif isinstance(action, SwitchConfig):
                self.log.append(f"{self.now:.3f} {node.name} switches to configuration "
                                f"{action.config.digest[:8]}")
        if out.deadline is not None and out.deadline != node.deadline:
            node.deadline = out.deadline
            self._push(out.deadline, "wake", node.name)

    def _fence(self, node: SimNode, action: FenceNode) -> None:
        """Run one level with the simulated devices (:class:`SimDevice`): the answer, and
        the power-off when every device succeeded, come when the last device is done."""
        t = self.now
        for name in action.devices:
            behaviour, device = self.devices[name], self.config.fence_devices[name]
            attempts = 0
            while attempts <= device.retries:
                attempts += 1
                draw = self.rng.random()
                if draw < behaviour.hang:
                    t += device.timeout
                    outcome = f"{name}: timed out after {device.timeout:g}s"
                else:
                    t += self.rng.uniform(*behaviour.duration)
                    outcome = (f"{name}: simulated failure" if draw < behaviour.hang
                               + behaviour.fail else "")
                if not outcome:
                    break
            if outcome:
                self._push(t, "fence", node.name, FenceDone(
                    action.node, False, action.level, f"{outcome}; {attempts} attempt(s)",
                    action.attempt))
                return
        self._push(t, "fence", node.name, FenceDone(
            action.node, True, action.level, f"{'+'.join(action.devices)}: powered off",
            action.attempt))

    def redeliver(self, index: int) -> Message | None:
        """Deliver one recently sent protocol message (not a heartbeat) again, 1 ms from now,
        to where it went the first time: a stale copy, as a network that holds a packet back
        for long, or a replay the codec's window no longer remembers, would produce. ``index``
        counts from the oldest kept (modulo how many are kept); None when none are."""
        if not self.sent_protocol:
            return None
        msg = self.sent_protocol[index % len(self.sent_protocol)]
        dests = ([n for n in self.nodes if n != msg.sender] if msg.dest == BROADCAST
                 else [msg.dest])
        for dest in dests:
            self._push(self.now + 0.001, "msg", dest, msg)
        return msg

    def _transmit(self, msg: Message) -> None:
        if msg.type != "hb":
            self.sent_protocol.append(msg)
        self.stats.messages += 1
        if self.measure_bytes:
            self.stats.bytes += sum(len(k) + len(v) + 2 for k, v in msg.fields.items()) + 40
        dests = ([n for n in self.nodes if n != msg.sender] if msg.dest == BROADCAST
                 else [msg.dest])
        for dest in dests:
            if (msg.sender, dest) in self.net.blocked:
                continue
            copies = 1
            rng = self.news_rng if msg.type == "news" else self.rng
            if self.net.loss and rng.random() < self.net.loss:
                copies = 0
            elif self.net.duplicate and rng.random() < self.net.duplicate:
                copies = 2
            for _ in range(copies):
                lo, hi = self.net.link_delay.get((msg.sender, dest), self.net.delay)
                self.stats.deliveries += 1
                self._push(self.now + rng.uniform(lo, hi), "msg", dest, msg)

    # ---- the resource executor ------------------------------------------------------------

    def _steps(self, node: SimNode, action: GroupAction) -> GroupSteps:
        """The steps the daemon's GroupActor takes: one function serves both. A stop's
        ``interrupt`` needs no model of its own: here a member still starting is stopped in
        its turn, and the force of a stop takes as long as a stop."""
        assert node.core is not None
        self._graphs(node.core.config)
        return group_steps(action, self.group_resources[action.group].start_order(),
                           self.member_dependents[action.group])

    def _graphs(self, config: ClusterConfig) -> None:
        """Look the groups up in ``config`` (that of the node acting) from now on."""
        if config.digest != self._graphs_of:
            self._graphs_of = config.digest
            self.group_resources = member_graphs(config)
            self.member_dependents = {
                g: {r: graph.transitive_dependents(r) for r in graph.names()}
                for g, graph in self.group_resources.items()}
            self.resource_group = {r: c.group for r, c in config.resources.items()}
            self.group_deps = {g: tuple(c.depends_on) for g, c in config.groups.items()}

    def _begin(self, node: SimNode, group: str, steps: GroupSteps) -> None:
        token = next(self._tokens)
        node.ops[group] = (steps.op, token)
        self._op_step(node, group, steps.op, token, steps.steps)

    def _op_step(self, node: SimNode, group: str, op: Literal["start", "stop"], token: int,
                 steps: tuple[Step, ...]) -> None:
        """Run ``steps`` from the first; the first may be the one underway (a resource
        ``starting`` or ``stopping``), which is now done. A step on a resource already where
        it should be takes no time here (the daemon runs the agent's start again)."""
        if node.ops.get(group) != (op, token):
            return  # superseded (a stop interrupted this start)
        for i, (r, step) in enumerate(steps):
            state = node.resources.get(r)
            if step == "start":
                if state == "starting":
                    node.resources[r] = "in"
                    continue
                if state == "in":
                    continue
                nics = address_nics(self.resources_ever[r])
                if group in node.fail_next_start or (nics and set(nics) <= node.nics_down):
                    node.fail_next_start.discard(group)
                    del node.ops[group]
                    self._deliver(node.name, GroupDone(group, "start", False, "injected",
                                                       order=node.op_orders.get(group, 0)))
                    return
                self._check_start_order(node, r)
                node.resources[r] = "starting"
                self.ops_done[(r, "start")] = self.ops_done.get((r, "start"), 0) + 1
                self._push(self.now + self.start_duration, "op", node.name,
                           (group, op, token, steps[i:]))
                return
            if state is None:
                continue
            if state == "stopping":
                del node.resources[r]
                continue
            if op == "stop" and group in node.fail_next_stop:
                node.fail_next_stop.discard(group)
                del node.ops[group]
                remaining = frozenset(x for x, _ in steps[i:] if x in node.resources)
                self.log.append(f"{self.now:.3f} stop of {group} fails on {node.name}: "
                                f"{sorted(remaining)} stay in service")
                self._deliver(node.name, GroupDone(group, "stop", False, "injected stop "
                                                   "failure", remaining=remaining,
                                                   order=node.op_orders.get(group, 0)))
                return
            self._check_stop_order(node, r)
            self.ops_done[(r, "stop")] = self.ops_done.get((r, "stop"), 0) + 1
            if r in self.mirrors and self.mirror_interval is not None:
                self._snapshot(node, r, live=False)  # the final one: a graceful stop loses nothing
            if op == "start":
                # this model's stops on the way to a start (a restart in place, members
                # leaving by hand on a converge) take no time
                del node.resources[r]
                continue
            node.resources[r] = "stopping"
            took = (self.stop_duration if self.stop_duration is not None else  # None: slow
                    self.rng.uniform(0.5, 1.0) * self.resources_ever[r].stop_timeout)
            self._push(self.now + took, "op", node.name, (group, op, token, steps[i:]))
            return
        del node.ops[group]
        if op == "start":
            self.starts += 1
        self._deliver(node.name, GroupDone(group, op, True, order=node.op_orders.get(group, 0)))

    # ---- mirrored data ------------------------------------------------------------------

    def _replicate(self) -> None:
        """Each mirror resource in service somewhere: its source snapshots the data."""
        for r in self.mirrors:
            for node in self.nodes.values():
                if node.core is not None and node.resources.get(r) == "in":
                    self._snapshot(node, r, live=True)

    def _snapshot(self, source: SimNode, r: str, *, live: bool) -> None:
        """``source`` takes a snapshot of ``r`` and sends it to every node it can reach (a
        daemon that runs, is not paused, and whose link from the source is not blocked); a
        live source learns how far each other node is behind (None: not reached)."""
        mine = self.copies[source.name].get(r)
        fact = CopyFact(mine.seq + 1 if mine else 1, self.now, source.name, live)
        self._tell_copy(source, r, fact)
        lags: dict[str, float | None] = {}
        for other in self.nodes.values():
            if other is source:
                continue
            reached = (other.core is not None and other.paused_until <= self.now
                       and (source.name, other.name) not in self.net.blocked)
            if reached:
                self._tell_copy(other, r, replace(fact, live=False))
            lags[other.name] = 0.0 if reached else None
        if live:
            self._deliver(source.name, MirrorLag(r, lags))

    def _tell_copy(self, node: SimNode, r: str, fact: CopyFact) -> None:
        self.copies[node.name][r] = fact
        if node.core is not None:
            self._deliver(node.name, MirrorState(r, fact))

    def _check_copies(self, r: Round) -> None:
        """The freshest copy wins: a group with a mirror resource is never placed on a
        member whose copy (as the cost replies said) was further behind the freshest copy
        among the members than max_lag, or that had none while another had one, unless the
        group is active there already (its data is live) or a forced move took it there."""
        forced = {node for g, node in r.moves.items() if g in r.forced}
        for g, node in sorted(r.placement.items()):
            if node is None or node not in r.view or g in r.held or g in r.reports.get(node, {}):
                continue
            if node in forced:
                continue
            for res in group_mirrors(self.config, self.config.groups[g]):
                facts = {m: r.copies.get(m, {}).get(res) for m in r.view}
                known = [f for f in facts.values() if f is not None]
                mine = facts[node]
                if not known or (mine is not None and mine.live):
                    continue
                limit = max_lag(self.config.resources[res])
                behind = None if mine is None else max(f.taken for f in known) - mine.taken
                if behind is None or behind > limit + 1e-9:
                    raise self._violation(
                        f"mirror: epoch {fmt_epoch(r.epoch)} placed {g} on {node}, whose copy "
                        f"of {res} was " + ("missing" if behind is None else
                                           f"{behind:.3f}s behind") + f" (max_lag {limit:g}s)")

    def _violation(self, text: str) -> InvariantViolation:
        return InvariantViolation(f"{text}\n{self.describe(history=40)}")

    # ---- invariants -------------------------------------------------------------------------

    def _check_start_order(self, node: SimNode, resource: str) -> None:
        if not self.check:
            return
        assert node.core is not None
        config = node.core.config
        self._graphs(config)
        group = self.resource_group[resource]
        needed = list(config.resources[resource].depends_on)
        for dep_group in self.group_deps[group]:
            left_out = node.skips.get(dep_group, frozenset())
            needed += [r for r in config.groups[dep_group].resources if r not in left_out]
        for dep in needed:
            if node.resources.get(dep) != "in":
                raise self._violation(
                    f"order: {resource} started on {node.name} while {dep} is not in service")
        self._check_exclusive(group, node.name)

    def _check_stop_order(self, node: SimNode, resource: str) -> None:
        if not self.check:
            return
        assert node.core is not None
        config = node.core.config
        self._graphs(config)
        group = self.resource_group[resource]
        dependents = list(self.group_resources[group].dependents(resource))
        for g, deps in self.group_deps.items():
            if group in deps:
                dependents += list(config.groups[g].resources)
        for dep in dependents:
            if node.resources.get(dep) is not None:
                raise self._violation(
                    f"order: {resource} stopped on {node.name} while {dep} is still in service")

    def _check_exclusive(self, group: str, starting_on: str) -> None:
        resources = self.members_ever[group]
        for other in self.nodes.values():
            if other.name != starting_on and resources & set(other.resources):
                raise self._violation(
                    f"exclusivity: {group} starting on {starting_on} while still active on "
                    f"{other.name}")

    def _check_quorate_action(self, node: SimNode, epoch: Epoch) -> None:
        if not self.check:
            return
        view = self.epoch_views.get(epoch)
        if view is None or not self.expected_quorate(view):
            raise self._violation(
                f"minority action: {node.name} starts a group in epoch {fmt_epoch(epoch)} "
                f"whose view {view} has no quorum")

    def expected_quorate(self, view: Iterable[str]) -> bool:
        """More than half of the configured votes, or with two_node any one vote: worked out
        here from the configuration, not by the core's Quorum (which it checks)."""
        weight = sum(self.votes[n] for n in set(view))
        if self.config.two_node:
            return weight >= 1
        return 2 * weight > sum(self.votes.values())

    def _check_persisted(self, node: SimNode) -> None:
        """What the core would write to disk now is what it acts on: its promise, the
        highest epoch number it saw, its placement history and its pending requests."""
        core, saved = node.core, node.persisted
        assert core is not None and saved is not None
        lost = [what for what, ok in (
            ("promise", saved.promised == core.promised),
            ("history", list(saved.history) == core.promise.history),
            ("highest epoch number", saved.max_seen >= core.promise.max_seen),
            ("requests", saved.requests == core.requests.refs()),
        ) if not ok]
        if lost:
            raise self._violation(f"persisted state of {node.name} misses its "
                                  f"{', '.join(lost)}")

    def _check_restored(self, node: SimNode) -> None:
        """A restarted node comes back with everything it persisted."""
        core, saved = node.core, node.persisted
        if not self.check or saved is None or core is None:
            return
        lost = [what for what, ok in (
            ("promise", core.promised == saved.promised),
            ("history", core.promise.history == list(saved.history)),
            ("highest epoch number", core.promise.max_seen >= saved.max_seen),
            ("requests", core.requests.refs() == saved.requests),
        ) if not ok]
        if lost:
            raise self._violation(f"{node.name} restarted without its persisted "
                                  f"{', '.join(lost)}")

    def unapplied_requests(self) -> list[str]:
        """Ids of requests pending on a live node that no master of a live node applied."""
        cores = [n.core for n in self.nodes.values() if n.core is not None]
        applied = {rid for c in cores for rid in (*c.master.applied_ids,
                                                  *c.promise.applied_seen)}
        return sorted(rid for c in cores for rid in c.requests.queued if rid not in applied)

    def admin_state(self) -> frozenset[str]:
        """The administrative state of the newest placement a live node accepted."""
        cores = [n.core for n in self.nodes.values() if n.core is not None]
        newest = max((c.accepted for c in cores), key=lambda a: a.epoch, default=None)
        return newest.admin if newest is not None else frozenset()

    def check_exclusivity(self) -> None:
        for group, members in self.members_ever.items():
            holders = [n.name for n in self.nodes.values() if members & set(n.resources)]
            if len(holders) > 1:
                raise self._violation(f"exclusivity: {group} active on {holders}")

    # ---- observation ----------------------------------------------------------------------

    def live(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.core is not None]

    def placement(self) -> dict[str, list[str]]:
        """group -> live nodes where all its resources are in service."""
        out: dict[str, list[str]] = {g: [] for g in self.config.groups}
        for node in self.nodes.values():
            for g, cfg in self.config.groups.items():
                if cfg.resources and all(node.resources.get(r) == "in" for r in cfg.resources):
                    out[g].append(node.name)
        return out

    def settled(self) -> bool:
        """A transition completed, every live node is in that epoch, nothing in flight."""
        live = [self.nodes[n].core for n in self.live()]
        cores = [c for c in live if c is not None]
        if not cores:
            return True
        epochs = {c.promised for c in cores}
        if len(epochs) != 1:
            return False
        epoch = epochs.pop()
        master = self.nodes.get(epoch[1])
        if master is None or master.core is None or master.core.round is None:
            return False
        if master.core.round.epoch != epoch or master.core.round.phase is not Phase.DONE:
            return False
        if any(not c.closed or c.accepted.epoch != epoch for c in cores):
            return False
        if any(self.nodes[n].core.config.digest != self.file(n).digest  # type: ignore[union-attr]
               for n in self.live()):
            return False  # a configuration change is not through
        return all(not n.ops for n in self.nodes.values() if n.core is not None)

    def expected_placement_ok(self) -> list[str]:
        """Problems with the placement now (for convergence checks): a group active in two
        places, or a colocation set running fewer of its groups than some live node could."""
        problems = []
        placement = self.placement()
        for g, where in placement.items():
            if len(where) > 1:
                problems.append(f"{g} in service on {where}")
        for groups in colocation_sets(self.config):
            running = sum(1 for g in groups if placement[g])
            best, best_node = 0, ""
            for name in self.live():
                can = self._runnable(name, groups)
                if len(can) > best:
                    best, best_node = len(can), name
            if running < best:
                problems.append(f"only {running} of {groups} in service although "
                                f"{best_node} could run {best}")
        return problems

    def _runnable(self, name: str, groups: list[str]) -> list[str]:
        core = self.nodes[name].core
        assert core is not None
        ok: list[str] = []
        for g in groups:
            cfg = self.config.groups[g]
            if g not in core.groups.fail_times:
                continue  # it runs another configuration (settled() says so)
            if (name in core.accepted.admin
                    or nic_limit(self.config, cfg,
                                 dict.fromkeys(self.nodes[name].nics_down, "")) is not None
                    or len(core.groups.fail_times[g]) >= cfg.migration_threshold
                    or (self.config.strategy == "preferred" and cfg.nodes
                        and name not in cfg.nodes)):
                continue
            if all(d in ok for d in cfg.depends_on):
                ok.append(g)
        return ok

    def describe(self, history: int = 12) -> str:
        lines = [f"t={self.now:.3f}"]
        for name, node in self.nodes.items():
            if node.core is None:
                left = f" (still running {sorted(node.resources)})" if node.resources else ""
                lines.append(f"  {name}: off{left}")
                continue
            c = node.core
            r = c.round
            rs = f" round {fmt_epoch(r.epoch)} {r.phase.value}" if r else ""
            active = {g: s.value for g, s in c.local.items() if s is not LocalState.STOPPED}
            lines.append(f"  {name}: epoch {fmt_epoch(c.promised)} acc "
                         f"{fmt_epoch(c.accepted.epoch)} closed={c.closed}{rs} "
                         f"alive={sorted(c.alive())} active={active} "
                         f"fails={c.fail_counts()}")
            if r is not None or history > 12:
                lines += [f"    {t:.3f} {d}" for t, d in c.decisions[-history:]]
        return "\n".join(lines)
