"""One object tree, four views: the control socket, the CLI, /ha and the Python API read the
same status and send the same requests, so on a live 3-node cluster they never disagree; and
every operator command has the effect it names."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.support.cluster_harness import MemoryCluster, wait_for
from tests.system.test_hafs import mounted, needs_fuse, read, write_config
from vigil.api import Client, Refused
from vigil.cli.main import cli
from vigil.config import load, load_key
from vigil.local.protocol import request
from vigil.status import ClusterStatus

NODES = ("alpha", "beta", "gamma")


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[MemoryCluster, Path]]:
    config = write_config(tmp_path)
    cfg = load(config)
    mc = MemoryCluster(cfg, load_key(cfg))
    try:
        for n in NODES:
            mc.start(n)
        wait_for(lambda: mc.holders("web") == ["alpha"] and all(
            mc.status(n)["groups"]["web"]["state"] == "running" for n in NODES), 15,
            "web in service on alpha, in every node's view")
        yield mc, config
    finally:
        mc.stop()


def summary(st: ClusterStatus) -> dict[str, Any]:
    """What every view must agree on."""
    return {
        "epoch": st.epoch, "master": st.master, "maintenance": st.maintenance,
        "nodes": {n: (v.state, v.standby) for n, v in st.nodes.items()},
        "groups": {g: (v.node, v.state) for g, v in st.groups.items()},
        "resources": {r: (v.service_state, v.provided_by, list(v.depends_on),
                          list(v.dependents)) for r, v in st.resources.items()},
    }


def cli_json(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, [*args, "-c", str(config), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@needs_fuse
def test_status_through_all_four_views_agrees(live: tuple[MemoryCluster, Path],
                                              tmp_path: Path) -> None:
    _, config = live
    cfg = load(config)
    socket_json = request(cfg.nodes["beta"].control_socket, "status")["status"]
    cli_json_view = cli_json(config, "status", "-n", "beta")
    assert cli_json_view.keys() == socket_json.keys()  # `--json` prints the daemon's keys
    socket_view = ClusterStatus.from_json(socket_json)
    cli_view = ClusterStatus.from_json(cli_json_view)
    api_view = Client(config, "beta").status()
    assert summary(socket_view) == summary(cli_view) == summary(api_view)
    with mounted(config, "beta", tmp_path / "mount.log") as (root, _):
        ha = {
            "epoch": read(root / "cluster/epoch"), "master": read(root / "cluster/master"),
            "maintenance": read(root / "cluster/maintenance") == "on",
            "nodes": {n: (read(root / "nodes" / n / "state"),
                          read(root / "nodes" / n / "standby") == "yes") for n in NODES},
            "groups": {"web": (read(root / "groups/web/node") or None,
                               read(root / "groups/web/state"))},
            "resources": {r: (read(root / "resources" / r / "service_state"),
                              read(root / "resources" / r / "provided_by") or None,
                              read(root / "resources" / r / "depends_on").split(),
                              read(root / "resources" / r / "dependents").split())
                          for r in socket_view.resources},
        }
    assert ha == summary(api_view)


def test_every_operator_command_has_the_effect_it_names(
        live: tuple[MemoryCluster, Path]) -> None:
    mc, config = live
    api = Client(config, "gamma")

    def vigil(*args: str) -> str:
        verb = 1 if args[0] == "maintenance" else 2
        result = CliRunner().invoke(cli, [*args[:verb], "-c", str(config), "--via", "gamma",
                                          *args[verb:]])
        assert result.exit_code == 0, result.output
        return result.output

    def state(r: str) -> str:  # as the holder knows it (the others infer it)
        holders = mc.holders("web")
        return str(mc.status(holders[0])["resources"][r]["service_state"]) if holders else "-"

    vigil("group", "move", "web", "beta")
    wait_for(lambda: mc.holders("web") == ["beta"], 15, "web moved to beta")

    vigil("resource", "oo-service", "web-data")
    wait_for(lambda: (state("web-data"), state("web-app")) == ("OOS", "OOS"), 15,
             "web-data (and web-app after it) out of service")
    vigil("resource", "in-service", "web-data")
    wait_for(lambda: (state("web-data"), state("web-app")) == ("IN_SERVICE", "IN_SERVICE"),
             15, "both back")
    vigil("resource", "force-oos", "web-app")
    wait_for(lambda: state("web-app") == "OOS", 15, "web-app stopped at once")
    # gamma learns it from the accepted placement, which may reach it after the holder acted
    wait_for(lambda: api.status().resources["web-app"].by_hand == "force_oos", 15,
             "gamma's view: web-app out of service by hand")
    vigil("resource", "in-service", "web-app")
    wait_for(lambda: state("web-app") == "IN_SERVICE", 15, "web-app back")

    out = CliRunner().invoke(cli, ["resource", "diagnose", "-c", str(config), "-n", "beta",
                                   "web-app"])
    assert out.exit_code == 0 and "web-app: healthy, IN_SERVICE" in out.output, out.output

    vigil("node", "standby", "beta")
    wait_for(lambda: mc.holders("web") not in ([], ["beta"]), 15, "web left beta")
    wait_for(lambda: api.status().nodes["beta"].standby, 15, "gamma's view: beta in standby")
    vigil("node", "online", "beta")
    wait_for(lambda: not api.status().nodes["beta"].standby, 15, "beta online again")

    vigil("maintenance", "on")
    wait_for(lambda: api.status().maintenance, 15, "maintenance on")
    refused = CliRunner().invoke(cli, ["group", "move", "-c", str(config), "--via", "gamma",
                                       "web", "alpha"])
    assert refused.exit_code == 1 and "maintenance mode" in refused.output
    vigil("maintenance", "off")
    wait_for(lambda: not api.status().maintenance, 15, "maintenance off")

    # the same through the Python API, and its refusals
    holder = mc.holders("web")[0]
    target = next(n for n in NODES if n != holder)
    api.move("web", target)
    wait_for(lambda: mc.holders("web") == [target], 15, "web moved by the API")
    with pytest.raises(Refused, match="did you mean 'web-app'"):
        api.resource("web-ap", "oo_service")
    assert api.diagnose("web-app")["healthy"] in (True, False)  # answered by gamma itself
