"""Replication between peers that misbehave or share a link: two resources from one source,
a taken time no clock would give (a peer back after an outage: test_replication_btrfs.py); see
tests/system/test_replication_btrfs.py for the harness."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.loopfs import LoopFilesystem, in_own_mount_namespace, skip_unless_btrfs
from tests.system.test_btrfs import MIB, random_file, tree, write
from tests.system.test_replication_btrfs import (  # noqa: F401 (the fixture)
    HOST,
    KEY,
    NODES,
    Cluster,
    cluster,
    wait_for,
)
from vigil.resources.replication import MirrorService, MirrorSpec
from vigil.transports.keys import LinkKeys


@in_own_mount_namespace
def test_two_mirror_resources_on_one_source_both_reach_the_peer(tmp_path: Path) -> None:
    """Two mirror resources in service on alpha (say db and wal, or two groups there): each
    sends on its own channel, so the small resource's rounds (every 0.3 s) do not cut the big
    one's first, full, stream (one transfer per sender would: it would never arrive)."""
    skip_unless_btrfs()
    with ExitStack() as stack:
        roots = {n: stack.enter_context(LoopFilesystem(tmp_path, n, size_mb=384)).mount_point
                 for n in ("alpha", "beta")}
        endpoints = {n: (HOST, 0) for n in ("alpha", "beta")}
        services: dict[str, MirrorService] = {}
        for n in ("alpha", "beta"):
            specs = [MirrorSpec(r, roots[n], r, tmp_path / f"mnt-{r}", interval=0.3, keep=4,
                                bandwidth=(8 * MIB if r == "big" else None))
                     for r in ("big", "small")]
            keys = LinkKeys.derive([KEY.encode()], "test", {"alpha", "beta"}, n)
            service = MirrorService(n, specs, endpoints, keys, lambda _f: None)
            service.start()
            assert service.server is not None
            endpoints[n] = (HOST, service.server.port)
            services[n] = service
            stack.callback(service.close)
        for service in services.values():
            service.endpoints.update(endpoints)
        alpha = {r: services["alpha"].volume(r) for r in ("big", "small")}
        beta = {r: services["beta"].volume(r) for r in ("big", "small")}
        for volume in alpha.values():
            volume.create_data()
        random_file(alpha["big"].data / "blob", 24 * MIB)  # about 3 s at 8 MiB/s
        write(alpha["small"].data / "counter", b"0\n")
        for r in ("big", "small"):
            services["alpha"].go_live(r, 10.0)
            replicator = services["alpha"].replicator(r)
            replicator.start()
            stack.callback(replicator.stop)

        def has(r: str) -> bool:
            held = beta[r].snapshots()
            return bool(held) and tree(held[-1].path) == tree(alpha[r].data)

        wait_for("beta has the small resource", lambda: has("small"))
        wait_for("beta has the big resource (3 s of stream at 8 MiB/s)", lambda: has("big"),
                 timeout=45.0)


@in_own_mount_namespace
def test_the_receiver_refuses_a_taken_time_it_cannot_believe(cluster: Cluster) -> None:  # noqa: F811
    """A sender's header says when the snapshot was taken: a day ahead of beta's clock (a
    clock gone wrong, or a buggy sender) is refused with the reason, and beta keeps nothing
    of it (recorded, that copy would outrank every other in placement; an infinite time
    would wedge every round: tests/unit/test_mirror_review.py)."""
    import io

    from vigil.transports.stream import StreamError, send_stream

    alpha = cluster.volume("alpha")
    alpha.create_data()
    write(alpha.data / "records", b"record 1\n")
    snapshot = alpha.snapshot()
    buffer = io.BytesIO()
    alpha.send(snapshot, None, buffer, timeout=60.0)
    keys = LinkKeys.derive([KEY.encode()], "test", set(NODES), "alpha")
    for taken, says in ((time.time() + 86400.0, "ahead of beta's clock"),
                        (float("inf"), "no time")):
        buffer.seek(0)
        header = {"resource": "db-data", "name": snapshot.name, "parent": None,
                  "taken": taken, "source": "alpha", "idents": [snapshot.ident]}
        with pytest.raises(StreamError, match=says):
            send_stream("beta", cluster.endpoints["beta"], header, buffer, keys=keys,
                        source_address=HOST, timeout=30.0)
    assert cluster.volume("beta").snapshots() == []
