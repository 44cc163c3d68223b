"""Typed, immutable notifications for applications (the seed's "application notification").

Every notification says what happened, on which node it was seen (``node``), when (``time``,
wall clock, seconds since the epoch), in words for people (``text``), and carries the fields
of its type. ``seq`` numbers the notifications of one daemon run from 1; a subscriber that
sees a gap knows how many it missed (the event socket says so explicitly with
:class:`Missed`).

The types (``kind`` is the name used for filtering, in JSON and in alert commands):

=========================  ===========================  ===================================
class                      kind                         fields
=========================  ===========================  ===================================
TransitionStarted          ``transition_started``       epoch, master, reason
TransitionCompleted        ``transition_completed``     epoch, placement (group -> node)
NodeJoined                 ``node_joined``              member
NodeLost                   ``node_lost``                member, clean (it said goodbye)
LinkUp / LinkDown          ``link_up`` / ``link_down``  member, link
NicUp / NicDown            ``nic_up`` / ``nic_down``    nic, reason (a NIC of ``node``)
MirrorLagging              ``mirror_lagging``           resource, group, lag, max_lag (on
                                                        the source: the best copy elsewhere
                                                        fell further behind than max_lag)
MirrorCaughtUp             ``mirror_caught_up``         resource, group, lag, max_lag (it is
                                                        back within max_lag)
MirrorDiverged             ``mirror_diverged``          resource, group, names (what ``node``
                                                        newly set aside)
ResourceStateChanged       ``resource_state_changed``   resource, group, state, reason
GroupStateChanged          ``group_state_changed``      group, state, reason; for a failure
                                                        (state failed or unclean) also
                                                        resource (if known), op (monitor,
                                                        start, stop) and fail_count (the
                                                        group's on ``node`` after it)
FailCountsCleared          ``fail_counts_cleared``      group
GroupMoved                 ``group_moved``              group, from_node, to_node
QuorumGained / QuorumLost  ``quorum_gained`` / ...      (none)
FencingRequested           ``fencing_requested``        member, level, device, detail,
                                                        until (a time-based wait's end)
FencingCompleted           ``fencing_completed``        member, ok, level, device, detail
Decision                   ``decision``                 topic, fields (everything else the
                                                        node decided: requests, config ...)
Missed                     ``missed``                   count (only from the event socket)
=========================  ===========================  ===================================

:func:`to_dict` / :func:`from_dict` turn them into JSON-ready dicts and back (the event
socket's wire format); unknown keys are ignored and unknown kinds become :class:`Decision`,
so an older client keeps working with a newer daemon.

A base module: it imports nothing else of Vigil, so that every layer may use it (the core, the
actors, the configuration's alert kinds); applications import the same names from
:mod:`vigil.api`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "KINDS",
    "Decision",
    "FailCountsCleared",
    "FencingCompleted",
    "FencingRequested",
    "GroupMoved",
    "GroupStateChanged",
    "LinkDown",
    "LinkUp",
    "MirrorCaughtUp",
    "MirrorDiverged",
    "MirrorLagging",
    "Missed",
    "NicDown",
    "NicUp",
    "NodeJoined",
    "NodeLost",
    "Notification",
    "QuorumGained",
    "QuorumLost",
    "ResourceStateChanged",
    "TransitionCompleted",
    "TransitionStarted",
    "from_dict",
    "to_dict",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """The common part of every notification."""

    kind: ClassVar[str] = "notification"
    node: str
    time: float
    text: str
    seq: int = 0

    def __str__(self) -> str:
        return f"[{self.node}] {self.kind}: {self.text}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TransitionStarted(Notification):
    kind: ClassVar[str] = "transition_started"
    epoch: str
    master: str
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransitionCompleted(Notification):
    kind: ClassVar[str] = "transition_completed"
    epoch: str
    #: (group, node or "" for nowhere), sorted by group: a tuple, so the object is immutable
    placement: tuple[tuple[str, str], ...] = ()

    def where(self, group: str) -> str | None:
        return dict(self.placement).get(group) or None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeJoined(Notification):
    kind: ClassVar[str] = "node_joined"
    member: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeLost(Notification):
    kind: ClassVar[str] = "node_lost"
    member: str
    clean: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkUp(Notification):
    kind: ClassVar[str] = "link_up"
    member: str
    link: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkDown(Notification):
    kind: ClassVar[str] = "link_down"
    member: str
    link: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NicUp(Notification):
    """A NIC of ``node`` is usable again (and stayed so for the hold: docs/configuration.md)."""

    kind: ClassVar[str] = "nic_up"
    nic: str
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NicDown(Notification):
    """A NIC of ``node`` cannot pass traffic: ``reason`` says why."""

    kind: ClassVar[str] = "nic_down"
    nic: str
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorLagging(Notification):
    """On the source of mirror resource ``resource``: the freshest copy on any other node
    (the best standby's) is now more than ``max_lag`` seconds behind, so a failover would
    lose more than that, or could not take place (``lag`` None: no other node has a copy)."""

    kind: ClassVar[str] = "mirror_lagging"
    resource: str
    group: str
    lag: float | None = None
    max_lag: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorCaughtUp(Notification):
    """After :class:`MirrorLagging`: the best standby's copy is within ``max_lag`` again."""

    kind: ClassVar[str] = "mirror_caught_up"
    resource: str
    group: str
    lag: float = 0.0
    max_lag: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorDiverged(Notification):
    """``node`` set aside ``names`` (snapshots of a history the source does not share, or
    its former data): kept, never merged nor deleted, until an operator decides."""

    kind: ClassVar[str] = "mirror_diverged"
    resource: str
    group: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceStateChanged(Notification):
    kind: ClassVar[str] = "resource_state_changed"
    resource: str
    group: str
    state: str
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupStateChanged(Notification):
    kind: ClassVar[str] = "group_state_changed"
    group: str
    state: str  # starting, running, stopping, stopped, unclean, failed
    reason: str = ""
    #: of a failure (state failed or unclean): the resource that failed ("" when the group's
    #: start failed as a whole), the operation, and the group's fail count on ``node`` after it
    resource: str = ""
    op: str = ""
    fail_count: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class FailCountsCleared(Notification):
    """`vigil resource cleanup` cleared the group's fail counts on ``node``."""

    kind: ClassVar[str] = "fail_counts_cleared"
    group: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupMoved(Notification):
    kind: ClassVar[str] = "group_moved"
    group: str
    from_node: str  # "" when it ran nowhere
    to_node: str  # "" when it runs nowhere now


@dataclass(frozen=True, slots=True, kw_only=True)
class QuorumGained(Notification):
    kind: ClassVar[str] = "quorum_gained"


@dataclass(frozen=True, slots=True, kw_only=True)
class QuorumLost(Notification):
    kind: ClassVar[str] = "quorum_lost"


@dataclass(frozen=True, slots=True, kw_only=True)
class FencingRequested(Notification):
    """``node`` (the master, or the node that ran an operator's request) fences ``member``:
    with a fence device, ``level`` (1 for the first of ``[fencing] levels``) and ``device``
    (the level's devices, joined with ``+``); level 0 and no device for a time-based wait
    (fencers ``guardian`` and ``silence``), whose end is ``until``. ``detail`` says why it is
    fenced."""

    kind: ClassVar[str] = "fencing_requested"
    member: str
    level: int = 0
    device: str = ""
    detail: str = ""
    #: a time-based wait: when it ends (same clock as ``time``); 0 for a fence device
    until: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FencingCompleted(Notification):
    """The fencing of ``member`` ended: ``ok`` when it is off (a device powered it off, the
    wait is over, or an operator confirmed it), else failed; ``level`` and ``device`` as in
    :class:`FencingRequested` (level 0 and no device for an operator's confirmation);
    ``detail`` is the agents' own word, or why it counts as off."""

    kind: ClassVar[str] = "fencing_completed"
    member: str
    ok: bool = True
    level: int = 0
    device: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision(Notification):
    kind: ClassVar[str] = "decision"
    topic: str = ""  # request, placement, config, membership, ...
    fields: tuple[tuple[str, str], ...] = field(default=())
    #: "info", or "warning" for what an operator should act on (logged at that level)
    severity: str = "info"

    def field(self, name: str, default: str = "") -> str:
        return dict(self.fields).get(name, default)


@dataclass(frozen=True, slots=True, kw_only=True)
class Missed(Notification):
    """The event socket dropped ``count`` notifications for this subscriber (it was slow)."""

    kind: ClassVar[str] = "missed"
    count: int


_TYPES: dict[str, type[Notification]] = {
    cls.kind: cls for cls in (
        TransitionStarted, TransitionCompleted, NodeJoined, NodeLost, LinkUp, LinkDown,
        NicUp, NicDown, MirrorLagging, MirrorCaughtUp, MirrorDiverged, ResourceStateChanged,
        GroupStateChanged, FailCountsCleared, GroupMoved,
        QuorumGained, QuorumLost, FencingRequested, FencingCompleted, Decision, Missed)
}
#: Every kind a subscriber can ask for.
KINDS: frozenset[str] = frozenset(_TYPES)


def to_dict(note: Notification) -> dict[str, Any]:
    """A JSON-ready dict: ``kind`` plus every field (pairs become objects)."""
    out: dict[str, Any] = {"kind": note.kind}
    for f in dataclasses.fields(note):
        value = getattr(note, f.name)
        if f.name in ("placement", "fields"):
            value = dict(value)
        out[f.name] = value
    return out


def from_dict(data: Mapping[str, Any]) -> Notification:
    """The notification ``data`` describes (as :func:`to_dict` makes it). Raises ValueError
    for data that is not a notification at all (no node, time or text)."""
    cls = _TYPES.get(str(data.get("kind", "")), Decision)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name in ("placement", "fields") and isinstance(value, Mapping):
            value = tuple(sorted((str(k), "" if v is None else str(v))
                                 for k, v in value.items()))
        elif isinstance(value, list):  # a tuple field, as JSON carries it
            value = tuple(value)
        kwargs[f.name] = value
    if cls is Decision and data.get("kind") not in (None, "decision"):
        kwargs.setdefault("topic", str(data.get("kind")))
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"not a {cls.kind} notification: {exc}") from None
