"""The daemon's side of its node's guardian (docs/fencing.md, "The guardian").

The coordinator tells the guardian, after every event the core handled and *before* any
start leaves for a group actor, until when the node may hold anything (the core's lease) and
what the node's active groups hold (their resources' cgroups, addresses and mounts). The
guardian kills all of it once that time has passed or the daemon is gone. A reader thread
turns what the guardian says into messages for the coordinator: ``GuardFenced`` (it killed
everything: the core counts every group as out of service) and :class:`GuardianLost` (the
node has nothing left that fences it locally: it leaves the cluster at once).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vigil.cluster.events import GuardFenced
from vigil.guard.client import FencedEvent, GuardClient, GuardError, GuardianGone
from vigil.guard.holdings import Holdings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GuardianLost:
    """The connection to the guardian is gone: this node must stop what it runs."""

    reason: str


class GuardLink:
    def __init__(self, client: GuardClient,
                 holdings_of: Callable[[Iterable[str]], Holdings], incarnation: int) -> None:
        self.client = client
        client.incarnation = incarnation
        self.holdings_of = holdings_of
        self._last: tuple[float, frozenset[str]] | None = None
        self._holdings: tuple[frozenset[str], Holdings] | None = None
        self._stop = threading.Event()
        self._reader_stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, tell: Callable[[object], object]) -> None:
        """Read the guardian's messages on a thread of its own; ``tell`` gets them. A reader
        started before (by a coordinator that failed) ends."""
        self._reader_stop.set()
        mine = self._reader_stop = threading.Event()

        def read() -> None:
            while not (self._stop.is_set() or mine.is_set()):
                for event in self.client.wait(0.5):
                    if isinstance(event, FencedEvent):
                        log.error("the guardian fenced this node: %s", event.report.summary())
                        tell(GuardFenced(event.report.reason, event.report.at))
                    elif isinstance(event, GuardianGone) and not self._stop.is_set():
                        tell(GuardianLost(event.reason))
                        return
                    elif isinstance(event, GuardError):
                        log.error("the guardian refused a message: %s", event.message)

        self._thread = threading.Thread(target=read, name="vigil-guard-reader", daemon=True)
        self._thread.start()

    def report(self, lease_until: float, groups: frozenset[str]) -> None:
        """Tell the guardian the lease and what ``groups`` (active here) hold, if changed."""
        if self._last == (lease_until, groups):
            return
        if self._holdings is None or self._holdings[0] != groups:
            # what a set of groups holds is fixed by their resources (cgroup, addresses,
            # mounts): worked out when the set changes, not at every lease renewal
            self._holdings = (groups, self.holdings_of(groups))
        self._last = (lease_until, groups)
        self.client.report(lease_until if lease_until > -math.inf else None,
                           self._holdings[1])

    def forget_holdings(self) -> None:
        """The resources were rebuilt (a configuration switch): work out holdings again."""
        self._holdings = None
        self._last = None

    def bye(self) -> None:
        """Everything is stopped and the node leaves: the guardian has nothing to guard."""
        self._stop.set()
        self.client.bye()
        self.client.close()

    def close(self) -> None:
        self._stop.set()
        self.client.close(flush_timeout=0.2)
