"""The daemon's side of a local socket: one thread serves every connection of a listening
Unix stream socket (non-blocking I/O on a selector), whatever its clients do.

What each connection may cost is bounded before it costs anything: who connects is read from
the kernel (``SO_PEERCRED``) as it is accepted, and a connection beyond the caps (in total,
per user other than root, and the slots held back for root: :mod:`vigil.local.limits`) is
closed at once, after at most one short non-blocking answer. Idle connections cost a slot and
a few hundred bytes, never a thread. A protocol (:class:`vigil.actors.control.ControlServer`,
:class:`vigil.local.zmtp.EventServer`) subclasses :class:`LocalServer` and gets the bytes a
connection receives, its end and its deadline; it answers with :meth:`LocalServer.send` and
:meth:`LocalServer.close`. Only the server's thread touches connections: other threads hand
it work with :meth:`LocalServer.call_soon`.

Warnings about clients go through :class:`Throttled`: a flood of refusals writes a few lines
and says how many more there were.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Final

from vigil.local.access import Peer, peer_of
from vigil.local.limits import LOG_BURST, LOG_INTERVAL

__all__ = ["Caps", "Connection", "LocalServer", "Throttled"]

_ACCEPTS_PER_WAKE: Final = 64  # then the others' bytes are served before accepting more
_LONGEST_WAIT: Final = 1.0  # the loop wakes this often to say what Throttled held back
_ACCEPT_PAUSE: Final = 0.1  # out of descriptors: seconds before accepting again


class Throttled:
    """Warnings of each kind (their format string) at most ``burst`` per ``interval``
    seconds; the others are counted, and when the interval is over the last of them is
    logged with "(N more suppressed)". Thread-safe."""

    def __init__(self, logger: logging.Logger, burst: int = LOG_BURST,
                 interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._window = clock()
        self._logged: Counter[str] = Counter()
        self._held: dict[str, tuple[int, tuple[Any, ...]]] = {}  # msg -> (count, last args)

    def warning(self, msg: str, *args: Any) -> None:
        with self._lock:
            held = self._roll(self.clock())
            log = self._logged[msg] < self.burst
            if log:
                self._logged[msg] += 1
            else:
                self._held[msg] = (self._held.get(msg, (0, ()))[0] + 1, args)
        self._say(held)
        if log:
            self.logger.warning(msg, *args)

    def flush(self) -> None:
        """Log what the last finished interval held back (called now and then)."""
        with self._lock:
            held = self._roll(self.clock())
        self._say(held)

    def _roll(self, now: float) -> list[tuple[str, int, tuple[Any, ...]]]:
        if now - self._window < self.interval:
            return []
        held = [(msg, count, args) for msg, (count, args) in self._held.items()]
        self._window = now
        self._logged.clear()
        self._held.clear()
        return held

    def _say(self, held: list[tuple[str, int, tuple[Any, ...]]]) -> None:
        for msg, count, args in held:
            more = f" ({count - 1} more suppressed)" if count > 1 else ""
            self.logger.warning(msg + more, *args)


class Caps:
    """How many connections a socket takes at once: ``total`` (root may use all of them),
    ``per_uid`` for each user but root, and ``total - root_reserved`` for all those users
    together."""

    def __init__(self, total: int, per_uid: int, root_reserved: int) -> None:
        if not 0 <= root_reserved < total or per_uid < 1:
            raise ValueError(f"connection caps out of range: total {total}, per uid "
                             f"{per_uid}, reserved for root {root_reserved}")
        self.total = total
        self.per_uid = per_uid
        self.root_reserved = root_reserved


class Connection:
    """One accepted client. ``deadline`` (time.monotonic) is when the server calls
    :meth:`LocalServer.expired` for it; None: never."""

    __slots__ = ("_events", "close_after", "closed", "data", "deadline", "inbuf", "out",
                 "out_bytes", "peer", "sent", "sock")

    def __init__(self, sock: socket.socket, peer: Peer) -> None:
        self.sock = sock
        self.peer = peer
        self.deadline: float | None = None
        self.inbuf = bytearray()
        self.out: deque[bytes] = deque()
        self.out_bytes = 0  # in ``out``, the head's part already sent included
        self.sent = 0  # bytes of out[0] already sent
        self.close_after = False
        self.closed = False
        self.data: Any = None  # the protocol's state of this connection
        self._events = selectors.EVENT_READ


class LocalServer:
    """Serves the listening socket ``listener`` (bound and listening) on a thread of its
    own, ``name``; :meth:`start` it, :meth:`stop` it. ``what`` names the socket in the log.
    """

    #: the most bytes read from a connection at once
    recv_size = 65536

    def __init__(self, listener: socket.socket, caps: Caps, logger: logging.Logger,
                 what: str, name: str) -> None:
        listener.setblocking(False)
        self.listener = listener
        self.caps = caps
        self.log = logger
        self.what = what
        self.refusals = Throttled(logger)
        self.conns: dict[int, Connection] = {}
        self.uids: Counter[int] = Counter()
        self._selector = selectors.DefaultSelector()
        self._calls: deque[Callable[[], None]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._accept_paused: float | None = None  # until when (time.monotonic)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # ---- what a protocol implements --------------------------------------------------------

    def accepted(self, conn: Connection) -> None:
        """``conn`` was admitted (set its deadline, greet it)."""

    def received(self, conn: Connection, data: bytes) -> None:
        """``conn`` sent ``data``."""

    def ended(self, conn: Connection) -> None:
        """``conn``'s client closed its end (default: close ours)."""
        self.close(conn)

    def expired(self, conn: Connection) -> None:
        """``conn``'s deadline passed (default: close it)."""
        self.close(conn)

    def refusal_line(self, why: str) -> bytes:
        """What a connection refused for ``why`` is told before it is closed (b"": nothing).
        """
        return b""

    def closing(self, conn: Connection) -> None:
        """``conn`` is being closed (release what the protocol holds for it)."""

    # ---- for the protocol (on the server's thread) -----------------------------------------

    def send(self, conn: Connection, data: bytes, *, close_after: bool = False) -> None:
        """Queue ``data`` for ``conn`` (sent as the client takes it); ``close_after``: close
        the connection once everything is sent."""
        if conn.closed:
            return
        conn.close_after = conn.close_after or close_after
        if data:
            conn.out.append(data)
            conn.out_bytes += len(data)
        self._flush(conn)

    def close(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.closing(conn)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        self.conns.pop(id(conn), None)
        self.uids[conn.peer.uid] -= 1
        if self.uids[conn.peer.uid] <= 0:
            del self.uids[conn.peer.uid]
        conn.out.clear()
        conn.out_bytes = 0
        conn.sock.close()

    def pause_reading(self, conn: Connection) -> None:
        self._watch(conn, conn._events & ~selectors.EVENT_READ)

    # ---- from any thread ---------------------------------------------------------------

    def call_soon(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the server's thread."""
        self._calls.append(call)
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def start(self) -> None:
        self._selector.register(self.listener, selectors.EVENT_READ, self._accept)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._woken)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self.call_soon(lambda: None)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ---- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, mask in self._selector.select(self._wait()):
                    if isinstance(key.data, Connection):
                        self._guarded(key.data, self._serve, key.data, mask)
                    else:
                        key.data()
                while self._calls:
                    try:
                        self._calls.popleft()()
                    except Exception:
                        self.log.exception("%s: a task of the server failed", self.what)
                self._expire()
                self._resume_accepting()
                self.refusals.flush()
        except Exception:  # a bug here must not leave a socket nobody serves unnoticed
            self.log.exception("%s: the server's loop failed; the socket is closed", self.what)
        finally:
            for conn in list(self.conns.values()):
                self._flush(conn)  # an answer already made goes out if it can, at once
                self.close(conn)
            self._selector.close()
            self.listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _guarded(self, conn: Connection, call: Callable[..., None], *args: Any) -> None:
        """``call(*args)``; a bug it meets while serving ``conn`` closes that connection
        only."""
        try:
            call(*args)
        except Exception:
            self.log.exception("%s: serving %s failed; its connection is closed", self.what,
                               conn.peer)
            self.close(conn)

    def _wait(self) -> float:
        if self._calls:
            return 0.0
        now = time.monotonic()
        soonest = min((c.deadline for c in self.conns.values() if c.deadline is not None),
                      default=now + _LONGEST_WAIT)
        if self._accept_paused is not None:
            soonest = min(soonest, self._accept_paused)
        return max(0.0, min(soonest - now, _LONGEST_WAIT))

    def _resume_accepting(self) -> None:
        if self._accept_paused is not None and time.monotonic() >= self._accept_paused:
            self._accept_paused = None
            self._selector.register(self.listener, selectors.EVENT_READ, self._accept)

    def _woken(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self.conns.values()
                     if c.deadline is not None and c.deadline <= now]:
            conn.deadline = None
            self.expired(conn)

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors: the connection stays queued, and the listener would
                # wake the loop at once, for ever: it rests a moment.
                self.refusals.warning("%s: cannot accept a connection: %s", self.what, exc)
                self._selector.unregister(self.listener)
                self._accept_paused = time.monotonic() + _ACCEPT_PAUSE
                return
            try:
                peer = peer_of(sock)
            except OSError:  # gone already
                sock.close()
                continue
            why = self._over_cap(peer)
            if why is not None:
                self._refuse(sock, peer, why)
                continue
            sock.setblocking(False)
            conn = Connection(sock, peer)
            self.conns[id(conn)] = conn
            self.uids[peer.uid] += 1
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self._guarded(conn, self.accepted, conn)

    def _over_cap(self, peer: Peer) -> str | None:
        caps, open_ = self.caps, len(self.conns)
        if open_ >= caps.total:
            return f"{open_} connections are open, at most {caps.total}"
        if peer.uid == 0:
            return None
        mine = self.uids[peer.uid]
        if mine >= caps.per_uid:
            return f"uid {peer.uid} has {mine} connections open, at most {caps.per_uid}"
        others = open_ - self.uids[0]
        if others >= caps.total - caps.root_reserved:
            return (f"users other than root have {others} connections open, at most "
                    f"{caps.total - caps.root_reserved}")
        return None

    def _refuse(self, sock: socket.socket, peer: Peer, why: str) -> None:
        line = self.refusal_line(f"too many connections: {why}; close some and try again")
        if line:
            with contextlib.suppress(OSError):
                sock.send(line, socket.MSG_DONTWAIT)
        sock.close()
        self.refusals.warning("%s: refused a connection from %s: %s", self.what, peer, why)

    def _serve(self, conn: Connection, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if conn.closed or not mask & selectors.EVENT_READ:
            return
        try:
            data = conn.sock.recv(self.recv_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.log.debug("%s: %s: %s", self.what, conn.peer, exc)
            self.close(conn)
            return
        if data:
            self.received(conn, data)
        else:
            self.pause_reading(conn)
            self.ended(conn)

    def _flush(self, conn: Connection) -> None:
        while conn.out and not conn.closed:
            head = conn.out[0]
            try:
                n = conn.sock.send(memoryview(head)[conn.sent:])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # the client went away
                self.log.debug("%s: %s: %s", self.what, conn.peer, exc)
                self.close(conn)
                return
            conn.sent += n
            if conn.sent < len(head):
                break
            conn.out.popleft()
            conn.out_bytes -= len(head)
            conn.sent = 0
        if conn.closed:
            return
        if not conn.out and conn.close_after:
            self.close(conn)
            return
        events = conn._events | selectors.EVENT_WRITE if conn.out else (
            conn._events & ~selectors.EVENT_WRITE)
        self._watch(conn, events)

    def _watch(self, conn: Connection, events: int) -> None:
        if conn.closed or events == conn._events:
            return
        if conn._events and events:
            self._selector.modify(conn.sock, events, conn)
        elif events:
            self._selector.register(conn.sock, events, conn)
        else:
            self._selector.unregister(conn.sock)
        conn._events = events
