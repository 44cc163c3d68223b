"""Heartbeat links as the status shows them: each peer on each link, this node's own links,
the line an operator reads, /ha, and the core's rule that one lost link is news, never a
transition (a peer is alive while any link hears it).

The cluster stories run in the simulation with two links per node: a message crosses every
link whose cables are in at both ends; the first copy is delivered, each later one is the
duplicate a node's codec drops and its link reports (``CopyReceived``).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from typing import Any

from tests.support.simconfig import sim_config
from vigil.cli.main import format_status
from vigil.cluster.events import CopyReceived, Event, Output, Received
from vigil.cluster.sim import SimCluster, SimNode
from vigil.cluster.view import LinkFacts, ResourceFacts, build_status, own_link_state
from vigil.config import ClusterConfig, LinkConfig
from vigil.ha.fs import build_tree
from vigil.notifications import LinkDown, LinkUp, Notification
from vigil.status import ClusterStatus, PeerLink

LINKS = ("lan0", "lan1")


def two_links(config: ClusterConfig) -> ClusterConfig:
    nodes = {n: dataclasses.replace(c, links=tuple(
        LinkConfig(link, f"10.0.{k}.{i + 1}", 7400) for k, link in enumerate(LINKS)))
        for i, (n, c) in enumerate(sorted(config.nodes.items()))}
    return dataclasses.replace(config, nodes=nodes)


class Cabled(SimCluster):
    """A simulated cluster whose nodes have two links each, with cables to pull."""

    def __init__(self, config: ClusterConfig, **kwargs: Any) -> None:
        self.unplugged: set[tuple[str, str]] = set()  # (node, link)
        self.notes: list[tuple[float, str, Notification]] = []  # (time, node, what)
        super().__init__(two_links(config), **kwargs)

    def unplug(self, node: str, *links: str) -> None:
        self.unplugged |= {(node, link) for link in links}

    def plug(self, node: str, *links: str) -> None:
        self.unplugged -= {(node, link) for link in links}

    def _deliver(self, name: str, event: Event) -> None:
        if not isinstance(event, Received) or event.msg.sender == name:
            super()._deliver(name, event)
            return
        sender = event.msg.sender
        up = [link for link in LINKS
              if (sender, link) not in self.unplugged and (name, link) not in self.unplugged]
        if not up:
            return  # no cable carries it
        super()._deliver(name, Received(event.msg, up[0]))
        for link in up[1:]:
            super()._deliver(name, CopyReceived(sender, link))

    def _apply(self, node: SimNode, out: Output) -> None:
        self.notes += [(self.now, node.name, n) for n in out.notifications]
        super()._apply(node, out)

    def link_notes(self, since: float) -> set[tuple[str, str, str, str]]:
        """(node, kind, member, link) of the link notifications since ``since``."""
        return {(node, n.kind, n.member, n.link) for t, node, n in self.notes
                if t >= since and isinstance(n, LinkUp | LinkDown)}

    def epochs(self) -> dict[str, tuple[int, str]]:
        """The epoch each live node promised."""
        return {n: node.core.promised for n, node in self.nodes.items() if node.core is not None}

    def status(self, node: str) -> ClusterStatus:
        core = self.nodes[node].core
        assert core is not None
        # every link bound, as a running daemon's links are
        return build_status(core, ResourceFacts(links={link: LinkFacts(link) for link in LINKS}))


def formed() -> Cabled:
    c = Cabled(sim_config(3, 2, group_chain=False), rng=random.Random(3))
    c.run_for(3.0)
    assert c.settled(), c.describe()
    return c


def test_one_lost_link_is_news_and_a_status_line_never_a_transition() -> None:
    c = formed()
    epochs = c.epochs()
    where = c.placement()
    assert all(v for v in where.values())
    for n in c.nodes:  # every link carries every peer, the slower copy included
        st = c.status(n)
        assert all(v.links == dict.fromkeys(LINKS, True) for v in st.nodes.values())
        assert st.links_down() == ""

    t = c.now
    c.unplug("gamma", "lan1")
    c.run_for(5.0)  # ten dead_times
    assert c.epochs() == epochs
    assert c.placement() == where
    assert c.link_notes(t) == {
        ("alpha", "link_down", "gamma", "lan1"), ("beta", "link_down", "gamma", "lan1"),
        ("gamma", "link_down", "alpha", "lan1"), ("gamma", "link_down", "beta", "lan1")}
    alpha, gamma = c.status("alpha"), c.status("gamma")
    assert alpha.nodes["gamma"].state == "online"
    assert alpha.nodes["gamma"].links == {"lan0": True, "lan1": False}
    assert alpha.nodes["beta"].links == {"lan0": True, "lan1": True}
    assert alpha.nodes["alpha"].links == {"lan0": True, "lan1": True}  # it hears beta on both
    assert alpha.links_down() == "lan1 (alpha-gamma)"
    # gamma itself: it hears everyone on lan0 and no one on lan1, so lan1 is its own fault
    assert gamma.nodes["gamma"].links == {"lan0": True, "lan1": False}
    assert gamma.links["lan1"].why == "no peer heard on it, while heard on lan0"
    assert gamma.links_down() == "lan1 on gamma, this node (gamma-alpha, gamma-beta)"
    assert 2.5 < (gamma.links["lan1"].peers["alpha"].heard_ago or 0) < 5.5
    assert "Links down: lan1 (alpha-gamma)" in format_status(alpha)

    t = c.now
    c.plug("gamma", "lan1")
    c.run_for(1.0)
    assert c.link_notes(t) == {
        ("alpha", "link_up", "gamma", "lan1"), ("beta", "link_up", "gamma", "lan1"),
        ("gamma", "link_up", "alpha", "lan1"), ("gamma", "link_up", "beta", "lan1")}
    assert all(c.status(n).links_down() == "" for n in c.nodes)
    assert c.epochs() == epochs

    # both cables out: gamma is lost to the others, who take over what it ran
    c.unplug("gamma", *LINKS)
    c.run_for(6.0)
    moved = c.placement()
    assert all(nodes and "gamma" not in nodes for nodes in moved.values()), c.describe()
    assert c.status("alpha").nodes["gamma"].state == "offline"
    assert c.epochs()["alpha"] != epochs["alpha"]
    # and alpha does not list the links of a node it lost: it is offline, that says it all
    assert c.status("alpha").links_down() == ""


# ---- this node's own links ------------------------------------------------------------------


def peer(up: bool) -> PeerLink:
    return PeerLink(up=up, heard_ago=0.1 if up else 9.0, connection="connected")


def test_an_own_link_is_up_while_a_peer_is_heard_on_it() -> None:
    assert own_link_state({"b": peer(False), "c": peer(True)}, ["lan0"], bound=True) == (
        True, "c heard on it")


def test_an_own_link_that_hears_no_one_while_another_link_does_is_down() -> None:
    assert own_link_state({"b": peer(False)}, ["lan0"], bound=True) == (
        False, "no peer heard on it, while heard on lan0")


def test_with_no_peer_heard_anywhere_an_own_link_is_up_when_bound() -> None:
    assert own_link_state({"b": peer(False)}, [], bound=True) == (
        True, "bound; no peer is heard on any link")
    assert own_link_state({}, [], bound=True) == (True, "bound (no peer on this link)")
    up, why = own_link_state({}, [], bound=False)
    assert not up and why.startswith("its socket is not bound")


def test_a_nic_that_is_down_takes_the_link_down_whatever_is_heard() -> None:
    assert own_link_state({"c": peer(True)}, [], bound=True, nic_down="eth1: no carrier") == (
        False, "eth1: no carrier")


def test_a_single_node_cluster_shows_its_bound_links_up() -> None:
    c = SimCluster(sim_config(1, 1), rng=random.Random(1))
    c.run_for(1.0)
    core = c.nodes["alpha"].core
    assert core is not None
    st = build_status(core, ResourceFacts(links={"lan0": LinkFacts("lan0")}))
    assert st.nodes["alpha"].links == {"lan0": True}
    assert st.links["lan0"].why == "bound (no peer on this link)"
    carrier = build_status(core, ResourceFacts(links={"lan0": LinkFacts("lan0")},
                                               nic_down={"lan0": "its NIC eth0 is down"}))
    assert carrier.links_down() == "lan0 on alpha, this node"
    assert carrier.links["lan0"].why == "its NIC eth0 is down"
    unbound = build_status(core)  # no word from the link yet
    assert unbound.nodes["alpha"].links == {"lan0": False}
    assert unbound.links_down() == "lan0 on alpha, this node"


# ---- what the links said, as the status tree, the text and /ha show it ----------------------


def facts_status() -> ClusterStatus:
    c = formed()
    c.unplug("gamma", "lan1")
    c.run_for(2.0)
    core = c.nodes["alpha"].core
    assert core is not None
    facts = {"lan0": LinkFacts("lan0", {"beta": "connected", "gamma": "connected"}),
             "lan1": LinkFacts("lan1", {"beta": "connected", "gamma": "waiting"},
                               {"unauthenticated": 4, "duplicate": 700}, cut=12)}
    return build_status(core, ResourceFacts(links=facts))


def test_the_links_read_back_from_json_and_an_older_status_without_them_still_reads() -> None:
    st = facts_status()
    wire = json.loads(json.dumps(st.to_json()))
    assert wire["links"]["lan1"]["peers"]["gamma"]["connection"] == "waiting"
    assert wire["links"]["lan1"]["rejected"] == {"duplicate": 700, "unauthenticated": 4}
    assert ClusterStatus.from_json(wire) == st
    del wire["links"]
    assert ClusterStatus.from_json(wire).links == {}


def test_the_text_names_the_links_down_each_peer_and_the_trouble_on_each_link() -> None:
    text = format_status(facts_status()).splitlines()
    assert "Links down: lan1 (alpha-gamma)" in text
    assert "  * gamma        online links down: lan1" in text
    assert any(line.startswith("  * lan0         up    beta 0.") and "connected" in line
               for line in text)
    lan1 = next(i for i, line in enumerate(text) if line.startswith("  * lan1 "))
    assert re.search(r"beta 0\.\ds connected, gamma DOWN [12]\.\ds waiting$", text[lan1])
    # copies of what came over lan0 first are normal: not listed as trouble
    assert text[lan1 + 1] == ("      messages dropped: unauthenticated 4; connections cut: 12 "
                              "(too many not yet authenticated)")


def test_ha_shows_each_link_and_each_peer_on_it() -> None:
    tree = build_tree(facts_status())

    def read(path: str) -> str:
        return tree[path].content.decode()

    assert read("/cluster/links_down") == "lan1 (alpha-gamma)\n"
    assert read("/links/lan1/state") == "up\n"
    assert read("/links/lan1/cut") == "12\n"
    assert read("/links/lan1/rejected") == "duplicate 700\nunauthenticated 4\n"
    assert tree["/links/lan1/peers"].children == ("beta", "gamma")
    assert read("/links/lan1/peers/gamma/state") == "down\n"
    assert read("/links/lan1/peers/gamma/connection") == "waiting\n"
    assert 1.5 < float(read("/links/lan1/peers/gamma/heard_ago")) < 2.5
    assert read("/nodes/gamma/links/lan1") == "down\n"
