"""Hostile endpoints for the transport's attack tests: whatever an unprivileged program without
the cluster key can put on a node's port or send to one. Only loopback addresses are used.

:class:`RogueListener` sits on a peer's port (as a local user can, above 1024, while that peer
restarts) and answers every connection with one of :data:`ANSWERS`; :func:`zmtp_greeting`,
:func:`zmtp_frame` and the rest build ZMTP 3 bytes by hand, so the attacks do not depend on a
ZeroMQ library that would refuse to misbehave.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Final

#: The frame size the issue's rogue declared: one MiB and a hundred bytes, just over the limit.
OVERSIZED: Final = (1 << 20) + 100


def zmtp_greeting(mechanism: bytes, as_server: bool = True) -> bytes:
    """The 64-byte ZMTP 3.0 greeting."""
    return (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + mechanism.ljust(20, b"\x00")
            + (b"\x01" if as_server else b"\x00") + b"\x00" * 31)


def zmtp_frame(body: bytes, *, command: bool = False, more: bool = False,
               declared: int | None = None) -> bytes:
    """One ZMTP 3 frame; ``declared`` claims another size than the body's (a lie)."""
    size = len(body) if declared is None else declared
    flags = (0x04 if command else 0) | (0x01 if more else 0)
    if size > 255:
        return bytes([flags | 0x02]) + struct.pack(">Q", size) + body
    return bytes([flags, size]) + body


def zmtp_ready(socket_type: bytes) -> bytes:
    """The NULL mechanism's READY command, as a peer of ``socket_type`` sends it."""
    name = b"Socket-Type"
    return zmtp_frame(b"\x05READY" + bytes([len(name)]) + name
                      + struct.pack(">I", len(socket_type)) + socket_type, command=True)


def subscribe(topic: bytes) -> bytes:
    """A SUBSCRIBE message as a ZMTP 3.0 SUB sends it to a PUB (a data frame, byte 1)."""
    return zmtp_frame(b"\x01" + topic)


#: What a rogue answers, by name: bytes sent right after accepting a connection.
ANSWERS: Final[dict[str, bytes]] = {
    # the handshake of a plaintext PUB, then a message of 1 MiB + 100 bytes (its first 4 KiB)
    "null-then-oversized": zmtp_greeting(b"NULL") + zmtp_ready(b"PUB")
    + zmtp_frame(b"x" * 4096, declared=OVERSIZED),
    # a greeting with a mechanism that is not the client's
    "plain-mechanism": zmtp_greeting(b"PLAIN"),
    "null-mechanism": zmtp_greeting(b"NULL") + zmtp_ready(b"PUB"),
    # a CURVE greeting, then a handshake command that declares 8 GiB
    "curve-then-8gib": zmtp_greeting(b"CURVE") + zmtp_frame(b"x" * 4096, command=True,
                                                            declared=8 << 30),
    "garbage": bytes(range(256)) * 4,
}


class RogueListener:
    """A TCP listener on ``(host, port)`` that answers every connection with ``answer`` and
    closes it; :attr:`served` counts the connections. Binding retries for a while, because a
    ZeroMQ socket that just closed frees its port asynchronously."""

    def __init__(self, host: str, port: int, answer: bytes, *, hold_s: float = 0.1,
                 bind_timeout_s: float = 5.0) -> None:
        self.answer = answer
        self.hold_s = hold_s
        self.served = 0
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + bind_timeout_s
        while True:
            try:
                self._sock.bind((host, port))
                break
            except OSError as err:
                if err.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    self._sock.close()
                    raise
                time.sleep(0.02)
        self._sock.listen(64)
        self._sock.settimeout(0.05)
        self._served_cond = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="rogue", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(self.answer)
                self._stop.wait(self.hold_s)
            with self._served_cond:
                self.served += 1
                self._served_cond.notify_all()

    def wait_served(self, count: int, timeout: float) -> bool:
        with self._served_cond:
            return self._served_cond.wait_for(lambda: self.served >= count, timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def flood(host: str, port: int, make: Callable[[int], bytes], connections: int,
          source: str | None = None) -> list[socket.socket]:
    """Open ``connections`` TCP connections to ``(host, port)`` (from ``source`` if given)
    and send each ``make(i)``; the caller closes them. Refused or reset connections are
    skipped: the target may close them at once."""
    opened: list[socket.socket] = []
    for i in range(connections):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            if source is not None:
                sock.bind((source, 0))
            sock.connect((host, port))
            data = make(i)
            if data:
                sock.sendall(data)
        except OSError:
            sock.close()
            continue
        opened.append(sock)
    return opened


def open_descriptors(pid: int) -> int:
    """How many descriptors process ``pid`` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    """The resident memory of process ``pid``."""
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RecordingProxy:
    """A TCP proxy on a free port of ``host`` to ``target`` that records what the target
    sends back on the first connection: a wiretap's view of one real session."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        self.target = target
        self.recorded = bytearray()
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.bind((host, 0))
        self._sock.listen(8)
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, name="proxy", daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                client, _addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # from the same address as the client, so the target admits the connection
            server = socket.create_connection(self.target, source_address=(
                client.getsockname()[0], 0))
            self._conns += [client, server]
            for src, dst, record in ((client, server, False), (server, client, first)):
                pump = threading.Thread(target=self._pump, args=(src, dst, record), daemon=True)
                pump.start()
                self._threads.append(pump)
            first = False

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        src.settimeout(0.05)
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if record:
                    self.recorded += data
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._accepting.join(5)
        for pump in self._threads:
            pump.join(5)
        for conn in self._conns:
            conn.close()
        self._sock.close()
