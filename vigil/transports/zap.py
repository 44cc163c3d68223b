"""The ZAP handler (ZeroMQ's authentication protocol, RFC 27) of a ZeroMQ context: the one
place that decides who may finish a CurveZMQ handshake with a node's listening socket.

libzmq asks it, for every client that completed the CURVE handshake (so it holds the secret of
the public key it presents and knows our own server key), whether to admit that client. The
:class:`Gatekeeper` admits a client only if its public key is one of the link's configured peers'
and it connects from one of their addresses on that link; everything else is refused with
status 400 and the connection is closed before it can subscribe or send anything. Each
listening socket names its own ZAP domain, so one handler serves every link of a context.

The handler is one thread per context (a socket read must not run inside an actor), blocked
in ``poll`` until a request or its stop comes: it costs nothing while no one connects. Every
listening socket also sets ``ZMQ_ZAP_ENFORCE_DOMAIN``, so a socket whose handler is missing
refuses every client rather than admitting them all.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import ClassVar, Final

import zmq

log = logging.getLogger(__name__)

ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
#: A refusal is logged at warning level at most once per domain and reason in this interval;
#: the next such line says how many were not logged.
REFUSAL_LOG_INTERVAL_S: Final = 60.0
#: libzmq frees a closed socket's inproc name asynchronously: how long a new handler of the same
#: context keeps trying to bind it.
_BIND_RETRY_S: Final = 2.0


@dataclass(frozen=True)
class Admission:
    """Who may connect to the listening socket of one ZAP domain: raw 32-byte CURVE public
    key -> node name, and the addresses they connect from (empty: any address)."""

    keys: Mapping[bytes, str]
    addresses: frozenset[str] = frozenset()

    @classmethod
    def of(cls, keys: Mapping[bytes, str], addresses: Collection[str]) -> Admission:
        return cls(keys=dict(keys), addresses=frozenset(normal_address(a) for a in addresses))


@dataclass(frozen=True)
class Verdict:
    """The handler's answer to one request: ZAP status code, text, and the user id (the
    node's name) libzmq attaches to the connection."""

    status: bytes
    text: str
    user: str = ""

    @property
    def admitted(self) -> bool:
        return self.status == b"200"


def normal_address(address: str) -> str:
    """An address in one spelling (``::ffff:192.0.2.1`` is ``192.0.2.1``)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def decide(
    admissions: Mapping[str, Admission], domain: str, address: str, mechanism: bytes,
    credentials: list[bytes],
) -> Verdict:
    """Whether a client that finished a handshake in ``domain`` from ``address`` may stay."""
    admission = admissions.get(domain)
    if admission is None:
        return Verdict(b"400", f"unknown ZAP domain {domain!r}")
    if mechanism != b"CURVE":
        return Verdict(b"400", f"mechanism {mechanism.decode('ascii', 'replace')!r}, not CURVE")
    if len(credentials) != 1 or len(credentials[0]) != 32:
        return Verdict(b"400", "no CURVE public key")
    node = admission.keys.get(credentials[0])
    if node is None:
        return Verdict(b"400", "a public key that is no configured node's")
    if admission.addresses and normal_address(address) not in admission.addresses:
        return Verdict(b"400", f"node {node}'s key from {address}, not one of its addresses")
    return Verdict(b"200", "OK", node)


class Gatekeeper:
    """The ZAP handler of one ZeroMQ context. Get it with :meth:`acquire` (one per context,
    shared by its links) and give it back with :meth:`release`; it stops with the last user.
    Each link :meth:`admit`s its ZAP domain before it binds, and :meth:`forget`s it after it
    closed its socket."""

    _gates: ClassVar[dict[int, Gatekeeper]] = {}
    _gates_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.context = context
        self._admissions: dict[str, Admission] = {}
        self._lock = threading.Lock()
        self._users = 0
        self._refused: Counter[str] = Counter()
        self._admitted: Counter[str] = Counter()
        #: (domain, reason) -> (when last logged at warning level, refusals not logged since)
        self._quiet: dict[tuple[str, str], tuple[float, int]] = {}
        self._socket: zmq.Socket[bytes] = context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            bind_retrying(self._socket, ZAP_ENDPOINT, _BIND_RETRY_S)
        except zmq.ZMQError as err:
            self._socket.close(linger=0)
            raise RuntimeError(
                f"cannot serve ZAP at {ZAP_ENDPOINT} ({err.strerror}): another ZAP handler "
                "runs in this ZeroMQ context; give the links a context of their own"
            ) from err
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, name="vigil-zap", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls, context: zmq.Context[zmq.Socket[bytes]]) -> Gatekeeper:
        with cls._gates_lock:
            gate = cls._gates.get(id(context))
            if gate is None:
                gate = cls._gates[id(context)] = cls(context)
            gate._users += 1
            return gate

    def release(self) -> None:
        with self._gates_lock:
            self._users -= 1
            if self._users > 0:
                return
            del self._gates[id(self.context)]
        with contextlib.suppress(BrokenPipeError):  # the thread stopped on an error
            os.write(self._wake_w, b"x")
        self._thread.join()
        os.close(self._wake_w)

    def admit(self, domain: str, admission: Admission) -> None:
        with self._lock:
            if domain in self._admissions:
                raise ValueError(f"ZAP domain {domain!r} is already in use in this context")
            self._admissions = {**self._admissions, domain: admission}

    def forget(self, domain: str) -> None:
        with self._lock:
            self._admissions = {d: a for d, a in self._admissions.items() if d != domain}

    @property
    def refused(self) -> Counter[str]:
        """Refusals so far by ZAP domain (a snapshot)."""
        with self._lock:
            return Counter(self._refused)

    @property
    def admitted(self) -> Counter[str]:
        """Admissions so far by ZAP domain (a snapshot)."""
        with self._lock:
            return Counter(self._admitted)

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self._wake_r in ready:
                    return
                if self._socket in ready:
                    self._answer(self._socket.recv_multipart())
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as err:
            log.critical("the ZAP handler stopped (%s): no peer can connect to this node's "
                         "links until the daemon restarts", err)
        finally:
            self._socket.close(linger=0)
            os.close(self._wake_r)

    def _answer(self, request: list[bytes]) -> None:
        if len(request) < 6:
            # libzmq never sends this; answering keeps the REP socket's turn right
            self._socket.send_multipart([b"1.0", b"", b"500", b"malformed request", b"", b""])
            return
        version, request_id, domain, address, _identity, mechanism, *credentials = request
        if version != b"1.0":
            self._socket.send_multipart([b"1.0", request_id, b"500", b"ZAP 1.0 only", b"", b""])
            return
        name = domain.decode("utf-8", "replace")
        with self._lock:
            admissions = self._admissions
        verdict = decide(admissions, name, address.decode("ascii", "replace"), mechanism,
                         credentials)
        self._socket.send_multipart([version, request_id, verdict.status,
                                     verdict.text.encode(), verdict.user.encode(), b""])
        with self._lock:
            (self._admitted if verdict.admitted else self._refused)[name] += 1
        if not verdict.admitted:
            self._log_refusal(name, address.decode("ascii", "replace"), verdict.text)

    def _log_refusal(self, domain: str, address: str, reason: str) -> None:
        # an attacker decides how often this happens: one line per minute and reason at most
        key = (domain, reason.split(" from ")[0])
        now = time.monotonic()
        last, quiet = self._quiet.get(key, (float("-inf"), 0))
        if now - last < REFUSAL_LOG_INTERVAL_S:
            self._quiet[key] = (last, quiet + 1)
            return
        self._quiet[key] = (now, 0)
        more = f" ({quiet} more refused for this reason since the last such line)" if quiet \
            else ""
        log.warning("link %s: refused a connection from %s: %s%s", domain, address, reason,
                    more)


def bind_retrying(sock: zmq.Socket[bytes], endpoint: str, seconds: float) -> None:
    """Bind, trying again for ``seconds`` while the endpoint is taken: a socket of this process
    that just closed frees its endpoint asynchronously (libzmq's I/O thread does it)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError as err:
            if err.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.005)
