"""The node's history file: ``<runtime_dir>/history.jsonl``, beside state.json.

One JSON object per line, one line per notification: every notification of this node
(decisions included) and the significant ones heard from the other nodes
(:mod:`vigil.cluster.history`), with ``time`` a wall-clock ISO 8601 time with date and
offset, ``node`` where it happened, ``heard`` (true: another node's, as it told this one),
``bookkeeping`` (the protocol's own lines, left out of `vigil history` unless ``--all``),
and the notification's fields (:func:`vigil.notifications.to_dict`).

Bounded: once the file passes :data:`ROTATE_BYTES` it becomes ``history.jsonl.1`` (the
previous one is dropped) and a new one starts, so both together stay under twice that. It
survives restarts: the daemon appends to what is there. The notifier actor writes it (never
the coordinator); the daemon's ``history`` request and `vigil history` (when no daemon
answers) read it with :func:`read_history`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from vigil.cluster.history import bookkeeping
from vigil.local.rundir import open_append, open_private
from vigil.notifications import Notification, to_dict
from vigil.status import iso_time, parse_time

__all__ = ["FILE_NAME", "MAX_ANSWER", "ROTATE_BYTES", "HistoryFile", "entry", "history_path",
           "read_history"]

FILE_NAME: Final = "history.jsonl"
#: the size at which the file is rotated (two files at most: about 10 MiB in all)
ROTATE_BYTES: Final = 5 * 1024 * 1024
#: the most lines one answer carries (the newest that match)
MAX_ANSWER: Final = 2000
_TEXT_LIMIT: Final = 4000


def history_path(runtime_dir: Path) -> Path:
    return runtime_dir / FILE_NAME


def entry(note: Notification, *, heard: bool) -> dict[str, Any]:
    """The line of ``note`` (its ``time`` wall clock, Unix seconds) as a JSON object."""
    data = to_dict(note)
    if isinstance(data.get("text"), str) and len(data["text"]) > _TEXT_LIMIT:
        data["text"] = data["text"][:_TEXT_LIMIT] + " [shortened]"
    data["time"] = iso_time(note.time)
    if isinstance(data.get("until"), float) and data["until"]:
        data["until"] = iso_time(data["until"])
    data.pop("seq", None)
    data["heard"] = heard
    data["bookkeeping"] = bookkeeping(note)
    return data


class HistoryFile:
    """Appends lines to the history file, rotating it at ``rotate_bytes``."""

    def __init__(self, path: Path, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.path = path
        self.rotate_bytes = rotate_bytes
        self.fd: int | None = None
        self.size = 0

    def append(self, line: dict[str, Any]) -> None:
        """Raises OSError when the file cannot be written (the caller says so, once)."""
        data = (json.dumps(line, default=str, separators=(",", ":")) + "\n").encode()
        if self.fd is None:
            self.fd = open_append(self.path)
            self.size = os.fstat(self.fd).st_size
        if self.size and self.size + len(data) > self.rotate_bytes:
            self.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self.fd = open_append(self.path)
            self.size = 0
        os.write(self.fd, data)
        self.size += len(data)

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    for name in (path.with_name(path.name + ".1"), path):
        try:
            fd = open_private(name)
        except FileNotFoundError:
            continue
        with os.fdopen(fd, "rb") as f:
            for raw in f:
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue  # a line cut short by a crash
                if isinstance(line, dict):
                    yield line


def _about(line: dict[str, Any], group: str) -> bool:
    fields = line.get("fields")
    if line.get("group") == group or (isinstance(fields, dict) and fields.get("group") == group):
        return True
    # a transition's reason, a request: the group named in the words
    return re.search(rf"(?<![\w-]){re.escape(group)}(?![\w-])",
                     str(line.get("text", ""))) is not None


def read_history(path: Path, *, since: float | None = None, group: str | None = None,
                 everything: bool = False, limit: int = MAX_ANSWER
                 ) -> tuple[list[dict[str, Any]], int]:
    """The lines of the history file (and its rotated predecessor), oldest first: those at or
    after ``since`` (Unix seconds), about ``group`` (its field, or its name in the text),
    without the bookkeeping unless ``everything``; at most the newest ``limit``. Also how
    many more matched (left out by the limit). FileNotFoundError when there is none."""
    if not path.exists() and not path.with_name(path.name + ".1").exists():
        raise FileNotFoundError(path)
    kept: deque[dict[str, Any]] = deque(maxlen=limit)
    matched = 0
    for line in _lines(path):
        if not everything and line.get("bookkeeping"):
            continue
        if since is not None:
            when = parse_time(str(line.get("time", "")))
            if when is None or when < since:
                continue
        if group is not None and not _about(line, group):
            continue
        matched += 1
        kept.append(line)
    return list(kept), matched - len(kept)
