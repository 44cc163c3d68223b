"""AlertsActor: runs the ``[[alerts]]`` commands, like Pacemaker's alert agents.

The notifier hands every numbered notification to this actor; each alert whose ``events``
list names its kind (an empty list: every kind) runs its command once for it, as a child
process with the details in its environment (on top of the daemon's own):

========================  ==================================================================
variable                  value
========================  ==================================================================
VIGIL_ALERT_KIND          the kind, e.g. ``group_moved``
VIGIL_ALERT_NODE          the node that saw it (this one)
VIGIL_ALERT_TIME          when, ISO 8601 with the local offset (``2024-05-01T12:00:00.250+02:00``)
VIGIL_ALERT_SEQ           its number in this daemon run (from 1)
VIGIL_ALERT_TEXT          the sentence for people
VIGIL_ALERT_<FIELD>       one per field of the kind, upper-cased: ``VIGIL_ALERT_GROUP``,
                          ``VIGIL_ALERT_FROM_NODE``, ``VIGIL_ALERT_MEMBER``... Booleans are
                          ``true``/``false``; ``placement`` (and a decision's ``fields``) are
                          ``group=node,group2=node2`` (``group=`` for nowhere).
========================  ==================================================================

Alerts never hold the daemon up: each alert has its own worker thread and a bounded queue
(:data:`QUEUE_LIMIT`); a notification that finds the queue full is dropped, and the log
says how many were. One alert's commands run one at a time, in notification order. A
command runs with :func:`vigil.resources.proc.run`: in its own process group, with ``/`` as
working directory, stdin and stdout on ``/dev/null``; when it exceeds its ``timeout`` the
whole group is killed (SIGKILL) and waited for. A failure (exit status, last line of
stderr), a timeout and a command that cannot start are logged; none of them is retried. When
the daemon stops, queued alerts still run for up to :data:`STOP_GRACE` seconds; whatever is
left then is killed or dropped, and logged.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import queue
import shlex
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

from vigil.actors.base import Directory, VigilActor
from vigil.config import AlertConfig
from vigil.notifications import Notification
from vigil.resources import proc

log = logging.getLogger("vigil.alerts")

#: Notifications waiting per alert command before new ones are dropped.
QUEUE_LIMIT: Final = 1000
#: Seconds queued alerts may still run when the daemon stops.
STOP_GRACE: Final = 5.0
_STDERR_TAIL: Final = 4096
_POLL: Final = 0.2
_BASE_FIELDS: Final = frozenset({"node", "time", "text", "seq"})


def alert_environment(note: Notification,
                      base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment an alert command runs with for ``note``."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith("VIGIL_ALERT_")}  # the daemon's own, if it ran as an alert
    when = datetime.datetime.fromtimestamp(note.time).astimezone()
    values: dict[str, Any] = {"kind": note.kind, "node": note.node,
                              "time": when.isoformat(timespec="milliseconds"),
                              "seq": note.seq, "text": note.text}
    for f in dataclasses.fields(note):
        if f.name not in _BASE_FIELDS:
            values[f.name] = getattr(note, f.name)
    for name, value in values.items():
        env[f"VIGIL_ALERT_{name.upper()}"] = _env_value(value)
    return env


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, tuple):
        text = ",".join(f"{k}={v}" for k, v in value)
    else:
        text = str(value)
    return text.replace("\0", "")  # execve cannot pass a NUL


class _Alert:
    """One configured command: its queue, its worker thread and the process it runs."""

    def __init__(self, index: int, config: AlertConfig, node: str, limit: int) -> None:
        self.config = config
        label = shlex.join(config.command)
        self.label = f"alerts[{index}] {label if len(label) <= 80 else label[:77] + '...'}"
        self.queue: queue.Queue[Notification] = queue.Queue(maxsize=limit)
        self.dropped = 0  # since the last report; touched by the actor's thread only
        self.closing = threading.Event()  # run what is queued, then end
        self.interrupt = threading.Event()  # kill the running command, drop the queue
        self.abandoned = 0
        self.thread = threading.Thread(target=self._work, name=f"vigil-alert-{node}-{index}",
                                       daemon=True)

    def wants(self, note: Notification) -> bool:
        return not self.config.kinds or note.kind in self.config.kinds

    def offer(self, note: Notification) -> None:
        try:
            self.queue.put_nowait(note)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("alert %s is too slow: %d notifications wait for it; dropping "
                            "new ones until it catches up", self.label, self.queue.maxsize)
            return
        if self.dropped:
            log.warning("alert %s: dropped %d notifications while its queue was full",
                        self.label, self.dropped)
            self.dropped = 0

    def close(self) -> None:
        self.closing.set()

    def _work(self) -> None:
        while True:
            try:
                note = self.queue.get(timeout=_POLL)
            except queue.Empty:
                if self.closing.is_set():
                    return
                continue
            if self.interrupt.is_set():
                self.abandoned += 1
                continue
            try:
                self._run(note)
            except Exception:  # a worker that dies would silently end this alert
                log.exception("alert %s: unexpected error on notification %d", self.label,
                              note.seq)

    def _run(self, note: Notification) -> None:
        what = f"{note.kind} #{note.seq}"
        ran = proc.run(self.config.command, timeout=self.config.timeout, cancel=self.interrupt,
                       cwd="/", env=alert_environment(note), capture_stdout=False,
                       stderr_limit=_STDERR_TAIL)
        if ran.start_error is not None:
            log.error("alert %s could not run for %s: %s", self.label, what, ran.start_error)
        elif ran.cancelled:
            log.warning("alert %s killed for %s: the daemon is stopping", self.label, what)
        elif ran.timed_out:
            log.warning("alert %s timed out after %gs for %s; killed its process group %d",
                        self.label, self.config.timeout, what, ran.pid)
        elif ran.returncode != 0:
            code = ran.returncode or 0
            status = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
            last = proc.last_line(ran.stderr, 300)
            log.warning("alert %s failed for %s: %s%s", self.label, what, status,
                        f": {last}" if last else " (no output on stderr)")
        else:
            log.debug("alert %s ran for %s", self.label, what)


class AlertsActor(VigilActor):
    """Fed by the notifier; hands each notification to the alerts that want it."""

    def __init__(self, name: str, directory: Directory, node: str,
                 alerts: tuple[AlertConfig, ...], queue_limit: int = QUEUE_LIMIT) -> None:
        super().__init__(name, directory)
        self.alerts = [_Alert(i, a, node, queue_limit) for i, a in enumerate(alerts)]

    def on_start(self) -> None:
        for alert in self.alerts:
            alert.thread.start()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Notification):
            for alert in self.alerts:
                if alert.wants(message):
                    alert.offer(message)
        return None

    def on_stop(self) -> None:
        self._close(STOP_GRACE)

    def release(self) -> None:
        self._close(0.0)  # a restarted actor starts its own workers

    def _close(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        for alert in self.alerts:
            alert.close()
        for alert in self.alerts:  # queued alerts may run until the deadline...
            if alert.thread.ident is not None:
                alert.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for alert in self.alerts:  # ...then the running ones are killed, the rest dropped
            alert.interrupt.set()
        for alert in self.alerts:
            if alert.thread.ident is None:
                continue  # never started
            # a killed command's group gets proc.KILL_WAIT to vanish
            alert.thread.join(timeout=max(0.0, deadline + proc.KILL_WAIT + 1.0
                                          - time.monotonic()))
            left = alert.abandoned + alert.queue.qsize() + alert.dropped
            if left:
                log.warning("alert %s: %d notifications not alerted (the daemon stopped)",
                            alert.label, left)
