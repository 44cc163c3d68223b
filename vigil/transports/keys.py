"""The CurveZMQ key pairs of the nodes, derived from the cluster key (docs/security.md, "Keys and
rotation").

Every node's key pair is a function of the cluster key, the cluster's name and the node's name
(HKDF-SHA256), so the one secret file that `vigil keygen` writes is all an operator
distributes: each node computes its own pair and every peer's public key from it. Holding the
cluster key already lets a node forge any member's messages (the message MAC is keyed with it),
so separate key pairs per node would add files to copy without adding a guarantee.

A key file normally holds one key. During a rotation it holds two, one per line, each in the hex
form `vigil keygen` writes: the first is the key this node uses, the second is still accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import zmq
from zmq.utils import z85

#: Bytes of a Curve25519 key (public or secret).
CURVE_KEY_BYTES: Final = 32
#: The HKDF salt: names what the derived bytes are for, so they can never equal the message
#: MAC's key or any other use of the cluster key.
_SALT: Final = b"vigil curvezmq node key v1"
#: A line of a two-key file: at least 16 bytes of key as hex (`vigil keygen` writes 32).
_HEX_KEY_LINE: Final = re.compile(rb"[0-9a-fA-F]{32,}")


def hkdf_sha256(key: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256: ``length`` bytes derived from ``key`` for ``info``."""
    if not 1 <= length <= 255 * hashlib.sha256().digest_size:
        raise ValueError(f"HKDF-SHA256 gives 1..8160 bytes, not {length}")
    prk = hmac.new(salt, key, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


@dataclass(frozen=True)
class CurveKeyPair:
    """A CurveZMQ key pair, both halves Z85-encoded (40 characters), as libzmq takes them."""

    public: bytes
    secret: bytes = field(repr=False)


def derive_keypair(cluster_key: bytes, cluster: str, node: str) -> CurveKeyPair:
    """The key pair of ``node`` in ``cluster``, the same on every machine with this key."""
    if not cluster_key:
        raise ValueError("the cluster key is empty; every node needs the same secret key")
    info = cluster.encode() + b"\x00" + node.encode()
    secret = z85.encode(hkdf_sha256(cluster_key, _SALT, info, CURVE_KEY_BYTES))
    return CurveKeyPair(public=zmq.curve_public(secret), secret=secret)


def key_ring(raw: bytes) -> tuple[bytes, ...]:
    """The keys in a key file's content (without its final newline): one key, or, during a
    rotation, two lines of hex, the key in use first and the one still accepted second."""
    lines = raw.split(b"\n")
    if len(lines) == 2 and all(_HEX_KEY_LINE.fullmatch(line.rstrip(b"\r")) for line in lines):
        first, second = (line.rstrip(b"\r") for line in lines)
        return (first,) if first == second else (first, second)
    return (raw,)


@dataclass(frozen=True)
class LinkKeys:
    """What one node's links need: its own key pair, and each peer's public keys in the order
    to try them. Outside a rotation every peer has one; during one, two (from the key the node
    uses and from the other), because a peer may not have switched yet."""

    own: CurveKeyPair
    peers: Mapping[str, tuple[bytes, ...]]

    @classmethod
    def derive(
        cls, keys: Sequence[bytes], cluster: str, nodes: Collection[str], self_name: str
    ) -> LinkKeys:
        """The keys of ``self_name`` from the cluster's key ring (the key in use first)."""
        if not keys:
            raise ValueError("no cluster key; every node needs the same secret key")
        return cls(
            own=derive_keypair(keys[0], cluster, self_name),
            peers={
                node: tuple(derive_keypair(key, cluster, node).public for key in keys)
                for node in nodes
                if node != self_name
            },
        )

    def admitted(self, peers: Collection[str]) -> dict[bytes, str]:
        """Raw public key -> node, for the peers a listening socket admits."""
        return {
            z85.decode(public): node
            for node in peers
            for public in self.peers.get(node, ())
        }
