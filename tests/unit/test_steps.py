"""The steps of a group action (vigil/cluster/steps.py): the one order the daemon's GroupActor
and the simulator both run."""

from __future__ import annotations

from vigil.cluster.events import RestartResource, StartGroup, StopGroup
from vigil.cluster.steps import GroupSteps, Step, group_steps
from vigil.cluster.wire import NO_EPOCH
from vigil.graph import DependencyGraph

# disk <- fs <- app, and ip <- app; log depends on nothing and nothing on it
GRAPH = DependencyGraph({"disk": [], "fs": ["disk"], "ip": [], "app": ["fs", "ip"],
                         "log": []})
ORDER = GRAPH.start_order()
DEPENDENTS = {r: GRAPH.transitive_dependents(r) for r in GRAPH.names()}


def steps(action: StartGroup | StopGroup | RestartResource,
          starting: str | None = None) -> GroupSteps:
    return group_steps(action, ORDER, DEPENDENTS, starting=starting)


def test_the_example_graph_starts_dependencies_first() -> None:
    assert ORDER == ["disk", "fs", "ip", "app", "log"]


def test_a_start_brings_every_member_in_in_dependency_order() -> None:
    plan = steps(StartGroup("g", NO_EPOCH))
    assert plan == GroupSteps("start", tuple(Step(r, "start") for r in ORDER))


def test_a_start_leaves_out_the_members_out_of_service_by_hand() -> None:
    plan = steps(StartGroup("g", NO_EPOCH, skip=frozenset({"ip", "app"})))
    assert plan.steps == (Step("disk", "start"), Step("fs", "start"), Step("log", "start"))


def test_skipped_members_are_not_stopped_by_a_start_that_does_not_converge() -> None:
    plan = steps(StartGroup("g", NO_EPOCH, skip=frozenset({"app"}), kill=frozenset({"app"})))
    assert all(s.op == "start" for s in plan.steps)


def test_a_converging_start_stops_the_newly_skipped_members_in_stop_order() -> None:
    plan = steps(StartGroup("g", NO_EPOCH, skip=frozenset({"fs", "app"}), converge=True))
    assert plan.op == "start"
    assert plan.steps == (Step("app", "stop"), Step("fs", "stop"))  # the rest runs: untouched


def test_a_converging_start_brings_back_only_what_was_left_out() -> None:
    # ip comes back (app stays out); disk, fs and log run and are not started again, so no
    # member with running dependents is ever "starting" where a stop would interrupt it
    plan = steps(StartGroup("g", NO_EPOCH, skip=frozenset({"app"}), converge=True,
                            skipped=frozenset({"ip", "app"})))
    assert plan.steps == (Step("ip", "start"),)
    plan = steps(StartGroup("g", NO_EPOCH, skip=frozenset({"ip", "app"}), converge=True,
                            skipped=frozenset({"fs", "app"})))
    assert plan.steps == (Step("ip", "stop"), Step("fs", "start"))


def test_a_converging_start_stops_killed_members_at_once() -> None:
    plan = steps(StartGroup("g", NO_EPOCH, skip=frozenset({"fs", "app"}),
                            kill=frozenset({"fs"}), converge=True))
    assert plan.steps[:2] == (Step("app", "stop"), Step("fs", "force_stop"))


def test_a_stop_takes_every_member_out_in_the_exact_reverse_order() -> None:
    plan = steps(StopGroup("g", NO_EPOCH, "moved"))
    assert plan == GroupSteps("stop", tuple(Step(r, "stop") for r in reversed(ORDER)))


def test_a_forced_stop_stops_every_member_at_once() -> None:
    plan = steps(StopGroup("g", NO_EPOCH, "lost quorum", force=True))
    assert plan.steps == tuple(Step(r, "force_stop") for r in reversed(ORDER))


def test_a_stop_interrupts_a_start_underway_at_once() -> None:
    plan = steps(StopGroup("g", NO_EPOCH, "moved"), starting="fs")
    assert plan.interrupt == Step("fs", "force_stop")
    assert plan.steps == tuple(Step(r, "stop") for r in reversed(ORDER))


def test_only_a_stop_interrupts_a_start_underway() -> None:
    assert steps(StartGroup("g", NO_EPOCH, converge=True), starting="fs").interrupt is None
    assert steps(RestartResource("g", "fs", NO_EPOCH), starting="fs").interrupt is None
    assert steps(StopGroup("g", NO_EPOCH, "moved")).interrupt is None


def test_a_restart_in_place_takes_the_dependents_along() -> None:
    plan = steps(RestartResource("g", "disk", NO_EPOCH))
    assert plan.op == "start"
    assert plan.steps == (Step("app", "stop"), Step("fs", "stop"), Step("disk", "stop"),
                          Step("disk", "start"), Step("fs", "start"), Step("app", "start"))


def test_a_restart_in_place_of_a_member_nothing_depends_on_restarts_it_alone() -> None:
    assert steps(RestartResource("g", "log", NO_EPOCH)).steps == (
        Step("log", "stop"), Step("log", "start"))


def test_a_restart_in_place_leaves_members_out_of_service_by_hand_out() -> None:
    plan = steps(RestartResource("g", "disk", NO_EPOCH, skip=frozenset({"app"})))
    assert plan.steps == (Step("fs", "stop"), Step("disk", "stop"),
                          Step("disk", "start"), Step("fs", "start"))


def test_a_group_with_no_members_here_has_no_steps() -> None:
    # the daemon's GroupActor gets no members when none of the group's types is installed
    for action in (StartGroup("g", NO_EPOCH), StopGroup("g", NO_EPOCH, "moved"),
                   RestartResource("g", "disk", NO_EPOCH)):
        assert group_steps(action, [], DEPENDENTS).steps == ()
