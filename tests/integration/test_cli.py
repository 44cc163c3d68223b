"""The command line as an operator meets it: exit codes, messages that say what and where."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.cluster_harness import cluster_toml
from vigil.cli.main import cli

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo.toml"


def write(tmp: Path, text: str) -> Path:
    path = tmp / "cluster.toml"
    path.write_text(text)
    return path


def test_config_check_accepts_a_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, cluster_toml(tmp_path))
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok (cluster test, 3 nodes, 1 groups, 3 resources" in result.output


def test_config_check_names_file_key_and_problem(tmp_path: Path) -> None:
    text = cluster_toml(tmp_path).replace('depends_on = ["web-ip"]', 'depends_on = ["web-ipp"]')
    text = text.replace('type = "dummy"', 'type = "dumy"', 1)
    path = write(tmp_path, text)
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}: resources.web-data.depends_on" in result.output
    assert "web-ipp" in result.output


def test_config_check_reports_unknown_resource_types(tmp_path: Path) -> None:
    path = write(tmp_path, cluster_toml(tmp_path).replace('type = "dummy"', 'type = "dumy"', 1))
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert "unknown resource type 'dumy'" in result.output
    assert "dummy" in result.output


def test_config_check_reports_application_without_a_command(tmp_path: Path) -> None:
    text = cluster_toml(tmp_path).replace(
        '[resources.web-app]\ntype = "dummy"', '[resources.web-app]\ntype = "application"')
    path = write(tmp_path, text)
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert "resources.web-app.params" in result.output


def test_config_check_names_bad_mirror_params_and_a_root_that_is_no_btrfs_top_level(
        tmp_path: Path) -> None:
    mirror = """
[groups.db]
resources = ["db-data"]

[resources.db-data]
type = "mirror"
params = { root = "ROOT", mount_point = "var/lib/db", keep = 0 }
"""
    path = write(tmp_path, cluster_toml(tmp_path, groups=mirror.replace("ROOT", str(tmp_path))))
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}: resources.db-data.params: mount_point must be an absolute path" \
        in result.output
    assert "keep must be a whole number of snapshots, at least 1" in result.output
    good = mirror.replace("ROOT", str(tmp_path)).replace('"var/lib/db", keep = 0',
                                                         f'"{tmp_path}/db"')
    path = write(tmp_path, cluster_toml(tmp_path, groups=good))
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    # a plain directory: the operator has not mounted the btrfs top level there
    assert f"{path}: resources.db-data: " in result.output
    assert "not a mount point" in result.output or "btrfs" in result.output


ROOT = Path(__file__).resolve().parents[2]

#: `vigil config check FILE` and a node's reading of FILE (at start, and again for a reload)
#: where pyroute2, which the ip type imports, cannot be imported
WITHOUT_PYROUTE2 = """
import json, sys

from tests.support import no_pyroute2

no_pyroute2.install()

from vigil.actors.node import NodeRuntime
from vigil.cli.main import main
from vigil.config import load, load_key

path = sys.argv[1]
if sys.argv[2] == "check":
    sys.argv = ["vigil", "config", "check", path]
    main()
cfg = load(path)
runtime = NodeRuntime(cfg, "alpha", load_key(cfg), lambda node, link: None)
staged = runtime.read_config()
print(json.dumps({"at start": sorted(runtime.missing_types), "staged": staged.config is not None,
                  "problem": staged.problem, "reload": sorted(staged.missing_types)}))
"""


def without_pyroute2(tmp: Path, what: str) -> subprocess.CompletedProcess[str]:
    text = cluster_toml(tmp).replace('[resources.web-ip]\ntype = "dummy"',
                                     '[resources.web-ip]\ntype = "ip"')
    path = write(tmp, text)
    return subprocess.run([sys.executable, "-c", WITHOUT_PYROUTE2, str(path), what], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_config_check_says_which_resource_has_a_type_that_cannot_be_loaded(
        tmp_path: Path) -> None:
    out = without_pyroute2(tmp_path, "check")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert (f"{tmp_path / 'cluster.toml'}: resources.web-ip.type: type 'ip' cannot be loaded: "
            "vigil.resources.ip: ModuleNotFoundError: No module named 'pyroute2'") in out.stderr


def test_a_node_whose_ip_type_cannot_be_loaded_runs_without_it_and_says_why_once(
        tmp_path: Path) -> None:
    out = without_pyroute2(tmp_path, "read")
    assert out.returncode == 0, out.stderr
    # as a type not installed here: what uses it cannot run on this node, the rest can, and
    # a reload is staged (it raised, and the reload waited forever)
    assert json.loads(out.stdout) == {"at start": ["ip"], "staged": True, "problem": "",
                                      "reload": ["ip"]}
    assert out.stderr.count("resource type 'ip' (vigil.resources.ip:IpType) cannot be loaded: "
                            "vigil.resources.ip: ModuleNotFoundError") == 1, out.stderr


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "k"
    runner = CliRunner()
    assert runner.invoke(cli, ["keygen", str(key)]).exit_code == 0
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    again = runner.invoke(cli, ["keygen", str(key)])
    assert again.exit_code == 2 and "exists" in again.output


def test_simulate_shows_failover_after_node_down(tmp_path: Path) -> None:
    path = write(tmp_path, cluster_toml(tmp_path))
    result = CliRunner().invoke(cli, ["simulate", "-c", str(path), "--node-down", "alpha",
                                      "--json"])
    assert result.exit_code == 0, result.output
    steps = json.loads(result.output)["steps"]
    assert steps[0]["placement"] == {"web": "alpha"}
    assert steps[1]["title"] == "after node-down alpha"
    assert steps[1]["placement"] == {"web": "beta"}
    assert any("fencing" in c or "waiting until" in c for c in steps[1]["changes"])


def test_simulate_partition_keeps_the_majority_in_charge(tmp_path: Path) -> None:
    path = write(tmp_path, cluster_toml(tmp_path))
    result = CliRunner().invoke(cli, ["simulate", "-c", str(path), "--partition",
                                      "alpha/beta,gamma", "--json"])
    assert result.exit_code == 0, result.output
    steps = json.loads(result.output)["steps"]
    assert steps[-1]["placement"] == {"web": "beta"}  # alpha alone has no quorum


def test_simulate_rejects_unknown_nodes_with_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, cluster_toml(tmp_path))
    result = CliRunner().invoke(cli, ["simulate", "-c", str(path), "--node-down", "omega"])
    assert result.exit_code == 2
    assert "omega" in result.output and "alpha, beta, gamma" in result.output


def test_simulate_resource_failure_restarts_in_place(tmp_path: Path) -> None:
    path = write(tmp_path, cluster_toml(tmp_path))
    result = CliRunner().invoke(cli, ["simulate", "-c", str(path), "--resource-fail",
                                      "web-app@alpha", "--json"])
    assert result.exit_code == 0, result.output
    steps = json.loads(result.output)["steps"]
    assert steps[-1]["placement"] == {"web": "alpha"}
    assert any("failed" in c for c in steps[-1]["changes"])


def test_the_demo_configuration_is_valid() -> None:
    result = CliRunner().invoke(cli, ["simulate", "-c", str(DEMO), "--json"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", ["example.toml", "web.toml", "web-ocf.toml", "demo.toml"])
def test_the_shipped_example_files_are_valid(name: str) -> None:
    from vigil.config import load, validate_against_registry
    from vigil.resources.registry import default_registry

    cfg = load(DEMO.parent / name)
    registry = default_registry()
    if any(r.type.startswith("ocf:") for r in cfg.resources.values()) and not Path(
            "/usr/lib/ocf/resource.d/heartbeat").is_dir():
        pytest.skip("needs the OCF agents of Debian's resource-agents package")
    known = [r.type for r in cfg.resources.values() if r.type in registry]
    assert validate_against_registry(cfg, known) == []
    for r in cfg.resources.values():
        # the parameters; not validate(), which looks for the disks and NICs of real nodes
        assert registry.get(r.type).check_params(r.params) == [], r.name


@pytest.mark.parametrize(("text", "phrase"), [
    ("a = " + "[" * 100_000 + "]" * 100_000, "nested more than 32 levels deep"),
    ("[cluster]\nname = 'x'\nkey_file = 'k'\n[timing]\nheartbeat_interval = '1us'\n",
     "timing.heartbeat_interval: must be at least 10ms, got string '1us'"),
    ("[cluster]\nname = 'x'\nkey_file = 'k'\n[timing]\nheartbeat_interval = '99999999999h'\n",
     "timing.heartbeat_interval: must be at most 10s"),
])
@pytest.mark.parametrize("command", [["config", "check", "{path}"],
                                     ["node", "run", "-c", "{path}", "--node", "alpha"]])
def test_a_malformed_file_exits_2_with_a_message_never_a_traceback(
        tmp_path: Path, text: str, phrase: str, command: list[str]) -> None:
    path = write(tmp_path, text)
    argv = [arg.format(path=path) for arg in command]
    out = subprocess.run([sys.executable, "-m", "vigil.cli.main", *argv], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert phrase in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
