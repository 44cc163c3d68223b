"""The guardian's word for a dead daemon (vigil/guard/announce.py), on real ZeroMQ links over
loopback: a peer's own link and codec receive it as a goodbye of the dead incarnation, and the
port is free for the daemon again once the guardian stops."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import pytest
import zmq

from tests.integration.test_transport_zmq import free_ports
from tests.support.simconfig import sim_config
from vigil.cluster.wire import Bye, decode
from vigil.config import ClusterConfig, LinkConfig
from vigil.guard.announce import FIRST_SEQ, Announcer
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
