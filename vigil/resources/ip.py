"""The ip resource type: an IP address that moves between nodes (a "virtual IP").

Start adds the address to a network interface of this node and announces it with gratuitous
ARP, so that the neighbours' ARP caches point at this node at once instead of at the node that
held the address before; stop removes it; monitor checks that it is still there and that the
link can carry traffic. Everything goes over netlink (pyroute2) and a raw packet socket, in the
network namespace of the daemon's process: run the daemon inside a node's namespace and the
address lands there. Needs CAP_NET_ADMIN (the address) and CAP_NET_RAW (the ARP frames).

Parameters:

``address`` (required)
    The IPv4 or IPv6 address, without a prefix length: ``"198.18.0.100"``, ``"2001:db8::100"``.
``prefix``
    The prefix length (netmask length): default 24 for IPv4, 64 for IPv6. An IPv4 netmask
    such as ``"255.255.255.0"`` is accepted too.
``nic`` (required)
    The interface to put the address on, e.g. ``"eth0"``. It must exist when the resource
    starts; Vigil never brings an interface up or down.
``label``
    IPv4 only: an address label as ``ifconfig`` shows it, the nic name, a colon and a suffix
    (``"eth0:web"``), at most 15 characters.
``broadcast``
    IPv4 only: the broadcast address, or ``"+"`` (host bits set: 198.18.0.255 for a /24) or
    ``"-"`` (host bits clear). Default: none, as ``ip addr add`` without ``brd``.
``arp_count``
    How many gratuitous ARP frames to send after adding an IPv4 address (default 5; 0 sends
    none). Ignored for IPv6.
``arp_interval``
    The time between two of them: seconds or a string such as ``"200ms"`` (default
    ``"200ms"``, at most 10 s; note that a bare number is seconds, not milliseconds as in
    the OCF IPaddr2 agent).

Start fails when the nic does not exist or its link is down (the node cannot serve the address,
so another one should). Adding an address that is already there succeeds. The first gratuitous
ARP frame (an ARP request whose sender and target are the address, to the broadcast MAC) is
sent before the start returns; the others follow every ``arp_interval`` on a background thread,
which a stop ends. Neighbours update an ARP entry they already have (pointing at the old node);
Linux does not create new entries from gratuitous ARP unless ``arp_accept`` is set, which is
fine: a host without an entry asks when it needs one. An IPv6 start waits, within
``start_timeout``, until duplicate address detection has finished (the address is usable only
then) and fails if another host has the address. No unsolicited neighbour advertisement is
sent for IPv6 (not done: neighbours find the new node when their entries go stale).

Stop removes the address (an address already gone, or a nic gone, counts as stopped); a netlink
error makes it UNCLEAN. Removing an IPv4 address that is *primary* on its subnet makes Linux
also remove the secondary addresses of that subnet (other virtual IPs!) unless the interface's
``promote_secondaries`` setting is on; new network namespaces have it off. So before removing a
primary address that has secondaries, the stop turns ``net.ipv4.conf.<nic>.promote_secondaries``
on for that nic and says so in its reason.

Monitor finds the resource in service when the address is on the nic and the link is up:
administratively up, with carrier (a veth whose peer is down or gone has none) and an operstate
that can pass traffic. A link that is down is FAILED ("link down: ..."); an address that is
missing is FAILED while the resource should be in service ("address 198.18.0.100/24 is gone from
eth0") and simply out of service otherwise. ``monitor.depth`` is not used; every probe is two
netlink queries. Default monitor: every 10 s, timeout 20 s (as IPaddr2).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pyroute2 import IPRoute, NetlinkError

from vigil.config import MonitorConfig, ParamValue, ResourceConfig, TypeDefaults
from vigil.guard.holdings import Address, ResourceHolding
from vigil.resources.model import (
    OpResult,
    Resource,
    ResourceType,
    ServiceState,
    parse_seconds,
    unknown_params,
)

__all__ = ["IpResource", "IpSettings", "IpType", "gratuitous_arp_frame", "parse_ip_params"]

log = logging.getLogger(__name__)

_PARAMS: Final = ("address", "arp_count", "arp_interval", "broadcast", "label", "nic", "prefix")

DEFAULT_ARP_COUNT: Final = 5
DEFAULT_ARP_INTERVAL: Final = "200ms"
MAX_ARP_COUNT: Final = 1000
#: Longer intervals are almost surely milliseconds written as a bare number (IPaddr2's unit).
MAX_ARP_INTERVAL: Final = 10.0
#: IFNAMSIZ is 16 with the terminating NUL.
MAX_IFNAME: Final = 15

_ETH_P_ARP: Final = 0x0806
_ETH_P_IP: Final = 0x0800
_ARPHRD_ETHER: Final = 1
_ARPOP_REQUEST: Final = 1
_ETH_MIN_FRAME: Final = 60  # without the FCS; some drivers do not pad short frames

_IFF_UP: Final = 0x1
_IFF_NOARP: Final = 0x80
_IFF_LOWER_UP: Final = 0x10000
_IFA_F_SECONDARY: Final = 0x01
_IFA_F_DADFAILED: Final = 0x08
_IFA_F_TENTATIVE: Final = 0x40
#: Operstates (RFC 2863) in which a link cannot pass traffic.
_DOWN_OPERSTATES: Final = frozenset({"DOWN", "LOWERLAYERDOWN", "NOTPRESENT", "DORMANT", "TESTING"})

#: How often a start polls for the end of IPv6 duplicate address detection.
_DAD_POLL: Final = 0.05
#: How long a stop waits for the ARP thread to end (it wakes at once when told).
_ANNOUNCER_JOIN: Final = 1.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# -- parameters -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IpSettings:
    """The parameters of one ip resource, checked and converted."""

    address: IPAddress
    prefix: int
    nic: str
    label: str | None
    broadcast: ipaddress.IPv4Address | None
    arp_count: int
    arp_interval: float

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix}"

    @property
    def ipv4(self) -> bool:
        return self.address.version == 4


def _nic_problem(value: ParamValue) -> str | None:
    if not isinstance(value, str):
        return f"parameter 'nic' must be an interface name such as \"eth0\", got {value!r}"
    if not value:
        return "parameter 'nic' is empty; give an interface name such as \"eth0\""
    if len(value) > MAX_IFNAME:
        return (f"parameter 'nic': {value!r} is {len(value)} characters long; Linux interface "
                f"names have at most {MAX_IFNAME}")
    if ":" in value:
        base = value.partition(":")[0]
        return (f"parameter 'nic': {value!r} is an alias label, not an interface; write "
                f"nic = \"{base}\" and label = \"{value}\"")
    if value in (".", "..") or any(c == "/" or c.isspace() or c == "\0" for c in value):
        return (f"parameter 'nic': {value!r} is not a valid interface name (no '/', ':' or "
                "white space, and not '.' or '..')")
    return None


def _parse_address(value: ParamValue) -> tuple[IPAddress | None, str | None]:
    example = "write it like \"198.18.0.100\" or \"2001:db8::100\""
    if not isinstance(value, str):
        return None, f"parameter 'address' must be an IP address string ({example}), got {value!r}"
    text = value.strip()
    if "/" in text:
        host, _, length = text.partition("/")
        return None, (f"parameter 'address': {value!r} includes a prefix length; write "
                      f"address = \"{host}\" and prefix = {length}")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None, f"parameter 'address': {value!r} is not an IPv4 or IPv6 address ({example})"
    if address.is_unspecified or address.is_multicast:
        kind = "unspecified" if address.is_unspecified else "multicast"
        return None, (f"parameter 'address': {address} is a {kind} address; a resource needs "
                      "an address of one host")
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address(
            "255.255.255.255"):
        return None, "parameter 'address': 255.255.255.255 is the limited broadcast address"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return None, (f"parameter 'address': {address} is an IPv4-mapped IPv6 address; write "
                      f"the IPv4 address {address.ipv4_mapped}")
    return address, None


def _parse_prefix(value: ParamValue, address: IPAddress | None) -> tuple[int | None, str | None]:
    maximum = 32 if address is None or address.version == 4 else 128
    for_what = f" for {'IPv4' if maximum == 32 else 'IPv6'} address {address}" if address else ""
    prefix: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        prefix = value
    elif isinstance(value, str) and value.strip().isdigit():
        prefix = int(value.strip())
    elif isinstance(value, str) and "." in value and maximum == 32:
        try:
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{value.strip()}").prefixlen
        except ValueError:
            return None, (f"parameter 'prefix': {value!r} is not a netmask (write a prefix "
                          "length such as 24, or a netmask such as \"255.255.255.0\")")
    else:
        return None, (f"parameter 'prefix' must be a prefix length such as 24 (the netmask "
                      f"length), got {value!r}")
    if address is None and not 1 <= prefix <= 128:
        return None, f"parameter 'prefix' must be from 1 to 128, got {value!r}"
    if not 1 <= prefix <= maximum:
        return None, f"parameter 'prefix' must be from 1 to {maximum}{for_what}, got {value!r}"
    return prefix, None


def _host_problem(address: ipaddress.IPv4Address, prefix: int) -> str | None:
    """An IPv4 address that is its subnet's network or broadcast address cannot be a host's."""
    if prefix >= 31:  # point-to-point and host routes have no such addresses
        return None
    network = ipaddress.IPv4Network(f"{address}/{prefix}", strict=False)
    if address == network.network_address:
        what = "network"
    elif address == network.broadcast_address:
        what = "broadcast"
    else:
        return None
    return (f"parameter 'address': {address} is the {what} address of {network}; choose a host "
            "address or another 'prefix'")


def _parse_count(value: ParamValue) -> tuple[int | None, str | None]:
    count: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        count = value
    elif isinstance(value, str) and value.strip().isdigit():
        count = int(value.strip())
    if count is None or not 0 <= count <= MAX_ARP_COUNT:
        return None, (f"parameter 'arp_count' must be a whole number from 0 to {MAX_ARP_COUNT} "
                      f"(0 sends no gratuitous ARP), got {value!r}")
    return count, None


def _parse_interval(value: ParamValue) -> tuple[float | None, str | None]:
    try:
        seconds = parse_seconds(value)
    except ValueError as exc:
        return None, f"parameter 'arp_interval': {exc}"
    if seconds > MAX_ARP_INTERVAL:
        hint = (f"; a bare number is seconds: did you mean \"{value}ms\"?"
                if isinstance(value, int | float) else "")
        return None, (f"parameter 'arp_interval' must be at most {MAX_ARP_INTERVAL:g}s, got "
                      f"{value!r}{hint}")
    return seconds, None


def _parse_broadcast(
    value: ParamValue, address: IPAddress | None, prefix: int | None
) -> tuple[ipaddress.IPv4Address | None, str | None]:
    if not isinstance(value, str):
        return None, (f"parameter 'broadcast' must be an IPv4 address, \"+\" or \"-\", got "
                      f"{value!r}")
    if address is not None and address.version == 6:
        return None, "parameter 'broadcast' applies to IPv4 only; IPv6 has no broadcast; remove it"
    text = value.strip()
    if text in ("+", "-"):
        if address is None or prefix is None:
            return None, None  # the address or prefix problem is reported already
        network = ipaddress.IPv4Network(f"{address}/{prefix}", strict=False)
        return (network.broadcast_address if text == "+" else network.network_address), None
    try:
        return ipaddress.IPv4Address(text), None
    except ValueError:
        return None, (f"parameter 'broadcast': {value!r} is not an IPv4 address (or \"+\" for "
                      "host bits set, \"-\" for host bits clear)")


def _label_problem(
    value: ParamValue, nic: ParamValue | None, address: IPAddress | None
) -> str | None:
    if not isinstance(value, str):
        return f"parameter 'label' must be a string such as \"eth0:web\", got {value!r}"
    if address is not None and address.version == 6:
        return "parameter 'label' applies to IPv4 only (IPv6 addresses have no labels); remove it"
    if len(value) > MAX_IFNAME:
        return (f"parameter 'label': {value!r} is {len(value)} characters long; labels have at "
                f"most {MAX_IFNAME}")
    if isinstance(nic, str) and value != nic and not value.startswith(nic + ":"):
        suffix = value.rpartition(":")[2] or "web"
        return (f"parameter 'label' must be the nic name, a colon and a suffix, like "
                f"\"{nic}:{suffix}\", got {value!r}")
    if any(c.isspace() or c == "\0" for c in value):
        return f"parameter 'label': {value!r} contains white space"
    return None


def parse_ip_params(params: Mapping[str, ParamValue]) -> tuple[IpSettings | None, list[str]]:
    """The settings of an ip resource and the problems with ``params`` (one sentence each).

    The settings are None whenever there is a problem.
    """
    problems = unknown_params(params, _PARAMS)
    address: IPAddress | None = None
    if "address" not in params:
        problems.append("parameter 'address' (the IP address to move, e.g. \"198.18.0.100\") "
                        "is missing")
    else:
        address, problem = _parse_address(params["address"])
        problems += [problem] if problem else []
    nic = params.get("nic")
    if nic is None:
        problems.append("parameter 'nic' (the interface to put the address on, e.g. \"eth0\") "
                        "is missing")
    else:
        problem = _nic_problem(nic)
        problems += [problem] if problem else []
    prefix: int | None = None
    if "prefix" in params:
        prefix, problem = _parse_prefix(params["prefix"], address)
        problems += [problem] if problem else []
    elif address is not None:
        prefix = 24 if address.version == 4 else 64
    if isinstance(address, ipaddress.IPv4Address) and prefix is not None:
        problem = _host_problem(address, prefix)
        problems += [problem] if problem else []
    label: str | None = None
    if "label" in params:
        problem = _label_problem(params["label"], nic, address)
        problems += [problem] if problem else []
        label = str(params["label"])
    broadcast: ipaddress.IPv4Address | None = None
    if "broadcast" in params:
        broadcast, problem = _parse_broadcast(params["broadcast"], address, prefix)
        problems += [problem] if problem else []
    count, problem = _parse_count(params.get("arp_count", DEFAULT_ARP_COUNT))
    problems += [problem] if problem else []
    interval, problem = _parse_interval(params.get("arp_interval", DEFAULT_ARP_INTERVAL))
    problems += [problem] if problem else []
    if problems or address is None or prefix is None or count is None or interval is None:
        return None, problems
    return IpSettings(address=address, prefix=prefix, nic=str(nic), label=label,
                      broadcast=broadcast, arp_count=count, arp_interval=interval), []


# -- gratuitous ARP ---------------------------------------------------------------------------


def gratuitous_arp_frame(mac: bytes, address: ipaddress.IPv4Address) -> bytes:
    """An Ethernet broadcast ARP request announcing that ``address`` is at ``mac``.

    Sender and target protocol address are both ``address`` (RFC 5227's "ARP announcement");
    the target hardware address is zero.
    """
    if len(mac) != 6:
        raise ValueError(f"an Ethernet MAC address has 6 bytes, got {mac.hex(':')!r}")
    ethernet = b"\xff" * 6 + mac + struct.pack("!H", _ETH_P_ARP)
    arp = struct.pack("!HHBBH6s4s6s4s", _ARPHRD_ETHER, _ETH_P_IP, 6, 4, _ARPOP_REQUEST,
                      mac, address.packed, b"\0" * 6, address.packed)
    return (ethernet + arp).ljust(_ETH_MIN_FRAME, b"\0")


class _Announcer:
    """Sends the gratuitous ARP frames after the first, every ``interval``, on a daemon thread,
    until they are all sent or :meth:`halt` (a stop) or the start's cancel event ends it."""

    def __init__(self, sock: socket.socket, frame: bytes, remaining: int, interval: float,
                 cancel: threading.Event, what: str) -> None:
        self._sock = sock
        self._frame = frame
        self._remaining = remaining
        self._interval = interval
        self._cancel = cancel
        self._halt = threading.Event()
        self._what = what
        self._thread = threading.Thread(target=self._run, name=f"vigil-arp {what}", daemon=True)

    def begin(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            for _ in range(self._remaining):
                if self._halt.wait(self._interval) or self._cancel.is_set():
                    return
                self._sock.send(self._frame)
        except OSError as exc:
            log.warning("gratuitous ARP for %s stopped: %s", self._what, exc)
        finally:
            self._sock.close()

    def halt(self) -> None:
        self._halt.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(_ANNOUNCER_JOIN)


# -- netlink helpers --------------------------------------------------------------------------


def _error_text(exc: Exception) -> str:
    """An error as a sentence: netlink's ``(1, 'Operation not permitted')`` made readable."""
    code = getattr(exc, "code", 0) if isinstance(exc, NetlinkError) else 0
    if not code:
        return str(exc)
    text = f"{os.strerror(code)} ({errno.errorcode.get(code, str(code))})"
    if code == errno.EPERM:
        text += "; changing addresses needs root or CAP_NET_ADMIN"
    return text


def _get_link(ipr: Any, nic: str) -> Any | None:
    try:
        links = ipr.link("get", ifname=nic)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    return links[0] if links else None


def _link_names(ipr: Any, limit: int = 20) -> str:
    names = sorted(str(link.get("ifname")) for link in ipr.get_links())
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return shown or "none"


def _link_down(link: Any, nic: str) -> str | None:
    """Why the link cannot carry the address's traffic, or None when it can."""
    flags = int(link["flags"])
    operstate = str(link.get("IFLA_OPERSTATE") or "UNKNOWN")
    if not flags & _IFF_UP:
        return f"{nic} is administratively down"
    if not flags & _IFF_LOWER_UP:
        return f"{nic} has no carrier (operstate {operstate})"
    if operstate in _DOWN_OPERSTATES:
        return f"{nic} has operstate {operstate}"
    return None


def _address_of(msg: Any) -> IPAddress | None:
    # For IPv4 IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point links.
    text = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
    if not text:
        return None
    try:
        return ipaddress.ip_address(str(text).partition("%")[0])
    except ValueError:
        return None


def _addr_flags(msg: Any) -> int:
    flags = msg.get("IFA_FLAGS")
    return int(flags if flags is not None else msg["flags"])


class IpType(ResourceType):
    """Factory of :class:`IpResource` (``type = "ip"``)."""

    def typename(self) -> str:
        return "ip"

    def instantiate(self, config: ResourceConfig, node: str, runtime_dir: Path) -> IpResource:
        return IpResource(self, config, node, runtime_dir)

    def check_params(self, params: Mapping[str, ParamValue]) -> list[str]:
        return parse_ip_params(params)[1]

    def default_monitor(self) -> MonitorConfig:
        return MonitorConfig(interval=10.0, timeout=20.0)

    def defaults(self) -> TypeDefaults:
        return TypeDefaults(self.default_monitor(), start_timeout=20.0, stop_timeout=20.0)

    def validate(self, config: ResourceConfig) -> list[str]:
        settings, problems = parse_ip_params(config.params)
        if settings is None:
            return problems
        try:
            with IPRoute() as ipr:
                link = _get_link(ipr, settings.nic)
                if link is None:
                    return [f"nic {settings.nic!r} does not exist here (interfaces: "
                            f"{_link_names(ipr)})"]
                for msg in ipr.addr("dump"):
                    if (_address_of(msg) == settings.address
                            and msg["index"] != link["index"]):
                        other = ipr.link("get", index=msg["index"])[0].get("ifname")
                        problems.append(f"address {settings.address} is already on {other} "
                                        "here; a node should hold it only on the nic "
                                        f"{settings.nic!r}, while the resource runs there")
        except (NetlinkError, OSError) as exc:
            return [f"cannot query the network interfaces over netlink: {_error_text(exc)}"]
        return problems


class IpResource(Resource):
    """One IP address on one node (see the module docstring)."""

    def __init__(
        self, rtype: IpType, config: ResourceConfig, node: str, runtime_dir: Path
    ) -> None:
        super().__init__(rtype, config, node, runtime_dir)  # checks the params
        settings, problems = parse_ip_params(config.params)
        if settings is None:  # pragma: no cover - check_params already refused these
            raise ValueError(f"resource {config.name!r} (ip): " + "; ".join(problems))
        self.settings = settings
        self._lock = threading.Lock()
        self._announcer: _Announcer | None = None

    @property
    def address(self) -> IPAddress:
        return self.settings.address

    @property
    def cidr(self) -> str:
        return self.settings.cidr

    @property
    def nic(self) -> str:
        return self.settings.nic

    def holding(self) -> ResourceHolding:
        return ResourceHolding(self.name, addresses=(Address(self.nic, self.cidr),))

    # -- agent operations ---------------------------------------------------------------------

    def _start(self, cancel: threading.Event) -> OpResult:
        deadline = time.monotonic() + self.config.start_timeout
        failed = ServiceState.FAILED
        if cancel.is_set():
            return OpResult.failure(failed, "start interrupted")
        self._halt_announcer()  # a previous start's frames would repeat what we send now
        try:
            with IPRoute() as ipr:
                link = _get_link(ipr, self.nic)
                if link is None:
                    return OpResult.failure(
                        failed, f"nic {self.nic!r} does not exist on this node (interfaces: "
                        f"{_link_names(ipr)}); {self.cidr} was not added")
                down = _link_down(link, self.nic)
                if down is not None:
                    return OpResult.failure(failed, f"link down: {down}; not starting "
                                            f"{self.cidr} on it")
                added = self._add(ipr, int(link["index"]))
        except NetlinkError as exc:
            return OpResult.failure(failed, f"cannot add {self.cidr} to {self.nic}: "
                                    f"{_error_text(exc)}")
        except OSError as exc:
            return OpResult.failure(failed, f"cannot talk to the kernel over netlink: {exc}")
        done = f"added {self.cidr} to {self.nic}" if added else \
            f"{self.cidr} was already on {self.nic}"
        if cancel.is_set():
            return self._abandon_start("start interrupted", added)
        if not self.settings.ipv4:
            failure = self._await_dad(cancel, deadline, added)
            if failure is not None:
                return failure
            return OpResult.success(ServiceState.IN_SERVICE,
                                    f"{done} (no unsolicited neighbour advertisement for IPv6)")
        return OpResult.success(ServiceState.IN_SERVICE, f"{done}; {self._announce(link, cancel)}")

    def _stop(self, force: bool) -> OpResult:
        # A graceful and a forced stop are the same: removing an address cannot hang.
        self._halt_announcer()
        stopped = ServiceState.OOS
        try:
            with IPRoute() as ipr:
                link = _get_link(ipr, self.nic)
                if link is None:
                    return OpResult.success(stopped, f"nic {self.nic} does not exist, so "
                                            f"{self.cidr} is not on it")
                index = int(link["index"])
                entry = self._find(ipr, index)
                if entry is None:
                    return OpResult.success(stopped, f"{self.cidr} was not on {self.nic}")
                note = self._keep_secondaries(ipr, index, entry)
                try:
                    ipr.addr("del", index=index, address=str(self.address),
                             prefixlen=self.settings.prefix)
                except NetlinkError as exc:
                    if exc.code != errno.EADDRNOTAVAIL:  # gone meanwhile: that is stopped too
                        raise
                if self._find(ipr, index) is not None:
                    return OpResult.failure(ServiceState.UNCLEAN, f"{self.cidr} is still on "
                                            f"{self.nic} after removing it")
        except NetlinkError as exc:
            return OpResult.failure(ServiceState.UNCLEAN, f"cannot remove {self.cidr} from "
                                    f"{self.nic}: {_error_text(exc)}")
        except OSError as exc:
            return OpResult.failure(ServiceState.UNCLEAN, f"cannot remove {self.cidr} from "
                                    f"{self.nic}: netlink: {exc}")
        return OpResult.success(stopped, f"removed {self.cidr} from {self.nic}{note}")

    def _monitor(self) -> OpResult:
        # Absent means "stopped" unless this node is supposed to hold the address.
        expected = self.service_state() is ServiceState.IN_SERVICE
        failed = ServiceState.FAILED
        try:
            with IPRoute() as ipr:
                link = _get_link(ipr, self.nic)
                if link is None:
                    if expected:
                        return OpResult.failure(failed, f"nic {self.nic} is gone, and address "
                                                f"{self.cidr} with it")
                    return OpResult.success(ServiceState.OOS, f"{self.cidr} is not here (no "
                                            f"nic {self.nic})")
                index = int(link["index"])
                entry = self._find(ipr, index)
                other = self._other_prefix(ipr, index) if entry is None else None
        except NetlinkError as exc:
            return OpResult.failure(failed, f"cannot query {self.nic} over netlink: "
                                    f"{_error_text(exc)}")
        except OSError as exc:
            return OpResult.failure(failed, f"cannot query {self.nic} over netlink: {exc}")
        if entry is None:
            elsewhere = f" (it is there with prefix /{other})" if other is not None else ""
            if expected:
                return OpResult.failure(failed, f"address {self.cidr} is gone from "
                                        f"{self.nic}{elsewhere}")
            return OpResult.success(ServiceState.OOS, f"{self.cidr} is not on "
                                    f"{self.nic}{elsewhere}")
        down = _link_down(link, self.nic)
        if down is not None:
            return OpResult.failure(failed, f"link down: {down}")
        if _addr_flags(entry) & _IFA_F_DADFAILED:
            return OpResult.failure(failed, f"duplicate address: another host on {self.nic}'s "
                                    f"link uses {self.address}")
        return OpResult.success(ServiceState.IN_SERVICE, f"{self.cidr} is on {self.nic}, "
                                "link up")

    # -- helpers ------------------------------------------------------------------------------

    def _find(self, ipr: Any, index: int) -> Any | None:
        """Our address (with our prefix) on interface ``index``, or None."""
        family = socket.AF_INET if self.settings.ipv4 else socket.AF_INET6
        for msg in ipr.addr("dump", index=index, family=family):
            if (msg["index"] == index and msg["prefixlen"] == self.settings.prefix
                    and _address_of(msg) == self.address):
                return msg
        return None

    def _other_prefix(self, ipr: Any, index: int) -> int | None:
        family = socket.AF_INET if self.settings.ipv4 else socket.AF_INET6
        for msg in ipr.addr("dump", index=index, family=family):
            if msg["index"] == index and _address_of(msg) == self.address:
                return int(msg["prefixlen"])
        return None

    def _add(self, ipr: Any, index: int) -> bool:
        """Add the address; False if it was there already. Raises NetlinkError."""
        if self._find(ipr, index) is not None:
            return False
        request: dict[str, Any] = {"index": index, "address": str(self.address),
                                   "prefixlen": self.settings.prefix}
        if self.settings.broadcast is not None:
            request["broadcast"] = str(self.settings.broadcast)
        if self.settings.label is not None:
            request["label"] = self.settings.label
        try:
            ipr.addr("add", **request)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:  # added by someone else meanwhile
                return False
            raise
        return True

    def _remove_quietly(self) -> str:
        """Undo the add of a failed start; a problem becomes part of the reason."""
        try:
            with IPRoute() as ipr:
                link = _get_link(ipr, self.nic)
                if link is not None:
                    ipr.addr("del", index=int(link["index"]), address=str(self.address),
                             prefixlen=self.settings.prefix)
        except NetlinkError as exc:
            if exc.code != errno.EADDRNOTAVAIL:
                return f"; removing {self.cidr} again failed: {_error_text(exc)}"
        except OSError as exc:
            return f"; removing {self.cidr} again failed: {exc}"
        return f"; {self.cidr} removed again"

    def _abandon_start(self, reason: str, added: bool) -> OpResult:
        # Only what this start added is taken away: an address that was there before is left.
        return OpResult.failure(ServiceState.FAILED,
                                reason + (self._remove_quietly() if added else ""))

    def _await_dad(self, cancel: threading.Event, deadline: float, added: bool) -> OpResult | None:
        """Wait until IPv6 duplicate address detection is over; a failure result if it failed."""
        while True:
            try:
                with IPRoute() as ipr:
                    link = _get_link(ipr, self.nic)
                    entry = self._find(ipr, int(link["index"])) if link is not None else None
            except (NetlinkError, OSError) as exc:
                return self._abandon_start(
                    f"cannot query {self.nic} over netlink: {_error_text(exc)}", added)
            if entry is None:
                return OpResult.failure(ServiceState.FAILED, f"address {self.cidr} vanished "
                                        f"from {self.nic} while starting")
            flags = _addr_flags(entry)
            if flags & _IFA_F_DADFAILED:
                return self._abandon_start(
                    f"duplicate address: another host on {self.nic}'s link already uses "
                    f"{self.address} (duplicate address detection failed)", added)
            if not flags & _IFA_F_TENTATIVE:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._abandon_start(
                    f"start timed out after {self.config.start_timeout:g}s: {self.cidr} is "
                    "still tentative (duplicate address detection has not finished)", added)
            if cancel.wait(min(_DAD_POLL, remaining)):
                return self._abandon_start("start interrupted", added)

    def _announce(self, link: Any, cancel: threading.Event) -> str:
        """Send the first gratuitous ARP frame and leave the rest to a thread; say what was
        done. A failure here does not fail the start: the address works, neighbours with a
        stale entry just take longer to find it."""
        count = self.settings.arp_count
        if count == 0:
            return "no gratuitous ARP (arp_count = 0)"
        mac_text = str(link.get("IFLA_ADDRESS") or "")
        if (int(link.get("ifi_type", 0)) != _ARPHRD_ETHER or int(link["flags"]) & _IFF_NOARP
                or len(mac_text) != 17):
            return f"no gratuitous ARP: {self.nic} does not use ARP"
        assert isinstance(self.address, ipaddress.IPv4Address)
        frame = gratuitous_arp_frame(bytes.fromhex(mac_text.replace(":", "")), self.address)
        sock: socket.socket | None = None
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.bind((self.nic, 0))
            sock.send(frame)
        except OSError as exc:
            if sock is not None:
                sock.close()
            log.warning("resource %s: gratuitous ARP for %s on %s not sent: %s",
                        self.name, self.address, self.nic, exc)
            return f"gratuitous ARP not sent: {exc}"
        if count == 1:
            sock.close()
            return f"sent 1 gratuitous ARP from {mac_text}"
        announcer = _Announcer(sock, frame, count - 1, self.settings.arp_interval, cancel,
                               f"{self.address} on {self.nic}")
        with self._lock:
            self._announcer = announcer
        announcer.begin()
        return (f"sent gratuitous ARP 1 of {count} from {mac_text} (the rest follow every "
                f"{self.settings.arp_interval:g}s)")

    def _halt_announcer(self) -> None:
        with self._lock:
            announcer, self._announcer = self._announcer, None
        if announcer is not None:
            announcer.halt()

    def _keep_secondaries(self, ipr: Any, index: int, entry: Any) -> str:
        """Make sure that removing our address does not take other addresses with it.

        Linux removes the secondary addresses of a subnet with its primary address unless
        ``promote_secondaries`` is on for the interface. Returns a note for the stop's reason.
        """
        if not self.settings.ipv4 or _addr_flags(entry) & _IFA_F_SECONDARY:
            return ""
        network = ipaddress.ip_network(self.cidr, strict=False)
        others = [
            f"{address}/{msg['prefixlen']}"
            for msg in ipr.addr("dump", index=index, family=socket.AF_INET)
            if _addr_flags(msg) & _IFA_F_SECONDARY and msg["index"] == index
            and (address := _address_of(msg)) is not None and address in network
        ]
        if not others:
            return ""
        setting = Path("/proc/sys/net/ipv4/conf") / self.nic / "promote_secondaries"
        try:
            if setting.read_text().strip() != "0":
                return ""
            setting.write_text("1\n")
        except OSError as exc:
            log.warning("resource %s: removing primary %s from %s also removes %s: cannot turn "
                        "on promote_secondaries: %s", self.name, self.cidr, self.nic,
                        ", ".join(others), exc)
            return (f" (the kernel removed {', '.join(others)} with it: promote_secondaries "
                    f"could not be turned on: {exc})")
        log.warning("resource %s: turned on net.ipv4.conf.%s.promote_secondaries so that "
                    "removing primary %s keeps %s", self.name, self.nic, self.cidr,
                    ", ".join(others))
        return (f" (turned on net.ipv4.conf.{self.nic}.promote_secondaries to keep "
                f"{', '.join(others)})")
