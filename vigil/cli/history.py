"""``vigil history``: the cluster's history as one node recorded it.

The node's history file (``<runtime_dir>/history.jsonl``, :mod:`vigil.local.history`): its
own decisions and notifications and the other nodes' failures, fencing, transitions and
requests as they told it, dated by the wall clock. The daemon answers; when none does, the
file is read directly (which takes the right to read it: root, usually), and it says so.

One line per entry: local date and time, the node where it happened, the text. The
protocol's bookkeeping (a transition over, an epoch closed) is left out unless ``--all``.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from vigil.status import ClusterStatus

# The same as vigil.cli.main's (not imported: main imports this module, and the layers test
# refuses a cycle even through a function's import).
EXIT_REFUSED, EXIT_USAGE, EXIT_NO_DAEMON = 1, 2, 3
DEFAULT_CONFIG = os.environ.get("VIGIL_CONFIG", "/etc/vigil/cluster.toml")
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: the protocol's bookkeeping among a status's decisions (vigil.cluster.history.bookkeeping)
_BOOKKEEPING = re.compile(r"^epoch \S+ (complete in |closed; )")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"vigil: {message}", err=True)
    sys.exit(code)


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: a span back from now (``90s``, ``10m``, ``2h``, ``1d``) or an ISO 8601
    date or time (``2026-12-01``, ``2026-12-01T17:40``, ``2026-12-01 17:40:12+01:00``; local
    time without an offset). Unix seconds; ValueError for anything else."""
    span = _SPAN.match(text)
    if span:
        return (time.time() if now is None else now) - float(span[1]) * _UNIT[span[2]]
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r} is neither a span back from now (10m, 2h, 1d) "
                         "nor an ISO 8601 time (2026-12-01T17:40:00)") from None
    return when.timestamp()  # naive: local time, as a person means it


def format_line(line: dict[str, Any]) -> str:
    from vigil.status import local_time  # not at the top: `vigil guard` loads this module

    when = local_time(str(line.get("time", "?")))
    return f"{when}  {line.get('node', '?')!s:<10} {line.get('text', '')}"


def format_failed_actions(st: ClusterStatus) -> list[str]:
    """`vigil status`'s "Failed resource actions": every node's, as crm_mon shows them."""
    from vigil.status import local_time  # not at the top: `vigil guard` loads this module

    if not st.failed_actions:
        return []
    lines = ["Failed resource actions (every node; `vigil resource cleanup` clears them):"]
    for a in st.failed_actions:
        what = f"{a.resource} {a.op}" if a.resource else f"{a.group} {a.op}"
        lines.append(f"  * {what} on {a.node} at {local_time(a.at)}: {a.reason} "
                     f"(fail count of {a.group} there {a.fail_count} of {a.threshold})")
    return lines


def format_recent(st: ClusterStatus) -> list[str]:
    """`vigil status`'s last decisions here (without the bookkeeping) and the cluster's
    last significant events; `vigil history` has the rest."""
    from vigil.status import local_time  # not at the top: `vigil guard` loads this module

    lines = []
    decisions = [(at, text) for at, text in st.decisions if not _BOOKKEEPING.match(text)]
    if decisions:
        lines.append(f"Recent decisions of {st.node}:")
        lines += [f"    {local_time(at)} {text}" for at, text in decisions[-6:]]
    if st.events:
        lines.append("Recent events (every node; `vigil history` for more):")
        lines += [f"    {local_time(e.at)} {e.node:<10} {e.text}" for e in st.events[-8:]]
    return lines


@click.command("history")
@click.option("--config", "-c", "config_path", default=DEFAULT_CONFIG, show_default=True,
              type=click.Path(dir_okay=False),
              help="Cluster configuration file (or $VIGIL_CONFIG).")
@click.option("--node", "-n", default=None,
              help="Whose record to read (default: the host name); every node has the "
                   "cluster's failures, fencing and transitions.")
@click.option("--since", default=None, metavar="T",
              help="Only from T on: 10m, 2h, 1d back, or an ISO 8601 time.")
@click.option("--group", "-g", "group", default=None, metavar="G",
              help="Only what concerns group G.")
@click.option("--all", "everything", is_flag=True,
              help="Also the protocol's bookkeeping (transitions over, epochs closed).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--limit", type=click.IntRange(min=1), default=500, show_default=True,
              help="At most the newest N lines.")
def history_command(config_path: str, node: str | None, since: str | None, group: str | None,
                    everything: bool, as_json: bool, limit: int) -> None:
    """Show the cluster's history as this node recorded it: failures, fencing, moves and
    their reasons, every node's, with dates."""
    from vigil.config import ConfigError, load, resolve_node
    from vigil.local.history import history_path, read_history
    from vigil.local.protocol import request

    try:
        cfg = load(config_path)
        name = resolve_node(cfg, node)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    if group is not None and group not in cfg.groups:
        _fail(f"no group named {group!r} (groups: {', '.join(sorted(cfg.groups))})", EXIT_USAGE)
    try:
        start = parse_since(since) if since else None
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    args = {"limit": str(limit), "all": "1" if everything else ""}
    if start is not None:
        args["since"] = repr(start)
    if group is not None:
        args["group"] = group
    path = cfg.nodes[name].control_socket
    try:
        answer = request(path, "history", args)
    except OSError as exc:
        answer = None
        why = ("no daemon runs" if isinstance(exc, FileNotFoundError | ConnectionRefusedError)
               else f"its daemon does not answer ({exc})")
    if answer is not None and not answer.get("ok"):
        _fail(str(answer.get("error", "history refused")), EXIT_REFUSED)
    if answer is not None:
        lines, more = list(answer.get("lines", [])), int(answer.get("more", 0))
    else:
        file = history_path(Path(cfg.nodes[name].runtime_dir))
        click.echo(f"vigil: {why} for node {name}: reading its history file {file} "
                   "directly", err=True)
        try:
            lines, more = read_history(file, since=start, group=group,
                                       everything=everything, limit=limit)
        except FileNotFoundError:
            _fail(f"node {name} has no history file {file} (has its daemon ever run "
                  "here?)", EXIT_NO_DAEMON)
        except OSError as exc:
            _fail(f"cannot read {file}: {exc} (run as root)", EXIT_NO_DAEMON)
    try:
        for line in lines:
            click.echo(json.dumps(line, sort_keys=True) if as_json else format_line(line))
    except BrokenPipeError:
        sys.stderr.close()  # `vigil history | head`
        return
    if more:
        click.echo(f"vigil: {more} older line(s) left out (--limit {limit}); narrow with "
                   "--since or --group", err=True)
