"""The ``vigil`` command line.

Exit codes, the same in every command, that scripts can rely on:

* 0 done;
* 1 the cluster refused the request, or the change failed;
* 2 usage or configuration error (an unknown node, group or resource name included);
* 3 no daemon answers on the control socket;
* 4 ``--wait`` timed out.

Every command that asks a daemon takes ``-n/--node NAME`` (the node whose daemon is asked;
``--via`` is a hidden alias) and ``-c/--config FILE`` (default ``$VIGIL_CONFIG``, read when
the command runs); every command that changes state takes ``--wait[=SECONDS]``. Commands of
other modules use the same options and codes: :mod:`vigil.cli.options`, re-exported here.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from vigil.cli import wait as waits
from vigil.cli.options import (
    DEFAULT_WAIT,
    EXIT_CODES_HELP,
    EXIT_NO_DAEMON,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    complete,
    config_option,
    config_path_now,
    node_option,
    this_node_option,
    unknown_name,
    wait_option,
)
from vigil.cli.wait import Check, wait_until
from vigil.config import (
    ClusterConfig,
    ConfigError,
    check_file,
    load,
    resolve_node,
    validate_against_registry,
    write_key,
)
from vigil.local.protocol import MalformedAnswer, request, status_of

if TYPE_CHECKING:
    # imported where a status is shown: `vigil guard` (every guardian's start) loads this
    # module and has no use for it
    from vigil.status import ClusterStatus, PeerLink

#: the old name of node_option (kept for other modules' imports)
via_option = node_option

__all__ = ["DEFAULT_WAIT", "EXIT_NO_DAEMON", "EXIT_OK", "EXIT_REFUSED", "EXIT_TIMEOUT",
           "EXIT_USAGE", "cli", "complete", "config_option", "config_path_now",
           "format_status", "main", "node_option", "this_node_option", "wait_option"]


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"vigil: {message}", err=True)
    sys.exit(code)


def _load(config_path: str) -> ClusterConfig:
    """The configuration, or exit 2 saying what is wrong with it."""
    try:
        return load(config_path)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        _fail(f"cannot read the configuration {config_path}: {exc.strerror or exc}",
              EXIT_USAGE)


def _known(cfg: ClusterConfig, what: str, name: str) -> None:
    """Exit 2 unless the configuration has a ``what`` ("node", "group", "resource") ``name``
    (checked here, before any daemon is asked, so that every command says it alike)."""
    known = {"node": cfg.nodes, "group": cfg.groups, "resource": cfg.resources}[what]
    if name not in known:
        _fail(unknown_name(what, name, known), EXIT_USAGE)


def _ask(config_path: str, via: str | None, command: str,
         args: dict[str, str] | None = None, timeout: float = 10.0) -> dict[str, Any]:
    return _ask_node(config_path, via, command, args, timeout)[1]


def _ask_node(config_path: str, via: str | None, command: str,
              args: dict[str, str] | None = None,
              timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
    """The name of the node asked, and its daemon's answer."""
    cfg = _load(config_path)
    try:
        name = resolve_node(cfg, via)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    path = cfg.nodes[name].control_socket
    try:
        return name, request(path, command, args or {}, timeout=timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        _fail(f"no daemon for node {name}: nothing listens on {path} (is `vigil node run` "
              "running for this node?)", EXIT_NO_DAEMON)
    except PermissionError:
        _fail(f"permission denied on {path}: run as root", EXIT_NO_DAEMON)
    except (OSError, ValueError) as exc:
        _fail(f"no answer from node {name} on {path}: {exc}", EXIT_NO_DAEMON)


def _request(config_path: str, via: str | None, command: str, *, timeout: float = 10.0,
             wait: float | None = None, until: Callable[[ClusterStatus], Check] | None = None,
             **args: str) -> None:
    """Send one request; print the daemon's answer, or its refusal on stderr with exit 1.
    With ``wait`` seconds, then wait until ``until(status before)`` says it is done."""
    before = _status(config_path, via) if wait is not None and until is not None else None
    answer = _ask(config_path, via, command, args, timeout)
    if not answer.get("ok"):
        _fail(str(answer.get("error", "request failed")), EXIT_REFUSED)
    click.echo(answer.get("message", "ok"))
    if before is not None and wait is not None and until is not None:
        _wait(config_path, via, until(before), wait)


def _wait(config_path: str, via: str | None, check: Check, timeout: float,
          what: str = "the change") -> None:
    """Wait (at most ``timeout`` seconds) until ``check`` says done: print what was seen last;
    exit 1 if it failed, 4 if the time ran out."""
    t = _load(config_path).timing
    outcome = wait_until(lambda left: _status(config_path, via, timeout=min(left, 10.0)),
                         check, timeout, settle=max(0.5, 3 * t.heartbeat_interval),
                         grace=2 * t.dead_time + 1.0)
    if outcome.result == "done":
        click.echo(f"done: {outcome.seen}")
        return
    if outcome.result == "failed":
        _fail(f"{what} failed: {outcome.seen}", EXIT_REFUSED)
    _fail(f"{what} is not done after {timeout:g} s; last seen: {outcome.seen}", EXIT_TIMEOUT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.version_option(package_name="vigil")
def cli() -> None:
    """Vigil: a high-availability cluster manager.

    Every command that asks a daemon takes -n/--node NAME (whose daemon; default this
    machine's) and -c/--config FILE (default $VIGIL_CONFIG, else /etc/vigil/cluster.toml);
    every command that changes state takes --wait[=SECONDS]."""


# ---- node ---------------------------------------------------------------------------------


@cli.group()
def node() -> None:
    """Run a node daemon; put nodes in standby and back online; fence them by hand."""


@node.command("run")
@config_option
@this_node_option
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def node_run(config_path: str, node: str | None, log_level: str) -> None:
    """Run this node's daemon in the foreground (logs to stderr; SIGTERM leaves cleanly)."""
    from vigil.daemon import configure_logging, run

    configure_logging(log_level, node)
    sys.exit(run(config_path, node))


@cli.command("guard")
@config_option
@this_node_option
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--watchdog-device", default=None, type=click.Path(dir_okay=False),
              help="The watchdog to pet instead of [guardian] watchdog_device (tests give a "
                   "plain file or FIFO here).")
@click.option("--sysrq-trigger", default=None, type=click.Path(dir_okay=False),
              help="FOR TESTS ONLY: a file that stands in for /proc/sysrq-trigger, where "
                   "self_fence = \"reboot\" writes 'b'.")
@click.option("--realtime/--no-realtime", default=True, show_default=True,
              help="Run at real-time priority (SCHED_RR) with memory locked, where allowed.")
@click.option("--follow-daemon", is_flag=True, hidden=True,
              help="Started by `vigil node run`: leave after its daemon's bye, or when no "
                   "daemon came back for a minute and nothing is held.")
def guard(config_path: str, node: str | None, log_level: str, watchdog_device: str | None,
          sysrq_trigger: str | None, realtime: bool, follow_daemon: bool) -> None:
    """Run this node's guardian in the foreground: it fences the node locally (kills,
    removes, unmounts; or reboots) when the daemon's lease runs out or the daemon dies
    holding something (docs/fencing.md). Run it as root, beside `vigil node run`."""
    from vigil.guard.process import main as guard_main

    sys.exit(guard_main(config_path, node, watchdog_device=watchdog_device,
                        sysrq_trigger=sysrq_trigger, realtime=realtime, log_level=log_level,
                        follow_daemon=follow_daemon))


node_name = click.argument("name", shell_complete=complete("nodes"))


@node.command("standby")
@config_option
@node_option
@wait_option
@node_name
def node_standby(config_path: str, node: str | None, wait: float | None, name: str) -> None:
    """Move every group off NAME and keep them off until `vigil node online`. --wait: until
    NAME is in standby and runs no group."""
    _known(_load(config_path), "node", name)
    _request(config_path, node, "standby", node=name, wait=wait,
             until=lambda _: waits.standby(name, True))


@node.command("online")
@config_option
@node_option
@wait_option
@node_name
def node_online(config_path: str, node: str | None, wait: float | None, name: str) -> None:
    """Let NAME run groups again. --wait: until it is out of standby (and the transition
    that follows is over)."""
    _known(_load(config_path), "node", name)
    _request(config_path, node, "online", node=name, wait=wait,
             until=lambda _: waits.standby(name, False))


@node.command("fence")
@config_option
@node_option
@wait_option
@node_name
def node_fence(config_path: str, node: str | None, wait: float | None, name: str) -> None:
    """Power NAME off now through its fence levels (once; the master runs them). Refused
    without quorum, or when no fence device can fence NAME. --wait: until the fencing
    ended (exit 1 if it failed)."""
    _known(_load(config_path), "node", name)
    _request(config_path, node, "fence", node=name, wait=wait,
             until=lambda before: waits.fenced(name, before))


@node.command("confirm-off")
@config_option
@node_option
@wait_option
@node_name
def node_confirm_off(config_path: str, node: str | None, wait: float | None,
                     name: str) -> None:
    """Tell the cluster that NAME is off (you checked: powered down, unplugged): it counts as
    fenced, so the groups waiting for its fencing may move. Refused without quorum, and
    while NAME is online. Saying so of a node that still runs is how two nodes end up
    running one group."""
    _known(_load(config_path), "node", name)
    _request(config_path, node, "confirm_off", node=name, wait=wait,
             until=lambda before: waits.fenced(name, before))


# ---- group / resource ---------------------------------------------------------------------


@cli.group()
def group() -> None:
    """Move resource groups; stop and start them cluster-wide."""


group_name_argument = click.argument("group_name", metavar="GROUP",
                                     shell_complete=complete("groups"))


@group.command("move")
@config_option
@node_option
@wait_option
@click.option("--force", is_flag=True,
              help="Move even where the copy of the group's mirrored data is further behind "
                   "than max_lag (what the copy lacks is lost there).")
@group_name_argument
@click.argument("target", shell_complete=complete("nodes"))
def group_move(config_path: str, node: str | None, wait: float | None, force: bool,
               group_name: str, target: str) -> None:
    """Move GROUP to the node TARGET (through a transition; it stays there after). -n/--node
    names the daemon asked, not where the group goes. --wait: until GROUP runs on TARGET
    (exit 1 when the cluster placed it elsewhere)."""
    cfg = _load(config_path)
    _known(cfg, "group", group_name)
    _known(cfg, "node", target)
    def until(before: ClusterStatus) -> Check:
        return waits.moved(group_name, target, before.epoch)

    if force:
        _request(config_path, node, "move", group=group_name, node=target, force="1",
                 wait=wait, until=until)
    else:
        _request(config_path, node, "move", group=group_name, node=target, wait=wait,
                 until=until)


def _members_of(cfg: ClusterConfig, group_name: str) -> tuple[str, ...]:
    return tuple(cfg.groups[group_name].resources)


def _by_hand_each(config_path: str, node: str | None, command: str,
                  resources: tuple[str, ...]) -> None:
    for r in resources:
        answer = _ask(config_path, node, command, {"resource": r})
        if not answer.get("ok"):
            _fail(f"{r}: {answer.get('error', 'request failed')}", EXIT_REFUSED)


@group.command("stop")
@config_option
@node_option
@wait_option
@group_name_argument
def group_stop(config_path: str, node: str | None, wait: float | None,
               group_name: str) -> None:
    """Stop GROUP cluster-wide and keep it stopped until `vigil group start`: every member
    is taken out of service by hand (as `vigil resource oo-service` does), wherever the group
    is placed. --wait: until no member is in service."""
    cfg = _load(config_path)
    _known(cfg, "group", group_name)
    members = _members_of(cfg, group_name)
    after = sorted(g for g, c in cfg.groups.items() if group_name in c.depends_on)
    if after:
        # the group stays placed (only its members are out), so what depends on it stays up
        click.echo(f"vigil: note: {', '.join(after)} depend(s) on {group_name} and keep "
                   f"running; stop them first with `vigil group stop`", err=True)
    _by_hand_each(config_path, node, "oo_service", tuple(reversed(members)))
    click.echo(f"stop of {group_name} requested ({', '.join(members)} out of service by "
               "hand); the next transition applies it")
    if wait is not None:
        _wait(config_path, node, waits.out_of_service(members), wait, f"stop of {group_name}")


@group.command("start")
@config_option
@node_option
@wait_option
@group_name_argument
def group_start(config_path: str, node: str | None, wait: float | None,
                group_name: str) -> None:
    """Start GROUP again after `vigil group stop`: every member back in service (as `vigil
    resource in-service` does). --wait: until every member is in service where the group
    runs (exit 1 if one failed)."""
    cfg = _load(config_path)
    _known(cfg, "group", group_name)
    members = _members_of(cfg, group_name)
    _by_hand_each(config_path, node, "in_service", members)
    click.echo(f"start of {group_name} requested ({', '.join(members)} back in service); "
               "the next transition applies it")
    if wait is not None:
        _wait(config_path, node, waits.in_service(members), wait, f"start of {group_name}")


@cli.group()
def resource() -> None:
    """Act on single resources."""


resource_name = click.argument("name", shell_complete=complete("resources"))


@resource.command("cleanup")
@config_option
@node_option
@wait_option
@click.argument("name", shell_complete=complete("resources", "groups"))
def resource_cleanup(config_path: str, node: str | None, wait: float | None,
                     name: str) -> None:
    """Forget the failures of NAME (a resource or group) on every node, so its group may run
    where it failed before. --wait: until no failure of its group is counted and the
    transition that follows is over."""
    cfg = _load(config_path)
    if name not in cfg.resources and name not in cfg.groups:
        _fail(unknown_name("resource or group", name, [*cfg.resources, *cfg.groups]),
              EXIT_USAGE)
    group_name = cfg.resources[name].group if name in cfg.resources else name
    _request(config_path, node, "cleanup", group=group_name, wait=wait,
             until=lambda _: waits.cleaned(group_name))


def _by_hand(command: str, summary: str, until: Callable[[tuple[str, ...]], Check]) -> None:
    @resource.command(command.replace("_", "-"), help=summary)
    @config_option
    @node_option
    @wait_option
    @resource_name
    def run(config_path: str, node: str | None, wait: float | None, name: str) -> None:
        _known(_load(config_path), "resource", name)
        _request(config_path, node, command, resource=name, wait=wait,
                 until=lambda _: until((name,)))


_by_hand("in_service", "Bring NAME (and what depends on it) back into service where its "
         "group runs, after oo-service or force-oos. --wait: until it is in service.",
         waits.in_service)
_by_hand("oo_service", "Take NAME and the members of its group that depend on it out of "
         "service gracefully, cluster-wide, until in-service. --wait: until it is out of "
         "service.", waits.out_of_service)
_by_hand("force_oos", "Like oo-service, but stop them at once (as SIGKILL would). --wait: "
         "until it is out of service.", waits.out_of_service)


@resource.command("restart")
@config_option
@node_option
@wait_option
@resource_name
def resource_restart(config_path: str, node: str | None, wait: float | None,
                     name: str) -> None:
    """Restart NAME where its group runs: stop it and the members that depend on it, then
    start them again (out of service by hand and back, cluster-wide; the group stays where
    it is and no failure is counted). The stop is always waited for (at most --wait
    seconds, default 60); --wait: also until NAME is in service again."""
    cfg = _load(config_path)
    _known(cfg, "resource", name)
    st = _status(config_path, node)
    rv, gv = st.resources[name], st.groups[cfg.resources[name].group]
    if rv.by_hand:
        _fail(f"{name} is out of service by hand ({rv.by_hand}): bring it back with `vigil "
              f"resource in-service {name}`", EXIT_REFUSED)
    if gv.node is None or gv.state != "running":
        _fail(f"{name}'s group {rv.group} does not run anywhere now ({waits.where(st, rv.group)}):"
              " nothing to restart", EXIT_REFUSED)
    answer = _ask(config_path, node, "oo_service", {"resource": name})
    if not answer.get("ok"):
        _fail(str(answer.get("error", "request failed")), EXIT_REFUSED)
    click.echo(f"restarting {name} on {gv.node}: stopping it")
    # the stop is waited for even without --wait: bringing it back before would be no restart
    _wait(config_path, node, waits.out_of_service((name,)), wait or DEFAULT_WAIT,
          f"the stop of {name}")
    answer = _ask(config_path, node, "in_service", {"resource": name})
    if not answer.get("ok"):
        _fail(f"{name} is stopped and stays out of service: {answer.get('error')} (bring it "
              f"back with `vigil resource in-service {name}`)", EXIT_REFUSED)
    click.echo(f"starting {name} again")
    if wait is not None:
        _wait(config_path, node, waits.in_service((name,)), wait, f"the start of {name}")


@resource.command("mark-oos")
@config_option
@node_option
@resource_name
def resource_mark_oos(config_path: str, node: str | None, name: str) -> None:
    """Record that NAME is out of service on this node without acting (after you stopped
    it by hand, or the machine was reset): clears an unclean group once all its members are
    marked. Done when it answers (nothing to wait for)."""
    _known(_load(config_path), "resource", name)
    _request(config_path, node, "mark_oos", resource=name)


#: How long a mirror request may take: a running receive is waited for (60 s), then btrfs.
MIRROR_REQUEST_TIMEOUT = 180.0


def _on_aside(command: str, summary: str) -> None:
    """``vigil resource COMMAND RESOURCE NAME``: the decision on NAME, which this node keeps
    aside of the mirror resource RESOURCE."""
    @resource.command(command, help=summary)
    @config_option
    @node_option
    @click.argument("resource_name", metavar="RESOURCE", shell_complete=complete("resources"))
    @click.argument("name")
    def run(config_path: str, node: str | None, resource_name: str, name: str) -> None:
        _known(_load(config_path), "resource", resource_name)
        _request(config_path, node, f"mirror_{command}", timeout=MIRROR_REQUEST_TIMEOUT,
                 resource=resource_name, name=name)


_on_aside("discard", """Delete NAME, a copy of the mirror resource RESOURCE that this node
    keeps aside (a diverged snapshot or former data, as `vigil status` lists it after "kept
    aside:"). It is gone for good: look at it first, under ROOT/.snapshots/NAME. Done when
    it answers.""")
_on_aside("promote", """Make NAME, a diverged copy of the mirror resource RESOURCE that this
    node keeps aside, the node's newest copy (taken now), so that it wins the next placement.
    What is not in its history is set aside in turn; nothing is deleted. Refused while the
    group runs: first `vigil resource oo-service RESOURCE`; then move the group to this node
    and bring RESOURCE back with `vigil resource in-service RESOURCE`. Done when it
    answers.""")


@cli.command()
@config_option
@node_option
@wait_option
@click.argument("state", type=click.Choice(["on", "off"]))
def maintenance(config_path: str, node: str | None, wait: float | None, state: str) -> None:
    """Maintenance mode, cluster-wide: monitors and recovery pause and nothing is started,
    stopped or moved (a node that loses quorum still stops what it runs). --wait: until the
    cluster is in (out of) maintenance mode."""
    _load(config_path)
    _request(config_path, node, "maintenance", state=state, wait=wait,
             until=lambda _: waits.maintenance(state == "on"))


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(vigil completion bash)". It completes
    commands, options, and the node, group and resource names of the configuration (-c, or
    $VIGIL_CONFIG)."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "vigil", "_VIGIL_COMPLETE").source())


@resource.command("diagnose")
@config_option
@node_option
@click.option("--json", "as_json", is_flag=True, help="The result as one JSON object.")
@resource_name
def resource_diagnose(config_path: str, node: str | None, as_json: bool, name: str) -> None:
    """Run NAME's monitor on this node now and print the result.

    Exit status 0: healthy (in service, or cleanly stopped here); 1: the monitor failed (if
    its group runs here, recovery follows as for a scheduled monitor)."""
    _known(_load(config_path), "resource", name)
    answer = _ask(config_path, node, "diagnose", {"resource": name}, timeout=130.0)
    if not answer.get("ok"):
        _fail(str(answer.get("error", "request failed")), EXIT_REFUSED)
    if as_json:
        click.echo(json.dumps(answer, indent=2, sort_keys=True))
    else:
        verdict = "healthy" if answer["healthy"] else "FAILED"
        click.echo(f"{name}: {verdict}, {answer['state']} ({answer['reason']}) in "
                   f"{answer['duration']:.2f}s")
    sys.exit(0 if answer["healthy"] else EXIT_REFUSED)


# ---- status -------------------------------------------------------------------------------


@cli.command()
@config_option
@node_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object (stable keys).")
@click.option("--watch", "-w", is_flag=True,
              help="Refresh every --interval seconds, like crm_mon, until Ctrl-C (exit 0).")
@click.option("--interval", "-i", type=click.FloatRange(min=0.1), default=1.0,
              show_default=True, metavar="SECONDS", help="How often --watch refreshes.")
def status(config_path: str, node: str | None, as_json: bool, watch: bool,
           interval: float) -> None:
    """Show the cluster as this node's daemon sees it."""
    if watch:
        # Ctrl-C ends watching even where SIGINT came ignored from the parent (a shell's
        # background job, a service manager): Python then leaves it ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            st = _status(config_path, node)
            if as_json:
                click.echo(json.dumps(st.to_json(), indent=2, sort_keys=True))
            else:
                if watch:
                    click.clear()
                click.echo(format_status(st))
            if not watch:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        if not watch:
            raise
        # Ctrl-C is how one stops watching: not an error, and no "Aborted!"
        click.echo("")


def _status(config_path: str, node: str | None, timeout: float = 10.0) -> ClusterStatus:
    name, answer = _ask_node(config_path, node, "status", timeout=timeout)
    if not answer.get("ok"):
        _fail(str(answer.get("error")), EXIT_REFUSED)
    try:
        return status_of(answer, name)
    except MalformedAnswer as exc:
        _fail(str(exc), EXIT_REFUSED)


def format_status(st: ClusterStatus) -> str:
    from vigil.status import local_time

    lines = []
    t = st.transition
    lines.append(f"Cluster {st.cluster}: epoch {st.epoch}, master {st.master or '-'}, "
                 f"{'quorate' if st.quorate else 'NO QUORUM'} ({st.quorum})  "
                 f"[seen from {st.node}]")
    if t is not None and t.phase != "done":
        lines.append(f"Transition in progress: {t.phase} ({t.reason})")
    change = st.config_line()
    if change:
        lines.append(f"Configuration change: {change}")
    down = st.links_down()
    if down:
        lines.append(f"Links down: {down}")
    if st.maintenance:
        lines.append("MAINTENANCE MODE: no monitors, no recovery, nothing starts, stops or "
                     "moves (`vigil maintenance off` to end)")
    online = [n for n, v in st.nodes.items() if v.state == "online"]
    lines.append(f"Nodes: {len(st.nodes)} configured, {len(online)} online")
    for n, v in sorted(st.nodes.items()):
        extra = " (standby)" if v.standby else ""
        cut = [link for link, up in v.links.items() if not up]
        if cut and v.state == "online":  # an offline node is heard on no link: no news
            extra += f" links down: {', '.join(cut)}"
        lines.append(f"  * {n:<12} {v.state.upper() if v.state != 'online' else 'online'}"
                     f"{extra}")
    if st.nics:
        lines.append(f"NICs of {st.node}:")
        for nic, nv in sorted(st.nics.items()):
            state = "up" if nv.state == "up" else "DOWN"
            why = "" if nv.state == "up" and nv.reason == "usable" else f": {nv.reason}"
            lines.append(f"  * {nic:<12} {state} since {local_time(nv.since)}{why}")
    lines += _format_links(st)
    lines.append("Groups:")
    by_group: dict[str, list[str]] = {}
    for r, rv in st.resources.items():  # in start order
        by_group.setdefault(rv.group, []).append(r)
    for g, gv in sorted(st.groups.items()):
        where = f"on {gv.node}" if gv.node else ""
        if not gv.node and gv.placed in st.fencing.pending:
            where = f"(held: it waits for the fencing of {gv.placed})"
        members = by_group.get(g, [])
        if members and all(st.resources[r].by_hand for r in members):
            where += f" (stopped by hand: `vigil group start {g}`)"
        lines.append(f"  * {g:<12} {gv.state} {where}".rstrip())
        for r in by_group.get(g, []):
            rv = st.resources[r]
            dep = f"  after {', '.join(rv.depends_on)}" if rv.depends_on else ""
            by_hand = f"  [{rv.by_hand} by hand]" if rv.by_hand else ""
            lines.append(f"      {r:<16} ({rv.type}) {rv.service_state}{dep}{by_hand}")
            diag = rv.last_diagnostic
            if diag is not None and not diag.ok:
                lines.append(f"          last diagnostic at {local_time(diag.at)} FAILED: "
                             f"{diag.reason}")
    lines += _format_mirrors(st)
    lines += format_failed_actions(st)
    if st.fail_counts:
        lines.append("Fail counts here: " + ", ".join(f"{g}={c}"
                                                      for g, c in st.fail_counts.items()))
    lines += _format_fencing(st)
    if st.mismatched:
        lines.append("CONFIG MISMATCH (kept out): " + ", ".join(st.mismatched))
    lines += format_recent(st)
    return "\n".join(lines)


def _format_mirrors(st: ClusterStatus) -> list[str]:
    """Each mirror resource: on its source, how far each peer is behind; elsewhere, this
    node's copy and its age; and what this node keeps aside."""
    from vigil.status import seconds

    lines = []
    for r, m in sorted(st.mirrors.items()):
        if m.source == st.node:
            peers = [f"{n} has no copy (or cannot be reached)" if lag is None else
                     f"{n} {seconds(lag)} behind" + (
                         f" (BEYOND max_lag {seconds(m.max_lag)})" if lag > m.max_lag else "")
                     for n, lag in m.lags.items()]
            lines.append(f"Mirror {r} (group {m.group}): source {st.node}; "
                         + (", ".join(peers) or "no copy elsewhere measured yet"))
        elif m.copy is None:
            lines.append(f"Mirror {r}: no copy here")
        else:
            c = m.copy
            age = "" if c.age is None else f", {seconds(c.age)} old"
            lines.append(f"Mirror {r}: copy {c.seq} from {c.source}{age}"
                         + (" (live)" if c.live else ""))
        if m.aside:
            lines.append(f"    kept aside: {', '.join(m.aside)}")
    return lines


def _format_links(st: ClusterStatus) -> list[str]:
    if not st.links:
        return []
    lines = [f"Links of {st.node} (each peer: last heard on the link, our connection to it):"]
    for name, ls in st.links.items():
        peers = ", ".join(_peer_on_link(p, v) for p, v in ls.peers.items())
        lines.append(f"  * {name:<12} {'up' if ls.up else 'DOWN':<4}  {peers}".rstrip())
        if not ls.up or not any(v.up for v in ls.peers.values()):
            lines.append(f"      {ls.why}")
        # copies of what came first over another link are the normal case, not trouble
        dropped = ", ".join(f"{reason} {n}" for reason, n in ls.rejected.items()
                            if reason != "duplicate" and n)
        trouble = ([f"messages dropped: {dropped}"] if dropped else []) + (
            [f"connections cut: {ls.cut} (too many not yet authenticated)"] if ls.cut else [])
        if trouble:
            lines.append(f"      {'; '.join(trouble)}")
    return lines


def _peer_on_link(peer: str, v: PeerLink) -> str:
    ago = "never" if v.heard_ago is None else f"{v.heard_ago:.1f}s"
    connection = "" if v.connection == "unknown" else f" {v.connection}"
    return f"{peer}{'' if v.up else ' DOWN'} {ago}{connection}"


def _format_fencing(st: ClusterStatus) -> list[str]:
    from vigil.status import local_time

    f = st.fencing
    if not (f.pending or f.history or f.devices):
        return []
    lines = ["Fencing:"]
    lines += [f"  * {node}: {text}" for node, text in sorted(f.pending.items())]
    for name, d in sorted(f.devices.items()):
        when = f" at {local_time(d.checked)}" if d.checked else ""
        lines.append(f"  device {name:<12} {d.state}{when} (fences {', '.join(d.hosts)})"
                     + (f": {d.reason}" if d.state != "ok" else ""))
    if f.history:
        lines.append("  recent (requester -> node, level, devices: result, seconds):")
        for e in f.history[-6:]:
            level = f"level {e.level} ({'+'.join(e.devices)})" if e.level else "no device"
            lines.append(f"    {local_time(e.at)} {e.requester} -> {e.target}, {level}: "
                         f"{e.result}, "
                         f"{e.duration:.1f}s" + (f": {e.detail}" if e.result != "off" else ""))
    return lines


# ---- configuration ------------------------------------------------------------------------


@cli.group()
def config() -> None:
    """Check configuration files."""


@config.command("check")
@config_option
@click.argument("path", type=click.Path(dir_okay=False), required=False)
def config_check(config_path: str, path: str | None) -> None:
    """Validate PATH (default: -c FILE, else $VIGIL_CONFIG, else /etc/vigil/cluster.toml);
    print every problem (file: key: what is wrong) and exit 2 if any.

    Beyond loading the file, this runs agents: each resource type's checks and each fence
    device's agent (its metadata), which the daemon's loading of the file never does."""
    from vigil.fencing.check import check_fence_devices
    from vigil.resources.registry import default_registry

    def refuse_if(problems: list[str]) -> None:
        if problems:
            for p in problems:
                click.echo(p, err=True)
            sys.exit(EXIT_USAGE)

    path = path or config_path
    refuse_if(check_file(path))  # the file itself first: only a valid file can be loaded
    cfg = _load(path)
    registry = default_registry()
    # Agent families (ocf:...) and the built-ins are made on first use: ask for every type
    # the file names (first: a type whose code fails to load leaves names(), into
    # load_errors).
    named = {r.type for r in cfg.resources.values() if r.type in registry}
    known = set(registry.names()) | named
    problems = [str(p) for p in validate_against_registry(cfg, sorted(known),
                                                          registry.load_errors)]
    for r in cfg.resources.values():
        if r.type in registry:
            rtype = registry.get(r.type)
            params = rtype.check_params(r.params)
            problems += [f"{path}: resources.{r.name}.params: {p}" for p in params]
            if not params:  # the agent's own check, where it is installed on this machine
                problems += [f"{path}: resources.{r.name}: {p}" for p in rtype.validate(r)]
    problems += [str(p) for p in check_fence_devices(cfg)]
    refuse_if(problems)
    devices = f", {len(cfg.fence_devices)} fence devices" if cfg.fence_devices else ""
    click.echo(f"{path}: ok (cluster {cfg.name}, {len(cfg.nodes)} nodes, {len(cfg.groups)} "
               f"groups, {len(cfg.resources)} resources{devices}, digest {cfg.digest[:12]})")


@config.command("reload")
@config_option
@node_option
@wait_option
def config_reload(config_path: str, node: str | None, wait: float | None) -> None:
    """Apply the configuration file, changed on every node, without stopping the cluster.

    The daemon reads its file again and checks it (the answer names what is wrong), and
    asks every other node to do the same; once all have the same new file, the cluster
    switches to it in one transition: groups added start, groups removed or whose
    resources changed stop (and start again from their new definition), the others are not
    touched. What cannot change live (the nodes, the fencing, a shorter lease) is refused
    with what to do instead. `kill -HUP` of the daemon does the same."""
    via = node
    answer = _ask(config_path, via, "reload", timeout=30.0)
    if not answer.get("ok"):
        _fail(str(answer.get("error", "reload refused")), EXIT_REFUSED)
    click.echo(answer.get("message", "ok"))
    target = str(answer.get("digest", ""))
    if wait is None or not target:
        return
    deadline = time.monotonic() + wait
    last = ""
    while time.monotonic() < deadline:
        status = _status(config_path, via)
        mine = status.configs.get(status.node)
        settled = status.transition is None or status.transition.phase == "done"
        if mine is not None and mine.digest == target and settled:
            behind = sorted(n for n, c in status.configs.items() if c.digest != target)
            if not behind:
                click.echo(f"every node runs configuration {target[:12]} (epoch "
                           f"{status.epoch})")
                return
        if mine is not None and mine.digest != target and mine.staged != target:
            _fail(f"configuration {target[:12]} is no longer staged on {status.node}: "
                  f"{status.decisions[-1][1] if status.decisions else 'see vigil status'}",
                  EXIT_REFUSED)
        line = status.config_line()
        if line and line != last:
            click.echo(line)
            last = line
        time.sleep(0.2)
    _fail(f"the cluster did not switch to configuration {target[:12]} within {wait:g}s: "
          f"{last or 'see vigil status'}", EXIT_TIMEOUT)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
def keygen(path: str) -> None:
    """Write a new random cluster key to PATH (mode 0600); copy it to every node. It is the
    only secret: each node derives its CurveZMQ key pair for the links from it (rotation:
    docs/security.md)."""
    try:
        write_key(Path(path))
    except FileExistsError:
        _fail(f"{path} exists; remove it first if you really want a new key", EXIT_USAGE)
    click.echo(f"wrote {path}")


# ---- simulate -----------------------------------------------------------------------------


class _InOrder(click.Command):
    """A command that also keeps the order in which its event options were given
    (``ctx.meta["vigil.events"]``: (kind, value) pairs); click gathers each option's values
    apart."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from vigil.cli.simulate import EVENT_KINDS

        parser = self.make_parser(ctx)
        opts, _, order = parser.parse_args(args=list(args))
        values = {name: list(v) if isinstance(v, list) else [v] for name, v in opts.items()}
        events: list[tuple[str, str]] = []
        for param in order:
            name = param.name or ""
            kind = name.replace("_", "-")
            if kind in EVENT_KINDS and values.get(name):
                value = values[name].pop(0)
                events.append((kind, "" if kind == "heal" else str(value)))
        ctx.meta["vigil.events"] = events
        return super().parse_args(ctx, args)


@cli.command(cls=_InOrder)
@config_option
@node_option
@click.option("--node-down", multiple=True, metavar="NODE", help="Power NODE off.",
              shell_complete=complete("nodes"))
@click.option("--node-up", multiple=True, metavar="NODE", help="Power NODE back on.",
              shell_complete=complete("nodes"))
@click.option("--resource-fail", multiple=True, metavar="RESOURCE@NODE",
              help="RESOURCE's monitor fails where it runs on NODE (its on_fail applies); "
                   "a group name: its first member.")
@click.option("--partition", multiple=True, metavar="A,B/C",
              help="Split the network: nodes before '/' and after it cannot talk.")
@click.option("--heal", multiple=True, is_flag=True, flag_value=True,
              help="Heal the network.")
@click.option("--live", is_flag=True,
              help="Start from the running cluster's state as the daemon (-n) reports it: "
                   "nodes up, standby, resources out of service, maintenance, where the "
                   "groups run, its fail counts.")
@click.option("--show-costs", is_flag=True,
              help="Print every group's cost on every node after the last step, and why.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def simulate(ctx: click.Context, config_path: str, node: str | None,
             node_down: tuple[str, ...], node_up: tuple[str, ...],
             resource_fail: tuple[str, ...], partition: tuple[str, ...], heal: tuple[bool, ...],
             live: bool, show_costs: bool, as_json: bool) -> None:
    """Show what the cluster would do, like crm_simulate: the placement at the start and
    after each event, computed by the same protocol code over a simulated network. Events
    apply in the order given, e.g. --node-down alpha --heal --resource-fail web-app@beta."""
    from vigil.cli.simulate import Live, Scenario, SimulateError, format_costs, run_scenario

    cfg = _load(config_path)
    events: list[tuple[str, str]] = ctx.meta.get("vigil.events", [])
    start = Live.of(_status(config_path, node)) if live else None
    try:
        report = run_scenario(cfg, Scenario(events, start, show_costs))
    except SimulateError as exc:
        _fail(str(exc), EXIT_USAGE)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    for step in report["steps"]:
        click.echo(f"== {step['title']} (t={step['time']:.2f}s)")
        for g, where in sorted(step["placement"].items()):
            click.echo(f"  {g:<14} {where or 'stopped'}")
        for line in step["changes"]:
            click.echo(f"  * {line}")
    if show_costs:
        click.echo("\n".join(format_costs(report["costs"])))


def main() -> None:
    cli(prog_name="vigil")



from vigil.cli.events import events_command  # noqa: E402

cli.add_command(events_command)

from vigil.cli.mount import mount_command  # noqa: E402

cli.add_command(mount_command)

from vigil.cli.config_cmds import config_diff_command  # noqa: E402

config.add_command(config_diff_command(config_option, node_option, _ask_node))

from vigil.cli.ops import units_command  # noqa: E402

cli.add_command(units_command)

# (also what `vigil status` shows of the history: failed actions, recent events)
from vigil.cli.history import (  # noqa: E402
    format_failed_actions,
    format_recent,
    history_command,
)

cli.add_command(history_command)


if __name__ == "__main__":
    main()
