"""The status tree: its JSON reads back as the same tree, and the faces that read it from a
control socket refuse an answer that holds none, saying which node's daemon gave it."""

from __future__ import annotations

import errno
import json
import random
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.support.cluster_harness import cluster_toml
from tests.support.simconfig import sim_config
from vigil.api import Client, MalformedAnswer
from vigil.cli.main import cli
from vigil.cluster.sim import SimCluster
from vigil.cluster.view import ResourceFacts, build_status
from vigil.config import load
from vigil.ha.fs import HaError, StatusSource
from vigil.status import ClusterStatus, Operation


def simulated_status() -> ClusterStatus:
    cluster = SimCluster(sim_config(3, 2), rng=random.Random(1))
    cluster.run_for(3.0)
    core = cluster.nodes["alpha"].core
    assert core is not None
    resource = next(iter(core.config.resources))
    failed = Operation(ok=False, op="monitor", state="FAILED", reason="gone", at="12:00:01")
    facts = ResourceFacts(last_failure={resource: failed}, last_diagnostic={resource: failed},
                          messages={"hb": 3})
    return build_status(core, facts)


def test_the_json_of_a_status_reads_back_as_the_same_status() -> None:
    st = simulated_status()
    assert st.groups and st.resources and st.nodes and st.members  # a settled cluster
    assert any(r.last_failure is not None for r in st.resources.values())
    assert ClusterStatus.from_json(st.to_json()) == st
    # as a client gets it: through JSON text, where tuples become lists
    wire = json.loads(json.dumps(st.to_json()))
    assert ClusterStatus.from_json(wire) == st
    assert ClusterStatus.from_json(wire).to_json() == wire


# ---- a daemon that answers with no status tree ----------------------------------------------


@contextmanager
def serve_answers(path: Path, answer: dict[str, Any]) -> Iterator[None]:
    """A control socket at ``path`` that answers every request with ``answer``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.makefile("rb").readline()
                conn.sendall(json.dumps(answer).encode() + b"\n")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)
        path.unlink(missing_ok=True)


ANSWERS: dict[str, dict[str, Any]] = {
    "keys missing": {"ok": True, "status": {"cluster": "test", "node": "beta"}},
    "not an object": {"ok": True, "status": ["cluster", "test"]},
    "no status": {"ok": True},
}


@pytest.fixture(params=sorted(ANSWERS))
def foreign_daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    config = tmp_path / "cluster.toml"
    config.write_text(cluster_toml(tmp_path))
    with serve_answers(load(config).nodes["beta"].control_socket, ANSWERS[request.param]):
        yield config


WHY = "node beta's daemon answered 'status' with no status tree this vigil can read"


@pytest.mark.parametrize("as_json", [False, True])
def test_the_cli_refuses_a_malformed_status_answer_with_a_clear_message(
        foreign_daemon: Path, as_json: bool) -> None:
    result = CliRunner().invoke(cli, ["status", "-c", str(foreign_daemon), "-n", "beta",
                                      *(["--json"] if as_json else [])])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # said, not a traceback
    assert f"vigil: {WHY} (" in result.output
    assert "same version of Vigil" in result.output


def test_the_api_and_ha_refuse_a_malformed_status_answer(foreign_daemon: Path) -> None:
    with pytest.raises(MalformedAnswer, match=WHY):
        Client(foreign_daemon, "beta").status()
    source = StatusSource(load(foreign_daemon).nodes["beta"].control_socket, "beta")
    with pytest.raises(HaError) as caught:
        source.tree()
    assert caught.value.errno == errno.EIO
    assert str(caught.value.strerror).startswith(WHY)
