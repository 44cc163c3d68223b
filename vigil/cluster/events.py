"""Events into the pure cluster core and actions out of it (h11-style: frozen, slotted data).

Inputs carry no time: the time comes with every call to ``NodeCore.handle(event, now)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from vigil.cluster.mirrors import MirrorLag, MirrorState
from vigil.cluster.wire import Epoch
from vigil.config import ClusterConfig
from vigil.messages import Message
from vigil.notifications import Notification

# ---- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """An authenticated message from another node (or from ourselves, loopback)."""

    msg: Message
    link: str = ""


@dataclass(frozen=True, slots=True)
class CopyReceived:
    """An authenticated copy, over ``link``, of a message from ``sender`` that arrived first
    over another link (the codec drops the copy as a duplicate). It changes nothing but what
    the core knows of ``link``: the link carries the sender's messages, even when it always
    loses the race to the other one."""

    sender: str
    link: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time has passed (a deadline the core asked for was reached)."""


@dataclass(frozen=True, slots=True)
class GroupDone:
    """A start or stop of a whole group that the core asked for has finished."""

    group: str
    op: Literal["start", "stop"]
    ok: bool
    reason: str = ""
    #: After a failed stop: the members that may still be in service (None: all of them).
    remaining: frozenset[str] | None = None
    #: the ``order`` of the command this answers (0: none given; counted as the newest)
    order: int = 0


@dataclass(frozen=True, slots=True)
class GroupFailed:
    """A monitor found a group that is in service here broken (or an operation timed out).

    ``resource`` is the member that failed and ``policy`` its ``on_fail`` setting; the core
    decides what follows (docs/resources.md, "Recovery")."""

    group: str
    reason: str
    resource: str = ""
    policy: str = "restart"


@dataclass(frozen=True, slots=True)
class AdminRequest:
    """A manual request (CLI, /ha, API): it goes through the protocol like everything else."""

    kind: Literal["move", "standby", "online", "enable", "disable", "kill", "maintenance",
                  "fence", "confirm_off"]
    group: str = ""  # the group to move
    resource: str = ""  # the resource to enable (in service), disable (out) or kill (at once)
    node: str = ""  # the target of a move; the node of standby, online, fence or confirm_off
    on: bool = False  # maintenance on (True) or off
    #: a move that may go to a node whose copy of the group's mirrored data is beyond
    #: max_lag (the wire's request kind ``force_move``)
    force: bool = False

    @property
    def target(self) -> str:
        """What the request acts on, as the wire carries it (docs/protocol.md)."""
        if self.kind == "maintenance":
            return ""
        return self.resource if self.kind in ("enable", "disable", "kill") else self.group


@dataclass(frozen=True, slots=True)
class ClearFailures:
    """`vigil resource cleanup`: forget the fail counts of a group, here and (``everywhere``)
    on every node, by a ``cleanup`` message to all."""

    group: str
    everywhere: bool = True


@dataclass(frozen=True, slots=True)
class MarkedOutOfService:
    """An operator marked ``resource`` out of service by hand (`vigil resource mark-oos`):
    it is known to be stopped, whatever its last operation said."""

    resource: str


@dataclass(frozen=True, slots=True)
class FenceDone:
    """The shell ran a :class:`FenceNode`: ``ok`` when every device of the level did it
    (the node is off), else failed; ``detail`` is the level's result in words (each device,
    its agent, exit code and reason). ``attempt`` is the FenceNode's."""

    node: str
    ok: bool
    level: int = 0
    detail: str = ""
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class GroupProbed:
    """At daemon start: a group's resources were found in service (left from a previous run)."""

    group: str
    active: bool


@dataclass(frozen=True, slots=True)
class GuardFenced:
    """This node's guardian killed everything that ran here (the lease it was told ran out,
    or the daemon stopped talking to it): every group is out of service."""

    reason: str
    #: when the kill began (time.monotonic(), the core's clock; inf: not said). The core
    #: counts a lapsed lease's kill itself, at once: a report of a kill from before that is
    #: old news, and must not stop what was started since.
    at: float = math.inf


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Leave the cluster cleanly: stop every group here (reverse dependency order), then say
    goodbye so the others need not wait for ``dead_time`` nor fence us."""


@dataclass(frozen=True, slots=True)
class NicChanged:
    """A NIC monitor believes one of this node's NICs became usable (``up``) or not
    (:mod:`vigil.cluster.nics`): the node's costs depend on it."""

    nic: str
    up: bool
    reason: str


@dataclass(frozen=True, slots=True)
class StageConfig:
    """The shell read the configuration file again and checked it: switch to ``config``
    when the cluster does (vigil.cluster.reconfig). ``missing_types``: the resource types of
    ``config`` this node cannot run. ``problem``: why the file cannot be staged (it did not
    load, or differs from what was asked): the core says so and keeps what it had staged.
    ``wanted``: the digest a reload asked for ("" this node's own request)."""

    config: ClusterConfig | None
    missing_types: frozenset[str] = frozenset()
    problem: str = ""
    wanted: str = ""
    #: read because a peer runs ``wanted`` (not a reload): a file that is still the running
    #: one is no news (the peer is the odd one, and was named already)
    quiet: bool = False
    also: str = ""  # with quiet: the digest the peer staged, which will do too


Event = (Received | CopyReceived | Tick | GroupDone | GroupFailed | AdminRequest
         | ClearFailures | MarkedOutOfService | FenceDone | GroupProbed | GuardFenced
         | Shutdown | NicChanged | MirrorState | MirrorLag | StageConfig)


# ---- outputs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartGroup:
    """Bring the group into service here, leaving out ``skip`` (members taken out of service
    by hand, and their dependents). With ``converge`` the group already runs without
    ``skipped``: stop the members newly in ``skip`` (``kill``: at once) and start those of
    ``skipped`` that are no longer in it; the members that run and stay are not touched."""

    group: str
    epoch: Epoch
    skip: frozenset[str] = frozenset()
    kill: frozenset[str] = frozenset()
    converge: bool = False
    skipped: frozenset[str] = frozenset()  # with converge: what was left out until now
    #: numbers the core's commands to a group; its GroupDone says which it answers
    order: int = 0


@dataclass(frozen=True, slots=True)
class StopGroup:
    group: str
    epoch: Epoch
    reason: str
    force: bool = False  # interrupt a start that is still running
    order: int = 0  # see StartGroup


@dataclass(frozen=True, slots=True)
class RestartResource:
    """Recover in place: stop ``resource`` and the members of its group that depend on it,
    then start them again; the group stays placed here. The shell answers with a
    :class:`GroupDone` for ``start`` (or for ``stop`` when the stop part failed)."""

    group: str
    resource: str
    epoch: Epoch
    skip: frozenset[str] = frozenset()  # members out of service by hand: they stay out
    order: int = 0  # see StartGroup


@dataclass(frozen=True, slots=True)
class FenceNode:
    """Run fencing level ``level`` (1 for the first of the node's ``[fencing] levels``) on
    ``node``: ``action`` with every device of ``devices``, in order (``run_level``); answer
    with a :class:`FenceDone` carrying the same ``attempt``. The core decides levels, delays
    and retries; the shell only runs the agents."""

    node: str
    level: int
    devices: tuple[str, ...]
    action: Literal["off", "on", "reboot"] = "off"
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """Read the configuration file again, check it and answer with a :class:`StageConfig`
    (another node asked the cluster to reload: ``wanted`` is the digest of its file; or,
    ``quiet``, a peer runs ``wanted``: this node may have missed the reload)."""

    wanted: str
    quiet: bool = False
    also: str = ""  # with quiet: the digest the peer staged, which will do too


@dataclass(frozen=True, slots=True)
class SwitchConfig:
    """The core switched to ``config`` (every member does in the same epoch): rebuild what
    was built from the old one (the actors of the resources and groups that changed) before
    anything else of this output is carried out."""

    config: ClusterConfig
    #: groups whose actors are replaced or new (the others keep theirs, and their commands
    #: need not wait for the rebuild)
    rebuilt: frozenset[str] = frozenset()


Action = StartGroup | StopGroup | RestartResource | FenceNode | LoadConfig | SwitchConfig


@dataclass(slots=True)
class Output:
    messages: list[Message] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    #: what the core decided and saw, for the log, `vigil status` and applications (times
    #: are the core's clock: the shell makes them wall clock time)
    notifications: list[Notification] = field(default_factory=list)
    #: other nodes' significant notifications heard now (their ``node`` is the origin), for
    #: this node's history only: not this node's own news (no log line, alert or event)
    heard: list[Notification] = field(default_factory=list)
    deadline: float | None = None
    #: a routine heartbeat or echo received, or a heartbeat sent, and nothing else
    #: (NodeCore._routine, _heartbeat_only): nothing changed but times, so the shell has
    #: nothing to persist, tell or look at again but the messages, lease and deadline
    routine: bool = False
    #: until when this node may hold anything (its quorum lease; infinite when it needs
    #: none): the shell tells the node's guardian, which kills what still runs after it
    lease_until: float = -math.inf
