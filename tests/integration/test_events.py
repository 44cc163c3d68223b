"""The local event stream, the notification API and alert commands, as users meet them.

Three real node actor systems in this process over the in-memory network (as in
test_actors_memory.py); each has its real event socket (ZMTP PUB over ipc) under the test's
directory. Subscribers run as separate processes (a script using ``vigil.api.subscribe`` and
``vigil events``); alert commands are real shell scripts.

ZeroMQ needs a moment after connecting before a subscriber receives anything; tests first
publish "sync" notifications through the notifier until every subscriber has printed one.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pykka
import pytest
import zmq
from click.testing import CliRunner

from tests.support.cluster_harness import MemoryCluster, cluster_toml, wait_for
from tests.support.local_users import peak_memory, reset_peak_memory
from vigil.actors.alerts import AlertsActor
from vigil.actors.base import Directory
from vigil.actors.node import NodeRuntime
from vigil.api import (
    Decision,
    EventStream,
    GroupMoved,
    GroupStateChanged,
    Missed,
    NodeLost,
    Notification,
    register_notification_actor,
    subscribe,
)
from vigil.cli.main import cli
from vigil.config import AlertConfig, load_key, loads
from vigil.local.limits import EVENT_BACKLOG, LOG_BURST
from vigil.local.protocol import request
from vigil.resources.proc import group_members, pid_alive

ROOT = Path(__file__).resolve().parents[2]
FLOOD = ROOT / "tests" / "support" / "local_flood.py"
# `python -m vigil.cli.main` would run main() before the module's last lines add `events`.
VIGIL = [sys.executable, "-c", "from vigil.cli.main import main; main()"]

SUBSCRIBER = """
import json, sys
from vigil.api import subscribe, to_dict
with subscribe(sys.argv[1], sys.argv[2], timeout=60) as events:
    for note in events:
        print(json.dumps(to_dict(note)), flush=True)
        if note.kind == "decision" and note.topic == "stop":
            break
"""


class Listener(pykka.ThreadingActor):
    """An application's in-process notification actor."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Notification] = []
        self.lock = threading.Lock()

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Notification):
            with self.lock:
                self.seen.append(message)

    def notes(self) -> list[Notification]:
        with self.lock:
            return list(self.seen)


class Lines:
    """A subprocess whose stdout lines are collected as they come."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=ROOT, text=True)
        self.lines: list[str] = []
        self.lock = threading.Lock()
        assert self.proc.stdout is not None
        self.reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self.reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def json(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(line) for line in self.lines]

    def finish(self, timeout: float = 15.0) -> tuple[int, str]:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.kill()
        self.reader.join(timeout=5)
        assert self.proc.stderr is not None
        return self.proc.returncode, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def publish(rt: NodeRuntime, topic: str, text: str = "", **fields: str) -> None:
    rt.directory.tell("notifier", Decision(node=rt.node, time=time.time(), topic=topic,
                                           text=text or topic,
                                           fields=tuple(sorted(fields.items()))))


def published(rt: NodeRuntime) -> None:
    """Returns once the notifier has handled everything told to it before (and so has
    bound its socket: actors start on their own threads, after NodeRuntime.start())."""
    ref = rt.directory.get("notifier")
    assert ref is not None
    ref.ask("flush", timeout=30)


def pad_until(rt: NodeRuntime, done: Any, what: str) -> None:
    """Publish "pad" notifications until ``done()``."""
    def padded() -> bool:
        if done():
            return True
        for _ in range(20):
            publish(rt, "pad")
        return False

    wait_for(padded, 30, what, interval=0.05)


def first_of(events: EventStream, rt: NodeRuntime) -> Notification:
    """The first notification ``events`` receives, publishing "sync" until one comes."""
    stop = threading.Event()

    def keep_publishing() -> None:
        while not stop.wait(0.05):
            publish(rt, "sync")

    thread = threading.Thread(target=keep_publishing, daemon=True)
    thread.start()
    try:
        return next(events)
    finally:
        stop.set()
        thread.join(timeout=5)


def topics(lines: list[dict[str, Any]], topic: str) -> list[dict[str, Any]]:
    return [d for d in lines if d["kind"] == "decision" and d.get("topic") == topic]


def sync(rt: NodeRuntime, *subscribers: Lines) -> None:
    """Publish "sync" notifications until every subscriber has printed one."""
    def all_synced() -> bool:
        publish(rt, "sync")
        return all(topics(s.json(), "sync") for s in subscribers)

    wait_for(all_synced, 30, "the subscribers to receive notifications", interval=0.2)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Any]:
    clusters: list[MemoryCluster] = []

    def make(extra: str = "") -> MemoryCluster:
        text = cluster_toml(tmp_path, extra=extra)
        (tmp_path / "cluster.toml").write_text(text)
        cfg = loads(text, tmp_path / "cluster.toml")
        mc = MemoryCluster(cfg, load_key(cfg))
        clusters.append(mc)
        return mc

    try:
        yield make
    finally:
        for mc in clusters:
            mc.stop()
        pykka.ActorRegistry.stop_all(timeout=10)


def running_on(mc: MemoryCluster, group: str) -> list[str]:
    return [n for n in mc.holders(group)
            if mc.status(n)["groups"][group]["state"] == "running"]


def test_out_of_process_subscribers_see_a_failover_as_an_in_process_actor_does(
        make_cluster: Any, tmp_path: Path) -> None:
    mc = make_cluster()
    config = str(tmp_path / "cluster.toml")
    beta = mc.start("beta")
    published(beta)  # its event socket is bound
    listener = Listener.start()
    register_notification_actor(listener, runtime=beta)
    mc.start("alpha")
    mc.start("gamma")
    wait_for(lambda: running_on(mc, "web") == ["alpha"], 15, "web on alpha")
    script = Lines([sys.executable, "-c", SUBSCRIBER, config, "beta"])
    cli_events = Lines([*VIGIL, "events", "-c", config, "-n", "beta", "--json",
                        "--count", "100"])
    try:
        sync(beta, script, cli_events)
        published(beta)
        last_sync = max(n.seq for n in listener.proxy().notes().get()
                        if isinstance(n, Decision) and n.topic == "sync")
        mc.kill("alpha")

        def moved() -> bool:
            return any(isinstance(n, GroupStateChanged) and n.group == "web"
                       and n.state == "running" for n in listener.proxy().notes().get())

        wait_for(moved, 20, "web running on beta")
        publish(beta, "stop")
        published(beta)
        script_code, script_err = script.finish()
        assert script_code == 0, script_err
        # `vigil events --count 100` runs until it has printed 100 notifications
        pad_until(beta, lambda: cli_events.proc.poll() is not None,
                  "vigil events to print its count")
        cli_code, cli_err = cli_events.finish()
        assert cli_code == 0, cli_err
    finally:
        script.kill()
        cli_events.kill()

    in_process = listener.proxy().notes().get()
    stop = next(n.seq for n in in_process if isinstance(n, Decision) and n.topic == "stop")
    expected = [(n.seq, n.kind, n.text) for n in in_process if last_sync < n.seq <= stop]
    kinds = [k for _, k, _ in expected]
    for kind in ("node_lost", "transition_started", "group_moved", "transition_completed"):
        assert kind in kinds, kinds
    assert kinds.index("node_lost") < kinds.index("transition_started") < kinds.index(
        "group_moved")
    for who, lines in (("subscribe()", script.json()), ("vigil events", cli_events.json())):
        got = [(d["seq"], d["kind"], d["text"]) for d in lines if last_sync < d["seq"] <= stop]
        assert got == expected, who
        assert not [d for d in lines if d["kind"] == "missed"], who
    # the typed objects carry the same fields on both sides
    lost = next(d for d in script.json() if d["kind"] == "node_lost")
    assert lost["member"] == "alpha" and lost["clean"] is False and lost["node"] == "beta"
    move = next(n for n in in_process if isinstance(n, GroupMoved) and n.seq > last_sync)
    assert (move.from_node, move.to_node) == ("alpha", "beta")
    assert len(cli_events.json()) == 100


def test_a_slow_subscriber_is_told_how_many_it_missed_and_the_rest_arrive_in_order(
        make_cluster: Any) -> None:
    mc = make_cluster()
    alpha = mc.start("alpha")
    published(alpha)  # its event socket is bound
    path = mc.config.nodes["alpha"].event_socket
    with EventStream(path, hwm=10, timeout=10) as events:
        first = first_of(events, alpha)  # connected: now only slowness loses notifications
        total = 20_000
        for i in range(total):  # published while this subscriber does not read
            publish(alpha, "flood", i=str(i))
        published(alpha)
        got: list[Notification] = [first]
        drained = threading.Event()

        def read() -> None:
            for note in events:
                got.append(note)
                if isinstance(note, Decision) and note.topic == "drain":
                    drained.set()
                if isinstance(note, Decision) and note.topic == "end":
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # ZeroMQ dropped what did not fit; once the backlog is read, notifications flow again
        wait_for(lambda: drained.is_set() or publish(alpha, "drain"), 30, "the backlog read",
                 interval=0.1)
        published(alpha)
        for i in range(1000):
            publish(alpha, "tail", i=str(i))
        publish(alpha, "end")
        reader.join(timeout=30)
        assert not reader.is_alive()
    missed = [n for n in got if isinstance(n, Missed)]
    notes = [n for n in got if not isinstance(n, Missed)]
    assert missed and all(m.count > 0 for m in missed)
    seqs = [n.seq for n in notes]
    assert seqs == sorted(set(seqs))  # in order, no duplicates
    # every notification was either received or counted as missed, right where it was lost
    assert len(notes) + sum(m.count for m in missed) == seqs[-1] - seqs[0] + 1
    for i, note in enumerate(got):
        if isinstance(note, Missed):
            assert got[i + 1].seq - got[i - 1].seq - 1 == note.count
    flood = [int(n.field("i")) for n in notes if isinstance(n, Decision) and n.topic == "flood"]
    assert flood == sorted(flood) and 0 < len(flood) < total
    tail = [int(n.field("i")) for n in notes if isinstance(n, Decision) and n.topic == "tail"]
    assert tail == list(range(1000))
    after = got[next(i for i, n in enumerate(got) if isinstance(n, Decision)
                     and n.topic == "tail"):]
    assert not any(isinstance(n, Missed) for n in after)
    assert events.missed == sum(m.count for m in missed)


def test_a_subscriber_that_never_reads_holds_a_bounded_backlog_and_the_others_get_all(
        make_cluster: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="vigil.events")  # not a line per notification
    mc = make_cluster()
    alpha = mc.start("alpha")
    published(alpha)  # its event socket is bound
    path = mc.config.nodes["alpha"].event_socket
    # a ZMTP reader of its own that subscribes to everything, then never reads
    idle = Lines([sys.executable, str(FLOOD), "ev-idle", str(path), "300"])
    try:
        wait_for(lambda: idle.lines, 30, "the idle reader to subscribe")
        with EventStream(path, timeout=30) as events:
            first_of(events, alpha)
            seen: list[int | str] = []  # the flood's numbers, and what else came (not kept)

            def read() -> None:
                for note in events:
                    if isinstance(note, Decision) and note.topic == "flood":
                        seen.append(int(note.field("i")))
                    elif isinstance(note, Decision) and note.topic == "end":
                        return
                    elif not isinstance(note, Decision) or note.topic != "sync":
                        seen.append(note.kind)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            before = reset_peak_memory(os.getpid())
            # 80 MB of notifications: the idle reader would hold all of them under a limit in
            # messages only (ZeroMQ's high-water mark, 10,000)
            text, total, batch = "x" * 8000, 10_000, 250
            for sent in range(batch, total + 1, batch):
                for i in range(sent - batch, sent):
                    publish(alpha, "flood", text=text, i=str(i))
                wait_for(lambda n=sent: len(seen) >= n, 30, "the reading subscriber to keep up")
            grew = peak_memory(os.getpid()) - before
            publish(alpha, "end")
            reader.join(timeout=30)
            assert not reader.is_alive()
    finally:
        idle.kill()
    print(f"\npeak memory grew by {grew / 1048576:.1f} MiB for {total} notifications of "
          f"{len(text)} bytes; the backlog of one reader is at most {EVENT_BACKLOG} bytes")
    assert grew < EVENT_BACKLOG + 24 * 1024 * 1024
    assert seen == list(range(total))  # in order, and no Missed
    assert "does not read its notifications" in caplog.text
    assert "more suppressed" in caplog.text or caplog.text.count("does not read") <= LOG_BURST


def test_the_stream_tells_restarts_from_gaps_and_skips_malformed_messages(
        tmp_path: Path) -> None:
    """Against a PUB socket of the test's own: what a restarted or confused daemon sends."""
    path = tmp_path / "events.sock"
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"ipc://{path}")

    def note(run: str, seq: int, topic: str = "x") -> bytes:
        return json.dumps({"kind": "decision", "node": "alpha", "time": time.time(),
                           "text": topic, "topic": topic, "fields": {}, "seq": seq,
                           "run": run}).encode()

    sent = {"seq": 0}
    stop = threading.Event()

    def sync() -> None:
        while not stop.wait(0.05):
            sent["seq"] += 1
            pub.send(note("a", sent["seq"], "sync"))

    try:
        with EventStream(path, timeout=10) as events:
            syncing = threading.Thread(target=sync, daemon=True)
            syncing.start()
            first = next(events)
            stop.set()
            syncing.join(timeout=5)
            k = sent["seq"]
            for _ in range(k - first.seq):  # every sync after the first one received
                assert next(events).seq <= k
            messages = [note("a", k + 1), note("a", k + 2), b"not json", b'{"seq": 4}',
                        b"[1, 2]", note("a", k + 3),
                        note("b", 1), note("b", 2),  # the daemon restarted: not a gap
                        note("b", 5),  # 3 and 4 lost
                        note("c", 3),  # restarted again: its 1 and 2 never seen
                        note("c", 4, "end")]
            for m in messages:
                pub.send(m)
            got = []
            for n in events:
                got.append(n)
                if isinstance(n, Decision) and n.topic == "end":
                    break
    finally:
        stop.set()
        pub.close(linger=0)
    described = [f"missed {n.count}" if isinstance(n, Missed) else n.seq for n in got]
    assert described == [k + 1, k + 2, k + 3, 1, 2, "missed 2", 5, "missed 2", 3, 4]
    assert events.malformed == 3
    assert events.missed == 4
    assert [n.text for n in got if isinstance(n, Missed)] == [
        "this subscriber was too slow; missed 2 notifications (before #5)",
        "the daemon restarted; missed its first 2 notifications (before #3)"]


def test_subscribing_needs_a_running_daemon_and_known_kinds(
        make_cluster: Any, tmp_path: Path) -> None:
    make_cluster()
    config = str(tmp_path / "cluster.toml")
    result = CliRunner().invoke(cli, ["events", "-c", config, "-n", "beta"])
    assert result.exit_code == 3
    assert "no event socket at" in result.output and "beta" in result.output
    # a file left by a daemon that died
    stale = loads((tmp_path / "cluster.toml").read_text(), config).nodes["beta"].event_socket
    stale.parent.mkdir(parents=True, exist_ok=True)
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    result = CliRunner().invoke(cli, ["events", "-c", config, "-n", "beta"])
    assert result.exit_code == 3
    assert "nobody listens" in result.output
    result = CliRunner().invoke(cli, ["events", "-c", config, "-n", "delta"])
    assert result.exit_code == 2 and "'delta'" in result.output
    result = CliRunner().invoke(cli, ["events", "-c", config, "--kind", "group_move"])
    assert result.exit_code == 2 and "group_moved" in result.output
    with pytest.raises(ValueError, match=r"'group_move'.*group_moved"):
        subscribe(config, "beta", kinds=["group_move"])


def test_vigil_events_prints_lines_filters_kinds_and_stops_after_count(
        make_cluster: Any, tmp_path: Path) -> None:
    mc = make_cluster()
    alpha = mc.start("alpha")
    published(alpha)  # its event socket is bound
    config = str(tmp_path / "cluster.toml")
    text = Lines([*VIGIL, "events", "-c", config, "-n", "alpha", "--count", "3"])
    only_moves = Lines([*VIGIL, "events", "-c", config, "-n", "alpha", "--kind", "group_moved",
                        "--timeout", "1"])
    try:
        wait_for(lambda: len(text.lines) >= 3 or publish(alpha, "sync", "hello there"), 30,
                 "three lines", interval=0.1)
        code, err = text.finish()
        assert code == 0, err
        assert len(text.lines) == 3
        hello = next(line for line in text.lines if line.endswith("hello there"))
        day, stamp, node, kind, *words = hello.split()
        datetime.datetime.fromisoformat(f"{day} {stamp}")  # local date and time
        assert (node, kind, " ".join(words)) == ("alpha", "decision", "hello there")
        code, err = only_moves.finish()  # saw no group_moved: gave up after 1s
        assert code == 1 and "no notification in 1s" in err
        assert only_moves.lines == []
    finally:
        text.kill()
        only_moves.kill()


def test_register_notification_actor_finds_the_runtime_when_it_is_the_only_one(
        make_cluster: Any) -> None:
    mc = make_cluster()
    alpha = mc.start("alpha")
    published(alpha)  # its event socket is bound
    listener = Listener.start()
    register_notification_actor(listener, kinds=["decision"])  # the one runtime running
    publish(alpha, "hello")
    wait_for(lambda: any(isinstance(n, Decision) and n.topic == "hello"
                         for n in listener.proxy().notes().get()), 10, "the notification")
    assert all(n.kind == "decision" for n in listener.proxy().notes().get())
    mc.start("beta")
    with pytest.raises(RuntimeError, match=r"2 node runtimes .*alpha, beta.*runtime="):
        register_notification_actor(listener)
    with pytest.raises(ValueError, match="'moved'"):
        register_notification_actor(listener, runtime=alpha, kinds=["moved"])


ENV_SCRIPT = """#!/bin/sh
f="{out}/$VIGIL_ALERT_NODE-$VIGIL_ALERT_KIND-$VIGIL_ALERT_SEQ.env"
env | grep '^VIGIL_ALERT_' > "$f.part" && mv "$f.part" "$f"
"""


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_alert_commands_run_with_the_notification_in_their_environment(
        make_cluster: Any, tmp_path: Path) -> None:
    out = tmp_path / "alerts"
    out.mkdir()
    script = tmp_path / "alert.sh"
    script.write_text(ENV_SCRIPT.format(out=out))
    script.chmod(0o755)
    mc = make_cluster(f'\n[[alerts]]\ncommand = "{script}"\n'
                      'events = ["group_moved", "node_lost"]\ntimeout = "5s"\n')
    beta = mc.start("beta")
    published(beta)  # its event socket is bound
    listener = Listener.start()
    register_notification_actor(listener, runtime=beta)
    mc.start("alpha")
    mc.start("gamma")
    wait_for(lambda: running_on(mc, "web") == ["alpha"], 15, "web on alpha")
    mc.kill("alpha")
    move = wait_for(lambda: next((n for n in listener.proxy().notes().get()
                                  if isinstance(n, GroupMoved) and n.to_node == "beta"), None),
                    20, "web moved to beta")
    lost = next(n for n in listener.proxy().notes().get() if isinstance(n, NodeLost))
    moved_env = wait_for(lambda: sorted(out.glob(f"beta-group_moved-{move.seq}.env")), 10,
                         "the alert for the move")
    env = read_env(moved_env[0])
    assert env["VIGIL_ALERT_KIND"] == "group_moved"
    assert env["VIGIL_ALERT_NODE"] == "beta"
    assert env["VIGIL_ALERT_SEQ"] == str(move.seq)
    assert env["VIGIL_ALERT_TEXT"] == move.text
    assert (env["VIGIL_ALERT_GROUP"], env["VIGIL_ALERT_FROM_NODE"],
            env["VIGIL_ALERT_TO_NODE"]) == ("web", "alpha", "beta")
    when = datetime.datetime.fromisoformat(env["VIGIL_ALERT_TIME"])
    assert when.tzinfo is not None
    assert abs(when.timestamp() - move.time) < 0.01
    env = read_env(out / f"beta-node_lost-{lost.seq}.env")
    assert (env["VIGIL_ALERT_MEMBER"], env["VIGIL_ALERT_CLEAN"]) == ("alpha", "false")
    # gamma runs its own alerts for what it saw; no other kinds ran anywhere
    wait_for(lambda: list(out.glob("gamma-node_lost-*.env")), 10, "gamma's alert")
    kinds = {p.name.split("-")[1] for p in out.iterdir()}
    assert kinds == {"group_moved", "node_lost"}


def test_slow_failing_and_missing_alerts_are_logged_and_never_hold_the_daemon_up(
        make_cluster: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    slow = tmp_path / "slow.sh"
    slow.write_text('#!/bin/sh\n[ "$VIGIL_ALERT_TOPIC" = first ] || exit 0\n'
                    f'echo $$ > {tmp_path}/slow.pid\nsleep 30\n')
    slow.chmod(0o755)
    mc = make_cluster(
        f'\n[[alerts]]\ncommand = "{slow}"\nevents = ["decision"]\ntimeout = "1s"\n'
        '\n[[alerts]]\ncommand = ["sh", "-c", "echo starting; echo boom: disk full >&2; '
        'exit 3"]\nevents = ["decision"]\n'
        '\n[[alerts]]\ncommand = "/nonexistent/alert"\nevents = ["decision"]\n')
    caplog.set_level(logging.INFO, logger="vigil.alerts")
    alpha = mc.start("alpha")
    published(alpha)  # its event socket is bound
    listener = Listener.start()
    register_notification_actor(listener, runtime=alpha, kinds=["decision"])
    publish(alpha, "first")
    pid = int(wait_for(lambda: (tmp_path / "slow.pid").exists()
                       and (tmp_path / "slow.pid").read_text().strip(), 10, "the slow alert"))
    # while it runs: the daemon answers, and notifications still flow to everyone else
    socket_path = mc.config.nodes["alpha"].control_socket
    assert pid_alive(pid)
    assert request(socket_path, "status")["ok"]
    publish(alpha, "second")
    wait_for(lambda: any(isinstance(n, Decision) and n.topic == "second"
                         for n in listener.proxy().notes().get()), 5, "the next notification")
    assert pid_alive(pid)
    wait_for(lambda: "timed out after 1s" in caplog.text, 10, "the timeout in the log")
    assert f"killed its process group {pid}" in caplog.text
    wait_for(lambda: not group_members(pid), 10, "the alert's processes to be gone")
    assert request(socket_path, "status")["ok"]
    wait_for(lambda: "exit code 3: boom: disk full" in caplog.text, 10, "the failure")
    wait_for(lambda: "/nonexistent/alert could not run" in caplog.text, 10, "the missing one")


def test_a_full_alert_queue_drops_and_says_how_many(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vigil.alerts")
    done, started = tmp_path / "done", tmp_path / "started"
    alert = AlertConfig(("sh", "-c", f'echo "$VIGIL_ALERT_SEQ" >> {started}; sleep 1; '
                         f'echo "$VIGIL_ALERT_SEQ" >> {done}'), timeout=5.0)
    ref = AlertsActor.start("alerts", Directory(), "alpha", (alert,), queue_limit=2)
    told = 0

    def tell() -> None:
        nonlocal told
        told += 1
        ref.tell(Decision(node="alpha", time=time.time(), text="x", seq=told))

    try:
        # the first one runs (for a second) before the rest come: on a busy machine the
        # worker could otherwise take the first off the queue only after a few more came
        tell()
        wait_for(started.exists, 10, "the first alert to run")
        for _ in range(9):
            tell()
        wait_for(lambda: "is too slow" in caplog.text, 10, "the queue-full warning")
        # once the queue has room again, the next notification is taken and the count told
        wait_for(lambda: "while its queue was full" in caplog.text or tell(), 20,
                 "the drop count", interval=0.2)
        record = next(r.getMessage() for r in caplog.records
                      if "while its queue was full" in r.getMessage())
        dropped = int(record.split("dropped ")[1].split()[0])
        assert dropped >= 7  # 9 told while one runs: two of them waiting at most
        # every notification ran (in order) or was counted as dropped
        wait_for(lambda: done.exists() and len(done.read_text().split()) == told - dropped,
                 20, "the queued alerts to run")
        ran = [int(s) for s in done.read_text().split()]
        assert ran == sorted(ran) and ran[0] == 1
    finally:
        ref.stop(timeout=15)
