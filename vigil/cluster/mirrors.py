"""Mirrored data (the ``mirror`` resource type, issue 14): what the pure core knows of it.

The data of a mirror resource lives on every node's own btrfs filesystem; the node where the
resource is in service (the *source*) snapshots it every interval and streams the snapshots to
the others (:mod:`vigil.resources.btrfs`, :mod:`vigil.transports.stream`). The shell tells
the core two things, and the core uses them for placement, status and notifications:

* :class:`MirrorState`, on every node: this node's newest complete copy (:class:`CopyFact`)
  and what it holds set aside. The copy goes into the node's cost reply, so the transition
  master can let the freshest copy win (docs/resources.md, "mirror").
* :class:`MirrorLag`, on the source: how far each other node's newest copy is behind, in
  seconds of writes that would be lost if the source died now.

Times are the source's wall clock (Unix seconds) when it took the snapshot: only differences
between snapshots are compared, and snapshots compared are normally taken by one node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from vigil.config import ClusterConfig, ConfigError, GroupConfig, ResourceConfig, parse_duration

__all__ = ["DEFAULT_MAX_LAG", "MIRROR_TYPE", "CopyFact", "MirrorLag", "MirrorState",
           "copy_lags", "group_mirrors", "max_lag", "mirror_resources"]

#: The resource type whose data the freshest copy decides the placement of.
MIRROR_TYPE: Final = "mirror"
#: ``params.max_lag`` when the resource does not say.
DEFAULT_MAX_LAG: Final = 30.0


@dataclass(frozen=True, slots=True)
class CopyFact:
    """A node's newest complete copy of one mirror resource's data."""

    seq: int  # the snapshot's number along its history
    taken: float  # when its source took it (the source's wall clock, Unix seconds)
    source: str  # the node that took it
    live: bool = False  # the data is in service here: this node is the source, its copy current
    #: seconds this copy is known to be behind at least, whatever the others hold: the node
    #: holding the group (the source) was heard alive this long after the copy arrived (the
    #: core fills it in, :meth:`~vigil.cluster.node.NodeCore.copies`). It is what refuses a
    #: lone stale copy: the lag between copies cannot see it once the source is gone.
    behind: float = 0.0


@dataclass(frozen=True, slots=True)
class MirrorState:
    """The shell's word on this node's copy of mirror resource ``resource`` (None: no complete
    copy here) and the names of what it holds set aside (diverged snapshots, former data)."""

    resource: str
    copy: CopyFact | None
    aside: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MirrorLag:
    """On the source of ``resource``: each other node -> how many seconds its newest copy is
    behind the data (None: it has no copy of this history yet, or cannot be reached)."""

    resource: str
    lags: Mapping[str, float | None] = field(default_factory=dict)


def mirror_resources(config: ClusterConfig) -> tuple[str, ...]:
    """The configured mirror resources, sorted."""
    return tuple(sorted(r for r, rc in config.resources.items() if rc.type == MIRROR_TYPE))


def group_mirrors(config: ClusterConfig, group: GroupConfig) -> tuple[str, ...]:
    """The group's mirror resources, in the group's order."""
    return tuple(r for r in group.resources if config.resources[r].type == MIRROR_TYPE)


def max_lag(resource: ResourceConfig) -> float:
    """The resource's ``params.max_lag`` in seconds (default 30 s). A value that does not
    parse counts as the default: `vigil config check` refuses it, so only a node started
    without the check would run with one, and it must not crash over it."""
    value = resource.params.get("max_lag")
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return DEFAULT_MAX_LAG
    try:
        return parse_duration(value, f"resources.{resource.name}.params.max_lag")
    except ConfigError:
        return DEFAULT_MAX_LAG


def copy_lags(copies: Mapping[str, CopyFact | None]) -> dict[str, float | None]:
    """Node -> how many seconds its copy is behind the freshest of ``copies`` (None: it has
    none). A live copy is the data itself: it is never behind. The others are measured from
    the newest snapshot any node holds (a live copy's snapshots are that newest, unless a
    node kept a newer one of another history), and are at least what each knows it is behind
    (``behind``)."""
    taken = [c.taken for c in copies.values() if c is not None]
    if not taken:
        return dict.fromkeys(copies)
    freshest = max(taken)
    return {n: None if c is None else 0.0 if c.live else max(0.0, freshest - c.taken, c.behind)
            for n, c in copies.items()}
