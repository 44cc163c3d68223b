"""NIC monitors: one actor per network interface the node uses (its heartbeat links' NICs,
every NIC an ip resource may use, every NIC with reachability targets).

The kernel tells: a :class:`NetlinkWatch` thread per node listens to rtnetlink's link
group (RTM_NEWLINK/RTM_DELLINK: administrative state, carrier, operstate) and tells each NIC's
actor what changed within milliseconds of a cable pull; a :class:`Prober` thread per NIC
with ``[nics.targets]`` sends ICMP echo requests through that NIC (``SO_BINDTODEVICE``) for
a NIC whose switch port is dead while its carrier stays up. The actor feeds both to the pure
:class:`~vigil.cluster.nics.NicTracker` (down at once, up after a hold that grows while it
flaps) and tells the coordinator each change it believes (:class:`NicChanged`); the
coordinator keeps the node's set of NICs down, gives it to the core (costs) and to the
resources that move addresses between NICs.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final

from vigil.actors.base import Directory, VigilActor
from vigil.actors.messages import ChildRestarted
from vigil.actors.timer import DeadlineTimer
from vigil.cluster.events import NicChanged, Tick
from vigil.cluster.nics import Dampening, NicFacts, NicTracker, address_nics
from vigil.config import ClusterConfig, NicsConfig
from vigil.netlink import RTMGRP_LINK, LinkMessage, Rtnetlink, parse

log = logging.getLogger(__name__)

_IFF_UP: Final = 0x1
_SO_BINDTODEVICE: Final = 25
_ICMP_ECHO: Final = 8
_ICMP_ECHO_REPLY: Final = 0
_RECV_BUFFER: Final = 1 << 20
#: how soon the NICs' state is read again after a dump of it failed
_REDUMP: Final = 1.0


def watched_nics(config: ClusterConfig, link_carriers: Iterable[str]) -> list[str]:
    """The NICs a node watches: every ip resource's (any group may come here), every NIC with
    reachability targets, and ``link_carriers``, those of its heartbeat links
    (:func:`link_nics`)."""
    names = {nic for r in config.resources.values() for nic in address_nics(r)}
    names |= set(config.nics.targets)
    names |= set(link_carriers)
    return sorted(names)


def link_nics(config: ClusterConfig, node: str) -> dict[str, str]:
    """Link name -> the interface that holds its address on this host (links whose address
    is on no interface here are left out: the daemon could not bind them anyway)."""
    wanted = {}
    for link in config.nodes[node].links:
        with contextlib.suppress(ValueError):
            wanted[str(ipaddress.ip_address(link.address.strip("[]")))] = link.name
    found: dict[str, str] = {}
    try:
        with Rtnetlink() as rtnl:
            names = {msg.index: msg.name for msg in rtnl.links() if msg.name is not None}
            for addr in rtnl.addresses():
                if addr.address in wanted and addr.index in names:
                    found[wanted[addr.address]] = names[addr.index]
    except OSError as err:
        log.warning("cannot read this host's interfaces (%s): heartbeat links are not tied "
                    "to NICs", err)
    return found


def facts_of(msg: LinkMessage) -> NicFacts:
    if msg.deleted:
        return NicFacts(exists=False)
    return NicFacts(exists=True, admin_up=bool(msg.flags & _IFF_UP), carrier=msg.carrier == 1,
                    operstate=msg.operstate or "UNKNOWN")


def current_facts(nic: str) -> NicFacts | None:
    """What netlink says of ``nic`` now (None: netlink could not be asked)."""
    try:
        with Rtnetlink() as rtnl:
            for msg in rtnl.links():
                if msg.name == nic:
                    return facts_of(msg)
    except OSError as err:
        log.warning("NIC %s: cannot read its state (%s)", nic, err)
        return None
    return NicFacts(exists=False)


class NetlinkWatch:
    """The kernel's link events for ``nics``, as ``deliver(nic, facts)`` calls from one
    thread (first the state of every NIC, then each change). The socket listens before the
    first dump, so no change falls between the two."""

    def __init__(self, nics: Collection[str], deliver: Callable[[str, NicFacts], None]) -> None:
        self._nics = frozenset(nics)
        self._deliver = deliver
        self._failure: str | None = None  # why the last dump failed (None: it did not)
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
            self._sock.bind((0, RTMGRP_LINK))
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self._sock.close()
            raise
        self._thread = threading.Thread(target=self._run, name="vigil-netlink", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(timeout=2.0)
        if self._thread.ident is None:  # never started
            self._sock.close()
        if not self._thread.is_alive():
            # the pipe is closed here, once the thread is gone: a number closed while close()
            # might still write to it could already belong to another file
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _dump(self) -> bool:
        """Every NIC's state told; False: it could not be read (said in the log), to be
        read again later: a NIC that a failed or interrupted dump lacks is not gone."""
        try:
            with Rtnetlink() as rtnl:
                links = rtnl.links()
        except OSError as err:
            if str(err) != self._failure:
                log.warning("netlink: cannot read the NICs' state (%s); trying again every "
                            "%g s", err, _REDUMP)
            self._failure = str(err)
            return False
        if self._failure is not None:
            log.info("netlink: the NICs' state is read again")
            self._failure = None
        seen: set[str] = set()
        for msg in links:
            name = msg.name
            if name is not None and name in self._nics:
                seen.add(name)
                self._deliver(name, facts_of(msg))
        for name in sorted(self._nics - seen):
            self._deliver(name, NicFacts(exists=False))
        return True

    def _run(self) -> None:
        try:
            current = self._dump()
            while True:
                ready, _, _ = select.select([self._sock.fileno(), self._wake_r], [], [],
                                            None if current else _REDUMP)
                if self._wake_r in ready:
                    return
                if not ready:  # the last dump failed; the events since are told already
                    current = self._dump()
                    continue
                try:
                    data = self._sock.recv(65536)
                except OSError as err:
                    if err.errno != errno.ENOBUFS:
                        raise
                    # the kernel dropped events (a storm of them): ask for the whole state
                    log.warning("netlink: events were lost; reading every NIC's state again")
                    current = self._dump()
                    continue
                try:
                    messages = [m for m in parse(data) if isinstance(m, LinkMessage)]
                except Exception:  # one datagram we cannot read: the next dump corrects it
                    log.exception("netlink: an event could not be parsed; reading every NIC's "
                                  "state again")
                    current = self._dump()
                    continue
                for msg in messages:
                    name = msg.name
                    if name is not None and name in self._nics:
                        self._deliver(name, facts_of(msg))
        except Exception:
            log.exception("netlink: the NIC watch stopped; NIC states are no longer current")
        finally:
            self._sock.close()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", _ICMP_ECHO, 0, 0, ident, seq)
    payload = b"vigil-nic-probe"
    return struct.pack("!BBHHH", _ICMP_ECHO, 0, _checksum(header + payload), ident,
                       seq) + payload


class Prober:
    """Sends an ICMP echo request to each of ``targets`` through ``nic`` every ``interval``;
    reports ``problem`` (None: one answered) after each round whose outcome differs from the
    last report. Unanswered rounds count only ``failures`` in a row."""

    def __init__(self, nic: str, targets: Iterable[str], interval: float, failures: int,
                 report: Callable[[str | None], None]) -> None:
        self.nic = nic
        self.targets = tuple(targets)
        self.interval = interval
        self.failures = failures
        self._report = report
        self._stop = threading.Event()
        self._ident = (os.getpid() ^ hash(nic)) & 0xFFFF
        self._thread = threading.Thread(target=self._run, name=f"vigil-probe-{nic}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self._bind(sock)
        except OSError as err:
            log.error("NIC %s: cannot probe %s (%s; probes need CAP_NET_RAW): its "
                      "reachability is not checked", self.nic, ", ".join(self.targets), err)
            return
        with sock:
            misses, seq = 0, 0
            while not self._stop.is_set():
                seq = (seq + 1) & 0xFFFF
                start = time.monotonic()
                # again every round: the kernel binds by interface index, and a NIC that was
                # removed and made again (a veth, a VLAN, a driver reload) has a new one
                with contextlib.suppress(OSError):
                    self._bind(sock)
                answered = self._round(sock, seq, start + self.interval)
                misses = 0 if answered else misses + 1
                problem = None if misses < self.failures else (
                    f"none of {', '.join(self.targets)} answered {misses} probes in a row")
                # every round, not only changes: a NIC monitor actor that was restarted
                # knows again within one interval
                self._report(problem)
                self._stop.wait(max(0.0, start + self.interval - time.monotonic()))

    def _bind(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, self.nic.encode())

    def _round(self, sock: socket.socket, seq: int, deadline: float) -> bool:
        request = echo_request(self._ident, seq)
        for target in self.targets:
            with contextlib.suppress(OSError):  # no route, or the NIC is down: no answer
                sock.sendto(request, (target, 0))
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([sock], [], [], min(left, 0.2))
            if not ready:
                continue
            try:
                packet, (source, _) = sock.recvfrom(2048)
            except OSError:
                continue
            header = (packet[0] & 0x0F) * 4
            if len(packet) < header + 8:
                continue
            kind, _, _, ident, got = struct.unpack("!BBHHH", packet[header:header + 8])
            if (kind == _ICMP_ECHO_REPLY and ident == self._ident and got == seq
                    and source in self.targets):
                return True
        return False


class NicMonitorActor(VigilActor):
    """One NIC: what the kernel and the probes say, judged by the dampening rule."""

    def __init__(self, name: str, directory: Directory, nic: str, rule: Dampening) -> None:
        super().__init__(name, directory)
        self.nic = nic
        self.tracker = NicTracker([nic], rule)
        self.timer: DeadlineTimer | None = None

    def on_start(self) -> None:
        me = self.actor_ref
        self.timer = DeadlineTimer(self.name, lambda: me.tell(Tick()))
        # the netlink watch tells changes only: a monitor started again after a failure
        # would know nothing until the next one, so each asks the kernel once (one query)
        facts = current_facts(self.nic)
        if facts is not None:
            me.tell(facts)

    def on_stop(self) -> None:
        if self.timer is not None:
            self.timer.close()

    def on_receive(self, message: Any) -> Any:
        now = time.monotonic()
        if isinstance(message, NicFacts):
            changes = self.tracker.link(self.nic, message, now)
        elif isinstance(message, _Reach):
            changes = self.tracker.reachability(self.nic, message.problem, now)
        elif isinstance(message, Tick):
            changes = self.tracker.tick(now)
        elif isinstance(message, ChildRestarted) and message.name == "coordinator":
            # a new coordinator knows nothing of the NICs: say again what we believe
            if self.tracker.observed(self.nic):
                usable, reason, _since, _up_at = self.tracker.state()[self.nic]
                self.directory.tell("coordinator", NicChanged(self.nic, usable, reason))
            return None
        else:
            return None
        for change in changes:
            log.log(logging.INFO if change.up else logging.WARNING, "NIC %s %s: %s", self.nic,
                    "up" if change.up else "down", change.reason)
            self.directory.tell("coordinator", NicChanged(change.nic, change.up, change.reason))
        if self.timer is not None:
            self.timer.set(self.tracker.deadline())
        return None


@dataclass(frozen=True, slots=True)
class _Reach:
    """What a NIC's prober found in its last round (None: a target answered)."""

    problem: str | None


class NicSources:
    """The threads that feed a node's NIC monitor actors: the netlink watch and the probers.
    Started after the actors are in the directory; closed before they stop."""

    def __init__(self, directory: Directory, nics: Collection[str], config: NicsConfig) -> None:
        self._directory = directory
        self._nics = list(nics)
        self._config = config
        self._watch: NetlinkWatch | None = None
        self._probers: list[Prober] = []

    def start(self) -> None:
        if not self._nics:
            return
        d = self._directory

        def facts(nic: str, seen: NicFacts) -> None:
            d.tell(f"nic:{nic}", seen)

        def reach(nic: str) -> Callable[[str | None], None]:
            def report(problem: str | None) -> None:
                d.tell(f"nic:{nic}", _Reach(problem))
            return report

        self._watch = NetlinkWatch(self._nics, facts)
        self._watch.start()
        for nic, targets in sorted(self._config.targets.items()):
            prober = Prober(nic, targets, self._config.probe_interval,
                            self._config.probe_failures, reach(nic))
            prober.start()
            self._probers.append(prober)

    def close(self) -> None:
        for prober in self._probers:
            prober.close()
        if self._watch is not None:
            self._watch.close()


def dampening(config: NicsConfig) -> Dampening:
    return Dampening(up_hold=config.up_hold, max_up_hold=config.max_up_hold,
                     flap_window=config.flap_window)

