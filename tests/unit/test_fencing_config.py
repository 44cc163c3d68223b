"""[fence_devices.NAME] and [fencing] in the cluster file: what loads, and every mistake named
with its key and what to do. Loading runs no agent (the daemon loads the file often)."""

from __future__ import annotations

import pytest

from tests.unit.test_config import CLUSTER, NODES
from vigil.config import (
    ClusterConfig,
    ConfigError,
    ConfigProblem,
    FenceDevice,
    FencingConfig,
    loads,
)

BASE = f"[cluster]\n{CLUSTER}\n{NODES}"

DEVICES = """
[fence_devices.ipmi-alpha]
agent = "fence_ipmilan"
hosts = ["alpha"]
params = { ip = "192.0.2.10", username = "admin", password = "s3cret", lanplus = true }
timeout = "20s"
retries = 2

[fence_devices.pdu]
agent = "/opt/fence/fence_apc"
plugs = { alpha = "1", beta = "2", gamma = "3" }
params = { ip = "192.0.2.20", username = "apc", password = "apc", power_wait = 2 }
monitor_interval = "5m"

[fencing]
levels = { alpha = [["ipmi-alpha"], ["pdu"]] }
delay_max = "5s"
priority_delay = "10s"
"""


def config(extra: str) -> ClusterConfig:
    return loads(BASE + extra)


def problems(extra: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        loads(BASE + extra)
    return list(caught.value.problems)


def only(extra: str, key: str) -> str:
    found = problems(extra)
    messages = [p.message for p in found if p.key == key]
    assert len(messages) == 1, (key, found)
    return messages[0]


def test_devices_and_levels_load_as_typed_data() -> None:
    cfg = config(DEVICES)
    ipmi = cfg.fence_devices["ipmi-alpha"]
    assert ipmi == FenceDevice(
        name="ipmi-alpha", agent="fence_ipmilan", hosts=("alpha",),
        params={"ip": "192.0.2.10", "username": "admin", "password": "s3cret",
                "lanplus": True},
        timeout=20.0, retries=2, monitor_interval=60.0)
    pdu = cfg.fence_devices["pdu"]
    assert pdu.hosts == ("alpha", "beta", "gamma")  # from the plugs
    assert (pdu.plug("beta"), pdu.timeout, pdu.retries, pdu.monitor_interval) == \
        ("2", 60.0, 1, 300.0)
    assert cfg.fencing == FencingConfig(levels={"alpha": (("ipmi-alpha",), ("pdu",))},
                                        delay_max=5.0, priority_delay=10.0)


def test_a_node_without_levels_tries_each_device_that_can_fence_it_in_file_order() -> None:
    cfg = config(DEVICES)
    assert cfg.fence_levels("alpha") == (("ipmi-alpha",), ("pdu",))
    assert cfg.fence_levels("beta") == (("pdu",),)
    assert ClusterConfig.fence_levels(loads(BASE), "beta") == ()


def test_a_device_that_names_a_plug_is_the_node_itself_where_none_is_mapped() -> None:
    cfg = config('[fence_devices.virt]\nagent = "fence_virsh"\nhosts = ["alpha", "beta"]\n'
                 'plugs = { alpha = "vm-alpha" }\n')
    virt = cfg.fence_devices["virt"]
    assert (virt.plug("alpha"), virt.plug("beta")) == ("vm-alpha", "beta")


def test_no_fencing_configured_keeps_the_defaults() -> None:
    cfg = config("")
    assert cfg.fence_devices == {} and cfg.fencing == FencingConfig()


def test_secrets_stay_out_of_the_devices_repr() -> None:
    assert "s3cret" not in repr(config(DEVICES).fence_devices["ipmi-alpha"])


def test_loading_runs_no_agent_so_a_missing_one_loads() -> None:
    cfg = config('[fence_devices.x]\nagent = "fence_no_such_agent"\nhosts = ["alpha"]\n')
    assert cfg.fence_devices["x"].agent == "fence_no_such_agent"


def test_a_device_needs_an_agent_and_hosts() -> None:
    found = problems("[fence_devices.x]\n")
    assert {p.key for p in found} == {"fence_devices.x.agent", "fence_devices.x.hosts"}
    assert "fence_ipmilan" in next(p.message for p in found if p.key.endswith("agent"))


def test_an_agent_is_a_name_or_an_absolute_path() -> None:
    message = only('[fence_devices.x]\nagent = "sbin/fence_x"\nhosts = ["alpha"]\n',
                   "fence_devices.x.agent")
    assert "absolute path" in message


def test_unknown_hosts_and_plugs_name_the_known_nodes() -> None:
    found = problems('[fence_devices.x]\nagent = "fence_apc"\nhosts = ["alpha", "betta"]\n'
                     'plugs = { gama = "3" }\n')
    messages = {p.key: p.message for p in found}
    assert "did you mean 'beta'?" in messages["fence_devices.x.hosts[1]"]
    assert "did you mean 'gamma'?" in messages["fence_devices.x.plugs.gama"]


def test_a_plug_for_a_node_not_in_hosts_says_to_add_it() -> None:
    message = only('[fence_devices.x]\nagent = "fence_apc"\nhosts = ["alpha"]\n'
                   'plugs = { beta = "2" }\n', "fence_devices.x.plugs.beta")
    assert "add it to fence_devices.x.hosts" in message


def test_misspelt_device_keys_are_errors() -> None:
    message = only('[fence_devices.x]\nagent = "fence_apc"\nhosts = ["alpha"]\n'
                   'timout = "5s"\n', "fence_devices.x.timout")
    assert "did you mean 'timeout'?" in message


def test_action_nodename_and_the_plug_are_not_parameters() -> None:
    found = problems('[fence_devices.x]\nagent = "fence_apc"\nhosts = ["alpha"]\n'
                     'params = { action = "off", nodename = "alpha", plug = "3" }\n')
    messages = {p.key: p.message for p in found}
    assert "given by Vigil" in messages["fence_devices.x.params.action"]
    assert "given by Vigil" in messages["fence_devices.x.params.nodename"]
    assert "fence_devices.x.plugs" in messages["fence_devices.x.params.plug"]


def test_a_device_with_its_own_host_argument_may_set_port() -> None:
    cfg = config('[fence_devices.x]\nagent = "/opt/fence_custom"\nhosts = ["alpha"]\n'
                 'host_argument = "vm"\nparams = { port = 8443 }\n')
    assert cfg.fence_devices["x"].params == {"port": 8443}
    assert "fence_devices.x.params.vm" in {p.key for p in problems(
        '[fence_devices.x]\nagent = "/opt/fence_custom"\nhosts = ["alpha"]\n'
        'host_argument = "vm"\nparams = { vm = "a" }\n')}


@pytest.mark.parametrize(("value", "why"), [
    ('"two\\nlines"', "line break"),
    ('" padded"', "white space"),
    ("'\"quoted\"'", "double quotes"),
    ('["a", "b"]', "string, number or boolean"),
])
def test_values_an_agent_would_not_get_intact_are_refused(value: str, why: str) -> None:
    message = only(f'[fence_devices.x]\nagent = "fence_apc"\nhosts = ["alpha"]\n'
                   f"params = {{ password = {value} }}\n", "fence_devices.x.params.password")
    assert why in message


def test_timeout_retries_and_monitor_interval_are_checked() -> None:
    found = problems('[fence_devices.x]\nagent = "fence_apc"\nhosts = ["alpha"]\n'
                     'timeout = "0s"\nretries = -1\nmonitor_interval = "soon"\n')
    assert {p.key for p in found} == {"fence_devices.x.timeout", "fence_devices.x.retries",
                                      "fence_devices.x.monitor_interval"}


def test_a_level_naming_an_unknown_device_suggests_the_closest() -> None:
    message = only(DEVICES.replace('[["ipmi-alpha"], ["pdu"]]', '[["ipmi-alfa"]]'),
                   "fencing.levels.alpha[0]")
    assert "unknown fence device 'ipmi-alfa'" in message
    assert "did you mean 'ipmi-alpha'?" in message


def test_a_level_with_a_device_that_cannot_fence_the_node_says_how_to_fix_it() -> None:
    message = only(DEVICES.replace('levels = { alpha', 'levels = { beta'),
                   "fencing.levels.beta[0]")
    assert "fence device 'ipmi-alpha' cannot fence node 'beta'" in message
    assert "add 'beta' to fence_devices.ipmi-alpha.hosts" in message


def test_levels_of_an_unknown_node_empty_levels_and_repeats_are_errors() -> None:
    found = problems(DEVICES.replace('levels = { alpha = [["ipmi-alpha"], ["pdu"]] }',
                                     'levels = { delta = [["pdu"]], alpha = [[], '
                                     '["pdu", "pdu"]], beta = [] }'))
    messages = {p.key: p.message for p in found}
    assert "unknown node 'delta'" in messages["fencing.levels.delta"]
    assert "at least one fence device" in messages["fencing.levels.alpha[0]"]
    assert "listed twice" in messages["fencing.levels.alpha[1][1]"]
    assert "expected an array of levels" in messages["fencing.levels.beta"]


def test_fencing_delays_are_durations() -> None:
    found = problems('[fencing]\ndelay_max = "-1s"\npriority_delay = "a while"\nlevel = 1\n')
    assert {p.key for p in found} == {"fencing.delay_max", "fencing.priority_delay",
                                      "fencing.level"}


def test_retry_interval_is_a_positive_duration_ten_seconds_by_default() -> None:
    assert config("").fencing.retry_interval == 10.0
    assert config('[fencing]\nretry_interval = "2s"\n').fencing.retry_interval == 2.0
    assert "must be longer than 0" in only('[fencing]\nretry_interval = "0s"\n',
                                           "fencing.retry_interval")


def test_fencer_devices_needs_a_device_for_every_node_and_names_the_one_without() -> None:
    cluster = BASE.replace('key_file = "demo.key"\n', 'key_file = "demo.key"\nfencer = "devices"\n')
    # the pdu feeds every node; ipmi-alpha alone leaves beta and gamma without a device
    assert loads(cluster + DEVICES).fencer == "devices"
    alone = (DEVICES.split("[fence_devices.pdu]")[0]
             + '[fencing]\nlevels = { alpha = [["ipmi-alpha"]] }\n')
    with pytest.raises(ConfigError) as caught:
        loads(cluster + alone)
    messages = [p.message for p in caught.value.problems if p.key == "cluster.fencer"]
    assert len(messages) == 2
    assert "no fence device can fence node 'beta'" in messages[0]
    assert "no fence device can fence node 'gamma'" in messages[1]
    assert "add a [fence_devices.NAME] table whose hosts list 'beta'" in messages[0]


def test_a_two_node_cluster_cannot_use_the_guardian_fencer() -> None:
    two = BASE.split("[nodes.gamma]")[0]
    with pytest.raises(ConfigError) as caught:
        loads(two.replace('key_file = "demo.key"\n',
                          'key_file = "demo.key"\nfencer = "guardian"\n'))
    message = [p.message for p in caught.value.problems if p.key == "cluster.fencer"]
    assert len(message) == 1
    assert "both halves of a split keep quorum" in message[0]
    assert "use fencer = 'devices'" in message[0] and "'silence' with two links" in message[0]
    assert loads(two.replace('key_file = "demo.key"\n',
                             'key_file = "demo.key"\nfencer = "silence"\n')).two_node
