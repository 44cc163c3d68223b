"""System: a configuration change applied to three real daemons without stopping the
cluster (`vigil config reload`), as docs/operations.md tells an operator to: the new file on
every node, one reload. What changed starts, stops or restarts; what did not is not touched
(its processes keep their PIDs); what cannot change live is refused with what to do."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster_harness import wait_for
from tests.support.daemons import NODES, Daemons, daemons_in

pytestmark = pytest.mark.system

EXTRA = """
[groups.api]
resources = ["api-app"]
prefer = { beta = 0, gamma = 10, alpha = 20 }

[resources.api-app]
type = "application"
params = { start = "sleep 601" }
stop_timeout = "1s"

[groups.db]
resources = ["db-a", "db-b"]
prefer = { gamma = 0, alpha = 10, beta = 20 }

[resources.db-a]
type = "application"
params = { start = "sleep 602" }
stop_timeout = "1s"

[resources.db-b]
type = "dummy"
stop_timeout = "1s"
"""

#: the change: a group added, a timing changed, a resource removed (its group restarts)
CACHE = """
[groups.cache]
resources = ["cache-state"]

[resources.cache-state]
type = "dummy"
stop_timeout = "1s"
"""


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path)


def pid_of(args: str) -> int | None:
    """The PID of the one process running exactly ``args`` (the tests' own sleeps)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True)
    found = [int(line.split(None, 1)[0]) for line in out.stdout.splitlines()
             if line.split(None, 1)[1:] == [args]]
    return found[0] if len(found) == 1 else None


def running(d: Daemons, via: str, *groups: str) -> bool:
    st = d.status(via)
    return st is not None and (st["transition"] or {}).get("phase", "done") == "done" and all(
        g in st["groups"] and st["groups"][g]["state"] == "running" for g in groups)


def start(d: Daemons) -> None:
    d.config.write_text(d.config.read_text() + EXTRA)
    for n in NODES:
        d.start(n)
    wait_for(lambda: running(d, "alpha", "web", "api", "db"), 60, "web, api, db running")


def digest_of(out: str) -> str:
    found = re.search(r"configuration ([0-9a-f]{12})", out)
    assert found, out
    return found.group(1)


def test_a_rolling_change_adds_restarts_and_leaves_the_rest_running(daemons: Daemons) -> None:
    start(daemons)
    before = {args: pid_of(args) for args in ("sleep 600", "sleep 601", "sleep 602")}
    assert all(before.values()), before
    text = daemons.config.read_text()
    changed = (text.replace('step_timeout = "2s"', 'step_timeout = "3s"')
               .replace('resources = ["db-a", "db-b"]', 'resources = ["db-a"]')
               .replace('[resources.db-b]\ntype = "dummy"\nstop_timeout = "1s"\n', "")
               + CACHE)
    daemons.config.write_text(changed)  # one file for the three: "copied to every node"
    out = daemons.vigil("config", "reload", "-c", str(daemons.config), "--via", "beta",
                        "--wait", "60", timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr + daemons.log("beta")[-3000:]
    assert "every node runs configuration" in out.stdout
    target = digest_of(out.stdout)
    for n in NODES:
        st = daemons.status(n)
        assert st is not None
        assert {c["digest"][:12] for c in st["configs"].values()} == {target}, st["configs"]
    wait_for(lambda: running(daemons, "gamma", "web", "api", "db", "cache"), 30,
             "every group running under the new configuration")
    st = daemons.status("alpha")
    assert st is not None
    assert "db-b" not in st["resources"] and st["groups"]["db"]["resources"] == ["db-a"]
    # untouched: the same processes; db restarted (its definition changed)
    assert pid_of("sleep 600") == before["sleep 600"]
    assert pid_of("sleep 601") == before["sleep 601"]
    after_db = wait_for(lambda: pid_of("sleep 602"), 10, "db-a running")
    assert after_db != before["sleep 602"]
    # nothing else happened in between: one switch, no second round of stops
    for n in NODES:
        log = daemons.log(n)
        assert "stopping web" not in log and "stopping api" not in log, log[-2000:]


# kin in make test: tests/unit/test_reconfig.py and tests/integration/test_config_cmds.py refuse the
#  same
@pytest.mark.long
def test_what_cannot_change_live_is_refused_and_a_broken_file_is_named(
        daemons: Daemons) -> None:
    start(daemons)
    good = daemons.config.read_text()
    daemons.config.write_text(good.replace('fence_margin = "200ms"',
                                           'fence_margin = "100ms"'))
    out = daemons.vigil("config", "reload", "-c", str(daemons.config), "--via", "alpha")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "fence_margin changed" in out.stderr and "start them all" in out.stderr
    daemons.config.write_text(good.replace('stop_timeout = "1s"', 'stop_timeout = "soon"', 1))
    out = daemons.vigil("config", "reload", "-c", str(daemons.config), "--via", "alpha")
    assert out.returncode == 2, out.stdout + out.stderr  # the command's own file is broken
    assert "resources.web-state.stop_timeout" in out.stderr and "soon" in out.stderr
    # asked with a good file, the daemon reads its own (broken) one and says what is wrong
    copy = daemons.tmp / "good.toml"
    copy.write_text(good)
    out = daemons.vigil("config", "reload", "-c", str(copy), "--via", "alpha")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "resources.web-state.stop_timeout" in out.stderr and "soon" in out.stderr, \
        out.stderr
    # nothing changed meanwhile
    daemons.config.write_text(good)
    st = daemons.status("beta")
    assert st is not None and all(c["staged"] == "" for c in st["configs"].values())


def test_a_node_started_with_another_file_is_named_and_joins_once_its_file_is_fixed(
        daemons: Daemons) -> None:
    start(daemons)
    text = daemons.config.read_text()
    other = daemons.tmp / "gamma.toml"  # gamma's own file, not the one the others run
    other.write_text(text.replace('step_timeout = "2s"', 'step_timeout = "4s"'))
    daemons.stop_node("gamma")
    with open(daemons.tmp / "gamma.log", "ab") as log:
        daemons.procs["gamma"] = subprocess.Popen(
            [sys.executable, "-m", "vigil.cli.main", "node", "run", "-c", str(other),
             "--node", "gamma"], stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: "kept out of the cluster" in daemons.log("alpha"), 30,
             "alpha says gamma is kept out")
    assert re.search(r"WARNING.*gamma runs a different configuration.*vigil config diff",
                     daemons.log("alpha")), daemons.log("alpha")[-2000:]
    st = daemons.status("alpha")
    assert st is not None and "gamma" in st["mismatched"]
    # the operator puts the cluster's file on gamma and reloads there: it joins
    other.write_text(text)
    out = daemons.vigil("config", "reload", "-c", str(other), "--via", "gamma")
    assert out.returncode == 0, out.stdout + out.stderr + daemons.log("gamma")[-3000:]

    def joined() -> bool:
        st = daemons.status("alpha")
        return st is not None and st["nodes"]["gamma"]["state"] == "online" \
            and not st["mismatched"] and "gamma" in st["members"]

    wait_for(joined, 30, "gamma back in the cluster")
