"""Status and control from Python: the same requests as the CLI and /ha, over the node's
control socket.

    from vigil.api import Client

    node = Client("/etc/vigil/cluster.toml")          # this host's node
    tree = node.status()                               # the cluster, as that node sees it
    print(tree.groups["web"].node)
    node.move("web", "beta")                           # raises Refused if the daemon says no
    node.resource("web-app", "oo_service")

Every method sends one request and returns the daemon's answer; a refusal (unknown name,
permission, maintenance mode...) raises :class:`Refused` with the daemon's words, and no daemon
at all raises :class:`~vigil.api.events.NoDaemonError`. ``status()`` returns the typed
:class:`~vigil.status.ClusterStatus` (frozen dataclasses; ``to_json()`` gives the JSON of
`vigil status --json`, whose keys are the same names).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from vigil.api.events import DEFAULT_CONFIG, NoDaemonError
from vigil.config import ClusterConfig, load, resolve_node
from vigil.local.protocol import request, status_of
from vigil.status import ClusterStatus

__all__ = ["Client", "Refused", "ResourceAction"]

ResourceAction = Literal["in_service", "oo_service", "force_oos", "mark_oos", "cleanup"]


class Refused(RuntimeError):
    """The daemon refused the request; the message is its reason."""


class Client:
    """Requests to one node's daemon (``node``: default this host's name)."""

    def __init__(self, config: str | os.PathLike[str] | ClusterConfig | None = None,
                 node: str | None = None, *, timeout: float = 10.0) -> None:
        if not isinstance(config, ClusterConfig):
            config = load(Path(config) if config is not None
                          else os.environ.get("VIGIL_CONFIG", DEFAULT_CONFIG))
        self.config = config
        self.node = resolve_node(config, node)
        self.socket = config.nodes[self.node].control_socket
        self.timeout = timeout

    def request(self, command: str, timeout: float | None = None,
                **args: str) -> dict[str, Any]:
        """One raw request (the control socket's protocol, docs/api.md)."""
        try:
            answer = request(self.socket, command, args, self.timeout if timeout is None
                             else timeout)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NoDaemonError(f"no daemon for node {self.node} at {self.socket}: "
                                f"{exc.strerror}") from None
        if not answer.get("ok"):
            raise Refused(str(answer.get("error", "refused")))
        return answer

    def status(self) -> ClusterStatus:
        """The status tree: cluster, nodes, groups, resources (``to_json()`` is the JSON of
        `vigil status --json`). Raises :class:`~vigil.local.protocol.MalformedAnswer` when the
        daemon's answer holds no status tree this version can read."""
        return status_of(self.request("status"), self.node)

    def move(self, group: str, node: str, *, force: bool = False) -> str:
        """``force``: even to a node whose copy of the group's mirrored data is beyond
        max_lag (`vigil group move --force`)."""
        if force:
            return str(self.request("move", group=group, node=node, force="1")["message"])
        return str(self.request("move", group=group, node=node)["message"])

    def standby(self, node: str) -> str:
        return str(self.request("standby", node=node)["message"])

    def online(self, node: str) -> str:
        return str(self.request("online", node=node)["message"])

    def fence(self, node: str) -> str:
        """Power ``node`` off through its fence levels, once (`vigil node fence`)."""
        return str(self.request("fence", node=node)["message"])

    def confirm_off(self, node: str) -> str:
        """Say that ``node`` is off, so it counts as fenced (`vigil node confirm-off`): only
        for a node you know is off."""
        return str(self.request("confirm_off", node=node)["message"])

    def maintenance(self, on: bool) -> str:
        return str(self.request("maintenance", state="on" if on else "off")["message"])

    def resource(self, name: str, action: ResourceAction) -> str:
        """in_service, oo_service, force_oos (cluster-wide), mark_oos (on this node), or
        cleanup (the fail counts of its group, everywhere)."""
        return str(self.request(action, resource=name)["message"])

    def diagnose(self, name: str) -> dict[str, Any]:
        """Run ``name``'s monitor on this node now: {"healthy", "state", "reason",
        "duration"}."""
        return self.request("diagnose", timeout=130.0, resource=name)
