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
from types import TracebackType
from typing import Any

import pykka

log = logging.getLogger(__name__)


class Directory:
    """name -> ActorRef of one node's actors; the supervisor rewrites an entry on restart."""

    def __init__(self) -> None:
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
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
