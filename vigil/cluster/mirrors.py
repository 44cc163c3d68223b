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

__all__ = ["CopyFact", "MirrorLag", "MirrorState"]


@dataclass(frozen=True, slots=True)
class CopyFact:
    """A node's newest complete copy of one mirror resource's data."""

    seq: int  # the snapshot's number along its history
    taken: float  # when its source took it (the source's wall clock, Unix seconds)
    source: str  # the node that took it
    live: bool = False  # the data is in service here: this node is the source, its copy current


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
