"""The wire format of Vigil messages and their authentication.

A message travels as three frames ``[topic, body, mac]``:

- ``topic`` is the destination and a NUL (``b"*\\x00"`` or ``b"alpha\\x00"``). PUB/SUB filters
  by prefix, and the terminator keeps ``alpha`` from matching ``alphabet``.
- ``body`` is canonical JSON (sorted keys, no spaces, ASCII only) of
  ``{"v": 1, "cluster", "type", "from", "to", "inc", "seq", "f": {name: value}}``.
- ``mac`` is HMAC-SHA256 with the cluster key over ``topic + body``, so the topic that
  routed the message is authenticated too.

:meth:`Codec.decode` checks cheap things first and trusts nothing it has not authenticated:
sizes, then the MAC (constant-time, before any JSON is parsed), then the schema, then who sent
it and to whom, and last the replay window. Every drop raises :class:`Rejected` with one reason
and is counted, so a node can show why it ignores a peer. A rejected message never changes any
state other than the counters (invariant 6: nothing from an unknown, unauthenticated or
replayed sender changes any state).

Incarnations are ``time.time_ns()`` at daemon start. If a node's clock steps back across a
restart, its peers drop its messages as replayed until they restart themselves or its clock
passes the old value; keep clocks synchronised (NTP), as any cluster must.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from vigil.messages import BROADCAST, NAME_RE, Message

VERSION: Final = 1
#: A message bigger than this is refused before its MAC is computed: a peer must not make us
#: hash (or parse) arbitrarily large input.
MAX_MESSAGE_BYTES: Final = 1 << 20
MAC_BYTES: Final = 32
#: How many sequence numbers below the highest one seen are still accepted (out of order).
DEFAULT_WINDOW: Final = 1024
#: ``inc`` and ``seq`` must fit a signed 64-bit integer, so other implementations can read them.
_MAX_COUNTER: Final = (1 << 63) - 1
_BODY_KEYS: Final = frozenset({"v", "cluster", "type", "from", "to", "inc", "seq", "f"})
_MAX_TOPIC_BYTES: Final = 64  # a 63-character name and the NUL

Reason = Literal[
    "malformed",
    "unauthenticated",
    "wrong-cluster",
    "unknown-sender",
    "not-for-us",
    "replayed",
    "duplicate",
    "own",
]
Verdict = Literal["accepted", "replayed", "duplicate"]


class Rejected(Exception):
    """A received frame set that is dropped. ``reason`` is one of :data:`Reason`; ``detail``
    says what exactly was wrong, for the log; ``sender`` is the configured node that sent it
    when the message was authenticated (a ``"replayed"`` or ``"duplicate"`` one), else "".
    """

    def __init__(self, reason: Reason, detail: str, sender: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail
        self.sender = sender


def topic_for(dest: str) -> bytes:
    """The topic frame for a destination, and the subscription prefix of a receiver."""
    return dest.encode("ascii") + b"\x00"


@dataclass(slots=True)
class _SenderWindow:
    incarnation: int
    highest: int
    #: Bit ``i`` set means ``highest - i`` was seen.
    seen: int


class ReplayGuard:
    """Remembers, per sender, its newest incarnation and which recent sequence numbers of it
    were seen.

    A newer incarnation (the sender restarted) resets the window. Within an incarnation a
    sequence number is accepted once, if it is no more than ``window - 1`` below the highest
    one seen, so reordering within the window is tolerated. A repeat within the window is a
    ``"duplicate"`` (typically the same message over a second link); anything older is
    ``"replayed"``. Memory is bounded by the number of senders, which the caller restricts to
    configured nodes.
    """

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"replay window must be at least 1, not {window}")
        self.window = window
        self._senders: dict[str, _SenderWindow] = {}
        self._lock = threading.Lock()

    def admit(self, sender: str, incarnation: int, seq: int) -> Verdict:
        with self._lock:
            state = self._senders.get(sender)
            if state is None or incarnation > state.incarnation:
                self._senders[sender] = _SenderWindow(incarnation, seq, 1)
                return "accepted"
            if incarnation < state.incarnation:
                return "replayed"
            if seq > state.highest:
                shift = seq - state.highest
                mask = (1 << self.window) - 1
                state.seen = ((state.seen << shift) | 1) & mask if shift < self.window else 1
                state.highest = seq
                return "accepted"
            offset = state.highest - seq
            if offset >= self.window:
                return "replayed"
            bit = 1 << offset
            if state.seen & bit:
                return "duplicate"
            state.seen |= bit
            return "accepted"

    def incarnation_of(self, sender: str) -> int | None:
        """The newest incarnation seen from ``sender``, or None."""
        with self._lock:
            state = self._senders.get(sender)
            return None if state is None else state.incarnation


class Sequencer:
    """Stamps a node's outgoing messages with its incarnation and the next sequence number.

    One per daemon run, shared by everything that sends (it is thread-safe). The incarnation
    is the wall clock at creation, so it grows across restarts without any stored state.
    """

    def __init__(self, sender: str, incarnation: int | None = None, *,
                 after: int = 0) -> None:
        """``after``: the first number stamped is ``after + 1`` (the guardian speaks for a
        dead daemon's incarnation with numbers that daemon never reached)."""
        if not NAME_RE.match(sender):
            raise ValueError(f"sender {sender!r} is not a valid node name")
        self.sender = sender
        self.incarnation = time.time_ns() if incarnation is None else incarnation
        if not 1 <= self.incarnation <= _MAX_COUNTER:
            raise ValueError(f"incarnation {self.incarnation} is outside 1..2**63-1")
        if not 0 <= after < _MAX_COUNTER:
            raise ValueError(f"sequence start {after} is outside 0..2**63-2")
        self._seq = after
        self._lock = threading.Lock()

    def stamp(self, msg: Message) -> Message:
        if msg.sender != self.sender:
            raise ValueError(
                f"sequencer of {self.sender!r} cannot stamp a message from {msg.sender!r}"
            )
        with self._lock:
            self._seq += 1
            seq = self._seq
        return msg.with_envelope(incarnation=self.incarnation, seq=seq)


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key in JSON object")
    return result


def _no_constants(name: str) -> object:
    raise ValueError(f"JSON constant {name} is not allowed")


def _counter(body: dict[str, Any], key: str) -> int:
    value = body[key]
    # bool is an int subclass; true must not pass for 1.
    if type(value) is not int or not 1 <= value <= _MAX_COUNTER:
        raise Rejected("malformed", f"{key!r} must be an integer in 1..2**63-1, not {value!r}")
    return value


class Codec:
    """Encodes and authenticates messages for one node of one cluster, and decodes and checks
    what it receives.

    Share one codec between all links of a node: then a message that arrives over two links
    is accepted once and the second copy is counted as a ``"duplicate"``. :meth:`decode` may be
    called from several reader threads at once; :attr:`counters` from any thread.
    """

    def __init__(
        self,
        cluster: str,
        key: bytes,
        nodes: Collection[str],
        self_name: str,
        *,
        window: int = DEFAULT_WINDOW,
        also_accept: Sequence[bytes] = (),
    ) -> None:
        if not key or not all(also_accept):
            raise ValueError("the cluster key is empty; every node needs the same secret key")
        if not cluster:
            raise ValueError("the cluster name is empty")
        self.cluster = cluster
        self.nodes = frozenset(nodes)
        self.self_name = self_name
        self._key = bytes(key)
        #: during a key rotation, the other key: messages MACed with it are accepted too
        self._other_keys = tuple(bytes(k) for k in also_accept if k != key)
        self._guard = ReplayGuard(window)
        self._counters: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def counters(self) -> Counter[str]:
        """A snapshot: reason (or ``"accepted"``) -> count."""
        with self._lock:
            return Counter(self._counters)

    @property
    def replay_guard(self) -> ReplayGuard:
        return self._guard

    def _mac(self, topic: bytes, body: bytes, key: bytes | None = None) -> bytes:
        # one call into OpenSSL (hmac.new, update, digest: three, and Python objects between)
        return hmac.digest(self._key if key is None else key, topic + body, "sha256")

    def encode(self, msg: Message) -> list[bytes]:
        """The three frames of ``msg``. It must be stamped (see :class:`Sequencer`): receivers
        drop a message without an incarnation and sequence number as malformed."""
        if not (1 <= msg.incarnation <= _MAX_COUNTER and 1 <= msg.seq <= _MAX_COUNTER):
            raise ValueError(
                f"message {msg.type!r} from {msg.sender!r} is not stamped "
                f"(incarnation={msg.incarnation}, seq={msg.seq}); stamp it with a Sequencer"
            )
        topic = topic_for(msg.dest)
        body = _canonical(
            {
                "v": VERSION,
                "cluster": self.cluster,
                "type": msg.type,
                "from": msg.sender,
                "to": msg.dest,
                "inc": msg.incarnation,
                "seq": msg.seq,
                "f": dict(msg.fields),
            }
        )
        if len(topic) + len(body) + MAC_BYTES > MAX_MESSAGE_BYTES:
            raise ValueError(
                f"message {msg.type!r} encodes to {len(body)} bytes, over the "
                f"{MAX_MESSAGE_BYTES}-byte limit; send less per message"
            )
        return [topic, body, self._mac(topic, body)]

    def decode(self, frames: Sequence[bytes]) -> Message:
        """The message in ``frames``, or :class:`Rejected` saying why it is dropped."""
        try:
            msg = self._check(frames)
        except Rejected as rejected:
            with self._lock:
                self._counters[rejected.reason] += 1
            raise
        with self._lock:
            self._counters["accepted"] += 1
        return msg

    def _check(self, frames: Sequence[bytes]) -> Message:
        if len(frames) != 3:
            raise Rejected("malformed", f"expected 3 frames, got {len(frames)}")
        if not all(isinstance(frame, bytes) for frame in frames):
            raise Rejected("malformed", "frames must be bytes")
        topic, body, mac = frames
        size = len(topic) + len(body) + len(mac)
        if size > MAX_MESSAGE_BYTES:
            raise Rejected("malformed", f"{size} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")
        if len(mac) != MAC_BYTES:
            raise Rejected("malformed", f"MAC frame has {len(mac)} bytes, not {MAC_BYTES}")
        if not topic.endswith(b"\x00") or len(topic) > _MAX_TOPIC_BYTES:
            raise Rejected("malformed", f"topic {topic[:_MAX_TOPIC_BYTES]!r} is not a destination")
        if not hmac.compare_digest(mac, self._mac(topic, body)) and not any(
            hmac.compare_digest(mac, self._mac(topic, body, key)) for key in self._other_keys
        ):
            raise Rejected("unauthenticated", "MAC does not match (wrong key or altered)")
        msg, cluster = self._parse(topic, body)
        if cluster != self.cluster:
            raise Rejected("wrong-cluster", f"from cluster {cluster!r}, we are {self.cluster!r}")
        if msg.sender not in self.nodes:
            raise Rejected("unknown-sender", f"{msg.sender!r} is not a configured node")
        if msg.sender == self.self_name:
            raise Rejected("own", f"our own {msg.type!r} (seq {msg.seq})")
        if msg.dest not in (BROADCAST, self.self_name):
            raise Rejected("not-for-us", f"addressed to {msg.dest!r}")
        verdict = self._guard.admit(msg.sender, msg.incarnation, msg.seq)
        if verdict != "accepted":
            raise Rejected(
                verdict, f"{msg.type!r} from {msg.sender!r} inc {msg.incarnation} seq {msg.seq}",
                msg.sender,
            )
        return msg

    def _parse(self, topic: bytes, raw: bytes) -> tuple[Message, str]:
        try:
            body = json.loads(
                raw.decode("ascii"),
                object_pairs_hook=_no_duplicate_keys,
                parse_constant=_no_constants,
            )
        except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
            raise Rejected("malformed", f"body is not canonical JSON: {err}") from None
        if not isinstance(body, dict):
            raise Rejected("malformed", f"body is a JSON {type(body).__name__}, not an object")
        # The version decides the schema, so it is checked before the keys.
        if body.get("v") != VERSION or type(body.get("v")) is not int:
            raise Rejected("malformed", f"protocol version {body.get('v')!r}, expected {VERSION}")
        if body.keys() != _BODY_KEYS:
            extra = sorted(body.keys() - _BODY_KEYS)
            missing = sorted(_BODY_KEYS - body.keys())
            raise Rejected("malformed", f"body keys: extra {extra}, missing {missing}")
        for key in ("cluster", "type", "from", "to"):
            if not isinstance(body[key], str):
                raise Rejected("malformed", f"{key!r} must be a string")
        if not isinstance(body["f"], dict):
            raise Rejected("malformed", "'f' must be an object of name/value strings")
        incarnation = _counter(body, "inc")
        seq = _counter(body, "seq")
        try:
            msg = Message(
                type=body["type"],
                sender=body["from"],
                dest=body["to"],
                fields=body["f"],
                incarnation=incarnation,
                seq=seq,
            )
        except ValueError as err:
            raise Rejected("malformed", str(err)) from None
        # Checked after Message validated "to", so it is known to be ASCII.
        if topic != topic_for(msg.dest):
            raise Rejected("malformed", f"topic {topic!r} does not match destination {msg.dest!r}")
        return msg, body["cluster"]
