"""A group with mirrored data on a namespace cluster, for the mirror system tests and the
benchmark: a ``mirror`` resource on each host's own btrfs (:meth:`NsCluster.add_disks`) and the
numbered-records writer (:mod:`tests.support.records`) as its application.

What a host holds is read from the test process through the host's keeper
(:meth:`~tests.support.nscluster.Host.inside`): the data the application sees, and the
snapshots in the snapshot directory. A snapshot counts as a *copy* here only if it is
complete by the rule of :mod:`vigil.resources.btrfs` as far as a directory listing shows it
(no ``.receiving.<name>`` marker beside it, not set aside); :meth:`MirrorGroup.volume` asks
the host itself (``python -m tests.support.mirrors``, :class:`~vigil.resources.btrfs.Volume`
inside the host) for the full answer: read-only, complete, partial, set aside.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tests.support import records
from tests.support.nscluster import NsCluster, NsClusterError
from tests.support.poller import Poller

__all__ = ["Copy", "CopyWatch", "MirrorGroup"]

REPO: Final = Path(__file__).resolve().parents[2]
GROUP: Final = "db"
RESOURCE: Final = "db-data"
WRITER: Final = "db-writer"
SUBVOLUME: Final = "db"
SNAPSHOTS: Final = ".snapshots"
_MARKER: Final = ".receiving."
_NAME_RE: Final = re.compile(rf"^{SUBVOLUME}\.([A-Za-z0-9_-]+)\.(\d+)$")


@dataclass(frozen=True)
class Copy:
    """A complete snapshot on a host, and the records it holds."""

    name: str
    source: str  # the node that took it
    seq: int
    found: records.Found


class MirrorGroup:
    """Group ``db``: mirror resource ``db-data`` (on ``<tmp>/mirror``, data seen at
    ``<tmp>/db``) and the writer ``db-writer`` appending records there (acks in
    ``<tmp>/acks``)."""

    def __init__(self, cluster: NsCluster, *, disk_mb: int = 256) -> None:
        self.c = cluster
        self.root = cluster.tmp / "mirror"
        self.data = cluster.tmp / "db"
        self.acks = cluster.tmp / "acks"
        self.acks.mkdir(exist_ok=True)
        self.data.mkdir(exist_ok=True)
        cluster.add_disks(self.root, size_mb=disk_mb)

    def config(self, *, interval: str = "200ms", max_lag: str = "5s", keep: int = 10,
               bandwidth: str | None = None, prefer: str = "n1 = 0, n2 = 10, n3 = 10",
               writer_period: float = 0.005, writer: bool = True) -> str:
        """The ``[groups.db]`` and ``[resources.*]`` tables."""
        limit = f'bandwidth = "{bandwidth}"\n' if bandwidth else ""
        resources = f'["{RESOURCE}", "{WRITER}"]' if writer else f'["{RESOURCE}"]'
        text = f"""
[groups.{GROUP}]
resources = {resources}
prefer = {{ {prefer} }}

[resources.{RESOURCE}]
type = "mirror"
start_timeout = "30s"
stop_timeout = "30s"
monitor = {{ interval = "1s", timeout = "10s" }}
[resources.{RESOURCE}.params]
root = "{self.root}"
subvolume = "{SUBVOLUME}"
mount_point = "{self.data}"
interval = "{interval}"
keep = {keep}
max_lag = "{max_lag}"
{limit}"""
        if writer:
            text += f"""
[resources.{WRITER}]
type = "application"
depends_on = ["{RESOURCE}"]
stop_timeout = "5s"
monitor = {{ interval = "1s", timeout = "5s" }}
[resources.{WRITER}.params]
start = "{sys.executable} {records.__file__} {self.data} {self.acks} {writer_period}"
"""
        return text

    def start(self, *, links_online_timeout: float = 60, **options: Any) -> str:
        """Write the configuration, start every daemon, wait for the group to run and the
        writer to acknowledge its first records; the holder."""
        self.c.write_config(self.config(**options))
        self.c.start_all()
        holder: str = self.c.wait_for(lambda: self.c.holder(GROUP), links_online_timeout,
                                      f"group {GROUP} running on one host")
        if options.get("writer", True):
            self.c.wait_for(lambda: self.last_ack(holder), 30, f"the writer on {holder}")
        return holder

    # -- the writer ---------------------------------------------------------------------------

    def last_ack(self, node: str) -> records.Ack | None:
        return records.last_ack(self.acks, node)

    def acked(self, node: str) -> list[records.Ack]:
        return records.acks(self.acks, node)

    def data_records(self, host: str) -> records.Found | None:
        """The records file the application sees on ``host``."""
        return records.read(self.c.hosts[host].inside(self.data / records.RECORDS))

    # -- copies -------------------------------------------------------------------------------

    def copies(self, host: str, source: str | None = None) -> list[tuple[str, str, int]]:
        """(name, source, seq) of each complete snapshot on ``host`` (of ``source``'s history
        if given), oldest first."""
        directory = self.c.hosts[host].inside(self.root / SNAPSHOTS)
        try:
            names = set(os.listdir(directory))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            m = _NAME_RE.match(name)
            if m is None or f"{_MARKER}{name}" in names:
                continue
            if source is None or m.group(1) == source:
                found.append((name, m.group(1), int(m.group(2))))
        return sorted(found, key=lambda x: x[2])

    def newest(self, host: str, source: str | None = None) -> Copy | None:
        """The newest complete snapshot on ``host`` and what it holds (None: none)."""
        for name, src, seq in reversed(self.copies(host, source)):
            snapshot = self.c.hosts[host].inside(self.root / SNAPSHOTS / name)
            try:
                found = records.read(snapshot / records.RECORDS)
            except OSError:
                found = None
            if found is None and not snapshot.is_dir():
                continue  # pruned or set aside meanwhile
            return Copy(name, src, seq, found or records.Found([], True))
        return None

    def newest_record(self, host: str) -> records.Record | None:
        """The last record in ``host``'s newest complete copy (cheap: reads its end only)."""
        for name, _, _ in reversed(self.copies(host)):
            snapshot = self.c.hosts[host].inside(self.root / SNAPSHOTS / name)
            try:
                return records.last_record(snapshot / records.RECORDS)
            except OSError:
                continue
        return None

    def newest_taken(self, host: str) -> float | None:
        """When the source took the newest snapshot ``host`` holds (None: none), from the
        resource's record beside the data (``<root>/.<subvolume>.taken.json``)."""
        try:
            taken = json.loads(self.c.hosts[host].inside(
                self.root / f".{SUBVOLUME}.taken.json").read_text())
        except (OSError, ValueError):  # none yet, or being replaced
            return None
        return max((float(t) for t in taken.values()), default=None)

    def wait_record(self, host: str, number: int, timeout: float) -> float:
        """Wait until ``host``'s newest copy holds record ``number``; when it was seen."""
        return self.wait_records([host], number, timeout)[host]

    def wait_records(self, hosts: Iterable[str], number: int, timeout: float
                     ) -> dict[str, float]:
        """Wait until the newest copy of each of ``hosts`` holds record ``number``; when each
        was first seen so (all polled together, every 10 ms)."""
        waiting = list(hosts)
        seen: dict[str, float] = {}

        def hold() -> bool:
            for h in waiting:
                if h not in seen:
                    record = self.newest_record(h)
                    if record is not None and record.number >= number:
                        seen[h] = time.time()
            return len(seen) == len(waiting)

        self.c.wait_for(hold, timeout, f"record {number} in a copy on {', '.join(waiting)}",
                        interval=0.01)
        return seen

    def volume(self, host: str) -> dict[str, Any]:
        """What ``host``'s :class:`Volume` says: ``snapshots`` (complete: name, node, seq,
        ident, taken), ``partial`` (paths), ``aside`` (names), ``data`` (whether the data
        subvolume exists)."""
        out = self.c.hosts[host].run(
            [sys.executable, "-m", "tests.support.mirrors", str(self.root), SUBVOLUME, host],
            cwd=REPO, timeout=60)
        if out.returncode != 0:
            raise NsClusterError(f"reading the volume on {host} failed: {out.stderr.strip()}")
        answer: dict[str, Any] = json.loads(out.stdout)
        return answer

    def status_mirror(self, host: str) -> dict[str, Any] | None:
        """The mirror resource's entry in ``host``'s status (None: none, or no answer)."""
        st = self.c.status(host)
        if st is None:
            return None
        entry = (st.get("mirrors") or {}).get(RESOURCE)
        return entry if isinstance(entry, dict) else None


class CopyWatch(Poller):
    """A context manager: a thread that notes when each complete snapshot first appears on
    ``hosts`` (polled every 10 ms), to tell what a host held at a given moment."""

    def __init__(self, mirror: MirrorGroup, hosts: Iterable[str]) -> None:
        super().__init__(0.01)
        self.mirror = mirror
        self.hosts = list(hosts)
        #: (host, snapshot name) -> (seq, source, when first seen complete)
        self.seen: dict[tuple[str, str], tuple[int, str, float]] = {}

    def poll(self) -> None:
        for h in self.hosts:
            try:
                copies = self.mirror.copies(h)
            except (OSError, NsClusterError):  # powered off meanwhile
                continue
            now = time.time()
            for name, source, seq in copies:
                self.seen.setdefault((h, name), (seq, source, now))

    def newest_before(self, host: str, moment: float, source: str) -> int:
        """The number of the newest snapshot of ``source``'s history complete on ``host``
        before ``moment`` (0: none)."""
        return max((seq for (h, _), (seq, src, at) in list(self.seen.items())
                    if h == host and src == source and at < moment), default=0)


def _describe(root: str, subvolume: str, node: str) -> dict[str, Any]:
    from vigil.resources.btrfs import Volume

    volume = Volume(root, subvolume, node)
    try:
        taken = json.loads((Path(root) / f".{subvolume}.taken.json").read_text())
    except (OSError, ValueError):
        taken = {}
    return {
        "snapshots": [{"name": s.name, "node": s.node, "seq": s.seq, "ident": s.ident,
                       "taken": taken.get(s.ident)} for s in volume.snapshots()],
        "partial": [str(p.path) for p in volume.partial()],
        "aside": [a.name for a in volume.aside()],
        "data": (Path(root) / subvolume).is_dir(),
    }


if __name__ == "__main__":
    print(json.dumps(_describe(*sys.argv[1:4])))
