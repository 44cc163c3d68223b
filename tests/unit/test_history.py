"""The cluster's history: every node's failures seen from any node, one transition per
cleanup, the history file, and the times people read."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.simconfig import sim_config
from tests.unit.test_core import FORM, Recorder
from vigil.actors.coordinator import wall_clock
from vigil.cli.history import format_failed_actions, parse_since
from vigil.cluster.events import ClearFailures, GroupFailed, Output
from vigil.cluster.history import ClusterHistory, bookkeeping, significant
from vigil.cluster.sim import SimNode
from vigil.cluster.view import build_status
from vigil.cluster.wire import News, RemoteProtocolError, decode, to_message
from vigil.local.history import HistoryFile, entry, read_history
from vigil.messages import Message
from vigil.notifications import (
    Decision,
    FencingRequested,
    GroupStateChanged,
    Notification,
    TransitionCompleted,
    TransitionStarted,
)
from vigil.status import iso_time, local_time, parse_time


class Listener(Recorder):
    """A Recorder that keeps every node's notifications, and what each heard of others."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.notes: list[Notification] = []
        self.heard: dict[str, list[Notification]] = {}
        super().__init__(*args, **kwargs)

    def _apply(self, node: SimNode, out: Output) -> None:
        self.notes += out.notifications
        self.heard.setdefault(node.name, []).extend(out.heard)
        super()._apply(node, out)

    def declared(self, since: int) -> list[TransitionStarted]:
        return [n for n in self.notes[since:]
                if isinstance(n, TransitionStarted) and n.master == n.node]


def listening(config: Any) -> Listener:
    c = Listener(config)
    c.run_for(FORM)
    assert c.settled(), c.describe()
    c.notes, c.heard = [], {}
    return c


def _fail_on(c: Listener, node: str) -> None:
    c._deliver(node, GroupFailed("g1", "monitor of g1-r1: not running", resource="g1-r1"))
    c.run_for(3.0)


# ---- one cleanup, one transition -------------------------------------------------------------


@pytest.mark.parametrize("asked_on", ["alpha", "beta", "gamma"])
def test_one_cleanup_starts_one_transition_with_its_reason(asked_on: str) -> None:
    # migration_threshold 1: g1 fails on its node and moves; then on its new node too, so
    # two nodes have a fail count to clear
    c = listening(sim_config(3, 3, group_chain=False, migration_threshold=1))
    first = c.where()["g1"]
    assert first is not None
    _fail_on(c, first)
    second = c.where()["g1"]
    assert second not in (first, None)
    _fail_on(c, second)
    assert c.core(first).fail_counts() == {"g1": 1} == c.core(second).fail_counts()
    since = len(c.notes)
    c._deliver(asked_on, ClearFailures("g1"))
    c.run_for(5.0)
    declared = c.declared(since)
    assert [d.reason for d in declared] == [
        f"cleanup of g1 (asked on {asked_on}): fail counts cleared"]
    assert all(not c.core(n).fail_counts() for n in c.nodes)
    assert c.settled()


def test_a_failure_is_seen_on_every_node_and_a_cleanup_clears_it_everywhere() -> None:
    c = listening(sim_config(3, 3, group_chain=False, migration_threshold=2))
    holder = c.where()["g1"]
    assert holder is not None
    _fail_on(c, holder)  # restarted in place: no move
    for n in c.nodes:
        st = build_status(c.core(n))
        assert [(a.node, a.resource, a.op, a.fail_count, a.threshold)
                for a in st.failed_actions] == [(holder, "g1-r1", "monitor", 1, 2)], n
        assert "not running" in st.failed_actions[0].reason
        assert any(e.node == holder and "g1-r1" in e.text for e in st.events), n
        # the resource's own count agrees with its line (on the node where it failed)
        assert build_status(c.core(holder)).resources["g1-r1"].fail_count == 1
    others = [n for n in c.nodes if n != holder]
    assert all(any(isinstance(h, GroupStateChanged) and h.node == holder
                   for h in c.heard[n]) for n in others)
    lines = format_failed_actions(build_status(c.core(others[0])))
    assert f"g1-r1 monitor on {holder}" in lines[1] and "fail count of g1 there 1 of 2" in lines[1]
    c._deliver(others[1], ClearFailures("g1"))
    c.run_for(2.0)
    assert all(not build_status(c.core(n)).failed_actions for n in c.nodes)
    assert build_status(c.core(holder)).resources["g1-r1"].fail_count == 0


# ---- news ------------------------------------------------------------------------------------


def test_news_crosses_the_wire_and_a_copy_is_taken_once() -> None:
    note = GroupStateChanged(node="alpha", time=12.5, text="g1-r1 (g1) failed on alpha: gone",
                             group="g1", state="failed", reason="gone", resource="g1-r1",
                             op="monitor", fail_count=2)
    sent = ClusterHistory("alpha", 7).local([note])
    assert len(sent) == 1
    body = decode(to_message(sent[0], "alpha")).body
    assert body == News(1, 7, 0, GroupStateChanged(
        node="", time=0.0, text=note.text, group="g1", state="failed", reason="gone",
        resource="g1-r1", op="monitor", fail_count=2))
    assert isinstance(body, News)
    beta = ClusterHistory("beta", 3)
    heard = beta.heard("alpha", body, now=100.0)
    assert heard is not None and heard.node == "alpha" and heard.time == 100.0
    assert beta.heard("alpha", body, now=101.0) is None  # the same origin, life and number
    assert list(beta.failed) == [("alpha", "g1", "g1-r1", "monitor")]
    beta.clear("g1")
    assert not beta.failed


def test_a_fencing_wait_heard_ends_when_it_ends_on_its_sender() -> None:
    wait = FencingRequested(node="alpha", time=50.0, member="gamma", text="waiting 4 s",
                            until=54.0)
    sent = ClusterHistory("alpha", 1).local([wait])
    body = decode(to_message(sent[0], "alpha")).body
    assert isinstance(body, News)
    heard = ClusterHistory("beta", 1).heard("alpha", body, now=1000.0)  # another clock
    assert isinstance(heard, FencingRequested)
    assert (heard.time, heard.until) == (1000.0, 1004.0)


def test_malformed_news_is_the_peers_fault() -> None:
    for note in ("[1]", "{", '{"kind": "decision"}', '{"text": 3}'):
        msg = Message(type="news", sender="alpha", fields={"n": "1", "inc": "1", "age": "0",
                                                           "note": note})
        with pytest.raises(RemoteProtocolError):
            decode(msg)


def test_what_is_told_and_what_is_bookkeeping() -> None:
    declared = TransitionStarted(node="alpha", time=1, text="t", epoch="2.alpha",
                                 master="alpha", reason="r")
    joined = TransitionStarted(node="beta", time=1, text="t", epoch="2.alpha", master="alpha")
    assert significant(declared, "alpha") and not significant(joined, "beta")
    assert not significant(declared, "beta")  # only a node's own
    assert significant(Decision(node="a", time=1, text="t", topic="request"), "a")
    assert not significant(Decision(node="a", time=1, text="t", topic="transition"), "a")
    assert bookkeeping(Decision(node="a", time=1, text="epoch 2.a complete in 0.01s",
                                topic="transition"))
    assert bookkeeping(TransitionCompleted(node="a", time=1, text="t", epoch="2.a"))
    assert not bookkeeping(declared)


# ---- the history file ------------------------------------------------------------------------


def _line(t: float, text: str, **kw: Any) -> dict[str, Any]:
    note: Notification = (Decision(node="alpha", time=t, text=text, topic="transition")
                          if kw.pop("bookkeeping", False) else
                          GroupStateChanged(node=kw.pop("node", "alpha"), time=t, text=text,
                                            group=kw.pop("group", "web"), state="failed"))
    return entry(note, heard=kw.pop("heard", False))


def test_the_history_file_filters_rotates_and_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    now = time.time()
    f = HistoryFile(path)
    f.append(_line(now - 7200, "old failure"))
    f.append(_line(now - 60, "epoch 3.alpha complete in 0.010s", bookkeeping=True))
    f.append(_line(now - 30, "db failed", group="db", node="beta", heard=True))
    f.append(_line(now - 10, "web failed again"))
    f.close()
    lines, more = read_history(path)
    assert [x["text"] for x in lines] == ["old failure", "db failed", "web failed again"]
    assert more == 0
    assert lines[1]["heard"] is True and lines[1]["node"] == "beta"
    assert len(read_history(path, everything=True)[0]) == 4
    assert [x["text"] for x in read_history(path, since=now - 3600)[0]] == [
        "db failed", "web failed again"]
    assert [x["text"] for x in read_history(path, group="db")[0]] == ["db failed"]
    assert read_history(path, limit=1) == ([lines[-1]], 2)
    # a date with an offset, parsed back
    when = parse_time(lines[0]["time"])
    assert when is not None and abs(when - (now - 7200)) < 0.01
    assert "+" in lines[0]["time"] or "-" in lines[0]["time"][19:]

    small = HistoryFile(path, rotate_bytes=600)  # a restart: appends to what is there
    for i in range(10):
        small.append(_line(now, f"line {i}"))
    small.close()
    assert path.stat().st_size <= 600
    assert path.with_name("history.jsonl.1").exists()
    kept = [x["text"] for x in read_history(path)[0]]
    assert kept[-1] == "line 9" and "old failure" not in kept  # the oldest went


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(_line(time.time(), "whole")) + "\n" + '{"time": "2026-')
    assert [x["text"] for x in read_history(path)[0]] == ["whole"]


# ---- times people read -----------------------------------------------------------------------


def test_since_takes_spans_and_iso_times() -> None:
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2h", now=10000.0) == 2800.0
    assert parse_since("1d", now=90000.0) == 3600.0
    aware = parse_since("2026-12-01T17:40:00+00:00")
    assert aware == datetime.datetime(2026, 12, 1, 17, 40, tzinfo=datetime.UTC).timestamp()
    assert parse_since("2026-12-01") == datetime.datetime(2026, 12, 1).timestamp()
    with pytest.raises(ValueError, match="neither a span"):
        parse_since("yesterday")


def test_iso_times_have_a_date_and_an_offset() -> None:
    text = iso_time(1_700_000_000.25)
    when = datetime.datetime.fromisoformat(text)
    assert when.tzinfo is not None and when.timestamp() == 1_700_000_000.25
    assert local_time(text) == datetime.datetime.fromtimestamp(1_700_000_000).strftime(
        "%Y-%m-%d %H:%M:%S")
    assert local_time("12:00:01") == "12:00:01"  # an older daemon's: shown as it is


def test_a_fencing_wait_is_told_in_wall_clock_time() -> None:
    note = FencingRequested(node="alpha", time=100.0, member="beta", text="waiting 12 s for "
                            "beta to be off", detail="", until=112.0)
    offset = 1_700_000_000.0
    wall = wall_clock(note, offset)
    assert isinstance(wall, FencingRequested)
    assert wall.time == offset + 100 and wall.until == offset + 112
    assert wall.text.endswith(f"(until {local_time(iso_time(offset + 112))})")
    assert "112.000" not in wall.text
