"""systemd's service notifications (``Type=notify``, sd_notify(3)) and the daemon's reporter.

The protocol is one datagram per notification, ``KEY=value`` lines, sent to the unix socket
named by ``$NOTIFY_SOCKET`` (a name starting with ``@`` is in the abstract namespace). Nothing
is sent without that variable: a daemon started by hand behaves as before.

:class:`SystemdReporter` is what ``vigil node run`` does with it (docs/operations.md,
"systemd"):

- ``READY=1`` once the node is in the cluster: its epoch is closed, the epoch's view holds it
  and it is quorate (:func:`is_ready`). A node waiting for its peers is not ready; the shipped
  unit gives it ``TimeoutStartSec=infinity``.
- ``STATUS=...`` whenever the line changes (:func:`status_line`), e.g. ``quorate, 3/3 nodes,
  epoch 12.alpha; here: web, db``.
- ``STOPPING=1`` when the node leaves.
- ``WATCHDOG=1`` (when ``$WATCHDOG_USEC`` is set, and ``$WATCHDOG_PID``, if set, is this
  process) only while the coordinator answers a status request within a quarter of the
  watchdog time: an actor system that stopped answering stops the petting, and systemd
  restarts the daemon.

This module imports nothing of Vigil but the status tree.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only: the guardian uses this module, never a status
    from vigil.status import ClusterStatus

__all__ = ["SdNotify", "SystemdReporter", "is_ready", "status_line", "watchdog_time"]

log = logging.getLogger(__name__)

class SdNotify:
    """A sender of notifications to ``address`` (``$NOTIFY_SOCKET``'s value); None: off."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._sock: socket.socket | None = None
        self._failed = False
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None, *,
                         unset: bool = False) -> SdNotify:
        """``unset``: remove the variable once read, so that the processes the daemon starts
        (its guardian, applications) do not notify systemd in its name."""
        env = os.environ if environ is None else environ
        notify = cls(env.get("NOTIFY_SOCKET"))
        if unset:
            env.pop("NOTIFY_SOCKET", None)
        return notify

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def _target(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):  # abstract namespace: a leading NUL byte
            return b"\0" + self.address[1:].encode()
        return self.address

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False when off or when it failed (said
        once in the log: systemd gone does not stop the node)."""
        if self.address is None:
            return False
        data = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX,
                                               socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, self._target())
            except OSError as exc:
                if not self._failed:
                    log.warning("cannot notify systemd at %s (%s): readiness, status and the "
                                "watchdog are not reported", self.address, exc)
                self._failed = True
                return False
        self._failed = False
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_time(environ: MutableMapping[str, str] | None = None, pid: int | None = None, *,
                  unset: bool = False) -> float | None:
    """The watchdog time in seconds that systemd asks this process to pet within (None: no
    watchdog, or it is meant for another process: ``$WATCHDOG_PID``)."""
    env = os.environ if environ is None else environ
    usec, owner = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if unset:
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return value / 1_000_000


def is_ready(st: ClusterStatus) -> bool:
    """The node joined or formed the cluster: it is in a closed epoch whose view holds it,
    and quorate (a node alone in a minority closes epochs of its own: not ready)."""
    return st.closed and st.node in st.members and st.quorate


def status_line(st: ClusterStatus) -> str:
    """One line for ``systemctl status``: the cluster as this node sees it."""
    online = sum(1 for n in st.nodes.values() if n.state == "online")
    here = sorted(g for g, v in st.groups.items() if v.node == st.node and v.state != "stopped")
    if not st.quorate:
        return f"waiting for peers: {online}/{len(st.nodes)} nodes online, quorum {st.quorum}"
    where = ", ".join(here) if here else "nothing"
    line = f"quorate, {online}/{len(st.nodes)} nodes, epoch {st.epoch}; here: {where}"
    if st.transition is not None and st.transition.phase != "done":
        line += f"; transition {st.transition.phase}"
    if st.maintenance:
        line += "; maintenance"
    return line


class Answer(Protocol):
    """A reply to come (a Pykka future): ``get`` raises on a timeout or a dead actor."""

    def get(self, *, timeout: float | None = None) -> Any: ...


class SystemdReporter:
    """A thread that tells systemd how the node is (see the module's docstring). ``probe``
    asks the node's coordinator for its status (:class:`Answer`); a question not answered in
    time is waited for again at the next round, not asked again, so that a slow coordinator
    does not find a queue of them. Until :meth:`attach` gives a probe, the node is starting:
    the watchdog is petted, since starting is bounded by its own timeouts."""

    def __init__(self, notify: SdNotify, watchdog: float | None, *,
                 interval: float = 1.0) -> None:
        self.notify = notify
        self.watchdog = watchdog
        #: how often the coordinator is asked (and STATUS brought up to date)
        self.interval = interval if watchdog is None else min(interval, watchdog / 4)
        #: how long an answer may take before the actors count as stuck
        self.timeout = 5.0 if watchdog is None else min(5.0, watchdog / 4)
        self._probe: Callable[[], Answer] | None = None
        self._pending: Answer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_pet = -float("inf")
        self._status = ""
        self._ready = False
        self._leaving = False
        self._stuck = False

    @property
    def active(self) -> bool:
        return self.notify.enabled

    def start(self) -> SystemdReporter:
        if self.active:
            self._say_status("starting")
            self._pet()
            self._thread = threading.Thread(target=self._loop, name="vigil-systemd",
                                            daemon=True)
            self._thread.start()
        return self

    def attach(self, probe: Callable[[], Answer]) -> None:
        self._probe = probe

    def leaving(self, why: str = "leaving: stopping groups") -> None:
        self._leaving = True
        if self.active:
            self.notify.send("STOPPING=1", f"STATUS={why}")
            self._status = why

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + self.interval + 1.0)
            self._thread = None
        self.notify.close()

    def _say_status(self, line: str) -> None:
        if line != self._status:
            self._status = line
            self.notify.send(f"STATUS={line}")

    def _pet(self) -> None:
        if self.watchdog is not None:
            self._last_pet = time.monotonic()
            self.notify.send("WATCHDOG=1")

    def _loop(self) -> None:
        # the thread's id: what to leave running when the rest of the daemon is stopped
        # (under a debugger, or tests/system/test_systemd.py freezing the actors)
        log.info("notifying systemd at %s from thread %d (watchdog: %s)", self.notify.address,
                 threading.get_native_id(),
                 "off" if self.watchdog is None else f"{self.watchdog:g}s")
        while not self._stop.wait(self.interval):
            self.check()

    def check(self) -> None:
        """One round: ask the coordinator; pet the watchdog when it answered in time."""
        probe = self._probe
        if probe is None:
            self._pet_when_due()
            return
        try:
            if self._pending is None:
                self._pending = probe()
            st: ClusterStatus = self._pending.get(timeout=self.timeout)
            self._pending = None
        except Exception as exc:  # a timeout, a dead actor: the node does not answer
            if not _is_timeout(exc):
                self._pending = None
            if not self._stuck:
                log.warning("the node's coordinator did not answer within %.1fs (%s): the "
                            "systemd watchdog is not petted while it does not", self.timeout,
                            exc or type(exc).__name__)
            self._stuck = True
            return
        if self._stuck:
            log.info("the node's coordinator answers again; petting the systemd watchdog")
        self._stuck = False
        self._pet_when_due()
        if self._leaving:
            return
        self._say_status(status_line(st))
        if not self._ready and is_ready(st):
            self._ready = True
            self.notify.send("READY=1")
            log.info("told systemd the node is ready (%s)", self._status)

    def _pet_when_due(self) -> None:
        # every half watchdog time at most, less a round so that a slow answer stays within
        if self.watchdog is not None and \
                time.monotonic() - self._last_pet >= self.watchdog / 2 - self.interval:
            self._pet()


def _is_timeout(exc: Exception) -> bool:
    # pykka.Timeout, without importing Pykka here
    return isinstance(exc, TimeoutError) or type(exc).__name__ == "Timeout"
