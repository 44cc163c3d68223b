"""System: three hosts made of network namespaces on a bridged switch (tests/nscluster.py), each
running a real `vigil node run`; an outside client fetches the service over the network, hosts
lose power, cables and half the network."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.nscluster import NsCluster, nscluster_fixture, require_nscluster
from vigil.api import LinkDown, LinkUp, subscribe
from vigil.resources.btrfs import btrfs_available
from vigil.resources.proc import pid_alive

cluster = nscluster_fixture(hosts=3)
cluster2 = nscluster_fixture(hosts=3, links=2)

MARKER = "served by vigil in a namespace"


def start_web(c: NsCluster) -> None:
    """The group of the tests: a dummy (its state on the host's private /run, like OCF's
    Dummy) and a web server on port 8080 of every address of the host it runs on."""
    www = c.tmp / "www"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text(MARKER)
    start = f"{sys.executable} -m http.server 8080 --bind 0.0.0.0 --directory {www}"
    fetch = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/', timeout=1)"
    health = f'["{sys.executable}", "-c", "{fetch}"]'
    c.write_config(f"""
[groups.web]
resources = ["web-state", "web-app"]
prefer = {{ n1 = 0, n2 = 10, n3 = 20 }}

[resources.web-state]
type = "dummy"
params = {{ state_dir = "/run/resource-agents" }}
stop_timeout = "1s"

[resources.web-app]
type = "application"
depends_on = ["web-state"]
params = {{ start = "{start}", health = {health} }}
monitor = {{ interval = "2s", timeout = "2s" }}
start_timeout = "10s"
stop_timeout = "1s"
""")
    c.start_all()


def wait_holder(c: NsCluster, node: str, what: str, timeout: float = 30) -> None:
    """Wait until ``node``, and no other host, runs the group (each host's own word)."""
    c.wait_for(lambda: c.holders("web") == [node], timeout, what)


def views(c: NsCluster, *hosts: str) -> dict[str, tuple[str | None, dict[str, str]] | None]:
    """Per host: (where it says web runs, node -> online/offline), None if it did not answer."""
    return {name: None if st is None else (st["groups"]["web"]["node"],
                                           {n: v["state"] for n, v in st["nodes"].items()})
            for name, st in c.statuses(hosts).items()}


def all_online(c: NsCluster) -> bool:
    sts = c.statuses()
    return all(st is not None and {v["state"] for v in st["nodes"].values()} == {"online"}
               for st in sts.values())


def test_cluster_forms_and_a_client_reaches_the_service(cluster: NsCluster) -> None:
    start_web(cluster)
    wait_holder(cluster, "n1", "web running on n1, the preferred host")
    online = dict.fromkeys(cluster.hosts, "online")
    assert views(cluster, "n1", "n2", "n3") == dict.fromkeys(cluster.hosts, ("n1", online))
    # what an operator logged in on a host sees says the same
    for name, st in cluster.statuses(cli=True).items():
        assert st is not None and st["node"] == name
        assert st["groups"]["web"]["node"] == "n1" and st["quorate"] is True
    # the service is on n1's network address, and on no other host's
    body = cluster.wait_for(lambda: cluster.client.http_get("http://198.18.0.1:8080/"), 10,
                            "the client to fetch the page from n1")
    assert body == MARKER
    assert cluster.client.http_get("http://198.18.0.2:8080/", timeout=1) is None
    # each host has its own /run: the dummy's state file is only on n1
    assert "web-state.state" in cluster.hosts["n1"].run(["ls", "/run/resource-agents"]).stdout
    assert cluster.hosts["n2"].run(["ls", "/run/resource-agents"]).stdout == ""


# kin in make test: tests/system/test_ns_resources.py powers off the holder of the web service
@pytest.mark.long
def test_power_off_the_holder_moves_the_service(cluster: NsCluster) -> None:
    start_web(cluster)
    wait_holder(cluster, "n1", "web on n1")
    assert cluster.client.answers("198.18.0.1")

    # cable first: no FIN or RST leaves the host, as in a real power loss; the others'
    # connections to it stay "up" until TCP finds them dead (keepalive, TCP_MAXRT)
    cluster.power_off("n1", cable_first=True)
    wait_holder(cluster, "n2", "web on n2 after n1 lost power")
    survivors = {"n1": "offline", "n2": "online", "n3": "online"}
    cluster.wait_for(lambda: views(cluster, "n2", "n3") == {"n2": ("n2", survivors),
                                                          "n3": ("n2", survivors)},
                     10, "n2 and n3 to agree: n1 offline, web on n2")
    assert not cluster.client.answers("198.18.0.1"), "a powered-off host still answers"
    assert cluster.wait_for(lambda: cluster.client.http_get("http://198.18.0.2:8080/"), 10,
                            "the page from n2") == MARKER

    # it boots with an empty /run (the dummy's state file died with it) and rejoins; the
    # service stays where it is (failback is off)
    cluster.power_on("n1")
    assert cluster.hosts["n1"].run(["ls", "/run/resource-agents"]).stdout == ""
    cluster.wait_for(lambda: all_online(cluster), 30, "n1 back online in every view")
    assert cluster.holders("web") == ["n2"]


def links_seen(c: NsCluster) -> dict[str, dict[str, dict[str, bool]] | None]:
    """Per host: node -> link -> up, as that host's daemon sees it (None: no answer)."""
    return {name: None if st is None else {n: dict(v["links"]) for n, v in st["nodes"].items()}
            for name, st in c.statuses().items()}


def test_one_cut_link_is_news_and_a_status_line_both_isolate_the_host(
        cluster2: NsCluster) -> None:
    c = cluster2
    start_web(c)
    wait_holder(c, "n1", "web on n1")
    both_up = {n: {"lan0": True, "lan1": True} for n in c.hosts}
    c.wait_for(lambda: all_online(c) and links_seen(c) == dict.fromkeys(c.hosts, both_up), 10,
               "all online, every link up in every view")
    epochs = {name: st["epoch"] for name, st in c.statuses().items() if st is not None}
    st = c.status("n2")
    assert st is not None
    # the slower of the two links loses the race for every message: its copies count too
    assert all(p["connection"] == "connected" for link in st["links"].values()
               for p in link["peers"].values())
    assert sum(link["rejected"].get("duplicate", 0) for link in st["links"].values()) > 0

    with subscribe(c.config, "n2", kinds={"link_down", "link_up"}, timeout=20) as events:
        c.cut_link("n1", "lan0")
        lan0_out = {"n1": {"lan0": False, "lan1": True}, "n2": {"lan0": True, "lan1": True},
                    "n3": {"lan0": True, "lan1": True}}
        c.wait_for(lambda: links_seen(c) == {
            "n1": {"n1": {"lan0": False, "lan1": True}, "n2": {"lan0": False, "lan1": True},
                   "n3": {"lan0": False, "lan1": True}},
            "n2": lan0_out, "n3": lan0_out}, 10, "every host to see n1's lan0 down")
        note = next(events)
        assert isinstance(note, LinkDown) and (note.member, note.link) == ("n1", "lan0"), note
        # lan1 still carries the heartbeats: for several dead_times nothing moves
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            online = dict.fromkeys(c.hosts, "online")
            assert views(c, "n2", "n3") == {"n2": ("n1", online), "n3": ("n1", online)}
        assert c.holders("web") == ["n1"]
        assert {name: st["epoch"] for name, st in c.statuses().items()
                if st is not None} == epochs
        # what an operator reads, on n1 and on n3
        n1 = c.vigil("n1", "status", "-c", str(c.config), "-n", "n1").stdout
        assert "Links down: lan0 on n1, this node (n1-n2, n1-n3)" in n1, n1
        assert "its NIC eth0 is down: " in n1, n1  # its monitor saw the carrier go
        n3 = c.vigil("n3", "status", "-c", str(c.config), "-n", "n3").stdout
        assert "Links down: lan0 (n3-n1)" in n3, n3

        def reconnecting() -> bool:
            st = c.status("n2")
            return st is not None and st["links"]["lan0"]["peers"]["n1"]["connection"] in (
                "connecting", "waiting")

        c.wait_for(reconnecting, 10, "n2's connection to n1 on lan0 to be seen broken")

        c.restore_link("n1", "lan0")
        c.wait_for(lambda: links_seen(c) == dict.fromkeys(c.hosts, both_up), 15,
                   "every link up again in every view")
        note = next(events)
        assert isinstance(note, LinkUp) and (note.member, note.link) == ("n1", "lan0"), note
    assert {name: st["epoch"] for name, st in c.statuses().items() if st is not None} == epochs
    assert c.holders("web") == ["n1"]

    c.cut_link("n1", "lan0")
    c.cut_link("n1", "lan1")
    wait_holder(c, "n2", "web on n2 once n1 is cut off")
    lost = {"n1": "offline", "n2": "online", "n3": "online"}
    c.wait_for(lambda: views(c, "n2", "n3") == {"n2": ("n2", lost), "n3": ("n2", lost)}, 10,
               "n2 and n3 to agree that n1 is lost")
    st = c.status("n1")
    assert st is not None and st["quorate"] is False

    c.restore_link("n1", "lan0")
    c.restore_link("n1", "lan1")
    c.wait_for(lambda: all_online(c), 30, "n1 back online in every view")
    assert c.holders("web") == ["n2"]


def test_partition_the_majority_keeps_the_service(cluster: NsCluster) -> None:
    start_web(cluster)
    wait_holder(cluster, "n1", "web on n1")

    cluster.partition(["n1"], ["n2", "n3"], client_side=1)
    # n1 alone has no quorum and stops; the majority starts it after n1's lease ran out
    wait_holder(cluster, "n2", "web on n2 only, n1 stopped it")
    st = cluster.status("n1")
    assert st is not None and st["quorate"] is False
    assert st["groups"]["web"]["node"] is None
    assert cluster.wait_for(lambda: cluster.client.http_get("http://198.18.0.2:8080/"), 10,
                            "the client (on the majority side) to fetch from n2") == MARKER
    assert not cluster.client.answers("198.18.0.1")

    cluster.heal()
    cluster.wait_for(lambda: all_online(cluster), 30, "one cluster again")
    assert cluster.holders("web") == ["n2"]
    assert cluster.client.answers("198.18.0.1")


def test_hosts_have_private_mounts_and_run() -> None:
    require_nscluster()
    with NsCluster(hosts=2) as c:
        n1, n2 = c.hosts["n1"], c.hosts["n2"]
        assert n1.run(["hostname"]).stdout.strip() == "n1"
        mnt = c.tmp / "mnt"
        mnt.mkdir()
        out = n1.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)])
        assert out.returncode == 0, out.stderr
        n1.run(["touch", str(mnt / "on-n1"), "/run/resource-agents/on-n1"])
        assert n1.run(["ls", str(mnt)]).stdout.split() == ["on-n1"]
        # invisible outside the host: to the machine and to the other host
        assert str(mnt) not in Path("/proc/self/mountinfo").read_text()
        assert n2.run(["ls", str(mnt)]).stdout == ""
        assert n2.run(["ls", "/run/resource-agents"]).stdout == ""
        # a power cycle loses the mounts and /run, as a crash does
        c.power_off("n1")
        with pytest.raises(RuntimeError, match="powered off"):
            n1.run(["true"])
        c.power_on("n1")
        assert n1.run(["ls", str(mnt)]).stdout == ""
        assert n1.run(["ls", "/run/resource-agents"]).stdout == ""
        # bad requests name what is wrong
        with pytest.raises(ValueError, match="at least two sides"):
            c.partition(["n1", "n2"])
        with pytest.raises(ValueError, match="host n1 is in side 0 and side 1"):
            c.partition(["n1"], ["n1", "n2"])
        with pytest.raises(KeyError, match="no host named 'n9'"):
            c.cut_link("n9", 0)
        with pytest.raises(ValueError, match="this cluster has links lan0"):
            c.cut_link("n1", "lan1")


def test_each_host_has_a_disk_of_its_own_that_survives_a_power_cycle() -> None:
    require_nscluster()
    why = btrfs_available()
    if why is not None:
        pytest.skip(why)
    with NsCluster(hosts=2) as c:
        disk = c.tmp / "mirror"
        c.add_disks(disk, size_mb=128)
        n1, n2 = c.hosts["n1"], c.hosts["n2"]
        assert n1.disk is not None and n2.disk is not None
        images = [n1.disk.image, n2.disk.image]
        # the top level of a btrfs of each host's own, seen by no one else
        for h in (n1, n2):
            out = h.run(["findmnt", "-n", "-o", "FSTYPE,OPTIONS", str(disk)])
            assert out.stdout.startswith("btrfs") and "subvolid=5" in out.stdout, out
            h.run(["sh", "-c", f"echo {h.name} > {disk}/owner && sync"])
        assert n1.run(["cat", str(disk / "owner")]).stdout == "n1\n"
        assert n2.run(["cat", str(disk / "owner")]).stdout == "n2\n"
        assert str(disk) not in Path("/proc/self/mountinfo").read_text()
        # the data outlives a power cycle, as on a real disk; the mount is made again
        c.power_off("n1")
        c.power_on("n1")
        assert n1.run(["cat", str(disk / "owner")]).stdout == "n1\n"
        assert n2.run(["cat", str(disk / "owner")]).stdout == "n2\n"
    # closed: nothing mounted, no loop device, no image
    for image in images:
        attached = subprocess.run(["losetup", "--associated", str(image)], capture_output=True,
                                  text=True, timeout=30)
        assert attached.stdout == ""
        assert not image.exists()


def test_cleanup_leaves_nothing_behind() -> None:
    require_nscluster()
    with NsCluster(hosts=3) as c:
        start_web(c)
        wait_holder(c, "n1", "web on n1")
        prefix, tmp = c.prefix, c.tmp
        pids = [pid for h in c.hosts.values() for pid in h.pids()]
        app = c.client.popen(["sleep", "600"])
        pids.append(app.pid)
        assert len(pids) >= 3 + 3 + 2  # keepers, daemons, the web server, the client's sleep
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert [n for n in names.split() if n.startswith(prefix + "-")] == []
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert not tmp.exists()


def test_namespaces_left_by_a_dead_run_are_swept() -> None:
    require_nscluster()
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale, kept = f"vg{gone.pid}c1-n1", f"vg{os.getpid()}c999-n1"  # dead and live creators
    stale_dir = Path(f"/tmp/vg{gone.pid}c1-left")
    try:
        stale_dir.mkdir()
        for name in (stale, kept):
            subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
        with NsCluster(hosts=1):
            names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                   timeout=30).stdout.split()
        assert stale not in names
        assert kept in names
        assert not stale_dir.exists()
    finally:
        for name in (stale, kept):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        shutil.rmtree(stale_dir, ignore_errors=True)


def test_bad_layouts_are_refused_before_anything_is_made() -> None:
    with pytest.raises(ValueError, match="hosts=0"):
        NsCluster(hosts=0)
    with pytest.raises(ValueError, match="links=3"):
        NsCluster(links=3)
    with pytest.raises(ValueError, match="'N1'"):
        NsCluster(names=["N1", "n2"])
    with pytest.raises(ValueError, match="unique"):
        NsCluster(names=["a", "a"])
