"""``--wait``: poll the daemon's status until a requested change is done, has failed, or the
time is up.

A request is queued on the daemon that took it and applied by a later transition; what the
asked daemon knows of the other nodes comes in their heartbeats. So a verdict is trusted only
once it holds: "done" when two polls at least ``settle`` seconds apart say so (a peer's
heartbeat may still carry the state before the change), "failed" when it held for ``grace``
seconds (a transition that ended before the request reached the master is followed by one
that applies it). Each check looks at one :class:`~vigil.status.ClusterStatus` and says what
it saw, for the last line the operator reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the status module is some 15 ms that `vigil guard` has no use for
    from vigil.status import ClusterStatus, FenceEvent

State = Literal["done", "failed", "pending"]


@dataclass(frozen=True, slots=True)
class Verdict:
    state: State
    seen: str  # what the status showed, in a few words


Check = Callable[["ClusterStatus"], Verdict]


@dataclass(frozen=True, slots=True)
class Outcome:
    result: Literal["done", "failed", "timeout"]
    seen: str


def wait_until(poll: Callable[[float], ClusterStatus], check: Check, timeout: float, *,
               settle: float, grace: float, interval: float = 0.2,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> Outcome:
    """Poll (``poll(seconds left)``) until ``check`` says done twice ``settle`` seconds apart,
    or failed for ``grace`` seconds, or ``timeout`` seconds passed."""
    start = clock()
    deadline = start + timeout
    since: dict[State, float] = {}
    seen = "no status yet"
    while True:
        now = clock()
        verdict = check(poll(max(0.5, deadline - now)))
        now = clock()
        seen = verdict.seen
        for state in ("done", "failed", "pending"):
            if state != verdict.state:
                since.pop(state, None)
        first = since.setdefault(verdict.state, now)
        if verdict.state == "done" and now - first >= settle:
            return Outcome("done", seen)
        if verdict.state == "failed" and now - first >= grace:
            return Outcome("failed", seen)
        if now >= deadline:
            return Outcome("timeout", seen)
        sleep(max(0.0, min(interval, deadline - now)))


def _transition(st: ClusterStatus) -> str | None:
    """The transition under way, in words, or None."""
    t = st.transition
    return None if t is None or t.phase == "done" else f"transition {t.phase} ({t.reason})"


def where(st: ClusterStatus, group: str) -> str:
    g = st.groups[group]
    if g.state == "conflict":
        return f"{group} active on {', '.join(g.active_on)}"
    return f"{group} {g.state}" + (f" on {g.node}" if g.node else "")


def moved(group: str, target: str, epoch: str) -> Check:
    """``group move``: the group runs on ``target``; failed when a transition after
    ``epoch`` (the epoch when the request was sent) placed it elsewhere."""
    def check(st: ClusterStatus) -> Verdict:
        g = st.groups[group]
        seen = where(st, group)
        if g.node == target and g.state == "running":
            return Verdict("done", seen)
        if g.state == "unclean":
            return Verdict("failed", f"{seen}: its stop failed there")
        busy = _transition(st)
        if busy:
            return Verdict("pending", f"{seen}; {busy}")
        if st.epoch != epoch and g.placed != target:
            return Verdict("failed", f"{seen}; the cluster placed it on "
                           f"{g.placed or 'no node'} (epoch {st.epoch})")
        return Verdict("pending", seen)
    return check


def _settled(st: ClusterStatus, verdict: Verdict) -> Verdict:
    """``verdict``, but pending while a transition is under way."""
    busy = _transition(st)
    if verdict.state == "done" and busy:
        return Verdict("pending", f"{verdict.seen}; {busy}")
    return verdict


def standby(node: str, on: bool) -> Check:
    """``node standby`` (``on``): the node is in standby and runs no group; ``node online``:
    it is no longer in standby."""
    def check(st: ClusterStatus) -> Verdict:
        n = st.nodes[node]
        held = sorted(g for g, v in st.groups.items() if node in v.active_on)
        if on:
            seen = f"{node} {'in standby' if n.standby else n.state}" + (
                f", still running {', '.join(held)}" if held else "")
            done = n.standby and not held
        else:
            seen = f"{node} {'still in standby' if n.standby else n.state}"
            done = not n.standby
        return _settled(st, Verdict("done" if done else "pending", seen))
    return check


def maintenance(on: bool) -> Check:
    def check(st: ClusterStatus) -> Verdict:
        seen = f"maintenance {'on' if st.maintenance else 'off'}"
        return _settled(st, Verdict("done" if st.maintenance == on else "pending", seen))
    return check


def cleaned(group: str) -> Check:
    """``resource cleanup``: no failure of the group counted any more, no transition under
    way."""
    def check(st: ClusterStatus) -> Verdict:
        counts = {r: v.fail_count for r, v in st.resources.items() if v.group == group}
        left = st.groups[group].fail_count + sum(counts.values())
        seen = where(st, group) + (f", fail count {left}" if left else ", no failures")
        return _settled(st, Verdict("pending" if left else "done", seen))
    return check


def _members(st: ClusterStatus, resources: Iterable[str]) -> str:
    return ", ".join(f"{r} {st.resources[r].service_state}"
                     + (f" [{st.resources[r].by_hand} by hand]" if st.resources[r].by_hand
                        else "") for r in resources)


def out_of_service(resources: tuple[str, ...]) -> Check:
    """``oo-service``, ``force-oos``, ``group stop``: each of ``resources`` is out of service
    by hand, nowhere in service, and its group is not starting (it converged)."""
    def check(st: ClusterStatus) -> Verdict:
        seen = _members(st, resources)
        states = [st.resources[r] for r in resources]
        groups = {v.group for v in states}
        done = (all(v.by_hand and v.service_state != "IN_SERVICE" for v in states)
                and all(st.groups[g].state != "starting" for g in groups))
        return _settled(st, Verdict("done" if done else "pending", seen))
    return check


def in_service(resources: tuple[str, ...]) -> Check:
    """``in-service``, ``group start``, ``resource restart``: none of ``resources`` is out of
    service by hand and, where their group runs, each is in service; failed when one
    failed."""
    def check(st: ClusterStatus) -> Verdict:
        seen = _members(st, resources)
        states = [st.resources[r] for r in resources]
        if any(v.service_state in ("FAILED", "UNCLEAN") for v in states):
            return Verdict("failed", seen)
        groups = {v.group for v in states}
        placed = all(st.groups[g].node is not None for g in groups)
        done = (all(not v.by_hand for v in states)
                and (not placed or (all(v.service_state == "IN_SERVICE" for v in states)
                                    and all(st.groups[g].state == "running" for g in groups))))
        return _settled(st, Verdict("done" if done else "pending", seen + (
            "" if placed else f"; {', '.join(sorted(groups))} placed on no node")))
    return check


def last_fencing(st: ClusterStatus, node: str) -> FenceEvent | None:
    """The newest entry of the fencing history that names ``node``."""
    return next((e for e in reversed(st.fencing.history) if e.target == node), None)


def fenced(node: str, before: ClusterStatus) -> Check:
    """``node fence`` / ``confirm-off``: a fencing of ``node`` ended since the request
    (``before``: the status then). The fencing history is the master's (and bounded: the
    newest entry is compared, not a count); seen from another node, done means that a
    transition since the request completed with ``node`` offline and no fencing pending."""
    last = last_fencing(before, node)

    def check(st: ClusterStatus) -> Verdict:
        e = last_fencing(st, node)
        if e is not None and e != last:
            seen = f"fencing of {node}: {e.result}" + (f" ({e.detail})" if e.detail else "")
            return Verdict("done" if e.result in ("off", "confirmed off", "waited out")
                           else "failed", seen)
        pending = st.fencing.pending.get(node)
        if pending:
            return Verdict("pending", f"fencing of {node}: {pending}")
        state = st.nodes[node].state
        seen = f"{node} {state}, no fencing of {node} pending"
        done = state != "online" and st.epoch != before.epoch
        return _settled(st, Verdict("done" if done else "pending", seen))
    return check
