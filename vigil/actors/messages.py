"""Messages between the actors of one node: frozen, slotted data (Pykka does not copy
messages, so immutable ones are also thread-safe ones). Messages between *nodes* are the
seed's name/value :class:`vigil.messages.Message`; these stay inside one daemon. The core's
``StartGroup``, ``StopGroup`` and ``RestartResource`` actions (:mod:`vigil.cluster.events`)
go to the group actors as they are."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from vigil.config import ClusterConfig
from vigil.notifications import Notification
from vigil.resources.model import OpResult

ResourceOpName = Literal["start", "stop", "force_stop", "monitor", "mark_oos"]


@dataclass(frozen=True, slots=True)
class ResourceOp:
    op: ResourceOpName
    token: int
    reply_to: str  # directory name of the actor to tell the ResourceOpDone


@dataclass(frozen=True, slots=True)
class ResourceOpDone:
    resource: str
    op: ResourceOpName
    token: int
    result: OpResult


@dataclass(frozen=True, slots=True)
class ProbeGroup:
    pass


@dataclass(frozen=True, slots=True)
class ResourceState:
    """The result of one operation on a resource (for status and notifications)."""

    resource: str
    group: str
    state: str
    reason: str
    op: str = ""
    ok: bool = True
    at: float = 0.0  # wall-clock time.time()
    #: the reporter's count of the reports of this resource told (vigil/actors/book.py)
    number: int = 0


@dataclass(frozen=True, slots=True)
class FenceDeviceState:
    """The result of a fence device's periodic ``monitor`` (for status)."""

    device: str
    ok: bool
    reason: str
    at: float  # wall-clock time.time()


@dataclass(frozen=True, slots=True)
class SendFrames:
    frames: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class RunningGroups:
    """The coordinator tells diagnostics which groups are in service here."""

    groups: frozenset[str]


@dataclass(frozen=True, slots=True)
class ChildFailed:
    name: str
    error: str


@dataclass(frozen=True, slots=True)
class ChildRestarted:
    name: str


@dataclass(frozen=True, slots=True)
class GetStatus:
    pass


@dataclass(frozen=True, slots=True)
class Control:
    """A manual request from the control socket (CLI), /ha or the Python API."""

    command: str
    args: tuple[tuple[str, str], ...] = ()

    def arg(self, name: str) -> str:
        return dict(self.args).get(name, "")


@dataclass(frozen=True, slots=True)
class Diagnose:
    """`vigil resource diagnose NAME`: run its monitor now; answered with a future."""

    resource: str


@dataclass(frozen=True, slots=True)
class NicsDown:
    """The node's NIC monitors to every resource actor whose resource can follow NICs (has a
    ``nics_changed`` method, as the ip type): the node's NICs known to be down now, sent
    whenever that set changes."""

    down: frozenset[str]


@dataclass(frozen=True, slots=True)
class Subscribe:
    ref: Any  # pykka.ActorRef of an application notification actor
    kinds: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    ref: Any


@dataclass(frozen=True, slots=True)
class Reconfigure:
    """Ask the NodeActor to run ``config``: it replaces the children whose inputs changed
    (children of what was added, removed or changed) and leaves the others running;
    answered with :class:`Reconfigured`."""

    config: ClusterConfig


@dataclass(frozen=True, slots=True)
class Reconfigured:
    """What a :class:`Reconfigure` did, by child name (``resource:web-ip``...)."""

    started: tuple[str, ...]  # new children
    stopped: tuple[str, ...]  # children gone
    replaced: tuple[str, ...]  # stopped, then started again with their new inputs
    #: children that did not stop in time: left behind, out of the directory
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Heard:
    """Another node's significant notification (its ``node`` is the origin), heard by the
    coordinator, in wall-clock time: for this node's history file only (the notifier tells
    neither the log nor subscribers: it is not this node's news)."""

    note: Notification
