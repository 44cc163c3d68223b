"""The application interface: status and control (:class:`Client`, whose ``status()`` is
the typed :class:`ClusterStatus`), and typed notifications of what the cluster does, in
process (:func:`register_notification_actor`) or from another process (:func:`subscribe`).

In process, a Pykka actor registered with :func:`register_notification_actor` receives the
:class:`Notification` objects themselves, in order, as messages (``on_receive``); ``kinds``
limits them to those kinds. ``runtime`` is the :class:`vigil.actors.node.NodeRuntime` to
listen to; it may be left out when exactly one runs in this process.

From another process, :func:`subscribe` reads the node's event socket (see
:mod:`vigil.api.events`). Both see the same notifications with the same ``seq``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from vigil.api.client import Client, Refused
from vigil.api.events import EventStream, NoDaemonError, subscribe
from vigil.local.protocol import MalformedAnswer
from vigil.notifications import (
    KINDS,
    Decision,
    FencingCompleted,
    FencingRequested,
    GroupMoved,
    GroupStateChanged,
    LinkDown,
    LinkUp,
    MirrorCaughtUp,
    MirrorDiverged,
    MirrorLagging,
    Missed,
    NicDown,
    NicUp,
    NodeJoined,
    NodeLost,
    Notification,
    QuorumGained,
    QuorumLost,
    ResourceStateChanged,
    TransitionCompleted,
    TransitionStarted,
    from_dict,
    to_dict,
)
from vigil.status import (
    ClusterStatus,
    GroupStatus,
    LinkStatus,
    NodeStatus,
    Operation,
    PeerLink,
    ResourceStatus,
    Transition,
)

if TYPE_CHECKING:
    from vigil.actors.node import NodeRuntime

__all__ = [
    "KINDS",
    "Client",
    "ClusterStatus",
    "Decision",
    "EventStream",
    "FencingCompleted",
    "FencingRequested",
    "GroupMoved",
    "GroupStateChanged",
    "GroupStatus",
    "LinkDown",
    "LinkStatus",
    "LinkUp",
    "MalformedAnswer",
    "MirrorCaughtUp",
    "MirrorDiverged",
    "MirrorLagging",
    "Missed",
    "NicDown",
    "NicUp",
    "NoDaemonError",
    "NodeJoined",
    "NodeLost",
    "NodeStatus",
    "Notification",
    "Operation",
    "PeerLink",
    "QuorumGained",
    "QuorumLost",
    "Refused",
    "ResourceStateChanged",
    "ResourceStatus",
    "Transition",
    "TransitionCompleted",
    "TransitionStarted",
    "from_dict",
    "register_notification_actor",
    "subscribe",
    "to_dict",
]


def register_notification_actor(ref: Any, *, runtime: NodeRuntime | None = None,
                                 kinds: Iterable[str] | None = None) -> None:
    """Have the Pykka actor ``ref`` receive this node's notifications (of ``kinds``, or all)
    from now on, in order. An actor that stops is dropped from the list by itself.

    Raises ValueError for an unknown kind, RuntimeError when ``runtime`` is left out and not
    exactly one node runtime is running in this process."""
    from vigil.actors.node import running_runtimes
    from vigil.api.events import _check_kinds

    wanted = _check_kinds(kinds)
    if runtime is None:
        running = [rt for rt in running_runtimes() if rt.ref is not None and rt.ref.is_alive()]
        if len(running) != 1:
            names = ", ".join(sorted(rt.node for rt in running)) or "none"
            raise RuntimeError(
                f"register_notification_actor: {len(running)} node runtimes run in this "
                f"process ({names}); pass runtime= to say which one")
        runtime = running[0]
    runtime.subscribe(ref, wanted)
