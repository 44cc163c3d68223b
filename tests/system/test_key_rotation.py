"""System: the rolling key rotation of docs/security.md ("Keys and rotation") on three real
daemons: every node restarted three times, once per step, and the cluster whole after each
restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemons import NODES, Daemons, daemons_in, settled
from vigil.config import write_key


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path)


@pytest.mark.long
def test_a_rolling_key_rotation_never_splits_the_cluster(daemons: Daemons) -> None:
    for n in NODES:
        daemons.start(n)
    settled(daemons)
    old = daemons.key_file.read_text().strip()
    write_key(daemons.tmp / "new.key")
    new = (daemons.tmp / "new.key").read_text().strip()
    for step in (f"{old}\n{new}\n", f"{new}\n{old}\n", f"{new}\n"):
        # the nodes share the file here: each reads what it holds when it restarts
        daemons.key_file.write_text(step)
        for node in NODES:
            assert daemons.stop_node(node) == 0
            daemons.start(node)
            settled(daemons, holder=None)
    for node in NODES:  # no message failed its MAC on the way
        assert "dropped a unauthenticated message" not in daemons.log(node)
