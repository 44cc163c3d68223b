"""`vigil resource discard` / `promote` (vigil/resources/mirror_requests.py): what is checked
before any btrfs work, from the status of the node asked (built from a real core)."""

from __future__ import annotations

import dataclasses
import grp

from tests.unit.test_core import formed
from tests.unit.test_mirror_status import MIRROR, mirrored
from vigil.cluster.view import build_status
from vigil.local.access import Access, Peer
from vigil.resources.mirror_requests import (
    MIRROR_COMMANDS,
    answer,
    out_of_service_by,
    promote_refusal,
)
from vigil.status import ClusterStatus


def beta_view() -> ClusterStatus:
    """g0 (its first resource a mirror, the second depending on it) runs on alpha; as beta
    sees it."""
    c = formed(mirrored(), mirror_interval=None)
    assert c.placement() == {"g0": ["alpha"]}
    return build_status(c.core("beta"))


def test_promote_is_refused_while_the_group_runs_or_is_about_to() -> None:
    status = beta_view()
    refused = promote_refusal(status, MIRROR)
    assert refused is not None
    assert refused.startswith(f"the group g0 of {MIRROR} runs on alpha (as beta sees it)")
    assert f"stop it first with `vigil resource oo-service {MIRROR}`" in refused
    assert answer(None, status, "mirror_promote", {"resource": MIRROR, "name": "x"}) == {
        "ok": False, "error": f"{status.node} runs no mirror service: the configuration its "
        "daemon started with has no mirror resource (restart it with the current one)"}

    stopped = dataclasses.replace(status, groups={"g0": dataclasses.replace(
        status.groups["g0"], node=None, state="stopped", active_on={})})
    about_to = promote_refusal(stopped, MIRROR)
    assert about_to is not None and "g0 of g0-r0 is placed on alpha" in about_to
    # in maintenance nothing starts; with no placement nothing runs
    assert promote_refusal(dataclasses.replace(stopped, maintenance=True), MIRROR) is None
    assert promote_refusal(dataclasses.replace(stopped, groups={"g0": dataclasses.replace(
        stopped.groups["g0"], placed=None)}), MIRROR) is None


def test_a_mirror_out_of_service_by_hand_may_be_promoted_while_the_rest_runs() -> None:
    status = beta_view()
    dependent = status.resources[MIRROR].dependents[0]
    out = dataclasses.replace(status, disabled={MIRROR: "oo_service"})
    assert out_of_service_by(out, MIRROR) == [MIRROR]
    assert out_of_service_by(out, dependent) == [MIRROR]  # what depends on it leaves with it
    assert promote_refusal(out, MIRROR) is None
    only_dependent = dataclasses.replace(status, disabled={dependent: "force_oos"})
    assert out_of_service_by(only_dependent, MIRROR) == []
    assert promote_refusal(only_dependent, MIRROR) is not None


def test_what_is_not_a_mirror_or_not_named_is_refused_first() -> None:
    status = beta_view()
    other = "g1-r0" if "g1-r0" in status.resources else status.resources[MIRROR].dependents[0]
    for command in ("mirror_discard", "mirror_promote"):
        assert answer(None, status, command, {"resource": "nope", "name": "x"})["error"] == \
            f"no resource named 'nope' (mirror resources: {MIRROR})"
        kind = status.resources[other].type
        assert answer(None, status, command, {"resource": other, "name": "x"})["error"] == \
            f"{other} is a {kind} resource, not a mirror: only a mirror's copies are set aside"
        assert answer(None, status, command, {"resource": MIRROR})["error"].startswith(
            "name what is set aside")


def test_discard_and_promote_are_an_admins() -> None:
    status_group, admin_group = grp.getgrall()[:2]  # any two groups of this machine
    access = Access(admin_group=admin_group.gr_name, status_group=status_group.gr_name)
    reader = Peer(pid=1, uid=4242, gid=status_group.gr_gid, groups=frozenset({
        status_group.gr_gid}))
    admin = Peer(pid=1, uid=4243, gid=admin_group.gr_gid, groups=frozenset({
        admin_group.gr_gid}))
    for command in MIRROR_COMMANDS:
        assert access.refusal(admin, command) is None
        refused = access.refusal(reader, command)
        assert refused is not None and f"admin_group {admin_group.gr_name!r}" in refused
    assert access.refusal(reader, "status") is None
