"""Fence agents run for real (small agents the tests write, and Vigil's own): what reaches the
agent, what comes back, retries, cancellation, secrets, metadata kept per agent, and
``vigil config check`` of fence devices."""

from __future__ import annotations

import logging
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.cluster_harness import cluster_toml
from vigil.cli.main import cli
from vigil.config import FenceDevice
from vigil.fencing.agents import forget_metadata, read_metadata, run_device, run_level

SECRET = "pa55-w0rd-xyz"

#: Metadata listing only "port" as the host argument (no "plug").
PORT_METADATA = """<?xml version="1.0" ?>
<resource-agent name="fence_test" shortdesc="test agent">
<parameters>
  <parameter name="action" required="1"><content type="string" /></parameter>
  <parameter name="port" required="1"><content type="string" /></parameter>
  <parameter name="ip" required="1"><content type="string" /></parameter>
  <parameter name="password" required="0"><content type="string" /></parameter>
</parameters>
<actions><action name="on" /><action name="off" /><action name="status" />
<action name="monitor" /><action name="metadata" /></actions>
</resource-agent>
"""


@pytest.fixture(autouse=True)
def _fresh_metadata() -> Iterator[None]:
    forget_metadata()
    yield
    forget_metadata()


def agent(tmp_path: Path, body: str, name: str = "fence_test") -> Path:
    """A shell fence agent: stdin saved to ``stdin`` (each run appended to ``runs``), then
    ``body``. It answers action=metadata with PORT_METADATA."""
    path = tmp_path / name
    (tmp_path / "metadata.xml").write_text(PORT_METADATA)
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        input=$(cat)
        printf '%s\\n' "$input" > {tmp_path}/stdin
        echo "$# $*" > {tmp_path}/argv
        if printf '%s\\n' "$input" | grep -qx 'action=metadata'; then
            echo run >> {tmp_path}/metadata-runs
            cat {tmp_path}/metadata.xml
            exit 0
        fi
        echo run >> {tmp_path}/runs
        """) + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def device(path: Path, **changes: object) -> FenceDevice:
    values: dict[str, object] = {
        "name": "test", "agent": str(path), "hosts": ("alpha", "beta"),
        "plugs": {"alpha": "vm-alpha"}, "params": {"ip": "127.0.0.9", "password": SECRET},
        "timeout": 10.0, "retries": 0}
    values.update(changes)
    return FenceDevice(**values)  # type: ignore[arg-type]


def runs(tmp_path: Path) -> int:
    path = tmp_path / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_the_agent_gets_its_arguments_on_stdin_and_none_on_the_command_line(
        tmp_path: Path) -> None:
    result = run_device(device(agent(tmp_path, "exit 0\n")), "off", "alpha")
    assert result.ok and result.exit_code == 0 and result.attempts == 1
    # The metadata lists "port", not "plug": the plug goes there, as Pacemaker passes it.
    assert (tmp_path / "stdin").read_text().splitlines() == [
        "action=off", "nodename=alpha", "port=vm-alpha", "ip=127.0.0.9",
        f"password={SECRET}"]
    assert (tmp_path / "argv").read_text().strip() == "0"
    assert (result.device, result.action, result.target, result.plug) == \
        ("test", "off", "alpha", "vm-alpha")
    assert result.agent == str(tmp_path / "fence_test")


def test_status_tells_on_from_off_by_exit_code(tmp_path: Path) -> None:
    on = run_device(device(agent(tmp_path, "echo 'Status: ON'; exit 0\n")), "status", "beta")
    assert (on.ok, on.power, on.plug) == (True, "on", "beta")
    off = run_device(device(agent(tmp_path, "echo 'Status: OFF'; exit 2\n")), "status", "beta")
    assert (off.ok, off.power) == (True, "off")
    assert off.output == "Status: OFF\n"


def test_a_failure_names_the_agent_device_node_and_the_agents_reason(tmp_path: Path) -> None:
    body = """\
        echo "2026-01-01 10:00:00,000 ERROR: Failed: Unable to connect/login to fencing device" >&2
        echo "2026-01-01 10:00:00,000 ERROR: Please use '-h' for usage" >&2
        exit 1
        """
    result = run_device(device(agent(tmp_path, body), retries=1), "off", "alpha")
    assert not result.ok and result.exit_code == 1 and result.attempts == 2
    assert result.describe() == (
        "off of alpha (plug vm-alpha) by test (fence_test): exit 1 (EC_GENERIC_ERROR): "
        "Failed: Unable to connect/login to fencing device; 2 attempts")
    assert "Unable to connect/login" in result.stderr_tail
    assert runs(tmp_path) == 2


def test_a_failed_attempt_is_retried_until_one_succeeds(tmp_path: Path) -> None:
    body = f"""\
        [ "$(wc -l < {tmp_path}/runs)" -ge 3 ] && exit 0
        echo "ERROR: Failed: Connection lost" >&2
        exit 1
        """
    result = run_device(device(agent(tmp_path, body), retries=2), "reboot", "alpha")
    assert result.ok and result.attempts == 3 and runs(tmp_path) == 3


def test_secrets_never_show_in_results_or_logs(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    body = """\
        echo "connecting with $input" >&2
        echo "ERROR: Failed: bad password $input" >&2
        exit 1
        """
    caplog.set_level(logging.DEBUG)
    result = run_device(device(agent(tmp_path, body), retries=1), "off", "alpha")
    assert not result.ok
    shown = " ".join([result.reason, result.stderr_tail, result.output, result.describe(),
                      repr(result), caplog.text])
    assert SECRET not in shown
    assert "password=***" in result.stderr_tail
    assert "ip=127.0.0.9" in result.stderr_tail  # what is not secret stays readable


def test_a_missing_agent_is_a_failed_result_not_an_exception(tmp_path: Path) -> None:
    result = run_device(device(tmp_path / "fence_gone", retries=3), "off", "alpha")
    assert not result.ok and result.attempts == 0 and result.exit_code is None
    assert f"no fence agent {tmp_path}/fence_gone" in result.describe()


def test_a_target_the_device_cannot_fence_is_the_callers_mistake(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot fence 'gamma'"):
        run_device(device(agent(tmp_path, "exit 0\n")), "off", "gamma")
    with pytest.raises(ValueError, match="fence action 'shoot'"):
        run_device(device(agent(tmp_path, "exit 0\n")), "shoot", "alpha")


def test_cancel_kills_the_running_agent_and_stops_the_retries(tmp_path: Path) -> None:
    cancel = threading.Event()
    path = agent(tmp_path, "sleep 60 & wait\n")
    results = []
    worker = threading.Thread(target=lambda: results.append(
        run_device(device(path, retries=5, timeout=60.0), "off", "alpha", cancel=cancel)))
    worker.start()
    deadline = time.monotonic() + 20
    while runs(tmp_path) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    cancel.set()
    worker.join(30)
    assert not worker.is_alive()
    (result,) = results
    assert result.cancelled and not result.ok and result.attempts == 1
    assert "interrupted" in result.reason


def test_the_device_itself_is_monitored_without_a_node(tmp_path: Path) -> None:
    result = run_device(device(agent(tmp_path, "exit 0\n")), "monitor")
    assert result.ok and result.target is None and result.plug is None
    assert (tmp_path / "stdin").read_text().splitlines() == [
        "action=monitor", "ip=127.0.0.9", f"password={SECRET}"]


def test_metadata_is_read_once_per_agent(tmp_path: Path) -> None:
    path = agent(tmp_path, "exit 0\n")
    assert read_metadata(path).host_argument == "port"
    run_device(device(path), "off", "alpha")
    run_device(device(path), "on", "alpha")
    assert len((tmp_path / "metadata-runs").read_text().splitlines()) == 1


def test_a_device_naming_its_host_argument_needs_no_metadata(tmp_path: Path) -> None:
    path = agent(tmp_path, "exit 0\n")
    run_device(device(path, host_argument="vm"), "off", "alpha")
    assert "vm=vm-alpha" in (tmp_path / "stdin").read_text().splitlines()
    assert not (tmp_path / "metadata-runs").exists()


def test_vigils_namespace_agent_runs_by_name_like_any_agent() -> None:
    result = run_device(FenceDevice("ns", "fence_vigil_ns", ("alpha",)), "metadata")
    assert result.ok, result.describe()
    assert result.agent.endswith("/fence_vigil_ns")
    meta = read_metadata("fence_vigil_ns")
    assert meta.host_argument == "plug"
    assert {"off", "on", "reboot", "status", "monitor", "list"} <= set(meta.actions)


# -- vigil config check ---------------------------------------------------------------------------


def check(tmp_path: Path, devices: str) -> tuple[int, str]:
    path = tmp_path / "cluster.toml"
    path.write_text(cluster_toml(tmp_path) + devices)
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    return result.exit_code, result.output


def test_config_check_accepts_devices_whose_agents_accept_them(tmp_path: Path) -> None:
    code, output = check(tmp_path, """
[fence_devices.ns]
agent = "fence_vigil_ns"
hosts = ["alpha", "beta", "gamma"]
plugs = { alpha = "vftest-alpha" }
params = { power_timeout = 5 }
""")
    assert code == 0, output
    assert "1 fence devices" in output


def test_config_check_names_unknown_and_missing_parameters(tmp_path: Path) -> None:
    if not Path("/usr/sbin/fence_apc").is_file():
        pytest.skip("needs fence_apc (Debian: apt-get install fence-agents)")
    code, output = check(tmp_path, """
[fence_devices.pdu]
agent = "fence_apc"
hosts = ["alpha"]
params = { ipaddr = "192.0.2.1", usernme = "apc", password = "x" }
""")
    assert code == 2
    assert "fence_devices.pdu.params: fence_apc: unknown parameter 'usernme'" in output
    assert "did you mean 'username'?" in output
    assert "required parameter 'username'" in output


def test_config_check_names_agents_that_are_missing_or_do_not_answer(tmp_path: Path) -> None:
    mute = tmp_path / "fence_mute"
    mute.write_text("#!/bin/sh\necho 'ERROR: no metadata here' >&2\nexit 1\n")
    mute.chmod(0o755)
    code, output = check(tmp_path, f"""
[fence_devices.gone]
agent = "fence_no_such_agent"
hosts = ["alpha"]

[fence_devices.mute]
agent = "{mute}"
hosts = ["beta"]
""")
    assert code == 2
    assert "fence_devices.gone.agent: no fence agent /usr/sbin/fence_no_such_agent" in output
    assert (f"fence_devices.mute.agent: fence agent {mute} does not answer action=metadata: "
            "exit 1 (EC_GENERIC_ERROR): no metadata here") in output


# -- levels ---------------------------------------------------------------------------------------


def logging_agent(tmp_path: Path, name: str, fail: str = "") -> FenceDevice:
    """A device whose agent appends "<name> <action>" to ``order`` and fails ``fail``."""
    path = tmp_path / f"fence_{name}"
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        action=$(grep '^action=' | cut -d= -f2)
        echo "{name} $action" >> {tmp_path}/order
        [ "$action" = "{fail}" ] && {{ echo "ERROR: Failed: {name} refuses" >&2; exit 1; }}
        exit 0
        """))
    path.chmod(0o755)
    return FenceDevice(name=name, agent=str(path), hosts=("alpha",), retries=0,
                       host_argument="plug")


def order(tmp_path: Path) -> list[str]:
    return (tmp_path / "order").read_text().splitlines()


def test_a_reboot_of_a_level_of_two_devices_is_off_on_both_then_on_on_both(
        tmp_path: Path) -> None:
    level = [logging_agent(tmp_path, "psu-a"), logging_agent(tmp_path, "psu-b")]
    result = run_level(level, "reboot", "alpha")
    assert result.ok
    assert order(tmp_path) == ["psu-a off", "psu-b off", "psu-a on", "psu-b on"]


def test_a_level_fails_at_its_first_failing_device(tmp_path: Path) -> None:
    level = [logging_agent(tmp_path, "psu-a", fail="off"), logging_agent(tmp_path, "psu-b")]
    result = run_level(level, "reboot", "alpha")
    assert not result.ok and order(tmp_path) == ["psu-a off"]
    assert "psu-a refuses" in result.describe()


def test_a_failed_power_on_after_every_off_still_fences_the_node(tmp_path: Path) -> None:
    level = [logging_agent(tmp_path, "psu-a", fail="on"), logging_agent(tmp_path, "psu-b")]
    result = run_level(level, "reboot", "alpha")
    assert result.ok
    assert order(tmp_path) == ["psu-a off", "psu-b off", "psu-a on", "psu-b on"]
    assert [r.ok for r in result.results] == [True, True, False, True]


def test_a_level_of_one_device_passes_the_action_as_asked(tmp_path: Path) -> None:
    assert run_level([logging_agent(tmp_path, "ipmi")], "reboot", "alpha").ok
    assert order(tmp_path) == ["ipmi reboot"]
