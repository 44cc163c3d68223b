"""ResourceActor: one per configured resource. It owns the Resource object and runs its
blocking agent operations on the node's worker pool, never inside ``on_receive``, so a
``force_stop`` can arrive (and interrupt) while a start is still running.

A resource that can follow the node's NICs (an ip address over a list of NICs: it has a
``nics_changed`` method) is told of :class:`NicsDown` on the pool too, one at a time: a set
that arrives while one is applied waits, and only the latest waiting set is applied next. A
move is reported to the coordinator like an operation (op ``"move"``); a failed one also asks
diagnostics for a monitor at once, so the usual recovery follows without waiting for the next
scheduled monitor."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import Diagnose, NicsDown, ResourceOp, ResourceOpDone, ResourceState
from vigil.resources.model import OpResult, Resource, ServiceState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Finished:
    """An operation finished on a worker thread; told back to the actor itself."""

    reply_to: str
    done: ResourceOpDone


@dataclass(frozen=True, slots=True)
class _Followed:
    """A ``nics_changed`` finished on a worker thread (None: it had nothing to do)."""

    result: OpResult | None


class ResourceActor(VigilActor):
    def __init__(self, name: str, directory: Directory, resource: Resource,
                 executor: Executor) -> None:
        super().__init__(name, directory)
        self.resource = resource
        self.executor = executor
        #: the resource's nics_changed, if it can follow NICs
        self._nics_changed: Callable[[frozenset[str]], OpResult | None] | None = getattr(
            resource, "nics_changed", None)
        self._nics_waiting: frozenset[str] | None = None  # the latest set not yet applied
        self._following = False  # a nics_changed runs on the pool

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ResourceOp):
            self._submit(message)
        elif isinstance(message, _Finished):
            self._finished(message)
        elif isinstance(message, NicsDown):
            if self._nics_changed is not None:
                self._nics_waiting = message.down
                if not self._following:
                    self._follow()
        elif isinstance(message, _Followed):
            self._followed(message.result)
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
        self._report(msg.done.op, msg.done.result, quiet=msg.done.op == "monitor")
        self.directory.tell(msg.reply_to, msg.done)

    def _report(self, op: str, result: OpResult, quiet: bool = False) -> None:
        if not quiet or not result.ok:
            log.info("resource %s: %s -> %s (%s)", self.resource.name, op, result.state.name,
                     result.reason)
        self.directory.tell("coordinator", ResourceState(
            self.resource.name, self.resource.group, result.state.name, result.reason,
            op=op, ok=result.ok, at=time.time()))

    def _follow(self) -> None:
        nics_changed, down = self._nics_changed, self._nics_waiting
        assert nics_changed is not None and down is not None
        self._nics_waiting = None
        self._following = True
        me = self.actor_ref

        def run() -> None:
            try:
                result = nics_changed(down)
            except Exception as exc:  # an agent bug is a failed move, not a dead actor
                log.exception("resource %s: nics_changed raised", self.resource.name)
                result = OpResult.failure(ServiceState.FAILED, f"nics_changed raised {exc!r}")
            me.tell(_Followed(result))

        self.executor.submit(run)

    def _followed(self, result: OpResult | None) -> None:
        self._following = False
        if result is not None:
            self._report("move", result)
            if not result.ok:
                # The monitor decides what a resource that cannot follow means; it runs now
                # (its answer, a future here, is for a waiting client: none waits).
                self.directory.tell("diagnostics", Diagnose(self.resource.name))
        if self._nics_waiting is not None:
            self._follow()
