"""LinkActor: one per NIC (link). It owns the link's transport endpoint (ZeroMQ PUB/SUB, or
the in-memory network in tests), checks every arriving message (authentication, sender,
replay: see :mod:`vigil.transports.codec`) and hands the good ones to the coordinator. It
also watches its NIC: when it last heard anyone on this link."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pykka

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import Frames, GetStatus, SendFrames
from vigil.cluster.events import Received
from vigil.transports import Codec, Link, Rejected
from vigil.transports.base import FrameHandler

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
        self.last_heard: float | None = None
        self.sent = 0
        self.rejected: Counter[str] = Counter()
        self._warned: set[str] = set()

    def on_start(self) -> None:
        me = self.actor_ref

        def on_frames(_link: str, frames: list[bytes]) -> None:
            # frames that arrive while the node shuts down have no one left to read them
            with contextlib.suppress(pykka.ActorDeadError):
                me.tell(Frames(tuple(frames)))

        self.link = self.factory(self.link_name, on_frames)
        self.link.start()

    def on_stop(self) -> None:
        if self.link is not None:
            self.link.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Frames):
            self._arrived(message.frames)
        elif isinstance(message, SendFrames):
            if self.link is not None:
                self.link.send(list(message.frames))
                self.sent += 1
        elif isinstance(message, GetStatus):
            return {
                "link": self.link_name,
                "last_heard_ago": (None if self.last_heard is None
                                   else round(time.monotonic() - self.last_heard, 3)),
                "sent": self.sent,
                "rejected": dict(self.rejected),
            }
        return None

    def _arrived(self, frames: tuple[bytes, ...]) -> None:
        try:
            msg = self.codec.decode(frames)
        except Rejected as exc:
            self.rejected[exc.reason] += 1
            if exc.reason in ("duplicate", "own"):
                return  # the same message over a second link, or our own broadcast
            # Say it once per reason at warning level: a forged or misconfigured peer should
            # be visible to the operator without flooding the log.
            level = logging.DEBUG if exc.reason in self._warned else logging.WARNING
            self._warned.add(exc.reason)
            log.log(level, "link %s: dropped a %s message: %s", self.link_name, exc.reason,
                    exc.detail)
            return
        self.last_heard = time.monotonic()
        self.directory.tell("coordinator", Received(msg, self.link_name))
