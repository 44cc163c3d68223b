"""The guardian's rules (vigil/guard/core.py), driven by hand and by Hypothesis: a fence exactly
when the lease ends or the daemon dies holding something, never with nothing held, and a
watchdog petted only while the node may hold what it holds."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from vigil.guard.core import (
    MAX_LEASE_AHEAD,
    Announce,
    CloseWatchdog,
    Fence,
    GuardCore,
    Output,
    Pet,
    Reboot,
    lease_text,
)
from vigil.guard.holdings import Address, Holdings, MountHolding, ResourceHolding

APP = ResourceHolding("web-app", pgids=(4242,), cgroup="/sys/fs/cgroup/vigil-alpha/web-app")
IP = ResourceHolding("web-ip", addresses=(Address("eth0", "198.18.0.10/24"),))
FS = ResourceHolding("web-fs", mounts=(MountHolding("/srv/data", "/dev/loop3"),))
HELD = Holdings((APP, IP, FS))
NOTHING = Holdings()


def fences(out: Output) -> list[Fence]:
    return [a for a in out.actions if isinstance(a, Fence)]


def pets(out: Output) -> int:
    return sum(isinstance(a, Pet) for a in out.actions)


def connected(now: float = 0.0, **kwargs: object) -> GuardCore:
    core = GuardCore(now, **kwargs)  # type: ignore[arg-type]
    core.hello("pid 99", now)
    return core


# ---- the lease ------------------------------------------------------------------------------


def test_holding_with_a_valid_lease_asks_to_be_woken_when_it_ends() -> None:
    core = connected()
    out = core.report(10.3, HELD, 10.0)
    assert out.actions == () and out.deadline == 10.3
    assert core.tick(10.299).actions == ()


def test_the_lease_running_out_fences_everything_reported() -> None:
    core = connected()
    core.report(10.3, HELD, 10.0)
    out = core.tick(10.3)
    (fence,) = fences(out)
    assert fence.holdings == HELD and fence.cause == "lease"
    assert fence.why(lambda t: f"t={t:g}") == "lease ran out at t=10.3, daemon silent since t=10"
    assert core.holdings.empty
    assert core.tick(11.0).actions == ()  # once: the next tick has nothing left to fence


def test_a_newer_report_moves_the_deadline_either_way() -> None:
    core = connected()
    core.report(10.3, HELD, 10.0)
    assert core.report(10.6, HELD, 10.2).deadline == 10.6
    assert core.tick(10.4).actions == ()
    assert core.report(10.5, HELD, 10.45).deadline == 10.5  # a shorter lease counts too
    assert fences(core.tick(10.5))


def test_nothing_held_is_never_fenced() -> None:
    core = connected()
    core.report(10.3, HELD, 10.0)
    out = core.report(10.3, NOTHING, 10.1)
    assert out.deadline == math.inf
    assert core.tick(50.0).actions == ()
    assert core.daemon_gone(51.0).actions == ()


def test_no_lease_needed_means_only_the_daemons_death_fences() -> None:
    core = connected()
    core.report(math.inf, HELD, 1.0)
    assert core.tick(1e9).actions == ()
    (fence,) = fences(core.daemon_gone(1e9 + 1))
    assert fence.cause == "daemon gone" and fence.holdings == HELD


def test_holdings_without_a_lease_are_fenced_at_once() -> None:
    for lease in (None, -math.inf, 9.0):
        core = connected()
        (fence,) = fences(core.report(lease, HELD, 10.0))
        assert fence.holdings == HELD


def test_a_lease_too_far_ahead_is_not_believed() -> None:
    core = connected()
    out = core.report(1.7e9, HELD, 100.0)  # time.time() where time.monotonic() belongs
    assert fences(out)
    assert "not believed (a wall-clock time instead of time.monotonic()?)" in out.notes[0]
    assert core.report(100.0 + MAX_LEASE_AHEAD, HELD, 100.0).actions == ()


def test_a_report_read_after_the_old_lease_ended_does_not_save_it() -> None:
    core = connected()
    core.report(10.3, Holdings((APP,)), 10.0)
    out = core.report(11.0, Holdings((APP, IP)), 10.35)  # late: the old lease ran out first
    (fence,) = fences(out)
    assert fence.holdings == Holdings((APP,))
    assert core.holdings == Holdings((APP, IP)) and out.deadline == 11.0
    # Carrying the fence out does not lose the report that came with it, even if the fence
    # left something (the newer report says what is there now).
    for left in (NOTHING, Holdings((APP,))):
        assert core.fence_done(fence, left, 10.36).deadline == 11.0
        assert core.holdings == Holdings((APP, IP))
    assert fences(core.tick(11.0))[0].holdings == Holdings((APP, IP))


def test_a_daemon_that_dies_holding_something_is_fenced_at_once() -> None:
    core = connected()
    core.report(20.0, HELD, 10.0)
    (fence,) = fences(core.daemon_gone(10.01))
    assert fence.cause == "daemon gone"
    assert fence.why(str) == "the daemon (pid 99) is gone without saying bye, holding 3 " \
        "resource(s)"


def announced(out: Output) -> list[int]:
    return [a.incarnation for a in out.actions if isinstance(a, Announce)]


def test_a_dead_daemon_is_announced_once_its_fence_removed_everything() -> None:
    core = connected()
    core.report(20.0, HELD, 10.0, incarnation=77)
    out = core.daemon_gone(10.01)
    (fence,) = fences(out)
    assert announced(out) == []  # not before the fence is done
    assert announced(core.fence_done(fence, NOTHING, 10.02)) == [77]
    assert announced(core.tick(10.5)) == [] and announced(core.daemon_gone(10.6)) == []


def test_a_daemon_that_dies_holding_nothing_is_announced_at_once() -> None:
    core = connected()
    core.report(20.0, NOTHING, 10.0, incarnation=77)
    out = core.daemon_gone(10.01)
    assert fences(out) == [] and announced(out) == [77]


def test_what_a_fence_left_delays_the_announcement_until_a_retry_removes_it() -> None:
    core = connected(retry_interval=1.0)
    core.report(20.0, HELD, 10.0, incarnation=77)
    (fence,) = fences(core.daemon_gone(10.01))
    assert announced(core.fence_done(fence, Holdings((FS,)), 10.02)) == []
    (again,) = fences(core.tick(11.02))
    assert announced(core.fence_done(again, NOTHING, 11.03)) == [77]


def test_no_announcement_after_bye_without_an_incarnation_or_once_a_daemon_is_back() -> None:
    core = connected()
    core.report(20.0, NOTHING, 10.0, incarnation=77)
    core.bye(10.1)
    assert announced(core.daemon_gone(10.2)) == []
    unnamed = connected()
    unnamed.report(20.0, NOTHING, 10.0)
    assert announced(unnamed.daemon_gone(10.1)) == []
    back = connected(retry_interval=1.0)
    back.report(20.0, HELD, 10.0, incarnation=77)
    (fence,) = fences(back.daemon_gone(10.01))
    back.fence_done(fence, Holdings((FS,)), 10.02)
    back.hello("pid 100", 10.5)  # a new daemon: it speaks for itself
    back.report(20.0, Holdings((FS,)), 10.6, incarnation=78)
    assert announced(back.tick(11.1)) == []


def test_a_lease_that_ran_out_unseen_is_fenced_before_the_death_is_announced() -> None:
    core = connected()
    core.report(10.3, HELD, 10.0, incarnation=77)
    out = core.daemon_gone(10.5)  # the guardian was busy at 10.3
    (fence,) = fences(out)
    assert fence.cause == "lease" and announced(out) == []
    assert announced(core.fence_done(fence, NOTHING, 10.51)) == [77]


def test_reboot_mode_announces_nothing() -> None:
    core = connected(self_fence="reboot")
    core.report(20.0, HELD, 10.0, incarnation=77)
    (fence,) = fences(core.daemon_gone(10.01))
    assert announced(core.fence_done(fence, NOTHING, 10.02)) == []


def test_bye_means_nothing_is_held() -> None:
    core = connected()
    core.report(10.3, HELD, 10.0)
    assert core.bye(10.1).actions == ()
    assert core.tick(11.0).actions == ()
    assert core.daemon_gone(11.1).actions == ()


def test_bye_after_the_lease_ended_is_too_late() -> None:
    core = connected()
    core.report(10.3, HELD, 10.0)
    assert fences(core.bye(10.4))


# ---- a fence that leaves something behind ---------------------------------------------------


def test_what_a_fence_left_is_fenced_again_and_the_watchdog_not_petted() -> None:
    core = connected(0.0, watchdog_interval=0.5, retry_interval=1.0)
    core.report(10.3, HELD, 10.0)
    (fence,) = fences(core.tick(10.3))
    left = Holdings((FS,))
    out = core.fence_done(fence, left, 10.31)
    assert pets(out) == 0 and out.deadline == 11.31
    assert "trying again in 1s" in out.notes[0] and "not petted" in out.notes[0]
    assert core.tick(11.0).actions == ()
    (again,) = fences(core.tick(11.31))
    assert again.cause == "retry" and again.holdings == left
    assert pets(core.fence_done(again, NOTHING, 11.32)) == 1


def test_a_report_replaces_what_a_fence_left() -> None:
    core = connected(retry_interval=1.0)
    core.report(10.3, HELD, 10.0)
    (fence,) = fences(core.tick(10.3))
    core.fence_done(fence, Holdings((FS,)), 10.31)
    out = core.report(12.0, Holdings((APP,)), 10.5)
    assert out.actions == () and out.deadline == 12.0


# ---- reboot ---------------------------------------------------------------------------------


def test_reboot_mode_reboots_after_the_first_fence_and_stops_petting() -> None:
    core = connected(0.0, self_fence="reboot", watchdog_interval=0.5)
    core.report(10.3, HELD, 10.0)
    out = core.tick(10.3)
    assert [type(a) for a in out.actions] == [Fence, Reboot]
    assert pets(core.fence_done(fences(out)[0], NOTHING, 10.31)) == 0
    core.report(20.0, HELD, 10.4)
    assert [type(a) for a in core.tick(20.0).actions] == [Fence]  # one reboot is enough
    assert core.shutdown(20.1).actions == (CloseWatchdog(disarm=False),)


# ---- the watchdog ---------------------------------------------------------------------------


def test_the_watchdog_is_petted_every_interval_while_nothing_is_held() -> None:
    core = GuardCore(0.0, watchdog_interval=0.5)
    out = core.tick(0.0)
    assert pets(out) == 1 and out.deadline == 0.5
    assert pets(core.tick(0.3)) == 0
    assert pets(core.tick(0.5)) == 1


def test_the_watchdog_is_petted_while_the_lease_is_valid() -> None:
    core = connected(0.0, watchdog_interval=0.5)
    core.tick(0.0)
    out = core.report(0.8, HELD, 0.1)
    assert out.deadline == 0.5  # the pet comes before the lease's end
    assert pets(core.tick(0.5)) == 1
    out = core.tick(0.8)
    assert fences(out) and pets(out) == 0  # never in the output of a fence


def test_a_clean_exit_disarms_the_watchdog_and_without_one_there_is_nothing_to_close() -> None:
    assert GuardCore(0.0, watchdog_interval=1.0).shutdown(1.0).actions == (
        CloseWatchdog(disarm=True),)
    core = GuardCore(0.0)
    assert pets(core.tick(5.0)) == 0 and core.tick(5.0).deadline == math.inf
    assert core.shutdown(6.0).actions == ()


def test_leaving_while_something_is_held_says_so() -> None:
    core = connected()
    core.report(10.0, Holdings((APP,)), 1.0)
    (note,) = core.shutdown(2.0).notes
    assert "web-app" in note and "stops its groups" in note


def test_lease_text() -> None:
    assert lease_text(math.inf, 1.0) == "no lease needed"
    assert lease_text(-math.inf, 1.0) == "no valid lease"
    assert lease_text(1.25, 1.0) == "lease until +250 ms from now"


# ---- properties -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    dt: float
    kind: str  # report, tick, gone, hello, bye
    lease_ahead: float = 0.0  # report: lease_until - now (inf, -inf allowed)
    held: int = 0  # report: how many of APP, IP, FS
    leftover: bool = False  # a fence in this step leaves FS behind
    late: bool = False  # the process was busy: no wake-up at the deadlines before this step


holdings_of = [Holdings(), Holdings((APP,)), Holdings((APP, IP)), HELD]

steps = st.builds(
    Step,
    dt=st.floats(min_value=0.0, max_value=1.0),
    kind=st.sampled_from(["report", "report", "report", "tick", "gone", "hello", "bye"]),
    lease_ahead=st.one_of(st.floats(min_value=-0.5, max_value=1.0),
                          st.sampled_from([math.inf, -math.inf])),
    held=st.integers(min_value=0, max_value=3),
    leftover=st.booleans(),
    late=st.booleans(),
)


@given(st.lists(steps, max_size=40), st.sampled_from(["kill", "reboot"]),
       st.one_of(st.none(), st.floats(min_value=0.05, max_value=1.0)))
def test_properties_of_every_story(story: list[Step], mode: str, interval: float | None) -> None:
    """Driven as the guardian process drives it: woken at every deadline it asks for, each
    fence carried out at once (sometimes leaving a mount behind). Then:

    - it never fences with nothing held;
    - it never holds something past the lease's end (nor, for a report that came without a
      valid lease, past that report): the fence comes at that moment, not later;
    - it never pets the watchdog while holding something without a valid lease, nor after
      asking for a reboot, and otherwise pets it at least every interval.
    """
    core = GuardCore(0.0, self_fence=mode, watchdog_interval=interval,  # type: ignore[arg-type]
                     retry_interval=0.5)
    reported_at = 0.0  # when the daemon's latest report came
    leftover = False  # a fence left something behind, and no report has replaced it since
    last_pet = -math.inf
    deadline = math.inf

    def check(out: Output, at: float, late: bool = False) -> None:
        nonlocal last_pet
        for action in out.actions:
            if isinstance(action, Fence):
                assert action.holdings, "fenced with nothing held"
                if action.cause == "lease" and not late:
                    assert at <= max(action.lease_until, reported_at), "fenced late"
            if isinstance(action, Pet):
                assert core.holdings.empty or core.lease_valid(at), "petted without a lease"
                assert not core.rebooting, "petted after a reboot"
                last_pet = at
            if isinstance(action, Announce):
                assert not core.connected and core.holdings.empty, \
                    "announced a death while a daemon is connected or something is held"
                assert not any(isinstance(a, Fence) for a in out.actions), \
                    "announced in the same breath as a fence, before it was done"
        if core.holdings and not leftover:
            assert core.lease_valid(at), "holds something past its lease, unfenced"
        if core.may_pet(at):  # then the next pet is due an interval after the last, or now
            assert core.watchdog_interval is not None
            assert out.deadline <= max(at, last_pet + core.watchdog_interval) + 1e-9
        assert out.deadline >= at

    def feed(out: Output, at: float, leave: bool, late: bool = False) -> None:
        nonlocal deadline, leftover
        check(out, at, late)
        deadline = out.deadline
        for action in out.actions:
            if isinstance(action, Fence):
                left = Holdings((FS,)) if leave and FS in action.holdings.resources else NOTHING
                after = core.fence_done(action, left, at)
                leftover = (leftover and bool(core.holdings)) or any(
                    "trying again" in note for note in after.notes)
                check(after, at, late)
                deadline = after.deadline

    now = 0.0
    feed(core.tick(now), now, False)
    for step in story:
        target = now + step.dt
        while deadline <= target and not step.late:  # woken at every deadline on the way
            now = max(now, deadline)
            feed(core.tick(now), now, step.leftover)
        now = target
        if step.kind == "report":
            reported_at, leftover = now, False
            lease, held = now + step.lease_ahead, holdings_of[step.held]
            feed(core.report(lease, held, now, incarnation=5), now, step.leftover, step.late)
            if lease > now:  # the newest report is the truth, whatever was fenced on the way
                assert (core.holdings, core.lease_until) == (held, lease)
            continue
        if step.kind == "tick":
            out = core.tick(now)
        elif step.kind == "gone":
            out = core.daemon_gone(now)
        elif step.kind == "hello":
            out = core.hello("pid 7", now)
        else:
            leftover = False
            out = core.bye(now)
        feed(out, now, step.leftover, step.late)
