"""The coordinator's one deadline timer (vigil.actors.timer): it fires at the newest
deadline set, whether that moved earlier, later, or went away."""

from __future__ import annotations

import threading
import time

from vigil.actors.timer import DeadlineTimer


def test_the_newest_deadline_wins_earlier_later_or_none() -> None:
    fired = threading.Event()
    timer = DeadlineTimer("t", fired.set)
    try:
        timer.set(time.monotonic() + 60.0)
        timer.set(time.monotonic() + 0.05)  # earlier: the thread is woken for it
        assert fired.wait(10.0)
        fired.clear()
        start = time.monotonic()
        timer.set(start + 0.05)
        timer.set(start + 0.3)  # later: it wakes at 0.05, looks, waits on
        assert fired.wait(10.0)
        assert time.monotonic() >= start + 0.3  # never before the deadline
        fired.clear()
        timer.set(time.monotonic() + 0.05)
        timer.set(None)  # nothing to wait for
        assert not fired.wait(0.5)
    finally:
        timer.close()
