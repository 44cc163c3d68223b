"""The groups this node runs: their local states, recovery, fail counts.

``reconcile()`` compares what runs here with what may run here (the accepted placement, the
lease, the stop orders of the current epoch, maintenance) and asks the shell to start or stop
groups: stops dependents first, starts only once everything a group depends on runs. Results
come back as ``group_done`` / ``group_failed``; a failure is recovered in place below the
group's ``migration_threshold`` and otherwise held stopped here so the next transition moves
it (docs/resources.md, "Recovery").
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vigil.cluster.events import (
    Action,
    GroupDone,
    GroupFailed,
    RestartResource,
    StartGroup,
    StopGroup,
)
from vigil.cluster.journal import Journal
from vigil.cluster.strategy import group_order
from vigil.cluster.wire import Accepted, Epoch, fmt_epoch
from vigil.config import ClusterConfig, member_graphs
from vigil.notifications import GroupStateChanged


class LocalState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    UNCLEAN = "unclean"  # a stop failed: only fencing can make this node safe again


ACTIVE = frozenset({LocalState.STARTING, LocalState.RUNNING, LocalState.STOPPING,
                    LocalState.UNCLEAN})
UP = (LocalState.RUNNING, LocalState.STARTING)


@dataclass(frozen=True, slots=True)
class Allowed:
    """What may run here now, as the membership and the protocol say."""

    lease_ok: bool
    freeze: bool  # no_quorum_policy = freeze: a lost lease stops nothing
    placement: Mapping[str, str | None] | None  # None: no closed epoch to run by
    maintenance: bool
    leaving: bool
    stop_orders: frozenset[str]
    promised: Epoch


class LocalGroups:
    def __init__(self, config: ClusterConfig, name: str, journal: Journal,
                 act: Callable[[Action], None]) -> None:
        self.config = config
        self.name = name
        self.journal = journal
        self.act = act
        self.order = group_order(config)
        self.index = {g: i for i, g in enumerate(self.order)}
        self.expiring = [g for g, c in config.groups.items() if c.failure_timeout > 0]
        self.deps = {g: tuple(c.depends_on) for g, c in config.groups.items()}
        self.dependents: dict[str, tuple[str, ...]] = {
            g: tuple(sorted(k for k, deps in self.deps.items() if g in deps))
            for g in config.groups}
        graphs = member_graphs(config)  # one graph per group, not per resource: start-up
        self.resource_dependents = {r: tuple(graph.transitive_dependents(r))
                                    for graph in graphs.values() for r in graph.names()}
        self.direct_dependents = {r: tuple(graph.dependents(r))
                                  for graph in graphs.values() for r in graph.names()}
        self.start_order = [r for g in self.order for r in graphs[g].start_order()]
        self.state: dict[str, LocalState] = dict.fromkeys(config.groups, LocalState.STOPPED)
        #: group -> the number of the newest command to it (see :meth:`_command`); numbers
        #: start from the time in microseconds, so that a core started again (a restarted
        #: coordinator) never reuses one whose late answer may still come
        self.orders: dict[str, int] = {}
        self._orders = itertools.count(int(max(journal.now, 0.0) * 1_000_000) + 1)
        self.busy: set[str] = set()  # groups not STOPPED here (kept with set())
        self._busy_order: list[str] | None = []  # busy, dependents first (None: recompute)
        self._placed_cache: tuple[Epoch | None, list[str]] = (None, [])
        self._skip_cache: tuple[Epoch | None, dict[str, tuple[frozenset[str], frozenset[str]]]] = (
            None, {})
        self.left_out: dict[str, frozenset[str]] = {}  # what each running group left out
        self.held: set[str] = set()  # failed here: not restarted until a transition looks
        self.held_in: dict[str, Epoch] = {}  # the epoch in which a group was held
        self.unclean_members: dict[str, set[str]] = {}  # unclean group -> members maybe up
        self.fail_times: dict[str, list[float]] = {g: [] for g in config.groups}
        #: Failures (and cleared fail counts) seen here, counted: carried in heartbeats so the
        #: master knows when a member's costs changed and looks again.
        self.failures = 0

    def reconfigured(self, config: ClusterConfig, keep: frozenset[str]) -> LocalGroups:
        """The same node's groups under ``config``: the groups of ``keep`` (their
        definition did not change) carry their state, fail counts and holds over; the
        others start stopped, with no failures."""
        new = LocalGroups(config, self.name, self.journal, self.act)
        new._orders = self._orders
        for g in sorted(keep, key=new.index.__getitem__):
            new.set(g, self.state[g])
            if g in self.orders:
                new.orders[g] = self.orders[g]
            new.fail_times[g] = list(self.fail_times[g])
            if g in self.left_out:
                new.left_out[g] = self.left_out[g]
            if g in self.held:
                new.held.add(g)
            if g in self.held_in:
                new.held_in[g] = self.held_in[g]
            if g in self.unclean_members:
                new.unclean_members[g] = set(self.unclean_members[g])
        new.failures = self.failures  # a counter the peers compare: it never goes back
        return new

    # ---- state ---------------------------------------------------------------------------

    def set(self, group: str, state: LocalState) -> None:
        self.state[group] = state
        if (state is LocalState.STOPPED) == (group in self.busy):
            self._busy_order = None
        if state is LocalState.STOPPED:
            self.busy.discard(group)
        else:
            self.busy.add(group)
        if state is not LocalState.UNCLEAN:
            self.unclean_members.pop(group, None)

    def active(self) -> dict[str, str]:
        """Groups not stopped here -> their state (for heartbeats and reports)."""
        return {g: self.state[g].value for g in self.busy}

    def running(self) -> frozenset[str]:
        """Groups in service here and not held after a failure (those are on their way out:
        nothing to monitor)."""
        return frozenset(g for g in self.busy
                         if self.state[g] is LocalState.RUNNING and g not in self.held)

    def fail_counts(self) -> dict[str, int]:
        return {g: len(ts) for g, ts in self.fail_times.items() if ts}

    def expire(self, now: float) -> None:
        for g in self.expiring:  # the sum deadlines() gives, not a difference that rounds
            timeout = self.config.groups[g].failure_timeout
            self.fail_times[g] = [t for t in self.fail_times[g] if t + timeout > now]

    def deadlines(self) -> list[float]:
        return [self.fail_times[g][0] + self.config.groups[g].failure_timeout
                for g in self.expiring if self.fail_times[g]]

    def placed_here(self, accepted: Accepted) -> list[str]:
        """Groups the accepted placement gives this node, in start order (cached: this runs
        on every event, and a cluster may have thousands of groups)."""
        if self._placed_cache[0] != accepted.epoch:
            placement = accepted.placement
            self._placed_cache = (accepted.epoch, [g for g in self.order
                                                   if placement.get(g) == self.name])
        return self._placed_cache[1]

    def skips(self, accepted: Accepted) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
        """Per group with members taken out of service by hand: (those and their
        dependents, the ones to stop at once). Cached per accepted epoch."""
        if self._skip_cache[0] != accepted.epoch:
            out: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
            for r, force in accepted.disabled().items():
                if r not in self.config.resources:
                    continue
                g = self.config.resources[r].group
                skip, kill = out.get(g, (frozenset(), frozenset()))
                hit = {r, *self.resource_dependents[r]}
                out[g] = (skip | hit, kill | (hit if force else set()))
            self._skip_cache = (accepted.epoch, out)
        return self._skip_cache[1]

    # ---- start and stop ----------------------------------------------------------------

    def _emit_state(self, group: str, state: str, text: str, reason: str = "", *,
                    resource: str = "", op: str = "") -> None:
        """``op`` (with ``resource`` when known) makes it a failure: with the fail count."""
        self.journal.emit(GroupStateChanged(
            node=self.name, time=self.journal.now, text=text, group=group, state=state,
            reason=reason, resource=resource, op=op,
            fail_count=len(self.fail_times[group]) if op else 0))

    def _stop(self, group: str, why: str, promised: Epoch) -> None:
        force = self.state[group] is LocalState.STARTING
        self.set(group, LocalState.STOPPING)
        self._command(StopGroup(group, promised, why, force=force))
        self._emit_state(group, "stopping", f"stopping {group} on {self.name}: {why}", why)

    def _stop_dependents_first(self, group: str, why: str, promised: Epoch) -> bool:
        """Stop the groups running on ``group`` (True) instead of ``group`` itself while any
        is active: they leave first, the end of a chain first, and ``group`` follows once
        nothing active here depends on it any more."""
        if not self._dependents_active(group):
            return False
        for k in self.dependents[group]:
            if not self._stop_dependents_first(k, why, promised) and self.state[k] in UP:
                self._stop(k, why, promised)
        return True

    def _dependents_active(self, group: str) -> bool:
        """A group that depends on ``group`` is active here (it must leave first)."""
        return any(self.state[k] in ACTIVE for k in self.dependents[group])

    def _deps_running(self, group: str) -> bool:
        return all(self.state[d] is LocalState.RUNNING for d in self.deps[group])

    def reconcile(self, allowed: Allowed, accepted: Accepted) -> None:
        promised = allowed.promised
        placement = allowed.placement
        if self._busy_order is None:  # stops: dependents before what they depend on
            self._busy_order = sorted(self.busy, key=self.index.__getitem__, reverse=True)
        for g in self._busy_order:
            state = self.state[g]
            if state not in UP:
                continue
            why = ""
            if allowed.leaving:
                why = "shutting down"
            elif not allowed.lease_ok and not allowed.freeze:
                # Also in maintenance mode: the others' silence fencer counts on it.
                why = "lost the quorum lease"
            elif allowed.maintenance:
                continue  # resources stay as they are
            elif g in allowed.stop_orders:
                why = f"stop phase of epoch {fmt_epoch(promised)}"
            elif g in self.held and state is LocalState.RUNNING:
                why = "recovering from a failure"
            elif placement is not None and placement.get(g) != self.name:
                why = "placed elsewhere"
            if why and not self._stop_dependents_first(g, f"{why} (depends on {g})", promised):
                self._stop(g, why, promised)
        if (allowed.leaving or placement is None or not allowed.lease_ok
                or allowed.maintenance):
            return
        skips = self.skips(accepted)
        for g in self.placed_here(accepted):
            skip, kill = skips.get(g, (frozenset(), frozenset()))
            state = self.state[g]
            if state is LocalState.STOPPED and g not in self.held and self._deps_running(g):
                self.set(g, LocalState.STARTING)
                self.left_out[g] = skip
                self._command(StartGroup(g, promised, skip, kill))
                self._emit_state(g, "starting", f"starting {g} on {self.name} (epoch "
                                 f"{fmt_epoch(promised)})"
                                 + (f" without {', '.join(sorted(skip))}" if skip else ""))
            elif (state is LocalState.RUNNING and self.left_out.get(g, frozenset()) != skip
                  and self._deps_running(g)):
                if skip - self.left_out.get(g, frozenset()):
                    # groups that depend on this one leave first; they come back after
                    if self._stop_dependents_first(
                            g, f"{g} loses members taken out of service by hand", promised):
                        continue
                elif any(self.state[k] is LocalState.STARTING for k in self.dependents[g]):
                    # members come back, but a dependent still starting started on the group
                    # as it was: they wait until that dependent runs (or is stopped)
                    continue
                self.set(g, LocalState.STARTING)
                skipped, self.left_out[g] = self.left_out.get(g, frozenset()), skip
                self._command(StartGroup(g, promised, skip, kill, converge=True,
                                         skipped=skipped))
                self._emit_state(g, "starting", f"{g} on {self.name}: resources out of "
                                 f"service by hand now {', '.join(sorted(skip)) or 'none'}")

    # ---- results ------------------------------------------------------------------------

    def _command(self, action: StartGroup | StopGroup | RestartResource) -> None:
        """Give ``action`` to the shell, numbered: only the answer to a group's newest
        command counts. An older one can come after a newer command: the start the guardian
        cut short (its kill and the start's success cross on their way here), then the core
        started the group again, and the old start's success must not make its dependents
        start before the new start is done."""
        order = next(self._orders)
        self.orders[action.group] = order
        self.act(dataclasses.replace(action, order=order))

    def group_done(self, ev: GroupDone, promised: Epoch) -> None:
        state = self.state.get(ev.group)
        if state is None:
            return
        if ev.order and ev.order != self.orders.get(ev.group):
            return  # the answer to a command a newer one replaced
        if ev.op == "start":
            if state is not LocalState.STARTING:
                return  # a stop overtook it; the stop's result decides
            if ev.ok:
                self.set(ev.group, LocalState.RUNNING)
                self._emit_state(ev.group, "running", f"{ev.group} in service on {self.name}")
                return
            # A failed start is fatal here (as Pacemaker's start-failure-is-fatal): retrying
            # where it just failed rarely helps, so the fail count jumps to the threshold
            # and the group goes elsewhere until cleanup or failure_timeout.
            self.fill_fail_count(ev.group)
            self.record_failure(ev.group, f"start failed: {ev.reason}", promised, op="start")
            # What did start is in service: it stops like a running group. A converging start
            # may fail under running dependents: held, reconcile() stops them first.
            self.set(ev.group, LocalState.RUNNING)
            if not self._dependents_active(ev.group):
                self._stop(ev.group, "clean up after a failed start", promised)
            return
        if state is LocalState.STOPPED:
            return  # a stop that began before the guardian killed everything
        if ev.ok:
            self.set(ev.group, LocalState.STOPPED)
            self._emit_state(ev.group, "stopped", f"{ev.group} out of service on {self.name}")
            if ev.group in self.held and self.held_in.get(ev.group) != promised:
                self.failures += 1  # held through a transition: the next one may restart it
            return
        self.set(ev.group, LocalState.UNCLEAN)
        # As Pacemaker does after a failed stop: the fail count here reaches the threshold,
        # so once the group is released (fencing, or mark-oos) it runs elsewhere; counted as
        # a failure, so the master looks again (and held, so it does not start here first).
        self.fill_fail_count(ev.group)
        self.fail_times[ev.group].append(self.journal.now)
        self.held.add(ev.group)
        self.held_in[ev.group] = promised
        self.failures += 1
        members = self.config.groups[ev.group].resources
        self.unclean_members[ev.group] = set(members if ev.remaining is None
                                             else ev.remaining)
        self._emit_state(ev.group, "unclean", f"stop of {ev.group} failed on {self.name}: "
                         f"{ev.reason}; the node is unclean and the group stays blocked "
                         "until fenced", ev.reason, op="stop")

    def fenced(self, why: str) -> None:
        """The node's guardian killed everything that ran here: every group is out of
        service, whatever operation was under way (a result it still sends is stale)."""
        for g in sorted(self.busy, key=self.index.__getitem__, reverse=True):
            self.set(g, LocalState.STOPPED)
            self._emit_state(g, "stopped", f"{g} killed on {self.name} by its guardian: "
                             f"{why}", why)

    def marked_out(self, resource: str, promised: Epoch) -> None:
        """An operator marked ``resource`` out of service by hand (mark_oos): once no member
        of an unclean group may still be in service, the operator's word replaces fencing
        and the group counts as stopped here."""
        group = self.config.resources[resource].group
        members = self.unclean_members.get(group)
        if members is None or self.state[group] is not LocalState.UNCLEAN:
            return
        members.discard(resource)
        if not members:
            self.group_done(GroupDone(group, "stop", True, "marked out of service by hand"),
                            promised)

    def group_failed(self, ev: GroupFailed, *, may_restart: bool, maintenance: bool,
                     promised: Epoch) -> bool:
        """Recover from a monitor failure; True when the policy puts this node in standby
        (the caller queues that request)."""
        g = ev.group
        if self.state.get(g) is not LocalState.RUNNING:
            return False  # already stopping, restarting or stopped: that path decides
        if maintenance:
            self.journal.note("group", f"{ev.resource or g} failed on {self.name}; maintenance "
                              f"mode: no recovery ({ev.reason})", group=g, reason=ev.reason)
            return False
        if ev.policy == "ignore":
            self.journal.note("group", f"{ev.resource or g} failed on {self.name} and its "
                              f"on_fail is ignore: left as it is ({ev.reason})", group=g,
                              reason=ev.reason)
            return False
        if ev.policy == "standby":
            self.record_failure(g, ev.reason, promised, ev.resource, "monitor")
            return True
        if ev.policy == "stop":
            # Held stopped here (its fail count reaches the threshold, so its cost here is
            # infinite); it is not restarted in place, and may run elsewhere.
            self.fill_fail_count(g)
            self.record_failure(g, ev.reason, promised, ev.resource, "monitor")
            return False
        threshold = self.config.groups[g].migration_threshold
        # In place only while no group that depends on this one is active here: restarting
        # under it would break its order; the full path stops it first.
        alone = not self._dependents_active(g)
        left_out = ev.resource in self.left_out.get(g, frozenset())
        if ev.resource and alone and may_restart and not left_out and (
                len(self.fail_times[g]) + 1 < threshold):
            self.fail_times[g].append(self.journal.now)
            count = len(self.fail_times[g])
            self.set(g, LocalState.STARTING)
            self._command(RestartResource(g, ev.resource, promised,
                                     self.left_out.get(g, frozenset())))
            self._emit_state(g, "failed", f"{ev.resource} failed on {self.name} ({count} of "
                             f"{threshold} failures before {g} moves): restarting it in "
                             f"place: {ev.reason}", ev.reason, resource=ev.resource,
                             op="monitor")
            return False
        # reconcile() stops it, dependents first
        self.record_failure(g, ev.reason, promised, ev.resource, "monitor")
        return False

    def fill_fail_count(self, group: str) -> None:
        """Bring the fail count to one below the threshold (the failure being recorded makes
        it reach it): the group's cost here becomes infinite."""
        missing = max(1, self.config.groups[group].migration_threshold) - len(
            self.fail_times[group])
        self.fail_times[group].extend([self.journal.now] * max(0, missing - 1))

    def record_failure(self, group: str, reason: str, promised: Epoch, resource: str = "",
                       op: str = "monitor") -> None:
        self.fail_times[group].append(self.journal.now)
        self.held.add(group)
        self.held_in[group] = promised
        self.failures += 1
        count = len(self.fail_times[group])
        what = f"{resource} ({group})" if resource else group
        self._emit_state(group, "failed", f"{what} failed on {self.name} ({count} "
                         f"failure(s)): {reason}", reason, resource=resource, op=op)

    def clear_failures(self, group: str) -> bool:
        """Forget the group's fail count and hold here; True when there was one. Only then
        is it counted as a change (``failures``): a cleanup broadcast to every node must not
        look like a failure of each (the master declares one transition for the cleanup
        itself, ``Master.cleanups``)."""
        if group not in self.fail_times:
            return False
        changed = bool(self.fail_times[group]) or group in self.held
        self.fail_times[group] = []
        self.held.discard(group)
        if changed:
            self.failures += 1  # its cost here changed: the master looks again
        return changed

    def epoch_closed(self) -> None:
        # A failed group still on its way out (its dependents stop first) stays held, or it
        # would never be stopped and restarted; it asks for a transition of its own once
        # stopped (group_done).
        self.held = {g for g in self.held if self.state[g] in ACTIVE}
