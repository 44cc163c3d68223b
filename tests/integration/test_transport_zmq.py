"""ZeroMQ links on loopback: topic routing, bind errors, prompt shutdown, and what an attacker
without the cluster key can do to them (docs/security.md, "The links between nodes").

PUB/SUB drops whatever is published before a subscriber's connection is up (the slow joiner),
so senders here repeat in a bounded loop until the receiver has something: the protocol above
does the same by retransmitting.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from tests.support.rogue import ANSWERS, RecordingProxy, RogueListener
from vigil.transports import Link, LinkError, ZmqLink
from vigil.transports.keys import LinkKeys
from vigil.transports.zmq_link import PENDING_CAP, Doorway, cut_connection, tcp_endpoint

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


@pytest.mark.parametrize("answer", sorted(ANSWERS))
def test_a_rogue_on_a_restarting_peers_port_does_not_cut_the_link_for_good(
    make_cluster: Callable[..., Cluster], context: zmq.Context[zmq.Socket[bytes]], answer: str
) -> None:
    """Issue 12, item 1: while beta restarts, something else on its port answers alpha with
    an oversized frame, another mechanism's greeting or garbage; alpha keeps trying, and once
    beta is back, alpha hears it."""
    cluster = make_cluster("alpha", "beta")
    alpha, alpha_inbox = cluster["alpha"]
    beta, _ = cluster["beta"]
    send_until(beta, "*", b"before", got(alpha_inbox, b"before"))
    host, port = "127.0.0.1", int(beta.endpoint.rsplit(":", 1)[1])
    beta.close()
    rogue = RogueListener(host, port, ANSWERS[answer])
    try:
        assert rogue.wait_served(3, DEADLINE_S), "alpha gave up on beta's address"
    finally:
        rogue.close()
    assert alpha.replaced()["beta"] >= 2
    again = ZmqLink("lan", (host, port), {"alpha": ("127.0.0.1", 9), "beta": (host, port)},
                    "beta", Inbox(), context=context, keys=keys_for("beta", "alpha"))
    try:
        again.start()
        send_until(again, "*", b"after", got(alpha_inbox, b"after"))
    finally:
        again.close()


def test_a_subscriber_without_the_key_reads_nothing(
    make_cluster: Callable[..., Cluster], context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """Issue 12, item 8: neither a plaintext SUB, nor one that knows alpha's public key but
    not a node's secret, nor a node's own key from an address that is no peer's reads a
    thing; the ZAP handler refuses the second, the accept filter drops the third."""
    cluster = make_cluster("alpha", "beta")
    alpha, _ = cluster["alpha"]
    _beta, beta_inbox = cluster["beta"]
    beta_keys = keys_for("beta", "alpha")
    stranger_public, stranger_secret = zmq.curve_keypair()
    spies: dict[str, zmq.Socket[bytes]] = {}
    for name, (source, public, secret) in {
        "plaintext": ("127.0.0.1", None, None),
        "stranger": ("127.0.0.1", stranger_public, stranger_secret),
        "beta's key, another address": ("127.0.0.2", beta_keys.own.public,
                                        beta_keys.own.secret),
    }.items():
        spy = context.socket(zmq.SUB)
        spy.setsockopt(zmq.LINGER, 0)
        spy.setsockopt(zmq.SUBSCRIBE, b"")
        if public is not None and secret is not None:
            spy.setsockopt(zmq.CURVE_SERVERKEY, beta_keys.peers["alpha"][0])
            spy.setsockopt(zmq.CURVE_PUBLICKEY, public)
            spy.setsockopt(zmq.CURVE_SECRETKEY, secret)
        spy.connect(f"tcp://{source}:0;{alpha.endpoint.removeprefix('tcp://')}")
        spies[name] = spy
    try:
        refused_before = alpha._gate.refused["lan/alpha"]
        for n in range(20):  # 2 s of broadcasts, each repeated until beta has it
            send_until(alpha, "*", b"secret %d" % n, got(beta_inbox, b"secret %d" % n))
            time.sleep(0.1)
        for name, spy in spies.items():
            assert not spy.poll(0), f"the {name} subscriber read a message"
        assert alpha._gate.refused["lan/alpha"] > refused_before
    finally:
        for spy in spies.values():
            spy.close(linger=0)


def test_a_recorded_session_played_back_to_a_restarted_receiver_gives_it_nothing(
    make_cluster: Callable[..., Cluster], context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """Issue 12, item 7: a wiretap records a whole session from beta to alpha (encrypted:
    no message is readable in it); beta stops, alpha restarts, and whatever then answers on
    beta's address plays the recording back. Each connection has its own session keys, so
    alpha's new connection rejects it: nothing is delivered, nothing is connected."""
    cluster = make_cluster("alpha", "beta")
    beta, _ = cluster["beta"]
    cluster["alpha"][0].close()  # alpha is the one behind the wiretap
    beta_address = ("127.0.0.1", int(beta.endpoint.rsplit(":", 1)[1]))
    proxy = RecordingProxy("127.0.0.1", beta_address)
    alpha_peers = {"alpha": ("127.0.0.1", free_ports(1)[0]), "beta": ("127.0.0.1", proxy.port)}
    inbox = Inbox()
    alpha = ZmqLink("lan", alpha_peers["alpha"], alpha_peers, "alpha", inbox, context=context,
                    keys=keys_for("alpha", "beta"))
    try:
        alpha.start()
        for n in range(5):
            send_until(beta, "*", b"heartbeat %d" % n, got(inbox, b"heartbeat %d" % n))
    finally:
        alpha.close()
        proxy.close()
    recording = bytes(proxy.recorded)
    assert len(recording) > 200 and b"heartbeat" not in recording
    beta.close()
    rogue = RogueListener(*beta_address, recording, hold_s=0.5)
    replayed = Inbox()
    restarted = ZmqLink("lan", alpha_peers["alpha"], {"beta": beta_address}, "alpha", replayed,
                        context=context, keys=keys_for("alpha", "beta"))
    try:
        restarted.start()
        assert rogue.wait_served(3, DEADLINE_S)
        assert replayed.received == []
        assert restarted.peer_states()["beta"] != "connected"
    finally:
        restarted.close()
        rogue.close()


def test_a_peer_restarting_again_and_again_is_heard_every_time(
    make_cluster: Callable[..., Cluster], context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """Each restart of beta breaks alpha's connection, and alpha replaces its socket; beta's
    link closes all of its sockets each time. None of it may stall the context that both share
    (libzmq's I/O thread blocks on a monitor whose reader closed too early)."""
    cluster = make_cluster("alpha", "beta")
    _alpha, alpha_inbox = cluster["alpha"]
    beta, _ = cluster["beta"]
    address = ("127.0.0.1", int(beta.endpoint.rsplit(":", 1)[1]))
    peers = {"alpha": ("127.0.0.1", 9), "beta": address}
    for n in range(8):
        send_until(beta, "*", b"life %d" % n, got(alpha_inbox, b"life %d" % n))
        beta.close()
        beta = ZmqLink("lan", address, peers, "beta", Inbox(), context=context,
                       keys=keys_for("beta", "alpha"))
        beta.start()
    beta.close()


@pytest.mark.parametrize("rings", [
    ((b"1" * 32, b"2" * 32), (b"2" * 32, b"1" * 32)),  # switching: one uses the new key
    ((b"1" * 32, b"2" * 32), (b"1" * 32, b"2" * 32)),  # both still use the old one
    ((b"2" * 32,), (b"2" * 32, b"1" * 32)),  # one is done, one still accepts the old
])
def test_nodes_in_the_middle_of_a_key_rotation_still_talk(
    context: zmq.Context[zmq.Socket[bytes]], rings: tuple[tuple[bytes, ...], ...]
) -> None:
    ports = free_ports(2)
    peers = {"alpha": ("127.0.0.1", ports[0]), "beta": ("127.0.0.1", ports[1])}
    links: dict[str, tuple[ZmqLink, Inbox]] = {}
    try:
        for name, ring in zip(peers, rings, strict=True):
            inbox = Inbox()
            links[name] = (ZmqLink("lan", peers[name], peers, name, inbox, context=context,
                                   keys=LinkKeys.derive(ring, "test", peers, name)), inbox)
            links[name][0].start()
        send_until(links["alpha"][0], "*", b"to beta", got(links["beta"][1], b"to beta"))
        send_until(links["beta"][0], "*", b"to alpha", got(links["alpha"][1], b"to alpha"))
    finally:
        for link, _inbox in links.values():
            link.close()


def test_nodes_with_different_keys_do_not_talk(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    ports = free_ports(2)
    peers = {"alpha": ("127.0.0.1", ports[0]), "beta": ("127.0.0.1", ports[1])}
    beta_inbox = Inbox()
    alpha = ZmqLink("lan", peers["alpha"], peers, "alpha", Inbox(), context=context,
                    keys=LinkKeys.derive([b"1" * 32], "test", peers, "alpha"))
    beta = ZmqLink("lan", peers["beta"], peers, "beta", beta_inbox, context=context,
                   keys=LinkKeys.derive([b"2" * 32], "test", peers, "beta"))
    try:
        beta.start()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            alpha.send([b"*\x00", b"hello"])
            time.sleep(0.05)
        assert beta_inbox.received == []
        assert beta.peer_states()["alpha"] != "connected"
    finally:
        alpha.close()
        beta.close()


FLOOD = """
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
rate = float(sys.argv[4])
start = time.monotonic()
for n in range(int(sys.argv[3])):
    ahead = start + n / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT: the port at connect
    s.bind((sys.argv[1], 0))
    try:
        s.connect((sys.argv[1], int(sys.argv[2])))
    except OSError:
        pass
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()
"""


#: connections a second of a flood: without a cap, libzmq holds each for its 2 s handshake
#: timeout, 2 x FLOOD_RATE descriptors; with it, the cap and what the reader has not yet seen
FLOOD_RATE = 500


def most_held_with_a_cap(cap: int) -> int:
    """The most descriptors a flood may hold above the quiet count if its reader cuts the
    excess within a second (well within, on a quiet machine), and far fewer than without."""
    return cap + FLOOD_RATE


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def flood(port: str, count: int, busy: Callable[[], bool] = lambda: False,
          rate: int = FLOOD_RATE) -> Iterator[int]:
    """Open ``count`` connections from 127.0.0.1 to ``port`` in another process, ``rate`` a
    second at most (so what is held does not depend on how fast this machine accepts), and hold
    them for the block; yields the most descriptors this process held until they were all open
    and ``busy()`` was false."""
    most = descriptors()
    with subprocess.Popen([sys.executable, "-c", FLOOD, "127.0.0.1", port, str(count), str(rate)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            reading = threading.Thread(target=proc.stdout.readline, daemon=True)
            reading.start()
            deadline = time.monotonic() + 60
            while (reading.is_alive() or busy()) and time.monotonic() < deadline:
                most = max(most, descriptors())
                time.sleep(0.01)
            assert not reading.is_alive(), "the flood did not finish in 60 s"
            yield most
        finally:
            proc.kill()


def test_a_connection_flood_from_a_peers_address_holds_few_descriptors_and_cuts_no_link(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A program on a peer's host (so from a peer's address: the accept filter lets it in)
    opens 4,000 connections to alpha's port, 500 a second, and holds them.
    Alpha keeps at most PENDING_CAP of them open (plus what its reader has not yet seen), and
    its established link to beta is never cut: it carries messages while the attacker still
    holds every connection."""
    cluster = make_cluster("alpha", "beta")
    alpha, alpha_inbox = cluster["alpha"]
    beta, beta_inbox = cluster["beta"]
    send_until(beta, "*", b"before", got(alpha_inbox, b"before"))
    send_until(alpha, "*", b"before", got(beta_inbox, b"before"))
    quiet = descriptors()
    with flood(alpha.endpoint.rsplit(":", 1)[1], 4000) as most:
        for n in range(3):
            send_until(beta, "*", b"during %d" % n, got(alpha_inbox, b"during %d" % n))
            send_until(alpha, "*", b"during %d" % n, got(beta_inbox, b"during %d" % n))
        most = max(most, descriptors())
    assert alpha.cut() > 2_000, alpha.cut()  # (none without the cap)
    assert alpha.replaced() == {"beta": 0} and beta.replaced() == {"alpha": 0}
    # the cap, and the connections the reader had not yet seen or libzmq not yet closed;
    # here 68 above the quiet count; 1,009 without the cap (libzmq keeps each connection for
    # the 2 s a handshake may take). The bound is a second of reader lag: a loaded machine
    # (CI) saw 567 when the flood went as fast as libzmq accepted.
    assert most - quiet <= most_held_with_a_cap(PENDING_CAP), (quiet, most)
    assert alpha.peer_states() == {"beta": "connected"}
    assert beta.peer_states() == {"alpha": "connected"}


def test_the_doorway_cuts_the_newest_connections_that_may_still_be_in_their_handshake() -> None:
    door = Doorway(cap=3, handshake_s=2.0)
    door.accepted(10, now=0.0)  # a peer, authenticated long before the flood
    assert door.excess(now=5.0) == []
    for fd in range(20, 26):
        door.accepted(fd, now=5.0 + fd / 1000)
    # beyond three pending, the newest go; the peer's old connection is not pending any more
    assert door.excess(now=5.1) == [23, 24, 25]
    assert door.pending == 3
    door.gone(21)
    door.accepted(30, now=5.2)
    assert door.excess(now=5.2) == []
    door.accepted(20, now=5.3)  # 20 closed (unseen) and the number given out again
    assert door.pending == 3
    assert door.excess(now=6.0) == []
    door.accepted(31, now=6.0)
    assert door.excess(now=6.0) == [31]
    # two seconds on, whatever is still open finished its handshake or was closed by libzmq
    assert door.excess(now=9.0) == [] and door.pending == 0


def test_cutting_a_descriptor_touches_only_a_tcp_connection_on_the_links_own_address() -> None:
    """The reader cuts by descriptor number, which libzmq may have closed and the kernel given
    to something else meanwhile: only a TCP socket on the link's address and port is cut."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    other = socket.socket()
    other.bind(("127.0.0.2", port))  # another link's address, the same port
    other.listen()
    unix_a, unix_b = socket.socketpair()  # an unnamed Unix socket: no (host, port) at all
    try:
        assert not cut_connection(unix_a.fileno(), "127.0.0.1", port)
        assert not cut_connection(other.fileno(), "127.0.0.1", port)
        assert not cut_connection(accepted.fileno(), "127.0.0.1", port + 1)
        assert not cut_connection(accepted.fileno(), "127.0.0.3", port)
        assert not cut_connection(10**6, "127.0.0.1", port)  # no such descriptor
        unix_a.sendall(b"still open")
        assert unix_b.recv(16) == b"still open"
        assert cut_connection(accepted.fileno(), "127.0.0.1", port)
        client.settimeout(5)
        assert client.recv(1) == b""  # the peer sees the connection end
    finally:
        for s in (listener, client, accepted, other, unix_a, unix_b):
            s.close()
