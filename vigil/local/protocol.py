"""The control socket's protocol, client side: one JSON request per line
(``{"command": ..., "args": {name: string}}``), one JSON answer per line (``{"ok": ...,
"error" or "message" or "status": ...}``; docs/api.md). The CLI, /ha and
:class:`vigil.api.Client` send their requests with :func:`request`; the daemon's side is
:class:`vigil.actors.control.ControlActor`. Pykka-free, so that neither the CLI nor the FUSE
process loads the actor system. :func:`status_of` reads the typed status tree out of a
``status`` answer, once, for every face. :func:`check_request` is what the daemon checks of
a request line before it parses it (its limits are :mod:`vigil.local.limits`).
"""

from __future__ import annotations

import json
import operator
import re
import socket
import time
from collections.abc import Mapping
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from vigil.local.limits import MAX_JSON_DEPTH, MAX_REQUEST, REQUEST_TIMEOUT

if TYPE_CHECKING:  # imported where a status is read: every `vigil` command loads this module
    from vigil.status import ClusterStatus

__all__ = ["MANUAL_OP_TIMEOUT", "MAX_REQUEST", "REQUEST_TIMEOUT", "MalformedAnswer",
           "check_request", "connect", "json_depth", "request", "status_of"]

#: A manual diagnosis waits for the agent's monitor (its own timeout applies first).
MANUAL_OP_TIMEOUT = 120.0


def request(path: Path, command: str, args: Mapping[str, str] | None = None,
            timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    """Client side: one request to a daemon's control socket. Raises OSError when no daemon
    listens there."""
    with connect(path, timeout) as s:
        s.sendall(json.dumps({"command": command, "args": dict(args or {})}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    return answer


def connect(path: Path, timeout: float) -> socket.socket:
    """A connection to the daemon's local socket ``path`` (I/O on it times out after
    ``timeout`` seconds). Raises OSError when no daemon listens there."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                s.connect(str(path))
                return s
            except BlockingIOError:
                # The queue of connections the daemon has not accepted yet is full: someone
                # floods the socket, and the daemon refuses the excess as fast as it comes.
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{path}: the daemon's queue of new connections "
                                       f"stayed full for {timeout:g} s (is someone flooding "
                                       "the socket?)") from None
                time.sleep(0.01)
    except BaseException:
        s.close()
        raise


def check_request(line: bytes) -> None:
    """Raises ValueError, saying why, when the request ``line`` is longer or nested deeper
    than the daemon takes: checked before parsing (the parser recurses once per level)."""
    if len(line) > MAX_REQUEST:
        raise ValueError(f"the request is longer than {MAX_REQUEST} bytes (one JSON object "
                         "on one line)")
    # fewer brackets than the limit cannot nest deeper (a request has two): most stop here
    if line.count(b"[") + line.count(b"{") <= MAX_JSON_DEPTH:
        return
    depth = json_depth(line)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"the request nests arrays or objects {depth} deep, at most "
                         f"{MAX_JSON_DEPTH}")


_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)  # brackets in strings don't nest
_BRACKETS: Final = b"[]{}"
_NOT_BRACKETS: Final = bytes(sorted(set(range(256)) - set(_BRACKETS)))
_STEPS: Final = bytes.maketrans(_BRACKETS, b"\2\0\2\0")  # an opening one 2, a closing one 0


def json_depth(text: bytes) -> int:
    """How deep arrays and objects nest in the JSON ``text``, without parsing it (in loops
    that run in C: 64 KiB of brackets take milliseconds). Text that is no JSON gets a number
    too: parsing it fails later."""
    steps = _STRING.sub(b"", text).translate(_STEPS, _NOT_BRACKETS)
    # each step is +1 or -1: the depth is the highest running sum
    return max(0, max(map(operator.sub, accumulate(steps), range(1, len(steps) + 1)),
                      default=0))


class MalformedAnswer(ValueError):
    """A daemon's answer is not what the protocol says; the message names the node and what
    is wrong with it."""


def status_of(answer: Mapping[str, Any], node: str) -> ClusterStatus:
    """The status tree of node ``node``'s answer to a ``status`` request that succeeded.
    Raises :class:`MalformedAnswer` when the answer holds no status tree this code can read
    (a daemon of another version, or not a Vigil daemon at all)."""
    from vigil.status import ClusterStatus

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
