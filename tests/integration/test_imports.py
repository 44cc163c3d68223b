"""What a daemon and a guardian load: only what their configuration uses.

Every node runs both, and a machine may run many (32 daemons and 32 guardians in the scale
benchmark, on two cores): what each imports and never uses is memory in every one of them
(pyroute2 alone is 22 MB, locked in memory in a guardian) and CPU at every start. pyroute2
(whose package loads all of itself), the btrfs and replication machinery and asyncio are
loaded only by a configuration that has an ip resource, a mirror resource... Each case runs
in a fresh interpreter: this one has long imported everything for other tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: loaded only for what a configuration names (an ip resource, a mirror resource, an OCF
#: agent, fence devices), or never (asyncio)
OPTIONAL = ("pyroute2", "asyncio", "vigil.resources.ip", "vigil.resources.btrfs",
            "vigil.resources.replication", "vigil.resources.ocf", "vigil.fencing.agents")
#: a guardian loads no resource type either, nor the status tree (the command line's)
GUARDIAN_OPTIONAL = (*OPTIONAL, "vigil.resources.model", "vigil.resources.filesystem",
                     "vigil.status")

DAEMON = f"""
import json, sys
from pathlib import Path

import vigil.cli.main, vigil.daemon  # what `vigil node run` imports

from tests.support.cluster_harness import memory_cluster, wait_for
from vigil.resources.registry import default_registry

OPTIONAL = {OPTIONAL!r}
# dummy resources; a heartbeat link on 127.0.0.1, whose NIC (lo) is watched over netlink
with memory_cluster(Path(sys.argv[1])) as mc:
    node = mc.start("alpha")
    wait_for(lambda: node.status().nics.get("lo"), 20, "the NIC monitor of lo")
    wait_for(lambda: all(s.service_state != "UNKNOWN"
                         for s in node.status().resources.values()), 20, "the first probes")
    resources = {{r: s.type for r, s in node.status().resources.items()}}
    without = sorted(m for m in OPTIONAL if m in sys.modules)
default_registry().get("ip")  # a configuration with an ip resource
print(json.dumps({{"resources": resources, "without": without,
                  "with ip": "pyroute2" in sys.modules}}))
"""

GUARDIAN = f"""
import dataclasses, json, logging, os, socket, sys, time
from pathlib import Path

import vigil.cli.main, vigil.guard.process  # what `vigil guard` imports

from vigil.config import loads
from vigil.guard.holdings import Address, Holdings, ResourceHolding
from vigil.guard.process import Guardian, GuardSettings, _Daemon
from vigil.guard.protocol import Hello, Report

OPTIONAL = {GUARDIAN_OPTIONAL!r}
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
tmp = Path(sys.argv[1])
# not tests.support.cluster_harness: it loads the resource types itself
cfg = loads('''
[cluster]
name = "test"
key_file = "cluster.key"
[nodes.alpha]
links = [{{ name = "lan0", address = "127.0.0.1", port = 7401 }}]
[groups.web]
resources = ["web-app"]
[resources.web-app]
type = "application"
params = {{ start = "sleep 600" }}
''', tmp / "cluster.toml")
settings = dataclasses.replace(GuardSettings.from_config(cfg, "alpha"), realtime=False,
                               cgroup_root=tmp / "cgroup")
guardian = Guardian(settings)
guardian.open()
ours, theirs = socket.socketpair()
daemon = guardian.daemon = _Daemon(ours, os.getpid())
guardian._receive(daemon, Hello("alpha", os.getpid()))
lease = time.monotonic() + 600
app = ResourceHolding("web-app", pgids=(999_999,))
guardian._receive(daemon, Report(lease, Holdings.of([app]), 1))
without = sorted(m for m in OPTIONAL if m in sys.modules)
address = ResourceHolding("web-ip", addresses=(Address("lo", "198.18.0.10/24"),))
guardian._receive(daemon, Report(lease, Holdings.of([app, address]), 1))
print(json.dumps({{"with no address": without, "with an address": "pyroute2" in sys.modules}}))
guardian.close()
"""


def run(code: str, tmp: Path) -> tuple[dict[str, object], str]:
    out = subprocess.run([sys.executable, "-c", code, str(tmp)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_a_daemon_without_ip_or_mirror_resources_loads_no_pyroute2_btrfs_or_asyncio(
        tmp_path: Path) -> None:
    seen, _ = run(DAEMON, tmp_path)
    assert seen["resources"] == {"web-ip": "dummy", "web-data": "dummy", "web-app": "dummy"}
    assert seen["without"] == [], f"loaded though nothing uses them: {seen['without']}"
    assert seen["with ip"], "the ip type loads pyroute2 (else this test would see nothing)"


def test_a_guardian_opens_netlink_once_the_node_holds_an_address(tmp_path: Path) -> None:
    seen, log = run(GUARDIAN, tmp_path)
    assert seen == {"with no address": [], "with an address": True}
    assert "netlink opened when an address is first held" in log
    assert "the node holds an address: netlink open" in log


GUARDIAN_WITHOUT_PYROUTE2 = """
import json, logging, sys
from pathlib import Path

from tests.support import no_pyroute2
from tests.support.no_pyroute2 import Refuse

no_pyroute2.install()

from vigil.guard.cgroups import NodeCgroups
from vigil.guard.fence import NETLINK_RETRY, Fencer
from vigil.guard.holdings import Address, Holdings, ResourceHolding

class Keep(logging.Handler):
    def emit(self, record):
        said.append([record.levelname, record.getMessage()])

said = []
logging.getLogger("vigil.guard.fence").addHandler(Keep())
logging.getLogger("vigil.guard.fence").setLevel(logging.INFO)
fencer = Fencer(NodeCgroups("alpha", root=Path(sys.argv[1])), 0.1)
app = ResourceHolding("web-app", pgids=(999_999,))
ip = ResourceHolding("web-ip", addresses=(Address("lo", "198.18.0.10/24"),))
held = Holdings.of([app, ip])
seen = {}

def report(what, holdings, now):
    got = fencer.ready_for(holdings, now)
    seen[what] = {"said": got, "asked": Refuse.asked, "log": list(said)}
    said.clear()

report("no address", Holdings.of([app]), 100.0)
report("an address", held, 100.0)
report("the next report", held, 101.0)
report("a report after the retry time", held, 100.0 + NETLINK_RETRY)
fence = fencer.fence(Holdings.of([ip]), "test")  # pyroute2 refused: nothing is touched
seen["fence"] = list(fence.problems)
no_pyroute2.remove()
report("installed again", held, 100.0 + 2 * NETLINK_RETRY)
fencer.close()
print(json.dumps(seen))
"""


def test_a_guardian_that_cannot_open_netlink_warns_and_tries_again_every_few_seconds(
        tmp_path: Path) -> None:
    seen, _ = run(GUARDIAN_WITHOUT_PYROUTE2, tmp_path)
    assert seen["no address"] == {"said": None, "asked": 0, "log": []}
    first = seen["an address"]
    assert first["said"] is None and first["asked"] == 1
    ((level, text),) = first["log"]
    assert level == "WARNING"
    assert "importing pyroute2 failed: ModuleNotFoundError" in text
    assert "addresses may not be removable at a fence" in text
    # not at every report (each try may cost the loop 0.1-0.2 s), but again a while later,
    # and the same failure is not logged again
    assert seen["the next report"] == {"said": None, "asked": 1, "log": []}
    assert seen["a report after the retry time"] == {"said": None, "asked": 2, "log": []}
    (problem,) = seen["fence"]
    assert problem.startswith("cannot remove 198.18.0.10/24 on lo: netlink cannot be opened: "
                              "importing pyroute2 failed")
    again = seen["installed again"]
    assert again["said"] == "netlink open"
    assert again["log"] == [["INFO", f"netlink open now (after: {text.split(';')[0]})"]]
