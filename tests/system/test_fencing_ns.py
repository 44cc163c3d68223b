"""System: power fencing on the namespace cluster (tests/support/nscluster.py), through
``fence_vigil_ns``, which powers a namespace host off as the harness does (links down,
every process killed). A holder whose stop hangs is powered off by the master and its group
starts elsewhere, but not before: while the fence device fails, the group stays stopped,
and the next pass after the device works again fences the holder. A holder cut off from
the others is powered off before its group starts on a survivor. Two nodes cut apart on every
link shoot each other, the holder first (``priority_delay``): the other is powered off and
the group never runs on both, as sampled from outside every 10 ms.

The device is ``fence_vigil_ns`` behind a small wrapper that fails (as fence-agents fail: an
``ERROR:`` line, exit 1) while the file ``broken`` exists in the cluster's directory.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.nscluster import NsCluster, nscluster_factory, nscluster_fixture
from tests.support.nssample import ADDRESS, SERVER, OutsideSampler, overlaps, web_group

cluster = nscluster_fixture(hosts=3)
make_cluster = nscluster_factory()

VIP = "198.18.0.100"
MARKER = "served by vigil, fenced when it must be"


def fence_wrapper(c: NsCluster) -> Path:
    """fence_vigil_ns, failing while ``<tmp>/broken`` exists."""
    agent = Path(sys.executable).parent / "fence_vigil_ns"
    path = c.tmp / "fence_flaky"
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ -e {c.tmp}/broken ]; then
            cat > /dev/null
            echo "ERROR: Failed: Unable to connect/login to fencing device (test)" >&2
            exit 1
        fi
        exec {agent}
        """))
    path.chmod(0o755)
    return path


def ns_device(c: NsCluster, agent: str | Path, fencing: str = "") -> str:
    """The fence device ``ns`` (``agent``: fence_vigil_ns, or a wrapper of it) that fences
    every host, and the ``[fencing]`` table, with ``fencing``'s lines too."""
    plugs = ", ".join(f'{n} = "{h.netns}"' for n, h in c.hosts.items())
    return f"""
[fence_devices.ns]
agent = "{agent}"
hosts = [{", ".join(f'"{n}"' for n in c.hosts)}]
plugs = {{ {plugs} }}
host_argument = "plug"
params = {{ power_timeout = 10 }}
timeout = "30s"
retries = 0
monitor_interval = "2s"

[fencing]
retry_interval = "2s"
{fencing}"""


def start(c: NsCluster, *, order: list[str], hung_stop: bool) -> None:
    """The group ``web``: an address, a state file whose stop hangs (``hung_stop``: longer
    than its stop_timeout, so the stop fails and the group is unclean where it ran), and a web
    server; the hosts of ``order`` preferred in that order. Fencer ``devices``: one device
    fences every host."""
    www = c.tmp / "www"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text(MARKER)
    server = f"{sys.executable} -m http.server 8080 --bind 0.0.0.0 --directory {www}"
    prefer = ", ".join(f"{n} = {10 * i}" for i, n in enumerate(order))
    stop_delay = "30s" if hung_stop else "0s"
    c.write_config(f"""
[groups.web]
resources = ["web-ip", "web-state", "web-app"]
prefer = {{ {prefer} }}

[resources.web-ip]
type = "ip"
params = {{ address = "{VIP}", prefix = 24, nic = "eth0", arp_count = 2, arp_interval = "100ms" }}
monitor = {{ interval = "1s", timeout = "2s" }}
stop_timeout = "1s"

[resources.web-state]
type = "dummy"
depends_on = ["web-ip"]
params = {{ state_dir = "/run/resource-agents", stop_delay = "{stop_delay}" }}
stop_timeout = "2s"

[resources.web-app]
type = "application"
depends_on = ["web-state"]
params = {{ start = "{server}" }}
start_timeout = "10s"
stop_timeout = "2s"
""" + ns_device(c, fence_wrapper(c)), cluster_extra='fencer = "devices"')
    if order[0] == "n1":
        c.start_all()
        return
    # The first transition places web on the most preferred node it hears, and the group
    # then stays (stickiness): n1, which leads (the lowest name), must not form the cluster
    # before it hears order[0] (a connection set up a moment late placed web elsewhere once).
    # So the others form it first, with web on order[0], and n1 joins them.
    for name in order:
        if name != "n1":
            c.start(name)
    c.wait_for(lambda: c.holders("web") == [order[0]], 30, f"web on {order[0]}")
    c.start("n1")


def status(c: NsCluster, via: str) -> dict[str, Any]:
    st = c.status(via)
    assert st is not None, f"no status from {via}"
    return st


def device_state(c: NsCluster, via: str) -> str:
    """The state of the device ``ns`` as ``via``'s last monitor found it, or ""."""
    st = c.status(via)
    return "" if st is None else str(st["fencing"]["devices"]["ns"]["state"])


def waits_for_fencing(c: NsCluster, via: str, target: str) -> str:
    """What ``via`` (the master) says the fencing of ``target`` waits for, or ""."""
    st = c.status(via)
    return "" if st is None else str(st["fencing"]["pending"].get(target, ""))


def test_a_hung_stop_powers_the_holder_off_once_the_device_works(cluster: NsCluster) -> None:
    c = cluster
    start(c, order=["n2", "n3", "n1"], hung_stop=True)
    c.wait_for(lambda: c.holders("web") == ["n2"], 30, "web on n2")
    assert c.wait_for(lambda: c.client.http_get(f"http://{VIP}:8080/"), 10,
                      "the page through the address") == MARKER
    c.wait_for(lambda: device_state(c, "n1") == "ok", 10,
               "the device's monitor to find it working")

    (c.tmp / "broken").touch()
    move = c.vigil("n1", "group", "move", "web", "n3", "-c", str(c.config))
    assert move.returncode == 0, move.stderr
    c.wait_for(lambda: c.active("web").get("n2") == "unclean", 20,
               "the stop of web-state to hang and fail on n2")
    # n1, the master, tries the device, which fails: web starts nowhere, n2 keeps its address
    wait = c.wait_for(lambda: "failed" in waits_for_fencing(c, "n1", "n2")
                      and waits_for_fencing(c, "n1", "n2"), 20, "a failed fencing pass")
    assert "level 1 (ns) failed: " in wait and "Unable to connect/login" in wait
    assert "`vigil node confirm-off n2`" in wait
    c.wait_for(lambda: device_state(c, "n1") == "failed", 10,
               "the device's monitor to find it broken")
    until = time.monotonic() + 3.0  # more than one retry_interval: still nowhere else
    while time.monotonic() < until:
        assert c.active("web") == {"n2": "unclean"}
        assert status(c, "n1")["groups"]["web"]["placed"] == "n2"
        time.sleep(0.2)
    assert c.hosts["n2"].daemon_running

    # the device works again: the next pass powers n2 off, and only then web starts on n3
    (c.tmp / "broken").unlink()
    # the move to n3 was one transition's request, and that transition could not stop web
    # on n2: once n2 is off, web starts on whichever survivor is cheapest
    c.wait_for(lambda: c.holders("web") in (["n1"], ["n3"]), 30,
               "web on a survivor after n2 was fenced",
               check_daemons=False)
    survivor = c.holders("web")
    n2 = c.hosts["n2"]
    assert n2.daemon is not None and n2.daemon.poll() is not None, "n2 still runs its daemon"
    assert n2.pids() == [], "processes of n2 survived its fencing"
    c.power_off("n2")  # the harness learns what the fence did
    assert c.wait_for(lambda: c.client.http_get(f"http://{VIP}:8080/"), 10,
                      "the page from the survivor", check_daemons=False) == MARKER
    history = status(c, "n1")["fencing"]["history"]
    results = [(e["requester"], e["target"], e["level"], e["devices"], e["result"])
               for e in history]
    assert results[-1] == ("n1", "n2", 1, ["ns"], "off"), results
    assert ("n1", "n2", 1, ["ns"], "failed") in results

    # n2 boots again and rejoins; web stays where it is
    c.power_on("n2")
    c.wait_for(lambda: all(st is not None and st["nodes"]["n2"]["state"] == "online"
                           for st in c.statuses().values()), 30, "n2 back online")
    assert c.holders("web") == survivor


def test_a_holder_cut_off_is_powered_off_before_its_group_starts_elsewhere(
        cluster: NsCluster) -> None:
    c = cluster
    start(c, order=["n1", "n2", "n3"], hung_stop=False)
    c.wait_for(lambda: c.holders("web") == ["n1"], 30, "web on n1")
    c.cut_link("n1", "lan0")  # n1 runs on, alone: the others must power it off
    c.wait_for(lambda: c.holders("web") == ["n2"], 30, "web on n2 after n1 was fenced",
               check_daemons=False)
    n1 = c.hosts["n1"]
    assert n1.daemon is not None and n1.daemon.poll() is not None, "n1 still runs its daemon"
    assert n1.pids() == []
    c.power_off("n1")  # the harness learns what the fence did
    history = status(c, "n2")["fencing"]["history"]
    assert [(e["requester"], e["target"], e["result"]) for e in history] == [
        ("n2", "n1", "off")]
    assert history[0]["duration"] > 0
    assert c.wait_for(lambda: c.client.http_get(f"http://{VIP}:8080/"), 10,
                      "the page from n2", check_daemons=False) == MARKER


SPLIT_MARKER = "vigil-two-node-split-test-server"


def test_two_nodes_cut_apart_on_every_link_the_holder_powers_the_other_off_first(
        make_cluster: Callable[..., NsCluster]) -> None:
    c = make_cluster(hosts=2, links=2)
    c.write_config(web_group(VIP, SPLIT_MARKER, ("n1", "n2")) + ns_device(
        c, "fence_vigil_ns", 'delay_max = "1s"\npriority_delay = "5s"\n'),
        cluster_extra='fencer = "devices"')
    c.start_all()
    c.wait_for(lambda: c.holders("web") == ["n1"], 30, "web on n1")
    c.wait_for(lambda: all(st is not None and len(st["members"]) == 2
                           for st in c.statuses().values()), 30, "both nodes members")
    c.wait_for(lambda: device_state(c, "n1") == "ok" and device_state(c, "n2") == "ok", 10,
               "the device's monitors to find it working")
    sampler = OutsideSampler(c, VIP, SPLIT_MARKER)
    try:
        sampler.wait_until(c, {"n1": (True, True, False), "n2": (False, False, False)})
        cut = time.monotonic()
        # every link between them fails, their NICs stay up (as when a switch fails): had
        # n1's cables been pulled, its address would have failed there, a fault of its own
        c.partition(["n1"], ["n2"])
        # each side fences the other after up to delay_max; n2, running nothing, waits
        # priority_delay more
        off = c.wait_for(lambda: [n for n, h in c.hosts.items() if not h.pids()], 60,
                         "one of the two powered off", check_daemons=False)
        assert off == ["n2"], f"{off} powered off, not n2 (n1 ran web: it shoots first)"
        # n2 is gone before the agent reports: it kills, then looks into n2 (an `ip` in n2's
        # namespace) until it sees no life, so the harness must not power n2 off (killing
        # whatever is in n2's namespace, that `ip` too) before the agent is done
        history = c.wait_for(lambda: status(c, "n1")["fencing"]["history"], 20,
                             "n1's fencing of n2 in its history", check_daemons=False)
        if [(e["requester"], e["target"], e["result"]) for e in history] != [
                ("n1", "n2", "off")]:
            told = [line for line in c.log_path("n1").read_text(errors="replace").splitlines()
                    if "fenc" in line.lower()]
            raise AssertionError(f"n1's fencing history: {json.dumps(history)}\nn1's log on "
                                 "fencing:\n" + "\n".join(told[-40:]))
        c.power_off("n2")  # the harness learns what the fence did
        assert c.holders("web") == ["n1"]
        time.sleep(2.0)  # n1 runs on alone
        assert c.holders("web") == ["n1"] and c.hosts["n1"].daemon_running
    finally:
        lines = sampler.stop()
    for which, what in ((ADDRESS, "the address"), (SERVER, "the server")):
        assert overlaps(lines, which) == [], f"both hosts had {what} at once: {lines}"
    assert lines["n2"].intervals(ADDRESS) == [] and lines["n2"].intervals(SERVER) == []
    assert [end for _, end in lines["n1"].intervals(ADDRESS)] == [float("inf")], lines["n1"]
    assert [end for _, end in lines["n1"].intervals(SERVER)] == [float("inf")], lines["n1"]
    print(f"\nn1 and n2 cut apart at {cut:.3f}: n2 powered off by n1 after "
          f"{history[0]['duration']:.2f}s of fencing; {sampler.summary()}")
