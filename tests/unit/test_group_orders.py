"""The core numbers its commands to a group (``order``) and counts only the answer to the
newest: a late answer to an older one must not pass for it. The case the simulation found
(a slow master, 800 examples): the guardian killed a group while its start was under way,
the core started it again, and the first start's success, arriving after, made the core
count the group in service and start its dependent before the new start was done."""

from __future__ import annotations

from tests.support.simconfig import sim_config
from vigil.cluster.events import Action, GroupDone, StartGroup
from vigil.cluster.journal import Journal
from vigil.cluster.local import Allowed, LocalGroups, LocalState
from vigil.cluster.wire import Accepted

EPOCH = (1, "alpha")


def start_here() -> tuple[LocalGroups, list[Action], Accepted, Allowed]:
    cfg = sim_config(3, 2, group_chain=True)  # g1 depends on g0
    actions: list[Action] = []
    groups = LocalGroups(cfg, "alpha", Journal("alpha", 5.0), actions.append)
    accepted = Accepted(EPOCH, {"g0": "alpha", "g1": "alpha"}, frozenset())
    allowed = Allowed(lease_ok=True, freeze=False, placement=accepted.placement,
                      maintenance=False, leaving=False, stop_orders=frozenset(),
                      promised=EPOCH)
    groups.reconcile(allowed, accepted)
    return groups, actions, accepted, allowed


def starts(actions: list[Action]) -> list[StartGroup]:
    return [a for a in actions if isinstance(a, StartGroup)]


def test_a_late_success_of_a_start_the_guardian_cut_short_does_not_pass_for_the_new_one(
) -> None:
    groups, actions, accepted, allowed = start_here()
    first = starts(actions)
    assert [a.group for a in first] == ["g0"]  # g1 waits for g0
    groups.fenced("the guardian fenced (lease)")  # the start under way is killed
    groups.reconcile(allowed, accepted)
    second = starts(actions)[1:]
    assert [a.group for a in second] == ["g0"] and second[0].order != first[0].order
    # the first start's success comes now, late: g0 is still starting, g1 still waits
    groups.group_done(GroupDone("g0", "start", True, order=first[0].order), EPOCH)
    groups.reconcile(allowed, accepted)
    assert groups.state["g0"] is LocalState.STARTING
    assert [a.group for a in starts(actions)] == ["g0", "g0"]
    # the new start's own answer counts, and only then does the dependent start
    groups.group_done(GroupDone("g0", "start", True, order=second[0].order), EPOCH)
    groups.reconcile(allowed, accepted)
    assert groups.state["g0"] is LocalState.RUNNING
    assert [a.group for a in starts(actions)] == ["g0", "g0", "g1"]


def test_orders_only_grow_across_a_new_core_and_a_new_configuration() -> None:
    groups, actions, _accepted, _allowed = start_here()
    before = starts(actions)[0].order
    # a core started a second later (a restarted coordinator) numbers above anything the
    # old one ordered, whose answers may still come
    again = LocalGroups(groups.config, "alpha", Journal("alpha", 6.0), actions.append)
    assert next(again._orders) > before
    # a new configuration keeps the kept groups' orders, and the numbering goes on
    kept = groups.reconfigured(groups.config, frozenset(groups.config.groups))
    assert kept.orders == groups.orders and next(kept._orders) > before
