"""Btrfs snapshot replication (vigil.resources.btrfs) on real btrfs filesystems.

Each test runs in a mount namespace of its own (tests/support/loopfs.py) and makes two btrfs
filesystems on loop devices there, one per "node", mounted under its tmp_path.
Streams go from one node to the other through a pipe, the sender in a thread. Skips without
root, btrfs-progs or the kernel's btrfs. Throughput figures are printed (``pytest -s``); no
test asserts a speed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from tests.support.loopfs import LoopFilesystem, in_own_mount_namespace, skip_unless_btrfs
from vigil.resources import proc
from vigil.resources.btrfs import (
    BtrfsError,
    ParentMissing,
    Snapshot,
    Volume,
    common,
    diverged,
    idents,
)

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
WAIT = 30.0


@dataclass
class Nodes:
    alpha: Volume
    beta: Volume
    devices: dict[str, str]  # node -> loop device
    tmp: Path


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    """Two 512 MiB btrfs filesystems, alpha's with a data subvolume."""
    skip_unless_btrfs()
    with LoopFilesystem(tmp_path, "alpha", size_mb=512) as a, \
            LoopFilesystem(tmp_path, "beta", size_mb=512) as b:
        alpha = Volume(a.mount_point, "data", "alpha")
        beta = Volume(b.mount_point, "data", "beta")
        assert alpha.create_data()
        assert not alpha.create_data()
        yield Nodes(alpha, beta, {"alpha": a.device, "beta": b.device}, tmp_path)


@dataclass
class Transfer:
    received: Snapshot | None
    receive_error: BtrfsError | None
    sent: int | None
    send_error: BtrfsError | None
    seconds: float


def transfer(source: Volume, target: Volume, snapshot: Snapshot, parent: Snapshot | None,
             *, timeout: float = 120.0) -> Transfer:
    """Send ``snapshot`` from ``source`` through a pipe into ``target``; both sides' results."""
    read_end, write_end = os.pipe()
    sent: list[int] = []
    send_errors: list[BtrfsError] = []

    def sender() -> None:
        with open(write_end, "wb", buffering=0) as out:  # nothing left to flush at close
            try:
                sent.append(source.send(snapshot, parent, out, timeout=timeout))
            except BtrfsError as exc:
                send_errors.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=sender, name="btrfs-sender")
    thread.start()
    received, receive_error = None, None
    try:
        with open(read_end, "rb") as stream:
            received = target.receive(stream, timeout=timeout)
    except BtrfsError as exc:
        receive_error = exc
    finally:
        thread.join(timeout + 10)
    assert not thread.is_alive(), "the sender did not finish"
    return Transfer(received, receive_error, sent[0] if sent else None,
                    send_errors[0] if send_errors else None, time.monotonic() - started)


def replicate(source: Volume, target: Volume, snapshot: Snapshot) -> Snapshot:
    """Send ``snapshot`` incrementally from the newest snapshot both have (else in full)."""
    parent = common(source.snapshots(), idents(target.snapshots()))
    done = transfer(source, target, snapshot, parent)
    assert done.receive_error is None and done.send_error is None, (
        done.receive_error, done.send_error)
    assert done.received is not None
    return done.received


def tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative path -> contents); directories as b"<dir>"."""
    found: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            found[relative] = b"-> " + os.readlink(path).encode()
        elif path.is_dir():
            found[relative] = b"<dir>"
        else:
            found[relative] = path.read_bytes()
    return found


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def random_file(path: Path, size: int) -> str:
    """Write ``size`` incompressible bytes; their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size // MIB):
            chunk = os.urandom(MIB)
            digest.update(chunk)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def markers(volume: Volume) -> list[str]:
    if not volume.snapshot_dir.exists():
        return []
    return sorted(n for n in os.listdir(volume.snapshot_dir) if n.startswith(".receiving."))


def big_stream(nodes: Nodes, mib: int) -> tuple[Snapshot, Path, int]:
    """A snapshot on alpha of a file of ``mib`` MiB, its full stream in a file, the size."""
    random_file(nodes.alpha.data / "big", mib * MIB)
    snapshot = nodes.alpha.snapshot()
    stream = nodes.tmp / "full.stream"
    with stream.open("wb") as out:
        return snapshot, stream, nodes.alpha.send(snapshot, None, out, timeout=120)


# -- full and incremental ----------------------------------------------------------------------


@in_own_mount_namespace
def test_full_then_incremental_send_receive_copies_the_data(nodes: Nodes) -> None:
    alpha, beta = nodes.alpha, nodes.beta
    write(alpha.data / "config.txt", b"version 1\n")
    write(alpha.data / "db" / "records", b"".join(b"record %d\n" % i for i in range(1000)))
    write(alpha.data / "old-name", b"renamed later")
    write(alpha.data / "gone", b"deleted later")
    os.symlink("config.txt", alpha.data / "link")
    first = alpha.snapshot()
    assert (first.name, first.node, first.seq) == ("data.alpha.1", "alpha", 1)
    assert not first.received and first.ident == first.uuid

    full = transfer(alpha, beta, first, None)
    assert full.receive_error is None and full.send_error is None
    assert full.received is not None and full.sent is not None and full.sent > 0
    copy = full.received
    assert (copy.name, copy.node, copy.seq) == ("data.alpha.1", "alpha", 1)
    assert copy.received and copy.received_uuid == first.uuid and copy.ident == first.ident
    assert copy.uuid != first.uuid
    assert tree(copy.path) == tree(first.path)
    with pytest.raises(OSError) as refused:
        write(copy.path / "intruder", b"x")
    assert refused.value.errno == errno.EROFS  # a received snapshot is read-only
    assert markers(beta) == [] and beta.partial() == []

    write(alpha.data / "config.txt", b"version 2\n")
    with (alpha.data / "db" / "records").open("ab") as f:
        f.write(b"record 1000\n")
    (alpha.data / "old-name").rename(alpha.data / "new-name")
    (alpha.data / "gone").unlink()
    write(alpha.data / "new" / "file", b"new")
    second = alpha.snapshot()
    assert second.seq == 2
    assert common(alpha.snapshots(), idents(beta.snapshots())) == first
    incremental = transfer(alpha, beta, second, first)
    assert incremental.receive_error is None and incremental.send_error is None
    assert incremental.received is not None and incremental.sent is not None
    assert incremental.sent < full.sent  # only the changes travelled
    assert tree(incremental.received.path) == tree(second.path)
    assert "gone" not in tree(incremental.received.path)
    assert tree(beta.snapshot_dir / first.name) == tree(first.path)  # the parent is untouched
    assert [s.name for s in beta.snapshots()] == ["data.alpha.1", "data.alpha.2"]
    assert [s.ident for s in beta.snapshots()] == [first.ident, second.ident]


@in_own_mount_namespace
def test_throughput_of_a_full_and_an_incremental_64_mib_transfer(nodes: Nodes) -> None:
    alpha, beta = nodes.alpha, nodes.beta
    big = random_file(alpha.data / "big", 64 * MIB)
    first = alpha.snapshot()
    full = transfer(alpha, beta, first, None)
    assert full.received is not None and full.sent is not None, full
    assert sha256(full.received.path / "big") == big

    more = random_file(alpha.data / "more", 64 * MIB)
    with (alpha.data / "big").open("r+b") as f:  # and 1 MiB rewritten in the middle
        f.seek(32 * MIB)
        f.write(os.urandom(MIB))
    big = sha256(alpha.data / "big")
    second = alpha.snapshot()
    incremental = transfer(alpha, beta, second, first)
    assert incremental.received is not None and incremental.sent is not None, incremental
    assert sha256(incremental.received.path / "more") == more
    assert sha256(incremental.received.path / "big") == big

    for what, done in (("full", full), ("incremental", incremental)):
        assert done.sent is not None
        print(f"\nbtrfs {what} send/receive through a pipe (64 MiB of new data, synced on "
              f"the receiver): {done.sent / MIB:.1f} MiB in {done.seconds:.2f} s, "
              f"{done.sent / MIB / done.seconds:.0f} MiB/s")


# -- pruning --------------------------------------------------------------------------------


@in_own_mount_namespace
def test_prune_keeps_the_newest_and_the_parent_the_receiver_needs(nodes: Nodes) -> None:
    alpha, beta = nodes.alpha, nodes.beta
    taken = []
    for i in range(1, 3):
        write(alpha.data / "n", b"%d" % i)
        taken.append(alpha.snapshot())
        replicate(alpha, beta, taken[-1])
    for i in range(3, 8):  # beta is away: alpha goes on alone
        write(alpha.data / "n", b"%d" % i)
        taken.append(alpha.snapshot())
    needed = common(alpha.snapshots(), idents(beta.snapshots()))
    assert needed == taken[1]

    deleted = alpha.prune(2, protect={needed.ident})
    assert [s.name for s in deleted] == [s.name for s in (taken[0], *taken[2:5])]
    assert [s.name for s in alpha.snapshots()] == [s.name for s in (taken[1], *taken[5:])]
    assert not taken[0].path.exists()

    # The next incremental still has its parent on both sides.
    copy = replicate(alpha, beta, alpha.snapshots()[-1])
    assert (copy.path / "n").read_bytes() == b"7"
    assert [s.name for s in beta.prune(1)] == ["data.alpha.1", "data.alpha.2"]
    assert [s.name for s in beta.snapshots()] == ["data.alpha.7"]
    assert alpha.prune(5) == []
    with pytest.raises(ValueError, match="at least 1"):
        alpha.prune(0)
    # Numbers are never reused, whatever was pruned.
    assert alpha.snapshot().seq == 8


# -- interrupted receives -----------------------------------------------------------------------


def mentioning(path: Path) -> list[int]:
    """The processes whose command line mentions ``path``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(path).encode() in Path(entry.path, "cmdline").read_bytes():
                    found.append(int(entry.name))
    return [pid for pid in found if proc.pid_alive(pid)]


def feed_then_kill(argv: list[str], stream: Path, count: int,
                   ready: Callable[[], bool], directory: Path) -> None:
    """Run ``argv`` with the first ``count`` bytes of ``stream`` on its stdin (held open),
    wait until ``ready()``, then SIGKILL its process group and wait until no process that
    names ``directory`` is left (the daemon's btrfs receive dies with it)."""
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True, cwd=REPO,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert child.stdin is not None
    try:
        with stream.open("rb") as f:
            child.stdin.write(f.read(count))
            child.stdin.flush()
        assert proc.wait_until(ready, WAIT), "the receive did not get going"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(WAIT)
        assert proc.wait_until(lambda: not proc.group_members(child.pid), WAIT)
        assert proc.wait_until(lambda: not mentioning(directory), WAIT), mentioning(directory)
        with contextlib.suppress(OSError):
            child.stdin.close()


def named(volume: Volume, name: str) -> bool:
    return any(s.name == name for s in volume.subvolumes())


@in_own_mount_namespace
def test_a_receive_killed_mid_stream_leaves_nothing_complete_and_cleanup_removes_it(
        nodes: Nodes) -> None:
    beta = nodes.beta
    snapshot, stream, size = big_stream(nodes, 64)
    assert size > 64 * MIB

    # btrfs receive itself killed a quarter of the way: a writable subvolume without a
    # received UUID is left, and nothing reports it as a snapshot.
    beta._make_snapshot_dir()
    feed_then_kill(["btrfs", "receive", str(beta.snapshot_dir)], stream, size // 4,
                   lambda: named(beta, snapshot.name), beta.snapshot_dir)
    (left,) = [s for s in beta.subvolumes() if s.name == snapshot.name]
    assert not left.read_only and left.received_uuid is None
    assert beta.snapshots() == []
    assert [s.name for s in beta.partial()] == [snapshot.name]
    assert beta.cleanup_partial() == [snapshot.name]
    assert beta.partial() == [] and not named(beta, snapshot.name)
    assert beta.cleanup_partial() == []

    # A daemon killed while its receive() ran (btrfs receive dies with it): the marker and
    # the subvolume stay; neither counts, and cleanup removes both.
    script = ("import sys; from vigil.resources.btrfs import Volume; "
              f"Volume({str(beta.root)!r}, 'data', 'beta').receive(sys.stdin.buffer, "
              "timeout=120)")
    feed_then_kill([sys.executable, "-c", script], stream, size // 2,
                   lambda: named(beta, snapshot.name), beta.snapshot_dir)
    assert markers(beta) == [f".receiving.{snapshot.name}"]
    assert beta.snapshots() == []
    assert [s.name for s in beta.partial()] == [snapshot.name]
    assert beta.cleanup_partial() == [snapshot.name]
    assert markers(beta) == [] and not named(beta, snapshot.name)

    # A stream that ends early (the sender died): receive() fails and cleans up at once.
    truncated = nodes.tmp / "truncated.stream"
    with stream.open("rb") as f:
        truncated.write_bytes(f.read(size // 3))
    with truncated.open("rb") as f, pytest.raises(BtrfsError) as failed:
        beta.receive(f, timeout=60)
    message = str(failed.value)
    assert f"btrfs receive of {snapshot.name} into {beta.snapshot_dir} failed" in message
    assert "was deleted" in message and "send it again" in message
    assert beta.subvolumes() == [] and markers(beta) == []

    # After all that, the whole stream is received as if nothing had happened.
    with stream.open("rb") as f:
        copy = beta.receive(f, timeout=120)
    assert sha256(copy.path / "big") == sha256(snapshot.path / "big")


@in_own_mount_namespace
def test_cleanup_leaves_a_receive_in_progress_alone(nodes: Nodes) -> None:
    beta = nodes.beta
    snapshot, stream, size = big_stream(nodes, 32)
    read_end, write_end = os.pipe()
    results: list[Snapshot | BaseException] = []

    def receiver() -> None:
        try:
            with open(read_end, "rb") as f:
                results.append(beta.receive(f, timeout=120))
        except BaseException as exc:
            results.append(exc)

    thread = threading.Thread(target=receiver, name="btrfs-receiver")
    thread.start()
    with open(write_end, "wb") as pipe, stream.open("rb") as f:
        pipe.write(f.read(size // 2))
        pipe.flush()
        assert proc.wait_until(lambda: named(beta, snapshot.name), WAIT)
        assert beta.cleanup_partial() == []
        assert [s.name for s in beta.partial()] == [snapshot.name]
        assert beta.snapshots() == []
        pipe.write(f.read())
    thread.join(WAIT)
    (copy,) = results
    assert isinstance(copy, Snapshot), copy
    assert sha256(copy.path / "big") == sha256(snapshot.path / "big")
    assert beta.partial() == [] and markers(beta) == []


class SlowReader:
    """A stream that hands out ``chunk`` bytes every ``pause`` seconds."""

    def __init__(self, path: Path, chunk: int, pause: float) -> None:
        self.file = path.open("rb")
        self.chunk = chunk
        self.pause = pause

    def read(self, size: int = -1) -> bytes:
        time.sleep(self.pause)
        return self.file.read(min(self.chunk, size if size >= 0 else self.chunk))


class SlowWriter:
    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.written = 0

    def write(self, data: bytes) -> int:
        time.sleep(self.pause)
        self.written += len(data)
        return len(data)


@in_own_mount_namespace
def test_send_and_receive_are_bounded_in_time(nodes: Nodes) -> None:
    alpha, beta = nodes.alpha, nodes.beta
    snapshot, stream, _ = big_stream(nodes, 16)

    slow = SlowReader(stream, 256 * 1024, 0.1)
    started = time.monotonic()
    with pytest.raises(BtrfsError) as late:
        beta.receive(cast(BinaryIO, slow), timeout=1.0)
    assert time.monotonic() - started < WAIT
    assert "did not finish within 1s" in str(late.value), late.value
    assert beta.subvolumes() == [] and markers(beta) == []

    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(BtrfsError, match="was cancelled"):
        beta.receive(cast(BinaryIO, SlowReader(stream, 256 * 1024, 0.1)), timeout=60,
                     cancel=cancel)
    assert beta.subvolumes() == [] and markers(beta) == []

    writer = SlowWriter(0.2)
    with pytest.raises(BtrfsError) as slow_send:
        alpha.send(snapshot, None, cast(BinaryIO, writer), timeout=1.0)
    assert "did not finish within 1s" in str(slow_send.value)
    assert f"btrfs send of {snapshot.path}" in str(slow_send.value)
    assert 0 < writer.written < 16 * MIB


# -- takeover and divergence ----------------------------------------------------------------


@in_own_mount_namespace
def test_promote_makes_a_writable_copy_with_the_data(nodes: Nodes) -> None:
    alpha, beta = nodes.alpha, nodes.beta
    write(alpha.data / "file", b"one")
    replicate(alpha, beta, alpha.snapshot())
    write(alpha.data / "file", b"two")
    newest = replicate(alpha, beta, alpha.snapshot())
    older = beta.snapshots()[0]

    # A data subvolume that does not come from the newest snapshot would start another
    # history: no snapshot is taken of it.
    assert beta.create_data()
    with pytest.raises(BtrfsError, match=r"does not continue from the newest snapshot here "
                                         r"\(data.alpha.2\).*promote data.alpha.2"):
        beta.snapshot()
    with pytest.raises(BtrfsError, match="newer snapshots are here"):
        beta.promote(older)
    promoted = beta.promote(newest)
    assert promoted.data == beta.data and promoted.set_aside is not None
    assert promoted.set_aside.name == "data.beta.3.data.aside"
    beta.discard(promoted.set_aside)
    assert (beta.data / "file").read_bytes() == b"two"
    write(beta.data / "file", b"three, written on beta")
    write(beta.data / "more", b"beta's own")
    assert (newest.path / "file").read_bytes() == b"two"  # the snapshot stays as it was
    data = next(s for s in beta.subvolumes() if s.path == "data")
    assert not data.read_only and data.received_uuid is None
    assert data.parent_uuid == newest.uuid

    # The node's own snapshots continue the numbering and are not received ones.
    taken = beta.snapshot()
    assert (taken.name, taken.received) == ("data.beta.3", False)
    assert tree(taken.path) == tree(beta.data)

    # Mounted where an application uses it, the data subvolume cannot be replaced.
    mnt = nodes.tmp / "app"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "subvol=data", nodes.devices["beta"], str(mnt)], check=True,
                   timeout=WAIT)
    try:
        with pytest.raises(BtrfsError, match=f"is mounted on {mnt}: unmount it first"):
            beta.promote(taken)
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=WAIT)

    # A data subvolume written after its last snapshot is set aside, not lost.
    write(beta.data / "after-the-snapshot", b"only here")
    again = beta.promote(taken)
    assert again.set_aside is not None and again.set_aside.writable
    assert again.set_aside.name == "data.beta.4.data.aside"
    assert (again.set_aside.path / "after-the-snapshot").read_bytes() == b"only here"
    assert not (beta.data / "after-the-snapshot").exists()
    assert [a.name for a in beta.aside()] == ["data.beta.4.data.aside"]
    assert beta.snapshot().seq == 5


@in_own_mount_namespace
def test_the_old_sources_diverged_snapshots_are_found_and_kept_aside(nodes: Nodes) -> None:
    alpha, beta = nodes.alpha, nodes.beta
    for text in (b"1", b"2"):
        write(alpha.data / "log", text)
        replicate(alpha, beta, alpha.snapshot())
    # beta loses alpha, which goes on writing and snapshotting on its own...
    write(alpha.data / "log", b"2, then alpha alone")
    alone = alpha.snapshot()
    write(alpha.data / "after", b"written on alpha after its last snapshot")
    # ...while beta takes over from the newest copy it has and goes on.
    beta.promote(beta.snapshots()[-1])
    write(beta.data / "log", b"2, then beta")
    beta.snapshot()
    write(beta.data / "log", b"2, then beta, more")
    beta.snapshot()

    # alpha comes back: beta is the source now.
    source = idents(beta.snapshots())
    assert [s.name for s in diverged(alpha.snapshots(), source)] == ["data.alpha.3"]
    last_common = common(alpha.snapshots(), source)
    assert last_common is not None and last_common.name == "data.alpha.2"
    parent = common(beta.snapshots(), idents(alpha.snapshots()))
    assert parent is not None and parent.ident == last_common.ident

    # Until they are set aside, beta's history cannot be received on top of alpha's own.
    refused = transfer(beta, alpha, beta.snapshots()[-2], parent)
    assert refused.receive_error is not None
    assert "has later snapshots (data.alpha.3)" in str(refused.receive_error)
    assert "set them aside" in str(refused.receive_error)

    aside = alpha.set_aside(alone)
    data_aside = alpha.set_aside_data()
    assert data_aside is not None
    assert [a.name for a in alpha.aside()] == ["data.alpha.3.aside", "data.alpha.4.data.aside"]
    for snapshot in beta.snapshots()[-2:]:
        replicate(beta, alpha, snapshot)
    assert [s.name for s in alpha.snapshots()] == [
        "data.alpha.1", "data.alpha.2", "data.beta.3", "data.beta.4"]
    assert diverged(alpha.snapshots(), idents(beta.snapshots())) == []
    assert (alpha.snapshots()[-1].path / "log").read_bytes() == b"2, then beta, more"

    # What alpha wrote alone is still there, never pruned, until the operator discards it.
    assert (aside.path / "log").read_bytes() == b"2, then alpha alone"
    assert (data_aside.path / "after").read_bytes() == b"written on alpha after its last snapshot"
    alpha.prune(1)
    assert [s.name for s in alpha.snapshots()] == ["data.beta.4"]
    assert [a.name for a in alpha.aside()] == ["data.alpha.3.aside", "data.alpha.4.data.aside"]
    alpha.discard(aside)
    assert [a.name for a in alpha.aside()] == ["data.alpha.4.data.aside"]
    # A full stream is refused where snapshots are: they would not be its ancestors.
    full = transfer(beta, alpha, beta.snapshot(), None)
    assert full.receive_error is not None
    assert str(full.receive_error).startswith(
        f"a full stream of data.beta.5 cannot join {alpha.snapshot_dir}: it holds snapshots "
        "(data.beta.4) the sender does not build on")


@in_own_mount_namespace
def test_an_incremental_from_a_parent_the_receiver_lacks_fails_clearly(nodes: Nodes) -> None:
    alpha, beta = nodes.alpha, nodes.beta
    write(alpha.data / "file", b"one")
    first = alpha.snapshot()
    write(alpha.data / "file", b"two")
    random_file(alpha.data / "big", 8 * MIB)  # more than a pipe holds: the sender must wait
    second = alpha.snapshot()

    done = transfer(alpha, beta, second, first)
    error = done.receive_error
    assert isinstance(error, ParentMissing), error
    assert error.parent == first.ident and error.snapshot == second.name
    assert str(error) == (f"the stream of {second.name} is incremental from the snapshot "
                          f"{first.ident}, which {beta.snapshot_dir} does not have: send "
                          f"{second.name} in full")
    # The sender learns that the receiver stopped reading.
    assert done.send_error is not None and "the receiver stopped reading" in str(
        done.send_error)
    assert beta.subvolumes() == [] and markers(beta) == []

    full = transfer(alpha, beta, second, None)  # the fallback
    assert full.received is not None and (full.received.path / "file").read_bytes() == b"two"


@in_own_mount_namespace
def test_streams_that_do_not_continue_the_chain_are_refused(nodes: Nodes) -> None:
    alpha, beta = nodes.alpha, nodes.beta
    write(alpha.data / "file", b"one")
    first = alpha.snapshot()
    replicate(alpha, beta, first)
    write(alpha.data / "file", b"two")
    second = alpha.snapshot()
    replicate(alpha, beta, second)

    again = transfer(alpha, beta, second, first)
    assert again.receive_error is not None
    assert f"{beta.snapshot_dir / second.name} is already here (the same snapshot" in str(
        again.receive_error)

    other = Volume(alpha.root, "other", "alpha")
    other.create_data()
    foreign = other.snapshot()
    wrong = transfer(other, beta, foreign, None)
    assert wrong.receive_error is not None
    assert "carries the subvolume 'other.alpha.1', not a snapshot named data.<node>.<seq>" in (
        str(wrong.receive_error))
    assert [s.name for s in beta.snapshots()] == [first.name, second.name]


@in_own_mount_namespace
def test_a_volume_checks_its_mount(tmp_path: Path, nodes: Nodes) -> None:
    with pytest.raises(BtrfsError, match="is not a mount point"):
        Volume(tmp_path, "data", "alpha").snapshots()
    with pytest.raises(BtrfsError, match="not the top level: mount it with -o subvolid=5"):
        mnt = tmp_path / "sub"
        mnt.mkdir()
        subprocess.run(["mount", "-o", "subvol=data", nodes.devices["alpha"], str(mnt)],
                       check=True, timeout=WAIT)
        try:
            Volume(mnt, "data", "alpha").snapshots()
        finally:
            subprocess.run(["umount", str(mnt)], check=True, timeout=WAIT)
    with pytest.raises(ValueError, match="no dots"):
        Volume(tmp_path, "data", "alpha.one")
