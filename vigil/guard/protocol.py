"""The local channel between a node's daemon and its guardian.

A Unix stream socket, ``<runtime_dir>/guard.sock`` (mode 0600: root only, and the guardian
checks the peer's uid too), carrying newline-delimited JSON objects, one message per line,
each with the protocol version ``"v"`` and its ``"type"``:

daemon -> guardian
    ``{"v": 1, "type": "hello", "node": "alpha", "pid": 4242}``: first, once.
    ``{"v": 1, "type": "report", "lease_until": 1234.5, "holdings": [...], "inc": 17...}``:
    as often as the lease or the holdings change. ``lease_until`` is a ``time.monotonic()``
    value, ``"inf"`` (no lease needed: a one-node quorum) or ``null`` (no valid lease);
    ``holdings`` is :meth:`Holdings.to_json`; ``inc`` (optional) the daemon's incarnation in
    the cluster, in whose name the guardian tells the peers when the daemon died.
    ``{"v": 1, "type": "bye"}``: the daemon stopped everything and leaves.
guardian -> daemon
    ``{"v": 1, "type": "welcome", "node": ..., "pid": ..., "guard_time": 0.1,
    "self_fence": "kill", "cgroups": "..."}``: the answer to hello.
    ``{"v": 1, "type": "fenced", ...}``: the guardian fenced the node (:class:`FenceReport`):
    what it killed, removed and unmounted, and when.
    ``{"v": 1, "type": "error", "message": "..."}``: a message was refused (and dropped).

A malformed line is a :class:`ProtocolError` naming what is wrong; the reader drops it and
goes on. The codec is pure; the sockets are in :mod:`vigil.guard.client` and
:mod:`vigil.guard.process`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from vigil.guard.holdings import Address, Holdings, MountHolding

__all__ = [
    "MAX_LINE",
    "SOCKET_NAME",
    "VERSION",
    "Bye",
    "Error",
    "FenceReport",
    "Fenced",
    "Hello",
    "Killed",
    "LineReader",
    "Message",
    "ProtocolError",
    "Report",
    "Welcome",
    "decode",
    "encode",
]

VERSION: Final = 1
SOCKET_NAME: Final = "guard.sock"
#: The longest line either side reads; a report of a few thousand resources fits.
MAX_LINE: Final = 1024 * 1024


class ProtocolError(ValueError):
    """A line that is not a message of this protocol; the text says what is wrong."""


# ---- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    node: str
    pid: int


@dataclass(frozen=True, slots=True)
class Report:
    lease_until: float  # monotonic; inf: no lease needed; -inf: no valid lease
    holdings: Holdings
    #: the daemon's incarnation in the cluster (0: not told): the guardian of a daemon that
    #: died says so to the peers in that incarnation's name
    incarnation: int = 0


@dataclass(frozen=True, slots=True)
class Bye:
    pass


@dataclass(frozen=True, slots=True)
class Welcome:
    node: str
    pid: int
    guard_time: float
    self_fence: str
    cgroups: str  # where the node's cgroup is, or why there is none


@dataclass(frozen=True, slots=True)
class Killed:
    """Processes killed by one means: a cgroup, a process group, or holders of a mount."""

    kind: Literal["cgroup", "pgid", "holders"]
    target: str  # the cgroup path, the pgid, the mount point
    processes: int

    def __str__(self) -> str:
        what = {"cgroup": "cgroup", "pgid": "process group", "holders": "the holders of"}
        plural = "" if self.processes == 1 else "es"
        return f"{what[self.kind]} {self.target} ({self.processes} process{plural})"


@dataclass(frozen=True, slots=True, kw_only=True)
class FenceReport:
    """What a fence did."""

    at: float  # monotonic time it began
    took: float  # seconds
    reason: str
    resources: tuple[str, ...]
    killed: tuple[Killed, ...] = ()
    removed: tuple[Address, ...] = ()
    unmounted: tuple[MountHolding, ...] = ()
    problems: tuple[str, ...] = ()
    remaining: Holdings = field(default_factory=Holdings)  # what it could not remove
    reboot: bool = False

    def summary(self) -> str:
        """One sentence: "killed cgroup ... (3 processes), removed ... in 12 ms"."""
        parts = [f"killed {k}" for k in self.killed if k.processes]
        parts += [f"removed {a.address} from {a.ifname}" for a in self.removed]
        parts += [f"unmounted {m.mountpoint}" for m in self.unmounted]
        done = ", ".join(parts) or "found nothing left to kill, remove or unmount"
        text = f"{done} in {self.took * 1000:.0f} ms"
        if self.problems:
            text += "; PROBLEMS: " + "; ".join(self.problems)
        if self.reboot:
            text += "; rebooting"
        return text


@dataclass(frozen=True, slots=True)
class Fenced:
    report: FenceReport


@dataclass(frozen=True, slots=True)
class Error:
    message: str


Message = Hello | Report | Bye | Welcome | Fenced | Error


# ---- encoding -------------------------------------------------------------------------------


def _lease_json(lease_until: float) -> float | str | None:
    if lease_until == math.inf:
        return "inf"
    if lease_until == -math.inf or math.isnan(lease_until):
        return None
    return lease_until


def _report_json(r: FenceReport) -> dict[str, Any]:
    return {
        "at": r.at, "took": r.took, "reason": r.reason, "resources": list(r.resources),
        "killed": [{"kind": k.kind, "target": k.target, "processes": k.processes}
                   for k in r.killed],
        "removed": [a.to_json() for a in r.removed],
        "unmounted": [m.to_json() for m in r.unmounted],
        "problems": list(r.problems), "remaining": r.remaining.to_json(), "reboot": r.reboot,
    }


@functools.lru_cache(maxsize=8)
def _holdings_json(holdings: Holdings) -> str:
    return json.dumps(holdings.to_json(), allow_nan=False, separators=(",", ":"))


def encode(message: Message) -> bytes:
    """One line (ending in a newline) of JSON for ``message``."""
    body: dict[str, Any]
    match message:
        case Hello(node, pid):
            body = {"type": "hello", "node": node, "pid": pid}
        case Report(lease_until, holdings, incarnation):
            # one at every lease renewal, and what the node holds rarely changes: its JSON
            # is made once (it was most of the cost of a report)
            inc = f',"inc":{int(incarnation)}' if incarnation else ""
            lease = json.dumps(_lease_json(lease_until), allow_nan=False)
            return (f'{{"v":{VERSION},"type":"report","lease_until":{lease},'
                    f'"holdings":{_holdings_json(holdings)}{inc}}}\n').encode()
        case Bye():
            body = {"type": "bye"}
        case Welcome(node, pid, guard_time, self_fence, cgroups):
            body = {"type": "welcome", "node": node, "pid": pid, "guard_time": guard_time,
                    "self_fence": self_fence, "cgroups": cgroups}
        case Fenced(report):
            body = {"type": "fenced", **_report_json(report)}
        case Error(text):
            body = {"type": "error", "message": text}
    return json.dumps({"v": VERSION, **body}, allow_nan=False,
                      separators=(",", ":")).encode() + b"\n"


# ---- decoding -------------------------------------------------------------------------------


class _Fields:
    """Typed access to one message's fields; every problem names the message and field."""

    def __init__(self, body: Mapping[str, Any], kind: str) -> None:
        self.body, self.kind = body, kind

    def _missing(self, key: str) -> ProtocolError:
        return ProtocolError(f"{self.kind}: missing field '{key}'")

    def text(self, key: str) -> str:
        value = self.body.get(key)
        if not isinstance(value, str):
            if key not in self.body:
                raise self._missing(key)
            raise ProtocolError(f"{self.kind}: '{key}' must be a string, got {value!r}")
        return value

    def integer(self, key: str) -> int:
        value = self.body.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            if key not in self.body:
                raise self._missing(key)
            raise ProtocolError(f"{self.kind}: '{key}' must be an integer, got {value!r}")
        return value

    def number(self, key: str) -> float:
        value = self.body.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            if key not in self.body:
                raise self._missing(key)
            raise ProtocolError(f"{self.kind}: '{key}' must be a finite number, got {value!r}")
        return float(value)

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.body.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProtocolError(f"{self.kind}: '{key}' must be an array of strings")
        return tuple(value)

    def objects(self, key: str) -> list[Any]:
        value = self.body.get(key, [])
        if not isinstance(value, list):
            raise ProtocolError(f"{self.kind}: '{key}' must be an array")
        return value


def _lease(value: object) -> float:
    if value is None:
        return -math.inf
    if value == "inf":
        return math.inf
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f"report: 'lease_until' must be a monotonic time (a number), "
                            f"\"inf\" or null, got {value!r}")
    return float(value)


_KILL_KINDS: Final[dict[str, Literal["cgroup", "pgid", "holders"]]] = {
    "cgroup": "cgroup", "pgid": "pgid", "holders": "holders"}


def _killed(value: object) -> Killed:
    if not isinstance(value, Mapping):
        raise ProtocolError(f"fenced: a 'killed' entry must be an object, got {value!r}")
    f = _Fields(value, "fenced.killed")
    kind = _KILL_KINDS.get(f.text("kind"))
    if kind is None:
        raise ProtocolError(f"fenced.killed: unknown kind {value.get('kind')!r} (known: "
                            f"{', '.join(_KILL_KINDS)})")
    return Killed(kind, f.text("target"), f.integer("processes"))


def _fenced(f: _Fields) -> FenceReport:
    reboot = f.body.get("reboot", False)
    if not isinstance(reboot, bool):
        raise ProtocolError(f"fenced: 'reboot' must be true or false, got {reboot!r}")
    return FenceReport(
        at=f.number("at"), took=f.number("took"), reason=f.text("reason"),
        resources=f.texts("resources"),
        killed=tuple(_killed(k) for k in f.objects("killed")),
        removed=tuple(Address.from_json(a, "fenced.removed") for a in f.objects("removed")),
        unmounted=tuple(MountHolding.from_json(m, "fenced.unmounted")
                        for m in f.objects("unmounted")),
        problems=f.texts("problems"),
        remaining=Holdings.from_json(f.body.get("remaining", []), "fenced.remaining"),
        reboot=reboot)


def decode(line: bytes) -> Message:
    """The message on ``line`` (without or with its newline). Raises :class:`ProtocolError`."""
    try:
        body = json.loads(line)
    except (UnicodeDecodeError, ValueError) as exc:
        shown = line[:80].decode(errors="replace")
        raise ProtocolError(f"not JSON ({exc}): {shown!r}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"a message is a JSON object, got {type(body).__name__}")
    version = body.get("v")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version!r} is not spoken here (this side "
                            f"speaks version {VERSION}); run the same Vigil on both sides")
    kind = body.get("type")
    f = _Fields(body, str(kind))
    try:
        match kind:
            case "hello":
                pid = f.integer("pid")
                if pid <= 0:
                    raise ProtocolError(f"hello: 'pid' must be > 0, got {pid}")
                return Hello(f.text("node"), pid)
            case "report":
                if "holdings" not in body:
                    raise f._missing("holdings")
                if "lease_until" not in body:
                    raise f._missing("lease_until")
                incarnation = f.integer("inc") if "inc" in body else 0
                if incarnation < 0:
                    raise ProtocolError(f"report: 'inc' must be >= 0, got {incarnation}")
                return Report(_lease(body["lease_until"]), Holdings.from_json(body["holdings"]),
                              incarnation)
            case "bye":
                return Bye()
            case "welcome":
                return Welcome(f.text("node"), f.integer("pid"), f.number("guard_time"),
                               f.text("self_fence"), f.text("cgroups"))
            case "fenced":
                return Fenced(_fenced(f))
            case "error":
                return Error(f.text("message"))
    except ProtocolError:
        raise
    except ValueError as exc:  # a holdings field (vigil.guard.holdings names it)
        raise ProtocolError(f"{kind}: {exc}") from None
    raise ProtocolError(f"unknown message type {kind!r} (known: hello, report, bye, welcome, "
                        "fenced, error)")


class LineReader:
    """Splits a byte stream into lines of at most :data:`MAX_LINE` bytes; a longer line is
    dropped whole (up to its newline) and reported once as a :class:`ProtocolError`."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._skipping = False  # inside a line that was too long

    def feed(self, data: bytes) -> list[bytes | ProtocolError]:
        out: list[bytes | ProtocolError] = []
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if not self._skipping and len(self._buffer) > self.limit:
                    out.append(ProtocolError(f"a line longer than {self.limit} bytes: "
                                             "dropped up to its end"))
                    self._skipping = True
                if self._skipping:
                    self._buffer.clear()
                return out
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._skipping:
                self._skipping = False
            elif len(line) > self.limit:
                out.append(ProtocolError(f"a line longer than {self.limit} bytes: dropped"))
            elif line.strip():
                out.append(line)

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line (an EOF here means the line was cut off)."""
        return len(self._buffer)
