"""The local sockets' checks without sockets: what a request line may be, what a subscriber's
bytes mean (ZMTP, fed as libzmq sends them), how refusals are logged, how a long notification
is shortened."""

from __future__ import annotations

import json
import logging
import struct

import pytest

from vigil.actors.notifier import encode_event
from vigil.local.limits import (
    MAX_EVENT_MESSAGE,
    MAX_JSON_DEPTH,
    MAX_REQUEST,
    MAX_SUBSCRIBER_FRAME,
)
from vigil.local.protocol import check_request, json_depth
from vigil.local.server import Throttled
from vigil.local.zmtp import Event, ProtocolError, SubscriberParser, command, greeting, ready
from vigil.notifications import Decision

# What libzmq 4.3's SUB socket sends: its greeting (as client), READY, SUBSCRIBE "".
LIBZMQ_SUB = bytes.fromhex(
    "ff00000000000000017f03014e554c4c" + "00" * 48
    + "04190552454144590b536f636b65742d5479706500000003535542" + "040a09535542534352494245")


def request(command: str = "status", **args: str) -> bytes:
    return json.dumps({"command": command, "args": args}).encode() + b"\n"


@pytest.mark.parametrize(("text", "depth"), [
    (b"", 0), (b"{}", 1), (b'{"a": [1, {"b": [[]]}]}', 5), (b"[" * 70000, 70000),
    (b"[]" * 1000, 1), (b'"[[[[" [[]]', 2), (b'"\\"[[[" [[]]', 2), (b'"\\\\" [[]]', 2),
    (b'{"a": "unterminated [[[', 1), (b"]]][[", 0), (b"]]]" + b"[" * 9, 6),
])
def test_json_depth_counts_brackets_outside_strings(text: bytes, depth: int) -> None:
    assert json_depth(text) == depth


def test_a_request_is_refused_for_its_length_or_depth_before_it_is_parsed() -> None:
    check_request(request("move", group="[[[[[[[[[[[[", node="]]]]"))
    check_request(b"[" * MAX_JSON_DEPTH)
    with pytest.raises(ValueError, match=f"longer than {MAX_REQUEST} bytes"):
        check_request(b" " * (MAX_REQUEST + 1))
    with pytest.raises(ValueError, match=f"nests arrays or objects 65536 deep, at most "
                                         f"{MAX_JSON_DEPTH}"):
        check_request(b"[" * 65536)
    with pytest.raises(ValueError, match=f"{MAX_JSON_DEPTH + 1} deep"):
        check_request(b'{"command": "status", "args": ' + b"[" * MAX_JSON_DEPTH + b"}")


def test_what_libzmq_sends_is_a_subscription_to_everything_in_any_slicing() -> None:
    for size in (1, 7, 64, len(LIBZMQ_SUB)):
        parser = SubscriberParser()
        events = []
        for at in range(0, len(LIBZMQ_SUB), size):
            events += parser.feed(LIBZMQ_SUB[at:at + size])
        assert events == [Event("ready"), Event("subscribe", b"")]


def test_zmtp_3_0_subscriptions_cancels_and_pings() -> None:
    parser = SubscriberParser()
    parser.feed(LIBZMQ_SUB)
    assert parser.feed(b"\x00\x04\x01abc" + b"\x00\x04\x00abc") == [
        Event("subscribe", b"abc"), Event("cancel", b"abc")]
    assert parser.feed(command(b"PING", b"\x00\x0actx")) == [Event("ping", b"ctx")]
    assert parser.feed(command(b"CANCEL", b"x") + command(b"PONG")) == [Event("cancel", b"x")]


def test_a_frame_declared_too_large_is_refused_before_its_body_comes() -> None:
    parser = SubscriberParser()
    parser.feed(LIBZMQ_SUB)
    with pytest.raises(ProtocolError, match=f"a frame of {8 << 30} bytes; a subscriber's "
                                            f"frames may have at most {MAX_SUBSCRIBER_FRAME}"):
        parser.feed(struct.pack(">BQ", 2, 8 << 30))
    assert len(parser.buffer) <= 9


@pytest.mark.parametrize(("data", "why"), [
    (b"GET / HTTP/1.1\r\n", "not a ZeroMQ peer"),
    (b"\xff" + bytes(8) + b"\x7f\x02", "ZMTP 2.x"),
    (b"\xff" + bytes(8) + b"\x7f\x03\x01" + b"CURVE".ljust(20, b"\0") + bytes(32),
     "'CURVE' security mechanism"),
    (LIBZMQ_SUB[:64] + ready(b"PUSH"), "a PUSH socket"),
    (LIBZMQ_SUB[:64] + command(b"HELLO"), "'HELLO' where the handshake needs READY"),
    (LIBZMQ_SUB[:64] + b"\x00\x01x", "a malformed command"),
    (LIBZMQ_SUB + b"\x80\x00", "reserved flags"),
])
def test_anything_but_a_zmtp_3_reader_is_refused_with_the_reason(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        SubscriberParser().feed(data)


def test_the_server_greets_as_libzmq_expects() -> None:
    ours = greeting()
    assert len(ours) == 64 and ours[:1] == b"\xff" and ours[9:12] == b"\x7f\x03\x01"
    assert ours[12:16] == b"NULL" and ours[32] == 1  # as-server
    assert ready(b"PUB") == bytes.fromhex("04190552454144590b536f636b65742d5479706500000003505542")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_refusals_are_logged_a_few_at_a_time_and_the_rest_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    throttled = Throttled(logging.getLogger("test.throttled"), burst=3, interval=10.0,
                          clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        for i in range(1000):
            throttled.warning("refused %d", i)
        throttled.warning("cut off %s", "x")  # another kind has its own share
        throttled.flush()
        assert caplog.messages == ["refused 0", "refused 1", "refused 2", "cut off x"]
        clock.now = 10.0
        throttled.flush()
        assert caplog.messages[-1] == "refused 999 (996 more suppressed)"
        throttled.warning("refused %d", 1000)
        clock.now = 20.0
        throttled.flush()
    assert caplog.messages[-1] == "refused 1000"
    assert len(caplog.messages) == 6


def test_a_notification_too_long_for_the_event_socket_goes_out_with_its_text_shortened() -> None:
    note = Decision(node="alpha", time=1.0, text="é" * 100_000, topic="t", seq=7)
    data = encode_event(note, "run1")
    assert len(data) <= MAX_EVENT_MESSAGE
    back = json.loads(data)
    assert back["text"].endswith(" [shortened]") and back["text"].startswith("éé")
    assert (back["seq"], back["run"], back["topic"]) == (7, "run1", "t")
    short = Decision(node="alpha", time=1.0, text="fits", topic="t", seq=8)
    assert json.loads(encode_event(short, "run1"))["text"] == "fits"
