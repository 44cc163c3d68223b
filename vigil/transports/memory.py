"""An in-memory network for integration tests: the real actors of several nodes in one process,
in real time, over a network the test controls (partitions, one-way blocks, NIC failures,
loss, delay).

Delivery follows PUB/SUB exactly: a frame set goes to every other node on the same link whose
subscription (``b"*\\x00"`` or its own ``b"name\\x00"``) is a prefix of the topic frame; a node
never receives its own frame sets. Frame sets are delivered by one thread per network, never
on the sender's thread, in order of due time (send time plus the drawn delay), ties in send
order. So with no delay or a fixed one, each receiver sees each sender's frame sets in order;
with a delay range they may be reordered, as on a real network.

Faults are decided when a frame set is sent (it is then "on the wire"); a receiver that has
been closed or whose link was cut by the time of delivery does not get it either. Frame sets
sent to a link that is not started yet are dropped, like those a slow-joining subscriber misses.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from vigil.messages import BROADCAST
from vigil.transports.base import FrameHandler
from vigil.transports.codec import topic_for

log = logging.getLogger(__name__)

#: Longest single wait of the delivery thread: bounds how long close() can take.
_MAX_WAIT_S: Final = 0.1
_CLOSE_TIMEOUT_S: Final = 2.0


class MemoryLink:
    """One node's end of one link of a :class:`MemoryNetwork`; a
    :class:`~vigil.transports.base.Link`. Built by :meth:`MemoryNetwork.endpoint`."""

    def __init__(
        self, network: MemoryNetwork, node: str, link: str, on_frames: FrameHandler
    ) -> None:
        self._network = network
        self.node = node
        self._name = link
        self._on_frames = on_frames
        self._subscriptions = (topic_for(BROADCAST), topic_for(node))
        # Guarded by the network's lock.
        self.started = False
        self.closed = False

    @property
    def name(self) -> str:
        return self._name

    def start(self) -> None:
        self._network._start(self)

    def send(self, frames: Sequence[bytes]) -> None:
        if not frames:
            raise ValueError("a frame set needs at least the topic frame")
        self._network._send(self, list(frames))

    def close(self) -> None:
        self._network._detach(self)

    def _subscribed(self, topic: bytes) -> bool:
        return any(topic.startswith(prefix) for prefix in self._subscriptions)

    def _deliver(self, frames: list[bytes]) -> None:
        try:
            self._on_frames(self._name, frames)
        except Exception:
            log.exception(
                "memory link %s of %s: frame handler failed; frame set dropped",
                self._name,
                self.node,
            )

    def __repr__(self) -> str:
        return f"<MemoryLink {self.node}/{self._name}>"


@dataclass(order=True, slots=True)
class _Delivery:
    due: float
    seq: int
    receiver: MemoryLink = field(compare=False)
    frames: list[bytes] = field(compare=False)


class MemoryNetwork:
    """A set of links between nodes in one process, with fault controls.

    All controls are thread-safe and take effect for frame sets sent afterwards.
    :attr:`counters` says what happened to each copy: ``"sent"`` (frame sets), then per
    receiver ``"delivered"``, ``"lost"``, ``"blocked"``, ``"partitioned"``, ``"cut"`` or
    ``"not-listening"`` (receiver not started or closed). Close the network when done: it
    owns one thread.
    """

    def __init__(self, *, seed: int | None = None) -> None:
        self._cond = threading.Condition()
        self._links: dict[tuple[str, str], MemoryLink] = {}
        self._groups: dict[str, int] = {}
        self._partitioned = False
        self._blocked: set[tuple[str, str, str | None]] = set()
        self._cut: set[tuple[str, str]] = set()
        self._loss = 0.0
        self._delay = (0.0, 0.0)
        self._rng = random.Random(seed)
        self._heap: list[_Delivery] = []
        self._order = itertools.count()
        self._delivering = 0
        self._counters: Counter[str] = Counter()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vigil-memnet", daemon=True)
        self._thread.start()

    # -- endpoints -------------------------------------------------------------------------

    def endpoint(self, node: str, link: str, on_frames: FrameHandler) -> MemoryLink:
        """A new link end for ``node`` on ``link``. After the old one is closed, a node may
        get a new end on the same link (a daemon restart)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the memory network is closed")
            if (node, link) in self._links:
                raise ValueError(f"node {node!r} already has an open end on link {link!r}")
            end = MemoryLink(self, node, link, on_frames)
            self._links[node, link] = end
            return end

    def _start(self, end: MemoryLink) -> None:
        with self._cond:
            if end.closed:
                raise RuntimeError(f"{end!r} is closed; ask the network for a new endpoint")
            end.started = True

    def _detach(self, end: MemoryLink) -> None:
        with self._cond:
            end.closed = True
            if self._links.get((end.node, end.name)) is end:
                del self._links[end.node, end.name]

    # -- controls --------------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Only nodes of the same group can talk. Nodes named in no group form one more group
        together. ``partition()`` with no groups ends the partition."""
        assignment: dict[str, int] = {}
        for index, group in enumerate(groups):
            for node in group:
                if node in assignment:
                    raise ValueError(f"node {node!r} is in more than one partition group")
                assignment[node] = index
        with self._cond:
            self._groups = assignment
            self._partitioned = bool(groups)

    def block(self, src: str, dst: str, link: str | None = None) -> None:
        """Drop what ``src`` sends to ``dst`` (on ``link``, or on every link), not the reverse."""
        with self._cond:
            self._blocked.add((src, dst, link))

    def unblock(self, src: str, dst: str, link: str | None = None) -> None:
        """Undo the :meth:`block` made with the same arguments."""
        with self._cond:
            self._blocked.discard((src, dst, link))

    def cut_link(self, node: str, link: str) -> None:
        """A NIC failure: nothing goes in or out of ``node`` on ``link``."""
        with self._cond:
            self._cut.add((node, link))

    def restore_link(self, node: str, link: str) -> None:
        with self._cond:
            self._cut.discard((node, link))

    def set_loss(self, probability: float, seed: int | None = None) -> None:
        """Drop each copy with ``probability``; a ``seed`` makes the draws repeatable."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"loss probability must be within 0..1, not {probability}")
        with self._cond:
            self._loss = probability
            if seed is not None:
                self._rng.seed(seed)

    def set_delay(self, min_s: float, max_s: float | None = None) -> None:
        """Delay each copy by a uniform draw from ``min_s..max_s`` seconds (``max_s`` defaults
        to ``min_s``: a fixed delay, which keeps order)."""
        high = min_s if max_s is None else max_s
        if not 0.0 <= min_s <= high:
            raise ValueError(f"delay range must satisfy 0 <= min <= max, not {min_s}..{high}")
        with self._cond:
            self._delay = (min_s, high)

    def heal(self) -> None:
        """Clear every fault: partition, blocks, cut links, loss and delay."""
        with self._cond:
            self._groups = {}
            self._partitioned = False
            self._blocked.clear()
            self._cut.clear()
            self._loss = 0.0
            self._delay = (0.0, 0.0)

    @property
    def counters(self) -> Counter[str]:
        """A snapshot of what happened to the frame sets (see the class docstring)."""
        with self._cond:
            return Counter(self._counters)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight or being delivered; False on timeout. Lets a test
        assert that something did *not* arrive without sleeping."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closed or (not self._heap and not self._delivering), timeout
            )

    def close(self) -> None:
        """Stop delivering and close every link end (idempotent, bounded in time)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for end in self._links.values():
                end.closed = True
            self._links.clear()
            self._heap.clear()
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(_CLOSE_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("memory network: a frame handler is still running after close()")

    # -- the wire --------------------------------------------------------------------------

    def _fault(self, sender: MemoryLink, receiver: MemoryLink) -> str | None:
        link = sender.name
        if (sender.node, link) in self._cut or (receiver.node, link) in self._cut:
            return "cut"
        if self._partitioned and self._groups.get(sender.node, -1) != self._groups.get(
            receiver.node, -1
        ):
            return "partitioned"
        if (sender.node, receiver.node, None) in self._blocked or (
            sender.node,
            receiver.node,
            link,
        ) in self._blocked:
            return "blocked"
        if self._loss and self._rng.random() < self._loss:
            return "lost"
        return None

    def _send(self, sender: MemoryLink, frames: list[bytes]) -> None:
        topic = frames[0]
        with self._cond:
            if self._closed or sender.closed:
                return
            self._counters["sent"] += 1
            now = time.monotonic()
            for (node, link), receiver in self._links.items():
                if link != sender.name or node == sender.node or not receiver._subscribed(topic):
                    continue
                fault = self._fault(sender, receiver)
                if fault is not None:
                    self._counters[fault] += 1
                    continue
                low, high = self._delay
                delay = low if high <= low else self._rng.uniform(low, high)
                # A copy per receiver: a handler that edits its list must not affect the others.
                item = _Delivery(now + delay, next(self._order), receiver, list(frames))
                heapq.heappush(self._heap, item)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                batch = self._due_batch()
                if batch is None:
                    return
                self._delivering = len(batch)
            for item in batch:
                with self._cond:
                    receiver = item.receiver
                    listening = (
                        not self._closed
                        and receiver.started
                        and not receiver.closed
                        and (receiver.node, receiver.name) not in self._cut
                    )
                    self._counters["delivered" if listening else "not-listening"] += 1
                if listening:
                    receiver._deliver(item.frames)
                with self._cond:
                    self._delivering -= 1
                    if not self._delivering:
                        self._cond.notify_all()

    def _due_batch(self) -> list[_Delivery] | None:
        """Wait (in bounded steps, holding the condition) for due deliveries; None once closed."""
        while not self._closed:
            now = time.monotonic()
            if self._heap and self._heap[0].due <= now:
                batch = []
                while self._heap and self._heap[0].due <= now:
                    batch.append(heapq.heappop(self._heap))
                return batch
            wait = _MAX_WAIT_S if not self._heap else min(self._heap[0].due - now, _MAX_WAIT_S)
            self._cond.wait(wait)
        return None
