"""One-way transfer of a byte stream (a ``btrfs send`` stream) from one node to another over
ZeroMQ with CurveZMQ, authenticated exactly like the links (:mod:`vigil.transports.zmq_link`).

**Sockets.** The receiver binds one ROUTER socket (:class:`StreamServer`); each transfer is
one DEALER socket of the sender (:func:`send_stream`) connected to it. ROUTER/DEALER rather
than PAIR because one receiver serves every peer at once over one port, and the ROUTER tells
each connection apart by its routing id (a sender that reconnects gets a new one, so a
transfer never silently continues over another connection) and names the authenticated node
in each frame's ``User-Id``. Neither socket type drops a frame the way PUB/SUB does.

**Security** (docs/security.md, "The links between nodes"). The ROUTER is a CURVE server
with the receiving node's key pair, the DEALER a CURVE client that knows it; both are derived
from the cluster key (:class:`~vigil.transports.keys.LinkKeys`; during a key rotation the
sender tries each of the receiver's keys in turn). The context's
:class:`~vigil.transports.zap.Gatekeeper` admits only the configured peers' keys from their
addresses, the ROUTER accepts TCP connections only from those addresses, and a handshake not
finished within ``HANDSHAKE_TIMEOUT_MS`` is dropped; beyond ``PENDING_CAP`` connections still
in their handshake the newest are cut (the links' :class:`~vigil.transports.zmq_link.Doorway`),
so a program on a peer's host cannot exhaust the daemon's descriptors; ``MAXMSGSIZE`` on both
sides closes a connection that sends a frame larger than the protocol's. So nothing
unauthenticated reaches the code below: every frame it reads carries a configured node's name.

**Protocol.** Frames are ``[kind, payload]``:

- sender -> receiver: ``HEAD`` (a JSON object of at most ``HEADER_MAX_BYTES``: name, parent,
  size if known...), then ``DATA`` chunks of at most ``CHUNK_BYTES``, then ``END`` (the total
  length as 8 bytes big-endian and the SHA-256 of all the bytes); or ``ABRT`` (a reason) when
  the sender gives up.
- receiver -> sender: ``CRED`` (a count of chunks the sender may send: ``WINDOW`` at first,
  one more for every chunk the receiving code has read), then ``DONE`` once the receiving
  callback returned having read and verified the whole stream, or ``FAIL`` (a reason).
  ``DONE`` carries what the callback returned: empty for None, else a JSON object of at most
  ``REPLY_MAX_BYTES`` (what the receiver holds, say), which the sender finds in
  :attr:`Sent.reply`. A callback whose return value is not such an object makes the
  transfer fail, naming the value; so does a ``DONE`` whose payload is not one.

**Flow control and time.** The sender reads its source only when it holds credit, so it
never holds more than ``WINDOW`` chunks in flight plus the one it is sending, however slow
the receiver; the receiver queues at most ``WINDOW`` chunks per transfer (a sender that
exceeds its credit is cut off). Every wait of the sender (the handshake, credit, the final
answer) is bounded by its ``timeout``: a receiver that stops reading or dies ends the
transfer with :class:`StreamError` within it. ZMTP heartbeats notice a vanished peer's
connection within ``HEARTBEAT_TIMEOUT_MS``. On the receiver, the reader raises
:class:`StreamError` when the sender sends nothing for ``idle_timeout`` while the reader waits
(the sender always holds credit then), when it aborts, and when the stream ends with a length
or digest other than the ``END`` frame's: a cut stream is never a clean end of file. (A ROUTER
does not say when a connection closes, so a killed sender is noticed by that idle timeout.)
A sender's connection is never re-established: a transfer cut off by the network fails, and
the caller sends again (incrementally from the last snapshot that arrived).

**Threads.** The server has one thread that owns the ROUTER socket; each transfer's
``on_stream(sender, header, reader)`` runs on a thread of its own, reading from a queue the
server thread fills. One transfer at a time per sender node and *channel* (the header's
``channel``, a short string; none is a channel too): a new ``HEAD`` on a sender's channel
aborts the transfer running there (the sender restarted), and transfers on other channels
(another mirror resource's) go on; a sender may run at most ``CHANNELS_PER_SENDER`` at once.
:meth:`StreamServer.close` aborts every transfer (their readers raise) and waits a bounded
time for the callbacks.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Final, NoReturn, Protocol

import zmq

from vigil.transports.keys import LinkKeys
from vigil.transports.zap import Admission, Gatekeeper, bind_retrying
from vigil.transports.zmq_link import (
    BIND_RETRY_S,
    HANDSHAKE_TIMEOUT_MS,
    PENDING_CAP,
    Doorway,
    close_door_monitor,
    connect_endpoint,
    door_cuts,
    monitor_event,
    open_door_monitor,
    tcp_endpoint,
)
from vigil.transports.zmq_link import keep_alive as heartbeats

log = logging.getLogger(__name__)

#: The largest JSON object a receiving callback may return in its DONE answer.
REPLY_MAX_BYTES: Final = 8 * 1024
#: The largest DATA chunk; a sender may send smaller ones.
CHUNK_BYTES: Final = 256 * 1024
#: Chunks a sender may have in flight before the receiver grants more (2 MiB).
WINDOW: Final = 8
#: The largest HEAD frame (its JSON object).
HEADER_MAX_BYTES: Final = 16 * 1024
#: The largest frame the ROUTER takes: a chunk and the CURVE MESSAGE command's overhead.
SERVER_MAX_FRAME_BYTES: Final = CHUNK_BYTES + 1024
#: The largest frame the DEALER takes: the receiver sends only short control frames and its
#: reply, and the CURVE MESSAGE command's overhead.
SENDER_MAX_FRAME_BYTES: Final = REPLY_MAX_BYTES + 1024
#: Transfers one sender may run at once (on as many channels).
CHANNELS_PER_SENDER: Final = 8
#: The longest channel name.
CHANNEL_MAX_CHARS: Final = 100
#: How long a sender waits, by default, for the handshake, for credit, and for the final answer.
SEND_TIMEOUT_S: Final = 30.0
#: How long, by default, a reader waits for the sender's next frame before it raises.
IDLE_TIMEOUT_S: Final = 30.0
#: How long close() waits for the receiving callbacks and the server thread.
CLOSE_TIMEOUT_S: Final = 5.0
#: How long an aborting sender's socket tries to deliver its ABRT frame.
ABORT_LINGER_MS: Final = 200
#: The sender's longest single wait, so a cancel is seen promptly.
_SLICE_S: Final = 0.1

HEAD, DATA, END, ABORT = b"HEAD", b"DATA", b"END", b"ABRT"
CREDIT, DONE, FAIL = b"CRED", b"DONE", b"FAIL"
_END_FORMAT: Final = ">Q32s"
_monitor_ids = itertools.count(1)


class StreamError(Exception):
    """A transfer failed: what happened, with which peer, and what to check."""


class Source(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Sent:
    """What :func:`send_stream` sent and the receiver confirmed."""

    size: int
    sha256: str
    seconds: float
    #: what the receiving callback returned (a JSON object), or None
    reply: dict[str, object] | None = None


@dataclass(frozen=True)
class _End:
    size: int
    digest: bytes


@dataclass(frozen=True)
class _Abort:
    reason: str


_Item = bytes | _End | _Abort


class StreamReader:
    """The receiving side of one transfer: a binary file object that reads the stream in
    order and raises :class:`StreamError` rather than end early. Owned by one thread."""

    def __init__(self, transfer: _Transfer, idle_timeout: float) -> None:
        self._transfer = transfer
        self._idle_timeout = idle_timeout
        self._chunk = memoryview(b"")
        self._sha = hashlib.sha256()
        self._count = 0
        self._complete = False
        self._failed: str | None = None

    @property
    def bytes_read(self) -> int:
        return self._count - len(self._chunk)

    @property
    def complete(self) -> bool:
        """Whether the whole stream was read and its length and digest checked."""
        return self._complete and not self._chunk

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1, /) -> bytes:
        """At most ``size`` bytes (all of one chunk if negative), waiting for one chunk at
        most; b"" only at the verified end of the stream (or for ``size`` 0)."""
        if size == 0:
            return b""
        if not self._chunk and not self._next():
            return b""
        take = len(self._chunk) if size is None or size < 0 else min(size, len(self._chunk))
        out = bytes(self._chunk[:take])
        self._chunk = self._chunk[take:]
        return out

    def read(self, size: int = -1, /) -> bytes:
        """``size`` bytes (all the rest if negative), fewer only at the verified end."""
        parts: list[bytes] = []
        want = -1 if size is None or size < 0 else size
        while want != 0:
            part = self.read1(want)
            if not part:
                break
            parts.append(part)
            if want > 0:
                want -= len(part)
        return b"".join(parts)

    def _next(self) -> bool:
        """Take the next chunk; False at the verified end."""
        if self._failed is not None:
            raise StreamError(self._failed)
        if self._complete:
            return False
        try:
            item = self._transfer.items.get(timeout=self._idle_timeout)
        except queue.Empty:
            self._fail(
                f"stream {self._transfer.describe()}: nothing from the sender for "
                f"{self._idle_timeout:g} s after {self._count} bytes (the sender died, or the "
                "network between the nodes is down); the stream is incomplete")
        if isinstance(item, _Abort):
            self._fail(f"stream {self._transfer.describe()}: {item.reason} after "
                       f"{self._count} bytes; the stream is incomplete")
        if isinstance(item, _End):
            if item.size != self._count or item.digest != self._sha.digest():
                self._fail(
                    f"stream {self._transfer.describe()}: the sender says {item.size} bytes "
                    f"with SHA-256 {item.digest.hex()}, but {self._count} bytes with SHA-256 "
                    f"{self._sha.hexdigest()} arrived; the stream is corrupt")
            self._complete = True
            return False
        self._sha.update(item)
        self._count += len(item)
        self._chunk = memoryview(item)
        self._transfer.grant(1)
        return True

    def _fail(self, reason: str) -> NoReturn:
        self._failed = reason
        self._transfer.server.finish(self._transfer, FAIL, reason)
        raise StreamError(reason)


#: A receiving callback: ``(sender, header, reader)`` -> None or a small JSON-able dict that
#: travels back to the sender in the DONE answer.
StreamHandler = Callable[[str, dict[str, object], StreamReader], Mapping[str, object] | None]


def encode_reply(reply: object) -> bytes:
    """The DONE payload for a callback's return value; ValueError naming a bad one."""
    if reply is None:
        return b""
    if not isinstance(reply, Mapping):
        raise ValueError(f"the receiving callback returned {_shown(reply)}, not a JSON object "
                         "(a dict) or None")
    try:
        payload = json.dumps(dict(reply), separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise ValueError(f"the receiving callback returned {_shown(reply)}, which is not "
                         f"JSON ({err})") from err
    if len(payload) > REPLY_MAX_BYTES:
        raise ValueError(f"the receiving callback returned {len(payload)} bytes of JSON; at "
                         f"most {REPLY_MAX_BYTES} travel back")
    return payload


def decode_reply(payload: bytes) -> dict[str, object] | None:
    """A DONE payload's reply; ValueError if it is not a JSON object."""
    if not payload:
        return None
    try:
        reply = json.loads(payload)
    except ValueError as err:
        raise ValueError(f"a reply that is not JSON ({_shown(payload)}: {err})") from err
    if not isinstance(reply, dict):
        raise ValueError(f"a reply that is not a JSON object ({_shown(payload)})")
    return reply


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."



@dataclass(eq=False)
class _Transfer:
    server: StreamServer
    rid: bytes
    sender: str
    header: dict[str, object]
    serial: int
    channel: str = ""
    #: filled by the server thread, at most WINDOW chunks (credit) and a final item
    items: queue.SimpleQueue[_Item] = field(default_factory=queue.SimpleQueue)
    #: chunks the sender may still send (server thread only)
    credit: int = WINDOW
    thread: threading.Thread | None = None
    #: END arrived: nothing may follow (server thread only)
    ended: bool = False
    finished: bool = False

    def describe(self) -> str:
        name = self.header.get("name")
        what = f" {name!r}" if isinstance(name, str) else ""
        return f"#{self.serial}{what} from {self.sender}"

    def grant(self, chunks: int) -> None:
        self.server.post(self, [CREDIT, struct.pack(">I", chunks)], final=False)


class StreamServer:
    """The receiving end: binds ``bind`` (address, port; port 0 picks one: see
    :attr:`endpoint`) and admits the ``peers`` (node -> address) holding keys from ``keys``.
    For each transfer, ``on_stream(sender, header, reader)`` runs on its own thread; it
    should read ``reader`` to its end (then the sender hears DONE, with what it returned: None
    or a JSON object of at most ``REPLY_MAX_BYTES``) or raise (FAIL, with the exception's
    text). ``context`` may be the daemon's (its ZAP handler is shared)."""

    def __init__(
        self,
        bind: tuple[str, int],
        peers: Mapping[str, str],
        self_name: str,
        on_stream: StreamHandler,
        *,
        keys: LinkKeys,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        idle_timeout: float = IDLE_TIMEOUT_S,
        name: str = "stream",
    ) -> None:
        others = {n: a for n, a in peers.items() if n != self_name}
        missing = sorted(set(others) - set(keys.peers))
        if missing:
            raise ValueError(f"stream server {name!r}: no public key for peers {missing}")
        self.self_name = self_name
        self._on_stream = on_stream
        self._idle_timeout = idle_timeout
        self._own_context = context is None
        self._context: zmq.Context[zmq.Socket[bytes]] = (
            zmq.Context() if context is None else context)
        self._zap_domain = f"{name}/{self_name}"
        self._serials = itertools.count(1)
        self._by_rid: dict[bytes, _Transfer] = {}
        self._by_sender: dict[tuple[str, str], _Transfer] = {}  # (sender, channel)
        self._outbox: queue.SimpleQueue[tuple[_Transfer, list[bytes], bool]] = \
            queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._wake_closed = False
        self._stopping = threading.Event()
        # the handler first: a CURVE socket must never listen while no one checks its clients
        self._gate = Gatekeeper.acquire(self._context)
        self._router: zmq.Socket[bytes] = self._context.socket(zmq.ROUTER)
        self._door = Doorway(max(PENDING_CAP, 2 * len(others)))
        self._door_monitor: zmq.Socket[bytes] | None = None
        self._cut = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._gate.admit(self._zap_domain,
                             Admission.of(keys.admitted(others), others.values()))
            self._door_monitor = open_door_monitor(
                self._context, self._router,
                f"inproc://vigil-stream-door-{os.getpid()}-{next(_monitor_ids)}")
            self.endpoint = self._bind(bind, keys, sorted(set(others.values())))
        except BaseException:
            self._close_router()
            self._gate.forget(self._zap_domain)
            self._gate.release()
            os.close(self._wake_r)
            os.close(self._wake_w)
            if self._own_context:
                self._context.term()
            raise
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self._thread = threading.Thread(target=self._serve, name=f"vigil-{name}", daemon=True)
        self._thread.start()

    def _bind(self, bind: tuple[str, int], keys: LinkKeys, addresses: list[str]) -> str:
        endpoint, ipv6 = tcp_endpoint(*bind)
        sock = self._router
        sock.setsockopt(zmq.LINGER, 0)
        heartbeats(sock)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, SERVER_MAX_FRAME_BYTES)
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_TIMEOUT_MS)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.own.secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, self._zap_domain.encode())
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        if ipv6:
            sock.setsockopt(zmq.IPV6, 1)
        for address in addresses:
            sock.setsockopt(zmq.TCP_ACCEPT_FILTER, address.strip("[]").encode())
        try:
            bind_retrying(sock, endpoint, BIND_RETRY_S)
        except zmq.ZMQError as err:
            hint = ("another program holds that port; stop it or choose another port"
                    if err.errno == errno.EADDRINUSE else "check the address and port")
            raise StreamError(f"stream server of {self.self_name!r} cannot bind {endpoint}: "
                              f"{err.strerror}; {hint}") from err
        last = sock.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else endpoint

    def _close_router(self) -> None:
        if self._door_monitor is not None:
            close_door_monitor(self._router, self._door_monitor)
            self._door_monitor = None
        self._router.close(linger=0)

    def _door_events(self) -> None:
        """Connections accepted and closed; cut the newest beyond the cap of those that may
        still be in their handshake (a program on a peer's host opening connections)."""
        assert self._door_monitor is not None
        address = self.endpoint.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")
        cut = door_cuts(self._door_monitor, self._door, address, self.port, time.monotonic())
        if cut and not self._cut:
            log.warning("stream server of %s: cutting connections to port %d: more than %d "
                        "were not yet authenticated (someone on a peer's host is opening "
                        "connections); running transfers are not touched", self.self_name,
                        self.port, self._door.cap)
        self._cut += cut

    def cut(self) -> int:
        """Connections cut because too many were not yet authenticated."""
        return self._cut

    @property
    def refused(self) -> int:
        """Connections the ZAP handler refused on this server so far."""
        return self._gate.refused[self._zap_domain]

    def active(self) -> list[str]:
        """The senders whose transfer is running (a snapshot)."""
        with self._lock:
            return sorted({sender for sender, _channel in self._by_sender})

    def post(self, transfer: _Transfer, frames: list[bytes], *, final: bool) -> None:
        """Have the server thread send ``frames`` to the transfer's sender (any thread)."""
        self._outbox.put((transfer, frames, final))
        with self._lock:
            if self._wake_closed:
                return
            # full: a wake is pending anyway; broken: the server thread is gone (closing)
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(self._wake_w, b"x")

    def finish(self, transfer: _Transfer, kind: bytes, reason: str = "") -> None:
        self.post(transfer, [kind, reason.encode()], final=True)

    def close(self) -> None:
        """Stop serving: running transfers' readers raise; waits a bounded time."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stopping.set()
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self._wake_w, b"x")
        self._thread.join(CLOSE_TIMEOUT_S)
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is threading.current_thread():
                continue  # closed from a receiving callback: it finishes after this
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("stream server of %s: a receiving callback (%s) still runs after "
                            "close; leaving it to finish on its own", self.self_name,
                            thread.name)
        if self._thread.is_alive():
            log.warning("stream server of %s: its thread did not stop", self.self_name)
            return
        with self._lock:
            self._wake_closed = True
            os.close(self._wake_w)
        self._gate.forget(self._zap_domain)
        self._gate.release()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> StreamServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if self._door_monitor is not None:
            poller.register(self._door_monitor, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                ready = dict(poller.poll())
                if self._door_monitor is not None and self._door_monitor in ready:
                    self._door_events()
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    self._flush_outbox()
                if self._router in ready:
                    self._drain()
        except zmq.ZMQError as err:
            log.error("stream server of %s stopped by a socket error: %s", self.self_name, err)
        finally:
            with self._lock:
                transfers = list(self._by_rid.values())
                self._by_rid.clear()
                self._by_sender.clear()
            for transfer in transfers:
                transfer.items.put(_Abort("the receiving server closed"))
            self._close_router()
            os.close(self._wake_r)

    def _drain(self) -> None:
        for _ in range(WINDOW * 4):  # then the outbox and the stop flag get a turn
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) != 3:
                continue  # not this protocol: an authenticated node of another version
            rid, kind, payload = frames[0].bytes, frames[1].bytes, frames[2]
            sender = payload.get("User-Id")
            self._handle(rid, str(sender), kind, payload.bytes)

    def _handle(self, rid: bytes, sender: str, kind: bytes, payload: bytes) -> None:
        transfer = self._by_rid.get(rid)
        if kind == HEAD:
            self._start(rid, sender, payload)
        elif transfer is None:
            if kind != ABORT:
                self._send(rid, [FAIL, b"no transfer under way on this connection"])
        elif transfer.ended and kind != ABORT:
            self._end(transfer, f"{sender} sent more after the end of its stream")
        elif kind == DATA:
            transfer.credit -= 1
            if transfer.credit < 0:
                self._end(transfer, f"{sender} sent more than its credit")
            else:
                transfer.items.put(payload)
        elif kind == END:
            try:
                size, digest = struct.unpack(_END_FORMAT, payload)
            except struct.error:
                self._end(transfer, f"{sender} sent a malformed END frame")
                return
            transfer.ended = True
            transfer.items.put(_End(size, digest))
        elif kind == ABORT:
            reason = payload.decode("utf-8", "replace")[:500]
            self._end(transfer, f"the sender gave up ({reason})", answer=False)

    def _start(self, rid: bytes, sender: str, payload: bytes) -> None:
        try:
            if len(payload) > HEADER_MAX_BYTES:
                raise ValueError(f"over {HEADER_MAX_BYTES} bytes")
            header = json.loads(payload)
            if not isinstance(header, dict):
                raise ValueError("not a JSON object")
            channel = header.get("channel", "")
            if not isinstance(channel, str) or len(channel) > CHANNEL_MAX_CHARS:
                raise ValueError(f"channel must be a string of at most {CHANNEL_MAX_CHARS} "
                                 "characters")
        except ValueError as err:
            self._send(rid, [FAIL, f"bad header: {err}".encode()])
            return
        old = self._by_sender.get((sender, channel))
        if old is not None:
            self._end(old, f"{sender} began another transfer")
        elif sum(s == sender for s, _c in self._by_sender) >= CHANNELS_PER_SENDER:
            self._send(rid, [FAIL, f"{sender} runs {CHANNELS_PER_SENDER} transfers already; "
                                   "wait for one to end".encode()])
            return
        transfer = _Transfer(self, rid, sender, header, next(self._serials), channel)
        reader = StreamReader(transfer, self._idle_timeout)
        transfer.thread = threading.Thread(
            target=self._run, args=(transfer, reader), daemon=True,
            name=f"vigil-stream-{sender}-{transfer.serial}")
        with self._lock:
            self._by_rid[rid] = transfer
            self._by_sender[(sender, channel)] = transfer
            self._threads = [t for t in self._threads if t.is_alive()] + [transfer.thread]
        log.info("stream %s: begins (%s)", transfer.describe(), header)
        transfer.thread.start()
        self._send(rid, [CREDIT, struct.pack(">I", WINDOW)])

    def _run(self, transfer: _Transfer, reader: StreamReader) -> None:
        try:
            payload = encode_reply(self._on_stream(transfer.sender, transfer.header, reader))
        except Exception as err:
            log.warning("stream %s: the receiver failed after %d bytes: %s",
                        transfer.describe(), reader.bytes_read, err)
            self.finish(transfer, FAIL, f"the receiver failed: {err}")
            return
        if reader.complete:
            log.info("stream %s: complete, %d bytes", transfer.describe(), reader.bytes_read)
            self.post(transfer, [DONE, payload], final=True)
        else:
            self.finish(transfer, FAIL, f"the receiver stopped after {reader.bytes_read} "
                                        "bytes without reading to the end")

    def _flush_outbox(self) -> None:
        while True:
            try:
                transfer, frames, final = self._outbox.get_nowait()
            except queue.Empty:
                return
            if transfer.finished:
                continue
            if final:
                self._forget(transfer)
            elif frames[0] == CREDIT:
                transfer.credit += struct.unpack(">I", frames[1])[0]
            self._send(transfer.rid, frames)

    def _end(self, transfer: _Transfer, reason: str, *, answer: bool = True) -> None:
        """Abort a transfer from the server thread: its reader raises."""
        transfer.items.put(_Abort(reason))
        self._forget(transfer)
        if answer:
            self._send(transfer.rid, [FAIL, reason.encode()])

    def _forget(self, transfer: _Transfer) -> None:
        transfer.finished = True
        with self._lock:
            if self._by_rid.get(transfer.rid) is transfer:
                del self._by_rid[transfer.rid]
            if self._by_sender.get((transfer.sender, transfer.channel)) is transfer:
                del self._by_sender[(transfer.sender, transfer.channel)]

    def _send(self, rid: bytes, frames: list[bytes]) -> None:
        # the sender may be gone (unroutable) or not reading (its queue is full): control
        # frames are advisory then, and the server thread must never wait for a peer
        with contextlib.suppress(zmq.Again, zmq.ZMQError):
            self._router.send_multipart([rid, *frames], zmq.NOBLOCK)


class _Dealer:
    """One sender's connection: a DEALER socket and its monitor."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str, ipv6: bool,
                 keys: LinkKeys, server_key: bytes) -> None:
        self.sock: zmq.Socket[bytes] = context.socket(zmq.DEALER)
        self.monitor: zmq.Socket[bytes] | None = None
        try:
            sock = self.sock
            sock.setsockopt(zmq.LINGER, 0)
            heartbeats(sock)
            sock.setsockopt(zmq.SNDHWM, WINDOW + 4)
            sock.setsockopt(zmq.MAXMSGSIZE, SENDER_MAX_FRAME_BYTES)
            sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_TIMEOUT_MS)
            sock.setsockopt(zmq.RECONNECT_IVL, -1)  # a transfer is one connection
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.own.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, keys.own.secret)
            if ipv6:
                sock.setsockopt(zmq.IPV6, 1)
            self.monitor = sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED | sum(_BROKEN),
                f"inproc://vigil-stream-monitor-{os.getpid()}-{next(_monitor_ids)}")
            sock.connect(endpoint)
        except BaseException:
            self.close(0)
            raise

    def event(self) -> str | None:
        """The next event: "up", a reason it broke, or None."""
        assert self.monitor is not None
        try:
            kind, _ = monitor_event(self.monitor.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return None
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return "up"
        return _BROKEN.get(kind)

    def close(self, linger_ms: int) -> None:
        # as the links do: drain the monitor, stop it, then close (libzmq's I/O thread would
        # otherwise block for good sending an event no one reads)
        if self.monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                while self.monitor.poll(0):
                    self.monitor.recv_multipart(zmq.NOBLOCK)
            with contextlib.suppress(zmq.ZMQError):
                self.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None
        self.sock.close(linger=linger_ms)


_BROKEN: Final[dict[int, str]] = {
    zmq.EVENT_DISCONNECTED: "the connection closed",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed (the receiver does not hold "
                                          "this cluster key, is no Vigil stream server, or "
                                          "cut the connection in a flood of others)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the handshake failed (protocol error: not this "
                                         "cluster's key, or no Vigil stream server)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused by the receiver (it does not admit our key or "
                                     "address: check the key file and the addresses)",
}


class _Sending:
    """The state of one :func:`send_stream` call."""

    def __init__(self, peer: str, where: str, timeout: float,
                 cancel: threading.Event | None) -> None:
        self.peer = peer
        self.where = where
        self.timeout = timeout
        self.cancel = cancel
        self.dealer: _Dealer | None = None
        self.credit = 0
        self.up = False
        self.done = False
        self.reply: dict[str, object] | None = None

    def fail(self, what: str) -> StreamError:
        return StreamError(f"stream to {self.peer} at {self.where}: {what}")

    def wait(self, until: Callable[[], bool], what: str) -> None:
        """Take frames and events until ``until()``; StreamError after ``timeout`` without."""
        assert self.dealer is not None and self.dealer.monitor is not None
        deadline = time.monotonic() + self.timeout
        poller = zmq.Poller()
        poller.register(self.dealer.sock, zmq.POLLIN)
        poller.register(self.dealer.monitor, zmq.POLLIN)
        while not until():
            if self.cancel is not None and self.cancel.is_set():
                raise self.fail("cancelled")
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.fail(f"{what} for {self.timeout:g} s; giving up")
            ready = dict(poller.poll(int(min(left, _SLICE_S) * 1000) + 1))
            if self.dealer.monitor in ready:
                self.on_event(self.dealer.event())
            if self.dealer.sock in ready:
                self.take()

    def on_event(self, event: str | None) -> None:
        if event == "up":
            self.up = True
        elif event is not None:
            raise self.fail(event)

    def take(self) -> None:
        assert self.dealer is not None
        while True:
            try:
                frames = self.dealer.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            kind, payload = frames
            if kind == CREDIT and len(payload) == 4:
                self.credit += struct.unpack(">I", payload)[0]
            elif kind == FAIL:
                raise self.fail("the receiver refused the stream: "
                                + payload.decode("utf-8", "replace"))
            elif kind == DONE:
                try:
                    self.reply = decode_reply(payload)
                except ValueError as err:
                    raise self.fail(f"the receiver answered with {err}") from None
                self.done = True


def send_stream(
    peer: str,
    address: tuple[str, int],
    header: Mapping[str, object],
    source: Source,
    *,
    keys: LinkKeys,
    source_address: str | None = None,
    timeout: float = SEND_TIMEOUT_S,
    bandwidth: float | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    cancel: threading.Event | None = None,
    context: zmq.Context[zmq.Socket[bytes]] | None = None,
) -> Sent:
    """Send what ``source`` reads until its end to the :class:`StreamServer` of node
    ``peer`` at ``address`` (address, port), connecting from ``source_address`` (the
    receiver admits only its peers' addresses), with ``header`` (a JSON object) first.
    Returns once the receiver read and verified it all and its callback returned; what the
    callback returned is in :attr:`Sent.reply`.

    Raises :class:`StreamError` when the receiver cannot be reached or authenticated, refuses
    or fails, or makes no progress for ``timeout`` seconds at any step; ``bandwidth`` (bytes
    per second) limits the average rate; ``cancel`` ends the transfer within 0.1 s. A
    ``source.read`` that blocks is the caller's to bound (``Volume.send`` has its own
    timeout and closes its output when it gives up)."""
    if not 0 < chunk_bytes <= CHUNK_BYTES:
        raise ValueError(f"chunk_bytes must be 1..{CHUNK_BYTES}, not {chunk_bytes}")
    if bandwidth is not None and bandwidth <= 0:
        raise ValueError(f"bandwidth must be positive bytes/s, not {bandwidth}")
    head = json.dumps(dict(header), separators=(",", ":")).encode()
    if len(head) > HEADER_MAX_BYTES:
        raise ValueError(f"the header is {len(head)} bytes of JSON; at most {HEADER_MAX_BYTES}")
    server_keys = keys.peers.get(peer)
    if not server_keys:
        raise ValueError(f"no public key for node {peer!r}")
    if source_address is not None:
        endpoint, ipv6 = connect_endpoint(source_address, address)
    else:
        endpoint, ipv6 = tcp_endpoint(*address)
    own_context = context is None
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context() if context is None else context
    state = _Sending(peer, f"{address[0]} port {address[1]}", timeout, cancel)
    linger = 0
    try:
        _connect(state, ctx, endpoint, ipv6, keys, server_keys)
        try:
            return _transfer(state, head, source, bandwidth, chunk_bytes)
        except BaseException as err:
            linger = ABORT_LINGER_MS
            assert state.dealer is not None
            with contextlib.suppress(zmq.ZMQError):
                state.dealer.sock.send_multipart([ABORT, str(err).encode()[:500]], zmq.NOBLOCK)
            raise
    finally:
        if state.dealer is not None:
            state.dealer.close(linger)
        if own_context:
            ctx.term()


def _connect(state: _Sending, context: zmq.Context[zmq.Socket[bytes]], endpoint: str,
             ipv6: bool, keys: LinkKeys, server_keys: Collection[bytes]) -> None:
    """Connect with the first of the receiver's keys that completes a handshake."""
    errors: list[str] = []
    for server_key in server_keys:
        state.dealer = _Dealer(context, endpoint, ipv6, keys, server_key)
        try:
            state.wait(lambda: state.up, "no handshake with the receiver (is its daemon "
                                         "running and the port open?)")
            return
        except StreamError as err:
            errors.append(str(err))
        state.dealer.close(0)
        state.dealer = None
    raise StreamError("; ".join(errors))


def _transfer(state: _Sending, head: bytes, source: Source, bandwidth: float | None,
              chunk_bytes: int) -> Sent:
    start = time.monotonic()
    sha = hashlib.sha256()
    total = 0
    _send(state, [HEAD, head])
    while True:
        state.wait(lambda: state.credit > 0,
                   f"the receiver granted no credit after {total} bytes (it stopped reading "
                   "or is stuck)" if total else "the receiver did not accept the stream")
        chunk = source.read(chunk_bytes)
        if not chunk:
            break
        sha.update(chunk)
        total += len(chunk)
        _send(state, [DATA, chunk])
        state.credit -= 1
        if bandwidth is not None:
            _pace(state, start + total / bandwidth)
    _send(state, [END, struct.pack(_END_FORMAT, total, sha.digest())])
    state.wait(lambda: state.done, f"no answer from the receiver after all {total} bytes")
    return Sent(total, sha.hexdigest(), time.monotonic() - start, state.reply)


def _send(state: _Sending, frames: list[bytes]) -> None:
    assert state.dealer is not None
    # credit keeps the queue below its high-water mark; a full one means the connection is
    # stuck, which the wait below bounds
    sent = False

    def try_send() -> bool:
        nonlocal sent
        assert state.dealer is not None
        if not sent:
            with contextlib.suppress(zmq.Again):
                state.dealer.sock.send_multipart(frames, zmq.NOBLOCK)
                sent = True
        return sent

    state.wait(try_send, "the connection takes no more data")


def _pace(state: _Sending, until: float) -> None:
    """Sleep until ``until`` (monotonic), still seeing a cancel, a FAIL or a broken
    connection (a pause may be longer than ``timeout`` at a low rate)."""
    assert state.dealer is not None and state.dealer.monitor is not None
    poller = zmq.Poller()
    poller.register(state.dealer.sock, zmq.POLLIN)
    poller.register(state.dealer.monitor, zmq.POLLIN)
    while (left := until - time.monotonic()) > 0:
        if state.cancel is not None and state.cancel.is_set():
            raise state.fail("cancelled")
        ready = dict(poller.poll(int(min(left, _SLICE_S) * 1000) + 1))
        if state.dealer.monitor in ready:
            state.on_event(state.dealer.event())
        if state.dealer.sock in ready:
            state.take()
