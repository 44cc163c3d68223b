"""The node's record of its resources for status (vigil/actors/book.py): a monitor that
changes nothing is written there by its reporter, and everything else goes to the
coordinator, in order, so status shows what the coordinator would have recorded itself."""

from __future__ import annotations

import dataclasses

from vigil.actors.book import ResourceBook
from vigil.actors.messages import ResourceState
from vigil.status import iso_time


def report(state: str = "IN_SERVICE", reason: str = "running", op: str = "monitor",
           ok: bool = True, at: float = 1_000.0) -> ResourceState:
    return ResourceState("web", "g", state, reason, op=op, ok=ok, at=at)


def told(book: ResourceBook, m: ResourceState) -> ResourceState | None:
    """What the reporter does: the report as told to the coordinator, or None."""
    number = book.routine(m)
    return dataclasses.replace(m, number=number) if number else None


def test_only_a_monitor_that_confirms_what_the_coordinator_knows_is_routine() -> None:
    book = ResourceBook(["web"])
    start = told(book, report(reason="started", op="start"))
    assert start is not None  # every operation but a monitor is told
    assert book.record(start) == "UNKNOWN"
    first = told(book, report(at=1_001.0))
    assert first is not None  # another reason than the start's
    book.record(first)
    assert told(book, report(at=1_010.0)) is None  # the same: written here
    states, failures, diagnostics = book.facts()
    assert states == {"web": ("IN_SERVICE", "running")} and failures == {}
    assert diagnostics["web"].at == iso_time(1_010.0)  # the routine one's time
    assert told(book, report(reason="running, slow")) is not None  # a new reason
    assert told(book, report(state="FAILED", ok=False)) is not None


def test_a_routine_monitor_never_overtakes_a_report_still_on_its_way() -> None:
    book = ResourceBook(["web"])
    book.record(dataclasses.replace(report(), number=book.routine(report(op="start"))))
    failed = told(book, report(state="FAILED", reason="gone", ok=False, at=1_005.0))
    assert failed is not None  # in the coordinator's mailbox, not recorded yet
    healthy = told(book, report(at=1_010.0))
    assert healthy is not None, "a monitor overtook the failure before it"
    assert book.record(failed) == "IN_SERVICE"
    assert book.record(healthy) == "FAILED"
    states, failures, diagnostics = book.facts()
    assert states["web"] == ("IN_SERVICE", "running")  # the last one wins, as told
    assert failures["web"].reason == "gone" and diagnostics["web"].ok
    assert told(book, report(at=1_020.0)) is None  # all recorded: routine again


def test_a_new_coordinator_starts_from_nothing_and_a_lost_report_heals() -> None:
    book = ResourceBook(["web"])
    first = told(book, report())
    assert first is not None
    book.record(first)
    lost = told(book, report(state="FAILED", ok=False))  # never recorded: its actor died
    assert lost is not None
    book.reset(["web"])  # the new coordinator
    assert book.facts() == ({"web": ("UNKNOWN", "not yet probed")}, {}, {})
    again = told(book, report())  # unknown to the new one: told
    assert again is not None
    book.record(again)
    assert told(book, report()) is None


def test_cleanup_forgets_failures_and_a_new_configuration_forgets_resources_gone() -> None:
    book = ResourceBook(["web", "db"])
    for m in (report(state="FAILED", ok=False), dataclasses.replace(report(), resource="db")):
        book.record(dataclasses.replace(m, number=book.routine(m)))
    book.forget_failures(["web"])
    states, failures, diagnostics = book.facts()
    assert failures == {} and set(diagnostics) == {"db"}
    book.keep(["web", "new"])
    states, failures, diagnostics = book.facts()
    assert states == {"web": ("FAILED", "running"), "new": ("UNKNOWN", "not yet probed")}
    assert diagnostics == {}
    gone = dataclasses.replace(report(), resource="db")
    assert book.record(dataclasses.replace(gone, number=book.routine(gone))) is None
    assert "db" not in book.facts()[0]
