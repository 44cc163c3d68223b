"""The little of rtnetlink that every daemon reads: the host's interfaces and their addresses
(dumped on request), and the kernel's link events (RTM_NEWLINK/RTM_DELLINK), parsed from
the socket's bytes.

The NIC monitors (:mod:`vigil.actors.nic`) watch the NIC of every heartbeat link, so every
daemon reads these. They are read here rather than through pyroute2, whose package imports all
of its modules (NDB, IPDB, nl80211...) whatever one uses: some 22 MB of memory and 100 ms of
CPU in every daemon at its start. What changes addresses (the ip resource, the guardian's
fence) still uses pyroute2, imported where it is used.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

__all__ = ["RTMGRP_LINK", "AddressMessage", "DumpInterrupted", "LinkMessage", "Rtnetlink",
           "parse", "read_dump", "read_whole_dump"]

#: The multicast group of link changes (bind a NETLINK_ROUTE socket to it to hear them).
RTMGRP_LINK: Final = 1

_NLMSG_ERROR: Final = 2
_NLMSG_DONE: Final = 3
_RTM_NEWLINK: Final = 16
_RTM_DELLINK: Final = 17
_RTM_GETLINK: Final = 18
_RTM_NEWADDR: Final = 20
_RTM_GETADDR: Final = 22
_NLM_F_REQUEST: Final = 0x1
_NLM_F_DUMP: Final = 0x300  # NLM_F_ROOT | NLM_F_MATCH
#: set on a dump's messages when what was dumped changed meanwhile: it may miss entries
_NLM_F_DUMP_INTR: Final = 0x10
#: how many times a dump is made while the kernel marks it interrupted
_DUMP_TRIES: Final = 3
_IFLA_IFNAME: Final = 3
_IFLA_OPERSTATE: Final = 16
_IFLA_CARRIER: Final = 33
_IFA_ADDRESS: Final = 1
_IFA_LOCAL: Final = 2
#: the attribute type without its NLA_F_NESTED and NLA_F_NET_BYTEORDER bits
_NLA_TYPE_MASK: Final = 0x3FFF

_HEADER: Final = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_IFINFO: Final = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR: Final = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefix, flags, scope, index
_ATTR: Final = struct.Struct("=HH")  # rtattr: length, type
_ERROR: Final = struct.Struct("=i")  # nlmsgerr: a negative errno (then the request's header)

#: IFLA_OPERSTATE's values (RFC 2863), by number
OPERSTATES: Final = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT",
                     "UP")

_RECV_SIZE: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class LinkMessage:
    """One interface as an RTM_NEWLINK (or RTM_DELLINK: ``deleted``) message says it."""

    index: int
    flags: int  # IFF_UP, IFF_RUNNING...
    name: str | None = None
    carrier: int | None = None
    operstate: str | None = None
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class AddressMessage:
    """One address of an interface (RTM_NEWADDR), as text: its IFA_LOCAL, this host's own,
    else its IFA_ADDRESS (the same but on a point-to-point interface, where that is the
    peer's)."""

    index: int
    family: int
    address: str | None


def _align(length: int) -> int:
    return (length + 3) & ~3


def _attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while start + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, start)
        if length < _ATTR.size or start + length > end:
            break
        found.setdefault(kind & _NLA_TYPE_MASK, data[start + _ATTR.size:start + length])
        start += _align(length)
    return found


def _link(data: bytes, start: int, end: int, deleted: bool) -> LinkMessage | None:
    if end - start < _IFINFO.size:
        return None
    _family, _type, index, flags, _change = _IFINFO.unpack_from(data, start)
    attrs = _attributes(data, start + _IFINFO.size, end)
    name = attrs.get(_IFLA_IFNAME)
    carrier = attrs.get(_IFLA_CARRIER)
    state = attrs.get(_IFLA_OPERSTATE)
    operstate = None
    if state:
        operstate = OPERSTATES[state[0]] if state[0] < len(OPERSTATES) else "UNKNOWN"
    return LinkMessage(
        index=index, flags=flags,
        name=name.split(b"\0", 1)[0].decode("utf-8", "replace") if name is not None else None,
        carrier=carrier[0] if carrier else None, operstate=operstate, deleted=deleted)


def _address(data: bytes, start: int, end: int) -> AddressMessage | None:
    if end - start < _IFADDR.size:
        return None
    family, _prefix, _flags, _scope, index = _IFADDR.unpack_from(data, start)
    attrs = _attributes(data, start + _IFADDR.size, end)
    raw = attrs.get(_IFA_LOCAL, attrs.get(_IFA_ADDRESS))
    text = None
    if raw is not None and len(raw) in (4, 16):
        text = str(ipaddress.ip_address(raw))
    return AddressMessage(index=index, family=family, address=text)


def _messages(data: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """Each message of a datagram: its type, flags, sequence number, and where its body
    starts and ends in ``data``."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, flags, seq, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            # an OSError, as the socket's own failures are: what reads it catches those
            raise OSError(errno.EBADMSG, f"netlink: a message of {length} bytes at offset "
                          f"{offset} of a datagram of {len(data)}")
        yield kind, flags, seq, offset + _HEADER.size, offset + length
        offset += _align(length)


def _message(kind: int, data: bytes, start: int,
             end: int) -> LinkMessage | AddressMessage | None:
    if kind in (_RTM_NEWLINK, _RTM_DELLINK):
        return _link(data, start, end, kind == _RTM_DELLINK)
    if kind == _RTM_NEWADDR:
        return _address(data, start, end)
    if kind == _NLMSG_ERROR and end - start >= _ERROR.size:
        (error,) = _ERROR.unpack_from(data, start)
        if error:
            raise OSError(-error, os.strerror(-error))
    return None


def parse(data: bytes) -> Iterator[LinkMessage | AddressMessage]:
    """The link and address messages of one datagram from a NETLINK_ROUTE socket, in order
    (others are skipped). An error message raises OSError with its errno; a datagram cut
    short, OSError(EBADMSG)."""
    for kind, _flags, _seq, start, end in _messages(data):
        found = _message(kind, data, start, end)
        if found is not None:
            yield found


class DumpInterrupted(OSError):
    """What was dumped changed while the kernel dumped it (NLM_F_DUMP_INTR): the answer may
    lack entries, or hold stale ones; ask again."""


def read_dump(replies: Iterable[bytes], seq: int) -> list[LinkMessage | AddressMessage]:
    """The link and address messages that answer the dump request ``seq``, read from
    ``replies`` (the socket's datagrams) up to its NLMSG_DONE; messages of other requests are
    skipped. A dump that failed (an error message, or NLMSG_DONE with a negative errno, as
    when it failed part-way) raises OSError with its errno; one the kernel marked
    interrupted, :class:`DumpInterrupted`, once all of it is read (the next dump's answer
    must not start with this one's rest)."""
    found: list[LinkMessage | AddressMessage] = []
    interrupted = False
    for data in replies:
        for kind, flags, seq_seen, start, end in _messages(data):
            if seq_seen != seq:  # not this request's answer
                continue
            interrupted = interrupted or bool(flags & _NLM_F_DUMP_INTR)
            if kind == _NLMSG_DONE:
                if end - start >= _ERROR.size:
                    (error,) = _ERROR.unpack_from(data, start)
                    if error < 0:
                        raise OSError(-error, f"netlink: the dump failed: "
                                      f"{os.strerror(-error)}")
                if interrupted:
                    raise DumpInterrupted(errno.EAGAIN, "netlink: the dump was interrupted "
                                          "by a change (NLM_F_DUMP_INTR)")
                return found
            message = _message(kind, data, start, end)
            if message is not None:
                found.append(message)
    raise OSError(errno.EBADMSG, "netlink: the dump's answer ended before its NLMSG_DONE")


def read_whole_dump(ask: Callable[[], int],
                    replies: Iterator[bytes]) -> list[LinkMessage | AddressMessage]:
    """A dump's answer (:func:`read_dump`) that no change interrupted: ``ask()`` sends the
    request and gives its sequence number; it is sent again while the answer read from
    ``replies`` is marked interrupted, at most :data:`_DUMP_TRIES` times in all (then
    :class:`DumpInterrupted`)."""
    attempt = 1
    while True:
        try:
            return read_dump(replies, ask())
        except DumpInterrupted as exc:
            if attempt == _DUMP_TRIES:
                raise DumpInterrupted(exc.errno, f"{exc.strerror}, {_DUMP_TRIES} times in a "
                                      "row") from exc
        attempt += 1


class Rtnetlink:
    """A NETLINK_ROUTE socket that asks the kernel for its interfaces and addresses (in
    this process's network namespace). Use it in a ``with`` block, or close() it."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        try:
            self._sock.bind((0, 0))
        except OSError:
            self._sock.close()
            raise
        self._seq = itertools.count(1)

    def __enter__(self) -> Rtnetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def links(self) -> list[LinkMessage]:
        """Every interface (OSError: the kernel's answer failed, or changes interrupted it
        again and again: :func:`read_whole_dump`)."""
        request = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        return [m for m in self._dump(_RTM_GETLINK, request) if isinstance(m, LinkMessage)]

    def addresses(self) -> list[AddressMessage]:
        """Every address of every interface, IPv4 and IPv6."""
        request = _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        return [m for m in self._dump(_RTM_GETADDR, request) if isinstance(m, AddressMessage)]

    def _dump(self, kind: int, body: bytes) -> list[LinkMessage | AddressMessage]:
        return read_whole_dump(lambda: self._ask(kind, body), self._replies())

    def _ask(self, kind: int, body: bytes) -> int:
        seq = next(self._seq)
        header = _HEADER.pack(_HEADER.size + len(body), kind, _NLM_F_REQUEST | _NLM_F_DUMP,
                              seq, 0)
        self._sock.sendto(header + body, (0, 0))
        return seq

    def _replies(self) -> Iterator[bytes]:
        while True:
            yield self._sock.recv(_RECV_SIZE)
