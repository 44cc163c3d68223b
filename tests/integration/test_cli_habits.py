"""The command line's shared habits, without a daemon: one exit code per meaning in every
command, -n/--node (and its hidden alias --via) everywhere, -c and $VIGIL_CONFIG read when
the command runs, completion of the configuration's names, and `vigil simulate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.support.cluster_harness import cluster_toml
from vigil.cli.main import (
    EXIT_NO_DAEMON,
    EXIT_USAGE,
    cli,
    config_option,
    node_option,
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(cluster_toml(tmp_path))  # its runtime_dir is here: no daemon listens
    return path


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


#: Every command that asks a daemon about a name: its words, and where the name goes
#: ("{}" is the name; the other names are known ones).
NAMED = [
    ("node", "standby", "{}"), ("node", "online", "{}"), ("node", "fence", "{}"),
    ("node", "confirm-off", "{}"),
    ("group", "move", "{}", "beta"), ("group", "move", "web", "{}"),
    ("group", "stop", "{}"), ("group", "start", "{}"),
    ("resource", "cleanup", "{}"), ("resource", "in-service", "{}"),
    ("resource", "oo-service", "{}"), ("resource", "force-oos", "{}"),
    ("resource", "restart", "{}"), ("resource", "mark-oos", "{}"),
    ("resource", "diagnose", "{}"), ("resource", "discard", "{}", "snap"),
    ("resource", "promote", "{}", "snap"),
]
KNOWN = {"node": "alpha", "group": "web", "resource": "web-app"}


def _with(words: tuple[str, ...], name: str) -> list[str]:
    return [name if w == "{}" else w for w in words]


def _known_name(words: tuple[str, ...]) -> str:
    # what "{}" stands for: the second argument of move is a node, the others' first word
    if words[:2] == ("group", "move"):
        return KNOWN["group" if words[2] == "{}" else "node"]
    return KNOWN[words[0]]


@pytest.mark.parametrize("words", NAMED, ids=lambda w: " ".join(w))
def test_an_unknown_name_exits_2_in_every_command(config: Path, words: tuple[str, ...]
                                                   ) -> None:
    result = run(*_with(words, "nosuch"), "-c", str(config))
    assert result.exit_code == EXIT_USAGE, result.output
    assert "named 'nosuch'" in result.output


@pytest.mark.parametrize("words", [*NAMED, ("maintenance", "on"), ("status",),
                                   ("simulate", "--live")], ids=lambda w: " ".join(w))
def test_no_daemon_exits_3_in_every_command(config: Path, words: tuple[str, ...]) -> None:
    result = run(*_with(words, _known_name(words) if "{}" in words else ""), "-c",
                 str(config), "-n", "alpha")
    assert result.exit_code == EXIT_NO_DAEMON, result.output
    assert "no daemon for node alpha" in result.output


def test_events_exits_3_without_a_daemon_and_2_for_an_unknown_node(config: Path) -> None:
    result = run("events", "-c", str(config), "-n", "alpha")
    assert result.exit_code == EXIT_NO_DAEMON, result.output
    assert "no event socket" in result.output
    assert run("events", "-c", str(config), "-n", "omega").exit_code == EXIT_USAGE


def test_an_unknown_node_to_ask_exits_2_with_the_known_ones(config: Path) -> None:
    for flag in ("-n", "--node", "--via"):
        result = run("group", "move", "web", "beta", "-c", str(config), flag, "omega")
        assert result.exit_code == EXIT_USAGE, result.output
        assert "'omega'" in result.output and "alpha, beta, gamma" in result.output


def test_via_is_a_hidden_alias_of_node(config: Path) -> None:
    for words in (["group", "move"], ["node", "standby"], ["status"], ["maintenance"],
                  ["resource", "cleanup"], ["events"]):
        shown = run(*words, "--help").output
        assert "-n, --node NAME" in shown, words
        assert "--via" not in shown, words
    assert "not where the group goes" in run("group", "move", "--help").output


def test_the_exit_codes_are_in_the_main_help() -> None:
    shown = run("--help").output
    for code in ("0 done", "1 the cluster refused", "2 usage", "3 no daemon", "4 --wait"):
        assert code in shown


def test_vigil_config_is_read_when_the_command_runs(config: Path) -> None:
    # the module was imported long before: the variable set now is the one that counts
    result = run("status", "-n", "omega", env={"VIGIL_CONFIG": str(config)})
    assert result.exit_code == EXIT_USAGE
    assert "alpha, beta, gamma" in result.output
    assert str(config) in result.output


def test_config_check_takes_c_and_vigil_config(config: Path, tmp_path: Path) -> None:
    assert run("config", "check", "-c", str(config)).exit_code == 0
    checked = run("config", "check", env={"VIGIL_CONFIG": str(config)})
    assert checked.exit_code == 0, checked.output
    assert f"{config}: ok" in checked.output
    missing = run("config", "check", env={"VIGIL_CONFIG": str(tmp_path / "none.toml")})
    assert missing.exit_code == EXIT_USAGE
    assert "none.toml" in missing.output


def test_the_shared_options_are_importable_for_other_commands() -> None:
    assert callable(config_option) and callable(node_option)


def complete(words: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash completion offers after ``words`` (the last word being completed)."""
    parts = words.split(" ")
    result = CliRunner().invoke(cli, [], prog_name="vigil", env={
        "_VIGIL_COMPLETE": "bash_complete", "COMP_WORDS": words,
        "COMP_CWORD": str(len(parts) - 1), **(env or {})})
    return [line.split(",", 1)[1] for line in result.output.splitlines() if line]


def test_completion_offers_the_configuration_names(config: Path) -> None:
    c = f"-c {config}"
    assert complete(f"vigil group move {c} ") == ["web"]
    assert complete(f"vigil group move {c} web ") == ["alpha", "beta", "gamma"]
    assert complete(f"vigil group move {c} web b") == ["beta"]
    assert complete(f"vigil resource restart {c} web-") == ["web-app", "web-data", "web-ip"]
    assert complete(f"vigil resource cleanup {c} w") == ["web-app", "web-data", "web-ip",
                                                         "web"]
    assert complete(f"vigil status {c} -n g") == ["gamma"]
    assert complete("vigil node standby ", {"VIGIL_CONFIG": str(config)}) == [
        "alpha", "beta", "gamma"]
    assert complete("vigil node standby ", {"VIGIL_CONFIG": "/nonexistent.toml"}) == []


# ---- simulate -----------------------------------------------------------------------------


def test_simulate_fails_the_named_resource(config: Path) -> None:
    result = run("simulate", "-c", str(config), "--resource-fail", "web-app@alpha")
    assert result.exit_code == 0, result.output
    assert "web-app failed on alpha" in result.output
    assert "web-ip failed" not in result.output


def test_simulate_applies_events_in_the_order_given(config: Path) -> None:
    def titles(*events: str) -> list[str]:
        result = run("simulate", "-c", str(config), "--json", *events)
        assert result.exit_code == 0, result.output
        return [s["title"] for s in json.loads(result.output)["steps"]][1:]

    assert titles("--node-down", "alpha", "--node-up", "alpha", "--node-down", "beta") == [
        "after node-down alpha", "after node-up alpha", "after node-down beta"]
    assert titles("--node-up", "alpha", "--heal", "--resource-fail", "web-app@alpha",
                  "--node-down", "alpha") == [
        "after node-up alpha", "after heal", "after resource-fail web-app@alpha",
        "after node-down alpha"]


def test_simulate_order_decides_the_outcome(config: Path) -> None:
    """The same two events in the other order: alpha's loss first moves web to beta; beta's
    loss first leaves it on alpha."""
    def first_step(*events: str) -> str:
        result = run("simulate", "-c", str(config), "--json", *events)
        assert result.exit_code == 0, result.output
        where: str = json.loads(result.output)["steps"][1]["placement"]["web"]
        return where

    assert first_step("--node-down", "alpha", "--node-down", "beta") == "beta"
    assert first_step("--node-down", "beta", "--node-down", "alpha") == "alpha"


def test_simulate_show_costs_says_why(config: Path) -> None:
    result = run("simulate", "-c", str(config), "--node-down", "gamma", "--show-costs")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    costs = lines[lines.index(next(x for x in lines if x.startswith("Costs"))) + 1:]
    assert costs[0].split()[:3] == ["web", "alpha", "-100"]
    assert "prefer alpha = 0; runs here: stickiness -100" in costs[0]
    assert costs[1].split()[:3] == ["web", "beta", "10"]
    assert costs[2].split()[:3] == ["web", "gamma", "INFINITY"]
    assert "gamma is down" in costs[2]


def test_simulate_show_costs_in_json(config: Path) -> None:
    text = config.read_text().replace("[groups.web]", "[groups.web]\nmigration_threshold = 1")
    config.write_text(text)
    result = run("simulate", "-c", str(config), "--json", "--show-costs",
                 "--resource-fail", "web-data@alpha")
    assert result.exit_code == 0, result.output
    costs = json.loads(result.output)["costs"]["web"]
    assert costs["alpha"]["cost"] == "INFINITY"
    assert costs["alpha"]["why"] == ["fail count reached migration_threshold 1"]
    assert costs["beta"]["cost"] == -90
