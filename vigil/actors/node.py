"""NodeActor, the supervisor, and NodeRuntime, which builds one node's actor system.

Children, each its own actor: one ResourceActor per resource, one GroupActor per group, one
LinkActor per NIC, the CoordinatorActor, the DiagnosticsActor, the NotifierActor and the
ControlActor. A child that dies is started again under the same name (a restarted
coordinator comes back from the persisted state and probes the resources, like a daemon
restart); a child that keeps dying takes the node down, loudly, rather than limp on.

A new configuration (:class:`~vigil.actors.messages.Reconfigure`) replaces exactly the
children whose inputs changed (each :class:`Child` says what it is started with): those of
resources and groups added, removed or changed, and the diagnostics, alerts, fencer, NIC
monitors, control and notifier actors when what they read changed; the others keep running,
the same actors. The coordinator and the links are never replaced that way.

Beside them, the node's :class:`~vigil.actors.book.ResourceBook` (what its resources
reported, for status), which the resource actors and the coordinator share; and, when the
configuration has a mirror resource, the node's
:class:`~vigil.resources.replication.MirrorService` (no actor: threads of its own that tell the
coordinator what they find), which the mirror resources are handed, and the control actor
(for `vigil resource discard` / `promote`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import pykka
import zmq

from vigil.actors.base import Directory, VigilActor
from vigil.actors.book import ResourceBook
from vigil.actors.control import ControlActor
from vigil.actors.coordinator import CoordinatorActor
from vigil.actors.diagnostics import DiagnosticsActor
from vigil.actors.group import GroupActor
from vigil.actors.guard import GuardLink
from vigil.actors.link import LinkActor, LinkFactory
from vigil.actors.messages import (
    ChildFailed,
    ChildRestarted,
    Control,
    GetStatus,
    Reconfigure,
    Reconfigured,
    Subscribe,
)
from vigil.actors.nic import NicMonitorActor, NicSources, dampening, link_nics, watched_nics
from vigil.actors.notifier import NotifierActor
from vigil.actors.resource import ResourceActor
from vigil.actors.strategies import load_strategy
from vigil.cluster.events import StageConfig
from vigil.cluster.reconfig import resource_restarts
from vigil.config import (
    ClusterConfig,
    ConfigError,
    NicsConfig,
    ResourceConfig,
    TypeDefaults,
    apply_type_defaults,
    load,
    member_graphs,
)
from vigil.guard.cgroups import NodeCgroups
from vigil.guard.client import GuardClient
from vigil.guard.holdings import Holdings
from vigil.local.access import Access, prepare_runtime_dir
from vigil.local.history import history_path
from vigil.resources.model import Catalog, Resource
from vigil.resources.registry import ResourceTypeRegistry, default_registry
from vigil.status import ClusterStatus
from vigil.transports import Codec, Sequencer
from vigil.transports.keys import LinkKeys, key_ring

if TYPE_CHECKING:
    from vigil.resources.mirror import MirrorResource
    from vigil.resources.replication import MirrorService

log = logging.getLogger(__name__)

RESTARTS_ALLOWED = 5
RESTART_WINDOW = 60.0

Factory = Callable[[], pykka.ActorRef[Any]]


def _is_mirror(resource: Resource) -> TypeGuard[MirrorResource]:
    """Whether ``resource`` is a mirror resource. Its module is imported (by the registry)
    before the first is made: until then none can be, and a node whose configuration has no
    mirror never loads the btrfs and replication machinery (some 50 ms at every start)."""
    module = sys.modules.get("vigil.resources.mirror")
    return module is not None and isinstance(resource, module.MirrorResource)


@dataclass(frozen=True, slots=True)
class Child:
    """How to start one child actor, and what it is started with (``inputs``, compared by
    ``==``): at a reconfiguration, a child whose inputs did not change keeps running."""

    start: Factory
    inputs: object = None


#: How long a child stopped at a reconfiguration may take to stop before it is dropped.
CHILD_STOP_TIMEOUT = 10.0


class NodeActor(VigilActor):
    def __init__(self, name: str, directory: Directory, children: dict[str, Child],
                 left: threading.Event, failed: threading.Event,
                 restarted: Callable[[str], None] | None = None,
                 build: Callable[[ClusterConfig], dict[str, Child]] | None = None,
                 reconfigured: Callable[[Reconfigured], None] | None = None) -> None:
        super().__init__(name, directory)
        self.children = children
        #: told the name of each child started again, once it is in the directory
        self.restarted = restarted
        #: the children of a new configuration (a :class:`Reconfigure`); None: refused
        self.build = build
        #: told what a reconfiguration did, once the new children are in the directory
        self.reconfigured = reconfigured
        self.left = left
        self.failed = failed
        self.restarts: dict[str, list[float]] = {}

    def on_start(self) -> None:
        for name, child in self.children.items():
            self.directory.set(name, child.start())

    def on_stop(self) -> None:
        for child in reversed(list(self.children)):
            ref = self.directory.get(child)
            if ref is not None:
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    ref.stop(block=True, timeout=10.0)

    def on_failure(self, *args: Any) -> None:
        self.failed.set()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ChildFailed):
            self._restart(message)
        elif isinstance(message, Reconfigure):
            return self._reconfigure(message.config)
        elif isinstance(message, Control) and message.command == "left":
            self.left.set()
        return None

    def _restart(self, failed: ChildFailed) -> None:
        now = time.monotonic()
        history = [t for t in self.restarts.get(failed.name, []) if now - t < RESTART_WINDOW]
        if len(history) >= RESTARTS_ALLOWED:
            log.critical("actor %s failed %d times in %.0fs (last: %s); stopping the node",
                         failed.name, len(history) + 1, RESTART_WINDOW, failed.error)
            self.failed.set()
            return
        self.restarts[failed.name] = [*history, now]
        child = self.children.get(failed.name)
        if child is None:
            return
        log.warning("restarting actor %s after: %s", failed.name, failed.error)
        self.directory.set(failed.name, child.start())
        self._started_again(failed.name)
        if self.restarted is not None:
            self.restarted(failed.name)

    def _started_again(self, name: str) -> None:
        """Tell those who work with ``name`` that it is a fresh actor that knows nothing."""
        for group in self.directory.names("group:"):
            self.directory.tell(group, ChildRestarted(name))
        if name != "coordinator":
            self.directory.tell("coordinator", ChildRestarted(name))

    def _reconfigure(self, config: ClusterConfig) -> Reconfigured:
        if self.build is None:
            raise RuntimeError("this node cannot change its configuration while it runs")
        new, old = self.build(config), self.children
        # stopped in the reverse of their start order, started in the new order
        gone = [n for n in reversed(old) if n not in new or new[n].inputs != old[n].inputs]
        fresh = [n for n in new if n not in old or new[n].inputs != old[n].inputs]
        dropped = self._stop_children(gone)
        self.children = new
        for name in gone:
            self.restarts.pop(name, None)
        for name in fresh:
            self.directory.set(name, new[name].start())
        replaced = [n for n in fresh if n in old]
        for name in replaced:
            self._started_again(name)
        done = Reconfigured(started=tuple(n for n in fresh if n not in old),
                            stopped=tuple(n for n in gone if n not in new),
                            replaced=tuple(replaced), dropped=tuple(dropped))
        log.info("reconfigured: %s", "; ".join(
            f"{what} {', '.join(names)}" for what, names in (
                ("started", done.started), ("stopped", done.stopped),
                ("replaced", done.replaced), ("not stopped in time", done.dropped)) if names)
            or "no actor changed")
        if self.reconfigured is not None:
            self.reconfigured(done)
        return done

    def _stop_children(self, names: Iterable[str]) -> list[str]:
        """Stop the children ``names``, all at once, and take them out of the directory; the
        names of those still running after :data:`CHILD_STOP_TIMEOUT` (left behind)."""
        stopping: list[tuple[str, pykka.Future[Any]]] = []
        for name in names:
            ref = self.directory.get(name)
            self.directory.remove(name)
            if ref is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    stopping.append((name, ref.stop(block=False)))
        deadline = time.monotonic() + CHILD_STOP_TIMEOUT
        dropped = []
        for name, future in stopping:
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except pykka.Timeout:
                log.error("actor %s did not stop within %gs; dropped (it may still run)",
                          name, CHILD_STOP_TIMEOUT)
                dropped.append(name)
            except pykka.ActorDeadError:
                pass
        return dropped


#: The runtimes started in this process and not stopped (for vigil.api's default runtime).
_running: weakref.WeakSet[NodeRuntime] = weakref.WeakSet()
_running_lock = threading.Lock()


def running_runtimes() -> list[NodeRuntime]:
    with _running_lock:
        return list(_running)


class Flag(threading.Event):
    """An event that also sets another, which one thread waits on for several of them."""

    def __init__(self, attention: threading.Event) -> None:
        super().__init__()
        self._attention = attention

    def set(self) -> None:
        super().set()
        self._attention.set()


class NodeRuntime:
    """One node's actor system. ``start()`` builds it; ``stop()`` tears it down. ``key`` is
    the key file's content (:func:`vigil.config.load_key`): one key, or two during a rotation
    (:func:`vigil.transports.keys.key_ring`)."""

    def __init__(self, config: ClusterConfig, node: str, key: bytes,
                 link_factory: Callable[[str, str], LinkFactory],
                 registry: ResourceTypeRegistry | None = None,
                 runtime_dir: Path | None = None,
                 guard: GuardClient | None = None, watch_nics: bool = True,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        self.registry = registry or default_registry()
        # Timeouts the file leaves out come from the resource types (OCF meta-data).
        self.config = config = apply_type_defaults(config, self._type_defaults)
        self.node = node
        self.key = key
        self.link_factory = link_factory
        #: the connection to this node's guardian (``vigil node run`` makes one); None: no
        #: guardian, e.g. nodes run in a test process
        self.guard = guard
        #: whether NIC monitors watch this host's interfaces (off: every NIC counts as up)
        self.watch_nics = watch_nics
        #: the daemon's ZeroMQ context, shared by the mirror receiver (None: its own)
        self.context = context
        #: replication of the mirror resources' data (None: the configuration has none)
        self.mirrors: MirrorService | None = None
        self.runtime_dir = runtime_dir or config.nodes[node].runtime_dir
        self.directory = Directory()
        #: what the resources here reported, for status: the resource actors' workers and
        #: the coordinator write it (vigil/actors/book.py)
        self.book = ResourceBook(config.resources)
        #: set with ``left`` and ``failed``: the daemon's main thread sleeps on it alone
        self.attention = threading.Event()
        self.left: threading.Event = Flag(self.attention)
        self.failed: threading.Event = Flag(self.attention)
        self.executor: ThreadPoolExecutor | None = None
        self.ref: pykka.ActorRef[Any] | None = None
        self.nic_sources: NicSources | None = None
        self.missing_types = self._missing_types(config)
        #: the resources of the configuration that can run here (built by start())
        self.catalog: Catalog | None = None
        #: group -> its members in the catalog, for the guardian (swapped whole)
        self._members: dict[str, list[Resource]] = {}
        #: each resource's cgroup under the guardian (None: none, or no guardian)
        self.cgroups: NodeCgroups | None = None
        # made once by start(), for every configuration: the node's identity on the links
        self.codec: Codec | None = None
        self.sequencer: Sequencer | None = None
        self.guard_link: GuardLink | None = None
        self.carriers: dict[str, str] = {}  # link -> the NIC that holds its address here
        self._nics_watched: tuple[list[str], NicsConfig] | None = None

    def read_config(self, wanted: str = "") -> StageConfig:
        """The configuration file read again and checked as at start (``wanted``: the digest
        another node's reload asked for), for the core to stage (vigil.cluster.reconfig)."""
        path = self.config.path
        try:
            new = load(path)
            load_strategy(new.strategy)
        except ConfigError as exc:
            return StageConfig(None, problem=f"{path} has problems:\n{exc}", wanted=wanted)
        except Exception as exc:  # a strategy plug-in that does not load
            return StageConfig(None, problem=f"{path}: strategy {exc}", wanted=wanted)
        problems = [f"resources.{r.name}.params: {p}" for r in new.resources.values()
                    if r.type in self.registry
                    for p in self.registry.get(r.type).check_params(r.params)]
        if problems:
            return StageConfig(None, problem=f"{path} has problems:\n" + "\n".join(problems),
                               wanted=wanted)
        return StageConfig(apply_type_defaults(new, self._type_defaults),
                           self._missing_types(new), wanted=wanted)

    def _type_defaults(self, r: ResourceConfig) -> TypeDefaults | None:
        return self.registry.get(r.type).defaults() if r.type in self.registry else None

    def _missing_types(self, config: ClusterConfig) -> frozenset[str]:
        return frozenset(r.type for r in config.resources.values() if r.type not in self.registry)

    def start(self) -> NodeRuntime:
        cfg, node, d = self.config, self.node, self.directory
        access = Access(cfg.admin_group, cfg.status_group)
        prepare_runtime_dir(self.runtime_dir, access)  # the daemon's own, or UnsafePath
        self.executor = ThreadPoolExecutor(max_workers=max(4, 2 * len(cfg.resources)),
                                           thread_name_prefix=f"vigil-agent-{node}")
        if self.guard is not None:
            self.cgroups = self._resource_cgroups()
        catalog = self._catalog(cfg)
        ring = key_ring(self.key)
        self.mirrors = self._mirror_service(catalog, ring)
        self.codec = Codec(cfg.name, ring[0], cfg.node_names, node, also_accept=ring[1:])
        self.sequencer = Sequencer(node)
        if self.guard is not None:
            self.guard_link = GuardLink(self.guard, self._holdings_of,
                                        self.sequencer.incarnation)
        # link -> the interface that holds its address here (one netlink query)
        self.carriers = link_nics(cfg, node) if self.watch_nics else {}
        self.ref = NodeActor.start("node", d, self._children(cfg, catalog), self.left,
                                   self.failed, self._restarted, self._rebuild,
                                   self._reconfigured)
        d.set("node", self.ref)
        # on_start runs on the actor's thread: wait until every child is in the directory
        self.ref.ask(Control("ready"), timeout=30.0)
        self._wait_for_sockets()
        # the kernel's word on the NICs, once their monitors are there to hear it
        self._watch_nics()
        if self.mirrors is not None:  # its first reports go to the coordinator, there now
            self.mirrors.start()
        with _running_lock:
            _running.add(self)
        return self

    def reconfigure(self, config: ClusterConfig, timeout: float = 60.0) -> Reconfigured:
        """Run ``config`` from now on: the node actor replaces the child actors whose inputs
        changed and leaves the others running (:class:`Reconfigure`). The coordinator's core
        takes the configuration through the transition protocol, not from here."""
        if self.ref is None:
            raise RuntimeError(f"node {self.node} is not running")
        return cast(Reconfigured, self.ref.ask(Reconfigure(config), timeout=timeout))

    def _rebuild(self, config: ClusterConfig) -> dict[str, Child]:
        """The children of ``config`` (on the node actor's thread, at a reconfiguration)."""
        config = apply_type_defaults(config, self._type_defaults)  # as at start; idempotent
        catalog = self._catalog(config)
        children = self._children(config, catalog)
        self.config = config
        return children

    def _reconfigured(self, done: Reconfigured) -> None:
        self._wait_for_sockets()
        self._watch_nics()

    def _wait_for_sockets(self) -> None:
        """Return once the local sockets are bound (in their actors' on_start): an ask is
        answered only after on_start, so callers may use the sockets once start() (or a
        reconfiguration) returns."""
        for name in ("control", "notifier"):
            ref = self.directory.get(name)
            if ref is not None:
                ref.ask(Control("ping"), timeout=30.0)

    def _children(self, cfg: ClusterConfig, catalog: Catalog) -> dict[str, Child]:
        """The node's child actors for ``cfg``, in the order they start, each with what it
        is started with. The coordinator and the links are never replaced: the coordinator
        takes a new configuration through its core, and the links cannot change live."""
        node, d, executor, book = self.node, self.directory, self.executor, self.book
        codec, sequencer, guard_link, carriers = (self.codec, self.sequencer, self.guard_link,
                                                  self.carriers)
        assert executor is not None and codec is not None and sequencer is not None
        access = Access(cfg.admin_group, cfg.status_group)
        here = cfg.nodes[node]
        children: dict[str, Child] = {}
        history = history_path(self.runtime_dir)
        children["notifier"] = Child(lambda: NotifierActor.start(
            "notifier", d, here.event_socket, access, history), (here.event_socket, access))
        if cfg.alerts:  # its module only where alerts are configured
            from vigil.actors.alerts import AlertsActor

            children["alerts"] = Child(
                lambda: AlertsActor.start("alerts", d, node, cfg.alerts), cfg.alerts)
        for res in catalog:  # the same Resource while its configuration is the same
            children[f"resource:{res.name}"] = Child(partial(
                ResourceActor.start, f"resource:{res.name}", d, res, executor, book), res)
        graphs = member_graphs(cfg)
        for group, gcfg in cfg.groups.items():
            # the order the core and the simulator use (ties by name): one order everywhere
            order = [r for r in graphs[group].start_order() if r in catalog]
            dependents = {r: graphs[group].transitive_dependents(r) for r in gcfg.resources}
            children[f"group:{group}"] = Child(partial(
                GroupActor.start, f"group:{group}", d, group, order, dependents),
                (order, dependents))
        present = frozenset(r.name for r in catalog)
        children["diagnostics"] = Child(
            lambda: DiagnosticsActor.start("diagnostics", d, cfg, present),
            (present, {r: (c.group, c.monitor, c.on_fail) for r, c in cfg.resources.items()},
             {g: c.resources for g, c in cfg.groups.items()}))
        if cfg.fence_devices:  # runs the levels the core decides, monitors the devices
            # imported only here: the fence agents' modules (OCF meta-data, XML) are of no
            # use to a node without fence devices
            from vigil.actors.fencer import FencerActor

            children["fencer"] = Child(lambda: FencerActor.start("fencer", d, cfg),
                                       (cfg.fence_devices, cfg.node_names))
        state_path = self.runtime_dir / "state.json"
        missing = self.missing_types
        children["coordinator"] = Child(lambda: CoordinatorActor.start(
            "coordinator", d, cfg, node, codec, sequencer, state_path, missing, guard_link,
            carriers, self.read_config, book))
        rule = dampening(cfg.nics)
        for nic in self._watched_nics(cfg):
            children[f"nic:{nic}"] = Child(
                partial(NicMonitorActor.start, f"nic:{nic}", d, nic, rule), rule)
        for link in here.links:
            factory = self.link_factory(node, link.name)
            children[f"link:{link.name}"] = Child(partial(
                LinkActor.start, f"link:{link.name}", d, link.name, codec, factory,
                cfg.timing.dead_time / 8))
        children["control"] = Child(lambda: ControlActor.start(
            "control", d, here.control_socket, access, self.mirrors, history),
            (here.control_socket, access))
        return children

    def _catalog(self, cfg: ClusterConfig) -> Catalog:
        """The resources of ``cfg`` that can run here (their type is installed); one whose
        configuration is the same as in the last catalog is the same object (its actor keeps
        running with it). Made the runtime's catalog."""
        previous = self.catalog
        # The same object while nothing that needs a restart changed (a timeout, the
        # monitor): a new one would not know the processes the old one started.
        kept = {r.name for r in previous or () if r.name in cfg.resources
                and not resource_restarts(r.config, cfg.resources[r.name])}
        missing = self._missing_types(cfg)
        fresh: dict[str, Resource] = {}
        for rcfg in cfg.resources.values():  # all made before anything changes
            if rcfg.type in missing:
                log.warning("resource %s: type %r is not installed on %s; its group %s "
                            "cannot run here", rcfg.name, rcfg.type, self.node, rcfg.group)
            elif rcfg.name not in kept:
                fresh[rcfg.name] = self.registry.get(rcfg.type).instantiate(
                    rcfg, self.node, self.runtime_dir)
        catalog = Catalog()
        for name in cfg.resources:
            if previous is not None and name in kept:
                res = previous.remove(name)
                res.reconfigure(cfg.resources[name])
                catalog.add(res)
            elif name in fresh:
                res = fresh[name]
                if self.cgroups is not None:
                    res.cgroups = self.cgroups  # what it starts goes into a cgroup of its own
                if _is_mirror(res):
                    res.service = self.mirrors  # None at start: _mirror_service sets it
                catalog.add(res)
        catalog.add_configured_dependencies()
        self.missing_types = missing
        self.catalog = catalog
        self._members = {g: [catalog.find_resource(r) for r in c.resources if r in catalog]
                         for g, c in cfg.groups.items()}
        return catalog

    def _watched_nics(self, cfg: ClusterConfig) -> list[str]:
        return watched_nics(cfg, self.carriers.values()) if self.watch_nics else []

    def _watch_nics(self) -> None:
        """Feed the NIC monitors of the current configuration what the kernel and the probes
        say (anew when the NICs watched or how changed)."""
        cfg = self.config
        watched = (self._watched_nics(cfg), cfg.nics)
        if self._nics_watched == watched:
            return
        if self.nic_sources is not None:
            self.nic_sources.close()
        self._nics_watched = watched
        self.nic_sources = NicSources(self.directory, *watched)
        self.nic_sources.start()

    def _restarted(self, child: str) -> None:
        """A child actor was started again: a new coordinator has lost what the mirror
        service told the old one (an idle copy would not be told again)."""
        if child == "coordinator" and self.mirrors is not None:
            self.mirrors.report_again()

    def _mirror_service(self, catalog: Catalog, ring: tuple[bytes, ...]
                        ) -> MirrorService | None:
        """The node's replication service, handed to its mirror resources; None without
        any."""
        mirrors = [r for r in catalog if _is_mirror(r)]
        if not mirrors:
            return None
        from vigil.resources.replication import MirrorService, MirrorSpec

        cfg, directory = self.config, self.directory
        service = MirrorService(
            self.node, [MirrorSpec.of(r.name, r.config.params) for r in mirrors],
            {n: c.replication_endpoint for n, c in cfg.nodes.items()},
            LinkKeys.derive(ring, cfg.name, cfg.node_names, self.node),
            partial(directory.tell, "coordinator"), context=self.context)
        for resource in mirrors:
            resource.service = service
        return service

    def _resource_cgroups(self) -> NodeCgroups | None:
        cgroups = NodeCgroups(self.node, cluster=self.config.name)
        problem = cgroups.problem()
        if problem is not None:
            log.warning("no cgroups for the resources of %s (%s): the guardian kills their "
                        "process groups only", self.node, problem)
            return None
        return cgroups

    def _holdings_of(self, groups: Iterable[str]) -> Holdings:
        """What ``groups`` hold here, by the members the current configuration gives them."""
        members = self._members
        return Holdings.of(res.holding() for g in sorted(groups) for res in members.get(g, ()))

    def coordinator(self) -> pykka.ActorRef[Any]:
        ref = self.directory.get("coordinator")
        if ref is None:
            raise RuntimeError(f"node {self.node} is not running")
        return ref

    def status(self, timeout: float = 5.0) -> ClusterStatus:
        return cast(ClusterStatus, self.coordinator().ask(GetStatus(), timeout=timeout))

    def control(self, command: str, timeout: float = 5.0, **args: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.coordinator().ask(
            Control(command, tuple(sorted(args.items()))), timeout=timeout))

    def subscribe(self, ref: pykka.ActorRef[Any], kinds: frozenset[str] | None = None) -> None:
        self.directory.tell("notifier", Subscribe(ref, kinds))

    def shutdown(self, timeout: float) -> bool:
        """Leave cleanly (groups stopped in reverse order); False if that took too long."""
        try:
            self.control("shutdown")
        except (pykka.ActorDeadError, pykka.Timeout, RuntimeError):
            return False
        return self.left.wait(timeout)

    def stop(self) -> None:
        with _running_lock:
            _running.discard(self)
        if self.nic_sources is not None:
            self.nic_sources.close()
            self.nic_sources = None
        if self.ref is not None:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                self.ref.stop(block=True, timeout=30.0)
            self.ref = None
        if self.mirrors is not None:
            self.mirrors.close()
            self.mirrors = None
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
