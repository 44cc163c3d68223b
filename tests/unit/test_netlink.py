"""Datagrams of rtnetlink as the NIC monitors read them (vigil/netlink.py), made by hand: the
kernel's own are read in tests/integration/test_netlink.py."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from vigil.actors.nic import facts_of
from vigil.netlink import AddressMessage, LinkMessage, parse


def attr(kind: int, value: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(value), kind) + value
    return data + b"\0" * (-len(data) % 4)


def message(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def link(kind: int, index: int, flags: int, *attrs: bytes) -> bytes:
    return message(kind, struct.pack("=BxHiII", 0, 1, index, flags, 0) + b"".join(attrs))


def test_a_link_event_says_name_flags_carrier_and_operstate() -> None:
    data = link(16, 7, 0x1, attr(3, b"eth1\0"), attr(33, b"\0"), attr(16, b"\3"))
    data += link(17, 7, 0, attr(3, b"eth1\0"))
    up, gone = list(parse(data))
    assert up == LinkMessage(index=7, flags=1, name="eth1", carrier=0,
                             operstate="LOWERLAYERDOWN")
    assert facts_of(up).problem() == "no carrier (cable, switch port or peer down)"
    assert gone.deleted
    assert facts_of(gone).problem() == "no such interface"


def test_an_operstate_past_rfc_2863_counts_as_unknown_and_other_messages_are_skipped() -> None:
    data = message(24, b"\0" * 12)  # RTM_NEWROUTE
    data += link(16, 2, 0x1, attr(16, b"\x09"), attr(33, b"\1"))
    (msg,) = list(parse(data))
    assert msg.name is None and msg.operstate == "UNKNOWN"
    assert facts_of(msg).problem() is None


def test_an_address_is_given_as_text() -> None:
    v4 = message(20, struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, 3)
                 + attr(2, bytes([198, 18, 0, 2])) + attr(1, bytes([198, 18, 0, 1])))
    v6 = message(20, struct.pack("=BBBBI", socket.AF_INET6, 64, 0, 0, 3)
                 + attr(1, bytes.fromhex("20010db8000000000000000000000001")))
    assert list(parse(v4 + v6)) == [
        AddressMessage(index=3, family=socket.AF_INET, address="198.18.0.1"),
        AddressMessage(index=3, family=socket.AF_INET6, address="2001:db8::1")]


def test_an_error_answer_raises_its_errno_and_a_cut_datagram_is_refused() -> None:
    with pytest.raises(OSError) as caught:
        list(parse(message(2, struct.pack("=i", -errno.EPERM) + b"\0" * 16)))
    assert caught.value.errno == errno.EPERM
    assert list(parse(message(2, struct.pack("=i", 0) + b"\0" * 16))) == []  # an ack
    whole = link(16, 2, 0x1, attr(3, b"lo\0"))
    with pytest.raises(ValueError, match="bytes at offset 0"):
        list(parse(whole[:-4]))
