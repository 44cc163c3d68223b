"""What a node shows and tells of mirrored data: ``ClusterStatus.mirrors`` (built from the
core), `vigil status`, ``--json`` and /ha; and the notifications mirror_lagging /
mirror_caught_up (once per crossing of max_lag) and mirror_diverged."""

from __future__ import annotations

import dataclasses
import json

from tests.support.simconfig import sim_config
from tests.unit.test_core import formed
from vigil.cli.main import format_status
from vigil.cluster.mirrors import CopyFact, MirrorLag, MirrorState
from vigil.cluster.node import NodeCore
from vigil.cluster.view import build_status
from vigil.config import ClusterConfig
from vigil.ha.fs import build_tree
from vigil.notifications import (
    KINDS,
    MirrorCaughtUp,
    MirrorDiverged,
    MirrorLagging,
    Notification,
    from_dict,
    to_dict,
)
from vigil.status import ClusterStatus, CopyStatus, MirrorStatus

T = 1_700_000_000.0
MIRROR = "g0-r0"  # the first resource of group g0, here a mirror


def mirrored(max_lag: str = "30s") -> ClusterConfig:
    """sim_config's group g0 (on alpha, which it prefers) with its first resource a mirror."""
    cfg = sim_config(3, 1)
    resources = {**cfg.resources, MIRROR: dataclasses.replace(
        cfg.resources[MIRROR], type="mirror", params={"max_lag": max_lag})}
    return dataclasses.replace(cfg, resources=resources)


def test_status_json_cli_and_ha_show_the_source_and_a_standby() -> None:
    c = formed(mirrored(), mirror_interval=None)
    assert c.placement() == {"g0": ["alpha"]}
    c.inject("alpha", MirrorState(MIRROR, CopyFact(123, T, "alpha", live=True)))
    c.inject("alpha", MirrorLag(MIRROR, {"beta": 0.8, "gamma": 41.25}))
    c.inject("beta", MirrorState(MIRROR, CopyFact(123, T, "alpha"),
                                 ("g0.beta.57.aside", "g0.beta.58.aside")))
    c.run_for(0.05)

    source = build_status(c.core("alpha"), unix_now=T + 2.0)
    assert source.mirrors == {MIRROR: MirrorStatus(
        group="g0", source="alpha", max_lag=30.0,
        copy=CopyStatus(seq=123, source="alpha", taken=T, age=2.0, live=True), aside=(),
        lags={"beta": 0.8, "gamma": 41.25})}
    text = format_status(source)
    assert (f"Mirror {MIRROR} (group g0): source alpha; beta 0.8 s behind, gamma 41.2 s "
            "behind (BEYOND max_lag 30 s)") in text

    standby = build_status(c.core("beta"), unix_now=T + 2.1)
    mirror = standby.mirrors[MIRROR]
    assert mirror.source == "alpha" and mirror.lags == {}  # only the source knows the lags
    assert mirror.aside == ("g0.beta.57.aside", "g0.beta.58.aside")
    text = format_status(standby)
    assert f"Mirror {MIRROR}: copy 123 from alpha, 2.1 s old\n" in text
    assert "    kept aside: g0.beta.57.aside, g0.beta.58.aside" in text
    assert f"Mirror {MIRROR}: no copy here" in format_status(build_status(c.core("gamma")))

    data = json.loads(json.dumps(standby.to_json()))
    assert data["mirrors"][MIRROR]["copy"]["seq"] == 123
    assert ClusterStatus.from_json(data).mirrors == standby.mirrors
    assert ClusterStatus.from_json(source.to_json()).mirrors == source.mirrors

    tree = build_tree(source)
    d = f"/nodes/alpha/mirrors/{MIRROR}"
    assert tree[f"{d}/source"].content == b"alpha\n"
    assert tree[f"{d}/seq"].content == b"123\n"
    assert tree[f"{d}/live"].content == b"yes\n"
    assert tree[f"{d}/lags"].content == b"beta 0.8\ngamma 41.25\n"
    tree = build_tree(standby)
    assert tree[f"/nodes/beta/mirrors/{MIRROR}/aside"].content == \
        b"g0.beta.57.aside\ng0.beta.58.aside\n"
    assert tree[f"/nodes/beta/mirrors/{MIRROR}/age"].content == b"2.1\n"
    assert f"/nodes/alpha/mirrors/{MIRROR}" not in tree  # a node knows its own copy only


def test_a_status_without_mirrors_reads_back() -> None:
    st = build_status(formed(sim_config(3, 1)).core("alpha"))
    data = st.to_json()
    assert data["mirrors"] == {}
    del data["mirrors"]  # from an older daemon
    assert ClusterStatus.from_json(data).mirrors == {}


def notes(core: NodeCore, event: MirrorLag | MirrorState, now: float) -> list[Notification]:
    return [n for n in core.handle(event, now).notifications
            if isinstance(n, MirrorLagging | MirrorCaughtUp | MirrorDiverged)]


def test_lagging_and_caught_up_are_told_once_per_crossing_of_max_lag() -> None:
    core = NodeCore(mirrored("10s"), "alpha", incarnation=1, now=0.0)
    assert notes(core, MirrorState(MIRROR, CopyFact(1, T, "alpha", live=True)), 0.1) == []
    # the best standby decides: beta within max_lag, gamma far behind
    assert notes(core, MirrorLag(MIRROR, {"beta": 1.0, "gamma": 50.0}), 1.0) == []
    lagging = notes(core, MirrorLag(MIRROR, {"beta": 12.5, "gamma": 50.0}), 2.0)
    assert len(lagging) == 1 and isinstance(lagging[0], MirrorLagging)
    assert (lagging[0].resource, lagging[0].group, lagging[0].lag) == (MIRROR, "g0", 12.5)
    assert "12.5 s behind, beyond max_lag 10 s" in lagging[0].text
    assert notes(core, MirrorLag(MIRROR, {"beta": 20.0, "gamma": None}), 3.0) == []
    assert notes(core, MirrorLag(MIRROR, {"beta": None, "gamma": None}), 3.5) == []
    back = notes(core, MirrorLag(MIRROR, {"beta": 0.5, "gamma": None}), 4.0)
    assert len(back) == 1 and isinstance(back[0], MirrorCaughtUp) and back[0].lag == 0.5
    assert notes(core, MirrorLag(MIRROR, {"beta": 0.7, "gamma": None}), 5.0) == []
    # no standby holds a copy at all: lagging, without a number
    none = notes(core, MirrorLag(MIRROR, {"beta": None, "gamma": None}), 6.0)
    assert len(none) == 1 and isinstance(none[0], MirrorLagging) and none[0].lag is None
    assert "no other node has a copy" in none[0].text
    # once the group stops here, the next source tells; back as the source, it starts afresh
    notes(core, MirrorState(MIRROR, CopyFact(2, T + 9, "alpha")), 7.0)
    notes(core, MirrorState(MIRROR, CopyFact(3, T + 20, "alpha", live=True)), 8.0)
    assert notes(core, MirrorLag(MIRROR, {"beta": 0.5}), 9.0) == []
    assert any("caught up" in text for _, text in core.decisions)


def test_diverged_names_what_a_node_newly_set_aside() -> None:
    core = NodeCore(mirrored(), "beta", incarnation=1, now=0.0)
    first = notes(core, MirrorState(MIRROR, CopyFact(5, T, "alpha"), ("g0.beta.9.aside",)), 0.1)
    assert len(first) == 1 and isinstance(first[0], MirrorDiverged)
    assert first[0].names == ("g0.beta.9.aside",) and first[0].group == "g0"
    assert "g0.beta.9.aside" in first[0].text
    assert notes(core, MirrorState(MIRROR, CopyFact(6, T + 1, "alpha"),
                                   ("g0.beta.9.aside",)), 0.2) == []
    more = notes(core, MirrorState(MIRROR, CopyFact(7, T + 2, "gamma"),
                                   ("g0.beta.9.aside", "g0.beta.data.aside")), 0.3)
    assert len(more) == 1 and isinstance(more[0], MirrorDiverged)
    assert more[0].names == ("g0.beta.data.aside",)


def test_the_mirror_notifications_are_kinds_and_survive_json() -> None:
    assert {"mirror_lagging", "mirror_caught_up", "mirror_diverged"} <= KINDS
    for note in (MirrorLagging(node="a", time=1.0, text="t", resource="r", group="g",
                               lag=None, max_lag=30.0),
                 MirrorCaughtUp(node="a", time=1.0, text="t", resource="r", group="g",
                                lag=0.5, max_lag=30.0),
                 MirrorDiverged(node="a", time=1.0, text="t", resource="r", group="g",
                                names=("x", "y"))):
        assert from_dict(json.loads(json.dumps(to_dict(note)))) == note
