"""System: real `vigil node run` daemons as systemd sees them: the notifications on a fake
``$NOTIFY_SOCKET`` (a unix datagram socket the test binds, as systemd does), and log lines
with syslog priorities when stderr is journald's stream (``$JOURNAL_STREAM``)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster_harness import wait_for
from tests.support.daemons import Daemons, daemons_in, settled
from tests.support.systemd import FakeSystemd, journal_entry


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path)


def test_systemd_hears_ready_once_the_cluster_formed_status_lines_and_the_watchdog(
        daemons: Daemons) -> None:
    # one socket in the file system, one in the abstract namespace, as systemd may give either
    alpha = FakeSystemd(str(daemons.tmp / "notify-alpha"))
    beta = FakeSystemd(f"@vigil-test-notify-{os.getpid()}-beta")
    try:
        watchdog = {"WATCHDOG_USEC": "2000000"}
        daemons.start("alpha", {"NOTIFY_SOCKET": alpha.address, **watchdog,
                                "WATCHDOG_PID": "1"})  # meant for another process: no petting
        wait_for(lambda: any(v.startswith("waiting for peers")
                             for _, v in alpha.values("STATUS")), 30, "alpha waiting for peers")
        # alone (1 of 3 votes), alpha is not ready: units after it wait for the cluster
        assert alpha.first("READY") is None
        waiting = [v for _, v in alpha.values("STATUS") if v.startswith("waiting")][-1]
        assert waiting == ("waiting for peers: 1/3 nodes online, quorum 1 of 3 votes, "
                           "need 2"), waiting
        daemons.start("beta", {"NOTIFY_SOCKET": beta.address, **watchdog})
        settled_epoch = settled(daemons, holder="alpha")

        for fake in (alpha, beta):
            wait_for(functools.partial(fake.first, "READY"), 10, "READY=1")
            ready = fake.first("READY")
            assert ready is not None
            # READY=1 comes with or after the first quorate status line, never before
            quorate = [t for t, v in fake.values("STATUS") if v.startswith("quorate")]
            assert quorate and quorate[0] <= ready
            assert len(fake.values("READY")) == 1
        # the status line names the epoch and where the group runs
        wait_for(lambda: alpha.values("STATUS")[-1][1] ==
                 f"quorate, 2/3 nodes, epoch {settled_epoch}; here: web", 10,
                 "alpha's status line with web")
        wait_for(lambda: beta.values("STATUS")[-1][1].endswith("; here: nothing"), 10,
                 "beta's status line")

        # the watchdog: petted at least every second (half of WATCHDOG_USEC) by beta, never
        # by alpha (WATCHDOG_PID names another process)
        start = time.monotonic()
        wait_for(lambda: time.monotonic() - start > 3.0, 5, "three seconds")
        pets = [t for t, _ in beta.values("WATCHDOG") if t >= start - 1.0]
        assert len(pets) >= 3, pets
        gaps = [b - a for a, b in itertools.pairwise(pets)]
        assert max(gaps) < 2.0, gaps
        assert alpha.values("WATCHDOG") == []

        daemons.procs["beta"].send_signal(signal.SIGTERM)
        assert daemons.procs["beta"].wait(30) == 0
        assert beta.values("STOPPING") and beta.values("STATUS")[-1][1] == \
            "leaving: stopping groups"
        wait_for(lambda: alpha.values("STATUS")[-1][1].startswith("waiting for peers"), 20,
                 "alpha waiting again once beta left")
    finally:
        alpha.close()
        beta.close()


def test_without_notify_socket_nothing_changes(daemons: Daemons) -> None:
    """A daemon started by hand: no variable, no notification, the log as before."""
    daemons.start("alpha")
    daemons.start("beta")
    settled(daemons, holder="alpha")
    log = daemons.log("alpha")
    assert "systemd" not in log
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    \[alpha\] vigil\.daemon: ",
                     log, re.MULTILINE), log[:2000]


def test_journald_sees_priorities_and_fields(daemons: Daemons) -> None:
    """alpha's stderr is journald's stream without the native socket: ``<N>`` prefixes;
    beta's has the native socket (a fake one): entries with PRIORITY, NODE, GROUP, EPOCH,
    KIND. ``journalctl -p err`` would see alpha's failed resource, ``-p warning`` beta
    losing its quorum."""
    from tests.system.test_daemons import app_pid

    def stream_of(node: str) -> dict[str, str]:
        log = daemons.tmp / f"{node}.log"
        log.touch()
        st = log.stat()
        return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}

    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(daemons.tmp / "journal"))
    journal.settimeout(0.1)
    entries: list[dict[str, str]] = []

    def receive() -> list[dict[str, str]]:
        try:
            while True:
                entries.append(journal_entry(journal.recv(65536)))
        except TimeoutError:
            return entries

    try:
        daemons.start("alpha", {**stream_of("alpha"),
                                "VIGIL_JOURNAL_SOCKET": str(daemons.tmp / "none")})
        daemons.start("beta", {**stream_of("beta"),
                               "VIGIL_JOURNAL_SOCKET": str(daemons.tmp / "journal")})
        settled(daemons, holder="alpha")
        app = wait_for(lambda: app_pid(daemons, "alpha"), 10, "web-app on alpha")
        os.kill(app, signal.SIGKILL)
        wait_for(lambda: "web-app FAILED" in daemons.log("alpha"), 20, "the failure logged")
        lines = daemons.log("alpha").splitlines()
        assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines[:5]
        assert any(re.match(r"<3>ERROR \[alpha\] vigil\.events: resource_state_changed: "
                            r"web-app FAILED on alpha", line) for line in lines), lines
        assert any(line.startswith("<6>INFO [alpha] vigil.daemon: node alpha of cluster sys "
                                   "running") for line in lines)

        def transition() -> dict[str, str] | None:
            return next((e for e in receive() if e.get("KIND") == "transition_completed"),
                        None)

        done = wait_for(transition, 20, "beta's transition_completed entry")
        assert done["PRIORITY"] == "6" and done["NODE"] == "beta" and done["EPOCH"]
        assert done["SYSLOG_IDENTIFIER"] == "vigil" and done["LOGGER"] == "vigil.events"
        assert done["MESSAGE"].startswith("INFO [beta] vigil.events: transition_completed: ")

        receive()
        entries.clear()
        daemons.procs["alpha"].send_signal(signal.SIGKILL)
        daemons.procs["alpha"].wait(10)
        lost = wait_for(lambda: next((e for e in receive() if e.get("KIND") == "quorum_lost"),
                                     None), 20, "beta's quorum_lost entry")
        assert lost["PRIORITY"] == "4" and lost["NODE"] == "beta", lost
        # the native entries replace the stream: nothing of beta's log went to its stderr
        assert "vigil.events" not in daemons.log("beta")
    finally:
        journal.close()


class Frozen:
    """Every thread of ``pid`` but ``keep`` stopped with ptrace (PTRACE_SEIZE and
    PTRACE_INTERRUPT: a thread of its own, where SIGSTOP stops the whole process), until
    :meth:`thaw`. Must be thawed from the thread that froze."""

    SEIZE, INTERRUPT, DETACH = 0x4206, 0x4207, 17

    def __init__(self, pid: int, keep: int) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                                     ctypes.c_void_p]
        self.tids: list[int] = []
        for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
            if tid == keep:
                continue
            if self.libc.ptrace(self.SEIZE, tid, None, None) != 0:
                err = ctypes.get_errno()
                self.thaw()
                raise OSError(err, f"ptrace(PTRACE_SEIZE, {tid}): {os.strerror(err)}")
            self.tids.append(tid)
            self.libc.ptrace(self.INTERRUPT, tid, None, None)
            os.waitpid(tid, 0x40000000)  # __WALL: a thread, not a child process

    def thaw(self) -> None:
        for tid in self.tids:
            self.libc.ptrace(self.DETACH, tid, None, None)
        self.tids = []


def test_the_watchdog_stops_while_the_daemons_actors_are_frozen(tmp_path: Path) -> None:
    """A real daemon whose threads are all stopped but the one that talks to systemd: it
    finds its coordinator silent, says so and stops petting; thawed, it pets again."""
    gen = daemons_in(tmp_path, nodes=("alpha",))
    d = next(gen)
    fake = FakeSystemd(str(d.tmp / "notify"))
    frozen: Frozen | None = None
    try:
        d.start("alpha", {"NOTIFY_SOCKET": fake.address, "WATCHDOG_USEC": "2000000"})
        wait_for(functools.partial(fake.first, "READY"), 30, "READY=1")
        match = re.search(r"notifying systemd at \S+ from thread (\d+)", d.log("alpha"))
        assert match, d.log("alpha")[-2000:]
        pid, keep = d.procs["alpha"].pid, int(match.group(1))
        for _attempt in range(3):
            warned = d.log("alpha").count("did not answer")
            try:
                frozen = Frozen(pid, keep)
            except OSError as exc:
                pytest.skip(f"cannot stop the daemon's threads with ptrace: {exc}")
            since = time.monotonic()
            try:
                # the thread left running decides: the coordinator did not answer
                wait_for(lambda w=warned: d.log("alpha").count("did not answer") > w,
                         5, "the warning")
                break
            except AssertionError:
                # a stopped thread held the interpreter's lock: nothing ran; try again
                frozen.thaw()
                frozen = None
                time.sleep(0.5)
        assert frozen is not None, "the daemon's reporter never ran while the others stood"
        start = time.monotonic()
        wait_for(lambda: time.monotonic() - start > 2.5, 5, "more than the watchdog time")
        # not one pet since the coordinator stopped answering (at most one right after the
        # freeze, from an answer already on its way): systemd would have restarted it
        late = [t for t, _ in fake.values("WATCHDOG") if t > since + 0.6]
        assert late == [], late
        frozen.thaw()
        frozen = None
        thawed = time.monotonic()
        wait_for(lambda: any(t > thawed for t, _ in fake.values("WATCHDOG")), 10,
                 "the petting to resume")
        wait_for(lambda: d.log("alpha").count("answers again") > warned, 10,
                 "the log saying so")
    finally:
        if frozen is not None:
            frozen.thaw()
        fake.close()
        with contextlib.suppress(StopIteration):
            next(gen)


@pytest.mark.skipif(os.geteuid() != 0, reason="the guardian needs root (cgroups)")
def test_the_guardian_is_ready_once_it_listens(tmp_path: Path) -> None:
    """vigil-guard.service is Type=notify: READY=1 once its socket listens (vigil.service is
    ordered after it), STOPPING=1 on SIGTERM."""
    from tests.system.test_guard import Guard

    fake = FakeSystemd(str(tmp_path / "notify"))
    guard = None
    try:
        guard = Guard(tmp_path, wrapper=("env", f"NOTIFY_SOCKET={fake.address}"))
        wait_for(functools.partial(fake.first, "READY"), 20, "the guardian's READY=1")
        ready = fake.first("READY")
        assert ready is not None and guard.socket.exists()
        assert fake.values("STATUS")[0][1] == f"listening at {guard.socket}"
        assert guard.terminate() == 0
        assert fake.values("STOPPING")
    finally:
        if guard is not None:
            guard.cleanup()
        fake.close()
