"""vigil.config_diff: the differences between two cluster documents, as `vigil config diff`
prints them."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.support.cluster_harness import cluster_toml
from vigil.config import loads
from vigil.config_diff import ABSENT, Difference, apply, differences

KEYS = st.text(alphabet="abcxyz-_.", min_size=1, max_size=4)
SCALARS = st.one_of(
    st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, width=32),
    st.text(max_size=3), st.dates(), st.just(math.inf))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=12)
DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=4)


@given(DOCUMENTS)
def test_a_document_does_not_differ_from_itself(doc: dict[str, Any]) -> None:
    assert differences(doc, doc) == []


@given(DOCUMENTS, DOCUMENTS)
def test_applying_the_differences_to_the_old_document_gives_the_new(
        old: dict[str, Any], new: dict[str, Any]) -> None:
    diffs = differences(old, new)
    assert apply(old, diffs) == new
    assert apply(old, diffs) is not old


@given(DOCUMENTS, DOCUMENTS)
def test_every_difference_renders_on_one_line_and_as_json(
        old: dict[str, Any], new: dict[str, Any]) -> None:
    for d in differences(old, new):
        line = d.render()
        assert "\n" not in line and line[0] in "+-~"
        json.dumps(d.to_json())


OLD_TEXT = """
[cluster]
name = "c"

[timing]
heartbeat_interval = "200ms"

[nodes.alpha]
links = [{ name = "lan0", address = "10.0.0.1", port = 7000 }]

[groups.web]
resources = ["web-ip"]
stickiness = 100

[resources.web-ip]
type = "ip"
params = { address = "10.0.0.10/24" }

[resources.old-ip]
type = "ip"
params = { address = "10.0.0.11/24" }

[fence_devices.ipmi]
agent = "fence_ipmilan"
params = { password = "s3cret" }
"""
OLD = tomllib.loads(OLD_TEXT)


def test_changes_additions_and_removals_read_as_the_file_says() -> None:
    text = OLD_TEXT.replace('"200ms"', '"100ms"').replace("7000", "7001")
    text = text.replace("stickiness = 100", 'stickiness = 200\n\n[groups.db]\nresources = []')
    text = text.replace('10.0.0.10/24', '10.0.0.12/24').replace('"s3cret"', '"other"')
    text = text.replace('[resources.old-ip]\ntype = "ip"\nparams = { address = "10.0.0.11/24" }',
                        "")
    new = tomllib.loads(text)
    lines = [d.render() for d in differences(OLD, new)]
    assert lines == [
        '~ fence_devices.ipmi.params.password: (hidden) -> (hidden)',
        '+ groups.db (new)',
        '~ groups.web.stickiness: 100 -> 200',
        '~ nodes.alpha.links[0].port: 7000 -> 7001',
        '- resources.old-ip (removed)',
        '~ resources.web-ip.params.address: "10.0.0.10/24" -> "10.0.0.12/24"',
        '~ timing.heartbeat_interval: "200ms" -> "100ms"',
    ]
    assert "s3cret" not in json.dumps([d.to_json() for d in differences(OLD, new)])


def test_values_differ_by_type_and_lists_item_by_item() -> None:
    diffs = differences({"a": 1, "b": ["x", "y", "z"], "c": True},
                        {"a": 1.0, "b": ["x", "z"], "c": 1, "d": [1]})
    assert [d.render() for d in diffs] == [
        "~ a: 1 -> 1.0", '~ b[1]: "y" -> "z"', '- b[2]: "z" (removed)', "~ c: true -> 1",
        "+ d: [1] (new)"]
    assert diffs[2].old == "z" and diffs[2].new is ABSENT
    assert diffs[2].to_json() == {"path": "b[2]", "kind": "removed", "old": "z"}


def test_odd_keys_are_quoted_and_dates_shown_in_iso_8601() -> None:
    when = datetime.datetime(2026, 12, 1, 17, 40, tzinfo=datetime.UTC)
    (d,) = differences({"a.b": {"at": when}}, {"a.b": {"at": when.replace(hour=18)}})
    assert d.path == '"a.b".at'
    assert d.render() == '~ "a.b".at: 2026-12-01T17:40:00+00:00 -> 2026-12-01T18:40:00+00:00'
    assert d.to_json()["new"] == "2026-12-01T18:40:00+00:00"
    assert Difference(("x",), ABSENT, {"k": 1}).render() == "+ x (new)"


def test_a_configuration_keeps_the_document_it_was_read_from(tmp_path: Path) -> None:
    text = cluster_toml(tmp_path)
    cfg = loads(text, tmp_path / "cluster.toml")
    assert cfg.document == tomllib.loads(text)
    assert "document" not in repr(cfg)
    other = dataclasses.replace(cfg, document={})
    assert other == cfg  # what the file says is the configuration; the document only shows it
