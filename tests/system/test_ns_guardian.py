"""System: the guardian on the namespace cluster (docs/fencing.md). Each host's address and
server are sampled from inside every host every few milliseconds while the holder's daemon
is SIGKILLed or frozen: the old copy must be gone before the new one appears, and two hosts
never hold the address at once."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from tests.support.nscluster import NsCluster, nscluster_fixture
from tests.support.nssample import (
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
