"""NodeActor, the supervisor, and NodeRuntime, which builds one node's actor system.

Children, each its own actor: one ResourceActor per resource, one GroupActor per group, one
LinkActor per NIC, the CoordinatorActor, the DiagnosticsActor, the NotifierActor and the
ControlActor. A child that dies is started again under the same name (a restarted
coordinator comes back from the persisted state and probes the resources, like a daemon
restart); a child that keeps dying takes the node down, loudly, rather than limp on.

Beside them, when the configuration has a mirror resource, the node's
:class:`~vigil.resources.replication.MirrorService` (no actor: threads of its own that tell the
coordinator what they find), which the mirror resources are handed, and the control actor
(for `vigil resource discard` / `promote`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, cast

import pykka
import zmq

from vigil.actors.base import Directory, VigilActor
from vigil.actors.control import ControlActor
from vigil.actors.coordinator import CoordinatorActor
from vigil.actors.diagnostics import DiagnosticsActor
from vigil.actors.fencer import FencerActor
from vigil.actors.group import GroupActor
from vigil.actors.guard import GuardLink
from vigil.actors.link import LinkActor, LinkFactory
from vigil.actors.messages import ChildFailed, ChildRestarted, Control, GetStatus, Subscribe
from vigil.actors.nic import NicMonitorActor, NicSources, dampening, link_nics, watched_nics
from vigil.actors.notifier import NotifierActor
from vigil.actors.resource import ResourceActor
from vigil.config import (
    ClusterConfig,
    ResourceConfig,
    TypeDefaults,
    apply_type_defaults,
    member_graphs,
)
from vigil.guard.cgroups import NodeCgroups
from vigil.guard.client import GuardClient
from vigil.guard.holdings import Holdings
from vigil.local.access import Access, prepare_runtime_dir
from vigil.local.history import history_path
from vigil.resources.mirror import MirrorResource
from vigil.resources.model import Catalog
from vigil.resources.registry import ResourceTypeRegistry, default_registry
from vigil.resources.replication import MirrorService, MirrorSpec
from vigil.status import ClusterStatus
from vigil.transports import Codec, Sequencer
from vigil.transports.keys import LinkKeys, key_ring

log = logging.getLogger(__name__)

RESTARTS_ALLOWED = 5
RESTART_WINDOW = 60.0

Factory = Callable[[], pykka.ActorRef[Any]]


class NodeActor(VigilActor):
    def __init__(self, name: str, directory: Directory, factories: dict[str, Factory],
                 left: threading.Event, failed: threading.Event,
                 restarted: Callable[[str], None] | None = None) -> None:
        super().__init__(name, directory)
        self.factories = factories
        #: told the name of each child started again, once it is in the directory
        self.restarted = restarted
        self.left = left
        self.failed = failed
        self.restarts: dict[str, list[float]] = {}

    def on_start(self) -> None:
        for child, factory in self.factories.items():
            self.directory.set(child, factory())

    def on_stop(self) -> None:
        for child in reversed(list(self.factories)):
            ref = self.directory.get(child)
            if ref is not None:
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    ref.stop(block=True, timeout=10.0)

    def on_failure(self, *args: Any) -> None:
        self.failed.set()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ChildFailed):
            self._restart(message)
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
        factory = self.factories.get(failed.name)
        if factory is None:
            return
        log.warning("restarting actor %s after: %s", failed.name, failed.error)
        self.directory.set(failed.name, factory())
        for name in self.directory.names("group:"):
            self.directory.tell(name, ChildRestarted(failed.name))
        if self.restarted is not None:
            self.restarted(failed.name)


#: The runtimes started in this process and not stopped (for vigil.api's default runtime).
_running: weakref.WeakSet[NodeRuntime] = weakref.WeakSet()
_running_lock = threading.Lock()


def running_runtimes() -> list[NodeRuntime]:
    with _running_lock:
        return list(_running)


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
        self.left = threading.Event()
        self.failed = threading.Event()
        self.executor: ThreadPoolExecutor | None = None
        self.ref: pykka.ActorRef[Any] | None = None
        self.nic_sources: NicSources | None = None
        self.missing_types = frozenset(
            r.type for r in config.resources.values() if r.type not in self.registry)

    def _type_defaults(self, r: ResourceConfig) -> TypeDefaults | None:
        return self.registry.get(r.type).defaults() if r.type in self.registry else None

    def start(self) -> NodeRuntime:
        cfg, node, d = self.config, self.node, self.directory
        access = Access(cfg.admin_group, cfg.status_group)
        prepare_runtime_dir(self.runtime_dir, access)  # the daemon's own, or UnsafePath
        self.executor = ThreadPoolExecutor(max_workers=max(4, 2 * len(cfg.resources)),
                                           thread_name_prefix=f"vigil-agent-{node}")
        executor = self.executor
        catalog = Catalog()
        for rcfg in cfg.resources.values():
            if rcfg.type in self.missing_types:
                log.warning("resource %s: type %r is not installed on %s; its group %s "
                            "cannot run here", rcfg.name, rcfg.type, node, rcfg.group)
                continue
            catalog.add(self.registry.get(rcfg.type).instantiate(rcfg, node, self.runtime_dir))
        catalog.add_configured_dependencies()
        ring = key_ring(self.key)
        self.mirrors = self._mirror_service(catalog, ring)
        codec = Codec(cfg.name, ring[0], cfg.node_names, node, also_accept=ring[1:])
        sequencer = Sequencer(node)
        guard_link = (self._guard_link(catalog, sequencer.incarnation)
                      if self.guard is not None else None)
        factories: dict[str, Factory] = {}
        from vigil.actors.alerts import AlertsActor

        factories["notifier"] = lambda: NotifierActor.start(
            "notifier", d, cfg.nodes[node].event_socket, access,
            history_path(self.runtime_dir))
        if cfg.alerts:
            factories["alerts"] = lambda: AlertsActor.start("alerts", d, node, cfg.alerts)
        for res in catalog:
            factories[f"resource:{res.name}"] = partial(
                ResourceActor.start, f"resource:{res.name}", d, res, executor)
        graphs = member_graphs(cfg)
        for group, gcfg in cfg.groups.items():
            # the order the core and the simulator use (ties by name): one order everywhere
            order = [r for r in graphs[group].start_order() if r in catalog]
            dependents = {r: graphs[group].transitive_dependents(r) for r in gcfg.resources}
            factories[f"group:{group}"] = partial(
                GroupActor.start, f"group:{group}", d, group, order, dependents)
        present = frozenset(r.name for r in catalog)
        factories["diagnostics"] = lambda: DiagnosticsActor.start("diagnostics", d, cfg, present)
        if cfg.fence_devices:  # runs the levels the core decides, monitors the devices
            factories["fencer"] = lambda: FencerActor.start("fencer", d, cfg)
        state_path = self.runtime_dir / "state.json"
        # link -> the interface that holds its address here (one netlink query)
        carriers = link_nics(cfg, node) if self.watch_nics else {}
        factories["coordinator"] = lambda: CoordinatorActor.start(
            "coordinator", d, cfg, node, codec, sequencer, state_path, self.missing_types,
            guard_link, carriers)
        nics = watched_nics(cfg, carriers.values()) if self.watch_nics else []
        rule = dampening(cfg.nics)
        for nic in nics:
            factories[f"nic:{nic}"] = partial(NicMonitorActor.start, f"nic:{nic}", d, nic, rule)
        for link in cfg.nodes[node].links:
            factory = self.link_factory(node, link.name)
            factories[f"link:{link.name}"] = partial(
                LinkActor.start, f"link:{link.name}", d, link.name, codec, factory)
        mirrors = self.mirrors
        factories["control"] = lambda: ControlActor.start(
            "control", d, cfg.nodes[node].control_socket, access, mirrors,
            history_path(self.runtime_dir))
        self.ref = NodeActor.start("node", d, factories, self.left, self.failed,
                                   self._restarted)
        d.set("node", self.ref)
        # on_start runs on the actor's thread: wait until every child is in the directory
        self.ref.ask(Control("ready"), timeout=30.0)
        # ... and until the local sockets are bound (in those actors' on_start): an ask is
        # answered only after on_start, so callers may use the sockets once start() returns.
        for name in ("control", "notifier"):
            ref = d.get(name)
            if ref is not None:
                ref.ask(Control("ping"), timeout=30.0)
        # the kernel's word on the NICs, once their monitors are there to hear it
        self.nic_sources = NicSources(d, nics, cfg.nics)
        self.nic_sources.start()
        if self.mirrors is not None:  # its first reports go to the coordinator, there now
            self.mirrors.start()
        with _running_lock:
            _running.add(self)
        return self

    def _restarted(self, child: str) -> None:
        """A child actor was started again: a new coordinator has lost what the mirror
        service told the old one (an idle copy would not be told again)."""
        if child == "coordinator" and self.mirrors is not None:
            self.mirrors.report_again()

    def _mirror_service(self, catalog: Catalog, ring: tuple[bytes, ...]
                        ) -> MirrorService | None:
        """The node's replication service, handed to its mirror resources; None without
        any."""
        mirrors = [r for r in catalog if isinstance(r, MirrorResource)]
        if not mirrors:
            return None
        cfg, directory = self.config, self.directory
        service = MirrorService(
            self.node, [MirrorSpec.of(r.name, r.config.params) for r in mirrors],
            {n: c.replication_endpoint for n, c in cfg.nodes.items()},
            LinkKeys.derive(ring, cfg.name, cfg.node_names, self.node),
            partial(directory.tell, "coordinator"), context=self.context)
        for resource in mirrors:
            resource.service = service
        return service

    def _guard_link(self, catalog: Catalog, incarnation: int) -> GuardLink:
        assert self.guard is not None
        cgroups = NodeCgroups(self.node, cluster=self.config.name)
        problem = cgroups.problem()
        if problem is None:
            for res in catalog:
                res.cgroups = cgroups  # what they start goes into a cgroup of their own
        else:
            log.warning("no cgroups for the resources of %s (%s): the guardian kills their "
                        "process groups only", self.node, problem)
        members = {g: [catalog.find_resource(r) for r in c.resources if r in catalog]
                   for g, c in self.config.groups.items()}

        def holdings_of(groups: Iterable[str]) -> Holdings:
            return Holdings.of(res.holding() for g in sorted(groups) for res in members[g])

        return GuardLink(self.guard, holdings_of, incarnation)

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
