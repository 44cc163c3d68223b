"""The ip resource type: an IP address that moves between nodes (a "virtual IP"), and between
the network interfaces of one node.

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
    The interface to put the address on, e.g. ``"eth0"``, or a list of interfaces in order of
    preference, ``["eth0", "eth1"]``: NICs on the same network (two ports into one switch, or
    into two switches of one segment), so that the address can move to the next when one
    fails. Vigil never brings an interface up or down.
``nic_failback``
    With a list: whether the address goes back to an earlier-listed nic once that one can
    carry it again (default false: it stays where it is, and moves only when it must).
``label``
    IPv4 only: an address label as ``ifconfig`` shows it, the nic name, a colon and a suffix
    (``"eth0:web"``), at most 15 characters. With a list of nics, write it with any listed
    nic's name: the suffix goes with the address, which is ``"eth1:web"`` on eth1 (a label
    that does not start with the name of the interface that carries it would confuse the
    tools that read labels; every listed nic's name with the suffix must fit in 15).
``broadcast``
    IPv4 only: the broadcast address, or ``"+"`` (host bits set: 198.18.0.255 for a /24) or
    ``"-"`` (host bits clear). Default: none, as ``ip addr add`` without ``brd``.
``arp_count``
    How many gratuitous ARP frames to send after adding an IPv4 address, at a start or a move
    (default 5; 0 sends none). Ignored for IPv6.
``arp_interval``
    The time between two of them: seconds or a string such as ``"200ms"`` (default
    ``"200ms"``, at most 10 s; note that a bare number is seconds, not milliseconds as in
    the OCF IPaddr2 agent).

A nic *can carry* the address when it exists, its link is up (administratively up, with carrier
(a veth whose peer is down or gone has none) and an operstate that can pass traffic), and the
node's NIC monitors do not report it down (the last set given to :meth:`IpResource.nics_changed`).

Start puts the address on the first listed nic that can carry it (an address already on a listed
nic that can carry it stays there) and fails, naming every nic and why, when none can: the node
cannot serve the address, so another one should. The first gratuitous ARP frame (an ARP request
whose sender and target are the address, to the broadcast MAC) is sent before the start
returns; the others follow every ``arp_interval`` on a background thread, which a stop or the
next move ends. Neighbours update an ARP entry they already have (pointing at the old node or
nic); Linux does not create new entries from gratuitous ARP unless ``arp_accept`` is set, which
is fine: a host without an entry asks when it needs one. An IPv6 start waits, within
``start_timeout``, until duplicate address detection has finished (the address is usable only
then) and fails if another host has the address. No unsolicited neighbour advertisement is
sent for IPv6 (not done: neighbours find the new node when their entries go stale).

A move, while the resource is in service: when the nic that carries the address can no longer
carry it, the address goes to the first listed nic that can (with ``nic_failback``, also back
to an earlier-listed nic that can again). It is added there first, the first gratuitous ARP
frame goes out on the new nic, then it is removed from the old one: two netlink requests
after reading the nics' state, one frame, no sleep; an IPv6 address is added there without
duplicate address detection, as it was this node's a moment ago. The node's NIC monitors call
:meth:`IpResource.nics_changed` whenever the set of NICs they know to be down changes; each
monitor does the same check, so an address also moves when no NIC event came. When no listed
nic can carry the address it is left where it is and the resource is FAILED (the cluster then
recovers it, on another node if need be).

Stop removes the address from every listed nic that has it (an address already gone, or a nic
gone, counts as stopped); a netlink error makes it UNCLEAN. Removing an IPv4 address that is
*primary* on its subnet makes Linux also remove the secondary addresses of that subnet (other
virtual IPs!) unless the interface's ``promote_secondaries`` setting is on; new network
namespaces have it off. So before removing a primary address that has secondaries, a stop or a
move turns ``net.ipv4.conf.<nic>.promote_secondaries`` on for that nic and says so in its
reason.

Monitor finds the resource in service when the address is on a listed nic that can carry it,
moving it first when it must (above). A missing address is FAILED while the resource should be
in service ("address 198.18.0.100/24 is gone from eth0") and simply out of service otherwise;
an address on no nic that can carry it is FAILED ("link down: ..."). ``monitor.depth`` is not
used; a probe is a few netlink queries. Default monitor: every 10 s, timeout 20 s (as IPaddr2).

The node's guardian is told the address on every listed nic (it removes it wherever it is when
it fences the node; a nic without it counts as done).

Two NICs on one segment need two kernel settings to behave, both per network namespace:
``net.ipv4.conf.all.arp_ignore = 1``, so that only the nic that has the address answers ARP for
it (otherwise either may answer, and neighbours may keep the MAC of a nic that fails later
without any move to announce it); and, when the nics also have addresses of their own in the
address's subnet, ``net.ipv4.conf.all.ignore_routes_with_linkdown = 1``, so that replies do not
keep leaving through the first nic's route after it lost its carrier. Without own addresses in
the subnet, the subnet's route comes and goes with the address.
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from pyroute2 import IPRoute, NetlinkError

from vigil.cluster.nics import DOWN_OPERSTATES
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

_PARAMS: Final = ("address", "arp_count", "arp_interval", "broadcast", "label", "nic",
                  "nic_failback", "prefix")

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
_IFA_F_NODAD: Final = 0x02
_IFA_F_DADFAILED: Final = 0x08
_IFA_F_TENTATIVE: Final = 0x40

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
    nics: tuple[str, ...]  # in order of preference; never empty
    label: str | None
    broadcast: ipaddress.IPv4Address | None
    arp_count: int
    arp_interval: float
    nic_failback: bool = False

    @property
    def nic(self) -> str:
        """The preferred nic (the first listed)."""
        return self.nics[0]

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix}"

    @property
    def ipv4(self) -> bool:
        return self.address.version == 4

    def label_on(self, nic: str) -> str | None:
        """The label of the address on ``nic``: the configured label's suffix after that nic's
        name (``label = "eth0:web"`` is ``"eth1:web"`` on eth1)."""
        if self.label is None:
            return None
        for listed in self.nics:
            if self.label == listed or self.label.startswith(listed + ":"):
                return nic + self.label[len(listed):]
        return self.label  # pragma: no cover - parse_ip_params refuses any other label


def _nic_problem(value: object, where: str = "parameter 'nic'") -> str | None:
    if not isinstance(value, str):
        return f"{where} must be an interface name such as \"eth0\", got {value!r}"
    if not value:
        return f"{where} is empty; give an interface name such as \"eth0\""
    if len(value) > MAX_IFNAME:
        return (f"{where}: {value!r} is {len(value)} characters long; Linux interface "
                f"names have at most {MAX_IFNAME}")
    if ":" in value:
        base = value.partition(":")[0]
        return (f"{where}: {value!r} is an alias label, not an interface; write the "
                f"interface \"{base}\" and label = \"{value}\"")
    if value in (".", "..") or any(c == "/" or c.isspace() or c == "\0" for c in value):
        return (f"{where}: {value!r} is not a valid interface name (no '/', ':' or "
                "white space, and not '.' or '..')")
    return None


def _parse_nics(value: ParamValue) -> tuple[tuple[str, ...] | None, list[str]]:
    """``nic``: one interface name, or a list of them in order of preference."""
    if not isinstance(value, list):
        problem = _nic_problem(value)
        return (None, [problem]) if problem else ((str(value),), [])
    if not value:
        return None, ["parameter 'nic' is an empty list; give one interface, or several in "
                      "order of preference such as [\"eth0\", \"eth1\"]"]
    problems = [p for i, name in enumerate(value)
                if (p := _nic_problem(name, f"parameter 'nic' (item {i + 1})"))]
    twice = sorted({str(n) for n in value if value.count(n) > 1})
    if twice:
        problems.append(f"parameter 'nic' lists {', '.join(twice)} more than once; name each "
                        "interface once, in order of preference")
    return (None, problems) if problems else (tuple(value), [])


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
    value: ParamValue, nics: tuple[str, ...] | None, address: IPAddress | None
) -> str | None:
    if not isinstance(value, str):
        return f"parameter 'label' must be a string such as \"eth0:web\", got {value!r}"
    if address is not None and address.version == 6:
        return "parameter 'label' applies to IPv4 only (IPv6 addresses have no labels); remove it"
    if len(value) > MAX_IFNAME:
        return (f"parameter 'label': {value!r} is {len(value)} characters long; labels have at "
                f"most {MAX_IFNAME}")
    if any(c.isspace() or c == "\0" for c in value):
        return f"parameter 'label': {value!r} contains white space"
    if nics is None:
        return None  # the nic problem is reported already
    listed = next((n for n in nics if value == n or value.startswith(n + ":")), None)
    if listed is None:
        suffix = value.rpartition(":")[2] or "web"
        which = "the nic name" if len(nics) == 1 else "a listed nic's name"
        return (f"parameter 'label' must be {which}, a colon and a suffix, like "
                f"\"{nics[0]}:{suffix}\", got {value!r}")
    suffix = value[len(listed):]
    longest = max(nics, key=len)
    if len(longest + suffix) > MAX_IFNAME:
        return (f"parameter 'label': on {longest} the address would carry the label "
                f"{longest + suffix!r}, {len(longest + suffix)} characters; labels have at most "
                f"{MAX_IFNAME}: shorten the suffix {suffix!r}")
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
    nics: tuple[str, ...] | None = None
    if "nic" not in params:
        problems.append("parameter 'nic' (the interface to put the address on, e.g. \"eth0\", "
                        "or several in order of preference) is missing")
    else:
        nics, found = _parse_nics(params["nic"])
        problems += found
    failback = params.get("nic_failback", False)
    if not isinstance(failback, bool):
        problems.append("parameter 'nic_failback' must be true or false (whether the address "
                        f"goes back to an earlier-listed nic once it is up again), got "
                        f"{failback!r}")
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
        problem = _label_problem(params["label"], nics, address)
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
    if (problems or address is None or prefix is None or nics is None or count is None
            or interval is None):
        return None, problems
    return IpSettings(address=address, prefix=prefix, nics=nics, label=label,
                      broadcast=broadcast, arp_count=count, arp_interval=interval,
                      nic_failback=bool(failback)), []


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
    until they are all sent or :meth:`halt` (a stop) or the start's cancel event ends it; then
    closes the socket. The thread owns the socket even when no frame is left to send: closing
    a packet socket waits for an RCU grace period (8-16 ms measured), which a move of the
    address must not spend."""

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

    def halt(self, wait: bool = True) -> None:
        self._halt.set()
        if (wait and self._thread.is_alive()
                and self._thread is not threading.current_thread()):
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
        return f"{nic} has no carrier, operstate {operstate}"
    if operstate in DOWN_OPERSTATES:
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


@dataclass(slots=True)
class _Nic:
    """One listed nic as netlink shows it now."""

    name: str
    link: Any | None  # None: no such interface
    entry: Any | None  # our address, with our prefix, on it
    other_prefix: int | None  # our address with another prefix on it
    why: str | None  # why it cannot carry the address now; None when it can

    @property
    def index(self) -> int:
        assert self.link is not None
        return int(self.link["index"])


@dataclass(slots=True)
class _Survey:
    """The listed nics, in order of preference, and every address of the family here."""

    nics: list[_Nic]
    addresses: list[Any]

    @property
    def carriers(self) -> list[_Nic]:
        return [n for n in self.nics if n.entry is not None]

    @property
    def usable(self) -> list[_Nic]:
        return [n for n in self.nics if n.why is None]


def _names(nics: list[_Nic], conjunction: str = "and") -> str:
    names = [n.name for n in nics]
    return ", ".join(names[:-1]) + f" {conjunction} {names[-1]}" if len(names) > 1 else names[0]


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
                indexes = set()
                for nic in settings.nics:
                    link = _get_link(ipr, nic)
                    if link is None:
                        problems.append(f"nic {nic!r} does not exist here (interfaces: "
                                        f"{_link_names(ipr)})")
                    else:
                        indexes.add(link["index"])
                if problems:
                    return problems
                listed = " or ".join(repr(n) for n in settings.nics)
                for msg in ipr.addr("dump"):
                    if _address_of(msg) == settings.address and msg["index"] not in indexes:
                        other = ipr.link("get", index=msg["index"])[0].get("ifname")
                        problems.append(f"address {settings.address} is already on {other} "
                                        f"here; a node should hold it only on the nic {listed}, "
                                        "while the resource runs there")
        except (NetlinkError, OSError) as exc:
            return [f"cannot query the network interfaces over netlink: {_error_text(exc)}"]
        return problems


class IpResource(Resource):
    """One IP address on one node, on one of its listed nics (see the module docstring)."""

    def __init__(
        self, rtype: IpType, config: ResourceConfig, node: str, runtime_dir: Path
    ) -> None:
        super().__init__(rtype, config, node, runtime_dir)  # checks the params
        settings, problems = parse_ip_params(config.params)
        if settings is None:  # pragma: no cover - check_params already refused these
            raise ValueError(f"resource {config.name!r} (ip): " + "; ".join(problems))
        self.settings = settings
        # Guards the three below; the operations themselves are serialized by the base
        # class's operation lock, which nics_changed takes too.
        self._lock = threading.Lock()
        self._announcer: _Announcer | None = None
        self._active: str | None = None
        self._down: frozenset[str] = frozenset()

    @property
    def address(self) -> IPAddress:
        return self.settings.address

    @property
    def cidr(self) -> str:
        return self.settings.cidr

    @property
    def nic(self) -> str:
        """The preferred nic (the first listed); :attr:`active_nic` is the one in use."""
        return self.settings.nic

    @property
    def active_nic(self) -> str | None:
        """The nic that carries the address now, as the last operation found it; None while
        the resource is out of service."""
        if self.service_state() in (ServiceState.OOS, ServiceState.UNKNOWN):
            return None
        with self._lock:
            return self._active

    def holding(self) -> ResourceHolding:
        # Every listed nic: the address may have moved since the guardian was last told, and
        # the guardian counts an address that is not on a nic as removed.
        return ResourceHolding(self.name, addresses=tuple(
            Address(nic, self.cidr) for nic in self.settings.nics))

    # -- moving between nics -----------------------------------------------------------------

    def nics_changed(self, down: frozenset[str]) -> OpResult | None:
        """This node's nics known to be down are now ``down``: move the address off a nic
        that cannot carry it (or back to an earlier-listed one, with ``nic_failback``).

        None when nothing was to be done (also when the resource is not in service); a
        success (IN_SERVICE) after a move; a failure (FAILED) when no listed nic can carry
        the address, which is then left where it is: the monitor decides what follows. A
        move is the address added to the new nic, one gratuitous ARP frame sent there (the
        rest follow on a thread) and the address removed from the old nic: no sleep, no
        subprocess. Safe to call from any thread, alongside the other operations.
        """
        started = time.monotonic()
        with self._lock:
            self._down = frozenset(down)
        with self._op_lock:
            if self.service_state() is not ServiceState.IN_SERVICE:
                return None
            try:
                with IPRoute() as ipr:
                    survey = self._survey(ipr)
                    current = self._current(survey)
                    if current is None:
                        return None  # gone from every nic: the monitor reports that
                    target = self._target(survey, current)
                    if target is current:
                        return None
                    if target is None:
                        result = OpResult.failure(ServiceState.FAILED, self._nowhere(survey))
                    else:
                        moved = self._move(ipr, survey, current, target)
                        if moved is None:
                            return None
                        result = OpResult.success(ServiceState.IN_SERVICE, moved)
            except (NetlinkError, OSError) as exc:
                result = OpResult.failure(ServiceState.FAILED, f"cannot move {self.cidr} to "
                                          f"another nic: {_error_text(exc)}")
            if result.ok:
                self._note_in_service(result.reason)
            return replace(result, duration=time.monotonic() - started)

    # -- agent operations ---------------------------------------------------------------------

    def _start(self, cancel: threading.Event) -> OpResult:
        deadline = time.monotonic() + self.config.start_timeout
        failed = ServiceState.FAILED
        if cancel.is_set():
            return OpResult.failure(failed, "start interrupted")
        self._halt_announcer()  # a previous start's frames would repeat what we send now
        target: _Nic | None = None
        try:
            with IPRoute() as ipr:
                survey = self._survey(ipr)
                target = self._target(survey, self._current(survey))
                if target is None:
                    return OpResult.failure(failed, self._cannot_start(ipr, survey))
                added = target.entry is None
                if added:
                    self._add(ipr, target)
                left = self._remove_copies(ipr, survey, keep=target)
        except NetlinkError as exc:
            where = f" to {target.name}" if target is not None else ""
            return OpResult.failure(failed, f"cannot add {self.cidr}{where}: "
                                    f"{_error_text(exc)}")
        except OSError as exc:
            return OpResult.failure(failed, f"cannot talk to the kernel over netlink: {exc}")
        with self._lock:
            self._active = target.name
        done = (f"added {self.cidr} to {target.name}" if added
                else f"{self.cidr} was already on {target.name}") + left
        if cancel.is_set():
            return self._abandon_start("start interrupted", added, target.name)
        if not self.settings.ipv4:
            failure = self._await_dad(cancel, deadline, added, target.name)
            if failure is not None:
                return failure
            return OpResult.success(ServiceState.IN_SERVICE,
                                    f"{done} (no unsolicited neighbour advertisement for IPv6)")
        return OpResult.success(ServiceState.IN_SERVICE,
                                f"{done}; {self._announce(target, cancel)}")

    def _stop(self, force: bool) -> OpResult:
        # A graceful and a forced stop are the same: removing an address cannot hang.
        self._halt_announcer()
        stopped = ServiceState.OOS
        nic = self.nic
        try:
            with IPRoute() as ipr:
                survey = self._survey(ipr)
                carriers = survey.carriers
                if not carriers:
                    with self._lock:
                        self._active = None
                    return OpResult.success(stopped, self._absent(survey, "was"))
                notes = []
                for carrier in carriers:
                    nic = carrier.name
                    notes.append(self._remove(ipr, carrier, survey.addresses))
                left = self._survey(ipr).carriers
                if left:
                    return OpResult.failure(ServiceState.UNCLEAN, f"{self.cidr} is still on "
                                            f"{_names(left)} after removing it")
        except NetlinkError as exc:
            return OpResult.failure(ServiceState.UNCLEAN, f"cannot remove {self.cidr} from "
                                    f"{nic}: {_error_text(exc)}")
        except OSError as exc:
            return OpResult.failure(ServiceState.UNCLEAN, f"cannot remove {self.cidr} from "
                                    f"{nic}: netlink: {exc}")
        with self._lock:
            self._active = None
        return OpResult.success(stopped, f"removed {self.cidr} from {_names(carriers)}"
                                f"{''.join(notes)}")

    def _monitor(self) -> OpResult:
        # Absent means "stopped" unless this node is supposed to hold the address.
        expected = self.service_state() is ServiceState.IN_SERVICE
        failed = ServiceState.FAILED
        try:
            with IPRoute() as ipr:
                survey = self._survey(ipr)
                current = self._current(survey)
                if current is None:
                    with self._lock:
                        self._active = None
                    if expected:
                        return OpResult.failure(failed, self._gone(survey))
                    return OpResult.success(ServiceState.OOS, self._absent(survey, "is"))
                target = self._target(survey, current)
                if target is None:
                    return OpResult.failure(failed, self._nowhere(survey))
                if target is not current:
                    if not expected:  # not ours to move: a probe only reports
                        return (OpResult.failure(failed, current.why) if current.why else
                                OpResult.success(ServiceState.IN_SERVICE, self._on(current)))
                    moved = self._move(ipr, survey, current, target)
                    if moved is None:  # a stop owns the state now: this result is dropped
                        return OpResult.failure(failed, "a stop began during the move")
                    self._note_in_service(moved)  # a monitor that agrees keeps the old reason
                    return OpResult.success(ServiceState.IN_SERVICE, moved)
        except (NetlinkError, OSError) as exc:
            return OpResult.failure(failed, f"cannot query {', '.join(self.settings.nics)} "
                                    f"over netlink: {_error_text(exc)}")
        with self._lock:
            self._active = current.name
        if _addr_flags(current.entry) & _IFA_F_DADFAILED:
            return OpResult.failure(failed, f"duplicate address: another host on "
                                    f"{current.name}'s link uses {self.address}")
        return OpResult.success(ServiceState.IN_SERVICE, self._on(current))

    # -- choosing a nic -----------------------------------------------------------------------

    def _survey(self, ipr: Any) -> _Survey:
        """The listed nics as they are now: one address dump and one link query per nic."""
        family = socket.AF_INET if self.settings.ipv4 else socket.AF_INET6
        addresses = list(ipr.addr("dump", family=family))
        with self._lock:
            reported = self._down
        nics = []
        for name in self.settings.nics:
            link = _get_link(ipr, name)
            entry: Any | None = None
            other: int | None = None
            why: str | None = f"{name} does not exist"
            if link is not None:
                index = int(link["index"])
                for msg in addresses:
                    if msg["index"] == index and _address_of(msg) == self.address:
                        if int(msg["prefixlen"]) == self.settings.prefix:
                            entry = msg
                        else:
                            other = int(msg["prefixlen"])
                down = _link_down(link, name)
                why = (f"link down: {down}" if down is not None
                       else f"{name} is reported down by this node's NIC monitor"
                       if name in reported else None)
            nics.append(_Nic(name, link, entry, other, why))
        return _Survey(nics, addresses)

    def _current(self, survey: _Survey) -> _Nic | None:
        """The nic that carries the address: the one it was put on, if it still does; else
        the first listed that does and can, else the first that does; None: none does."""
        carriers = survey.carriers
        with self._lock:
            active = self._active
        return next((n for n in carriers if n.name == active),
                    next((n for n in carriers if n.why is None),
                         carriers[0] if carriers else None))

    def _target(self, survey: _Survey, current: _Nic | None) -> _Nic | None:
        """Where the address belongs: where it is while that nic can carry it (or an
        earlier-listed one that can, with nic_failback), else the first listed that can."""
        usable = survey.usable
        if not usable:
            return None
        if current is None or current.why is not None:
            return usable[0]
        first = usable[0]
        if self.settings.nic_failback and survey.nics.index(first) < survey.nics.index(current):
            return first
        return current

    def _move(self, ipr: Any, survey: _Survey, current: _Nic, target: _Nic) -> str | None:
        """Add the address to ``target``, announce it there, remove it from the others; what
        was done. Raises NetlinkError when the add fails (the address stays where it was).
        None when a stop began meanwhile: the new copy is taken away again."""
        with self._state_lock:
            generation = self._generation
        if target.entry is None:
            self._add(ipr, target, moving=True)
        announced = (self._announce(target, threading.Event()) if self.settings.ipv4 else
                     "IPv6: added without duplicate address detection, as it was this node's; "
                     "no unsolicited neighbour advertisement")
        left = self._remove_copies(ipr, survey, keep=target)
        with self._state_lock:
            stopping = generation != self._generation
        if stopping:
            # A forced stop that did not wait for this move (it waits CANCEL_WAIT at most)
            # may have surveyed the nics before the add: take the new copy away, or the
            # address would stay here while the group starts elsewhere.
            undone = self._remove_quietly(target.name)
            log.warning("resource %s: a stop began during the move to %s%s", self.name,
                        target.name, undone)
            return None
        with self._lock:
            self._active = target.name
        if current.why is None:
            how = (f"moved {self.cidr} back from {current.name} to {target.name} "
                   f"({target.name} can carry it again; nic_failback is on)")
        else:
            how = f"moved {self.cidr} from {current.name} ({current.why}) to {target.name}"
        log.warning("resource %s: %s%s", self.name, how, left)
        return f"{how}{left}; {announced}"

    # -- reasons ------------------------------------------------------------------------------

    def _on(self, nic: _Nic) -> str:
        return f"{self.cidr} is on {nic.name}, link up"

    def _nowhere(self, survey: _Survey) -> str:
        whys = [n.why or "" for n in survey.nics]
        if len(whys) == 1:
            return whys[0]
        return f"no NIC can carry {self.cidr}: {'; '.join(whys)}"

    def _cannot_start(self, ipr: Any, survey: _Survey) -> str:
        missing = [n for n in survey.nics if n.link is None]
        if len(survey.nics) == 1 and missing:
            return (f"nic {self.nic!r} does not exist on this node (interfaces: "
                    f"{_link_names(ipr)}); {self.cidr} was not added")
        if len(survey.nics) == 1:
            return f"{survey.nics[0].why}; not starting {self.cidr} on it"
        listed = f" (interfaces here: {_link_names(ipr)})" if missing else ""
        return f"{self._nowhere(survey)}{listed}; {self.cidr} was not added"

    def _elsewhere(self, survey: _Survey) -> str:
        other = next((n for n in survey.nics if n.other_prefix is not None), None)
        if other is None:
            return ""
        where = "there" if len(survey.nics) == 1 else f"on {other.name}"
        return f" (it is {where} with prefix /{other.other_prefix})"

    def _gone(self, survey: _Survey) -> str:
        present = [n for n in survey.nics if n.link is not None]
        missing = [n for n in survey.nics if n.link is None]
        if not present:
            nics = "nic" if len(missing) == 1 else "nics"
            are = "is" if len(missing) == 1 else "are"
            return f"{nics} {_names(missing)} {are} gone, and address {self.cidr} with it"
        note = f" (no nic {_names(missing)})" if missing else ""
        return f"address {self.cidr} is gone from {_names(present)}{self._elsewhere(survey)}{note}"

    def _absent(self, survey: _Survey, verb: str) -> str:
        present = [n for n in survey.nics if n.link is not None]
        missing = [n for n in survey.nics if n.link is None]
        note = f" (no nic {_names(missing)})" if missing else ""
        if not present:
            return f"{self.cidr} is not here{note}"
        return (f"{self.cidr} {verb} not on {_names(present, 'or')}{self._elsewhere(survey)}"
                f"{note}")

    # -- netlink ------------------------------------------------------------------------------

    def _add(self, ipr: Any, nic: _Nic, moving: bool = False) -> None:
        """Add the address to ``nic`` (already there counts as added). Raises NetlinkError.

        ``moving``: the node held the address on another nic a moment ago, so an IPv6 address
        skips duplicate address detection (which would keep it unusable for a second or so).
        """
        request: dict[str, Any] = {"index": nic.index, "address": str(self.address),
                                   "prefixlen": self.settings.prefix}
        if self.settings.broadcast is not None:
            request["broadcast"] = str(self.settings.broadcast)
        label = self.settings.label_on(nic.name)
        if label is not None:
            request["label"] = label
        if moving and not self.settings.ipv4:
            request["flags"] = _IFA_F_NODAD
        try:
            ipr.addr("add", **request)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # added by someone else meanwhile: fine
                raise

    def _remove(self, ipr: Any, nic: _Nic, addresses: list[Any]) -> str:
        """Remove the address from ``nic`` (gone already counts as removed); a note for the
        reason. Raises NetlinkError."""
        note = self._keep_secondaries(nic, addresses)
        try:
            ipr.addr("del", index=nic.index, address=str(self.address),
                     prefixlen=self.settings.prefix)
        except NetlinkError as exc:
            if exc.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):  # gone: removed too
                raise
        return note

    def _remove_copies(self, ipr: Any, survey: _Survey, keep: _Nic) -> str:
        """Remove the address from every listed nic but ``keep``; a note for the reason. A
        copy that cannot be removed is only a note: the address works where it is kept."""
        notes = []
        for nic in survey.carriers:
            if nic is keep:
                continue
            try:
                notes.append(self._remove(ipr, nic, survey.addresses)
                             + f"; removed it from {nic.name}")
            except NetlinkError as exc:
                log.warning("resource %s: cannot remove %s from %s: %s", self.name, self.cidr,
                            nic.name, _error_text(exc))
                notes.append(f"; {self.cidr} is still on {nic.name} too: removing it failed: "
                             f"{_error_text(exc)}")
        return "".join(notes)

    def _remove_quietly(self, nic: str) -> str:
        """Undo the add of a failed start; a problem becomes part of the reason."""
        try:
            with IPRoute() as ipr:
                link = _get_link(ipr, nic)
                if link is not None:
                    ipr.addr("del", index=int(link["index"]), address=str(self.address),
                             prefixlen=self.settings.prefix)
        except NetlinkError as exc:
            if exc.code != errno.EADDRNOTAVAIL:
                return f"; removing {self.cidr} again failed: {_error_text(exc)}"
        except OSError as exc:
            return f"; removing {self.cidr} again failed: {exc}"
        return f"; {self.cidr} removed again"

    def _abandon_start(self, reason: str, added: bool, nic: str) -> OpResult:
        # Only what this start added is taken away: an address that was there before is left.
        return OpResult.failure(ServiceState.FAILED,
                                reason + (self._remove_quietly(nic) if added else ""))

    def _await_dad(self, cancel: threading.Event, deadline: float, added: bool,
                   nic: str) -> OpResult | None:
        """Wait until IPv6 duplicate address detection is over; a failure result if it failed."""
        while True:
            try:
                with IPRoute() as ipr:
                    entry = next((n.entry for n in self._survey(ipr).nics if n.name == nic),
                                 None)
            except (NetlinkError, OSError) as exc:
                return self._abandon_start(
                    f"cannot query {nic} over netlink: {_error_text(exc)}", added, nic)
            if entry is None:
                return OpResult.failure(ServiceState.FAILED, f"address {self.cidr} vanished "
                                        f"from {nic} while starting")
            flags = _addr_flags(entry)
            if flags & _IFA_F_DADFAILED:
                return self._abandon_start(
                    f"duplicate address: another host on {nic}'s link already uses "
                    f"{self.address} (duplicate address detection failed)", added, nic)
            if not flags & _IFA_F_TENTATIVE:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._abandon_start(
                    f"start timed out after {self.config.start_timeout:g}s: {self.cidr} is "
                    "still tentative (duplicate address detection has not finished)", added,
                    nic)
            if cancel.wait(min(_DAD_POLL, remaining)):
                return self._abandon_start("start interrupted", added, nic)

    # -- gratuitous ARP -----------------------------------------------------------------------

    def _announce(self, nic: _Nic, cancel: threading.Event) -> str:
        """Send the first gratuitous ARP frame on ``nic`` and leave the rest to a thread (which
        replaces the one of an earlier start or move); say what was done. A failure here does
        not fail the operation: the address works, neighbours with a stale entry just take
        longer to find it."""
        count = self.settings.arp_count
        if count == 0:
            return "no gratuitous ARP (arp_count = 0)"
        link = nic.link
        assert link is not None  # only a nic that can carry the address is announced on
        mac_text = str(link.get("IFLA_ADDRESS") or "")
        if (int(link.get("ifi_type", 0)) != _ARPHRD_ETHER or int(link["flags"]) & _IFF_NOARP
                or len(mac_text) != 17):
            return f"no gratuitous ARP: {nic.name} does not use ARP"
        assert isinstance(self.address, ipaddress.IPv4Address)
        frame = gratuitous_arp_frame(bytes.fromhex(mac_text.replace(":", "")), self.address)
        sock: socket.socket | None = None
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.bind((nic.name, 0))
            sock.send(frame)
        except OSError as exc:
            if sock is not None:
                sock.close()
            log.warning("resource %s: gratuitous ARP for %s on %s not sent: %s",
                        self.name, self.address, nic.name, exc)
            return f"gratuitous ARP not sent: {exc}"
        announcer = _Announcer(sock, frame, count - 1, self.settings.arp_interval, cancel,
                               f"{self.address} on {nic.name}")
        with self._lock:
            previous, self._announcer = self._announcer, announcer
        announcer.begin()
        if previous is not None:
            previous.halt(wait=False)  # its thread ends at once; joining it costs a close
        if count == 1:
            return f"sent 1 gratuitous ARP from {mac_text} on {nic.name}"
        return (f"sent gratuitous ARP 1 of {count} from {mac_text} on {nic.name} (the rest "
                f"follow every {self.settings.arp_interval:g}s)")

    def _halt_announcer(self) -> None:
        with self._lock:
            announcer, self._announcer = self._announcer, None
        if announcer is not None:
            announcer.halt()

    def _keep_secondaries(self, nic: _Nic, addresses: list[Any]) -> str:
        """Make sure that removing our address from ``nic`` does not take other addresses
        with it.

        Linux removes the secondary addresses of a subnet with its primary address unless
        ``promote_secondaries`` is on for the interface. Returns a note for the reason.
        """
        entry = nic.entry
        if not self.settings.ipv4 or entry is None or _addr_flags(entry) & _IFA_F_SECONDARY:
            return ""
        network = ipaddress.ip_network(self.cidr, strict=False)
        others = [
            f"{address}/{msg['prefixlen']}"
            for msg in addresses
            if _addr_flags(msg) & _IFA_F_SECONDARY and msg["index"] == nic.index
            and (address := _address_of(msg)) is not None and address in network
        ]
        if not others:
            return ""
        setting = Path("/proc/sys/net/ipv4/conf") / nic.name / "promote_secondaries"
        try:
            if setting.read_text().strip() != "0":
                return ""
            setting.write_text("1\n")
        except OSError as exc:
            log.warning("resource %s: removing primary %s from %s also removes %s: cannot turn "
                        "on promote_secondaries: %s", self.name, self.cidr, nic.name,
                        ", ".join(others), exc)
            return (f" (the kernel removed {', '.join(others)} with it: promote_secondaries "
                    f"could not be turned on: {exc})")
        log.warning("resource %s: turned on net.ipv4.conf.%s.promote_secondaries so that "
                    "removing primary %s keeps %s", self.name, nic.name, self.cidr,
                    ", ".join(others))
        return (f" (turned on net.ipv4.conf.{nic.name}.promote_secondaries to keep "
                f"{', '.join(others)})")
