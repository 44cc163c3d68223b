"""Transports: the message codec and authentication, and the links that carry frame sets
between nodes (ZeroMQ PUB/SUB for real networks, an in-memory network for tests)."""

from __future__ import annotations

from vigil.transports.base import FrameHandler, Link, LinkError
from vigil.transports.codec import Codec, Rejected, ReplayGuard, Sequencer, topic_for
from vigil.transports.memory import MemoryLink, MemoryNetwork
from vigil.transports.zmq_link import ZmqLink

__all__ = [
    "Codec",
    "FrameHandler",
    "Link",
    "LinkError",
    "MemoryLink",
    "MemoryNetwork",
    "Rejected",
    "ReplayGuard",
    "Sequencer",
    "ZmqLink",
    "topic_for",
]
