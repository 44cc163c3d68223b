"""The optional Prometheus endpoint of a node (``[metrics] listen``, docs/operations.md,
"Metrics").

Two sources: :class:`StatusCollector` reads the node's status tree at each scrape (quorum,
nodes, groups, fail counts, messages, heartbeats: what ``vigil status`` shows, never stale),
and :class:`MetricsActor`, subscribed to the node's notifications, counts what happened
between scrapes (transitions and their durations, fencing results, resource failures, group
moves). Each daemon has a registry of its own: nothing from the process's default registry
(which a test process running several nodes would share) is served.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import pykka
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vigil.notifications import (
    FencingCompleted,
    GroupMoved,
    Notification,
    ResourceStateChanged,
    TransitionCompleted,
    TransitionStarted,
)
from vigil.status import ClusterStatus

__all__ = ["MetricsActor", "MetricsServer", "StatusCollector"]

log = logging.getLogger(__name__)

#: how long a scrape waits for the node's status before it reports ``vigil_up 0``
STATUS_TIMEOUT = 2.0
#: transitions take milliseconds when nothing starts, up to the stop and start timeouts
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                    300.0)


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class StatusCollector(Collector):
    """What the node's status says, at scrape time."""

    def __init__(self, status: Callable[[float], ClusterStatus],
                 heartbeat_interval: float) -> None:
        self.status = status
        self.heartbeat_interval = heartbeat_interval

    def collect(self) -> Iterator[Metric]:
        up = _gauge("vigil_up", "1 when the node's daemon answered this scrape with its "
                    "status, else 0 (and nothing else is reported)")
        try:
            st = self.status(STATUS_TIMEOUT)
        except Exception as exc:  # a stuck or stopping node: say so, do not fail the scrape
            log.warning("metrics: no status within %.0fs (%s)", STATUS_TIMEOUT,
                        exc or type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._cluster(st)
        yield from self._groups(st)
        yield from self._messages(st)
        yield from self._heartbeats(st)

    def _cluster(self, st: ClusterStatus) -> Iterator[Metric]:
        quorate = _gauge("vigil_quorate", "1 when this node's partition has quorum")
        quorate.add_metric([], 1 if st.quorate else 0)
        lease = _gauge("vigil_lease_valid", "1 while a quorum is known to support this node")
        lease.add_metric([], 1 if st.lease_valid else 0)
        nodes = _gauge("vigil_nodes", "configured nodes")
        nodes.add_metric([], len(st.nodes))
        online = _gauge("vigil_nodes_online", "nodes this node sees online")
        online.add_metric([], sum(1 for n in st.nodes.values() if n.state == "online"))
        node = _gauge("vigil_node_online", "1 when the node is online as seen from here",
                      ["node"])
        standby = _gauge("vigil_node_standby", "1 when the node is in standby", ["node"])
        for name, n in st.nodes.items():
            node.add_metric([name], 1 if n.state == "online" else 0)
            standby.add_metric([name], 1 if n.standby else 0)
        transition = _gauge("vigil_transition_in_progress",
                            "1 while a transition of the cluster is under way")
        transition.add_metric([], 0 if st.transition is None
                              or st.transition.phase == "done" else 1)
        maintenance = _gauge("vigil_maintenance", "1 in maintenance mode")
        maintenance.add_metric([], 1 if st.maintenance else 0)
        yield from (quorate, lease, nodes, online, node, standby, transition, maintenance)

    def _groups(self, st: ClusterStatus) -> Iterator[Metric]:
        group = _gauge("vigil_group", "1 for each group: where it is active (node, empty when "
                       "nowhere) and its state there", ["group", "node", "state"])
        fails = _gauge("vigil_group_fail_count", "failures of the group's resources on this "
                       "node since the last cleanup", ["group"])
        for name, g in st.groups.items():
            group.add_metric([name, g.node or "", g.state], 1)
            fails.add_metric([name], g.fail_count)
        resources = _gauge("vigil_resource_fail_count", "failures of the resource on this node "
                           "since the last cleanup", ["resource", "group"])
        for name, r in st.resources.items():
            resources.add_metric([name, r.group], r.fail_count)
        yield from (group, fails, resources)

    def _messages(self, st: ClusterStatus) -> Iterator[Metric]:
        # counters kept by the daemon since it started: exposed as such
        accepted = CounterMetricFamily("vigil_messages_accepted", "messages from peers "
                                       "accepted since the daemon started")
        accepted.add_metric([], st.messages.get("accepted", 0))
        dropped = CounterMetricFamily("vigil_messages_dropped", "messages dropped since the "
                                      "daemon started, by reason", labels=["reason"])
        for reason, count in sorted(st.messages.items()):
            if reason != "accepted":
                dropped.add_metric([reason], count)
        on_link = CounterMetricFamily("vigil_link_messages_dropped", "messages that arrived "
                                      "on a link and were dropped there, by reason",
                                      labels=["link", "reason"])
        for link, ls in st.links.items():
            for reason, count in sorted(ls.rejected.items()):
                on_link.add_metric([link, reason], count)
        yield from (accepted, dropped, on_link)

    def _heartbeats(self, st: ClusterStatus) -> Iterator[Metric]:
        age = _gauge("vigil_heartbeat_age_seconds", "seconds since the peer was last heard "
                     "on the link", ["link", "peer"])
        late = _gauge("vigil_heartbeat_lateness_seconds", "how much later than one heartbeat "
                      "interval the peer was last heard on the link (0: on time)",
                      ["link", "peer"])
        link_up = _gauge("vigil_link_up", "1 when this node's link is up", ["link"])
        for link, ls in st.links.items():
            link_up.add_metric([link], 1 if ls.up else 0)
            for peer, p in ls.peers.items():
                if p.heard_ago is None:
                    continue
                age.add_metric([link, peer], p.heard_ago)
                late.add_metric([link, peer], max(0.0, p.heard_ago - self.heartbeat_interval))
        yield from (age, late, link_up)


class EventMetrics:
    """The counters and histograms that notifications feed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.transitions = Counter("vigil_transitions", "transitions completed (as seen by "
                                   "this node)", registry=registry)
        self.durations = Histogram("vigil_transition_duration_seconds", "from a transition's "
                                   "start to its completion", buckets=DURATION_BUCKETS,
                                   registry=registry)
        self.fencing = Counter("vigil_fencing", "fencing operations ended, by result",
                               ["result"], registry=registry)
        for result in ("ok", "failed"):
            self.fencing.labels(result)
        self.failures = Counter("vigil_resource_failures", "resources seen failed here",
                                ["resource", "group"], registry=registry)
        self.moves = Counter("vigil_group_moves", "groups moved from one node to another",
                             ["group"], registry=registry)
        self.started: dict[str, float] = {}  # epoch -> wall-clock time its transition began

    def observe(self, note: Notification) -> None:
        if isinstance(note, TransitionStarted):
            self.started[note.epoch] = note.time
            if len(self.started) > 64:  # epochs that never completed
                self.started.pop(next(iter(self.started)))
        elif isinstance(note, TransitionCompleted):
            self.transitions.inc()
            began = self.started.pop(note.epoch, None)
            if began is not None:
                self.durations.observe(max(0.0, note.time - began))
        elif isinstance(note, FencingCompleted):
            self.fencing.labels("ok" if note.ok else "failed").inc()
        elif isinstance(note, ResourceStateChanged) and note.state == "FAILED":
            self.failures.labels(note.resource, note.group).inc()
        elif isinstance(note, GroupMoved) and note.from_node and note.to_node:
            self.moves.labels(note.group).inc()


class MetricsActor(pykka.ThreadingActor):
    """Subscribed to the node's notifications (``NodeRuntime.subscribe``)."""

    use_daemon_thread = True  # like the HTTP server's: neither holds the daemon's exit

    def __init__(self, metrics: EventMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Notification):
            self.metrics.observe(message)
        return None


class MetricsServer:
    """The HTTP endpoint (``/metrics``) of one node."""

    KINDS = frozenset({TransitionStarted.kind, TransitionCompleted.kind, FencingCompleted.kind,
                       ResourceStateChanged.kind, GroupMoved.kind})

    def __init__(self, address: tuple[str, int], status: Callable[[float], ClusterStatus],
                 heartbeat_interval: float) -> None:
        self.address = address
        # the *_created series (a timestamp per counter) say nothing a daemon's start time
        # does not: half the output, no information
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.registry.register(StatusCollector(status, heartbeat_interval))
        self.events = EventMetrics(self.registry)
        self.actor: pykka.ActorRef[Any] | None = None
        self.server: WSGIServer | None = None
        self.thread: threading.Thread | None = None

    def start(self, subscribe: Callable[[pykka.ActorRef[Any], frozenset[str]], None]) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        host, port = self.address
        self.server, self.thread = start_http_server(port, host, registry=self.registry)
        self.actor = MetricsActor.start(self.events)
        subscribe(self.actor, self.KINDS)
        log.info("serving metrics on http://%s/metrics", self.url_host)

    @property
    def url_host(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.actor is not None:
            self.actor.stop(block=False)
            self.actor = None
