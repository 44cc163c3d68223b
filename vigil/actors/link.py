"""LinkActor: one per NIC (link). It owns the link's transport endpoint (ZeroMQ PUB/SUB, or
the in-memory network in tests), checks every arriving message (authentication, sender,
replay: see :mod:`vigil.transports.codec`) and hands the good ones to the coordinator (which
knows, per peer and link, when it last heard from it: `vigil status` shows each link).

A copy of a message that came first over another link is dropped, but still proves that
this link carries the sender's messages: the coordinator hears of it
(:class:`~vigil.cluster.events.CopyReceived`), else a link that always loses the race would
look dead. What the link says of itself (its connections, the messages dropped on it, the
connections it cut) goes to the coordinator once it is bound, then whenever it changed, seen
each time the node sends (every heartbeat interval): never more often, whatever arrives.

Neither direction needs this actor's thread in a calm cluster: a received message goes from
the reader thread straight to the coordinator (:meth:`Directory.deliver`), which handles a
routine heartbeat there and then, and the coordinator sends on the caller's thread too
(the link's ``send`` is thread-safe). The mailbox takes what is dropped and the rest."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import pykka

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import ChildRestarted, SendFrames
from vigil.cluster.events import CopyReceived, Received
from vigil.cluster.view import LinkFacts
from vigil.transports import Codec, Link, Rejected
from vigil.transports.base import FrameHandler, ObservedLink

log = logging.getLogger(__name__)

LinkFactory = Callable[[str, FrameHandler], Link]


@dataclass(frozen=True, slots=True)
class _SendFailed:
    """Sending on another thread raised: this actor fails with it."""

    error: Exception


class LinkActor(VigilActor):
    def __init__(self, name: str, directory: Directory, link_name: str, codec: Codec,
                 factory: LinkFactory, copy_every: float = 0.1) -> None:
        super().__init__(name, directory)
        self.link_name = link_name
        self.codec = codec
        self.factory = factory
        self.link: Link | None = None
        self._warned: set[str] = set()
        self._rejected: Counter[str] = Counter()  # reason -> dropped on this link
        self._lock = threading.Lock()  # the reader thread counts copies too
        #: how often, at most, a copy from one sender is news (CopyReceived), and when it
        #: last was; on the reader thread only
        self.copy_every = copy_every
        self._copy_told: dict[str, float] = {}
        self._told: LinkFacts | None = None  # what the coordinator was told last
        self._observed = False  # the link says how its connections are (ObservedLink)

    def on_start(self) -> None:
        self.link = self.factory(self.link_name, self._on_frames)
        # asked once: a runtime protocol check costs microseconds, and this is every send
        self._observed = isinstance(self.link, ObservedLink)
        self.link.start()
        self._tell_facts()
        self.directory.set_direct(self.name, self._send_now)

    def _send_now(self, message: object) -> bool:
        """On the sender's thread (the coordinator's shell): send the frames at once. What
        goes wrong is this actor's failure, not the sender's."""
        link = self.link
        if not isinstance(message, SendFrames) or link is None:
            return False
        try:
            link.send(list(message.frames))
            self._tell_facts()
        except Exception as exc:
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.tell(_SendFailed(exc))
        return True

    def _on_frames(self, _link: str, frames: list[bytes]) -> None:
        """On the link's reader thread: check the message there (the codec is made for it)
        and hand a good one straight to the coordinator. Nearly all are heartbeats, and a
        hop through this actor's mailbox cost a thread switch each. A copy that came first
        over another link is news to the coordinator only now and then (it proves that this
        link works); what is dropped comes to this actor, which says why."""
        try:
            msg = self.codec.decode(frames)
        except Rejected as exc:
            if exc.reason == "duplicate" and exc.sender:
                now = time.monotonic()
                if now - self._copy_told.get(exc.sender, -math.inf) >= self.copy_every:
                    self._copy_told[exc.sender] = now
                    self.directory.tell("coordinator", CopyReceived(exc.sender,
                                                                    self.link_name))
                with self._lock:
                    self._rejected[exc.reason] += 1
                return
            # frames that arrive while the node shuts down have no one left to read them
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.tell(exc)
            return
        self.directory.deliver("coordinator", Received(msg, self.link_name))

    def on_stop(self) -> None:
        self.release()

    def release(self) -> None:
        # also when it failed: the actor that replaces it binds the same address
        self.directory.remove_direct(self.name, self._send_now)
        if self.link is not None:
            self.link.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _SendFailed):
            raise message.error
        if isinstance(message, Rejected):
            self._dropped(message)
        elif isinstance(message, SendFrames) and self.link is not None:
            self.link.send(list(message.frames))
            self._tell_facts()
        elif isinstance(message, ChildRestarted) and message.name == "coordinator":
            with self._lock:
                self._told = None  # a new coordinator knows nothing of this link yet
            self._tell_facts()
        return None

    def _tell_facts(self) -> None:
        link = self.link
        connections: dict[str, str] = {}
        cut = 0
        if link is not None and self._observed:
            observed = cast(ObservedLink, link)
            connections, cut = dict(observed.peer_states()), observed.cut()
        with self._lock:
            rejected = dict(self._rejected)
            facts = LinkFacts(self.link_name, connections, rejected, cut)
            if facts == self._told:  # whoever sends: this actor or the coordinator's shell
                return
            self._told = facts
            # told under the lock: two senders must not tell in the other order
            self.directory.tell("coordinator", facts)

    def _dropped(self, exc: Rejected) -> None:
        with self._lock:  # counted by the codec too (`vigil status`: messages)
            self._rejected[exc.reason] += 1
        if exc.reason in ("duplicate", "own"):
            return  # our own broadcast
        # Say it once per reason at warning level: a forged or misconfigured peer should be
        # visible to the operator without flooding the log.
        level = logging.DEBUG if exc.reason in self._warned else logging.WARNING
        self._warned.add(exc.reason)
        log.log(level, "link %s: dropped a %s message: %s", self.link_name, exc.reason,
                exc.detail)
