"""OCF resource agents, run as Pacemaker runs them: the real heartbeat agents from the
resource-agents package, and a tiny agent of our own that records what it was given."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import threading
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.cluster_harness import cluster_toml, wait_for
from vigil.cli.main import cli
from vigil.config import MonitorConfig, ResourceConfig, TypeDefaults
from vigil.resources import proc
from vigil.resources import registry as registry_module
from vigil.resources.model import ServiceState, UnknownResourceType
from vigil.resources.ocf import (
    OcfResource,
    OcfType,
    ocf_family,
    param_string,
    parse_ocf_duration,
    run_agent,
)
from vigil.resources.registry import default_registry

HEARTBEAT = Path("/usr/lib/ocf/resource.d/heartbeat")


def real_agent(name: str) -> Path:
    path = HEARTBEAT / name
    if not HEARTBEAT.is_dir():
        pytest.skip(f"needs the OCF agents in {HEARTBEAT} (install the resource-agents package)")
    if not os.access(path, os.X_OK):
        pytest.skip(f"needs the OCF agent {path} (install the resource-agents package)")
    return path


# The test agent. Its meta-data writes the action timeouts in the three forms agents use.
ECHO_AGENT = r"""#!/bin/sh
# A test OCF agent: records its environment, then does what its parameters say.
action="$1"
if [ "$action" = meta-data ]; then
    cat <<'EOF'
<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="Echo" version="1.0">
<version>1.1</version>
<shortdesc lang="en">Test agent</shortdesc>
<parameters>
<parameter name="dir" unique="1" required="1">
<shortdesc lang="en">Where to record</shortdesc>
<content type="string"/>
</parameter>
<parameter name="fail_action"><content type="string" default=""/></parameter>
<parameter name="fail_rc"><content type="integer" default="1"/></parameter>
<parameter name="reason"><content type="string" default=""/></parameter>
<parameter name="sleep_action"><content type="string" default=""/></parameter>
<parameter name="sleep"><content type="integer" default="0"/></parameter>
<parameter name="daemon"><content type="boolean" default="false"/></parameter>
<parameter name="flag"><content type="boolean" default="false"/></parameter>
<parameter name="items"><content type="string" default=""/></parameter>
<parameter name="count"><content type="integer" default="0"/></parameter>
<parameter name="ratio"><content type="string" default=""/></parameter>
<parameter name="whole"><content type="string" default=""/></parameter>
</parameters>
<actions>
<action name="start" timeout="3000ms"/>
<action name="stop" timeout="4"/>
<action name="monitor" timeout="5s" interval="8s" depth="0" role="Promoted"/>
<action name="monitor" timeout="5s" interval="7s" depth="0"/>
<action name="validate-all" timeout="6s"/>
<action name="meta-data" timeout="5s"/>
</actions>
</resource-agent>
EOF
    exit 0
fi
dir="$OCF_RESKEY_dir"
env -0 > "$dir/env.$action.tmp" && mv "$dir/env.$action.tmp" "$dir/env.$action"
if [ "$action" = "$OCF_RESKEY_sleep_action" ]; then
    # An orphaned process of the agent's group: only a kill of the whole group reaches it.
    sh -c 'sleep 60 & echo $! > "$1"' sh "$dir/grandchild.pid"
    sleep "$OCF_RESKEY_sleep"
fi
if [ "$action" = "$OCF_RESKEY_fail_action" ]; then
    echo "progress on stdout"
    [ -n "$OCF_RESKEY_reason" ] && echo "ocf-exit-reason:$OCF_RESKEY_reason" >&2
    echo "a last word on stderr" >&2
    exit "$OCF_RESKEY_fail_rc"
fi
case "$action" in
start)
    if [ "$OCF_RESKEY_daemon" = true ]; then
        # Keeps the agent's stdout and stderr open: the start must not wait for it.
        sleep 30 &
        echo $! > "$dir/daemon.pid"
    fi
    touch "$dir/running"; exit 0;;
stop)
    [ -f "$dir/daemon.pid" ] && kill "$(cat "$dir/daemon.pid")" 2>/dev/null
    rm -f "$dir/running" "$dir/daemon.pid"; exit 0;;
monitor)
    [ -f "$dir/running" ] && exit 0
    exit 7;;
*)
    exit 3;;
esac
"""


def write_agent(root: Path, provider: str, name: str, text: str) -> Path:
    path = root / "resource.d" / provider / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def echo_root(tmp_path: Path) -> Path:
    root = tmp_path / "ocf"
    write_agent(root, "test", "Echo", ECHO_AGENT)
    return root


@pytest.fixture
def record(tmp_path: Path) -> Path:
    directory = tmp_path / "record"
    directory.mkdir()
    return directory


@pytest.fixture
def kill_leftovers(record: Path) -> Iterator[None]:
    """Kill (by the PIDs our agent wrote down) any process a failing test left behind."""
    yield
    for name in ("grandchild.pid", "daemon.pid"):
        pid = read_pid(record / name)
        if pid is not None and proc.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def echo(root: Path, record: Path, name: str = "echo-1", *, start_timeout: float = 3.0,
         stop_timeout: float = 4.0, monitor: MonitorConfig | None = None,
         **params: str | int | float | bool | list[str]) -> OcfResource:
    config = ResourceConfig(
        name=name, type="ocf:test:Echo", group="g", params={"dir": str(record), **params},
        monitor=monitor or MonitorConfig(interval=7.0, timeout=5.0, depth=10),
        start_timeout=start_timeout, stop_timeout=stop_timeout)
    return OcfType("ocf:test:Echo", root=root).instantiate(config, "alpha", record)


def recorded_env(record: Path, action: str) -> dict[str, str]:
    raw = (record / f"env.{action}").read_bytes().decode()
    return dict(entry.split("=", 1) for entry in raw.split("\0") if "=" in entry)


# -- the real Dummy agent --------------------------------------------------------------------


def dummy(tmp_path: Path, name: str = "dummy-1") -> OcfResource:
    real_agent("Dummy")
    rtype = default_registry().get("ocf:heartbeat:Dummy")
    assert isinstance(rtype, OcfType)
    config = ResourceConfig(name=name, type="ocf:heartbeat:Dummy", group="g",
                            params={"state": str(tmp_path / f"{name}.state")})
    return rtype.instantiate(config, "alpha", tmp_path)


def test_dummy_full_life_cycle(tmp_path: Path) -> None:
    resource = dummy(tmp_path)
    state_file = tmp_path / "dummy-1.state"

    probe = resource.monitor()
    assert (probe.ok, probe.state) == (True, ServiceState.OOS)
    assert "exit 7 (OCF_NOT_RUNNING)" in probe.reason

    started = resource.in_service()
    assert (started.ok, started.state) == (True, ServiceState.IN_SERVICE), started.reason
    assert state_file.exists()
    running = resource.monitor()
    assert (running.ok, running.state) == (True, ServiceState.IN_SERVICE), running.reason

    stopped = resource.oo_service()
    assert (stopped.ok, stopped.state) == (True, ServiceState.OOS), stopped.reason
    assert not state_file.exists()
    after = resource.monitor()
    assert (after.ok, after.state) == (True, ServiceState.OOS)


def test_dummy_stop_of_a_stopped_resource_succeeds_twice(tmp_path: Path) -> None:
    # A fresh object per stop: what a restarted daemon does. Each really runs the agent.
    for _ in range(2):
        resource = dummy(tmp_path)
        result = resource.oo_service()
        assert (result.ok, result.state) == (True, ServiceState.OOS), result.reason
        assert "stop: exit 0 (OCF_SUCCESS)" in result.reason


# -- our own agent: environment, exit codes, timeouts, cancel ---------------------------------


def test_environment_is_what_pacemaker_gives(
        echo_root: Path, record: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HA_RSCTMP", raising=False)
    monkeypatch.delenv("HA_VARRUN", raising=False)
    monkeypatch.setenv("OCF_RESKEY_leftover", "from the daemon's environment")
    monkeypatch.setenv("VIGIL_OCF_ROOT", str(echo_root))
    rtype = ocf_family("ocf:test:Echo")  # found through VIGIL_OCF_ROOT
    config = ResourceConfig(
        name="echo-1", type="ocf:test:Echo", group="g",
        params={"dir": str(record), "flag": True, "items": ["a", "b c"], "count": 5,
                "ratio": 0.25, "whole": 2.0},
        monitor=MonitorConfig(interval=7.0, timeout=5.0, depth=10),
        start_timeout=3.0, stop_timeout=4.0)
    resource = rtype.instantiate(config, "alpha", record)

    assert resource.monitor().state is ServiceState.OOS  # a probe: nothing known yet
    probe = recorded_env(record, "monitor")
    assert probe["OCF_RESKEY_CRM_meta_interval"] == "0"

    assert resource.in_service().ok
    env = recorded_env(record, "start")
    assert env["OCF_ROOT"] == str(echo_root)
    assert env["OCF_RA_VERSION_MAJOR"] == "1"
    assert env["OCF_RA_VERSION_MINOR"] == "1"
    assert env["OCF_RESOURCE_INSTANCE"] == "echo-1"
    assert env["OCF_RESOURCE_TYPE"] == "Echo"
    assert env["OCF_RESOURCE_PROVIDER"] == "test"
    assert env["OCF_EXIT_REASON_PREFIX"] == "ocf-exit-reason:"
    assert env["OCF_RESKEY_dir"] == str(record)
    assert env["OCF_RESKEY_flag"] == "true"
    assert env["OCF_RESKEY_items"] == "a b c"
    assert env["OCF_RESKEY_count"] == "5"
    assert env["OCF_RESKEY_ratio"] == "0.25"
    assert env["OCF_RESKEY_whole"] == "2"
    assert env["OCF_RESKEY_CRM_meta_name"] == "start"
    assert env["OCF_RESKEY_CRM_meta_timeout"] == "3000"
    assert env["OCF_RESKEY_CRM_meta_interval"] == "0"
    assert env["OCF_RESKEY_CRM_meta_on_node"] == "alpha"
    assert env["PATH"] == os.environ["PATH"]
    assert "OCF_CHECK_LEVEL" not in env
    assert "OCF_RESKEY_leftover" not in env
    assert "HA_RSCTMP" not in env and "HA_VARRUN" not in env

    assert resource.monitor().state is ServiceState.IN_SERVICE
    env = recorded_env(record, "monitor")
    assert env["OCF_RESKEY_CRM_meta_name"] == "monitor"
    assert env["OCF_RESKEY_CRM_meta_interval"] == "7000"
    assert env["OCF_RESKEY_CRM_meta_timeout"] == "5000"
    assert env["OCF_CHECK_LEVEL"] == "10"

    assert resource.oo_service().ok
    env = recorded_env(record, "stop")
    assert env["OCF_RESKEY_CRM_meta_name"] == "stop"
    assert env["OCF_RESKEY_CRM_meta_timeout"] == "4000"
    assert env["OCF_RESKEY_CRM_meta_interval"] == "0"


def test_exit_reason_and_code_name_make_the_reason(echo_root: Path, record: Path) -> None:
    resource = echo(echo_root, record, fail_action="start", fail_rc=5, reason="disk on fire")
    result = resource.in_service()
    assert (result.ok, result.state) == (False, ServiceState.FAILED)
    # The reason is the exit-reason line, though more stderr followed it.
    assert result.reason == "start: exit 5 (OCF_ERR_INSTALLED): disk on fire"
    assert resource.last_run is not None
    assert "progress on stdout" in resource.last_run.tail()


def test_start_failure_is_failed(echo_root: Path, record: Path) -> None:
    result = echo(echo_root, record, fail_action="start", fail_rc=1).in_service()
    assert (result.ok, result.state) == (False, ServiceState.FAILED)
    # Without an exit reason, the last line of stderr says what happened.
    assert result.reason == "start: exit 1 (OCF_ERR_GENERIC); last output: a last word on stderr"


def test_monitor_exit_7_is_cleanly_stopped(echo_root: Path, record: Path) -> None:
    result = echo(echo_root, record, fail_action="monitor", fail_rc=7).monitor()
    assert (result.ok, result.state) == (True, ServiceState.OOS)
    assert "exit 7 (OCF_NOT_RUNNING)" in result.reason


def test_monitor_degraded_is_in_service(echo_root: Path, record: Path) -> None:
    resource = echo(echo_root, record, fail_action="monitor", fail_rc=190, reason="one disk")
    assert resource.in_service().ok
    result = resource.monitor()
    assert (result.ok, result.state) == (True, ServiceState.IN_SERVICE)
    assert "degraded" in result.reason and "OCF_DEGRADED" in result.reason
    assert "one disk" in result.reason


def test_monitor_error_is_failed(echo_root: Path, record: Path) -> None:
    resource = echo(echo_root, record, fail_action="monitor", fail_rc=6, reason="bad config")
    result = resource.monitor()
    assert (result.ok, result.state) == (False, ServiceState.FAILED)
    assert result.reason.endswith("monitor: exit 6 (OCF_ERR_CONFIGURED): bad config")


def test_stop_failure_is_unclean(echo_root: Path, record: Path) -> None:
    resource = echo(echo_root, record, fail_action="stop", fail_rc=1, reason="stuck")
    assert resource.in_service().ok
    result = resource.oo_service()
    assert (result.ok, result.state) == (False, ServiceState.UNCLEAN)
    assert result.reason == "stop: exit 1 (OCF_ERR_GENERIC): stuck"


@pytest.mark.usefixtures("kill_leftovers")
def test_start_past_its_timeout_is_killed_with_its_whole_group(
        echo_root: Path, record: Path) -> None:
    resource = echo(echo_root, record, start_timeout=1.0, sleep_action="start", sleep=30)
    result = resource.in_service()
    assert (result.ok, result.state) == (False, ServiceState.FAILED)
    assert "start: timed out after 1s" in result.reason
    grandchild = read_pid(record / "grandchild.pid")
    assert grandchild is not None, "the agent did not get to start its grandchild"
    wait_for(lambda: not proc.pid_alive(grandchild), 5.0, f"grandchild {grandchild} to die")


@pytest.mark.usefixtures("kill_leftovers")
def test_force_oos_interrupts_a_running_start(echo_root: Path, record: Path) -> None:
    resource = echo(echo_root, record, start_timeout=20.0, sleep_action="start", sleep=30)
    outcome = []
    starter = threading.Thread(target=lambda: outcome.append(resource.in_service()))
    starter.start()
    try:
        grandchild = wait_for(lambda: read_pid(record / "grandchild.pid"), 10.0,
                              "the start to be under way")
        stopped = resource.force_oos()
        starter.join(timeout=10.0)  # far less than the agent's 30 s sleep
        assert not starter.is_alive(), "the start was not interrupted"
    finally:
        starter.join(timeout=30.0)
    assert (stopped.ok, stopped.state) == (True, ServiceState.OOS), stopped.reason
    assert not outcome[0].ok and "interrupted" in outcome[0].reason
    assert resource.service_state() is ServiceState.OOS
    wait_for(lambda: not proc.pid_alive(grandchild), 5.0, f"grandchild {grandchild} to die")


@pytest.mark.usefixtures("kill_leftovers")
def test_start_ends_when_the_agent_exits_though_its_daemon_keeps_the_output(
        echo_root: Path, record: Path) -> None:
    resource = echo(echo_root, record, start_timeout=5.0, daemon=True)
    result = resource.in_service()
    assert (result.ok, result.state) == (True, ServiceState.IN_SERVICE), result.reason
    daemon = read_pid(record / "daemon.pid")
    assert daemon is not None and proc.pid_alive(daemon), "the agent's daemon was killed"
    assert resource.oo_service().ok
    wait_for(lambda: not proc.pid_alive(daemon), 5.0, f"daemon {daemon} to stop")


def test_an_agent_that_cannot_be_run_counts_as_not_installed(tmp_path: Path) -> None:
    run = run_agent(tmp_path / "missing", "monitor", env=dict(os.environ), timeout=5.0)
    assert run.returncode == 5
    assert str(tmp_path / "missing") in run.exit_reason


# -- meta-data -------------------------------------------------------------------------------


def seconds(text: str) -> float:
    """The test's own reading of an agent's duration ("20s", "20", "20000ms")."""
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    return float(text.removesuffix("s"))


def test_ipaddr2_defaults_come_from_its_meta_data() -> None:
    agent = real_agent("IPaddr2")
    xml = subprocess.run([str(agent), "meta-data"], capture_output=True, text=True, timeout=30,
                         check=True, env={**os.environ, "OCF_ROOT": "/usr/lib/ocf"}).stdout
    actions = {a.get("name"): a for a in
               reversed(ElementTree.fromstring(xml).findall("actions/action"))}
    expected = TypeDefaults(
        MonitorConfig(interval=seconds(actions["monitor"].get("interval", "")),
                      timeout=seconds(actions["monitor"].get("timeout", ""))),
        start_timeout=seconds(actions["start"].get("timeout", "")),
        stop_timeout=seconds(actions["stop"].get("timeout", "")))
    assert default_registry().get("ocf:heartbeat:IPaddr2").defaults() == expected


def test_defaults_read_every_duration_form(echo_root: Path) -> None:
    # start "3000ms", stop "4", monitor "5s"/"7s" (the role-less one, not the Promoted one)
    assert OcfType("ocf:test:Echo", root=echo_root).defaults() == TypeDefaults(
        MonitorConfig(interval=7.0, timeout=5.0), start_timeout=3.0, stop_timeout=4.0)


def test_check_params_reports_missing_and_misspelled_parameters() -> None:
    real_agent("IPaddr2")
    rtype = default_registry().get("ocf:heartbeat:IPaddr2")
    missing = rtype.check_params({"cidr_netmask": "24"})
    assert len(missing) == 1 and "'ip'" in missing[0] and "missing" in missing[0]
    misspelled = rtype.check_params({"ip": "198.18.0.100", "cidr_netmsk": "24"})
    assert len(misspelled) == 1
    assert "unknown parameter 'cidr_netmsk'" in misspelled[0]
    assert "did you mean 'cidr_netmask'?" in misspelled[0]
    assert rtype.check_params({"ip": "198.18.0.100", "cidr_netmask": 24}) == []


def test_broken_meta_data_is_a_clear_error(tmp_path: Path) -> None:
    agent = write_agent(tmp_path, "test", "Broken", "#!/bin/sh\necho '<resource-agent'\n")
    rtype = OcfType("ocf:test:Broken", root=tmp_path)
    problems = rtype.check_params({})
    assert len(problems) == 1
    assert str(agent) in problems[0] and "not well-formed XML" in problems[0]
    config = ResourceConfig(name="b", type="ocf:test:Broken", group="g")
    with pytest.raises(ValueError, match="meta-data"):
        rtype.instantiate(config, "alpha", tmp_path)
    assert rtype.defaults() == TypeDefaults(MonitorConfig(10.0, 20.0), 20.0, 20.0)


def test_failing_meta_data_names_the_exit_code(tmp_path: Path) -> None:
    write_agent(tmp_path, "test", "Sad", "#!/bin/sh\necho 'ocf-exit-reason:no luck' >&2\n"
                "exit 1\n")
    problems = OcfType("ocf:test:Sad", root=tmp_path).check_params({})
    assert "meta-data: exit 1 (OCF_ERR_GENERIC): no luck" in problems[0]


# -- validate-all ----------------------------------------------------------------------------


def test_validate_reports_the_agents_objection() -> None:
    real_agent("IPaddr2")
    rtype = default_registry().get("ocf:heartbeat:IPaddr2")
    config = ResourceConfig(name="vip", type="ocf:heartbeat:IPaddr2", group="g",
                            params={"ip": "not-an-address"})
    problems = rtype.validate(config)
    assert len(problems) == 1
    assert "ocf:heartbeat:IPaddr2 validate-all: exit " in problems[0]
    assert "(OCF_ERR_" in problems[0]


def test_validate_passes_a_good_dummy_and_an_agent_without_validate_all(
        tmp_path: Path, echo_root: Path, record: Path) -> None:
    real_agent("Dummy")
    config = ResourceConfig(name="d", type="ocf:heartbeat:Dummy", group="g",
                            params={"state": str(tmp_path / "d.state")})
    assert default_registry().get("ocf:heartbeat:Dummy").validate(config) == []
    echo_config = ResourceConfig(name="e", type="ocf:test:Echo", group="g",
                                 params={"dir": str(record)})
    assert OcfType("ocf:test:Echo", root=echo_root).validate(echo_config) == []  # exit 3
    assert recorded_env(record, "validate-all")["OCF_RESOURCE_INSTANCE"] == "e"


# -- the registry ----------------------------------------------------------------------------


def test_registry_makes_ocf_types_on_first_use() -> None:
    real_agent("Dummy")
    registry = default_registry()
    rtype = registry.get("ocf:heartbeat:Dummy")
    assert isinstance(rtype, OcfType) and rtype.typename() == "ocf:heartbeat:Dummy"
    assert registry.get("ocf:heartbeat:Dummy") is rtype
    with pytest.raises(UnknownResourceType,
                       match=re.escape(f"no OCF agent {HEARTBEAT}/NoSuch")):
        registry.get("ocf:heartbeat:NoSuch")
    with pytest.raises(UnknownResourceType, match="ocf:<provider>:<agent>"):
        registry.get("ocf:heartbeat")
    with pytest.raises(UnknownResourceType, match="not a valid name"):
        registry.get("ocf:..:Dummy")


# -- vigil config check ----------------------------------------------------------------------


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's default registry as in a new process: no ocf type asked for yet."""
    monkeypatch.setattr(registry_module, "_default", None)


def dummy_cluster(tmp_path: Path, params: str) -> Path:
    groups = f"""
[groups.web]
resources = ["web-dummy"]

[resources.web-dummy]
type = "ocf:heartbeat:Dummy"
params = {{ {params} }}
"""
    path = tmp_path / "cluster.toml"
    path.write_text(cluster_toml(tmp_path, groups=groups))
    return path


@pytest.mark.usefixtures("fresh_registry")
def test_config_check_accepts_an_ocf_dummy(tmp_path: Path) -> None:
    real_agent("Dummy")
    path = dummy_cluster(tmp_path, f'state = "{tmp_path}/web.state"')
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok (cluster test" in result.output


@pytest.mark.usefixtures("fresh_registry")
def test_config_check_names_an_unknown_ocf_parameter(tmp_path: Path) -> None:
    real_agent("Dummy")
    path = dummy_cluster(tmp_path, f'stat = "{tmp_path}/web.state"')
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}: resources.web-dummy.params: unknown parameter 'stat'" in result.output
    assert "did you mean 'state'?" in result.output


# -- small pieces ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("20s", 20.0), ("20", 20.0), ("20000ms", 20.0), ("2min", 120.0), ("1.5s", 1.5),
    ("90 sec", 90.0), ("1h", 3600.0)])
def test_parse_ocf_duration(text: str, expected: float) -> None:
    assert parse_ocf_duration(text) == expected


@pytest.mark.parametrize("text", ["", "fast", "20 parsecs", "-5s"])
def test_parse_ocf_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_ocf_duration(text)


def test_param_string() -> None:
    assert [param_string(v) for v in (True, False, 7, 2.0, 0.5, ["x", "y"], "s p")] == [
        "true", "false", "7", "2", "0.5", "x y", "s p"]
