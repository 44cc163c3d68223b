"""CPU time and messages of one complete transition after a node crash, in the simulator.

For every cluster size (3, 9, 32, 64 nodes) and number of groups (10, 100, 1,000) the benchmark
builds a :class:`SimCluster` from ``tests.support.simconfig.sim_config(nodes, groups,
group_chain=False)`` (two resources per group, independent groups, every node may run every
group with a rotating preference, invariant checker off), runs it until it has settled, crashes
one node and measures until the cluster has settled again with every group that can run back
in service.

Two scenarios: *holder crash* (the non-master node holding the most groups; the master stays
and leads the transition) and *master crash* (the next-lowest node takes over and leads it).

What one run measures (``time.process_time``; the whole simulated cluster runs in this one
process, so CPU is summed over all nodes, simulator bookkeeping included):

* **transition CPU** (the headline): CPU spent handling the protocol's own events between the
  crash and the settled state, on all nodes: every event but received heartbeats and timer
  ticks, i.e. declare/ack, report, cost, stop, accept, start and their replies, group
  operations finishing, fencing done. Each such event pays the full per-event cost of
  ``NodeCore.handle`` (deadline and reconcile scans included). Also given: the part spent on
  the node that led the transition.
* **crash → settled**: all CPU of the simulation from the crash until ``settled()`` holds in
  a newer epoch and ``expected_placement_ok()`` reports nothing, i.e. also the survivors'
  heartbeats during the ``dead_time`` detection and the silence-fencing wait. The simulation
  advances in steps of ``STEP`` simulated seconds; only the ``run_for`` calls are timed, the
  convergence checks between them are not (polling costs nothing in the numbers, and the
  recovery time is known to within one step).
* **baseline**: CPU of running the recovered cluster for the same simulated time right
  afterwards: the survivors in steady state, which is what they also do during the
  detection and fencing waits. **difference** = crash → settled - baseline: only a rough
  cross-check. It subtracts two measurements of up to several seconds taken one after the
  other, so on a shared machine it is mostly noise, and the open transition itself changes
  what a heartbeat costs (no node may start groups between the declaration and START), so
  it can even come out negative (docs/benchmarks.md).
* **messages**: the master's ``Round.messages`` (what it sent itself while the round ran), all
  protocol messages (everything but heartbeats, sent by any node) as sent / delivered (a
  broadcast is sent once and delivered to every other node, the crashed one included), and
  all messages in crash → settled including heartbeats.

Each cell is the median (per column) of ``--reps`` runs with network seeds 1, 2, ...

Run from the repository root::

    .venv/bin/python -m bench.transition_bench            # print the tables
    .venv/bin/python -m bench.transition_bench --write    # and update docs/benchmarks.md
    .venv/bin/python -m bench.transition_bench --profile  # cProfile of 32 x 1,000, holder crash
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `tests.support.simconfig` lives in the repository, not the package
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass, fields  # noqa: E402
from datetime import date  # noqa: E402
from typing import Literal  # noqa: E402

from tests.support.simconfig import sim_config  # noqa: E402
from vigil.cluster.events import Event, Received, Tick  # noqa: E402
from vigil.cluster.node import NodeCore  # noqa: E402
from vigil.cluster.sim import SimCluster  # noqa: E402
from vigil.cluster.wire import NO_EPOCH, Epoch, fmt_epoch  # noqa: E402
from vigil.messages import Message  # noqa: E402

NODES = (3, 9, 32, 64)
GROUPS = (10, 100, 1000)
STEP = 0.01  # simulated seconds between convergence checks
SETTLE_LIMIT = 30.0  # simulated seconds allowed for forming the cluster or recovering
COMMAND = ".venv/bin/python -m bench.transition_bench --write"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

Scenario = Literal["holder", "master"]
SCENARIOS: dict[Scenario, str] = {
    "holder": "Holder crash (the non-master node holding the most groups)",
    "master": "Master crash (the next-lowest node takes over)",
}


def event_kind(event: Event) -> str:
    if isinstance(event, Tick):
        return "tick"  # heartbeats out, deadlines (dead_time, retransmits, fencing waits)
    if isinstance(event, Received) and event.msg.type == "hb":
        return "hb"
    return "protocol"  # protocol messages, group operations done, fencing done


class BenchCluster(SimCluster):
    """A SimCluster that counts messages by type and CPU per node (the node whose event it
    handles; an event handled while handling another counts for the outer one)."""

    def __init__(self, nodes: int, groups: int, seed: int) -> None:
        # set before SimCluster.__init__, which already delivers the first ticks
        # (node, "hb" / "tick" / "protocol") -> CPU seconds spent handling such events
        self.cpu: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.sent: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        self._depth = 0
        super().__init__(sim_config(nodes, groups, group_chain=False),
                         rng=random.Random(seed), check=False)

    def _deliver(self, name: str, event: Event) -> None:
        if self._depth:
            super()._deliver(name, event)
            return
        self._depth = 1
        start = time.process_time()
        try:
            super()._deliver(name, event)
        finally:
            self.cpu[name, event_kind(event)] += time.process_time() - start
            self._depth = 0

    def _transmit(self, msg: Message) -> None:
        before = self.stats.deliveries
        super()._transmit(msg)
        self.sent[msg.type] += 1
        self.delivered[msg.type] += self.stats.deliveries - before

    # ---- observation ----------------------------------------------------------------------

    def epoch(self) -> Epoch:
        return max((c.promised for c in self.cores()), default=NO_EPOCH)

    def cores(self) -> list[NodeCore]:
        return [n.core for n in self.nodes.values() if n.core is not None]

    def master_core(self) -> NodeCore:
        core = self.nodes[self.epoch()[1]].core
        assert core is not None, "the master of the current epoch is down"
        return core

    def converged(self, newer_than: Epoch) -> bool:
        """Settled in an epoch newer than ``newer_than``, every group that can run placed."""
        return (self.epoch() > newer_than and self.settled()
                and not self.expected_placement_ok())

    def holdings(self) -> Counter[str]:
        held: Counter[str] = Counter({n: 0 for n in self.live()})
        for where in self.placement().values():
            held.update(where)
        return held


@dataclass(slots=True)
class Sample:
    """One run; times in seconds (CPU) or simulated seconds (recovery, detect, protocol)."""

    recovery: float  # crash -> settled with every group placed
    detect: float  # crash -> declaration of the new epoch
    protocol: float  # declaration -> epoch complete (the rest: group starts, one STEP)
    cpu_crash: float
    cpu_base: float
    protocol_cpu: float  # CPU of handling protocol events (not heartbeats, not ticks)
    master_protocol_cpu: float  # the part of it spent on the node leading the transition
    round_messages: int
    proto_sent: int
    proto_delivered: int
    all_sent: int
    all_delivered: int
    epochs: int  # epochs declared during the recovery (1 unless a round was aborted)
    difference: float  # cpu_crash - cpu_base


def formed(nodes: int, groups: int, seed: int) -> BenchCluster:
    """A new cluster, run until it has formed and placed every group."""
    cluster = BenchCluster(nodes, groups, seed)
    recover(cluster, NO_EPOCH, f"{nodes}x{groups} seed {seed}: the cluster never formed")
    return cluster


def recover(cluster: BenchCluster, newer_than: Epoch, failure: str,
            profiler: cProfile.Profile | None = None) -> float:
    """Run ``cluster`` in steps of STEP until it converges in an epoch newer than
    ``newer_than``; returns the CPU of those steps (the checks between them are neither
    timed nor profiled)."""
    began = cluster.now
    cpu = 0.0
    while not cluster.converged(newer_than):
        if cluster.now - began > SETTLE_LIMIT:
            raise RuntimeError(f"{failure}\n{cluster.describe()}")
        if profiler is not None:
            profiler.enable()
        start = time.process_time()
        cluster.run_for(STEP)
        cpu += time.process_time() - start
        if profiler is not None:
            profiler.disable()
    return cpu


def victim_for(cluster: BenchCluster, scenario: Scenario) -> str:
    master = cluster.epoch()[1]
    if scenario == "master":
        return master
    held = cluster.holdings()
    most = max(c for n, c in held.items() if n != master)
    return min(n for n, c in held.items() if n != master and c == most)


def measure(nodes: int, groups: int, seed: int, scenario: Scenario,
            profiler: cProfile.Profile | None = None) -> Sample:
    where = f"{nodes}x{groups} seed {seed}, {scenario} crash"
    cluster = formed(nodes, groups, seed)
    before = cluster.epoch()
    victim = victim_for(cluster, scenario)
    sent0, delivered0 = cluster.stats.messages, cluster.stats.deliveries
    proto_sent0 = sum(v for k, v in cluster.sent.items() if k != "hb")
    proto_delivered0 = sum(v for k, v in cluster.delivered.items() if k != "hb")
    cpu0 = dict(cluster.cpu)
    gc.collect()
    crashed_at = cluster.now
    cluster.crash(victim)
    cpu_crash = recover(cluster, before, f"{where}: no recovery", profiler)
    recovery = cluster.now - crashed_at
    master = cluster.master_core()
    rnd = master.round
    assert rnd is not None and rnd.epoch == master.promised
    protocol_cpu = {node: spent - cpu0.get((node, kind), 0.0)
                    for (node, kind), spent in cluster.cpu.items() if kind == "protocol"}
    sent, delivered = cluster.stats.messages - sent0, cluster.stats.deliveries - delivered0
    proto_sent = sum(v for k, v in cluster.sent.items() if k != "hb") - proto_sent0
    proto_delivered = sum(v for k, v in cluster.delivered.items() if k != "hb") - proto_delivered0
    # The baseline: the same simulated time again on the recovered cluster, where nothing
    # happens but what the survivors also did during the detection and fencing waits.
    after = cluster.epoch()
    gc.collect()
    start = time.process_time()
    cluster.run_for(recovery)
    cpu_base = time.process_time() - start
    if cluster.epoch() != after or not cluster.converged(before):
        raise RuntimeError(f"{where}: the cluster did not stay settled in epoch "
                           f"{fmt_epoch(after)}\n{cluster.describe()}")
    return Sample(
        recovery=recovery,
        detect=rnd.started - crashed_at,
        protocol=rnd.done_at - rnd.started,
        cpu_crash=cpu_crash,
        cpu_base=cpu_base,
        protocol_cpu=sum(protocol_cpu.values()),
        master_protocol_cpu=protocol_cpu.get(master.name, 0.0),
        round_messages=rnd.messages,
        proto_sent=proto_sent,
        proto_delivered=proto_delivered,
        all_sent=sent,
        all_delivered=delivered,
        epochs=master.promised[0] - before[0],
        difference=cpu_crash - cpu_base,
    )


def median(samples: Sequence[Sample]) -> Sample:
    values = {f.name: statistics.median(getattr(s, f.name) for s in samples)
              for f in fields(Sample)}
    return Sample(**values)


# ---- output ---------------------------------------------------------------------------------


HEADER = ("| nodes | groups | runs | recovery, sim s (detect + protocol) "
          "| **transition CPU, s** (protocol events) | of which on the master "
          "| CPU crash→settled | CPU baseline | difference "
          "| master `Round.messages` | protocol msgs sent / delivered "
          "| all msgs sent / delivered | epochs |")


def table_row(nodes: int, groups: int, runs: int, m: Sample) -> str:
    return (f"| {nodes} | {groups:,} | {runs} "
            f"| {m.recovery:.2f} ({m.detect:.2f} + {m.protocol:.3f}) "
            f"| **{m.protocol_cpu:.3f}** | {m.master_protocol_cpu:.3f} "
            f"| {m.cpu_crash:.3f} | {m.cpu_base:.3f} | {m.difference:+.3f} "
            f"| {m.round_messages:.0f} "
            f"| {m.proto_sent:,.0f} / {m.proto_delivered:,.0f} "
            f"| {m.all_sent:,.0f} / {m.all_delivered:,.0f} | {m.epochs:.0f} |")


def environment() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "vigil"], cwd=ROOT,
                                 text=True, capture_output=True, check=True).stdout.strip()
        if changed:
            commit += " with uncommitted changes to vigil/"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return (f"{date.today().isoformat()}, commit {commit}, Python "
            f"{platform.python_version()}, {os.cpu_count()} cores ({cpu}), {platform.system()}")


def render(results: dict[Scenario, list[tuple[int, int, list[Sample]]]]) -> str:
    lines = [f"Produced by `{COMMAND}` on {environment()}; "
             "`sim_config(nodes, groups, group_chain=False)`, "
             "network delay 1-5 ms, start/stop 20 ms per resource, invariant checker off. "
             "Median of the runs per column (the difference is the median of the differences); CPU "
             "in seconds of `time.process_time()` for the whole simulated cluster.", ""]
    for scenario, rows in results.items():
        lines += [f"#### {SCENARIOS[scenario]}", "", HEADER,
                  "|" + "---|" * HEADER.count(" | ") + "---|"]
        lines += [table_row(n, g, len(samples), median(samples)) for n, g, samples in rows]
        lines.append("")
    goal = [median(s) for n, g, s in results.get("holder", []) if (n, g) == (32, 1000)]
    if goal:
        m = goal[0]
        lines.append(f"Goal, 32 nodes x 1,000 groups under one second of CPU for the "
                     f"transition (holder crash): {m.protocol_cpu:.2f} s, "
                     f"**{'met' if m.protocol_cpu < 1.0 else 'missed'}**; but crash → settled "
                     f"costs {m.cpu_crash:.1f} s of CPU, almost all of it the survivors' "
                     f"heartbeats (the baseline: {m.cpu_base:.1f} s).")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_doc(table: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    head, sep1, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep1 and sep2):
        raise SystemExit(f"{DOC}: the markers {BEGIN} and {END} are missing")
    DOC.write_text(f"{head}{BEGIN}\n{table}{END}{tail}", encoding="utf-8")
    print(f"updated {DOC.relative_to(ROOT)}", file=sys.stderr)


def profile(nodes: int, groups: int, scenario: Scenario, top: int) -> None:
    profiler = cProfile.Profile()
    sample = measure(nodes, groups, 1, scenario, profiler)
    print(f"{nodes} nodes x {groups} groups, {scenario} crash, seed 1: crash -> settled "
          f"{sample.cpu_crash:.2f} s CPU (under cProfile), baseline {sample.cpu_base:.2f} s")
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(top)
        print(out.getvalue())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transition_bench",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--nodes", type=int, nargs="+", default=list(NODES))
    parser.add_argument("--groups", type=int, nargs="+", default=list(GROUPS))
    parser.add_argument("--scenario", choices=list(SCENARIOS), nargs="+",
                        default=list(SCENARIOS))
    parser.add_argument("--reps", type=int, default=3, help="runs per cell (default 3)")
    parser.add_argument("--big-reps", type=int, default=None,
                        help="runs for 32 x 1,000 (default: --reps)")
    parser.add_argument("--write", action="store_true",
                        help=f"replace the table section of {DOC.relative_to(ROOT)}")
    parser.add_argument("--profile", action="store_true",
                        help="instead: cProfile one run of the largest size (holder crash)")
    parser.add_argument("--top", type=int, default=25, help="rows of profile output")
    args = parser.parse_args(argv)
    if args.profile:
        profile(max(args.nodes), max(args.groups), args.scenario[0], args.top)
        return
    results: dict[Scenario, list[tuple[int, int, list[Sample]]]] = {}
    began = time.monotonic()
    for scenario in args.scenario:
        rows = results.setdefault(scenario, [])
        for nodes in args.nodes:
            for groups in args.groups:
                reps = args.reps
                if (nodes, groups) == (32, 1000) and args.big_reps is not None:
                    reps = args.big_reps
                samples: list[Sample] = []
                for seed in range(1, reps + 1):
                    samples.append(measure(nodes, groups, seed, scenario))
                    s = samples[-1]
                    print(f"{scenario:6} {nodes:2}x{groups:<4} seed {seed}: recovery "
                          f"{s.recovery:.2f}s sim, protocol CPU {s.protocol_cpu:.3f} s, "
                          f"crash->settled {s.cpu_crash:.3f} - baseline {s.cpu_base:.3f} "
                          f"= {s.difference:+.3f} s "
                          f"[{time.monotonic() - began:.0f}s]", file=sys.stderr, flush=True)
                rows.append((nodes, groups, samples))
    table = render(results)
    print(table, end="")
    if args.write:
        write_doc(table)


if __name__ == "__main__":
    main()
