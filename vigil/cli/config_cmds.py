"""``vigil config diff [FILE]``: what differs between a cluster file and the configuration a
daemon runs, key by key (:mod:`vigil.config_diff`).

Exit status, like diff(1): 0 no difference; 1 differences; 2 trouble: the file is invalid
(its problems printed as ``vigil config check`` prints them), a usage error, or the daemon
refused to show its configuration (it may hold fence devices' passwords: the request is an
admin's); 3 no daemon answers.

:mod:`vigil.cli.main` imports this module to register the command and hands it its options
and its way of asking a daemon (this module cannot import main back: no import cycles).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import click

from vigil.config import ClusterConfig, ConfigError, from_dict, load

if TYPE_CHECKING:
    from vigil.config_diff import Difference

# The same as vigil.cli.main's (not imported: main imports this module).
EXIT_SAME, EXIT_DIFFERENT, EXIT_USAGE, EXIT_NO_DAEMON = 0, 1, 2, 3

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
#: (config path, node or None, command) -> (the node asked, its daemon's answer); exits 2
#: or 3 by itself when there is no configuration or no daemon
AskNode = Callable[[str, str | None, str], tuple[str, dict[str, Any]]]


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"vigil: {message}", err=True)
    sys.exit(code)


def running_document(ask_node: AskNode, config_path: str,
                     node: str | None) -> tuple[str, dict[str, Any]]:
    """The node asked and the ``config`` answer of its daemon (``path``, ``digest``,
    ``document``); exits 2 when the daemon refuses (1 would read as "different")."""
    name, answer = ask_node(config_path, node, "config")
    if not answer.get("ok"):
        _fail(f"node {name} did not say what configuration it runs: "
              f"{answer.get('error', 'request failed')}", EXIT_USAGE)
    if not isinstance(answer.get("document"), dict):
        _fail(f"node {name} answered without its configuration (is its daemon older than "
              "this command?)", EXIT_USAGE)
    return name, answer


def load_or_exit(path: str) -> ClusterConfig:
    """The configuration in ``path``; its problems on stderr and exit 2 if it has any."""
    try:
        return load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EXIT_USAGE)


def config_diff_command(config_option: Decorator, node_option: Decorator,
                        ask_node: AskNode) -> click.Command:
    @click.command("diff")
    @config_option
    @node_option
    @click.option("--json", "as_json", is_flag=True,
                  help="The differences as a JSON list of {path, kind, old, new}.")
    @click.argument("file", required=False, type=click.Path(dir_okay=False))
    def config_diff(config_path: str, node: str | None, as_json: bool,
                    file: str | None) -> None:
        """Show what differs between FILE (default: the -c file) and the configuration the
        node's daemon runs: `~ key: running -> FILE`, `+ key (new)` (only in FILE), `- key
        (removed)` (only in the running one).

        Exit status: 0 no difference, 1 differences, 2 FILE is invalid (or the daemon
        refused: run it as root or a member of admin_group), 3 no daemon."""
        # Here, not at the top: every `vigil` command loads this module (`vigil guard` too,
        # at every guardian's start), few of them diff.
        from vigil.config_diff import differences, json_safe

        path = file if file is not None else config_path
        proposed = load_or_exit(path)
        name, answer = running_document(ask_node, config_path, node)
        diffs = differences(answer["document"], json_safe(proposed.document))
        if as_json:
            click.echo(json.dumps([d.to_json() for d in diffs], indent=2))
        else:
            for d in diffs:
                click.echo(d.render())
            click.echo(summary(diffs, name, str(answer.get("digest", "")), path,
                               proposed.digest))
            if diffs:
                click.echo(live_check(answer, proposed))
        sys.exit(EXIT_DIFFERENT if diffs else EXIT_SAME)

    return config_diff


def live_check(answer: dict[str, Any], proposed: ClusterConfig) -> str:
    """Whether `vigil config reload` can apply the change without stopping the cluster, and
    what it stops; what to do instead when it cannot."""
    from vigil.cluster.reconfig import refusals
    from vigil.cluster.reconfig import summary as reconfig_summary

    try:
        running = from_dict(answer["document"], str(answer.get("path", "<running>")))
    except ConfigError:  # a daemon of another version: the refusals cannot be judged here
        return "(whether it applies live: `vigil config reload` says)"
    refused = refusals(running, proposed)
    if refused:
        return "cannot be applied live:\n  " + "\n  ".join(refused)
    return (f"applies live with `vigil config reload` once the file is on every node "
            f"({reconfig_summary(running, proposed)})")


def summary(diffs: list[Difference], node: str, running: str, path: str, digest: str) -> str:
    if not diffs:
        return f"no difference: node {node} runs the configuration of {path} (digest " \
               f"{digest[:12]})"
    return (f"{len(diffs)} difference{'s' if len(diffs) != 1 else ''} between what node "
            f"{node} runs (digest {running[:12]}) and {path} (digest {digest[:12]})")
