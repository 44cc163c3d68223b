"""NotifierActor: every decision and state change of this node goes out from here, to the
log and to the application notification actors registered through :mod:`vigil.api`.

Per subscriber, notifications arrive in the order they happened (one actor sends them, and
Pykka mailboxes are FIFO)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pykka

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import Subscribe, Unsubscribe
from vigil.api.notifications import Notification

log = logging.getLogger("vigil.events")


class NotifierActor(VigilActor):
    def __init__(self, name: str, directory: Directory) -> None:
        super().__init__(name, directory)
        self.subscribers: list[tuple[pykka.ActorRef[Any], frozenset[str] | None]] = []
        self.seq = 0

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Subscribe):
            self.subscribers.append((message.ref, message.kinds))
        elif isinstance(message, Unsubscribe):
            self.subscribers = [(r, k) for r, k in self.subscribers if r != message.ref]
        elif isinstance(message, Notification):
            self._publish(message)
        return None

    def _publish(self, note: Notification) -> None:
        self.seq += 1
        note = dataclasses.replace(note, seq=self.seq)
        log.info("%s: %s", note.kind, note.text)
        alive: list[tuple[pykka.ActorRef[Any], frozenset[str] | None]] = []
        for ref, kinds in self.subscribers:
            if kinds is not None and note.kind not in kinds:
                alive.append((ref, kinds))
                continue
            try:
                ref.tell(note)
                alive.append((ref, kinds))
            except pykka.ActorDeadError:
                log.info("notification subscriber %s is gone; unsubscribed", ref)
        self.subscribers = alive
