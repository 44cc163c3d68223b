"""ControlActor: the local control socket (a Unix stream socket: one JSON request per line,
one JSON answer per line, then the daemon closes the connection). The CLI, /ha and the Python
client speak it. Requests are handed to the coordinator (a diagnosis to the diagnostics
actor); the operator's decisions on a mirror's copies set aside
(:mod:`vigil.resources.mirror_requests`) are carried out on the worker thread itself, through
the node's mirror service, after the coordinator said where the group runs.

Whatever a local user does, the socket costs the daemon a bounded share
(:mod:`vigil.local.limits`): one thread reads and writes every connection
(:class:`vigil.local.server.LocalServer`: connections beyond the caps, in total and per user,
are refused as they come); the whole request line must be in ``REQUEST_TIMEOUT`` seconds
after connecting (one deadline, not one per read); it is checked for size and nesting before
it is parsed; ``CONTROL_WORKERS`` threads answer; the answer must be taken within
``ANSWER_TIMEOUT``. Refusals are logged, a few per interval
(:class:`~vigil.local.server.Throttled`).

Who may send what is :mod:`vigil.local.access`; the client side of the protocol is
:mod:`vigil.local.protocol`.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import pykka

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import Control, Diagnose, GetStatus
from vigil.local.access import (
    READ_ONLY_COMMANDS,
    Access,
    Peer,
    prepare_runtime_dir,
    socket_in_use,
)
from vigil.local.history import MAX_ANSWER, read_history
from vigil.local.limits import (
    ANSWER_TIMEOUT,
    CONTROL_CONNECTIONS,
    CONTROL_CONNECTIONS_PER_UID,
    CONTROL_WORKERS,
    LISTEN_BACKLOG,
    MAX_REQUEST,
    REQUEST_TIMEOUT,
    ROOT_RESERVED,
)
from vigil.local.protocol import MANUAL_OP_TIMEOUT, check_request
from vigil.local.server import Caps, Connection, LocalServer
from vigil.resources import mirror_requests
from vigil.status import ClusterStatus

if TYPE_CHECKING:
    from vigil.resources.replication import MirrorService

log = logging.getLogger(__name__)

# What a connection is doing (its Connection.data).
_READING: Final = "reading"
_ANSWERING: Final = "answering"
_WRITING: Final = "writing"


class _Workers:
    """Daemon threads that run jobs in turn (a diagnosis may wait two minutes for its agent:
    the process must not wait for them when it exits)."""

    def __init__(self, count: int, name: str) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                        for i in range(count)]
        for thread in self.threads:
            thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self.jobs.put(job)

    def stop(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            job()


def _line(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer).encode() + b"\n"


class ControlServer(LocalServer):
    """The control protocol on a listening socket (see the module's text)."""

    def __init__(self, listener: socket.socket, access: Access, directory: Directory,
                 mirrors: MirrorService | None = None, history: Path | None = None) -> None:
        super().__init__(listener, Caps(CONTROL_CONNECTIONS, CONTROL_CONNECTIONS_PER_UID,
                                        ROOT_RESERVED), log, "control socket", "vigil-control")
        self.access = access
        self.directory = directory
        self.mirrors = mirrors
        self.history = history
        self.workers = _Workers(CONTROL_WORKERS, "vigil-control")

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self.workers.stop()

    # ---- the connection's life, on the server's thread ----------------------------------

    def accepted(self, conn: Connection) -> None:
        conn.data = _READING
        conn.deadline = time.monotonic() + REQUEST_TIMEOUT

    def received(self, conn: Connection, data: bytes) -> None:
        if conn.data != _READING:
            return  # what follows the request line is not read
        start = len(conn.inbuf)
        conn.inbuf += data
        end = conn.inbuf.find(b"\n", start)
        if end >= 0:
            self._dispatch(conn, bytes(conn.inbuf[:end + 1]))
        elif len(conn.inbuf) > MAX_REQUEST:  # refused by check_request, unparsed
            self._dispatch(conn, bytes(conn.inbuf[:MAX_REQUEST + 1]))

    def ended(self, conn: Connection) -> None:
        if conn.data == _READING and conn.inbuf:
            self._dispatch(conn, bytes(conn.inbuf))  # the request is what came before the end
        elif conn.data == _READING:
            self.close(conn)

    def expired(self, conn: Connection) -> None:
        if conn.data == _READING:
            self.refusals.warning("control socket: cut off %s: no complete request %g s after "
                                  "connecting (%d bytes came)", conn.peer, REQUEST_TIMEOUT,
                                  len(conn.inbuf))
            self._reply(conn, _line({"ok": False, "error": (
                f"no complete request {REQUEST_TIMEOUT:g} s after connecting: send the whole "
                "request (one JSON line) at once")}))
        else:
            self.refusals.warning("control socket: closed the connection of %s: it did not "
                                  "take its answer within %g s", conn.peer, ANSWER_TIMEOUT)
            self.close(conn)

    def refusal_line(self, why: str) -> bytes:
        return _line({"ok": False, "error": why})

    def _dispatch(self, conn: Connection, line: bytes) -> None:
        conn.data = _ANSWERING
        conn.deadline = None
        conn.inbuf = bytearray()
        self.pause_reading(conn)
        peer = conn.peer

        def work() -> None:
            try:
                data = _line(self._answer(line, peer))
            except Exception as exc:  # a bug: the client still gets an answer
                log.exception("control request from %s failed", peer)
                data = _line({"ok": False, "error": f"the daemon failed to answer ({exc}); "
                                                    "its log has the details"})
            self.call_soon(lambda: self._reply(conn, data))

        self.workers.submit(work)

    def _reply(self, conn: Connection, data: bytes) -> None:
        conn.data = _WRITING
        conn.deadline = time.monotonic() + ANSWER_TIMEOUT
        self.send(conn, data, close_after=True)

    # ---- the answer, on a worker's thread ---------------------------------------------------

    def _answer(self, line: bytes, peer: Peer) -> dict[str, Any]:
        try:
            check_request(line)
            request = json.loads(line)
            if not isinstance(request, dict):
                raise TypeError("the request must be a JSON object")
            command = request["command"]
            args = request.get("args", {})
            if not isinstance(command, str) or not isinstance(args, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in args.items()):
                raise TypeError("command must be a string and args a string map")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            # Whoever may not even read learns nothing, not even what was wrong.
            refused = self.access.refusal(peer, "status")
            if refused is not None:
                self.refusals.warning("refused a malformed control request from %s: %s", peer,
                                      refused)
                return {"ok": False, "error": refused}
            return {"ok": False, "error": f"malformed request: {exc}"}
        refused = self.access.refusal(peer, command)
        if refused is not None:
            self.refusals.warning("refused control request %r from %s: %s", command, peer,
                                  refused)
            return {"ok": False, "error": refused}
        if peer.uid != 0 and command not in READ_ONLY_COMMANDS:
            log.info("control request %r %s from %s", command, args, peer)
        # A diagnosis is the diagnostics actor's; a mirror request is answered here, once the
        # coordinator told where the group runs; every other request is the coordinator's.
        if command == "history":  # the file, read here: the coordinator never waits for it
            return self._history(args)
        message: Diagnose | GetStatus | Control
        if command == "diagnose":
            target, message = "diagnostics", Diagnose(args.get("resource", ""))
        elif command in mirror_requests.MIRROR_COMMANDS:
            target, message = "coordinator", GetStatus()
        else:
            target, message = "coordinator", Control(command, tuple(sorted(args.items())))
        ref = self.directory.get(target)
        if ref is None:
            return {"ok": False, "error": "the node is starting or stopping; try again"}
        try:
            answer = ref.ask(message, timeout=REQUEST_TIMEOUT)
            if isinstance(answer, pykka.Future):  # answered when the agent returns
                answer = answer.get(timeout=MANUAL_OP_TIMEOUT)
        except pykka.Timeout:
            return {"ok": False, "error": f"the {target} did not answer in time"}
        except pykka.ActorDeadError:
            return {"ok": False, "error": f"the {target} is restarting; try again"}
        if isinstance(answer, ClusterStatus):  # a mirror request: the btrfs work is ours
            return mirror_requests.answer(self.mirrors, answer, command, args)
        return cast(dict[str, Any], answer)

    def _history(self, args: dict[str, str]) -> dict[str, Any]:
        """`vigil history`: args ``since`` (Unix seconds), ``group``, ``all`` ("1"),
        ``limit``."""
        if self.history is None:
            return {"ok": False, "error": "this daemon keeps no history file"}
        try:
            since = float(args["since"]) if args.get("since") else None
            limit = min(MAX_ANSWER, int(args.get("limit") or MAX_ANSWER))
        except ValueError as exc:
            return {"ok": False, "error": f"bad history request: {exc}"}
        try:
            lines, more = read_history(self.history, since=since,
                                       group=args.get("group") or None,
                                       everything=args.get("all") == "1", limit=max(1, limit))
        except FileNotFoundError:
            lines, more = [], 0
        except OSError as exc:
            return {"ok": False, "error": f"cannot read the history file {self.history}: {exc}"}
        return {"ok": True, "file": str(self.history), "lines": lines, "more": more}


class ControlActor(VigilActor):
    def __init__(self, name: str, directory: Directory, path: Path,
                 access: Access | None = None, mirrors: MirrorService | None = None,
                 history: Path | None = None) -> None:
        super().__init__(name, directory)
        self.path = path
        self.history = history
        self.access = access or Access()
        #: the node's mirror service (None: no mirror resource), for the mirror requests
        self.mirrors = mirrors
        self.server: ControlServer | None = None

    def on_receive(self, message: Any) -> Any:
        return None  # its work is the socket's; NodeRuntime.start asks once to know it is up

    def on_start(self) -> None:
        prepare_runtime_dir(self.path.parent, self.access)
        if self.path.exists():
            if socket_in_use(self.path):
                raise RuntimeError(f"control socket {self.path} is in use: is another vigil "
                                   "daemon running for this node?")
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            # No umask games (the umask is the whole process's, and other actors create
            # files meanwhile): nobody connects before the mode is set, and every request is
            # checked anyway.
            os.chmod(self.path, self.access.control_mode)
            listener.listen(LISTEN_BACKLOG)
        except BaseException:
            listener.close()
            raise
        self.server = ControlServer(listener, self.access, self.directory, self.mirrors,
                                    self.history)
        self.server.start()

    def on_stop(self) -> None:
        self.release()

    def release(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
            self.path.unlink(missing_ok=True)
