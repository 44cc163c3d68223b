"""Mirrored data (the ``mirror`` resource type, docs/resources.md): how fast a large write
reaches the standbys, how far behind they are under a steady writer, and how much a power-off
of the active node loses.

Three hosts on the namespace cluster (``tests/support/nscluster.py``), each with a btrfs of
its own on a loop device (an image file in /tmp, so the "disks" share the machine's one disk
and page cache); a real ``vigil node run`` (and its guardian) per host; group ``db`` = a
``mirror`` resource (``--interval``, default 1 s, max_lag 30 s) and the numbered-records
writer of ``tests/support/records.py`` (one fsynced line every 5 ms), no host preferred (so
that only the copies' freshness decides where the group goes). Three parts:

* **Throughput.** ``--mib`` MiB of random data written on the active node (``dd ...
  conv=fsync``; the writer keeps appending); the figure is the time from the end of that write
  to the first complete copy on each standby that holds the whole file, and the size over that
  time. It includes the wait for the next snapshot (at most one interval).
* **Lag.** For ``--seconds`` s the bench samples, every 50 ms, each standby's newest complete
  copy: its lag is the time since the writer wrote the last record it holds (what the standby
  would lose if the active node died then). p50, p90 and max.
* **Power-off.** ``--power-offs`` times: the active node is powered off (cables first, as a
  power loss) while the writer appends; the group starts on a standby; the records that were
  acknowledged but are missing there are counted, and the window they span (from the last
  record kept to the last acknowledged) is the data-loss window. The host comes back, and
  the next run waits until it follows the new holder (its newest copy is of that history).

Requires root, the namespace tools and btrfs (not part of ``make test``). From the
repository::

    .venv/bin/python -m bench.mirror
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from functools import partial

from tests.support import records
from tests.support.mirrors import GROUP, MirrorGroup
from tests.support.nscluster import NsCluster, nscluster_unavailable
from vigil.resources.btrfs import btrfs_available

MIB = 1024 * 1024
ACT = 90.0


def quantiles(values: Sequence[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return "no samples"
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else ms * 9
    return (f"p50 {statistics.median(ms):.0f} ms, p90 {q[8]:.0f} ms, max {ms[-1]:.0f} ms "
            f"({len(ms)} samples)")


def throughput(m: MirrorGroup, holder: str, mib: int, runs: int) -> list[tuple[float, float]]:
    """(seconds, MiB/s) of each run and standby."""
    c = m.c
    standbys = [h for h in c.hosts if h != holder]
    results = []
    for i in range(runs):
        name = f"big{i}"
        made = c.hosts[holder].run(["dd", "if=/dev/urandom", f"of={m.data / name}", "bs=1M",
                                    f"count={mib}", "conv=fsync", "status=none"], timeout=300)
        if made.returncode != 0:
            raise RuntimeError(f"dd on {holder} failed: {made.stderr.strip()}")
        written = time.time()
        seen: dict[str, float] = {}

        def whole(name: str = name, seen: dict[str, float] = seen) -> bool:
            for h in standbys:
                newest = m.copies(h)[-1:]  # only the newest complete copy counts
                if h in seen or not newest:
                    continue
                path = c.hosts[h].inside(m.root / ".snapshots" / newest[0][0] / name)
                try:
                    if path.stat().st_size == mib * MIB:
                        seen[h] = time.time()
                except OSError:
                    pass
            return len(seen) == len(standbys)

        c.wait_for(whole, 600, f"{name} whole on {', '.join(standbys)}", interval=0.01)
        for h in standbys:
            results.append((seen[h] - written, mib / (seen[h] - written)))
            print(f"throughput run {i + 1}: {mib} MiB on {h} {seen[h] - written:.2f} s after "
                  f"the write ({mib / (seen[h] - written):.0f} MiB/s)", flush=True)
        c.hosts[holder].run(["rm", "-f", str(m.data / name)])
    return results


def lag(m: MirrorGroup, holder: str, seconds: float) -> list[float]:
    standbys = [h for h in m.c.hosts if h != holder]
    samples: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for h in standbys:
            record = m.newest_record(h)
            if record is not None:
                samples.append(max(0.0, time.time() - record.written))
        time.sleep(0.05)
    return samples


def power_offs(m: MirrorGroup, holder: str, runs: int) -> list[tuple[int, float, float]]:
    """(records lost, their window in seconds, takeover seconds) of each run."""
    c = m.c
    results = []
    for i in range(runs):
        time.sleep(3.0)  # a steady writer
        c.power_off(holder, cable_first=True)
        off = time.time()
        old = holder

        def elsewhere(old: str = old) -> str | None:
            now = c.holder(GROUP)
            return now if now != old else None

        new: str = c.wait_for(elsewhere, ACT, "the group running again")
        took = time.time() - off
        found: records.Found = c.wait_for(partial(m.data_records, new), 30,
                                          f"the records on {new}")
        if found.problems():
            raise AssertionError(f"the records on {new}: {found.problems()}")
        acked = m.acked(holder)
        kept = max((r.number for r in found.records if r.number <= acked[-1].number),
                   default=0)
        at = {a.number: a.at for a in acked}
        lost = acked[-1].number - kept
        window = acked[-1].at - at.get(kept, acked[-1].at)
        results.append((lost, window, took))
        print(f"power-off {i + 1}: {holder} off, {new} took over in {took:.1f} s; lost {lost} "
              f"acknowledged records, the last {window * 1000:.0f} ms of writes", flush=True)
        c.power_on(holder)
        def caught_up(old: str = old, new: str = new) -> bool:
            copy = m.newest(old)
            return copy is not None and copy.source == new

        c.wait_for(caught_up, ACT, f"{old} back and following {new}")
        holder = new
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", default="1s")
    parser.add_argument("--mib", type=int, default=256, help="size of the large write")
    parser.add_argument("--runs", type=int, default=3, help="large writes")
    parser.add_argument("--seconds", type=float, default=60.0, help="lag sampling")
    parser.add_argument("--power-offs", type=int, default=3)
    args = parser.parse_args()
    reason = nscluster_unavailable() or btrfs_available()
    if reason is not None:
        sys.exit(f"cannot run: {reason}")
    with NsCluster(hosts=3, links=2) as c:
        m = MirrorGroup(c, disk_mb=max(1024, 6 * args.mib))
        # no preference among the hosts: only the copies' freshness decides where the group
        # goes (a preference would outweigh a lag of that many seconds)
        holder = m.start(interval=args.interval, max_lag="30s",
                         prefer="n1 = 0, n2 = 0, n3 = 0")
        c.wait_for(lambda: all(m.newest_record(h) for h in c.hosts if h != holder), 60,
                   "a first copy on every standby")
        tput = throughput(m, holder, args.mib, args.runs)
        lags = lag(m, holder, args.seconds)
        offs = power_offs(m, holder, args.power_offs)
    rates = sorted(r for _, r in tput)
    print(f"\ninterval {args.interval}, writer every 5 ms (fsync each)")
    print(f"throughput, {args.mib} MiB written -> whole on a standby: "
          f"{statistics.median(rates):.0f} MiB/s median (min {rates[0]:.0f}, max {rates[-1]:.0f}"
          f"), {statistics.median(t for t, _ in tput):.2f} s median")
    print(f"lag of the standbys' copies over {args.seconds:g} s: {quantiles(lags)}")
    print(f"power-off: records lost {[n for n, _, _ in offs]}, window "
          f"{quantiles([w for _, w, _ in offs])}; takeover "
          f"{', '.join(f'{t:.1f} s' for _, _, t in offs)}")


if __name__ == "__main__":
    main()
