"""Fence agents as Pacemaker's fencer runs them: the stdin arguments, the meaning of their exit
codes, and their metadata, read from the real agents of ``fence-agents`` where installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.config import FenceDevice
from vigil.fencing.agents import (
    FenceAgentError,
    FenceExit,
    agent_arguments,
    encode_arguments,
    exit_name,
    interpret,
    is_secret,
    read_metadata,
    resolve_agent,
)
from vigil.fencing.check import check_params
from vigil.fencing.metadata import FenceMetadata, FenceMetadataError
from vigil.resources.proc import CommandResult

FENCE_AGENTS = Path("/usr/sbin")


def installed(agent: str) -> Path:
    path = FENCE_AGENTS / agent
    if not path.is_file():
        pytest.skip(f"{path} is not installed (Debian: apt-get install fence-agents)")
    return path


def device(**changes: object) -> FenceDevice:
    values: dict[str, object] = {
        "name": "pdu", "agent": "fence_apc", "hosts": ("alpha", "beta"),
        "plugs": {"alpha": "3"},
        "params": {"ip": "192.0.2.7", "username": "apc", "password": "s3cret",
                   "ssh": True, "power_wait": 2.0},
    }
    values.update(changes)
    return FenceDevice(**values)  # type: ignore[arg-type]


# -- arguments ----------------------------------------------------------------------------------


def test_a_fencing_operation_passes_action_node_plug_then_the_parameters() -> None:
    arguments = agent_arguments(device(), "off", "alpha", "plug")
    assert list(arguments.items()) == [
        ("action", "off"), ("nodename", "alpha"), ("plug", "3"), ("ip", "192.0.2.7"),
        ("password", "s3cret"), ("power_wait", "2"), ("ssh", "true"), ("username", "apc")]
    assert encode_arguments(arguments).decode().splitlines()[:3] == [
        "action=off", "nodename=alpha", "plug=3"]


def test_a_node_without_a_plug_entry_is_its_own_plug_under_the_agents_host_argument() -> None:
    assert agent_arguments(device(), "reboot", "beta", "port")["port"] == "beta"


def test_no_plug_is_passed_when_the_agent_takes_none() -> None:
    arguments = agent_arguments(device(), "off", "alpha", None)
    assert "plug" not in arguments and "port" not in arguments
    assert arguments["nodename"] == "alpha"
    assert "plug" not in agent_arguments(device(), "off", "alpha", "none")


def test_an_operation_on_the_device_itself_names_no_node() -> None:
    assert agent_arguments(device(), "monitor", None, "plug").keys() == {
        "action", "ip", "password", "power_wait", "ssh", "username"}


def test_every_argument_is_one_line_and_one_that_cannot_be_is_refused() -> None:
    assert encode_arguments({"action": "status", "ip": "a b=c"}) == \
        b"action=status\nip=a b=c\n"
    with pytest.raises(ValueError, match="line break") as caught:
        encode_arguments({"password": "two\nlines"})
    assert "two" not in str(caught.value)  # a secret is not shown even in the error
    with pytest.raises(ValueError, match="name"):
        encode_arguments({"a=b": "x"})


@pytest.mark.parametrize("name", ["passwd", "password", "snmp_priv_passwd", "password_script",
                                  "community", "secret_key", "access_key", "apikey", "token",
                                  "hexadecimal_kg", "key"])
def test_parameters_named_as_secrets_are_secrets(name: str) -> None:
    assert is_secret(name)


@pytest.mark.parametrize("name", ["ip", "ipaddr", "username", "login", "plug", "ssh",
                                  "identity_file", "tlskey_path", "keyboard"])
def test_other_parameters_are_not(name: str) -> None:
    assert not is_secret(name)


# -- exit codes ---------------------------------------------------------------------------------


def ran(code: int | None, stderr: str = "", **flags: bool) -> CommandResult:
    return CommandResult(("/usr/sbin/fence_x",), code, pid=42, stderr=stderr, **flags)


IPMI_STDERR = """\
/usr/sbin/fence_ipmilan:5: DeprecationWarning: 'pipes' is deprecated
  from pipes import quote
2026-12-01 02:24:05,147 ERROR: Failed: Unable to obtain correct plug status or plug is not available

"""


def test_status_exit_0_is_on_and_2_is_off_and_both_are_answers() -> None:
    assert interpret("status", ran(0), 20) == (True, "on", "the plug is on")
    assert interpret("status", ran(2), 20) == (True, "off", "the plug is off")


def test_status_exit_1_is_no_answer_with_the_agents_reason() -> None:
    outcome = interpret("status", ran(1, IPMI_STDERR), 20)
    assert not outcome.ok and outcome.power is None
    assert outcome.reason == ("exit 1 (EC_GENERIC_ERROR): Failed: Unable to obtain correct "
                              "plug status or plug is not available")


def test_power_actions_succeed_on_0_only() -> None:
    assert interpret("off", ran(0), 20).ok
    assert not interpret("off", ran(2), 20).ok  # 2 means "off" only as status's answer
    assert not interpret("reboot", ran(7), 20).ok
    assert "EC_WAITING_OFF" in interpret("off", ran(7), 20).reason


def test_the_usage_hint_is_not_taken_for_the_reason() -> None:
    stderr = ("2026-12-01 02:23:38,140 ERROR: Ipmitool not found or not accessible\n\n"
              "2026-12-01 02:23:38,140 ERROR: Please use '-h' for usage\n")
    assert interpret("off", ran(1, stderr), 20).reason.endswith(
        ": Ipmitool not found or not accessible")


def test_without_an_error_line_the_last_line_of_stderr_is_the_reason() -> None:
    assert interpret("off", ran(1, "connecting\nno route to host\n"), 20).reason == \
        "exit 1 (EC_GENERIC_ERROR): no route to host"


def test_a_timeout_a_cancel_a_signal_and_a_missing_program_are_failures() -> None:
    assert interpret("off", ran(None, timed_out=True), 2.5).reason == \
        "timed out after 2.5s; killed the agent's process group"
    assert not interpret("status", ran(None, cancelled=True), 20).ok
    assert interpret("off", ran(-9), 20).reason == "the agent was killed by SIGKILL"
    missing = CommandResult(("/nowhere/fence_x",), None,
                            start_error=FileNotFoundError(2, "No such file or directory"))
    assert interpret("off", missing, 20) == (
        False, None, "cannot run /nowhere/fence_x: No such file or directory")


def test_exit_codes_are_named_as_the_library_names_them() -> None:
    assert exit_name(FenceExit.LOGIN_DENIED) == "EC_LOGIN_DENIED"
    assert exit_name(12) == "EC_FETCH_VM_UUID"
    assert exit_name(99) == "not a fence-agents exit code"


# -- finding agents -----------------------------------------------------------------------------


def test_an_agent_is_found_by_name_where_fence_agents_installs() -> None:
    path = installed("fence_ipmilan")
    assert resolve_agent("fence_ipmilan") == path


def test_vigils_own_agent_is_found_by_name_beside_vigil() -> None:
    path = resolve_agent("fence_vigil_ns")
    assert path.name == "fence_vigil_ns" and path.is_file()


def test_a_relative_path_or_a_missing_agent_is_refused_with_the_places_looked_at() -> None:
    with pytest.raises(FenceAgentError, match=r"name .* or an absolute path"):
        resolve_agent("bin/fence_x")
    with pytest.raises(FenceAgentError, match=r"no fence agent /usr/sbin/fence_nosuch .*"
                       r"fence-agents"):
        resolve_agent("fence_nosuch")


# -- metadata -----------------------------------------------------------------------------------


def test_fence_ipmilan_metadata_reads_into_types() -> None:
    installed("fence_ipmilan")
    meta = read_metadata("fence_ipmilan")
    assert meta.name == "fence_ipmilan"
    assert {"on", "off", "reboot", "status", "monitor"} <= set(meta.actions)
    assert "fence_idrac" in meta.symlinks
    lanplus = meta.parameter("lanplus")
    assert lanplus is not None and lanplus.type == "boolean" and lanplus.default == "0"
    ipport = meta.parameter("ipport")
    assert ipport is not None and ipport.type == "integer" and ipport.default == "623"
    auth = meta.parameter("auth")
    assert auth is not None and auth.type == "select" and {"md5", "none"} <= set(auth.choices)
    ipaddr = meta.parameter("ipaddr")
    assert ipaddr is not None and ipaddr.deprecated
    ip = meta.parameter("ip")
    assert ip is not None and ip.obsoletes == "ipaddr" and not ip.deprecated
    assert meta.aliases("ip") == {"ip", "ipaddr"} == meta.aliases("ipaddr")
    assert meta.host_argument == "plug"


@pytest.mark.parametrize("agent", ["fence_virsh", "fence_apc"])
def test_plug_agents_require_address_login_and_plug(agent: str) -> None:
    installed(agent)
    meta = read_metadata(agent)
    required = {p.name for p in meta.parameters if p.required}
    assert {"ip", "username", "plug", "action"} <= required
    assert meta.supports("list") and meta.supports("off")
    assert meta.aliases("username") == {"username", "login"}


def test_a_device_is_checked_against_its_agents_metadata() -> None:
    installed("fence_apc")
    meta = read_metadata("fence_apc")
    bad = device(params={"ipadr": "192.0.2.7", "password": "s3cret", "ssh": "maybe",
                         "power_wait": "soon", "ipport": "x"})
    problems: dict[str, str] = {}
    for key, message in check_params(bad, meta):
        problems[key] = f"{problems.get(key, '')}\n{message}"
    unknown = problems["fence_devices.pdu.params"]
    assert "unknown parameter 'ipadr'" in unknown and "did you mean 'ipaddr'?" in unknown
    assert "'ssh' is a boolean" in problems["fence_devices.pdu.params.ssh"]
    assert "'power_wait' is a number of seconds" in \
        problems["fence_devices.pdu.params.power_wait"]
    assert "'ipport' is an integer" in problems["fence_devices.pdu.params.ipport"]
    missing = [m for k, m in check_params(bad, meta) if "required" in m]
    # ip is missing (ipadr is a typo); username is missing; the plug comes from Vigil.
    assert any("required parameter 'ip'" in m for m in missing)
    assert any("required parameter 'username'" in m for m in missing)
    assert not any("'plug'" in m or "'port'" in m or "'action'" in m for m in missing)
    assert not any("'ipaddr'" in m or "'login'" in m for m in missing)  # named once


def test_old_names_of_parameters_count_as_given() -> None:
    installed("fence_apc")
    meta = read_metadata("fence_apc")
    old = device(params={"ipaddr": "192.0.2.7", "login": "apc", "passwd": "s3cret"})
    assert check_params(old, meta) == []


def test_a_wrong_choice_names_the_choices_and_hides_secrets() -> None:
    installed("fence_ipmilan")
    meta = read_metadata("fence_ipmilan")
    bad = device(agent="fence_ipmilan", params={"ip": "192.0.2.9", "auth": "md6",
                                                "lanplus": "x", "password": "hunter2"})
    text = " ".join(m for _, m in check_params(bad, meta))
    assert "'auth' is one of md5, password, none, got 'md6'" in text
    assert "hunter2" not in text


def test_metadata_that_is_not_an_agents_is_refused_with_the_reason() -> None:
    with pytest.raises(FenceMetadataError, match="printed no metadata"):
        FenceMetadata.parse("  \n", "fence agent /x")
    with pytest.raises(FenceMetadataError, match="not well-formed XML"):
        FenceMetadata.parse("<resource-agent", "fence agent /x")
    with pytest.raises(FenceMetadataError, match="<html>, not <resource-agent>"):
        FenceMetadata.parse("<html/>", "fence agent /x")
