"""The guardian's word for a dead daemon (vigil/guard/announce.py), on real ZeroMQ links over
loopback: a peer's own link and codec receive it as a goodbye of the dead incarnation, and the
port is free for the daemon again once the guardian stops. And when the guardian says it: only
for a daemon whose process (a real one here) has exited."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tests.integration.test_transport_zmq import free_ports
from tests.support.simconfig import sim_config
from vigil.cluster.wire import Bye, decode
from vigil.config import ClusterConfig, LinkConfig
from vigil.guard.announce import FIRST_SEQ, Announcer
from vigil.guard.holdings import Holdings, MountHolding, ResourceHolding
from vigil.guard.process import Guardian, GuardSettings, _Daemon
from vigil.guard.protocol import FenceReport, Hello, Report
from vigil.messages import Message
from vigil.transports.codec import Codec
from vigil.transports.keys import key_ring
from vigil.transports.zmq_link import zmq_links

KEY = b"0123456789abcdef0123456789abcdef"
DEAD = 1_700_000_000_000_000_000  # the dead daemon's incarnation (a time_ns, as they are)


def loopback(cfg: ClusterConfig) -> ClusterConfig:
    ports = free_ports(len(cfg.nodes))
    nodes = {n: dataclasses.replace(c, links=(LinkConfig("lan0", "127.0.0.1", port),))
             for (n, c), port in zip(cfg.nodes.items(), ports, strict=True)}
    return dataclasses.replace(cfg, nodes=nodes)


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def test_a_peer_hears_the_goodbye_of_the_dead_incarnation_and_the_port_is_freed(
        context: zmq.Context[zmq.Socket[bytes]]) -> None:
    cfg = loopback(sim_config(2, 1))
    ring = key_ring(KEY)
    beta_codec = Codec(cfg.name, ring[0], cfg.node_names, "beta")
    heard: list[Message] = []
    arrived = threading.Event()

    def on_frames(_link: str, frames: list[bytes]) -> None:
        heard.append(beta_codec.decode(frames))
        arrived.set()

    links = zmq_links(cfg, context, KEY)
    beta = links("beta", "lan0")("lan0", on_frames)
    beta.start()
    announcer = Announcer(cfg, "alpha", KEY)
    try:
        announcer.announce(DEAD)
        assert arrived.wait(10.0), "no goodbye reached beta"
    finally:
        announcer.cancel()
        beta.close()
    msg = heard[0]
    assert (msg.sender, msg.incarnation) == ("alpha", DEAD) and msg.seq > FIRST_SEQ
    assert decode(msg).body == Bye(DEAD, fenced=True)
    # repeated copies carry numbers of their own: the replay window takes each once
    assert len({m.seq for m in heard}) == len(heard)
    # the daemon that comes back binds its port at once
    alpha = links("alpha", "lan0")("lan0", lambda _link, _frames: None)
    alpha.close()


def test_a_link_it_cannot_bind_is_named_in_the_log_and_nothing_is_sent(
        context: zmq.Context[zmq.Socket[bytes]], caplog: pytest.LogCaptureFixture) -> None:
    cfg = loopback(sim_config(2, 1))
    holder = zmq_links(cfg, context, KEY)("alpha", "lan0")("lan0", lambda _l, _f: None)
    announcer = Announcer(cfg, "alpha", KEY)
    try:  # the daemon is not dead after all: its port is taken
        announcer.announce(DEAD)
        announcer.cancel()
    finally:
        holder.close()
    assert "cannot tell the peers on link lan0 that the daemon died" in caplog.text
    assert "telling the peers" not in caplog.text


# ---- when the guardian speaks: only for a daemon whose process is dead ------------------------


class Recorded:
    """Stands in for the Announcer: the network part is tested above."""

    def __init__(self) -> None:
        self.told: list[int] = []

    def announce(self, incarnation: int) -> None:
        self.told.append(incarnation)

    def cancel(self) -> None:
        pass

    close = cancel


def guardian_with(tmp_path: Path, left_by_first_fence: bool) -> tuple[Guardian, Recorded]:
    """A guardian (not opened: no socket, no priority) whose fences kill nothing real; the
    first one leaves its holdings behind when ``left_by_first_fence``."""
    told = Recorded()
    guardian = Guardian(GuardSettings(node="alpha", socket_path=tmp_path / "guard.sock",
                                      realtime=False), announcer=told)  # type: ignore[arg-type]
    fences = []

    def fence(holdings: Holdings, reason: str, reboot: bool = False) -> FenceReport:
        fences.append(holdings)
        left = holdings if left_by_first_fence and len(fences) == 1 else Holdings()
        return FenceReport(at=time.monotonic(), took=0.001, reason=reason,
                           resources=holdings.names, remaining=left)

    guardian.fencer.fence = fence  # type: ignore[method-assign]
    return guardian, told


def connect(guardian: Guardian, pid: int, *, hello: bool = True) -> _Daemon:
    ours, _theirs = socket.socketpair()
    daemon = guardian.daemon = _Daemon(ours, pid)
    if hello:
        guardian._receive(daemon, Hello("alpha", pid))
        guardian._receive(daemon, Report(time.monotonic() + 10, HELD, DEAD))
    return daemon


HELD = Holdings.of([ResourceHolding("web-app", pgids=(999_999,))])


def dies_holding(tmp_path: Path, holdings: Holdings) -> Recorded:
    """A real process plays the daemon: it reports ``holdings``, is SIGKILLed, and its
    connection closes; what the guardian told the peers."""
    guardian, told = guardian_with(tmp_path, left_by_first_fence=False)
    daemon = subprocess.Popen(["sleep", "30"])
    try:
        conn = connect(guardian, daemon.pid)
        guardian._receive(conn, Report(time.monotonic() + 10, holdings, DEAD))
        daemon.kill()
        daemon.wait()
        guardian._daemon_left(conn)
    finally:
        daemon.kill()
        guardian.close()
    return told


def test_the_death_is_told_once_the_daemons_process_has_exited(tmp_path: Path) -> None:
    assert dies_holding(tmp_path, HELD).told == [DEAD]


def test_a_daemon_alive_but_disconnected_is_not_told_dead_whoever_else_connects(
        tmp_path: Path) -> None:
    guardian, told = guardian_with(tmp_path, left_by_first_fence=True)
    daemon = subprocess.Popen(["sleep", "30"])
    probe = subprocess.Popen(["sleep", "0.1"])  # e.g. another `vigil guard` trying the socket
    try:
        guardian._daemon_left(connect(guardian, daemon.pid))  # it lives on
        conn = connect(guardian, probe.pid, hello=False)
        probe.wait()  # the prober is gone when its connection closes
        guardian._daemon_left(conn)
        guardian._apply(guardian.core.tick(time.monotonic() + 1.5))  # the retry removes all
        assert daemon.poll() is None
    finally:
        daemon.kill()
        daemon.wait()
        guardian.close()
    assert told.told == []


def test_a_fence_that_could_not_see_into_a_resource_keeps_the_guardian_silent(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    no_cgroups = Holdings.of([*HELD.resources, ResourceHolding("web-agent")])
    assert dies_holding(tmp_path, no_cgroups).told == []
    assert "cannot vouch for web-agent (no cgroup, no process group" in caplog.text


def test_a_mount_not_there_when_fenced_keeps_the_guardian_silent(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The daemon died while starting a filesystem: its mount(8) may finish after the fence
    found nothing mounted (these fences unmount nothing), so the guardian cannot say that
    nothing runs there."""
    starting = Holdings.of([*HELD.resources, ResourceHolding(
        "web-fs", mounts=(MountHolding("/srv/web", "/dev/loop7"),))])
    assert dies_holding(tmp_path, starting).told == []
    assert "web-fs (/srv/web not unmounted by the fence: not mounted yet" in caplog.text
