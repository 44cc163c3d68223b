"""The node daemon: ``vigil node run``. Loads and checks the configuration (refusing to start
on any problem), builds the node's actor system over ZeroMQ, and leaves the cluster cleanly
on SIGTERM/SIGINT: groups out of service in reverse dependency order, then goodbye."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

import zmq

from vigil.actors.link import LinkFactory
from vigil.actors.node import NodeRuntime
from vigil.cluster.placement import stop_bound
from vigil.config import ClusterConfig, ConfigError, UnknownNode, load, load_key, resolve_node
from vigil.resources.registry import default_registry
from vigil.transports import ZmqLink
from vigil.transports.base import FrameHandler

log = logging.getLogger("vigil.daemon")


#: The error of an unknown node, by its former name here (it lives with the configuration now,
#: where the CLI, /ha and the API find it without loading the daemon).
StartupError = UnknownNode


def zmq_links(
    cfg: ClusterConfig, context: zmq.Context[zmq.Socket[bytes]]
) -> Callable[[str, str], LinkFactory]:
    def for_node(node: str, link_name: str) -> LinkFactory:
        me = next(link for link in cfg.nodes[node].links if link.name == link_name)
        peers = {n: (link.address, link.port) for n, nc in cfg.nodes.items() if n != node
                 for link in nc.links if link.name == link_name}

        def make(name: str, on_frames: FrameHandler) -> ZmqLink:
            return ZmqLink(name, (me.address, me.port), peers, node, on_frames, context)

        return make

    return for_node


def run(config_path: str, node: str | None) -> int:
    try:
        cfg = load(config_path)
        key = load_key(cfg)
        name = resolve_node(cfg, node)
    except ConfigError as exc:
        print(f"vigil: refusing to start:\n{exc}", file=sys.stderr)
        return 2
    registry = default_registry()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    runtime = NodeRuntime(cfg, name, key, zmq_links(cfg, context), registry)
    stop = threading.Event()
    signals = {"count": 0}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals["count"] += 1
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        runtime.start()
    except Exception as exc:
        log.critical("node %s could not start: %s", name, exc)
        runtime.stop()
        context.term()
        return 1
    log.info("node %s of cluster %s running (config %s, digest %s)", name, cfg.name,
             cfg.path, cfg.digest[:12])
    while not stop.wait(0.5):
        if runtime.failed.is_set():
            log.critical("node %s: an actor keeps failing; exiting so that the cluster "
                         "can move its groups", name)
            runtime.stop()
            context.term()
            return 1
    limit = stop_bound(cfg) + 2 * cfg.timing.step_timeout
    log.info("leaving the cluster: stopping groups here (at most %.1fs; signal again to "
             "exit at once)", limit)
    stop.clear()
    left = False
    if signals["count"] < 2:
        runtime.control("shutdown")
        deadline_event = runtime.left
        # wake on either a clean departure or a second signal
        for _ in range(int(limit / 0.1) + 1):
            if deadline_event.wait(0.1) or stop.is_set():
                break
        left = deadline_event.is_set()
    if not left:
        log.warning("exiting before every group was stopped")
    runtime.stop()
    context.term()
    log.info("node %s stopped", name)
    return 0 if left else 1


def configure_logging(level: str, node: str | None) -> None:
    tag = f" [{node}]" if node else ""
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)-7s{tag} %(name)s: %(message)s")
    # Libraries' debug output (every netlink message) drowns the daemon's own: --log-level
    # debug is for Vigil's decisions.
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
