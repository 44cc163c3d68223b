"""The seed's resource model: Resource, ResourceType, the resource list and the catalog.

A *resource* is one thing a node can provide: an IP address, a filesystem, an application.
Every node holds one :class:`Resource` object per configured resource (the whole cluster's
configuration lives on every node), and brings it in or out of service when the cluster
decides. A *resource type* (the seed's resource_type; an "agent") knows how to do that for one
kind of thing and makes the objects (:meth:`ResourceType.instantiate`).

The seed's semantics, enforced here once so that every agent keeps them:

- ``in_service()`` on a resource that is in service succeeds without acting;
- a stop (``oo_service`` / ``force_oos``) of a stopped resource succeeds;
- a start that fails leaves the resource FAILED (it needs recovery: a stop, then maybe a start
  elsewhere); a stop that fails leaves it UNCLEAN, and only fencing the node (followed by
  ``mark_oos()``) clears that;
- ``force_oos()`` interrupts a start that is still running in another thread.

The seed's names are kept: ``provided_by``, ``service_state``, ``in_service``, ``oo_service``,
``force_oos``, ``mark_oos``, ``dependson_list``, ``dependents_list``, ``find_resource``,
``dependson``, ``instantiate``, ``typename``. Its "static member functions" ``find_resource`` and
``dependson`` are the module-level functions at the end, which act on a :class:`Catalog`: one
per node, so that several nodes can live in one test process; the daemon uses
:func:`default_catalog`.
"""

from __future__ import annotations

import abc
import difflib
import enum
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Final, overload

from vigil.config import (
    MAX_DURATION,
    MonitorConfig,
    ParamValue,
    ResourceConfig,
    TypeDefaults,
)
from vigil.graph import DependencyCycle, DependencyGraph, find_cycle
from vigil.guard.holdings import ResourceHolding

if TYPE_CHECKING:
    from vigil.guard.cgroups import NodeCgroups

__all__ = [
    "Catalog",
    "DependencyCycle",
    "OpResult",
    "Resource",
    "ResourceList",
    "ResourceType",
    "ServiceState",
    "UnknownResource",
    "UnknownResourceType",
    "default_catalog",
    "dependson",
    "find_resource",
    "parse_seconds",
    "unknown_params",
]

log = logging.getLogger(__name__)

#: How long ``force_oos`` waits for an interrupted start to notice its cancel event before it
#: stops the resource anyway, concurrently with the stuck start.
CANCEL_WAIT: Final = 2.0


class ServiceState(enum.Enum):
    """Where a resource stands on this node.

    IN_SERVICE
        Running and provided by this node.
    OOS
        Out of service: cleanly stopped (or never started) here.
    PENDING_OOS
        Going out of service: a stop (graceful or forced) is running.
    PENDING_IN_SERVICE
        Starting: a start is running.
    FAILED
        A start or a monitor failed. The resource may be half up; it needs recovery (a stop)
        before it can be trusted again. A stop of a FAILED resource is allowed.
    UNCLEAN
        A stop failed: nobody knows whether it still runs, so it must not be started anywhere
        else until this node is fenced. Only ``mark_oos()`` (after fencing) clears it.
    UNKNOWN
        Not yet probed (e.g. just after the daemon started); ``monitor()`` finds out.
    """

    IN_SERVICE = "in_service"
    OOS = "oos"
    PENDING_OOS = "pending_oos"
    PENDING_IN_SERVICE = "pending_in_service"
    FAILED = "failed"
    UNCLEAN = "unclean"
    UNKNOWN = "unknown"


_PROVIDED_STATES: Final = frozenset(
    {ServiceState.IN_SERVICE, ServiceState.PENDING_IN_SERVICE, ServiceState.PENDING_OOS}
)


@dataclass(frozen=True, slots=True)
class OpResult:
    """The outcome of one agent operation.

    ``ok`` says whether the operation did what was asked (for ``monitor``: the resource is as
    expected, not failed); ``state`` is what the resource is now; ``reason`` is for humans and
    logs ("exit code 1 from health command 'curl ...'", "start timed out after 20s");
    ``duration`` is in seconds.
    """

    ok: bool
    state: ServiceState
    reason: str
    duration: float = 0.0

    @classmethod
    def success(cls, state: ServiceState, reason: str) -> OpResult:
        return cls(ok=True, state=state, reason=reason)

    @classmethod
    def failure(cls, state: ServiceState, reason: str) -> OpResult:
        return cls(ok=False, state=state, reason=reason)


class UnknownResource(KeyError):
    """A resource name that a catalog does not hold. The message lists close names."""

    def __init__(self, name: str, known: Iterable[str], where: str = "") -> None:
        self.name = name
        known_sorted = sorted(known)
        close = difflib.get_close_matches(name, known_sorted, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(known_sorted[:20]) + (", ..." if len(known_sorted) > 20 else "")
        place = f" {where}" if where else ""
        self.message = f"no resource named {name!r}{place} (known: {shown or 'none'}){hint}"
        super().__init__(self.message)

    def __str__(self) -> str:
        # KeyError's own __str__ shows the repr of its argument, quotes and all.
        return self.message


class UnknownResourceType(KeyError):
    """No resource type of that name; the message lists the known ones."""

    def __init__(self, typename: str, known: Iterable[str]) -> None:
        self.typename = typename
        known_sorted = sorted(known)
        close = difflib.get_close_matches(typename, known_sorted, n=2)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        self.message = (f"unknown resource type {typename!r} (known types: "
                        f"{', '.join(known_sorted) or 'none'}){hint}")
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_seconds(value: ParamValue) -> float:
    """A duration parameter in seconds: a number, or a string such as "0.2s", "200ms", "2m".

    Raises ValueError saying what was expected.
    """
    if isinstance(value, bool | list):
        raise ValueError(f"expected a duration such as 0.5, \"200ms\" or \"2s\", got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(value)
        if match is None:
            raise ValueError(
                f"expected a duration such as 0.5, \"200ms\" or \"2s\", got {value!r}"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"a duration must be a finite number of seconds >= 0, got {value!r}")
    if seconds > MAX_DURATION:
        raise ValueError(f"a duration must be at most {MAX_DURATION / 3600:g}h, got {value!r}")
    return seconds


def unknown_params(params: Mapping[str, ParamValue], known: Iterable[str]) -> list[str]:
    """One problem per parameter not in ``known``, with a spelling hint (for check_params)."""
    known_sorted = sorted(known)
    problems = []
    for key in sorted(params):
        if key not in known_sorted:
            close = difflib.get_close_matches(key, known_sorted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"unknown parameter {key!r} (known: {', '.join(known_sorted)}){hint}"
            )
    return problems


class ResourceList(Sequence["Resource"]):
    """The seed's resource-list: an immutable sequence of resources.

    The seed walks it with ``next()`` and ``resource()`` on list items; in Python it is simply
    iterated (``for r in resource.dependson_list()``) and indexed.
    """

    __slots__ = ("_items",)

    def __init__(self, resources: Iterable[Resource] = ()) -> None:
        self._items: tuple[Resource, ...] = tuple(resources)

    @overload
    def __getitem__(self, index: int) -> Resource: ...

    @overload
    def __getitem__(self, index: slice) -> ResourceList: ...

    def __getitem__(self, index: int | slice) -> Resource | ResourceList:
        if isinstance(index, slice):
            return ResourceList(self._items[index])
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Resource]:
        return iter(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResourceList):
            return self._items == other._items
        if isinstance(other, Sequence) and not isinstance(other, str):
            return self._items == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._items)

    def names(self) -> list[str]:
        return [r.name for r in self._items]

    def __repr__(self) -> str:
        return f"ResourceList({self.names()!r})"


class ResourceType(abc.ABC):
    """The seed's resource_type: one kind of resource (an agent) and its factory.

    Implementations are stateless; one instance is registered per process (see
    :mod:`vigil.resources.registry`) and makes one :class:`Resource` per configured resource
    and node.
    """

    @abc.abstractmethod
    def typename(self) -> str:
        """The name used in configuration files (``type = "application"``)."""

    @abc.abstractmethod
    def instantiate(self, config: ResourceConfig, node: str, runtime_dir: Path) -> Resource:
        """Make the resource object for ``config`` on ``node``; no I/O beyond paths."""

    def check_params(self, params: Mapping[str, ParamValue]) -> list[str]:
        """Problems with ``params``, one sentence each, for ``vigil config check``."""
        return []

    def default_monitor(self) -> MonitorConfig:
        """The monitor interval and timeout when the configuration gives none."""
        return MonitorConfig(interval=10.0, timeout=20.0)

    def defaults(self) -> TypeDefaults:
        """Monitor and operation timeouts for keys the configuration leaves out."""
        return TypeDefaults(self.default_monitor())

    def validate(self, config: ResourceConfig) -> list[str]:
        """Deeper checks of one configured resource on this machine (an OCF agent's
        ``validate-all``), one sentence per problem, for ``vigil config check``. Unlike
        :meth:`check_params` this may run programs; it must not change anything."""
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.typename()!r}>"


class Resource(abc.ABC):
    """One configured resource on one node (the seed's resource object).

    **These methods block**: they run agents, which may take up to ``start_timeout`` or
    ``stop_timeout`` seconds. An actor calls them from a worker thread and is told the result;
    it never calls them inside ``on_receive``.

    Thread safety: every public method may be called from any thread. A lock guards the
    recorded state; the agent call itself runs outside it, under a second lock that serializes
    agent operations, so that ``force_oos()`` can set the cancel event of a start running in
    another thread and then stop the resource.

    Subclasses implement three agent operations and keep to the timeouts in ``config``
    (``start_timeout``, ``stop_timeout``, ``monitor.timeout``); the base class measures
    durations and applies the state rules in the module docstring:

    - ``_start(cancel)``: bring it up; return early with a failure when ``cancel`` is set,
      undoing what was begun;
    - ``_stop(force)``: take it down (``force``: at once, e.g. SIGKILL); a stop of something
      not running succeeds;
    - ``_monitor()``: answer with state IN_SERVICE (running), FAILED, or OOS (cleanly stopped).

    Exceptions raised by these become failed results with the exception in the reason.
    """

    def __init__(
        self, rtype: ResourceType, config: ResourceConfig, node: str, runtime_dir: Path
    ) -> None:
        problems = rtype.check_params(config.params)
        if problems:
            raise ValueError(
                f"resource {config.name!r} ({rtype.typename()}): " + "; ".join(problems))
        self._type = rtype
        self._config = config
        self._node = node
        self.runtime_dir = runtime_dir
        self._state = ServiceState.UNKNOWN
        self._reason = "not yet probed"
        self._state_lock = threading.Lock()
        self._op_lock = threading.Lock()
        self._cancel = threading.Event()
        # Bumped by every operation that sets the state, so that an operation overtaken by a
        # later one (a start interrupted by force_oos) does not overwrite the newer state.
        self._generation = 0
        self._catalog: Catalog | None = None
        #: the node's cgroups, when its guardian is to kill what this resource runs: the
        #: processes it starts go into a cgroup of its own (set by the node runtime)
        self.cgroups: NodeCgroups | None = None

    def reconfigure(self, config: ResourceConfig) -> None:
        """Take settings that need no restart (timeouts, monitor, on_fail: read at each
        operation) from a new configuration of the same resource: the object, and what it
        knows of what it started, stay."""
        if not self._config.same_instance(config):
            raise ValueError(f"resource {config.name!r}: its type, group, parameters or "
                             "dependencies changed: it is made anew, not reconfigured")
        self._config = config

    # -- what the node's guardian must remove if this node is fenced -------------------------

    def holding(self) -> ResourceHolding:
        """What this resource holds while in service, for the node's guardian: its cgroup
        (the processes it started) here; types that add addresses or mounts add those."""
        cgroup = self.cgroups.resource_path(self.name) if self.cgroups is not None else None
        return ResourceHolding(self.name, cgroup=None if cgroup is None else str(cgroup))

    def in_cgroup(self, argv: Sequence[str]) -> list[str]:
        """``argv`` started inside this resource's cgroup (as it is, without cgroups)."""
        if self.cgroups is None:
            return list(argv)
        from vigil.guard.cgroups import CgroupError  # it reads mounts with the filesystem type

        try:
            self.cgroups.create(self.name)
            return self.cgroups.wrap(self.name, argv)
        except CgroupError as exc:
            log.warning("resource %s: runs outside its cgroup (%s): the guardian can only "
                        "kill its process group", self.name, exc)
            return list(argv)

    # -- identity (the seed's name(), type()) -------------------------------------------------

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def type(self) -> ResourceType:
        return self._type

    @property
    def group(self) -> str:
        return self._config.group

    @property
    def config(self) -> ResourceConfig:
        return self._config

    @property
    def node(self) -> str:
        return self._node

    @property
    def catalog(self) -> Catalog | None:
        return self._catalog

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r} type={self._type.typename()!r} "
            f"node={self._node!r} {self.service_state().name}>"
        )

    # -- state --------------------------------------------------------------------------------

    def service_state(self) -> ServiceState:
        with self._state_lock:
            return self._state

    def last_reason(self) -> str:
        """Why the resource is in its current state (the reason of the last operation)."""
        with self._state_lock:
            return self._reason

    def provided_by(self) -> str | None:
        """This node while the resource is in service, starting or stopping; otherwise None."""
        with self._state_lock:
            return self._node if self._state in _PROVIDED_STATES else None

    def mark_oos(self) -> None:
        """Record the resource as out of service and take no action (after fencing, or when
        the node that held it is known to be down)."""
        with self._state_lock:
            self._generation += 1
            self._set(ServiceState.OOS, "marked out of service")

    # -- operations ---------------------------------------------------------------------------

    def in_service(self) -> OpResult:
        """Bring the resource into service. Blocks for up to ``start_timeout``."""
        started = time.monotonic()
        with self._op_lock:
            with self._state_lock:
                refusal = self._refuse_start()
                if refusal is not None:
                    return replace(refusal, duration=time.monotonic() - started)
                # A fresh event per start: a stale cancel from an earlier force_oos must not
                # abort this one, and clearing a shared event could race with a new cancel.
                cancel = self._cancel = threading.Event()
                self._generation += 1
                generation = self._generation
                self._set(ServiceState.PENDING_IN_SERVICE, "starting")
            result = self._call("start", lambda: self._start(cancel), started)
            with self._state_lock:
                if generation != self._generation or cancel.is_set():
                    return OpResult(
                        ok=False,
                        state=self._state,
                        reason=f"start interrupted by force_oos ({result.reason})",
                        duration=result.duration,
                    )
                state = ServiceState.IN_SERVICE if result.ok else ServiceState.FAILED
                self._set(state, result.reason)
                return replace(result, state=state)

    def oo_service(self) -> OpResult:
        """Take the resource out of service gracefully. Blocks for up to ``stop_timeout``
        (plus a few seconds if the agent must escalate)."""
        return self._stop_operation(force=False)

    def force_oos(self) -> OpResult:
        """Take the resource out of service at once, interrupting a start in progress."""
        return self._stop_operation(force=True)

    def monitor(self) -> OpResult:
        """Probe the resource: running (IN_SERVICE), failed (FAILED) or cleanly stopped (OOS).

        While a start or stop is running the probe is skipped and the pending state returned.
        ``ok`` is False when the resource is found failed, or stopped although it should be in
        service (then it is recorded FAILED). A FAILED or UNCLEAN resource stays so whatever
        the probe says: only a stop or ``mark_oos()`` clears those.
        """
        started = time.monotonic()
        if not self._op_lock.acquire(blocking=False):
            with self._state_lock:
                return OpResult(
                    ok=True,
                    state=self._state,
                    reason=f"not probed: an operation is in progress ({self._reason})",
                    duration=time.monotonic() - started,
                )
        try:
            with self._state_lock:
                generation = self._generation
                recorded = self._state
            result = self._call("monitor", self._monitor, started)
            with self._state_lock:
                if generation != self._generation:
                    return replace(result, ok=True, state=self._state)
                state, ok, reason = _judge_monitor(recorded, result)
                if state is not recorded or not ok:
                    self._set(state, reason)
                return OpResult(ok=ok, state=state, reason=reason, duration=result.duration)
        finally:
            self._op_lock.release()

    # -- dependencies (through the catalog this resource was added to) ------------------------

    def dependson_list(self) -> ResourceList:
        """The resources this one depends on directly."""
        return self._catalog.dependson_list(self) if self._catalog else ResourceList()

    def dependents_list(self) -> ResourceList:
        """The resources that depend directly on this one."""
        return self._catalog.dependents_list(self) if self._catalog else ResourceList()

    # -- for subclasses -----------------------------------------------------------------------

    @abc.abstractmethod
    def _start(self, cancel: threading.Event) -> OpResult:
        """Start the resource within ``config.start_timeout``; give up when ``cancel`` is set."""

    @abc.abstractmethod
    def _stop(self, force: bool) -> OpResult:
        """Stop the resource (within ``config.stop_timeout`` unless ``force``)."""

    @abc.abstractmethod
    def _monitor(self) -> OpResult:
        """Probe within ``config.monitor.timeout``: IN_SERVICE, FAILED or OOS."""

    # -- internals ----------------------------------------------------------------------------

    def _set(self, state: ServiceState, reason: str) -> None:
        # Caller holds _state_lock.
        if state is not self._state:
            log.info("resource %s on %s: %s -> %s (%s)", self.name, self._node,
                     self._state.name, state.name, reason)
        self._state = state
        self._reason = reason

    def _note_in_service(self, reason: str) -> None:
        """A new reason while the resource stays in service: for an action the type takes on
        its own (an address moved to another NIC). Nothing when another operation has changed
        the state meanwhile."""
        with self._state_lock:
            if self._state is ServiceState.IN_SERVICE:
                self._reason = reason

    def _refuse_start(self) -> OpResult | None:
        state = self._state
        if state is ServiceState.IN_SERVICE:
            return OpResult.success(state, "already in service")
        if state is ServiceState.UNCLEAN:
            return OpResult.failure(
                state, f"will not start: a stop failed earlier ({self._reason}); "
                "fence this node, then mark_oos()")
        if state is ServiceState.PENDING_OOS:
            return OpResult.failure(state, "will not start: a stop is in progress")
        return None

    def _refuse_stop(self, what: str, started: float) -> OpResult | None:
        # Caller holds _state_lock.
        if self._state is ServiceState.OOS:
            return OpResult(True, ServiceState.OOS, "already out of service",
                            time.monotonic() - started)
        if self._state is ServiceState.UNCLEAN:
            return OpResult(False, ServiceState.UNCLEAN,
                            f"{what} refused: a stop failed earlier ({self._reason}); only "
                            "fencing this node clears that, then mark_oos()",
                            time.monotonic() - started)
        return None

    def _begin_stop(self, reason: str) -> int:
        # Caller holds _state_lock.
        self._generation += 1
        self._set(ServiceState.PENDING_OOS, reason)
        return self._generation

    def _stop_operation(self, force: bool) -> OpResult:
        started = time.monotonic()
        what = "force_oos" if force else "oo_service"
        if force:
            with self._state_lock:
                refusal = self._refuse_stop(what, started)
                if refusal is not None:
                    return refusal
                self._cancel.set()
                generation = self._begin_stop("forced stop")
            # A start that honours its cancel event returns promptly; one that does not must
            # not hold up a forced stop, so after CANCEL_WAIT we stop alongside it.
            holding = self._op_lock.acquire(timeout=CANCEL_WAIT)
            if not holding:
                log.warning("resource %s: the start ignored its cancel for %.1fs; forcing the "
                            "stop anyway", self.name, CANCEL_WAIT)
        else:
            holding = self._op_lock.acquire()
            with self._state_lock:
                refusal = self._refuse_stop(what, started)
                if refusal is not None:
                    self._op_lock.release()
                    return refusal
                generation = self._begin_stop("stopping")
        try:
            result = self._call(what, lambda: self._stop(force), started)
            with self._state_lock:
                if generation != self._generation:
                    # A later operation (force_oos, mark_oos) owns the state now.
                    return replace(result, state=self._state)
                state = ServiceState.OOS if result.ok else ServiceState.UNCLEAN
                self._set(state, result.reason)
                return replace(result, state=state)
        finally:
            if holding:
                self._op_lock.release()

    def _call(self, what: str, operation: Callable[[], OpResult], started: float) -> OpResult:
        try:
            result = operation()
        except Exception as exc:  # an agent bug must become a failed result, not a dead actor
            log.exception("resource %s: %s raised", self.name, what)
            result = OpResult.failure(ServiceState.FAILED,
                                      f"{what} raised {type(exc).__name__}: {exc}")
        return replace(result, duration=time.monotonic() - started)


def _judge_monitor(
    recorded: ServiceState, result: OpResult
) -> tuple[ServiceState, bool, str]:
    """Combine what was recorded with what the agent found: (new state, ok, reason)."""
    found = result.state
    if found not in (ServiceState.IN_SERVICE, ServiceState.OOS, ServiceState.FAILED):
        # An agent that answers anything else is broken; treat that as a failure.
        found = ServiceState.FAILED
    if recorded in (ServiceState.FAILED, ServiceState.UNCLEAN):
        return recorded, False, f"{recorded.name.lower()} ({result.reason})"
    if found is ServiceState.FAILED:
        return ServiceState.FAILED, False, result.reason
    if recorded is ServiceState.IN_SERVICE and found is ServiceState.OOS:
        return ServiceState.FAILED, False, f"found stopped while in service ({result.reason})"
    if recorded is ServiceState.OOS and found is ServiceState.IN_SERVICE:
        reason = f"found running while out of service ({result.reason})"
        return ServiceState.IN_SERVICE, True, reason
    return found, True, result.reason


class Catalog:
    """The resources of one node, and the dependencies between them.

    Several catalogs can exist in one process (several simulated nodes); nothing here is
    global. :func:`default_catalog` is the daemon's one.
    """

    def __init__(self, resources: Iterable[Resource] = ()) -> None:
        self._lock = threading.RLock()
        self._resources: dict[str, Resource] = {}
        self._depends_on: dict[str, list[str]] = {}
        for resource in resources:
            self.add(resource)

    def add(self, resource: Resource) -> None:
        """Add ``resource``. Names are unique within a catalog."""
        with self._lock:
            if resource.name in self._resources:
                raise ValueError(f"the catalog already holds a resource named {resource.name!r}")
            if resource._catalog is not None and resource._catalog is not self:
                raise ValueError(f"resource {resource.name!r} already belongs to another catalog")
            self._resources[resource.name] = resource
            self._depends_on[resource.name] = []
            resource._catalog = self

    def remove(self, name: str) -> Resource:
        """Take the resource ``name`` out (and every dependency on it); it may then be added to
        another catalog. :class:`UnknownResource` if there is none."""
        with self._lock:
            resource = self.find_resource(name)
            del self._resources[name], self._depends_on[name]
            for targets in self._depends_on.values():
                if name in targets:
                    targets.remove(name)
            resource._catalog = None
            return resource

    def add_configured_dependencies(self) -> None:
        """Call :meth:`dependson` for every ``depends_on`` in the resources' configurations.

        A dependency on a resource this catalog does not hold raises :class:`UnknownResource`.
        """
        with self._lock:
            for resource in list(self._resources.values()):
                for target in resource.config.depends_on:
                    self.dependson(resource, target)

    def find_resource(self, name: str) -> Resource:
        """The resource called ``name``; :class:`UnknownResource` (a KeyError) otherwise."""
        with self._lock:
            try:
                return self._resources[name]
            except KeyError:
                raise UnknownResource(name, self._resources) from None

    def dependson(self, r1: Resource | str, r2: Resource | str) -> None:
        """Mark ``r1`` as dependent on ``r2``: r2 must be in service before r1 starts.

        Raises :class:`DependencyCycle` (and changes nothing) if r2 already depends on r1.
        """
        with self._lock:
            dependent = self._resolve(r1)
            target = self._resolve(r2)
            if target.name in self._depends_on[dependent.name]:
                return
            trial = {name: list(deps) for name, deps in self._depends_on.items()}
            trial[dependent.name].append(target.name)
            cycle = find_cycle(trial)
            if cycle is not None:
                # The new edge closed the loop; show the loop starting with it.
                loop = cycle[:-1]
                start = loop.index(dependent.name)
                loop = loop[start:] + loop[:start]
                raise DependencyCycle([*loop, dependent.name])
            self._depends_on[dependent.name].append(target.name)

    def dependson_list(self, resource: Resource | str) -> ResourceList:
        with self._lock:
            name = self._resolve(resource).name
            return ResourceList(self._resources[n] for n in self._depends_on[name])

    def dependents_list(self, resource: Resource | str) -> ResourceList:
        with self._lock:
            name = self._resolve(resource).name
            return ResourceList(
                r for n, r in self._resources.items() if name in self._depends_on[n]
            )

    def graph(self) -> DependencyGraph:
        """The dependency graph of every resource held; ties broken in the order added."""
        with self._lock:
            position = {name: i for i, name in enumerate(self._resources)}
            return DependencyGraph(self._depends_on, key=position.__getitem__)

    def group(self, name: str) -> list[Resource]:
        """The resources of group ``name`` in start order (reverse it to stop).

        Only dependencies inside the group shape the order; ties keep the order in which the
        resources were added (the configuration's order).
        """
        with self._lock:
            members = [r.name for r in self._resources.values() if r.group == name]
            if not members:
                groups = sorted({r.group for r in self._resources.values()})
                raise KeyError(f"no resources in group {name!r} (groups: "
                               f"{', '.join(groups) or 'none'})")
            inside = set(members)
            position = {n: i for i, n in enumerate(members)}
            graph = DependencyGraph(
                {n: [d for d in self._depends_on[n] if d in inside] for n in members},
                key=position.__getitem__,
            )
            return [self._resources[n] for n in graph.start_order()]

    def groups(self) -> list[str]:
        with self._lock:
            return sorted({r.group for r in self._resources.values()})

    def names(self) -> list[str]:
        with self._lock:
            return list(self._resources)

    def __iter__(self) -> Iterator[Resource]:
        with self._lock:
            return iter(list(self._resources.values()))

    def __len__(self) -> int:
        return len(self._resources)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Resource):
            return self._resources.get(item.name) is item
        return item in self._resources

    def _resolve(self, item: Resource | str) -> Resource:
        if isinstance(item, str):
            return self.find_resource(item)
        if self._resources.get(item.name) is not item:
            raise UnknownResource(item.name, self._resources, where="in this catalog")
        return item


_default_catalog: Catalog | None = None
_default_catalog_lock = threading.Lock()


def default_catalog() -> Catalog:
    """The process-wide catalog the daemon uses. Tests should build their own."""
    global _default_catalog
    with _default_catalog_lock:
        if _default_catalog is None:
            _default_catalog = Catalog()
        return _default_catalog


def find_resource(name: str, catalog: Catalog | None = None) -> Resource:
    """The seed's static ``find_resource()``: look ``name`` up in ``catalog`` (default: the
    process-wide one)."""
    return (catalog if catalog is not None else default_catalog()).find_resource(name)


def dependson(r1: Resource | str, r2: Resource | str, catalog: Catalog | None = None) -> None:
    """The seed's static ``dependson(r1, r2)``: mark r1 as dependent on r2."""
    (catalog if catalog is not None else default_catalog()).dependson(r1, r2)
