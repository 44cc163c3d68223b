"""ControlActor: the local control socket (a Unix stream socket, one JSON request per line,
one JSON answer per line). The CLI, /ha and the Python client speak it. Requests
are handed to the coordinator (a diagnosis to the diagnostics actor).

Who may send what is :mod:`vigil.local.access`; the client side of the protocol is
:mod:`vigil.local.protocol`.
"""

from __future__ import annotations

import json
import logging
import os
import socketserver
import threading
from pathlib import Path
from typing import Any, cast

import pykka

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import Control, Diagnose
from vigil.local.access import (
    READ_ONLY_COMMANDS,
    Access,
    Peer,
    peer_of,
    prepare_runtime_dir,
    socket_in_use,
)
from vigil.local.protocol import MANUAL_OP_TIMEOUT, MAX_REQUEST, REQUEST_TIMEOUT

log = logging.getLogger(__name__)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    directory: Directory
    access: Access


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        # Reading the request is bounded for everyone; only an answer may take long.
        self.connection.settimeout(REQUEST_TIMEOUT)
        try:
            peer = peer_of(self.connection)
            line = self.rfile.readline(MAX_REQUEST)
            self.connection.settimeout(MANUAL_OP_TIMEOUT)
            answer = self._answer(line, peer)
        except (OSError, TimeoutError) as exc:
            log.info("control request dropped: %s", exc)
            return
        self.wfile.write(json.dumps(answer).encode() + b"\n")  # keeps start order

    def _answer(self, line: bytes, peer: Peer) -> dict[str, Any]:
        try:
            request = json.loads(line)
            command = request["command"]
            args = request.get("args", {})
            if not isinstance(command, str) or not isinstance(args, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in args.items()):
                raise TypeError("command must be a string and args a string map")
        except (ValueError, KeyError, TypeError) as exc:
            # Whoever may not even read learns nothing, not even what was wrong.
            refused = self.server.access.refusal(peer, "status")
            if refused is not None:
                log.warning("refused a malformed control request from %s: %s", peer, refused)
                return {"ok": False, "error": refused}
            return {"ok": False, "error": f"malformed request: {exc}"}
        refused = self.server.access.refusal(peer, command)
        if refused is not None:
            log.warning("refused control request %r from %s: %s", command, peer, refused)
            return {"ok": False, "error": refused}
        if peer.uid != 0 and command not in READ_ONLY_COMMANDS:
            log.info("control request %r %s from %s", command, args, peer)
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
    def __init__(self, name: str, directory: Directory, path: Path,
                 access: Access | None = None) -> None:
        super().__init__(name, directory)
        self.path = path
        self.access = access or Access()
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None

    def on_receive(self, message: Any) -> Any:
        return None  # its work is the socket's; NodeRuntime.start asks once to know it is up

    def on_start(self) -> None:
        prepare_runtime_dir(self.path.parent, self.access)
        if self.path.exists():
            if socket_in_use(self.path):
                raise RuntimeError(f"control socket {self.path} is in use: is another vigil "
                                   "daemon running for this node?")
            self.path.unlink()
        # No umask games (the umask is the whole process's, and other actors create files
        # meanwhile): the file mode is only a first fence, every request is checked anyway.
        self.server = _Server(str(self.path), _Handler)
        os.chmod(self.path, self.access.control_mode)
        self.server.directory = self.directory
        self.server.access = self.access
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.2},
                                       name="vigil-control", daemon=True)
        self.thread.start()

    def on_stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.path.unlink(missing_ok=True)

