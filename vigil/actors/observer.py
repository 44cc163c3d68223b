"""Turns what the core says and does into typed application notifications.

Two sources: the core's :class:`~vigil.cluster.events.Notice` actions (transitions, group
states, fencing, and every other decision in words), and the differences between two looks
at the core after an event (who is alive, which links are heard, quorum, where groups are
placed). Both are observations only: nothing here decides anything.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from vigil.cluster.events import Notice
from vigil.cluster.node import NodeCore
from vigil.notifications import (
    Decision,
    FencingCompleted,
    FencingRequested,
    GroupMoved,
    GroupStateChanged,
    LinkDown,
    LinkUp,
    NodeJoined,
    NodeLost,
    Notification,
    QuorumGained,
    QuorumLost,
    TransitionCompleted,
    TransitionStarted,
)


class Observer:
    def __init__(self, node: str) -> None:
        self.node = node
        self.alive: frozenset[str] | None = None
        self.links: dict[tuple[str, str], bool] = {}
        self.quorate: bool | None = None
        self.placement: dict[str, str | None] = {}
        self.epoch: object = None  # of the placement seen last

    def from_notice(self, notice: Notice, core: NodeCore) -> Iterator[Notification]:
        f = dict(notice.fields)
        base: dict[str, Any] = {"node": self.node, "time": time.time(), "text": notice.text}
        event = f.pop("event", "")
        if event == "transition_started":
            yield TransitionStarted(**base, epoch=f.get("epoch", ""),
                                    master=f.get("master", ""), reason=f.get("reason", ""))
        elif event == "transition_completed":
            placement = tuple(sorted((g, n or "")
                                     for g, n in core.accepted.placement.items()))
            yield TransitionCompleted(**base, epoch=f.get("epoch", ""), placement=placement)
        elif event == "group_state":
            yield GroupStateChanged(**base, group=f.get("group", ""), state=f.get("state", ""),
                                    reason=f.get("reason", ""))
        elif event == "fencing_requested":
            for member in filter(None, f.get("members", "").split(",")):
                yield FencingRequested(**base, member=member)
        elif event == "fencing_completed":
            for member in filter(None, f.get("members", "").split(",")):
                yield FencingCompleted(**base, member=member, ok=f.get("ok") == "1")
        else:
            yield Decision(**base, topic=notice.kind, fields=tuple(sorted(f.items())))

    def changes(self, core: NodeCore) -> Iterator[Notification]:
        """What changed since the last look (nothing on the first look: that is the
        starting point, not news)."""
        now = time.time()
        alive = core.alive()
        links = {(n, link): up for n, ls in core.link_state().items() for link, up in ls.items()
                 if n != self.node}
        quorate = core.quorate()
        # This runs after every event, heartbeats included: look at the placement (as many
        # entries as groups) only when a new one was accepted.
        epoch = core.accepted.epoch
        placement = self.placement if epoch == self.epoch else dict(core.accepted.placement)
        first = self.alive is None
        previous_alive = self.alive or alive
        if not first:
            for member in sorted(alive - previous_alive):
                yield NodeJoined(node=self.node, time=now, member=member,
                                 text=f"{member} joined (heard again)")
            for member in sorted(previous_alive - alive):
                clean = member in core.departed
                yield NodeLost(node=self.node, time=now, member=member, clean=clean,
                               text=f"{member} {'left cleanly' if clean else 'lost'}")
            for (member, link), up in sorted(links.items()):
                if self.links.get((member, link), up) != up:
                    cls = LinkUp if up else LinkDown
                    yield cls(node=self.node, time=now, member=member, link=link,
                              text=f"link {link} to {member} {'up' if up else 'down'}")
            if quorate != self.quorate:
                yield (QuorumGained(node=self.node, time=now, text="quorum gained") if quorate
                       else QuorumLost(node=self.node, time=now, text="quorum lost"))
            for group in (() if placement is self.placement else
                          sorted(set(placement) | set(self.placement))):
                before, after = self.placement.get(group), placement.get(group)
                if before != after and (before is not None or after is not None):
                    yield GroupMoved(node=self.node, time=now, group=group,
                                     from_node=before or "", to_node=after or "",
                                     text=f"{group} placed on {after or 'no node'} (was "
                                          f"{before or 'nowhere'})")
        self.alive, self.links, self.quorate = alive, links, quorate
        self.placement, self.epoch = placement, epoch
