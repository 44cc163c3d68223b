"""Example-based tests of the pure cluster core, driven through the simulated cluster.

Each test is one story an operator would notice (a crash, a clean shutdown, a partition, a
manual move...) told with simulated time only: every run is deterministic and bounded.

The configurations come from ``tests.support.simconfig.sim_config``: group ``gI`` prefers node ``I``
(cost 0), then the following nodes at 10, 20...; with ``group_chain`` the group ``g1``
depends on ``g0`` (same node, started after it). Timing: heartbeat 0.1 s, dead_time 0.5 s,
lease_time 0.5 s, step_timeout 1 s, fence_margin 0.05 s; a group has two resources that the
simulator starts and stops in 0.02 s each.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.simconfig import sim_config
from vigil.cluster.events import (
    AdminRequest,
    ClearFailures,
    Event,
    GroupDone,
    GroupFailed,
    Received,
    Shutdown,
    Tick,
)
from vigil.cluster.journal import Journal
from vigil.cluster.local import LocalGroups, LocalState
from vigil.cluster.node import NodeCore
from vigil.cluster.placement import stop_bound
from vigil.cluster.promise import Persisted
from vigil.cluster.sim import SIM_SWITCH, SimCluster, SimDevice, SimNode
from vigil.cluster.steps import GroupSteps
from vigil.cluster.strategy import CostStrategy, LocalCostContext
from vigil.cluster.view import build_status
from vigil.cluster.wire import NO_ACCEPTED, NO_EPOCH, Accepted, RequestRef
from vigil.config import ClusterConfig, Timing
from vigil.messages import Message

#: Simulated seconds for a fresh cluster to form and start everything (it declares after
#: dead_time, then one round of a few milliseconds, then 0.04 s per group).
FORM = 3.0
#: Slack for the protocol's own round trips on top of a computed bound.
SLACK = 0.25


class Recorder(SimCluster):
    """A SimCluster that writes down what operators would see: group operations (with the
    simulated time they began and ended), every message sent, and every promise made."""

    def __init__(self, config: ClusterConfig, **kwargs: Any) -> None:
        self.ops: list[tuple[float, str, str, str]] = []  # (time, node, group, what)
        self.sent: list[tuple[float, Message]] = []
        self.promises: dict[str, list[tuple[int, str]]] = {}  # node -> promised epochs
        self.tamper: Callable[[Message], Message] | None = None
        super().__init__(config, **kwargs)

    def _begin(self, node: SimNode, group: str, steps: GroupSteps) -> None:
        self.ops.append((self.now, node.name, group, steps.op))
        super()._begin(node, group, steps)

    def _deliver(self, name: str, event: Event) -> None:
        if isinstance(event, GroupDone):
            self.ops.append((self.now, name, event.group,
                             f"{event.op}-{'done' if event.ok else 'failed'}"))
        super()._deliver(name, event)
        core = self.nodes[name].core
        if core is not None:
            self.promises.setdefault(name, []).append(core.promised)

    def _transmit(self, msg: Message) -> None:
        if self.tamper is not None:
            msg = self.tamper(msg)
        self.sent.append((self.now, msg))
        super()._transmit(msg)

    # ---- queries -------------------------------------------------------------------------

    def ops_since(self, t: float, *, node: str | None = None, group: str | None = None,
                  what: str | None = None) -> list[tuple[float, str, str, str]]:
        return [o for o in self.ops if o[0] >= t and (node is None or o[1] == node)
                and (group is None or o[2] == group) and (what is None or o[3] == what)]

    def first(self, t: float, node: str, group: str, what: str) -> float:
        found = self.ops_since(t, node=node, group=group, what=what)
        assert found, f"no {what} of {group} on {node} since {t:.3f}:\n{self.describe()}"
        return found[0][0]

    def messages(self, mtype: str, *, since: float = 0.0,
                 sender: str | None = None) -> list[Message]:
        return [m for t, m in self.sent if t >= since and m.type == mtype
                and (sender is None or m.sender == sender)]

    def core(self, name: str) -> NodeCore:
        core = self.nodes[name].core
        assert core is not None, f"{name} is off"
        return core

    def where(self) -> dict[str, str | None]:
        """group -> the one node where it is in service (None if nowhere); fails on two."""
        out: dict[str, str | None] = {}
        for g, nodes in self.placement().items():
            assert len(nodes) <= 1, f"{g} in service on {nodes}"
            out[g] = nodes[0] if nodes else None
        return out


def formed(config: ClusterConfig, **kwargs: Any) -> Recorder:
    c = Recorder(config, **kwargs)
    c.run_for(FORM)
    assert c.settled(), c.describe()
    return c


def last_costs(c: Recorder, node: str, since: float) -> dict[str, float]:
    """The costs ``node`` reported to the master in the latest round since ``since``."""
    replies = c.messages("cost", since=since, sender=node)  # not the master: it asks itself
    assert replies, f"{node} reported no costs since {since}"
    costs = replies[-1].fields["costs"]
    return {g: float(v) for g, _, v in (p.partition("=") for p in costs.split(","))}


# ---- forming -------------------------------------------------------------------------------


def test_three_nodes_form_one_epoch_led_by_the_lowest_name_with_preferred_placement() -> None:
    c = formed(sim_config(3, 3, group_chain=False))
    statuses = {n: build_status(c.core(n)) for n in c.config.node_names}
    assert {s.epoch for s in statuses.values()} == {"1.alpha"}
    assert {s.master for s in statuses.values()} == {"alpha"}
    assert all(s.closed and s.quorate and s.lease_valid for s in statuses.values())
    assert all(s.members == ("alpha", "beta", "gamma") for s in statuses.values())
    # every group in service exactly once, where ``prefer`` puts it (gI prefers node I)
    assert c.where() == {"g0": "alpha", "g1": "beta", "g2": "gamma"}
    # and every node agrees on where each group is and what was placed
    for s in statuses.values():
        assert {g: v.node for g, v in s.groups.items()} == c.where()
        assert {g: v.placed for g, v in s.groups.items()} == c.where()
    assert c.starts == 3  # each group started once, nothing started twice


def test_a_formed_cluster_stays_put_while_heartbeats_flow() -> None:
    c = formed(sim_config(3, 3, group_chain=False))
    t0, before = c.now, c.where()
    c.run_for(10.0)
    assert c.where() == before
    assert c.ops_since(t0) == []
    assert {c.core(n).promised for n in c.config.node_names} == {(1, "alpha")}


# ---- crash, shutdown -----------------------------------------------------------------------


def test_crashing_a_holder_moves_its_groups_to_the_next_cheapest_node_after_the_fencing_wait(
) -> None:
    cfg = sim_config(3, 3, group_chain=False)
    t = cfg.timing
    c = formed(cfg)
    t_crash = c.now
    c.crash("beta")  # holds g1 (prefers beta 0, then gamma 10, then alpha 20)
    c.run_for(4.0)
    assert c.where() == {"g0": "alpha", "g1": "gamma", "g2": "gamma"}
    started = c.first(t_crash, "gamma", "g1", "start")
    fence_wait = t.lease_time + stop_bound(cfg) + t.fence_margin
    # The silence fencer counts from the acks of the new epoch...
    r = c.core("alpha").round
    assert r is not None and r.epoch == (2, "alpha")
    assert r.acked_at > t_crash
    assert started >= r.acked_at + fence_wait - 1e-9
    # ...which cannot come before beta fell silent for dead_time (its last heartbeat left at
    # most one heartbeat interval before the crash).
    detect = t.dead_time - t.heartbeat_interval
    assert started - t_crash >= detect + fence_wait
    assert started - t_crash <= t.dead_time + fence_wait + SLACK
    # the groups of the survivors did not move
    assert c.ops_since(t_crash, what="stop") == []
    assert [o[1:] for o in c.ops_since(t_crash, what="start")] == [("gamma", "g1", "start")]
    assert c.settled()


def test_clean_shutdown_stops_in_reverse_order_says_bye_and_is_taken_over_without_fencing(
) -> None:
    cfg = sim_config(3, 2)  # g1 depends on g0: both run together on beta (cheapest sum)
    c = formed(cfg)
    assert c.where() == {"g0": "beta", "g1": "beta"}
    t0 = c.now
    c._deliver("beta", Shutdown())
    c.run_for(2.0)
    # the dependent stops first; what it depends on only once it is out of service
    g1_stop = c.first(t0, "beta", "g1", "stop")
    g1_out = c.first(t0, "beta", "g1", "stop-done")
    g0_stop = c.first(t0, "beta", "g0", "stop")
    g0_out = c.first(t0, "beta", "g0", "stop-done")
    assert g1_stop <= g1_out <= g0_stop <= g0_out
    # then it says goodbye, exactly once, after everything is out of service
    byes = [(t, m) for t, m in c.sent if m.type == "bye"]
    assert len(byes) == 1 and byes[0][1].sender == "beta" and byes[0][0] >= g0_out
    assert c.core("beta").left
    # the others take over at once: no silence fencing wait
    assert c.where() == {"g0": "alpha", "g1": "alpha"}
    takeover = c.first(t0, "alpha", "g1", "start-done") - t0
    fence_wait = cfg.timing.lease_time + stop_bound(cfg) + cfg.timing.fence_margin
    assert takeover < fence_wait
    assert not any("to be off (fencing by" in text for when, text in c.core("alpha").decisions
                   if when >= t0)
    assert build_status(c.core("alpha")).members == ("alpha", "gamma")

    # ...which is much faster than losing the same node to a crash
    crashed = formed(cfg)
    t1 = crashed.now
    crashed.crash("beta")
    crashed.run_for(3.0)
    assert crashed.where() == {"g0": "alpha", "g1": "alpha"}
    crash_takeover = crashed.first(t1, "alpha", "g1", "start-done") - t1
    assert crash_takeover > takeover + fence_wait


def test_a_node_that_left_cleanly_is_not_in_the_next_epoch_and_its_groups_stay_moved() -> None:
    c = formed(sim_config(3, 3, group_chain=False))
    c._deliver("gamma", Shutdown())
    c.run_for(2.0)
    c.crash("gamma")  # the daemon exits after its goodbye
    c.run_for(3.0)
    assert c.settled()
    assert c.where() == {"g0": "alpha", "g1": "beta", "g2": "alpha"}
    assert build_status(c.core("alpha")).members == ("alpha", "beta")


# ---- partitions and quorum -----------------------------------------------------------------


def test_two_survivors_of_three_keep_their_leases_over_a_network_slow_by_65_ms() -> None:
    """One node of three gone, each survivor's lease rests on the other alone. At the default
    timings (heartbeat 200 ms, lease 500 ms), renewals that ride on the peer's next heartbeat
    are for a heartbeat up to 200 ms + 2 x 65 ms old and come 200 ms apart: the lease runs
    out before each one. The survivors ask for echoes at once, and keep their groups."""
    cfg = sim_config(3, 2, group_chain=False, timing=Timing())
    c = formed(cfg)
    # three alive: a heartbeat's echoes are enough (only the first heartbeats, sent before
    # the others were heard, asked)
    assert c.messages("echo", since=1.0) == []
    before = c.where()
    assert before == {"g0": "alpha", "g1": "beta"}
    c.crash("gamma")
    c.net.delay = (0.065, 0.065)
    c.run_for(2.0)  # gamma counted out: both survivors in a new epoch
    assert c.core("alpha").promised == c.core("beta").promised != (1, "alpha")
    t0, lapses = c.now, []
    for _ in range(1000):  # 10 s
        c.run_for(0.01)
        lapses += [(round(c.now, 2), x) for x in ("alpha", "beta")
                   if not c.core(x).membership.lease_valid()]
    assert lapses == []
    assert c.ops_since(t0, what="stop") == [] and c.where() == before
    echoes = c.messages("echo", since=t0)
    assert {(m.sender, m.dest) for m in echoes} == {("alpha", "beta"), ("beta", "alpha")}


@pytest.mark.parametrize(
    ("n", "minority"),
    [(3, ("gamma",)), (5, ("delta", "epsilon"))],
    ids=["1-of-3", "2-of-5"],
)
def test_a_minority_partition_stops_its_groups_within_the_lease_and_the_majority_takes_over(
    n: int, minority: tuple[str, ...]
) -> None:
    cfg = sim_config(n, n, group_chain=False)
    t = cfg.timing
    c = formed(cfg)
    before = c.where()
    majority = tuple(x for x in cfg.node_names if x not in minority)
    moved = sorted(g for g, node in before.items() if node in minority)
    assert moved  # each minority node holds its preferred group
    promised_before = {x: c.core(x).promised for x in minority}
    t0 = c.now
    c.partition(minority, majority)
    c.run_for(4.0)

    for x in minority:
        core = c.core(x)
        status = build_status(core)
        assert not status.quorate and not status.lease_valid
        # starts nothing and declares nothing
        assert c.ops_since(t0, node=x, what="start") == []
        assert c.messages("declare", since=t0, sender=x) == []
        assert core.promised == promised_before[x]
        assert all(s is LocalState.STOPPED for s in core.local.values())
    # what the minority ran is out of service within lease_time + the stop bound
    last_out = max(o[0] for o in c.ops_since(t0, what="stop-done") if o[1] in minority)
    assert last_out <= t0 + t.lease_time + stop_bound(cfg)
    # and only after that does the majority start those groups
    after = c.where()
    for g in moved:
        taker = after[g]
        assert taker is not None and taker in majority
        assert c.first(t0, taker, g, "start") > last_out
    assert {g: node for g, node in after.items() if g not in moved} == {
        g: node for g, node in before.items() if g not in moved}
    epoch = c.core("alpha").promised
    assert epoch[0] > 1 and all(c.core(x).promised == epoch for x in majority)

    # heal: one epoch again, everyone in it, and nothing moves back (failback is off)
    t1 = c.now
    c.heal()
    c.run_for(4.0)
    assert c.settled()
    assert len({c.core(x).promised for x in cfg.node_names}) == 1
    assert c.where() == after
    assert c.ops_since(t1, what="start") == [] and c.ops_since(t1, what="stop") == []


def test_two_of_five_alive_never_declare_an_epoch_nor_start_anything() -> None:
    cfg = sim_config(5, 3, group_chain=False)
    c = Recorder(cfg)
    for name in cfg.node_names:
        c.crash(name)
    c.power_on("alpha")  # fresh incarnations: nothing the others sent at t=0 reaches them
    c.power_on("beta")
    c.run_for(10.0)
    for name in ("alpha", "beta"):
        core = c.core(name)
        assert core.promised == NO_EPOCH and core.round is None
        assert build_status(core).quorate is False
        assert build_status(core).quorum == "2 of 5 votes, need 3"
    assert c.messages("declare") == []
    assert c.ops == [] and c.starts == 0
    # a third node makes a quorum: now the cluster forms
    c.power_on("gamma")
    c.run_for(FORM)
    assert c.settled()
    assert build_status(c.core("alpha")).members == ("alpha", "beta", "gamma")
    assert all(v is not None for v in c.where().values())


def test_two_node_with_wait_for_all_a_node_that_never_saw_its_peer_starts_nothing() -> None:
    cfg = sim_config(2, 2, group_chain=False)
    assert cfg.two_node and cfg.wait_for_all
    c = Recorder(cfg)
    c.crash("beta")
    c.crash("alpha")
    c.power_on("alpha")  # a fresh start that never hears beta
    c.run_for(10.0)
    core = c.core("alpha")
    assert not core.membership.seen_all
    assert build_status(core).quorate is False
    assert core.promised == NO_EPOCH
    assert c.messages("declare") == [] and c.ops == []
    # once it has seen its peer, it forms the cluster
    c.power_on("beta")
    c.run_for(FORM)
    assert c.settled() and core.membership.seen_all
    assert c.where() == {"g0": "alpha", "g1": "beta"}


def test_two_node_a_lone_survivor_that_saw_its_peer_stays_quorate_and_fences_it() -> None:
    cfg = sim_config(2, 2, group_chain=False)
    c = formed(cfg, fencer="power")
    t0 = c.now
    c.crash("beta")
    c.run_for(3.0)
    core = c.core("alpha")
    assert build_status(core).quorate is True
    assert c.where() == {"g0": "alpha", "g1": "alpha"}
    assert any(text.startswith("beta fenced: level 1") for when, text in core.decisions
               if when >= t0)
    assert c.settled()


def test_two_node_a_lone_survivor_with_the_silence_fencer_takes_over_its_peers_groups() -> None:
    cfg = sim_config(2, 2, group_chain=False)
    c = formed(cfg)
    c.crash("beta")
    c.run_for(5.0)
    assert c.where() == {"g0": "alpha", "g1": "alpha"}


# ---- configuration mismatch, unknown and malformed messages ---------------------------------


def test_a_node_with_a_different_config_digest_is_kept_out_and_reported() -> None:
    cfg = sim_config(3, 3, group_chain=False)
    c = Recorder(cfg)
    gamma = c.nodes["gamma"]
    c.files["gamma"] = dataclasses.replace(cfg, digest="edited")  # its own file, edited
    gamma.core = NodeCore(c.files["gamma"], "gamma", incarnation=gamma.incarnation, now=c.now)
    c.run_for(FORM)
    for name in ("alpha", "beta"):
        status = build_status(c.core(name))
        assert status.mismatched == ("gamma",)
        assert status.members == ("alpha", "beta")
        assert status.alive == ("alpha", "beta")
    assert build_status(c.core("gamma")).mismatched == ("alpha", "beta")
    assert c.core("gamma").promised == NO_EPOCH
    # gamma runs nothing, even the group that prefers it
    where = c.where()
    assert all(node in ("alpha", "beta") for node in where.values())
    assert where["g2"] is not None
    assert c.ops_since(0.0, node="gamma") == []


def _idle_core() -> tuple[NodeCore, float]:
    cfg = sim_config(3, 2, group_chain=False)
    core = NodeCore(cfg, "alpha", incarnation=1, now=0.0)
    core.handle(Tick(), 0.0)
    return core, 0.0


def _snapshot(core: NodeCore) -> object:
    m = core.membership
    return (core.persisted(), {n: dataclasses.astuple(p) for n, p in m.peers.items()},
            dict(core.local), dict(core.requests.queued), core.round, m.seen_all,
            set(m.mismatched), dict(m.departed), dict(m.support), core.groups.failures)


def _hb(sender: str, **changes: str) -> Message:
    fields = {"n": "1", "inc": "7", "epoch": "0", "acc": "0", "closed": "0", "echo": "",
              "groups": "", "want": "0", "digest": "sim", "reqs": ""}
    fields.update(changes)
    return Message(type="hb", sender=sender, fields={k: v for k, v in fields.items()
                                                      if v != "<absent>"})


def test_an_echo_supports_only_the_life_whose_heartbeat_was_heard() -> None:
    """Heartbeat numbers start again at 1 in each life: beta's echo of alpha's heartbeat 1
    from alpha's previous life (beta never heard the new one: a link failing one way) must not
    support the new life, whose heartbeat 1 beta never heard."""
    cfg = sim_config(3, 1)
    core = NodeCore(cfg, "alpha", incarnation=9, now=0.0)
    sent = core.handle(Tick(), 0.0).messages
    assert [m.fields["n"] for m in sent if m.type == "hb"] == ["1"]
    old_life = _hb("beta", echo="alpha:1:8")
    core.handle(Received(old_life, "lan0"), 0.01)
    assert not core.membership.lease_valid()
    this_life = _hb("beta", n="2", echo="alpha:1:9")
    core.handle(Received(this_life, "lan0"), 0.02)
    assert core.membership.lease_valid()


@pytest.mark.parametrize("msg", [
    _hb("zeta"),
    Message(type="declare", sender="omega", fields={"epoch": "5.omega", "view": "alpha,omega"}),
    _hb("beta", n="one"),
    _hb("beta", epoch="five"),
    _hb("beta", echo="alpha:x"),
    _hb("beta", groups="g0"),
    _hb("beta", want="<absent>"),
    Message(type="frobnicate", sender="beta", fields={}),
    Message(type="declare", sender="beta", fields={"epoch": "1-beta", "view": "beta"}),
    Message(type="bye", sender="beta", fields={}),
    Message(type="start", sender="beta", fields={}),
], ids=["hb-unknown-sender", "declare-unknown-sender", "hb-bad-counter", "hb-bad-epoch",
        "hb-bad-echo", "hb-bad-groups", "hb-missing-field", "unknown-type", "declare-bad-epoch",
        "bye-missing-incarnation", "start-missing-epoch"])
def test_unknown_or_malformed_messages_are_dropped_counted_and_change_nothing(
    msg: Message,
) -> None:
    core, now = _idle_core()
    before = _snapshot(core)
    out = core.handle(Received(msg, "lan0"), now)
    assert core.dropped == 1
    assert _snapshot(core) == before
    assert out.messages == [] and out.actions == []
    if msg.sender not in core.config.nodes:
        assert msg.sender not in core.membership.last_heard


def test_a_declare_with_a_malformed_view_does_not_raise_the_highest_epoch_seen() -> None:
    core, now = _idle_core()
    before = core.persisted()
    core.handle(Received(Message(type="declare", sender="beta",
                                 fields={"epoch": "999.beta", "view": "Not A Name"}), "lan0"), now)
    assert core.dropped == 1
    assert core.persisted() == before


def _mangle_reply(mtype: str, field: str, value: str) -> Callable[[Message], Message]:
    def tamper(msg: Message) -> Message:
        if msg.type == mtype and msg.sender == "beta":
            return Message(type=msg.type, sender=msg.sender, dest=msg.dest,
                           fields={**msg.fields, field: value})
        return msg
    return tamper


@pytest.mark.parametrize(("mtype", "field", "value"), [
    ("cost", "costs", "g0=cheap"),
    ("report", "active", "g0"),
    ("report", "hist", "1.alpha|g0=alpha"),
], ids=["cost-not-a-number", "report-bad-active", "report-bad-history"])
def test_a_malformed_reply_to_the_master_is_dropped_not_fatal(
    mtype: str, field: str, value: str
) -> None:
    c = Recorder(sim_config(3, 2, group_chain=False))
    c.tamper = _mangle_reply(mtype, field, value)
    try:
        c.run_for(FORM)
    except Exception as exc:  # the master's core blew up on beta's reply
        raise AssertionError(f"handle() raised {exc!r}") from exc
    assert c.core("alpha").dropped >= 1


# ---- manual requests -----------------------------------------------------------------------


def test_a_manual_move_goes_through_a_new_epoch_stopping_before_starting() -> None:
    c = formed(sim_config(3, 3, group_chain=False))
    t0 = c.now
    c.request("gamma", AdminRequest("move", group="g0", node="beta"))
    c.run_for(3.0)
    assert c.where() == {"g0": "beta", "g1": "beta", "g2": "gamma"}
    assert c.core("alpha").promised == (2, "alpha")
    assert c.first(t0, "alpha", "g0", "stop-done") < c.first(t0, "beta", "g0", "start")
    assert c.core("gamma").requests.queued == {}  # applied, so no longer pending
    # the move sticks: nothing flows back to the preferred node afterwards
    t1 = c.now
    c.run_for(3.0)
    assert c.where()["g0"] == "beta" and c.ops_since(t1) == []


@pytest.mark.parametrize("kind", ["move", "standby"])
def test_a_request_made_on_the_master_node_is_honoured(kind: str) -> None:
    # Regression: the master once read its own queued requests character by character
    # (NodeCore._pending_requests) and dropped them as "unknown".
    c = formed(sim_config(3, 3, group_chain=False))
    if kind == "move":
        c.request("alpha", AdminRequest("move", group="g0", node="beta"))
    else:
        c.request("alpha", AdminRequest("standby", node="beta"))
    c.run_for(3.0)
    if kind == "move":
        assert c.where()["g0"] == "beta"
    else:
        assert build_status(c.core("alpha")).standby == ("beta",)
        assert "beta" not in c.where().values()


def test_standby_empties_a_node_and_online_lets_it_run_groups_again_without_failback() -> None:
    c = formed(sim_config(3, 3, group_chain=False))
    t0 = c.now
    c.request("gamma", AdminRequest("standby", node="beta"))
    c.run_for(3.0)
    assert build_status(c.core("alpha")).standby == ("beta",)
    assert "beta" not in c.where().values()
    assert c.where()["g1"] == "gamma"  # the next cheapest for g1
    assert c.ops_since(t0, node="beta", what="start") == []

    t1 = c.now
    c.request("gamma", AdminRequest("online", node="beta"))
    c.run_for(3.0)
    assert build_status(c.core("alpha")).standby == ()
    # failback is off: g1 stays where it runs
    assert c.where()["g1"] == "gamma"
    assert c.ops_since(t1) == []
    # but beta can run groups again: when gamma dies, g1 goes back to its preferred node
    c.crash("gamma")
    c.run_for(3.0)
    assert c.where() == {"g0": "alpha", "g1": "beta", "g2": "alpha"}


def test_an_unknown_request_is_ignored_and_changes_no_placement() -> None:
    c = formed(sim_config(3, 3, group_chain=False))
    before = c.where()
    c.request("gamma", AdminRequest("move", group="nope", node="beta"))
    c.run_for(3.0)
    assert c.settled() and c.where() == before
    assert any("ignored" in text for _, text in c.core("alpha").decisions)


# ---- failures ------------------------------------------------------------------------------


def test_a_group_failing_migration_threshold_times_moves_until_its_failures_are_cleared(
) -> None:
    cfg = sim_config(3, 3, group_chain=False, migration_threshold=2)
    c = formed(cfg)
    t0 = c.now
    epoch = c.core("beta").promised
    c.fail_group("beta", "g1")
    c.run_for(3.0)
    # one failure: restarted in place, without a transition (the group never left beta)
    assert c.where()["g1"] == "beta"
    assert c.core("beta").fail_counts() == {"g1": 1}
    assert c.first(t0, "beta", "g1", "start-done") > t0
    assert c.core("beta").promised == epoch
    assert not c.ops_since(t0, group="g1", what="stop")

    t1 = c.now
    c.fail_group("beta", "g1")
    c.run_for(3.0)
    # at the threshold: it moves, and beta prices it at infinity
    assert c.where()["g1"] == "gamma"
    assert c.core("beta").fail_counts() == {"g1": 2}
    assert last_costs(c, "beta", t1)["g1"] == math.inf
    assert last_costs(c, "beta", t1)["g0"] != math.inf

    t2 = c.now
    c._deliver("beta", ClearFailures("g1"))
    c.run_for(3.0)
    assert c.core("beta").fail_counts() == {}
    assert last_costs(c, "beta", t2)["g1"] == 0.0  # finite again: its preferred node
    assert c.where()["g1"] == "gamma"  # but stickiness keeps it where it runs
    c.crash("gamma")
    c.run_for(3.0)
    assert c.where()["g1"] == "beta"


def test_a_start_that_fails_is_placed_on_another_node() -> None:
    cfg = sim_config(3, 3, group_chain=False, migration_threshold=1)
    c = Recorder(cfg)
    c.fail_next_start("beta", "g1")
    c.run_for(FORM)
    assert c.settled()
    assert c.ops_since(0.0, node="beta", group="g1", what="start-failed")
    assert c.where() == {"g0": "alpha", "g1": "gamma", "g2": "gamma"}
    assert c.core("beta").fail_counts() == {"g1": 1}
    assert c.core("beta").local["g1"] is LocalState.STOPPED


def test_a_failed_start_bans_the_node_even_below_the_threshold() -> None:
    # start-failure-is-fatal: retrying where a start just failed rarely helps
    cfg = sim_config(3, 3, group_chain=False, migration_threshold=5)
    c = Recorder(cfg)
    c.fail_next_start("beta", "g1")
    c.run_for(FORM)
    assert c.settled()
    assert c.where()["g1"] == "gamma"
    assert c.core("beta").fail_counts() == {"g1": 5}
    ops = [o[3] for o in c.ops_since(0.0, node="beta", group="g1")]
    assert ops == ["start", "start-failed", "stop", "stop-done"]


# ---- dependencies --------------------------------------------------------------------------


def test_a_dependent_group_runs_on_the_same_node_and_starts_after_its_dependency() -> None:
    cfg = sim_config(3, 2)  # g1 depends on g0
    assert cfg.groups["g1"].depends_on == ("g0",)
    c = formed(cfg)
    where = c.where()
    assert where["g0"] is not None and where["g0"] == where["g1"]
    node = where["g0"]
    assert c.first(0.0, node, "g0", "start-done") <= c.first(0.0, node, "g1", "start")
    # and when that node crashes, both move together, in the same order
    t0 = c.now
    c.crash(node)
    c.run_for(4.0)
    after = c.where()
    assert after["g0"] is not None and after["g0"] == after["g1"] != node
    new = after["g0"]
    assert c.first(t0, new, "g0", "start-done") <= c.first(t0, new, "g1", "start")


# ---- persistence and epochs ----------------------------------------------------------------


def test_persisted_state_round_trips_through_json() -> None:
    c = formed(sim_config(3, 3, group_chain=False))
    c.crash("beta")
    c.run_for(3.0)
    state = c.core("alpha").persisted()
    assert state.promised == (2, "alpha") and state.history
    assert Persisted.from_json(json.loads(json.dumps(state.to_json()))) == state
    hand = Persisted(promised=(7, "beta"), promised_view=("beta", "gamma"),
                     history=(Accepted((6, "alpha"), {"g0": "beta", "g1": None},
                                       frozenset({"alpha"})),),
                     max_seen=9,
                     requests=(RequestRef("beta-4-1", "move", "g0", "alpha"),
                               RequestRef("beta-4-2", "maintenance", "", "off")),
                     reload="ab" * 32)
    assert Persisted.from_json(json.loads(json.dumps(hand.to_json()))) == hand
    older = hand.to_json()
    del older["requests"], older["reload"]  # written before these were kept
    assert Persisted.from_json(older) == dataclasses.replace(hand, requests=(), reload="")
    assert Persisted.from_json(Persisted().to_json()) == Persisted()


def _good_state() -> dict[str, object]:
    return Persisted(promised=(3, "alpha"), promised_view=("alpha", "beta"),
                     history=(Accepted((3, "alpha"), {"g0": "alpha"}, frozenset()),),
                     max_seen=3).to_json()


@pytest.mark.parametrize(("damage", "error"), [
    (lambda d: d.pop("promised"), KeyError),
    (lambda d: d.pop("history"), KeyError),
    (lambda d: d.update(promised="three"), ValueError),
    (lambda d: d.update(history="none"), TypeError),
    (lambda d: d.update(promised_view="alpha"), TypeError),
    (lambda d: d.update(max_seen="3"), TypeError),
    (lambda d: d.update(history=[{"epoch": "3.alpha", "placement": [], "standby": []}]),
     TypeError),
    (lambda d: d.update(history=[{"epoch": "x", "placement": {}, "standby": []}]), ValueError),
    (lambda d: d.update(history=[{"placement": {}, "standby": []}]), KeyError),
    (lambda d: d.update(requests="none"), TypeError),
    (lambda d: d.update(requests=[{"id": "a-1-1", "kind": "reboot", "group": "",
                                   "node": ""}]), ValueError),
    (lambda d: d.update(requests=[{"id": "a-1-1", "kind": "move"}]), KeyError),
    (lambda d: d.update(reload=["ab"]), TypeError),
], ids=["no-promised", "no-history", "bad-epoch", "history-not-list", "view-not-list",
        "max-seen-not-int", "placement-not-dict", "history-bad-epoch", "history-no-epoch",
        "requests-not-list", "request-bad-kind", "request-no-group", "reload-not-str"])
def test_a_damaged_persisted_state_is_refused(
    damage: Callable[[dict[str, object]], object], error: type[Exception]
) -> None:
    data = _good_state()
    damage(data)
    with pytest.raises(error):
        Persisted.from_json(data)


def test_a_restarted_node_keeps_its_promise_and_refuses_older_epochs() -> None:
    cfg = sim_config(3, 2, group_chain=False)
    state = Persisted(promised=(7, "alpha"), promised_view=("alpha", "beta", "gamma"),
                      max_seen=9)
    core = NodeCore(cfg, "beta", incarnation=2, now=0.0, persisted=state)
    assert core.promised == (7, "alpha") and core.promise.max_seen == 9
    core.handle(Tick(), 0.0)

    def declare(epoch: str) -> list[Message]:
        msg = Message(type="declare", sender="alpha", dest="*",
                      fields={"epoch": epoch, "view": "alpha,beta,gamma", "reason": "test"})
        return [m for m in core.handle(Received(msg, "lan0"), 0.01).messages if m.type == "ack"]

    assert declare("5.alpha") == []  # older than the promise it made before the restart
    assert core.promised == (7, "alpha")
    acks = declare("10.alpha")
    assert [(m.dest, m.fields["epoch"]) for m in acks] == [("alpha", "10.alpha")]
    assert core.promised == (10, "alpha")


def test_epochs_only_grow_on_every_node_through_crashes_and_restarts() -> None:
    cfg = sim_config(3, 3, group_chain=False)
    c = formed(cfg)
    for victim in ("alpha", "beta", "alpha", "gamma"):
        before = c.core(victim).promised
        c.crash(victim)
        c.run_for(2.5)  # the others notice and re-form without it
        c.power_on(victim)
        # a restarted node comes back with the promise it persisted
        assert c.core(victim).promised >= before
        c.run_for(3.0)
        assert c.settled(), c.describe()
    for node, promised in c.promises.items():
        assert promised == sorted(promised), f"{node} went back: {promised}"
    final = {c.core(n).promised for n in cfg.node_names}
    assert len(final) == 1 and next(iter(final))[0] >= 5
    assert all(v is not None for v in c.where().values())


def test_a_fresh_node_has_no_epoch_and_no_placement() -> None:
    cfg = sim_config(3, 2, group_chain=False)
    core = NodeCore(cfg, "beta", incarnation=1, now=0.0)
    assert core.promised == NO_EPOCH and core.accepted == NO_ACCEPTED
    status = build_status(core)
    assert status.epoch == "0" and status.master is None
    with pytest.raises(ValueError, match="not in the configuration"):
        NodeCore(cfg, "zeta", incarnation=1, now=0.0)


def test_a_stale_stop_from_an_older_epoch_is_ignored() -> None:
    """A request of an epoch the node no longer promises (a late or replayed message of a
    former master) must not stop anything."""
    from vigil.cluster.events import Received
    from vigil.cluster.wire import fmt_epoch
    from vigil.messages import Message

    sim = SimCluster(sim_config(3, 3), rng=random.Random(3))
    sim.run_for(3.0)
    old_epoch = sim.nodes["alpha"].core.promised  # type: ignore[union-attr]
    placement = sim.placement()
    holder, group = next((where[0], g) for g, where in placement.items() if where)
    bystander = next(n for n in ("alpha", "beta", "gamma") if n != holder)
    sim.crash(bystander)
    sim.run_for(3.0)
    sim.power_on(bystander)
    sim.run_for(3.0)
    core = sim.nodes[holder].core
    assert core is not None and core.promised > old_epoch
    stale = Message(type="stop", sender=old_epoch[1], dest=holder,
                    fields={"epoch": fmt_epoch(old_epoch), "groups": group})
    sim._deliver(holder, Received(stale, "lan0"))
    sim.run_for(1.0)
    assert holder in sim.placement()[group], f"{group} stopped by a stale request"


# ---- on_fail policies and cleanup ------------------------------------------------------------


def _holder_fails(c: Recorder, policy: str) -> tuple[str, float]:
    holder = c.where()["g1"]
    assert holder is not None
    t0 = c.now
    c._deliver(holder, GroupFailed("g1", "monitor of g1-r1: broken", resource="g1-r1",
                                   policy=policy))
    c.run_for(3.0)
    return holder, t0


def test_on_fail_ignore_leaves_the_group_alone() -> None:
    c = formed(sim_config(3, 3, group_chain=False))
    holder, t0 = _holder_fails(c, "ignore")
    assert c.where()["g1"] == holder
    assert c.core(holder).fail_counts() == {}
    assert not c.ops_since(t0, group="g1")


def test_on_fail_standby_moves_everything_off_the_node() -> None:
    c = formed(sim_config(3, 3, group_chain=False))
    holder, _ = _holder_fails(c, "standby")
    assert holder in c.core(holder).accepted.admin
    assert holder not in c.where().values()
    assert all(node is not None for node in c.where().values())


def test_on_fail_stop_does_not_restart_in_place_and_bans_the_node() -> None:
    c = formed(sim_config(3, 3, group_chain=False, migration_threshold=3))
    holder, t0 = _holder_fails(c, "stop")
    assert c.where()["g1"] not in (holder, None)
    assert c.core(holder).fail_counts() == {"g1": 3}
    assert not c.ops_since(t0, node=holder, group="g1", what="start")


def test_cleanup_on_any_node_clears_the_fail_counts_everywhere() -> None:
    c = formed(sim_config(3, 3, group_chain=False, migration_threshold=1))
    holder, _ = _holder_fails(c, "restart")
    assert c.core(holder).fail_counts() == {"g1": 1}
    other = next(n for n in c.nodes if n != holder)
    c._deliver(other, ClearFailures("g1"))
    c.run_for(1.0)
    assert c.core(holder).fail_counts() == {}


# ---- found in review: maintenance, holds, restarts around members out by hand ----------------


def test_a_holder_cut_off_in_maintenance_is_still_waited_for_after_it() -> None:
    # beta holds g1 and is cut off while the cluster is in maintenance; its stops take
    # nearly their whole timeout. When maintenance ends, g1 may start elsewhere only after
    # the fencing wait: the maintenance epochs must not forget that beta may run it.
    cfg = sim_config(3, 3, group_chain=False, stop_timeout=0.5)
    c = Recorder(cfg, stop_duration=0.45)
    c.run_for(FORM)
    assert c.where()["g1"] == "beta"
    c.request("alpha", AdminRequest("maintenance", on=True))
    c.run_for(2.0)
    assert c.core("alpha").accepted.maintenance
    c.partition({"beta"}, {"alpha", "gamma"})
    c.run_for(1.5)  # the majority closes an epoch without beta, still in maintenance
    assert c.core("alpha").accepted.placement["g1"] == "beta"  # not forgotten
    c.request("alpha", AdminRequest("maintenance", on=False))
    c.run_for(6.0)  # the simulator's exclusivity check runs at every start
    assert c.where()["g1"] in ("alpha", "gamma")


def test_a_failed_group_under_a_running_dependent_is_restarted_after_it() -> None:
    cfg = sim_config(3, 2, group_chain=True, migration_threshold=3, stop_timeout=0.5)
    c = Recorder(cfg, stop_duration=0.45)
    c.run_for(FORM)
    holder = c.where()["g0"]
    assert holder is not None and c.where()["g1"] == holder
    t0 = c.now
    c._deliver(holder, GroupFailed("g0", "monitor of g0-r0: broken", resource="g0-r0"))
    c.run_for(4.0)
    ops = [(o[2], o[3]) for o in c.ops_since(t0, node=holder)]
    # the dependent leaves first, then the failed group itself is stopped and both come back
    assert ops.index(("g1", "stop-done")) < ops.index(("g0", "stop"))
    assert ops.index(("g0", "stop-done")) < ops.index(("g0", "start"))
    assert ops.index(("g0", "start-done")) < ops.index(("g1", "start"))
    assert c.where() == {"g0": holder, "g1": holder}
    assert not c.core(holder).groups.held


def test_a_restart_in_place_leaves_members_out_of_service_by_hand_out() -> None:
    cfg = sim_config(3, 1, resources_per_group=3)
    c = Recorder(cfg)
    c.run_for(FORM)
    holder = c.where()["g0"]
    assert holder is not None
    c.request(holder, AdminRequest("disable", resource="g0-r2"))
    c.run_for(2.0)
    node = c.nodes[holder]
    assert "g0-r2" not in node.resources and node.resources.get("g0-r1") == "in"
    c._deliver(holder, GroupFailed("g0", "monitor of g0-r1: broken", resource="g0-r1"))
    c.run_for(2.0)
    assert node.resources.get("g0-r1") == "in" and "g0-r2" not in node.resources


def test_members_back_in_service_start_in_group_dependency_order() -> None:
    # found by the simulation: g1 (after g0) had a member put back in service while g0's
    # own member was still starting
    cfg = sim_config(3, 2, group_chain=True)
    c = Recorder(cfg)
    c.run_for(FORM)
    holder = c.where()["g0"]
    assert holder is not None
    for r in ("g0-r0", "g1-r0"):
        c.request("alpha", AdminRequest("disable", resource=r))
    c.run_for(2.0)
    for r in ("g0-r0", "g1-r0"):
        c.request("alpha", AdminRequest("enable", resource=r))
    c.run_for(2.0)  # the simulator checks the order at every start
    assert all(c.nodes[holder].resources.get(r) == "in" for r in cfg.resources)


def test_members_put_back_wait_until_a_dependent_group_still_starting_is_in_service() -> None:
    # found by the simulation: g1 (after g0) was still starting, on a g0 without g0-r1, when
    # g0-r1 was put back; g0 converged at once and g1's next member started while g0-r1 was
    # not in service yet. g0 takes its member back once g1 is in service.
    cfg = sim_config(3, 2, group_chain=True)
    c = Recorder(cfg, start_duration=0.3)
    c.run_for(FORM + 2.0)
    holder = c.where()["g0"]
    assert holder is not None and c.where()["g1"] == holder
    c.request("alpha", AdminRequest("disable", resource="g0-r1"))
    deadline = c.now + 5.0
    while c.now < deadline and c.core(holder).local["g1"] is not LocalState.STARTING:
        c.run_for(0.01)
    assert c.core(holder).local["g1"] is LocalState.STARTING, "g1 never came back"
    c.request("alpha", AdminRequest("enable", resource="g0-r1"))
    c.run_for(4.0)  # the simulator checks the order at every start
    assert all(c.nodes[holder].resources.get(r) == "in" for r in cfg.resources)


def test_a_failed_converging_start_under_a_running_dependent_stops_the_dependent_first() -> None:
    # g0-r1 is taken out of service by hand, so g1 (after g0) leaves and comes back on the
    # smaller g0; when g0-r1 is put back, that start fails: g0 must not go while g1 runs
    cfg = sim_config(3, 2, group_chain=True)
    c = Recorder(cfg)
    c.run_for(2.0)
    holder = c.where()["g0"]
    assert holder is not None and c.where()["g1"] == holder
    c.request("alpha", AdminRequest("kill", resource="g0-r1"))
    c.run_for(1.0)
    assert c.where()["g1"] == holder
    c.fail_next_start(holder, "g0")
    t0 = c.now
    c.request("alpha", AdminRequest("enable", resource="g0-r1"))
    c.run_for(1.0)  # the simulator checks the order at every stop
    ops = [(o[2], o[3]) for o in c.ops_since(t0, node=holder)]
    assert ("g0", "start-failed") in ops
    assert ops.index(("g1", "stop-done")) < ops.index(("g0", "stop"))
    c.run_for(4.0)
    where = c.where()
    assert where["g0"] not in (holder, None) and where["g1"] == where["g0"]


def test_a_request_survives_the_fencing_of_the_node_that_took_it() -> None:
    # alpha reboots and takes "maintenance off" just before beta's power fence, issued
    # while alpha was down, switches it off again: the request is persisted with alpha's
    # promise, so it is carried out once alpha is back (the switch takes 0.6 s)
    c = Recorder(sim_config(2, 1), fencer="power",
                 devices={SIM_SWITCH: SimDevice(duration=(0.6, 0.6))})
    c.run_for(FORM)
    c.request("alpha", AdminRequest("maintenance", on=True))
    c.run_for(1.0)
    assert c.core("beta").accepted.maintenance
    c.crash("alpha")
    c.run_for(0.6)  # beta declared alpha dead and is fencing it
    c.power_on("alpha")
    c.request("alpha", AdminRequest("maintenance", on=False))
    c.run_for(1.0)
    assert c.nodes["alpha"].core is None, "the fence did not switch alpha off"
    c.power_on("alpha")
    c.run_for(5.0)
    assert not c.core("beta").accepted.maintenance
    assert not c.core("alpha").requests.queued
    assert c.where()["g0"] is not None


@pytest.mark.parametrize("how", ["kill", "fail"])
def test_a_chain_of_three_groups_leaves_from_its_end(how: str) -> None:
    # g2 after g1 after g0, all on one node: when g0 must stop (a member taken out of
    # service by hand, or a failure), g2 leaves before g1, and g1 before g0
    cfg = sim_config(3, 3, chain=3, migration_threshold=1)
    assert cfg.groups["g2"].depends_on == ("g1",) and cfg.groups["g1"].depends_on == ("g0",)
    c = Recorder(cfg)
    c.run_for(FORM)
    holder = c.where()["g0"]
    assert holder is not None and c.where()["g1"] == c.where()["g2"] == holder
    t0 = c.now
    if how == "kill":
        c.request("alpha", AdminRequest("kill", resource="g0-r0"))
    else:
        c._deliver(holder, GroupFailed("g0", "monitor of g0-r0: broken", resource="g0-r0"))
    c.run_for(4.0)  # the simulator checks the order at every stop
    ops = [(o[2], o[3]) for o in c.ops_since(t0, node=holder)]
    assert ops.index(("g2", "stop-done")) < ops.index(("g1", "stop"))
    assert ops.index(("g1", "stop-done")) < ops.index(("g0", "stop" if how == "fail" else
                                                              "start"))


# ---- our bugs and the operator's word ---------------------------------------------------------


class _BrokenStrategy(CostStrategy):
    """A strategy plug-in with a bug: it looks up a group that does not exist."""

    def local_costs(self, ctx: LocalCostContext) -> dict[str, float]:
        return {"g0": {"nope": 1.0}["g0"]}


def test_a_bug_of_ours_is_raised_not_counted_as_a_bad_message() -> None:
    # Only a message that does not parse is the peer's fault (dropped and counted); a
    # KeyError in our own handling of a good message must reach the actor's supervision.
    cfg = sim_config(3, 1, group_chain=False)
    core = NodeCore(cfg, "beta", incarnation=1, now=0.0, strategy=_BrokenStrategy())
    core.handle(Received(Message(type="declare", sender="alpha", fields={
        "epoch": "1.alpha", "view": "alpha,beta,gamma", "reason": "test"}), "lan0"), 0.0)
    with pytest.raises(KeyError):
        core.handle(Received(Message(type="cost_req", sender="alpha", fields={
            "epoch": "1.alpha", "standby": ""}), "lan0"), 0.1)
    assert core.dropped == 0


def test_an_unclean_group_counts_as_stopped_once_every_member_left_is_marked_out() -> None:
    # A stop failed at g0-r1 (g0-r0 was not reached): only the operator's mark-oos of both
    # members still possibly in service releases the group; nothing else does.
    cfg = sim_config(3, 1, resources_per_group=3, group_chain=False)
    actions: list[object] = []
    groups = LocalGroups(cfg, "alpha", Journal("alpha", 0.0), actions.append)
    groups.set("g0", LocalState.STOPPING)
    groups.group_done(GroupDone("g0", "stop", False, "g0-r1: stop timed out",
                                remaining=frozenset({"g0-r1", "g0-r0"})), (1, "alpha"))
    assert groups.state["g0"] is LocalState.UNCLEAN
    groups.marked_out("g0-r2", (1, "alpha"))  # already out: changes nothing
    groups.marked_out("g0-r1", (1, "alpha"))
    assert groups.state["g0"] is LocalState.UNCLEAN
    groups.marked_out("g0-r0", (1, "alpha"))
    assert groups.state["g0"] is LocalState.STOPPED
