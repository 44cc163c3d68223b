"""`vigil resource discard` and `vigil resource promote` (issue 14, point 4), the real CLI
against a real node runtime: alpha runs the group with a mirror resource on its own loop
btrfs, beta is only a receiver (on another loop btrfs) that takes over by hand. alpha goes on
writing after beta lost it; once beta is the source, alpha keeps its own snapshots aside. The
operator discards one of them, then promotes the newest, which alpha then serves again. Skips
without root or btrfs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.cluster_harness import MemoryCluster, wait_for
from tests.support.loopfs import LoopFilesystem, in_own_mount_namespace, skip_unless_btrfs
from tests.system.test_btrfs import tree, write
from tests.system.test_mirror_node import alpha_and_a_receiver
from vigil.cluster.mirrors import MirrorState
from vigil.config import load_key, loads
from vigil.resources.btrfs import Volume
from vigil.resources.replication import MirrorService, MirrorSpec
from vigil.transports.keys import LinkKeys, key_ring

REPO = Path(__file__).resolve().parents[2]
WAIT = 60.0
RESOURCE = "db-data"


@in_own_mount_namespace
def test_the_operator_discards_and_promotes_a_diverged_copy(tmp_path: Path) -> None:
    skip_unless_btrfs()
    with LoopFilesystem(tmp_path, "alpha", size_mb=256) as a, \
            LoopFilesystem(tmp_path, "beta", size_mb=256) as b:
        mount_point = tmp_path / "db"
        # beta is only a receiver, taking over by hand
        text = alpha_and_a_receiver(tmp_path, a.mount_point, mount_point,
                                    'stop_timeout = "8s"\n')
        config_path = tmp_path / "cluster.toml"
        config_path.write_text(text)
        cfg = loads(text, config_path)
        key = load_key(cfg)

        def vigil(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "vigil.cli.main", *args, "-c",
                                   str(config_path)], cwd=REPO, capture_output=True,
                                  text=True, timeout=200, check=False)

        def status() -> dict[str, Any]:
            shown = vigil("status", "--json", "--node", "alpha")
            assert shown.returncode == 0, shown.stderr
            return json.loads(shown.stdout)["mirrors"][RESOURCE]  # type: ignore[no-any-return]

        def serve_beta() -> MirrorService:
            service = MirrorService(
                "beta", [MirrorSpec(RESOURCE, b.mount_point, RESOURCE, tmp_path / "unused",
                                    interval=0.3)],
                {n: c.replication_endpoint for n, c in cfg.nodes.items()},
                LinkKeys.derive(key_ring(key), cfg.name, cfg.node_names, "beta"),
                lambda _report: None)
            service.start()
            return service

        alpha = Volume(a.mount_point, RESOURCE, "alpha")
        beta = Volume(b.mount_point, RESOURCE, "beta")
        receiver = serve_beta()
        cluster = MemoryCluster(cfg, key)
        replicator = None
        try:
            runtime = cluster.start("alpha")
            wait_for(lambda: os.path.ismount(mount_point), WAIT, "db-data mounted on alpha")
            write(mount_point / "records", b"record 1\n")
            wait_for(lambda: (s := beta.snapshots()) and tree(s[-1].path) == {
                "records": b"record 1\n"}, WAIT, "beta receives record 1")
            # beta is lost; alpha goes on writing and snapshotting alone
            receiver.close()
            write(mount_point / "records", b"record 1\nonly on alpha\n")
            wait_for(lambda: tree(alpha.snapshots()[-1].path) == {
                "records": b"record 1\nonly on alpha\n"}, WAIT, "alpha snapshots its write")
            alone = alpha.snapshots()[-1].seq
            wait_for(lambda: alpha.snapshots()[-1].seq >= alone + 2, WAIT,
                     "two more snapshots on alpha")

            refused = vigil("resource", "promote", RESOURCE, f"{RESOURCE}.alpha.1.aside",
                            "--node", "alpha")
            assert refused.returncode == 1, refused
            assert "the group db of db-data runs on alpha (as alpha sees it)" in refused.stderr
            assert "stop it first with `vigil resource oo-service db-data`" in refused.stderr

            # the operator stops the group (the final snapshot cannot reach beta)...
            stopped = vigil("resource", "oo-service", RESOURCE, "--via", "alpha")
            assert stopped.returncode == 0, stopped.stderr
            assert runtime.mirrors is not None
            wait_for(lambda: not os.path.ismount(mount_point) and not alpha.has_data()
                     and not runtime.mirrors.is_live(RESOURCE), WAIT, "db-data stopped")
            own = alpha.snapshots()[-1]  # alpha's final snapshot, holding "only on alpha"
            assert tree(own.path) == {"records": b"record 1\nonly on alpha\n"}
            # ...and beta takes over from the copy it has, and sends to alpha
            receiver = serve_beta()
            beta.promote(beta.snapshots()[-1])
            receiver.go_live(RESOURCE, 10.0)
            write(beta.data / "records", b"record 1\nnew on beta\n")
            replicator = receiver.replicator(RESOURCE)
            replicator.start()
            wait_for(lambda: tree(alpha.snapshots()[-1].path) == {
                "records": b"record 1\nnew on beta\n"}, WAIT, "alpha follows beta")
            replicator.stop()  # beta stops too: the group runs nowhere now
            aside = [x.name for x in alpha.aside()]
            assert f"{own.name}.aside" == aside[-1] and len(aside) >= 3
            wait_for(lambda: status()["aside"] == aside, WAIT, "status lists the asides")
            shown = vigil("status", "--node", "alpha").stdout
            assert f"    kept aside: {', '.join(aside)}" in shown

            # discard: refused for what is not set aside, then done
            wrong = vigil("resource", "discard", RESOURCE, "db-data.alpha.999.aside",
                          "--node", "alpha")
            assert wrong.returncode == 1
            assert (f"'db-data.alpha.999.aside' is not set aside for db-data on alpha (set "
                    f"aside here: {', '.join(aside)})") in wrong.stderr
            discarded = vigil("resource", "discard", RESOURCE, aside[0], "--node", "alpha")
            assert discarded.returncode == 0, discarded.stderr
            assert discarded.stdout == (f"discarded {aside[0]} of db-data on alpha; still set "
                                        f"aside here: {', '.join(aside[1:])}\n")
            assert [x.name for x in alpha.aside()] == aside[1:]
            wait_for(lambda: status()["aside"] == aside[1:], WAIT, "status lists one less")
            assert f"    kept aside: {', '.join(aside[1:])}\n" in vigil(
                "status", "--node", "alpha").stdout

            # promote the newest of alpha's own: the node's newest copy, taken now
            before = time.time()
            promoted = vigil("resource", "promote", RESOURCE, f"{own.name}.aside",
                             "--node", "alpha")
            assert promoted.returncode == 0, promoted.stderr
            newest = alpha.snapshots()[-1]
            assert newest.ident == own.ident and newest.node == "alpha"
            assert newest.seq > max(x.seq for x in alpha.aside())
            assert promoted.stdout.startswith(
                f"promoted {own.name}.aside of db-data on alpha as {newest.name}, the newest "
                "copy here (taken now); set aside: db-data.beta.")
            assert promoted.stdout.endswith(
                "; move the group with `vigil group move db alpha` and bring it back with "
                "`vigil resource in-service db-data`\n")
            assert tree(newest.path) == {"records": b"record 1\nonly on alpha\n"}
            coordinator: Any = runtime.coordinator().proxy()
            state = coordinator.core.get().mirrors.get(RESOURCE)
            assert isinstance(state, MirrorState) and state.copy is not None
            assert (state.copy.seq, state.copy.source) == (newest.seq, "alpha")
            assert before <= state.copy.taken <= time.time()
            assert not state.copy.live
            copy = status()["copy"]
            assert copy["seq"] == newest.seq and copy["age"] < WAIT
            assert all(name.startswith("db-data.beta.") or name in aside
                       for name in status()["aside"])

            # back in service: alpha serves the promoted copy
            assert vigil("resource", "in-service", RESOURCE, "--via", "alpha").returncode == 0
            wait_for(lambda: os.path.ismount(mount_point), WAIT, "db-data back on alpha")
            assert (mount_point / "records").read_bytes() == b"record 1\nonly on alpha\n"
        finally:
            if replicator is not None:
                replicator.stop()
            cluster.stop()
            receiver.close()
