"""NotifierActor: every decision and state change of this node goes out from here: to the
log, to the application notification actors registered through :mod:`vigil.api`, to the
alert commands (the ``alerts`` actor) and to the event socket.

Per subscriber, notifications arrive in the order they happened (one actor sends them, and
Pykka mailboxes are FIFO). The notifier numbers them (``seq``, from 1 per run of the actor).

The event socket (``<runtime_dir>/events.sock``) speaks ZeroMQ's protocol as a PUB socket
(:class:`vigil.local.zmtp.EventServer`; any ZeroMQ SUB socket over ``ipc`` reads it): one
message per notification, the JSON of :func:`~vigil.notifications.to_dict` plus ``run`` (an
id of this notifier's run, so a subscriber tells a restart from a gap). A subscriber that
does not keep up loses messages once :data:`~vigil.local.limits.SEND_HWM` (or
``EVENT_BACKLOG`` bytes) wait for it: they are dropped rather than let one reader slow the
daemon or fill its memory; the ``seq`` numbers show the gap, and
:func:`vigil.api.subscribe` reports it as a ``Missed`` notification. A notification longer
than ``MAX_EVENT_MESSAGE`` goes out with its text shortened. Who may connect is the file's
mode (see :mod:`vigil.local.access`); the socket is bound in a private directory and renamed
into place, so it never exists with a looser mode than intended.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pykka

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import Heard, Subscribe, Unsubscribe
from vigil.local.access import Access, prepare_runtime_dir, socket_in_use
from vigil.local.history import HistoryFile, entry
from vigil.local.limits import LISTEN_BACKLOG, MAX_EVENT_MESSAGE, SEND_HWM
from vigil.local.zmtp import EventServer
from vigil.notifications import (
    Decision,
    FencingCompleted,
    FencingRequested,
    GroupStateChanged,
    LinkDown,
    MirrorDiverged,
    MirrorLagging,
    NicDown,
    NodeLost,
    Notification,
    QuorumLost,
    ResourceStateChanged,
    to_dict,
)

__all__ = ["SEND_HWM", "NotifierActor", "bind_event_socket", "encode_event", "journal_fields",
           "level_of"]

log = logging.getLogger("vigil.events")


#: what an operator must see (``journalctl -p warning``) beside the day's comings and goings
WARNINGS = (FencingRequested, QuorumLost, LinkDown, NicDown, MirrorLagging, MirrorDiverged)


def level_of(note: Notification) -> int:
    """The log level of a notification: failures are errors (``journalctl -p err``)."""
    if (isinstance(note, ResourceStateChanged) and note.state in ("FAILED", "UNCLEAN")) or \
            (isinstance(note, GroupStateChanged) and note.state in ("failed", "unclean")) or \
            (isinstance(note, FencingCompleted) and not note.ok):
        return logging.ERROR
    if isinstance(note, WARNINGS) or (isinstance(note, NodeLost) and not note.clean) or (
            isinstance(note, Decision) and note.severity == "warning"):
        return logging.WARNING
    return logging.INFO


def journal_fields(note: Notification) -> dict[str, str]:
    """The journald fields of a notification's log line (:mod:`vigil.journal`)."""
    fields = {"kind": note.kind, "node": note.node}
    for attr in ("group", "epoch"):
        value = getattr(note, attr, "")
        if value:
            fields[attr] = str(value)
    return fields


class NotifierActor(VigilActor):
    def __init__(self, name: str, directory: Directory, event_socket: Path | None = None,
                 access: Access | None = None, history: Path | None = None) -> None:
        super().__init__(name, directory)
        #: the node's history file (vigil/local/history.py): every notification, and the
        #: other nodes' significant ones (None: not kept, as in tests without a daemon)
        self.history = HistoryFile(history) if history is not None else None
        self.history_failed = False
        self.subscribers: list[tuple[pykka.ActorRef[Any], frozenset[str] | None]] = []
        self.seq = 0
        self.run = uuid.uuid4().hex[:12]
        self.event_socket = event_socket
        self.access = access or Access()
        self.server: EventServer | None = None
        self.bound: int | None = None  # inode of our socket file: unlink only that one

    def on_start(self) -> None:
        if self.event_socket is None:
            return
        try:
            listener, self.bound = bind_event_socket(self.event_socket, self.access)
        except (OSError, RuntimeError) as exc:
            # Notifications still reach the log, in-process subscribers and alerts.
            log.error("event socket %s: %s; `vigil events` and vigil.api.subscribe will not "
                      "work on this node", self.event_socket, exc)
            return
        self.server = EventServer(listener)
        self.server.start()

    def on_stop(self) -> None:
        self._close()
        if self.history is not None:
            self.history.close()

    def release(self) -> None:
        self._close()  # the restarted notifier binds the same path
        if self.history is not None:
            self.history.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Subscribe):
            self.subscribers.append((message.ref, message.kinds))
        elif isinstance(message, Unsubscribe):
            self.subscribers = [(r, k) for r, k in self.subscribers if r != message.ref]
        elif isinstance(message, Notification):
            self._publish(message)
        elif isinstance(message, Heard):
            log.debug("heard from %s: %s: %s", message.note.node, message.note.kind,
                      message.note.text)
            self._record(message.note, heard=True)
        return None

    def _record(self, note: Notification, *, heard: bool) -> None:
        if self.history is None:
            return
        try:
            self.history.append(entry(note, heard=heard))
        except OSError as exc:
            if not self.history_failed:  # once: a full disk must not flood the log
                log.error("cannot write the history file %s: %s; `vigil history` misses "
                          "what happens meanwhile", self.history.path, exc)
            self.history_failed = True
        else:
            self.history_failed = False

    def _publish(self, note: Notification) -> None:
        self.seq += 1
        note = dataclasses.replace(note, seq=self.seq)
        log.log(level_of(note), "%s: %s", note.kind, note.text, extra=journal_fields(note))
        self._record(note, heard=False)
        alive: list[tuple[pykka.ActorRef[Any], frozenset[str] | None]] = []
        for ref, kinds in self.subscribers:
            if kinds is not None and note.kind not in kinds:
                alive.append((ref, kinds))
                continue
            try:
                ref.tell(note)
                alive.append((ref, kinds))
            except pykka.ActorDeadError:
                log.info("notification subscriber %s is gone; unsubscribed", ref)
        self.subscribers = alive
        self.directory.tell("alerts", note)
        if self.server is not None:
            self.server.publish(encode_event(note, self.run))

    def _close(self) -> None:
        if self.server is None:
            return
        self.server.stop()
        self.server = None
        path = self.event_socket
        if path is not None:
            with contextlib.suppress(OSError):
                if path.stat().st_ino == self.bound:
                    path.unlink()


def encode_event(note: Notification, run: str, limit: int = MAX_EVENT_MESSAGE) -> bytes:
    """The event socket's message for ``note``: with its text shortened when the whole would
    be longer than ``limit`` bytes (longer still: its fields are too long; not shortened)."""
    payload = to_dict(note)
    payload["run"] = run
    data = json.dumps(payload, default=str).encode()
    text = payload.get("text")
    if len(data) > limit and isinstance(text, str):
        marker = " [shortened]"
        # the bytes its JSON string may take (json escapes: a character is 1 to 12 bytes)
        room = limit - (len(data) - len(json.dumps(text)))
        cut = text
        while cut and len(json.dumps(cut + marker)) > room:
            cut = cut[:min(len(cut) - 1, len(cut) * room // len(json.dumps(cut + marker)))]
        payload["text"] = cut + marker
        data = json.dumps(payload, default=str).encode()
    return data


def bind_event_socket(path: Path, access: Access) -> tuple[socket.socket, int]:
    """A Unix socket listening on ``path`` with the mode and group ``access`` asks for;
    returns it and the inode of its file. Raises RuntimeError when another daemon has it."""
    prepare_runtime_dir(path.parent, access)
    if (path.exists() or path.is_symlink()) and socket_in_use(path):
        raise RuntimeError(f"{path} is in use: is another vigil daemon running for this node?")
    mode, gid = access.event_socket_owner()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # A directory only root can enter: nobody can connect before the mode below is set.
    private = Path(tempfile.mkdtemp(prefix=".ev", dir=path.parent))
    staged = private / "s"
    try:
        sock.bind(str(staged))
        sock.listen(LISTEN_BACKLOG)
        os.chmod(staged, mode)
        if gid is not None:
            os.chown(staged, -1, gid)
        os.replace(staged, path)  # over a stale file of a dead daemon, atomically
        inode = path.stat().st_ino
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            staged.unlink()
        with contextlib.suppress(OSError):
            private.rmdir()
    return sock, inode
