"""A hostile local user's tools against a node's control and event sockets (only the standard
library: tests run it with the system's Python as ``nobody``, through ``setpriv``). Each mode
prints one JSON object: what the daemon did to it.

    trickle PATH CONNECTIONS SECONDS PERIOD   keep CONNECTIONS connections, a byte each per
                                              PERIOD, reconnecting the closed ones
    requests PATH COUNT LINE                  COUNT connections, each sends LINE (a request)
    raw PATH SIZE BYTE                        one connection sends SIZE times BYTE (no newline)
    ev-frame PATH SIZE                        greets the event socket, declares a SIZE-byte frame
    ev-subscribe PATH COUNT                   greets, sends COUNT distinct subscriptions
    ev-connect PATH COUNT                     COUNT event connections at once
    ev-idle PATH SECONDS                      greets, subscribes to everything, never reads
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import struct
import sys
import time
from typing import Any


def connect(path: str, wait: float = 5) -> socket.socket:
    """A connection to ``path``; while the daemon's backlog is full, tried again for
    ``wait`` seconds (as Vigil's clients do)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    deadline = time.monotonic() + wait
    while True:
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            if time.monotonic() >= deadline:
                s.close()
                raise
            time.sleep(0.01)
        except OSError:
            s.close()
            raise


def read_all(s: socket.socket, limit: int = 1 << 20) -> bytes:
    data = b""
    try:
        while len(data) < limit:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def kind(answer: bytes) -> str:
    """The gist of the daemon's answer (the error's first words)."""
    try:
        obj = json.loads(answer)
    except ValueError:
        return f"unreadable: {answer[:80]!r}"
    if obj.get("ok"):
        return "ok"
    return " ".join(str(obj.get("error", "")).split()[:3])


def trickle(path: str, connections: int, seconds: float, period: float) -> dict[str, Any]:
    start = time.monotonic()
    open_: dict[socket.socket, float] = {}
    outcomes: dict[str, int] = {}
    lives: list[float] = []  # how long each connection the daemon cut off had lived
    attempts = 0
    while time.monotonic() - start < seconds:
        for _ in range(connections - len(open_)):
            attempts += 1
            try:
                s = connect(path, wait=0)
            except OSError as exc:  # the backlog is full: the kernel refused it
                gist = f"connect: {exc.strerror}"
                outcomes[gist] = outcomes.get(gist, 0) + 1
                continue
            s.setblocking(False)
            open_[s] = time.monotonic()
        tick = time.monotonic()
        for s, since in list(open_.items()):
            try:
                s.send(b" ")
                answer = s.recv(65536)
            except BlockingIOError:
                continue  # open, nothing said: trickle on
            except OSError:
                answer = b""
            s.setblocking(True)
            s.settimeout(1)
            answer += read_all(s)
            s.close()
            del open_[s]
            gist = kind(answer) if answer else "closed without a word"
            outcomes[gist] = outcomes.get(gist, 0) + 1
            if gist.startswith("no complete request"):
                lives.append(tick - since)
        time.sleep(max(0.0, period - (time.monotonic() - tick)))
    now = time.monotonic()
    oldest = max((now - since for since in open_.values()), default=0.0)
    for s in open_:
        s.close()
    return {"attempts": attempts, "outcomes": outcomes, "longest_cut_life": max(lives, default=0),
            "cut": len(lives), "open_at_end": len(open_), "oldest_open": oldest}


def requests(path: str, count: int, line: str) -> dict[str, Any]:
    outcomes: dict[str, int] = {}
    for _ in range(count):
        try:
            with connect(path) as s:
                s.sendall(line.encode() + b"\n")
                gist = kind(read_all(s))
        except OSError as exc:
            gist = f"error: {exc}"
        outcomes[gist] = outcomes.get(gist, 0) + 1
    return {"outcomes": outcomes}


def raw(path: str, size: int, byte: str) -> dict[str, Any]:
    s = connect(path)
    chunk = byte.encode() * 65536
    sent = 0
    try:
        while sent < size:
            sent += s.send(chunk[:size - sent])
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the daemon closed on us: its answer is waiting
    answer = read_all(s)
    s.close()
    return {"sent": sent, "answer": json.loads(answer) if answer else None}


# ---- the event socket: ZMTP 3.1 as a SUB socket ----------------------------------------------

def frame(flags: int, body: bytes) -> bytes:
    if len(body) > 255:
        return struct.pack(">BQ", flags | 2, len(body)) + body
    return struct.pack(">BB", flags, len(body)) + body


def greet(path: str) -> socket.socket:
    s = connect(path)
    prop = bytes((11,)) + b"Socket-Type" + struct.pack(">I", 3) + b"SUB"
    s.sendall(b"\xff" + bytes(8) + b"\x7f\x03\x01" + b"NULL".ljust(20, b"\0") + b"\0"
              + bytes(31) + frame(4, b"\x05READY" + prop))
    data = b""
    while len(data) < 64 + 2:  # its greeting, then its READY
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
    return s


def subscribe(topic: bytes) -> bytes:
    return frame(4, b"\x09SUBSCRIBE" + topic)


def closed_by_daemon(s: socket.socket, wait: float = 20) -> bool:
    s.settimeout(wait)
    try:
        while s.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def ev_frame(path: str, size: int) -> dict[str, Any]:
    s = greet(path)
    with contextlib.suppress(OSError):
        s.sendall(struct.pack(">BQ", 2, size) + bytes(1 << 20))  # a 1 MiB start of it
    return {"closed": closed_by_daemon(s)}


def ev_subscribe(path: str, count: int) -> dict[str, Any]:
    s = greet(path)
    sent = 0
    try:
        for i in range(count):
            s.sendall(subscribe(b"t%d" % i))
            sent += 1
    except OSError:
        pass
    return {"sent": sent, "closed": closed_by_daemon(s)}


def ev_connect(path: str, count: int) -> dict[str, Any]:
    socks, refused = [], 0
    for _ in range(count):
        try:
            socks.append(greet(path))
        except OSError:  # ConnectionError included: closed before greeting
            refused += 1
    for s in socks:
        s.close()
    return {"greeted": len(socks), "refused": refused}


def ev_idle(path: str, seconds: float) -> dict[str, Any]:
    s = greet(path)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(subscribe(b""))
    print(json.dumps({"subscribed": True}), flush=True)
    time.sleep(seconds)
    s.close()
    return {"idle": seconds}


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    mode, path, *args = sys.argv[1:]
    if mode == "trickle":
        result = trickle(path, int(args[0]), float(args[1]), float(args[2]))
    elif mode == "requests":
        result = requests(path, int(args[0]), args[1])
    elif mode == "raw":
        result = raw(path, int(args[0]), args[1])
    elif mode == "ev-frame":
        result = ev_frame(path, int(args[0]))
    elif mode == "ev-subscribe":
        result = ev_subscribe(path, int(args[0]))
    elif mode == "ev-connect":
        result = ev_connect(path, int(args[0]))
    elif mode == "ev-idle":
        result = ev_idle(path, float(args[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
