"""How long a real service is unreachable when its node fails, on the namespace cluster.

Three hosts (network namespaces on a bridge, each running a real ``vigil node run``; see
``tests/nscluster.py``) run one group: an ``ip`` address, a ``filesystem`` on a shared loop
device and an ``application`` (Python's http.server serving the disk on the address). A
client in its own namespace connects to the address every 50 ms at most (TCP, 50 ms timeout,
so the figures are good to about 50 ms). For
each way of failing the holder, the figure is the time from the client's first failed connect
to its first successful one again: what a user of the service sees.

Ways of failing:

* ``power-off``: every process of the holder is killed and its cable pulled first (no FIN or
  RST leaves it), as a crash. The survivors wait out ``dead_time`` and the silence fencer's
  wait (lease + the group's stop timeouts + fence margin) before starting the group.

Not measured: SIGKILL of the daemon alone. Its programs die with it, but its address and
mount stay on the host, which nobody is left to remove; the silence fencer cannot make that
safe (the disk is refused elsewhere while still mounted there). It needs a real fencer, which
a later issue brings.
* ``sigterm``: a clean shutdown: the holder stops the group (server, disk, address, in that
  order), says goodbye, and the others start it at once with no fencing wait.

Requires root and the namespace tools (it is not part of ``make test``). Run from the
repository root::

    .venv/bin/python -m bench.failover_bench --runs 5          # print the table
    .venv/bin/python -m bench.failover_bench --runs 5 --write  # and update docs/benchmarks.md
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `tests.support.nscluster` lives in the repository, not the package
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from tests.support.nscluster import NsCluster, SharedDisk, nscluster_unavailable  # noqa: E402
from tests.system.test_ns_resources import PAGE, PROBER, VIP, web_group  # noqa: E402

MODES = ("power-off", "sigterm")
MARK_BEGIN = "<!-- failover-bench:begin -->"
MARK_END = "<!-- failover-bench:end -->"


def one_run(mode: str) -> float:
    with NsCluster(hosts=3) as c, SharedDisk(c.tmp, files={"index.html": PAGE}) as disk:
        c.write_config(web_group(c, disk))
        c.start_all()
        c.wait_for(lambda: c.holders("web") == ["n1"], 60, "web on n1")
        c.wait_for(lambda: c.client.http_get(f"http://{VIP}/index.html") == PAGE, 30,
                   "the page")
        prober = c.client.popen([sys.executable, "-c", PROBER, VIP, "80", "90"],
                                stdout=subprocess.PIPE, text=True)
        assert prober.stdout is not None and prober.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        if mode == "power-off":
            c.power_off("n1", cable_first=True)
        else:
            c.sigterm("n1")
        out, _ = prober.communicate(timeout=100)
        if prober.returncode != 0:
            raise RuntimeError(f"{mode}: the address never answered again")
        down, up = (float(x) for x in out.split())
        c.wait_for(lambda: c.holders("web") == ["n2"], 30, "web on n2")
        return up - down


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    why = nscluster_unavailable()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    rows = []
    for mode in args.modes.split(","):
        figures = []
        for i in range(args.runs):
            figures.append(one_run(mode))
            print(f"{mode} run {i + 1}: {figures[-1]:.2f} s", flush=True)
        rows.append((mode, figures))
    table = ["| failure of the holder | median | min | max | runs |", "|---|---|---|---|---|"]
    for mode, figures in rows:
        table.append(f"| {mode} | {statistics.median(figures):.2f} s | {min(figures):.2f} s | "
                     f"{max(figures):.2f} s | {len(figures)} |")
    text = "\n".join(table)
    print(text)
    if args.write:
        doc = ROOT / "docs" / "benchmarks.md"
        body = doc.read_text()
        stamp = (f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} "
                 f"({len(rows[0][1]) if rows else 0} runs per row), command: "
                 f"`.venv/bin/python -m bench.failover_bench --runs {args.runs} --write`.")
        block = f"{MARK_BEGIN}\n{stamp}\n\n{text}\n{MARK_END}"
        if MARK_BEGIN in body:
            head, rest = body.split(MARK_BEGIN, 1)
            body = head + block + rest.split(MARK_END, 1)[1]
        else:
            body = body.rstrip("\n") + "\n\n" + block + "\n"
        doc.write_text(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
