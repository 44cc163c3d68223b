"""Resource types by name: the built-ins plus plug-ins from the ``vigil.resource_types`` group.

A plug-in is an entry point whose object is a :class:`~vigil.resources.model.ResourceType`
subclass (instantiated with no arguments) or instance. A plug-in that fails to import or is not
a resource type is logged with its name and the error and skipped: one broken plug-in must not
stop a node from providing everything else. What failed is kept in
:attr:`ResourceTypeRegistry.load_errors` for ``vigil config check`` to show.

The built-ins are imported when a configuration first names one, not before: the ``ip`` type
loads pyroute2 (22 MB and some 100 ms of CPU in every daemon), ``mirror`` the btrfs and
replication machinery; a node whose configuration has neither loads neither. One whose module
fails to import (pyroute2 missing or broken) is then what a broken plug-in is: logged, kept
in :attr:`ResourceTypeRegistry.load_errors`, and not a type this node has
(:class:`UnloadableResourceType`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Final

from vigil.resources.model import ResourceType, UnknownResourceType

__all__ = [
    "BUILTIN_TYPES",
    "ENTRY_POINT_GROUP",
    "ResourceTypeRegistry",
    "UnknownResourceType",
    "UnloadableResourceType",
    "default_registry",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "vigil.resource_types"

#: The built-in types: name -> where its class is ("module:class", as an entry point says it).
BUILTIN_TYPES: Final = {
    "dummy": "vigil.resources.dummy:DummyType",
    "application": "vigil.resources.application:ApplicationType",
    "filesystem": "vigil.resources.filesystem:FilesystemType",
    "ip": "vigil.resources.ip:IpType",
    "mirror": "vigil.resources.mirror:MirrorType",
}


class UnloadableResourceType(UnknownResourceType):
    """A type this registry knows of whose code does not load (its module, or a plug-in's,
    fails to import): a KeyError like an unknown type, saying why."""

    def __init__(self, typename: str, why: str) -> None:
        self.typename = typename
        self.why = why
        self.message = f"resource type {typename!r} cannot be loaded: {why}"
        KeyError.__init__(self, self.message)


class ResourceTypeRegistry:
    """A set of resource types, by :meth:`~ResourceType.typename`. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._types: dict[str, ResourceType] = {}
        #: plug-in or built-in type name -> why it does not load
        self.load_errors: dict[str, str] = {}
        #: "ocf" -> a factory making the type "ocf:heartbeat:IPaddr2" on first use, or
        #: raising UnknownResourceType when no such agent is installed
        self._families: dict[str, Callable[[str], ResourceType]] = {}
        #: name -> "module:class" of a type registered but not imported yet (register_lazy)
        self._lazy: dict[str, str] = {}

    def register_family(self, prefix: str, factory: Callable[[str], ResourceType]) -> None:
        """Types named ``prefix:...`` are made by ``factory(typename)`` when first asked for
        (there is one per installed agent, too many to register up front)."""
        with self._lock:
            self._families[prefix] = factory

    def register_lazy(self, typename: str, target: str) -> None:
        """The type ``typename`` is the class (or instance) ``target`` ("module:class"),
        imported when the type is first asked for."""
        with self._lock:
            if typename not in self._types:
                self._lazy[typename] = target

    def register(self, rtype: ResourceType, *, replace: bool = False) -> None:
        """Add ``rtype``. Registering the same class twice is harmless; a different type under
        a taken name is refused unless ``replace``."""
        if not isinstance(rtype, ResourceType):
            raise TypeError(f"{rtype!r} is not a ResourceType")
        name = rtype.typename()
        with self._lock:
            target = self._lazy.get(name)
        if target is not None and not replace:
            # the one registered first must be known to compare with (unless it does not load)
            with contextlib.suppress(UnloadableResourceType):
                self.get(name)
        with self._lock:
            self._lazy.pop(name, None)
            current = self._types.get(name)
            if current is not None and type(current) is not type(rtype) and not replace:
                raise ValueError(
                    f"resource type {name!r} is already registered by "
                    f"{type(current).__module__}.{type(current).__qualname__}"
                )
            if current is None or replace:
                self._types[name] = rtype
                self.load_errors.pop(name, None)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Register every plug-in of entry-point ``group``; return the type names added or
        confirmed. Failures are logged, recorded in :attr:`load_errors` and skipped."""
        loaded = []
        for entry in sorted(entry_points(group=group), key=lambda e: e.name):
            with self._lock:
                known = self._lazy.get(entry.name) == entry.value
            if known:  # a built-in's own entry point: imported when first used
                loaded.append(entry.name)
                continue
            try:
                rtype = self._load(entry)
                self.register(rtype)
            except Exception as exc:  # any plug-in bug: skip it, keep the others
                why = f"{type(exc).__name__}: {exc}"
                log.error("resource type plug-in %r (%s) skipped: %s", entry.name, entry.value,
                          why)
                self.load_errors[entry.name] = why
                continue
            if rtype.typename() != entry.name:
                log.warning("resource type plug-in %r calls itself %r; registered as %r",
                            entry.name, rtype.typename(), rtype.typename())
            loaded.append(rtype.typename())
        return loaded

    @staticmethod
    def _load(entry: EntryPoint) -> ResourceType:
        return _resource_type(entry.load(), entry.value)

    def get(self, typename: str) -> ResourceType:
        """The type called ``typename``; :class:`UnknownResourceType` (a KeyError) if none."""
        with self._lock:
            found = self._types.get(typename)
            target = self._lazy.get(typename)
            failed = self.load_errors.get(typename)
            factory = self._families.get(typename.partition(":")[0]) if ":" in typename else None
            known = [*self._types, *self._lazy, *(f"{p}:..." for p in self._families)]
        if found is not None:
            return found
        if target is not None:
            return self._import(typename, target)
        if failed is not None:
            raise UnloadableResourceType(typename, failed)
        if factory is None:
            raise UnknownResourceType(typename, known)
        rtype = factory(typename)  # raises UnknownResourceType itself, naming what is missing
        with self._lock:
            return self._types.setdefault(typename, rtype)

    def _import(self, typename: str, target: str) -> ResourceType:
        module, _, name = target.partition(":")
        try:
            rtype = _resource_type(getattr(importlib.import_module(module), name), target)
        except Exception as exc:  # its module or one it needs is missing or broken
            why = f"{module}: {type(exc).__name__}: {exc}"
            with self._lock:
                first = self._lazy.pop(typename, None) is not None
                if first:
                    self.load_errors[typename] = why
            if first:  # not again for each resource of the type, nor at each reload
                log.error("resource type %r (%s) cannot be loaded: %s; resources of this type "
                          "cannot run on this node", typename, target, why)
            raise UnloadableResourceType(typename, why) from exc
        with self._lock:
            self._lazy.pop(typename, None)
            return self._types.setdefault(typename, rtype)

    def names(self) -> list[str]:
        with self._lock:
            return sorted({*self._types, *self._lazy})

    def __contains__(self, typename: object) -> bool:
        if not isinstance(typename, str):
            return False
        try:
            self.get(typename)
        except UnknownResourceType:
            return False
        return True

    def __repr__(self) -> str:
        return f"ResourceTypeRegistry({self.names()!r})"


def _resource_type(obj: object, target: str) -> ResourceType:
    if isinstance(obj, type) and issubclass(obj, ResourceType):
        return obj()
    if isinstance(obj, ResourceType):
        return obj
    raise TypeError(f"{target} is {obj!r}, not a ResourceType subclass or instance")


def _ocf_family(typename: str) -> ResourceType:
    # Imported here: the agents import the model, and the model must not need them; and
    # only a configuration with an OCF resource needs them.
    from vigil.resources.ocf import ocf_family

    return ocf_family(typename)


_default: ResourceTypeRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> ResourceTypeRegistry:
    """The process-wide registry: the built-ins, then the installed plug-ins.

    The built-ins are registered directly so they exist even when the package runs from a
    source tree without installed entry points (those of the installed package name the same
    classes, and are not loaded again).
    """
    global _default
    with _default_lock:
        if _default is None:
            registry = ResourceTypeRegistry()
            for typename, target in BUILTIN_TYPES.items():
                registry.register_lazy(typename, target)
            registry.register_family("ocf", _ocf_family)
            registry.load_entry_points()
            _default = registry
        return _default
