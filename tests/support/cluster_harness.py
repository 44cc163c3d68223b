"""Helpers for tests that run real node actor systems in one process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vigil.actors.link import LinkFactory
from vigil.actors.node import NodeRuntime
from vigil.config import ClusterConfig, loads, write_key
from vigil.resources.registry import ResourceTypeRegistry
from vigil.transports import MemoryNetwork


def cluster_toml(tmp: Path, *, nodes: tuple[str, ...] = ("alpha", "beta", "gamma"),
                 base_port: int = 7500, extra: str = "", groups: str | None = None) -> str:
    key = tmp / "cluster.key"
    if not key.exists():
        write_key(key)
    lines = [
        "[cluster]", 'name = "test"', f'key_file = "{key}"', f'runtime_dir = "{tmp}/run"', "",
        "[timing]", 'heartbeat_interval = "50ms"', 'dead_time = "400ms"',
        'step_timeout = "1500ms"', 'fence_margin = "100ms"', "",
    ]
    for i, n in enumerate(nodes):
        lines += [f"[nodes.{n}]",
                  f'links = [{{ name = "lan0", address = "127.0.0.1", port = {base_port + i} }}]',
                  ""]
    if groups is None:
        groups = f"""
[groups.web]
resources = ["web-ip", "web-data", "web-app"]
prefer = {{ {nodes[0]} = 0, {nodes[1]} = 10 }}

[resources.web-ip]
type = "dummy"
params = {{ start_delay = "0.05s", stop_delay = "0.05s" }}
monitor = {{ interval = "200ms", timeout = "1s" }}
stop_timeout = "500ms"

[resources.web-data]
type = "dummy"
depends_on = ["web-ip"]
params = {{ start_delay = "0.05s", stop_delay = "0.05s" }}
monitor = {{ interval = "200ms", timeout = "1s" }}
stop_timeout = "500ms"

[resources.web-app]
type = "dummy"
depends_on = ["web-data"]
params = {{ start_delay = "0.05s", stop_delay = "0.05s" }}
monitor = {{ interval = "200ms", timeout = "1s" }}
stop_timeout = "500ms"
"""
    return "\n".join(lines) + groups + extra


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.05) -> Any:
    """Poll until ``condition()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class MemoryCluster:
    def __init__(self, config: ClusterConfig, key: bytes,
                 registry: ResourceTypeRegistry | None = None) -> None:
        self.config = config
        self.key = key
        self.registry = registry
        self.net = MemoryNetwork(seed=1)
        self.nodes: dict[str, NodeRuntime] = {}

    def link_factory(self, node: str, link: str) -> LinkFactory:
        return lambda link_name, on_frames: self.net.endpoint(node, link_name, on_frames)

    def start(self, name: str) -> NodeRuntime:
        rt = NodeRuntime(self.config, name, self.key, self.link_factory,
                         registry=self.registry).start()
        self.nodes[name] = rt
        return rt

    def kill(self, name: str) -> None:
        """The node dies at once: its actors stop without leaving, its dummy resources are
        marked out of service as a power loss would."""
        rt = self.nodes.pop(name)
        rt.stop()

    def status(self, via: str) -> dict[str, Any]:
        """The status tree as JSON (``vigil status --json``): what the tests read."""
        return self.nodes[via].status().to_json()

    def holders(self, group: str) -> list[str]:
        """Nodes whose own view says the group is in service there."""
        out = []
        for name, rt in self.nodes.items():
            try:
                st = rt.status()
            except Exception:
                continue
            if st.groups[group].node == name:
                out.append(name)
        return out

    def stop(self) -> None:
        for rt in list(self.nodes.values()):
            rt.stop()
        self.nodes.clear()
        self.net.close()


@contextmanager
def memory_cluster(tmp: Path, **kw: Any) -> Iterator[MemoryCluster]:
    from vigil.config import load_key

    cfg = loads(cluster_toml(tmp, **kw), tmp / "cluster.toml")
    mc = MemoryCluster(cfg, load_key(cfg))
    try:
        yield mc
    finally:
        mc.stop()
