"""FencerActor: runs the fence agents the core asks for, and monitors the fence devices.

The core decides which level of which node runs when, what a failure means and when to try
again (:mod:`vigil.cluster.fencing`); this actor only runs agents. A
:class:`~vigil.cluster.events.FenceNode` becomes one :func:`~vigil.fencing.agents.run_level`
on a worker thread of its own (an agent may take minutes: every attempt to its timeout), and
the result goes back to the coordinator as a :class:`~vigil.cluster.events.FenceDone` with
the same ``attempt``. Nothing here waits: ``on_receive`` only submits work and passes results
on.

Every device with a ``monitor_interval`` is monitored (``action=monitor``) that often, one
run per device at a time, the first right after start; each result goes to the coordinator
(:class:`~vigil.actors.messages.FenceDeviceState`) for `vigil status`. Every node monitors
every device: any node may become the master that needs it.

On stop (and when the actor fails), the agents still running are killed through their
``cancel`` event, and their results are not passed on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pykka

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import FenceDeviceState
from vigil.actors.timer import DeadlineTimer
from vigil.cluster.events import FenceDone, FenceNode, Tick
from vigil.config import ClusterConfig
from vigil.fencing.agents import LevelResult, run_device, run_level

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _LevelRan:
    """A level finished on a worker thread; told back to the actor itself."""

    done: FenceDone


def level_detail(result: LevelResult) -> str:
    """A level's result in words: the devices that failed (the reason it failed), else every
    device's result."""
    failed = [r.describe() for r in result.results if not r.ok]
    return "; ".join(failed if failed and not result.ok else
                     [r.describe() for r in result.results])


class FencerActor(VigilActor):
    def __init__(self, name: str, directory: Directory, config: ClusterConfig) -> None:
        super().__init__(name, directory)
        self.config = config
        self.cancel = threading.Event()
        self.executor: ThreadPoolExecutor | None = None
        self.timer: DeadlineTimer | None = None
        self.due: dict[str, float] = {}  # device -> when its next monitor is due (monotonic)
        self.monitoring: set[str] = set()

    def on_start(self) -> None:
        devices = self.config.fence_devices
        # a level per node at once, and a monitor per device, never waiting for one another
        self.executor = ThreadPoolExecutor(max_workers=len(self.config.nodes) + len(devices),
                                           thread_name_prefix="vigil-fence")
        me = self.actor_ref
        self.timer = DeadlineTimer("fencer", lambda: me.tell(Tick()))
        now = time.monotonic()
        self.due = {d: now for d, dc in sorted(devices.items()) if dc.monitor_interval > 0}
        self._monitor_due()

    def on_stop(self) -> None:
        self.release()

    def release(self) -> None:
        self.cancel.set()
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, FenceNode):
            self._fence(message)
        elif isinstance(message, _LevelRan):
            self.directory.tell("coordinator", message.done)
        elif isinstance(message, FenceDeviceState):
            self.monitoring.discard(message.device)
            interval = self.config.fence_devices[message.device].monitor_interval
            self.due[message.device] = time.monotonic() + interval
            self.directory.tell("coordinator", message)
        self._monitor_due()
        return None

    # ---- fencing -------------------------------------------------------------------------

    def _fence(self, action: FenceNode) -> None:
        assert self.executor is not None
        me, cancel, config = self.actor_ref, self.cancel, self.config
        log.warning("fencing %s: level %d (%s), action %s", action.node, action.level,
                    "+".join(action.devices), action.action)

        def run() -> None:
            try:
                devices = [config.fence_devices[d] for d in action.devices]
                result = run_level(devices, action.action, action.node, cancel=cancel)
                ok, detail = result.ok, level_detail(result)
            except (KeyError, ValueError) as exc:  # a device or node the config lacks
                ok, detail = False, f"cannot run level {action.level}: {exc}"
            except Exception as exc:  # our bug: a failed level, not a dead worker
                log.exception("fencing %s: level %d raised", action.node, action.level)
                ok, detail = False, f"level {action.level} raised {exc!r}"
            if cancel.is_set():
                return  # the node is stopping: nobody waits for the answer
            (log.info if ok else log.error)("fencing %s: level %d %s: %s", action.node,
                                            action.level, "done" if ok else "failed", detail)
            with contextlib.suppress(pykka.ActorDeadError):
                me.tell(_LevelRan(FenceDone(action.node, ok, action.level, detail,
                                            action.attempt)))

        self.executor.submit(run)

    # ---- monitoring ------------------------------------------------------------------------

    def _monitor_due(self) -> None:
        if self.executor is None:
            return
        now = time.monotonic()
        for device in sorted(d for d, at in self.due.items()
                             if at <= now and d not in self.monitoring):
            self.monitoring.add(device)
            self.executor.submit(self._monitor, device)
        waiting = [at for d, at in self.due.items() if d not in self.monitoring]
        if self.timer is not None:
            self.timer.set(min(waiting) if waiting else None)

    def _monitor(self, device: str) -> None:
        result = run_device(self.config.fence_devices[device], "monitor", cancel=self.cancel)
        if self.cancel.is_set():
            return
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(FenceDeviceState(device, result.ok, result.reason, time.time()))
