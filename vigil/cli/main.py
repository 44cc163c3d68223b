"""The ``vigil`` command line.

Exit codes scripts can rely on: 0 done; 1 the cluster refused or failed the request;
2 usage or configuration error; 3 no daemon answers on the control socket.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from vigil.config import (
    ConfigError,
    check_file,
    load,
    resolve_node,
    validate_against_registry,
    write_key,
)
from vigil.local.protocol import MalformedAnswer, request, status_of
from vigil.status import ClusterStatus, PeerLink, local_time, seconds

EXIT_REFUSED, EXIT_USAGE, EXIT_NO_DAEMON = 1, 2, 3
DEFAULT_CONFIG = os.environ.get("VIGIL_CONFIG", "/etc/vigil/cluster.toml")

config_option = click.option(
    "--config", "-c", "config_path", default=DEFAULT_CONFIG, show_default=True,
    type=click.Path(dir_okay=False), help="Cluster configuration file (or $VIGIL_CONFIG).")
via_option = click.option(
    "--via", default=None, help="Node whose daemon takes the request (default: the host name).")
node_option = click.option(
    "--node", "-n", default=None, help="Which node this is (default: the host name).")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"vigil: {message}", err=True)
    sys.exit(code)


def _ask(config_path: str, via: str | None, command: str,
         args: dict[str, str] | None = None, timeout: float = 10.0) -> dict[str, Any]:
    return _ask_node(config_path, via, command, args, timeout)[1]


def _ask_node(config_path: str, via: str | None, command: str,
              args: dict[str, str] | None = None,
              timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
    """The name of the node asked, and its daemon's answer."""
    try:
        cfg = load(config_path)
        name = resolve_node(cfg, via)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    path = cfg.nodes[name].control_socket
    try:
        return name, request(path, command, args or {}, timeout=timeout)
    except FileNotFoundError:
        _fail(f"no daemon for node {name}: {path} does not exist (is `vigil node run` "
              "running for this node?)", EXIT_NO_DAEMON)
    except PermissionError:
        _fail(f"permission denied on {path}: run as root", EXIT_NO_DAEMON)
    except (OSError, ValueError) as exc:
        _fail(f"no answer from node {name} on {path}: {exc}", EXIT_NO_DAEMON)


def _request(config_path: str, via: str | None, command: str, *, timeout: float = 10.0,
             **args: str) -> None:
    """Send one request; print the daemon's answer, or its refusal on stderr with exit 1."""
    answer = _ask(config_path, via, command, args, timeout)
    if not answer.get("ok"):
        _fail(str(answer.get("error", "request failed")), EXIT_REFUSED)
    click.echo(answer.get("message", "ok"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vigil")
def cli() -> None:
    """Vigil: a high-availability cluster manager."""


# ---- node ---------------------------------------------------------------------------------


@cli.group()
def node() -> None:
    """Run a node daemon; put nodes in standby and back online; fence them by hand."""


@node.command("run")
@config_option
@node_option
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def node_run(config_path: str, node: str | None, log_level: str) -> None:
    """Run this node's daemon in the foreground (logs to stderr; SIGTERM leaves cleanly)."""
    from vigil.daemon import configure_logging, run

    configure_logging(log_level, node)
    sys.exit(run(config_path, node))


@cli.command("guard")
@config_option
@node_option
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


@node.command("standby")
@config_option
@via_option
@click.argument("name")
def node_standby(config_path: str, via: str | None, name: str) -> None:
    """Move every group off NAME and keep them off until `vigil node online`."""
    _request(config_path, via, "standby", node=name)


@node.command("online")
@config_option
@via_option
@click.argument("name")
def node_online(config_path: str, via: str | None, name: str) -> None:
    """Let NAME run groups again."""
    _request(config_path, via, "online", node=name)


@node.command("fence")
@config_option
@via_option
@click.argument("name")
def node_fence(config_path: str, via: str | None, name: str) -> None:
    """Power NAME off now through its fence levels (once; the master runs them). Refused
    without quorum, or when no fence device can fence NAME."""
    _request(config_path, via, "fence", node=name)


@node.command("confirm-off")
@config_option
@via_option
@click.argument("name")
def node_confirm_off(config_path: str, via: str | None, name: str) -> None:
    """Tell the cluster that NAME is off (you checked: powered down, unplugged): it counts as
    fenced, so the groups waiting for its fencing may move. Refused without quorum, and
    while NAME is online. Saying so of a node that still runs is how two nodes end up
    running one group."""
    _request(config_path, via, "confirm_off", node=name)


# ---- group / resource ---------------------------------------------------------------------


@cli.group()
def group() -> None:
    """Move resource groups."""


@group.command("move")
@config_option
@via_option
@click.option("--force", is_flag=True,
              help="Move even where the copy of the group's mirrored data is further behind "
                   "than max_lag (what the copy lacks is lost there).")
@click.argument("group_name")
@click.argument("target")
def group_move(config_path: str, via: str | None, force: bool, group_name: str,
               target: str) -> None:
    """Move GROUP_NAME to node TARGET (through a transition; it stays there after)."""
    if force:
        _request(config_path, via, "move", group=group_name, node=target, force="1")
    else:
        _request(config_path, via, "move", group=group_name, node=target)


@cli.group()
def resource() -> None:
    """Act on single resources."""


@resource.command("cleanup")
@config_option
@node_option
@click.argument("name")
def resource_cleanup(config_path: str, node: str | None, name: str) -> None:
    """Forget the failures of NAME (a resource or group) on every node, so its group may run
    where it failed before."""
    cfg = load(config_path)
    if name not in cfg.resources and name not in cfg.groups:
        _fail(f"no resource or group named {name!r}", EXIT_USAGE)
    group_name = cfg.resources[name].group if name in cfg.resources else name
    _request(config_path, node, "cleanup", group=group_name)


def _by_hand(command: str, summary: str) -> None:
    @resource.command(command.replace("_", "-"), help=summary)
    @config_option
    @via_option
    @click.argument("name")
    def run(config_path: str, via: str | None, name: str) -> None:
        _request(config_path, via, command, resource=name)


_by_hand("in_service", "Bring NAME (and what depends on it) back into service where its "
         "group runs, after oo-service or force-oos.")
_by_hand("oo_service", "Take NAME and the members of its group that depend on it out of "
         "service gracefully, cluster-wide, until in-service.")
_by_hand("force_oos", "Like oo-service, but stop them at once (as SIGKILL would).")


@resource.command("mark-oos")
@config_option
@node_option
@click.argument("name")
def resource_mark_oos(config_path: str, node: str | None, name: str) -> None:
    """Record that NAME is out of service on this node without acting (after you stopped
    it by hand, or the machine was reset): clears an unclean group once all its members are
    marked."""
    _request(config_path, node, "mark_oos", resource=name)


#: How long a mirror request may take: a running receive is waited for (60 s), then btrfs.
MIRROR_REQUEST_TIMEOUT = 180.0


def _on_aside(command: str, summary: str) -> None:
    """``vigil resource COMMAND RESOURCE NAME``: the decision on NAME, which this node keeps
    aside of the mirror resource RESOURCE."""
    @resource.command(command, help=summary)
    @config_option
    @node_option
    @click.argument("resource_name", metavar="RESOURCE")
    @click.argument("name")
    def run(config_path: str, node: str | None, resource_name: str, name: str) -> None:
        _request(config_path, node, f"mirror_{command}", timeout=MIRROR_REQUEST_TIMEOUT,
                 resource=resource_name, name=name)


_on_aside("discard", """Delete NAME, a copy of the mirror resource RESOURCE that this node
    keeps aside (a diverged snapshot or former data, as `vigil status` lists it after "kept
    aside:"). It is gone for good: look at it first, under ROOT/.snapshots/NAME.""")
_on_aside("promote", """Make NAME, a diverged copy of the mirror resource RESOURCE that this
    node keeps aside, the node's newest copy (taken now), so that it wins the next placement.
    What is not in its history is set aside in turn; nothing is deleted. Refused while the
    group runs: first `vigil resource oo-service RESOURCE`; then move the group to this node
    and bring RESOURCE back with `vigil resource in-service RESOURCE`.""")


@cli.command()
@config_option
@via_option
@click.argument("state", type=click.Choice(["on", "off"]))
def maintenance(config_path: str, via: str | None, state: str) -> None:
    """Maintenance mode, cluster-wide: monitors and recovery pause and nothing is started,
    stopped or moved (a node that loses quorum still stops what it runs)."""
    _request(config_path, via, "maintenance", state=state)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(vigil completion bash)"."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "vigil", "_VIGIL_COMPLETE").source())


@resource.command("diagnose")
@config_option
@node_option
@click.option("--json", "as_json", is_flag=True, help="The result as one JSON object.")
@click.argument("name")
def resource_diagnose(config_path: str, node: str | None, as_json: bool, name: str) -> None:
    """Run NAME's monitor on this node now and print the result.

    Exit status 0: healthy (in service, or cleanly stopped here); 1: the monitor failed (if
    its group runs here, recovery follows as for a scheduled monitor)."""
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
@click.option("--watch", "-w", is_flag=True, help="Refresh every second, like crm_mon.")
def status(config_path: str, node: str | None, as_json: bool, watch: bool) -> None:
    """Show the cluster as this node's daemon sees it."""
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
        time.sleep(1.0)


def _status(config_path: str, node: str | None) -> ClusterStatus:
    name, answer = _ask_node(config_path, node, "status")
    if not answer.get("ok"):
        _fail(str(answer.get("error")), EXIT_REFUSED)
    try:
        return status_of(answer, name)
    except MalformedAnswer as exc:
        _fail(str(exc), EXIT_REFUSED)


def format_status(st: ClusterStatus) -> str:
    lines = []
    t = st.transition
    lines.append(f"Cluster {st.cluster}: epoch {st.epoch}, master {st.master or '-'}, "
                 f"{'quorate' if st.quorate else 'NO QUORUM'} ({st.quorum})  "
                 f"[seen from {st.node}]")
    if t is not None and t.phase != "done":
        lines.append(f"Transition in progress: {t.phase} ({t.reason})")
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
@click.argument("path", type=click.Path(dir_okay=False))
def config_check(path: str) -> None:
    """Validate PATH; print every problem (file: key: what is wrong) and exit 2 if any.

    Beyond loading the file, this runs agents: each resource type's checks and each fence
    device's agent (its metadata), which the daemon's loading of the file never does."""
    from vigil.fencing.check import check_fence_devices
    from vigil.resources.registry import default_registry

    def refuse_if(problems: list[str]) -> None:
        if problems:
            for p in problems:
                click.echo(p, err=True)
            sys.exit(EXIT_USAGE)

    refuse_if(check_file(path))  # the file itself first: only a valid file can be loaded
    cfg = load(path)
    registry = default_registry()
    # Agent families (ocf:...) are made on first use: ask for every type the file names.
    known = set(registry.names()) | {r.type for r in cfg.resources.values() if r.type in registry}
    problems = [str(p) for p in validate_against_registry(cfg, sorted(known))]
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


@cli.command()
@config_option
@click.option("--node-down", multiple=True, metavar="NODE", help="Power NODE off.")
@click.option("--node-up", multiple=True, metavar="NODE", help="Power NODE back on.")
@click.option("--resource-fail", multiple=True, metavar="RESOURCE@NODE",
              help="RESOURCE's monitor fails where it runs on NODE.")
@click.option("--partition", multiple=True, metavar="A,B/C",
              help="Split the network: nodes before '/' and after it cannot talk.")
@click.option("--heal", is_flag=True, help="After the other events, heal the network.")
@click.option("--json", "as_json", is_flag=True)
def simulate(config_path: str, node_down: tuple[str, ...], node_up: tuple[str, ...],
             resource_fail: tuple[str, ...], partition: tuple[str, ...], heal: bool,
             as_json: bool) -> None:
    """Show what the cluster would do, like crm_simulate: the placement now and after the
    given events, computed by the same protocol code over a simulated network."""
    from vigil.cli.simulate import Scenario, SimulateError, run_scenario

    try:
        cfg = load(config_path)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    events: list[tuple[str, str]] = []
    # Events apply in the order given per option, options in this order:
    events += [("node-down", n) for n in node_down]
    events += [("resource-fail", r) for r in resource_fail]
    events += [("partition", p) for p in partition]
    events += [("node-up", n) for n in node_up]
    if heal:
        events.append(("heal", ""))
    try:
        report = run_scenario(cfg, Scenario(events))
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


def main() -> None:
    cli(prog_name="vigil")



from vigil.cli.events import events_command  # noqa: E402

cli.add_command(events_command)

from vigil.cli.mount import mount_command  # noqa: E402

cli.add_command(mount_command)

# (also what `vigil status` shows of the history: failed actions, recent events)
from vigil.cli.history import (  # noqa: E402
    format_failed_actions,
    format_recent,
    history_command,
)

cli.add_command(history_command)


if __name__ == "__main__":
    main()
