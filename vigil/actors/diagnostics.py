"""DiagnosticsActor: the seed's scheduled diagnostics. Every resource of a group in service
here is monitored at its ``monitor.interval``; a failed monitor is reported to the
coordinator, whose core decides the recovery (docs/protocol.md)."""

from __future__ import annotations

import heapq
import logging
import time
from typing import Any

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import ResourceOp, ResourceOpDone, RunningGroups
from vigil.actors.timer import DeadlineTimer
from vigil.cluster.events import GroupFailed, Tick
from vigil.config import ClusterConfig

log = logging.getLogger(__name__)


class DiagnosticsActor(VigilActor):
    def __init__(self, name: str, directory: Directory, config: ClusterConfig) -> None:
        super().__init__(name, directory)
        self.config = config
        self.running: frozenset[str] = frozenset()
        self.due: list[tuple[float, str]] = []
        self.token = 0
        self.in_flight: dict[str, int] = {}
        self.last: dict[str, tuple[bool, str, float]] = {}
        self.timer: DeadlineTimer | None = None

    def on_start(self) -> None:
        me = self.actor_ref
        self.timer = DeadlineTimer("diagnostics", lambda: me.tell(Tick()))

    def on_stop(self) -> None:
        if self.timer is not None:
            self.timer.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, RunningGroups):
            started = message.groups - self.running
            self.running = message.groups
            now = time.monotonic()
            for g in sorted(started):
                for r in self.config.groups[g].resources:
                    interval = self.config.resources[r].monitor.interval
                    if interval > 0:
                        heapq.heappush(self.due, (now + interval, r))
        elif isinstance(message, ResourceOpDone):
            self._result(message)
        elif isinstance(message, Tick):
            pass
        self._run_due()
        return None

    def _run_due(self) -> None:
        now = time.monotonic()
        while self.due and self.due[0][0] <= now:
            _, r = heapq.heappop(self.due)
            group = self.config.resources[r].group
            if group not in self.running or r in self.in_flight:
                continue  # dropped: the group is not in service here any more
            self.token += 1
            self.in_flight[r] = self.token
            self.directory.tell(f"resource:{r}", ResourceOp("monitor", self.token, self.name))
        if self.timer is not None:
            self.timer.set(self.due[0][0] if self.due else None)

    def _result(self, done: ResourceOpDone) -> None:
        if self.in_flight.get(done.resource) != done.token:
            return
        del self.in_flight[done.resource]
        cfg = self.config.resources[done.resource]
        self.last[done.resource] = (done.result.ok, done.result.reason, time.time())
        if cfg.group not in self.running:
            return
        if not done.result.ok:
            log.warning("monitor of %s failed: %s", done.resource, done.result.reason)
            self.directory.tell("coordinator", GroupFailed(
                cfg.group, f"monitor of {done.resource}: {done.result.reason}"))
            return
        heapq.heappush(self.due, (time.monotonic() + cfg.monitor.interval, done.resource))
