"""The control socket's protocol, client side: one JSON request per line
(``{"command": ..., "args": {name: string}}``), one JSON answer per line (``{"ok": ...,
"error" or "message" or "status": ...}``; docs/api.md). The CLI, /ha and
:class:`vigil.api.Client` send their requests with :func:`request`; the daemon's side is
:class:`vigil.actors.control.ControlActor`. Pykka-free, so that neither the CLI nor the FUSE
process loads the actor system. :func:`status_of` reads the typed status tree out of a
``status`` answer, once, for every face.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vigil.status import ClusterStatus

__all__ = ["MANUAL_OP_TIMEOUT", "MAX_REQUEST", "REQUEST_TIMEOUT", "MalformedAnswer", "request",
           "status_of"]

REQUEST_TIMEOUT = 10.0
#: A manual diagnosis waits for the agent's monitor (its own timeout applies first).
MANUAL_OP_TIMEOUT = 120.0
#: The longest request line the daemon reads.
MAX_REQUEST = 64 * 1024


def request(path: Path, command: str, args: Mapping[str, str] | None = None,
            timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    """Client side: one request to a daemon's control socket. Raises OSError when no daemon
    listens there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"command": command, "args": dict(args or {})}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    return answer


class MalformedAnswer(ValueError):
    """A daemon's answer is not what the protocol says; the message names the node and what
    is wrong with it."""


def status_of(answer: Mapping[str, Any], node: str) -> ClusterStatus:
    """The status tree of node ``node``'s answer to a ``status`` request that succeeded.
    Raises :class:`MalformedAnswer` when the answer holds no status tree this code can read
    (a daemon of another version, or not a Vigil daemon at all)."""
    st = answer.get("status")
    try:
        if st is None:
            raise TypeError("the answer has no 'status'")
        if not isinstance(st, Mapping):
            raise TypeError(f"its 'status' is a JSON {type(st).__name__}, not an object")
        return ClusterStatus.from_json(st)
    except KeyError as exc:
        why = f"the key {exc.args[0]!r} is missing"
    except (TypeError, ValueError, AttributeError) as exc:
        why = str(exc)
    raise MalformedAnswer(
        f"node {node}'s daemon answered 'status' with no status tree this vigil can read "
        f"({why}); does it run the same version of Vigil?")
