"""System: redundant NICs on the namespace cluster (issue 13). Every host has two NICs on the
service network (``eth0``, which is also heartbeat link ``lan0``, and the spare ``eth0b``) and
a second heartbeat link (``eth1``, ``lan1``); the group's address may use ``eth0`` then
``eth0b``. A client pings the address every 10 ms throughout and the test prints the longest
time without an answer.

Cables are pulled at the switch (the host's NIC loses its carrier, as with a real cable): the
NIC monitor hears it from the kernel, and the address moves to the other NIC of the same node
without a transition; only when no NIC of the address is left does the group move to another
node."""

from __future__ import annotations

import re
import time
from typing import Any

from tests.support.nscluster import NsCluster, nscluster_fixture
from tests.support.pinger import Pinger

cluster = nscluster_fixture(hosts=3, links=2, spare_nic=True)

VIP = "198.18.0.100"
GROUPS = f"""
[nics]
up_hold = "1s"

[groups.web]
resources = ["web-ip"]
prefer = {{ n1 = 0, n2 = 10, n3 = 20 }}

[resources.web-ip]
type = "ip"
monitor = {{ interval = "1s", timeout = "2s" }}
stop_timeout = "1s"
[resources.web-ip.params]
address = "{VIP}"
prefix = 24
nic = ["eth0", "eth0b"]
arp_count = 3
arp_interval = "100ms"
"""


def nic_of_address(c: NsCluster, host: str) -> str | None:
    """The NIC of ``host`` that carries the address, or None."""
    out = c.host(host).run(["ip", "-o", "-4", "addr", "show", "to", f"{VIP}/32"])
    fields = out.stdout.split()
    return fields[1] if out.returncode == 0 and len(fields) > 1 else None


def nic_state(c: NsCluster, host: str, nic: str) -> str | None:
    st = c.status(host)
    return None if st is None else st.get("nics", {}).get(nic, {}).get("state")


def moves_in_log(c: NsCluster, host: str) -> int:
    return len(re.findall(r"resource web-ip: move -> IN_SERVICE", c.log(host)))


def status(c: NsCluster, host: str) -> dict[str, Any]:
    st = c.status(host)
    assert st is not None, f"{host} did not answer"
    return st


def test_the_address_moves_to_the_other_nic_and_the_group_moves_only_when_none_is_left(
    cluster: NsCluster,
) -> None:
    c = cluster
    c.write_config(GROUPS)
    c.start_all()
    c.wait_for(lambda: c.holders("web") == ["n1"], 60, "web running on n1")
    c.wait_for(lambda: nic_of_address(c, "n1") == "eth0", 10, "the address on n1's eth0")
    c.wait_for(lambda: nic_state(c, "n1", "eth0b") == "up", 10, "n1's NICs watched")
    epoch = status(c, "n1")["epoch"]

    with Pinger(c.client, VIP, 0.01) as ping:
        c.wait_for(lambda: ping.answered_since(time.monotonic() - 0.5), 10,
                   "the client hearing the address")
        # 1. the cable of the NIC that carries the address
        pulled = time.monotonic()
        c.pull_cable("n1", "eth0")
        c.wait_for(lambda: nic_of_address(c, "n1") == "eth0b", 10, "the address on eth0b")
        moved = time.monotonic()
        c.wait_for(lambda: ping.answered_since(moved), 10, "answers again")
        gap = ping.longest_gap(pulled)
        print(f"\nclient's longest gap while the address moved to eth0b: {gap * 1000:.0f} ms")
        st = status(c, "n1")
        assert st["nics"]["eth0"]["state"] == "down"
        assert "carrier" in st["nics"]["eth0"]["reason"]
        # eth0 is heartbeat link lan0 too: lan1 still carries the heartbeats
        assert st["epoch"] == epoch, "losing one NIC is no transition"
        assert c.holders("web") == ["n1"]

        # 2. plugged back: believed after the hold, and the address stays (no failback)
        c.plug_cable("n1", "eth0")
        c.wait_for(lambda: nic_state(c, "n1", "eth0") == "up", 15, "eth0 up again")
        time.sleep(1.0)
        assert nic_of_address(c, "n1") == "eth0b"
        assert moves_in_log(c, "n1") == 1

        # 3. a flapping cable (the spare's, which now carries the address): one move away,
        # none while it flaps, none back (no failback)
        flap_end = time.monotonic() + 10.0
        while time.monotonic() < flap_end:
            c.pull_cable("n1", "eth0b")
            time.sleep(0.2)
            c.plug_cable("n1", "eth0b")
            time.sleep(0.2)
        time.sleep(1.0)
        assert nic_of_address(c, "n1") == "eth0"
        assert moves_in_log(c, "n1") == 2, c.log("n1")[-3000:]
        assert nic_state(c, "n1", "eth0b") == "down"  # its hold grew while it flapped
        assert status(c, "n1")["epoch"] == epoch
        flap_gap = ping.longest_gap(flap_end - 10.0)
        print(f"client's longest gap while eth0b flapped for 10 s: {flap_gap * 1000:.0f} ms")

    # 4. no NIC of the address left on n1: the group goes to n2
    c.pull_cable("n1", "eth0b")
    c.pull_cable("n1", "eth0")
    c.wait_for(lambda: c.holders("web") == ["n2"], 60, "web moved to n2")
    c.wait_for(lambda: nic_of_address(c, "n2") == "eth0", 10, "the address on n2's eth0")
    assert nic_of_address(c, "n1") is None
    st = status(c, "n2")
    assert "n1" in st["alive"], "n1 still heard on lan1: it was not lost, only its NICs"


def test_a_nic_whose_switch_port_is_dead_is_found_by_its_probes_and_left(
    cluster: NsCluster,
) -> None:
    """eth0 keeps its carrier but its switch port passes nothing: only the probes of its
    target (the client) can tell. After three unanswered rounds it is down and the address
    moves to eth0b; when the port works again, eth0 is believed after the hold."""
    c = cluster
    c.write_config(GROUPS.replace('up_hold = "1s"', f'''up_hold = "1s"
probe_interval = "100ms"
probe_failures = 3
[nics.targets]
eth0 = ["{c.client.address}"]'''))
    c.start_all()
    c.wait_for(lambda: c.holders("web") == ["n1"], 60, "web running on n1")
    c.wait_for(lambda: nic_of_address(c, "n1") == "eth0", 10, "the address on n1's eth0")
    c.wait_for(lambda: nic_state(c, "n1", "eth0") == "up", 10, "eth0 up and answered")
    epoch = status(c, "n1")["epoch"]
    c.dead_port("n1", "eth0")
    c.wait_for(lambda: nic_of_address(c, "n1") == "eth0b", 10, "the address on eth0b")
    st = status(c, "n1")
    assert st["nics"]["eth0"]["state"] == "down"
    assert st["nics"]["eth0"]["reason"] == (
        f"none of {c.client.address} answered 3 probes in a row")
    assert "carrier" not in st["nics"]["eth0"]["reason"]
    assert st["epoch"] == epoch
    c.dead_port("n1", "eth0", dead=False)
    c.wait_for(lambda: nic_state(c, "n1", "eth0") == "up", 15, "eth0 answered again")
    assert nic_of_address(c, "n1") == "eth0b"  # no failback
