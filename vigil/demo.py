"""`make demo`: three real daemons on 127.0.0.1 form a cluster, run a web group, and fail over.

It starts `vigil node run` for alpha, beta and gamma from config/demo.toml, prints the status,
SIGKILLs the daemon that holds the group (its web server dies with it), measures the time
until the service answers again on a survivor, prints the status again and stops everything.
Exit status 0 only if the failover happened. No root needed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from vigil.config import ConfigError, load, load_key, write_key
from vigil.status import ClusterStatus

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "demo.toml"
URL = "http://127.0.0.1:8765/"
#: the cluster's runtime_dir (config/demo.toml): each node uses RUN_DIR/<node>; the web
#: group serves RUN_DIR/www
RUN_DIR = Path("/tmp/vigil-demo")


def vigil(*args: str) -> list[str]:
    return [sys.executable, "-m", "vigil.cli.main", *args]


def status(node: str) -> ClusterStatus | None:
    """``node``'s view, as `vigil status --json` prints it (None while its daemon does not
    answer)."""
    out = subprocess.run(vigil("status", "-c", str(CONFIG), "--node", node, "--json"),
                         capture_output=True, text=True, timeout=15)
    if out.returncode != 0:
        return None
    return ClusterStatus.from_json(json.loads(out.stdout))


def show(node: str) -> None:
    subprocess.run(vigil("status", "-c", str(CONFIG), "--node", node), timeout=15)


def answers() -> bool:
    try:
        with urllib.request.urlopen(URL, timeout=0.5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def holder(nodes: list[str]) -> str | None:
    for n in nodes:
        st = status(n)
        if st is not None and st.groups["web"].state == "running":
            return st.groups["web"].node
    return None


def wait(what: str, condition: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def make_private(path: Path) -> None:
    """``path`` made anew, this user's own and mode 0700, or OSError saying why not: /tmp is
    everyone's, and a directory someone else made there (or a link) could hand them the
    daemons' files. The daemons check it again (docs/security.md)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(f"{path} exists and is not a directory of this user (uid "
                          f"{os.geteuid()}): someone else made it, or it is a link; remove it "
                          "(as root) and run the demo again")
        shutil.rmtree(path)  # a run before this one; rmtree never follows links out of it
    os.mkdir(path, 0o700)  # FileExistsError if someone made it meanwhile: no demo then
    os.chmod(path, 0o700)


def main() -> int:
    cfg = load(CONFIG)
    if not cfg.key_file.exists():
        write_key(cfg.key_file)
        print(f"created the demo cluster key {cfg.key_file}")
    try:
        load_key(cfg)  # what the daemons would refuse, said at once
    except ConfigError as exc:
        print(f"DEMO FAILED:\n{exc}", file=sys.stderr)
        return 1
    run_dir = RUN_DIR
    try:
        make_private(run_dir)
    except OSError as exc:
        print(f"DEMO FAILED: {exc}", file=sys.stderr)
        return 1
    (run_dir / "www").mkdir(mode=0o700)
    (run_dir / "www" / "index.html").write_text("<h1>served by the vigil demo group</h1>\n")
    nodes = list(cfg.node_names)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ok = False
    try:
        for n in nodes:
            log = open(run_dir / f"{n}.log", "wb")  # noqa: SIM115 - closed with the process
            procs[n] = subprocess.Popen(vigil("node", "run", "-c", str(CONFIG), "--node", n),
                                        stdout=log, stderr=subprocess.STDOUT)
        print(f"started daemons {', '.join(f'{n} (pid {p.pid})' for n, p in procs.items())}; "
              f"logs in {run_dir}")
        first = wait("the web group to come up", lambda: holder(nodes), 60)
        wait("the web service to answer", answers, 30)
        print(f"\n--- the cluster, as seen from {nodes[-1]} ---")
        show(nodes[-1])
        print(f"\n--- SIGKILL the daemon of {first} (pid {procs[first].pid}), which holds web ---")
        killed_at = time.monotonic()
        procs[first].send_signal(signal.SIGKILL)
        procs[first].wait(10)
        survivors = [n for n in nodes if n != first]
        new = wait("web on a survivor",
                   lambda: (h := holder(survivors)) and h != first and answers() and h, 60)
        took = time.monotonic() - killed_at
        print(f"\nweb moved {first} -> {new}: the service answered again {took:.2f}s after "
              "the kill")
        print(f"\n--- the cluster, as seen from {survivors[0]} ---")
        show(survivors[0])
        ok = True
    except TimeoutError as exc:
        print(f"\nDEMO FAILED: {exc}; see the logs in {run_dir}", file=sys.stderr)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for n, p in procs.items():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                print(f"{n} did not stop in time; killing it", file=sys.stderr)
                p.kill()
                p.wait(5)
    print("\nall daemons stopped" + ("" if ok else " (failover did not happen)"))
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
