"""The operator's decisions on what a node holds set aside of a mirror resource (issue 14):
``vigil resource discard RESOURCE NAME`` deletes it, ``vigil resource promote RESOURCE NAME``
makes it the node's newest copy, so that it wins the next placement (docs/resources.md,
"mirror"; docs/operations.md, "A diverged mirror copy").

The control socket's requests ``mirror_discard`` and ``mirror_promote`` (args ``resource`` and
``name``) are answered here, on the control server's worker thread: the btrfs work takes up to
seconds and must not hold an actor. What the answer needs of the core (the resource's type,
where its group runs) comes from the node's status, asked of the coordinator first.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from vigil.cluster.mirrors import MIRROR_TYPE
from vigil.status import ClusterStatus

if TYPE_CHECKING:
    # every daemon's control actor imports this module; the mirror machinery is loaded only
    # by a configuration with a mirror resource (a service is there to answer with then)
    from vigil.resources.replication import MirrorService

__all__ = ["MIRROR_COMMANDS", "answer", "out_of_service_by", "promote_refusal"]

log = logging.getLogger(__name__)

#: The control socket's requests answered here.
MIRROR_COMMANDS: Final = frozenset({"mirror_discard", "mirror_promote"})


def answer(service: MirrorService | None, status: ClusterStatus, command: str,
           args: dict[str, str]) -> dict[str, Any]:
    """The control answer to ``command`` (one of :data:`MIRROR_COMMANDS`) with ``args``."""
    resource, name = args.get("resource", ""), args.get("name", "")
    refused = _resource_refusal(status, resource)
    if refused is None and not name:
        refused = "name what is set aside (as `vigil status` lists it after 'kept aside:')"
    if refused is None and service is None:
        refused = (f"{status.node} runs no mirror service: the configuration its daemon "
                   "started with has no mirror resource (restart it with the current one)")
    if refused is None and command == "mirror_promote":
        refused = promote_refusal(status, resource)
    if refused is not None:
        return {"ok": False, "error": refused}
    assert service is not None
    from vigil.resources.btrfs import BtrfsError  # loaded with the service already

    try:
        if command == "mirror_discard":
            return _discard(service, status, resource, name)
        return _promote(service, status, resource, name)
    except KeyError as exc:  # configured, but not a mirror this daemon runs
        return {"ok": False, "error": str(exc.args[0]) if exc.args else str(exc)}
    except BtrfsError as exc:
        return {"ok": False, "error": f"{resource} on {status.node}: {exc}"}


def _discard(service: MirrorService, status: ClusterStatus, resource: str,
             name: str) -> dict[str, Any]:
    _, state = service.discard(resource, name)
    left = (f"; still set aside here: {', '.join(state.aside)}" if state.aside
            else "; nothing else is set aside here")
    return {"ok": True, "message": f"discarded {name} of {resource} on {status.node}{left}"}


def _promote(service: MirrorService, status: ClusterStatus, resource: str,
             name: str) -> dict[str, Any]:
    done, _ = service.promote(resource, name)
    node, group = status.node, status.resources[resource].group
    moved = (f"; set aside: {', '.join(a.name for a in done.set_aside)}"
             if done.set_aside else "")
    then = f"move the group with `vigil group move {group} {node}`"
    held = out_of_service_by(status, resource)
    if held:
        then += " and bring it back with " + " and ".join(
            f"`vigil resource in-service {r}`" for r in held)
    return {"ok": True, "message": f"promoted {name} of {resource} on {node} as "
            f"{done.snapshot.name}, the newest copy here (taken now){moved}; {then}"}


def _resource_refusal(status: ClusterStatus, resource: str) -> str | None:
    found = status.resources.get(resource)
    if found is None:
        mirrors = sorted(r for r, s in status.resources.items() if s.type == MIRROR_TYPE)
        return (f"no resource named {resource!r} (mirror resources: "
                f"{', '.join(mirrors) or 'none'})")
    if found.type != MIRROR_TYPE:
        return (f"{resource} is a {found.type} resource, not a mirror: only a mirror's copies "
                "are set aside")
    return None


def out_of_service_by(status: ClusterStatus, resource: str) -> list[str]:
    """The resources taken out of service by hand that keep ``resource`` out of service: it,
    or those it depends on (sorted)."""
    held = []
    for root in status.disabled:
        todo, seen = [root], set()
        while todo:
            r = todo.pop()
            if r in seen or r not in status.resources:
                continue
            seen.add(r)
            todo += status.resources[r].dependents
        if resource in seen:
            held.append(root)
    return sorted(held)


def promote_refusal(status: ClusterStatus, resource: str) -> str | None:
    """Why promoting a copy of mirror ``resource`` is refused now, as ``status`` (this node's
    core) sees it, or None: while its group runs anywhere, or is about to start (the accepted
    placement names a node and the cluster is not in maintenance), unless ``resource`` is out
    of service by hand. A source that runs would set the promoted copy aside again with its
    next snapshot."""
    if out_of_service_by(status, resource):
        return None
    group = status.resources[resource].group
    found = status.groups.get(group)
    if found is None:
        return None
    if found.active_on:
        where = f"runs on {', '.join(sorted(found.active_on))}"
    elif found.placed is not None and not status.maintenance:
        where = f"is placed on {found.placed}"
    else:
        return None
    return (f"the group {group} of {resource} {where} (as {status.node} sees it): its source "
            "would set a promoted copy aside again with its next snapshot; stop it first with "
            f"`vigil resource oo-service {resource}` (cluster-wide; the final snapshot is sent "
            "to every node) and promote again")
