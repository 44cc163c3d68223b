"""``vigil events``: print a node's notifications as they happen.

One line per notification (local date and time, node, kind, text), or its JSON (``--json``, the
event socket's own format, with ``seq``), until Ctrl-C, ``--count N`` notifications, or
``--timeout`` seconds without one. A subscriber that falls behind is told: a line
``missed N notifications`` (JSON: ``{"kind": "missed", "count": N, ...}``).

Exit status: 0 done (count reached, Ctrl-C); 1 ``--timeout`` passed without a notification;
2 usage or configuration error; 3 no daemon (or no permission) on the event socket.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import NoReturn

import click

from vigil.cli.options import EXIT_NO_DAEMON, EXIT_USAGE, config_option, node_option_for
from vigil.notifications import KINDS, Missed, Notification, to_dict

#: ``--timeout`` passed without a notification (events has no --wait: 1, as before)
EXIT_TIMEOUT = 1


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"vigil: {message}", err=True)
    sys.exit(code)


def format_line(note: Notification) -> str:
    when = datetime.datetime.fromtimestamp(note.time).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(note, Missed):
        return f"{when} {note.node} missed {note.count} notifications ({note.text})"
    return f"{when} {note.node} {note.kind:<22} {note.text}"


@click.command("events")
@config_option
@node_option_for("Whose events (default: the host name).")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(sorted(KINDS)),
              metavar="KIND", help="Only this kind (repeat for more); default all.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Exit after N notifications (missed-lines do not count).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Exit (status 1) after this many seconds without a notification.")
def events_command(config_path: str, node: str | None, kinds: tuple[str, ...], as_json: bool,
                   count: int | None, timeout: float | None) -> None:
    """Print this node's notifications as they happen (transitions, nodes lost and joined,
    groups moved, resource states, ...), until Ctrl-C or --count N."""
    from vigil.api.events import NoDaemonError, subscribe
    from vigil.config import ConfigError

    try:
        stream = subscribe(config_path, node, kinds or None, timeout=timeout)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    except (NoDaemonError, PermissionError) as exc:
        _fail(str(exc), EXIT_NO_DAEMON)
    seen = 0
    try:
        with stream:
            for note in stream:
                click.echo(json.dumps(to_dict(note), sort_keys=True) if as_json
                           else format_line(note))
                if not isinstance(note, Missed):
                    seen += 1
                    if count is not None and seen >= count:
                        return
    except KeyboardInterrupt:
        return  # the usual way to stop watching: not an error
    except BrokenPipeError:
        # `vigil events | head`: the reader is gone; say nothing more
        sys.stderr.close()
        return
    if timeout is not None:
        _fail(f"no notification in {timeout:g}s", EXIT_TIMEOUT)
