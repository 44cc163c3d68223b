"""The daemon's side of the guardian channel: :class:`GuardClient`.

Nothing here blocks its caller (the daemon's actors must stay responsive): the socket is
non-blocking, :meth:`GuardClient.report` queues and writes what the socket takes now, and
only the newest report waits to be sent (an older one not yet begun is replaced: the guardian
only needs the latest truth). Reading happens in :meth:`GuardClient.poll`, which also retries
the connection every ``reconnect_interval``; :meth:`GuardClient.wait` is the same with a
bounded wait, for a reader thread. Thread-safe: one lock, never held across a wait.

What the owner must do with the events (docs/fencing.md): on :class:`GuardianGone`, stop its
groups at once (a node whose guardian is gone has nothing left that fences it locally); on
:class:`Fenced`, take everything named there as gone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vigil.guard.holdings import Holdings
from vigil.guard.protocol import (
    Bye,
    Error,
    Fenced,
    FenceReport,
    Hello,
    LineReader,
    ProtocolError,
    Report,
    Welcome,
    decode,
    encode,
)

__all__ = ["Connected", "FencedEvent", "GuardClient", "GuardError", "GuardEvent",
           "GuardianGone"]

log = logging.getLogger(__name__)

_RECV: int = 65536


@dataclass(frozen=True, slots=True)
class Connected:
    """The guardian answered hello."""

    welcome: Welcome


@dataclass(frozen=True, slots=True)
class FencedEvent:
    """The guardian fenced this node: everything in ``report`` is gone."""

    report: FenceReport


@dataclass(frozen=True, slots=True)
class GuardianGone:
    """The connection to the guardian was lost (it exited, crashed or was killed)."""

    reason: str


@dataclass(frozen=True, slots=True)
class GuardError:
    """The guardian refused something this client sent (a bug, or another version)."""

    message: str


GuardEvent = Connected | FencedEvent | GuardianGone | GuardError


class GuardClient:
    """A connection to the guardian at ``path`` for node ``node``.

    ``connected``: the socket is connected (``welcome`` is set once the guardian answered).
    The first connection is tried at once; after a loss, again every ``reconnect_interval``
    seconds (on the next :meth:`report`, :meth:`poll` or :meth:`wait`), with hello and the
    newest report re-sent.
    """

    def __init__(self, path: Path | str, node: str, *, pid: int | None = None,
                 reconnect_interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.node = node
        self.pid = os.getpid() if pid is None else pid
        self.reconnect_interval = reconnect_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._reader = LineReader()
        self._out = bytearray()  # lines begun or queued in order (hello, bye)
        self._newest: bytes | None = None  # the newest report, not begun yet
        self._last_report: bytes | None = None  # re-sent after a reconnect
        self._events: list[GuardEvent] = []
        self._next_attempt = -float("inf")
        self._said_bye = False
        self.welcome: Welcome | None = None
        self.last_error = ""  # why the latest connection attempt failed
        #: the daemon's incarnation in the cluster, sent with every report (0: not known yet)
        self.incarnation = 0
        with self._lock:
            self._maybe_connect()

    # -- the owner's calls ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def fileno(self) -> int:
        """The socket's descriptor, for a selector (-1 while not connected)."""
        sock = self._sock
        return sock.fileno() if sock is not None else -1

    def report(self, lease_until: float | None, holdings: Holdings) -> bool:
        """Queue the newest lease deadline and holdings (``lease_until``: monotonic time,
        ``math.inf`` for no lease needed, None or ``-math.inf`` for no valid lease) and send
        what the socket takes now. False: no guardian is connected (it is sent on the next
        connection)."""
        line = encode(Report(-float("inf") if lease_until is None else lease_until, holdings,
                             self.incarnation))
        with self._lock:
            self._last_report = self._newest = line
            self._said_bye = False
            self._maybe_connect()
            self._flush()
            return self._sock is not None

    def bye(self) -> None:
        """Tell the guardian that everything is stopped and the daemon leaves (then call
        :meth:`close`, which waits a bounded time for it to leave)."""
        with self._lock:
            self._newest = self._last_report = None
            self._said_bye = True
            if self._sock is not None:
                self._out += encode(Bye())
                self._flush()

    def poll(self) -> list[GuardEvent]:
        """What happened since the last call (never waits): read, write, reconnect."""
        with self._lock:
            self._maybe_connect()
            self._read()
            self._flush()
            events, self._events = self._events, []
            return events

    def wait(self, timeout: float) -> list[GuardEvent]:
        """Like :meth:`poll`, after waiting up to ``timeout`` seconds for the guardian to say
        something (or, while disconnected, until the next connection attempt)."""
        with self._lock:
            sock = self._sock
            wake = self._next_attempt - self._clock() if sock is None else timeout
        if sock is None:
            time.sleep(max(0.0, min(timeout, wake)))
        else:
            with contextlib.suppress(OSError, ValueError), selectors.DefaultSelector() as sel:
                sel.register(sock, selectors.EVENT_READ)
                sel.select(max(0.0, timeout))
        return self.poll()

    def close(self, flush_timeout: float = 1.0) -> None:
        """Send what is queued (waiting at most ``flush_timeout``), then close."""
        deadline = self._clock() + flush_timeout
        while True:
            with self._lock:
                self._flush()
                if self._sock is None or not (self._out or self._newest):
                    break
                sock = self._sock
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            with contextlib.suppress(OSError, ValueError), selectors.DefaultSelector() as sel:
                sel.register(sock, selectors.EVENT_WRITE)
                sel.select(min(remaining, 0.05))
        with self._lock:
            self._drop(None)
            self._next_attempt = float("inf")

    # -- inside, under the lock -------------------------------------------------------------

    def _maybe_connect(self) -> None:
        now = self._clock()
        if self._sock is not None or now < self._next_attempt:
            return
        self._next_attempt = now + self.reconnect_interval
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            # EAGAIN: the guardian's backlog is full (it is not accepting): like no guardian.
            self.last_error = f"cannot connect to the guardian at {self.path}: " \
                f"{exc.strerror or exc}"
            return
        self._sock = sock
        self._reader = LineReader()
        self.welcome = None
        self.last_error = ""
        self._out = bytearray(encode(Hello(self.node, self.pid)))
        if self._said_bye:
            self._out += encode(Bye())
        self._newest = self._last_report
        log.info("connected to the guardian at %s", self.path)

    def _flush(self) -> None:
        sock = self._sock
        while sock is not None:
            if not self._out and self._newest is not None:
                self._out += self._newest
                self._newest = None
            if not self._out:
                return
            try:
                sent = sock.send(self._out, socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                self._drop(f"writing to it failed: {exc.strerror or exc}")
                return
            del self._out[:sent]

    def _read(self) -> None:
        while self._sock is not None:
            try:
                data = self._sock.recv(_RECV, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                self._drop(f"reading from it failed: {exc.strerror or exc}")
                return
            if not data:
                self._drop("it closed the connection")
                return
            for item in self._reader.feed(data):
                if isinstance(item, ProtocolError):
                    log.error("guardian at %s: %s", self.path, item)
                    continue
                self._receive(item)

    def _receive(self, line: bytes) -> None:
        try:
            message = decode(line)
        except ProtocolError as exc:
            log.error("guardian at %s sent a malformed message, dropped: %s", self.path, exc)
            return
        match message:
            case Welcome():
                self.welcome = message
                self._events.append(Connected(message))
            case Fenced(report):
                self._events.append(FencedEvent(report))
            case Error(text):
                log.error("the guardian at %s refused a message: %s", self.path, text)
                self._events.append(GuardError(text))
            case _:
                log.error("guardian at %s sent a %s message, which only a daemon sends: "
                          "dropped", self.path, type(message).__name__.lower())

    def _drop(self, why: str | None) -> None:
        """Close the connection; ``why``: it was lost (the owner hears of it)."""
        if self._sock is None:
            return
        with contextlib.suppress(OSError):
            self._sock.close()
        self._sock = None
        self._out.clear()
        self._newest = None
        self.welcome = None
        if why is not None:
            reason = f"the guardian at {self.path} is gone: {why}"
            log.warning("%s", reason)
            self._events.append(GuardianGone(reason))
