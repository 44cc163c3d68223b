"""The nodes' CurveZMQ keys derived from the cluster key, the key ring of a rotation, and the ZAP
handler's decision (who may finish a handshake with a node's listening socket)."""

from __future__ import annotations

import pytest
import zmq
from zmq.utils import z85

from vigil.messages import Message
from vigil.transports import Codec, Rejected, Sequencer
from vigil.transports.keys import LinkKeys, derive_keypair, hkdf_sha256, key_ring
from vigil.transports.zap import Admission, decide

KEY = b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
OTHER = b"ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"


def test_hkdf_matches_rfc_5869_test_case_1() -> None:
    okm = hkdf_sha256(bytes.fromhex("0b" * 22), bytes.fromhex("000102030405060708090a0b0c"),
                      bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


def test_every_machine_derives_the_same_pair_for_a_node_and_another_for_every_other() -> None:
    alpha = derive_keypair(KEY, "prod", "alpha")
    assert alpha == derive_keypair(KEY, "prod", "alpha")
    assert zmq.curve_public(alpha.secret) == alpha.public
    others = {derive_keypair(KEY, "prod", "beta"), derive_keypair(KEY, "test", "alpha"),
              derive_keypair(OTHER, "prod", "alpha")}
    assert alpha not in others and len(others) == 3
    assert alpha.secret not in repr(alpha).encode()


def test_a_node_knows_every_peers_public_key_but_only_its_own_secret() -> None:
    keys = LinkKeys.derive([KEY], "prod", ["alpha", "beta", "gamma"], "alpha")
    assert keys.own == derive_keypair(KEY, "prod", "alpha")
    assert keys.peers == {n: (derive_keypair(KEY, "prod", n).public,) for n in ("beta", "gamma")}
    assert keys.admitted(["beta"]) == {z85.decode(keys.peers["beta"][0]): "beta"}


def test_during_a_rotation_a_peer_has_both_keys_the_one_in_use_first() -> None:
    keys = LinkKeys.derive([OTHER, KEY], "prod", ["alpha", "beta"], "alpha")
    assert keys.own == derive_keypair(OTHER, "prod", "alpha")
    assert keys.peers["beta"] == (derive_keypair(OTHER, "prod", "beta").public,
                                  derive_keypair(KEY, "prod", "beta").public)
    assert len(keys.admitted(["beta"])) == 2


def test_a_key_file_holds_one_key_or_two_hex_lines() -> None:
    assert key_ring(KEY) == (KEY,)
    assert key_ring(KEY + b"\n" + OTHER) == (KEY, OTHER)
    assert key_ring(KEY + b"\r\n" + OTHER) == (KEY, OTHER)
    assert key_ring(KEY + b"\n" + KEY) == (KEY,)
    # anything else is one key, as it always was: a binary key may hold a newline
    binary = b"\x00\x01\n\x02" * 8
    assert key_ring(binary) == (binary,)
    assert key_ring(KEY + b"\n" + OTHER + b"\n" + KEY) == (KEY + b"\n" + OTHER + b"\n" + KEY,)


BETA = derive_keypair(KEY, "prod", "beta")
ADMISSIONS = {"lan0/alpha": Admission.of({z85.decode(BETA.public): "beta"}, ["192.0.2.2"])}


def test_zap_admits_a_configured_peers_key_from_its_address_and_names_it() -> None:
    verdict = decide(ADMISSIONS, "lan0/alpha", "192.0.2.2", b"CURVE", [z85.decode(BETA.public)])
    assert verdict.admitted and verdict.user == "beta"
    mapped = decide(ADMISSIONS, "lan0/alpha", "::ffff:192.0.2.2", b"CURVE",
                    [z85.decode(BETA.public)])
    assert mapped.admitted


def test_zap_refuses_an_unknown_key_another_address_mechanism_or_domain() -> None:
    stranger = z85.decode(zmq.curve_keypair()[0])
    beta = z85.decode(BETA.public)
    cases = {
        ("lan0/alpha", "192.0.2.2", b"CURVE", stranger): "no configured node's",
        ("lan0/alpha", "192.0.2.9", b"CURVE", beta): "not one of its addresses",
        ("lan0/alpha", "192.0.2.2", b"NULL", beta): "not CURVE",
        ("lan1/alpha", "192.0.2.2", b"CURVE", beta): "unknown ZAP domain",
    }
    for (domain, address, mechanism, key), why in cases.items():
        verdict = decide(ADMISSIONS, domain, address, mechanism, [key])
        assert verdict.status == b"400" and why in verdict.text, (domain, address, verdict)
    assert decide(ADMISSIONS, "lan0/alpha", "192.0.2.2", b"CURVE", []).status == b"400"


def test_during_a_rotation_messages_macd_with_either_key_are_accepted() -> None:
    old = Codec("prod", OTHER, ["alpha", "beta"], "alpha")
    new = Codec("prod", KEY, ["alpha", "beta"], "alpha")
    switching = Codec("prod", KEY, ["alpha", "beta"], "beta", also_accept=[OTHER])
    sequencer = Sequencer("alpha", incarnation=1)

    def heartbeat() -> Message:
        return sequencer.stamp(Message(type="hb", sender="alpha", dest="*"))

    assert switching.decode(old.encode(heartbeat())).type == "hb"
    assert switching.decode(new.encode(heartbeat())).type == "hb"
    stranger = Codec("prod", b"s" * 32, ["alpha", "beta"], "alpha")
    with pytest.raises(Rejected, match="unauthenticated"):
        switching.decode(stranger.encode(heartbeat()))
