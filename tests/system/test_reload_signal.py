"""System: SIGHUP asks a real `vigil node run` to reload its configuration, as keepalived
and most daemons do; it never kills it."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster_harness import wait_for
from tests.support.daemons import Daemons, daemons_in


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path, nodes=("alpha",))


def test_sighup_asks_for_a_reload_logs_the_answer_and_the_daemon_runs_on(
        daemon: Daemons) -> None:
    daemon.start("alpha")
    daemon.wait_group_on("alpha", "alpha")
    proc = daemon.procs["alpha"]
    proc.send_signal(signal.SIGHUP)
    # the coordinator's answer, whatever it is, is logged with what it said
    answer = wait_for(lambda: next((line for line in daemon.log("alpha").splitlines()
                                    if "reload refused: " in line or "reload: " in line), None),
                      10, "the answer to the reload in the log")
    assert "reload requested by SIGHUP" in daemon.log("alpha")
    assert proc.poll() is None
    level = "ERROR" if "refused" in answer else "INFO"
    assert f" {level} " in answer
    proc.send_signal(signal.SIGHUP)  # and again: the handler stays
    wait_for(lambda: daemon.log("alpha").count("reload requested by SIGHUP") >= 2, 10,
             "a second reload request")
    assert daemon.group_on("alpha") == "alpha"
    assert daemon.stop_node("alpha") == 0
