"""The floor under a daemon's idle CPU on this machine: what waking a thread costs, and what
the least heartbeat program on Vigil's transport (Python, pyzmq, CurveZMQ) costs at the
rates a calm cluster of ``--nodes`` nodes has.

A calm daemon does almost nothing per wakeup, so its idle CPU is nearly its thread wakeups
times what one costs; on a virtual machine that cost is large. Three figures:

* **sleep**: one Python thread that sleeps and wakes ``--rate`` times a second (nothing
  else): CPU per wakeup.
* **heartbeats**: ``--nodes`` processes that are nothing but heartbeats: each binds a PUB
  socket and connects a SUB socket to each other node's (CurveZMQ, TCP keepalive, as Vigil's
  links), a timer thread publishes a ~300-byte message every ``--interval`` and a reader
  thread takes what arrives (poll, recv_multipart, nothing more: no MAC, no JSON, no core).
  Its CPU is what Vigil's transport costs at these rates before Vigil does anything; the idle
  CPU of ``bench.scale`` at the same size and interval is to be read against it.
* the wakeups a second of each such process (voluntary context switches, every thread).

Run from the repository root::

    .venv/bin/python -m bench.floor                          # 3 nodes, 200 ms
    .venv/bin/python -m bench.floor --nodes 32 --interval 0.8
    .venv/bin/python -m bench.floor --write                  # and put the table in the docs
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import zmq  # noqa: E402

from bench.failover_bench import write_doc  # noqa: E402
from bench.transition_bench import environment  # noqa: E402
from tests.support.daemons import free_ports  # noqa: E402

HEADING = "## The floor: what a wakeup and a bare heartbeat cost here"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAYLOAD = b"x" * 300  # about a heartbeat's body at 3 nodes


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system, every thread) of ``pid``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` so far."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def sleeper(rate: float, seconds: float) -> tuple[float, float]:
    """(CPU seconds, wakeups) of a thread that wakes ``rate`` times a second."""
    period = 1.0 / rate
    start = time.process_time()
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        time.sleep(period)
        n += 1
    return time.process_time() - start, n


def node_main(me: int, ports: list[int], interval: float, seconds: float,
              keys: str) -> None:
    """One bare heartbeat process (run in a child: ``--node``); ``keys``: the servers' key
    pair, the same for all (a bench), Z85 and a comma."""
    ctx = zmq.Context()
    server_public, server_secret = (k.encode("ascii") for k in keys.split(","))
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.curve_server = True
    pub.curve_secretkey = server_secret
    pub.curve_publickey = server_public
    for sock_opt, value in ((zmq.TCP_KEEPALIVE, 1), (zmq.TCP_KEEPALIVE_IDLE, 2)):
        pub.setsockopt(sock_opt, value)
    pub.bind(f"tcp://127.0.0.1:{ports[me]}")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    client_public, client_secret = zmq.curve_keypair()
    sub.curve_publickey, sub.curve_secretkey = client_public, client_secret
    sub.curve_serverkey = server_public
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    for i, port in enumerate(ports):
        if i != me:
            sub.connect(f"tcp://127.0.0.1:{port}")
    stop = threading.Event()

    received = [0]

    def reader() -> None:
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        while not stop.is_set():
            if poller.poll(200):
                while int(sub.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    sub.recv_multipart(zmq.NOBLOCK)
                    received[0] += 1

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    end = time.monotonic() + seconds
    due = time.monotonic()
    while time.monotonic() < end:
        pub.send_multipart([b"\x00", PAYLOAD, b"m" * 32])
        due += interval
        time.sleep(max(0.0, due - time.monotonic()))
    stop.set()
    thread.join()
    pub.close(0)
    sub.close(0)
    ctx.term()
    print(received[0] / seconds, flush=True)  # a second, for the parent


def heartbeats(nodes: int, interval: float, seconds: float,
               settle: float) -> list[tuple[float, float, float]]:
    """Per node process: (% of a core, wakeups a second) over ``seconds`` after ``settle``,
    and the messages it received a second over its whole run."""
    ports = free_ports(nodes)
    keys = ",".join(k.decode("ascii") for k in zmq.curve_keypair())
    procs = [subprocess.Popen([sys.executable, "-m", "bench.floor", "--node", str(i),
                               "--ports", ",".join(map(str, ports)), "--interval", str(interval),
                               "--keys", keys,
                               "--seconds", str(settle + seconds + 2)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
             for i in range(nodes)]
    rates = []
    try:
        time.sleep(settle)
        before = [(process_cpu(p.pid), wakeups(p.pid)) for p in procs]
        time.sleep(seconds)
        after = [(process_cpu(p.pid), wakeups(p.pid)) for p in procs]
        for p in procs:
            out, _ = p.communicate(timeout=30)
            rates.append(float(out.strip() or 0))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    return [(100 * (a[0] - b[0]) / seconds, (a[1] - b[1]) / seconds, rate)
            for b, a, rate in zip(before, after, rates, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.2, metavar="SECONDS")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window")
    parser.add_argument("--rate", type=float, default=10.0, help="the sleeper's wakeups/s")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--node", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.node is not None:
        node_main(args.node, [int(p) for p in args.ports.split(",")], args.interval,
                  args.seconds, args.keys)
        return 0
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")
    command = ".venv/bin/python -m bench.floor " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--write")
    load_before = os.getloadavg()[0]
    cpu, woke = sleeper(args.rate, min(args.seconds, 30.0))
    per_wakeup = 1e6 * cpu / max(1, woke)
    rows = heartbeats(args.nodes, args.interval, args.seconds, settle=5.0)
    pct = [r[0] for r in rows]
    wake = [r[1] for r in rows]
    received = (args.nodes - 1) / args.interval
    got = statistics.mean(r[2] for r in rows)
    text = "\n".join([
        f"`{command.strip()}`, {environment()}; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after:",
        "",
        f"- **one thread waking {args.rate:g} times a second** (a Python sleep loop): "
        f"{per_wakeup:.0f} µs of CPU per wakeup, {cpu / min(args.seconds, 30.0) * 100:.3f} % "
        "of a core",
        f"- **{args.nodes} bare heartbeat processes** (PUB/SUB over CurveZMQ on 127.0.0.1, "
        f"a message every {args.interval * 1000:g} ms each, so {received:g} received and "
        f"{1 / args.interval:g} sent a second per process; {got:.1f} received) over "
        f"{args.seconds:g} s: "
        f"mean / max {statistics.mean(pct):.2f} / {max(pct):.2f} % of a core per process, "
        f"{statistics.mean(wake):.0f} wakeups a second; "
        f"{1e4 * statistics.mean(pct) / max(1.0, statistics.mean(wake)):.0f} µs of CPU per "
        "wakeup",
    ])
    print(text)
    if args.write:
        key = f"{args.nodes}x{args.interval:g}"
        doc = (ROOT / "docs" / "benchmarks.md").read_text()
        write_doc(text, f"<!-- floor:{key}:begin -->", f"<!-- floor:{key}:end -->",
                  "" if HEADING in doc else HEADING)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
