"""The master's step wait backs off after rounds that time out (vigil/cluster/round.py,
docs/protocol.md "Graceful overload"): told as operators see it, in the master's decisions.

alpha leads; a one-way cut from alpha to gamma leaves gamma heard but deaf to the master, so
every round with gamma times out, until gamma is left out as unresponsive. Timing of
``sim_config``: step_timeout 1 s, so the waits are 1, 2, 4 and at most 8 s.
"""

from __future__ import annotations

import random
import re

from tests.support.simconfig import sim_config
from vigil.cluster.events import AdminRequest
from vigil.cluster.round import STEP_BACKOFF_CAP
from vigil.cluster.sim import SimCluster

WAITED = re.compile(r"timed out waiting for .* \(waited ([0-9.]+) s; the next round waits "
                    r"([0-9.]+) s\)")


def waits(c: SimCluster, since: float = 0.0) -> list[tuple[float, float]]:
    """(waited, next wait) of every timed-out round alpha declared again after ``since``."""
    core = c.nodes["alpha"].core
    assert core is not None
    return [(float(m[1]), float(m[2])) for t, d in core.decisions if t >= since
            for m in [WAITED.search(d)] if m]


def deaf_gamma(c: SimCluster) -> None:
    """gamma stops hearing alpha (it still hears beta, and everyone hears it), and an
    operator asks for a move: alpha declares, and gamma never acks."""
    c.block("alpha", "gamma")
    c.request("alpha", AdminRequest("move", group="g0", node="beta"))


def formed() -> SimCluster:
    c = SimCluster(sim_config(3, 2), rng=random.Random(0), fencer="guardian")
    c.run_for(3.0)
    assert c.settled(), c.describe()
    return c


def test_a_round_that_timed_out_makes_the_next_wait_twice_as_long() -> None:
    c = formed()
    deaf_gamma(c)
    c.run_for(4.0)
    assert waits(c)[:2] == [(1.0, 2.0), (2.0, 4.0)], c.describe()


def test_the_wait_never_grows_beyond_the_cap() -> None:
    c = formed()
    deaf_gamma(c)
    c.run_for(60.0)
    seen = waits(c)
    cap = STEP_BACKOFF_CAP * c.config.timing.step_timeout
    assert [w for w, _ in seen[:4]] == [1.0, 2.0, 4.0, 8.0], seen
    assert max(w for pair in seen for w in pair) == cap, seen
    assert len(seen) >= 6  # it kept timing out, every time at the cap


def test_the_deaf_node_is_left_out_of_the_next_view_and_the_move_is_done_without_it() -> None:
    c = formed()
    deaf_gamma(c)
    c.run_for(4.0)
    assert c.placement()["g0"] == ["beta"], c.describe()
    assert ("alpha", "beta") in c.epoch_views.values()


def test_a_completed_round_brings_the_wait_back_to_step_timeout() -> None:
    c = formed()
    deaf_gamma(c)
    c.run_for(20.0)
    assert max(w for w, _ in waits(c)) >= 4.0
    c.heal()
    c.run_for(10.0)
    assert c.settled() and "gamma" in c.epoch_views[c.nodes["gamma"].core.promised], (  # type: ignore[union-attr]
        c.describe())
    since = c.now
    deaf_gamma(c)
    c.run_for(4.0)
    assert waits(c, since)[:1] == [(1.0, 2.0)], c.describe()
