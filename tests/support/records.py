"""Numbered records: the writer that the mirror tests and the benchmark run as their
application, and the reading of what a copy of its file holds.

The writer (``python tests/support/records.py DATA_DIR ACK_DIR [PERIOD]``) appends to
``DATA_DIR/records`` one record a line, ``<number> <unix time> <node>``, numbers from 1 up,
each written with one ``write`` and fsynced before the next; every ``PERIOD`` seconds (default
0.005). A record is *acknowledged* once its fsync has returned: the writer then appends ``<number>
<unix time>`` to ``ACK_DIR/<node>.acks`` (outside the host's own disk, on the machine's file
system, which outlives a host's power-off; not fsynced: the machine itself does not crash).
Started where the file exists already (after a takeover), it goes on from the last complete
record it finds, and notes what it found in ``ACK_DIR/<node>.starts`` (one JSON object a
line: the last number, whether the numbers were contiguous, any torn tail). SIGTERM stops it
between two records, so that a graceful stop leaves no record written but not acknowledged.

The node is ``VIGIL_NODE`` (the ``application`` resource sets it), else the host name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

RECORDS: Final = "records"


@dataclass(frozen=True)
class Record:
    number: int
    written: float  # when the writer wrote it (its wall clock)
    node: str  # where


@dataclass(frozen=True)
class Found:
    """What a copy of the records file holds."""

    records: list[Record]
    #: the numbers run 1, 2, 3... without a gap or repeat
    contiguous: bool
    #: bytes after the last complete record (a record cut short), or b""
    torn: bytes = b""
    #: lines that do not parse
    garbage: list[bytes] = field(default_factory=list)

    @property
    def last(self) -> int:
        return self.records[-1].number if self.records else 0

    def last_of(self, node: str) -> int:
        """The last record written on ``node`` (0: none)."""
        return max((r.number for r in self.records if r.node == node), default=0)

    def problems(self) -> list[str]:
        """What is wrong with this copy, in words (empty: a sound prefix of the history)."""
        found = []
        if not self.contiguous:
            numbers = [r.number for r in self.records]
            gaps = [(a, b) for a, b in zip([0, *numbers], numbers, strict=False) if b != a + 1]
            found.append(f"the numbers are not contiguous: {gaps[:5]}")
        if self.torn:
            found.append(f"a torn record at the end: {self.torn[:80]!r}")
        if self.garbage:
            found.append(f"{len(self.garbage)} unreadable lines, e.g. {self.garbage[0][:80]!r}")
        return found


def parse(data: bytes) -> Found:
    records: list[Record] = []
    garbage: list[bytes] = []
    body, _, torn = data.rpartition(b"\n")
    if not _:  # no newline at all: everything is a torn first record
        body, torn = b"", data
    for line in body.split(b"\n") if body else []:
        words = line.split(b" ")
        try:
            records.append(Record(int(words[0]), float(words[1]), words[2].decode()))
        except (IndexError, ValueError, UnicodeDecodeError):
            garbage.append(line)
    contiguous = all(r.number == i for i, r in enumerate(records, 1))
    return Found(records, contiguous, torn, garbage)


def read(path: Path) -> Found | None:
    """The records in ``path`` (None: no such file)."""
    try:
        return parse(path.read_bytes())
    except FileNotFoundError:
        return None


def last_record(path: Path) -> Record | None:
    """The last complete record in ``path``, reading only its end (None: none, or no file)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 512))
            tail = f.read()
    except FileNotFoundError:
        return None
    found = parse(tail.partition(b"\n")[2] if size > 512 else tail)
    return found.records[-1] if found.records else None


@dataclass(frozen=True)
class Ack:
    number: int
    at: float


def acks(ack_dir: Path, node: str) -> list[Ack]:
    """The records ``node``'s writers acknowledged, in order (every run of it)."""
    try:
        text = (ack_dir / f"{node}.acks").read_text()
    except FileNotFoundError:
        return []
    found = []
    for line in text.split("\n")[:-1]:  # a line still being written has no newline yet
        words = line.split()
        found.append(Ack(int(words[0]), float(words[1])))
    return found


def last_ack(ack_dir: Path, node: str) -> Ack | None:
    done = acks(ack_dir, node)
    return done[-1] if done else None


def starts(ack_dir: Path, node: str) -> list[dict[str, object]]:
    """What each run of the writer on ``node`` found when it started."""
    try:
        text = (ack_dir / f"{node}.starts").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def main(argv: list[str]) -> int:
    data_dir, ack_dir = Path(argv[1]), Path(argv[2])
    period = float(argv[3]) if len(argv) > 3 else 0.005
    node = os.environ.get("VIGIL_NODE") or socket.gethostname()
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    path = data_dir / RECORDS
    found = read(path) or Found([], True)
    with open(ack_dir / f"{node}.starts", "a") as starts_file:
        starts_file.write(json.dumps({"pid": os.getpid(), "last": found.last,
                                      "contiguous": found.contiguous,
                                      "torn": found.torn.decode(errors="replace"),
                                      "garbage": len(found.garbage), "at": time.time()}) + "\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    if found.torn:  # go on after the last complete record (the torn one is reported above)
        os.ftruncate(fd, os.fstat(fd).st_size - len(found.torn))
    number = found.last
    with open(ack_dir / f"{node}.acks", "a", buffering=1) as ack_file:
        while not stopping:
            number += 1
            os.write(fd, f"{number} {time.time():.6f} {node}\n".encode())
            os.fsync(fd)
            ack_file.write(f"{number} {time.time():.6f}\n")
            time.sleep(period)
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
