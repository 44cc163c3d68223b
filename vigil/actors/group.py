"""GroupActor: one per resource group. It runs the steps of the core's ``StartGroup``,
``StopGroup`` and ``RestartResource`` one resource at a time, in the order of
:func:`vigil.cluster.steps.group_steps` (the function the simulator runs too), and tells the
coordinator when the whole group is done. A stop overtakes a start (or a restart): the
resource still starting is interrupted with ``force_stop`` and the stop sequence begins.

A restart in place (recovery of a failed resource) stops the failed resource and the members
that depend on it, dependents first, then starts them again in order; the coordinator hears
one ``GroupDone`` for ``start`` (or for ``stop`` if a stop failed: the node is unclean)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import (
    ChildRestarted,
    ProbeGroup,
    ResourceOp,
    ResourceOpDone,
    ResourceOpName,
)
from vigil.cluster.events import GroupDone, GroupProbed, RestartResource, StartGroup, StopGroup
from vigil.cluster.steps import group_steps
from vigil.resources.model import ServiceState

log = logging.getLogger(__name__)


class GroupActor(VigilActor):
    def __init__(self, name: str, directory: Directory, group: str,
                 start_order: list[str],
                 dependents: dict[str, list[str]] | None = None) -> None:
        super().__init__(name, directory)
        self.group = group
        self.start_order = start_order
        self.dependents = dependents or {}  # member -> members depending on it (transitively)
        self.op: str | None = None  # "start", "stop", "probe"
        self.queue: list[tuple[str, ResourceOpName]] = []
        self.token = 0
        self.order = 0  # of the core's command under way
        self.waiting_for: str | None = None
        self.step: ResourceOpName | None = None
        self.reason = ""
        self.probe_active = False
        #: members known to be out of service here (a stop or a probe said so; nothing
        #: started them since): after a failed stop, every other member may still run
        self.out: set[str] = set(start_order)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, StartGroup | StopGroup | RestartResource):
            plan = group_steps(message, self.start_order, self.dependents,
                               starting=self.waiting_for if self.step == "start" else None)
            self.order = message.order  # its GroupDone says which command it answers
            self._begin(plan.op, plan.steps)
            if plan.interrupt is not None:
                self._tell(*plan.interrupt)
        elif isinstance(message, ProbeGroup):
            self.probe_active = False
            self._begin("probe", [(r, "monitor") for r in self.start_order])
        elif isinstance(message, ResourceOpDone):
            self._done(message)
        elif isinstance(message, ChildRestarted) and message.name == (
                f"resource:{self.waiting_for}"):
            log.warning("group %s: resource actor %s restarted during %s; treating the "
                        "operation as failed", self.group, self.waiting_for, self.op)
            self._finish(False, f"resource actor {self.waiting_for} restarted")
        return None

    def _begin(self, op: str, steps: Iterable[tuple[str, ResourceOpName]]) -> None:
        self.op = op
        self.token += 1
        self.queue = list(steps)
        self.reason = ""
        self.waiting_for = None
        self.step = None
        self._next()

    def _tell(self, resource: str, op: ResourceOpName) -> None:
        # straight to the pool (ResourceActor._take), in the order sent
        self.directory.deliver(f"resource:{resource}", ResourceOp(op, self.token, self.name))

    def _next(self) -> None:
        if not self.queue:
            self._finish(True, "")
            return
        resource, self.step = self.queue.pop(0)
        self.waiting_for = resource
        self._tell(resource, self.step)

    def _done(self, done: ResourceOpDone) -> None:
        if done.token != self.token or done.resource != self.waiting_for:
            return  # a reply to an operation that a newer command overtook
        result = done.result
        if self.op == "probe":
            if result.state in (ServiceState.IN_SERVICE, ServiceState.PENDING_IN_SERVICE):
                self.probe_active = True
                self.out.discard(done.resource)
            self._next()
            return
        if done.op == "start" or not result.ok:
            self.out.discard(done.resource)  # a start, even a failed one, may have left it up
        else:
            self.out.add(done.resource)
        if not result.ok:
            self._finish(False, f"{done.resource}: {result.reason}")
            return
        self._next()

    def _finish(self, ok: bool, reason: str) -> None:
        op, step = self.op, self.step
        # after a failed stop: every member not known to be out may still be in service (an
        # operator marks them out of service by hand, or the node is fenced)
        remaining = frozenset(self.start_order) - self.out
        self.op, self.waiting_for, self.step = None, None, None
        if op == "probe":
            self.directory.tell("coordinator", GroupProbed(self.group, self.probe_active))
            return
        if not ok and step in ("stop", "force_stop"):
            op = "stop"  # even on the way to a start: a failed stop makes the node unclean
        if op in ("start", "stop"):
            log.info("group %s: %s %s%s", self.group, op, "done" if ok else "FAILED",
                     f" ({reason})" if reason else "")
            self.directory.tell("coordinator", GroupDone(
                self.group, op, ok, reason,  # type: ignore[arg-type]
                remaining=remaining if op == "stop" and not ok else None, order=self.order))
