"""ResourceBook: what this node saw of its resources, for `vigil status` (each one's state and
reason as last reported, its last diagnostic, its last failure), shared by the coordinator
and the workers that report the resources' operations (vigil/actors/resource.py).

The coordinator is told of every report that it must act on or that changes what status
shows beyond the last diagnostic's time: a state, reason or verdict that changed, a failure,
any operation but a monitor (:meth:`ResourceBook.routine`). A monitor that only confirms
what the coordinator knows, nearly every scheduled one, is written here by its worker, and
the coordinator never wakes for it. What status shows is what the coordinator would have
recorded itself: a report counts as routine only once the coordinator has recorded every
report of that resource told before it (numbered), so nothing overtakes one still in its
mailbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from vigil.actors.messages import ResourceState
from vigil.status import Operation, iso_time

#: the state and reason of a resource no report has come for
UNKNOWN = ("UNKNOWN", "not yet probed")


class ResourceBook:
    def __init__(self, resources: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, tuple[str, str]] = dict.fromkeys(resources, UNKNOWN)
        self._last_failure: dict[str, Operation] = {}
        self._last_diagnostic: dict[str, Operation] = {}
        #: resource -> the number of its last report told to the coordinator; of the last
        #: one the coordinator recorded
        self._told: dict[str, int] = {}
        self._recorded: dict[str, int] = {}

    def reset(self, resources: Iterable[str]) -> None:
        """A new coordinator, which knows nothing yet: every resource UNKNOWN, no failure
        or diagnostic. What was told to the one before counts as recorded: it was, or it
        went with that actor."""
        with self._lock:
            self._states = dict.fromkeys(resources, UNKNOWN)
            self._last_failure.clear()
            self._last_diagnostic.clear()
            self._recorded = dict(self._told)

    def keep(self, resources: Iterable[str]) -> None:
        """A new configuration of ``resources``: those gone are forgotten, new ones are
        UNKNOWN."""
        with self._lock:
            self._states = {r: self._states.get(r, UNKNOWN) for r in resources}
            for table in (self._last_failure, self._last_diagnostic):
                for r in [r for r in table if r not in self._states]:
                    del table[r]

    def routine(self, report: ResourceState) -> int:
        """On the reporting thread, one report of a resource at a time: 0 if ``report`` is
        a monitor that changes nothing the coordinator knows (then recorded here as the
        resource's last diagnostic), else the number to tell the coordinator it with."""
        r = report.resource
        with self._lock:
            if (report.op == "monitor" and report.ok
                    and self._states.get(r) == (report.state, report.reason)
                    and self._recorded.get(r, 0) == self._told.get(r, 0)):
                self._last_diagnostic[r] = _operation(report)
                return 0
            number = self._told[r] = self._told.get(r, 0) + 1
            return number

    def record(self, report: ResourceState) -> str | None:
        """The coordinator records ``report``: the resource's state before it (None: not a
        resource of the configuration any more, nothing recorded)."""
        r = report.resource
        with self._lock:
            self._recorded[r] = max(self._recorded.get(r, 0), report.number)
            before = self._states.get(r)
            if before is None:
                return None
            self._states[r] = (report.state, report.reason)
            entry = _operation(report)
            if report.op == "monitor":
                self._last_diagnostic[r] = entry
            if not report.ok:
                self._last_failure[r] = entry
            return before[0]

    def forget_failures(self, resources: Iterable[str]) -> None:
        """A cleanup: the last failure of ``resources`` and a failed last diagnostic are no
        longer news here (the next monitor says again how they are)."""
        with self._lock:
            for r in resources:
                self._last_failure.pop(r, None)
                diag = self._last_diagnostic.get(r)
                if diag is not None and not diag.ok:
                    del self._last_diagnostic[r]

    def facts(self) -> tuple[dict[str, tuple[str, str]], dict[str, Operation],
                             dict[str, Operation]]:
        """Copies of the states, last failures and last diagnostics, for a status."""
        with self._lock:
            return (dict(self._states), dict(self._last_failure),
                    dict(self._last_diagnostic))


def _operation(report: ResourceState) -> Operation:
    return Operation(ok=report.ok, op=report.op, state=report.state, reason=report.reason,
                     at=iso_time(report.at or time.time()))
