"""One small thread that turns a deadline into a ``tell`` (actors never sleep)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class DeadlineTimer:
    def __init__(self, name: str, fire: Callable[[], None]) -> None:
        self._fire = fire
        self._deadline: float | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"vigil-timer-{name}",
                                        daemon=True)
        self._thread.start()

    def set(self, deadline: float | None) -> None:
        """``deadline`` on the time.monotonic() clock; None = nothing to wait for."""
        with self._cond:
            # The thread needs waking only for an earlier deadline: for a later one (or
            # none) it wakes at the old time, looks again and waits on. The coordinator
            # sets a deadline after every event, and a notify each time was a tenth of its
            # CPU in a calm cluster.
            earlier = deadline is not None and (self._deadline is None
                                                or deadline < self._deadline)
            self._deadline = deadline
            if earlier:
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._deadline is None:
                        self._cond.wait(timeout=1.0)
                        continue
                    delay = self._deadline - time.monotonic()
                    if delay <= 0:
                        break
                    self._cond.wait(timeout=min(delay, 1.0))
                if self._closed:
                    return
                self._deadline = None
            self._fire()
