"""Power fencing as the core decides it, told through the simulated cluster: levels in order,
delays against a split's race, retries of the whole topology, fencing by hand, a failed
stop, and what `vigil status` shows of it.

The configurations come from ``tests.support.simconfig.sim_config(..., fence=True)``: every
node has two levels, its own board ``ipmi-NODE`` (timeout 0.3 s, one retry) and then the
switch ``pdu`` (timeout 0.3 s); ``retry_interval`` is 0.5 s. The simulated devices
(:class:`vigil.cluster.sim.SimDevice`) work in 0.05 to 0.2 s unless a test says otherwise;
the simulator checks exclusivity at every start, so a group started while its old holder
still ran it fails the test wherever it happens.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.simconfig import sim_config
from tests.unit.test_core import FORM, Recorder, formed
from vigil.cluster.events import AdminRequest, FenceNode, MarkedOutOfService
from vigil.cluster.fencing import answer_bound, fence_delay
from vigil.cluster.sim import SimDevice, SimNode
from vigil.cluster.view import ResourceFacts, build_status
from vigil.config import ClusterConfig, FenceDevice
from vigil.status import ClusterStatus, FenceDeviceStatus

BROKEN = SimDevice(fail=1.0)
HUNG = SimDevice(hang=1.0)


class FenceRecorder(Recorder):
    """Writes down every level a node asked its fencer to run: (time, requester, action)."""

    def __init__(self, config: ClusterConfig, **kwargs: Any) -> None:
        self.levels: list[tuple[float, str, FenceNode]] = []
        super().__init__(config, **kwargs)

    def _fence(self, node: SimNode, action: FenceNode) -> None:
        self.levels.append((self.now, node.name, action))
        super()._fence(node, action)


def fenced_cluster(nodes: int = 3, groups: int = 3, **kwargs: Any) -> FenceRecorder:
    """A formed cluster with fencer "devices", a group on every node of the first three
    (``devices=`` gives the devices' behaviour; the other keywords go to sim_config)."""
    devices = kwargs.pop("devices", None)
    cfg = sim_config(nodes, groups, group_chain=False, fencer="devices", fence=True, **kwargs)
    c = FenceRecorder(cfg, devices=devices)
    c.run_for(FORM)
    assert c.settled(), c.describe()
    return c


def texts(c: Recorder, node: str, since: float) -> list[str]:
    return [text for when, text in c.core(node).decisions if when >= since]


def off_at(c: Recorder, target: str) -> float:
    found = [t for t, _, n in c.fenced if n == target]
    assert found, f"{target} was never powered off:\n{c.describe()}"
    return found[0]


# ---- levels, in order -------------------------------------------------------------------------


def test_a_lost_holder_is_powered_off_by_its_first_level_before_its_group_starts_elsewhere(
) -> None:
    c = fenced_cluster()
    assert c.where() == {"g0": "alpha", "g1": "beta", "g2": "gamma"}
    t0 = c.now
    c.crash("alpha")
    c.run_for(2.0)
    assert c.where() == {"g0": "beta", "g1": "beta", "g2": "gamma"}
    assert c.first(t0, "beta", "g0", "start") >= off_at(c, "alpha")
    said = texts(c, "beta", t0)
    assert any(t.startswith("alpha fenced: level 1 (ipmi-alpha)") for t in said), said
    assert not any("level 2" in t for t in said)


def test_the_next_level_is_tried_when_the_first_fails_and_fences_the_node() -> None:
    c = fenced_cluster(devices={"ipmi-alpha": BROKEN})
    t0 = c.now
    c.crash("alpha")
    c.run_for(2.0)
    assert c.where()["g0"] == "beta"
    said = texts(c, "beta", t0)
    failed = next(i for i, t in enumerate(said) if "level 1 (ipmi-alpha) failed" in t)
    assert "trying level 2 (pdu)" in said[failed]
    fenced = next(i for i, t in enumerate(said) if t.startswith("alpha fenced"))
    assert failed < fenced and "level 2 (pdu)" in said[fenced]
    assert c.first(t0, "beta", "g0", "start") >= off_at(c, "alpha")


def test_a_hung_device_fails_at_its_timeout_and_the_next_level_takes_over() -> None:
    c = fenced_cluster(devices={"ipmi-alpha": HUNG})
    t0 = c.now
    c.crash("alpha")
    c.run_for(3.0)
    said = texts(c, "beta", t0)
    assert any("level 1 (ipmi-alpha) failed: ipmi-alpha: timed out after 0.3s; 2 attempt(s)"
               in t for t in said), said
    assert c.where()["g0"] == "beta"
    running = [when for when, t in c.core("beta").decisions
               if when >= t0 and "level 1 (ipmi-alpha) running" in t]
    # two attempts of 0.3 s each before the switch is tried
    assert off_at(c, "alpha") - running[0] >= 0.6 - 1e-9


def test_every_level_failing_keeps_the_group_held_and_the_topology_is_tried_again() -> None:
    c = fenced_cluster(devices={"ipmi-alpha": BROKEN, "pdu": HUNG})
    t0 = c.now
    c.crash("alpha")
    c.run_for(3.0)
    assert c.where()["g0"] is None, "g0 started while alpha was not known to be off"
    beta = c.core("beta")
    assert beta.accepted.placement["g0"] == "alpha"  # held: named on the lost node
    said = texts(c, "beta", t0)
    passes = [t for t in said if "level 1 (ipmi-alpha) running" in t]
    assert len(passes) >= 3, said  # once, then every retry_interval after the last failure
    for _ in range(200):  # to a moment between two passes
        wait = build_status(beta).fencing.pending["alpha"]
        if "; retrying in " in wait:
            break
        c.run_for(0.01)
    assert wait.startswith("waiting for fencing of alpha: level 2 (pdu) failed: pdu: timed "
                           "out after 0.3s; 1 attempt(s); retrying in "), wait
    assert wait.endswith("an operator can run `vigil node confirm-off alpha` once alpha is "
                         "known to be off")
    placed = next(t for t in said if "placement decided" in t)
    assert "g0: waiting for fencing of alpha" in placed
    # the switch is repaired: the next pass fences alpha, and g0 moves
    c.devices["pdu"] = SimDevice()
    c.run_for(2.0)
    assert c.where()["g0"] == "beta"
    assert c.first(t0, "beta", "g0", "start") >= off_at(c, "alpha")
    assert any(t.startswith("alpha fenced: level 2 (pdu)") for t in texts(c, "beta", t0))


def test_a_group_is_not_started_after_its_holders_first_level_failed() -> None:
    # alpha's daemon dies, g0 runs on there; the second level takes long: the first failed
    # long before, and nothing started g0 meanwhile (the simulator checks exclusivity)
    c = fenced_cluster(devices={"ipmi-alpha": BROKEN, "pdu": SimDevice(duration=(1.5, 1.5))})
    t0 = c.now
    c.kill_daemon("alpha")
    c.run_for(4.0)
    assert c.where()["g0"] == "beta"
    assert c.first(t0, "beta", "g0", "start") >= off_at(c, "alpha")


def test_a_suspect_that_rejoins_is_no_longer_fenced() -> None:
    c = fenced_cluster(devices={"ipmi-gamma": BROKEN, "pdu": BROKEN})
    c.crash("gamma")
    c.run_for(1.5)
    assert c.where()["g2"] is None
    t0 = c.now
    c.power_on("gamma")
    c.run_for(3.0)
    assert "gamma" in c.core("alpha").alive()
    assert "fencing of gamma no longer needed" in texts(c, "alpha", t0)
    assert c.core("alpha").fencing.jobs == {}
    last = max(t for t, _, a in c.levels)
    c.run_for(2.0)
    assert max(t for t, _, a in c.levels) == last, "gamma is still being fenced"
    assert c.where()["g2"] is not None


# ---- who fences, and when ---------------------------------------------------------------------


def test_a_fenced_node_is_not_fenced_again_until_it_is_heard_in_a_new_life() -> None:
    c = fenced_cluster()
    c.crash("gamma")
    c.run_for(2.0)
    assert len(c.fenced) == 1 and c.where()["g2"] == "alpha"
    c.request("beta", AdminRequest("move", group="g1", node="alpha"))
    c.run_for(2.0)
    assert c.where()["g1"] == "alpha" and len(c.fenced) == 1
    assert c.core("alpha").fencing.is_off("gamma")
    c.power_on("gamma")
    c.run_for(FORM)
    assert not c.core("alpha").fencing.is_off("gamma")
    c.request("beta", AdminRequest("move", group="g1", node="gamma"))
    c.run_for(2.0)
    assert c.where()["g1"] == "gamma"
    c.crash("gamma")
    c.run_for(2.0)
    assert [n for _, _, n in c.fenced] == ["gamma", "gamma"]
    assert c.where()["g1"] in ("alpha", "beta")


def test_a_minority_fences_nobody() -> None:
    # alpha and beta lose quorum: they run no level; delta, the majority's master, fences
    # them (both held groups) before taking over
    c = fenced_cluster(5, 3)
    c.partition({"alpha", "beta"}, {"gamma", "delta", "epsilon"})
    c.run_for(4.0)
    assert {requester for _, requester, _ in c.levels} == {"delta"}
    assert sorted(n for _, _, n in c.fenced) == ["alpha", "beta"]
    where = c.where()
    assert where["g2"] == "gamma" and {where["g0"], where["g1"]} <= {"gamma", "delta",
                                                                    "epsilon"}


def test_the_fencer_not_answering_counts_as_a_failed_level() -> None:
    class Silent(Recorder):
        """A shell whose fencer never answers the first level."""

        def _fence(self, node: SimNode, action: FenceNode) -> None:
            if action.level != 1:
                super()._fence(node, action)

    cfg = sim_config(3, 2, group_chain=False, fencer="devices", fence=True)
    c = Silent(cfg)
    c.run_for(FORM)
    t0 = c.now
    c.crash("alpha")
    bound = answer_bound([cfg.fence_devices["ipmi-alpha"]])
    c.run_for(bound + 2.0)
    said = texts(c, "beta", t0)
    assert any(f"level 1 (ipmi-alpha) failed: no answer from the fencer within {bound:.0f}s"
               in t for t in said), said
    assert c.where()["g0"] == "beta"
    history = build_status(c.core("beta")).fencing.history
    assert [(e.level, e.result) for e in history] == [(1, "no answer"), (2, "off")]


def test_delay_max_is_drawn_from_the_epoch_and_the_node() -> None:
    cfg = sim_config(2, 1, fence=True, delay_max=5.0)
    draws = {fence_delay(cfg, f"{n}.alpha", "beta", 0, 0)[0] for n in range(1, 40)}
    assert len(draws) == 39 and all(0 <= d < 5.0 for d in draws)
    assert fence_delay(cfg, "3.alpha", "beta", 0, 0) == fence_delay(cfg, "3.alpha", "beta", 0, 0)
    assert fence_delay(cfg, "3.alpha", "beta", 0, 0) != fence_delay(cfg, "3.beta", "alpha", 0, 0)
    prio = sim_config(2, 1, fence=True, priority_delay=2.0)
    assert fence_delay(prio, "3.alpha", "beta", 2, 1) == (
        2.0, "priority_delay 2s: beta ran 2 group(s), this side 1")
    assert fence_delay(prio, "3.alpha", "beta", 1, 1) == (0.0, "")


def test_two_nodes_split_and_the_side_running_more_groups_shoots_first() -> None:
    # alpha runs g0 and g2, beta runs g1: beta waits priority_delay before fencing alpha
    cfg = sim_config(2, 3, group_chain=False, fencer="devices", fence=True, priority_delay=1.0)
    c = FenceRecorder(cfg)
    c.run_for(FORM)
    assert c.where() == {"g0": "alpha", "g1": "beta", "g2": "alpha"}
    c.partition({"alpha"}, {"beta"})
    c.run_for(3.0)
    assert [(requester, target) for _, requester, target in c.fenced] == [("alpha", "beta")]
    assert [(requester, a.node) for _, requester, a in c.levels] == [("alpha", "beta")]
    assert c.live() == ["alpha"]
    assert c.where() == {"g0": "alpha", "g1": "alpha", "g2": "alpha"}


def test_two_nodes_split_with_broken_devices_and_neither_starts_the_others_groups() -> None:
    cfg = sim_config(2, 2, group_chain=False, fencer="devices", fence=True)
    c = FenceRecorder(cfg, devices=dict.fromkeys(cfg.fence_devices, BROKEN))
    c.run_for(FORM)
    assert c.where() == {"g0": "alpha", "g1": "beta"}
    c.partition({"alpha"}, {"beta"})
    c.run_for(4.0)  # both keep quorum, both try to fence the other, every pass fails
    assert c.where() == {"g0": "alpha", "g1": "beta"}
    assert {requester for _, requester, _ in c.levels} == {"alpha", "beta"}
    assert c.core("alpha").accepted.placement == {"g0": "alpha", "g1": "beta"}
    c.heal()
    c.run_for(3.0)
    assert c.settled() and c.where() == {"g0": "alpha", "g1": "beta"}
    assert c.core("alpha").fencing.jobs == {} and c.core("beta").fencing.jobs == {}


# ---- a failed stop ----------------------------------------------------------------------------


def move_and_fail_its_stop(c: Recorder, group: str, holder: str, to: str) -> float:
    """The next stop of ``group`` on ``holder`` fails, and an operator moves it to ``to``
    (through ``to``): the time it was asked."""
    c.fail_next_stop(holder, group)
    t0 = c.now
    c.request(to, AdminRequest("move", group=group, node=to))
    return t0


def test_a_failed_stop_fences_the_member_and_then_the_group_moves() -> None:
    c = fenced_cluster()
    t0 = move_and_fail_its_stop(c, "g1", "beta", "gamma")
    c.run_for(3.0)
    said = texts(c, "alpha", t0)
    assert any(t.startswith("g1 is blocked: its stop failed on beta (blocked: a stop failed "
                            "on beta; waiting for fencing of beta: level 1 (ipmi-beta)")
               for t in said), said
    assert off_at(c, "beta") > t0
    assert c.where()["g1"] in ("alpha", "gamma")
    assert c.first(t0, c.where()["g1"] or "", "g1", "start") >= off_at(c, "beta")


def test_a_failed_stop_without_a_device_blocks_the_group_until_marked_out_of_service() -> None:
    # no fence device: the group stays named where its stop failed, never started elsewhere
    # (it was before), until the operator marks its members out of service there
    c = formed(sim_config(3, 2, group_chain=False))
    t0 = move_and_fail_its_stop(c, "g1", "beta", "gamma")
    c.run_for(3.0)
    assert c.ops_since(t0, group="g1", what="start") == []
    assert c.core("alpha").accepted.placement["g1"] == "beta"
    assert c.core("beta").local["g1"].value == "unclean"
    assert any("blocked: a stop failed on beta; no fence device can fence it" in t
               for t in texts(c, "alpha", t0))
    for r in c.config.groups["g1"].resources:
        c.nodes["beta"].resources.pop(r, None)  # the operator stopped them by hand
        c.inject("beta", MarkedOutOfService(r))
    c.run_for(3.0)
    # the failed stop filled g1's fail count on beta, so it runs elsewhere now
    assert c.where()["g1"] in ("alpha", "gamma")
    assert c.core("beta").fail_counts()["g1"] >= c.config.groups["g1"].migration_threshold


def test_a_master_whose_own_stop_failed_powers_itself_off() -> None:
    c = fenced_cluster()
    t0 = move_and_fail_its_stop(c, "g0", "alpha", "gamma")
    c.run_for(4.0)
    assert ("alpha", "alpha") in [(r, t) for _, r, t in c.fenced]
    assert c.where()["g0"] in ("beta", "gamma")
    assert c.first(t0, c.where()["g0"] or "", "g0", "start") >= off_at(c, "alpha")


# ---- by hand ----------------------------------------------------------------------------------


def test_confirm_off_lets_the_held_groups_move_without_a_device() -> None:
    c = fenced_cluster(devices={"ipmi-alpha": BROKEN, "pdu": BROKEN})
    t0 = c.now
    c.crash("alpha")
    c.run_for(2.0)
    assert c.where()["g0"] is None
    c.request("gamma", AdminRequest("confirm_off", node="alpha"))
    c.run_for(2.0)
    assert c.where()["g0"] == "beta"
    assert not c.fenced
    st = build_status(c.core("beta"))
    assert st.fencing.pending == {}
    assert [(e.target, e.requester, e.level) for e in st.fencing.history
            if e.result == "confirmed off"] == [("alpha", "an operator via gamma", 0)]
    assert any("alpha counts as fenced: confirmed off by an operator via gamma" in t
               for t in texts(c, "beta", t0))


def test_fence_by_hand_runs_the_levels_once() -> None:
    c = fenced_cluster()
    c.request("beta", AdminRequest("fence", node="gamma"))
    c.run_for(3.0)
    assert [(r, t) for _, r, t in c.fenced] == [("alpha", "gamma")]
    entry = build_status(c.core("alpha")).fencing.history[0]
    assert (entry.requester, entry.target, entry.level, entry.devices, entry.result) == (
        "an operator via beta", "gamma", 1, ("ipmi-gamma",), "off")
    # with broken devices: one pass, and it says so
    c.power_on("gamma")
    c.run_for(FORM)
    c.devices["ipmi-gamma"] = BROKEN
    c.devices["pdu"] = BROKEN
    t0 = c.now
    c.request("beta", AdminRequest("fence", node="gamma"))
    c.run_for(3.0)
    said = texts(c, "alpha", t0)
    assert sum("level 1 (ipmi-gamma) running" in t for t in said) == 1, said
    assert any("every level failed (a manual request is not retried)" in t for t in said)
    assert "gamma" in c.live()


@pytest.mark.parametrize(("kind", "node", "why"), [
    ("fence", "nosuch", "no node named 'nosuch'"),
    ("confirm_off", "gamma", "gamma is online (heard"),
    ("confirm_off", "alpha", "alpha is online (this node)"),
])
def test_fencing_requests_that_make_no_sense_are_refused(kind: str, node: str,
                                                         why: str) -> None:
    c = fenced_cluster()
    assert c.core("alpha").fence_refusal(kind, node).startswith(why)


def test_fencing_requests_are_refused_without_quorum_or_device() -> None:
    c = fenced_cluster(devices={"ipmi-alpha": BROKEN, "pdu": BROKEN})  # alpha stays up
    c.partition({"alpha"}, {"beta", "gamma"})
    c.run_for(2.0)
    alpha = c.core("alpha")
    for kind in ("fence", "confirm_off"):
        refusal = alpha.fence_refusal(kind, "beta")
        assert refusal.startswith("alpha has no quorum (") and refusal.endswith(
            "fencing requests are refused without quorum; ask a node of the quorate "
            "partition"), refusal
    t0 = c.now
    c.request("alpha", AdminRequest("fence", node="beta"))
    assert any(t.startswith("request fence beta refused: alpha has no quorum")
               for t in texts(c, "alpha", t0))
    assert not alpha.requests.queued
    plain = formed(sim_config(3, 1))
    assert plain.core("alpha").fence_refusal("fence", "beta").startswith(
        "no fence device can fence beta: add a [fence_devices.NAME]")


# ---- what status shows ------------------------------------------------------------------------


def test_status_shows_the_fencing_history_and_the_devices_and_survives_json() -> None:
    c = fenced_cluster(devices={"ipmi-alpha": BROKEN})
    c.crash("alpha")
    c.run_for(2.0)
    st = build_status(c.core("beta"))
    assert [(e.requester, e.target, e.level, e.devices, e.result) for e in st.fencing.history
            ] == [("beta", "alpha", 1, ("ipmi-alpha",), "failed"),
                  ("beta", "alpha", 2, ("pdu",), "off")]
    assert st.fencing.history[0].detail == "ipmi-alpha: simulated failure; 2 attempt(s)"
    assert all(e.duration > 0 for e in st.fencing.history)
    assert sorted(st.fencing.devices) == ["ipmi-alpha", "ipmi-beta", "ipmi-gamma", "pdu"]
    assert st.fencing.devices["pdu"].state == "unknown"
    assert st.fencing.devices["pdu"].hosts == ("alpha", "beta", "gamma")
    again = ClusterStatus.from_json(st.to_json())
    assert again.fencing == st.fencing
    # a status from a daemon that knew nothing of fencing still reads
    old = st.to_json()
    del old["fencing"]
    assert ClusterStatus.from_json(old).fencing.history == ()


def test_the_answer_bound_covers_every_attempt_of_every_device() -> None:
    from vigil.fencing.agents import max_duration

    devices = [FenceDevice("a", "fence_x", ("alpha",), timeout=20.0, retries=2),
               FenceDevice("b", "fence_y", ("alpha",), timeout=5.0, retries=0)]
    assert answer_bound(devices) > sum(max_duration(d) for d in devices)
    assert answer_bound(devices, "reboot") > 2 * sum(max_duration(d) for d in devices)




def test_vigil_status_and_ha_show_what_fencing_waits_for_and_did() -> None:
    from vigil.cli.main import format_status
    from vigil.ha.fs import build_tree

    c = fenced_cluster(devices={"ipmi-alpha": BROKEN, "pdu": BROKEN})
    c.crash("alpha")
    c.run_for(2.0)
    st = build_status(c.core("beta"), ResourceFacts(fence_devices={"pdu": FenceDeviceStatus(
        state="failed", reason="exit 1 (EC_GENERIC_ERROR): Unable to connect", checked="12:00:03",
        hosts=("alpha", "beta", "gamma"))}))
    text = format_status(st)
    assert "Fencing:\n  * alpha: waiting for fencing of alpha: " in text
    assert ("  device pdu          failed at 12:00:03 (fences alpha, beta, gamma): exit 1 "
            "(EC_GENERIC_ERROR): Unable to connect") in text
    assert "  device ipmi-beta    unknown (fences beta): not monitored yet" in text
    assert "beta -> alpha, level 2 (pdu): failed, 0." in text
    tree = build_tree(st)
    assert tree["/nodes/alpha/fencing"].content.startswith(b"waiting for fencing of alpha: ")
    assert tree["/nodes/beta/fencing"].content == b""
    assert tree["/fencing/pending"].content.startswith(b"alpha: waiting for fencing of alpha")
    history = tree["/fencing/history"].content.decode().splitlines()
    assert history and " beta -> alpha level 2 pdu: failed in " in history[-1]
    assert tree["/fencing/devices/pdu/state"].content == b"failed\n"
    assert tree["/fencing/devices/pdu/hosts"].content == b"alpha\nbeta\ngamma\n"
    assert tree["/fencing/devices/ipmi-beta/checked"].content == b""
    control = tree["/nodes/alpha/control"].control
    assert control is not None and {"fence", "confirm_off"} <= set(control.choices)


def test_a_node_confirmed_off_in_error_is_taken_back_once_heard_in_the_same_life() -> None:
    # The operator confirms alpha off while it is only cut off (alive, same life): once it
    # is heard again, it was evidently not off, and the others must not shun it for ever
    # (it would keep declaring epochs as the lowest name while they ignore it).
    c = fenced_cluster(devices={"ipmi-alpha": BROKEN, "pdu": BROKEN})
    c.partition(["alpha"], ["beta", "gamma"])
    c.run_for(2.0)
    c.request("gamma", AdminRequest("confirm_off", node="alpha"))
    c.run_for(1.0)
    assert c.core("beta").master.fencing.is_off("alpha")
    t0 = c.now
    c.heal()
    c.run_for(4.0)
    assert c.settled(), c.describe()
    assert not c.core("beta").master.fencing.is_off("alpha")
    assert "alpha" in c.core("beta").alive() and c.core("alpha").promised[1] == "alpha"
    assert any("alpha is heard again in the life it had" in t for t in texts(c, "beta", t0))
