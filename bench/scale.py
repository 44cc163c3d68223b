"""Many real daemons on one machine: how fast they form, what they cost idle, whether they
stay calm, how fast the master's groups move when it is killed.

``--nodes`` real ``vigil node run`` processes (and the guardian each starts) on 127.0.0.1,
one link each on its own port (``tests.support.daemons.Daemons``), at Vigil's default timings
unless ``--heartbeat`` or ``--set`` says otherwise. ``--resources`` dummy resources in groups
of four (the last may be smaller); group *i* prefers node *i mod N* (cost 0), then the next
node (10), so every node holds some and a lost node's groups go to its successor.

Measured, in this order:

1. **formation**: from the start of the first daemon (all are started one right after the
   other) until every daemon's status says every node online, one epoch, no transition under
   way and every group running. Statuses are read from the control sockets directly (no CLI
   process per read), node after node, a round stopping at the first node not there yet.
   Bounded by ``--form-timeout``, and over at once when a daemon exits (a guardian that does
   not answer in time, say): then "did not form", with what each node said (the number of its
   epoch counts the epochs declared, as far as that node knows).
2. **idle cost**: after ``--settle`` seconds, over ``--idle`` seconds (or ``--calm`` minutes),
   each daemon's CPU (``utime + stime`` of ``/proc/PID/stat``: all its threads) and peak RSS
   (``VmRSS``, read every few seconds), the guardians' separately. No status is read inside
   the window: a read costs the daemon CPU.
3. **spurious transitions**: the epochs declared during that window (each node's epoch at
   its start and end).
4. **failover**: SIGKILL of the master's daemon (its guardian lives on, as in production);
   the time until the survivors agree on a newer epoch, no transition under way, and every
   group that ran on the killed node runs on a survivor.

``--profile NODE`` samples that node's daemon with py-spy (``pip install -e '.[bench]'``) for
the first ``--profile-seconds`` of the idle window and prints the functions with the most own
time and the most total time (py-spy's raw collapsed stacks, aggregated per function). Only
samples of a thread holding the GIL count (``py-spy --gil``: Python code running; py-spy's
own idle detection lets threads blocked in ``Condition.wait`` through), or with
``--profile-idle`` every sample of every thread. For every run the messages each daemon
accepted from its peers in the window (the codec's ``accepted`` counter of the status:
heartbeats, when nothing else happens) give the daemons' CPU per received message.

Not part of ``make test``; ``make bench-scale`` runs the sizes of the goals and writes them
into docs/benchmarks.md. From the repository root (as root, for the guardians' priorities)::

    .venv/bin/python -m bench.scale --nodes 3 --resources 50
    .venv/bin/python -m bench.scale --nodes 16 --resources 64 --profile n01
    .venv/bin/python -m bench.scale --nodes 32 --resources 128 --calm 10 --write
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `tests.support` lives in the repository, not the package
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Iterable, Sequence  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from types import FrameType  # noqa: E402
from typing import Any  # noqa: E402

from bench.failover_bench import write_doc  # noqa: E402
from bench.transition_bench import environment  # noqa: E402
from tests.support.daemons import Daemons  # noqa: E402
from vigil.config import load  # noqa: E402
from vigil.guard.cgroups import find_cgroup2_mount, remove_cgroup  # noqa: E402
from vigil.local.protocol import request  # noqa: E402

GROUP_SIZE = 4
#: seconds one status request may take (a daemon that does not answer counts as not there)
STATUS_TIMEOUT = 5.0
POLL = 0.25  # seconds between rounds of status reads
#: py-spy's samples a second; each pauses the daemon (its reads of a running process are not
#: consistent enough to tell which thread holds the GIL), which costs that daemon CPU
RATE = 200
RSS_EVERY = 5.0  # seconds between reads of the RSS in the idle window
STOP_GRACE = 20.0  # after SIGTERM, before SIGKILL
CLK_TCK = os.sysconf("SC_CLK_TCK")
HEADING = "## Scale: many real daemons on one machine"
#: issue #16's goals
CPU_GOAL = {3: 0.2, 32: 1.0}  # nodes -> % of a core per idle daemon (50 resources)
RSS_GOAL = 60.0  # MB per daemon
FORM_GOAL = 15.0  # seconds, 32 daemons
CALM_GOAL = 10.0  # minutes without a spurious transition, 32 daemons


def node_names(n: int) -> tuple[str, ...]:
    width = max(2, len(str(n)))
    return tuple(f"n{i:0{width}d}" for i in range(1, n + 1))


def groups_toml(nodes: Sequence[str], resources: int) -> list[str]:
    lines: list[str] = []
    for g, first in enumerate(range(0, resources, GROUP_SIZE)):
        names = [f"r{i:03d}" for i in range(first, min(first + GROUP_SIZE, resources))]
        home, nxt = nodes[g % len(nodes)], nodes[(g + 1) % len(nodes)]
        prefer = f"{home} = 0" + (f", {nxt} = 10" if nxt != home else "")
        lines += [f"[groups.g{g:03d}]", f"resources = {names!r}".replace("'", '"'),
                  f"prefer = {{ {prefer} }}", ""]
        for name in names:
            lines += [f"[resources.{name}]", 'type = "dummy"', ""]
    return lines


# ---- reading the daemons -------------------------------------------------------------------


def status(d: Daemons, node: str) -> dict[str, Any] | None:
    """``node``'s status tree (the JSON of `vigil status --json`), or None when its daemon
    does not answer within STATUS_TIMEOUT."""
    try:
        answer = request(d.tmp / "run" / node / "control.sock", "status",
                         timeout=STATUS_TIMEOUT)
    except (OSError, ValueError):
        return None
    st = answer.get("status")
    return st if answer.get("ok") and isinstance(st, dict) else None


def statuses(d: Daemons, nodes: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """Every one of ``nodes``' statuses, read at once: within STATUS_TIMEOUT even when the
    daemons are too busy to answer."""
    if not nodes:
        return {}
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        return dict(zip(nodes, pool.map(lambda n: status(d, n), nodes), strict=True))


def busy(st: dict[str, Any]) -> bool:
    t = st.get("transition")
    return t is not None and t.get("phase") != "done"


def epoch_number(epoch: str) -> int:
    number, _, _ = epoch.partition(".")
    return int(number) if number.isdigit() else 0


def checked_round(d: Daemons, order: list[str],
                  ok: Any) -> tuple[bool, dict[str, dict[str, Any] | None]]:
    """Read ``order``'s statuses one after the other until one is not ``ok(status, epoch of
    the first)``; moves that node to the front of ``order`` for the next round."""
    seen: dict[str, dict[str, Any] | None] = {}
    epoch: str | None = None
    for node in list(order):
        st = seen[node] = status(d, node)
        if st is not None and epoch is None:
            epoch = st["epoch"]
        if st is None or not ok(st, epoch):
            order.remove(node)
            order.insert(0, node)
            return False, seen
    return True, seen


def formed_here(nodes: Sequence[str]) -> Any:
    def ok(st: dict[str, Any], epoch: str | None) -> bool:
        return (st["epoch"] == epoch and st["epoch"] != "0" and not busy(st)
                and all(st["nodes"].get(n, {}).get("state") == "online" for n in nodes)
                and all(g["state"] == "running" for g in st["groups"].values()))
    return ok


@dataclass
class Usage:
    """CPU ticks and peak RSS of one process over the window."""

    pid: int
    ticks0: int
    ticks1: int = 0
    rss_kb: int = 0

    def cpu_percent(self, seconds: float) -> float:
        return 100.0 * (self.ticks1 - self.ticks0) / CLK_TCK / seconds

    def cpu_seconds(self) -> float:
        return (self.ticks1 - self.ticks0) / CLK_TCK


def ticks(pid: int) -> int:
    """utime + stime of ``pid`` (all its threads), in clock ticks; 0 when it is gone (a
    zombie still has them)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def our_processes(d: Daemons) -> dict[int, list[str]]:
    """Every process whose command line names this cluster's file (its daemons and their
    guardians: the file's path is this run's own), pid -> argv."""
    found: dict[int, list[str]] = {}
    config = str(d.config)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if config in argv:
            found[int(entry)] = argv
    return found


def guardians(d: Daemons) -> dict[str, int]:
    """node -> pid of its guardian (`vigil guard -c FILE -n NODE`)."""
    found = {}
    for pid, argv in our_processes(d).items():
        if "guard" in argv and "-n" in argv[:-1]:
            found[argv[argv.index("-n") + 1]] = pid
    return found


# ---- the run -------------------------------------------------------------------------------


@dataclass
class Result:
    nodes: int
    resources: int
    groups: int
    heartbeat: float
    dead_time: float
    form_timeout: float
    formed: float | None = None  # seconds
    #: seconds until every daemon had its control socket (it runs: its guardian answered,
    #: its actors started); the rest of ``formed`` is the cluster's own formation
    listening: float | None = None
    check_round: float = 0.0  # seconds the confirming round of reads took
    epoch: str = ""
    not_formed: dict[str, str] = field(default_factory=dict)  # node -> its epoch / state
    died: dict[str, str] = field(default_factory=dict)  # daemons that ended in the window
    gave_up: float = 0.0  # seconds after the start, when it did not form
    window: float = 0.0
    daemons: dict[str, Usage] = field(default_factory=dict)
    guards: dict[str, Usage] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)  # node -> messages in the window
    epochs_before: dict[str, str] = field(default_factory=dict)
    epochs_after: dict[str, str] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)
    master: str = ""
    moved: int = 0  # groups the killed master held
    failover: float | None = None  # the first survivor (the new master) saw it
    failover_all: float | None = None  # every survivor saw it
    failover_epoch: str = ""
    failover_error: str = ""
    profile: list[str] = field(default_factory=list)  # the printed tables
    profiled: str = ""  # the node py-spy sampled (its figures are apart: sampling costs it)
    profile_what: str = "those of a thread holding the GIL"

    def unprofiled(self) -> dict[str, Usage]:
        return {n: u for n, u in self.daemons.items() if n != self.profiled}

    def per_message(self, node: str) -> float | None:
        """``node``'s daemon CPU in milliseconds per message it accepted in the window."""
        m = self.accepted.get(node, 0)
        return self.daemons[node].cpu_seconds() * 1000 / m if m > 0 else None

    @property
    def spurious(self) -> int:
        before = max((epoch_number(e) for e in self.epochs_before.values()), default=0)
        after = max((epoch_number(e) for e in self.epochs_after.values()), default=0)
        changed = any(self.epochs_after.get(n) != e for n, e in self.epochs_before.items())
        return max(after - before, 1 if changed else 0)


def form(d: Daemons, r: Result, started: float) -> None:
    order = list(d.nodes)
    ok = formed_here(d.nodes)
    deadline = started + r.form_timeout
    while time.monotonic() < deadline:
        began = time.monotonic()
        if r.listening is None and all((d.tmp / "run" / n / "control.sock").exists()
                                       for n in d.nodes):
            r.listening = began - started
        done, seen = checked_round(d, order, ok)
        if done:
            r.formed = time.monotonic() - started
            r.check_round = time.monotonic() - began
            r.epoch = next(st["epoch"] for st in seen.values() if st is not None)
            return
        gone = exited(d, started)
        if gone:  # all nodes online cannot happen any more
            r.not_formed.update(gone)
            break
        time.sleep(POLL)
    r.gave_up = time.monotonic() - started
    alive = [n for n in d.nodes if n not in r.not_formed]
    for node, st in statuses(d, alive).items():
        if st is None:
            listening = (d.tmp / "run" / node / "control.sock").exists()
            r.not_formed[node] = "no answer" if listening else "not listening yet"
            continue
        online = sum(1 for v in st["nodes"].values() if v["state"] == "online")
        running = sum(1 for g in st["groups"].values() if g["state"] == "running")
        r.not_formed[node] = (f"epoch {st['epoch']}"
                              + (f" ({st['transition']['phase']})" if busy(st) else "")
                              + f", {online} online, {running}/{len(st['groups'])} running")


def exited(d: Daemons, started: float) -> dict[str, str]:
    """node -> how its daemon ended, for those that did, with the last line it logged at
    CRITICAL or ERROR (why it ended, as a rule)."""
    gone = {}
    for node, proc in d.procs.items():
        if proc.poll() is None:
            continue
        worst = [line for line in d.log(node).splitlines()
                 if " CRITICAL " in line or " ERROR " in line]
        gone[node] = (f"its daemon EXITED with {proc.returncode} (seen "
                      f"{time.monotonic() - started:.0f} s after the start)"
                      + (f" ({worst[-1].strip()[:400]})" if worst else ""))
    return gone


def idle(d: Daemons, r: Result, seconds: float, profile: Profile | None) -> None:
    before = statuses(d, d.nodes)
    r.epochs_before = {n: st["epoch"] if st else "no answer" for n, st in before.items()}
    guard_pids = guardians(d)
    began = time.monotonic()
    r.daemons = {n: Usage(p.pid, ticks(p.pid)) for n, p in d.procs.items()}
    r.guards = {n: Usage(pid, ticks(pid)) for n, pid in guard_pids.items()}
    if profile is not None:
        profile.start(min(seconds, profile.seconds))
    end, next_rss = began + seconds, began
    while True:
        now = time.monotonic()
        if profile is not None and now >= profile.stop_at:
            profile.interrupt()
        if now >= next_rss:
            for u in [*r.daemons.values(), *r.guards.values()]:
                u.rss_kb = max(u.rss_kb, rss_kb(u.pid))
            r.loads.append(os.getloadavg()[0])
            next_rss = now + RSS_EVERY
        if now >= end:
            break
        wake = min(end, next_rss, profile.stop_at if profile and profile.running else end)
        time.sleep(max(0.0, wake - time.monotonic()))
    for u in [*r.daemons.values(), *r.guards.values()]:
        u.ticks1 = ticks(u.pid)
    r.died = exited(d, began)  # in the window: their figures stop at their end
    r.window = time.monotonic() - began
    after = statuses(d, d.nodes)
    r.epochs_after = {n: st["epoch"] if st else "no answer" for n, st in after.items()}
    for n in d.nodes:
        b, a = before[n], after[n]
        if a is not None and b is not None:
            r.accepted[n] = a["messages"].get("accepted", 0) - b["messages"].get("accepted", 0)
    if profile is not None:
        r.profile = profile.finish()


def failover(d: Daemons, r: Result, timeout: float) -> None:
    st = status(d, d.nodes[0])
    if st is None:
        r.failover_error = f"{d.nodes[0]} did not answer"
        return
    old = st["epoch"]
    r.master = st.get("master") or old.partition(".")[2]
    if r.master not in d.procs:
        r.failover_error = f"no master in epoch {old}"
        return
    lost = [g for g, v in st["groups"].items() if v["node"] == r.master]
    r.moved = len(lost)
    survivors = [n for n in d.nodes if n != r.master]

    def ok(st: dict[str, Any], epoch: str | None) -> bool:
        groups = st["groups"]
        return (st["epoch"] == epoch and epoch_number(st["epoch"]) > epoch_number(old)
                and not busy(st)
                and all(groups[g]["state"] == "running" and groups[g]["node"] in survivors
                        for g in lost))

    killed = time.monotonic()
    d.procs[r.master].send_signal(signal.SIGKILL)
    deadline = killed + timeout
    first = [survivors[0]]  # the next-lowest node takes over: its view first
    while time.monotonic() < deadline and r.failover is None:
        if checked_round(d, first, ok)[0]:
            r.failover = time.monotonic() - killed
        else:
            time.sleep(0.02)
    order = list(survivors)
    while time.monotonic() < deadline and r.failover is not None:
        done, seen = checked_round(d, order, ok)
        if done:
            r.failover_all = time.monotonic() - killed
            r.failover_epoch = next(s["epoch"] for s in seen.values() if s is not None)
            return
        time.sleep(POLL)
    r.failover_error = f"the survivors did not agree within {timeout:g} s"


class Profile:
    """py-spy on one daemon, in the background."""

    def __init__(self, node: str, seconds: float, include_idle: bool, top: int,
                 out: Path) -> None:
        self.node, self.seconds, self.include_idle, self.top = node, seconds, include_idle, top
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.stop_at = math.inf
        self.interrupted = False
        here = Path(sys.executable).parent / "py-spy"
        exe = str(here) if here.exists() else shutil.which("py-spy")
        if exe is None:
            raise SystemExit("--profile needs py-spy: `.venv/bin/pip install -e '.[bench]'` "
                             "(or `make bench-scale`, which installs it)")
        self.exe = exe

    def attach(self, pid: int) -> None:
        self.pid = pid

    def start(self, seconds: float) -> None:
        """Sample for ``seconds``: until :meth:`interrupt` once ``stop_at`` has come (py-spy's
        own ``--duration`` counts samples, and runs long on a machine too busy to take them
        in time)."""
        self.stop_at = time.monotonic() + seconds
        argv = [self.exe, "record", "-p", str(self.pid), "-r", str(RATE), "--nolineno",
                "--format", "raw", "-o", str(self.out),
                "--idle" if self.include_idle else "--gil"]
        with open(self.out.with_suffix(".log"), "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self.interrupted

    def interrupt(self) -> None:
        """Stop sampling: on SIGINT py-spy writes what it has."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGINT)
            self.interrupted = True

    def finish(self) -> list[str]:
        assert self.proc is not None
        self.interrupt()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.stop()
            return ["py-spy did not write its profile within 30 s of the end: no profile"]
        self.proc = None
        if not self.out.exists():
            said = self.out.with_suffix(".log").read_text(errors="replace").strip()
            return [f"py-spy wrote no profile: {said[-500:]}"]
        return profile_tables(self.out.read_text().splitlines(), self.top, RATE)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def profile_tables(lines: Iterable[str], top: int, rate: int) -> list[str]:
    """Own and total samples per function from py-spy's collapsed stacks (``f1;f2;... N``,
    outermost first), as two Markdown tables."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    out = []
    for title, counts in (("own time", own), ("total time (itself and what it calls)", total)):
        out += ["", f"Top {top} functions by {title}, of {samples:,} samples "
                f"({samples / rate:.2f} s at {rate} a second):", "",
                "| samples | % | function (file) |", "|---|---|---|"]
        out += [f"| {n:,} | {100 * n / max(samples, 1):.1f} | `{frame}` |"
                for frame, n in counts.most_common(top)]
    return out


def stop_all(d: Daemons, profile: Profile | None) -> None:
    """SIGTERM every process of this run, SIGKILL what is left after STOP_GRACE seconds."""
    if profile is not None:
        profile.stop()
    for p in d.procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for p in d.procs.values():
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    # the guardians of daemons that were killed, or that have not followed theirs out yet
    left = our_processes(d)
    for pid in left:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = our_processes(d)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    mount = find_cgroup2_mount()
    if mount is not None:  # the (empty) cgroups the nodes made for their resources
        for node in d.nodes:
            for problem in remove_cgroup(mount / f"vigil-{d.name}.{node}"):
                print(f"cleanup: {problem}", file=sys.stderr)


# ---- output --------------------------------------------------------------------------------


def pct(values: Iterable[float]) -> str:
    v = list(values)
    return f"{statistics.mean(v):.2f} / {max(v):.2f} %" if v else "n/a"


def mb(values: Iterable[int]) -> str:
    v = [kb / 1024 for kb in values]
    return f"{statistics.mean(v):.0f} / {max(v):.0f} MB" if v else "n/a"


def report(r: Result, command: str, started: str, loads: tuple[float, float]) -> str:
    timing = (f"heartbeat {r.heartbeat * 1000:.0f} ms, dead_time {r.dead_time * 1000:.0f} ms")
    lines = [
        f"`{command}`, {environment()}, started {started}; load average (1 min) {loads[0]:.1f} "
        f"before the start, " + (f"{min(r.loads):.1f} to {max(r.loads):.1f} in the idle "
                                 "window, " if r.loads else "") + f"{loads[1]:.1f} at the end: "
        f"{r.nodes} daemons on 127.0.0.1 ({timing}), {r.resources} dummy resources in "
        f"{r.groups} groups.", ""]
    if r.formed is None:
        highest = max((epoch_number(v.split()[1]) for v in r.not_formed.values()
                       if v.startswith("epoch ")), default=0)
        said: dict[str, list[str]] = {}
        for node, what in sorted(r.not_formed.items()):
            said.setdefault(what, []).append(node)
        why = ("a daemon exited: not every node can be online" if r.gave_up < r.form_timeout else
               f"the limit, --form-timeout {r.form_timeout:g}")
        lines += [f"- **did not form**: gave up after {r.gave_up:.0f} s ({why}); what the "
                  "nodes said then "
                  "(the number of an epoch counts the epochs declared, as far as that node "
                  "knows): " + "; ".join(f"{', '.join(nodes)}: {what}"
                                         for what, nodes in said.items()),
                  f"- highest epoch number {highest}; "
                  f"{sum('EXITED' in v for v in r.not_formed.values())} daemons exited, "
                  f"{sum(v == 'no answer' for v in r.not_formed.values())} of {r.nodes} "
                  f"daemons did not answer a status request within {STATUS_TIMEOUT:g} s, "
                  f"{sum(v == 'not listening yet' for v in r.not_formed.values())} had no "
                  "control socket yet"]
        return "\n".join(lines)
    window = r.window
    plain = r.unprofiled()
    daemon_cpu = [u.cpu_percent(window) for u in plain.values()]
    guard_cpu = [u.cpu_percent(window) for u in r.guards.values()]
    hb_expected = (r.nodes - 1) * window / r.heartbeat
    per_msg = [v for v in map(r.per_message, plain) if v is not None]
    apart = f" (without {r.profiled}, sampled by py-spy: see below)" if r.profiled else ""
    lines += [
        f"- **formed** in {r.formed:.1f} s (epoch {r.epoch}; the confirming round of {r.nodes} "
        f"status reads took {r.check_round:.2f} s)" + (
            "" if r.listening is None else
            f": every daemon was up (its control socket there) after {r.listening:.1f} s, "
            f"the cluster formed {r.formed - r.listening:.1f} s after that"),
        f"- **idle CPU per daemon** over {window:.0f} s{apart}: mean / max {pct(daemon_cpu)} "
        f"of a core; all {r.nodes} daemons together "
        f"{sum(u.cpu_percent(window) for u in r.daemons.values()):.1f} %",
        f"- guardians ({len(r.guards)}): mean / max {pct(guard_cpu)} of a core, together "
        f"{sum(guard_cpu):.1f} %",
        f"- **RSS per daemon** (peak in the window): mean / max "
        f"{mb(u.rss_kb for u in plain.values())}; guardians "
        f"{mb(u.rss_kb for u in r.guards.values())}",
        f"- messages accepted per daemon in the window: mean "
        f"{statistics.mean(r.accepted.values()) if r.accepted else 0:,.0f} (heartbeats of "
        f"{r.nodes - 1} peers every {r.heartbeat * 1000:.0f} ms: {hb_expected:,.0f}); "
        f"**daemon CPU per received message**{apart}: mean "
        f"{statistics.mean(per_msg) if per_msg else 0:.3f} ms, max "
        f"{max(per_msg, default=0):.3f} ms",
        *(f"- **{n}'s daemon ended in the window**: {why}" for n, why in r.died.items()),
        f"- **spurious transitions** in the window: {r.spurious} (epochs "
        f"{', '.join(sorted(set(r.epochs_before.values())))} before, "
        f"{', '.join(sorted(set(r.epochs_after.values())))} after)",
    ]
    if r.failover is not None:
        lines.append(
            f"- **failover**: SIGKILL of the master's daemon ({r.master}, holding {r.moved} "
            f"group{'' if r.moved == 1 else 's'}); "
            f"the new master saw them running elsewhere in a newer epoch after "
            f"{r.failover:.2f} s, " + (f"every survivor after {r.failover_all:.2f} s "
                                       f"(epoch {r.failover_epoch})"
                                       if r.failover_all is not None else
                                       f"but not every survivor: {r.failover_error}"))
    elif r.master or r.failover_error:
        lines.append(f"- **failover** (SIGKILL of {r.master or 'the master'}): "
                     f"{r.failover_error or 'no result'}")
    if r.profile:
        u, per = r.daemons[r.profiled], r.per_message(r.profiled)
        lines += ["", f"Profile of {r.profiled} (py-spy, {RATE} samples a second, "
                  f"{r.profile_what}): its daemon "
                  f"used {u.cpu_percent(window):.2f} % of a core over the window and accepted "
                  f"{r.accepted.get(r.profiled, 0):,} messages, "
                  + (f"{per:.3f} ms of CPU per message" if per is not None else
                     "no message: no CPU per message")
                  + " (the sampling itself costs it some).", *r.profile]
    return "\n".join(lines)


def goals(r: Result, calm_minutes: float) -> list[str]:
    out = []
    if r.formed is None:
        return ["", "Goals of issue #16:", "",
                f"- formation within {FORM_GOAL:g} s at 32 nodes: NOT met (did not form)"
                ] if r.nodes >= 32 else []
    cpu = max(u.cpu_percent(r.window) for u in r.unprofiled().values())
    limit = CPU_GOAL.get(r.nodes)
    if limit is not None:
        out.append(f"- idle CPU per daemon at {r.nodes} nodes <= {limit:g} % of a core: max "
                   f"{cpu:.2f} %, {'met' if cpu <= limit else 'NOT met'}")
    rss = max(u.rss_kb for u in r.unprofiled().values()) / 1024
    out.append(f"- RSS <= {RSS_GOAL:g} MB: max {rss:.0f} MB, "
               f"{'met' if rss <= RSS_GOAL else 'NOT met'}")
    if r.nodes >= 32:
        out.append(f"- formation within {FORM_GOAL:g} s: {r.formed:.1f} s, "
                   f"{'met' if r.formed <= FORM_GOAL else 'NOT met'}")
        if calm_minutes >= CALM_GOAL:
            out.append(f"- no spurious transition in {CALM_GOAL:g} minutes: {r.spurious}, "
                       f"{'met' if r.spurious == 0 else 'NOT met'}")
    return ["", "Goals of issue #16:", "", *out] if out else []


# ---- main ----------------------------------------------------------------------------------


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the cleanup in main's finally runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--resources", type=int, default=64,
                        help=f"dummy resources, in groups of {GROUP_SIZE} (default 64)")
    parser.add_argument("--heartbeat", metavar="DURATION",
                        help="[timing] heartbeat_interval, e.g. 100ms (default: Vigil's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another [timing] value, e.g. dead_time=1s (repeatable)")
    parser.add_argument("--form-timeout", type=float, default=120.0, metavar="SECONDS")
    parser.add_argument("--settle", type=float, default=5.0, metavar="SECONDS",
                        help="wait after formation before the idle window (default 5)")
    parser.add_argument("--idle", type=float, default=60.0, metavar="SECONDS",
                        help="the idle window (default 60)")
    parser.add_argument("--calm", type=float, default=0.0, metavar="MINUTES",
                        help="make the idle window this long (the goal: 10 at 32 nodes)")
    parser.add_argument("--failover-timeout", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument("--no-failover", action="store_true", help="skip the SIGKILL")
    parser.add_argument("--profile", metavar="NODE", help="py-spy this node's daemon")
    parser.add_argument("--profile-seconds", type=float, default=60.0,
                        help="how much of the idle window to profile (default 60)")
    parser.add_argument("--profile-idle", action="store_true",
                        help="every sample of every thread (py-spy --idle), not only those "
                             "holding the GIL")
    parser.add_argument("--top", type=int, default=20, help="rows of each profile table")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR",
                        help="copy the daemons' logs here at the end")
    parser.add_argument("--write", action="store_true",
                        help="add or replace this size's section of docs/benchmarks.md")
    args = parser.parse_args(argv)
    timing: dict[str, str] = {}
    if args.heartbeat:
        timing["heartbeat_interval"] = args.heartbeat
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            parser.error(f"--set {item!r}: expected KEY=VALUE, e.g. dead_time=1s")
        timing[key.strip()] = value.strip()
    if args.nodes < 2 or args.resources < 1:
        parser.error("--nodes must be at least 2 and --resources at least 1")
    nodes = node_names(args.nodes)
    if args.profile is not None and args.profile not in nodes:
        parser.error(f"--profile {args.profile}: the nodes are {nodes[0]} to {nodes[-1]}")
    command = ".venv/bin/python -m bench.scale " + shlex.join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    window = max(args.idle, args.calm * 60)

    signal.signal(signal.SIGTERM, on_sigterm)
    base = Path(f"/tmp/vigil-scale-{os.getpid()}")
    base.mkdir(parents=True)
    profile = (Profile(args.profile, args.profile_seconds, args.profile_idle, args.top,
                       base / "profile.txt") if args.profile else None)
    # a name of its own: the nodes' cgroups are named after it (and removed at the end)
    d = Daemons(base, nodes, tuple(f'{k} = "{v}"' for k, v in timing.items()),
                groups_toml(nodes, args.resources), name=f"scale{os.getpid()}")
    cfg = load(d.config)  # the effective timings; also checks what --set gave
    r = Result(nodes=args.nodes, resources=args.resources, groups=len(cfg.groups),
               heartbeat=cfg.timing.heartbeat_interval, dead_time=cfg.timing.dead_time,
               form_timeout=args.form_timeout)
    load_before = os.getloadavg()[0]
    stamp = time.strftime("%H:%M")
    try:
        started = time.monotonic()
        for node in nodes:
            d.start(node)
        print(f"started {args.nodes} daemons in {time.monotonic() - started:.1f} s; waiting "
              f"for them to form (at most {args.form_timeout:g} s)", file=sys.stderr,
              flush=True)
        form(d, r, started)
        if r.formed is not None:
            print(f"formed in {r.formed:.1f} s; idle window of {window:g} s after "
                  f"{args.settle:g} s", file=sys.stderr, flush=True)
            time.sleep(args.settle)
            if profile is not None:
                profile.attach(d.procs[profile.node].pid)
                r.profiled = profile.node
                if profile.include_idle:
                    r.profile_what = "every thread, idle or not"
            idle(d, r, window, profile)
            if not args.no_failover:
                failover(d, r, args.failover_timeout)
    finally:
        stop_all(d, profile)
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in base.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
        shutil.rmtree(base, ignore_errors=True)
    text = "\n".join([report(r, command, stamp, (load_before, os.getloadavg()[0])),
                      *goals(r, window / 60)])
    print(text)
    if args.write:
        key = f"{args.nodes}x{args.resources}" + "".join(f",{k}={v}"
                                                          for k, v in timing.items())
        doc = (ROOT / "docs" / "benchmarks.md").read_text()
        write_doc(text, f"<!-- scale[{key}]:begin -->", f"<!-- scale[{key}]:end -->",
                  "" if HEADING in doc else HEADING)
    failed = r.formed is None or (not args.no_failover and r.failover_all is None)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
