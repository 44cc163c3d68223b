"""systemd's side of the sd_notify and journal protocols, for tests: a notify socket that
records what it receives, and the parser of a native journal entry."""

from __future__ import annotations

import socket
import threading
import time


class FakeSystemd:
    """What systemd's notify socket receives: (monotonic time, {key: value}) per datagram."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.received: list[tuple[float, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            with self.lock:
                self.received.append((time.monotonic(), fields))

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()

    def values(self, key: str) -> list[tuple[float, str]]:
        with self.lock:
            return [(t, f[key]) for t, f in self.received if key in f]

    def first(self, key: str) -> float | None:
        found = self.values(key)
        return found[0][0] if found else None


def journal_entry(data: bytes) -> dict[str, str]:
    """One datagram of journald's native protocol: ``KEY=value`` lines, or ``KEY``, a
    little-endian 64-bit length and the value for values with newlines."""
    fields, i = {}, 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = end + 1
        else:
            key, size = line, int.from_bytes(data[end + 1:end + 9], "little")
            value, i = data[end + 9:end + 9 + size], end + 9 + size + 1
        fields[key.decode()] = value.decode()
    return fields
