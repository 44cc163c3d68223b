"""The sd_notify protocol and the reporter's decisions: what systemd is told, and that the
watchdog is petted only while the node's actors answer (a real Pykka actor that stops
answering stops the petting; SIGSTOP of a whole daemon would stop the petting thread too,
which proves nothing)."""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pykka
import pytest

from tests.support.cluster_harness import wait_for
from tests.support.simconfig import sim_config
from vigil.cluster.sim import SimCluster
from vigil.cluster.view import ResourceFacts, build_status
from vigil.sdnotify import SdNotify, SystemdReporter, is_ready, status_line, watchdog_time
from vigil.status import ClusterStatus


@pytest.fixture(scope="module")
def formed() -> ClusterStatus:
    cluster = SimCluster(sim_config(3, 2), rng=random.Random(1))
    cluster.run_for(3.0)
    core = cluster.nodes["alpha"].core
    assert core is not None
    return build_status(core, ResourceFacts())


class Receiver:
    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(2.0)

    def next(self) -> str:
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        self.sock.settimeout(0.0)
        out = []
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(2.0)
        return out


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Receiver]]:
    address = f"@vigil-unit-notify-{os.getpid()}-{tmp_path.name}"
    r = Receiver(address)
    yield address, r
    r.sock.close()


def test_the_datagrams_reach_abstract_and_path_sockets(tmp_path: Path,
                                                        receiver: tuple[str, Receiver]) -> None:
    address, r = receiver
    notify = SdNotify(address)
    assert notify.send("READY=1", "STATUS=up")
    assert r.next() == "READY=1\nSTATUS=up"
    path = tmp_path / "notify"
    by_path = Receiver(str(path))
    assert SdNotify(str(path)).send("WATCHDOG=1")
    assert by_path.next() == "WATCHDOG=1"


def test_nothing_is_sent_without_notify_socket_and_a_gone_systemd_does_not_raise(
        tmp_path: Path) -> None:
    env: dict[str, str] = {}
    assert not SdNotify.from_environment(env).send("READY=1")
    gone = SdNotify(str(tmp_path / "nobody"))
    assert not gone.send("READY=1")


def test_the_variables_are_read_once_and_watchdog_pid_is_honoured() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}
    assert watchdog_time(dict(env), pid=4242) == 30.0
    assert watchdog_time(dict(env), pid=4243) is None  # meant for another process
    assert watchdog_time({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_time({"WATCHDOG_USEC": "junk"}) is None
    notify = SdNotify.from_environment(env, unset=True)
    assert watchdog_time(env, pid=4242, unset=True) == 30.0
    assert notify.address == "@x" and env == {}  # what the daemon starts does not see them


def test_ready_means_in_a_closed_quorate_epoch_that_holds_the_node(formed: ClusterStatus
                                                                   ) -> None:
    assert is_ready(formed)
    assert not is_ready(replace(formed, quorate=False))
    assert not is_ready(replace(formed, closed=False))
    assert not is_ready(replace(formed, members=tuple(m for m in formed.members
                                                      if m != formed.node)))
    line = status_line(formed)
    assert line.startswith(f"quorate, 3/3 nodes, epoch {formed.epoch}; here: ")
    assert status_line(replace(formed, quorate=False, quorum="1 of 3 votes, need 2")) == \
        "waiting for peers: 3/3 nodes online, quorum 1 of 3 votes, need 2"


class Coordinator(pykka.ThreadingActor):
    """Answers a status request like the node's coordinator, until it is stuck in a long
    piece of work (as an actor whose handler blocks: a hung agent call, a deadlock)."""

    def __init__(self, status: ClusterStatus) -> None:
        super().__init__()
        self.status = status

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, threading.Event):
            message.wait(30)
            return None
        return self.status


def test_the_watchdog_is_petted_only_while_the_actors_answer(
        formed: ClusterStatus, receiver: tuple[str, Receiver]) -> None:
    address, r = receiver
    ref = Coordinator.start(formed)
    reporter = SystemdReporter(SdNotify(address), watchdog=0.8)
    try:
        reporter.start()
        assert r.drain() == ["STATUS=starting", "WATCHDOG=1"]
        asked: list[int] = []

        def probe() -> Any:
            asked.append(1)
            return ref.ask("status", block=False)

        reporter.attach(probe)
        received: list[str] = []
        wait_for(lambda: received.extend(r.drain()) or "READY=1" in received, 5, "READY=1")
        assert received.index(f"STATUS={status_line(formed)}") < received.index("READY=1")
        wait_for(lambda: received.extend(r.drain()) or received.count("WATCHDOG=1") >= 3, 5,
                 "the watchdog petted while the coordinator answers")

        stuck = threading.Event()
        ref.tell(stuck)  # the coordinator is busy for good: asks time out
        r.drain()
        wait_for(lambda: reporter._stuck, 5, "the reporter to notice")
        r.drain()
        # twice the watchdog time without a single pet: systemd would restart the daemon
        questions = len(asked)
        quiet: list[str] = []
        threading.Event().wait(1.6)
        quiet.extend(r.drain())
        assert "WATCHDOG=1" not in quiet, quiet
        # the unanswered question is waited for, not asked again and again
        assert len(asked) == questions

        stuck.set()  # it answers again: the petting resumes
        wait_for(lambda: "WATCHDOG=1" in r.drain(), 5, "the petting to resume")

        reporter.leaving()
        assert r.next() == "STOPPING=1\nSTATUS=leaving: stopping groups"
    finally:
        reporter.close()
        ref.stop()
