"""ControlActor: the local control socket (a Unix stream socket, one JSON request per line,
one JSON answer per line). The CLI, and later /ha and the Python client, speak it. Requests
are handed to the coordinator; the socket is reachable by the owner (root) only."""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pykka

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import Control, Diagnose

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
#: A manual diagnosis waits for the agent's monitor (its own timeout applies first).
MANUAL_OP_TIMEOUT = 120.0
MAX_REQUEST = 64 * 1024


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    directory: Directory


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.connection.settimeout(MANUAL_OP_TIMEOUT)
        try:
            line = self.rfile.readline(MAX_REQUEST)
            answer = self._answer(line)
        except (OSError, TimeoutError) as exc:
            log.info("control request dropped: %s", exc)
            return
        self.wfile.write(json.dumps(answer).encode() + b"\n")  # keeps start order

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            command = request["command"]
            args = request.get("args", {})
            if not isinstance(command, str) or not isinstance(args, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in args.items()):
                raise TypeError("command must be a string and args a string map")
        except (ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "error": f"malformed request: {exc}"}
        # A diagnosis is the diagnostics actor's; every other request is the coordinator's.
        target = "diagnostics" if command == "diagnose" else "coordinator"
        ref = self.server.directory.get(target)
        if ref is None:
            return {"ok": False, "error": "the node is starting or stopping; try again"}
        message = (Diagnose(args.get("resource", "")) if command == "diagnose"
                   else Control(command, tuple(sorted(args.items()))))
        try:
            answer = ref.ask(message, timeout=REQUEST_TIMEOUT)
            if isinstance(answer, pykka.Future):  # answered when the agent returns
                answer = answer.get(timeout=MANUAL_OP_TIMEOUT)
        except pykka.Timeout:
            return {"ok": False, "error": f"the {target} did not answer in time"}
        except pykka.ActorDeadError:
            return {"ok": False, "error": f"the {target} is restarting; try again"}
        return cast(dict[str, Any], answer)


class ControlActor(VigilActor):
    def __init__(self, name: str, directory: Directory, path: Path) -> None:
        super().__init__(name, directory)
        self.path = path
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None

    def on_start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            if _socket_in_use(self.path):
                raise RuntimeError(f"control socket {self.path} is in use: is another vigil "
                                   "daemon running for this node?")
            self.path.unlink()
        old = os.umask(0o077)
        try:
            self.server = _Server(str(self.path), _Handler)
        finally:
            os.umask(old)
        self.server.directory = self.directory
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.2},
                                       name="vigil-control", daemon=True)
        self.thread.start()

    def on_stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.path.unlink(missing_ok=True)


def _socket_in_use(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def request(path: Path, command: str, args: Mapping[str, str] | None = None,
            timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    """Client side: one request to a daemon's control socket. Raises OSError when no daemon
    listens there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"command": command, "args": dict(args or {})}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    return answer
