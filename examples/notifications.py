"""Application notifications, both ways, on a real three-node cluster in this one process.

Runs anywhere (no root): three Vigil nodes (real actors, real ZeroMQ links on 127.0.0.1)
form a cluster and run a group ``web``. An application registers a Pykka actor on node beta
(in process) and a subscriber reads node gamma's event socket (as another process would).
Then the node that runs ``web`` dies, and both print what they are told, in order.

    .venv/bin/python examples/notifications.py

Exit status 0 when both saw the group move. See docs/api.md.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pykka
import zmq

from vigil.actors.node import NodeRuntime
from vigil.api import (
    GroupMoved,
    Missed,
    NodeLost,
    Notification,
    register_notification_actor,
    subscribe,
)
from vigil.config import load, load_key, write_key
from vigil.daemon import zmq_links

NODES = ("alpha", "beta", "gamma")


class Application(pykka.ThreadingActor):
    """What an application would do: react to the cluster's news."""

    def __init__(self, moved: threading.Event) -> None:
        super().__init__()
        self.moved = moved

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Notification):
            print(f"  in process  #{message.seq:<3} {message.kind:<22} {message.text}")
            if isinstance(message, GroupMoved) and message.to_node:
                self.moved.set()


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def write_cluster(directory: Path) -> Path:
    write_key(directory / "cluster.key")
    nodes = "\n".join(
        f'[nodes.{n}]\nlinks = [{{ name = "lan0", address = "127.0.0.1", port = {p} }}]\n'
        for n, p in zip(NODES, free_ports(len(NODES)), strict=True))
    path = directory / "cluster.toml"
    path.write_text(f"""
[cluster]
name = "example"
key_file = "cluster.key"
runtime_dir = "{directory}/run"

[timing]
heartbeat_interval = "100ms"
dead_time = "600ms"
fence_margin = "200ms"

{nodes}
[groups.web]
resources = ["web-state"]
prefer = {{ alpha = 0, beta = 10, gamma = 20 }}

[resources.web-state]
type = "dummy"
stop_timeout = "1s"
""")
    return path


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="vigil-example-") as tmp:
        cfg = load(write_cluster(Path(tmp)))
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        key = load_key(cfg)
        links = zmq_links(cfg, context, key)
        runtimes = {n: NodeRuntime(cfg, n, key, links).start() for n in NODES}
        try:
            # in process: an actor of the application, on beta
            moved = threading.Event()
            app = Application.start(moved)
            register_notification_actor(app, runtime=runtimes["beta"],
                                        kinds={"node_lost", "transition_started",
                                               "transition_completed", "group_moved"})
            # out of process (here a thread, the same API): gamma's event socket
            seen: list[Notification] = []
            crashed: list[str] = []

            def follow() -> None:
                with subscribe(cfg, "gamma", timeout=30) as events:
                    for note in events:
                        if isinstance(note, Missed):
                            print(f"  subscriber  missed {note.count} notifications")
                            continue
                        seen.append(note)
                        if isinstance(note, NodeLost | GroupMoved):
                            print(f"  subscriber  #{note.seq:<3} {note.kind:<22} {note.text}")
                        if (isinstance(note, GroupMoved) and note.to_node
                                and note.from_node in crashed):
                            return

            follower = threading.Thread(target=follow, daemon=True)
            follower.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                holders = [n for n, rt in runtimes.items()
                           if rt.status().groups["web"].node == n]
                if holders:
                    break
                time.sleep(0.1)
            else:
                print("web never started", file=sys.stderr)
                return 1
            moved.clear()
            del seen[:]
            victim = holders[0]
            crashed.append(victim)
            print(f"web runs on {victim}; {victim} dies now")
            runtimes.pop(victim).stop()  # its actors stop without a goodbye: a crash
            ok = moved.wait(30)
            follower.join(30)
            ok = ok and any(isinstance(n, GroupMoved) and n.from_node == victim and n.to_node
                            for n in seen)
            app.stop()
            print("both saw web move" if ok else "a notification was missing")
            return 0 if ok else 1
        finally:
            for rt in runtimes.values():
                rt.stop()
            context.term()


if __name__ == "__main__":
    sys.exit(main())
