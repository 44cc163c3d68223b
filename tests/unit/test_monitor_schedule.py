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
