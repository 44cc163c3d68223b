"""A client that pings an address every few milliseconds and says when it got answers: the
longest gap between two answers is what a client of a moving address lived through.

Run inside a network namespace (root: a raw ICMP socket)::

    python -m tests.support.pinger ADDRESS INTERVAL_S

prints ``ready`` and then one line per answer, the CLOCK_MONOTONIC time it arrived (the clock
is the machine's, so the test can compare it with its own); it stops when its standard input
closes or after an hour. :class:`Pinger` runs it in the namespace cluster's client.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import IO, Any

from vigil.actors.nic import echo_request

_LIMIT_S = 3600.0


def main(address: str, interval: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    seq = 0
    start = time.monotonic()
    next_send = start
    print("ready", flush=True)
    while time.monotonic() - start < _LIMIT_S:
        now = time.monotonic()
        if now >= next_send:
            seq = (seq + 1) & 0xFFFF
            with contextlib.suppress(OSError):  # no route for a moment: no answer either
                sock.sendto(echo_request(ident, seq), (address, 0))
            next_send = now + interval
        ready, _, _ = select.select([sock, sys.stdin], [], [], max(0.0, next_send - now))
        if sys.stdin in ready and not sys.stdin.readline():
            return
        if sock in ready:
            packet, (source, _) = sock.recvfrom(2048)
            header = (packet[0] & 0x0F) * 4
            kind, _, _, got = struct.unpack("!BBHH", packet[header:header + 6])
            if kind == 0 and got == ident and source == address:
                print(f"{time.monotonic():.6f}", flush=True)


class Pinger:
    """Pings ``address`` from ``client`` (an NsCluster's) every ``interval`` seconds while in
    the ``with`` block; then :meth:`answers` are the monotonic times of the answers."""

    def __init__(self, client: Any, address: str, interval: float = 0.01) -> None:
        self._client = client
        self._argv = [sys.executable, "-m", "tests.support.pinger", address, str(interval)]
        self._process: subprocess.Popen[str] | None = None
        self._times: list[float] = []
        self._reader: threading.Thread | None = None

    def __enter__(self) -> Pinger:
        process = self._client.popen(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self._process = process
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the pinger did not start")
        self._reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._reader.start()
        return self

    def _read(self, out: IO[str]) -> None:
        for line in out:
            self._times.append(float(line))

    def __exit__(self, *exc: object) -> None:
        process = self._process
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def answers(self) -> list[float]:
        return list(self._times)

    def answered_since(self, t: float) -> bool:
        return any(a >= t for a in self._times)

    def longest_gap(self, since: float) -> float:
        """The longest time without an answer after ``since`` (from ``since`` to the first
        answer counts too)."""
        times = [since] + [a for a in self._times if a >= since]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
