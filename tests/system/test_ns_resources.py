"""System: real resources on the namespace cluster (tests/nscluster.py). An address moved over
netlink, a shared disk (a loop device every host sees) checked and mounted in the host's own
mount namespace, a web server serving that disk on that address, and the same with Debian's
unmodified OCF agents; an outside client reads the file through the address while hosts lose
power, programs die and daemons are told to stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.nscluster import NsCluster, SharedDisk, nscluster_fixture

cluster = nscluster_fixture(hosts=3)

VIP = "198.18.0.100"
PAGE = "the same file, wherever the service runs"


@pytest.fixture
def disk(cluster: NsCluster) -> Iterator[SharedDisk]:
    with SharedDisk(cluster.tmp, files={"index.html": PAGE}) as d:
        yield d


def web_group(c: NsCluster, disk: SharedDisk, *, threshold: int = 3) -> str:
    """ip + filesystem + application: the server serves the disk on the address."""
    mnt = c.tmp / "www"
    return f"""
[groups.web]
resources = ["web-ip", "web-disk", "web-server"]
prefer = {{ n1 = 0, n2 = 10, n3 = 20 }}
migration_threshold = {threshold}

[resources.web-ip]
type = "ip"
params = {{ address = "{VIP}", prefix = 24, nic = "eth0", arp_count = 3, arp_interval = "100ms" }}
monitor = {{ interval = "1s", timeout = "2s" }}
stop_timeout = "1s"

[resources.web-disk]
type = "filesystem"
depends_on = ["web-ip"]
params = {{ device = "{disk.device}", directory = "{mnt}", fstype = "ext4" }}
monitor = {{ interval = "1s", timeout = "3s" }}
start_timeout = "20s"
stop_timeout = "4s"

""" + web_server("web-disk", mnt)


def web_server(after: str, mnt: Path) -> str:
    """The application of the group: http.server serving the disk on the address."""
    return f"""
[resources.web-server]
type = "application"
depends_on = ["{after}"]
monitor = {{ interval = "500ms", timeout = "2s" }}
start_timeout = "10s"
stop_timeout = "1s"
[resources.web-server.params]
start = "{sys.executable} -m http.server 80 --bind {VIP} --directory {mnt}"
health_url = "http://{VIP}/index.html"
"""


def wait_holder(c: NsCluster, node: str, what: str, timeout: float = 40) -> None:
    c.wait_for(lambda: c.holders("web") == [node], timeout, what)


def page(c: NsCluster) -> str | None:
    return c.client.http_get(f"http://{VIP}/index.html")


def mounts(c: NsCluster, host: str) -> str:
    return c.hosts[host].run(["cat", "/proc/self/mountinfo"]).stdout


def addresses(c: NsCluster, host: str) -> str:
    return c.hosts[host].run(["ip", "-o", "addr", "show", "dev", "eth0"]).stdout


def resource_pids(c: NsCluster, host: str, needle: str) -> list[int]:
    """PIDs of the host's processes whose command line contains ``needle``."""
    found = []
    for pid in c.hosts[host].pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if needle.encode() in cmdline and b"nsenter" not in cmdline:
            found.append(pid)
    return found


PROBER = """
import socket, sys, time
host, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
down = None
end = time.time() + limit
print("ready", flush=True)
while time.time() < end:
    s = socket.socket()
    s.settimeout(0.05)  # a connect over the test bridge takes well under 1 ms
    try:
        s.connect((host, port))
        ok = True
    except OSError:
        ok = False
    finally:
        s.close()
    now = time.time()
    if not ok and down is None:
        down = now
    if ok and down is not None:
        print(f"{down} {now}", flush=True)
        sys.exit(0)
    time.sleep(max(0.0, 0.02 - (time.time() - now)))
sys.exit(1)
"""


def test_the_web_service_follows_a_powered_off_host_with_its_address_and_disk(
        cluster: NsCluster, disk: SharedDisk) -> None:
    cluster.write_config(web_group(cluster, disk))
    cluster.start_all()
    wait_holder(cluster, "n1", "web on n1")
    assert cluster.wait_for(lambda: page(cluster), 20, "the page through the address") == PAGE
    assert str(cluster.tmp / "www") in mounts(cluster, "n1")
    assert str(cluster.tmp / "www") not in mounts(cluster, "n2")
    assert VIP in addresses(cluster, "n1") and VIP not in addresses(cluster, "n2")
    st = cluster.status("n1")
    assert st is not None
    assert [st["resources"][r]["state"] for r in ("web-ip", "web-disk", "web-server")] == [
        "IN_SERVICE"] * 3

    prober = cluster.client.popen([sys.executable, "-c", PROBER, VIP, "80", "60"],
                                  stdout=subprocess.PIPE, text=True)
    assert prober.stdout is not None and prober.stdout.readline().strip() == "ready"
    cluster.power_off("n1", cable_first=True)
    wait_holder(cluster, "n2", "web on n2 after n1 lost power")
    assert page(cluster) == PAGE  # the same file, from the same disk, on the same address
    assert VIP in addresses(cluster, "n2")
    out, _ = prober.communicate(timeout=70)
    assert prober.returncode == 0, "the address never answered again"
    down, up = (float(x) for x in out.split())
    print(f"\n{VIP}:80 unreachable for {up - down:.2f}s after the holder lost power")


def test_a_killed_server_restarts_in_place_then_moves_and_cleanup_lets_it_back(
        cluster: NsCluster, disk: SharedDisk) -> None:
    config = str(cluster.write_config(web_group(cluster, disk, threshold=2)))
    cluster.start_all()
    wait_holder(cluster, "n1", "web on n1")
    # every node in: a late joiner's transition is not what this test is about
    cluster.wait_for(lambda: len((cluster.status("n1") or {}).get("members", [])) == 3, 30,
                     "all three nodes in the cluster")
    before = cluster.status("n1")
    assert before is not None
    first = resource_pids(cluster, "n1", "http.server")
    assert len(first) == 1

    os.kill(first[0], signal.SIGKILL)  # one failure: restarted where it is
    cluster.wait_for(lambda: (p := resource_pids(cluster, "n1", "http.server"))
                     and p != first, 20, "a new server process on n1")
    wait_holder(cluster, "n1", "web running on n1 again")
    st = cluster.status("n1")
    assert st is not None
    assert st["epoch"] == before["epoch"], "recovery in place needs no transition"
    assert st["fail_counts"] == {"web": 1}
    assert st["resources"]["web-server"]["fail_count"] == 1
    assert "SIGKILL" in st["resources"]["web-server"]["last_failure"]["reason"]
    assert page(cluster) == PAGE

    second = resource_pids(cluster, "n1", "http.server")
    os.kill(second[0], signal.SIGKILL)  # the threshold: it leaves n1
    wait_holder(cluster, "n2", "web moved to n2 after the second failure")
    assert cluster.wait_for(lambda: page(cluster), 20, "the page from n2") == PAGE
    assert str(cluster.tmp / "www") not in mounts(cluster, "n1")

    # n1 is banned: a move there is refused by the transition ...
    assert cluster.vigil("n2", "group", "move", "web", "n1", "-c", config).returncode == 0
    cluster.wait_for(lambda: any("cannot move web to n1" in text
                                 for st in cluster.statuses().values() if st
                                 for _, text in st["decisions"]),
                     20, "the master to refuse the move")
    assert cluster.holders("web") == ["n2"]
    # ... until the failures are cleaned up (asked on another node: it reaches n1)
    out = cluster.vigil("n3", "resource", "cleanup", "web-server", "-c", config)
    assert out.returncode == 0, out.stderr
    cluster.wait_for(lambda: (cluster.status("n1") or {}).get("fail_counts") == {}, 10,
                     "n1's fail count cleared")
    assert cluster.vigil("n2", "group", "move", "web", "n1", "-c", config).returncode == 0
    wait_holder(cluster, "n1", "web back on n1 after cleanup")
    assert cluster.wait_for(lambda: page(cluster), 20, "the page from n1 again") == PAGE


def test_a_start_that_always_fails_on_one_host_is_placed_on_another(
        cluster: NsCluster) -> None:
    worker = cluster.tmp / "worker.sh"
    worker.write_text('[ "$VIGIL_NODE" != n1 ] || { echo "no licence on n1"; exit 3; }\n'
                      "exec sleep 600\n")
    cluster.write_config(f"""
[groups.web]
resources = ["web-worker"]
prefer = {{ n1 = 0, n2 = 10, n3 = 20 }}

[resources.web-worker]
type = "application"
params = {{ start = "sh {worker}" }}
stop_timeout = "1s"
""")
    cluster.start_all()
    wait_holder(cluster, "n2", "web on n2, its start having failed on n1")
    st = cluster.status("n1")
    assert st is not None
    assert st["fail_counts"] == {"web": 3}  # a failed start bans the node at once
    failure = st["resources"]["web-worker"]["last_failure"]
    assert failure["op"] == "start" and "exited with code 3" in failure["reason"]
    assert "no licence on n1" in failure["reason"]  # the program's own words, from its log


def test_sigterm_stops_the_group_cleanly_in_reverse_order_and_it_moves(
        cluster: NsCluster, disk: SharedDisk) -> None:
    cluster.write_config(web_group(cluster, disk))
    cluster.start_all()
    wait_holder(cluster, "n1", "web on n1")
    assert cluster.sigterm("n1") == 0
    # the host lives on (only its daemon stopped): nothing of the group is left there
    assert str(cluster.tmp / "www") not in mounts(cluster, "n1")
    assert VIP not in addresses(cluster, "n1")
    assert not resource_pids(cluster, "n1", "http.server")
    stops = [line.split("resource ")[1].split(":")[0] for line in cluster.log("n1").splitlines()
             if ": stop -> OOS" in line]
    assert stops == ["web-server", "web-disk", "web-ip"]
    wait_holder(cluster, "n2", "web on n2")
    assert cluster.wait_for(lambda: page(cluster), 20, "the page from n2") == PAGE


OCF_ROOT = Path("/usr/lib/ocf/resource.d/heartbeat")


# kin in make test: tests/system/test_ocf.py runs the agents; the web service fails over here
@pytest.mark.long
def test_an_ocf_group_fails_over_the_same_way(cluster: NsCluster, disk: SharedDisk) -> None:
    for agent in ("IPaddr2", "Filesystem", "Dummy"):
        if not (OCF_ROOT / agent).exists():
            pytest.skip(f"needs ocf:heartbeat:{agent} (Debian's resource-agents package)")
    mnt = cluster.tmp / "www"
    cluster.write_config(f"""
[groups.web]
resources = ["web-ip", "web-disk", "web-marker", "web-server"]
prefer = {{ n1 = 0, n2 = 10, n3 = 20 }}

[resources.web-ip]
type = "ocf:heartbeat:IPaddr2"
params = {{ ip = "{VIP}", cidr_netmask = "24", nic = "eth0" }}
monitor = {{ interval = "2s" }}
stop_timeout = "5s"

[resources.web-disk]
type = "ocf:heartbeat:Filesystem"
depends_on = ["web-ip"]
params = {{ device = "{disk.device}", directory = "{mnt}", fstype = "ext4" }}
monitor = {{ interval = "2s" }}
stop_timeout = "10s"

[resources.web-marker]
type = "ocf:heartbeat:Dummy"
depends_on = ["web-disk"]
monitor = {{ interval = "2s" }}
stop_timeout = "5s"

""" + web_server("web-marker", mnt))
    cluster.start_all()
    wait_holder(cluster, "n1", "the OCF group on n1", timeout=60)
    assert cluster.wait_for(lambda: page(cluster), 20, "the page through IPaddr2") == PAGE
    assert str(mnt) in mounts(cluster, "n1")
    cluster.power_off("n1", cable_first=True)
    wait_holder(cluster, "n2", "the OCF group on n2 after n1 lost power", timeout=60)
    assert page(cluster) == PAGE
    assert str(mnt) in mounts(cluster, "n2") and VIP in addresses(cluster, "n2")
    st: dict[str, Any] | None = cluster.status("n2")
    assert st is not None
    print(json.dumps({r: v["state"] for r, v in st["resources"].items()}))
    # a deliberate stop through the agents leaves nothing behind
    assert cluster.sigterm("n2") == 0
    assert str(mnt) not in mounts(cluster, "n2") and VIP not in addresses(cluster, "n2")
