"""The cluster's history as one node knows it: what is worth telling every node, what it
heard from the others, and the failed actions of every node.

Each node sends its own significant notifications (its failures, the fencing it ran, the
transitions it declared and why, the placements it decided, operators' requests it took,
its NICs) to every node as a
:class:`~vigil.cluster.wire.News` message, once, when they happen. A node keeps the
cluster's recent ones (its own and those heard), each once (by origin, life and number),
and the last failure of each resource on each node until a cleanup of its group: what
`vigil status` shows as "Failed resource actions" on any node. A node that is down, or cut
off, when another sends misses that news for good (nothing is sent again); its history and
failure lines lack it (docs/operations.md, "The cluster's history").

Times are the core's clock, as everywhere in the core: a heard notification is dated by
this node's clock when it arrived, less the age the sender gave it.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable

from vigil.cluster.wire import News
from vigil.notifications import (
    Decision,
    FencingCompleted,
    FencingRequested,
    GroupStateChanged,
    MirrorDiverged,
    MirrorLagging,
    NicDown,
    NicUp,
    Notification,
    TransitionCompleted,
    TransitionStarted,
)

__all__ = ["LIMIT", "ClusterHistory", "FailureKey", "bookkeeping", "failure", "significant"]

#: significant notifications kept (every node's), and failure lines kept
LIMIT = 200
#: (origin, life, number) of the news already taken, remembered to drop a second copy
_SEEN = 4096
#: the longest text a news carries (a failure's reason can be an agent's long output)
TEXT_LIMIT = 2000

FailureKey = tuple[str, str, str, str]  # (node, group, resource, op)

_ALWAYS = (FencingRequested, FencingCompleted, NicDown, NicUp, MirrorLagging, MirrorDiverged)


def failure(note: Notification) -> GroupStateChanged | None:
    """``note`` as a failed action (a group failed or became unclean), or None."""
    if isinstance(note, GroupStateChanged) and note.state in ("failed", "unclean"):
        return note
    return None


def significant(note: Notification, node: str) -> bool:
    """Whether ``node`` tells every node of its notification ``note``: what explains, seen
    from another node, why a group moved or a node was shot. What every node sees for
    itself (nodes lost, quorum, placements accepted) stays home."""
    if note.node != node:
        return False
    if isinstance(note, TransitionStarted):
        return note.master == node  # declared here, with the reason; members only join
    if isinstance(note, Decision):
        return note.topic in ("request", "placement")  # the master's, with what changed
    return failure(note) is not None or isinstance(note, _ALWAYS)


def bookkeeping(note: Notification) -> bool:
    """Whether ``note`` is the protocol's bookkeeping (a transition over, an epoch closed),
    left out of the history people read unless they ask for everything."""
    return isinstance(note, TransitionCompleted) or (
        isinstance(note, Decision) and note.topic == "transition")


class ClusterHistory:
    """The significant notifications of every node (bounded), and the failed actions."""

    def __init__(self, node: str, incarnation: int) -> None:
        self.node = node
        self.incarnation = incarnation
        self.sent = 0  # news numbered in this life
        self.recent: deque[Notification] = deque(maxlen=LIMIT)  # oldest first
        self.failed: dict[FailureKey, GroupStateChanged] = {}  # oldest first
        self._seen: set[tuple[str, int, int]] = set()
        self._seen_order: deque[tuple[str, int, int]] = deque()

    def local(self, notes: Iterable[Notification]) -> list[News]:
        """Record this node's significant notifications; the news to send every node."""
        out = []
        for note in notes:
            if not significant(note, self.node):
                continue
            self._record(note)
            self.sent += 1
            if len(note.text) > TEXT_LIMIT:
                note = dataclasses.replace(note, text=note.text[:TEXT_LIMIT] + " [shortened]")
            if isinstance(note, FencingRequested) and note.until:
                # a time of this core's clock means nothing elsewhere: sent as a span
                note = dataclasses.replace(note, until=note.until - note.time)
            out.append(News(self.sent, self.incarnation, 0, note))
        return out

    def heard(self, sender: str, news: News, now: float) -> Notification | None:
        """A peer's news: the notification as this node keeps it (its node the sender, dated
        on this node's clock), or None for a copy already taken."""
        key = (sender, news.incarnation, news.n)
        if key in self._seen:
            return None
        self._seen.add(key)
        self._seen_order.append(key)
        if len(self._seen_order) > _SEEN:
            self._seen.discard(self._seen_order.popleft())
        note = dataclasses.replace(news.note, node=sender, time=now - news.age_ms / 1000,
                                   seq=0)
        if isinstance(note, FencingRequested) and note.until:
            note = dataclasses.replace(note, until=note.time + note.until)
        self._record(note)
        return note

    def clear(self, group: str) -> None:
        """A cleanup of ``group``: its failed actions are gone, on every node."""
        self.failed = {k: v for k, v in self.failed.items() if k[1] != group}

    def _record(self, note: Notification) -> None:
        self.recent.append(note)
        failed = failure(note)
        if failed is None:
            return
        key = (failed.node, failed.group, failed.resource, failed.op)
        self.failed.pop(key, None)  # the newest last
        self.failed[key] = failed
        while len(self.failed) > LIMIT:
            del self.failed[next(iter(self.failed))]
