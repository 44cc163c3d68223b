"""The NIC monitors' judgement (vigil/cluster/nics.py) and what the strategies make of it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.cluster.nics import Dampening, NicFacts, NicTracker, address_nics
from vigil.cluster.strategy import CostStrategy, LocalCostContext, PreferredListStrategy
from vigil.config import ConfigError, ResourceConfig, loads

UP = NicFacts(exists=True, admin_up=True, carrier=True, operstate="UP")
NO_CARRIER = NicFacts(exists=True, admin_up=True, carrier=False, operstate="LOWERLAYERDOWN")
RULE = Dampening(up_hold=1.0, max_up_hold=30.0, flap_window=60.0)


def test_what_makes_a_nic_unusable_is_said_in_words() -> None:
    assert UP.problem() is None
    assert NicFacts(exists=False).problem() == "no such interface"
    assert NicFacts(exists=True).problem() == "administratively down"
    assert "no carrier" in str(NO_CARRIER.problem())
    assert NicFacts(exists=True, admin_up=True, carrier=True,
                    operstate="DORMANT").problem() == "operstate DORMANT"
    # a veth or a tunnel says UNKNOWN and passes traffic
    assert NicFacts(exists=True, admin_up=True, carrier=True,
                    operstate="UNKNOWN").problem() is None


def test_a_fall_is_believed_at_once_a_return_after_the_hold() -> None:
    t = NicTracker(["eth0"], RULE)
    [first] = t.link("eth0", UP, 0.0)
    assert first.up
    [down] = t.link("eth0", NO_CARRIER, 5.0)
    assert not down.up and "no carrier" in down.reason
    assert t.down() == {"eth0": down.reason}
    assert t.link("eth0", UP, 5.5) == []  # back, but not yet believed
    assert t.deadline() == pytest.approx(6.5)  # the first fall: the short hold, 1 s
    assert t.tick(6.4) == []
    [up] = t.tick(6.5)
    assert up.up and t.down() == {}


def test_a_nic_first_seen_down_is_down_and_one_not_yet_seen_counts_as_down() -> None:
    t = NicTracker(["eth0", "eth1"], RULE)
    assert set(t.down()) == {"eth0", "eth1"}
    [change] = t.link("eth1", NicFacts(exists=False), 0.0)
    assert not change.up and change.reason == "no such interface"
    assert t.down() == {"eth0": "not yet observed", "eth1": "no such interface"}
    assert t.link("other", UP, 0.0) == []  # not watched


def test_a_flapping_nic_moves_things_once_and_settles_after_the_hold_grew() -> None:
    """Down and up every 200 ms for 10 s: one change down, none while it flaps, one up after
    it stayed up for the hold the flapping made (doubled at each fall, at most 30 s)."""
    t = NicTracker(["eth0"], RULE)
    t.link("eth0", UP, 0.0)
    changes = []
    now = 1.0
    for _ in range(25):
        changes += t.link("eth0", NO_CARRIER, now)
        changes += t.tick(now + 0.1)
        changes += t.link("eth0", UP, now + 0.2)
        changes += t.tick(now + 0.3)
        now += 0.4
    assert [c.up for c in changes] == [False]
    deadline = t.deadline()
    assert deadline is not None and deadline == pytest.approx(now - 0.2 + 30.0)
    assert [c.up for c in t.tick(deadline)] == [True]


def test_a_nic_quiet_for_a_whole_window_gets_the_short_hold_back() -> None:
    t = NicTracker(["eth0"], RULE)
    t.link("eth0", UP, 0.0)
    for start in (1.0, 3.0, 7.0):
        t.link("eth0", NO_CARRIER, start)
        t.link("eth0", UP, start + 0.1)
    assert t.deadline() == pytest.approx(7.1 + 4.0)  # 1 s, doubled at each later fall
    t.tick(20.0)
    t.link("eth0", NO_CARRIER, 100.0)
    t.link("eth0", UP, 100.5)
    assert t.deadline() == pytest.approx(101.5)


def test_an_unreachable_target_takes_a_nic_with_carrier_down() -> None:
    t = NicTracker(["eth0"], RULE)
    assert t.reachability("eth0", "none answered", 0.0) == []  # not yet seen by netlink
    [change] = t.link("eth0", UP, 0.1)
    assert not change.up and change.reason == "none answered"
    assert t.reachability("eth0", None, 1.0) == []
    [up] = t.tick(2.0)
    assert up.up


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0.01, 5.0)), max_size=40))
def test_whatever_the_kernel_says_a_nic_is_never_believed_up_while_it_is_down(
    steps: list[tuple[bool, float]],
) -> None:
    """Safety of the rule: down is never late; up is never early (before the hold)."""
    t = NicTracker(["eth0"], RULE)
    now = 0.0
    t.link("eth0", UP, now)
    up_since: float | None = 0.0
    for up, gap in steps:
        deadline = t.deadline()
        while deadline is not None and deadline <= now + gap:
            t.tick(deadline)
            assert up_since is not None and deadline - up_since >= RULE.up_hold - 1e-9
            deadline = t.deadline()
        now += gap
        t.link("eth0", UP if up else NO_CARRIER, now)
        if not up:
            up_since = None
            assert "eth0" in t.down()
        elif up_since is None:
            up_since = now


def test_address_nics_reads_a_string_or_a_list_of_an_ip_resource() -> None:
    def ip(**params: object) -> ResourceConfig:
        return ResourceConfig("vip", "ip", "web", params=params)  # type: ignore[arg-type]

    assert address_nics(ip(nic="eth0")) == ("eth0",)
    assert address_nics(ip(nic=["eth0", "eth1"])) == ("eth0", "eth1")
    assert address_nics(ip()) == ()
    # an OCF agent's nic parameter is its own business
    assert address_nics(ResourceConfig("vip", "ocf:heartbeat:IPaddr2", "web",
                                       params={"nic": "eth0"})) == ()


CONFIG = """
[cluster]
name = "c"
key_file = "k"
[nodes.a]
links = [{ name = "lan", address = "127.0.0.1", port = 7001 }]
[nodes.b]
links = [{ name = "lan", address = "127.0.0.1", port = 7002 }]
[groups.web]
resources = ["vip", "vip2"]
[resources.vip]
type = "ip"
params = { address = "198.18.0.100", nic = ["eth0", "eth1"] }
[resources.vip2]
type = "ip"
params = { address = "198.18.1.100", nic = "eth2" }
[groups.other]
resources = ["app"]
[resources.app]
type = "dummy"
"""


def _ctx(down: dict[str, str]) -> LocalCostContext:
    cfg = loads(CONFIG)
    return LocalCostContext(node="a", config=cfg, active=frozenset(), fail_counts={},
                            standby=frozenset(), nics_down=down)


def test_a_node_that_lost_every_nic_of_an_address_cannot_run_its_group() -> None:
    for strategy in (CostStrategy(), PreferredListStrategy()):
        costs = strategy.local_costs(_ctx({"eth0": "no carrier", "eth1": "no carrier"}))
        assert costs["web"] == float("inf")
        assert costs["other"] != float("inf")
        assert strategy.local_costs(_ctx({"eth2": "gone"}))["web"] == float("inf")
    why = CostStrategy.hard_limit(_ctx({"eth2": "no such interface"}),
                                  loads(CONFIG).groups["web"])
    assert why == ("no NIC of resource vip2 can carry its address here "
                   "(eth2: no such interface)")


def test_a_node_with_fewer_healthy_paths_costs_more() -> None:
    healthy = CostStrategy().local_costs(_ctx({}))["web"]
    one_lost = CostStrategy().local_costs(_ctx({"eth1": "no carrier"}))["web"]
    assert one_lost == healthy + CostStrategy.PATH_WEIGHT
    assert CostStrategy().local_costs(_ctx({"eth9": "x"}))["web"] == healthy


def test_the_nics_table_is_checked() -> None:
    cfg = loads(CONFIG + '[nics]\nup_hold = "500ms"\n[nics.targets]\neth0 = ["198.18.0.1"]\n')
    assert cfg.nics.up_hold == 0.5 and cfg.nics.targets == {"eth0": ("198.18.0.1",)}
    with pytest.raises(ConfigError) as err:
        loads(CONFIG + '[nics]\nup_hold = "10s"\nmax_up_hold = "1s"\nprobe_failures = 0\n'
                       '[nics.targets]\neth0 = ["example.com"]\neth1 = []\n')
    text = str(err.value)
    assert "nics.max_up_hold" in text and "must be at least up_hold" in text
    assert "nics.probe_failures" in text
    assert "nics.targets.eth0[0]" in text and "IPv4" in text
    assert "nics.targets.eth1" in text


def test_status_cli_and_ha_show_this_nodes_nics() -> None:
    from tests.support.simconfig import sim_config
    from tests.unit.test_core import formed
    from vigil.cli.main import format_status
    from vigil.cluster.view import ResourceFacts, build_status
    from vigil.ha.fs import build_tree
    from vigil.status import ClusterStatus, NicStatus

    c = formed(sim_config(3, 1))
    nics = {"eth0": NicStatus(state="down", reason="no carrier (cable, switch port or peer "
                                                   "down)", since="12:00:01"),
            "eth0b": NicStatus(state="up", reason="usable", since="11:59:00")}
    st = build_status(c.core("alpha"), ResourceFacts(nics=nics))
    assert ClusterStatus.from_json(st.to_json()).nics == nics
    text = format_status(st)
    assert "NICs of alpha:" in text
    assert "  * eth0         DOWN since 12:00:01: no carrier (cable, switch port or peer " \
           "down)" in text
    assert "  * eth0b        up since 11:59:00\n" in text
    tree = build_tree(st)
    assert tree["/nodes/alpha/nics/eth0"].content == \
        b"down: no carrier (cable, switch port or peer down)\n"
    assert tree["/nodes/alpha/nics/eth0b"].content == b"up\n"
    assert "/nodes/beta/nics/eth0" not in tree  # a node knows its own NICs only
