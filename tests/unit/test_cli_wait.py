"""``--wait``'s polling (vigil.cli.wait): a verdict counts once it holds, the time is bounded;
and the one-line refusal of a control socket the daemon cannot listen on."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from vigil.cli.wait import Outcome, Verdict, wait_until
from vigil.local.access import socket_problem
from vigil.status import ClusterStatus


class Clock:
    """Time that passes only when the waiter sleeps (or a poll takes it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(verdicts: list[Verdict], timeout: float = 5.0, settle: float = 0.5,
        grace: float = 1.0) -> tuple[Outcome, int]:
    clock = Clock()
    polls = []

    def poll(left: float) -> ClusterStatus:
        polls.append(left)
        return None  # type: ignore[return-value]  # the checks below ignore it

    it = iter(verdicts)
    last = [verdicts[-1]]

    def check(_: ClusterStatus) -> Verdict:
        last[0] = next(it, last[0])
        return last[0]

    out = wait_until(poll, check, timeout, settle=settle, grace=grace, interval=0.2,
                     clock=lambda: clock.now, sleep=clock.sleep)
    return out, len(polls)


def test_done_counts_once_it_held_for_the_settle_time() -> None:
    pending, done = Verdict("pending", "moving"), Verdict("done", "on beta")
    out, polls = run([pending, pending, done])
    assert out == Outcome("done", "on beta")
    assert polls == 2 + 1 + 3  # 0.5 s of done: four polls 0.2 s apart, the first included


def test_a_done_that_does_not_hold_starts_over() -> None:
    out, polls = run([Verdict("done", "a"), Verdict("pending", "b"), Verdict("done", "c")])
    assert out.result == "done" and out.seen == "c"
    assert polls == 2 + 4


def test_failed_counts_only_after_the_grace() -> None:
    failed = Verdict("failed", "placed on alpha")
    out, polls = run([failed, failed, Verdict("pending", "moving"), failed], grace=0.9)
    assert out == Outcome("failed", "placed on alpha")
    assert polls == 3 + 6  # it failed again from the fourth poll, for 1 s (>= 0.9)


def test_timeout_says_what_was_seen_last() -> None:
    out, polls = run([Verdict("pending", "web starting on beta")], timeout=1.0)
    assert out == Outcome("timeout", "web starting on beta")
    assert polls == 6


def test_socket_problem_names_the_pid_that_listens(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    assert socket_problem(path, "control socket") is None  # nothing there
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        listener.listen(1)
        problem = socket_problem(path, "control socket")
        assert problem == (f"the control socket {path} is in use by pid {os.getpid()}: is "
                           "another vigil daemon running for this node? Stop it first")
    finally:
        listener.close()
    assert socket_problem(path, "control socket") is None  # a stale file: it is replaced


def test_socket_problem_refuses_a_path_too_long(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 120) / "control.sock"
    problem = socket_problem(path, "control socket")
    assert problem is not None and "longer than the 107 a Unix socket allows" in problem
