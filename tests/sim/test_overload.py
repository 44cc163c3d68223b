"""Graceful overload (issue 16, part 3): a node that cannot keep up, the master or a member,
does not keep the cluster re-declaring.

A daemon starved of CPU handles every event late (``SimCluster.slow``): messages, its own
timer ticks (so its heartbeats go out late too) and its resource operations' results. With
a lag between one and two step_timeouts every phase that waits on it takes longer than
step_timeout: under a fixed step timeout each round timed out and the master declared again
for as long as the load lasted (the master's case is what 32 daemons on two cores did; with
the backoff disabled, ``STEP_BACKOFF_CAP = 1``, these tests fail so). With the backoff
the second round waits long enough and the cluster forms, with the slow node in it, and
stays formed while the load goes on.
"""

from __future__ import annotations

import random

import pytest

from tests.support.simconfig import sim_config
from vigil.cluster.round import STEP_BACKOFF_CAP
from vigil.cluster.sim import SimCluster

#: the lag (simulated seconds): beyond step_timeout (1 s), and beyond 2 x it
LAGS = [1.5, 3.0]


def rounds_until_settled(step_timeout: float, lag: float) -> float:
    """A bound on when the cluster has formed, counted from the start of the lag: the lag's
    onset looks like a pause of ``lag`` (the others may declare the node lost, then see it
    back: detect, settle), then rounds time out at 1, 2, 4... step_timeouts until one waits
    longer than a phase takes (one lag per slow side, and the retransmit), and that round's
    six phases each take at most that wait."""
    waits, wait = 0.0, step_timeout
    while wait < 2 * lag + 0.2:
        waits += wait
        wait *= 2
    assert wait <= STEP_BACKOFF_CAP * step_timeout
    return lag + 2.0 + waits + 6 * wait


@pytest.mark.parametrize("lag", LAGS)
@pytest.mark.parametrize("slow", ["alpha", "gamma"])  # the master, a member
def test_a_slow_node_does_not_keep_the_cluster_declaring(slow: str, lag: float) -> None:
    c = SimCluster(sim_config(5, 3), rng=random.Random(0), fencer="guardian")
    c.run_for(3.0)
    assert c.settled(), c.describe()
    c.slow(slow, lag, 200.0)
    c.run_for(rounds_until_settled(c.config.timing.step_timeout, lag))
    assert c.settled(), c.describe(history=30)
    # every node is in the epoch, the slow one too, and nothing more is declared while the
    # load goes on (a minute of it)
    epoch = c.nodes["beta"].core.promised  # type: ignore[union-attr]
    assert c.epoch_views[epoch] == tuple(sorted(c.config.node_names)), c.describe()
    declared = len(c.epoch_views)
    c.run_for(60.0)
    assert len(c.epoch_views) == declared and c.settled(), c.describe(history=30)
    assert not c.expected_placement_ok(), c.describe()
    # the load stops: still settled, nothing moves
    before = c.placement()
    c.end_lags()
    c.run_for(10.0)
    assert c.settled() and c.placement() == before and len(c.epoch_views) == declared, (
        c.describe())
