"""Every protocol message between node cores, as a typed frozen dataclass.

The seed's messages are name/value pairs (:class:`vigil.messages.Message`, authenticated by
the codec); this module is the one place that knows which names a message of each type
carries and what their values mean. ``decode(msg)`` parses a received message once, here, and
a peer's malformed message raises :class:`RemoteProtocolError` (the peer's fault: the core
drops and counts it). Anything else raised while *handling* a well-formed message is our own
bug and is never counted as a bad message (h11's Local/RemoteProtocolError split).

The encoding is documented in docs/protocol.md ("Messages"); ``to_message()`` and
``from_message()`` of each type are exact inverses on every valid value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final, Protocol, Self

from vigil.cluster.mirrors import CopyFact
from vigil.messages import BROADCAST, NAME_RE, Message
from vigil.notifications import Notification, from_dict, to_dict

Epoch = tuple[int, str]
NO_EPOCH: Final[Epoch] = (0, "")
INFINITY: Final = math.inf


class RemoteProtocolError(ValueError):
    """A peer sent something that does not parse: it is dropped and counted."""


def fmt_epoch(epoch: Epoch) -> str:
    return f"{epoch[0]}.{epoch[1]}" if epoch != NO_EPOCH else "0"


def parse_epoch(text: str) -> Epoch:
    """Raises RemoteProtocolError (a ValueError) on anything but ``N.node`` or ``0``."""
    if text == "0":
        return NO_EPOCH
    number, sep, node = text.partition(".")
    if not sep or not NAME_RE.match(node) or not (number.isascii() and number.isdigit()):
        raise RemoteProtocolError(f"bad epoch {text[:40]!r}")
    return (int(number), node)


# ---- field codecs --------------------------------------------------------------------------


def _names(text: str) -> tuple[str, ...]:
    out = tuple(n for n in text.split(",") if n)
    for n in out:
        if not NAME_RE.match(n):
            raise RemoteProtocolError(f"bad name {n[:40]!r}")
    return out


def _digest(text: str) -> str:
    """A configuration digest (sha256, hex) or "" (none)."""
    if text and (len(text) != 64 or not all(c in "0123456789abcdef" for c in text)):
        raise RemoteProtocolError(f"bad configuration digest {text[:40]!r}")
    return text


def _int(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()):  # "²" is a digit to isdigit(), not to int()
        raise RemoteProtocolError(f"bad {what} {text[:40]!r}")
    return int(text)


_ECHO_ITEM: Final = r"[a-z][a-z0-9_-]{0,62}:[0-9]{1,19}:[0-9]{1,19}"
_ECHOES: Final = re.compile(rf"(?:{_ECHO_ITEM}(?:,{_ECHO_ITEM})*)?", re.ASCII)


class Echoes(Mapping[str, tuple[int, int]]):
    """The ``echo`` field of a received heartbeat: peer -> (number of its newest heartbeat
    the sender received, that peer's incarnation). Checked whole when parsed (one regular
    expression), but read only for the receiver's own entry, which is all a receiver uses:
    parsing every entry made a heartbeat cost O(nodes) on every node, O(n²) per interval in
    the cluster. The first entry of a name counts (a sender never repeats one)."""

    __slots__ = ("_all", "_raw")

    def __init__(self, raw: str) -> None:
        if _ECHOES.fullmatch(raw) is None:
            raise RemoteProtocolError(f"bad echo list {raw[:60]!r}")
        self._raw = raw
        self._all: dict[str, tuple[int, int]] | None = None

    def get(self, key: str, default: object = None) -> tuple[int, int] | None:  # type: ignore[override]
        raw, start = self._raw, 0
        wanted = key + ":"
        while (at := raw.find(wanted, start)) >= 0:
            if at == 0 or raw[at - 1] == ",":
                end = raw.find(",", at)
                n, _, inc = raw[at + len(wanted):None if end < 0 else end].partition(":")
                return int(n), int(inc)
            start = at + 1
        return default  # type: ignore[return-value]

    def _parsed(self) -> dict[str, tuple[int, int]]:
        if self._all is None:
            self._all = {}
            for item in self._raw.split(",") if self._raw else ():
                peer, n, inc = item.split(":")
                self._all.setdefault(peer, (int(n), int(inc)))
        return self._all

    def __getitem__(self, key: str) -> tuple[int, int]:
        return self._parsed()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())

    def __repr__(self) -> str:
        return f"Echoes({self._parsed()!r})"


def _pairs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not NAME_RE.match(key):
            raise RemoteProtocolError(f"bad pair {item[:40]!r}")
        out[key] = value
    return out


def _enc_pairs(pairs: Iterable[tuple[str, object]]) -> str:
    return ",".join(f"{k}={v}" for k, v in pairs)


def check_admin(tokens: Iterable[str]) -> frozenset[str]:
    """The administrative state tokens (:attr:`Accepted.admin`): node names in standby,
    ``off:R`` / ``kill:R`` for resources out of service by hand, ``maintenance``."""
    out = frozenset(t for t in tokens if t)
    for token in out:
        how, sep, name = token.partition(":")
        if not NAME_RE.match(name if sep else how) or (sep and how not in ("off", "kill")):
            raise RemoteProtocolError(f"bad administrative state {token[:40]!r}")
    return out


def _admin(text: str) -> frozenset[str]:
    return check_admin(text.split(","))


def _enc_admin(admin: Iterable[str]) -> str:
    return ",".join(sorted(admin))


def _enc_placement(placement: Mapping[str, str | None]) -> str:
    return _enc_pairs(sorted((g, n or "-") for g, n in placement.items()))


def _dec_placement(text: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for group, node in _pairs(text).items():
        if node != "-" and not NAME_RE.match(node):
            raise RemoteProtocolError(f"bad node {node[:40]!r} in placement")
        out[group] = None if node == "-" else node
    return out


def _enc_cost(cost: float) -> str:
    return "inf" if cost == INFINITY else repr(cost)


def _dec_costs(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for group, value in _pairs(text).items():
        try:
            cost = float(value)
        except ValueError:
            raise RemoteProtocolError(f"bad cost {value[:40]!r}") from None
        if math.isnan(cost):
            raise RemoteProtocolError("cost is NaN")
        out[group] = cost
    return out


def _enc_copies(copies: Mapping[str, CopyFact | None]) -> str:
    return _enc_pairs((r, "-" if c is None else
                       f"{c.seq}:{c.taken!r}:{c.source}:{1 if c.live else 0}:{c.behind!r}")
                      for r, c in sorted(copies.items()))


def _dec_copies(text: str) -> dict[str, CopyFact | None]:
    """``R=SEQ:TAKEN:SOURCE:LIVE`` for each mirror resource, ``R=-`` for no copy."""
    out: dict[str, CopyFact | None] = {}
    for resource, value in _pairs(text).items():
        if value == "-":
            out[resource] = None
            continue
        parts = value.split(":")
        if len(parts) not in (4, 5):
            raise RemoteProtocolError(f"bad copy of {resource}: {value[:40]!r} (expected "
                                      "SEQ:TAKEN:SOURCE:LIVE[:BEHIND] or -)")
        seq, taken_text, source, live = parts[:4]
        taken = _copy_seconds(taken_text, f"copy time of {resource}")
        behind = _copy_seconds(parts[4], f"copy lag of {resource}") if len(parts) == 5 else 0.0
        if not NAME_RE.match(source):
            raise RemoteProtocolError(f"bad copy source of {resource}: {source[:40]!r}")
        if live not in ("0", "1"):
            raise RemoteProtocolError(f"bad copy liveness of {resource}: {live[:40]!r}")
        out[resource] = CopyFact(_int(seq, f"copy number of {resource}"), taken, source,
                                 live == "1", behind)
    return out


def _copy_seconds(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RemoteProtocolError(f"bad {what}: {text[:40]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise RemoteProtocolError(f"bad {what}: {text[:40]!r}")
    return value


# ---- records carried inside messages ---------------------------------------------------------

MAINTENANCE: Final = "maintenance"


@dataclass(frozen=True, slots=True)
class Accepted:
    """A placement a member accepted, with the cluster's administrative state."""

    epoch: Epoch
    placement: Mapping[str, str | None]
    #: The cluster's administrative state, carried with every placement so that it survives
    #: failovers: node names in standby, ``off:R`` / ``kill:R`` for a resource taken out of
    #: service by hand (gracefully / at once), and ``maintenance``. The tokens cannot clash:
    #: names never contain ':'.
    admin: frozenset[str]
    applied: tuple[str, ...] = ()  # ids of the requests this placement applied

    @property
    def maintenance(self) -> bool:
        return MAINTENANCE in self.admin

    def standby(self, nodes: Iterable[str]) -> list[str]:
        """The nodes of ``nodes`` in standby."""
        return sorted(n for n in nodes if n in self.admin)

    def disabled(self) -> dict[str, bool]:
        """Resources taken out of service by hand -> whether at once (force_oos)."""
        out: dict[str, bool] = {}
        for token in self.admin:
            how, _, name = token.partition(":")
            if name and how in ("off", "kill"):
                out[name] = how == "kill" or out.get(name, False)
        return out

    def encode(self) -> str:
        return f"{fmt_epoch(self.epoch)}|{_enc_placement(self.placement)}|{_enc_admin(self.admin)}"

    @classmethod
    def decode(cls, entry: str) -> Accepted:
        parts = entry.split("|")
        if len(parts) != 3:
            raise RemoteProtocolError(f"bad history entry {entry[:40]!r}")
        return cls(parse_epoch(parts[0]), _dec_placement(parts[1]), _admin(parts[2]))


NO_ACCEPTED: Final = Accepted(NO_EPOCH, {}, frozenset())


@dataclass(frozen=True, slots=True)
class RequestRef:
    """A queued administrative request as it travels in heartbeats until a transition applies
    it: ``rid`` is unique cluster-wide (node, incarnation, counter)."""

    rid: str
    kind: str
    target: str = ""  # the group to move, the resource to enable/disable/kill
    node: str = ""  # a move's target node, the node of standby/online, "on"/"off"

    def encode(self) -> str:
        return f"{self.rid}:{self.kind}:{self.target}:{self.node}"

    @classmethod
    def decode(cls, text: str) -> RequestRef:
        rid, kind, target, node = [*text.split(":"), "", "", ""][:4]
        if not rid:
            raise RemoteProtocolError(f"bad request {text[:40]!r}")
        return cls(rid, kind, target, node)


# ---- the messages ---------------------------------------------------------------------------


class WireMessage(Protocol):
    TYPE: ClassVar[str]

    def fields(self) -> dict[str, str]: ...


def to_message(body: WireMessage, sender: str, dest: str = BROADCAST) -> Message:
    return Message(type=body.TYPE, sender=sender, dest=dest, fields=body.fields())


@dataclass(frozen=True, slots=True)
class _EpochOnly:
    """A message that carries nothing but its epoch (start, and most replies)."""

    TYPE: ClassVar[str] = ""
    epoch: Epoch

    def fields(self) -> dict[str, str]:
        return {"epoch": fmt_epoch(self.epoch)}

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> Self:
        return cls(parse_epoch(f["epoch"]))


@dataclass(frozen=True, slots=True)
class Heartbeat:
    TYPE: ClassVar[str] = "hb"
    n: int
    incarnation: int
    promised: Epoch
    accepted: Epoch  # carried for people reading the wire; checked, not used
    closed: bool
    #: peer -> (the number of its newest heartbeat we received, the peer's incarnation then):
    #: numbers start again at 1 in each life, so a number alone could name another life's
    echo: Mapping[str, tuple[int, int]]
    groups: Mapping[str, str]  # group active here -> its local state
    failures: int  # how many failures this node has reported (a master looks again)
    digest: str
    requests: tuple[RequestRef, ...] = ()
    #: The sender's lease rests on every live peer: each answers with an :class:`Echo` at once
    #: rather than in its next heartbeat (see ``Membership.lease_thin``).
    ask: bool = False
    #: the digest of the configuration this node staged to switch to ("" none:
    #: vigil.cluster.reconfig)
    next: str = ""

    def fields(self) -> dict[str, str]:
        out = {
            "n": str(self.n), "inc": str(self.incarnation), "epoch": fmt_epoch(self.promised),
            "acc": fmt_epoch(self.accepted), "closed": "1" if self.closed else "0",
            "echo": ",".join(f"{k}:{n}:{inc}" for k, (n, inc) in sorted(self.echo.items())),
            "groups": _enc_pairs(sorted(self.groups.items())), "want": str(self.failures),
            "digest": self.digest, "reqs": ";".join(r.encode() for r in self.requests),
        }
        if self.ask:
            out["ask"] = "1"
        if self.next:
            out["next"] = self.next
        return out

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> Heartbeat:
        echo = Echoes(f["echo"])
        return cls(
            n=_int(f["n"], "heartbeat number"), incarnation=_int(f["inc"], "incarnation"),
            promised=parse_epoch(f["epoch"]), accepted=parse_epoch(f["acc"]),
            closed=f.get("closed", "0") == "1", echo=echo, groups=_pairs(f["groups"]),
            failures=_int(f["want"], "failure count"), digest=f.get("digest", ""),
            requests=tuple(RequestRef.decode(r) for r in f["reqs"].split(";") if r),
            ask=f.get("ask", "0") == "1", next=_digest(f.get("next", "")))


@dataclass(frozen=True, slots=True)
class Echo:
    """The answer to a heartbeat that asked for one: its sender heard heartbeat ``n`` of the
    destination's life ``incarnation`` while it had promised ``promised``. It supports the
    destination's lease exactly as an echo inside a heartbeat does, only sooner."""

    TYPE: ClassVar[str] = "echo"
    n: int
    incarnation: int
    promised: Epoch

    def fields(self) -> dict[str, str]:
        return {"n": str(self.n), "inc": str(self.incarnation),
                "epoch": fmt_epoch(self.promised)}

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> Echo:
        return cls(_int(f["n"], "heartbeat number"), _int(f["inc"], "incarnation"),
                   parse_epoch(f["epoch"]))


@dataclass(frozen=True, slots=True)
class Bye:
    """A node stopped everything and leaves: nobody need fence it. ``fenced``: said by the
    node's guardian for its dead daemon, after killing everything the node ran."""

    TYPE: ClassVar[str] = "bye"
    incarnation: int
    fenced: bool = False

    def fields(self) -> dict[str, str]:
        out = {"inc": str(self.incarnation)}
        if self.fenced:
            out["by"] = "guardian"
        return out

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> Bye:
        by = f.get("by", "daemon")
        if by not in ("daemon", "guardian"):
            raise RemoteProtocolError(f"bad bye sender {by[:40]!r}")
        return cls(_int(f["inc"], "incarnation"), by == "guardian")


@dataclass(frozen=True, slots=True)
class Cleanup:
    """`vigil resource cleanup` on another node: forget the group's fail counts here too."""

    TYPE: ClassVar[str] = "cleanup"
    group: str

    def fields(self) -> dict[str, str]:
        return {"group": self.group}

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> Cleanup:
        return cls(f["group"])


@dataclass(frozen=True, slots=True)
class Reload:
    """`vigil config reload` on another node: read the configuration file again and stage it
    if it is the one with this digest (the file was changed on every node)."""

    TYPE: ClassVar[str] = "reload"
    digest: str

    def fields(self) -> dict[str, str]:
        return {"digest": self.digest}

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> Reload:
        return cls(_digest(f["digest"]))


@dataclass(frozen=True, slots=True)
class News:
    """A significant notification of the sender (a failure, a fencing, a transition it
    declared, an operator's request), for every node's history. ``n`` numbers the sender's
    news in its life ``incarnation`` (from 1): the pair names one, so a copy is kept once.
    ``age_ms``: how long before sending it happened (core clocks differ between nodes; a
    span does not). The notification travels as the JSON of
    :func:`~vigil.notifications.to_dict`, without its node, time and seq."""

    TYPE: ClassVar[str] = "news"
    n: int
    incarnation: int
    age_ms: int
    note: Notification

    def fields(self) -> dict[str, str]:
        data = to_dict(self.note)
        for key in ("node", "time", "seq"):
            data.pop(key, None)
        return {"n": str(self.n), "inc": str(self.incarnation), "age": str(self.age_ms),
                "note": json.dumps(data, sort_keys=True, separators=(",", ":"))}

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> News:
        try:
            data = json.loads(f["note"])
            if not isinstance(data, dict):
                raise ValueError("not an object")
            note = from_dict({**data, "node": "", "time": 0.0, "seq": 0})
        except (ValueError, TypeError, RecursionError) as exc:
            raise RemoteProtocolError(f"bad news: {str(exc)[:80]}") from None
        if not isinstance(note.text, str):
            raise RemoteProtocolError("bad news: its text is not a string")
        return cls(_int(f["n"], "news number"), _int(f["inc"], "incarnation"),
                   _int(f["age"], "news age"), note)


@dataclass(frozen=True, slots=True)
class Declare:
    TYPE: ClassVar[str] = "declare"
    epoch: Epoch
    view: tuple[str, ...]
    reason: str = ""

    def fields(self) -> dict[str, str]:
        return {"epoch": fmt_epoch(self.epoch), "view": ",".join(self.view),
                "reason": self.reason}

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> Declare:
        return cls(parse_epoch(f["epoch"]), _names(f["view"]), f.get("reason", ""))


@dataclass(frozen=True, slots=True)
class ReportRequest:
    TYPE: ClassVar[str] = "report_req"
    epoch: Epoch
    known: frozenset[str] = frozenset()  # epochs of accepted placements the master has

    def fields(self) -> dict[str, str]:
        return {"epoch": fmt_epoch(self.epoch), "known": ",".join(sorted(self.known))}

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> ReportRequest:
        return cls(parse_epoch(f["epoch"]),
                   frozenset(k for k in f.get("known", "").split(",") if k))


@dataclass(frozen=True, slots=True)
class CostRequest:
    TYPE: ClassVar[str] = "cost_req"
    epoch: Epoch
    admin: frozenset[str] = frozenset()  # the administrative state the costs assume
    #: the digest of the configuration the costs are for: a staged one in the transition that
    #: switches to it ("" the one running)
    config: str = ""

    def fields(self) -> dict[str, str]:
        out = {"epoch": fmt_epoch(self.epoch), "standby": _enc_admin(self.admin)}
        if self.config:
            out["config"] = self.config
        return out

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> CostRequest:
        return cls(parse_epoch(f["epoch"]), _admin(f.get("standby", "")),
                   _digest(f.get("config", "")))


@dataclass(frozen=True, slots=True)
class StopRequest:
    TYPE: ClassVar[str] = "stop"
    epoch: Epoch
    groups: tuple[str, ...]

    def fields(self) -> dict[str, str]:
        return {"epoch": fmt_epoch(self.epoch), "groups": ",".join(self.groups)}

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> StopRequest:
        return cls(parse_epoch(f["epoch"]), _names(f["groups"]))


@dataclass(frozen=True, slots=True)
class Accept:
    TYPE: ClassVar[str] = "accept"
    epoch: Epoch
    placement: Mapping[str, str | None]
    admin: frozenset[str] = frozenset()
    applied: tuple[str, ...] = ()
    #: the digest of the configuration every member switches to as it accepts ("" no change)
    config: str = ""

    def fields(self) -> dict[str, str]:
        out = {"epoch": fmt_epoch(self.epoch), "placement": _enc_placement(self.placement),
               "standby": _enc_admin(self.admin), "applied": ",".join(self.applied)}
        if self.config:
            out["config"] = self.config
        return out

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> Accept:
        return cls(parse_epoch(f["epoch"]), _dec_placement(f["placement"]),
                   _admin(f.get("standby", "")),
                   tuple(r for r in f.get("applied", "").split(",") if r),
                   _digest(f.get("config", "")))


@dataclass(frozen=True, slots=True)
class Start(_EpochOnly):
    TYPE: ClassVar[str] = "start"


# replies to the master


@dataclass(frozen=True, slots=True)
class Ack:
    """A member's promise, with how long ago it last heard each node outside the view (in
    milliseconds; its own uptime for a node it never heard in this life). The master bounds
    from these when a lost node's lease has surely run out: only a member of the view can
    have supported it, and only with an echo of a heartbeat it received."""

    TYPE: ClassVar[str] = "ack"
    epoch: Epoch
    silent_ms: Mapping[str, int] = field(default_factory=dict)

    def fields(self) -> dict[str, str]:
        return {"epoch": fmt_epoch(self.epoch),
                "silent": ",".join(f"{k}:{v}" for k, v in sorted(self.silent_ms.items()))}

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> Ack:
        silent: dict[str, int] = {}
        for item in f.get("silent", "").split(","):
            if item:
                node, _, ms = item.partition(":")
                if not NAME_RE.match(node):
                    raise RemoteProtocolError(f"bad node {node[:40]!r} in ack")
                silent[node] = _int(ms, "silence")
        return cls(parse_epoch(f["epoch"]), silent)


@dataclass(frozen=True, slots=True)
class Report:
    TYPE: ClassVar[str] = "report"
    epoch: Epoch
    active: Mapping[str, str]  # group active on the member -> its local state
    history: tuple[Accepted, ...] = ()  # accepted placements the master did not know
    #: requests still carried by live nodes that a placement accepted here already applied
    applied: tuple[str, ...] = ()

    def fields(self) -> dict[str, str]:
        return {"epoch": fmt_epoch(self.epoch), "active": _enc_pairs(sorted(self.active.items())),
                "hist": ";".join(a.encode() for a in self.history),
                "applied": ",".join(self.applied)}

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> Report:
        return cls(parse_epoch(f["epoch"]), _pairs(f["active"]),
                   tuple(Accepted.decode(e) for e in f.get("hist", "").split(";") if e),
                   tuple(a for a in f.get("applied", "").split(",") if a))


@dataclass(frozen=True, slots=True)
class CostReply:
    TYPE: ClassVar[str] = "cost"
    epoch: Epoch
    costs: Mapping[str, float]
    #: mirror resource -> the member's newest copy of its data (None: it has none); absent
    #: from the message when the cluster has no mirror resource (and from older members')
    copies: Mapping[str, CopyFact | None] = field(default_factory=dict)
    #: the member's failure count (Heartbeat.failures) when it computed these costs: the
    #: master has seen every failure and cleanup up to it (None: an older member's reply)
    failures: int | None = None

    def fields(self) -> dict[str, str]:
        out = {"epoch": fmt_epoch(self.epoch),
               "costs": _enc_pairs((g, _enc_cost(c)) for g, c in sorted(self.costs.items()))}
        if self.copies:
            out["copies"] = _enc_copies(self.copies)
        if self.failures is not None:
            out["want"] = str(self.failures)
        return out

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> CostReply:
        want = f.get("want")
        return cls(parse_epoch(f["epoch"]), _dec_costs(f["costs"]),
                   _dec_copies(f.get("copies", "")),
                   None if want is None else _int(want, "failure count"))


@dataclass(frozen=True, slots=True)
class Stopped:
    TYPE: ClassVar[str] = "stopped"
    epoch: Epoch
    groups: tuple[str, ...]
    unclean: tuple[str, ...] = ()  # groups whose stop failed: blocked until fenced

    def fields(self) -> dict[str, str]:
        return {"epoch": fmt_epoch(self.epoch), "groups": ",".join(self.groups),
                "unclean": ",".join(self.unclean)}

    @classmethod
    def parse(cls, f: Mapping[str, str]) -> Stopped:
        return cls(parse_epoch(f["epoch"]), _names(f["groups"]), _names(f.get("unclean", "")))


@dataclass(frozen=True, slots=True)
class AcceptedReply(_EpochOnly):
    TYPE: ClassVar[str] = "accepted"


@dataclass(frozen=True, slots=True)
class Started(_EpochOnly):
    TYPE: ClassVar[str] = "started"


Body = (Heartbeat | Echo | Bye | Cleanup | Reload | News | Declare | ReportRequest
        | CostRequest | StopRequest | Accept | Start | Ack | Report | CostReply | Stopped
        | AcceptedReply | Started)
#: Replies a master collects, by the phase they answer.
Reply = Ack | Report | CostReply | Stopped | AcceptedReply | Started

_PARSERS: Final = {cls.TYPE: cls.parse for cls in (
    Heartbeat, Echo, Bye, Cleanup, Reload, News, Declare, ReportRequest, CostRequest,
    StopRequest, Accept, Start, Ack, Report, CostReply, Stopped, AcceptedReply, Started)}


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded message: who sent it, to whom, and its typed body."""

    sender: str
    dest: str
    body: Body = field(compare=True)


def decode(msg: Message) -> Envelope:
    """The typed form of ``msg``; RemoteProtocolError for an unknown type, a missing field or
    a value that does not parse."""
    parse = _PARSERS.get(msg.type)
    if parse is None:
        raise RemoteProtocolError(f"unknown message type {msg.type!r}")
    try:
        body = parse(msg.fields)
    except KeyError as exc:
        raise RemoteProtocolError(f"{msg.type} without field {exc.args[0]!r}") from None
    return Envelope(msg.sender, msg.dest, body)
