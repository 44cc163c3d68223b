"""GuardClient (vigil/guard/client.py) against a stand-in guardian on a real Unix socket: it
never blocks its caller, sends only the newest report when the guardian lags, tells its owner
when the guardian is gone, and reconnects with hello and the newest report."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vigil.guard.client import Connected, FencedEvent, GuardClient, GuardError, GuardianGone
from vigil.guard.holdings import Holdings, ResourceHolding
from vigil.guard.protocol import (
    Bye,
    Error,
    Fenced,
    FenceReport,
    Hello,
    LineReader,
    Message,
    Report,
    Welcome,
    decode,
    encode,
)

WAIT = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeGuardian:
    """A listening socket the test drives by hand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.listener.settimeout(WAIT)
        self.conn: socket.socket | None = None
        self.reader = LineReader()
        self.received: list[Message] = []

    def accept(self) -> socket.socket:
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(WAIT)
        return self.conn

    def read_until(self, condition: Callable[[list[Message]], bool]) -> list[Message]:
        assert self.conn is not None
        while not condition(self.received):
            data = self.conn.recv(1 << 20)
            assert data, f"the client closed the connection; got {self.received}"
            self.received += [decode(x) for x in self.reader.feed(data)
                              if isinstance(x, bytes)]
        return self.received

    def send(self, message: Message) -> None:
        assert self.conn is not None
        self.conn.sendall(encode(message))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "guard.sock"


@pytest.fixture
def guardian(path: Path) -> Iterator[FakeGuardian]:
    fake = FakeGuardian(path)
    try:
        yield fake
    finally:
        fake.close()


def holdings(n: int = 1, size: int = 1) -> Holdings:
    return Holdings(tuple(ResourceHolding(f"r{n}-{i}", pgids=(1000 + i,)) for i in range(size)))


def wait_events(client: GuardClient, kind: type, timeout: float = WAIT) -> list[object]:
    deadline = time.monotonic() + timeout
    events: list[object] = []
    while not any(isinstance(e, kind) for e in events):
        assert time.monotonic() < deadline, f"no {kind.__name__} within {timeout}s: {events}"
        events += client.wait(0.05)
    return events


def test_without_a_guardian_reports_are_kept_and_nothing_raises(path: Path) -> None:
    client = GuardClient(path, "alpha")
    assert not client.connected and client.fileno() == -1
    assert client.report(5.0, holdings()) is False
    assert str(path) in client.last_error
    assert client.poll() == []  # never connected: nothing is "gone"
    client.close()


def test_hello_then_the_report_then_the_welcome(guardian: FakeGuardian, path: Path) -> None:
    client = GuardClient(path, "alpha", pid=4242)
    guardian.accept()
    assert client.report(123.5, holdings())
    got = guardian.read_until(lambda r: len(r) >= 2)
    assert got[:2] == [Hello("alpha", 4242), Report(123.5, holdings())]
    welcome = Welcome("alpha", 7, 0.1, "kill", "cgroup v2: x")
    guardian.send(welcome)
    events = wait_events(client, Connected)
    assert Connected(welcome) in events and client.welcome == welcome
    client.report(None, Holdings())
    assert guardian.read_until(lambda r: len(r) >= 3)[2] == Report(-math.inf, Holdings())
    client.close()


def test_a_guardian_that_does_not_read_never_blocks_the_caller_and_gets_the_newest(
        guardian: FakeGuardian, path: Path) -> None:
    client = GuardClient(path, "alpha")
    conn = guardian.accept()
    big = 200  # resources per report: some 6 KB a line, so the socket fills quickly
    sent = 0
    done = threading.Event()

    def report_many() -> None:
        nonlocal sent
        for n in range(300):
            client.report(float(n), holdings(n, big))
            sent += 1
        done.set()

    thread = threading.Thread(target=report_many, daemon=True)
    thread.start()
    assert done.wait(WAIT), "report() blocked on a guardian that does not read"
    newest = Report(299.0, holdings(299, big))
    conn.settimeout(0.5)
    # Now read: the lines that were already under way, then the newest one, and no more.
    reports: list[Message] = []
    with contextlib.suppress(TimeoutError):
        while newest not in reports:
            client.poll()  # the owner's next call sends what waited
            data = conn.recv(1 << 20)
            reports += [decode(x) for x in guardian.reader.feed(data) if isinstance(x, bytes)]
    assert isinstance(reports[0], Hello)
    assert reports[-1] == newest
    assert len(reports) - 1 < sent  # older reports not begun were replaced, never queued
    client.close()


def test_the_owner_hears_when_the_guardian_is_gone_and_it_reconnects(path: Path) -> None:
    clock = Clock()
    first = FakeGuardian(path)
    client = GuardClient(path, "alpha", pid=9, reconnect_interval=0.5, clock=clock)
    first.accept()
    client.report(200.0, holdings())
    first.read_until(lambda r: len(r) >= 2)
    first.close()
    events = wait_events(client, GuardianGone)
    gone = next(e for e in events if isinstance(e, GuardianGone))
    assert "is gone: it closed the connection" in gone.reason and not client.connected
    second = FakeGuardian(path)
    try:
        client.poll()
        assert not client.connected  # not before reconnect_interval
        clock.now += 0.5
        client.poll()
        assert client.connected
        second.accept()
        got = second.read_until(lambda r: len(r) >= 2)
        assert got == [Hello("alpha", 9), Report(200.0, holdings())]  # the newest, again
        client.bye()
        assert second.read_until(lambda r: len(r) >= 3)[2] == Bye()
        client.close()
    finally:
        second.close()


def test_fenced_and_error_messages_reach_the_owner_and_bad_lines_are_dropped(
        guardian: FakeGuardian, path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = GuardClient(path, "alpha")
    conn = guardian.accept()
    report = FenceReport(at=1.0, took=0.01, reason="lease ran out", resources=("r",))
    conn.sendall(b"garbage\n" + json.dumps({"v": 1, "type": "hello", "node": "x",
                                             "pid": 1}).encode() + b"\n")
    guardian.send(Error("dropped: report before hello"))
    guardian.send(Fenced(report))
    events = wait_events(client, FencedEvent)
    assert GuardError("dropped: report before hello") in events
    assert FencedEvent(report) in events
    assert client.connected
    text = caplog.text
    assert "sent a malformed message, dropped: not JSON" in text
    assert "sent a hello message, which only a daemon sends" in text
    client.close()
