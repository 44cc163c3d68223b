"""A thread that samples something every ``interval`` while a test acts: a context manager.
Subclasses define :meth:`Poller.poll` (one sample); it runs on the thread until the ``with``
block ends."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Self


class Poller:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__,
                                        daemon=True)

    def poll(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()
