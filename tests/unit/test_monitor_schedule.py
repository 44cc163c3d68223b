"""The diagnostics actor's schedule (vigil/actors/diagnostics.py): one next monitor per
resource, whatever set it last."""

from __future__ import annotations

from vigil.actors.diagnostics import Schedule


def test_a_resource_has_one_next_monitor_the_last_set() -> None:
    s = Schedule()
    s.set("a", 10.0)
    s.set("a", 12.0)  # a monitor by hand returned: the next is an interval after it
    s.set("b", 11.0)
    assert s.next() == 11.0
    assert s.take(11.5) == ["b"]
    assert s.take(11.9) == []
    assert s.take(20.0) == ["a"]  # once, not once per time it was given
    assert s.next() is None and "a" not in s


def test_a_dropped_resource_is_not_taken() -> None:
    s = Schedule()
    s.set("a", 1.0)
    s.set("b", 2.0)
    s.drop("a")
    assert s.next() == 2.0
    assert s.take(5.0) == ["b"]


def test_a_monitor_due_within_its_slack_runs_with_one_that_is_due() -> None:
    s = Schedule()
    s.set("a", 10.0, slack=1.0)
    s.set("b", 10.8, slack=1.0)  # 0.8 s later: within its slack of 10.0
    s.set("c", 10.5, slack=0.2)  # a short interval's small slack: not yet
    s.set("d", 12.0, slack=1.0)
    assert s.next() == 10.0  # the timer still wakes for the first one due
    assert s.take(8.9) == []
    assert s.take(10.0) == ["a", "b"]
    assert s.next() == 10.5
    assert s.take(10.3) == ["c"]  # awake anyway: c may run 0.2 s early, no more
    assert s.take(10.9) == []  # d's slack ends at 11.0
    assert s.take(11.0) == ["d"]


def test_monitors_in_step_stay_in_step() -> None:
    # each next monitor is an interval after the last returned: runs together keep them so
    s = Schedule()
    s.set("a", 10.0, slack=1.0)
    s.set("b", 10.9, slack=1.0)
    for now in (10.0, 20.05, 30.1):
        assert sorted(s.take(now)) == ["a", "b"]
        s.set("a", now + 0.01 + 10.0, slack=1.0)  # their results, a moment apart
        s.set("b", now + 0.03 + 10.0, slack=1.0)
