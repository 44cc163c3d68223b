"""ResourceActor: one per configured resource. It owns the Resource object and runs its
blocking agent operations on the node's worker pool, never inside ``on_receive``, so a
``force_stop`` can arrive (and interrupt) while a start is still running."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import ResourceOp, ResourceOpDone, ResourceState
from vigil.resources.model import OpResult, Resource, ServiceState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Finished:
    """An operation finished on a worker thread; told back to the actor itself."""

    reply_to: str
    done: ResourceOpDone


class ResourceActor(VigilActor):
    def __init__(self, name: str, directory: Directory, resource: Resource,
                 executor: Executor) -> None:
        super().__init__(name, directory)
        self.resource = resource
        self.executor = executor

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ResourceOp):
            self._submit(message)
        elif isinstance(message, _Finished):
            self._finished(message)
        return None

    def _submit(self, op: ResourceOp) -> None:
        operation = {
            "start": self.resource.in_service,
            "stop": self.resource.oo_service,
            "force_stop": self.resource.force_oos,
            "monitor": self.resource.monitor,
            "mark_oos": self._mark_oos,
        }[op.op]
        me = self.actor_ref

        def run() -> None:
            try:
                result = operation()
            except Exception as exc:  # an agent bug is a failed operation, not a dead actor
                log.exception("resource %s: %s raised", self.resource.name, op.op)
                state = (ServiceState.UNCLEAN if op.op in ("stop", "force_stop")
                         else ServiceState.FAILED)
                result = OpResult(False, state, f"{op.op} raised {exc!r}")
            me.tell(_Finished(op.reply_to,
                              ResourceOpDone(self.resource.name, op.op, op.token, result)))

        self.executor.submit(run)

    def _mark_oos(self) -> OpResult:
        self.resource.mark_oos()
        return OpResult.success(ServiceState.OOS, "marked out of service by hand (no action)")

    def _finished(self, msg: _Finished) -> None:
        result = msg.done.result
        if msg.done.op != "monitor" or not result.ok:
            log.info("resource %s: %s -> %s (%s)", self.resource.name, msg.done.op,
                     result.state.name, result.reason)
        self.directory.tell("coordinator", ResourceState(
            self.resource.name, self.resource.group, result.state.name, result.reason,
            op=msg.done.op, ok=result.ok, at=time.time()))
        self.directory.tell(msg.reply_to, msg.done)
