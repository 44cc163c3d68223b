"""System: the cluster's history on three real daemons, through the command line only: a
failure on one node shows in `vigil status` and `vigil history` asked on another, one
cleanup clears it everywhere and starts one transition, and the history outlives a
restart of the daemon (and is read from its file while no daemon runs)."""

from __future__ import annotations

import datetime
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_harness import wait_for
from tests.support.daemons import NODES, Daemons, daemons_in
from tests.system.test_daemons import all_online, app_pid


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path)


def history(d: Daemons, node: str, *args: str) -> list[dict[str, Any]]:
    out = d.vigil("history", "-c", str(d.config), "-n", node, "--json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def failed_actions(d: Daemons, node: str) -> list[dict[str, Any]] | None:
    st = d.status(node)
    return None if st is None else list(st["failed_actions"])


def test_a_failure_is_seen_from_every_node_and_one_cleanup_clears_it(
        daemons: Daemons) -> None:
    holder = all_online(daemons)
    others = [n for n in NODES if n != holder]
    cfg = str(daemons.config)
    app = app_pid(daemons, holder)
    assert app is not None
    os.kill(app, signal.SIGKILL)  # its monitor finds it gone: restarted in place (1 of 3)

    for node in others:
        wait_for(lambda n=node: failed_actions(daemons, n), 20, f"the failure seen on {node}")
    line = failed_actions(daemons, others[0])[0]  # type: ignore[index]
    assert (line["node"], line["resource"], line["op"], line["fail_count"],
            line["threshold"]) == (holder, "web-app", "monitor", 1, 3)
    assert line["at"][:4].isdigit() and "T" in line["at"]  # a date, ISO 8601
    # on the node where it failed, the counts agree with the line
    st = daemons.status(holder)
    assert st is not None
    assert st["fail_counts"] == {"web": 1} and st["resources"]["web-app"]["fail_count"] == 1
    text = daemons.vigil("status", "-c", cfg, "-n", others[1]).stdout
    assert "Failed resource actions" in text and f"web-app monitor on {holder}" in text
    heard = [x for x in history(daemons, others[1]) if x["node"] == holder and x["heard"]]
    assert any("web-app" in x["text"] for x in heard), heard
    plain = daemons.vigil("history", "-c", cfg, "-n", others[1]).stdout
    assert f" {holder} " in plain and "web-app" in plain and "complete in" not in plain

    before = datetime.datetime.now().astimezone().isoformat()
    out = daemons.vigil("resource", "cleanup", "web", "-c", cfg, "-n", others[1])
    assert out.returncode == 0, out.stderr
    for node in NODES:
        wait_for(lambda n=node: failed_actions(daemons, n) == [], 20, f"cleared on {node}")
    st = daemons.status(holder)
    assert st is not None and st["fail_counts"] == {}
    assert "FAILED" not in daemons.vigil("status", "-c", cfg, "-n", holder).stdout
    time.sleep(3.0)  # room for any further transition a cleanup might wrongly start
    declared = [x for node in NODES for x in history(daemons, node, "--since", before)
                if x["kind"] == "transition_started" and x["master"] == x["node"]
                and not x["heard"]]
    assert [x["reason"] for x in declared] == [
        f"cleanup of web (asked on {others[1]}): fail counts cleared"], declared


def test_the_history_outlives_a_restart_and_is_read_without_a_daemon(
        daemons: Daemons) -> None:
    holder = all_online(daemons)
    other = next(n for n in NODES if n != holder)
    cfg = str(daemons.config)
    app = app_pid(daemons, holder)
    assert app is not None
    os.kill(app, signal.SIGKILL)
    wait_for(lambda: failed_actions(daemons, other), 20, f"the failure seen on {other}")

    assert daemons.stop_node(other) == 0
    out = daemons.vigil("history", "-c", cfg, "-n", other, "--group", "web")
    assert out.returncode == 0, out.stderr
    assert "reading its history file" in out.stderr and "directly" in out.stderr
    assert "web-app" in out.stdout and holder in out.stdout

    daemons.start(other)
    wait_for(lambda: daemons.status(other) is not None, 20, f"{other} back")
    lines = history(daemons, other, "--group", "web")
    assert any(x["heard"] and x["node"] == holder and "web-app" in x["text"] for x in lines)
    assert any("leaving the cluster" in x["text"] for x in history(daemons, other, "--all"))


def test_a_cleanup_forgets_the_failed_diagnostic_of_a_group_that_moved_away(
        daemons: Daemons) -> None:
    holder = all_online(daemons)
    cfg = str(daemons.config)
    killed: set[int] = set()
    def counted() -> int:
        return max((a["fail_count"] for a in failed_actions(daemons, holder) or []), default=0)

    while counted() < 3:  # migration_threshold 3: then web moves
        # (killed while it starts, a start fails: the count goes to 3 at once)
        app = wait_for(lambda: (pid := app_pid(daemons, holder)) not in killed and pid,
                       20, f"web-app (re)started on {holder}")
        assert isinstance(app, int) and len(killed) < 3
        wait_for(lambda: daemons.group_on(holder) == holder, 20, f"web running on {holder}")
        killed.add(app)
        os.kill(app, signal.SIGKILL)
        wait_for(lambda: counted() >= len(killed), 20, f"failure {len(killed)} counted")
    wait_for(lambda: daemons.group_on(holder) not in (None, holder), 30, "web moved away")
    # nothing monitors web-app on the old holder any more: its last word stays until a cleanup
    text = daemons.vigil("status", "-c", cfg, "-n", holder).stdout
    assert "last diagnostic at" in text and "FAILED" in text, text
    assert "(fail count of web there 3 of 3)" in text, text
    out = daemons.vigil("resource", "cleanup", "web-app", "-c", cfg, "-n", holder)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: failed_actions(daemons, holder) == [], 20, "cleared")
    text = daemons.vigil("status", "-c", cfg, "-n", holder).stdout
    assert "FAILED" not in text and "Failed resource actions" not in text, text
