"""What every transport link offers: the surface the link and coordinator actors code against.

A link is one network (one NIC) of one node. It moves opaque frame sets; the
:mod:`~vigil.transports.codec` turns them into authenticated messages. Links never retry:
delivery is best effort, and the protocol above survives loss by retransmission and timeouts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

#: Called on a link's reader thread with ``(link_name, frames)`` for every frame set received.
FrameHandler = Callable[[str, list[bytes]], None]


class LinkError(Exception):
    """A link cannot be set up (for example its port is taken). The message names the link,
    the address and port, and what to do."""


@runtime_checkable
class Link(Protocol):
    """One link of one node, as :class:`~vigil.transports.zmq_link.ZmqLink` and
    :class:`~vigil.transports.memory.MemoryLink` implement it.

    Lifecycle: built (sockets bound, nothing read yet), :meth:`start` (frames received from
    now on go to the handler, on a thread that is never the sender's), :meth:`close`
    (idempotent, returns in bounded time; a frame set sent afterwards is dropped).
    """

    @property
    def name(self) -> str:
        """The link's name, the same on every node of that network."""
        ...

    def start(self) -> None: ...

    def send(self, frames: Sequence[bytes]) -> None:
        """Send one frame set; the first frame is the topic (``dest`` + ``b"\\x00"``).
        Best effort: may be dropped without notice, never blocks for long."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ObservedLink(Protocol):
    """A link that can say how its connections are (`vigil status`); a :class:`Link` may
    offer it (:class:`~vigil.transports.zmq_link.ZmqLink` does)."""

    def peer_states(self) -> Mapping[str, str]:
        """Each peer's connection: ``connected``, ``connecting`` or ``waiting`` (to retry)."""
        ...

    def cut(self) -> int:
        """Connections to the link's listening socket cut so far."""
        ...
