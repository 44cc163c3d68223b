"""DiagnosticsActor: the seed's resource diagnostics, scheduled and manual.

Every resource of a group in service here is monitored at its ``monitor.interval`` (up to
:data:`COALESCE`, at most a tenth of the interval, early: with other monitors that run then,
so that they share a wakeup of the timer's thread, :class:`Schedule`); a failed
monitor, or one that does not answer within its ``monitor.timeout`` (plus a grace for the
agent's own cleanup), is reported to the coordinator with the resource's ``on_fail`` policy,
and the core decides the recovery (docs/resources.md). Monitoring goes on after a failure:
the core ignores reports about a group that is already recovering.

``vigil resource diagnose NAME`` asks this actor for one monitor now (:class:`Diagnose`); the
answer is a future resolved when the agent returns, so the actor never waits. Whatever ran a
monitor (scheduled or by hand), the next scheduled one is due ``monitor.interval`` after it
returned: each resource has one place in the :class:`Schedule`.
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

#: The most a scheduled monitor runs before its time (at most a tenth of its interval), with
#: others that run then (docs/resources.md, "Diagnostics").
COALESCE = 1.0


def slack(interval: float) -> float:
    """How early a monitor of ``interval`` may run, with another one that runs then."""
    return min(COALESCE, interval / 10)


class Schedule:
    """When each resource's next scheduled monitor is due: one time per resource (a heap
    ordered by time, whose entries that a newer time replaced are skipped as they come up).
    A monitor may run up to its *slack* before its time, with those that are due then:
    monitors of equal intervals fall into step and share the timer's wakeups, where each
    had its own (the cost of a wakeup is most of what an idle daemon spends). Times are the
    caller's (time.monotonic in the actor)."""

    def __init__(self) -> None:
        self._due: dict[str, tuple[float, float]] = {}  # resource -> (time, slack)
        self._heap: list[tuple[float, str]] = []
        self._widest = 0.0  # no slack set is wider

    def set(self, resource: str, at: float, slack: float = 0.0) -> None:
        """The next monitor of ``resource`` is due at ``at`` (instead of any time it had),
        and may run from ``at - slack`` on."""
        self._due[resource] = (at, slack)
        self._widest = max(self._widest, slack)
        heapq.heappush(self._heap, (at, resource))

    def drop(self, resource: str) -> None:
        self._due.pop(resource, None)

    def __contains__(self, resource: str) -> bool:
        return resource in self._due

    def next(self) -> float | None:
        """The earliest time due (None: nothing scheduled)."""
        self._skip_stale()
        return self._heap[0][0] if self._heap else None

    def take(self, now: float) -> list[str]:
        """The resources that may run at ``now`` (due, or due within their slack), earliest
        first, taken off the schedule."""
        taken, later = [], []
        while (at := self.next()) is not None and at <= now + self._widest:
            _, resource = heapq.heappop(self._heap)
            if at - self._due[resource][1] <= now:
                del self._due[resource]
                taken.append(resource)
            else:
                later.append((at, resource))
        for entry in later:
            heapq.heappush(self._heap, entry)
        return taken

    def _skip_stale(self) -> None:
        heap, due = self._heap, self._due
        while heap and (heap[0][1] not in due or due[heap[0][1]][0] != heap[0][0]):
            heapq.heappop(heap)


class DiagnosticsActor(VigilActor):
    def __init__(self, name: str, directory: Directory, config: ClusterConfig,
                 present: frozenset[str] | None = None) -> None:
        super().__init__(name, directory)
        self.config = config
        self.present = present if present is not None else frozenset(config.resources)
        self.running: frozenset[str] = frozenset()
        self.schedule = Schedule()
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
            for g in self.running - message.groups:  # out of service here: not watched
                for r in self.config.groups[g].resources:
                    self.schedule.drop(r)
            self.running = message.groups
            now = time.monotonic()
            for g in sorted(started):
                for r in self.config.groups[g].resources:
                    if r in self.present:
                        self._next_after(r, now)
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
        self.directory.deliver(f"resource:{resource}",
                               ResourceOp("monitor", self.token, self.name))

    def _run_due(self) -> None:
        now = time.monotonic()
        for r in self.schedule.take(now):
            if self.config.resources[r].group not in self.running:
                continue  # dropped: the group is not in service here any more
            if r in self.in_flight:  # a manual one runs: its end schedules the next
                continue
            self._monitor(r)
        due = self.schedule.next()
        deadlines = ([] if due is None else [due]) + [
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
            self._next_after(r, now)  # keep watching: the next one may answer

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
        self._next_after(done.resource, time.monotonic())

    def _next_after(self, resource: str, now: float) -> None:
        """The next scheduled monitor of ``resource``: an interval after ``now`` (none for
        an interval of 0), with its slack."""
        interval = self.config.resources[resource].monitor.interval
        if interval > 0:
            self.schedule.set(resource, now + interval, slack(interval))

    def _failed(self, resource: str, reason: str) -> None:
        cfg = self.config.resources[resource]
        if cfg.group not in self.running:
            return
        log.warning("monitor of %s failed: %s (on_fail=%s)", resource, reason, cfg.on_fail)
        self.directory.tell("coordinator", GroupFailed(
            cfg.group, f"monitor of {resource}: {reason}", resource=resource,
            policy=cfg.on_fail))
