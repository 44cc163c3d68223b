"""One link (one NIC) of one node over ZeroMQ PUB/SUB.

Each node binds one PUB socket per link and connects one SUB socket to the PUB sockets of
all its peers on that link. Subscriptions are the node's own topic and the broadcast topic
(see :func:`vigil.transports.codec.topic_for`), so the peers' ZeroMQ filters the traffic.

PUB/SUB loses messages, and says nothing when it does: a subscriber misses whatever was
published before its connection was up (the "slow joiner"), and a publisher drops at the
high-water mark when a subscriber falls behind. This layer never retries. The protocol above
must survive loss: heartbeats repeat by nature, and every request of the transition protocol
is retransmitted until answered or timed out.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Final

import zmq

from vigil.messages import BROADCAST
from vigil.transports.base import FrameHandler, LinkError
from vigil.transports.codec import MAX_MESSAGE_BYTES, topic_for

log = logging.getLogger(__name__)

#: How long the reader waits for input before looking at the stop flag: bounds close().
POLL_TIMEOUT_MS: Final = 100
#: How long close() waits for a handler that is still running before it gives up on it.
CLOSE_TIMEOUT_S: Final = 2.0
HIGH_WATER_MARK: Final = 10_000
RECONNECT_IVL_MS: Final = 100
RECONNECT_IVL_MAX_MS: Final = 1_000
#: ZMTP heartbeats on every connection. Without them a peer that lost power keeps its TCP
#: connections "up" on our side until TCP gives up (minutes): our SUB never reconnects, so the
#: rebooted peer never receives our subscriptions and never hears us. A connection whose peer
#: does not answer a PING within the timeout is closed and reconnected.
HEARTBEAT_IVL_MS: Final = 300
HEARTBEAT_TIMEOUT_MS: Final = 1_200
#: Frames read in one go before the stop flag is looked at again.
_BATCH: Final = 256


def tcp_endpoint(address: str, port: int) -> tuple[str, bool]:
    """The ZeroMQ TCP endpoint of an address and port, and whether it is IPv6."""
    ipv6 = ":" in address
    host = f"[{address.strip('[]')}]" if ipv6 else address
    return f"tcp://{host}:{port}", ipv6


class ZmqLink:
    """A :class:`~vigil.transports.base.Link` over ZeroMQ.

    The constructor binds the PUB socket (raising :class:`LinkError` if it cannot) and
    connects the SUB socket; :meth:`start` starts the one reader thread that hands every
    received frame set to ``on_frames(link_name, frames)``. :meth:`send` may be called from
    any thread.
    """

    def __init__(
        self,
        name: str,
        bind: tuple[str, int],
        peers: Mapping[str, tuple[str, int]],
        self_name: str,
        on_frames: FrameHandler,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self._name = name
        self.self_name = self_name
        self._on_frames = on_frames
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
        self._pub: zmq.Socket[bytes] = self._context.socket(zmq.PUB)
        self._sub: zmq.Socket[bytes] = self._context.socket(zmq.SUB)
        try:
            self.endpoint = self._bind(bind)
            self._connect(peers)
        except BaseException:
            self._pub.close(linger=0)
            self._sub.close(linger=0)
            if self._own_context:
                self._context.term()
            raise

    @property
    def name(self) -> str:
        return self._name

    def _bind(self, bind: tuple[str, int]) -> str:
        address, port = bind
        endpoint, ipv6 = tcp_endpoint(address, port)
        self._pub.setsockopt(zmq.LINGER, 0)
        _heartbeats(self._pub)
        self._pub.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        if ipv6:
            self._pub.setsockopt(zmq.IPV6, 1)
        try:
            self._pub.bind(endpoint)
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
        last = self._pub.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else endpoint

    def _connect(self, peers: Mapping[str, tuple[str, int]]) -> None:
        sub = self._sub
        sub.setsockopt(zmq.LINGER, 0)
        _heartbeats(sub)
        sub.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
        sub.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sub.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        # A peer that sends a giant frame is cut off by ZeroMQ before it is buffered.
        sub.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        sub.setsockopt(zmq.SUBSCRIBE, topic_for(BROADCAST))
        sub.setsockopt(zmq.SUBSCRIBE, topic_for(self.self_name))
        for peer, (address, port) in peers.items():
            if peer == self.self_name:
                continue  # our own broadcasts would only come back to be dropped
            endpoint, ipv6 = tcp_endpoint(address, port)
            if ipv6:
                sub.setsockopt(zmq.IPV6, 1)
            try:
                sub.connect(endpoint)
            except zmq.ZMQError as err:
                raise LinkError(
                    f"link {self._name!r} of node {self.self_name!r} cannot connect to peer "
                    f"{peer!r} at {address} port {port} ({endpoint}): {err.strerror}; check "
                    f"that peer's address for this link in the cluster file"
                ) from err

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
        with self._send_lock:
            self._pub.close(linger=0)
        reader_done = False
        if thread is None:
            self._sub.close(linger=0)
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
        with self._state_lock:
            reader_done = reader_done or self._reader_done
            if not reader_done:
                self._reader_terms_context = self._own_context
        if reader_done and self._own_context:
            self._context.term()

    def _read(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    if not self._sub.poll(POLL_TIMEOUT_MS, zmq.POLLIN):
                        continue
                    for _ in range(_BATCH):
                        frames = self._sub.recv_multipart(zmq.NOBLOCK)
                        self._deliver(frames)
                        if self._stopping.is_set():
                            break
                except zmq.Again:
                    continue
                except zmq.ZMQError as err:
                    log.error("link %s: reader stopped by socket error: %s", self._name, err)
                    return
        finally:
            self._sub.close(linger=0)
            with self._state_lock:
                self._reader_done = True
                term = self._reader_terms_context
            if term:
                self._context.term()

    def _deliver(self, frames: list[bytes]) -> None:
        try:
            self._on_frames(self._name, frames)
        except Exception:
            log.exception("link %s: frame handler failed; frame set dropped", self._name)


def _heartbeats(sock: zmq.Socket[bytes]) -> None:
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    # and TCP's own, for a peer that vanished while no ZMTP traffic was due
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 2)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
