"""A pure dependency graph: who depends on whom, and the order to start and stop them.

No I/O, no threads. The same graph serves three callers: the configuration validator (resources
and groups must not form cycles or name things that do not exist), the resources of one group
(start in dependency order, stop in the exact reverse) and placement (groups that depend on
groups).

Edges point from a node to what it depends on: ``{"web": ["ip", "fs"]}`` means *web* needs *ip*
and *fs* in service first. Every order this module returns is deterministic: ties are broken by
name (or by a caller's ``key``), never by hash or insertion accident, so two nodes that hold the
same configuration compute the same order.
"""

from __future__ import annotations

import difflib
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "DependencyCycle",
    "DependencyError",
    "DependencyGraph",
    "UnknownDependency",
    "find_cycle",
    "find_cycles",
]


class DependencyError(ValueError):
    """The dependencies as written cannot be ordered."""


class DependencyCycle(DependencyError):
    """Some node depends, directly or through others, on itself.

    ``cycle`` is the path, first node repeated at the end: ``["a", "b", "a"]`` reads
    "a depends on b, which depends on a".
    """

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle: list[str] = list(cycle)
        super().__init__(
            f"dependency cycle: {' -> '.join(self.cycle)} "
            "(remove one of these dependencies so that the order can be decided)"
        )


class UnknownDependency(DependencyError, LookupError):
    """A dependency (or a looked-up name) is not a node of the graph."""

    def __init__(self, missing: str, known: Iterable[str], dependent: str | None = None) -> None:
        self.missing = missing
        self.dependent = dependent
        known_sorted = sorted(known)
        close = difflib.get_close_matches(missing, known_sorted, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        known_text = ", ".join(known_sorted) if known_sorted else "none"
        if dependent is None:
            what = f"{missing!r} is not defined"
        else:
            what = f"{dependent!r} depends on {missing!r}, which is not defined"
        super().__init__(f"{what} (known: {known_text}){hint}")


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """Return one dependency cycle of ``edges`` as a path (``["a", "b", "a"]``), or None.

    The first of :func:`find_cycles`: always the same one for the same edges.
    """
    cycles = find_cycles(edges, first_only=True)
    return cycles[0] if cycles else None


def find_cycles(edges: Mapping[str, Iterable[str]], *,
                first_only: bool = False) -> list[list[str]]:
    """Every cycle a depth-first search of ``edges`` closes, each as a path from its smallest
    name back to it (``["a", "b", "a"]``); [] when the edges can be ordered.

    Names that are depended on but are not keys are treated as leaves. The search visits nodes
    and their dependencies in name order, so the cycles reported are always the same ones:
    the configuration validator reports them all, a graph refuses to exist on the first.
    """
    deps = {name: sorted(set(targets)) for name, targets in edges.items()}
    cycles: list[list[str]] = []
    done: set[str] = set()
    for root in sorted(deps):
        if root in done:
            continue
        # Iterative DFS: configuration files are small, but a recursion limit is no way to fail.
        path: list[str] = [root]
        on_path: set[str] = {root}
        iterators = [iter(deps.get(root, ()))]
        while iterators:
            step = next(iterators[-1], None)
            if step is None:
                iterators.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                continue
            if step in on_path:
                loop = path[path.index(step):]
                start = loop.index(min(loop))
                loop = loop[start:] + loop[:start]
                cycles.append([*loop, loop[0]])
                if first_only:
                    return cycles
                continue
            if step in done:
                continue
            path.append(step)
            on_path.add(step)
            iterators.append(iter(deps.get(step, ())))
    return cycles


class DependencyGraph:
    """An acyclic dependency graph over a fixed set of names.

    Construction checks everything once: a dependency on a name that is not a key raises
    :class:`UnknownDependency`, a cycle raises :class:`DependencyCycle` with its path. A graph
    that exists is therefore always orderable.

    ``key`` breaks ties in :meth:`start_order` (names ready at the same time); the default is
    the name itself.
    """

    def __init__(
        self,
        edges: Mapping[str, Iterable[str]],
        *,
        key: Callable[[str], Any] | None = None,
    ) -> None:
        self._deps: dict[str, tuple[str, ...]] = {}
        for name in sorted(edges):
            targets = sorted(set(edges[name]))
            for target in targets:
                if target not in edges:
                    raise UnknownDependency(target, edges, dependent=name)
            self._deps[name] = tuple(targets)
        cycle = find_cycle(self._deps)
        if cycle is not None:
            raise DependencyCycle(cycle)
        rdeps: dict[str, list[str]] = {name: [] for name in self._deps}
        for name, needed in self._deps.items():
            for target in needed:
                rdeps[target].append(name)
        self._rdeps = {name: tuple(sorted(users)) for name, users in rdeps.items()}
        self._key: Callable[[str], Any] = key if key is not None else _identity
        self._start_order = self._compute_start_order()

    # -- queries ------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._deps

    def __len__(self) -> int:
        return len(self._deps)

    def names(self) -> list[str]:
        return sorted(self._deps)

    def dependencies(self, name: str) -> list[str]:
        """What ``name`` depends on directly, sorted by name."""
        return list(self._deps[self._known(name)])

    def dependents(self, name: str) -> list[str]:
        """What depends directly on ``name``, sorted by name."""
        return list(self._rdeps[self._known(name)])

    def transitive_dependencies(self, name: str) -> list[str]:
        """Everything ``name`` needs, directly or not, in start order."""
        return self._closure(name, self._deps)

    def transitive_dependents(self, name: str) -> list[str]:
        """Everything that needs ``name``, directly or not, in start order.

        These are what must leave service (in :meth:`stop_order`) before ``name`` can.
        """
        return self._closure(name, self._rdeps)

    def start_order(self) -> list[str]:
        """Every name, each after all it depends on; ties by ``key`` (default: name)."""
        return list(self._start_order)

    def stop_order(self) -> list[str]:
        """The exact reverse of :meth:`start_order`: dependents leave before what they need."""
        return self._start_order[::-1]

    def find_cycle(self) -> list[str] | None:
        """Always None: a graph with a cycle cannot be built. Use the module-level
        :func:`find_cycle` to inspect raw edges without raising."""
        return find_cycle(self._deps)

    def __repr__(self) -> str:
        return f"DependencyGraph({dict(self._deps)!r})"

    # -- internals ----------------------------------------------------------------------------

    def _known(self, name: str) -> str:
        if name not in self._deps:
            raise UnknownDependency(name, self._deps)
        return name

    def _closure(self, name: str, adjacency: Mapping[str, tuple[str, ...]]) -> list[str]:
        seen: set[str] = set()
        stack: list[str] = list(adjacency[self._known(name)])
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(adjacency[current])
        return [n for n in self._start_order if n in seen]

    def _compute_start_order(self) -> list[str]:
        # Kahn's algorithm with a heap so that, among the names whose dependencies are all
        # placed, the smallest key always goes first.
        waiting = {name: len(targets) for name, targets in self._deps.items()}
        ready = [(self._key(name), name) for name, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            _, name = heapq.heappop(ready)
            order.append(name)
            for user in self._rdeps[name]:
                waiting[user] -= 1
                if waiting[user] == 0:
                    heapq.heappush(ready, (self._key(user), user))
        return order


def _identity(name: str) -> str:
    return name

