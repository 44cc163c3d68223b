"""Stability under load: a three-node namespace cluster at the default timings, every core
saturated by other processes, for a while: no transition and no fence may happen.

Three hosts (tests/support/nscluster.py) run one group (an address and a server, as in
tests/system/test_ns_guardian.py) with the default timings and the default fencer (the
guardian). Then ``--hogs`` busy loops per core (plain Python ``while True`` at nice 0, in
the machine's namespace) run for ``--minutes``. Afterwards every node's epoch must be the one
it had before, no guardian may have fenced, and the group must still run where it ran: a
spurious transition would be a heartbeat or lease renewal that came too late. Prints the
figures (and with ``--write`` puts them into docs/benchmarks.md).

Requires root and the namespace tools; not part of ``make test`` (``make stability``)::

    .venv/bin/python -m bench.stability --minutes 10
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from bench.failover_bench import write_doc  # noqa: E402
from tests.support.nscluster import NsCluster, nscluster_unavailable  # noqa: E402
from tests.support.nssample import web_group  # noqa: E402
from tests.system.test_ns_guardian import MARKER, VIP  # noqa: E402

MARK_BEGIN = "<!-- stability:begin -->"
MARK_END = "<!-- stability:end -->"
HOG = "while True:\n    pass\n"


def run(minutes: float, hogs_per_core: int, timing: dict[str, str],
        keep_logs: Path | None = None, down: str | None = None) -> dict[str, object]:
    hogs: list[subprocess.Popen[bytes]] = []
    # timing={} is Vigil's own defaults (NsCluster's are the tests' short ones)
    with NsCluster(hosts=3, timing=timing) as c:
        c.write_config(web_group(VIP, MARKER))
        c.start_all()
        c.wait_for(lambda: c.holders("web") == ["n1"], 60, "web on n1")
        c.wait_for(lambda: c.client.http_get(f"http://{VIP}/") is not None, 30, "the server")
        live = [n for n in c.hosts if n != down]
        if down is not None:
            # the survivors' leases now rest on each other alone: the case asked echoes serve
            c.power_off(down, cable_first=True)
            c.wait_for(lambda: all(len((c.status(n) or {}).get("members", [])) == len(live)
                                   for n in live), 30, f"the others to count {down} out",
                       check_daemons=False)
        time.sleep(3.0)
        before = {n: (c.status(n) or {}).get("epoch") for n in live}
        try:
            for _ in range(hogs_per_core * (os.cpu_count() or 1)):
                hogs.append(subprocess.Popen([sys.executable, "-c", HOG]))
            deadline = time.monotonic() + minutes * 60
            failures = 0
            while time.monotonic() < deadline:
                time.sleep(5.0)
                if c.client.http_get(f"http://{VIP}/", timeout=2.0) is None:
                    failures += 1
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait(10)
        time.sleep(2.0)
        after = {n: (c.status(n) or {}).get("epoch") for n in live}
        fences = sum(c.log(n).count("FENCED node") for n in live)
        lease_losses = sum(c.log(n).count("lost the quorum lease") for n in live)
        if keep_logs is not None and (before != after or fences or lease_losses):
            keep_logs.mkdir(parents=True, exist_ok=True)
            for log in c.tmp.glob("*.log"):
                shutil.copy(log, keep_logs / log.name)
            print(f"the hosts' logs are in {keep_logs}", file=sys.stderr)
        return {"minutes": minutes, "hogs": len(hogs), "epoch_before": before,
                "epoch_after": after, "transitions": before != after, "fences": fences,
                "lease_losses": lease_losses, "failed_probes": failures,
                "holders": c.holders("web")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--hogs", type=int, default=2, help="busy loops per core")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help='a [timing] value instead of the default, e.g. '
                             'heartbeat_interval=100ms (repeatable)')
    parser.add_argument("--down", metavar="NODE", choices=["n2", "n3"],
                        help="power this node off first: the other two run on alone")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR",
                        help="copy the hosts' logs here when anything moved")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    timing: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            parser.error(f"--set {item!r}: expected KEY=VALUE, e.g. heartbeat_interval=100ms")
        timing[key.strip()] = value.strip()
    why = nscluster_unavailable()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    started = time.strftime("%Y-%m-%d %H:%M")
    result = run(args.minutes, args.hogs, timing, args.keep_logs, args.down)
    ok = (not result["transitions"] and result["fences"] == 0
          and result["lease_losses"] == 0 and result["holders"] == ["n1"])
    sets = "".join(f" --set {k}={v}" for k, v in timing.items()) + (
        f" --down {args.down}" if args.down else "")
    which = ("the default timings" if not timing else
             "the default timings but " + ", ".join(f"{k} = {v}" for k, v in timing.items()))
    if args.down:
        which += f", {args.down} powered off first (the other two alone)"
    lines = [
        f"`.venv/bin/python -m bench.stability --minutes {args.minutes:g} --hogs {args.hogs}"
        f"{sets}`, {started}, {platform.node()}, {os.cpu_count()} cores: {result['hogs']} "
        f"busy loops at nice 0 for {args.minutes:g} min beside a 3-node cluster at {which}.",
        "",
        f"- epochs before {result['epoch_before']}, after {result['epoch_after']}: "
        f"{'no transition' if not result['transitions'] else 'TRANSITIONS HAPPENED'}",
        f"- guardian fences: {result['fences']}; leases lost: {result['lease_losses']}; "
        f"probes of the service that failed (every 5 s): {result['failed_probes']}",
        f"- the group ran on {result['holders']} at the end: {'PASS' if ok else 'FAIL'}",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        # one block per timing set, so that a run at other timings keeps the default's
        which_set = ",".join([f"{k}={v}" for k, v in timing.items()]
                             + ([f"down={args.down}"] if args.down else []))
        begin, end = ((MARK_BEGIN, MARK_END) if not which_set else
                      (MARK_BEGIN.replace("stability", f"stability[{which_set}]"),
                       MARK_END.replace("stability", f"stability[{which_set}]")))
        write_doc(text, begin, end, "## Stability under load")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
