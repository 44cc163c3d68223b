"""Integration: a running node's actors follow a new configuration (NodeRuntime.reconfigure,
the NodeActor's Reconfigure): what was added starts, what was removed stops, what changed is
replaced, and everything else keeps running untouched, with the real actors of two nodes
over the in-memory network and recording dummy resources."""

from __future__ import annotations

import grp
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_actors_memory import (
    JOURNAL,
    JOURNAL_LOCK,
    load_key,
    recording_cluster,
)
from tests.support.cluster_harness import MemoryCluster, cluster_toml, wait_for
from vigil.actors.messages import ChildFailed
from vigil.actors.node import NodeRuntime
from vigil.config import ClusterConfig, loads
from vigil.local.protocol import request


def dummy(name: str, extra: str = "") -> str:
    return (f'\n[resources.{name}]\ntype = "dummy"\n'
            'params = { start_delay = "0.05s" }\n'
            'monitor = { interval = "200ms", timeout = "1s" }\n' + extra)


#: web runs on alpha; old and other run on beta (alpha has them stopped)
GROUPS = (
    '\n[groups.web]\nresources = ["web-data", "web-app"]\nprefer = { alpha = 0, beta = 10 }\n'
    '\n[groups.old]\nresources = ["old-data"]\nprefer = { alpha = 10, beta = 0 }\n'
    '\n[groups.other]\nresources = ["other-data"]\nprefer = { alpha = 10, beta = 0 }\n'
    + dummy("web-data") + dummy("web-app", 'depends_on = ["web-data"]\n')
    + dummy("old-data") + dummy("other-data"))


def config(tmp: Path, groups: str) -> ClusterConfig:
    return loads(cluster_toml(tmp, groups=groups), tmp / "cluster.toml")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MemoryCluster]:
    yield from recording_cluster(config(tmp_path, GROUPS))


def placed(mc: MemoryCluster) -> bool:
    st = mc.status("alpha")
    where = {g: (v["node"], v["state"]) for g, v in st["groups"].items()}
    return where == {"web": ("alpha", "running"), "old": ("beta", "running"),
                     "other": ("beta", "running")}


def stops_on_alpha() -> list[str]:
    with JOURNAL_LOCK:
        return [r for _, n, op, r in JOURNAL if n == "alpha" and op == "stop"]


def test_only_what_changed_is_replaced_and_a_running_group_is_not_disturbed(
        cluster: MemoryCluster, tmp_path: Path) -> None:
    alpha = cluster.start("alpha")
    cluster.start("beta")
    wait_for(lambda: placed(cluster), 20, "web on alpha, old and other on beta")
    d = alpha.directory
    before = {name: ref for name in d.names() if (ref := d.get(name)) is not None}
    changed = GROUPS.replace(
        '\n[groups.old]\nresources = ["old-data"]\nprefer = { alpha = 10, beta = 0 }\n', "")
    changed = changed.replace(dummy("old-data"), "").replace(
        dummy("other-data"), dummy("other-data").replace('"0.05s"', '"0.1s"'))
    changed += ('\n[groups.db]\nresources = ["db-data", "db-tool"]\n' + dummy("db-data")
                + '\n[resources.db-tool]\ntype = "not-installed-here"\n')

    done = alpha.reconfigure(config(tmp_path, changed))

    assert done.started == ("resource:db-data", "group:db")
    assert done.stopped == ("group:old", "resource:old-data")
    # the resource set changed: diagnostics watches the new one
    assert done.replaced == ("resource:other-data", "diagnostics")
    assert done.dropped == ()
    for name in ("resource:old-data", "group:old"):
        assert name not in d.names()
        assert not before[name].is_alive()
    assert {"resource:db-data", "group:db"} <= set(d.names())
    assert "resource:db-tool" not in d.names()  # its type is missing here, as at start
    assert not before["resource:other-data"].is_alive()
    other = d.get("resource:other-data")
    assert other is not None and other.proxy().resource.get().config.params == {
        "start_delay": "0.1s"}
    untouched = [n for n in before if n not in ("resource:old-data", "group:old",
                                                "resource:other-data", "diagnostics")]
    assert "group:web" in untouched and "coordinator" in untouched and "control" in untouched
    for name in untouched:
        assert d.get(name) is before[name], name
    # web ran on through it all: nothing of it stopped, its diagnostics monitor it still
    assert stops_on_alpha() == []
    assert placed(cluster)
    assert alpha.catalog is not None and "old-data" not in alpha.catalog
    assert alpha._holdings_of(["db"]).names == ("db-data",)
    (tmp_path / "run" / "alpha" / "dummy" / "web-app.state.fail").touch()
    wait_for(lambda: cluster.status("alpha")["resources"]["web-app"]["fail_count"], 10,
             "the new diagnostics to see web-app fail")

    # a replaced child that dies later comes back with the new configuration
    other.stop()
    d.tell("node", ChildFailed("resource:other-data", "killed by the test"))
    wait_for(lambda: d.get("resource:other-data") is not other, 10, "its restart")
    again = d.get("resource:other-data")
    assert again is not None
    assert again.proxy().resource.get().config.params == {"start_delay": "0.1s"}


def test_the_same_configuration_changes_nothing(cluster: MemoryCluster,
                                                tmp_path: Path) -> None:
    alpha: NodeRuntime = cluster.start("alpha")
    before = {name: alpha.directory.get(name) for name in alpha.directory.names()}
    done = alpha.reconfigure(config(tmp_path, GROUPS))
    assert (done.started, done.stopped, done.replaced) == ((), (), ())
    assert {name: alpha.directory.get(name) for name in alpha.directory.names()} == before


def test_new_access_groups_and_alerts_replace_only_the_local_interfaces(
        cluster: MemoryCluster, tmp_path: Path) -> None:
    alpha = cluster.start("alpha")
    before = {name: alpha.directory.get(name) for name in alpha.directory.names()}
    text = cluster_toml(tmp_path, groups=GROUPS).replace(
        'name = "test"', f'name = "test"\nstatus_group = "{grp.getgrgid(os.getgid()).gr_name}"')
    text += '\n[[alerts]]\ncommand = "true"\n'
    done = alpha.reconfigure(loads(text, tmp_path / "cluster.toml"))
    assert done.started == ("alerts",)
    assert done.replaced == ("notifier", "control")
    assert done.stopped == ()
    # the new control actor serves the socket (and its group may read it)
    socket_path = cluster.config.nodes["alpha"].control_socket
    assert request(socket_path, "status")["ok"]
    assert socket_path.stat().st_gid == os.getgid()
    for name in before:
        if name not in ("notifier", "control"):
            assert alpha.directory.get(name) is before[name], name


def test_a_new_nic_to_watch_gets_its_monitor_and_the_kernel_s_word(
        cluster: MemoryCluster, tmp_path: Path) -> None:
    alpha = cluster.start("alpha")
    vip = ('\n[resources.other-vip]\ntype = "ip"\n'
           'params = { address = "192.0.2.10/24", nic = "nothere0" }\n')
    done = alpha.reconfigure(config(tmp_path, GROUPS.replace(
        'resources = ["other-data"]', 'resources = ["other-data", "other-vip"]') + vip))
    assert "nic:nothere0" in done.started
    wait_for(lambda: cluster.status("alpha")["nics"].get("nothere0", {}).get("reason")
             == "no such interface", 10, "the new NIC monitor's word")


def app(stop: str, interval: str) -> str:
    return ('\n[groups.api]\nresources = ["api-app"]\nprefer = { alpha = 0, beta = 10 }\n'
            '\n[resources.api-app]\ntype = "application"\nparams = { start = "sleep 917" }\n'
            f'stop_timeout = "{stop}"\nmonitor = {{ interval = "{interval}", timeout = "1s" }}\n')


def test_a_new_timeout_or_monitor_keeps_the_resource_and_what_it_started(
        tmp_path: Path) -> None:
    """Settings read at each operation change in place: a new object would not know the
    process the old one started (its monitor would find nothing, its stop would leave it)."""
    cfg = config(tmp_path, app("1s", "200ms"))
    mc = MemoryCluster(cfg, load_key(cfg))
    try:
        alpha = mc.start("alpha")
        mc.start("beta")
        wait_for(lambda: mc.status("alpha")["groups"]["api"] == {
            **mc.status("alpha")["groups"]["api"], "node": "alpha", "state": "running"},
            20, "api running on alpha")
        before = alpha.directory.get("resource:api-app")
        assert before is not None
        res = before.proxy().resource.get()
        pid = res.pid
        assert pid is not None and Path(f"/proc/{pid}").exists()
        done = alpha.reconfigure(config(tmp_path, app("5s", "300ms")))
        assert "resource:api-app" not in done.replaced + done.started, done
        assert alpha.directory.get("resource:api-app") is before
        assert res.config.stop_timeout == 5.0 and res.pid == pid
        result = res._stop(False)
        assert result.ok
        wait_for(lambda: not Path(f"/proc/{pid}").exists()
                 or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], 10,
                 "the application stopped")
    finally:
        mc.stop()
