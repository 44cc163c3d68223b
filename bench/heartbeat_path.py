"""CPU time per received heartbeat, in the pure core and on the wire, at 3 to 64 nodes.

What a calm cluster does most is hear heartbeats: every node hears every other one each
``heartbeat_interval`` (and the echoes that a thin lease asks for), so the cluster handles
n x (n - 1) of them per interval. This benchmark measures what one costs, in one process,
with no actors and no sockets, so the figure is the code's and not the machine's scheduling:

* **core**: ``NodeCore.handle`` of one received heartbeat or echo, over every node of a
  simulated cluster (``SimCluster``, default timings, ``groups`` independent groups of two
  resources) that has formed and runs calm for ``--seconds`` simulated seconds; the mean
  over all of them (``time.process_time`` around each call). Also the share that took the
  short path (``NodeCore.routine_handled``, where the code has it).
* **tick**: the same for the timer events of those seconds (a node's own heartbeat going
  out, and the deadlines).
* **decode** / **encode**: ``Codec.decode`` (MAC, JSON, replay window) and ``Codec.encode``
  of the same heartbeats, as the link's reader thread and the coordinator do them.

Run from the repository root; it works on older commits too (to compare, check one out in a
worktree and run this file there)::

    .venv/bin/python -m bench.heartbeat_path                  # 3, 9, 32 and 64 nodes
    .venv/bin/python -m bench.heartbeat_path --write          # and replace its table there
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `tests.support.simconfig` lives in the repository, not the package
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import date  # noqa: E402

from tests.support.simconfig import sim_config  # noqa: E402
from vigil.cluster.events import Event, Output, Received, Tick  # noqa: E402
from vigil.cluster.node import NodeCore  # noqa: E402
from vigil.cluster.sim import SimCluster  # noqa: E402
from vigil.config import Timing  # noqa: E402
from vigil.messages import Message  # noqa: E402
from vigil.transports.codec import Codec, Sequencer  # noqa: E402

NODES = (3, 9, 32, 64)
COMMAND = ".venv/bin/python -m bench.heartbeat_path --write"
BEGIN, END = "<!-- heartbeat-path:begin -->", "<!-- heartbeat-path:end -->"
HEADING = "## The heartbeat path"


@dataclass
class Row:
    nodes: int
    groups: int
    heard: int = 0  # heartbeats and echoes handled
    heard_cpu: float = 0.0
    ticks: int = 0
    tick_cpu: float = 0.0
    routine: int | None = None  # of them on the short path (None: the code has none)
    routine_ticks: int | None = None
    decode_us: float = 0.0
    encode_us: float = 0.0
    bytes: float = 0.0


def measure(nodes: int, groups: int, seconds: float) -> Row:
    cfg = sim_config(nodes, groups, group_chain=False, timing=Timing())
    c = SimCluster(cfg, check=False)
    c.run_for(15.0)
    if not c.settled():
        raise SystemExit(f"{nodes} nodes did not settle in 15 simulated seconds")
    row = Row(nodes, groups)
    caught: list[Message] = []
    handle = NodeCore.handle

    def timed(core: NodeCore, event: Event, now: float) -> Output:
        start = time.process_time()
        out = handle(core, event, now)
        spent = time.process_time() - start
        short = getattr(out, "routine", None)
        if isinstance(event, Received) and event.msg.type in ("hb", "echo"):
            row.heard += 1
            row.heard_cpu += spent
            if short is not None:
                row.routine = (row.routine or 0) + short
            if (event.msg.type == "hb" and len(caught) < 2000
                    and event.msg.sender != cfg.node_names[0]):
                caught.append(event.msg)
        elif isinstance(event, Tick):
            row.ticks += 1
            row.tick_cpu += spent
            if short is not None:
                row.routine_ticks = (row.routine_ticks or 0) + short
        return out

    NodeCore.handle = timed  # type: ignore[method-assign]
    gc.collect()
    try:
        c.run_for(seconds)
    finally:
        NodeCore.handle = handle  # type: ignore[method-assign]
    names = cfg.node_names
    key = b"k" * 32
    senders = {n: (Codec("bench", key, names, n), Sequencer(n, 1)) for n in names}
    receiver = Codec("bench", key, names, names[0])
    frames = []
    start = time.process_time()
    for msg in caught:
        codec, seq = senders[msg.sender]
        frames.append(codec.encode(seq.stamp(msg)))
    row.encode_us = 1e6 * (time.process_time() - start) / max(1, len(caught))
    row.bytes = sum(len(f[1]) for f in frames) / max(1, len(frames))
    start = time.process_time()
    for f in frames:
        receiver.decode(f)
    row.decode_us = 1e6 * (time.process_time() - start) / max(1, len(frames))
    return row


def table(rows: Sequence[Row], seconds: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "?"
    lines = [
        f"`{COMMAND}`, {date.today()}, commit {commit}, Python {platform.python_version()}, "
        f"{seconds:g} simulated calm seconds per size, default timings "
        "(heartbeat 200 ms), groups = nodes:",
        "",
        "| nodes | heartbeats + echoes handled | core, per one | short path | ticks "
        "| core, per one | short path | decode | encode | body |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = "none" if r.routine is None else f"{100 * r.routine / max(1, r.heard):.0f} %"
        tshare = ("none" if r.routine_ticks is None
                  else f"{100 * r.routine_ticks / max(1, r.ticks):.0f} %")
        lines.append(
            f"| {r.nodes} | {r.heard:,} | {1e6 * r.heard_cpu / max(1, r.heard):.0f} µs "
            f"| {share} | {r.ticks:,} | {1e6 * r.tick_cpu / max(1, r.ticks):.0f} µs "
            f"| {tshare} | {r.decode_us:.0f} µs | {r.encode_us:.0f} µs | {r.bytes:.0f} B |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=list(NODES))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    rows = []
    for n in args.nodes:
        rows.append(measure(n, n, args.seconds))
        print(table(rows[-1:], args.seconds).splitlines()[-1], flush=True)
    text = table(rows, args.seconds)
    print(text)
    if args.write:
        from bench.failover_bench import write_doc
        write_doc(text, BEGIN, END, HEADING)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
