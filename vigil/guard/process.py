"""The guardian process, ``vigil guard``: one per node, beside the daemon.

A single thread around one selector: the listening socket, the daemon's connection and a
signal pipe, with no wait longer than the core's next deadline (:mod:`vigil.guard.core`
decides, this module carries out). It raises its own priority where it may (SCHED_RR, else
nice -20; memory locked) so that a loaded node does not delay it, and says in the log what it
got. Fences run in the loop itself (:mod:`vigil.guard.fence`): nothing else is worth doing
meanwhile.

Files it writes, both configurable so that tests can give stand-ins (never the real ones):
the watchdog device (``[guardian] watchdog_device``, or ``--watchdog-device``), petted with
one byte, closed with the magic 'V' on a clean exit; the kernel's reboot trigger
(``/proc/sysrq-trigger``, or ``--sysrq-trigger`` for tests), written 'b' to reboot at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import logging
import math
import os
import select
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vigil.config import ClusterConfig, ConfigError, load, load_key, resolve_node
from vigil.guard.announce import Announcer
from vigil.guard.cgroups import NodeCgroups
from vigil.guard.core import (
    Action,
    Announce,
    CloseWatchdog,
    Fence,
    GuardCore,
    Output,
    Pet,
    Reboot,
    SelfFence,
)
from vigil.guard.fence import Fencer
from vigil.guard.protocol import (
    MAX_LINE,
    SOCKET_NAME,
    Bye,
    Error,
    Fenced,
    Hello,
    LineReader,
    Message,
    ProtocolError,
    Report,
    Welcome,
    decode,
    encode,
)
from vigil.journal import configure
from vigil.local.access import peer_of, socket_in_use
from vigil.local.rundir import prepare_runtime_dir
from vigil.sdnotify import SdNotify

__all__ = ["DEFAULT_SYSRQ", "GuardSettings", "Guardian", "configure_logging", "main", "run"]

log = logging.getLogger("vigil.guard")

DEFAULT_SYSRQ: Final = Path("/proc/sysrq-trigger")
#: SCHED_RR priority: above every ordinary process, below the kernel's own threads.
RT_PRIORITY: Final = 10
_MCL_CURRENT: Final = 1
_MCL_FUTURE: Final = 2
_PET: Final = b"."  # anything but 'V', which would allow the watchdog to stop on close
_MAGIC_CLOSE: Final = b"V"
#: How long the guardian waits, after the daemon's connection closed, for its process to be
#: dead before it tells the peers so (an exit closes the descriptors a moment before).
DEATH_WAIT: Final = 0.1
#: A daemon that does not read its messages loses the newest ones past this.
_OUT_LIMIT: Final = 4 * MAX_LINE


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """Everything the guardian needs, from the cluster file and the command line."""

    node: str
    socket_path: Path
    cluster: str = ""  # in the cgroup's name (vigil.guard.cgroups)
    guard_time: float = 0.1
    self_fence: SelfFence = "kill"
    watchdog_device: Path | None = None
    watchdog_interval: float = 1.0
    sysrq_path: Path = DEFAULT_SYSRQ
    cgroup_root: Path | None = None  # None: the cgroup2 mount
    realtime: bool = True
    #: started by its daemon (`vigil node run`), not by systemd: it leaves with the daemon
    #: (after its bye), or once no daemon came back for this long with nothing held
    follow_daemon: bool = False
    orphan_timeout: float = 60.0
    #: admin_group or status_group is set: the runtime directory is traversable by others
    #: (vigil.local.rundir), as the daemon makes it
    shared_runtime_dir: bool = False
    #: netlink (pyroute2) is opened at start: the configuration has ip resources; otherwise
    #: once the daemon first reports an address held (vigil.guard.fence.Fencer.ready_for)
    netlink_at_start: bool = True

    @classmethod
    def from_config(cls, cfg: ClusterConfig, node: str, *,
                    watchdog_device: Path | None = None, sysrq_path: Path | None = None,
                    realtime: bool = True, follow_daemon: bool = False) -> GuardSettings:
        g = cfg.guardian
        return cls(node=node, socket_path=cfg.nodes[node].runtime_dir / SOCKET_NAME,
                   cluster=cfg.name, guard_time=cfg.timing.guard_time, self_fence=g.self_fence,
                   watchdog_device=watchdog_device or g.watchdog_device,
                   watchdog_interval=g.watchdog_interval,
                   sysrq_path=sysrq_path or DEFAULT_SYSRQ, realtime=realtime,
                   follow_daemon=follow_daemon,
                   shared_runtime_dir=bool(cfg.admin_group or cfg.status_group),
                   netlink_at_start=any(r.type == "ip" for r in cfg.resources.values()))


def _wall(monotonic: float) -> str:
    """A monotonic time as the wall clock showed it, for the log."""
    if not math.isfinite(monotonic):
        return "never" if monotonic < 0 else "forever"
    stamp = time.time() - (time.monotonic() - monotonic)
    return datetime.datetime.fromtimestamp(stamp).strftime("%H:%M:%S.%f")[:-3]


def raise_priority() -> list[str]:
    """SCHED_RR (else nice -20) and locked memory, where allowed; what was got, in words."""
    got = []
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(RT_PRIORITY))
        got.append(f"SCHED_RR priority {RT_PRIORITY}")
    except (OSError, AttributeError) as exc:
        got.append(f"no real-time priority ({exc})")
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -20)
            got.append("nice -20")
        except OSError as nice_exc:
            got.append(f"normal priority ({nice_exc})")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(_MCL_CURRENT | _MCL_FUTURE) == 0:
        got.append("memory locked")
    else:
        got.append(f"memory not locked ({os.strerror(ctypes.get_errno())})")
    return got


class _Daemon:
    """The daemon's connection."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.peer_pid = pid
        # the process itself (its number could be reused once it is dead): to know that it
        # is dead, not merely disconnected, before telling the peers so
        try:
            self.pidfd: int | None = os.pidfd_open(pid)
        except OSError:
            self.pidfd = None
        self.reader = LineReader()
        self.out = bytearray()
        self.hello: Hello | None = None
        self.said_bye = False

    @property
    def name(self) -> str:
        return f"pid {self.hello.pid if self.hello else self.peer_pid}"


class Guardian:
    """The loop. :meth:`open` binds the socket and opens the watchdog; :meth:`run` serves
    until SIGTERM/SIGINT (or :meth:`stop`)."""

    def __init__(self, settings: GuardSettings, announcer: Announcer | None = None) -> None:
        self.settings = settings
        #: tells the peers when the daemon died and the node holds nothing (None: it cannot)
        self.announcer = announcer
        self._dead_pidfd: int | None = None  # the pidfd of the daemon that left last
        #: why a fence since the last hello cannot vouch that nothing runs any more: resources
        #: it could not see into (no cgroup, no process group), or a mount not there yet
        #: (a mount(8) of the dying daemon may still be under way, and finish after the fence)
        self._unsure: list[str] = []
        self.cgroups = NodeCgroups(settings.node, settings.cgroup_root,
                                   cluster=settings.cluster)
        self.fencer = Fencer(self.cgroups, settings.guard_time)
        self.core = GuardCore(
            time.monotonic(), self_fence=settings.self_fence,
            watchdog_interval=settings.watchdog_interval if settings.watchdog_device else None)
        self.selector = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.daemon: _Daemon | None = None
        self.watchdog: int | None = None
        self.deadline = math.inf
        self.stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self.cgroup_status = ""

    # -- setting up ---------------------------------------------------------------------------

    def open(self) -> None:
        s = self.settings
        got = raise_priority() if s.realtime else ["normal priority (--no-realtime)"]
        self.cgroup_status = self.cgroups.describe()
        if self.cgroups.holds(os.getpid()):
            raise RuntimeError(f"the guardian runs inside {self.cgroups.path}, which a fence "
                               "kills whole: start it outside the node's cgroup")
        got.append(self.fencer.open() if s.netlink_at_start
                   else "netlink opened when an address is first held")
        path = s.socket_path
        prepare_runtime_dir(path.parent, s.shared_runtime_dir)  # the daemon's rules, or refuse
        if path.exists() or path.is_symlink():
            if socket_in_use(path):
                raise RuntimeError(f"another guardian already listens on {path}; stop it first")
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # never a moment with a wider mode
        try:
            listener.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        listener.listen(4)
        listener.setblocking(False)
        self.listener = listener
        self.selector.register(listener, selectors.EVENT_READ, "listen")
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        if s.watchdog_device is not None:
            # Opening a real watchdog device starts it: from here on it must be petted.
            self.watchdog = os.open(s.watchdog_device, os.O_WRONLY | os.O_CLOEXEC)
        log.info("guardian of node %s: listening on %s; guard_time %.0f ms; self_fence %s; "
                 "watchdog %s; %s; %s", s.node, path, s.guard_time * 1000, s.self_fence,
                 f"{s.watchdog_device} every {s.watchdog_interval:g}s" if s.watchdog_device
                 else "none", self.cgroup_status, ", ".join(got))
        self._apply(self.core.tick(time.monotonic()))

    def stop(self) -> None:
        """Leave the loop (from a signal handler or another thread)."""
        self.stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        alone_since = time.monotonic()
        while not self.stopping:
            timeout = None if self.deadline == math.inf else \
                max(0.0, self.deadline - time.monotonic())
            if self.settings.follow_daemon:
                timeout = min(timeout if timeout is not None else 1.0, 1.0)
                now = time.monotonic()
                if self.daemon is not None or not self.core.holdings.empty:
                    alone_since = now
                elif now - alone_since > self.settings.orphan_timeout:
                    log.info("no daemon for %.0fs and nothing held: leaving",
                             self.settings.orphan_timeout)
                    break
            for key, events in self.selector.select(timeout):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                elif self.daemon is not None and key.fileobj is self.daemon.sock:
                    if events & selectors.EVENT_WRITE:
                        self._write()
                    if events & selectors.EVENT_READ:
                        self._read()
            self._apply(self.core.tick(time.monotonic()))
        self._apply(self.core.shutdown(time.monotonic()))
        return 0

    def close(self) -> None:
        if self.daemon is not None:
            self._drop_daemon()
        if self.announcer is not None:
            self.announcer.close()
        self._forget_dead()
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.selector.unregister(self.listener)
            self.listener.close()
            self.listener = None
            with contextlib.suppress(OSError):
                self.settings.socket_path.unlink()
        if self.watchdog is not None:
            # Not disarmed (shutdown() did that when it should): the hardware keeps counting.
            os.close(self.watchdog)
            self.watchdog = None
        self.fencer.close()
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- the daemon's connection --------------------------------------------------------------

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        peer = peer_of(sock)
        refusal = None
        if peer.uid != os.geteuid():
            refusal = f"{peer} may not talk to the guardian (root only)"
        elif self.daemon is not None:
            refusal = f"the daemon {self.daemon.name} is connected already; one daemon a node"
        if refusal is not None:
            log.error("refused a connection: %s", refusal)
            with contextlib.suppress(OSError):
                sock.send(encode(Error(refusal)), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            sock.close()
            return
        self.daemon = _Daemon(sock, peer.pid)
        self.selector.register(sock, selectors.EVENT_READ, "daemon")

    def _read(self) -> None:
        daemon = self.daemon
        assert daemon is not None
        try:
            data = daemon.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            data = b""
            log.warning("reading from the daemon %s failed: %s", daemon.name, exc)
        if not data:
            self._daemon_left(daemon)
            return
        for item in daemon.reader.feed(data):
            if isinstance(item, ProtocolError):
                self._refuse(daemon, str(item))
                continue
            try:
                message = decode(item)
            except ProtocolError as exc:
                self._refuse(daemon, str(exc))
                continue
            self._receive(daemon, message)
            if self.daemon is not daemon:
                return

    def _refuse(self, daemon: _Daemon, why: str) -> None:
        log.error("dropped a message from the daemon %s: %s", daemon.name, why)
        self._send(Error(f"dropped: {why}"))

    def _receive(self, daemon: _Daemon, message: Message) -> None:
        now = time.monotonic()
        match message:
            case Hello(node, pid):
                if daemon.hello is not None:
                    self._refuse(daemon, "hello was said already")
                elif node != self.settings.node:
                    text = f"this guardian guards node {self.settings.node}, not {node}"
                    log.error("refused the daemon pid %d: %s", pid, text)
                    self._send(Error(text))
                    self._write()
                    self._drop_daemon()
                else:
                    daemon.hello = message
                    self._unsure = []
                    if self.announcer is not None:
                        self.announcer.cancel()  # it needs its ports
                    self._send(Welcome(self.settings.node, os.getpid(),
                                       self.settings.guard_time, self.settings.self_fence,
                                       self.cgroup_status))
                    self._apply(self.core.hello(daemon.name, now))
            case Report(lease_until, holdings, incarnation) if daemon.hello is not None:
                opened = self.fencer.ready_for(holdings, now)
                if opened is not None:  # before any fence of these holdings can be due
                    log.info("the node holds an address: %s", opened)
                self._apply(self.core.report(lease_until, holdings, now, incarnation))
            case Bye() if daemon.hello is not None:
                daemon.said_bye = True
                self._apply(self.core.bye(now))
            case Report() | Bye():
                self._refuse(daemon, f"{type(message).__name__.lower()} before hello")
            case _:
                self._refuse(daemon, f"a {type(message).__name__.lower()} message is the "
                             "guardian's to send, not the daemon's")

    def _daemon_left(self, daemon: _Daemon) -> None:
        if daemon.reader.pending:
            log.warning("the daemon %s closed the connection in the middle of a message",
                        daemon.name)
        if daemon.hello is not None and not daemon.said_bye:
            # the daemon that may have died: its process is the one the peers may be told of
            # (a client that never said hello, e.g. another guardian probing the socket, is not)
            self._forget_dead()
            self._dead_pidfd, daemon.pidfd = daemon.pidfd, None
        self._drop_daemon()
        if not daemon.said_bye:
            if daemon.hello is None:
                log.info("a client (pid %d) left without saying hello", daemon.peer_pid)
                return
            self._apply(self.core.daemon_gone(time.monotonic()))
        else:
            log.info("the daemon %s left after bye", daemon.name)
            if self.settings.follow_daemon:
                self.stop()

    def _drop_daemon(self) -> None:
        daemon, self.daemon = self.daemon, None
        if daemon is None:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(daemon.sock)
        daemon.sock.close()
        if daemon.pidfd is not None:
            os.close(daemon.pidfd)
            daemon.pidfd = None

    def _forget_dead(self) -> None:
        if self._dead_pidfd is not None:
            os.close(self._dead_pidfd)
            self._dead_pidfd = None

    def _daemon_dead(self) -> bool:
        """Whether the daemon that left has exited: its connection closes while it exits,
        a moment before it is dead, so wait for that moment (a bounded one)."""
        if self._dead_pidfd is None:
            return False
        readable, _, _ = select.select([self._dead_pidfd], [], [], DEATH_WAIT)
        return bool(readable)

    def _send(self, message: Message) -> None:
        daemon = self.daemon
        if daemon is None:
            return
        if len(daemon.out) > _OUT_LIMIT:
            log.warning("the daemon %s does not read: dropped a %s message for it",
                        daemon.name, type(message).__name__.lower())
            return
        daemon.out += encode(message)
        self._write()

    def _write(self) -> None:
        daemon = self.daemon
        if daemon is None:
            return
        try:
            while daemon.out:
                sent = daemon.sock.send(daemon.out, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
                del daemon.out[:sent]
        except BlockingIOError:
            pass
        except OSError as exc:
            log.warning("writing to the daemon %s failed: %s", daemon.name, exc)
            daemon.out.clear()
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if daemon.out else 0)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.modify(daemon.sock, wanted, "daemon")

    # -- actions ------------------------------------------------------------------------------

    def _apply(self, output: Output) -> None:
        # Set first: a fence among the actions feeds the core again, whose answer is newer.
        self.deadline = output.deadline
        for note in output.notes:
            log.info("%s", note)
        for action in output.actions:
            self._act(action)

    def _act(self, action: Action) -> None:
        match action:
            case Fence():
                self._fence(action)
            case Announce(incarnation):
                self._announce(incarnation)
            case Pet():
                self._write_watchdog(_PET)
            case Reboot(reason):
                self._reboot(reason)
            case CloseWatchdog(disarm):
                if self.watchdog is not None:
                    if disarm:
                        self._write_watchdog(_MAGIC_CLOSE)
                        log.info("watchdog %s disarmed (magic close)",
                                 self.settings.watchdog_device)
                    else:
                        log.warning("watchdog %s left armed", self.settings.watchdog_device)
                    os.close(self.watchdog)
                    self.watchdog = None

    def _fence(self, fence: Fence) -> None:
        reason = fence.why(_wall)
        report = self.fencer.fence(fence.holdings, reason,
                                   reboot=self.settings.self_fence == "reboot")
        self._unsure += [f"{r.name} (no cgroup, no process group to see into)"
                         for r in fence.holdings.resources if r.opaque]
        self._unsure += [f"{r.name} ({m.mountpoint} not unmounted by the fence: not mounted "
                         "yet, and a mount may still have been under way, or busy)"
                         for r in fence.holdings.resources for m in r.mounts
                         if m not in report.unmounted]
        line = f"{reason}: {report.summary()}"
        if report.took > self.settings.guard_time:
            line += (f" (longer than guard_time {self.settings.guard_time * 1000:.0f} ms)")
        (log.error if report.problems else log.warning)("FENCED node %s: %s",
                                                        self.settings.node, line)
        self._send(Fenced(report))
        self._apply(self.core.fence_done(fence, report.remaining, time.monotonic()))

    def _announce(self, incarnation: int) -> None:
        if self.announcer is None:
            return
        if self._unsure:
            log.warning("the peers are not told the daemon died (they wait out its lease): "
                        "the fence cannot vouch for %s", "; ".join(sorted(set(self._unsure))))
            return
        if not self._daemon_dead():
            log.warning("the daemon's connection closed but its process did not exit within "
                        "%.0f ms: the peers are not told it is dead (they wait out its lease)",
                        DEATH_WAIT * 1000)
            return
        self._forget_dead()
        self.announcer.announce(incarnation)

    def _write_watchdog(self, data: bytes) -> None:
        if self.watchdog is None:
            return
        try:
            os.write(self.watchdog, data)
        except OSError as exc:
            log.error("cannot write to the watchdog %s: %s", self.settings.watchdog_device, exc)

    def _reboot(self, reason: str) -> None:
        path = self.settings.sysrq_path
        log.critical("REBOOTING node %s now through %s: %s", self.settings.node, path, reason)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"b")
            finally:
                os.close(fd)
        except OSError as exc:
            log.critical("cannot reboot through %s: %s; the watchdog (if any) is no longer "
                         "petted", path, exc)


def configure_logging(level: str, node: str) -> None:
    configure(level, f"[{node} guardian]", node, identifier="vigil-guard")


def run(settings: GuardSettings, announcer: Announcer | None = None) -> int:
    """Serve until SIGTERM or SIGINT; the exit code."""
    guardian = Guardian(settings, announcer)
    # vigil-guard.service is Type=notify: the daemon's unit, ordered after it, starts once the
    # guardian listens (the variable is gone when the daemon started this guardian itself)
    systemd = SdNotify.from_environment(unset=True)

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %s: leaving", signal.Signals(signum).name)
        systemd.send("STOPPING=1")
        guardian.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        guardian.open()
    except (OSError, RuntimeError) as exc:
        log.critical("guardian of node %s cannot start: %s", settings.node, exc)
        guardian.close()
        return 1
    systemd.send("READY=1", f"STATUS=listening at {settings.socket_path}")
    try:
        return guardian.run()
    finally:
        guardian.close()
        log.info("guardian of node %s stopped", settings.node)


def main(config_path: str, node: str | None, *, watchdog_device: str | None = None,
         sysrq_trigger: str | None = None, realtime: bool = True,
         log_level: str = "info", follow_daemon: bool = False) -> int:
    """``vigil guard``: load the configuration, then :func:`run`."""
    try:
        cfg = load(config_path)
        name = resolve_node(cfg, node)
    except ConfigError as exc:
        print(f"vigil guard: refusing to start:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(log_level, name)
    announcer = None
    if len(cfg.nodes) > 1:
        try:
            announcer = Announcer(cfg, name, load_key(cfg))
        except ConfigError as exc:
            log.warning("the guardian cannot tell the peers when the daemon dies (they will "
                        "wait out its lease): %s", exc)
    settings = GuardSettings.from_config(
        cfg, name, watchdog_device=Path(watchdog_device) if watchdog_device else None,
        sysrq_path=Path(sysrq_trigger) if sysrq_trigger else None, realtime=realtime,
        follow_daemon=follow_daemon)
    return run(settings, announcer)

