"""What the NIC monitors' netlink reading (vigil/netlink.py, vigil/actors/nic.py) sees of a
veth pair made, brought up, given addresses, its peer taken down and deleted; for
tests/integration/test_netlink.py.

It must run in a network namespace of its own (``unshare -rn python -m
tests.support.netlink_driver``): it makes and deletes interfaces with ip(8). It prints one JSON
object: the facts the netlink watch delivered at each step, what current_facts() and
link_nics() said, and the links and addresses read by vigil.netlink and by pyroute2, for the
test to compare.
"""

from __future__ import annotations

import json
import queue
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vigil.actors.nic import NetlinkWatch, current_facts, link_nics
from vigil.cluster.nics import NicFacts
from vigil.config import loads
from vigil.netlink import Rtnetlink

NIC, PEER = "vgA", "vgB"
WAIT = 10.0


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def facts_json(facts: NicFacts | None) -> dict[str, Any] | None:
    if facts is None:
        return None
    return {"exists": facts.exists, "admin_up": facts.admin_up, "carrier": facts.carrier,
            "operstate": facts.operstate, "problem": facts.problem()}


def read_with_vigil() -> dict[str, Any]:
    with Rtnetlink() as rtnl:
        links = sorted([m.index, m.name, m.flags, m.carrier, m.operstate] for m in rtnl.links())
        addresses = sorted([m.index, m.family, m.address] for m in rtnl.addresses())
    return {"links": links, "addresses": addresses}


def read_with_pyroute2() -> dict[str, Any]:
    from pyroute2 import IPRoute  # the reference the reading is compared with

    with IPRoute() as ipr:
        links = sorted([m["index"], m.get_attr("IFLA_IFNAME"), m["flags"],
                        m.get_attr("IFLA_CARRIER"), m.get_attr("IFLA_OPERSTATE")]
                       for m in ipr.get_links())
        # the host's own address: IFA_LOCAL where there is one (point-to-point: IFA_ADDRESS
        # is the peer's)
        addresses = sorted([m["index"], m["family"],
                            m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")]
                           for m in ipr.get_addr())
    return {"links": links, "addresses": addresses}


def main() -> None:
    seen: queue.Queue[tuple[str, NicFacts]] = queue.Queue()
    watch = NetlinkWatch([NIC], lambda nic, facts: seen.put((nic, facts)))
    last: dict[str, NicFacts] = {}

    def until(check: Callable[[NicFacts], bool]) -> dict[str, Any] | None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            facts = last.get(NIC)
            if facts is not None and check(facts):
                return facts_json(facts)
            try:
                nic, facts = seen.get(timeout=0.1)
            except queue.Empty:
                continue
            last[nic] = facts
        return None  # never delivered

    out: dict[str, Any] = {}
    watch.start()
    try:
        out["before"] = until(lambda f: True)
        ip("link", "add", NIC, "type", "veth", "peer", "name", PEER)
        out["added"] = until(lambda f: f.exists)
        ip("link", "set", NIC, "up")
        out["up, peer down"] = until(lambda f: f.admin_up and f.operstate == "LOWERLAYERDOWN")
        ip("link", "set", PEER, "up")
        out["both up"] = until(lambda f: f.carrier and f.operstate == "UP")
        ip("address", "add", "198.18.7.1/24", "dev", NIC)
        ip("address", "add", "2001:db8:7::1/64", "dev", NIC, "nodad")
        ip("address", "add", "198.18.9.1", "peer", "198.18.9.2", "dev", NIC)
        out["current"] = facts_json(current_facts(NIC))
        out["current, no such NIC"] = facts_json(current_facts("vgNone"))
        cfg = loads("""
            [cluster]
            name = "t"
            key_file = "cluster.key"
            [nodes.n1]
            links = [{name = "lan", address = "198.18.7.1", port = 7401},
                     {name = "lan6", address = "2001:db8:7::1", port = 7402},
                     {name = "far", address = "198.18.8.1", port = 7403},
                     {name = "ptp", address = "198.18.9.1", port = 7404}]
            [nodes.n2]
            links = [{name = "lan", address = "198.18.7.2", port = 7401},
                     {name = "lan6", address = "2001:db8:7::2", port = 7402},
                     {name = "far", address = "198.18.8.2", port = 7403},
                     {name = "ptp", address = "198.18.9.2", port = 7404}]
        """, Path("/nonexistent/cluster.toml"))
        out["link_nics"] = link_nics(cfg, "n1")
        out["vigil"] = read_with_vigil()
        out["pyroute2"] = read_with_pyroute2()
        ip("link", "set", PEER, "down")
        out["peer down again"] = until(lambda f: not f.carrier)
        ip("link", "del", NIC)
        out["deleted"] = until(lambda f: not f.exists)
    finally:
        watch.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
