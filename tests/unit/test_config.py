"""The cluster file loader: valid files load, every mistake is reported with file and key."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.cluster_harness import cluster_toml
from vigil.config import (
    LEASE_SLACK,
    ClusterConfig,
    ConfigError,
    ConfigProblem,
    Timing,
    check_file,
    from_dict,
    load,
    load_key,
    loads,
    parse_duration,
    validate_against_registry,
    write_key,
)

REPO = Path(__file__).resolve().parents[2]

CLUSTER = 'name = "demo"\nkey_file = "demo.key"\n'
NODES = """
[nodes.alpha]
links = [{ name = "lan0", address = "127.0.0.1", port = 7401 }]

[nodes.beta]
links = [{ name = "lan0", address = "127.0.0.1", port = 7402 }]

[nodes.gamma]
links = [{ name = "lan0", address = "127.0.0.1", port = 7403 }]
"""
SERVICES = """
[groups.web]
resources = ["web-state", "web-app"]

[resources.web-state]
type = "dummy"

[resources.web-app]
type = "application"
depends_on = ["web-state"]
"""


def document(cluster: str = CLUSTER, timing: str = "", nodes: str = NODES,
             services: str = SERVICES) -> str:
    return f"[cluster]\n{cluster}\n[timing]\n{timing}\n{nodes}\n{services}"


def write(tmp_path: Path, text: str, name: str = "demo.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[ConfigProblem]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert all(p.file == str(path) for p in caught.value.problems)
    return list(caught.value.problems)


def keys(found: list[ConfigProblem]) -> list[str]:
    return [p.key for p in found]


def only(found: list[ConfigProblem], key: str) -> str:
    """The message of the one problem at ``key``."""
    messages = [p.message for p in found if p.key == key]
    assert len(messages) == 1, (key, found)
    return messages[0]


# -- valid files ------------------------------------------------------------------------------


def test_demo_file_loads_with_its_settings() -> None:
    cfg = load(REPO / "config" / "demo.toml")
    assert cfg.name == "demo"
    assert cfg.node_names == ("alpha", "beta", "gamma")
    assert cfg.key_file == REPO / "config" / "demo.key"
    assert cfg.nodes["beta"].links[0].port == 7402
    assert cfg.nodes["gamma"].runtime_dir == Path("/tmp/vigil-demo/gamma")
    assert cfg.timing.heartbeat_interval == pytest.approx(0.1)
    assert cfg.timing.dead_time == pytest.approx(0.6)
    # the lease runs out (and the guardian acts) before the others declare the node dead
    # (fence_margin follows the 100 ms heartbeat)
    assert cfg.timing.lease_time == pytest.approx(0.6 - 0.1 - 0.1)
    assert cfg.timing.step_timeout == 2.0
    assert cfg.groups["web"].prefer == {"alpha": 0, "beta": 10, "gamma": 20}
    app = cfg.resources["web-app"]
    assert (app.type, app.group, app.depends_on) == ("application", "web", ("web-state",))
    assert app.monitor.interval == 1.0 and app.monitor.timeout == 2.0
    assert cfg.resources["web-state"].params == {"start_delay": "0.1s"}
    assert cfg.path == (REPO / "config" / "demo.toml").resolve()
    assert len(cfg.digest) == 64


def test_example_file_loads() -> None:
    cfg = load(REPO / "config" / "example.toml")
    assert len(cfg.groups) >= 2
    assert any(g.depends_on for g in cfg.groups.values())
    assert all(len(n.links) == 2 for n in cfg.nodes.values())


def test_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, document()))
    assert (cfg.strategy, cfg.no_quorum_policy, cfg.fencer) == ("cost", "stop", "guardian")
    assert cfg.wait_for_all is True and cfg.two_node is False
    t = cfg.timing
    assert (t.heartbeat_interval, t.dead_time, t.lease_time) == (0.2, pytest.approx(0.8),
                                                                 pytest.approx(0.5))
    assert (t.step_timeout, t.retransmit_interval, t.fence_margin) == (pytest.approx(2.4), 0.2,
                                                                       0.2)
    # the dataclass's defaults say the same
    assert dataclasses.astuple(t) == pytest.approx(dataclasses.astuple(Timing()))
    assert t.guard_time == 0.1
    assert cfg.nodes["alpha"].votes == 1
    assert cfg.nodes["alpha"].runtime_dir == Path("/var/lib/vigil/alpha")
    group = cfg.groups["web"]
    assert (group.failback, group.stickiness, group.migration_threshold) == (False, 100.0, 3)
    state = cfg.resources["web-state"]
    assert (state.start_timeout, state.stop_timeout) == (20.0, 20.0)
    assert (state.monitor.interval, state.monitor.timeout) == (10.0, 20.0)


def test_derived_timing_defaults_follow_the_values_given(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, document(timing='heartbeat_interval = "50ms"\ndead_time = "2s"')))
    # the lease ends guard_time + fence_margin before the node is declared dead
    # fence_margin follows the heartbeat (at most 200 ms)
    assert cfg.timing.fence_margin == pytest.approx(0.05)
    assert cfg.timing.lease_time == pytest.approx(2.0 - 0.1 - 0.05)
    assert cfg.timing.step_timeout == 6.0
    assert cfg.timing.retransmit_interval == 0.05


def many_nodes(count: int) -> str:
    return "".join(f'[nodes.n{i:02d}]\nlinks = [{{ name = "lan0", address = "127.0.0.1", '
                   f'port = {7400 + i} }}]\n' for i in range(1, count + 1))


def test_the_default_heartbeat_slows_past_eight_nodes_and_everything_follows_it(
        tmp_path: Path) -> None:
    # each node hears every other: past 8 nodes the interval grows with the node count, so
    # what a node receives stays near 40 heartbeats a second
    timings = {n: load(write(tmp_path, document(nodes=many_nodes(n)))).timing
               for n in (3, 8, 9, 16, 32)}
    assert [timings[n].heartbeat_interval for n in (3, 8, 9, 16, 32)] == [
        0.2, 0.2, 0.225, 0.4, 0.8]
    t = timings[32]
    assert (t.dead_time, t.step_timeout, t.retransmit_interval) == (
        pytest.approx(3.2), pytest.approx(9.6), 0.8)
    assert t.lease_time == pytest.approx(3.2 - 0.1 - 0.2)  # fence_margin stays at 200 ms
    assert all((n - 1) / timings[n].heartbeat_interval <= 40 for n in timings)
    # a written interval is the interval, whatever the size
    written = load(write(tmp_path, document(timing='heartbeat_interval = "200ms"',
                                            nodes=many_nodes(32)))).timing
    assert (written.heartbeat_interval, written.dead_time) == (0.2, pytest.approx(0.8))


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    nodes = NODES.replace("[nodes.beta]", '[nodes.beta]\nruntime_dir = "state/beta"')
    cluster = CLUSTER + 'runtime_dir = "run"\n'
    (tmp_path / "etc").mkdir()
    cfg = load(write(tmp_path, document(cluster=cluster, nodes=nodes), "etc/c.toml"))
    assert cfg.key_file == tmp_path / "etc" / "demo.key"
    assert cfg.nodes["alpha"].runtime_dir == tmp_path / "etc" / "run" / "alpha"
    assert cfg.nodes["beta"].runtime_dir == tmp_path / "etc" / "state" / "beta"


def test_two_node_defaults_to_true_with_exactly_two_nodes(tmp_path: Path) -> None:
    two = NODES.split("[nodes.gamma]")[0]
    assert load(write(tmp_path, document(nodes=two))).two_node is True
    assert load(write(tmp_path, document())).two_node is False


def test_params_keep_their_toml_types(tmp_path: Path) -> None:
    services = SERVICES.replace(
        'type = "dummy"',
        'type = "dummy"\nparams = { s = "x", i = 3, f = 1.5, b = true, l = ["a", "b"] }')
    cfg = load(write(tmp_path, document(services=services)))
    assert cfg.resources["web-state"].params == {"s": "x", "i": 3, "f": 1.5, "b": True,
                                                 "l": ["a", "b"]}


def test_ipv6_links_and_freeze_with_a_real_fencer_are_accepted(tmp_path: Path) -> None:
    nodes = NODES.replace('"127.0.0.1", port = 7403', '"fd00::3", port = 7403')
    cluster = CLUSTER + 'no_quorum_policy = "freeze"\nfencer = "ipmi"\n'
    cfg = load(write(tmp_path, document(cluster=cluster, nodes=nodes)))
    assert cfg.nodes["gamma"].links[0].address == "fd00::3"
    assert cfg.no_quorum_policy == "freeze"


# -- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("150ms", 0.15), ("2s", 2.0), ("1.5s", 1.5), ("1m", 60.0), ("500us", 0.0005),
    ("0s", 0.0), (3, 3.0), (0.25, 0.25), ("2", 2.0), (" 10 ms ", 0.01), ("1h", 3600.0),
])
def test_durations_are_parsed_to_seconds(text: str | float, seconds: float) -> None:
    assert parse_duration(text, "timing.dead_time") == seconds


@pytest.mark.parametrize("text", ["", "fast", "1x", "-1s", "1.2.3s", "ms", "1e3", "inf",
                                  -1, float("nan"), float("inf"), True])
def test_bad_durations_raise_a_config_error_naming_the_key(text: str | float) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(text, "timing.dead_time")
    assert caught.value.problems[0].key == "timing.dead_time"
    assert str(caught.value).startswith("timing.dead_time: ")


def test_bad_duration_in_a_file_names_file_and_key(tmp_path: Path) -> None:
    found = problems(tmp_path, document(timing='dead_time = "soon"'))
    assert "expected a duration" in only(found, "timing.dead_time")


# -- file-level problems ----------------------------------------------------------------------


def test_toml_syntax_error_reports_line_and_column(tmp_path: Path) -> None:
    found = problems(tmp_path, '[cluster]\nname = "demo"\nkey_file = \n')
    assert len(found) == 1
    assert found[0].key == "line 3, column 12"
    assert found[0].message.startswith("invalid TOML")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load(tmp_path / "absent.toml")


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[cluster]\nname = "d\xe9mo"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load(path)


def test_missing_cluster_and_nodes_tables_are_reported(tmp_path: Path) -> None:
    found = problems(tmp_path, "[timing]\n")
    assert "missing required table [cluster]" in only(found, "cluster")
    assert "missing required table [nodes]" in only(found, "nodes")


def test_missing_required_cluster_keys_are_reported(tmp_path: Path) -> None:
    found = problems(tmp_path, document(cluster=""))
    assert "missing required key 'name'" in only(found, "cluster.name")
    assert "vigil keygen" in only(found, "cluster.key_file")


# -- unknown keys, names and types ------------------------------------------------------------


def test_misspelt_key_is_reported_with_the_closest_known_key(tmp_path: Path) -> None:
    found = problems(tmp_path, document(timing='hearbeat_interval = "100ms"'))
    message = only(found, "timing.hearbeat_interval")
    assert "unknown key 'hearbeat_interval'" in message
    assert "did you mean 'heartbeat_interval'?" in message


def test_unknown_top_level_table_is_reported(tmp_path: Path) -> None:
    found = problems(tmp_path, document() + "\n[resource.x]\ntype = 'dummy'\n")
    assert "did you mean 'resources'?" in only(found, "resource")


def test_unknown_keys_are_caught_in_nested_tables(tmp_path: Path) -> None:
    nodes = NODES.replace("port = 7401 }", "port = 7401, colour = 1 }")
    services = SERVICES.replace('type = "dummy"', 'type = "dummy"\nmonitor = { intervall = 1 }')
    found = problems(tmp_path, document(nodes=nodes, services=services))
    message = only(found, "nodes.alpha.links[0].colour")
    assert "unknown key 'colour'" in message and "known keys: address, name, port" in message
    assert "did you mean 'interval'?" in only(found, "resources.web-state.monitor.intervall")


@pytest.mark.parametrize(("text", "key"), [
    (document(cluster='name = "Demo"\nkey_file = "k"'), "cluster.name"),
    (document(nodes=NODES.replace("[nodes.alpha]", "[nodes.Alpha]")), "nodes.Alpha"),
    (document(nodes=NODES.replace('"lan0", address = "127.0.0.1", port = 7401',
                                  '"lan 0", address = "127.0.0.1", port = 7401')),
     "nodes.alpha.links[0].name"),
    (document(services=SERVICES.replace("[groups.web]", "[groups.2web]")), "groups.2web"),
    (document(services='[groups.web]\nresources = ["web app"]\n'
                       '[resources."web app"]\ntype = "dummy"\n'), 'resources."web app"'),
])
def test_invalid_names_are_reported_with_the_naming_rule(tmp_path: Path, text: str,
                                                         key: str) -> None:
    message = only(problems(tmp_path, text), key)
    assert "name" in message and "start with a lowercase letter" in message


def test_wrong_type_says_what_was_expected_and_what_was_found(tmp_path: Path) -> None:
    nodes = NODES.replace("[nodes.alpha]", '[nodes.alpha]\nvotes = "one"')
    found = problems(tmp_path, document(nodes=nodes))
    assert only(found, "nodes.alpha.votes") == "expected an integer, got string 'one'"


def test_boolean_is_not_accepted_as_a_number(tmp_path: Path) -> None:
    services = SERVICES.replace("[groups.web]", "[groups.web]\nmigration_threshold = true")
    found = problems(tmp_path, document(services=services))
    assert "got boolean true" in only(found, "groups.web.migration_threshold")


# -- cluster rules ----------------------------------------------------------------------------


def test_two_node_with_three_nodes_is_an_error(tmp_path: Path) -> None:
    found = problems(tmp_path, document(cluster=CLUSTER + "two_node = true\n"))
    assert "needs exactly 2 nodes, but 3" in only(found, "cluster.two_node")


def test_freeze_with_silence_fencing_is_an_error_that_explains_why(tmp_path: Path) -> None:
    found = problems(tmp_path, document(
        cluster=CLUSTER + 'no_quorum_policy = "freeze"\nfencer = "silence"\n'))
    message = only(found, "cluster.no_quorum_policy")
    assert "frozen partition keeps running" in message and "no_quorum_policy = 'stop'" in message


def test_freeze_with_the_default_guardian_fencing_is_an_error(tmp_path: Path) -> None:
    found = problems(tmp_path, document(cluster=CLUSTER + 'no_quorum_policy = "freeze"\n'))
    message = only(found, "cluster.no_quorum_policy")
    assert "fencer 'guardian'" in message and "no_quorum_policy = 'stop'" in message


def test_two_node_clusters_keep_the_silence_fencer_by_default(tmp_path: Path) -> None:
    # the guardian's bound rests on the quorum lease, which two_node does not use
    two = NODES.split("[nodes.gamma]")[0]
    cfg = load(write(tmp_path, document(nodes=two)))
    assert cfg.two_node and cfg.fencer == "silence"


def test_unknown_no_quorum_policy_is_an_error(tmp_path: Path) -> None:
    found = problems(tmp_path, document(cluster=CLUSTER + 'no_quorum_policy = "panic"\n'))
    assert "must be 'stop' or 'freeze'" in only(found, "cluster.no_quorum_policy")


# -- nodes and links --------------------------------------------------------------------------


def test_duplicate_endpoint_names_the_first_user(tmp_path: Path) -> None:
    found = problems(tmp_path, document(nodes=NODES.replace("7402", "7401")))
    assert only(found, "nodes.beta.links[0].port").startswith(
        "port 7401 on 127.0.0.1 is already used by nodes.alpha.links[0]")


def test_same_port_on_different_addresses_is_fine(tmp_path: Path) -> None:
    nodes = NODES.replace('"127.0.0.1", port = 7402', '"127.0.0.2", port = 7401')
    assert load(write(tmp_path, document(nodes=nodes))).nodes["beta"].links[0].port == 7401


def test_link_address_must_be_an_ip_literal(tmp_path: Path) -> None:
    nodes = NODES.replace('"127.0.0.1", port = 7401', '"localhost", port = 7401')
    nodes = nodes.replace('"127.0.0.1", port = 7402', '"0.0.0.0", port = 7402')
    found = problems(tmp_path, document(nodes=nodes))
    assert "not an IPv4 or IPv6 address" in only(found, "nodes.alpha.links[0].address")
    assert "not an address the other nodes can reach" in only(
        found, "nodes.beta.links[0].address")


@pytest.mark.parametrize("port", ["0", "65536", "-1"])
def test_port_must_be_in_range(tmp_path: Path, port: str) -> None:
    found = problems(tmp_path, document(nodes=NODES.replace("7401", port)))
    assert "from 1 to 65535" in only(found, "nodes.alpha.links[0].port")


def test_node_without_links_is_an_error(tmp_path: Path) -> None:
    nodes = NODES + "\n[nodes.delta]\nvotes = 1\n"
    found = problems(tmp_path, document(nodes=nodes))
    assert "at least one link" in only(found, "nodes.delta.links")


def test_link_name_used_twice_on_one_node_is_an_error(tmp_path: Path) -> None:
    nodes = NODES.replace(
        "port = 7401 }]", 'port = 7401 }, { name = "lan0", address = "10.0.0.1", port = 1 }]')
    found = problems(tmp_path, document(nodes=nodes))
    assert "appears twice" in only(found, "nodes.alpha.links[1].name")


def test_no_nodes_is_an_error(tmp_path: Path) -> None:
    found = problems(tmp_path, document(nodes="[nodes]\n", services=""))
    assert "no nodes configured" in only(found, "nodes")


def test_zero_total_votes_is_an_error(tmp_path: Path) -> None:
    nodes = NODES.replace("[nodes.alpha]", "[nodes.alpha]\nvotes = 0").replace(
        "[nodes.beta]", "[nodes.beta]\nvotes = 0").replace("[nodes.gamma]",
                                                          "[nodes.gamma]\nvotes = 0")
    found = problems(tmp_path, document(nodes=nodes))
    assert "0 votes in total" in only(found, "nodes")


def test_negative_votes_is_an_error(tmp_path: Path) -> None:
    nodes = NODES.replace("[nodes.alpha]", "[nodes.alpha]\nvotes = -1")
    assert "must be an integer >= 0" in only(problems(tmp_path, document(nodes=nodes)),
                                              "nodes.alpha.votes")


# -- timing rules -----------------------------------------------------------------------------


def test_dead_time_below_three_heartbeats_names_the_minimum(tmp_path: Path) -> None:
    found = problems(tmp_path, document(timing='heartbeat_interval = "200ms"\n'
                                               'dead_time = "500ms"'))
    assert "at least 3 x heartbeat_interval (600ms)" in only(found, "timing.dead_time")


def test_slower_heartbeats_alone_give_a_valid_slower_timing(tmp_path: Path) -> None:
    t = load(write(tmp_path, document(timing='heartbeat_interval = "500ms"'))).timing
    assert (t.dead_time, t.fence_margin) == (pytest.approx(2.0), pytest.approx(0.2))
    assert t.lease_time == pytest.approx(2.0 - 0.1 - 0.2)
    assert t.step_timeout == pytest.approx(6.0)


def test_a_written_dead_time_too_short_for_the_heartbeat_is_one_problem(
        tmp_path: Path) -> None:
    found = problems(tmp_path, document(timing='heartbeat_interval = "500ms"\n'
                                                'dead_time = "1s"'))
    assert keys(found) == ["timing.dead_time"]
    assert "must be at least 3 x heartbeat_interval (1500ms), got 1000ms" in found[0].message


def test_dead_time_of_exactly_three_heartbeats_is_accepted(tmp_path: Path) -> None:
    text = document(timing='heartbeat_interval = "200ms"\ndead_time = "600ms"')
    assert load(write(tmp_path, text)).timing.dead_time == pytest.approx(0.6)


@pytest.mark.parametrize(("timing", "key", "phrase"), [
    ('lease_time = "2s"', "timing.lease_time", "must not be longer than dead_time"),
    ('lease_time = "300ms"', "timing.lease_time", "at least 2 x heartbeat_interval (400ms)"),
    ('step_timeout = "400ms"', "timing.step_timeout", "longer than 2 x heartbeat_interval"),
    ('retransmit_interval = "2s"', "timing.retransmit_interval", "at most step_timeout / 2"),
    ('heartbeat_interval = "0s"', "timing.heartbeat_interval", "longer than 0"),
    ('fence_margin = "-1s"', "timing.fence_margin", "expected a duration"),
])
def test_timing_rules_are_enforced(tmp_path: Path, timing: str, key: str, phrase: str) -> None:
    assert phrase in only(problems(tmp_path, document(timing=timing)), key)


# -- limits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("timing", "key", "phrase"), [
    # 90 % CPU per daemon, and the cluster never formed
    ('heartbeat_interval = "1us"', "timing.heartbeat_interval",
     "must be at least 10ms, got string '1us'"),
    ('heartbeat_interval = "9ms"', "timing.heartbeat_interval", "must be at least 10ms"),
    # nothing would ever happen
    ('heartbeat_interval = "99999999999h"', "timing.heartbeat_interval",
     "must be at most 10s, got string '99999999999h'"),
    ('heartbeat_interval = "1s"\ndead_time = "11m"', "timing.dead_time",
     "must be at most 10m"),
    ('step_timeout = "1h"', "timing.step_timeout", "must be at most 10m"),
    ('guard_time = 601', "timing.guard_time", "must be at most 10m, got integer 601"),
])
def test_timing_limits_are_enforced_with_the_limit_in_the_message(
        tmp_path: Path, timing: str, key: str, phrase: str) -> None:
    message = only(problems(tmp_path, document(timing=timing)), key)
    assert phrase in message and "docs/configuration.md" in message


def test_the_limits_themselves_are_accepted(tmp_path: Path) -> None:
    t = load(write(tmp_path, document(timing='heartbeat_interval = "10ms"'))).timing
    assert t.heartbeat_interval == pytest.approx(0.01)
    t = load(write(tmp_path, document(timing='heartbeat_interval = "10s"\ndead_time = "10m"\n'
                                      'step_timeout = "10m"'))).timing
    assert (t.heartbeat_interval, t.dead_time) == (10.0, 600.0)


def test_every_other_duration_is_at_most_a_day(tmp_path: Path) -> None:
    services = SERVICES.replace('type = "dummy"', 'type = "dummy"\nstart_timeout = "25h"\n'
                                'monitor = { interval = "24h", timeout = "99999999999h" }')
    found = problems(tmp_path, document(services=services))
    assert sorted(keys(found)) == ["resources.web-state.monitor.timeout",
                                   "resources.web-state.start_timeout"]
    assert all("must be at most 24h" in p.message for p in found)


def test_a_resource_duration_parameter_is_at_most_a_day() -> None:
    from vigil.resources.dummy import DummyType

    [problem] = DummyType().check_params({"start_delay": "99999999999h"})
    assert "at most 24h" in problem


@pytest.mark.parametrize("nested", [
    "a = " + "[" * 100_000 + "]" * 100_000,  # deeper than the parser's recursion
    "a = " + "{b = " * 5_000 + "1" + "}" * 5_000,
    "a = " + "[" * 40 + "]" * 40,  # parses, and is still no cluster file
])
def test_deeply_nested_toml_is_a_config_error_not_a_crash(tmp_path: Path, nested: str) -> None:
    [problem] = problems(tmp_path, nested)
    assert "nested more than 32 levels deep" in problem.message


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    with path.open("wb") as f:
        f.truncate(17 << 20)  # sparse: 17 MiB of NUL bytes, as /dev/zero would give
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert "larger than 16 MiB" in str(caught.value)


# -- groups -----------------------------------------------------------------------------------


def test_resource_in_no_group_is_reported_on_the_resource(tmp_path: Path) -> None:
    services = SERVICES + '\n[resources.orphan]\ntype = "dummy"\n'
    found = problems(tmp_path, document(services=services))
    assert "add it to a group's resources" in only(found, "resources.orphan")


def test_resource_in_two_groups_is_an_error(tmp_path: Path) -> None:
    services = SERVICES + '\n[groups.other]\nresources = ["web-state"]\n'
    found = problems(tmp_path, document(services=services))
    assert "already in group 'web'" in only(found, "groups.other.resources")


def test_group_listing_an_unknown_resource_is_an_error(tmp_path: Path) -> None:
    services = SERVICES.replace('"web-app"]', '"web-app", "web-apq"]')
    found = problems(tmp_path, document(services=services))
    message = only(found, "groups.web.resources")
    assert "unknown resource 'web-apq'" in message and "did you mean 'web-app'?" in message


def test_group_without_resources_is_an_error(tmp_path: Path) -> None:
    found = problems(tmp_path, document(services="[groups.empty]\nresources = []\n"))
    assert "at least one resource" in only(found, "groups.empty.resources")


def test_group_dependency_cycle_is_reported_with_its_path(tmp_path: Path) -> None:
    services = """
[groups.a]
resources = ["ra"]
depends_on = ["b"]
[groups.b]
resources = ["rb"]
depends_on = ["c"]
[groups.c]
resources = ["rc"]
depends_on = ["a"]
[resources.ra]
type = "dummy"
[resources.rb]
type = "dummy"
[resources.rc]
type = "dummy"
"""
    found = problems(tmp_path, document(services=services))
    assert "a -> b -> c -> a" in only(found, "groups.a.depends_on")


def test_group_self_and_unknown_dependencies_are_errors(tmp_path: Path) -> None:
    services = SERVICES.replace("[groups.web]", '[groups.web]\ndepends_on = ["web", "db"]')
    found = problems(tmp_path, document(services=services))
    messages = [p.message for p in found if p.key == "groups.web.depends_on"]
    assert any("depends on itself" in m for m in messages)
    assert any("unknown group 'db'" in m for m in messages)


def test_group_prefer_and_nodes_must_name_configured_nodes(tmp_path: Path) -> None:
    services = SERVICES.replace(
        "[groups.web]", '[groups.web]\nprefer = { alpha = 0, delta = 1, beta = -5 }\n'
        'nodes = ["alpha", "alhpa"]')
    found = problems(tmp_path, document(services=services))
    assert "unknown node 'delta'" in only(found, "groups.web.prefer.delta")
    assert "must be a number >= 0" in only(found, "groups.web.prefer.beta")
    assert "did you mean 'alpha'?" in only(found, "groups.web.nodes[1]")


@pytest.mark.parametrize(("setting", "key"), [
    ("stickiness = -1", "groups.web.stickiness"),
    ("migration_threshold = 0", "groups.web.migration_threshold"),
    ('failure_timeout = "never"', "groups.web.failure_timeout"),
    ('failback = "yes"', "groups.web.failback"),
])
def test_group_settings_are_checked(tmp_path: Path, setting: str, key: str) -> None:
    services = SERVICES.replace("[groups.web]", f"[groups.web]\n{setting}")
    only(problems(tmp_path, document(services=services)), key)


# -- resources --------------------------------------------------------------------------------


def test_dependency_cycle_is_reported_with_its_path(tmp_path: Path) -> None:
    services = SERVICES.replace('type = "dummy"', 'type = "dummy"\ndepends_on = ["web-app"]')
    found = problems(tmp_path, document(services=services))
    assert "web-app -> web-state -> web-app" in only(found, "resources.web-app.depends_on")


def test_dependency_on_another_groups_resource_points_to_group_depends_on(
        tmp_path: Path) -> None:
    services = SERVICES + """
[groups.db]
resources = ["db-server"]
[resources.db-server]
type = "dummy"
"""
    services = services.replace('depends_on = ["web-state"]',
                                'depends_on = ["web-state", "db-server"]')
    found = problems(tmp_path, document(services=services))
    assert "groups.web.depends_on = ['db']" in only(found, "resources.web-app.depends_on")


def test_self_and_unknown_resource_dependencies_are_errors(tmp_path: Path) -> None:
    services = SERVICES.replace('depends_on = ["web-state"]',
                                'depends_on = ["web-app", "web-stat"]')
    found = problems(tmp_path, document(services=services))
    messages = [p.message for p in found if p.key == "resources.web-app.depends_on"]
    assert any("depends on itself" in m for m in messages)
    assert any("did you mean 'web-state'?" in m for m in messages)


def test_resource_without_type_is_an_error(tmp_path: Path) -> None:
    services = SERVICES.replace('type = "dummy"\n', "")
    found = problems(tmp_path, document(services=services))
    assert "missing required key 'type'" in only(found, "resources.web-state.type")


def test_params_of_other_types_are_errors(tmp_path: Path) -> None:
    services = SERVICES.replace(
        'type = "dummy"', 'type = "dummy"\nparams = { t = { x = 1 }, l = ["a", 2] }')
    found = problems(tmp_path, document(services=services))
    assert "got a table" in only(found, "resources.web-state.params.t")
    assert "holding integer 2" in only(found, "resources.web-state.params.l")


def test_monitor_timeout_must_be_positive_but_interval_may_be_zero(tmp_path: Path) -> None:
    services = SERVICES.replace(
        'type = "dummy"', 'type = "dummy"\nmonitor = { interval = "0s", timeout = "0s" }')
    found = problems(tmp_path, document(services=services))
    assert keys(found) == ["resources.web-state.monitor.timeout"]


# -- reporting --------------------------------------------------------------------------------


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    nodes = NODES.replace("[nodes.alpha]", '[nodes.alpha]\nvotes = "one"')
    services = SERVICES + '\n[resources.orphan]\ntype = "dummy"\n'
    text = document(timing='dead_time = "100ms"', nodes=nodes, services=services)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert set(keys(list(caught.value.problems))) == {
        "timing.dead_time", "nodes.alpha.votes", "resources.orphan"}
    lines = str(caught.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_problem_prints_as_file_key_message() -> None:
    problem = ConfigProblem("demo.toml", "nodes.beta.votes", "expected an integer")
    assert str(problem) == "demo.toml: nodes.beta.votes: expected an integer"


def test_unknown_resource_types_are_reported_against_the_registry(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, document()))
    assert validate_against_registry(cfg, {"dummy", "application"}) == []
    found = validate_against_registry(cfg, {"dummy", "applicaton"})
    assert [p.key for p in found] == ["resources.web-app.type"]
    assert "unknown resource type 'application'; " in found[0].message
    assert "known types: applicaton, dummy" in found[0].message


# -- digest -----------------------------------------------------------------------------------


def test_digest_is_equal_for_reordered_but_equal_files(tmp_path: Path) -> None:
    reordered = f"{SERVICES}\n{NODES}\n[timing]\n\n[cluster]\n# a comment\n" \
                'key_file    = "demo.key"\nname = "demo"\n'
    first = load(write(tmp_path, document(), "a.toml"))
    second = load(write(tmp_path, reordered, "b.toml"))
    assert first.digest == second.digest


def test_digest_changes_when_the_configuration_changes(tmp_path: Path) -> None:
    first = load(write(tmp_path, document(), "a.toml"))
    second = load(write(tmp_path, document(timing='fence_margin = "1s"'), "b.toml"))
    assert first.digest != second.digest


# -- key files --------------------------------------------------------------------------------


def test_written_key_is_private_hex_and_loads(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, document()))
    write_key(cfg.key_file)
    assert stat.S_IMODE(cfg.key_file.stat().st_mode) == 0o600
    text = cfg.key_file.read_text()
    assert len(text) == 65 and text.endswith("\n")
    int(text, 16)
    assert load_key(cfg) == text.strip().encode()
    assert check_file(cfg.path) == []


def test_write_key_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("precious\n")
    with pytest.raises(FileExistsError):
        write_key(path)
    assert path.read_text() == "precious\n"


def test_too_short_key_is_rejected(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, document()))
    cfg.key_file.write_bytes(b"0123456789abcde\n")  # 15 bytes once the newline is stripped
    cfg.key_file.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        load_key(cfg)
    problem = caught.value.problems[0]
    assert (problem.file, problem.key) == (str(cfg.key_file), "cluster.key_file")
    assert "shorter than 16" in problem.message and "vigil keygen" in problem.message


def key_problem(cfg: ClusterConfig) -> str:
    with pytest.raises(ConfigError) as caught:
        load_key(cfg)
    [problem] = caught.value.problems
    assert (problem.file, problem.key) == (str(cfg.key_file), "cluster.key_file")
    return problem.message


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_a_key_others_may_read_or_write_is_refused_with_the_fix(tmp_path: Path,
                                                                 mode: int) -> None:
    cfg = load(write(tmp_path, document()))
    write_key(cfg.key_file)
    cfg.key_file.chmod(mode)
    message = key_problem(cfg)
    assert f"readable or writable by group or others (mode {mode:04o})" in message
    assert f"chmod 600 {cfg.key_file}" in message
    assert check_file(cfg.path) == [f"{cfg.key_file}: cluster.key_file: {message}"]


def test_a_key_file_that_is_a_link_is_refused_even_to_a_private_key(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, document()))
    real = tmp_path / "real.key"
    write_key(real)
    cfg.key_file.symlink_to(real)
    message = key_problem(cfg)
    assert f"is a symbolic link (to {real})" in message
    assert f"cp --remove-destination {real} {cfg.key_file}" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the key to another user")
def test_a_key_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, document()))
    write_key(cfg.key_file)
    os.chown(cfg.key_file, 65534, 65534)
    message = key_problem(cfg)
    assert "owned by nobody, not by root who runs Vigil" in message
    assert f"chown root {cfg.key_file}" in message


def test_missing_key_is_reported_by_check_file(tmp_path: Path) -> None:
    path = write(tmp_path, document())
    [line] = check_file(path)
    assert line.startswith(f"{tmp_path / 'demo.key'}: cluster.key_file: ")
    assert f"vigil keygen {tmp_path / 'demo.key'}" in line


def test_check_file_lists_config_problems(tmp_path: Path) -> None:
    path = write(tmp_path, document(cluster='name = "demo"\nkey_file = "k"\ncolor = 1'))
    assert check_file(path) == [f"{path}: cluster.color: unknown key 'color' (known keys: "
                                "admin_group, fencer, key_file, name, no_quorum_policy, "
                                "runtime_dir, status_group, strategy, two_node, "
                                "wait_for_all)"]


# -- fuzzing ----------------------------------------------------------------------------------

BASE: dict[str, object] = json.loads(json.dumps({
    "cluster": {"name": "demo", "key_file": "demo.key"},
    "nodes": {"alpha": {"links": [{"name": "lan0", "address": "127.0.0.1", "port": 7401}]}},
    "groups": {"web": {"resources": ["web-state"], "depends_on": []}},
    "resources": {"web-state": {"type": "dummy", "depends_on": [], "params": {}}},
}))

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                    st.sampled_from(["1s", "150ms", "alpha", "web", "web-state", "127.0.0.1"]))
toml_values = st.recursive(
    scalars.filter(lambda v: v is not None),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=8)


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, object]:
    """The base document with a few values, anywhere in it, replaced by random ones."""
    doc: dict[str, object] = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 4))):
        node: object = doc
        while isinstance(node, dict | list) and node:
            choices = list(node) if isinstance(node, dict) else list(range(len(node)))
            key = draw(st.sampled_from(choices))
            child = node[key]
            if not isinstance(child, dict | list) or draw(st.booleans()):
                node[key] = draw(toml_values)
                break
            node = child
    return doc


def test_fuzz_base_document_is_valid() -> None:
    assert from_dict(BASE).name == "demo"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_documents())
def test_mutated_documents_give_a_config_or_a_config_error(doc: dict[str, object]) -> None:
    try:
        from_dict(doc)
    except ConfigError as err:
        assert err.problems and all(isinstance(p, ConfigProblem) for p in err.problems)


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(["cluster", "timing", "nodes", "groups", "resources",
                                        "other"]), toml_values))
def test_random_documents_give_a_config_or_a_config_error(doc: dict[str, object]) -> None:
    with contextlib.suppress(ConfigError):
        from_dict(doc)


@settings(max_examples=200)
@given(st.text(alphabet='[]{}=".,\n abcdeklmnorstuy0123456789_-', max_size=80))
def test_random_text_gives_a_config_or_a_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        loads(text)


def test_alerts_and_access_groups_are_read_and_checked(tmp_path: Path) -> None:
    base = cluster_toml(tmp_path)
    good = base.replace('name = "test"', 'name = "test"\nadmin_group = "vigil"\n'
                        'status_group = "vigil-ro"') + '''
[[alerts]]
command = "/usr/local/bin/page --urgent"
events = ["node_lost", "group_moved"]
timeout = "5s"

[[alerts]]
command = ["logger", "-t", "vigil"]
'''
    cfg = loads(good, tmp_path / "c.toml")
    assert (cfg.admin_group, cfg.status_group) == ("vigil", "vigil-ro")
    assert cfg.alerts[0].command == ("/usr/local/bin/page", "--urgent")
    assert cfg.alerts[0].kinds == {"node_lost", "group_moved"}
    assert cfg.alerts[0].timeout == 5.0
    assert cfg.alerts[1].kinds == frozenset() and cfg.alerts[1].timeout == 30.0

    bad = base + '''
[[alerts]]
events = ["node_lots"]
'''
    with pytest.raises(ConfigError) as err:
        loads(bad, tmp_path / "c.toml")
    text = str(err.value)
    assert "alerts[0].command: give the command to run" in text
    assert "alerts[0].events: unknown notification kind 'node_lots'" in text
    assert "did you mean 'node_lost'" in text


def test_a_derived_lease_leaves_a_late_heartbeat_its_slack(tmp_path: Path) -> None:
    # dead_time - guard_time - fence_margin would leave no lease at all: one heartbeat plus
    # the slack a busy machine needs it is (the survivors then wait a little after declaring
    # the node dead), and never more than dead_time
    cfg = load(write(tmp_path, document(
        timing='heartbeat_interval = "100ms"\ndead_time = "500ms"')))
    assert cfg.timing.lease_time == pytest.approx(0.1 + LEASE_SLACK)
    # with slow heartbeats two of them are the floor
    cfg = load(write(tmp_path, document(
        timing='heartbeat_interval = "1s"\ndead_time = "3s"\nfence_margin = "1s"')))
    assert cfg.timing.lease_time == pytest.approx(2.0)
    # at 100 ms heartbeats alone: 400 ms (all of dead_time), not the 200 ms that
    # dead_time - guard - margin gives
    cfg = load(write(tmp_path, document(timing='heartbeat_interval = "100ms"')))
    assert (cfg.timing.dead_time, cfg.timing.lease_time) == (pytest.approx(0.4),
                                                             pytest.approx(0.4))


def test_guard_time_is_read_and_checked(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, document(timing='guard_time = "250ms"')))
    assert cfg.timing.guard_time == pytest.approx(0.25)
    with pytest.raises(ConfigError, match=r"timing\.guard_time"):
        load(write(tmp_path, document(timing='guard_time = "0s"')))
