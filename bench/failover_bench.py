"""How long a real service is missing when its node fails, on the namespace cluster; Vigil
against keepalived on the same hosts.

Three hosts (network namespaces on a bridge; see ``tests/support/nscluster.py``) and a
client namespace. The service is a plain address (198.18.0.100 on eth0) and a small HTTP
server bound to it: no disk, so the figure is the cluster's, not an fsck's.

* **Vigil**: a real ``vigil node run`` (and its guardian) per host, group ``web`` = ``ip`` +
  ``application`` (``tests.support.nssample.web_group``), preferring n1. Two timing sets:
  the defaults, and 100 ms heartbeats (the rest derived from it: see ``TIMINGS``).
* **keepalived** (``/usr/sbin/keepalived``, ``--keepalived``): one VRRP instance per host
  with the same address on eth0, unicast to the other hosts, n1 MASTER (priority 150), n2 and
  n3 BACKUP (100, the default, and 50), ``advert_int`` 1 (the default) and 0.1. The same
  server runs on every host all the time, bound to 0.0.0.0, so only the address moves.

Ways of failing the holder (n1):

* ``kill``: SIGKILL of the cluster software only (Vigil: the daemon, its guardian lives on;
  keepalived: its VRRP process and its parent, which would otherwise stop cleanly).
* ``freeze``: SIGSTOP of the same for 10 s, then SIGCONT.
* ``power-off``: n1's cable pulled, then every process of n1 killed.
* ``partition``: n1 alone on one side, n2, n3 and the client on the other, for 5 s (at
  least until the service is back), then healed.
* ``sigterm``: a clean stop (Vigil: the daemon stops the group and says goodbye).

Measured per run:

* **missing**: what the client sees. From the client namespace a TCP connect to the
  address's port 80 starts every 10 ms (non-blocking, so a slow attempt does not delay the
  next one; one not connected within 0.5 s failed). An outage lasts from the start of its
  first failed attempt to the start of the next successful one; *missing* is the sum of the
  outages after the failure (good to 10 ms).
* **double holder**: from a sampler inside every host (``tests.support.nssample``, every
  10 ms): for how long two hosts had the address on an interface at once (a powered-off host
  holds nothing from its cable pull on). "until the end" means it was still so when the run
  ended, i.e. never released.
* **old server gone first** (Vigil): whether the server's last moment on n1 came before its
  first moment on the new holder (the samplers see the process).

Requires root and the namespace tools (not part of ``make test``). From the repository
root::

    .venv/bin/python -m bench.failover_bench --runs 3                  # a short run
    .venv/bin/python -m bench.failover_bench --runs 20 --keepalived --results r.jsonl
    .venv/bin/python -m bench.failover_bench --table-from r.jsonl --write   # docs/benchmarks.md

Every run is one line of JSON in ``--results`` as soon as it ends, so a long run that is
stopped keeps what it measured; ``--table-from`` makes the table from such files.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `tests.support` lives in the repository, not the package
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from tests.support.nscluster import NsCluster, nscluster_unavailable  # noqa: E402
from tests.support.nssample import (  # noqa: E402
    Reader,
    Sampler,
    Timeline,
    overlaps,
    server_command,
    start_samplers,
    stop_samplers,
    web_group,
)

VIP = "198.18.0.100"
MARKER = "vigil-bench-server"
SCENARIOS = ("kill", "freeze", "power-off", "partition", "sigterm")
KEEPALIVED_SCENARIOS = ("kill", "power-off")
#: The [timing] table of each Vigil setting: the defaults, and only the heartbeat asked for
#: (dead_time, fence_margin and the lease follow it: 400, 100 and 400 ms).
TIMINGS: dict[str, dict[str, str]] = {
    "default": {},
    "hb100": {"heartbeat_interval": "100ms"},
}
ADVERTS = ("1", "0.1")
KEEPALIVED = "/usr/sbin/keepalived"
FREEZE_FOR = 10.0
PARTITION_FOR = 5.0
#: The client must have been answered this long without a failure before a run ends.
SETTLE = 1.5
PROBE_PERIOD = 0.01
PROBE_TIMEOUT = 0.5
#: Bound of every wait for the service to come back.
TAKEOVER_TIMEOUT = 60.0
MARK_BEGIN = "<!-- failover-bench:begin -->"
MARK_END = "<!-- failover-bench:end -->"

# Runs in the client namespace: starts a non-blocking TCP connect every PERIOD and prints,
# for each, its start (system-wide monotonic clock, as the samplers) and whether it
# connected within TIMEOUT.
PROBER = """
import errno, selectors, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
period, timeout = float(sys.argv[3]), float(sys.argv[4])
sel = selectors.DefaultSelector()
def done(s, start, ok):
    sel.unregister(s)
    s.close()
    print(f"{start:.4f} {int(ok)}", flush=True)
print("ready", flush=True)
due = time.monotonic()
while True:
    now = time.monotonic()
    if now >= due:
        s = socket.socket()
        s.setblocking(False)
        err = s.connect_ex((host, port))
        sel.register(s, selectors.EVENT_WRITE, now)
        if err not in (0, errno.EINPROGRESS):
            done(s, now, False)
        due = max(due + period, now)
    for key, _ in sel.select(max(0.0, due - time.monotonic())):
        s = key.fileobj
        done(s, key.data, s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
    now = time.monotonic()
    for key in list(sel.get_map().values()):
        if now - key.data > timeout:
            try:
                key.fileobj.getpeername()
                ok = True
            except OSError:
                ok = False
            done(key.fileobj, key.data, ok)
"""


class Prober(Reader):
    """The PROBER in the client namespace, its attempts read as they come."""

    def __init__(self, c: NsCluster) -> None:
        self.attempts: list[tuple[float, bool]] = []
        super().__init__(c.client, [sys.executable, "-c", PROBER, VIP, "80", str(PROBE_PERIOD),
                                    str(PROBE_TIMEOUT)])

    def parse(self, fields: list[str]) -> None:
        start, ok = fields
        self.attempts.append((float(start), ok == "1"))

    def answering(self, since: float) -> bool:
        """Whether the service has answered, with no failed attempt, for SETTLE seconds
        (and since ``since`` at least)."""
        done = list(self.attempts)
        failed = [t for t, ok in done if not ok]
        last_failure = max(failed, default=since)
        quiet_from = max(last_failure, since)
        return (time.monotonic() - quiet_from > SETTLE
                and any(ok and t > quiet_from for t, ok in done))

    def stop(self) -> list[tuple[float, bool]]:
        self.close()
        return sorted(self.attempts)


def outages(attempts: list[tuple[float, bool]], after: float) -> list[tuple[float, float]]:
    """(first failed start, next successful start) for each run of failed attempts that ends
    after ``after``; one that never ended lasts until math.inf."""
    found: list[tuple[float, float]] = []
    down: float | None = None
    for t, ok in attempts:
        if not ok and down is None:
            down = t
        elif ok and down is not None:
            if t > after:
                found.append((down, t))
            down = None
    if down is not None:
        found.append((down, math.inf))
    return found


# ---- the two systems ---------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    system: str  # "vigil" or "keepalived"
    name: str  # a TIMINGS key, or the advert_int
    label: str

    @property
    def vigil(self) -> bool:
        return self.system == "vigil"


def vigil_setting(name: str) -> Setting:
    hb = TIMINGS[name].get("heartbeat_interval")
    written = ", ".join(f"{k} {v}" for k, v in TIMINGS[name].items())
    return Setting("vigil", name, "Vigil, default timing" if hb is None else
                   f"Vigil, {written.replace('heartbeat_interval', 'heartbeat')}")


def keepalived_setting(advert: str) -> Setting:
    return Setting("keepalived", advert, f"keepalived, advert_int {advert}")


class Service:
    """How one system is started on a fresh cluster and how its holder n1 is failed."""

    #: (address, server) each host must show before a run
    expect: dict[str, tuple[bool, bool]]

    def start(self, c: NsCluster) -> None:
        raise NotImplementedError

    def kill(self, c: NsCluster) -> None:
        raise NotImplementedError

    def freeze(self, c: NsCluster, sig: signal.Signals) -> None:
        raise NotImplementedError

    def sigterm(self, c: NsCluster) -> None:
        raise NotImplementedError


class VigilService(Service):
    expect = {"n1": (True, True), "n2": (False, False), "n3": (False, False)}

    def start(self, c: NsCluster) -> None:
        c.write_config(web_group(VIP, MARKER))
        # n1 first: n2 and n3 could otherwise form the cluster without it and place the
        # group on n2, where it would stay
        c.start("n1")
        c.wait_for(lambda: c.status("n1") is not None, 60, "the daemon of n1 to answer")
        c.start_all()
        c.wait_for(lambda: c.holders("web") == ["n1"], 60, "web on n1")

    def kill(self, c: NsCluster) -> None:
        c.sigkill("n1")  # the daemon alone: its guardian lives on

    def freeze(self, c: NsCluster, sig: signal.Signals) -> None:
        daemon = c.hosts["n1"].daemon
        assert daemon is not None
        daemon.send_signal(sig)

    def sigterm(self, c: NsCluster) -> None:
        if c.sigterm("n1") is None:
            raise RuntimeError("the daemon of n1 did not leave within 20 s of SIGTERM")


class KeepalivedService(Service):
    expect = {"n1": (True, True), "n2": (False, True), "n3": (False, True)}
    PRIORITY = {"n1": 150, "n2": 100, "n3": 50}

    def __init__(self, advert: str) -> None:
        self.advert = advert
        self.parents: dict[str, subprocess.Popen[bytes]] = {}

    def config(self, c: NsCluster, name: str) -> str:
        me = c.hosts[name]
        peers = "\n".join(f"        {h.address(0)}" for h in c.hosts.values() if h is not me)
        # Sub-second adverts need VRRP version 3 (its interval is in centiseconds).
        version = "    vrrp_version 3\n" if float(self.advert) < 1 else ""
        return (f"global_defs {{\n    router_id {name}\n{version}}}\n"
                f"vrrp_instance web {{\n"
                f"    state {'MASTER' if name == 'n1' else 'BACKUP'}\n"
                f"    interface eth0\n    virtual_router_id 51\n"
                f"    priority {self.PRIORITY[name]}\n    advert_int {self.advert}\n"
                f"    unicast_src_ip {me.address(0)}\n    unicast_peer {{\n{peers}\n    }}\n"
                f"    virtual_ipaddress {{\n        {VIP}/24 dev eth0\n    }}\n}}\n")

    def files(self, c: NsCluster, name: str) -> dict[str, Path]:
        return {k: c.tmp / f"keepalived-{name}.{k}" for k in ("conf", "pid", "vrrp.pid", "log")}

    def start(self, c: NsCluster) -> None:
        server = server_command(MARKER, "0.0.0.0")
        for name, host in c.hosts.items():
            f = self.files(c, name)
            f["conf"].write_text(self.config(c, name))
            host.popen(server, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
            with f["log"].open("ab") as log:
                self.parents[name] = host.popen(
                    [KEEPALIVED, "-n", "-l", "-P", "-f", str(f["conf"]), "-p", str(f["pid"]),
                     "-r", str(f["vrrp.pid"])],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def pids(self, c: NsCluster, name: str) -> tuple[int, int]:
        """(parent, VRRP process) of the host's keepalived."""
        vrrp = self.files(c, name)["vrrp.pid"]
        c.wait_for(lambda: vrrp.exists() and vrrp.read_text().strip().isdigit(), 10,
                   f"keepalived's VRRP pid file on {name}")
        return self.parents[name].pid, int(vrrp.read_text())

    def kill(self, c: NsCluster) -> None:
        # The parent first stopped (it would start a new VRRP process), and SIGKILL to the
        # VRRP process before its parent: a VRRP process whose parent dies stops cleanly.
        parent, vrrp = self.pids(c, "n1")
        os.kill(parent, signal.SIGSTOP)
        os.kill(vrrp, signal.SIGKILL)
        os.kill(parent, signal.SIGKILL)
        self.parents["n1"].wait(10)

    def freeze(self, c: NsCluster, sig: signal.Signals) -> None:
        for pid in self.pids(c, "n1"):
            os.kill(pid, sig)

    def sigterm(self, c: NsCluster) -> None:
        parent = self.parents["n1"]
        parent.send_signal(signal.SIGTERM)
        parent.wait(20)


# ---- one run -----------------------------------------------------------------------------


@dataclass
class Run:
    """What one run measured; times in seconds from the failure."""

    system: str
    setting: str
    scenario: str
    ok: bool = False
    error: str = ""
    load: float = 0.0
    missing: float | None = None
    outages: int = 0
    first_down: float | None = None
    first_up: float | None = None
    double_holder: float | None = None
    double_at_end: bool = False
    server_overlap: float | None = None
    old_server_gone_first: bool | None = None
    old_address_gone: float | None = None
    new_address: float | None = None
    old_server_gone: float | None = None
    new_server: float | None = None
    command: str = field(default="")
    #: each host's sampled changes, (time from the failure, address, server)
    timelines: dict[str, list[tuple[float, bool, bool]]] = field(default_factory=dict)
    #: when n1's timeline ends (from the failure), if it was powered off
    n1_until: float | None = None


def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def took_over(samplers: dict[str, Sampler]) -> bool:
    """Another host than n1 has the address and runs the server."""
    return any(s.now() == (True, True) for n, s in samplers.items() if n != "n1")


def one_holder(samplers: dict[str, Sampler]) -> bool:
    """Exactly one host has the address, and runs the server (after n1 is back, keepalived
    gives the address back to it: it has the highest priority)."""
    holding = [s.now() for s in samplers.values() if (s.now() or (False,))[0]]
    return holding == [(True, True)]


def fail_and_observe(c: NsCluster, service: Service, scenario: str,
                     samplers: dict[str, Sampler], prober: Prober
                     ) -> tuple[float, dict[str, float]]:
    """Fail n1 and wait until another host serves and the client has been answered for
    SETTLE seconds (and, for freeze and partition, until n1 is back, one host serves and the
    client has been answered again). The failure's time, and when n1's timeline ends if it
    was powered off."""
    def served_again(since: float, held: Callable[[dict[str, Sampler]], bool]) -> None:
        wait(lambda: held(samplers) and prober.answering(since), TAKEOVER_TIMEOUT,
             f"{held.__doc__} and the client to be answered")

    until: dict[str, float] = {}
    failed = time.monotonic()
    if scenario == "kill":
        service.kill(c)
    elif scenario == "freeze":
        service.freeze(c, signal.SIGSTOP)
    elif scenario == "power-off":
        c.cut_link("n1", 0)  # the address is unreachable from now on
        until["n1"] = time.monotonic()
        c.power_off("n1", cable_first=True)
    elif scenario == "partition":
        c.partition(["n1"], ["n2", "n3"], client_side=1)
    elif scenario == "sigterm":
        service.sigterm(c)
    else:
        raise ValueError(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
    try:
        served_again(failed, took_over)
    finally:
        if scenario in ("freeze", "partition"):
            hold = FREEZE_FOR if scenario == "freeze" else PARTITION_FOR
            time.sleep(max(0.0, failed + hold - time.monotonic()))
            back = time.monotonic()
            if scenario == "freeze":
                service.freeze(c, signal.SIGCONT)
            else:
                c.heal()
    if scenario in ("freeze", "partition"):
        time.sleep(1.0)
        served_again(back, one_holder)
    # Still on two hosts (keepalived has no fencing): long enough to show that it stays so.
    deadline = time.monotonic() + 2 * SETTLE
    while time.monotonic() < deadline and sum(
            (s.now() or (False,))[0] for s in samplers.values() if s.process.poll() is None) > 1:
        time.sleep(0.05)
    return failed, until


def one_run(setting: Setting, scenario: str, command: str, keep_logs: Path | None = None
            ) -> Run:
    run = Run(setting.system, setting.name, scenario, command=command)
    timing = TIMINGS[setting.name] if setting.vigil else {}
    service = VigilService() if setting.vigil else KeepalivedService(setting.name)
    try:
        with NsCluster(hosts=3, timing=timing) as c:
            try:
                service.start(c)
                samplers = start_samplers(c, VIP, MARKER, service.expect)
                prober = Prober(c)
                try:
                    wait(lambda: prober.answering(time.monotonic() - SETTLE), 30,
                         "the client to be answered")
                    run.load = os.getloadavg()[0]
                    failed, until = fail_and_observe(c, service, scenario, samplers, prober)
                finally:
                    ended = time.monotonic()
                    attempts = prober.stop()
                    lines = stop_samplers(samplers)
                measure(run, failed, ended, until, attempts, lines)
            finally:
                if keep_logs is not None and unusual(run):
                    save_logs(c, run, keep_logs)
    except Exception as exc:  # one failed run must not end a long benchmark
        run.error = f"{type(exc).__name__}: {exc}"[:2000]
        traceback.print_exc()
    return run


def unusual(run: Run) -> bool:
    """A run that failed, in which two hosts held the address at once, or in which the
    service went to more than one other host or the client saw more than two outages: one
    whose logs are worth a look."""
    takers = {h for h, changes in run.timelines.items() if h != "n1"
              and any(t > 0 and a for t, a, _ in changes)}
    return (not run.ok or len(takers) > 1 or run.outages > 2
            or (run.double_holder or 0) > 0)


def save_logs(c: NsCluster, run: Run, directory: Path) -> None:
    """Copy the hosts' logs (daemons, guardians, keepalived) of this run to ``directory``."""
    where = directory / (f"{time.strftime('%Y%m%d-%H%M%S')}-{run.system}-{run.setting}-"
                         f"{run.scenario}")
    where.mkdir(parents=True, exist_ok=True)
    for log in c.tmp.glob("*.log"):
        shutil.copy(log, where / log.name)
    print(f"logs of this run kept in {where}", flush=True)


def measure(run: Run, failed: float, ended: float, until: dict[str, float],
            attempts: list[tuple[float, bool]], lines: dict[str, Timeline]) -> None:
    ends = {h: until.get(h, ended) for h in lines}
    run.timelines = {h: [(round(t - failed, 4), a, b) for t, a, b in line.changes]
                     for h, line in lines.items()}
    down = outages(attempts, failed)
    if any(b == math.inf for _, b in down):
        run.error = "the client was never answered again"
        return
    run.missing = sum(b - a for a, b in down)
    run.outages = len(down)
    if down:
        run.first_down, run.first_up = down[0][0] - failed, down[0][1] - failed
    pairs = overlaps(lines, 0, ends)
    run.double_holder = sum(min(b1, b2) - max(a1, a2) for _, a1, b1, _, a2, b2 in pairs)
    run.double_at_end = any(min(b1, b2) >= ended for _, _, b1, _, _, b2 in pairs)
    run.server_overlap = sum(min(b1, b2) - max(a1, a2)
                             for _, a1, b1, _, a2, b2 in overlaps(lines, 1, ends))

    run.n1_until = until["n1"] - failed if "n1" in until else None
    run.ok = handover(run)
    if not run.ok:
        run.error = "no other host took the address"


def handover(run: Run) -> bool:
    """From the run's timelines: when n1 lost the address and the server it had at the
    failure, when another host got them, and whether the server was gone from n1 first.
    Whether another host got the address."""
    lines = {h: Timeline(h, [(t, a, b) for t, a, b in changes])
             for h, changes in run.timelines.items()}
    n1_end = math.inf if run.n1_until is None else run.n1_until

    def first_elsewhere(which: int) -> float | None:
        starts = [a for h, line in lines.items() if h != "n1"
                  for a, _ in line.intervals(which) if a > 0]
        return min(starts) if starts else None

    def gone_from_n1(which: int) -> float | None:
        # The end of what n1 had at the failure (it may have it again later, e.g. after a
        # partition heals). May be a little before the failure: a sampler stamps what it
        # saw with the start of its sample, and the guardian acts within milliseconds.
        spans = [b for a, b in lines["n1"].intervals(which, n1_end) if a < 0]
        return spans[-1] if spans else None

    run.new_address, run.old_address_gone = first_elsewhere(0), gone_from_n1(0)
    if run.system == "vigil":
        run.new_server, run.old_server_gone = first_elsewhere(1), gone_from_n1(1)
        if run.new_server is not None and run.old_server_gone is not None:
            run.old_server_gone_first = run.old_server_gone <= run.new_server
    return run.new_address is not None


# ---- the table ---------------------------------------------------------------------------


def p99(values: list[float]) -> float:
    """The nearest-rank 99th percentile: with fewer than 100 values, the largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def loads(runs: list[Run]) -> str:
    """The range of the load average (1 min) at the failures."""
    values = [r.load for r in runs if r.load]
    return f"{min(values):.1f}-{max(values):.1f}" if values else "-"


def median_of(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


SETTING_ORDER = [("vigil", n) for n in TIMINGS] + [("keepalived", a) for a in ADVERTS]
#: Which Vigil setting is compared with which keepalived one.
PAIRS = {"default": "1", "hb100": "0.1"}


def table(runs: list[Run]) -> str:
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.system, r.setting, r.scenario), []).append(r)
    head = ("| failure of the holder | cluster | runs | missing p50 | p99 | max | "
            "address on the new holder, p50 | max double holder | old server gone first | "
            "Vigil / keepalived (missing p50) | load |")
    out = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for scenario in SCENARIOS:
        for system, name in SETTING_ORDER:
            rows = groups.get((system, name, scenario))
            if not rows:
                continue
            good = [r for r in rows if r.ok and r.missing is not None]
            missing = [r.missing for r in good if r.missing is not None]
            label = (vigil_setting(name) if system == "vigil" else keepalived_setting(name)).label
            count = f"{len(good)}" if len(good) == len(rows) else f"{len(good)} of {len(rows)}"
            if not missing:
                out.append(f"| {scenario} | {label} | {count} | - | - | - | - | - | - | - | - |")
                continue
            doubles = [r.double_holder or 0.0 for r in good]
            at_end = sum(r.double_at_end for r in good)
            double = ms(max(doubles)) + (f" (until the end in {at_end} of {len(good)}: never "
                                         "released)" if at_end else "")
            first = "n/a (runs everywhere)"
            if system == "vigil":
                unknown = sum(r.old_server_gone_first is None for r in good)
                first = (f"{sum(bool(r.old_server_gone_first) for r in good)} of {len(good)}"
                         + (f" ({unknown} not seen)" if unknown else ""))
            ratio = ""
            if system == "vigil" and (rows_k := [
                    r.missing for r in groups.get(("keepalived", PAIRS.get(name, ""), scenario), [])
                    if r.ok and r.missing is not None]):
                base = statistics.median(rows_k)
                ratio = (f"{statistics.median(missing) / base:.2f}" if base > 0.005 else
                         "n/a: keepalived's client saw no outage")
            out.append(f"| {scenario} | {label} | {count} | "
                       f"{ms(statistics.median(missing))} | {ms(p99(missing))} | "
                       f"{ms(max(missing))} | {ms(median_of(r.new_address for r in good))} | "
                       f"{double} | {first} | {ratio} | {loads(good)} |")
    return "\n".join(out)


def targets(runs: list[Run]) -> list[str]:
    """The goals, met or not, per scenario."""
    goals = {"default": (1.0, 1.5), "hb100": (0.45, None)}
    lines = []
    for name, (p50_goal, p99_goal) in goals.items():
        for scenario in SCENARIOS:
            missing = [r.missing for r in runs if r.system == "vigil" and r.setting == name
                       and r.scenario == scenario and r.ok and r.missing is not None]
            if not missing:
                continue
            p50 = statistics.median(missing)
            verdict = [f"p50 {ms(p50)} {'<=' if p50 <= p50_goal else '>'} {ms(p50_goal)}: "
                       f"{'met' if p50 <= p50_goal else 'NOT met'}"]
            if p99_goal is not None:
                top = p99(missing)
                verdict.append(f"p99 {ms(top)} {'<=' if top <= p99_goal else '>'} "
                               f"{ms(p99_goal)}: {'met' if top <= p99_goal else 'NOT met'}")
            lines.append(f"* {vigil_setting(name).label}, {scenario}: {'; '.join(verdict)}.")
    return lines


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({model or platform.machine()}), Linux "
            f"{platform.release()}, Python {platform.python_version()}")


def report(runs: list[Run], tabled_from: list[str] | None = None) -> str:
    loads = [r.load for r in runs if r.load]
    commands = list(dict.fromkeys(r.command for r in runs if r.command))  # in run order
    failed = [r for r in runs if not r.ok]
    text = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; the machine is shared and "
            f"was busy with other work: load average (1 min) {min(loads, default=0):.1f} to "
            f"{max(loads, default=0):.1f}, median {statistics.median(loads or [0]):.1f}, at "
            "the failures. Commands, in order: " + "; ".join(f"`{c}`" for c in commands)
            + (f"; the table made from their results by `.venv/bin/python -m "
               f"bench.failover_bench --table-from {' '.join(tabled_from)} --write`"
               if tabled_from else "") + ".", "",
            table(runs), "",
            "With fewer than 100 runs the p99 (nearest rank) is the maximum. Goals:", "",
            *targets(runs)]
    if failed:
        text += ["", f"Runs that failed ({len(failed)}), not counted above:", ""]
        text += [f"* {r.system} {r.setting} {r.scenario}: {r.error.splitlines()[0][:300]}"
                 for r in failed]
    return "\n".join(text)


def write_doc(text: str, begin: str = MARK_BEGIN, end: str = MARK_END,
              heading: str = "") -> None:
    """Put ``text`` between the markers of docs/benchmarks.md (at its end, under
    ``heading``, the first time)."""
    doc = ROOT / "docs" / "benchmarks.md"
    body = doc.read_text()
    block = f"{begin}\n{text}\n{end}"
    if begin in body:
        head, rest = body.split(begin, 1)
        body = head + block + rest.split(end, 1)[1]
    else:
        body = body.rstrip("\n") + "\n\n" + (f"{heading}\n\n" if heading else "") + block + "\n"
    doc.write_text(body)


def load_runs(paths: Iterable[str]) -> list[Run]:
    runs = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if not line.strip():
                continue
            run = Run(**json.loads(line))
            # Derived again with this version's rules, where the file has what they need
            # (older files lack the timelines, or where a powered-off n1's timeline ends).
            if run.ok and run.timelines and (run.scenario != "power-off"
                                             or run.n1_until is not None):
                handover(run)
            runs.append(run)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario and setting")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"Vigil's (default: {','.join(SCENARIOS)})")
    parser.add_argument("--timings", default=",".join(TIMINGS),
                        help=f"Vigil's timing sets: {','.join(TIMINGS)}")
    parser.add_argument("--keepalived", action="store_true",
                        help="also run keepalived on the same hosts")
    parser.add_argument("--only-keepalived", action="store_true", help="keepalived only")
    parser.add_argument("--adverts", default=",".join(ADVERTS), help="keepalived's advert_int")
    parser.add_argument("--keepalived-scenarios", default=",".join(KEEPALIVED_SCENARIOS))
    parser.add_argument("--results", help="append each run to this file (JSON lines)")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR",
                        help="keep the logs of runs that failed or went wrong in DIR")
    parser.add_argument("--table-from", nargs="*", metavar="FILE",
                        help="make the table from these results files; run nothing")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    if args.table_from is not None:
        runs = load_runs(args.table_from)
    else:
        why = nscluster_unavailable()
        if why:
            print(f"cannot run: {why}", file=sys.stderr)
            return 2
        plan: list[tuple[Setting, str]] = []
        if not args.only_keepalived:
            for scenario in args.scenarios.split(","):
                plan += [(vigil_setting(t), scenario) for t in args.timings.split(",")]
        if args.keepalived or args.only_keepalived:
            if not os.access(KEEPALIVED, os.X_OK):
                print(f"cannot run keepalived: no {KEEPALIVED} (apt-get install keepalived)",
                      file=sys.stderr)
                return 2
            for scenario in args.keepalived_scenarios.split(","):
                plan += [(keepalived_setting(a), scenario) for a in args.adverts.split(",")]
        command = ".venv/bin/python -m bench.failover_bench " + shlex.join(sys.argv[1:])
        runs = []
        for setting, scenario in plan:
            for i in range(args.runs):
                run = one_run(setting, scenario, command, args.keep_logs)
                runs.append(run)
                if args.results:
                    with open(args.results, "a") as f:
                        f.write(json.dumps(run.__dict__) + "\n")
                print(f"{setting.label}, {scenario}, run {i + 1}: "
                      + (f"missing {ms(run.missing)} ({run.outages} outages), double holder "
                         f"{ms(run.double_holder)}{' (until the end)' if run.double_at_end else ''}"
                         f", address elsewhere after {ms(run.new_address)}, server "
                         f"{ms(run.new_server)}, old server gone first "
                         f"{run.old_server_gone_first}; load {run.load:.1f}"
                         if run.ok else f"FAILED: {run.error}"), flush=True)
    text = report(runs, args.table_from)
    print(text)
    if args.write:
        write_doc(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
