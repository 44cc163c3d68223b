"""Datagrams of rtnetlink as the NIC monitors read them (vigil/netlink.py), made by hand: the
kernel's own are read in tests/integration/test_netlink.py."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from vigil.actors.nic import facts_of
from vigil.netlink import (
    AddressMessage,
    DumpInterrupted,
    LinkMessage,
    parse,
    read_dump,
    read_whole_dump,
)

DONE, INTR = 3, 0x10  # NLMSG_DONE, NLM_F_DUMP_INTR


def attr(kind: int, value: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(value), kind) + value
    return data + b"\0" * (-len(data) % 4)


def message(kind: int, body: bytes, *, seq: int = 0, flags: int = 0) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def link(kind: int, index: int, flags: int, *attrs: bytes, seq: int = 0,
         nlflags: int = 0) -> bytes:
    return message(kind, struct.pack("=BxHiII", 0, 1, index, flags, 0) + b"".join(attrs),
                   seq=seq, flags=nlflags)


def named(index: int, name: str, seq: int, nlflags: int = 0) -> bytes:
    return link(16, index, 0x1, attr(3, name.encode() + b"\0"), seq=seq, nlflags=nlflags)


def done(seq: int, error: int = 0, nlflags: int = 0) -> bytes:
    return message(DONE, struct.pack("=i", error), seq=seq, flags=nlflags)


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


def test_an_address_is_given_as_text_the_hosts_own_on_a_point_to_point_nic() -> None:
    # point-to-point: IFA_ADDRESS (1) is the peer's, IFA_LOCAL (2) this host's
    ptp = message(20, struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, 3)
                  + attr(1, bytes([198, 18, 0, 2])) + attr(2, bytes([198, 18, 0, 1])))
    v6 = message(20, struct.pack("=BBBBI", socket.AF_INET6, 64, 0, 0, 3)
                 + attr(1, bytes.fromhex("20010db8000000000000000000000001")))
    assert list(parse(ptp + v6)) == [
        AddressMessage(index=3, family=socket.AF_INET, address="198.18.0.1"),
        AddressMessage(index=3, family=socket.AF_INET6, address="2001:db8::1")]


def test_an_error_answer_raises_its_errno_and_a_cut_datagram_is_refused() -> None:
    with pytest.raises(OSError) as caught:
        list(parse(message(2, struct.pack("=i", -errno.EPERM) + b"\0" * 16)))
    assert caught.value.errno == errno.EPERM
    assert list(parse(message(2, struct.pack("=i", 0) + b"\0" * 16))) == []  # an ack
    whole = link(16, 2, 0x1, attr(3, b"lo\0"))
    # an OSError, which what reads netlink catches (a ValueError went past them)
    with pytest.raises(OSError, match="bytes at offset 0") as cut:
        list(parse(whole[:-4]))
    assert cut.value.errno == errno.EBADMSG


def test_a_dump_is_read_across_datagrams_up_to_its_done_skipping_other_requests() -> None:
    replies = iter([
        named(1, "lo", seq=5) + named(9, "old", seq=4),  # 4: an earlier request's rest
        named(2, "eth0", seq=5),
        done(5),
        named(3, "later", seq=6)])
    assert [m.name for m in read_dump(replies, 5) if isinstance(m, LinkMessage)] == \
        ["lo", "eth0"]
    assert next(replies) == named(3, "later", seq=6)  # not read: the next dump's


def test_a_dump_whose_done_carries_an_error_failed() -> None:
    # the kernel's word that the dump failed part-way: what came before is not all there is
    with pytest.raises(OSError) as caught:
        read_dump([named(1, "lo", seq=1) + done(1, -errno.EINVAL)], 1)
    assert caught.value.errno == errno.EINVAL
    assert "the dump failed" in str(caught.value)
    with pytest.raises(OSError) as cut:
        read_dump([named(1, "lo", seq=1)], 1)  # never done
    assert cut.value.errno == errno.EBADMSG


def test_an_interrupted_dump_is_read_to_its_end_then_refused() -> None:
    replies = iter([named(1, "lo", seq=2, nlflags=INTR), done(2, nlflags=INTR),
                    named(1, "lo", seq=3)])
    with pytest.raises(DumpInterrupted) as caught:
        read_dump(replies, 2)
    assert caught.value.errno == errno.EAGAIN
    assert next(replies) == named(1, "lo", seq=3)  # nothing of the interrupted one is left
    with pytest.raises(DumpInterrupted):  # the kernel may mark only the done
        read_dump([named(1, "lo", seq=2) + done(2, nlflags=INTR)], 2)


def test_a_dump_is_asked_again_while_interrupted_three_times_at_most() -> None:
    def interrupted(seq: int) -> bytes:
        return named(1, "lo", seq=seq, nlflags=INTR) + done(seq, nlflags=INTR)

    asked: list[int] = []

    def ask() -> int:
        asked.append(len(asked) + 1)
        return asked[-1]

    replies = iter([interrupted(1), interrupted(2), named(1, "lo", seq=3) + done(3)])
    assert [m.name for m in read_whole_dump(ask, replies) if isinstance(m, LinkMessage)] == \
        ["lo"]
    assert asked == [1, 2, 3]
    asked.clear()
    replies = iter([interrupted(1), interrupted(2), interrupted(3), named(1, "lo", seq=4)])
    with pytest.raises(DumpInterrupted, match="3 times in a row"):
        read_whole_dump(ask, replies)
    assert asked == [1, 2, 3]
