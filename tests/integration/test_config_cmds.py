"""`vigil config diff` against a real node runtime in this process (its real control
socket): what differs from the running configuration, with diff(1)'s exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest
from click.testing import CliRunner

from tests.support.cluster_harness import MemoryCluster, cluster_toml
from vigil.cli.main import cli
from vigil.config import load_key, loads

DB = """
[groups.db]
resources = ["db-data"]

[resources.db-data]
type = "dummy"
"""


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Path]:
    """A cluster file whose node alpha runs (alone: no quorum, which the diff needs not)."""
    path = tmp_path / "cluster.toml"
    path.write_text(cluster_toml(tmp_path))
    cfg = loads(path.read_text(), path)
    mc = MemoryCluster(cfg, load_key(cfg))
    mc.start("alpha")
    try:
        yield path
    finally:
        mc.stop()
        pykka.ActorRegistry.stop_all(timeout=10)


def diff(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["config", "diff", *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_running_file_does_not_differ(running: Path) -> None:
    code, out, _ = diff("-c", str(running), "-n", "alpha")
    assert code == 0, out
    assert out.startswith(f"no difference: node alpha runs the configuration of {running}")


def test_a_changed_file_shows_every_difference_and_exits_1(running: Path,
                                                           tmp_path: Path) -> None:
    text = running.read_text().replace('"0.05s", stop_delay', '"0.1s", stop_delay', 1)
    text = text.replace('heartbeat_interval = "50ms"', 'heartbeat_interval = "40ms"')
    changed = tmp_path / "changed.toml"
    changed.write_text(text + DB)
    code, out, _ = diff("-c", str(running), "-n", "alpha", str(changed))
    assert code == 1, out
    assert out.splitlines()[:5] == [
        "+ groups.db (new)",
        "+ resources.db-data (new)",
        '~ resources.web-ip.params.start_delay: "0.05s" -> "0.1s"',
        '~ timing.heartbeat_interval: "50ms" -> "40ms"',
        f"4 differences between what node alpha runs (digest "
        f"{loads(running.read_text(), running).digest[:12]}) and {changed} (digest "
        f"{loads(changed.read_text(), changed).digest[:12]})"]
    # a shorter heartbeat shortens the lease it derives: not live, and what to do instead
    assert out.splitlines()[5] == "cannot be applied live:"
    assert "timing.lease_time changed" in out and "start them all with the new file" in out
    live = tmp_path / "live.toml"
    live.write_text(running.read_text() + DB)
    code, out, _ = diff("-c", str(running), "-n", "alpha", str(live))
    assert code == 1
    assert out.splitlines()[-1] == ("applies live with `vigil config reload` once the file "
                                    "is on every node (adds db)")
    code, out, _ = diff("-c", str(running), "-n", "alpha", "--json", str(changed))
    assert code == 1
    assert json.loads(out)[0] == {"path": "groups.db", "kind": "added",
                                  "new": {"resources": ["db-data"]}}


def test_an_invalid_file_exits_2_with_its_problems(running: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(running.read_text().replace('depends_on = ["web-ip"]',
                                               'depends_on = ["web-ipp"]'))
    code, out, err = diff("-c", str(running), "-n", "alpha", str(bad))
    assert code == 2
    assert out == ""
    assert f"{bad}: resources.web-data.depends_on" in err and "web-ipp" in err


def test_no_daemon_exits_3(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(cluster_toml(tmp_path))
    code, _, err = diff("-c", str(path), "-n", "alpha")
    assert code == 3
    assert "no daemon for node alpha" in err
