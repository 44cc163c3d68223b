"""The in-memory network: PUB/SUB routing and the faults a test can inject."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from vigil.transports import Link, MemoryLink, MemoryNetwork

WAIT_S = 5.0


class Inbox:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[bytes], float, str]] = []
        self.before: Callable[[str, list[bytes]], None] | None = None
        self._cond = threading.Condition()

    def __call__(self, link: str, frames: list[bytes]) -> None:
        if self.before is not None:
            self.before(link, frames)
        with self._cond:
            self.received.append(
                (link, frames, time.monotonic(), threading.current_thread().name)
            )
            self._cond.notify_all()

    def payloads(self) -> list[bytes]:
        with self._cond:
            return [frames[1] for _link, frames, _at, _thread in self.received]

    def wait_count(self, count: int, timeout: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.received) >= count, timeout)


def frames(dest: str, payload: bytes) -> list[bytes]:
    return [dest.encode() + b"\x00", payload]


@pytest.fixture
def network() -> Iterator[MemoryNetwork]:
    net = MemoryNetwork()
    yield net
    net.close()


Nodes = dict[str, tuple[MemoryLink, Inbox]]


def attach(net: MemoryNetwork, *names: str, link: str = "lan") -> Nodes:
    nodes: Nodes = {}
    for name in names:
        inbox = Inbox()
        end = net.endpoint(name, link, inbox)
        end.start()
        nodes[name] = (end, inbox)
    return nodes


def settle(net: MemoryNetwork) -> None:
    assert net.wait_idle(WAIT_S), "the memory network did not go idle"


def test_memory_link_satisfies_the_link_protocol(network: MemoryNetwork) -> None:
    end, _ = attach(network, "alpha")["alpha"]
    assert isinstance(end, Link)
    assert end.name == "lan"


def test_broadcast_reaches_every_other_node_on_the_link(network: MemoryNetwork) -> None:
    nodes = attach(network, "alpha", "beta", "gamma")
    _other_net, other_inbox = attach(network, "beta", link="wan")["beta"]
    nodes["alpha"][0].send(frames("*", b"hello"))
    settle(network)
    assert nodes["beta"][1].payloads() == [b"hello"]
    assert nodes["gamma"][1].payloads() == [b"hello"]
    assert nodes["alpha"][1].payloads() == []
    assert other_inbox.payloads() == []
    assert nodes["beta"][1].received[0][0] == "lan"


def test_delivery_never_runs_on_the_senders_thread(network: MemoryNetwork) -> None:
    nodes = attach(network, "alpha", "beta")
    nodes["alpha"][0].send(frames("*", b"x"))
    settle(network)
    assert nodes["beta"][1].received[0][3] != threading.current_thread().name


def test_addressed_message_reaches_only_its_node(network: MemoryNetwork) -> None:
    nodes = attach(network, "alpha", "alphabet", "beta")
    nodes["beta"][0].send(frames("alpha", b"for-alpha"))
    settle(network)
    assert nodes["alpha"][1].payloads() == [b"for-alpha"]
    assert nodes["alphabet"][1].payloads() == []


def test_partition_separates_groups_until_healed(network: MemoryNetwork) -> None:
    nodes = attach(network, "alpha", "beta", "gamma")
    network.partition({"alpha", "beta"}, ["gamma"])
    nodes["alpha"][0].send(frames("*", b"split"))
    nodes["gamma"][0].send(frames("*", b"alone"))
    settle(network)
    assert nodes["beta"][1].payloads() == [b"split"]
    assert nodes["gamma"][1].payloads() == []
    assert nodes["alpha"][1].payloads() == []
    network.heal()
    nodes["gamma"][0].send(frames("*", b"healed"))
    settle(network)
    assert nodes["alpha"][1].payloads() == [b"healed"]
    assert network.counters["partitioned"] == 3


def test_nodes_named_in_no_group_form_a_group_of_their_own(network: MemoryNetwork) -> None:
    nodes = attach(network, "alpha", "beta", "gamma")
    network.partition(["alpha"])
    nodes["beta"][0].send(frames("*", b"rest"))
    settle(network)
    assert nodes["gamma"][1].payloads() == [b"rest"]
    assert nodes["alpha"][1].payloads() == []


def test_node_in_two_groups_is_refused(network: MemoryNetwork) -> None:
    with pytest.raises(ValueError, match="more than one"):
        network.partition(["alpha", "beta"], ["beta"])


def test_block_is_one_way(network: MemoryNetwork) -> None:
    nodes = attach(network, "alpha", "beta")
    network.block("alpha", "beta")
    nodes["alpha"][0].send(frames("*", b"lost"))
    nodes["beta"][0].send(frames("*", b"heard"))
    settle(network)
    assert nodes["beta"][1].payloads() == []
    assert nodes["alpha"][1].payloads() == [b"heard"]
    network.unblock("alpha", "beta")
    nodes["alpha"][0].send(frames("*", b"again"))
    settle(network)
    assert nodes["beta"][1].payloads() == [b"again"]


def test_block_on_one_link_leaves_the_other(network: MemoryNetwork) -> None:
    lan = attach(network, "alpha", "beta", link="lan")
    wan = attach(network, "alpha", "beta", link="wan")
    network.block("alpha", "beta", link="lan")
    lan["alpha"][0].send(frames("*", b"lan"))
    wan["alpha"][0].send(frames("*", b"wan"))
    settle(network)
    assert lan["beta"][1].payloads() == []
    assert wan["beta"][1].payloads() == [b"wan"]


def test_cut_link_stops_traffic_both_ways_on_that_link_only(network: MemoryNetwork) -> None:
    lan = attach(network, "alpha", "beta", "gamma", link="lan")
    wan = attach(network, "alpha", "beta", link="wan")
    network.cut_link("alpha", "lan")
    lan["alpha"][0].send(frames("*", b"out"))
    lan["beta"][0].send(frames("*", b"in"))
    wan["beta"][0].send(frames("*", b"wan"))
    settle(network)
    assert lan["alpha"][1].payloads() == []
    assert lan["gamma"][1].payloads() == [b"in"]
    assert lan["beta"][1].payloads() == []
    assert wan["alpha"][1].payloads() == [b"wan"]
    network.restore_link("alpha", "lan")
    lan["alpha"][0].send(frames("*", b"back"))
    settle(network)
    assert lan["beta"][1].payloads() == [b"back"]


def delivered_with_loss(seed: int) -> list[bytes]:
    net = MemoryNetwork()
    try:
        nodes = attach(net, "alpha", "beta")
        net.set_loss(0.5, seed=seed)
        for index in range(200):
            nodes["alpha"][0].send(frames("*", str(index).encode()))
        settle(net)
        return nodes["beta"][1].payloads()
    finally:
        net.close()


def test_loss_with_a_seed_is_repeatable() -> None:
    first = delivered_with_loss(seed=7)
    assert 60 < len(first) < 140
    assert delivered_with_loss(seed=7) == first
    assert delivered_with_loss(seed=8) != first


def test_loss_probability_must_be_a_probability(network: MemoryNetwork) -> None:
    with pytest.raises(ValueError):
        network.set_loss(1.5)


def test_fixed_delay_holds_messages_back_and_keeps_order(network: MemoryNetwork) -> None:
    nodes = attach(network, "alpha", "beta")
    network.set_delay(0.2)
    sent_at = time.monotonic()
    for index in range(5):
        nodes["alpha"][0].send(frames("*", bytes([index])))
    assert nodes["beta"][1].wait_count(5)
    inbox = nodes["beta"][1]
    assert inbox.payloads() == [bytes([index]) for index in range(5)]
    assert all(at - sent_at >= 0.2 for _link, _frames, at, _thread in inbox.received)


def test_delay_can_reorder_by_due_time(network: MemoryNetwork) -> None:
    nodes = attach(network, "alpha", "beta")
    network.set_delay(0.3)
    nodes["alpha"][0].send(frames("*", b"slow"))
    network.set_delay(0.0)
    nodes["alpha"][0].send(frames("*", b"fast"))
    assert nodes["beta"][1].wait_count(2)
    assert nodes["beta"][1].payloads() == [b"fast", b"slow"]


def test_random_delay_is_within_bounds(network: MemoryNetwork) -> None:
    nodes = attach(network, "alpha", "beta")
    network.set_delay(0.05, 0.15)
    sent_at = time.monotonic()
    for index in range(20):
        nodes["alpha"][0].send(frames("*", bytes([index])))
    assert nodes["beta"][1].wait_count(20)
    delays = [at - sent_at for _link, _frames, at, _thread in nodes["beta"][1].received]
    assert min(delays) >= 0.05
    assert max(delays) < 0.15 + 1.0  # generous: a loaded test machine


def test_link_that_is_not_started_hears_nothing(network: MemoryNetwork) -> None:
    nodes = attach(network, "alpha")
    idle_inbox = Inbox()
    network.endpoint("beta", "lan", idle_inbox)
    nodes["alpha"][0].send(frames("*", b"early"))
    settle(network)
    assert idle_inbox.payloads() == []
    assert network.counters["not-listening"] == 1


def test_a_restarted_node_gets_a_new_endpoint(network: MemoryNetwork) -> None:
    nodes = attach(network, "alpha", "beta")
    with pytest.raises(ValueError, match="already has"):
        network.endpoint("beta", "lan", Inbox())
    nodes["beta"][0].close()
    nodes["beta"][0].close()
    reborn = attach(network, "beta")["beta"]
    nodes["alpha"][0].send(frames("*", b"welcome back"))
    settle(network)
    assert reborn[1].payloads() == [b"welcome back"]
    assert nodes["beta"][1].payloads() == []


def test_handler_exception_does_not_stop_delivery(network: MemoryNetwork) -> None:
    nodes = attach(network, "alpha", "beta")

    def explode(_link: str, frames: list[bytes]) -> None:
        if frames[1] == b"boom":
            raise RuntimeError("handler bug")

    nodes["beta"][1].before = explode
    nodes["alpha"][0].send(frames("*", b"boom"))
    nodes["alpha"][0].send(frames("*", b"after"))
    settle(network)
    assert nodes["beta"][1].payloads() == [b"after"]


def test_handler_may_send_and_close_from_the_delivery_thread(network: MemoryNetwork) -> None:
    nodes = attach(network, "alpha", "beta")

    def answer(_link: str, frames: list[bytes]) -> None:
        if frames[1] == b"ping":
            nodes["beta"][0].send(frames_for_alpha)
            network.close()

    frames_for_alpha = frames("alpha", b"pong")
    nodes["beta"][1].before = answer
    nodes["alpha"][0].send(frames("*", b"ping"))
    assert nodes["beta"][1].wait_count(1)
    network._thread.join(WAIT_S)
    assert not network._thread.is_alive()


def test_close_is_prompt_and_idempotent() -> None:
    net = MemoryNetwork()
    nodes = attach(net, "alpha", "beta")
    net.set_delay(10.0)
    nodes["alpha"][0].send(frames("*", b"never"))
    started = time.monotonic()
    net.close()
    net.close()
    assert time.monotonic() - started < 1.0
    assert not net._thread.is_alive()
    nodes["alpha"][0].send(frames("*", b"after close"))
    with pytest.raises(RuntimeError):
        net.endpoint("gamma", "lan", Inbox())
