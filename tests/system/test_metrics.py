"""System: the Prometheus endpoint of real daemons, scraped over HTTP as Prometheus would,
parsed with prometheus_client's own parser; and the configuration's checks of its address."""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster_harness import wait_for
from tests.support.daemons import Daemons, daemons_in, free_ports, settled
from tests.system.test_daemons import app_pid
from vigil.config import ConfigError, loads

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path)


def with_metrics(d: Daemons) -> dict[str, int]:
    """Give every node a metrics address of its own on 127.0.0.1; node -> port."""
    ports = dict(zip(d.nodes, free_ports(len(d.nodes)), strict=True))
    text = d.config.read_text()
    for node, port in ports.items():
        text = text.replace(f"[nodes.{node}]\n",
                            f'[nodes.{node}]\nmetrics = "127.0.0.1:{port}"\n')
    d.config.write_text(text)
    return ports


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_a_scrape_shows_the_cluster_and_counts_what_happened(daemons: Daemons) -> None:
    ports = with_metrics(daemons)
    daemons.start("alpha")
    daemons.start("beta")
    settled(daemons, holder="alpha")

    m = scrape(ports["alpha"])
    assert value(m, "vigil_up") == 1
    assert value(m, "vigil_quorate") == 1
    assert (value(m, "vigil_nodes"), value(m, "vigil_nodes_online")) == (3, 2)
    assert value(m, "vigil_node_online", node="gamma") == 0
    assert value(m, "vigil_group", group="web", node="alpha", state="running") == 1
    # (a loaded machine may have failed web-app's first start already: counted from here)
    fails = value(m, "vigil_resource_fail_count", resource="web-app", group="web") or 0
    assert value(m, "vigil_group_fail_count", group="web") == fails
    accepted = value(m, "vigil_messages_accepted_total")
    assert accepted is not None and accepted > 0
    age = value(m, "vigil_heartbeat_age_seconds", link="lan0", peer="beta")
    assert age is not None and 0 <= age < 0.6  # within dead_time: beta is online
    assert value(m, "vigil_heartbeat_lateness_seconds", link="lan0", peer="beta") is not None
    assert value(m, "vigil_fencing_total", result="failed") == 0

    # a failure on alpha: counted, and in the fail counts
    counted = value(m, "vigil_resource_failures_total", resource="web-app", group="web") or 0
    app = wait_for(lambda: app_pid(daemons, "alpha"), 10, "web-app on alpha")
    os.kill(app, signal.SIGKILL)
    wait_for(lambda: value(scrape(ports["alpha"]), "vigil_resource_failures_total",
                           resource="web-app", group="web") == counted + 1, 20,
             "the failure counted")
    m = scrape(ports["alpha"])
    assert value(m, "vigil_resource_fail_count", resource="web-app", group="web") == fails + 1

    # an operator's move: a transition counted with its duration, the group's new node
    before = value(scrape(ports["beta"]), "vigil_transitions_total") or 0
    moved = daemons.vigil("group", "move", "web", "beta", "-c", str(daemons.config),
                          "--via", "alpha")
    assert moved.returncode == 0, moved.stderr
    daemons.wait_group_on("beta", via="beta")
    m = wait_for(lambda: (lambda s: s if (value(s, "vigil_transitions_total") or 0) > before
                          else None)(scrape(ports["beta"])), 20, "the move's transition")
    assert value(m, "vigil_group", group="web", node="beta", state="running") == 1
    count = value(m, "vigil_transition_duration_seconds_count")
    total = value(m, "vigil_transition_duration_seconds_sum")
    assert count is not None and count >= 1 and total is not None and total > 0
    assert value(m, "vigil_transition_duration_seconds_bucket", le="+Inf") == count
    wait_for(lambda: value(scrape(ports["alpha"]), "vigil_group_moves_total", group="web"),
             10, "the move counted on alpha")


def test_metrics_are_off_by_default_and_their_address_is_checked() -> None:
    base = ('[cluster]\nname = "c"\nkey_file = "k"\n'
            '[nodes.a]\nlinks = [{ name = "l", address = "127.0.0.1", port = 7000 }]\n'
            '[nodes.b]\nlinks = [{ name = "l", address = "127.0.0.2", port = 7000 }]\n')
    assert {n.metrics for n in loads(base).nodes.values()} == {None}
    cfg = loads(base.replace("port = 7000 }]\n[nodes.b]",
                             'port = 7000 }]\nmetrics = "off"\n[nodes.b]')
                + '[metrics]\nlisten = "[::1]:9664"\n')
    assert (cfg.nodes["a"].metrics, cfg.nodes["b"].metrics) == (None, ("::1", 9664))
    with pytest.raises(ConfigError) as err:
        loads(base + '[metrics]\nlisten = "localhost:9664"\n', "/etc/vigil/cluster.toml")
    assert str(err.value).startswith("/etc/vigil/cluster.toml: metrics.listen: string "
                                     "'localhost:9664' is not ADDRESS:PORT with an IP address")
    with pytest.raises(ConfigError) as err:
        loads(base.replace("port = 7000 }]\n[nodes.b]",
                           'port = 7000 }]\nmetrics = "127.0.0.1:0"\n[nodes.b]'), "c.toml")
    assert "c.toml: nodes.a.metrics: string '127.0.0.1:0': the port must be a number from " \
        "1 to 65535" in str(err.value)
