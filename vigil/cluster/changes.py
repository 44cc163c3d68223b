"""Notifications of what a core saw change: who is alive, which links are heard, quorum, and
where groups are placed. They come from comparing two looks at the core (after every event);
nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from vigil.cluster.membership import Membership
from vigil.cluster.wire import Accepted
from vigil.notifications import (
    GroupMoved,
    LinkDown,
    LinkUp,
    NodeJoined,
    NodeLost,
    Notification,
    QuorumGained,
    QuorumLost,
)


class Changes:
    """Notifications of what changed between two looks at a core (nothing on the first
    look: that is the starting point, not news)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.alive: frozenset[str] | None = None
        self.links: dict[tuple[str, str], bool] = {}
        self.quorate: bool | None = None
        self.placement: Mapping[str, str | None] = {}
        self.epoch: object = None  # of the placement seen last

    def observe(self, membership: Membership, accepted: Accepted
                ) -> tuple[list[Notification], list[Notification]]:
        """(membership, link and quorum changes, placement changes)."""
        seen = list(self._seen(membership)) if membership.changed else []
        membership.look_done()
        moves: list[Notification] = list(self._moves(membership.now, accepted))
        return seen, moves

    def _seen(self, membership: Membership) -> Iterator[Notification]:
        now = membership.now
        alive = membership.alive()
        links = {(n, link): up for n, ls in membership.link_state().items()
                 for link, up in ls.items() if n != self.node}
        quorate = membership.quorate()
        first = self.alive is None
        previous_alive = self.alive or alive
        self.alive, self.quorate, previous_quorate = alive, quorate, self.quorate
        previous_links, self.links = self.links, links
        if first:
            return
        for member in sorted(alive - previous_alive):
            yield NodeJoined(node=self.node, time=now, member=member,
                             text=f"{member} joined (heard again)")
        for member in sorted(previous_alive - alive):
            clean = member in membership.departed
            yield NodeLost(node=self.node, time=now, member=member, clean=clean,
                           text=f"{member} {'left cleanly' if clean else 'lost'}")
        for (member, link), up in sorted(links.items()):
            if previous_links.get((member, link), up) != up:
                cls = LinkUp if up else LinkDown
                yield cls(node=self.node, time=now, member=member, link=link,
                          text=f"link {link} to {member} {'up' if up else 'down'}")
        if quorate != previous_quorate:
            yield (QuorumGained(node=self.node, time=now, text="quorum gained") if quorate
                   else QuorumLost(node=self.node, time=now, text="quorum lost"))

    def _moves(self, now: float, accepted: Accepted) -> Iterator[GroupMoved]:
        # This runs after every event, heartbeats included: look at the placement (as many
        # entries as groups) only when a new one was accepted.
        epoch = accepted.epoch
        if epoch == self.epoch:
            return
        first = self.epoch is None
        before_all, placement = self.placement, accepted.placement
        self.placement, self.epoch = placement, epoch
        if first:
            return
        for group in sorted(set(placement) | set(before_all)):
            before, after = before_all.get(group), placement.get(group)
            if before != after and (before is not None or after is not None):
                yield GroupMoved(node=self.node, time=now, group=group,
                                 from_node=before or "", to_node=after or "",
                                 text=f"{group} placed on {after or 'no node'} (was "
                                      f"{before or 'nowhere'})")
