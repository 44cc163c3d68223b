"""The ip resource type: parameter checks everywhere; as root, real addresses in two network
namespaces joined by a veth pair (A holds the address, B plays a client and a neighbour).

The resource acts on the network namespace of its process, so it runs in tests/ip_driver.py,
started with ``ip netns exec A``, the way the daemon runs inside a node's namespace. Nothing
here touches the machine's own namespace: every address is in a namespace this test made,
from 198.18.0.0/15.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from vigil.config import ResourceConfig
from vigil.resources.ip import (
    IpResource,
    IpType,
    gratuitous_arp_frame,
    parse_ip_params,
)
from vigil.resources.registry import default_registry

ROOT = Path(__file__).resolve().parents[2]
VIP = "198.18.200.100"
NIC_A, NIC_B = "vigA", "vigB"
WAIT = 20.0  # every wait for a condition or an answer gives up after this long
_names = itertools.count()


# -- parameters (no privileges needed) --------------------------------------------------------


def problems(**params: Any) -> list[str]:
    return IpType().check_params(params)


def test_good_params_have_no_problems_and_take_defaults() -> None:
    settings, found = parse_ip_params({"address": "198.18.0.100", "nic": "eth0"})
    assert found == []
    assert settings is not None
    assert (settings.prefix, settings.arp_count, settings.arp_interval) == (24, 5, 0.2)
    assert settings.cidr == "198.18.0.100/24"
    v6, found = parse_ip_params({"address": "2001:2::100", "nic": "eth0"})
    assert found == [] and v6 is not None and v6.prefix == 64
    full = problems(address="198.18.0.100", nic="eth0", prefix="255.255.0.0", label="eth0:web",
                    broadcast="+", arp_count=0, arp_interval="50ms")
    assert full == []
    settings, _ = parse_ip_params({"address": "198.18.0.100", "nic": "eth0", "prefix": 16,
                                   "broadcast": "+"})
    assert settings is not None and str(settings.broadcast) == "198.18.255.255"


@pytest.mark.parametrize(("params", "expected"), [
    ({"nic": "eth0"}, "parameter 'address'"),
    ({"address": "198.18.0.100"}, "parameter 'nic'"),
    ({"address": "198.18.0.300", "nic": "eth0"}, "'198.18.0.300' is not an IPv4 or IPv6"),
    ({"address": "198.18.0.100/24", "nic": "eth0"}, "prefix = 24"),
    ({"address": 42, "nic": "eth0"}, "must be an IP address string"),
    ({"address": "224.0.0.5", "nic": "eth0"}, "multicast"),
    ({"address": "0.0.0.0", "nic": "eth0"}, "unspecified"),
    ({"address": "198.18.0.0", "nic": "eth0"}, "network address of 198.18.0.0/24"),
    ({"address": "198.18.0.255", "nic": "eth0"}, "broadcast address of 198.18.0.0/24"),
    ({"address": "198.18.0.100", "nic": "eth0", "prefix": 33}, "from 1 to 32 for IPv4"),
    ({"address": "198.18.0.100", "nic": "eth0", "prefix": 0}, "from 1 to 32"),
    ({"address": "2001:2::1", "nic": "eth0", "prefix": 129}, "from 1 to 128 for IPv6"),
    ({"address": "198.18.0.100", "nic": "eth0", "prefix": "big"}, "parameter 'prefix'"),
    ({"address": "198.18.0.100", "nic": "eth0", "prefix": "255.0.255.0"}, "not a netmask"),
    ({"address": "198.18.0.100", "nic": "averyveryverylongnic"}, "at most 15"),
    ({"address": "198.18.0.100", "nic": "eth0:web"}, "label = \"eth0:web\""),
    ({"address": "198.18.0.100", "nic": "et h0"}, "not a valid interface name"),
    ({"address": "198.18.0.100", "nic": "a/b"}, "not a valid interface name"),
    ({"address": "198.18.0.100", "nic": ""}, "parameter 'nic' is empty"),
    ({"address": "198.18.0.100", "nic": "eth0", "label": "web"}, "\"eth0:web\""),
    ({"address": "198.18.0.100", "nic": "eth0", "label": "eth0:far-too-long"}, "at most 15"),
    ({"address": "2001:2::1", "nic": "eth0", "label": "eth0:web"}, "IPv4 only"),
    ({"address": "198.18.0.100", "nic": "eth0", "arp_count": -1}, "from 0 to 1000"),
    ({"address": "198.18.0.100", "nic": "eth0", "arp_count": True}, "parameter 'arp_count'"),
    ({"address": "198.18.0.100", "nic": "eth0", "arp_interval": "soon"},
     "parameter 'arp_interval'"),
    ({"address": "198.18.0.100", "nic": "eth0", "arp_interval": 200}, "did you mean \"200ms\""),
    ({"address": "198.18.0.100", "nic": "eth0", "broadcast": "198.18.0.999"},
     "parameter 'broadcast'"),
    ({"address": "2001:2::1", "nic": "eth0", "broadcast": "+"}, "IPv4 only"),
    ({"address": "198.18.0.100", "nic": "eth0", "adress": "x"}, "did you mean 'address'"),
])
def test_bad_params_are_named_with_the_value(params: dict[str, Any], expected: str) -> None:
    found = IpType().check_params(params)
    assert any(expected in p for p in found), found


def test_constructor_refuses_bad_params() -> None:
    config = ResourceConfig(name="vip", type="ip", group="g", params={"address": "nope"})
    with pytest.raises(ValueError, match=r"resource 'vip' \(ip\).*'nope'.*parameter 'nic'"):
        IpType().instantiate(config, "n1", Path("/nonexistent"))


def test_nic_may_list_several_interfaces_in_order_of_preference() -> None:
    settings, found = parse_ip_params({"address": "198.18.0.100", "nic": ["eth0", "eth1"],
                                       "label": "eth0:web"})
    assert found == []
    assert settings is not None
    assert settings.nics == ("eth0", "eth1") and settings.nic == "eth0"
    assert settings.nic_failback is False
    assert (settings.label_on("eth0"), settings.label_on("eth1")) == ("eth0:web", "eth1:web")
    single, _ = parse_ip_params({"address": "198.18.0.100", "nic": "eth0"})
    assert single is not None and single.nics == ("eth0",) and single.label_on("eth0") is None
    back, found = parse_ip_params({"address": "198.18.0.100", "nic": ["eth0", "eth1"],
                                   "nic_failback": True, "label": "eth1"})
    assert found == [] and back is not None and back.nic_failback
    assert back.label_on("eth0") == "eth0"  # a label that is a nic's name: the nic's name


@pytest.mark.parametrize(("params", "expected"), [
    ({"nic": []}, "parameter 'nic' is an empty list"),
    ({"nic": ["eth0", "eth1", "eth0"]}, "lists eth0 more than once"),
    ({"nic": ["eth0", "averyveryverylongnic"]}, "parameter 'nic' (item 2): "
                                                "'averyveryverylongnic' is 20 characters"),
    ({"nic": ["eth0", ""]}, "parameter 'nic' (item 2) is empty"),
    ({"nic": ["eth0:web", "eth1"]}, "parameter 'nic' (item 1): 'eth0:web' is an alias label"),
    ({"nic": ["eth0", "a/b"]}, "not a valid interface name"),
    ({"nic": "eth0", "nic_failback": "yes"}, "parameter 'nic_failback' must be true or false"),
    ({"nic": ["eth0", "eth1"], "label": "eth2:web"},
     "must be a listed nic's name, a colon and a suffix, like \"eth0:web\""),
    ({"nic": ["eth0", "enp0s31f6"], "label": "eth0:website"},
     "on enp0s31f6 the address would carry the label 'enp0s31f6:website', 17 characters"),
])
def test_bad_nic_lists_are_named(params: dict[str, Any], expected: str) -> None:
    found = problems(address="198.18.0.100", **params)
    assert any(expected in p for p in found), found


def test_the_guardian_is_told_the_address_on_every_listed_nic() -> None:
    config = ResourceConfig(name="vip", type="ip", group="g",
                            params={"address": VIP, "nic": ["eth0", "eth1"]})
    resource = IpType().instantiate(config, "n1", Path("/nonexistent"))
    assert isinstance(resource, IpResource)
    assert [str(a) for a in resource.holding().addresses] == [f"{VIP}/24 on eth0",
                                                               f"{VIP}/24 on eth1"]
    assert resource.active_nic is None  # not in service


def test_type_defaults_and_registry() -> None:
    rtype = IpType()
    assert (rtype.default_monitor().interval, rtype.default_monitor().timeout) == (10.0, 20.0)
    assert rtype.defaults().start_timeout == 20.0
    assert isinstance(default_registry().get("ip"), IpType)


def test_gratuitous_arp_frame_layout() -> None:
    mac = bytes.fromhex("020000000001")
    frame = gratuitous_arp_frame(mac, ipaddress.IPv4Address(VIP))
    vip = ipaddress.IPv4Address(VIP).packed
    assert len(frame) == 60
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac and frame[12:14] == b"\x08\x06"
    assert frame[20:22] == b"\x00\x01"  # a request
    assert frame[22:28] == mac and frame[28:32] == vip and frame[38:42] == vip


# -- the namespaces -----------------------------------------------------------------------------


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
    return result


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


class Lines:
    """The stdout lines of a child, read by a thread so that every read can time out."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert process.stdout is not None
        stream = process.stdout

        def pump() -> None:
            for line in stream:
                self._queue.put(line)
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def next(self, timeout: float, what: str) -> str:
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer within {timeout:g}s: {what}") from None
        if line is None:
            raise AssertionError(f"the child exited before answering: {what}")
        return line

    def drain(self) -> list[str]:
        lines = []
        with contextlib.suppress(queue.Empty):
            while (line := self._queue.get_nowait()) is not None:
                lines.append(line)
        return lines


class Driver:
    """tests/ip_driver.py inside a namespace: one long-lived process holding the resources."""

    def __init__(self, net: Net, ns: str, specs: list[dict[str, Any]],
                 wrapper: tuple[str, ...] = ()) -> None:
        self.log = net.tmp / f"driver-{next(_names)}.log"
        self.process = net.spawn(ns, [*wrapper, sys.executable, "-m", "tests.support.ip_driver",
                                      json.dumps(specs)], stderr_to=self.log)
        self.lines = Lines(self.process)
        assert json.loads(self.lines.next(WAIT, self._what("startup"))) == {"ready": True}

    def _what(self, op: str) -> str:
        return f"ip_driver {op} (log {self.log}: {self.log.read_text()[-2000:]})"

    def call(self, op: str, name: str = "vip", timeout: float = 30.0,
             **extra: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, "name": name, **extra}) + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.lines.next(timeout, self._what(op)))
        return answer


class Net:
    """Two fresh namespaces, A and B, joined by veth vigA (in A) <-> vigB (in B)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.a = f"vigt-{os.getpid()}-{next(_names)}"
        self.b = f"vigt-{os.getpid()}-{next(_names)}"
        self.made: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []

    def namespaces(self) -> None:
        for ns in (self.a, self.b):
            made = _run("ip", "netns", "add", ns, check=False)
            if made.returncode != 0:
                pytest.skip(f"cannot create network namespaces: {made.stderr.strip()}")
            self.made.append(ns)

    def create(self) -> None:
        self.namespaces()
        # Made inside A, the peer moved straight to B: the root namespace never sees either.
        _run("ip", "-n", self.a, "link", "add", NIC_A, "type", "veth", "peer", "name", NIC_B,
             "netns", self.b)
        _run("ip", "-n", self.a, "addr", "add", "198.18.200.1/24", "dev", NIC_A)
        _run("ip", "-n", self.b, "addr", "add", "198.18.200.2/24", "dev", NIC_B)
        for ns, nic in ((self.a, NIC_A), (self.b, NIC_B)):
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "link", "set", nic, "up")
        self.wait_carrier()

    def destroy(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()  # by PID: ip netns exec execs the program itself
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for ns in self.made:
            _run("ip", "netns", "del", ns, check=False)

    def ip(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("ip", "-n", ns, *args, check=check)

    def spawn(self, ns: str, argv: list[str], stderr_to: Path | None = None
              ) -> subprocess.Popen[str]:
        with contextlib.ExitStack() as stack:
            stderr = (stack.enter_context(stderr_to.open("w")) if stderr_to is not None
                      else subprocess.DEVNULL)
            process = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv], cwd=ROOT, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        self.processes.append(process)
        return process

    def python(self, ns: str, code: str, *args: str, timeout: float = WAIT
               ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def driver(self, *specs: dict[str, Any], wrapper: tuple[str, ...] = ()) -> Driver:
        return Driver(self, self.a, list(specs), wrapper)

    def link(self, ns: str, nic: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self.ip(ns, "-j", "link", "show", nic).stdout)
        return found[0]

    def mac(self, ns: str, nic: str) -> str:
        return str(self.link(ns, nic)["address"])

    def carrier(self, ns: str, nic: str) -> bool:
        return "LOWER_UP" in self.link(ns, nic)["flags"]

    def wait_carrier(self) -> None:
        _wait_for(lambda: self.carrier(self.a, NIC_A) and self.carrier(self.b, NIC_B),
                  f"carrier on {NIC_A} and {NIC_B}")

    def addresses(self, ns: str, nic: str) -> list[dict[str, Any]]:
        shown: list[dict[str, Any]] = json.loads(self.ip(ns, "-j", "addr", "show", "dev",
                                                         nic).stdout)
        return list(shown[0].get("addr_info", [])) if shown else []

    def has_address(self, ns: str, nic: str, address: str) -> bool:
        return any(a.get("local") == address for a in self.addresses(ns, nic))


N = TypeVar("N", bound=Net)


def _made(network: N) -> Iterator[N]:
    """The body of a fixture that makes ``network``'s namespaces and destroys them after."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and adds addresses in them")
    if shutil.which("ip") is None:
        pytest.skip("needs the ip tool (iproute2) to create network namespaces")
    try:
        network.create()
        yield network
    finally:
        network.destroy()


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    yield from _made(Net(tmp_path))


def vip(**extra: Any) -> dict[str, Any]:
    params = {"address": VIP, "prefix": 24, "nic": NIC_A, "arp_count": 1}
    params.update(extra)
    return {"name": "vip", "params": params}


# -- real traffic -------------------------------------------------------------------------------

SERVER = """
import socket, sys
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], 8080))
server.listen(8)
print("listening", flush=True)
server.settimeout(60)
while True:
    connection, _ = server.accept()
    connection.sendall(b"vigil here\\n")
    connection.close()
"""

CLIENT = """
import socket, sys
client = socket.create_connection((sys.argv[1], 8080), timeout=float(sys.argv[2]))
client.settimeout(float(sys.argv[2]))
print(client.recv(100).decode().strip())
"""

CAPTURE = """
import ipaddress, json, socket, struct, sys
vip = ipaddress.IPv4Address(sys.argv[2]).packed
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
sock.bind((sys.argv[1], 0))
print(json.dumps({"ready": True}), flush=True)
while True:
    frame = sock.recv(2048)
    op, sha, spa, tha, tpa = struct.unpack("!6xH6s4s6s4s", frame[14:42])
    if op == 1 and spa == vip and tpa == vip:
        print(json.dumps({"src": frame[6:12].hex(":"), "sha": sha.hex(":")}), flush=True)
"""


def serve(net: Net, address: str = VIP) -> None:
    server = net.spawn(net.a, [sys.executable, "-c", SERVER, address])
    assert Lines(server).next(WAIT, "the TCP server in A") == "listening\n"


def connect(net: Net, address: str = VIP, timeout: float = 1.0) -> str | None:
    """What the server says to a client in B, or None when B cannot reach it."""
    result = net.python(net.b, CLIENT, address, str(timeout), timeout=timeout + WAIT)
    return result.stdout.strip() if result.returncode == 0 else None


def connect_eventually(net: Net) -> str | None:
    deadline = time.monotonic() + WAIT
    while True:
        answer = connect(net)
        if answer is not None or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


class Capture:
    """Gratuitous ARP frames for VIP arriving in B, read from a raw socket."""

    def __init__(self, net: Net) -> None:
        process = net.spawn(net.b, [sys.executable, "-c", CAPTURE, NIC_B, VIP])
        self.lines = Lines(process)
        assert json.loads(self.lines.next(WAIT, "the ARP capture in B")) == {"ready": True}
        self.frames: list[dict[str, str]] = []

    def wait_for(self, count: int) -> list[dict[str, str]]:
        deadline = time.monotonic() + WAIT
        while len(self.frames) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"saw {len(self.frames)} gratuitous ARP frames, expected "
                                     f"{count}")
            self.frames.append(json.loads(self.lines.next(remaining, "an ARP frame")))
        return self.frames

    def settle(self, quiet: float) -> list[dict[str, str]]:
        """All frames, once none has come for ``quiet`` seconds (bounded by WAIT)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                self.frames.append(json.loads(self.lines.next(quiet, "")))
            except AssertionError:
                return self.frames
        raise AssertionError("gratuitous ARP frames kept coming")


def neighbour_mac(net: Net) -> str | None:
    shown = json.loads(net.ip(net.b, "-j", "neigh", "show", VIP, "dev", NIC_B).stdout)
    return str(shown[0].get("lladdr")) if shown else None


def test_start_adds_a_reachable_address_and_announces_it(net: Net) -> None:
    mac_a = net.mac(net.a, NIC_A)
    # B believes VIP is elsewhere (the node that held it before): only gratuitous ARP fixes
    # that before the entry goes stale, and B sends nothing to VIP until the check below.
    net.ip(net.b, "neigh", "replace", VIP, "lladdr", "02:00:00:00:00:01", "dev", NIC_B,
           "nud", "stale")
    capture = Capture(net)
    driver = net.driver(vip(arp_count=3, arp_interval="100ms"))
    started = driver.call("start")
    assert started["ok"], started
    assert started["state"] == "in_service"
    assert f"added {VIP}/24 to {NIC_A}" in started["reason"]
    frames = capture.wait_for(3)
    assert all(f["src"] == mac_a and f["sha"] == mac_a for f in frames), frames
    assert len(capture.settle(quiet=0.5)) == 3
    _wait_for(lambda: neighbour_mac(net) == mac_a, "B's neighbour entry for VIP to show A's MAC")
    assert net.has_address(net.a, NIC_A, VIP)
    serve(net)
    assert connect_eventually(net) == "vigil here"
    monitored = driver.call("monitor")
    assert monitored["ok"] and monitored["state"] == "in_service", monitored
    again = driver.call("start")
    assert again["ok"] and again["state"] == "in_service"


def test_monitor_fails_when_the_address_goes_or_the_link_goes_down(net: Net) -> None:
    driver = net.driver(vip())
    assert driver.call("start")["ok"]
    net.ip(net.a, "addr", "del", f"{VIP}/24", "dev", NIC_A)
    gone = driver.call("monitor")
    assert not gone["ok"] and gone["state"] == "failed"
    assert f"address {VIP}/24 is gone from {NIC_A}" in gone["reason"]

    assert driver.call("stop")["state"] == "oos"
    assert driver.call("start")["ok"]
    net.ip(net.a, "link", "set", NIC_A, "down")
    down = driver.call("monitor")
    assert not down["ok"] and down["state"] == "failed"
    assert "link down" in down["reason"] and "administratively" in down["reason"]
    assert driver.call("stop")["state"] == "oos"

    net.ip(net.a, "link", "set", NIC_A, "up")
    net.wait_carrier()
    assert driver.call("start")["ok"]
    net.ip(net.b, "link", "set", NIC_B, "down")  # A's end loses its carrier
    _wait_for(lambda: "NO-CARRIER" in net.link(net.a, NIC_A)["flags"], "no carrier on vigA")
    no_carrier = driver.call("monitor")
    assert not no_carrier["ok"] and no_carrier["state"] == "failed"
    assert "link down" in no_carrier["reason"] and "carrier" in no_carrier["reason"]


def test_stop_removes_the_address_and_a_second_stop_is_fine(net: Net) -> None:
    driver = net.driver(vip())
    assert driver.call("start")["ok"]
    serve(net)
    assert connect_eventually(net) == "vigil here"
    stopped = driver.call("stop")
    assert stopped["ok"] and stopped["state"] == "oos", stopped
    assert f"removed {VIP}/24 from {NIC_A}" in stopped["reason"]
    assert not net.has_address(net.a, NIC_A, VIP), net.addresses(net.a, NIC_A)
    assert net.has_address(net.a, NIC_A, "198.18.200.1")  # nothing else was touched
    assert connect(net) is None
    again = driver.call("stop")
    assert again["ok"] and again["state"] == "oos", again
    monitored = driver.call("monitor")
    assert monitored["ok"] and monitored["state"] == "oos", monitored


def test_stop_of_an_address_removed_behind_its_back_succeeds(net: Net) -> None:
    driver = net.driver(vip())
    assert driver.call("start")["ok"]
    net.ip(net.a, "addr", "del", f"{VIP}/24", "dev", NIC_A)
    forced = driver.call("force_stop")
    assert forced["ok"] and forced["state"] == "oos"
    assert "was not on" in forced["reason"]


def test_start_fails_on_a_nic_that_does_not_exist(net: Net) -> None:
    driver = net.driver(vip(nic="nosuch0"))
    started = driver.call("start")
    assert not started["ok"] and started["state"] == "failed"
    assert "nic 'nosuch0' does not exist" in started["reason"] and NIC_A in started["reason"]
    validated = driver.call("validate")
    assert any("'nosuch0' does not exist" in p for p in validated["problems"]), validated
    monitored = driver.call("monitor")
    assert monitored["state"] == "failed"  # a failed start stays failed until a stop
    assert driver.call("stop")["ok"]


def test_start_fails_on_a_link_that_is_down_and_adds_nothing(net: Net) -> None:
    net.ip(net.a, "link", "set", NIC_A, "down")
    driver = net.driver(vip())
    started = driver.call("start")
    assert not started["ok"] and "link down" in started["reason"]
    assert not net.has_address(net.a, NIC_A, VIP)


def test_start_accepts_an_address_that_is_already_there(net: Net) -> None:
    net.ip(net.a, "addr", "add", f"{VIP}/24", "dev", NIC_A)
    driver = net.driver(vip())
    assert driver.call("validate") == {"problems": []}
    started = driver.call("start")
    assert started["ok"] and "already on" in started["reason"], started
    assert driver.call("stop")["ok"]
    assert not net.has_address(net.a, NIC_A, VIP)


def test_label_and_broadcast_are_applied(net: Net) -> None:
    driver = net.driver(vip(label=f"{NIC_A}:web", broadcast="+"))
    assert driver.call("start")["ok"]
    entry = next(a for a in net.addresses(net.a, NIC_A) if a.get("local") == VIP)
    assert entry["label"] == f"{NIC_A}:web"
    assert entry["broadcast"] == "198.18.200.255"


def test_stopping_a_primary_address_keeps_the_other_addresses_of_its_subnet(net: Net) -> None:
    # No address of 198.18.202.0/24 exists yet: the first one started becomes the primary.
    first = {"name": "first", "params": {"address": "198.18.202.10", "nic": NIC_A,
                                         "arp_count": 0}}
    second = {"name": "second", "params": {"address": "198.18.202.11", "nic": NIC_A,
                                           "arp_count": 0}}
    driver = net.driver(first, second)
    assert driver.call("start", "first")["ok"]
    assert driver.call("start", "second")["ok"]
    stopped = driver.call("stop", "first")
    assert stopped["ok"] and "promote_secondaries" in stopped["reason"], stopped
    assert net.has_address(net.a, NIC_A, "198.18.202.11")
    assert driver.call("monitor", "second")["state"] == "in_service"


def test_stop_ends_the_gratuitous_arp_still_being_sent(net: Net) -> None:
    capture = Capture(net)
    driver = net.driver(vip(arp_count=100, arp_interval="50ms"))
    started = driver.call("start")
    assert started["ok"] and "1 of 100" in started["reason"], started
    capture.wait_for(3)  # the background frames are flowing
    assert driver.call("force_stop")["state"] == "oos"
    sent = len(capture.settle(quiet=0.5))
    assert sent < 100
    assert len(capture.settle(quiet=0.5)) == sent  # and none came later


def test_a_stop_that_netlink_refuses_leaves_the_resource_unclean(net: Net) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to run the resource without CAP_NET_ADMIN")
    net.ip(net.a, "addr", "add", f"{VIP}/24", "dev", NIC_A)
    other = {"name": "other", "params": {"address": "198.18.200.101", "nic": NIC_A}}
    # Root, but without CAP_NET_ADMIN: netlink refuses every change.
    driver = net.driver(vip(), other, wrapper=(setpriv, "--bounding-set", "-net_admin"))
    stopped = driver.call("stop")
    assert not stopped["ok"] and stopped["state"] == "unclean", stopped
    assert f"cannot remove {VIP}/24 from {NIC_A}" in stopped["reason"]
    assert "Operation not permitted" in stopped["reason"]
    refused = driver.call("start")
    assert not refused["ok"] and refused["state"] == "unclean"
    started = driver.call("start", "other")
    assert not started["ok"] and started["state"] == "failed"
    assert "CAP_NET_ADMIN" in started["reason"], started
    assert net.has_address(net.a, NIC_A, VIP)


# IPv6 on the wire is not tested here: network tests keep to 198.18.0.0/15. The IPv6 code
# (duplicate address detection) is exercised by parameter checks only.


def test_resource_in_this_process_reports_a_missing_nic_without_root() -> None:
    # Runs in the test's own namespace but only reads: an unknown nic is never modified.
    config = ResourceConfig(name="vip", type="ip", group="g",
                            params={"address": VIP, "nic": "vigt-none0"})
    resource = IpType().instantiate(config, "n1", Path("/nonexistent"))
    assert isinstance(resource, IpResource)
    monitored = resource.monitor()
    assert monitored.ok and monitored.state.value == "oos"
    assert "no nic vigt-none0" in monitored.reason


# -- two nics on one segment --------------------------------------------------------------------

NIC_1, NIC_2 = "vigA1", "vigA2"  # in A
PORT_1, PORT_2, BRIDGE = "vigB1", "vigB2", "vigBr"  # in B: A's peers, in one bridge
VIP2 = "198.18.201.100"


class TwoNics(Net):
    """A with two nics, vigA1 and vigA2, both on B's bridge (one segment, as two NICs into one
    switch). A has no address of its own on them: only the resource's, so the address's
    subnet route follows it. A answers ARP only on the nic that holds the address
    (``arp_ignore = 1``), as a host with two NICs on one segment should."""

    def create(self) -> None:
        self.namespaces()
        bridge = self.ip(self.b, "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0",
                         "stp_state", "0", check=False)
        if bridge.returncode != 0:
            pytest.skip(f"cannot create a bridge: {bridge.stderr.strip()}")
        for nic, port in ((NIC_1, PORT_1), (NIC_2, PORT_2)):
            self.ip(self.a, "link", "add", nic, "type", "veth", "peer", "name", port,
                    "netns", self.b)
            self.ip(self.b, "link", "set", port, "master", BRIDGE)
        self.ip(self.b, "addr", "add", "198.18.201.2/24", "dev", BRIDGE)
        _run("ip", "netns", "exec", self.a, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1")
        for ns, nics in ((self.a, ("lo", NIC_1, NIC_2)), (self.b, ("lo", PORT_1, PORT_2,
                                                                     BRIDGE))):
            for nic in nics:
                self.ip(ns, "link", "set", nic, "up")
        self.wait_carrier()

    def wait_carrier(self) -> None:
        _wait_for(lambda: self.carrier(self.a, NIC_1) and self.carrier(self.a, NIC_2),
                  f"carrier on {NIC_1} and {NIC_2}")

    def cut(self, nic: str) -> None:
        """Take ``nic``'s carrier away: its peer in B goes down."""
        self.ip(self.b, "link", "set", PORT_1 if nic == NIC_1 else PORT_2, "down")
        _wait_for(lambda: not self.carrier(self.a, nic), f"no carrier on {nic}")

    def mend(self, nic: str) -> None:
        self.ip(self.b, "link", "set", PORT_1 if nic == NIC_1 else PORT_2, "up")
        _wait_for(lambda: self.carrier(self.a, nic), f"carrier on {nic}")

    def holder(self) -> list[str]:
        return [n for n in (NIC_1, NIC_2) if self.has_address(self.a, n, VIP2)]

    def neighbour_mac(self) -> str | None:
        shown = json.loads(self.ip(self.b, "-j", "neigh", "show", VIP2, "dev", BRIDGE).stdout)
        return str(shown[0].get("lladdr")) if shown and shown[0].get("lladdr") else None


@pytest.fixture
def two(tmp_path: Path) -> Iterator[TwoNics]:
    yield from _made(TwoNics(tmp_path))


def vip2(**extra: Any) -> dict[str, Any]:
    params = {"address": VIP2, "prefix": 24, "nic": [NIC_1, NIC_2], "arp_count": 3,
              "arp_interval": "50ms"}
    params.update(extra)
    return {"name": "vip", "params": params}


def reached(net: TwoNics) -> bool:
    """Whether B gets an answer from VIP2's TCP server (retrying for a while)."""
    deadline = time.monotonic() + WAIT
    while connect(net, VIP2) != "vigil here":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


ECHO = """
import socket, sys
echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
echo.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: the address may be on no nic a while
echo.bind((sys.argv[1], 9999))
print("listening", flush=True)
while True:
    data, peer = echo.recvfrom(100)
    echo.sendto(data, peer)
"""

PROBE = """
import json, socket, sys, threading, time
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.connect((sys.argv[1], 9999))
heard = []

def send():
    while True:
        try:
            probe.send(b"probe")
        except OSError:
            pass
        time.sleep(0.002)

def hear():
    while True:
        try:
            probe.recv(100)
        except OSError:
            continue
        heard.append(time.monotonic())

threading.Thread(target=send, daemon=True).start()
threading.Thread(target=hear, daemon=True).start()
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    after, deadline = float(line), time.monotonic() + 10
    first = None
    while first is None and time.monotonic() < deadline:
        first = next((t for t in reversed(heard) if t > after), None)
        if first is not None:
            first = min(t for t in heard if t > after)
        time.sleep(0.005)
    print(json.dumps({"first": first}), flush=True)
"""


class Prober:
    """B sends a UDP datagram to VIP2 every 2 ms; A's echo server answers. Tells when the first
    answer after a moment (time.monotonic(), the same clock in every namespace) came."""

    def __init__(self, net: TwoNics) -> None:
        echo = net.spawn(net.a, [sys.executable, "-c", ECHO, VIP2])
        assert Lines(echo).next(WAIT, "the UDP echo server in A") == "listening\n"
        self.process = net.spawn(net.b, [sys.executable, "-c", PROBE, VIP2])
        self.lines = Lines(self.process)
        assert json.loads(self.lines.next(WAIT, "the UDP prober in B")) == {"ready": True}

    def first_answer_after(self, moment: float) -> float | None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{moment!r}\n")
        self.process.stdin.flush()
        first = json.loads(self.lines.next(WAIT, "the prober's answer"))["first"]
        return None if first is None else float(first)


def test_the_address_moves_to_the_next_nic_when_its_nic_loses_carrier(two: TwoNics) -> None:
    mac_1, mac_2 = two.mac(two.a, NIC_1), two.mac(two.a, NIC_2)
    driver = two.driver(vip2(label=f"{NIC_1}:web"))
    started = driver.call("start")
    assert started["ok"] and started["active_nic"] == NIC_1, started
    assert f"added {VIP2}/24 to {NIC_1}" in started["reason"]
    assert two.holder() == [NIC_1]
    serve(two, VIP2)
    assert reached(two)
    _wait_for(lambda: two.neighbour_mac() == mac_1, f"B's neighbour entry for {VIP2} on {NIC_1}")
    prober = Prober(two)
    assert prober.first_answer_after(time.monotonic()) is not None  # answered through vigA1

    two.cut(NIC_1)
    moved = driver.call("nics_changed", down=[NIC_1])
    result = moved["result"]
    assert result is not None and result["ok"] and result["state"] == "in_service", moved
    assert (f"moved {VIP2}/24 from {NIC_1} (link down: {NIC_1} has no carrier"
            in result["reason"]), result
    assert f"to {NIC_2}" in result["reason"] and moved["active_nic"] == NIC_2
    answered = prober.first_answer_after(moved["started"])
    assert two.holder() == [NIC_2]
    entry = next(a for a in two.addresses(two.a, NIC_2) if a.get("local") == VIP2)
    assert entry["label"] == f"{NIC_2}:web"  # the label's suffix follows the address
    _wait_for(lambda: two.neighbour_mac() == mac_2,
              f"B's neighbour entry for {VIP2} to show {NIC_2}'s MAC (gratuitous ARP)")
    assert reached(two)
    assert answered is not None, "B never heard the echo again after the move"
    print(f"\nip move {NIC_1} -> {NIC_2}: nics_changed took {moved['duration'] * 1000:.2f} ms; "
          f"B's first UDP answer came {(answered - moved['started']) * 1000:.1f} ms after it "
          "began (B probes every 2 ms)")

    assert driver.call("nics_changed", down=[NIC_1])["result"] is None  # nothing to do
    monitored = driver.call("monitor")
    assert monitored["ok"] and monitored["state"] == "in_service", monitored
    assert f"is on {NIC_2}" in monitored["reason"]
    stopped = driver.call("stop")
    assert stopped["ok"] and f"removed {VIP2}/24 from {NIC_2}" in stopped["reason"], stopped
    assert two.holder() == [] and stopped["active_nic"] is None
    assert driver.call("nics_changed", down=[])["result"] is None  # not in service


def test_the_monitor_moves_the_address_when_no_nic_event_came(two: TwoNics) -> None:
    mac_2 = two.mac(two.a, NIC_2)
    driver = two.driver(vip2())
    assert driver.call("start")["ok"]
    serve(two, VIP2)
    assert reached(two)
    two.cut(NIC_1)
    monitored = driver.call("monitor")
    assert monitored["ok"] and monitored["state"] == "in_service", monitored
    assert f"moved {VIP2}/24 from {NIC_1}" in monitored["reason"]
    assert monitored["active_nic"] == NIC_2 and two.holder() == [NIC_2]
    _wait_for(lambda: two.neighbour_mac() == mac_2, f"B's neighbour entry on {NIC_2}'s MAC")
    assert reached(two)
    state = driver.call("state")
    assert state["state"] == "in_service" and "moved" in state["reason"], state


def test_no_nic_that_can_carry_the_address_is_a_failure_naming_each(two: TwoNics) -> None:
    driver = two.driver(vip2())
    assert driver.call("start")["ok"]
    two.cut(NIC_1)
    two.cut(NIC_2)
    told = driver.call("nics_changed", down=[NIC_1, NIC_2])["result"]
    assert told is not None and not told["ok"] and told["state"] == "failed", told
    assert told["reason"].startswith(f"no NIC can carry {VIP2}/24: ")
    assert f"link down: {NIC_1} has no carrier" in told["reason"]
    assert f"link down: {NIC_2} has no carrier" in told["reason"]
    assert two.holder() == [NIC_1]  # nothing removed that is not needed
    monitored = driver.call("monitor")
    assert not monitored["ok"] and monitored["state"] == "failed", monitored
    assert "no NIC can carry" in monitored["reason"]
    stopped = driver.call("stop")
    assert stopped["ok"] and two.holder() == [], stopped

    refused = driver.call("start")
    assert not refused["ok"] and "no NIC can carry" in refused["reason"], refused
    assert NIC_1 in refused["reason"] and NIC_2 in refused["reason"]
    assert two.holder() == []
    assert driver.call("stop")["ok"]
    two.mend(NIC_2)
    still = driver.call("start")  # the NIC monitor's word stands until it says otherwise
    assert not still["ok"], still
    assert f"{NIC_2} is reported down by this node's NIC monitor" in still["reason"]
    assert driver.call("stop")["ok"]
    assert driver.call("nics_changed", down=[NIC_1])["result"] is None  # not in service
    started = driver.call("start")  # the first listed nic that can carry it
    assert started["ok"] and started["active_nic"] == NIC_2 and two.holder() == [NIC_2]


def test_without_nic_failback_the_address_stays_where_it_moved(two: TwoNics) -> None:
    driver = two.driver(vip2())
    assert driver.call("start")["ok"]
    two.cut(NIC_1)
    assert driver.call("nics_changed", down=[NIC_1])["result"]["ok"]
    two.mend(NIC_1)
    assert driver.call("nics_changed", down=[])["result"] is None
    monitored = driver.call("monitor")
    assert monitored["ok"] and monitored["active_nic"] == NIC_2, monitored
    assert two.holder() == [NIC_2]


def test_with_nic_failback_the_address_goes_back_once_its_nic_is_up(two: TwoNics) -> None:
    mac_1, mac_2 = two.mac(two.a, NIC_1), two.mac(two.a, NIC_2)
    driver = two.driver(vip2(nic_failback=True))
    assert driver.call("start")["ok"]
    serve(two, VIP2)
    assert reached(two)  # B has a neighbour entry, which gratuitous ARP updates
    # The node's NIC monitor says vigA1 is down although its link is up: it is obeyed.
    moved = driver.call("nics_changed", down=[NIC_1])["result"]
    assert moved is not None and moved["ok"], moved
    assert f"({NIC_1} is reported down by this node's NIC monitor)" in moved["reason"]
    assert two.holder() == [NIC_2]
    _wait_for(lambda: two.neighbour_mac() == mac_2, f"B's neighbour entry on {NIC_2}")
    monitored = driver.call("monitor")  # still reported down: no failback
    assert monitored["ok"] and monitored["active_nic"] == NIC_2, monitored
    back = driver.call("nics_changed", down=[])
    assert back["result"] is not None and back["result"]["ok"], back
    assert f"moved {VIP2}/24 back from {NIC_2} to {NIC_1}" in back["result"]["reason"]
    assert back["active_nic"] == NIC_1 and two.holder() == [NIC_1]
    _wait_for(lambda: two.neighbour_mac() == mac_1, f"B's neighbour entry back on {NIC_1}")
    assert reached(two)
    print(f"\nip move back {NIC_2} -> {NIC_1}: nics_changed took "
          f"{back['duration'] * 1000:.2f} ms")

    # Without a NIC event the monitor moves it, and brings it back.
    two.cut(NIC_1)
    assert driver.call("monitor")["active_nic"] == NIC_2
    two.mend(NIC_1)
    again = driver.call("monitor")
    assert again["ok"] and "back" in again["reason"] and again["active_nic"] == NIC_1, again
    assert two.holder() == [NIC_1]


def test_stop_removes_the_address_from_every_listed_nic_that_has_it(two: TwoNics) -> None:
    driver = two.driver(vip2())
    assert driver.call("start")["ok"]
    two.ip(two.a, "addr", "add", f"{VIP2}/24", "dev", NIC_2)  # a half-finished move
    stopped = driver.call("stop")
    assert stopped["ok"] and f"from {NIC_1} and {NIC_2}" in stopped["reason"], stopped
    assert two.holder() == []


FENCE = """
import json, sys
from pathlib import Path
from vigil.config import ResourceConfig
from vigil.guard.cgroups import NodeCgroups
from vigil.guard.fence import Fencer
from vigil.guard.holdings import Holdings
from vigil.resources.ip import IpType
config = ResourceConfig(name="vip", type="ip", group="g", params=json.loads(sys.argv[1]))
holding = IpType().instantiate(config, "n1", Path("/nonexistent")).holding()
fencer = Fencer(NodeCgroups("iptest", root=Path(sys.argv[2])), 1.0)
report = fencer.fence(Holdings((holding,)), "test")
print(json.dumps({"removed": [str(a) for a in report.removed],
                  "problems": list(report.problems), "remaining": str(report.remaining)}))
"""


def test_the_guardian_removes_the_address_from_whichever_nic_has_it(
        two: TwoNics, tmp_path: Path) -> None:
    driver = two.driver(vip2())
    assert driver.call("start")["ok"]
    two.cut(NIC_1)
    assert driver.call("nics_changed", down=[NIC_1])["result"]["ok"]
    params = {**vip2()["params"], "nic": [NIC_1, NIC_2, "vigGone"]}
    fenced = two.python(two.a, FENCE, json.dumps(params), str(tmp_path / "no-cgroups"))
    assert fenced.returncode == 0, fenced.stderr
    report = json.loads(fenced.stdout)
    # Not on vigA1, no vigGone at all: both count as removed, neither as a problem.
    assert report == {"removed": [f"{VIP2}/24 on {NIC_2}"], "problems": [],
                      "remaining": "nothing"}, report
    assert two.holder() == []
