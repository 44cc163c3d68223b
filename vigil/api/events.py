"""Reading a node's notifications from another process: :func:`subscribe`.

::

    from vigil.api import GroupMoved, Missed, subscribe

    with subscribe("/etc/vigil/cluster.toml", kinds={"group_moved"}) as events:
        for note in events:
            if isinstance(note, Missed):
                print(f"missed {note.count} notifications: re-read `vigil status`")
            elif isinstance(note, GroupMoved):
                print(note.group, "now on", note.to_node or "no node")

The daemon publishes every notification on its event socket (``events.sock`` in the node's
runtime directory: a ZeroMQ PUB socket over ``ipc``); reading it takes root, or membership
of ``[cluster] status_group`` (its file mode; see ``docs/events.md``). Parameters:

``config``
    the cluster configuration: a path, a loaded :class:`~vigil.config.ClusterConfig`, or
    None for ``$VIGIL_CONFIG``, else ``/etc/vigil/cluster.toml``.
``node``
    whose daemon to read (default: this host's name, as ``vigil`` commands do).
``kinds``
    the notification kinds wanted (``None``: all; see
    :data:`~vigil.notifications.KINDS`). Filtered here, in the subscriber, so that
    gaps still show: :class:`~vigil.notifications.Missed` is always yielded, whatever
    ``kinds`` says.
``timeout``
    seconds to wait for the next notification to yield; then the iteration ends (and the
    socket is closed). ``None``: wait for ever.
``hwm``
    messages this subscriber's socket buffers (ZeroMQ's receive high-water mark); the
    daemon buffers :data:`vigil.local.limits.SEND_HWM` more for it (at most
    :data:`~vigil.local.limits.EVENT_BACKLOG` bytes).

Guarantees: notifications come in the order the node numbered them (``seq``). ZeroMQ drops
what a subscriber that falls behind cannot take; when ``seq`` jumps by k+1, a ``Missed`` with
``count`` k comes first (its ``seq`` is 0: it is this subscriber's news, not the daemon's).
A daemon restart (its notifier numbers from 1 again; every message
carries the id of the run) is not a gap: the notifications the new run made before this
subscriber reconnected count as missed. Notifications made before subscribing are not
replayed, and ZeroMQ needs a moment to connect: wait for a first notification before relying
on the stream (or read ``vigil status`` after subscribing). Malformed messages are skipped,
counted (:attr:`EventStream.malformed`) and logged. The stream is an iterator and a context
manager; close it (or leave the ``with``) to release the socket. Use it from one thread.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Final

import zmq

from vigil.config import ClusterConfig, load, resolve_node
from vigil.local.protocol import connect
from vigil.notifications import KINDS, Missed, Notification, from_dict

__all__ = ["DEFAULT_CONFIG", "EventStream", "NoDaemonError", "subscribe"]

log = logging.getLogger("vigil.api.events")

DEFAULT_CONFIG: Final = "/etc/vigil/cluster.toml"
#: Messages buffered in the subscriber's socket.
DEFAULT_HWM: Final = 100_000
_POLL_MS: Final = 500  # a blocked wait wakes up this often (Ctrl-C, timeouts)


class NoDaemonError(ConnectionError):
    """No daemon listens on the event socket (it does not exist or nobody answers)."""


def subscribe(config: str | os.PathLike[str] | ClusterConfig | None = None,
              node: str | None = None, kinds: Iterable[str] | None = None, *,
              timeout: float | None = None, hwm: int = DEFAULT_HWM) -> EventStream:
    """The notifications of ``node``'s daemon as they happen (see the module's text).

    Raises :class:`~vigil.config.ConfigError` for a bad configuration file,
    :class:`~vigil.config.UnknownNode` (a ConfigError) when ``node`` (or the host name) is
    not in it,
    :class:`NoDaemonError` when that node's daemon does not run, ``PermissionError`` when
    this user may not read its events, ``ValueError`` for an unknown kind."""
    if not isinstance(config, ClusterConfig):
        config = load(Path(config) if config is not None
                      else os.environ.get("VIGIL_CONFIG", DEFAULT_CONFIG))
    name = resolve_node(config, node)
    return EventStream(config.nodes[name].event_socket, kinds=kinds, timeout=timeout, hwm=hwm,
                       group=config.status_group or config.admin_group)


class EventStream(Iterator[Notification]):
    """An iterator over the notifications published on the event socket at ``path``."""

    def __init__(self, path: str | os.PathLike[str], *, kinds: Iterable[str] | None = None,
                 timeout: float | None = None, hwm: int = DEFAULT_HWM, group: str = "") -> None:
        self.path = Path(path)
        self.kinds = _check_kinds(kinds)
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = timeout
        #: messages that were not notifications (skipped)
        self.malformed = 0
        #: notifications this subscriber was told it missed, in total
        self.missed = 0
        self._run: str | None = None
        self._seq: int | None = None
        self._ready: deque[Notification] = deque()
        self._closed = False
        _probe(self.path, group)
        self._socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")  # all: gaps only show in the whole stream
        self._socket.connect(f"ipc://{self.path}")

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Notification:
        if self._ready:
            return self._ready.popleft()
        if self._closed:
            raise StopIteration
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            wait = _POLL_MS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close()
                    raise StopIteration
                wait = min(wait, max(1, int(left * 1000)))
            if not self._socket.poll(wait, zmq.POLLIN):
                continue
            self._take(self._socket.recv(zmq.NOBLOCK))
            if self._ready:
                return self._ready.popleft()

    def _take(self, data: bytes) -> None:
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            seq, run = raw.get("seq"), raw.get("run")
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
                raise ValueError(f"no valid seq: {seq!r}")
            note = from_dict(raw)
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            self.malformed += 1
            if self.malformed in (1, 10, 100) or self.malformed % 1000 == 0:
                log.warning("event socket %s: skipped a malformed message (%s; %d so far): "
                            "%.120r", self.path, exc, self.malformed, data)
            return
        restarted = self._seq is not None and (
            seq <= self._seq or (run is not None and self._run is not None and run != self._run))
        if restarted:
            log.info("event socket %s: the daemon restarted (numbering from 1 again)",
                     self.path)
            self._gap(note, seq - 1, "the daemon restarted; missed its first")
        elif self._seq is not None and seq > self._seq + 1:
            self._gap(note, seq - self._seq - 1, "this subscriber was too slow; missed")
        self._seq, self._run = seq, run if isinstance(run, str) else None
        if self.kinds is None or note.kind in self.kinds:
            self._ready.append(note)

    def _gap(self, note: Notification, count: int, why: str) -> None:
        if count <= 0:
            return
        self.missed += count
        self._ready.append(Missed(node=note.node, time=time.time(), count=count,
                                  text=f"{why} {count} notification{'s' if count > 1 else ''}"
                                       f" (before #{note.seq})"))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._socket.close(linger=0)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and hasattr(self, "_socket"):
            self.close()


def _check_kinds(kinds: Iterable[str] | None) -> frozenset[str] | None:
    if kinds is None:
        return None
    if isinstance(kinds, str):
        kinds = [kinds]  # one kind given bare: not a set of its letters
    wanted = frozenset(kinds)
    unknown = sorted(wanted - KINDS)
    if unknown:
        raise ValueError(f"unknown notification kind(s) {', '.join(map(repr, unknown))}; "
                         f"kinds: {', '.join(sorted(KINDS))}")
    return wanted


def _probe(path: Path, group: str) -> None:
    """Fail now, clearly, where ZeroMQ would silently retry for ever."""
    try:
        connect(path, 2.0).close()
    except FileNotFoundError:
        raise NoDaemonError(f"no event socket at {path}: is the daemon (`vigil node run`) "
                            "running for this node?") from None
    except PermissionError:
        who = f"root or a member of status_group {group!r}" if group else "root"
        raise PermissionError(f"permission denied on {path}: reading events needs {who} "
                              f"(this is uid {os.getuid()})") from None
    except ConnectionRefusedError:
        raise NoDaemonError(f"nobody listens on {path}: the daemon of this node is not "
                            "running (the file is left from an earlier run)") from None
    except OSError as exc:
        raise NoDaemonError(f"cannot connect to {path}: {exc}") from None
