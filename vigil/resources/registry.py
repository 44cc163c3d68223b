"""Resource types by name: the built-ins plus plug-ins from the ``vigil.resource_types`` group.

A plug-in is an entry point whose object is a :class:`~vigil.resources.model.ResourceType`
subclass (instantiated with no arguments) or instance. A plug-in that fails to import or is not
a resource type is logged with its name and the error and skipped: one broken plug-in must not
stop a node from providing everything else. What failed is kept in
:attr:`ResourceTypeRegistry.load_errors` for ``vigil config check`` to show.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Final

from vigil.resources.model import ResourceType, UnknownResourceType

__all__ = [
    "ENTRY_POINT_GROUP",
    "ResourceTypeRegistry",
    "UnknownResourceType",
    "default_registry",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "vigil.resource_types"


class ResourceTypeRegistry:
    """A set of resource types, by :meth:`~ResourceType.typename`. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._types: dict[str, ResourceType] = {}
        #: plug-in name -> why it was skipped
        self.load_errors: dict[str, str] = {}
        #: "ocf" -> a factory making the type "ocf:heartbeat:IPaddr2" on first use, or
        #: raising UnknownResourceType when no such agent is installed
        self._families: dict[str, Callable[[str], ResourceType]] = {}

    def register_family(self, prefix: str, factory: Callable[[str], ResourceType]) -> None:
        """Types named ``prefix:...`` are made by ``factory(typename)`` when first asked for
        (there is one per installed agent, too many to register up front)."""
        with self._lock:
            self._families[prefix] = factory

    def register(self, rtype: ResourceType, *, replace: bool = False) -> None:
        """Add ``rtype``. Registering the same class twice is harmless; a different type under
        a taken name is refused unless ``replace``."""
        if not isinstance(rtype, ResourceType):
            raise TypeError(f"{rtype!r} is not a ResourceType")
        name = rtype.typename()
        with self._lock:
            current = self._types.get(name)
            if current is not None and type(current) is not type(rtype) and not replace:
                raise ValueError(
                    f"resource type {name!r} is already registered by "
                    f"{type(current).__module__}.{type(current).__qualname__}"
                )
            if current is None or replace:
                self._types[name] = rtype

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Register every plug-in of entry-point ``group``; return the type names added or
        confirmed. Failures are logged, recorded in :attr:`load_errors` and skipped."""
        loaded = []
        for entry in sorted(entry_points(group=group), key=lambda e: e.name):
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
        obj = entry.load()
        if isinstance(obj, type) and issubclass(obj, ResourceType):
            return obj()
        if isinstance(obj, ResourceType):
            return obj
        raise TypeError(f"{entry.value} is {obj!r}, not a ResourceType subclass or instance")

    def get(self, typename: str) -> ResourceType:
        """The type called ``typename``; :class:`UnknownResourceType` (a KeyError) if none."""
        with self._lock:
            found = self._types.get(typename)
            factory = self._families.get(typename.partition(":")[0]) if ":" in typename else None
            known = list(self._types) + [f"{p}:..." for p in self._families]
        if found is not None:
            return found
        if factory is None:
            raise UnknownResourceType(typename, known)
        rtype = factory(typename)  # raises UnknownResourceType itself, naming what is missing
        with self._lock:
            return self._types.setdefault(typename, rtype)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._types)

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


_default: ResourceTypeRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> ResourceTypeRegistry:
    """The process-wide registry: the built-ins, then the installed plug-ins.

    The built-ins are registered directly so they exist even when the package runs from a
    source tree without installed entry points.
    """
    global _default
    with _default_lock:
        if _default is None:
            # Imported here: the agents import the model, and the model must not need them.
            from vigil.resources.application import ApplicationType
            from vigil.resources.dummy import DummyType
            from vigil.resources.filesystem import FilesystemType
            from vigil.resources.ip import IpType
            from vigil.resources.mirror import MirrorType
            from vigil.resources.ocf import ocf_family

            registry = ResourceTypeRegistry()
            registry.register(DummyType())
            registry.register(ApplicationType())
            registry.register(FilesystemType())
            registry.register(IpType())
            registry.register(MirrorType())
            registry.register_family("ocf", ocf_family)
            registry.load_entry_points()
            _default = registry
        return _default
