"""The resource steps of a group action: which member gets which operation, in what order.

One pure function, :func:`group_steps`, turns the core's :class:`StartGroup`,
:class:`StopGroup` or :class:`RestartResource` into the ordered operations on the group's
members. The daemon's ``GroupActor`` runs them one at a time on the real resources; the
simulator runs the very same list on its modelled ones and checks the order at every step,
so what the simulation proves about order is proved about the code the daemon runs.

The rules, all in this one place:

- a start brings members in, in start order (dependencies first), leaving out ``skip``: the
  members taken out of service by hand, and their dependents;
- a converging start first takes the members newly taken out of service by hand out, in stop
  order (``kill``: at once, ``force_stop``), then starts those put back, in start order;
  members that run and stay are not touched;
- a stop takes every member out in the exact reverse of the start order (``force``: at once);
  a start still underway is interrupted with ``force_stop`` beside it, not waited for;
- a restart in place stops the failed member and everything that depends on it (dependents
  first) and starts them again in order; members out of service by hand stay out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from vigil.cluster.events import RestartResource, StartGroup, StopGroup

__all__ = ["GroupAction", "GroupSteps", "Step", "StepOp", "group_steps"]

StepOp = Literal["start", "stop", "force_stop"]
GroupAction = StartGroup | StopGroup | RestartResource


class Step(NamedTuple):
    resource: str
    op: StepOp


@dataclass(frozen=True, slots=True)
class GroupSteps:
    """What one group action asks of the members.

    ``steps`` run one at a time, each after the previous one succeeded. ``op`` is what the
    whole group reports when they all did (``GroupDone``): ``"start"`` for a start, a
    converging start or a restart in place, ``"stop"`` for a stop. ``interrupt``, when set,
    goes out at once beside the first step and is not waited for."""

    op: Literal["start", "stop"]
    steps: tuple[Step, ...]
    interrupt: Step | None = None


def group_steps(action: GroupAction, order: Sequence[str],
                dependents: Mapping[str, Iterable[str]], *,
                starting: str | None = None) -> GroupSteps:
    """The steps of ``action`` on a group whose members start in ``order``.

    ``dependents`` maps a member to every member that depends on it, directly or not (a
    restart in place takes those along). ``starting`` is the member whose start is underway
    when the action arrives, if any: a stop interrupts it."""
    stop_order = order[::-1]
    if isinstance(action, StopGroup):
        stop: StepOp = "force_stop" if action.force else "stop"
        return GroupSteps("stop", tuple(Step(r, stop) for r in stop_order),
                          Step(starting, "force_stop") if starting is not None else None)
    if isinstance(action, StartGroup):
        if not action.converge:
            return GroupSteps("start", tuple(Step(r, "start") for r in order
                                             if r not in action.skip))
        # Members that run and stay are left alone: starting them again would put a member
        # with running dependents into "starting", where a stop would interrupt it at once.
        leave = action.skip - action.skipped
        back = action.skipped - action.skip
        return GroupSteps("start", tuple(
            Step(r, "force_stop" if r in action.kill else "stop")
            for r in stop_order if r in leave) + tuple(
            Step(r, "start") for r in order if r in back))
    affected = {action.resource, *dependents.get(action.resource, ())} - action.skip
    return GroupSteps("start", tuple(Step(r, "stop") for r in stop_order if r in affected)
                      + tuple(Step(r, "start") for r in order if r in affected))
