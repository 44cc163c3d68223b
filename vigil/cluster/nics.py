"""What a node believes about its network interfaces (NICs), as a pure state machine.

The NIC monitor actors (:mod:`vigil.actors.nic`) feed it what netlink and the reachability
probes say; it answers whether each NIC is *usable*, and when that changes. Two rules:

* **Down at once.** A NIC that cannot pass traffic (missing, administratively down, no
  carrier, an operstate that passes nothing, or none of its reachability targets answering)
  is down the moment that is known: an address on it must move now, not after a poll.
* **Up after a hold.** A NIC that comes back is believed only once it has stayed usable for
  the *hold*: ``up_hold`` (1 s by default). Every fall within ``flap_window`` (60 s) of the
  previous one doubles the hold, up to ``max_up_hold`` (30 s); a fall longer than that after
  the previous one starts again from ``up_hold``. So a NIC that flaps causes one move away
  (at its first fall), none while it flaps, and at most one move back after it settles (and
  only if the address is configured to fail back).

At start, what the first observation says is believed at once: there is nothing to dampen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from vigil.config import ResourceConfig

#: Operstates (RFC 2863) in which a link cannot pass traffic.
DOWN_OPERSTATES: Final = frozenset({"DOWN", "LOWERLAYERDOWN", "NOTPRESENT", "DORMANT",
                                    "TESTING"})


@dataclass(frozen=True, slots=True)
class NicFacts:
    """What netlink says of one interface (``exists`` False: there is none by that name)."""

    exists: bool
    admin_up: bool = False
    carrier: bool = False
    operstate: str = "UNKNOWN"

    def problem(self) -> str | None:
        """Why the interface cannot pass traffic, or None."""
        if not self.exists:
            return "no such interface"
        if not self.admin_up:
            return "administratively down"
        if not self.carrier:
            return "no carrier (cable, switch port or peer down)"
        if self.operstate in DOWN_OPERSTATES:
            return f"operstate {self.operstate}"
        return None


@dataclass(frozen=True, slots=True)
class Dampening:
    """The hold rule (module docstring); durations in seconds."""

    up_hold: float = 1.0
    max_up_hold: float = 30.0
    flap_window: float = 60.0


@dataclass(frozen=True, slots=True)
class NicChange:
    """A NIC became usable (``up``) or not; ``reason`` says why, for logs and notifications."""

    nic: str
    up: bool
    reason: str
    time: float


@dataclass(slots=True)
class _Nic:
    link: str | None = None  # netlink's problem, None: fine; unset until first observed
    reach: str | None = None  # the reachability probe's problem, None: fine or no targets
    observed: bool = False
    usable: bool = False  # what we believe and report
    reason: str = "not yet observed"
    since: float = 0.0  # when `usable` last changed
    hold: float = 0.0
    last_fall: float = -math.inf
    up_at: float | None = None  # when a NIC usable again will be believed


@dataclass
class NicTracker:
    """The NICs one node watches. Feed :meth:`link` and :meth:`reachability` as facts arrive
    and :meth:`tick` at :meth:`deadline`; each returns the changes to act on."""

    nics: Iterable[str]
    rule: Dampening = field(default_factory=Dampening)

    def __post_init__(self) -> None:
        self._nics = {n: _Nic(hold=self.rule.up_hold) for n in sorted(set(self.nics))}

    def link(self, nic: str, facts: NicFacts, now: float) -> list[NicChange]:
        state = self._nics.get(nic)
        if state is None:
            return []
        state.link = facts.problem()
        return self._update(nic, state, now)

    def reachability(self, nic: str, problem: str | None, now: float) -> list[NicChange]:
        """The probes of ``nic``'s targets: None when one answers, else why not."""
        state = self._nics.get(nic)
        if state is None:
            return []
        state.reach = problem
        return self._update(nic, state, now) if state.observed else []

    def tick(self, now: float) -> list[NicChange]:
        changes: list[NicChange] = []
        for nic, state in self._nics.items():
            if state.up_at is not None and now >= state.up_at:
                state.up_at = None
                changes += self._set(nic, state, True, f"usable again for {state.hold:g} s",
                                     now)
        return changes

    def deadline(self) -> float | None:
        due = [s.up_at for s in self._nics.values() if s.up_at is not None]
        return min(due) if due else None

    def observed(self, nic: str) -> bool:
        """Whether anything was heard of ``nic`` yet."""
        state = self._nics.get(nic)
        return state is not None and state.observed

    def down(self) -> dict[str, str]:
        """NIC -> why it is not usable, for every NIC believed down (or not yet seen)."""
        return {n: s.reason for n, s in self._nics.items() if not s.usable}

    def state(self) -> Mapping[str, tuple[bool, str, float, float | None]]:
        """NIC -> (usable, reason, since, when it will be believed up again or None)."""
        return {n: (s.usable, s.reason, s.since, s.up_at) for n, s in self._nics.items()}

    def _update(self, nic: str, state: _Nic, now: float) -> list[NicChange]:
        problem = state.link or state.reach
        first = not state.observed
        state.observed = True
        if first:
            return self._set(nic, state, problem is None, problem or "usable", now, force=True)
        if problem is not None:
            if state.up_at is not None or state.usable:
                self._fell(state, now)
            state.up_at = None
            if state.usable:
                return self._set(nic, state, False, problem, now)
            state.reason = problem
            return []
        if not state.usable and state.up_at is None:
            state.up_at = now + state.hold
            state.reason = f"usable again; believed after {state.hold:g} s without a fall"
        return []

    def _fell(self, state: _Nic, now: float) -> None:
        rule = self.rule
        if now - state.last_fall < rule.flap_window:
            state.hold = min(state.hold * 2, rule.max_up_hold)
        else:
            state.hold = rule.up_hold
        state.last_fall = now

    @staticmethod
    def _set(nic: str, state: _Nic, usable: bool, reason: str, now: float,
             force: bool = False) -> list[NicChange]:
        state.reason = "usable" if usable else reason
        if usable == state.usable and not force:
            return []
        state.usable, state.since = usable, now
        return [NicChange(nic, usable, reason, now)]


def address_nics(resource: ResourceConfig) -> tuple[str, ...]:
    """The NICs an ``ip`` resource may put its address on (its ``nic`` parameter: a string or
    a list of them); none for any other type (an OCF agent's ``nic`` is its own business)."""
    if resource.type != "ip":
        return ()
    value = resource.params.get("nic")
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(v for v in value if isinstance(v, str))
    return ()
