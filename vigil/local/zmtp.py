"""The event socket's server: ZeroMQ's wire protocol (ZMTP 3.1, NULL security, RFC 37) as a
PUB socket, so that any ZeroMQ SUB socket reads it (``vigil events``, :mod:`vigil.api`, a
user's own script), with every limit of :mod:`vigil.local.limits` in the daemon's hands.

libzmq's own PUB socket knows neither who is connected nor which reader is slow, takes any
number of connections and subscriptions, and reads frames of any declared size: a member of
``status_group`` could make the daemon hold gigabytes. Here a subscriber is a connection of
:class:`vigil.local.server.LocalServer` (capped in total and per user), has
``HANDSHAKE_TIMEOUT`` to greet, may send frames of at most ``MAX_SUBSCRIBER_FRAME`` bytes
(checked on the declared size, before the body is read) and hold ``MAX_SUBSCRIPTIONS``;
notifications wait for it up to ``SEND_HWM`` of them and ``EVENT_BACKLOG`` bytes, after that
its new ones are dropped, as a ZeroMQ PUB drops them, and the daemon says so (throttled).

:class:`SubscriberParser` is the protocol without I/O (what a subscriber's bytes mean);
:class:`EventServer` is the I/O.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from vigil.local.limits import (
    EVENT_BACKLOG,
    EVENT_CONNECTIONS,
    EVENT_CONNECTIONS_PER_UID,
    HANDSHAKE_TIMEOUT,
    MAX_EVENT_MESSAGE,
    MAX_SUBSCRIBER_FRAME,
    MAX_SUBSCRIPTIONS,
    ROOT_RESERVED,
    SEND_HWM,
)
from vigil.local.server import Caps, Connection, LocalServer

__all__ = ["Event", "EventServer", "ProtocolError", "SubscriberParser", "command", "greeting",
           "message", "ready"]

log = logging.getLogger("vigil.events")

GREETING_SIZE: Final = 64
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04
_SIGNATURE_END: Final = 9  # the signature is 0xFF, 8 bytes of padding, 0x7F
_READERS: Final = frozenset({b"SUB", b"XSUB"})


class ProtocolError(ValueError):
    """What a subscriber sent breaks ZMTP or a limit of this socket; the message says what."""


def greeting() -> bytes:
    """This server's greeting: ZMTP 3.1, NULL mechanism, as-server."""
    return (b"\xff" + bytes(8) + b"\x7f" + bytes((3, 1)) + b"NULL".ljust(20, b"\0") + b"\x01"
            + bytes(31))


def _frame(flags: int, body: bytes) -> bytes:
    if len(body) > 255:
        return struct.pack(">BQ", flags | _LONG, len(body)) + body
    return struct.pack(">BB", flags, len(body)) + body


def command(name: bytes, body: bytes = b"") -> bytes:
    return _frame(_COMMAND, bytes((len(name),)) + name + body)


def message(body: bytes) -> bytes:
    """One single-frame message."""
    return _frame(0, body)


def ready(socket_type: bytes) -> bytes:
    name = b"Socket-Type"
    return command(b"READY", bytes((len(name),)) + name + struct.pack(">I", len(socket_type))
                   + socket_type)


@dataclass(frozen=True, slots=True)
class Event:
    """What a subscriber's bytes meant: ``ready`` (the handshake is over), ``subscribe`` and
    ``cancel`` (``value``: the topic), ``ping`` (``value``: the context to send back)."""

    kind: str
    value: bytes = b""


class SubscriberParser:
    """A subscriber's side of the conversation, from its first byte: :meth:`feed` it what
    arrives and get the events, or a :class:`ProtocolError`. It never holds more than one
    frame of at most ``max_frame`` bytes plus what was fed at once."""

    def __init__(self, max_frame: int = MAX_SUBSCRIBER_FRAME) -> None:
        self.max_frame = max_frame
        self.buffer = bytearray()
        self.stage = "greeting"  # then "handshake", then "ready"

    def feed(self, data: bytes) -> list[Event]:
        self.buffer += data
        events: list[Event] = []
        if self.stage == "greeting" and not self._greeting():
            return events
        while (frame := self._next_frame()) is not None:
            flags, body = frame
            if self.stage == "handshake":
                events.append(self._handshake(flags, body))
                self.stage = "ready"
            elif flags & _COMMAND:
                events.extend(self._command(body))
            elif not flags & _MORE and body[:1] in (b"\x00", b"\x01"):  # ZMTP 3.0 style
                events.append(Event("subscribe" if body[0] else "cancel", bytes(body[1:])))
        return events

    def _greeting(self) -> bool:
        buf = self.buffer
        if buf and buf[0] != 0xFF:
            raise ProtocolError("it is not a ZeroMQ peer (its greeting does not start with "
                                "0xFF)")
        if len(buf) > _SIGNATURE_END and not buf[_SIGNATURE_END] & 0x01:
            raise ProtocolError("it speaks ZMTP 1.0; this socket needs ZMTP 3")
        if len(buf) > 10 and buf[10] < 3:
            raise ProtocolError(f"it speaks ZMTP {buf[10]}.x; this socket needs ZMTP 3 "
                                "(libzmq 4 or later)")
        if len(buf) < GREETING_SIZE:
            return False
        mechanism = bytes(buf[12:32]).rstrip(b"\0")
        if mechanism != b"NULL":
            raise ProtocolError(f"it asks for the {mechanism.decode(errors='replace')!r} "
                                "security mechanism; this socket uses NULL (who may read is "
                                "the file's mode)")
        del buf[:GREETING_SIZE]
        self.stage = "handshake"
        return True

    def _next_frame(self) -> tuple[int, bytes] | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        flags = buf[0]
        if flags & ~(_MORE | _LONG | _COMMAND):
            raise ProtocolError(f"it sent a frame with reserved flags ({flags:#04x})")
        if flags & _LONG:
            if len(buf) < 9:
                return None
            size, start = struct.unpack_from(">Q", buf, 1)[0], 9
        else:
            size, start = buf[1], 2
        if size > self.max_frame:
            raise ProtocolError(f"it sent a frame of {size} bytes; a subscriber's frames may "
                                f"have at most {self.max_frame}")
        if len(buf) < start + size:
            return None
        body = bytes(buf[start:start + size])
        del buf[:start + size]
        return flags, body

    def _handshake(self, flags: int, body: bytes) -> Event:
        name, rest = _command_name(flags, body)
        if name == b"ERROR":
            raise ProtocolError(f"it gave up the handshake: {rest[1:].decode(errors='replace')}")
        if name != b"READY":
            raise ProtocolError(f"it sent {name.decode(errors='replace')!r} where the "
                                "handshake needs READY")
        kind = _properties(rest).get(b"socket-type", b"")
        if kind not in _READERS:
            raise ProtocolError(f"it is a {kind.decode(errors='replace') or 'typeless'} "
                                "socket; only SUB and XSUB sockets read events")
        return Event("ready")

    @staticmethod
    def _command(body: bytes) -> list[Event]:
        name, rest = _command_name(_COMMAND, body)
        if name == b"SUBSCRIBE":
            return [Event("subscribe", rest)]
        if name == b"CANCEL":
            return [Event("cancel", rest)]
        if name == b"PING" and len(rest) >= 2:
            return [Event("ping", rest[2:18])]  # the context, at most 16 bytes
        return []  # PONG and commands of later versions: nothing to do


def _command_name(flags: int, body: bytes) -> tuple[bytes, bytes]:
    if not flags & _COMMAND or not body or len(body) < 1 + body[0]:
        raise ProtocolError("it sent a malformed command")
    return body[1:1 + body[0]], body[1 + body[0]:]


def _properties(data: bytes) -> dict[bytes, bytes]:
    props: dict[bytes, bytes] = {}
    at = 0
    while at < len(data):
        size = data[at]
        name = data[at + 1:at + 1 + size]
        at += 1 + size
        if at + 4 > len(data):
            raise ProtocolError("it sent malformed READY properties")
        (length,) = struct.unpack_from(">I", data, at)
        if at + 4 + length > len(data):
            raise ProtocolError("it sent malformed READY properties")
        props[name.lower()] = data[at + 4:at + 4 + length]
        at += 4 + length
    return props


@dataclass(slots=True)
class _Subscriber:
    parser: SubscriberParser = field(default_factory=SubscriberParser)
    ready: bool = False
    topics: set[bytes] = field(default_factory=set)
    dropped: int = 0


class EventServer(LocalServer):
    """A PUB socket on a listening Unix socket: :meth:`publish` from any thread."""

    recv_size = 4096

    def __init__(self, listener: socket.socket) -> None:
        super().__init__(listener, Caps(EVENT_CONNECTIONS, EVENT_CONNECTIONS_PER_UID,
                                        ROOT_RESERVED), log, "event socket", "vigil-events")
        self._pending: deque[bytes] = deque()
        self._scheduled = False
        self.lost = 0  # notifications that never reached the server's thread

    def publish(self, payload: bytes) -> None:
        """Send ``payload`` (one message) to every subscriber whose subscriptions match."""
        if len(payload) > MAX_EVENT_MESSAGE or len(self._pending) >= SEND_HWM:
            self.lost += 1
            self.refusals.warning("event socket: a notification of %d bytes was not sent (at "
                                  "most %d bytes, %d waiting); %d lost so far", len(payload),
                                  MAX_EVENT_MESSAGE, len(self._pending), self.lost)
            return
        self._pending.append(payload)
        if not self._scheduled:
            self._scheduled = True
            self.call_soon(self._deliver)

    # ---- on the server's thread --------------------------------------------------------

    def _deliver(self) -> None:
        self._scheduled = False
        while self._pending:
            payload = self._pending.popleft()
            frame = message(payload)
            for conn in list(self.conns.values()):
                sub: _Subscriber = conn.data
                if not sub.ready or not any(payload.startswith(t) for t in sub.topics):
                    continue
                if len(conn.out) >= SEND_HWM or conn.out_bytes + len(frame) > EVENT_BACKLOG:
                    sub.dropped += 1
                    self.refusals.warning(
                        "event socket: %s does not read its notifications: %d dropped for it "
                        "so far (%d waiting, %d bytes)", conn.peer, sub.dropped, len(conn.out),
                        conn.out_bytes)
                    continue
                self.send(conn, frame)

    def accepted(self, conn: Connection) -> None:
        conn.data = _Subscriber()
        conn.deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        self.send(conn, greeting() + ready(b"PUB"))

    def received(self, conn: Connection, data: bytes) -> None:
        sub: _Subscriber = conn.data
        try:
            events = sub.parser.feed(data)
        except ProtocolError as exc:
            self.refusals.warning("event socket: disconnected %s: %s", conn.peer, exc)
            self.close(conn)
            return
        for event in events:
            if event.kind == "ready":
                sub.ready = True
                conn.deadline = None
            elif event.kind == "subscribe":
                sub.topics.add(event.value)
                if len(sub.topics) > MAX_SUBSCRIPTIONS:
                    self.refusals.warning("event socket: disconnected %s: more than %d "
                                          "subscriptions", conn.peer, MAX_SUBSCRIPTIONS)
                    self.close(conn)
                    return
            elif event.kind == "cancel":
                sub.topics.discard(event.value)
            elif event.kind == "ping":
                self.send(conn, command(b"PONG", event.value))

    def ended(self, conn: Connection) -> None:
        if conn.data.dropped:
            log.info("event socket: %s left; %d notifications were dropped for it",
                     conn.peer, conn.data.dropped)
        self.close(conn)  # a probe (connect, close) ends before greeting: nothing to say

    def expired(self, conn: Connection) -> None:
        self.refusals.warning("event socket: disconnected %s: no ZMTP handshake %g s after "
                              "connecting", conn.peer, HANDSHAKE_TIMEOUT)
        self.close(conn)
