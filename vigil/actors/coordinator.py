"""CoordinatorActor: the transition coordinator. A thin shell around the pure
:class:`vigil.cluster.node.NodeCore`: it feeds it events with the time, persists what the
core must remember, sends the core's messages over every link, turns its actions into tells
to the group actors, and sets one timer for the core's next deadline.

Two kinds of event do not wait in the mailbox: a heartbeat that changes nothing but times is
handled on the link's reader thread that decoded it (``NodeCore.handle_routine``), and the
deadline on the timer's thread (when our heartbeat is due, or a timeout). One lock keeps the
core and this shell's state to one thread at a time, whichever: the core still sees one event
after the other, each with the time it is handled at, persisted before anything it caused
leaves. What that saves: the two thread switches of a hop, for nearly every event of a calm
cluster; and a heartbeat leaves on time while a backlog waits in the mailbox (a peer must not
think a busy node dead), though not while one handler runs long (reading a configuration
file is done before the lock for that reason). A message from a link that the short path
refuses goes to the mailbox, and so do those after it from that link until it has been
handled: one link's messages keep their order, as the protocol's reasoning assumes of one
connection. An event that raises leaves the core half-way: nothing reaches it any more,
whichever thread comes next, and the actor fails (the supervisor starts a new one from the
persisted state)."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal

import pykka

from vigil.actors.base import Directory, VigilActor
from vigil.actors.book import ResourceBook
from vigil.actors.guard import GuardianLost, GuardLink
from vigil.actors.messages import (
    ChildRestarted,
    Control,
    FenceDeviceState,
    GetStatus,
    Heard,
    NicsDown,
    ProbeGroup,
    Reconfigure,
    ResourceOp,
    ResourceOpDone,
    ResourceState,
    RunningGroups,
    SendFrames,
)
from vigil.actors.strategies import load_strategy
from vigil.actors.timer import DeadlineTimer
from vigil.cluster.events import (
    AdminRequest,
    ClearFailures,
    CopyReceived,
    Event,
    FenceDone,
    FenceNode,
    LoadConfig,
    MarkedOutOfService,
    NicChanged,
    Output,
    Received,
    RestartResource,
    Shutdown,
    StageConfig,
    StartGroup,
    StopGroup,
    SwitchConfig,
    Tick,
)
from vigil.cluster.mirrors import MirrorLag, MirrorState
from vigil.cluster.node import NodeCore
from vigil.cluster.promise import Persisted
from vigil.cluster.view import LinkFacts, ResourceFacts, build_status
from vigil.config import ClusterConfig
from vigil.config_diff import json_safe
from vigil.local.rundir import read_private, write_atomic
from vigil.messages import Message
from vigil.notifications import (
    FailCountsCleared,
    FencingRequested,
    Notification,
    ResourceStateChanged,
)
from vigil.status import (
    ClusterStatus,
    FenceDeviceStatus,
    NicStatus,
    iso_time,
    local_time,
)
from vigil.transports import Codec, Sequencer

log = logging.getLogger(__name__)

#: how long the node actor may take to rebuild its children for a new configuration
REBUILD_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class _Queued:
    """A message from ``link`` the short path refused: the full path handles it, in order
    (None: a barrier, what the link told before the short path was open)."""

    event: Received | None
    link: str


@dataclasses.dataclass(frozen=True, slots=True)
class _Failed:
    """Handling an event failed (perhaps on another thread): the actor fails at once."""


@dataclasses.dataclass(frozen=True, slots=True)
class Rebuilt:
    """The node actor rebuilt the children for a new configuration (``error``: it did
    not); ``added``: the groups new in it."""

    added: tuple[str, ...]
    error: str


def load_persisted(path: Path) -> Persisted | None:
    try:
        data = json.loads(read_private(path))
        return Persisted.from_json(data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # A damaged state file must not keep the node down; it rejoins as a new node and
        # the others' promises keep the protocol safe (docs/protocol.md).
        log.warning("ignoring damaged node state %s: %s", path, exc)
        return None


def save_persisted(path: Path, state: Persisted) -> None:
    # fsync'd, renamed into place, never through a link planted at the temporary name
    write_atomic(path, json.dumps(state.to_json(), sort_keys=True).encode())


class CoordinatorActor(VigilActor):
    def __init__(self, name: str, directory: Directory, config: ClusterConfig, node: str,
                 codec: Codec, sequencer: Sequencer, state_path: Path,
                 missing_types: frozenset[str] = frozenset(),
                 guard: GuardLink | None = None,
                 link_nics: Mapping[str, str] | None = None,
                 read_config: Callable[[str], StageConfig] | None = None,
                 book: ResourceBook | None = None) -> None:
        super().__init__(name, directory)
        self.config = config
        self.node = node
        self.codec = codec
        self.sequencer = sequencer
        self.state_path = state_path
        self.links = [link.name for link in config.nodes[node].links]
        self.core = NodeCore(config, node, incarnation=sequencer.incarnation,
                             now=time.monotonic(), missing_types=missing_types,
                             strategy=load_strategy(config.strategy),
                             persisted=load_persisted(state_path), strategies=load_strategy,
                             guardian=guard is not None)
        #: reads the configuration file again (NodeRuntime.read_config): None, no file
        self.read_config = read_config
        #: rebuilds of the actors under way (a configuration switch), and the group commands
        #: that wait for them
        self.rebuilding = 0
        self.rebuilt_groups: set[str] = set()
        self.waiting: list[StartGroup | StopGroup | RestartResource] = []
        self.saved = self.core.persisted()
        self.tokens = 0
        #: what the resources here reported, for `vigil status` (their last failure and
        #: diagnostic until a cleanup of their group); shared with the workers that report
        #: (vigil/actors/book.py); a new coordinator starts it afresh, as it did its own
        self.book = book if book is not None else ResourceBook()
        self.book.reset(config.resources)
        self.running: frozenset[str] = frozenset()
        self.fence_devices: dict[str, FenceDeviceStatus] = {}  # as their monitors found them
        self.link_facts: dict[str, LinkFacts] = {}  # as each link last said
        self.timer: DeadlineTimer | None = None
        self.left = False
        self.guard = guard
        #: why this node left the cluster by itself (its guardian is gone), if it did
        self.lost_guardian = ""
        #: this node's NICs as its NIC monitors last said
        self.nics: dict[str, NicStatus] = {}
        #: link -> the NIC that holds its address here
        self.link_nics: Mapping[str, str] = link_nics or {}
        #: the core and this state, whichever thread handles an event (see the module's
        #: docstring); reentrant: a control request handles events under it
        self._lock = threading.Lock()
        #: link -> its received messages in the mailbox: those after them wait too
        self._queued: Counter[str] = Counter()
        self._stopped = False
        self._broken: Exception | None = None  # what left the core half-way
        self._thread: threading.Thread | None = None  # the actor's own

    def on_start(self) -> None:
        self._thread = threading.current_thread()
        self.timer = DeadlineTimer(self.node, self._on_deadline)
        with self._lock:
            # What a link told before the line below went to the mailbox: a barrier per
            # link keeps what comes after it behind it.
            for link in self.links:
                self._queued[link] += 1
                self.actor_ref.tell(_Queued(None, link))
        self.directory.set_direct(self.name, self._received_now)
        if self.guard is not None:
            # through the directory: a reader started by a coordinator that failed since
            # reaches this one
            self.guard.start(partial(self.directory.tell, "coordinator"))
        for group in self.config.groups:
            self.directory.tell(f"group:{group}", ProbeGroup())
        for link in self.links:  # a restarted coordinator: the links say again how they are
            self.directory.tell(f"link:{link}", ChildRestarted(self.name))
        for nic in self.directory.names("nic:"):  # and the NIC monitors what they believe
            self.directory.tell(nic, ChildRestarted(self.name))
        with self._lock:
            self._run(Tick())

    def on_stop(self) -> None:
        self._quit()
        if self.guard is not None:
            self.guard.close()

    def release(self) -> None:
        # Failed: no event may reach this core any more (the supervisor starts a new one from
        # the persisted state). The guardian's connection is the node's: the new one keeps it.
        self._quit()

    def _quit(self) -> None:
        self.directory.remove_direct(self.name, self._received_now)
        with self._lock:  # a reader or the timer that got in first has finished
            self._stopped = True
        if self.timer is not None:
            self.timer.close()

    def _run(self, event: Event, routine: bool = False) -> bool:
        """Under the lock: ``event`` through the core and its output through the shell
        (``routine``: only if it takes the short path; False: it did not). An exception
        leaves the core and this shell half-way: nothing may use them any more, whichever
        thread comes next, and the actor fails (its supervisor starts a new one from the
        persisted state)."""
        if self._stopped:
            return True
        try:
            now = time.monotonic()
            if routine:
                assert isinstance(event, Received)
                out = self.core.handle_routine(event, now)
                if out is None:
                    return False
            else:
                out = self.core.handle(event, now)
            self._apply(out)
        except Exception as exc:
            self._stopped, self._broken = True, exc
            log.error("coordinator %s: handling %s failed", self.node, type(event).__name__,
                      exc_info=exc)
            # a tell: a failure while answering an ask would not fail the actor
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.tell(_Failed())
            if threading.current_thread() is self._thread:
                raise
        return True

    def _received_now(self, message: object) -> bool:
        """On a link's reader thread: a heartbeat that changes nothing but times is handled
        here and now; anything else goes to the mailbox, and what comes after it on that
        link follows it there (True either way)."""
        if not isinstance(message, Received):
            return False
        with self._lock:
            if self._queued[message.link] or not self._run(message, routine=True):
                self._queued[message.link] += 1
                with contextlib.suppress(pykka.ActorDeadError):
                    self.actor_ref.tell(_Queued(message, message.link))
        return True

    def _on_deadline(self) -> None:
        """On the timer's thread: the core's deadline came (our heartbeat, a timeout)."""
        with self._lock:
            self._run(Tick())

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Control) and message.command == "reload":
            # read (and check) the file before taking the lock: a type's defaults may run
            # an agent, and heartbeats must not wait for it
            staged = self.read_config("") if self.read_config is not None else None
            with self._lock:
                self._check()
                return self._reload(staged)
        with self._lock:
            self._check()
            return self._on_receive(message)

    def _check(self) -> None:
        if self._broken is not None:  # an event failed on another thread: so does this actor
            raise RuntimeError(f"the coordinator's core failed: {self._broken!r}")

    def _on_receive(self, message: Any) -> Any:
        if isinstance(message, _Queued):
            self._queued[message.link] -= 1
            if message.event is not None:
                self._handle(message.event)
            return None
        if isinstance(message, _Failed):
            return None  # _check raised already
        if isinstance(message, GetStatus):
            return self.status()
        if isinstance(message, Control):
            return self._control(message)
        if isinstance(message, ResourceState):
            self._resource_state(message)
            return None
        if isinstance(message, ResourceOpDone):  # a mark_oos by hand
            self._handle(MarkedOutOfService(message.resource))
            return None
        if isinstance(message, FenceDeviceState):
            self._fence_device_state(message)
            return None
        if isinstance(message, NicChanged):
            self.nics[message.nic] = NicStatus(
                state="up" if message.up else "down", reason=message.reason,
                since=iso_time(time.time()))
            self._handle(message)
            # the addresses that follow NICs move now, before any monitor notices
            down = NicsDown(frozenset(self.core.nics_down))
            for name in self.directory.names("resource:"):
                self.directory.tell(name, down)
            return None
        if isinstance(message, LinkFacts):
            self.link_facts[message.link] = message
            return None
        if isinstance(message, ChildRestarted):  # a fresh diagnostics knows of nothing running
            if message.name == "diagnostics":
                self.directory.tell("diagnostics", RunningGroups(self.running))
            return None
        if isinstance(message, (MirrorState, MirrorLag)):  # from the mirror replication
            self._handle(message)
            return None
        if isinstance(message, CopyReceived):
            # A copy on the slower of two links comes with every message: the core needs to
            # hear of it only often enough to know that the link works.
            silent = self.core.membership.link_silent_for(message.sender, message.link,
                                                           time.monotonic())
            if silent < self.config.timing.dead_time / 4:
                return None
        if isinstance(message, Rebuilt):
            self._rebuilt(message)
            return None
        if isinstance(message, GuardianLost):
            # Nothing would kill what this node runs if its daemon hung now, so the others'
            # short fencing wait would no longer be true: leave, cleanly, at once.
            log.critical("the guardian is gone (%s): leaving the cluster; the others take "
                         "over this node's groups", message.reason)
            self.lost_guardian = message.reason
            self._handle(Shutdown())
            return None
        self._handle(message)
        return None

    def _resource_state(self, m: ResourceState) -> None:
        before = self.book.record(m)  # None: a resource the configuration no longer has
        if before is not None and before != m.state:
            self.directory.tell("notifier", ResourceStateChanged(
                node=self.node, time=m.at or time.time(), resource=m.resource, group=m.group,
                state=m.state, reason=m.reason,
                text=f"{m.resource} {m.state} on {self.node} ({m.reason})"))

    def _fence_device_state(self, m: FenceDeviceState) -> None:
        state = "ok" if m.ok else "failed"
        before = self.fence_devices.get(m.device)
        if before is None or before.state != state:
            (log.info if m.ok else log.warning)("fence device %s: monitor %s (%s)", m.device,
                                                state, m.reason)
        self.fence_devices[m.device] = FenceDeviceStatus(
            state=state, reason=m.reason, hosts=self.config.fence_devices[m.device].hosts,
            checked=iso_time(m.at))

    # ---- the core --------------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        self._run(event)

    def _apply(self, out: Output) -> None:
        if out.routine:
            # a heartbeat received or sent that changed nothing but times: nothing to
            # persist, start, stop or tell, only messages to send, a longer lease for the
            # guardian and the next deadline
            if self.guard is not None and not self.left:
                self.guard.report(out.lease_until, frozenset(self.core.groups.busy))
            self._send(out.messages)
            if self.timer is not None and out.deadline is not None:
                self.timer.set(max(out.deadline, time.monotonic()))
            return
        state = self.core.persisted()
        if state != self.saved:
            # before anything leaves: a promise must survive a crash (docs/protocol.md)
            save_persisted(self.state_path, state)
            self.saved = state
        if self.guard is not None and not self.left:
            # before any start leaves: the guardian must know what it is to remove first
            self.guard.report(out.lease_until, frozenset(self.core.groups.busy))
        self._send(out.messages)
        for action in out.actions:
            if isinstance(action, SwitchConfig):
                # first: the commands below may be for the actors of the new configuration
                self._switch(action)
            elif isinstance(action, LoadConfig):
                self._read_later(action)
            elif isinstance(action, StartGroup | StopGroup | RestartResource):
                if self.rebuilding and action.group in self.rebuilt_groups:
                    self.waiting.append(action)
                else:
                    self.directory.tell(f"group:{action.group}", action)
            elif isinstance(action, FenceNode) and not self.directory.tell("fencer", action):
                self.actor_ref.tell(FenceDone(action.node, False, action.level, "no fencer "
                                              "runs on this node (is it restarting?)",
                                              action.attempt))
        # Only now, with every command sent: telling must never keep a stop from happening.
        offset = time.time() - time.monotonic()  # core times are monotonic
        for note in out.notifications:
            if isinstance(note, FailCountsCleared) and note.node == self.node:
                self._forget_failures(note.group)
            self.directory.tell("notifier", wall_clock(note, offset))
        for note in out.heard:
            self.directory.tell("notifier", Heard(wall_clock(note, offset)))
        running = frozenset() if self.core.accepted.maintenance else self.core.groups.running()
        if running != self.running:
            self.running = running
            self.directory.tell("diagnostics", RunningGroups(running))
        if self.core.left and not self.left:
            self.left = True
            if self.guard is not None:
                self.guard.bye()
            self.directory.tell("node", Control("left"))
        if self.timer is not None:
            wall = time.monotonic()
            self.timer.set(None if out.deadline is None else max(out.deadline, wall))

    def _send(self, messages: Iterable[Message]) -> None:
        for msg in messages:
            frames = tuple(self.codec.encode(self.sequencer.stamp(msg)))
            for link in self.links:
                self.directory.deliver(f"link:{link}", SendFrames(frames))

    # ---- configuration changes ----------------------------------------------------------

    def _read_later(self, load: LoadConfig) -> None:
        """Another node asked for a reload: read the file off this actor's thread (a type's
        defaults may run an agent), then hand the core what was found."""
        read, me = self.read_config, self.actor_ref
        if read is None:
            return

        def work() -> None:
            me.tell(dataclasses.replace(read(load.wanted), quiet=load.quiet, also=load.also))

        threading.Thread(target=work, name=f"vigil-reload-{self.node}", daemon=True).start()

    def _switch(self, switch: SwitchConfig) -> None:
        """The core runs ``config`` now: so does everything built from it. The node actor
        rebuilds the children that changed; until it has, what the core asks of the groups
        waits here, in order (it may be for an actor being replaced). Not awaited on this
        thread: the node actor may be stopping an actor that waits for this one."""
        before, config = self.config, switch.config
        self.config = config
        self.book.keep(config.resources)
        node, me = self.directory.get("node"), self.actor_ref
        if node is None:
            return
        future = node.ask(Reconfigure(config), block=False)
        self.rebuilding += 1
        added = tuple(sorted(set(config.groups) - set(before.groups)))
        # only the commands for groups whose actors are replaced wait: a stop of a group
        # the switch kept (its lease lost right after) must not wait behind the rebuild
        self.rebuilt_groups |= switch.rebuilt

        def wait() -> None:
            try:
                future.get(timeout=REBUILD_TIMEOUT)
                me.tell(Rebuilt(added, ""))
            except Exception as exc:  # the node actor failed or hangs: say so, go on
                me.tell(Rebuilt(added, str(exc) or type(exc).__name__))

        threading.Thread(target=wait, name=f"vigil-rebuild-{self.node}", daemon=True).start()

    def _rebuilt(self, done: Rebuilt) -> None:
        self.rebuilding -= 1
        if self.guard is not None:
            self.guard.forget_holdings()  # the actors that hold them may be new ones
        if done.error:
            log.error("rebuilding the actors for the new configuration failed (%s): the "
                      "groups' commands go to what is there", done.error)
        for group in done.added:  # a new group may find its resources running already
            self.directory.tell(f"group:{group}", ProbeGroup())
        if self.rebuilding == 0:
            self.rebuilt_groups = set()
            waiting, self.waiting = self.waiting, []
            for action in waiting:
                self.directory.tell(f"group:{action.group}", action)

    def _reload(self, staged: StageConfig | None) -> dict[str, Any]:
        """`vigil config reload` here: the file read and checked just now (``staged``; the
        answer says what is wrong with it): stage it, and ask every other node to do the
        same."""
        if staged is None:
            return _error("this node has no configuration file to read again")
        self._handle(staged)
        new, core = staged.config, self.core
        if new is None or staged.problem:
            return _error(f"configuration not staged: {staged.problem or 'it did not load'}")
        if new.digest == core.config.digest:
            return {"ok": True, "message": f"{new.path} is the running configuration "
                    f"({new.digest[:12]}): nothing to change", "digest": new.digest}
        if core.staged is None or core.staged.digest != new.digest:
            return _error(core.stage_refused or "not staged: see `vigil status`")
        missing = sorted(staged.missing_types)
        warn = (f"; warning: resource type {', '.join(missing)} is not installed on "
                f"{self.node}: what uses it cannot run here (`vigil config check` names the "
                "types this machine knows)" if missing else "")
        return {"ok": True, "digest": new.digest, "message": (
            f"configuration {new.digest[:12]} staged here and asked of every node; the "
            "cluster switches to it in one transition once every node has staged it "
            f"(`vigil status` shows its progress){warn}")}

    def _forget_failures(self, group: str) -> None:
        """A cleanup of ``group``: its members' last failure, and a failed last diagnostic,
        are no longer news here (the next monitor says again how they are)."""
        self.book.forget_failures(self.config.groups[group].resources)

    # ---- manual requests ----------------------------------------------------------------

    def _control(self, req: Control) -> dict[str, Any]:
        cfg = self.config
        cmd = req.command
        group, node = req.arg("group"), req.arg("node")
        if cmd == "status":
            return {"ok": True, "status": self.status().to_json()}
        if cmd == "config":  # the running configuration, for `vigil config diff`
            return {"ok": True, "path": str(cfg.path), "digest": cfg.digest,
                    "document": json_safe(cfg.document)}
        if cmd == "move":
            if group not in cfg.groups:
                return _error(_unknown("group", group, cfg.groups))
            if node not in cfg.nodes:
                return _error(_unknown("node", node, cfg.nodes))
            if self.core.accepted.maintenance:
                return _error("the cluster is in maintenance mode: nothing moves; end it "
                              "first with `vigil maintenance off`")
            force = req.arg("force") == "1"
            self._handle(AdminRequest("move", group=group, node=node, force=force))
            return {"ok": True, "message": f"{'forced ' if force else ''}move of {group} to "
                    f"{node} requested; the next transition applies it (watch `vigil status`)"}
        if cmd in ("standby", "online"):
            if node not in cfg.nodes:
                return _error(_unknown("node", node, cfg.nodes))
            self._handle(AdminRequest(cmd, node=node))  # type: ignore[arg-type]
            return {"ok": True, "message": f"{cmd} of {node} requested"}
        if cmd in ("fence", "confirm_off"):
            refused = self.core.fence_refusal(cmd, node)
            if refused:
                return _error(refused)
            self._handle(AdminRequest(cmd, node=node))  # type: ignore[arg-type]
            then = ("'s master runs its fence levels" if cmd == "fence" else
                    f" counts {node} as fenced")
            return {"ok": True, "message": f"{cmd.replace('_', '-')} of {node} requested: the "
                    f"next transition{then} (watch `vigil status`)"}
        if cmd == "cleanup":
            if not group and req.arg("resource") in cfg.resources:
                group = cfg.resources[req.arg("resource")].group
            if group not in cfg.groups:
                return _error(_unknown("group", group, cfg.groups))
            self._handle(ClearFailures(group))
            return {"ok": True, "message": f"fail counts of {group} cleared on every node "
                    "(the next transition may place it where it failed before)"}
        resource = req.arg("resource")
        if cmd in _BY_HAND:
            if resource not in cfg.resources:
                return _error(_unknown("resource", resource, cfg.resources))
            self._handle(AdminRequest(_BY_HAND[cmd], resource=resource))
            return {"ok": True, "message": f"{cmd} of {resource} requested; the next "
                    "transition applies it on the node where its group runs (watch "
                    "`vigil status`)"}
        if cmd == "mark_oos":
            if resource not in cfg.resources:
                return _error(_unknown("resource", resource, cfg.resources))
            self.tokens += 1
            self.directory.deliver(f"resource:{resource}",
                                   ResourceOp("mark_oos", self.tokens, self.name))
            return {"ok": True, "message": f"{resource} marked out of service on {self.node} "
                    "(no action taken: make sure it really is stopped)"}
        if cmd == "maintenance":
            state = req.arg("state")
            if state not in ("on", "off"):
                return _error(f"maintenance takes 'on' or 'off', not {state!r}")
            self._handle(AdminRequest("maintenance", on=state == "on"))
            return {"ok": True, "message": f"maintenance {state} requested; the next "
                    "transition applies it cluster-wide"}
        if cmd == "shutdown":
            self._handle(Shutdown())
            return {"ok": True, "message": "leaving the cluster"}
        return _error(f"unknown command {cmd!r}")

    def status(self) -> ClusterStatus:
        states, last_failure, last_diagnostic = self.book.facts()
        return build_status(self.core, ResourceFacts(
            states=states, last_failure=last_failure, last_diagnostic=last_diagnostic,
            messages=self.codec.counters, fence_devices=self.fence_devices,
            nics=self.nics, links=self.link_facts, nic_down={
                link: f"its NIC {nic} is down: {self.nics[nic].reason}"
                for link, nic in self.link_nics.items()
                if nic in self.nics and self.nics[nic].state == "down"}), wall=_wall,
            unix_now=time.time())


def _wall(monotonic: float) -> str:
    """A core timestamp (time.monotonic) as a wall-clock time, ISO 8601 with its offset."""
    return iso_time(time.time() - (time.monotonic() - monotonic))


def wall_clock(note: Notification, offset: float) -> Notification:
    """A core notification in wall-clock time (``offset``: wall clock less the core's):
    its time, and the end of a fencing wait, which its text then names for people."""
    if isinstance(note, FencingRequested) and note.until:
        until = note.until + offset
        return dataclasses.replace(note, time=note.time + offset, until=until,
                                   text=f"{note.text} (until {local_time(iso_time(until))})")
    return dataclasses.replace(note, time=note.time + offset)


#: manual requests on one resource that go through the protocol (cluster-wide state)
_BY_HAND: dict[str, Literal["enable", "disable", "kill"]] = {
    "in_service": "enable", "oo_service": "disable", "force_oos": "kill"}


def _unknown(what: str, name: str, known: Iterable[str]) -> str:
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"no {what} named {name!r}{hint} ({what}s: {', '.join(names)})"


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}
