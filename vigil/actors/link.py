"""LinkActor: one per NIC (link). It owns the link's transport endpoint (ZeroMQ PUB/SUB, or
the in-memory network in tests), checks every arriving message (authentication, sender,
replay: see :mod:`vigil.transports.codec`) and hands the good ones to the coordinator (which
knows, per peer and link, when it last heard from it: `vigil status` shows each link).

A copy of a message that came first over another link is dropped, but still proves that
this link carries the sender's messages: the coordinator hears of it
(:class:`~vigil.cluster.events.CopyReceived`), else a link that always loses the race would
look dead. What the link says of itself (its connections, the messages dropped on it, the
connections it cut) goes to the coordinator once it is bound, then whenever it changed, seen
each time the node sends (every heartbeat interval): never more often, whatever arrives."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import pykka

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import ChildRestarted, Frames, SendFrames
from vigil.cluster.events import CopyReceived, Received
from vigil.cluster.view import LinkFacts
from vigil.transports import Codec, Link, Rejected
from vigil.transports.base import FrameHandler, ObservedLink

log = logging.getLogger(__name__)

LinkFactory = Callable[[str, FrameHandler], Link]


class LinkActor(VigilActor):
    def __init__(self, name: str, directory: Directory, link_name: str, codec: Codec,
                 factory: LinkFactory) -> None:
        super().__init__(name, directory)
        self.link_name = link_name
        self.codec = codec
        self.factory = factory
        self.link: Link | None = None
        self._warned: set[str] = set()
        self._rejected: Counter[str] = Counter()  # reason -> dropped on this link
        self._told: LinkFacts | None = None  # what the coordinator was told last

    def on_start(self) -> None:
        me = self.actor_ref

        def on_frames(_link: str, frames: list[bytes]) -> None:
            # frames that arrive while the node shuts down have no one left to read them
            with contextlib.suppress(pykka.ActorDeadError):
                me.tell(Frames(tuple(frames)))

        self.link = self.factory(self.link_name, on_frames)
        self.link.start()
        self._tell_facts()

    def on_stop(self) -> None:
        if self.link is not None:
            self.link.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Frames):
            self._arrived(message.frames)
        elif isinstance(message, SendFrames) and self.link is not None:
            self.link.send(list(message.frames))
            self._tell_facts()
        elif isinstance(message, ChildRestarted) and message.name == "coordinator":
            self._told = None  # a new coordinator knows nothing of this link yet
            self._tell_facts()
        return None

    def _tell_facts(self) -> None:
        link = self.link
        connections: dict[str, str] = {}
        cut = 0
        if isinstance(link, ObservedLink):
            connections, cut = dict(link.peer_states()), link.cut()
        facts = LinkFacts(self.link_name, connections, dict(self._rejected), cut)
        if facts != self._told:
            self._told = facts
            self.directory.tell("coordinator", facts)

    def _arrived(self, frames: tuple[bytes, ...]) -> None:
        try:
            msg = self.codec.decode(frames)
        except Rejected as exc:  # counted by the codec (`vigil status`: messages)
            self._rejected[exc.reason] += 1
            if exc.reason == "duplicate" and exc.sender:
                # the same message over a second link: this one works too
                self.directory.tell("coordinator", CopyReceived(exc.sender, self.link_name))
                return
            if exc.reason in ("duplicate", "own"):
                return  # our own broadcast
            # Say it once per reason at warning level: a forged or misconfigured peer should
            # be visible to the operator without flooding the log.
            level = logging.DEBUG if exc.reason in self._warned else logging.WARNING
            self._warned.add(exc.reason)
            log.log(level, "link %s: dropped a %s message: %s", self.link_name, exc.reason,
                    exc.detail)
            return
        self.directory.tell("coordinator", Received(msg, self.link_name))
