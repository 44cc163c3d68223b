"""What every Vigil actor shares: a directory of live actor refs (so a restarted child is
found under its old name) and the supervision contract.

Pykka's failure contract, used on purpose: an exception in a ``tell`` stops the actor and
calls ``on_failure``; ours tells the supervisor, which starts a fresh actor under the same
name and says so in the log.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pykka

log = logging.getLogger(__name__)


class Directory:
    """name -> ActorRef of one node's actors; the supervisor rewrites an entry on restart.

    An actor may also take some messages *directly*, on the sender's thread
    (:meth:`deliver`): the coordinator a routine heartbeat on the link's reader thread, a
    link the frames to send. Nearly every message of a calm cluster is one of those, and a
    hop through a mailbox costs two thread switches, more than the work it hands over."""

    def __init__(self) -> None:
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
        self._direct: dict[str, Callable[[object], bool]] = {}
        self._lock = threading.Lock()

    def set(self, name: str, ref: pykka.ActorRef[Any]) -> None:
        with self._lock:
            self._refs[name] = ref

    def remove(self, name: str) -> None:
        with self._lock:
            self._refs.pop(name, None)

    def get(self, name: str) -> pykka.ActorRef[Any] | None:
        with self._lock:
            return self._refs.get(name)

    def tell(self, name: str, message: object) -> bool:
        ref = self.get(name)
        if ref is None:
            return False
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            return False
        return True

    def set_direct(self, name: str, take: Callable[[object], bool]) -> None:
        """``take(message)`` handles a message for ``name`` on the caller's thread (True),
        or declines it (False: it is told as usual). It must be thread-safe."""
        with self._lock:
            self._direct[name] = take

    def remove_direct(self, name: str, take: Callable[[object], bool]) -> None:
        with self._lock:
            if self._direct.get(name) == take:
                del self._direct[name]

    def deliver(self, name: str, message: object) -> bool:
        """Hand ``message`` to ``name`` directly if it takes it, else :meth:`tell` it."""
        take = self._direct.get(name)  # one dict read: atomic, and this is the hot path
        if take is not None and take(message):
            return True
        return self.tell(name, message)

    def names(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(n for n in self._refs if n.startswith(prefix))

    def stop_all(self, timeout: float = 5.0) -> None:
        with self._lock:
            refs = list(self._refs.values())
        for ref in refs:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(block=True, timeout=timeout)


class VigilActor(pykka.ThreadingActor):
    """Base of every node actor: knows its name, the directory and its supervisor."""

    def __init__(self, name: str, directory: Directory) -> None:
        super().__init__()
        self.name = name
        self.directory = directory

    def release(self) -> None:
        """Let go of what a restarted actor of the same name will take again (a socket
        bound to a path, worker threads): called when this one fails."""

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        from vigil.actors.messages import ChildFailed

        self.release()
        log.error("actor %s failed: %s: %s", self.name,
                  exception_type.__name__ if exception_type else "?", exception_value)
        self.directory.tell("node", ChildFailed(self.name, repr(exception_value)))
