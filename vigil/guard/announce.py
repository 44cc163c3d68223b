"""The guardian's word to the peers: "this node's daemon is dead, and the node holds nothing".

A daemon that dies (SIGKILL, a crash, the OOM killer) leaves its peers waiting: they must
first count it dead (``dead_time`` of silence), then wait out its lease and the guardian's
bound before they may start what it ran. Yet its guardian knows at once (the daemon's channel
closes), kills everything the node ran within ``guard_time``, and then knows what no peer can:
nothing runs here any more. So it tells them, as the daemon's own clean leave would have: a
``bye`` of the dead daemon's incarnation, over the node's own links, with the node's key.
The peers count the node out at once and start its groups without fencing it; a crash costs
what a clean stop costs.

What the guardian must be sure of first (:class:`vigil.guard.core.GuardCore`, rule 11, and
:meth:`vigil.guard.process.Guardian`): the fence removed everything (nothing left to retry),
and the daemon's *process* is dead, not merely its connection closed (a daemon alive but
disconnected could still start something). A goodbye of an incarnation can only ever end it:
a daemon that runs again is a new incarnation and joins like any restarted node.

How it is sent: the daemon's port is free once its process is dead, so the guardian binds the
node's PUB sockets itself (the very code of the daemon's links, :mod:`vigil.transports`, with
the keys derived from the cluster key). The peers' SUB sockets, whose connection just broke,
reconnect within ``RECONNECT_IVL_MS`` (100 ms) and finish the CurveZMQ handshake; PUB/SUB
drops what is published before a subscriber is there, so the goodbye is published again every
:data:`REPEAT` until ``dead_time`` has passed (by then every peer has counted the node out
anyway), and each copy has a sequence number of its own (the replay window drops repeats).
Numbers start past :data:`FIRST_SEQ`, far above any the daemon can have used. The sockets are
closed at once when a daemon connects to the guardian again: it needs its port.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Final

import zmq

from vigil.cluster.wire import Bye, to_message
from vigil.config import ClusterConfig
from vigil.transports.base import LinkError
from vigil.transports.codec import Codec, Sequencer
from vigil.transports.keys import key_ring
from vigil.transports.zmq_link import ZmqLink, zmq_links

__all__ = ["FIRST_SEQ", "REPEAT", "Announcer"]

log = logging.getLogger("vigil.guard")

#: How often the goodbye is published while the peers reconnect.
REPEAT: Final = 0.02
#: The guardian's sequence numbers start above this: a daemon sending a thousand messages a
#: second would need thirty million years to get there.
FIRST_SEQ: Final = 1 << 60


class Announcer:
    """Publishes a dead daemon's goodbye on the node's links, in a thread of its own."""

    def __init__(self, config: ClusterConfig, node: str, key: bytes) -> None:
        self.config = config
        self.node = node
        ring = key_ring(key)
        self._codec = Codec(config.name, ring[0], config.node_names, node,
                            also_accept=ring[1:])
        self._key = key
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: how long the goodbye is repeated
        self.duration = config.timing.dead_time

    def announce(self, incarnation: int) -> None:
        """Start publishing the goodbye of ``incarnation`` (a previous one is stopped)."""
        self.cancel()
        self._stop = threading.Event()
        thread = threading.Thread(target=self._run, args=(incarnation, self._stop),
                                  name="vigil-guard-announce", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had: the peers wait out the lease
            log.error("cannot tell the peers that the daemon died: %s", exc)
            return
        self._thread = thread

    def cancel(self) -> None:
        """Stop publishing and release the ports (a daemon is back and needs them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    close = cancel

    # -- the thread ---------------------------------------------------------------------------

    def _links(self, context: zmq.Context[zmq.Socket[bytes]]) -> list[ZmqLink]:
        links = []
        make = zmq_links(self.config, context, self._key)
        for me in self.config.nodes[self.node].links:
            try:
                links.append(make(self.node, me.name)(me.name, lambda _link, _frames: None))
            except (LinkError, ValueError, zmq.ZMQError) as exc:
                log.warning("cannot tell the peers on link %s that the daemon died: %s",
                            me.name, exc)
        return links

    def _run(self, incarnation: int, stop: threading.Event) -> None:
        started = time.monotonic()
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        links: list[ZmqLink] = []
        sent = 0
        try:
            links = self._links(context)
            if not links:
                return
            sequencer = Sequencer(self.node, incarnation, after=FIRST_SEQ)
            bye = to_message(Bye(incarnation, fenced=True), self.node)
            log.info("telling the peers on %s that the daemon (incarnation %d) is dead and "
                     "this node holds nothing", ", ".join(link.name for link in links),
                     incarnation)
            while not stop.is_set() and time.monotonic() - started < self.duration:
                frames = self._codec.encode(sequencer.stamp(bye))
                for link in links:
                    link.send(frames)
                sent += 1
                stop.wait(REPEAT)
        except Exception:  # the word is a help, never a need: the peers wait as before
            log.exception("telling the peers that the daemon died failed")
        finally:
            for link in links:
                with contextlib.suppress(Exception):
                    link.close()
            context.term()
            if sent:
                log.info("stopped telling the peers after %d copies in %.0f ms%s", sent,
                         1000 * (time.monotonic() - started),
                         " (a daemon connected)" if stop.is_set() else "")
