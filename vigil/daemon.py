"""The node daemon: ``vigil node run``. Loads and checks the configuration (refusing to start
on any problem), builds the node's actor system over ZeroMQ, and leaves the cluster cleanly
on SIGTERM/SIGINT: groups out of service in reverse dependency order, then goodbye."""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

import zmq

from vigil.actors.messages import GetStatus
from vigil.actors.node import NodeRuntime
from vigil.cluster.placement import stop_bound
from vigil.config import ClusterConfig, ConfigError, UnknownNode, load, load_key, resolve_node
from vigil.guard.client import GuardClient
from vigil.journal import configure
from vigil.local.access import Access, prepare_runtime_dir, socket_problem
from vigil.local.rundir import AlreadyRunning, NodeLock, UnsafePath
from vigil.resources import proc
from vigil.resources.registry import default_registry
from vigil.sdnotify import SdNotify, SystemdReporter, watchdog_time
from vigil.transports.zmq_link import descriptors_needed, zmq_links

log = logging.getLogger("vigil.daemon")


#: The error of an unknown node, by its former name here (it lives with the configuration now,
#: where the CLI, /ha and the API find it without loading the daemon).
StartupError = UnknownNode


#: Descriptors the daemon needs besides its links (interpreter, logs, the local sockets and
#: their clients, the guardian's channel), and per resource (an agent's pipes while it runs,
#: state files, monitors).
BASE_DESCRIPTORS = 256
DESCRIPTORS_PER_RESOURCE = 16
#: The soft limit the daemon raises its own to when the hard limit allows: the shipped unit's
#: LimitNOFILE, so a daemon started by hand has the same room.
WANTED_DESCRIPTORS = 65_536


class DescriptorLimit(Exception):
    """The open-files limit cannot fit what the node's configuration needs."""


def ensure_descriptors(cfg: ClusterConfig, name: str) -> int:
    """Raise the soft open-files limit to :data:`WANTED_DESCRIPTORS` (at most the hard limit)
    and check that it fits the configuration: a daemon that runs out of descriptors under a
    connection flood cannot stop its resources. Returns the limit in force."""
    me = cfg.nodes[name]
    need = BASE_DESCRIPTORS + DESCRIPTORS_PER_RESOURCE * len(cfg.resources) + sum(
        descriptors_needed(sum(1 for n, nc in cfg.nodes.items() if n != name
                               for peer in nc.links if peer.name == link.name))
        for link in me.links)
    if any(r.type == "mirror" for r in cfg.resources.values()):  # the mirror receiver
        need += descriptors_needed(len(cfg.nodes) - 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = WANTED_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard,
                                                                            WANTED_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < max(need, ceiling):
        soft = max(soft, ceiling)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < need:
        raise DescriptorLimit(
            f"node {name} needs at least {need} open files ({len(me.links)} links with room "
            f"for connections still in their handshake, {len(cfg.resources)} resources) but "
            f"its limit is {soft} and cannot be raised (hard limit {hard}); raise it: "
            f"LimitNOFILE={WANTED_DESCRIPTORS} in the systemd unit, or `ulimit -n {need}` "
            "before `vigil node run`")
    return soft


#: how long `vigil node run` waits for the guardian it started to answer
GUARDIAN_START_TIMEOUT = 15.0
#: ... and for longer while that guardian runs: a machine starting many processes at once
#: (a host booting every service, 32 daemons with their guardians on two cores) can starve
#: a guardian's start (its Python imports) well past the first limit
GUARDIAN_STARTING_LIMIT = 90.0


def connect_guardian(cfg: ClusterConfig, name: str) -> GuardClient:
    """A connection to this node's guardian; one is started (beside this process, in a
    session of its own, so that it outlives this daemon) when none answers. Raises
    RuntimeError when none can be had: a node that the others count on to fence itself must
    not run anything without it."""
    path = cfg.nodes[name].guard_socket
    client = GuardClient(path, name)
    guard: subprocess.Popen[bytes] | None = None
    if client.connected:
        log.info("guardian of %s found at %s", name, path)
    else:
        argv = [sys.executable, "-m", "vigil.cli.main", "guard", "-c", str(cfg.path), "-n",
                name, "--follow-daemon",
                "--log-level", logging.getLevelName(logging.getLogger().level).lower()]
        guard = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        log.info("started the guardian of %s (pid %d)", name, guard.pid)
        client.close(flush_timeout=0.0)
        client = GuardClient(path, name, reconnect_interval=0.05)
    start, warned = time.monotonic(), False
    while client.welcome is None:
        waited = time.monotonic() - start
        exited = None if guard is None else guard.poll()
        if exited is not None or waited > (GUARDIAN_START_TIMEOUT if guard is None
                                           else GUARDIAN_STARTING_LIMIT):
            client.close(flush_timeout=0.0)
            what = (f"the guardian it started exited with {exited}" if exited is not None
                    else f"no guardian answered at {path} within {waited:.0f}s")
            raise RuntimeError(f"{what} ({client.last_error or 'no answer'}); see its log "
                               "above, or start it with `vigil guard`")
        if guard is not None and waited > GUARDIAN_START_TIMEOUT and not warned:
            warned = True
            log.warning("the guardian of %s (pid %d) has not answered in %.0fs: it still "
                        "runs (a busy machine?), waiting up to %.0fs", name, guard.pid,
                        waited, GUARDIAN_STARTING_LIMIT)
        client.wait(0.1)
    log.info("guardian of %s: pid %d, guard_time %gms, %s", name, client.welcome.pid,
             client.welcome.guard_time * 1000, client.welcome.cgroups)
    return client


#: the daemon's nice value where it may raise its priority (root): its heartbeats and lease
#: renewals must not wait behind the applications it guards (the guardian itself runs at
#: real-time priority)
DAEMON_NICE = -10


def raise_priority(name: str) -> None:
    try:
        before = os.getpriority(os.PRIO_PROCESS, 0)
        if before > DAEMON_NICE:
            proc.set_child_nice(before)  # what it starts runs as it would have
            os.setpriority(os.PRIO_PROCESS, 0, DAEMON_NICE)
        log.info("node %s runs at nice %d", name, os.getpriority(os.PRIO_PROCESS, 0))
    except OSError as exc:
        log.warning("node %s runs at normal priority (%s): under a heavy load its "
                    "heartbeats may be late", name, exc)


#: how long stopping the actors and closing the sockets may take after the groups are out
#: (or after a second signal) before the daemon exits regardless
STOP_GRACE = 15.0
#: The daemon's main thread looks at its flags at least this often, whatever wakes it.
ATTENTION_CHECK = 5.0


def exit_by(seconds: float, name: str, why: str) -> None:
    """End the process ``seconds`` from now if it has not ended by then: whatever hangs (an
    actor, a socket, a vanished runtime directory), a stopping daemon exits within a bound
    that systemd and operators can count on."""

    def deadline() -> None:
        time.sleep(seconds)
        log.critical("node %s: still running %.0fs after %s; exiting now", name, seconds, why)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(1)

    threading.Thread(target=deadline, name="vigil-exit-deadline", daemon=True).start()


def run(config_path: str, node: str | None) -> int:
    try:
        cfg = load(config_path)
        key = load_key(cfg)
        name = resolve_node(cfg, node)
        files = ensure_descriptors(cfg, name)
    except (ConfigError, DescriptorLimit) as exc:
        print(f"vigil: refusing to start:\n{exc}", file=sys.stderr)
        return 2
    runtime_dir = cfg.nodes[name].runtime_dir
    # Before anything is started or bound: a directory others could change is refused, and
    # a second daemon for this node stops here, not after it bound (or failed to bind) a port.
    lock = NodeLock(runtime_dir, name)
    try:
        prepare_runtime_dir(runtime_dir, Access(cfg.admin_group, cfg.status_group))
        lock.acquire()
    except (OSError, AlreadyRunning) as exc:
        problem = str(exc) if isinstance(exc, UnsafePath | AlreadyRunning) else \
            f"cannot prepare the runtime directory {runtime_dir}: {exc}"
        print(f"vigil: refusing to start: {problem}", file=sys.stderr)
        return 2
    in_use = socket_problem(cfg.nodes[name].control_socket, "control socket")
    if in_use is not None:
        lock.release()
        print(f"vigil: refusing to start: {in_use}", file=sys.stderr)
        return 2
    log.info("node %s may hold %d open files", name, files)
    reporter = SystemdReporter(SdNotify.from_environment(unset=True),
                               watchdog_time(unset=True)).start()
    try:
        return _run(cfg, key, name, reporter)
    finally:
        reporter.close()
        lock.release()


def _run(cfg: ClusterConfig, key: bytes, name: str,
         reporter: SystemdReporter | None = None) -> int:
    reporter = reporter or SystemdReporter(SdNotify(None), None)
    registry = default_registry()
    raise_priority(name)
    guard = None
    if cfg.fencer == "guardian":
        try:
            guard = connect_guardian(cfg, name)
        except (OSError, RuntimeError) as exc:
            log.critical("node %s cannot start without its guardian (fencer = \"guardian\"): "
                         "%s", name, exc)
            return 1
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    runtime = NodeRuntime(cfg, name, key, zmq_links(cfg, context, key), registry, guard=guard,
                          context=context)
    stop = threading.Event()
    signals = {"count": 0}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals["count"] += 1
        stop.set()
        runtime.attention.set()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        reload_requested.set()
        runtime.attention.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reload_requested = threading.Event()  # SIGHUP: reload, like keepalived and most daemons
    signal.signal(signal.SIGHUP, on_hangup)
    try:
        runtime.start()
    except Exception as exc:
        log.critical("node %s could not start: %s", name, exc)
        exit_by(STOP_GRACE, name, "it could not start")
        runtime.stop()
        context.term()
        return 1
    log.info("node %s of cluster %s running (config %s, digest %s)", name, cfg.name,
             cfg.path, cfg.digest[:12])
    reporter.attach(lambda: runtime.coordinator().ask(GetStatus(), block=False))
    serve_metrics(cfg, name, runtime)
    # asleep until a signal, or the node left or failed (a wake-up ten times a second was
    # a tenth of an idle daemon's CPU)
    while not stop.is_set():
        runtime.attention.wait(ATTENTION_CHECK)
        runtime.attention.clear()
        if stop.is_set():
            break
        if reload_requested.is_set():
            reload_requested.clear()
            reload(runtime, name)
        if runtime.left.is_set():
            # it left by itself: its guardian is gone (the coordinator said why)
            log.critical("node %s left the cluster by itself; exiting so that it can be "
                         "started again with a guardian", name)
            reporter.leaving("left the cluster by itself (its guardian is gone)")
            exit_by(STOP_GRACE, name, "it left the cluster")
            runtime.stop()
            context.term()
            return 3
        if runtime.failed.is_set():
            log.critical("node %s: an actor keeps failing; exiting so that the cluster "
                         "can move its groups", name)
            reporter.leaving("stopping: an actor keeps failing")
            exit_by(STOP_GRACE, name, "an actor kept failing")
            runtime.stop()
            context.term()
            return 1
    limit = stop_bound(cfg) + 2 * cfg.timing.step_timeout
    log.info("leaving the cluster: stopping groups here (at most %.1fs; signal again to "
             "exit at once)", limit)
    reporter.leaving()
    exit_by(limit + STOP_GRACE, name, "the signal")
    stop.clear()
    left = False
    if signals["count"] < 2:
        try:
            runtime.control("shutdown")
        except Exception as exc:  # the coordinator is gone or stuck: stop what is left
            log.warning("node %s could not ask its coordinator to leave (%s)", name,
                        exc or type(exc).__name__)
        else:
            deadline_event = runtime.left
            # wake on either a clean departure or a second signal
            for _ in range(int(limit / 0.1) + 1):
                if deadline_event.wait(0.1) or stop.is_set():
                    break
            left = deadline_event.is_set()
    if not left:
        log.warning("exiting before every group was stopped")
    if stop.is_set():
        exit_by(STOP_GRACE, name, "the second signal")
    runtime.stop()
    context.term()
    log.info("node %s stopped", name)
    return 0 if left else 1


def reload(runtime: NodeRuntime, name: str) -> None:
    """Ask the coordinator to reload the configuration file (SIGHUP); log its answer."""
    log.info("node %s: reload requested by SIGHUP", name)
    try:
        answer = runtime.control("reload", timeout=RELOAD_TIMEOUT)
    except Exception as exc:  # the coordinator is stuck or restarting: the daemon runs on
        log.error("node %s: reload failed: no answer from the coordinator (%s)", name,
                  exc or type(exc).__name__)
        return
    if answer.get("ok"):
        log.info("node %s: reload: %s", name, answer.get("message", "done"))
    else:
        log.error("node %s: reload refused: %s", name, answer.get("error", "no reason given"))


#: how long the coordinator may take to answer a reload (it validates the file; the cluster
#: applies it after the answer)
RELOAD_TIMEOUT = 10.0


def serve_metrics(cfg: ClusterConfig, name: str, runtime: NodeRuntime) -> None:
    """The node's Prometheus endpoint, when configured; one that cannot be bound is logged
    and the node runs on without it (its groups matter more than their metrics)."""
    address = cfg.nodes[name].metrics
    if address is None:
        return
    from vigil.metrics import MetricsServer  # prometheus_client only where metrics are on

    server = MetricsServer(address, lambda timeout: runtime.status(timeout=timeout),
                           cfg.timing.heartbeat_interval)
    try:
        server.start(runtime.subscribe)
    except OSError as exc:
        log.error("node %s: cannot serve metrics on %s (%s); fix [metrics] listen or "
                  "[nodes.%s] metrics in %s", name, server.url_host, exc, name, cfg.path)


def configure_logging(level: str, node: str | None) -> None:
    """Lines on stderr, or journald entries with priorities and fields under systemd
    (:mod:`vigil.journal`)."""
    configure(level, f"[{node}]" if node else "", node)
