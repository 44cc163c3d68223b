"""The one command runner, :func:`vigil.resources.proc.run`, with real processes: what it
kills (the whole group, TERM before KILL when asked), when it returns (when the command exits,
at its timeout, when cancelled) and what it keeps (stdout and stderr apart, their ends).

A process that survives SIGKILL needs a hung filesystem: tests/system/test_proc_stuck.py."""

from __future__ import annotations

import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vigil.resources import proc
from vigil.resources.proc import CommandResult

PY = sys.executable


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    return proc.wait_until(condition, timeout, interval=0.02)


def python(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Process groups a test leaves running on purpose; killed after it."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        if proc.group_members(pgid):
            proc.kill_group(pgid, signal.SIGKILL)


def run_in_thread(argv: list[str], **options: Any) -> tuple[threading.Thread,
                                                            list[CommandResult]]:
    results: list[CommandResult] = []
    thread = threading.Thread(target=lambda: results.append(proc.run(argv, **options)),
                              daemon=True)
    thread.start()
    return thread, results


def test_exit_code_and_streams_are_kept_apart() -> None:
    result = proc.run(["sh", "-c", "echo out; echo err >&2; echo more; exit 3"], timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\nmore\n", "err\n")
    assert not result.timed_out and not result.cancelled and not result.stuck
    assert result.pid is not None and not proc.group_members(result.pid)


def test_merged_streams_keep_the_order_written() -> None:
    result = proc.run(["sh", "-c", "echo a; echo b >&2; echo c"], timeout=30,
                      merge_stderr=True)
    assert result.ok and (result.stdout, result.stderr) == ("a\nb\nc\n", "")


def test_a_killed_command_reports_the_signal_that_was_not_ours() -> None:
    result = proc.run(["sh", "-c", "kill -TERM $$"], timeout=30)
    assert result.returncode == -signal.SIGTERM and not result.timed_out


def test_a_program_that_cannot_start_is_a_result_not_an_exception(tmp_path: Path) -> None:
    result = proc.run([str(tmp_path / "missing")], timeout=30)
    assert result.returncode is None and isinstance(result.start_error, FileNotFoundError)
    assert result.start_problem() == (f"cannot run {tmp_path / 'missing'}: "
                                      "No such file or directory")
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    denied = proc.run([str(script)], timeout=30)
    assert isinstance(denied.start_error, PermissionError) and not denied.ok


def test_large_output_on_both_streams_does_not_deadlock() -> None:
    # 8 MiB on each stream, written alternately: a runner that reads one pipe to its end
    # before the other leaves the command blocked on a full pipe until the timeout.
    result = proc.run(python("""
        import sys
        block = b"x" * 65535 + b"\\n"
        for _ in range(128):
            sys.stdout.buffer.write(block)
            sys.stdout.flush()
            sys.stderr.buffer.write(block)
            sys.stderr.flush()
        sys.stdout.write("end of stdout\\n")
        sys.stderr.write("end of stderr\\n")
    """), timeout=120, stdout_limit=100_000, stderr_limit=10_000)
    assert result.ok and not result.timed_out
    assert result.stdout_truncated and len(result.stdout) == 100_000
    assert result.stderr_truncated and len(result.stderr) == 10_000
    assert result.stdout.endswith("x\nend of stdout\n")
    assert result.stderr.endswith("x\nend of stderr\n")


def test_input_reaches_the_command_on_stdin_then_end_of_file() -> None:
    data = b"action=off\nplug=3\n" + b"x" * (1024 * 1024)  # past any pipe buffer
    result = proc.run(python("import sys; d = sys.stdin.buffer.read(); print(len(d), d[:19])"),
                      timeout=30, input=data)
    assert result.ok, result.stderr
    assert result.stdout.strip() == f"{len(data)} {data[:19]!r}"


def test_input_a_command_never_reads_does_not_hold_the_run_past_its_end() -> None:
    data = b"x" * (1024 * 1024)
    exited = proc.run(["true"], timeout=30, input=data)
    assert exited.ok and not exited.timed_out
    sleeper = proc.run(["sleep", "60"], timeout=0.5, input=data)
    assert sleeper.timed_out  # the write did not block the wait for the timeout


def test_without_input_stdin_is_empty() -> None:
    assert proc.run(["cat"], timeout=30).stdout == ""


def test_timeout_kills_the_whole_group_grandchildren_too(tmp_path: Path) -> None:
    grandchild_file = tmp_path / "grandchild"
    result = proc.run(["sh", "-c", f"sleep 60 & echo $! > {grandchild_file}; echo started; "
                       "sleep 60"], timeout=1.0)
    assert result.timed_out and result.returncode is None and not result.cancelled
    assert result.stdout == "started\n"  # what it wrote before the kill is kept
    grandchild = int(grandchild_file.read_text())
    assert not proc.pid_alive(grandchild)
    assert result.pid is not None and not proc.group_members(result.pid)
    assert not result.stuck


def test_the_run_ends_when_the_command_exits_even_if_its_child_keeps_the_pipes(
        tmp_path: Path, leftovers: list[int]) -> None:
    # Pacemaker's rule for agents: a daemon left in the background is not waited for, and
    # not signalled either.
    daemon_file = tmp_path / "daemon"
    result = proc.run(["sh", "-c", f"sleep 60 & echo $! > {daemon_file}; echo done"],
                      timeout=60)
    assert result.pid is not None
    leftovers.append(result.pid)
    assert result.ok and result.stdout == "done\n" and not result.timed_out
    assert proc.pid_alive(int(daemon_file.read_text()))
    assert result.duration < 30, "waited for the background child"


def test_the_run_ends_when_the_command_exits_after_closing_its_output() -> None:
    result = proc.run(["sh", "-c", "exec >&- 2>&-; sleep 0.3; exit 4"], timeout=60)
    assert result.returncode == 4 and not result.timed_out
    assert result.duration < 30, "noticed the exit only at the timeout"


def test_cancel_interrupts_a_running_command_and_kills_its_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    cancel = threading.Event()
    thread, results = run_in_thread(
        ["sh", "-c", f"sleep 60 & echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; "
         "sleep 60"], timeout=60, cancel=cancel)
    assert wait_for(pid_file.exists)
    grandchild = int(pid_file.read_text())
    cancel.set()
    thread.join(timeout=20)
    assert not thread.is_alive(), "cancel did not interrupt the run"
    (result,) = results
    assert result.cancelled and not result.timed_out and result.returncode is None
    assert not proc.pid_alive(grandchild)
    assert result.pid is not None and not proc.group_members(result.pid)


def test_a_cancel_set_before_the_run_starts_nothing(tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    marker = tmp_path / "ran"
    result = proc.run(["touch", str(marker)], timeout=30, cancel=cancel)
    assert result.cancelled and result.pid is None and not marker.exists()


STUBBORN = """
    import signal, sys, time
    def on_term(signum, frame):
        print("got TERM", flush=True)
    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
        print("still here", flush=True)
"""


def test_a_command_that_ignores_term_gets_kill_after_the_grace() -> None:
    result = proc.run(python(STUBBORN), timeout=1.0, term_grace=1.0)
    assert result.timed_out and result.returncode is None
    lines = result.stdout.splitlines()
    assert "got TERM" in lines, "no SIGTERM before the SIGKILL"
    # It lived on after the TERM (the grace), and the KILL ended it.
    assert "still here" in lines[lines.index("got TERM") + 1:]
    assert result.pid is not None and not proc.group_members(result.pid)


def test_without_a_grace_the_group_gets_kill_at_once() -> None:
    result = proc.run(python(STUBBORN), timeout=1.0)
    assert result.timed_out and "ready" in result.stdout
    assert "got TERM" not in result.stdout  # OCF: SIGKILL to the group, no TERM first


def test_a_command_that_stops_on_term_cleans_up_within_the_grace(tmp_path: Path) -> None:
    cancel = threading.Event()
    started = tmp_path / "started"
    thread, results = run_in_thread(python(f"""
        import signal, sys, time
        def on_term(signum, frame):
            sys.stderr.write("cleaned up\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        open({str(started)!r}, "w").close()
        time.sleep(60)
    """), timeout=60, cancel=cancel, term_grace=30.0)
    assert wait_for(started.exists)
    cancel.set()
    thread.join(timeout=20)
    assert not thread.is_alive(), "the run waited out the grace of a command that had ended"
    (result,) = results
    assert result.cancelled and result.stderr == "cleaned up\n"


def test_the_group_is_waited_for_after_the_kill(tmp_path: Path) -> None:
    # The leader dies at once; a member of its group that traps TERM takes the grace, and the
    # run returns only when it is gone too.
    member_file = tmp_path / "member"
    result = proc.run(["sh", "-c", f"{PY} -c '{_TRAP_TERM}' & echo $! > {member_file}; "
                       "sleep 60"], timeout=1.0, term_grace=0.5)
    assert result.timed_out and not result.stuck
    member = int(member_file.read_text())
    assert not proc.pid_alive(member)
    assert result.pid is not None and not proc.group_members(result.pid)


_TRAP_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"

