"""The ``mirror`` resource type: data on every node's own btrfs filesystem, written on the node
where the resource is in service (the *source*) and copied to the others every interval
(issue 14; docs/resources.md, "mirror"). The replication itself is
:mod:`vigil.resources.replication`; the snapshots, streams and the divergence rule are
:mod:`vigil.resources.btrfs`.

Parameters (:class:`~vigil.resources.replication.MirrorSpec`): ``root`` (required: where the
node's btrfs top level, subvolid=5, is mounted, the same path on every node; the operator
mounts it), ``subvolume`` (default: the resource's name), ``mount_point`` (required: where the
application sees the data), ``interval`` (default 1s), ``keep`` (default 10 snapshots),
``max_lag`` (default 30s: a node whose copy is further behind may not take over) and
``bandwidth`` (bytes per second per transfer, e.g. "50M"; default no limit).

Start: what killed receives left is deleted; this node stops taking streams for the resource
(a receive under way is cancelled). If there is no data subvolume, the newest snapshot here is
made writable (or, with no snapshot at all, an empty data subvolume is created); if there is
one and the newest snapshot here was taken by another node, that snapshot is made writable
and the old data set aside (never deleted: it holds writes no other node has); if the newest
was taken here, the data is kept (this node was the last source). The data subvolume is then
bind-mounted on ``mount_point`` and the replicator started.

Stop: the replicator stops, ``mount_point`` is unmounted (killing its users if it stays busy
for half the stop timeout, or at once when forced), a final snapshot is taken and, unless
forced, sent to every peer within what is left of the stop timeout (a graceful move loses
nothing), and the data subvolume is deleted (the final snapshot holds all of it; if none
could be taken, the data is set aside instead). Then the node receives again.

Monitor: in service when the data subvolume is mounted read-write on ``mount_point`` and the
replicator runs.

The resource needs its node's :class:`~vigil.resources.replication.MirrorService` (the
receiver, the peers, the keys): the node runtime hands it over in :attr:`MirrorResource.service`
before anything runs; without one every operation fails, saying so.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from vigil.config import MonitorConfig, ParamValue, ResourceConfig, TypeDefaults
from vigil.guard.holdings import MountHolding, ResourceHolding
from vigil.resources.btrfs import BtrfsError, Volume, btrfs_available
from vigil.resources.filesystem import _kill, _run, _stack, find_holders
from vigil.resources.model import OpResult, Resource, ResourceType, ServiceState
from vigil.resources.mountinfo import Mount, read_mountinfo
from vigil.resources.replication import JOIN_TIMEOUT, MirrorService, MirrorSpec, Replicator

__all__ = ["MirrorResource", "MirrorType"]

log = logging.getLogger(__name__)

#: What a stop keeps back from its timeout for deleting the data and reporting.
STOP_MARGIN: Final = 2.0
_RETRY: Final = 0.5


class MirrorType(ResourceType):
    """Factory of :class:`MirrorResource` (``type = "mirror"``)."""

    def typename(self) -> str:
        return "mirror"

    def instantiate(self, config: ResourceConfig, node: str, runtime_dir: Path
                    ) -> MirrorResource:
        return MirrorResource(self, config, node, runtime_dir)

    def check_params(self, params: Mapping[str, ParamValue]) -> list[str]:
        return MirrorSpec.problems(params)

    def default_monitor(self) -> MonitorConfig:
        return MonitorConfig(interval=10.0, timeout=20.0)

    def defaults(self) -> TypeDefaults:
        # the stop sends the final snapshot to every peer within its timeout
        return TypeDefaults(self.default_monitor(), start_timeout=60.0, stop_timeout=60.0)

    def validate(self, config: ResourceConfig) -> list[str]:
        try:
            spec = MirrorSpec.of(config.name, config.params)
        except ValueError as exc:
            return [str(exc).split(": ", 1)[-1]]
        why = btrfs_available()
        if why is not None:
            return [why]
        problems = []
        try:
            Volume(spec.root, spec.subvolume, "check").check()
        except BtrfsError as exc:
            problems.append(str(exc))
        if os.path.lexists(spec.mount_point) and not os.path.isdir(spec.mount_point):
            problems.append(f"mount_point {spec.mount_point} exists and is not a directory")
        return problems


class MirrorResource(Resource):
    """One mirror resource on this node (see the module docstring)."""

    def __init__(self, rtype: MirrorType, config: ResourceConfig, node: str,
                 runtime_dir: Path) -> None:
        super().__init__(rtype, config, node, runtime_dir)  # checks the params
        self.spec = MirrorSpec.of(config.name, config.params)
        self.mount_point = os.path.normpath(str(self.spec.mount_point))
        #: the node's replication service, handed over by the node runtime
        self.service: MirrorService | None = None
        self._replicator: Replicator | None = None
        self._lock = threading.Lock()

    def holding(self) -> ResourceHolding:
        base = super().holding()
        return ResourceHolding(base.name, cgroup=base.cgroup, mounts=(MountHolding(
            self.mount_point, str(self.spec.root / self.spec.subvolume)),))

    def _service(self) -> MirrorService:
        if self.service is None:
            raise BtrfsError(f"mirror {self.name} has no replication service on {self.node}: "
                             "the node's daemon makes one when the configuration has a "
                             "mirror resource (is this node run by `vigil node run`?)")
        return self.service

    # -- agent operations ---------------------------------------------------------------------

    def _start(self, cancel: threading.Event) -> OpResult:
        deadline = time.monotonic() + self.config.start_timeout
        try:
            service = self._service()
            service.go_live(self.name, max(1.0, deadline - time.monotonic()))
            volume = service.volume(self.name)
            volume.cleanup_partial()
            note = self._prepare_data(volume)
            if cancel.is_set():
                return OpResult.failure(ServiceState.FAILED, "start interrupted")
            mounted = self._mount(volume, max(1.0, deadline - time.monotonic()), cancel)
            with self._lock:
                if self._replicator is None or not self._replicator.alive():
                    self._replicator = service.replicator(self.name)
                    self._replicator.start()
            service.report_state(self.name)
        except BtrfsError as exc:
            return OpResult.failure(ServiceState.FAILED, str(exc))
        return OpResult.success(ServiceState.IN_SERVICE,
                                f"{note}; {mounted}; replicating every "
                                f"{self.spec.interval:g}s to {', '.join(service.peers) or 'none'}")

    def _prepare_data(self, volume: Volume) -> str:
        snapshots = volume.snapshots()
        newest = snapshots[-1] if snapshots else None
        if not volume.has_data():
            if newest is None:
                volume.create_data()
                return f"created an empty {volume.data} (no copy here yet)"
            volume.promote(newest)
            return f"made {newest.name} writable as {volume.data}"
        if newest is not None and newest.node != self.node:
            promoted = volume.promote(newest)
            aside = (f" (the former data set aside as {promoted.set_aside.name})"
                     if promoted.set_aside is not None else "")
            return f"made {newest.name}, taken by {newest.node}, writable{aside}"
        return f"kept {volume.data} (this node was the last source)"

    def _stop(self, force: bool) -> OpResult:
        started = time.monotonic()
        deadline = started + self.config.stop_timeout
        try:
            service = self._service()
        except BtrfsError as exc:
            return OpResult.failure(ServiceState.UNCLEAN, str(exc))
        with self._lock:
            replicator, self._replicator = self._replicator, None
        if replicator is not None:
            replicator.stop(min(JOIN_TIMEOUT, self.config.stop_timeout / 4))
        problem = self._unmount(force, deadline)
        if problem is not None:
            return OpResult.failure(ServiceState.UNCLEAN, problem)
        volume = service.volume(self.name)
        notes = [f"not mounted on {self.mount_point}"]
        try:
            volume.check()
        except BtrfsError as exc:  # no filesystem here: no data either
            service.leave_live(self.name)
            return OpResult.success(ServiceState.OOS, f"{notes[0]}; no data here ({exc})")
        try:
            if volume.has_data():
                notes.append(self._final(service, volume, force, deadline))
        except BtrfsError as exc:
            return OpResult.failure(ServiceState.FAILED, f"{'; '.join(notes)}; {exc}")
        service.leave_live(self.name)
        service.report_state(self.name)
        return OpResult.success(ServiceState.OOS, "; ".join(notes))

    def _final(self, service: MirrorService, volume: Volume, force: bool,
               deadline: float) -> str:
        """Snapshot the data a last time, send it (unless forced), delete the data."""
        final = service.replicator(self.name)
        try:
            if force:
                snapshot = final.snapshot()
                sent = "not sent (forced stop)"
            else:
                snapshot, outcome = final.final(
                    max(1.0, deadline - time.monotonic() - STOP_MARGIN))
                missed = {p: why for p, why in outcome.items() if why is not None}
                sent = (f"sent to {', '.join(sorted(outcome)) or 'no peer'}" if not missed else
                        "not received by " + "; ".join(f"{p} ({why})"
                                                       for p, why in sorted(missed.items())))
                for peer, why in missed.items():
                    log.warning("mirror %s: the final snapshot did not reach %s: %s", self.name,
                                peer, why)
        except BtrfsError as exc:
            aside = volume.set_aside_data()
            return (f"no final snapshot ({exc}); the data is kept aside as "
                    f"{aside.name if aside else '?'}")
        volume.delete_data(snapshot)
        return f"final snapshot {snapshot.name} {sent}"

    def _monitor(self) -> OpResult:
        believed = self.service_state() is ServiceState.IN_SERVICE
        try:
            self._service()
            ours = self._ours()
        except BtrfsError as exc:
            if believed:
                return OpResult.failure(ServiceState.FAILED, str(exc))
            return OpResult.success(ServiceState.OOS, f"not in service ({exc})")
        with self._lock:
            replicator = self._replicator
        replicating = replicator is not None and replicator.alive()
        if ours is not None:
            if ours.read_only:
                return OpResult.failure(ServiceState.FAILED,
                                        f"{self.mount_point} is mounted read-only (the kernel "
                                        "does that after I/O errors; see dmesg)")
            if not replicating:
                return OpResult.failure(ServiceState.FAILED,
                                        f"{self.spec.subvolume} is mounted on "
                                        f"{self.mount_point}, but its replicator does not run "
                                        "(the daemon restarted?)")
            failure = replicator.failure if replicator is not None else None
            return OpResult.success(ServiceState.IN_SERVICE,
                                    f"mounted on {self.mount_point}, replicating"
                                    + (f" (the last snapshot failed: {failure})"
                                       if failure else ""))
        if believed:
            return OpResult.failure(ServiceState.FAILED,
                                    f"{self.spec.subvolume} is no longer mounted on "
                                    f"{self.mount_point}")
        return OpResult.success(ServiceState.OOS, f"not mounted on {self.mount_point}")

    # -- the bind mount -----------------------------------------------------------------------

    def _where(self) -> str:
        # as the kernel shows it: symbolic links in the parent resolved (not the mount point
        # itself, which may be a hung mount)
        parent, name = os.path.split(self.mount_point)
        return os.path.join(os.path.realpath(parent), name)

    def _is_ours(self, mount: Mount, top: Mount) -> bool:
        return mount.fstype == "btrfs" and (mount.major, mount.minor) == (top.major, top.minor) \
            and mount.root == f"/{self.spec.subvolume}"

    def _top(self) -> Mount:
        return self._service().volume(self.name).top_mount()

    def _ours(self) -> Mount | None:
        """Our bind mount, if it is the visible one on the mount point."""
        top = self._top()
        stack = _stack(read_mountinfo(), self._where())
        return stack[-1] if stack and self._is_ours(stack[-1], top) else None

    def _mount(self, volume: Volume, timeout: float, cancel: threading.Event) -> str:
        where = self._where()
        top = self._top()
        stack = _stack(read_mountinfo(), where)
        if stack:
            if self._is_ours(stack[-1], top):
                return f"{volume.data} was already mounted on {where}"
            raise BtrfsError(f"{stack[-1].describe()} is mounted on {where}; unmount it, or "
                             "choose another mount_point")
        if os.path.islink(where):
            raise BtrfsError(f"mount_point {where} is a symbolic link; give the real path")
        try:
            os.makedirs(where, exist_ok=True)
        except OSError as exc:
            raise BtrfsError(f"cannot create {where}: {exc.strerror or exc}") from exc
        ran = _run(["mount", "--bind", str(volume.data), where], timeout, cancel)
        if not ran.ok:
            raise BtrfsError(f"mount --bind {volume.data} {where} failed"
                             f"{': ' + ran.tail(2) if ran.tail(2) else ''}")
        return f"mounted {volume.data} on {where}"

    def _unmount(self, force: bool, deadline: float) -> str | None:
        """Unmount ours from the mount point (killing its users when forced or busy for half
        the stop timeout); None when done, else why not."""
        where = self._where()
        try:
            top = self._top()
        except BtrfsError:
            return None  # the top level is not mounted: neither is a subvolume of it here
        patience = time.monotonic() + (0.0 if force else self.config.stop_timeout / 2)
        killed = False
        while True:
            stack = _stack(read_mountinfo(), where)
            if not any(self._is_ours(m, top) for m in stack):
                return None
            if not self._is_ours(stack[-1], top):
                return f"{stack[-1].describe()} is mounted over {where}; unmount it first"
            ran = _run(["umount", where], max(1.0, deadline - time.monotonic()))
            if ran.ok:
                continue
            if time.monotonic() >= deadline:
                return f"cannot unmount {where}: {ran.tail(2) or 'busy'}"
            if time.monotonic() >= patience and not killed:
                # by path only: files of a btrfs subvolume carry a device number of its own
                holders = [h for h in find_holders(where) if h.pid not in (os.getpid(), 1)]
                if holders:
                    log.warning("mirror %s: killing the users of %s: %s", self.name, where,
                                "; ".join(h.describe() for h in holders))
                    survivors = _kill(holders)
                    if survivors:
                        return (f"cannot unmount {where}: pid "
                                f"{', '.join(map(str, survivors))} survived SIGKILL")
                killed = True
            time.sleep(_RETRY)
