"""What a configuration change may do while the cluster runs (vigil.cluster.reconfig)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.simconfig import sim_config
from vigil.cluster.events import LoadConfig, Received
from vigil.cluster.node import NodeCore
from vigil.cluster.promise import Persisted
from vigil.cluster.reconfig import refusals, retired, summary
from vigil.cluster.wire import Heartbeat, to_message
from vigil.config import FenceDevice, GroupConfig, LinkConfig, NodeConfig, ResourceConfig

pytestmark = pytest.mark.unit

BASE = sim_config(3, 4, group_chain=True, chain=2)  # g0 <- g1, g2, g3


def test_nothing_changed_is_nothing_refused_or_retired() -> None:
    assert refusals(BASE, BASE) == [] and retired(BASE, BASE) == {}
    assert summary(BASE, BASE) == "no group stops"


@pytest.mark.parametrize(("change", "says"), [
    (lambda c: replace(c, name="other"), "the cluster's name changed"),
    (lambda c: replace(c, key_file=Path("/elsewhere")), "key_file changed"),
    (lambda c: replace(c, nodes={**c.nodes, "delta": NodeConfig(
        "delta", (LinkConfig("lan0", "127.0.0.1", 7499),))}), "node delta added"),
    (lambda c: replace(c, nodes={n: v for n, v in c.nodes.items() if n != "gamma"}),
     "node gamma removed"),
    (lambda c: replace(c, nodes={**c.nodes, "beta": replace(c.nodes["beta"], votes=2)}),
     "node beta changed"),
    (lambda c: replace(c, no_quorum_policy="freeze"), "no_quorum_policy changed"),
    (lambda c: replace(c, fencer="guardian"), "fencer changed"),
    (lambda c: replace(c, fence_devices={"pdu": FenceDevice("pdu", "x", ("alpha",))}),
     "[fence_devices] changed"),
    (lambda c: replace(c, timing=replace(c.timing, lease_time=0.3)),
     "timing.lease_time changed (0.5s -> 0.3s)"),
    (lambda c: replace(c, timing=replace(c.timing, lease_time=3.5)),
     "timing.lease_time changed (0.5s -> 3.5s)"),
    (lambda c: replace(c, timing=replace(c.timing, fence_margin=0.01)),
     "timing.fence_margin changed"),
    (lambda c: replace(c, timing=replace(c.timing, guard_time=0.2)),
     "timing.guard_time changed"),
    (lambda c: replace(c, resources={r: replace(v, stop_timeout=0.05)
                                     for r, v in c.resources.items()}),
     "stop timeouts changed"),
    (lambda c: replace(c, resources={r: replace(v, stop_timeout=v.stop_timeout * 2)
                                     for r, v in c.resources.items()}),
     "stop timeouts changed"),
])
def test_what_needs_every_node_restarted_is_refused_with_what_to_do(change, says) -> None:  # type: ignore[no-untyped-def]
    found = refusals(BASE, change(BASE))
    assert found and says in found[0], found
    assert any(hint in found[0] for hint in ("start them all with the new file",
                                             "docs/security.md"))


def test_detection_timings_and_placement_settings_change_live() -> None:
    t = BASE.timing
    new = replace(BASE, timing=replace(t, heartbeat_interval=0.05, dead_time=0.9,
                                       step_timeout=2.0, retransmit_interval=0.05),
                  groups={**BASE.groups, "g0": replace(BASE.groups["g0"], stickiness=500.0,
                                                       migration_threshold=9)},
                  resources={r: replace(v, start_timeout=v.start_timeout * 2)
                             for r, v in BASE.resources.items()})
    assert refusals(BASE, new) == []
    assert retired(BASE, new) == {}  # nothing that runs changes: nothing stops


def test_changed_members_and_their_dependents_retire_removed_ones_too() -> None:
    resources = dict(BASE.resources)
    resources["g0-r1"] = replace(resources["g0-r1"], params={"x": 1})
    groups = {g: c for g, c in BASE.groups.items() if g != "g3"}
    for r in BASE.groups["g3"].resources:
        del resources[r]
    groups["g4"] = GroupConfig("g4", ())
    new = replace(BASE, groups=groups, resources=resources)
    gone = retired(BASE, new)
    assert gone == {"g0": "its definition changed: it starts again from the new one",
                    "g1": "depends on g0, which stops for the change",
                    "g3": "removed from the configuration"}
    assert summary(BASE, new) == "adds g4; removes g3; restarts g0, g1"


def test_monitor_and_timeout_settings_do_not_restart_a_resource() -> None:
    r = BASE.resources["g2-r0"]
    new = replace(BASE, resources={**BASE.resources, "g2-r0": replace(
        r, start_timeout=99.0, on_fail="block",
        monitor=replace(r.monitor, interval=1.0))})
    assert retired(BASE, new) == {}


def test_a_new_group_of_its_own_may_stop_slowly_one_tied_to_a_group_may_not() -> None:
    """Under the silence fencer, whose wait covers a lost node's stops."""
    slow = ResourceConfig("slow-r0", "dummy", "slow", stop_timeout=60.0)
    alone = replace(BASE, groups={**BASE.groups, "slow": GroupConfig("slow", ("slow-r0",))},
                    resources={**BASE.resources, "slow-r0": slow})
    assert refusals(BASE, alone) == []  # its set stops beside the others
    tied = replace(alone, groups={**alone.groups, "slow": GroupConfig(
        "slow", ("slow-r0",), depends_on=("g2",))})
    found = refusals(BASE, tied)
    assert found and "g2 took up to 60.2s to stop after the change, but a master on the " \
        "old file waits 0.4s" in found[0], found


def test_a_retired_group_may_stop_faster_within_the_bound_and_the_guardian_ignores_stops(
        ) -> None:
    resources = dict(BASE.resources)
    resources["g2-r0"] = replace(resources["g2-r0"], stop_timeout=0.05)  # g2 restarts
    faster = replace(BASE, resources=resources)
    assert refusals(BASE, faster) == []  # the slowest set (g0+g1) still bounds the wait
    slower = {r: replace(v, stop_timeout=9.0) for r, v in BASE.resources.items()}
    assert refusals(replace(BASE, fencer="guardian"),
                    replace(BASE, fencer="guardian", resources=slower)) == []


def test_a_node_kept_out_looks_at_its_file_again_when_the_peer_moves_ahead() -> None:
    """delta runs another file than beta, both in epoch 4: delta keeps beta out and says so
    once. When beta's cluster moves to epoch 5 on that file (without delta), delta may have
    missed the reload that put it there: it reads its own file again, once (the simulation
    found delta out for good: it had looked only when beta first ran another file, while
    still in delta's epoch)."""
    cfg = replace(sim_config(4, 2), digest="a" * 64)
    delta = NodeCore(cfg, "delta", incarnation=1, now=0.0,
                     persisted=Persisted(promised=(4, "alpha"), max_seen=4))

    def heartbeat_of_beta(n: int, epoch: int) -> list[object]:
        hb = Heartbeat(n=n, incarnation=7, promised=(epoch, "alpha"),
                       accepted=(epoch, "alpha"), closed=True, echo={}, groups={},
                       failures=0, digest="b" * 64)
        out = delta.handle(Received(to_message(hb, "beta"), "lan0"), 0.1 * n)
        return [a for a in out.actions if isinstance(a, LoadConfig)]

    assert heartbeat_of_beta(1, 4) == []  # same epoch: a node restarted with another file
    assert "beta" in delta.membership.mismatched
    assert heartbeat_of_beta(2, 4) == []
    assert heartbeat_of_beta(3, 5) == [LoadConfig("b" * 64, quiet=True, also="")]
    assert heartbeat_of_beta(4, 5) == []  # once


def test_a_node_ahead_by_a_round_it_could_not_finish_follows_a_quorum_on_another_file() -> None:
    """delta declared epoch 4.delta alone (cut off, no quorum) while the others switched to
    another file in 4.alpha, which sorts before it: none of them is ahead of delta, but once
    delta hears that a quorum of them runs that file, it reads its own again (the
    simulation found such a node out for good: 9 nodes, three reloads in a row)."""
    cfg = replace(sim_config(4, 2), digest="a" * 64)
    delta = NodeCore(cfg, "delta", incarnation=1, now=0.0,
                     persisted=Persisted(promised=(4, "delta"), max_seen=4))
    loads = []
    for i, peer in enumerate(("alpha", "beta", "gamma")):
        hb = Heartbeat(n=1, incarnation=7, promised=(4, "alpha"), accepted=(4, "alpha"),
                       closed=True, echo={}, groups={}, failures=0, digest="b" * 64)
        out = delta.handle(Received(to_message(hb, peer), "lan0"), 0.1 * (i + 1))
        loads.append([a for a in out.actions if isinstance(a, LoadConfig)])
    # alpha alone, then alpha and beta, are no quorum of four (with delta, on its own file)
    assert loads == [[], [], [LoadConfig("b" * 64, quiet=True, also="")]]
