"""System: the guardian on the namespace cluster (docs/fencing.md). Each host's address and
server (and a shared disk in its mount table) are sampled every 10 ms while the holder's
daemon is SIGKILLed or frozen, the holder is cut off from the others, or its guardian is
killed: the old copy must be gone before the new one appears, and two hosts never hold the
address, run the server or mount the disk at once."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from tests.support.nscluster import NsCluster, SharedDisk, nscluster_fixture
from tests.support.nssample import (
    ADDRESS,
    MOUNT,
    SERVER,
    OutsideSampler,
    OutsideTimeline,
    Sampler,
    Timeline,
    overlaps,
    start_samplers,
    stop_samplers,
    web_group,
)

cluster = nscluster_fixture(hosts=3)

VIP = "198.18.0.100"
MARKER = "vigil-guardian-test-server"


@pytest.fixture
def samplers(cluster: NsCluster) -> Iterator[dict[str, Sampler]]:
    running: dict[str, Sampler] = {}
    yield running
    stop_samplers(running)


def sample(c: NsCluster, running: dict[str, Sampler], holder: str) -> None:
    """Sample every host; return once each has seen how things are (the holder has both)."""
    running.update(start_samplers(c, VIP, MARKER, {
        n: (True, True) if n == holder else (False, False) for n in c.hosts}))


def timelines(running: dict[str, Sampler]) -> dict[str, Timeline]:
    lines = stop_samplers(running)
    running.clear()
    return lines


def start(c: NsCluster) -> None:
    c.write_config(web_group(VIP, MARKER))
    c.start_all()
    c.wait_for(lambda: c.holders("web") == ["n1"], 40, "web on n1")
    c.wait_for(lambda: c.client.http_get(f"http://{VIP}/") is not None, 20, "the server")


def test_a_killed_holders_address_and_server_are_gone_before_another_host_has_them(
        cluster: NsCluster, samplers: dict[str, Sampler]) -> None:
    start(cluster)
    sample(cluster, samplers, "n1")
    killed = time.monotonic()
    cluster.sigkill("n1")  # the daemon alone: its guardian lives on
    cluster.wait_for(lambda: cluster.group_on("web", "n2") == "n2", 30, "web on n2")
    cluster.wait_for(lambda: cluster.client.http_get(f"http://{VIP}/") is not None, 20,
                     "the server on n2")
    time.sleep(0.5)
    lines = timelines(samplers)
    n1_vip, n1_srv = lines["n1"].intervals(0), lines["n1"].intervals(1)
    n2_vip, n2_srv = lines["n2"].intervals(0), lines["n2"].intervals(1)
    assert n1_vip and n1_vip[-1][1] < float("inf"), "the address stayed on n1"
    assert n1_srv and n1_srv[-1][1] < float("inf"), f"the server survived on n1: {lines}"
    assert n2_vip and n2_srv
    assert n1_vip[-1][1] <= n2_vip[0][0], (n1_vip, n2_vip)
    assert n1_srv[-1][1] <= n2_srv[0][0], (n1_srv, n2_srv)
    assert overlaps(lines, 0) == [] and overlaps(lines, 1) == []
    # n1's guardian, its kill done, told the others: they did not wait out n1's lease
    said = [text for _, text in (cluster.status("n2") or {}).get("decisions", [])]
    assert any("n1 left the cluster: its daemon died and its guardian removed everything"
               in text for text in said), said
    assert not any("waiting for fencing" in text for text in said), said
    print(f"\nn1 killed at {killed:.3f}: its address gone after "
          f"{n1_vip[-1][1] - killed:.3f}s, on n2 after {n2_vip[0][0] - killed:.3f}s")


def test_a_frozen_holders_server_dies_before_another_host_starts_it_and_it_rejoins_quietly(
        cluster: NsCluster, samplers: dict[str, Sampler]) -> None:
    start(cluster)
    sample(cluster, samplers, "n1")
    daemon = cluster.hosts["n1"].daemon
    assert daemon is not None
    frozen = time.monotonic()
    daemon.send_signal(signal.SIGSTOP)
    try:
        cluster.wait_for(lambda: cluster.group_on("web", "n2") == "n2", 30, "web on n2")
        cluster.wait_for(lambda: cluster.client.http_get(f"http://{VIP}/") is not None, 20,
                         "the server on n2")
        time.sleep(max(0.0, 10.0 - (time.monotonic() - frozen)))
    finally:
        daemon.send_signal(signal.SIGCONT)
    epoch = (cluster.status("n2") or {}).get("epoch")
    # it rejoins: n1 answers again, runs nothing, and the service stays where it is
    cluster.wait_for(lambda: (cluster.status("n1") or {}).get("epoch") not in (None, ""), 30,
                     "n1 answering again")
    cluster.wait_for(lambda: len((cluster.status("n2") or {}).get("members", [])) == 3, 30,
                     "n1 back among the members")
    time.sleep(2.0)
    lines = timelines(samplers)
    assert cluster.group_on("web", "n2") == "n2"
    n1_srv, n2_srv = lines["n1"].intervals(1), lines["n2"].intervals(1)
    assert n1_srv and n1_srv[-1][1] < float("inf"), "the server survived on frozen n1"
    assert n1_srv[-1][1] <= n2_srv[0][0], (n1_srv, n2_srv)
    assert len(n2_srv) == 1 and lines["n1"].intervals(0)[-1][1] < float("inf")
    assert overlaps(lines, 0) == [] and overlaps(lines, 1) == []
    print(f"\nn1 frozen at {frozen:.3f}: its server killed after "
          f"{n1_srv[-1][1] - frozen:.3f}s, on n2 after {n2_srv[0][0] - frozen:.3f}s; "
          f"epoch before the thaw {epoch}")


@pytest.fixture
def outside(cluster: NsCluster) -> Iterator[list[OutsideSampler]]:
    """Outside samplers the test starts; stopped after it, whatever happened."""
    running: list[OutsideSampler] = []
    yield running
    for sampler in running:
        sampler.close()


def no_two_at_once(lines: dict[str, OutsideTimeline]) -> None:
    for which, what in ((ADDRESS, "the address"), (SERVER, "the server"), (MOUNT, "the disk")):
        assert overlaps(lines, which) == [], f"two hosts had {what} at once: {lines}"


def moved(c: NsCluster) -> str | None:
    """The one host other than n1 that runs web, by its own word (None: none, or several)."""
    holder = c.holder("web")
    return holder if holder not in (None, "n1") else None


def only(c: NsCluster, holder: str, state: tuple[bool, bool, bool]
         ) -> dict[str, tuple[bool, bool, bool]]:
    """What the samplers must see: ``state`` on ``holder``, nothing anywhere else."""
    return {n: state if n == holder else (False, False, False) for n in c.hosts}


def test_a_guardian_killed_on_the_holder_makes_it_leave_cleanly_and_exit_with_status_3(
        cluster: NsCluster, outside: list[OutsideSampler]) -> None:
    c = cluster
    start(c)
    n1 = c.hosts["n1"]
    assert n1.guardian is not None and n1.daemon is not None
    daemon = n1.daemon
    outside.append(sampler := OutsideSampler(c, VIP, MARKER))
    sampler.wait_until(c, only(c, "n1", (True, True, False)))
    killed = time.monotonic()
    n1.guardian.kill()
    n1.guardian.wait(10)
    code = daemon.wait(30)
    n1.daemon = None  # it exited by itself, as it should: not a failure of the waits below
    log = c.log("n1")
    assert code == 3, f"vigil node run exited with {code}, not 3; its log:\n{log[-3000:]}"
    assert "the guardian is gone (" in log and ": leaving the cluster" in log, log[-3000:]
    # it stopped its groups itself, dependents first
    stops = [line.split("resource ")[1].split(":")[0] for line in log.splitlines()
             if ": stop -> OOS" in line]
    assert stops == ["web-server", "web-ip"], log[-3000:]
    new = c.wait_for(lambda: moved(c), 30, "web on another host")
    sampler.wait_until(c, only(c, new, (True, True, False)))
    assert c.client.http_get(f"http://{VIP}/") is not None
    # it said goodbye: the others started web with no fencing wait for n1
    for via in ("n2", "n3"):
        st = c.status(via)
        assert st is not None
        waits = [e for e in st["fencing"]["history"] if e["target"] == "n1"]
        assert waits == [] and "n1" not in st["fencing"]["pending"], (via, waits)
    time.sleep(0.5)
    lines = sampler.stop()
    no_two_at_once(lines)
    n1_srv, new_srv = lines["n1"].intervals(SERVER), lines[new].intervals(SERVER)
    assert len(n1_srv) == 1 and n1_srv[0][1] <= new_srv[0][0], (n1_srv, new_srv)
    print(f"\nn1's guardian killed at {killed:.3f}: n1's server stopped after "
          f"{n1_srv[0][1] - killed:.3f}s, on {new} after {new_srv[0][0] - killed:.3f}s; "
          f"{sampler.summary()}")


DISK_MARKER = "vigil-guardian-test-disk-server"


@pytest.fixture
def disk(cluster: NsCluster) -> Iterator[SharedDisk]:
    with SharedDisk(cluster.tmp) as d:
        yield d


def test_a_holder_cut_off_from_the_others_releases_the_shared_disk_before_another_mounts_it(
        cluster: NsCluster, disk: SharedDisk, outside: list[OutsideSampler]) -> None:
    c = cluster
    c.write_config(web_group(VIP, DISK_MARKER, disk=(disk.device, c.tmp / "data")))
    c.start_all()
    c.wait_for(lambda: c.holders("web") == ["n1"], 40, "web on n1")
    c.wait_for(lambda: len((c.status("n1") or {}).get("members", [])) == 3, 30,
               "all three nodes in the cluster")
    outside.append(sampler := OutsideSampler(c, VIP, DISK_MARKER, disk.device))
    sampler.wait_until(c, only(c, "n1", (True, True, True)))
    cut = time.monotonic()
    c.partition(["n1"], ["n2", "n3"])
    new = c.wait_for(lambda: moved(c), 30, "web on another host")
    sampler.wait_until(c, only(c, new, (True, True, True)))
    st = c.status(new)
    assert st is not None and st["fail_counts"] == {}, \
        f"web failed to start on {new} (the disk was not free when it tried?): {st}"

    # healed, n1 comes back; whatever runs web from now on, never two hosts at once
    c.heal()
    c.wait_for(lambda: all(s is not None and len(s["members"]) == 3
                           for s in c.statuses().values()), 30,
               "n1 back among the members of every node")
    time.sleep(2.0)
    lines = sampler.stop()
    no_two_at_once(lines)
    n1_mnt, new_mnt = lines["n1"].intervals(MOUNT), lines[new].intervals(MOUNT)
    assert n1_mnt[0][1] <= new_mnt[0][0], (n1_mnt, new_mnt)
    print(f"\nn1 cut off at {cut:.3f}: the disk unmounted there after {n1_mnt[0][1] - cut:.3f}s, "
          f"mounted on {new} after {new_mnt[0][0] - cut:.3f}s; web on "
          f"{c.holders('web')} after the heal; {sampler.summary()}")
