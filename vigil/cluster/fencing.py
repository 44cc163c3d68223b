"""Power fencing as decisions of the core: which level runs, when, and what its result means.

The master decides *whom* to fence (a lost node that may still run groups, from
:func:`~vigil.cluster.placement.plan`; a member whose stop failed; an operator's request);
this module decides *how*, with no clock and no I/O. The shell only runs agents: one
:class:`~vigil.cluster.events.FenceNode` is one level, answered by one
:class:`~vigil.cluster.events.FenceDone`.

- **Levels.** A node's levels (``ClusterConfig.fence_levels``) are tried in order; the first
  whose devices all succeed fences it. When every level failed, the whole topology is tried
  again ``[fencing] retry_interval`` later, for as long as the node must be fenced (an
  operator's `vigil node fence` runs the levels once).
- **Delays** before the first attempt on a lost node, against two sides of a split shooting
  each other at once: up to ``delay_max``, drawn from a hash of the epoch and the node
  (:func:`fence_delay`; the same story gives the same delay, so a simulation replays), plus
  ``priority_delay`` when the node ran more groups than the side fencing it, so that the side
  running more shoots first and keeps running (Pacemaker's ``pcmk_delay_max`` and
  ``priority-fencing-delay``).
- **No answer.** A level that is not answered within the longest its devices can take
  (:func:`answer_bound`) counts as failed; a late answer is still recorded.
- **Off.** A node is off from a level that succeeded, or an operator's `vigil node
  confirm-off`, until it is heard in a new life (another incarnation): a node that was
  powered off and never came back needs no second fence.
- **Who acts.** Attempts start only while this node masters its promised epoch with quorum
  (the caller says so): a minority, or a former master, shoots nobody.

The history of what ran, and what every fencing waits for in words, feed ``vigil status``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from vigil.cluster.events import Action, FenceDone, FenceNode
from vigil.cluster.journal import Journal
from vigil.config import ClusterConfig, FenceDevice
from vigil.notifications import FencingCompleted, FencingRequested

#: At least what the shell waits for an agent killed at its timeout to be gone
#: (``vigil.resources.proc.KILL_WAIT``, 5 s), with room to spare.
KILL_GRACE: Final = 10.0
#: The pause between two attempts of one device (``vigil.fencing.agents.RETRY_PAUSE``).
RETRY_PAUSE: Final = 1.0
#: For the shell to tell the answer once the agents are done.
ANSWER_GRACE: Final = 5.0
#: How many entries of the history are kept.
HISTORY: Final = 50


def answer_bound(devices: Sequence[FenceDevice], action: str = "off") -> float:
    """The longest the shell may take to answer one level: every attempt of every device to
    its timeout, the kills and pauses between (``agents.max_duration`` each), twice for a
    reboot of several devices (off on all, then on on all), plus :data:`ANSWER_GRACE`."""
    one = sum((1 + d.retries) * (d.timeout + KILL_GRACE) + d.retries * RETRY_PAUSE
              for d in devices)
    return (2 if action == "reboot" and len(devices) > 1 else 1) * one + ANSWER_GRACE


def fence_delay(config: ClusterConfig, epoch: str, target: str, target_groups: int,
                side_groups: int) -> tuple[float, str]:
    """The delay before the first attempt on a lost node, and why, in words: a fraction of
    ``delay_max`` drawn from a hash of ``epoch`` and ``target`` (the two sides of a split
    lead different epochs, so they draw differently), plus ``priority_delay`` when the
    target ran more groups than the side fencing it."""
    f = config.fencing
    draw = int.from_bytes(hashlib.sha256(f"{epoch}/{target}".encode()).digest()[:8]) / 2**64
    delay, why = f.delay_max * draw, []
    if f.delay_max > 0:
        why.append(f"{delay:.2f}s of delay_max {f.delay_max:g}s")
    if f.priority_delay > 0 and target_groups > side_groups:
        delay += f.priority_delay
        why.append(f"priority_delay {f.priority_delay:g}s: {target} ran {target_groups} "
                   f"group(s), this side {side_groups}")
    return delay, "; ".join(why)


@dataclass(slots=True)
class Job:
    """The fencing of one node, from the request until it is off or no longer wanted."""

    target: str
    why: str  # why it is fenced, in words
    requester: str  # this node's name, or "operator via NODE"
    retry: bool  # the whole topology again after every level failed (manual: once)
    levels: tuple[tuple[str, ...], ...]
    due: float  # when the next level starts (inf while one runs)
    delay_why: str = ""
    level: int = 0  # index of the level running, or to run next
    attempt: int = 0  # the FenceNode in flight (0: none)
    last_failure: str = ""  # the last level that failed, in words
    passes: int = 0  # full passes that failed
    wanted: bool = True  # False: no longer needed; it ends with the level in flight

    def devices(self, level: int | None = None) -> tuple[str, ...]:
        return self.levels[self.level if level is None else level]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One level in flight."""

    target: str
    level: int  # 1-based, as FenceNode says it
    devices: tuple[str, ...]
    requester: str
    started: float
    answer_by: float


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the fencing history (core times)."""

    at: float
    requester: str
    target: str
    level: int
    devices: tuple[str, ...]
    result: str  # off, failed, no answer, confirmed off, waited out
    duration: float
    detail: str


def _devices_text(devices: Iterable[str]) -> str:
    return "+".join(devices)


class Fencing:
    """The fencing this node decides as master (see the module docstring)."""

    def __init__(self, config: ClusterConfig, name: str, journal: Journal,
                 act: Callable[[Action], None], incarnation: Callable[[str], int],
                 last_heard: Callable[[str], float] = lambda node: -math.inf) -> None:
        self.config = config
        self.name = name
        self.journal = journal
        self.act = act
        #: the life a node is in, as far as this node heard (0: never heard)
        self.incarnation = incarnation
        self.jobs: dict[str, Job] = {}
        self.inflight: dict[int, Attempt] = {}
        self.off: dict[str, int] = {}  # node -> the incarnation it had when found off
        self.off_at: dict[str, float] = {}  # node -> when it was found off
        #: when a node was last heard (anything from it, on any link)
        self.last_heard = last_heard
        self.history: list[Entry] = []
        self.may_act = False
        self._attempts = 0

    @property
    def now(self) -> float:
        return self.journal.now

    # ---- questions -------------------------------------------------------------------------

    def can_fence(self, node: str) -> bool:
        return bool(self.config.fence_levels(node))

    def is_off(self, node: str) -> bool:
        """Powered off (or confirmed off) and not heard since, in any life. A node heard
        again in the same life was not off (an operator's confirm-off given in error, a device
        that lied): it counts as alive again, or the cluster would shun it forever."""
        if node not in self.off:
            return False
        if self.off[node] == self.incarnation(node) and \
                self.last_heard(node) <= self.off_at.get(node, math.inf):
            return True
        if self.off[node] == self.incarnation(node):
            self.journal.note("fencing", f"{node} is heard again in the life it had when it "
                              "was counted as off: it was not off (what it ran may have run "
                              "twice); it counts as alive again")
        del self.off[node]
        self.off_at.pop(node, None)
        return False

    def waiting(self, target: str) -> str:
        """What the fencing of ``target`` waits for, in words (for placement reasons and
        ``vigil status``)."""
        confirm = (f"an operator can run `vigil node confirm-off {target}` once {target} is "
                   "known to be off")
        job = self.jobs.get(target)
        if job is None:
            if self.is_off(target):
                return f"{target} is off"
            if not self.can_fence(target):
                return (f"waiting for fencing of {target}: no fence device can fence it; "
                        f"{confirm}")
            return f"waiting for fencing of {target}; {confirm}"
        level = f"level {job.level + 1} ({_devices_text(job.devices())})"
        paused = "" if self.may_act else " (paused: this node is not a quorate master)"
        if job.attempt:
            text = f"{level} running"
            if job.last_failure:
                text = f"{job.last_failure}; {text}"
        elif job.last_failure:
            text = f"{job.last_failure}; retrying in {max(0.0, job.due - self.now):.1f}s"
        else:
            text = f"{level} in {max(0.0, job.due - self.now):.1f}s" + (
                f" ({job.delay_why})" if job.delay_why else "")
        return f"waiting for fencing of {target}: {text}{paused}; {confirm}"

    def pending(self) -> dict[str, str]:
        """Node -> what its fencing waits for, for every fencing under way."""
        return {t: self.waiting(t) for t in sorted(self.jobs)}

    def deadlines(self) -> list[float]:
        out = [a.answer_by for a in self.inflight.values()]
        if self.may_act:
            out += [j.due for j in self.jobs.values() if not j.attempt]
        return out

    # ---- decisions -------------------------------------------------------------------------

    def request(self, target: str, *, why: str, requester: str, delay: float = 0.0,
                delay_why: str = "", retry: bool = True) -> bool:
        """Fence ``target`` (False: it has no levels). A fencing already under way goes on
        as it is; a manual request (``retry`` False) does not end one that retries."""
        levels = self.config.fence_levels(target)
        if not levels:
            return False
        job = self.jobs.get(target)
        if job is not None:
            job.retry = job.retry or retry
            job.wanted = True
            return True
        self.jobs[target] = Job(target=target, why=why, requester=requester, retry=retry,
                                levels=levels, due=self.now + delay, delay_why=delay_why)
        when = f" in {delay:.2f}s ({delay_why})" if delay > 0 else ""
        self.journal.note("fencing", f"fencing {target}{when}: {why}; level 1 "
                          f"({_devices_text(levels[0])}) first", node=target)
        return True

    def retain(self, targets: Iterable[str]) -> None:
        """Only ``targets`` still need fencing by the cluster: the others' retrying jobs end
        (a level in flight still reports; an operator's request runs to its end)."""
        keep = set(targets)
        for target, job in list(self.jobs.items()):
            if not job.retry or not job.wanted:
                continue
            if target in keep:
                continue
            self.journal.note("fencing", f"fencing of {target} no longer needed", node=target)
            if job.attempt:
                job.wanted = False  # the level in flight reports, nothing follows it
            else:
                del self.jobs[target]

    def advance(self, may_act: bool) -> None:
        """Start the levels that are due (only when ``may_act``); a level past its answer
        bound counts as failed."""
        self.may_act = may_act
        for attempt, a in sorted(self.inflight.items()):
            if a.answer_by <= self.now:
                self._result(attempt, False, "no answer", f"no answer from the fencer within "
                             f"{a.answer_by - a.started:.0f}s")
        if not may_act:
            return
        for target in sorted(self.jobs):
            job = self.jobs[target]
            if not job.attempt and job.due <= self.now:
                self._start(job)

    def _start(self, job: Job) -> None:
        self._attempts += 1
        devices = job.devices()
        bound = answer_bound([self.config.fence_devices[d] for d in devices])
        job.attempt, job.due = self._attempts, math.inf
        self.inflight[job.attempt] = Attempt(job.target, job.level + 1, devices, job.requester,
                                             self.now, self.now + bound)
        self.act(FenceNode(job.target, job.level + 1, devices, attempt=job.attempt))
        self.journal.emit(FencingRequested(
            node=self.name, time=self.now, member=job.target, level=job.level + 1,
            device=_devices_text(devices), detail=job.why,
            text=f"fencing {job.target}: level {job.level + 1} ({_devices_text(devices)}) "
                 f"running ({job.why})"))

    def done(self, ev: FenceDone) -> bool:
        """A level's result from the shell; True when ``ev.node`` is off because of it."""
        a = self.inflight.get(ev.attempt)
        if a is None or a.target != ev.node:
            return False  # not ours, or answered already (or too late: counted as failed)
        return self._result(ev.attempt, ev.ok, "off" if ev.ok else "failed", ev.detail)

    def _result(self, attempt: int, ok: bool, result: str, detail: str) -> bool:
        a = self.inflight.pop(attempt)
        self._record(Entry(self.now, a.requester, a.target, a.level, a.devices, result,
                           self.now - a.started, detail))
        job = self.jobs.get(a.target)
        if job is None or job.attempt != attempt:
            job = None  # dropped meanwhile: the result is recorded, nothing follows
        else:
            job.attempt = 0
            if not job.wanted:
                del self.jobs[a.target]
                job = None  # no longer needed: likewise
        level = f"level {a.level} ({_devices_text(a.devices)})"
        if ok:
            self.off[a.target] = self.incarnation(a.target)
            self.off_at[a.target] = self.now
            self.jobs.pop(a.target, None)
            self.journal.emit(FencingCompleted(
                node=self.name, time=self.now, member=a.target, ok=True, level=a.level,
                device=_devices_text(a.devices), detail=detail,
                text=f"{a.target} fenced: {level} powered it off"))
            return True
        failure = f"{level} failed: {detail}"
        text = f"fencing {a.target}: {failure}"
        if job is not None:
            job.last_failure = failure
            if job.level + 1 < len(job.levels):
                job.level += 1
                job.due = self.now
                text += f"; trying level {job.level + 1} ({_devices_text(job.devices())})"
            elif job.retry:
                job.passes += 1
                job.level, job.due = 0, self.now + self.config.fencing.retry_interval
                text += (f"; every level failed, retrying in "
                         f"{self.config.fencing.retry_interval:g}s; an operator can run "
                         f"`vigil node confirm-off {a.target}` once {a.target} is known to "
                         "be off")
            else:
                del self.jobs[a.target]
                text += "; every level failed (a manual request is not retried)"
        self.journal.emit(FencingCompleted(
            node=self.name, time=self.now, member=a.target, ok=False, level=a.level,
            device=_devices_text(a.devices), detail=detail, text=text))
        return False

    def confirm_off(self, target: str, who: str) -> None:
        """An operator says ``target`` is off (`vigil node confirm-off`): it counts as fenced
        until heard in a new life, like a level that powered it off."""
        self.off[target] = self.incarnation(target)
        self.off_at[target] = self.now
        self.jobs.pop(target, None)
        detail = f"confirmed off by {who}"
        self._record(Entry(self.now, who, target, 0, (), "confirmed off", 0.0, detail))
        self.journal.emit(FencingCompleted(
            node=self.name, time=self.now, member=target, ok=True, detail=detail,
            text=f"{target} counts as fenced: {detail}"))

    def waited_out(self, target: str, detail: str) -> None:
        """A time-based fencer's wait for ``target`` is over (history only)."""
        self._record(Entry(self.now, self.name, target, 0, (), "waited out", 0.0, detail))

    def _record(self, entry: Entry) -> None:
        self.history.append(entry)
        del self.history[:-HISTORY]
