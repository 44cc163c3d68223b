"""Btrfs replication through the authenticated stream transport: ``Volume.send`` on one
"node" -> :func:`vigil.transports.stream.send_stream` -> :class:`StreamServer` ->
``Volume.receive`` on the other, over loopback CurveZMQ, between two loop btrfs filesystems
(the fixture of tests/system/test_btrfs.py). Skips without root or btrfs. Throughput is
printed (``pytest -s``), never asserted."""

from __future__ import annotations

import os
import threading
from typing import BinaryIO, cast

from tests.support.loopfs import in_own_mount_namespace
from tests.system.test_btrfs import MIB, Nodes, random_file, tree, write
from tests.system.test_btrfs import nodes as nodes  # the fixture
from vigil.resources.btrfs import Snapshot, Volume, common, idents
from vigil.transports.keys import LinkKeys
from vigil.transports.stream import Sent, StreamReader, StreamServer, send_stream

CLUSTER_KEY = b"0123456789abcdef0123456789abcdef"
HOST = "127.0.0.1"
TIMEOUT = 120.0


def keys_for(name: str) -> LinkKeys:
    return LinkKeys.derive([CLUSTER_KEY], "test", {"alpha", "beta"}, name)


class Storing:
    """beta's receiving callback: btrfs receive of each stream into ``volume``."""

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.received: list[Snapshot] = []

    def __call__(self, sender: str, header: dict[str, object], reader: StreamReader) -> None:
        # StreamReader has the read/read1 that Volume.receive uses
        self.received.append(self.volume.receive(cast(BinaryIO, reader), timeout=TIMEOUT))


def replicate(source: Volume, server: StreamServer, snapshot: Snapshot,
              parent: Snapshot | None) -> Sent:
    """btrfs send of ``snapshot`` piped into the stream to beta's server."""
    read_end, write_end = os.pipe()
    errors: list[BaseException] = []

    def produce() -> None:
        with open(write_end, "wb", buffering=0) as out:
            try:
                source.send(snapshot, parent, out, timeout=TIMEOUT)
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=produce, name="btrfs-send")
    thread.start()
    try:
        with open(read_end, "rb", buffering=0) as stream:
            sent = send_stream("beta", (HOST, server.port),
                               {"name": snapshot.name, "parent": parent and parent.name},
                               stream, keys=keys_for("alpha"), source_address=HOST,
                               timeout=TIMEOUT)
    finally:
        thread.join(TIMEOUT + 10)
    assert not errors, errors
    return sent


@in_own_mount_namespace
def test_send_stream_receive_between_two_btrfs_filesystems(nodes: Nodes) -> None:
    alpha, beta = nodes.alpha, nodes.beta
    storing = Storing(beta)
    with StreamServer((HOST, 0), {"alpha": HOST}, "beta", storing,
                      keys=keys_for("beta")) as server:
        write(alpha.data / "config.txt", b"version 1\n")
        random_file(alpha.data / "big", 64 * MIB)
        first = alpha.snapshot()
        full = replicate(alpha, server, first, None)
        assert len(storing.received) == 1
        assert tree(storing.received[0].path) == tree(first.path)
        print(f"\nfull stream of 64 MiB of data: {full.size / MIB:.1f} MiB in "
              f"{full.seconds:.2f} s ({full.size / MIB / full.seconds:.0f} MiB/s)")

        write(alpha.data / "config.txt", b"version 2\n")
        random_file(alpha.data / "more", 8 * MIB)
        second = alpha.snapshot()
        parent = common(alpha.snapshots(), idents(beta.snapshots()))
        assert parent is not None and parent.name == first.name
        step = replicate(alpha, server, second, parent)
        assert len(storing.received) == 2
        assert tree(storing.received[1].path) == tree(second.path)
        assert step.size < full.size  # incremental: only the changes travelled
        print(f"incremental stream: {step.size / MIB:.1f} MiB in {step.seconds:.2f} s")
