"""GroupActor: one per resource group. It brings the group's resources into service in
dependency order and out of service in the reverse order, one resource at a time, and tells
the coordinator when the whole group is done. A stop overtakes a start: the resource still
starting is interrupted with ``force_stop`` and the stop sequence begins."""

from __future__ import annotations

import logging
from typing import Any

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import (
    ChildRestarted,
    ProbeGroup,
    ResourceOp,
    ResourceOpDone,
    StartGroupCmd,
    StopGroupCmd,
)
from vigil.cluster.events import GroupDone, GroupProbed
from vigil.resources.model import ServiceState

log = logging.getLogger(__name__)


class GroupActor(VigilActor):
    def __init__(self, name: str, directory: Directory, group: str,
                 start_order: list[str]) -> None:
        super().__init__(name, directory)
        self.group = group
        self.start_order = start_order
        self.stop_order = list(reversed(start_order))
        self.op: str | None = None  # "start", "stop", "probe"
        self.queue: list[str] = []
        self.token = 0
        self.force = False
        self.waiting_for: str | None = None
        self.reason = ""
        self.probe_active = False

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, StartGroupCmd):
            self._begin("start", self.start_order)
        elif isinstance(message, StopGroupCmd):
            interrupted = self.waiting_for if self.op == "start" else None
            self.force = message.force
            self._begin("stop", self.stop_order)
            if interrupted is not None:
                # a start still running: interrupt it, then stop everything in reverse
                self._tell(interrupted, "force_stop")
        elif isinstance(message, ProbeGroup):
            self.probe_active = False
            self._begin("probe", self.start_order)
        elif isinstance(message, ResourceOpDone):
            self._done(message)
        elif isinstance(message, ChildRestarted) and message.name == (
                f"resource:{self.waiting_for}"):
            log.warning("group %s: resource actor %s restarted during %s; treating the "
                        "operation as failed", self.group, self.waiting_for, self.op)
            self._finish(False, f"resource actor {self.waiting_for} restarted")
        return None

    def _begin(self, op: str, order: list[str]) -> None:
        self.op = op
        self.token += 1
        self.queue = list(order)
        self.reason = ""
        self.waiting_for = None
        self._next()

    def _tell(self, resource: str, op: str) -> None:
        self.directory.tell(f"resource:{resource}",
                            ResourceOp(op, self.token, self.name))  # type: ignore[arg-type]

    def _next(self) -> None:
        if not self.queue:
            self._finish(True, "")
            return
        resource = self.queue.pop(0)
        self.waiting_for = resource
        if self.op == "start":
            self._tell(resource, "start")
        elif self.op == "stop":
            self._tell(resource, "force_stop" if self.force else "stop")
        else:
            self._tell(resource, "monitor")

    def _done(self, done: ResourceOpDone) -> None:
        if done.token != self.token or done.resource != self.waiting_for:
            return  # a reply to an operation that a newer command overtook
        result = done.result
        if self.op == "probe":
            if result.state in (ServiceState.IN_SERVICE, ServiceState.PENDING_IN_SERVICE):
                self.probe_active = True
            self._next()
            return
        if not result.ok:
            self._finish(False, f"{done.resource}: {result.reason}")
            return
        self._next()

    def _finish(self, ok: bool, reason: str) -> None:
        op, self.op, self.waiting_for = self.op, None, None
        if op == "probe":
            self.directory.tell("coordinator", GroupProbed(self.group, self.probe_active))
        elif op in ("start", "stop"):
            log.info("group %s: %s %s%s", self.group, op, "done" if ok else "FAILED",
                     f" ({reason})" if reason else "")
            self.directory.tell("coordinator", GroupDone(self.group, op, ok, reason))  # type: ignore[arg-type]
