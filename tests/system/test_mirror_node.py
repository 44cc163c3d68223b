"""A node runtime with a mirror resource (the daemon's wiring): it runs the receiver on its
replication endpoint, hands the resource its service, and its coordinator hears what the
replication finds. alpha runs as a node (memory links, a quorum of its own) with its own loop
btrfs; beta is only a receiver, on another loop btrfs (one mount namespace holds both, so
they cannot share the configured root). Skips without root or btrfs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.support.cluster_harness import MemoryCluster, cluster_toml, wait_for
from tests.support.loopfs import LoopFilesystem, in_own_mount_namespace, skip_unless_btrfs
from tests.system.test_btrfs import tree, write
from vigil.actors.messages import ChildFailed
from vigil.cluster.mirrors import MirrorLag, MirrorState
from vigil.config import load_key, loads
from vigil.resources.btrfs import Volume
from vigil.resources.replication import MirrorService, MirrorSpec
from vigil.transports.keys import LinkKeys, key_ring

WAIT = 30.0


@in_own_mount_namespace
def test_a_node_with_a_mirror_resource_replicates_and_reports(tmp_path: Path) -> None:
    skip_unless_btrfs()
    with LoopFilesystem(tmp_path, "alpha", size_mb=256) as a, \
            LoopFilesystem(tmp_path, "beta", size_mb=256) as b:
        mount_point = tmp_path / "db"
        groups = f"""
[groups.db]
resources = ["db-data"]

[resources.db-data]
type = "mirror"
params = {{ root = "{a.mount_point}", mount_point = "{mount_point}", interval = "0.3s" }}
monitor = {{ interval = "500ms", timeout = "5s" }}
"""
        text = cluster_toml(tmp_path, nodes=("alpha", "beta"), groups=groups)
        # alpha alone is a quorum: beta here is only a receiver
        text = text.replace("[nodes.alpha]\n", "[nodes.alpha]\nvotes = 2\n")
        text = text.replace("[cluster]\n", "[cluster]\ntwo_node = false\n")
        cfg = loads(text, tmp_path / "cluster.toml")
        key = load_key(cfg)
        beta_end = cfg.nodes["beta"].replication_endpoint
        assert beta_end == ("127.0.0.1", cfg.nodes["beta"].links[0].port + 20)
        heard: list[object] = []
        beta = MirrorService(
            "beta", [MirrorSpec("db-data", b.mount_point, "db-data", tmp_path / "unused")],
            {n: c.replication_endpoint for n, c in cfg.nodes.items()},
            LinkKeys.derive(key_ring(key), cfg.name, cfg.node_names, "beta"), heard.append)
        beta.start()
        cluster = MemoryCluster(cfg, key)
        try:
            runtime = cluster.start("alpha")
            assert runtime.mirrors is not None and runtime.mirrors.server is not None
            assert runtime.mirrors.server.port == cfg.nodes["alpha"].replication_endpoint[1]
            wait_for(lambda: os.path.ismount(mount_point), WAIT, "db-data mounted on alpha")
            write(mount_point / "records", b"record 1\n")
            received = Volume(b.mount_point, "db-data", "beta")
            wait_for(lambda: (s := received.snapshots()) and tree(s[-1].path) == {
                "records": b"record 1\n"}, WAIT, "beta receives alpha's write")
            wait_for(lambda: any(isinstance(f, MirrorState) and f.copy is not None
                                 and f.copy.source == "alpha" for f in heard), WAIT,
                     "beta reports its copy of alpha's data")
            coordinator: Any = runtime.coordinator().proxy()
            wait_for(lambda: (lag := coordinator.core.get().mirror_lags.get("db-data"))
                     is not None and isinstance(lag, MirrorLag)
                     and lag.lags.get("beta") is not None, WAIT,
                     "alpha's coordinator hears beta's lag")
            mine = coordinator.core.get().mirrors.get("db-data")
            assert isinstance(mine, MirrorState) and mine.copy is not None and mine.copy.live
            # out of service, alpha's copy is idle: nothing reports it again by itself...
            assert runtime.control("oo_service", resource="db-data")["ok"]
            wait_for(lambda: isinstance(m := coordinator.core.get().mirrors.get("db-data"),
                                        MirrorState) and m.copy is not None and not m.copy.live,
                     WAIT, "alpha's copy no longer live")
            # ... yet a coordinator started again after a failure hears what alpha holds
            old = runtime.coordinator()
            old.stop()
            assert runtime.ref is not None
            runtime.ref.tell(ChildFailed("coordinator", "a test stopped it"))
            wait_for(lambda: runtime.coordinator() is not old, WAIT, "a new coordinator")
            again: Any = runtime.coordinator().proxy()
            wait_for(lambda: isinstance(m := again.core.get().mirrors.get("db-data"),
                                        MirrorState) and m.copy is not None, WAIT,
                     "the new coordinator hears alpha's copy")
        finally:
            cluster.stop()
            beta.close()
