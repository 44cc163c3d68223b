"""Fencing for real: ``fence_vigil_ns`` powering off a network namespace this test makes (a
``sleep`` inside it dies, its interfaces go down), an agent that hangs killed at its timeout
and tried again, and ``fence_ipmilan`` of ``fence-agents`` asked about a board that does not
exist (127.0.0.9: nothing answers there) failing with a reason.

Namespaces are named ``vftest-<pid>-<n>`` and carry addresses from 198.19.0.0/16 (part of
198.18.0.0/15, the benchmarking range), so they meet nobody else's; nothing is added to the
machine's own namespace. Each is deleted, and its processes killed, whatever the test does.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vigil.config import FenceDevice
from vigil.fencing.agents import forget_metadata, run_device
from vigil.fencing.netns import kill_all, ns_id, pids_in
from vigil.resources import proc

SECRET = "n0t-the-real-0ne"
_counter = itertools.count(1)


def require_namespaces() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a network namespace (run the tests as root)")
    missing = [tool for tool in ("ip", "nsenter") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian: apt-get install iproute2 util-linux)")


def ip(*args: str) -> str:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"ip {' '.join(args)}: {out.stderr.strip()}"
    return out.stdout


@dataclass
class NsHost:
    name: str
    address: str
    sleeper: subprocess.Popen[bytes]

    def links_up(self) -> list[str]:
        links = json.loads(ip("-n", self.name, "-j", "link", "show"))
        return sorted(link["ifname"] for link in links
                      if link["ifname"] != "lo" and "UP" in link["flags"])

    def addresses(self) -> list[str]:
        entries = json.loads(ip("-n", self.name, "-j", "addr", "show", "dev", "v0"))
        return [a["local"] for e in entries for a in e["addr_info"] if a["family"] == "inet"]


@pytest.fixture
def host() -> Iterator[NsHost]:
    """A namespace with two up interfaces (a veth pair, both ends inside), an address and a
    ``sleep`` running in it."""
    require_namespaces()
    n = next(_counter)
    name = f"vftest-{os.getpid()}-{n}"
    address = f"198.19.{os.getpid() % 250}.{n % 250 + 1}"
    ip("netns", "add", name)
    sleeper: subprocess.Popen[bytes] | None = None
    try:
        ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ip("-n", name, "addr", "add", f"{address}/24", "dev", "v0")
        for link in ("lo", "v0", "v1"):
            ip("-n", name, "link", "set", link, "up")
        sleeper = proc.spawn(["ip", "netns", "exec", name, "sleep", "600"],
                             stdin=subprocess.DEVNULL)
        namespace = ns_id(f"/run/netns/{name}")
        assert proc.wait_until(lambda: sleeper is not None and sleeper.pid in pids_in(
            [("net", namespace)]) and os.readlink(f"/proc/{sleeper.pid}/exe").endswith(
            "/sleep"), 20), "the sleep never started inside the namespace"
        yield NsHost(name, address, sleeper)
    finally:
        namespace = ns_id(f"/run/netns/{name}")
        if namespace is not None:
            kill_all(lambda: pids_in([("net", namespace)]), name,
                     reap=[sleeper] if sleeper else [])
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def ns_device(host: NsHost) -> FenceDevice:
    return FenceDevice(name="ns", agent="fence_vigil_ns", hosts=("alpha",),
                       plugs={"alpha": host.name}, timeout=30.0, retries=0)


def test_fence_vigil_ns_powers_a_namespace_host_off_and_on(host: NsHost) -> None:
    device = ns_device(host)
    before = run_device(device, "status", "alpha")
    assert (before.ok, before.power) == (True, "on"), before.describe()

    off = run_device(device, "off", "alpha")
    assert off.ok, off.describe()
    assert off.plug == host.name and "Powered OFF" in off.output
    assert host.sleeper.wait(10) == -9  # SIGKILLed
    assert pids_in([("net", ns_id(f"/run/netns/{host.name}"))]) == []
    assert host.links_up() == []
    after = run_device(device, "status", "alpha")
    assert (after.ok, after.power, after.exit_code) == (True, "off", 2)
    again = run_device(device, "off", "alpha")
    assert again.ok and "Already OFF" in again.output

    on = run_device(device, "on", "alpha")
    assert on.ok, on.describe()
    assert host.links_up() == ["v0", "v1"]
    assert host.addresses() == [host.address]
    assert run_device(device, "status", "alpha").power == "on"


def test_fence_vigil_ns_reports_a_namespace_that_does_not_exist(host: NsHost) -> None:
    device = FenceDevice(name="ns", agent="fence_vigil_ns", hosts=("alpha",),
                         plugs={"alpha": f"{host.name}-nothere"}, timeout=30.0, retries=0)
    result = run_device(device, "off", "alpha")
    assert not result.ok and result.exit_code == 1
    assert f"no network namespace '{host.name}-nothere'" in result.reason
    assert host.sleeper.poll() is None  # nothing else was touched


def test_an_agent_that_hangs_is_killed_at_its_timeout_and_tried_again(tmp_path: Path) -> None:
    agent = tmp_path / "fence_hang"
    agent.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        cat > /dev/null
        sleep 600 &
        echo $! >> {tmp_path}/children
        wait
        """))
    agent.chmod(0o755)
    device = FenceDevice(name="hang", agent=str(agent), hosts=("alpha",), timeout=1.0,
                         retries=2, host_argument="plug")
    result = run_device(device, "off", "alpha")
    assert not result.ok and result.timed_out and result.exit_code is None
    assert result.attempts == 3
    assert result.reason == "timed out after 1s; killed the agent's process group"
    children = [int(pid) for pid in (tmp_path / "children").read_text().split()]
    assert len(children) == 3
    assert not any(proc.pid_alive(pid) for pid in children)  # the whole group, every time


def test_fence_ipmilan_against_an_address_where_nothing_answers_fails_with_a_reason() -> None:
    if not Path("/usr/sbin/fence_ipmilan").is_file():
        pytest.skip("needs fence_ipmilan (Debian: apt-get install fence-agents)")
    forget_metadata()
    device = FenceDevice(name="ipmi-alpha", agent="fence_ipmilan", hosts=("alpha",),
                         params={"ip": "127.0.0.9", "username": "admin", "password": SECRET,
                                 "lanplus": True},
                         timeout=3.0, retries=0)
    result = run_device(device, "status", "alpha")
    assert not result.ok and result.power is None
    text = result.describe()
    assert text.startswith("status of alpha by ipmi-alpha (fence_ipmilan): ")
    # Nothing answers: Vigil's timeout ends it, or the agent gives up first (or, without
    # ipmitool, says so): either way a reason an operator can act on.
    assert result.reason == "timed out after 3s; killed the agent's process group" or \
        result.reason.startswith("exit 1 (EC_GENERIC_ERROR): "), text
    assert SECRET not in text + result.stderr_tail + result.output
