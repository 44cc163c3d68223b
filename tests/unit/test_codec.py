"""The wire format: round trips, and every reason a received frame set is dropped."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.messages import NAME_RE, TOKEN_RE, Message
from vigil.transports.codec import (
    MAX_MESSAGE_BYTES,
    Codec,
    Rejected,
    ReplayGuard,
    Sequencer,
    topic_for,
)

CLUSTER = "test-cluster"
KEY = b"0123456789abcdef0123456789abcdef"
NODES = ("alpha", "beta", "gamma")
INC = 1_700_000_000_000_000_000


def codec(self_name: str = "beta", *, key: bytes = KEY, cluster: str = CLUSTER) -> Codec:
    return Codec(cluster, key, NODES, self_name)


def message(
    *,
    sender: str = "alpha",
    dest: str = "*",
    inc: int = INC,
    seq: int = 1,
    fields: dict[str, str] | None = None,
) -> Message:
    return Message(
        type="heartbeat",
        sender=sender,
        dest=dest,
        fields={"epoch": "3"} if fields is None else fields,
        incarnation=inc,
        seq=seq,
    )


def sign(topic: bytes, body: bytes, key: bytes = KEY) -> list[bytes]:
    return [topic, body, hmac.new(key, topic + body, hashlib.sha256).digest()]


def signed_body(
    change: Callable[[dict[str, object]], object], topic: bytes = b"*\x00"
) -> list[bytes]:
    """Frames whose body is a valid one edited by ``change``, correctly signed: they pass the
    MAC check and exercise the schema checks behind it."""
    body: dict[str, object] = json.loads(codec("alpha").encode(message())[1])
    change(body)
    return sign(topic, json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def reason_of(receiver: Codec, frames: list[bytes]) -> str:
    with pytest.raises(Rejected) as caught:
        receiver.decode(frames)
    return caught.value.reason


def test_message_round_trips_through_the_wire_format() -> None:
    sent = message(fields={"epoch": "3", "note": "ünïcode ✓", "empty": ""})
    frames = codec("alpha").encode(sent)
    assert len(frames) == 3
    assert frames[0] == b"*\x00"
    assert len(frames[2]) == 32
    assert codec("beta").decode(frames) == sent


def test_body_is_canonical_json() -> None:
    frames = codec("alpha").encode(message(dest="beta"))
    assert frames[0] == b"beta\x00"
    assert frames[1] == (
        b'{"cluster":"test-cluster","f":{"epoch":"3"},"from":"alpha","inc":'
        + str(INC).encode()
        + b',"seq":1,"to":"beta","type":"heartbeat","v":1}'
    )


def test_unstamped_message_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="not stamped"):
        codec("alpha").encode(Message(type="heartbeat", sender="alpha"))


def test_oversize_message_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="limit"):
        codec("alpha").encode(message(fields={"blob": "x" * MAX_MESSAGE_BYTES}))


def test_tampered_body_is_unauthenticated() -> None:
    topic, body, mac = codec("alpha").encode(message())
    tampered = body.replace(b'"epoch":"3"', b'"epoch":"4"')
    assert reason_of(codec(), [topic, tampered, mac]) == "unauthenticated"


def test_tampered_topic_is_unauthenticated() -> None:
    _topic, body, mac = codec("alpha").encode(message())
    assert reason_of(codec(), [b"beta\x00", body, mac]) == "unauthenticated"


def test_wrong_key_is_unauthenticated() -> None:
    frames = codec("alpha", key=b"another key entirely").encode(message())
    assert reason_of(codec(), frames) == "unauthenticated"


@pytest.mark.parametrize("count", [0, 1, 2])
def test_truncated_frame_set_is_malformed(count: int) -> None:
    frames = codec("alpha").encode(message())
    assert reason_of(codec(), frames[:count]) == "malformed"


def test_extra_frame_is_malformed() -> None:
    frames = codec("alpha").encode(message())
    assert reason_of(codec(), [*frames, b""]) == "malformed"


def test_truncated_mac_is_malformed() -> None:
    topic, body, mac = codec("alpha").encode(message())
    assert reason_of(codec(), [topic, body, mac[:16]]) == "malformed"


def test_oversize_frame_set_is_malformed_before_the_mac_is_computed() -> None:
    frames = sign(b"*\x00", b"x" * (MAX_MESSAGE_BYTES + 1))
    assert reason_of(codec(), frames) == "malformed"


def test_signed_non_json_is_malformed() -> None:
    assert reason_of(codec(), sign(b"*\x00", b"\xff not json {")) == "malformed"


def test_signed_deeply_nested_json_is_malformed() -> None:
    assert reason_of(codec(), sign(b"*\x00", b"[" * 100_000)) == "malformed"


def test_json_with_an_extra_key_is_malformed() -> None:
    frames = signed_body(lambda body: body.update(extra="1"))
    assert reason_of(codec(), frames) == "malformed"


def test_json_with_a_missing_key_is_malformed() -> None:
    frames = signed_body(lambda body: body.pop("seq"))
    assert reason_of(codec(), frames) == "malformed"


def test_json_with_a_duplicate_key_is_malformed() -> None:
    body = codec("alpha").encode(message())[1]
    duplicated = body[:-1] + b',"v":1}'
    assert reason_of(codec(), sign(b"*\x00", duplicated)) == "malformed"


def test_non_string_field_value_is_malformed() -> None:
    frames = signed_body(lambda body: body.update(f={"epoch": 3}))
    assert reason_of(codec(), frames) == "malformed"


def test_invalid_field_name_is_malformed() -> None:
    frames = signed_body(lambda body: body.update(f={"Not A Token": "x"}))
    assert reason_of(codec(), frames) == "malformed"


@pytest.mark.parametrize("value", [True, 0, -1, 1.5, "7", 1 << 63, None])
def test_sequence_that_is_not_a_positive_integer_is_malformed(value: object) -> None:
    frames = signed_body(lambda body: body.update(seq=value))
    assert reason_of(codec(), frames) == "malformed"


@pytest.mark.parametrize("version", [2, 0, True, "1", 1.0])
def test_other_protocol_version_is_malformed(version: object) -> None:
    frames = signed_body(lambda body: body.update(v=version))
    assert reason_of(codec(), frames) == "malformed"


def test_topic_that_disagrees_with_destination_is_malformed() -> None:
    frames = signed_body(lambda body: None, topic=b"beta\x00")
    assert reason_of(codec(), frames) == "malformed"


def test_unknown_sender_is_rejected() -> None:
    sender = Codec(CLUSTER, KEY, [*NODES, "mallory"], "mallory")
    frames = sender.encode(message(sender="mallory"))
    assert reason_of(codec(), frames) == "unknown-sender"


def test_wrong_cluster_is_rejected() -> None:
    frames = codec("alpha", cluster="other-cluster").encode(message())
    assert reason_of(codec(), frames) == "wrong-cluster"


def test_message_for_another_node_is_rejected() -> None:
    frames = codec("alpha").encode(message(dest="gamma"))
    assert reason_of(codec("beta"), frames) == "not-for-us"


def test_message_for_us_is_accepted() -> None:
    frames = codec("alpha").encode(message(dest="beta"))
    assert codec("beta").decode(frames).dest == "beta"


def test_own_broadcast_echoed_back_is_not_acted_on() -> None:
    alpha = codec("alpha")
    assert reason_of(alpha, alpha.encode(message())) == "own"


def test_same_message_twice_is_a_duplicate() -> None:
    receiver = codec()
    frames = codec("alpha").encode(message(seq=5))
    receiver.decode(frames)
    assert reason_of(receiver, frames) == "duplicate"


def test_out_of_order_within_the_window_is_accepted_once() -> None:
    sender, receiver = codec("alpha"), codec()
    for seq in (10, 3, 7, 4):
        receiver.decode(sender.encode(message(seq=seq)))
    assert reason_of(receiver, sender.encode(message(seq=7))) == "duplicate"


def test_sequence_far_below_the_window_is_replayed() -> None:
    sender, receiver = codec("alpha"), codec()
    receiver.decode(sender.encode(message(seq=5000)))
    assert reason_of(receiver, sender.encode(message(seq=3))) == "replayed"


def test_old_incarnation_is_replayed() -> None:
    sender, receiver = codec("alpha"), codec()
    receiver.decode(sender.encode(message(inc=INC + 1, seq=1)))
    assert reason_of(receiver, sender.encode(message(inc=INC, seq=99))) == "replayed"


def test_new_incarnation_resets_the_window() -> None:
    sender, receiver = codec("alpha"), codec()
    receiver.decode(sender.encode(message(inc=INC, seq=5000)))
    restarted = receiver.decode(sender.encode(message(inc=INC + 1, seq=1)))
    assert (restarted.incarnation, restarted.seq) == (INC + 1, 1)
    assert reason_of(receiver, sender.encode(message(inc=INC, seq=5001))) == "replayed"


def test_rejected_message_does_not_touch_the_replay_window() -> None:
    receiver = codec()
    forged = codec("alpha", key=b"wrong key").encode(message(inc=INC + 100, seq=1))
    reason_of(receiver, forged)
    assert receiver.replay_guard.incarnation_of("alpha") is None
    receiver.decode(codec("alpha").encode(message(inc=INC, seq=1)))


def test_counters_count_every_outcome() -> None:
    alpha, receiver = codec("alpha"), codec()
    frames = alpha.encode(message(seq=1))
    receiver.decode(frames)
    receiver.decode(alpha.encode(message(seq=2)))
    for bad in (
        frames,  # duplicate
        frames[:2],  # malformed
        codec("alpha", key=b"nope").encode(message(seq=3)),  # unauthenticated
        alpha.encode(message(dest="gamma", seq=4)),  # not-for-us
        receiver.encode(message(sender="beta", seq=1)),  # own
    ):
        with pytest.raises(Rejected):
            receiver.decode(bad)
    assert receiver.counters == {
        "accepted": 2,
        "duplicate": 1,
        "malformed": 1,
        "unauthenticated": 1,
        "not-for-us": 1,
        "own": 1,
    }


def test_counters_are_a_snapshot() -> None:
    receiver = codec()
    snapshot = receiver.counters
    receiver.decode(codec("alpha").encode(message()))
    assert snapshot["accepted"] == 0
    assert receiver.counters["accepted"] == 1


def test_sequencer_stamps_increasing_sequence_numbers_with_one_incarnation() -> None:
    sequencer = Sequencer("alpha")
    stamped = [sequencer.stamp(Message(type="ping", sender="alpha")) for _ in range(3)]
    assert [m.seq for m in stamped] == [1, 2, 3]
    assert {m.incarnation for m in stamped} == {sequencer.incarnation}


def test_later_sequencer_has_a_newer_incarnation() -> None:
    assert Sequencer("alpha").incarnation < Sequencer("alpha").incarnation


def test_sequencer_refuses_another_senders_message() -> None:
    with pytest.raises(ValueError, match="cannot stamp"):
        Sequencer("alpha").stamp(Message(type="ping", sender="beta"))


def test_stamped_messages_from_a_restarted_node_are_accepted() -> None:
    alpha, receiver = codec("alpha"), codec()
    before = Sequencer("alpha")
    for _ in range(3):
        receiver.decode(alpha.encode(before.stamp(Message(type="ping", sender="alpha"))))
    after = Sequencer("alpha")
    receiver.decode(alpha.encode(after.stamp(Message(type="ping", sender="alpha"))))
    late = alpha.encode(before.stamp(Message(type="ping", sender="alpha")))
    assert reason_of(receiver, late) == "replayed"


def test_replay_window_edge() -> None:
    guard = ReplayGuard(window=4)
    assert guard.admit("alpha", 1, 10) == "accepted"
    assert guard.admit("alpha", 1, 7) == "accepted"  # highest - 3: last slot of the window
    assert guard.admit("alpha", 1, 6) == "replayed"  # highest - 4: below it
    assert guard.admit("alpha", 1, 14) == "accepted"  # slides the window: 10 is now the edge
    assert guard.admit("alpha", 1, 11) == "accepted"
    assert guard.admit("alpha", 1, 10) == "replayed"
    assert guard.admit("alpha", 1, 100) == "accepted"  # a jump wider than the window
    assert guard.admit("alpha", 1, 14) == "replayed"
    assert guard.admit("alpha", 1, 99) == "accepted"
    assert guard.admit("alpha", 1, 99) == "duplicate"


# -- properties ------------------------------------------------------------------------------

frames_strategy = st.lists(st.binary(max_size=64), max_size=5) | st.tuples(
    st.sampled_from([b"*\x00", b"beta\x00", b"alpha\x00", b""]),
    st.binary(max_size=300),
    st.binary(min_size=32, max_size=32),
).map(list)


@given(frames_strategy)
def test_random_frames_are_only_ever_rejected(frames: list[bytes]) -> None:
    with pytest.raises(Rejected):
        codec().decode(frames)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5,
)
BODY_KEYS = ["v", "cluster", "type", "from", "to", "inc", "seq", "f"]


@settings(max_examples=300)
@given(
    replaced=st.dictionaries(st.sampled_from([*BODY_KEYS, "extra"]), json_values, max_size=3),
    removed=st.sets(st.sampled_from(BODY_KEYS), max_size=2),
    topic=st.sampled_from([b"*\x00", b"beta\x00", b"\x00", b"x"]),
)
def test_signed_mutated_bodies_are_only_ever_rejected_or_valid(
    replaced: dict[str, object], removed: set[str], topic: bytes
) -> None:
    def mutate(body: dict[str, object]) -> None:
        body.update(replaced)
        for key in removed:
            body.pop(key, None)

    try:
        received = codec().decode(signed_body(mutate, topic=topic))
    except Rejected:
        return
    assert received.sender in NODES


names = st.from_regex(NAME_RE, fullmatch=True)
tokens = st.from_regex(TOKEN_RE, fullmatch=True)


@settings(max_examples=200)
@given(
    type_=tokens,
    sender=st.sampled_from(["alpha", "gamma"]),
    dest=st.sampled_from(["*", "beta"]),
    fields=st.dictionaries(tokens, st.text(max_size=40), max_size=6),
    inc=st.integers(1, (1 << 63) - 1),
    seq=st.integers(1, (1 << 63) - 1),
)
def test_random_valid_messages_round_trip(
    type_: str, sender: str, dest: str, fields: dict[str, str], inc: int, seq: int
) -> None:
    sent = Message(type=type_, sender=sender, dest=dest, fields=fields, incarnation=inc, seq=seq)
    received = codec("beta").decode(codec(sender).encode(sent))
    assert received == sent
    assert dict(received.fields) == fields


@given(names, names)
def test_topic_of_one_node_never_matches_another_nodes_subscription(a: str, b: str) -> None:
    if a != b:
        assert not topic_for(a).startswith(topic_for(b))
        assert not topic_for(a).startswith(topic_for("*"))
