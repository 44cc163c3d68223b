"""ZeroMQ links on loopback: topic routing, bind errors, prompt shutdown.

PUB/SUB drops whatever is published before a subscriber's connection is up (the slow joiner),
so senders here repeat in a bounded loop until the receiver has something: the protocol above
does the same by retransmitting.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from vigil.transports import Link, LinkError, ZmqLink
from vigil.transports.keys import LinkKeys
from vigil.transports.zmq_link import tcp_endpoint

DEADLINE_S = 10.0
CLUSTER_KEY = b"0123456789abcdef0123456789abcdef"


def keys_for(name: str, *names: str) -> LinkKeys:
    """The link keys of node ``name`` in a test cluster of ``names`` (and ``name``)."""
    return LinkKeys.derive([CLUSTER_KEY], "test", {name, *names}, name)


class Inbox:
    """A frame handler that records what arrives and lets a test wait for it."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[bytes]]] = []
        #: Runs first for every frame set; a test's way to act inside the handler.
        self.before: Callable[[str, list[bytes]], None] | None = None
        self._cond = threading.Condition()

    def __call__(self, link: str, frames: list[bytes]) -> None:
        if self.before is not None:
            self.before(link, frames)
        with self._cond:
            self.received.append((link, frames))
            self._cond.notify_all()

    def payloads(self) -> list[bytes]:
        with self._cond:
            return [frames[1] for _link, frames in self.received]

    def wait_for(self, predicate: Callable[[list[bytes]], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: predicate([frames[1] for _link, frames in self.received]), timeout
            )


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = [socket.socket(family, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


Cluster = dict[str, tuple[ZmqLink, Inbox]]


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def make_cluster(
    context: zmq.Context[zmq.Socket[bytes]],
) -> Iterator[Callable[..., Cluster]]:
    built: list[ZmqLink] = []

    def make(*names: str, host: str = "127.0.0.1", own_context: bool = False) -> Cluster:
        # Another process may grab a port between the probe and the bind: try again.
        for _attempt in range(5):
            peers = dict(zip(names, ((host, port) for port in free_ports(len(names), host)),
                             strict=True))
            cluster: Cluster = {}
            try:
                for name in names:
                    inbox = Inbox()
                    link = ZmqLink("lan", peers[name], peers, name, inbox,
                                   context=None if own_context else context,
                                   keys=keys_for(name, *names))
                    built.append(link)
                    cluster[name] = (link, inbox)
            except LinkError:
                for link, _inbox in cluster.values():
                    link.close()
                continue
            for link, _inbox in cluster.values():
                link.start()
            return cluster
        raise AssertionError("could not find free ports")

    yield make
    for link in built:
        link.close()


def send_until(
    link: ZmqLink, dest: str, payload: bytes, arrived: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        link.send([dest.encode() + b"\x00", payload])
        if arrived():
            return
    raise AssertionError(f"{payload!r} to {dest!r} did not arrive within {DEADLINE_S} s")


def got(inbox: Inbox, payload: bytes) -> Callable[[], bool]:
    return lambda: inbox.wait_for(lambda payloads: payload in payloads, 0.05)


def test_zmq_link_satisfies_the_link_protocol(make_cluster: Callable[..., Cluster]) -> None:
    link, _inbox = make_cluster("alpha")["alpha"]
    assert isinstance(link, Link)
    assert link.name == "lan"


def test_broadcast_reaches_every_other_node_and_not_the_sender(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster("alpha", "beta", "gamma")
    alpha, alpha_inbox = cluster["alpha"]
    _beta, beta_inbox = cluster["beta"]
    _gamma, gamma_inbox = cluster["gamma"]
    send_until(alpha, "*", b"hello", lambda: got(beta_inbox, b"hello")() and got(
        gamma_inbox, b"hello")())
    assert beta_inbox.received[0][0] == "lan"
    assert b"hello" not in alpha_inbox.payloads()


def test_addressed_message_reaches_only_its_node_and_not_a_longer_name(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster("alpha", "alphabet", "beta")
    _alpha, alpha_inbox = cluster["alpha"]
    _alphabet, alphabet_inbox = cluster["alphabet"]
    beta, _beta_inbox = cluster["beta"]
    send_until(beta, "alpha", b"for-alpha", got(alpha_inbox, b"for-alpha"))
    # One connection delivers in order: once alphabet has a later broadcast, anything of
    # alpha's that leaked to it would already be there.
    send_until(beta, "*", b"marker", got(alphabet_inbox, b"marker"))
    assert b"for-alpha" not in alphabet_inbox.payloads()
    assert all(frames[0] != b"alpha\x00" for _link, frames in alphabet_inbox.received)


def test_handler_exception_does_not_stop_the_reader(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster("alpha", "beta")
    alpha, _ = cluster["alpha"]
    _beta, beta_inbox = cluster["beta"]
    failed = threading.Event()

    def flaky(_link: str, frames: list[bytes]) -> None:
        if frames[1] == b"boom":
            failed.set()
            raise RuntimeError("handler bug")

    beta_inbox.before = flaky
    send_until(alpha, "*", b"boom", lambda: failed.wait(0.05))
    send_until(alpha, "*", b"after", got(beta_inbox, b"after"))


def test_bind_conflict_names_the_link_and_port(
    make_cluster: Callable[..., Cluster], context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    first, _ = make_cluster("alpha")["alpha"]
    port = int(first.endpoint.rsplit(":", 1)[1])
    with pytest.raises(LinkError) as caught:
        ZmqLink("lan", ("127.0.0.1", port), {}, "beta", Inbox(), context=context,
                keys=keys_for("beta"))
    message = str(caught.value)
    assert str(port) in message
    assert "'lan'" in message
    assert "127.0.0.1" in message


def test_bind_to_an_address_not_on_this_host_is_a_link_error() -> None:
    with pytest.raises(LinkError, match="not configured on this host"):
        ZmqLink("lan", ("192.0.2.1", free_ports(1)[0]), {}, "alpha", Inbox(),
                keys=keys_for("alpha"))


def test_close_returns_promptly_and_is_idempotent() -> None:
    link = ZmqLink("lan", ("127.0.0.1", 0), {"beta": ("127.0.0.1", 9)}, "alpha", Inbox(),
                   keys=keys_for("alpha", "beta"))
    link.start()
    started = time.monotonic()
    link.close()
    assert time.monotonic() - started < 1.0
    link.close()
    link.send([b"*\x00", b"dropped after close"])
    assert not any(t.name == "vigil-link-lan" and t.is_alive() for t in threading.enumerate())


def test_close_without_start_releases_the_port() -> None:
    link = ZmqLink("lan", ("127.0.0.1", 0), {}, "alpha", Inbox(), keys=keys_for("alpha"))
    port = int(link.endpoint.rsplit(":", 1)[1])
    link.close()
    again = ZmqLink("lan", ("127.0.0.1", port), {}, "alpha", Inbox(), keys=keys_for("alpha"))
    again.close()


@pytest.mark.parametrize("own_context", [False, True])
def test_close_from_inside_the_handler_does_not_deadlock(
    make_cluster: Callable[..., Cluster], own_context: bool
) -> None:
    cluster = make_cluster("alpha", "beta", own_context=own_context)
    alpha, _ = cluster["alpha"]
    beta, beta_inbox = cluster["beta"]
    closed = threading.Event()

    def close_self(_link: str, _frames: list[bytes]) -> None:
        beta.close()
        closed.set()

    beta_inbox.before = close_self
    send_until(alpha, "*", b"bye", lambda: closed.wait(0.05))
    reader = beta._thread
    assert reader is not None
    reader.join(1.0)
    assert not reader.is_alive()


def test_ipv6_endpoints_are_bracketed() -> None:
    assert tcp_endpoint("::1", 7000) == ("tcp://[::1]:7000", True)
    assert tcp_endpoint("192.0.2.7", 7000) == ("tcp://192.0.2.7:7000", False)


def test_links_work_over_ipv6_loopback(make_cluster: Callable[..., Cluster]) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    cluster = make_cluster("alpha", "beta", host="::1")
    alpha, _ = cluster["alpha"]
    _beta, beta_inbox = cluster["beta"]
    send_until(alpha, "*", b"over-v6", got(beta_inbox, b"over-v6"))


@pytest.mark.parametrize("answer", ["null-then-oversized", "plain-mechanism"])
def test_a_rogue_on_a_restarting_peers_port_does_not_cut_the_link_for_good(
    make_cluster: Callable[..., Cluster], context: zmq.Context[zmq.Socket[bytes]], answer: str
) -> None:
    """Issue 12, item 1: while beta restarts, something else on its port answers alpha with
    an oversized frame or another mechanism's greeting; once beta is back, alpha hears it."""
    from tests.support.rogue import ANSWERS, RogueListener

    cluster = make_cluster("alpha", "beta")
    _alpha, alpha_inbox = cluster["alpha"]
    beta, _ = cluster["beta"]
    send_until(beta, "*", b"before", got(alpha_inbox, b"before"))
    host, port = "127.0.0.1", int(beta.endpoint.rsplit(":", 1)[1])
    beta.close()
    rogue = RogueListener(host, port, ANSWERS[answer])
    try:
        assert rogue.wait_served(1, DEADLINE_S), "alpha never connected to the rogue"
    finally:
        rogue.close()
    again = ZmqLink("lan", (host, port), {"alpha": ("127.0.0.1", 9), "beta": (host, port)},
                    "beta", Inbox(), context=context, keys=keys_for("beta", "alpha"))
    try:
        again.start()
        send_until(again, "*", b"after", got(alpha_inbox, b"after"))
    finally:
        again.close()
