"""A local user without privileges floods a node's control and event sockets; the node does
not notice beyond a few log lines.

Three real ``vigil node run`` daemons on 127.0.0.1 (tests/system/test_daemons.py), Vigil's
default timings, ``admin_group`` and ``status_group`` set to groups the test creates (so the
control socket is 0666, as in the field). ``web`` runs on alpha. The attacks of the issue run
as ``nobody`` (uid 65534) through ``setpriv`` with the system's Python
(tests/support/local_flood.py), against alpha. After each one:

* alpha kept its quorum lease: no "lost the quorum lease" in its log, no transition started
  on any node since the attack began, the epoch unchanged, web still running on alpha;
* alpha's peak resident memory during the flood (VmHWM in /proc, reset before it) is less
  than :data:`MEMORY_BOUND` above what it was before;
* ``vigil status`` answered root all along, and a status_group member (uid 65533) too.

No test asserts how fast anything went: conditions are awaited with bounded polling.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_harness import wait_for
from tests.support.local_users import (
    CLIENT_ENV,
    NOBODY,
    SYSTEM_PYTHON,
    Groups,
    missing,
    peak_memory,
    reset_peak_memory,
    setpriv,
    unix_groups,
)
from tests.system.test_daemons import NODES, Daemons
from vigil.local.limits import (
    CONTROL_CONNECTIONS_PER_UID,
    EVENT_CONNECTIONS_PER_UID,
    LOG_BURST,
    MAX_JSON_DEPTH,
    MAX_REQUEST,
    MAX_SUBSCRIBER_FRAME,
    MAX_SUBSCRIPTIONS,
    REQUEST_TIMEOUT,
)

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

#: How much alpha's peak resident memory may grow under any one flood (its limits allow 4 MiB
#: of requests being read and 64 MiB of events waiting; these floods reach a fraction).
MEMORY_BOUND = 32 * 1024 * 1024
MEMBER = 65533  # a uid without a name, in status_group: a legitimate reader
FLOOD = Path(__file__).resolve().parents[1] / "support" / "local_flood.py"
STATUS = json.dumps({"command": "status", "args": {}})


@dataclass
class Node:
    daemons: Daemons
    groups: Groups

    @property
    def control(self) -> Path:
        return self.daemons.tmp / "run" / "alpha" / "control.sock"

    @property
    def events(self) -> Path:
        return self.daemons.tmp / "run" / "alpha" / "events.sock"

    @property
    def pid(self) -> int:
        return self.daemons.procs["alpha"].pid

    def flood(self, *args: str, uid: int = NOBODY, groups: tuple[int, ...] = ()
              ) -> subprocess.Popen[str]:
        argv = [*setpriv(uid, NOBODY, groups), SYSTEM_PYTHON, "-I", "-c", FLOOD.read_text(),
                *args]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd="/", env=CLIENT_ENV)

    def member_status(self) -> dict[str, Any]:
        out = self.flood("requests", str(self.control), "1", STATUS, uid=MEMBER,
                         groups=(self.groups.status_gid,))
        stdout, stderr = out.communicate(timeout=60)
        assert out.returncode == 0, stderr
        result: dict[str, Any] = json.loads(stdout)
        return result

    def logs(self) -> dict[str, int]:
        return {n: len(self.daemons.log(n)) for n in NODES}


def result(proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr
    answer: dict[str, Any] = json.loads(stdout.splitlines()[-1])
    return answer


def all_members(d: Daemons) -> bool:
    statuses = [d.status(n) for n in NODES]
    return (all(st is not None and st["closed"] and sorted(st["members"]) == sorted(NODES)
                for st in statuses)
            and len({st["epoch"] for st in statuses if st is not None}) == 1)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("floods")
    base = Path(f"/tmp/vigil-fl-{os.getpid()}-{tmp.name}"[:60])  # socket paths: 107 bytes
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o711)
    with unix_groups() as groups:
        d = Daemons(base)
        text = d.config.read_text()
        # Vigil's own timings, not the short ones of test_daemons
        timing = text[text.index("[timing]"):text.index("[nodes.")]
        text = text.replace(timing, "").replace('name = "sys"', "\n".join([
            'name = "sys"', f'admin_group = "{groups.admin}"',
            f'status_group = "{groups.status}"']))
        d.config.write_text(text)
        try:
            for n in NODES:
                d.start(n)
            try:
                wait_for(lambda: d.group_on("gamma") == "alpha", 60, "web running on alpha")
                # every node a member of the same closed epoch: a node that joins later
                # would make the transition a test must not see during its flood
                wait_for(lambda: all_members(d), 60, "every node in the same closed epoch")
            except AssertionError:
                print({n: d.log(n)[-3000:] for n in NODES})
                raise
            yield Node(d, groups)
        finally:
            d.stop()
            import shutil

            shutil.rmtree(base, ignore_errors=True)


@dataclass
class Watch:
    """What a test checks around one flood."""

    node: Node
    epoch: str
    logs: dict[str, int]
    before: int
    answered: int = 0

    @classmethod
    def start(cls, node: Node) -> Watch:
        st = node.daemons.status("alpha")
        assert st is not None and st["lease_valid"], st
        return cls(node, st["epoch"], node.logs(), reset_peak_memory(node.pid))

    def status_answers(self, running: Callable[[], bool]) -> None:
        """Ask ``vigil status`` as root, and as a member of status_group, while
        ``running()``: every one must answer."""
        while running():
            st = self.node.daemons.status("alpha")
            assert st is not None, "vigil status failed during the flood"
            assert self.node.member_status()["outcomes"] == {"ok": 1}
            self.answered += 1
            time.sleep(0.5)

    def since(self, node_name: str) -> str:
        return self.node.daemons.log(node_name)[self.logs[node_name]:]

    def kept_the_lease(self) -> int:
        """Asserts the node noticed nothing; returns how much its peak memory grew."""
        alpha = self.since("alpha")
        assert "lost the quorum lease" not in alpha
        assert "Traceback" not in alpha
        for n in NODES:
            assert "transition_started" not in self.since(n), n
        st = self.node.daemons.status("alpha")
        assert st is not None and st["lease_valid"] and st["epoch"] == self.epoch, st
        assert self.node.daemons.group_on("beta") == "alpha"
        peak = peak_memory(self.node.pid)
        grew = peak - self.before
        assert grew < MEMORY_BOUND, f"alpha's peak memory grew by {grew} bytes"
        print(f"\nalpha's resident memory: {self.before / 1048576:.1f} MiB before, peak "
              f"{peak / 1048576:.1f} MiB during the flood (+{grew / 1048576:.1f} MiB); "
              f"{self.answered} status rounds answered")
        return grew


def suppressed(log: str, pattern: str) -> tuple[int, int]:
    """(lines matching ``pattern``, refusals they stand for: themselves and the counts of
    their "(N more suppressed)")."""
    lines = [line for line in log.splitlines() if re.search(pattern, line)]
    more = sum(int(m.group(1)) for line in lines
               if (m := re.search(r"\((\d+) more suppressed\)", line)))
    return len(lines), len(lines) + more


@pytest.mark.long
def test_trickling_connections_are_cut_off_and_the_excess_refused(node: Node) -> None:
    watch = Watch.start(node)
    # 3,000 connections, a byte each every 5 s, reconnecting those the daemon closes
    flood = node.flood("trickle", str(node.control), "3000", "22", "5")
    watch.status_answers(lambda: flood.poll() is None)
    got = result(flood)
    print(f"\ntrickle: {got}")
    assert got["attempts"] >= 3000
    # the daemon took a few (its cap for one user), refused the rest at once, with a reason
    # (or the kernel did, while its queue of connections not yet accepted was full)
    assert got["outcomes"].get("too many connections:", 0) > 0, got
    # ... and cut off those it took when their request was not in after REQUEST_TIMEOUT
    # (the old server waited 10 s per read: a byte every 5 s kept a connection for ever)
    assert got["cut"] >= CONTROL_CONNECTIONS_PER_UID, got
    assert got["longest_cut_life"] < REQUEST_TIMEOUT + 2 * 5 + 5, got
    assert got["oldest_open"] < REQUEST_TIMEOUT + 2 * 5 + 5, got
    assert watch.answered >= 1
    watch.kept_the_lease()


@pytest.mark.long
def test_ten_thousand_refused_requests_write_a_few_lines(node: Node) -> None:
    watch = Watch.start(node)
    floods = [node.flood("requests", str(node.control), "2500", STATUS) for _ in range(4)]
    watch.status_answers(lambda: any(f.poll() is None for f in floods))
    total: dict[str, int] = {}
    for f in floods:
        for gist, count in result(f)["outcomes"].items():
            total[gist] = total.get(gist, 0) + count
    assert sum(total.values()) == 10_000
    assert set(total) <= {"permission denied: user", "too many connections:"}, total
    # every refusal is in the log, as a line or in a count, once the last interval is over
    pids = "|".join(str(f.pid) for f in floods)  # setpriv execs the client: the same pid
    pattern = (rf"refused (control request 'status'|a connection) from user nobody "
               rf"\(uid {NOBODY}, pid ({pids})\)")
    lines, _ = wait_for(
        lambda: (c := suppressed(watch.since("alpha"), pattern))[1] == 10_000 and c, 40,
        "the log to account for every refusal")
    assert lines <= 100, f"{lines} log lines for 10,000 refusals"
    print(f"\n10,000 refusals: {lines} log lines")
    watch.kept_the_lease()


def test_huge_and_deep_requests_get_a_clear_answer(node: Node) -> None:
    watch = Watch.start(node)
    member = (MEMBER,)
    groups = (node.groups.status_gid,)
    huge = node.flood("raw", str(node.control), str(256 * 1024 * 1024), "x", uid=MEMBER,
                      groups=groups)
    watch.status_answers(lambda: huge.poll() is None)
    got = result(huge)
    assert got["answer"] == {"ok": False, "error": (
        f"malformed request: the request is longer than {MAX_REQUEST} bytes (one JSON object "
        "on one line)")}
    assert got["sent"] < 256 * 1024 * 1024  # the daemon did not read it all
    # exactly as long as allowed, no newline: parsed as far as its depth
    deep = result(node.flood("raw", str(node.control), str(MAX_REQUEST), "[", uid=member[0],
                             groups=groups))
    assert deep["answer"] == {"ok": False, "error": (
        f"malformed request: the request nests arrays or objects {MAX_REQUEST} deep, at most "
        f"{MAX_JSON_DEPTH}")}
    # who may not even read learns nothing more than that
    stranger = result(node.flood("raw", str(node.control), str(MAX_REQUEST), "["))
    assert stranger["answer"]["error"].startswith("permission denied: user nobody")
    assert "RecursionError" not in watch.since("alpha")
    watch.kept_the_lease()


def test_the_event_socket_bounds_frames_subscriptions_connections_and_idle_readers(
        node: Node) -> None:
    watch = Watch.start(node)
    reader = (NOBODY, (node.groups.status_gid,))
    path = str(node.events)
    idle = node.flood("ev-idle", path, "10", uid=reader[0], groups=reader[1])
    assert idle.stdout is not None
    assert json.loads(idle.stdout.readline()) == {"subscribed": True}
    frame = node.flood("ev-frame", path, str(8 << 30), uid=reader[0], groups=reader[1])
    subs = node.flood("ev-subscribe", path, "2000000", uid=reader[0], groups=reader[1])
    watch.status_answers(lambda: frame.poll() is None or subs.poll() is None)
    assert result(frame)["closed"]
    got = result(subs)
    assert got["closed"] and got["sent"] < 2_000_000
    conns = result(node.flood("ev-connect", path, "100", uid=reader[0], groups=reader[1]))
    # the idle reader holds one of this user's connections
    assert conns["greeted"] <= EVENT_CONNECTIONS_PER_UID - 1, conns
    assert conns["refused"] >= 100 - EVENT_CONNECTIONS_PER_UID, conns
    log = watch.since("alpha")
    assert f"a frame of {8 << 30} bytes; a subscriber's frames may have at most " \
        f"{MAX_SUBSCRIBER_FRAME}" in log
    assert f"more than {MAX_SUBSCRIPTIONS} subscriptions" in log
    assert suppressed(log, r"event socket: refused a connection from user nobody")[0] <= \
        LOG_BURST * 4
    # root still gets in
    assert result(node.flood("ev-connect", path, "1", uid=0))["greeted"] == 1
    result(idle)
    watch.kept_the_lease()
