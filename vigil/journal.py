"""Logging for journald: syslog priorities, and structured fields when journald is there.

systemd connects a service's stderr to journald and names that stream in
``$JOURNAL_STREAM`` (``DEVICE:INODE``). When stderr is that stream, the daemons (``vigil node
run``, ``vigil guard``, ``vigil mount``) send each log record to journald's native socket
as an entry of its own, with ``PRIORITY`` (critical 2, error 3, warning 4, info 6, debug 7)
and the fields ``NODE``, ``GROUP``, ``EPOCH``, ``KIND`` where the record has them (the
notifications do: docs/operations.md, "journald"), so that ``journalctl -p err`` and
``journalctl NODE=alpha GROUP=web`` find them. Without the native socket they write
``<N>``-prefixed lines to stderr (sd-daemon(3)), which journald reads as priorities. Anywhere
else the format stays as it was, with its own time stamps.

``$VIGIL_JOURNAL_SOCKET`` replaces the native socket's path (tests).

This module imports nothing else of Vigil.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
import sys
from collections.abc import Mapping
from typing import TextIO

__all__ = ["JournalHandler", "PrefixFormatter", "configure", "stderr_is_journal",
           "syslog_priority"]

JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: the record attributes (``extra=``) sent as fields, and their field names
FIELDS = {"node": "NODE", "group": "GROUP", "epoch": "EPOCH", "kind": "KIND"}


def syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def stderr_is_journal(environ: Mapping[str, str] | None = None,
                      stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (stderr) is the journal stream ``$JOURNAL_STREAM`` names: not
    merely inherited by a process whose stderr went elsewhere."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat((sys.stderr if stream is None else stream).fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


class PrefixFormatter(logging.Formatter):
    """Each line of a record prefixed with its syslog priority (``<3>``): journald takes
    every line of a stream as an entry of its own, a traceback's included."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def _field(name: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" not in data:
        return name.encode() + b"=" + data + b"\n"
    return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"


class JournalHandler(logging.Handler):
    """Entries for journald's native socket (systemd.journal-fields(7)); a record that
    cannot be sent goes to ``fallback`` (stderr, with its priority prefix)."""

    def __init__(self, path: str, identifier: str, node: str | None,
                 fallback: logging.Handler) -> None:
        super().__init__()
        self.path = path
        self.identifier = identifier
        self.node = node
        self.fallback = fallback
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def entry(self, record: logging.LogRecord) -> bytes:
        fields = {
            "MESSAGE": self.format(record),
            "PRIORITY": str(syslog_priority(record.levelno)),
            "SYSLOG_IDENTIFIER": self.identifier,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname, "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName or "",
            "THREAD_NAME": record.threadName or "",
        }
        if self.node:
            fields["NODE"] = self.node
        for attr, name in FIELDS.items():
            value = getattr(record, attr, None)
            if value not in (None, ""):
                fields[name] = str(value)
        return b"".join(_field(k, v) for k, v in fields.items())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.entry(record)
            try:
                self.sock.sendto(data, self.path)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_large(data)
        except Exception:
            self.fallback.handle(record)

    def _send_large(self, data: bytes) -> None:
        """An entry above the datagram limit (a long traceback): in a sealed memfd, as
        journald expects."""
        fd = os.memfd_create("vigil-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            # socket.send_fds ignores its address argument: sendmsg itself
            self.sock.sendmsg([b""], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       struct.pack("i", fd))], 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        super().close()


def configure(level: str, tag: str, node: str | None, identifier: str = "vigil") -> None:
    """The root logger of a Vigil process: ``tag`` names it in each line (``[alpha]``,
    ``[alpha guardian]``); ``node``, when known, is the ``NODE`` field of its entries."""
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    label = f" {tag}" if tag else ""
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        # journald stamps every entry itself
        handler.setFormatter(PrefixFormatter(f"%(levelname)s{label} %(name)s: %(message)s"))
        path = os.environ.get("VIGIL_JOURNAL_SOCKET", JOURNAL_SOCKET)
        if os.path.exists(path):
            native = JournalHandler(path, identifier, node, handler)
            native.setFormatter(logging.Formatter(f"%(levelname)s{label} %(name)s: "
                                                  "%(message)s"))
            handler = native
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)-7s{label} %(name)s: %(message)s"))
    if not root.handlers:  # as basicConfig: a process configures its logging once
        root.addHandler(handler)
    # Libraries' debug output (every netlink message) drowns Vigil's own: --log-level debug
    # is for Vigil's decisions.
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
