"""DiagnosticsActor: the seed's resource diagnostics, scheduled and manual.

Every resource of a group in service here is monitored at its ``monitor.interval``; a failed
monitor, or one that does not answer within its ``monitor.timeout`` (plus a grace for the
agent's own cleanup), is reported to the coordinator with the resource's ``on_fail`` policy,
and the core decides the recovery (docs/resources.md). Monitoring goes on after a failure:
the core ignores reports about a group that is already recovering.

``vigil resource diagnose NAME`` asks this actor for one monitor now (:class:`Diagnose`); the
answer is a future resolved when the agent returns, so the actor never waits.
"""

from __future__ import annotations

import heapq
import logging
import time
from typing import Any

import pykka

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import Diagnose, ResourceOp, ResourceOpDone, RunningGroups
from vigil.actors.timer import DeadlineTimer
from vigil.cluster.events import GroupFailed, Tick
from vigil.config import ClusterConfig

log = logging.getLogger(__name__)

#: Beyond its own timeout, how long a monitor may take before it counts as hung: agents
#: kill their children at the timeout and need a moment to say so.
OVERDUE_GRACE = 5.0


class DiagnosticsActor(VigilActor):
    def __init__(self, name: str, directory: Directory, config: ClusterConfig,
                 present: frozenset[str] | None = None) -> None:
        super().__init__(name, directory)
        self.config = config
        self.present = present if present is not None else frozenset(config.resources)
        self.running: frozenset[str] = frozenset()
        self.due: list[tuple[float, str]] = []
        self.token = 0
        # resource -> (token, monotonic start, futures of manual requests waiting for it)
        self.in_flight: dict[str, tuple[int, float, list[pykka.Future[Any]]]] = {}
        self.timer: DeadlineTimer | None = None

    def on_start(self) -> None:
        me = self.actor_ref
        self.timer = DeadlineTimer("diagnostics", lambda: me.tell(Tick()))

    def on_stop(self) -> None:
        if self.timer is not None:
            self.timer.close()

    def on_receive(self, message: Any) -> Any:
        answer = None
        if isinstance(message, RunningGroups):
            started = message.groups - self.running
            self.running = message.groups
            now = time.monotonic()
            for g in sorted(started):
                for r in self.config.groups[g].resources:
                    interval = self.config.resources[r].monitor.interval
                    if interval > 0 and r in self.present:
                        heapq.heappush(self.due, (now + interval, r))
        elif isinstance(message, ResourceOpDone):
            self._result(message)
        elif isinstance(message, Diagnose):
            answer = self._diagnose(message.resource)
        self._check_overdue()
        self._run_due()
        return answer

    def _diagnose(self, resource: str) -> pykka.Future[Any]:
        future: pykka.Future[Any] = pykka.ThreadingFuture()
        if resource not in self.config.resources:
            future.set({"ok": False, "error": f"no resource named {resource!r}; resources: "
                        f"{', '.join(sorted(self.config.resources))}"})
            return future
        if resource not in self.present:
            future.set({"ok": False, "error": f"resource {resource!r} cannot run on this node "
                        "(its type is not installed here)"})
            return future
        if resource not in self.in_flight:
            self._monitor(resource)
        self.in_flight[resource][2].append(future)
        return future

    def _monitor(self, resource: str) -> None:
        self.token += 1
        self.in_flight[resource] = (self.token, time.monotonic(), [])
        self.directory.tell(f"resource:{resource}", ResourceOp("monitor", self.token, self.name))

    def _run_due(self) -> None:
        now = time.monotonic()
        while self.due and self.due[0][0] <= now:
            _, r = heapq.heappop(self.due)
            group = self.config.resources[r].group
            if group not in self.running:
                continue  # dropped: the group is not in service here any more
            if r in self.in_flight:
                heapq.heappush(self.due, (now + self.config.resources[r].monitor.interval, r))
                continue
            self._monitor(r)
        deadlines = [d for d, _ in self.due[:1]] + [
            started + self.config.resources[r].monitor.timeout + OVERDUE_GRACE
            for r, (_, started, _) in self.in_flight.items()]
        if self.timer is not None:
            self.timer.set(min(deadlines) if deadlines else None)

    def _check_overdue(self) -> None:
        now = time.monotonic()
        for r, (_, started, waiting) in list(self.in_flight.items()):
            cfg = self.config.resources[r]
            if now < started + cfg.monitor.timeout + OVERDUE_GRACE:
                continue
            del self.in_flight[r]
            reason = (f"monitor of {r} did not return within its timeout "
                      f"({cfg.monitor.timeout:g}s)")
            for future in waiting:
                future.set({"ok": True, "resource": r, "healthy": False, "state": "FAILED",
                            "reason": reason, "duration": now - started})
            self._failed(r, reason)
            if cfg.monitor.interval > 0:  # keep watching: the next one may answer
                heapq.heappush(self.due, (now + cfg.monitor.interval, r))

    def _result(self, done: ResourceOpDone) -> None:
        entry = self.in_flight.get(done.resource)
        if entry is None or entry[0] != done.token:
            return
        del self.in_flight[done.resource]
        result = done.result
        for future in entry[2]:
            future.set({"ok": True, "resource": done.resource, "healthy": result.ok,
                        "state": result.state.name, "reason": result.reason,
                        "duration": result.duration})
        cfg = self.config.resources[done.resource]
        if cfg.group not in self.running:
            return
        if not result.ok:
            self._failed(done.resource, result.reason)
        if cfg.monitor.interval > 0:
            heapq.heappush(self.due, (time.monotonic() + cfg.monitor.interval, done.resource))

    def _failed(self, resource: str, reason: str) -> None:
        cfg = self.config.resources[resource]
        if cfg.group not in self.running:
            return
        log.warning("monitor of %s failed: %s (on_fail=%s)", resource, reason, cfg.on_fail)
        self.directory.tell("coordinator", GroupFailed(
            cfg.group, f"monitor of {resource}: {reason}", resource=resource,
            policy=cfg.on_fail))
