"""Logging for journald: the stream is recognised only when it is stderr, every line of a
record carries its priority, native entries carry fields (values with newlines and entries
above the datagram limit included), and failures are logged as errors."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

from tests.support.systemd import journal_entry
from vigil.actors.notifier import journal_fields, level_of
from vigil.journal import JournalHandler, PrefixFormatter, stderr_is_journal
from vigil.notifications import FencingCompleted, NodeLost, ResourceStateChanged


def record(level: int, msg: str, **extra: str) -> logging.LogRecord:
    rec = logging.LogRecord("vigil.test", level, __file__, 1, msg, None, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_the_journal_stream_is_stderr_only_when_its_device_and_inode_match(tmp_path: Path
                                                                           ) -> None:
    with open(tmp_path / "err", "w") as stream:
        st = os.fstat(stream.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream)
        assert not stderr_is_journal({}, stream)
        assert not stderr_is_journal({"JOURNAL_STREAM": "junk"}, stream)


def test_every_line_of_a_record_carries_its_priority() -> None:
    fmt = PrefixFormatter("%(levelname)s %(message)s")
    assert fmt.format(record(logging.ERROR, "a\nb")) == "<3>ERROR a\n<3>b"
    assert fmt.format(record(logging.CRITICAL, "x")) == "<2>CRITICAL x"
    assert fmt.format(record(logging.WARNING, "x")) == "<4>WARNING x"
    assert fmt.format(record(logging.INFO, "x")) == "<6>INFO x"
    assert fmt.format(record(logging.DEBUG, "x")) == "<7>DEBUG x"


def test_native_entries_carry_fields_even_when_large(tmp_path: Path) -> None:
    path = str(tmp_path / "journal")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(path)
    journal.settimeout(5)
    fallback = logging.StreamHandler(sys.stderr)
    handler = JournalHandler(path, "vigil", "alpha", fallback)
    try:
        handler.handle(record(logging.ERROR, "two\nlines", group="web", epoch="3.alpha",
                              kind="group_state_changed"))
        entry = journal_entry(journal.recv(65536))
        assert entry["MESSAGE"] == "two\nlines" and entry["PRIORITY"] == "3"
        assert (entry["NODE"], entry["GROUP"], entry["EPOCH"], entry["KIND"]) == \
            ("alpha", "web", "3.alpha", "group_state_changed")
        # above the socket's datagram limit: a sealed memfd passed along
        handler.handle(record(logging.INFO, "x" * 400_000))
        msg, fds, _, _ = socket.recv_fds(journal, 16, 1)
        assert msg == b"" and len(fds) == 1
        with os.fdopen(fds[0], "rb") as f:
            f.seek(0)  # journald maps it; the offset is the writer's
            assert journal_entry(f.read())["MESSAGE"] == "x" * 400_000
    finally:
        handler.close()
        journal.close()


def test_failures_are_errors_and_losses_warnings() -> None:
    common = {"node": "alpha", "time": 0.0, "text": ""}
    failed = ResourceStateChanged(resource="r", group="web", state="FAILED", **common)
    assert level_of(failed) == logging.ERROR
    assert journal_fields(failed) == {"kind": "resource_state_changed", "node": "alpha",
                                      "group": "web"}
    assert level_of(FencingCompleted(member="b", ok=False, **common)) == logging.ERROR
    assert level_of(FencingCompleted(member="b", ok=True, **common)) == logging.INFO
    assert level_of(NodeLost(member="b", clean=False, **common)) == logging.WARNING
    assert level_of(NodeLost(member="b", clean=True, **common)) == logging.INFO
