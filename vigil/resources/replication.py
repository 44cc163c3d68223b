"""Replication of mirrored data between the nodes' daemons (the ``mirror`` resource type,
issue 14): the receiver every node runs, the replicator the source runs, and the settings of
one mirror resource. Below it: :mod:`vigil.resources.btrfs` (snapshots, send, receive, the
divergence rule) and :mod:`vigil.transports.stream` (the authenticated byte stream); above
it: :mod:`vigil.resources.mirror` (the resource type) and the daemon, which makes one
:class:`MirrorService` per node when the configuration has a mirror resource.

**The receiver** (:meth:`MirrorService.receive`, the callback of the node's one
:class:`~vigil.transports.stream.StreamServer` on its replication endpoint) takes a transfer
whose header names a configured mirror resource, from a configured node, and refuses it while
that resource is in service here (then this node is the source: its data must not be
replaced). A header ``{"resource": R, "ask": true}`` with an empty stream asks what this node
holds; any other header describes one snapshot (``name``, ``parent``, ``taken``, ``source``,
``idents``: the source's snapshot idents, newest last). Before an incremental receive whose
parent is not this node's newest snapshot, the snapshots that are not in the source's history
(:func:`~vigil.resources.btrfs.diverged`) are set aside, never deleted; so is a data subvolume
left from when this node was the source. After a receive the
snapshots are pruned to ``keep`` and the coordinator hears :class:`MirrorState`. Every answer
(the DONE frame's reply) is ``{"idents": [...]}``: what this node holds, newest last.

**The replicator** (:class:`Replicator`, on the source) takes a snapshot every ``interval``
and hands the newest to one sender thread per peer, so that a slow or dead peer delays only
itself (each of its waits is bounded by :data:`STREAM_TIMEOUT`). A sender that does not know
what its peer holds (at first, or after a failure) asks first; then it sends incrementally
from :func:`~vigil.resources.btrfs.common` (or in full when nothing is common), skipping the
snapshots taken while it was busy. After each snapshot the source prunes (keeping each peer's
newest common snapshot and what is being sent) and tells the coordinator :class:`MirrorLag`:
for each peer, how many seconds of writes it lacks (``now - taken`` of its newest copy of our
history; None when unknown or unreachable). None of this runs on an actor's thread.

**The operator's decisions** on what is set aside (``vigil resource discard`` / ``promote``,
:mod:`vigil.resources.mirror_requests`): :meth:`MirrorService.discard` deletes one,
:meth:`MirrorService.promote` makes one this node's newest copy, recorded as taken now. Both
wait for a receive of the resource to end and keep the next one out until they are done.

**When snapshots were taken** is kept beside the data, in ``<root>/.<subvolume>.taken.json``
(ident -> Unix time), written by the source when it snapshots and by the receivers from the
header: a node that restarts reports how old its copy is without asking anyone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, cast

import zmq

from vigil.cluster.mirrors import CLOCK_SLACK, CopyFact, MirrorLag, MirrorState
from vigil.config import ParamValue
from vigil.resources.btrfs import (
    Aside,
    BtrfsError,
    Reinstated,
    Snapshot,
    Volume,
    common,
    diverged,
    is_name,
)
from vigil.resources.model import parse_seconds, unknown_params
from vigil.transports.keys import LinkKeys
from vigil.transports.stream import REPLY_MAX_BYTES, StreamError, StreamReader, StreamServer
from vigil.transports.stream import send_stream as _send_stream

__all__ = [
    "STREAM_TIMEOUT",
    "MirrorService",
    "MirrorSpec",
    "Replicator",
    "TakenLog",
]

log = logging.getLogger(__name__)

#: How long a sender waits for the receiver at any step (handshake, credit, its answer).
STREAM_TIMEOUT: Final = 30.0
#: The bound of one whole ``btrfs send`` or ``receive``: a backstop only, since a stalled
#: stream fails within STREAM_TIMEOUT (sender) or the server's idle timeout (receiver).
TRANSFER_TIMEOUT: Final = 6 * 3600.0
#: How long a receive waits for another receive of the same resource to finish.
RECEIVE_WAIT: Final = 60.0
#: The idents a reply carries at most (newest kept): well within REPLY_MAX_BYTES.
REPLY_IDENTS: Final = (REPLY_MAX_BYTES - 64) // 40
#: How long stop() waits for the replicator's threads.
JOIN_TIMEOUT: Final = 10.0
_SIZE: Final = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([KMG]?)(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS: Final = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
_PARAMS: Final = ("root", "subvolume", "mount_point", "interval", "keep", "max_lag",
                  "bandwidth")

Report = Callable[[MirrorState | MirrorLag], object]
Endpoints = Mapping[str, tuple[str, int]]


# -- one mirror resource's settings -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MirrorSpec:
    """The parameters of one mirror resource (docs/resources.md, "mirror")."""

    resource: str
    root: Path
    subvolume: str
    mount_point: Path
    interval: float = 1.0
    keep: int = 10
    max_lag: float = 30.0
    bandwidth: float | None = None  # bytes per second per transfer

    @classmethod
    def problems(cls, params: Mapping[str, ParamValue]) -> list[str]:
        """What is wrong with ``params``, one sentence each (for ``vigil config check``)."""
        problems = unknown_params(params, _PARAMS)
        for key in ("root", "mount_point"):
            value = params.get(key)
            if value is None:
                problems.append(f"missing required parameter {key!r}: "
                                + ("where this node's btrfs top level (subvolid=5) is mounted, "
                                   "e.g. \"/srv/mirror\"" if key == "root" else
                                   "where the application sees the data, e.g. "
                                   "\"/var/lib/db\""))
            elif not isinstance(value, str) or not value.startswith("/") or value == "/":
                problems.append(f"{key} must be an absolute path other than /, not {value!r}")
        subvolume = params.get("subvolume")
        if subvolume is not None and not is_name(subvolume):
            problems.append(f"subvolume must be letters, digits, '_' and '-' (starting with a "
                            f"letter or digit), not {subvolume!r}")
        for key, least in (("interval", 0.05), ("max_lag", 0.0)):
            if key in params:
                try:
                    seconds = parse_seconds(params[key])
                except ValueError as exc:
                    problems.append(f"{key}: {exc}")
                    continue
                if seconds < least or (key == "max_lag" and seconds == 0):
                    problems.append(f"{key} must be more than {least:g}s, not {params[key]!r}")
        keep = params.get("keep")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int)
                                 or keep < 1):
            problems.append(f"keep must be a whole number of snapshots, at least 1, not "
                            f"{keep!r}")
        if "bandwidth" in params:
            try:
                parse_bandwidth(params["bandwidth"])
            except ValueError as exc:
                problems.append(f"bandwidth: {exc}")
        return problems

    @classmethod
    def of(cls, resource: str, params: Mapping[str, ParamValue]) -> MirrorSpec:
        """The settings of mirror resource ``resource``; ValueError listing the problems."""
        problems = cls.problems(params)
        subvolume = params.get("subvolume", resource)
        if "subvolume" not in params and not is_name(resource):
            problems.append(f"the resource's name {resource!r} cannot name a subvolume: give "
                            "params.subvolume (letters, digits, '_' and '-')")
        if problems:
            raise ValueError(f"mirror resource {resource!r}: " + "; ".join(problems))
        return cls(resource, Path(str(params["root"])), str(subvolume),
                   Path(str(params["mount_point"])),
                   interval=parse_seconds(params.get("interval", 1.0)),
                   keep=int(cast(int, params.get("keep", 10))),
                   max_lag=parse_seconds(params.get("max_lag", 30.0)),
                   bandwidth=(parse_bandwidth(params["bandwidth"]) if "bandwidth" in params
                              else None))


def parse_bandwidth(value: ParamValue) -> float:
    """Bytes per second from a number or a string such as "50M" (K, M, G: powers of 1024)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        rate = float(value)
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        rate = float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]
    else:
        raise ValueError(f"expected bytes per second such as 1048576, \"512K\" or \"50M\", "
                         f"got {value!r}")
    if not rate > 0 or rate == float("inf"):
        raise ValueError(f"must be a positive rate, not {value!r}")
    return rate


# -- when each snapshot was taken ---------------------------------------------------------------


class TakenLog:
    """ident -> when its source took it (Unix seconds), in a small JSON file beside the data."""

    def __init__(self, volume: Volume) -> None:
        self.path = volume.root / f".{volume.subvol}.taken.json"
        self._lock = threading.Lock()

    def read(self) -> dict[str, float]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s): the age of the copies here is estimated from "
                        "the snapshots' files", self.path, exc)
            return {}
        if not isinstance(raw, dict):
            return {}
        return {k: float(v) for k, v in raw.items()
                if isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
                and math.isfinite(v) and v > 0}

    def taken(self, snapshot: Snapshot) -> float:
        """When ``snapshot`` was taken; unrecorded, the time of its top directory (no later
        than the snapshot: its lag looks larger, never smaller)."""
        found = self.read().get(snapshot.ident)
        if found is not None:
            return found
        try:
            return os.stat(snapshot.path).st_mtime
        except OSError:
            return 0.0

    def record(self, ident: str, taken: float, present: Collection[str]) -> None:
        """Add ``ident`` and forget the idents no longer ``present``; best effort."""
        with self._lock:
            entries = {k: v for k, v in self.read().items() if k in present}
            entries[ident] = taken
            temporary = self.path.with_name(self.path.name + ".tmp")
            try:
                with open(temporary, "w") as f:
                    json.dump(entries, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temporary, self.path)
            except OSError as exc:
                log.warning("cannot write %s (%s): the age of the copies here will be "
                            "estimated", self.path, exc)


def copy_fact(snapshot: Snapshot | None, taken: TakenLog, live: bool) -> CopyFact | None:
    if snapshot is None:
        return None
    return CopyFact(snapshot.seq, taken.taken(snapshot), snapshot.node, live)


# -- the node's service: receiver, volumes, what is live ----------------------------------------


@dataclass
class _Mirror:
    """What the service keeps for one mirror resource."""

    spec: MirrorSpec
    volume: Volume
    taken: TakenLog
    receiving: threading.Lock
    cancel: threading.Event | None = None  # the running receive's
    live: bool = False

    @classmethod
    def of(cls, spec: MirrorSpec, node: str) -> _Mirror:
        volume = Volume(spec.root, spec.subvolume, node)
        return cls(spec, volume, TakenLog(volume), threading.Lock())


class MirrorService:
    """One node's side of replication: its receiver on ``endpoints[node]`` (every node's
    replication endpoint: the first link's address and the replication port), the volumes
    of the mirror resources ``specs``, and the keys and endpoints its replicators send with.
    ``report`` tells the coordinator (any thread); ``context`` may be the daemon's.
    ``idle_timeout`` bounds the receiver's wait for a sender's next frame, ``stream_timeout``
    each wait of this node's senders (the handshake, credit, the answer)."""

    def __init__(self, node: str, specs: Collection[MirrorSpec], endpoints: Endpoints,
                 keys: LinkKeys, report: Report, *,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 idle_timeout: float = STREAM_TIMEOUT,
                 stream_timeout: float = STREAM_TIMEOUT) -> None:
        if node not in endpoints:
            raise ValueError(f"no replication endpoint for node {node!r}")
        self.node = node
        self.endpoints = dict(endpoints)
        self.keys = keys
        self.report = report
        self.context = context
        self.idle_timeout = idle_timeout
        self.stream_timeout = stream_timeout
        self._mirrors = {s.resource: _Mirror.of(s, node) for s in specs}
        self._lock = threading.Lock()
        self._replicators: list[Replicator] = []
        self.server: StreamServer | None = None

    @property
    def peers(self) -> list[str]:
        return sorted(n for n in self.endpoints if n != self.node)

    def spec(self, resource: str) -> MirrorSpec:
        return self._mirror(resource).spec

    def volume(self, resource: str) -> Volume:
        return self._mirror(resource).volume

    def taken(self, resource: str) -> TakenLog:
        return self._mirror(resource).taken

    def _mirror(self, resource: str) -> _Mirror:
        try:
            return self._mirrors[resource]
        except KeyError:
            raise KeyError(f"{resource!r} is not a mirror resource of this configuration "
                           f"(mirror resources: {', '.join(sorted(self._mirrors)) or 'none'})"
                           ) from None

    # -- life -------------------------------------------------------------------------------

    def start(self) -> None:
        """Delete what receives killed with an earlier daemon left, bind the receiver and
        report what this node holds of each mirror resource."""
        for resource, mirror in sorted(self._mirrors.items()):
            try:
                mirror.volume.cleanup_partial()
            except BtrfsError as exc:
                log.warning("mirror %s on %s: %s", resource, self.node, exc)
        address, port = self.endpoints[self.node]
        self.server = StreamServer(
            (address, port), {n: self.endpoints[n][0] for n in self.peers}, self.node,
            self.receive, keys=self.keys, context=self.context,
            idle_timeout=self.idle_timeout, name="mirror")
        log.info("mirror receiver of %s on %s port %d (resources: %s)", self.node, address,
                 self.server.port, ", ".join(sorted(self._mirrors)))
        for resource in sorted(self._mirrors):
            self.report_state(resource)

    def close(self) -> None:
        """Stop receiving, and stop the replicators still running (the node is going away
        without stopping its resources: nothing may go on sending in its name)."""
        with self._lock:
            replicators, self._replicators = self._replicators, []
        for replicator in replicators:
            replicator.stop()
        if self.server is not None:
            self.server.close()
            self.server = None

    def report_again(self) -> None:
        """Report every resource's state again, from a thread of its own: a coordinator
        started again after a failure has lost what it was told, and an idle copy (no source
        sending) would stay unknown to it (listing subvolumes runs btrfs: never on an
        actor's thread)."""
        def report_all() -> None:
            for resource in sorted(self._mirrors):
                try:
                    self.report_state(resource)
                except Exception as exc:  # a report lost is logged, never the thread's end
                    log.warning("mirror %s on %s: could not report its copy again: %s",
                                resource, self.node, exc)

        threading.Thread(target=report_all, name=f"vigil-mirror-report-{self.node}",
                         daemon=True).start()

    def report_state(self, resource: str) -> MirrorState:
        """Tell the coordinator this node's copy of ``resource`` and what it holds aside."""
        mirror = self._mirror(resource)
        try:
            snapshots = mirror.volume.snapshots()
            aside = tuple(a.name for a in mirror.volume.aside())
        except BtrfsError as exc:
            log.warning("mirror %s on %s: no copy can be reported: %s", resource, self.node,
                        exc)
            state = MirrorState(resource, None)
        else:
            newest = snapshots[-1] if snapshots else None
            state = MirrorState(resource, copy_fact(newest, mirror.taken, mirror.live), aside,
                                time.time())
        self.report(state)
        return state

    def go_live(self, resource: str, timeout: float) -> None:
        """From now on ``resource`` is in service here: refuse receives, and end the one
        running (within ``timeout``, else BtrfsError)."""
        mirror = self._mirror(resource)
        with self._lock:
            mirror.live = True
            if mirror.cancel is not None:
                mirror.cancel.set()
        if not mirror.receiving.acquire(timeout=max(0.0, timeout)):
            raise BtrfsError(f"a receive of {resource} on {self.node} did not stop within "
                             f"{timeout:g}s; try again")
        mirror.receiving.release()

    def leave_live(self, resource: str) -> None:
        with self._lock:
            self._mirror(resource).live = False

    def is_live(self, resource: str) -> bool:
        with self._lock:
            return self._mirror(resource).live

    # -- the operator's decisions on what is set aside ---------------------------------------

    def discard(self, resource: str, name: str) -> tuple[Aside, MirrorState]:
        """Delete ``name``, set aside here (``vigil resource discard``); what it was, and the
        state reported then."""
        mirror = self._mirror(resource)
        with self._quiet(mirror, "discard"):
            aside = self._aside(mirror, name)
            mirror.volume.discard(aside)
        log.warning("mirror %s on %s: discarded %s on the operator's request", resource,
                    self.node, name)
        return aside, self.report_state(resource)

    def promote(self, resource: str, name: str) -> tuple[Reinstated, MirrorState]:
        """Make ``name``, set aside here, this node's newest copy, taken now (``vigil resource
        promote``; :meth:`Volume.reinstate <vigil.resources.btrfs.Volume.reinstate>`). Refused
        while the resource is in service here; the caller checks that it runs nowhere else."""
        mirror = self._mirror(resource)
        with self._quiet(mirror, "promote"):
            if mirror.live:
                raise BtrfsError(f"{resource} is in service on {self.node}: take it out of "
                                 f"service first (vigil resource oo-service {resource})")
            done = mirror.volume.reinstate(self._aside(mirror, name))
            mirror.taken.record(done.snapshot.ident, time.time(),
                                {s.ident for s in mirror.volume.snapshots()})
        log.warning("mirror %s on %s: %s promoted as %s, the newest copy here, on the "
                    "operator's request", resource, self.node, name, done.snapshot.name)
        return done, self.report_state(resource)

    @contextlib.contextmanager
    def _quiet(self, mirror: _Mirror, what: str) -> Iterator[None]:
        """No receive runs while the block does."""
        if not mirror.receiving.acquire(timeout=RECEIVE_WAIT):
            raise BtrfsError(f"a receive of {mirror.spec.resource} on {self.node} still runs "
                             f"after {RECEIVE_WAIT:g}s: {what} again later")
        try:
            yield
        finally:
            mirror.receiving.release()

    def _aside(self, mirror: _Mirror, name: str) -> Aside:
        held = mirror.volume.aside()
        found = next((a for a in held if a.name == name), None)
        if found is None:
            raise BtrfsError(f"{name!r} is not set aside for {mirror.spec.resource} on "
                             f"{self.node} (set aside here: "
                             f"{', '.join(a.name for a in held) or 'nothing'})")
        return found

    # -- the receiver -----------------------------------------------------------------------

    def receive(self, sender: str, header: dict[str, object],
                reader: StreamReader) -> dict[str, object]:
        """The stream server's callback: see the module docstring."""
        resource = header.get("resource")
        if not isinstance(resource, str) or resource not in self._mirrors:
            raise ValueError(f"{resource!r} is not a mirror resource configured on "
                             f"{self.node} (is the configuration the same everywhere?)")
        if sender not in self.endpoints or sender == self.node:
            raise ValueError(f"{sender!r} is not another node of this configuration")
        mirror = self._mirrors[resource]
        if header.get("ask") is True:
            if reader.read(1):
                raise ValueError("an ask carries no stream")
            return self._reply(mirror)
        name, parent, taken, source, theirs = _snapshot_header(header)
        self._check_snapshot_header(resource, sender, name, taken, source)
        cancel = threading.Event()
        if not mirror.receiving.acquire(timeout=RECEIVE_WAIT):
            raise BtrfsError(f"another receive of {resource} on {self.node} still runs")
        try:
            with self._lock:
                if mirror.live:
                    raise BtrfsError(f"{resource} is in service on {self.node}: it is the "
                                     f"source here and takes no stream (from {sender})")
                mirror.cancel = cancel
            volume = mirror.volume
            if volume.has_data():
                # not in service here, and another node sends: the data is left from when
                # this node was the source, and may hold writes no other node has
                data = volume.set_aside_data()
                log.warning("mirror %s on %s: %s receives from %s; its former data is kept "
                            "aside as %s", resource, self.node, self.node, sender,
                            data.name if data else "?")
            local = volume.snapshots()
            if local and (parent is None or local[-1].name != parent):
                for snapshot in diverged(local, theirs):
                    aside = volume.set_aside(snapshot)
                    log.warning("mirror %s on %s: %s is not in the history of %s (the new "
                                "source); kept aside as %s", resource, self.node,
                                snapshot.name, sender, aside.name)
            received = volume.receive(cast(BinaryIO, reader), timeout=TRANSFER_TIMEOUT,
                                      cancel=cancel)
            if received.name != name:  # the header lied about the stream: keep it apart
                kept = volume.set_aside(received)
                raise ValueError(f"{sender} announced {resource} snapshot {name!r} but sent "
                                 f"{received.name!r}; kept aside as {kept.name}")
            present = {s.ident for s in volume.snapshots()}
            mirror.taken.record(received.ident, taken, present)
            pruned = volume.prune(mirror.spec.keep)
            if pruned:
                log.debug("mirror %s: pruned %s", resource, ", ".join(s.name for s in pruned))
            log.debug("mirror %s: received %s from %s (source %s)", resource, name, sender,
                      source)
        finally:
            with self._lock:
                mirror.cancel = None
            mirror.receiving.release()
        self.report_state(resource)
        return self._reply(mirror)

    def _check_snapshot_header(self, resource: str, sender: str, name: str, taken: float,
                               source: str) -> None:
        """Refuse what this node could not report truthfully: a copy whose time is not a time
        (or lies ahead of our clock by more than CLOCK_SLACK: it would outrank every fresh
        copy), or whose source, or the node in its name, is not a configured node (its cost
        reply would be refused by every master, and every transition with it)."""
        parts = name.split(".")
        named = parts[-2] if len(parts) >= 3 else ""
        if not math.isfinite(taken) or taken <= 0:
            raise ValueError(f"{sender} sent {resource} snapshot {name!r} with a taken time "
                             f"that is no time ({taken!r})")
        ahead = taken - time.time()
        if ahead > CLOCK_SLACK:
            raise ValueError(f"{sender} sent {resource} snapshot {name!r} taken {ahead:.0f} s "
                             f"ahead of {self.node}'s clock: the nodes' clocks differ; keep "
                             "them in step (NTP) and the copies flow again")
        for what, node in (("source", source), ("the node in its name", named)):
            if node not in self.endpoints:
                raise ValueError(f"{sender} sent {resource} snapshot {name!r} whose {what} "
                                 f"{node!r} is not a node of this cluster")

    @staticmethod
    def _reply(mirror: _Mirror) -> dict[str, object]:
        held = [s.ident for s in mirror.volume.snapshots()]
        return {"idents": held[-REPLY_IDENTS:]}

    # -- the source's side ------------------------------------------------------------------

    def replicator(self, resource: str) -> Replicator:
        replicator = Replicator(self, self._mirror(resource).spec)
        with self._lock:
            self._replicators = [r for r in self._replicators
                                 if not r.stopping.is_set()] + [replicator]
        return replicator


def _snapshot_header(header: Mapping[str, object]
                     ) -> tuple[str, str | None, float, str, set[str]]:
    name, parent = header.get("name"), header.get("parent")
    taken, source, theirs = header.get("taken"), header.get("source"), header.get("idents")
    if not isinstance(name, str) or not (parent is None or isinstance(parent, str)) \
            or not isinstance(taken, int | float) or isinstance(taken, bool) \
            or not isinstance(source, str) or not isinstance(theirs, list) \
            or not all(isinstance(i, str) for i in theirs):
        raise ValueError("a malformed mirror header (name, parent, taken, source and idents "
                         "expected): is the sender's Vigil version the same?")
    return name, parent, float(taken), source, set(cast(list[str], theirs))


# -- the source's replicator ------------------------------------------------------------------


class _PipeSource:
    """The read end of a pipe that ``btrfs send`` writes, for :func:`send_stream`: its end of
    file counts only if the send succeeded (else the transfer aborts, never ends cleanly)."""

    def __init__(self, fd: int, outcome: Callable[[], BaseException | None]) -> None:
        self._file = open(fd, "rb", buffering=0)  # noqa: SIM115 (closed by close())
        self._outcome = outcome

    def read(self, size: int = -1, /) -> bytes:
        chunk = self._file.read(size)
        if not chunk:
            failure = self._outcome()
            if failure is not None:
                raise StreamError(f"btrfs send failed: {failure}")
        return chunk or b""

    def close(self) -> None:
        self._file.close()


class _Peer:
    """The sender thread of one peer: sends the newest snapshot it is given."""

    def __init__(self, replicator: Replicator, name: str) -> None:
        self.replicator = replicator
        self.name = name
        self.idents: set[str] | None = None  # what the peer holds; None: ask first
        #: what the peer last said it holds, kept across failures: pruning spares the newest
        #: snapshot it shares, so that a peer back after an outage continues incrementally
        #: (else it would get a full stream and set its whole healthy chain aside)
        self.known: set[str] = set()
        #: the snapshot of a send that failed: the peer may hold it (a receive can end just
        #: before the connection breaks), so it is spared too until the peer says
        self.tried: str | None = None
        self.sending: set[str] = set()  # idents in use by a transfer (not to be pruned)
        self.error: str | None = None
        self.wanted: Snapshot | None = None
        self.wake = threading.Event()
        self.thread = threading.Thread(
            target=self.run, daemon=True,
            name=f"vigil-mirror-{replicator.spec.resource}-{name}")

    def run(self) -> None:
        stop = self.replicator.stopping
        while not stop.is_set():
            self.wake.wait(0.5)
            self.wake.clear()
            snapshot, self.wanted = self.wanted, None
            if snapshot is not None and not stop.is_set():
                self.deliver(snapshot, time.monotonic() + TRANSFER_TIMEOUT, stop)

    def deliver(self, snapshot: Snapshot, deadline: float, cancel: threading.Event) -> bool:
        """Bring ``snapshot`` (or a newer one) to the peer; whether it has it now."""
        replicator = self.replicator
        try:
            if self.idents is None:
                self.idents = replicator.ask(self.name, deadline, cancel)
                self.known, self.tried = self.idents, None
            if snapshot.ident in self.idents:
                return True
            parent = common(replicator.volume.snapshots(), self.idents)
            self.sending = {snapshot.ident} | ({parent.ident} if parent else set())
            self.tried = snapshot.ident
            self.idents = replicator.send(self.name, snapshot, parent, deadline, cancel)
            self.known, self.tried = self.idents, None
        except (BtrfsError, StreamError, OSError, ValueError) as exc:
            self.idents = None
            if str(exc) != self.error:
                log.warning("mirror %s: cannot send to %s: %s", replicator.spec.resource,
                            self.name, exc)
            self.error = str(exc)
            return False
        finally:
            self.sending = set()
        if self.error is not None:
            log.info("mirror %s: %s receives again", replicator.spec.resource, self.name)
            self.error = None
        return snapshot.ident in self.idents


class Replicator:
    """The source's side of one mirror resource: see the module docstring. ``start()`` runs
    it; ``stop()`` ends it; ``final()`` then sends one last snapshot to every peer."""

    def __init__(self, service: MirrorService, spec: MirrorSpec) -> None:
        self.service = service
        self.spec = spec
        self.volume = service.volume(spec.resource)
        self.taken = service.taken(spec.resource)
        self.stopping = threading.Event()
        self.peers = {name: _Peer(self, name) for name in service.peers}
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"vigil-mirror-{spec.resource}")
        self.rounds = 0
        self.failure: str | None = None  # why the last snapshot failed, if it did

    def start(self) -> None:
        for peer in self.peers.values():
            peer.thread.start()
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive() and all(p.thread.is_alive() for p in self.peers.values())

    def stop(self, timeout: float = JOIN_TIMEOUT) -> None:
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in [self._thread, *(p.thread for p in self.peers.values())]:
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    log.warning("mirror %s: %s did not stop within %gs", self.spec.resource,
                                thread.name, timeout)

    def _run(self) -> None:
        next_round = time.monotonic()
        while not self.stopping.wait(max(0.0, next_round - time.monotonic())):
            next_round = time.monotonic() + self.spec.interval
            try:
                snapshot = self.snapshot()
            except BtrfsError as exc:
                if str(exc) != self.failure:
                    log.error("mirror %s: cannot take a snapshot: %s", self.spec.resource, exc)
                self.failure = str(exc)
                continue
            self.failure = None
            for peer in self.peers.values():
                peer.wanted = snapshot
                peer.wake.set()
            self.after_round()

    def snapshot(self) -> Snapshot:
        """Take and record a snapshot of the data. Its time is never before the newest
        snapshot's here (taken by another node, whose clock may be ahead of ours): along one
        history, later snapshots look fresher."""
        newest = self.taken.read().values()
        taken = max([time.time(), *(t + 0.001 for t in newest)])
        snapshot = self.volume.snapshot()
        self.taken.record(snapshot.ident, taken,
                          {s.ident for s in self.volume.snapshots()})
        self.service.report(MirrorState(self.spec.resource,
                                        CopyFact(snapshot.seq, taken, self.service.node, True),
                                        tuple(a.name for a in self.volume.aside())))
        return snapshot

    def after_round(self) -> None:
        """Prune (sparing what the peers build on) and tell the coordinator the lags."""
        self.rounds += 1
        try:
            local = self.volume.snapshots()
            protect: set[str] = set()
            for peer in self.peers.values():
                if (base := common(local, peer.known)) is not None:
                    protect.add(base.ident)
                if peer.tried is not None:
                    protect.add(peer.tried)
                protect |= peer.sending
            self.volume.prune(self.spec.keep, protect=protect)
            self.service.report(self.lags(local))
        except BtrfsError as exc:
            log.warning("mirror %s: pruning or listing failed: %s", self.spec.resource, exc)

    def lags(self, local: list[Snapshot]) -> MirrorLag:
        now = time.time()
        times = self.taken.read()
        lags: dict[str, float | None] = {}
        for name, peer in self.peers.items():
            held = peer.idents
            base = common(local, held) if held is not None else None
            lags[name] = None if base is None else max(
                0.0, now - times.get(base.ident, self.taken.taken(base)))
        return MirrorLag(self.spec.resource, lags)

    def final(self, timeout: float) -> tuple[Snapshot, dict[str, str | None]]:
        """After stop(): take one last snapshot and send it to every peer at once, within
        ``timeout``; the snapshot, and peer -> None (it has it) or why not."""
        snapshot = self.snapshot()
        deadline = time.monotonic() + timeout
        cancel = threading.Event()
        outcome: dict[str, str | None] = {}

        def one(peer: _Peer) -> None:
            peer.idents = None  # ask: the peer may have changed while no one sent
            outcome[peer.name] = None if peer.deliver(snapshot, deadline, cancel) else (
                peer.error or "not delivered")

        threads = [threading.Thread(target=one, args=(p,), daemon=True,
                                    name=f"vigil-mirror-final-{p.name}")
                   for p in self.peers.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        cancel.set()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        with contextlib.suppress(BtrfsError):
            self.service.report(self.lags(self.volume.snapshots()))
        return snapshot, {p: outcome.get(p, f"not delivered within {timeout:g}s")
                          for p in self.peers}

    # -- one transfer ---------------------------------------------------------------------------

    def _timeout(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise StreamError("out of time")
        return min(self.service.stream_timeout, left)

    def ask(self, peer: str, deadline: float, cancel: threading.Event) -> set[str]:
        """What ``peer`` holds of this resource (its idents)."""
        sent = _send_stream(peer, self.service.endpoints[peer],
                            {"resource": self.spec.resource, "channel": self.spec.resource,
                             "ask": True}, _Empty(),
                            keys=self.service.keys,
                            source_address=self.service.endpoints[self.service.node][0],
                            timeout=self._timeout(deadline), cancel=cancel,
                            context=self.service.context)
        return _idents(peer, sent.reply)

    def send(self, peer: str, snapshot: Snapshot, parent: Snapshot | None, deadline: float,
             cancel: threading.Event) -> set[str]:
        """Stream ``snapshot`` (incrementally from ``parent``) to ``peer``; what it holds
        then."""
        local = self.volume.snapshots()
        # each resource on its own channel: another's transfer to this peer goes on
        header = {"resource": self.spec.resource, "channel": self.spec.resource,
                  "name": snapshot.name,
                  "parent": parent.name if parent is not None else None,
                  "taken": self.taken.taken(snapshot), "source": snapshot.node,
                  "idents": [s.ident for s in local][-REPLY_IDENTS:]}
        timeout = self._timeout(deadline)
        read_end, write_end = os.pipe()
        failures: list[BaseException] = []
        stop_send = threading.Event()

        def produce() -> None:
            try:
                with open(write_end, "wb", buffering=0) as out:
                    self.volume.send(snapshot, parent, out,
                                     timeout=max(1.0, deadline - time.monotonic()),
                                     cancel=stop_send)
            except BaseException as exc:  # the reader raises it at the end of the pipe
                failures.append(exc)

        def outcome() -> BaseException | None:
            producer.join(self.service.stream_timeout)
            if producer.is_alive():
                return StreamError(f"btrfs send did not end within "
                                   f"{self.service.stream_timeout:g}s after its output closed")
            return failures[0] if failures else None

        producer = threading.Thread(target=produce, daemon=True,
                                    name=f"vigil-btrfs-send-{self.spec.resource}-{peer}")
        source = _PipeSource(read_end, outcome)
        producer.start()
        try:
            sent = _send_stream(peer, self.service.endpoints[peer], header, source,
                                keys=self.service.keys,
                                source_address=self.service.endpoints[self.service.node][0],
                                timeout=timeout, bandwidth=self.spec.bandwidth,
                                cancel=cancel, context=self.service.context)
        finally:
            stop_send.set()
            source.close()  # btrfs send, if still writing, fails at once
            producer.join(STREAM_TIMEOUT)
        return _idents(peer, sent.reply)


class _Empty:
    def read(self, size: int = -1, /) -> bytes:
        return b""


def _idents(peer: str, reply: Mapping[str, object] | None) -> set[str]:
    held = (reply or {}).get("idents")
    if not isinstance(held, list) or not all(isinstance(i, str) for i in held):
        raise StreamError(f"{peer} answered without the idents it holds ({reply!r}): is its "
                          "Vigil version the same?")
    return set(cast(list[str], held))
