"""One link (one NIC) of one node over ZeroMQ PUB/SUB, encrypted and authenticated with
CurveZMQ.

Each node binds one PUB socket per link and connects one SUB socket per peer to that peer's
PUB socket on the link. Subscriptions are the node's own topic and the broadcast topic (see
:func:`vigil.transports.codec.topic_for`), so the peers' ZeroMQ filters the traffic.

**Security** (docs/security.md, "The links between nodes"). Every connection runs the CurveZMQ
handshake: the PUB socket is a CURVE server with its node's key pair, each SUB socket a CURVE
client that must know the peer's public key; both are derived from the cluster key
(:mod:`vigil.transports.keys`). The context's ZAP handler (:mod:`vigil.transports.zap`)
admits only the configured peers' keys from their addresses on this link, and the PUB socket
accepts TCP connections only from those addresses. Whoever lacks the key cannot finish a
handshake, so cannot subscribe, read or send; each connection has its own session keys, so
nothing recorded on the wire can be played into another connection (nor after a restart).

**Recovery.** libzmq gives up for good on a connection that met a protocol error (an
oversized frame, a greeting with another mechanism, a failed handshake): whatever answered at
a peer's address while that peer was down could cut the link until a restart. So the reader
thread watches each SUB socket's events and, after any disconnection or failed handshake,
replaces that peer's socket with a new one, retrying with a backoff of at most ``retry_max``.

PUB/SUB loses messages, and says nothing when it does: a subscriber misses whatever was
published before its connection was up (the "slow joiner"), and a publisher drops at the
high-water mark when a subscriber falls behind. This layer never retries a message. The
protocol above must survive loss: heartbeats repeat by nature, and every request of the
transition protocol is retransmitted until answered or timed out.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import zmq

from vigil.config import ClusterConfig
from vigil.messages import BROADCAST
from vigil.transports.base import FrameHandler, LinkError
from vigil.transports.codec import MAX_MESSAGE_BYTES, topic_for
from vigil.transports.keys import LinkKeys, key_ring
from vigil.transports.zap import Admission, Gatekeeper, bind_retrying, normal_address

log = logging.getLogger(__name__)

#: How long close() waits for a handler that is still running before it gives up on it.
CLOSE_TIMEOUT_S: Final = 2.0
HIGH_WATER_MARK: Final = 10_000
#: The first retry after a connection to a peer broke; each failure in a row doubles it, up to
#: the link's ``retry_max``.
RECONNECT_IVL_MS: Final = 100
#: The default ``retry_max``: the daemon passes a quarter of ``dead_time`` when that is less,
#: so a peer that comes back is heard again well within ``dead_time``.
RETRY_MAX_S: Final = 1.0
#: A connection that has not finished its handshake this long after TCP connected is closed:
#: it bounds how long a client that never authenticates holds a descriptor.
HANDSHAKE_TIMEOUT_MS: Final = 2_000
#: Connections a link's listening socket keeps open that may still be in their handshake
#: (accepted less than HANDSHAKE_TIMEOUT_MS ago); beyond it the newest are cut. Only a peer's
#: address gets that far (the accept filter closes the others at once): this is what stops a
#: program on a peer's host from exhausting the daemon's descriptors. A real peer needs one.
PENDING_CAP: Final = 64
#: Descriptors a link's share leaves for connections not yet authenticated: the cap, and the
#: connections libzmq accepted before the reader has cut them (the reader's lag: a few
#: hundred under a flood on a busy two-core machine).
UNAUTHENTICATED_ALLOWANCE: Final = 1_024
#: A peer that lost power leaves its TCP connections "up" on our side until TCP gives up
#: (minutes): our SUB would never reconnect, so the rebooted peer would never receive our
#: subscriptions and never hear us. On the cluster's links TCP finds such a connection:
#: keepalive probes on one that received nothing for TCP_KEEPALIVE_IDLE_S (our SUB: a live
#: peer's heartbeats come every interval), answered by nobody (closed after the probes) or
#: by the rebooted host's RST (closed at once); and TCP_MAXRT_MS on one whose data is not
#: acknowledged (our PUB's, to a vanished subscriber). ZMTP heartbeats (a PING and a PONG
#: each way on every connection every HEARTBEAT_IVL_MS) found it a little sooner, but on a
#: link that carries our own heartbeats they were most of the daemon's I/O wakeups, each
#: some 100 µs of CPU (at 3 nodes ZeroMQ's I/O thread woke 36 times a second with them, 16
#: without; at 32 nodes they are some 800 frames a second against 40 heartbeats). They stay on
#: the transfer streams (vigil/transports/stream.py), whose connections can be idle.
HEARTBEAT_IVL_MS: Final = 300
HEARTBEAT_TIMEOUT_MS: Final = 1_200
TCP_KEEPALIVE_IDLE_S: Final = 2
TCP_KEEPALIVE_INTVL_S: Final = 1
TCP_KEEPALIVE_CNT: Final = 3
TCP_MAXRT_MS: Final = 5_000
#: The largest frame a SUB socket takes: a message frame of the codec's limit, encrypted (the
#: CURVE MESSAGE command adds 33 bytes). A larger one closes the connection before any of it
#: is buffered.
SUB_MAX_FRAME_BYTES: Final = MAX_MESSAGE_BYTES + 64
#: The largest frame a PUB socket takes. Subscribers send it only their subscriptions (a topic
#: of at most 64 bytes) and the handshake's commands (a few hundred bytes).
PUB_MAX_FRAME_BYTES: Final = 4_096
#: How long binding a taken port is tried again before it is an error.
BIND_RETRY_S: Final = 1.0
#: Frames read from one peer in one go before the others and the stop flag get a turn.
_BATCH: Final = 256
#: Monitor events of the listening socket handled in one go (at most a full monitor queue).
_DOOR_BATCH: Final = 1_000
#: The events of a SUB socket that mean its connection is gone or never became usable.
_BROKEN: Final[dict[int, str]] = {
    zmq.EVENT_DISCONNECTED: "disconnected",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake failed (protocol error: not a Vigil node "
                                         "of this cluster with this key, or not Vigil at all)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused by the peer (it does not admit our key or "
                                     "address: check the key file and the link addresses)",
}
_WATCHED: Final = zmq.EVENT_HANDSHAKE_SUCCEEDED | sum(_BROKEN)
#: A listening socket's events that open and close a connection (the value is its descriptor).
_DOOR: Final = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
#: Cut connections are logged at warning level at most once in this interval per link.
CUT_LOG_INTERVAL_S: Final = 60.0
_monitor_ids = itertools.count(1)
#: A monitor event's first frame: a 16-bit event and a 32-bit value, in the host's order.
_MONITOR_EVENT: Final = struct.Struct("=Hi")

PeerState = Literal["connected", "connecting", "waiting"]


class Doorway:
    """The connections a listening socket accepted, as its monitor tells them: which may still
    be in their handshake, and which of those exceed the cap (the newest: a connection that
    authenticated before a flood began is never among them)."""

    def __init__(self, cap: int = PENDING_CAP,
                 handshake_s: float = HANDSHAKE_TIMEOUT_MS / 1000) -> None:
        self.cap = cap
        self.handshake_s = handshake_s
        #: descriptor -> when accepted, oldest first
        self._pending: dict[int, float] = {}

    def accepted(self, fd: int, now: float) -> None:
        self._pending.pop(fd, None)  # a number libzmq closed and the kernel gave out again
        self._pending[fd] = now

    def gone(self, fd: int) -> None:
        self._pending.pop(fd, None)

    def excess(self, now: float) -> list[int]:
        """The connections to cut now, forgotten here (libzmq says when they are closed)."""
        for fd, when in list(self._pending.items()):
            if now - when < self.handshake_s:
                break
            # authenticated, or closed by libzmq's handshake timeout: no longer pending
            del self._pending[fd]
        over = len(self._pending) - self.cap
        if over <= 0:
            return []
        newest = list(self._pending)[-over:]
        for fd in newest:
            del self._pending[fd]
        return newest

    @property
    def pending(self) -> int:
        return len(self._pending)


def cut_connection(fd: int, address: str, port: int) -> bool:
    """Close the TCP connection behind libzmq's descriptor ``fd`` from outside: shut it down
    (libzmq then reads its end, closes the descriptor and reports it). Only if ``fd`` is still a
    TCP socket on our listening ``address`` and ``port``: a number libzmq closed meanwhile may
    have been given to anything else of ours (another link's connection, a Unix socket)."""
    try:
        own = os.dup(fd)
    except OSError:
        return False
    try:
        conn = socket.socket(fileno=own)
    except OSError:
        os.close(own)
        return False
    with conn:
        try:
            if (conn.family not in (socket.AF_INET, socket.AF_INET6)
                    or conn.type != socket.SOCK_STREAM):
                return False
            host, bound_port = conn.getsockname()[:2]
            if bound_port != port or normal_address(host) != normal_address(address):
                return False
            conn.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError, IndexError):
            return False
    return True


def open_door_monitor(context: zmq.Context[zmq.Socket[bytes]], sock: zmq.Socket[bytes],
                      address: str) -> zmq.Socket[bytes]:
    """A listening socket's monitor of accepted and closed connections (for a
    :class:`Doorway`), with a queue of no fixed size: libzmq's I/O thread, which every socket
    of the daemon shares, sends monitor events with a blocking send, and must never wait for
    our reader (that would hold up every heartbeat). The reader takes events far faster than
    libzmq accepts connections, so the queue stays short unless the reader itself is
    starved."""
    sock.monitor(address, _DOOR)
    monitor: zmq.Socket[bytes] = context.socket(zmq.PAIR)
    monitor.setsockopt(zmq.RCVHWM, 0)  # 0 on either side of inproc: no limit
    monitor.setsockopt(zmq.LINGER, 0)
    monitor.connect(address)
    return monitor


def close_door_monitor(sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes]) -> None:
    """Stop a listening socket's monitor (before the socket closes). Its queue has no limit,
    so libzmq's I/O thread is never stuck on it, whoever still reads it."""
    with contextlib.suppress(zmq.ZMQError):
        sock.disable_monitor()
    monitor.close(linger=0)


def monitor_event(frames: Sequence[bytes]) -> tuple[int, int]:
    """A socket monitor's event and its value (a descriptor, an error number...), from the
    two frames libzmq sends (the endpoint, in the second, is not needed here).

    Ours, not pyzmq's ``zmq.utils.monitor.parse_monitor_message``: that module imports
    ``zmq.asyncio`` and with it asyncio, which the daemon and the guardian never use
    (some 13 ms of CPU and a few MB in every one of them, at every start)."""
    if len(frames) != 2 or len(frames[0]) != _MONITOR_EVENT.size:
        raise RuntimeError(f"Invalid event message format: {list(frames)}")
    kind, value = _MONITOR_EVENT.unpack(frames[0])
    return kind, value


def door_cuts(monitor: zmq.Socket[bytes], door: Doorway, address: str, port: int,
              now: float) -> int:
    """Take the queued events of a listening socket's ``monitor`` into ``door``, and cut the
    connections over its cap: how many were cut."""
    for _ in range(_DOOR_BATCH):
        try:
            kind, fd = monitor_event(monitor.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            break
        if kind == zmq.EVENT_ACCEPTED:
            door.accepted(fd, now)
        elif kind == zmq.EVENT_DISCONNECTED:
            door.gone(fd)
    return sum(cut_connection(fd, address, port) for fd in door.excess(now))


def descriptors_needed(peers: int) -> int:
    """The descriptors one link may hold: its PUB socket and listener, a SUB socket, monitor
    and connection per peer, each peer's connection to us, wakers, and the allowance for
    connections still in their handshake."""
    return 16 + 6 * peers + UNAUTHENTICATED_ALLOWANCE


def tcp_endpoint(address: str, port: int) -> tuple[str, bool]:
    """The ZeroMQ TCP endpoint of an address and port, and whether it is IPv6."""
    ipv6 = ":" in address
    host = f"[{address.strip('[]')}]" if ipv6 else address
    return f"tcp://{host}:{port}", ipv6


def connect_endpoint(source: str, peer: tuple[str, int]) -> tuple[str, bool]:
    """The endpoint that connects to ``peer`` from ``source`` (any port): the peer's
    listening socket accepts connections only from its peers' link addresses."""
    target, ipv6 = tcp_endpoint(*peer)
    origin, _ = tcp_endpoint(source, 0)
    return f"{origin};{target.removeprefix('tcp://')}", ipv6


@dataclass
class _Peer:
    """One peer on this link: its SUB socket and that socket's monitor, owned by the reader."""

    node: str
    address: str
    endpoint: str
    ipv6: bool
    #: the peer's public keys to try, in order (two during a key rotation)
    server_keys: tuple[bytes, ...]
    key_index: int = 0
    sub: zmq.Socket[bytes] | None = None
    monitor: zmq.Socket[bytes] | None = None
    #: whether the current socket finished a handshake
    handshaken: bool = False
    #: monotonic time at which a new socket is due (None: the current one is in use)
    retry_at: float | None = None
    backoff_s: float = RECONNECT_IVL_MS / 1000
    #: failed handshakes since the last good one, for the log
    failures: int = 0
    replaced: int = 0


class ZmqLink:
    """A :class:`~vigil.transports.base.Link` over ZeroMQ with CurveZMQ.

    The constructor binds the PUB socket (raising :class:`LinkError` if it cannot) and
    connects one SUB socket per peer; :meth:`start` starts the one reader thread that hands
    every received frame set to ``on_frames(link_name, frames)`` and keeps the connections up.
    :meth:`send` may be called from any thread.
    """

    def __init__(
        self,
        name: str,
        bind: tuple[str, int],
        peers: Mapping[str, tuple[str, int]],
        self_name: str,
        on_frames: FrameHandler,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        *,
        keys: LinkKeys,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        self._name = name
        self.self_name = self_name
        self._on_frames = on_frames
        self._keys = keys
        self._retry_max_s = max(retry_max_s, RECONNECT_IVL_MS / 1000)
        self._own_context = context is None
        self._context: zmq.Context[zmq.Socket[bytes]] = (
            zmq.Context() if context is None else context
        )
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._reader_done = False
        self._reader_terms_context = False
        others = {n: p for n, p in peers.items() if n != self_name}
        missing = sorted(set(others) - set(keys.peers))
        if missing:
            raise ValueError(f"link {name!r}: no public key for peers {missing}")
        addresses = [address for address, _port in others.values()]
        self._zap_domain = f"{name}/{self_name}"
        self._peers: list[_Peer] = []
        #: the reader's sockets: each peer's SUB (False) and its monitor (True)
        self._watched: dict[zmq.Socket[bytes], tuple[_Peer, bool]] = {}
        self._retrying = False  # some peer's socket is closed, waiting for its retry_at
        # the handler first: a CURVE socket must never listen while no one checks its clients
        self._gate = Gatekeeper.acquire(self._context)
        self._pub: zmq.Socket[bytes] = self._context.socket(zmq.PUB)
        self._door = Doorway(max(PENDING_CAP, 2 * len(others)))
        self._door_monitor: zmq.Socket[bytes] | None = None
        self._address = bind[0]
        self._port = 0
        self._cut = 0
        #: when a cut was last logged at warning level, and the cuts not logged since
        self._cut_logged: tuple[float, int] = (float("-inf"), 0)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._gate.admit(self._zap_domain, Admission.of(keys.admitted(others), addresses))
            self._door_monitor = open_door_monitor(
                self._context, self._pub,
                f"inproc://vigil-link-door-{os.getpid()}-{next(_monitor_ids)}")
            self.endpoint = self._bind(bind, addresses)
            for peer, address in others.items():
                self._peers.append(self._peer(peer, bind[0], address))
        except BaseException:
            self._close_pub()
            for peer_link in self._peers:
                self._close_sockets(peer_link)
            self._release()
            os.close(self._wake_r)
            os.close(self._wake_w)
            if self._own_context:
                self._context.term()
            raise

    @property
    def name(self) -> str:
        return self._name

    def peer_states(self) -> dict[str, PeerState]:
        """Each peer's connection as the reader last saw it (a snapshot, for status and
        tests): ``connected`` (handshake done), ``connecting``, or ``waiting`` to retry."""
        return {
            p.node: "connected" if p.handshaken and p.retry_at is None
            else "waiting" if p.retry_at is not None else "connecting"
            for p in self._peers
        }

    def replaced(self) -> dict[str, int]:
        """How many times each peer's socket was replaced after a broken connection."""
        return {p.node: p.replaced for p in self._peers}

    def cut(self) -> int:
        """Connections to our listening socket cut because too many were not yet
        authenticated (:class:`Doorway`)."""
        return self._cut

    def _bind(self, bind: tuple[str, int], peer_addresses: list[str]) -> str:
        address, port = bind
        endpoint, ipv6 = tcp_endpoint(address, port)
        pub = self._pub
        pub.setsockopt(zmq.LINGER, 0)
        keep_alive(pub, zmtp=False)
        pub.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        pub.setsockopt(zmq.MAXMSGSIZE, PUB_MAX_FRAME_BYTES)
        pub.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_TIMEOUT_MS)
        pub.setsockopt(zmq.CURVE_SERVER, 1)
        pub.setsockopt(zmq.CURVE_SECRETKEY, self._keys.own.secret)
        pub.setsockopt(zmq.ZAP_DOMAIN, self._zap_domain.encode())
        pub.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        if ipv6:
            pub.setsockopt(zmq.IPV6, 1)
        # TCP connections from elsewhere are closed as soon as they are accepted: they never
        # hold a descriptor or reach the handshake
        for peer_address in sorted(set(peer_addresses)):
            pub.setsockopt(zmq.TCP_ACCEPT_FILTER, peer_address.strip("[]").encode())
        try:
            bind_retrying(pub, endpoint, BIND_RETRY_S)
        except zmq.ZMQError as err:
            if err.errno == errno.EADDRINUSE:
                hint = (
                    "another program (perhaps another vigil daemon) holds that port; stop it "
                    "or give this link another port in the cluster file"
                )
            elif err.errno == errno.EADDRNOTAVAIL:
                hint = (
                    "that address is not configured on this host; check the NIC and the "
                    "cluster file"
                )
            else:
                hint = "check the link's address and port in the cluster file"
            raise LinkError(
                f"link {self._name!r} of node {self.self_name!r} cannot bind "
                f"{address} port {port} ({endpoint}): {err.strerror}; {hint}"
            ) from err
        last = pub.getsockopt(zmq.LAST_ENDPOINT)
        bound = last.decode() if isinstance(last, bytes) else endpoint
        self._port = int(bound.rsplit(":", 1)[1])
        return bound

    def _peer(self, peer: str, source: str, address: tuple[str, int]) -> _Peer:
        endpoint, ipv6 = connect_endpoint(source, address)
        state = _Peer(peer, f"{address[0]} port {address[1]}", endpoint, ipv6,
                      self._keys.peers[peer])
        try:
            self._open(state)
        except zmq.ZMQError as err:
            raise LinkError(
                f"link {self._name!r} of node {self.self_name!r} cannot connect to peer "
                f"{peer!r} at {address[0]} port {address[1]} ({endpoint}): {err.strerror}; "
                f"check that peer's address for this link in the cluster file"
            ) from err
        return state

    def _open(self, peer: _Peer) -> None:
        """A new SUB socket (and its monitor) for ``peer``, connecting."""
        sub = self._context.socket(zmq.SUB)
        monitor: zmq.Socket[bytes] | None = None
        try:
            sub.setsockopt(zmq.LINGER, 0)
            keep_alive(sub, zmtp=False)
            sub.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
            sub.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sub.setsockopt(zmq.RECONNECT_IVL_MAX, int(self._retry_max_s * 1000))
            # a SYN that no one answers (the peer is powered off) is given up on and sent
            # again, so the peer is found soon after it is back
            sub.setsockopt(zmq.CONNECT_TIMEOUT, max(250, int(self._retry_max_s * 1000)))
            sub.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_TIMEOUT_MS)
            sub.setsockopt(zmq.MAXMSGSIZE, SUB_MAX_FRAME_BYTES)
            sub.setsockopt(zmq.CURVE_SERVERKEY, peer.server_keys[peer.key_index])
            sub.setsockopt(zmq.CURVE_PUBLICKEY, self._keys.own.public)
            sub.setsockopt(zmq.CURVE_SECRETKEY, self._keys.own.secret)
            sub.setsockopt(zmq.SUBSCRIBE, topic_for(BROADCAST))
            sub.setsockopt(zmq.SUBSCRIBE, topic_for(self.self_name))
            if peer.ipv6:
                sub.setsockopt(zmq.IPV6, 1)
            monitor = sub.get_monitor_socket(
                _WATCHED, f"inproc://vigil-link-monitor-{os.getpid()}-{next(_monitor_ids)}")
            sub.connect(peer.endpoint)
        except BaseException:
            if monitor is not None:
                monitor.close(linger=0)
            sub.close(linger=0)
            raise
        peer.sub, peer.monitor, peer.handshaken, peer.retry_at = sub, monitor, False, None

    def start(self) -> None:
        with self._state_lock:
            if self._closed:
                raise LinkError(f"link {self._name!r} is closed; build a new one")
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._read, name=f"vigil-link-{self._name}", daemon=True
            )
            self._thread.start()

    def send(self, frames: Sequence[bytes]) -> None:
        if not frames:
            raise ValueError("a frame set needs at least the topic frame")
        with self._send_lock:
            if self._closed:
                log.debug("link %s is closed; dropping a frame set", self._name)
                return
            try:
                # PUB never blocks: at the high-water mark ZeroMQ drops the message.
                self._pub.send_multipart(list(frames))
            except zmq.ZMQError as err:
                log.warning("link %s: send failed, message dropped: %s", self._name, err)

    def close(self) -> None:
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._stopping.set()
        with contextlib.suppress(BrokenPipeError):  # the reader saw the flag and is gone
            os.write(self._wake_w, b"x")
        os.close(self._wake_w)
        reader_done = False
        if thread is None:
            self._close_pub()
            for peer in self._peers:
                self._close_sockets(peer)
            os.close(self._wake_r)
            reader_done = True
        elif thread is not threading.current_thread():
            # (Closed from our own handler, the reader cleans up when the handler returns.)
            thread.join(CLOSE_TIMEOUT_S)
            if thread.is_alive():
                log.warning(
                    "link %s: the frame handler has run for over %.1f s; leaving the reader "
                    "thread to finish on its own",
                    self._name,
                    CLOSE_TIMEOUT_S,
                )
        self._release()
        with self._state_lock:
            reader_done = reader_done or self._reader_done
            if not reader_done:
                self._reader_terms_context = self._own_context
        if reader_done and self._own_context:
            self._context.term()

    def _release(self) -> None:
        self._gate.forget(self._zap_domain)
        self._gate.release()

    def _close_pub(self) -> None:
        """Stop the listening socket's monitor, then close it. (The monitor's queue has no
        limit, so libzmq's I/O thread is never stuck on it, whoever still reads it.)"""
        with self._send_lock:
            if self._door_monitor is not None:
                close_door_monitor(self._pub, self._door_monitor)
                self._door_monitor = None
            self._pub.close(linger=0)

    def _read(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        if self._door_monitor is not None:
            poller.register(self._door_monitor, zmq.POLLIN)
        for peer in self._peers:
            self._watch(poller, peer)
        try:
            while not self._stopping.is_set():
                ready = poller.poll(self._poll_timeout_ms())
                if self._stopping.is_set():
                    break
                # only what is ready is looked at (in the order registered: a peer's frames
                # before its monitor's events); going over every peer's sockets after each
                # heartbeat was most of the reader's work at 32 nodes
                for sock, _ in ready:
                    if sock is self._door_monitor:
                        self._door_events()
                        continue
                    watched = self._watched.get(sock)
                    if watched is None:
                        continue  # the wake-up pipe, or a socket closed since the poll
                    peer, monitor = watched
                    if monitor:
                        self._events(poller, peer)
                    elif peer.sub is sock:
                        self._drain(peer)
                if self._retrying:
                    self._reopen_due(poller)
        except zmq.ZMQError as err:
            log.error("link %s: reader stopped by socket error: %s", self._name, err)
        finally:
            self._close_pub()
            for peer in self._peers:
                self._close_sockets(peer)
            os.close(self._wake_r)
            with self._state_lock:
                self._reader_done = True
                term = self._reader_terms_context
            if term:
                self._context.term()

    def _watch(self, poller: zmq.Poller, peer: _Peer) -> None:
        assert peer.sub is not None and peer.monitor is not None
        poller.register(peer.sub, zmq.POLLIN)
        poller.register(peer.monitor, zmq.POLLIN)
        self._watched[peer.sub] = (peer, False)
        self._watched[peer.monitor] = (peer, True)

    def _poll_timeout_ms(self) -> int | None:
        if not self._retrying:
            return None  # until a frame, an event or close()
        due = [p.retry_at for p in self._peers if p.retry_at is not None]
        if not due:
            return None  # until a frame, an event or close()
        return max(0, int((min(due) - time.monotonic()) * 1000) + 1)

    def _drain(self, peer: _Peer) -> None:
        sub = peer.sub
        assert sub is not None
        for _ in range(_BATCH):
            try:
                frames = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._deliver(frames)
            # asked rather than found out by an Again raised (and built) after each
            # heartbeat: nearly every poll has one frame set
            if self._stopping.is_set() or not int(sub.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return

    def _door_events(self) -> None:
        """Connections accepted and closed on our listening socket; cut those over the cap."""
        assert self._door_monitor is not None
        now = time.monotonic()
        cut = door_cuts(self._door_monitor, self._door, self._address, self._port, now)
        if not cut:
            return
        self._cut += cut
        # an attacker decides how often this happens: one line a minute at most
        last, quiet = self._cut_logged
        if now - last < CUT_LOG_INTERVAL_S:
            self._cut_logged = (last, quiet + cut)
            return
        self._cut_logged = (now, 0)
        log.warning(
            "link %s: cut %d connections to port %d: more than %d were not yet authenticated "
            "(someone on a peer's host is opening connections; %d more were cut since the "
            "last such line); established links are not touched",
            self._name, cut, self._port, self._door.cap, quiet)

    def _events(self, poller: zmq.Poller, peer: _Peer) -> None:
        while peer.monitor is not None:
            try:
                kind, _ = monitor_event(peer.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if peer.failures:
                    log.info("link %s: connected to %s again (after %d failed handshakes)",
                             self._name, peer.node, peer.failures)
                peer.handshaken, peer.failures = True, 0
                peer.backoff_s = RECONNECT_IVL_MS / 1000
            elif kind in _BROKEN:
                self._broken(poller, peer, _BROKEN[kind])

    def _broken(self, poller: zmq.Poller, peer: _Peer, what: str) -> None:
        """The connection to ``peer`` is gone: close its socket (libzmq may never reconnect it
        by itself) and open a new one after the backoff."""
        if peer.sub is not None:
            self._drain(peer)  # what the connection delivered before it broke
            poller.unregister(peer.sub)
            self._watched.pop(peer.sub, None)
        if peer.monitor is not None:
            poller.unregister(peer.monitor)
            self._watched.pop(peer.monitor, None)
        if not peer.handshaken and len(peer.server_keys) > 1:
            # a key rotation is under way: the peer may use the other key
            peer.key_index = (peer.key_index + 1) % len(peer.server_keys)
        # a failed handshake is news once (then the retries are quiet until it works again);
        # a plain disconnection is the peer restarting or lost, which the coordinator reports
        failed = what != _BROKEN[zmq.EVENT_DISCONNECTED]
        peer.failures += failed
        log.log(logging.WARNING if failed and peer.failures == 1 else logging.DEBUG,
                "link %s: connection to %s at %s %s; connecting again in %.0f ms",
                self._name, peer.node, peer.address, what, peer.backoff_s * 1000)
        self._close_sockets(peer)
        peer.retry_at = time.monotonic() + peer.backoff_s
        self._retrying = True
        peer.backoff_s = min(peer.backoff_s * 2, self._retry_max_s)
        peer.handshaken = False

    def _reopen_due(self, poller: zmq.Poller) -> None:
        now = time.monotonic()
        for peer in self._peers:
            if peer.retry_at is None or peer.retry_at > now:
                continue
            try:
                self._open(peer)
            except zmq.ZMQError as err:
                log.error("link %s: cannot open a socket to %s (%s); trying again in %.0f ms",
                          self._name, peer.node, err, peer.backoff_s * 1000)
                peer.retry_at = now + peer.backoff_s
                continue
            peer.replaced += 1
            self._watch(poller, peer)
        self._retrying = any(p.retry_at is not None for p in self._peers)

    def _close_sockets(self, peer: _Peer) -> None:
        # libzmq's I/O thread sends monitor events with a blocking send: one sent to a monitor
        # socket whose reader is gone (events of the teardown) would stall every socket of the
        # context for good. So: make room for what is queued, stop the monitor, then close.
        if peer.monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                while peer.monitor.poll(0):
                    peer.monitor.recv_multipart(zmq.NOBLOCK)
        if peer.sub is not None:
            with contextlib.suppress(zmq.ZMQError):
                peer.sub.disable_monitor()
            peer.sub.close(linger=0)
        if peer.monitor is not None:
            peer.monitor.close(linger=0)
        peer.sub = peer.monitor = None

    def _deliver(self, frames: list[bytes]) -> None:
        try:
            self._on_frames(self._name, frames)
        except Exception:
            log.exception("link %s: frame handler failed; frame set dropped", self._name)


def keep_alive(sock: zmq.Socket[bytes], *, zmtp: bool = True) -> None:
    """TCP keepalive on ``sock``, and ZMTP heartbeats (``zmtp``) or else a bound on
    unacknowledged data: a connection whose peer vanished is closed (a SUB's reconnected)."""
    if zmtp:
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    else:
        sock.setsockopt(zmq.TCP_MAXRT, TCP_MAXRT_MS)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, TCP_KEEPALIVE_IDLE_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, TCP_KEEPALIVE_INTVL_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, TCP_KEEPALIVE_CNT)


def zmq_links(
    cfg: ClusterConfig, context: zmq.Context[zmq.Socket[bytes]], key: bytes
) -> Callable[[str, str], Callable[[str, FrameHandler], ZmqLink]]:
    """The links of the nodes of ``cfg`` over ZeroMQ, with CurveZMQ keys derived from ``key``
    (the key file's content): ``zmq_links(cfg, context, key)(node, link)(name, on_frames)``
    binds and connects one (the daemon's, and its guardian's when the daemon died). A broken
    connection is retried at least every quarter of ``dead_time``, so a peer that comes back
    is heard again well within it."""
    ring = key_ring(key)
    retry_max = min(RETRY_MAX_S, cfg.timing.dead_time / 4)

    def for_node(node: str, link_name: str) -> Callable[[str, FrameHandler], ZmqLink]:
        me = next(link for link in cfg.nodes[node].links if link.name == link_name)
        peers = {n: (link.address, link.port) for n, nc in cfg.nodes.items() if n != node
                 for link in nc.links if link.name == link_name}
        keys = LinkKeys.derive(ring, cfg.name, cfg.node_names, node)

        def make(name: str, on_frames: FrameHandler) -> ZmqLink:
            return ZmqLink(name, (me.address, me.port), peers, node, on_frames, context,
                           keys=keys, retry_max_s=retry_max)

        return make

    return for_node
