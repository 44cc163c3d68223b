"""ResourceActor: one per configured resource. It owns the Resource object and runs its
blocking agent operations on the node's worker pool, never inside ``on_receive``, so a
``force_stop`` can arrive (and interrupt) while a start is still running.

An operation does not wait in the mailbox: the sender's ``Directory.deliver`` hands it to
the pool on the sender's thread (what that reads of the actor, its resource and its pool, never
changes), and the worker that ran it reports the result itself, to the coordinator and to
whoever asked, one report of a resource after the other in the order they were made (a lock).
A monitor that found what the coordinator knows (nearly every scheduled one) goes into the
node's :class:`~vigil.actors.book.ResourceBook` instead, and the coordinator is not woken for
it. Every resource in service is monitored every ``monitor.interval``, and each hop through a
mailbox cost its thread switches. A worker that finishes after the actor stopped reports
nothing, as before when its report went through the mailbox of a stopped actor.

A resource that can follow the node's NICs (an ip address over a list of NICs: it has a
``nics_changed`` method) is told of :class:`NicsDown` on the pool too, one at a time: a set
that arrives while one is applied waits, and only the latest waiting set is applied next. A
move is reported to the coordinator like an operation (op ``"move"``); a failed one also asks
diagnostics for a monitor at once, so the usual recovery follows without waiting for the next
scheduled monitor."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import pykka

from vigil.actors.base import Directory, VigilActor
from vigil.actors.book import ResourceBook
from vigil.actors.messages import Diagnose, NicsDown, ResourceOp, ResourceOpDone, ResourceState
from vigil.resources.model import OpResult, Resource, ServiceState

log = logging.getLogger(__name__)

_OPERATIONS = frozenset({"start", "stop", "force_stop", "monitor", "mark_oos"})


@dataclasses.dataclass(frozen=True, slots=True)
class _ReportFailed:
    """Reporting a result failed on a worker thread: the actor fails (told to itself)."""

    error: Exception


@dataclasses.dataclass(frozen=True, slots=True)
class _Followed:
    """A ``nics_changed`` finished on a worker thread (None: it had nothing to do); its
    result, if any, was reported there."""

    result: OpResult | None


class ResourceActor(VigilActor):
    def __init__(self, name: str, directory: Directory, resource: Resource,
                 executor: Executor, book: ResourceBook | None = None) -> None:
        super().__init__(name, directory)
        self.resource = resource
        self.executor = executor
        #: the node's, shared with the coordinator: a routine monitor is written there, and
        #: the coordinator is not told of it (None: every report is told)
        self.book = book
        #: the resource's nics_changed, if it can follow NICs
        self._nics_changed: Callable[[frozenset[str]], OpResult | None] | None = getattr(
            resource, "nics_changed", None)
        self._nics_waiting: frozenset[str] | None = None  # the latest set not yet applied
        self._following = False  # a nics_changed runs on the pool
        #: one report of this resource at a time, on whichever worker made it
        self._reporting = threading.Lock()
        # from now on, before any sender can know this actor: an operation sent to it never
        # overtakes one that waits in its mailbox
        directory.set_direct(name, self._take)

    def on_stop(self) -> None:
        self.directory.remove_direct(self.name, self._take)

    def release(self) -> None:
        self.directory.remove_direct(self.name, self._take)

    def _take(self, message: object) -> bool:
        """On the sender's thread: an operation goes to the pool now (False: declined, it
        is told as usual; an operation no agent has then fails this actor, not the
        sender)."""
        if (not isinstance(message, ResourceOp) or message.op not in _OPERATIONS
                or not self.actor_ref.is_alive()):
            return False
        try:
            self._submit(message)
        except RuntimeError as exc:
            # the pool is shut down (the node is stopping), or it queued the operation but
            # could not start a thread for it: told again, it could run twice
            log.error("resource %s: %s not run: %s", self.resource.name, message.op, exc)
        return True

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _ReportFailed):
            raise message.error
        if isinstance(message, ResourceOp):
            self._submit(message)
        elif isinstance(message, NicsDown):
            if self._nics_changed is not None:
                self._nics_waiting = message.down
                if not self._following:
                    self._follow()
        elif isinstance(message, _Followed):
            self._followed(message.result)
        return None

    def _submit(self, op: ResourceOp) -> None:
        """On the actor's thread or a sender's (:meth:`_take`)."""
        operation = {
            "start": self.resource.in_service,
            "stop": self.resource.oo_service,
            "force_stop": self.resource.force_oos,
            "monitor": self.resource.monitor,
            "mark_oos": self._mark_oos,
        }[op.op]

        def run() -> None:
            try:
                result = operation()
            except Exception as exc:  # an agent bug is a failed operation, not a dead actor
                log.exception("resource %s: %s raised", self.resource.name, op.op)
                state = (ServiceState.UNCLEAN if op.op in ("stop", "force_stop")
                         else ServiceState.FAILED)
                result = OpResult(False, state, f"{op.op} raised {exc!r}")
            try:
                self._finished(op.reply_to,
                               ResourceOpDone(self.resource.name, op.op, op.token, result))
            except Exception as exc:
                # on a worker nobody would see it, and the group would wait for good: the
                # actor fails instead, and its group hears that it restarted
                log.exception("resource %s: reporting %s failed", self.resource.name, op.op)
                with contextlib.suppress(pykka.ActorDeadError):
                    self.actor_ref.tell(_ReportFailed(exc))

        self.executor.submit(run)

    def _mark_oos(self) -> OpResult:
        self.resource.mark_oos()
        return OpResult.success(ServiceState.OOS, "marked out of service by hand (no action)")

    def _finished(self, reply_to: str, done: ResourceOpDone) -> None:
        """On the worker thread: the coordinator hears of the result first, then
        ``reply_to``, as when both were told from the actor's thread."""
        with self._reporting:
            if not self.actor_ref.is_alive():
                return
            self._report(done.op, done.result, quiet=done.op == "monitor")
            self.directory.deliver(reply_to, done)

    def _report(self, op: str, result: OpResult, quiet: bool = False) -> None:
        """Under ``_reporting``."""
        if not quiet or not result.ok:
            log.info("resource %s: %s -> %s (%s)", self.resource.name, op, result.state.name,
                     result.reason)
        report = ResourceState(self.resource.name, self.resource.group, result.state.name,
                               result.reason, op=op, ok=result.ok, at=time.time())
        if self.book is not None:
            number = self.book.routine(report)
            if not number:
                return  # a monitor that changed nothing: in the book, the coordinator sleeps
            report = dataclasses.replace(report, number=number)
        self.directory.tell("coordinator", report)

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
            with self._reporting:  # in its place among the operations' reports
                if not me.is_alive():
                    return
                if result is not None:
                    self._report("move", result)
                me.tell(_Followed(result))

        self.executor.submit(run)

    def _followed(self, result: OpResult | None) -> None:
        self._following = False
        if result is not None and not result.ok:
            # The monitor decides what a resource that cannot follow means; it runs now
            # (its answer, a future here, is for a waiting client: none waits).
            self.directory.tell("diagnostics", Diagnose(self.resource.name))
        if self._nics_waiting is not None:
            self._follow()
