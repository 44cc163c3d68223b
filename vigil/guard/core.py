"""The guardian's decisions: when to fence this node, when to pet the watchdog, when to reboot.

Pure and clock-injected, like :mod:`vigil.cluster`: no sockets, no clock, no sleeps. Every
input carries ``now`` (``time.monotonic()``, which the daemon and the guardian share: both read
the kernel's CLOCK_MONOTONIC) and every answer is an :class:`Output`: the actions to carry out,
in order, and the next deadline at which :meth:`GuardCore.tick` must be called. The guardian
process (:mod:`vigil.guard.process`) carries the actions out; docs/fencing.md says why.

Everything that decides is in this file. The rules:

1. The latest report is the truth: it replaces the lease deadline and the holdings (a daemon
   may shorten its lease as well as extend it). ``lease_until`` is absolute; ``math.inf``
   means no lease is needed (a one-node quorum), ``-math.inf`` (or None) that there is none.
2. Fence when something is held and the lease has run out (``now >= lease_until``), or when
   the daemon is gone (its connection closed without ``bye``) while holding something. The
   deadline asked for is ``lease_until`` itself, so the fence is due exactly when the lease
   ends; the guardian's reaction to it is what ``guard_time`` bounds.
3. Never fence with nothing held.
4. Deadlines are handled before the input that comes with them: a report read after the lease
   it replaces has run out does not save what that lease covered (exclusivity first).
5. After a fence the node holds only what the fence could not remove
   (:meth:`GuardCore.fence_done`); that is fenced again every ``retry_interval``, until a
   report or bye that came after the fence says what the node holds now.
6. With ``self_fence = "reboot"`` the first fence is followed by a reboot, the last word.
7. The watchdog is petted every ``watchdog_interval``, only while nothing is held or the lease
   is valid, never in the output of a fence, never once a reboot was asked for: a guardian that
   hangs, or a fence that cannot finish, lets the hardware reset the node.
8. ``bye``: the daemon stopped everything; nothing is held, nothing is fenced.
9. A clean exit disarms the watchdog (its magic close), unless a reboot was asked for.
10. A finite lease more than :data:`MAX_LEASE_AHEAD` ahead is not believed (most likely a
    wall-clock time sent by mistake): the report counts as one without a valid lease.
11. When the daemon is gone without bye and the node holds nothing (it held nothing, or a
    fence removed all of it), the peers are told so in the name of the daemon's incarnation
    (:class:`Announce`, once per death, only if a report named the incarnation): they need
    not wait out its lease. The process says it only once the daemon's process is dead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from vigil.guard.holdings import Holdings

__all__ = [
    "Action",
    "Announce",
    "CloseWatchdog",
    "Fence",
    "GuardCore",
    "Output",
    "Pet",
    "Reboot",
    "SelfFence",
    "lease_text",
]

SelfFence = Literal["kill", "reboot"]

#: How often a fence that left something behind is tried again.
DEFAULT_RETRY_INTERVAL = 1.0
#: Leases are seconds long; a deadline further ahead than this is a daemon's mistake.
MAX_LEASE_AHEAD = 3600.0


def lease_text(lease_until: float, now: float) -> str:
    """A lease deadline in words, relative to ``now``."""
    if lease_until == math.inf:
        return "no lease needed"
    if lease_until == -math.inf:
        return "no valid lease"
    delta = lease_until - now
    return f"lease until {delta * 1000:+.0f} ms from now"


# ---- actions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Fence:
    """Kill, remove and unmount everything in ``holdings``, at once, and tell the daemon."""

    holdings: Holdings
    cause: Literal["lease", "daemon gone", "retry"]
    #: the lease that ran out (cause "lease"), -inf when there was none
    lease_until: float = -math.inf
    #: when the daemon last reported (-inf: never)
    last_report: float = -math.inf
    daemon: str = ""  # "pid 123" of the daemon, when known
    #: how many reports and byes the core had taken when it fenced (see fence_done)
    generation: int = 0

    def why(self, when: Callable[[float], str]) -> str:
        """The decision as a sentence; ``when`` renders a monotonic time for the log."""
        silent = (f"daemon silent since {when(self.last_report)}"
                  if self.last_report > -math.inf else "no report from the daemon yet")
        who = f"the daemon ({self.daemon})" if self.daemon else "the daemon"
        if self.cause == "lease":
            ran_out = (f"lease ran out at {when(self.lease_until)}"
                       if self.lease_until > -math.inf else "no valid lease")
            return f"{ran_out}, {silent}"
        if self.cause == "daemon gone":
            return f"{who} is gone without saying bye, holding {len(self.holdings.names)} " \
                   f"resource(s)"
        return "a fence left something behind: trying again"


@dataclass(frozen=True, slots=True)
class Announce:
    """Tell the peers that the daemon of ``incarnation`` is dead and the node holds nothing
    (rule 11): a goodbye in its name, as its clean leave would have said."""

    incarnation: int


@dataclass(frozen=True, slots=True)
class Pet:
    """Write to the watchdog device (keep the node alive)."""


@dataclass(frozen=True, slots=True)
class Reboot:
    """Reboot through the kernel at once (``self_fence = "reboot"``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class CloseWatchdog:
    """Close the watchdog device; ``disarm``: write the magic 'V' first, so that it stops."""

    disarm: bool


Action = Fence | Announce | Pet | Reboot | CloseWatchdog


@dataclass(frozen=True, slots=True)
class Output:
    actions: tuple[Action, ...] = ()
    deadline: float = math.inf  # call tick() at this time (inf: only on input)
    notes: tuple[str, ...] = field(default=())  # decisions worth a log line


# ---- the state machine ----------------------------------------------------------------------


class GuardCore:
    """The guardian's state: the latest report, the daemon's connection, the watchdog."""

    def __init__(self, now: float, *, self_fence: SelfFence = "kill",
                 watchdog_interval: float | None = None,
                 retry_interval: float = DEFAULT_RETRY_INTERVAL) -> None:
        if watchdog_interval is not None and not watchdog_interval > 0:
            raise ValueError(f"watchdog_interval must be > 0, got {watchdog_interval!r}")
        if not retry_interval > 0:
            raise ValueError(f"retry_interval must be > 0, got {retry_interval!r}")
        self.self_fence: SelfFence = self_fence
        self.watchdog_interval = watchdog_interval
        self.retry_interval = retry_interval
        self.holdings = Holdings()
        self.lease_until = -math.inf
        self.last_report = -math.inf
        self.connected = False
        self.daemon = ""
        self.rebooting = False
        self.fences = 0
        self.incarnation = 0  # the daemon's, from its latest report (0: not told)
        self._gone = 0  # the incarnation of a daemon gone without bye, not yet announced
        self._generation = 0  # reports and byes taken
        self._retry_at = math.inf  # finite only while what a fence left is held
        self._next_pet = now if watchdog_interval is not None else math.inf

    # -- questions ----------------------------------------------------------------------------

    def lease_valid(self, now: float) -> bool:
        return now < self.lease_until

    def may_pet(self, now: float) -> bool:
        """Rule 7, without the timing: whether petting now is allowed at all."""
        return (self.watchdog_interval is not None and not self.rebooting
                and (self.holdings.empty or self.lease_valid(now)))

    def describe(self, now: float) -> str:
        who = f"daemon {self.daemon}" if self.connected else "no daemon connected"
        return f"{who}; holds {self.holdings}; {lease_text(self.lease_until, now)}"

    # -- inputs -------------------------------------------------------------------------------

    def hello(self, daemon: str, now: float) -> Output:
        """A daemon connected (``daemon``: how the log names it, e.g. "pid 123")."""
        before = self._due(now)
        self.connected, self.daemon = True, daemon
        self._gone = 0  # a daemon runs again: it speaks for itself
        return self._answer(now, before, (f"daemon {daemon} connected",))

    def report(self, lease_until: float | None, holdings: Holdings, now: float,
               incarnation: int = 0) -> Output:
        """The daemon's report: its lease deadline and everything it holds (rule 1), and its
        incarnation in the cluster (0: not told)."""
        notes: tuple[str, ...] = ()
        if lease_until is None or math.isnan(lease_until):
            lease_until = -math.inf
        elif math.isfinite(lease_until) and lease_until - now > MAX_LEASE_AHEAD:
            notes = (f"the daemon reported a lease {lease_until - now:.0f} s ahead, more than "
                     f"{MAX_LEASE_AHEAD:.0f} s: not believed (a wall-clock time instead of "
                     "time.monotonic()?); taken as no valid lease",)
            lease_until = -math.inf
        before = self._due(now)
        self._generation += 1
        self.lease_until = lease_until
        self.holdings = holdings
        self.last_report = now
        if incarnation:
            self.incarnation = incarnation
        # A report supersedes what a failed fence left: the daemon says what is there now.
        self._retry_at = math.inf
        return self._answer(now, before, notes)

    def bye(self, now: float) -> Output:
        """The daemon stopped everything and is leaving (rule 8)."""
        before = self._due(now)
        self._generation += 1
        held = self.holdings
        self.holdings, self.lease_until, self._retry_at = Holdings(), -math.inf, math.inf
        self.connected = False
        self.incarnation = 0
        notes = (f"daemon {self.daemon} said bye"
                 + (f" (it had last reported {held})" if held else ""),)
        return self._answer(now, before, notes)

    def daemon_gone(self, now: float) -> Output:
        """The daemon's connection closed without bye: killed, crashed, out of memory."""
        before = self._due(now)
        was = self.connected
        self.connected = False
        if was:
            self._gone, self.incarnation = self.incarnation, 0
        if not self.holdings:
            note = f"daemon {self.daemon} is gone, holding nothing" if was else ""
            # a fence due on the way announces once it is done (fence_done), not before
            told = () if before else self._announce()
            return self._answer(now, before + told, (note,) if note else ())
        fence = self._fence("daemon gone", now)
        return self._answer(now, before + fence)

    def tick(self, now: float) -> Output:
        """Time has passed; due deadlines are handled."""
        return self._answer(now, self._due(now))

    def fence_done(self, fence: Fence, remaining: Holdings, now: float) -> Output:
        """What ``fence`` could not remove (empty: all of it went) (rule 5)."""
        if not remaining:
            done = fence.generation == self._generation and not self.holdings
            return self._answer(now, self._announce() if done else ())
        if fence.generation != self._generation:
            # A report (or bye) taken after this fence, in the same input, says what the node
            # holds now; the daemon learns from the fence's report what went.
            note = f"the fence left {remaining}, which the daemon's newer report replaces"
            return self._answer(now, (), (note,))
        self.holdings = self.holdings.merged(remaining)
        self.lease_until = -math.inf
        self._retry_at = now + self.retry_interval
        notes = (f"the fence left {remaining}: trying again in {self.retry_interval:g}s"
                 + ("" if self.watchdog_interval is None else "; the watchdog is not petted"),)
        return self._answer(now, (), notes)

    def shutdown(self, now: float) -> Output:
        """The guardian is leaving cleanly (rule 9)."""
        notes: tuple[str, ...] = ()
        if self.holdings:
            notes = (f"leaving while the daemon holds {self.holdings}: the daemon stops its "
                     "groups when it sees the guardian gone",)
        actions: tuple[Action, ...] = ()
        if self.watchdog_interval is not None:
            actions = (CloseWatchdog(disarm=not self.rebooting),)
        self._next_pet = math.inf
        return Output(actions, math.inf, notes)

    # -- rules --------------------------------------------------------------------------------

    def _announce(self) -> tuple[Action, ...]:
        """Rule 11, once the node holds nothing: the daemon's death, if not yet told."""
        if not self._gone or self.connected or self.holdings or self.rebooting:
            return ()
        incarnation, self._gone = self._gone, 0
        return (Announce(incarnation),)

    def _due(self, now: float) -> tuple[Action, ...]:
        """Rules 2 and 5: a fence whose time has come."""
        if not self.holdings:
            return ()
        if self._retry_at < math.inf:
            return self._fence("retry", now) if now >= self._retry_at else ()
        return self._fence("lease", now) if now >= self.lease_until else ()

    def _fence(self, cause: Literal["lease", "daemon gone", "retry"],
               now: float) -> tuple[Action, ...]:
        fence = Fence(holdings=self.holdings, cause=cause, lease_until=self.lease_until,
                      last_report=self.last_report, daemon=self.daemon,
                      generation=self._generation)
        # Optimistic until fence_done() says what is left: the process executes the fence
        # before it feeds the core anything else.
        self.holdings = Holdings()
        self.lease_until = -math.inf
        self._retry_at = math.inf
        self.fences += 1
        if self.self_fence == "reboot" and not self.rebooting:
            self.rebooting = True
            return fence, Reboot(f'self_fence = "reboot", after a fence ({cause})')
        return (fence,)

    def _answer(self, now: float, actions: tuple[Action, ...],
                notes: tuple[str, ...] = ()) -> Output:
        # The state after the input may itself be due (a report of holdings without a lease).
        actions += self._due(now)
        fenced = any(isinstance(a, Fence) for a in actions)
        if not fenced and self.may_pet(now) and now >= self._next_pet:
            assert self.watchdog_interval is not None
            actions += (Pet(),)
            self._next_pet = now + self.watchdog_interval
        return Output(actions, self._deadline(now), notes)

    def _deadline(self, now: float) -> float:
        deadline = math.inf
        if self.holdings:
            # The retry of a fence that left something behind, or else the lease's end.
            deadline = self._retry_at if self._retry_at < math.inf else self.lease_until
        if self.may_pet(now):
            deadline = min(deadline, max(self._next_pet, now))
        return deadline
