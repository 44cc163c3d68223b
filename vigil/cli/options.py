"""What every ``vigil`` command shares: the exit codes, the ``-c/--config`` and ``-n/--node``
options (``--via`` is a hidden alias of ``--node``), ``--wait[=SECONDS]``, and the completion
of node, group and resource names from the configuration.

A module of its own, so that the command modules (:mod:`vigil.cli.events`,
:mod:`vigil.cli.mount`, ...) use the same options as :mod:`vigil.cli.main`, which imports
them; :mod:`vigil.cli.main` re-exports every name here.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

import click
from click.shell_completion import CompletionItem

#: Exit codes, the same in every command (the table is in vigil.cli.main's docstring).
EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1  # the cluster refused the request, or the change failed
EXIT_USAGE: Final = 2  # usage or configuration error, an unknown name included
EXIT_NO_DAEMON: Final = 3  # no daemon answers on the control socket
EXIT_TIMEOUT: Final = 4  # --wait timed out

EXIT_CODES_HELP: Final = """Exit status (every command): 0 done; 1 the cluster refused the
request or the change failed; 2 usage or configuration error (an unknown node, group or
resource name included); 3 no daemon answers; 4 --wait timed out."""

CONFIG_ENV: Final = "VIGIL_CONFIG"
SYSTEM_CONFIG: Final = "/etc/vigil/cluster.toml"
#: How long ``--wait`` alone waits (``--wait=SECONDS`` says otherwise).
DEFAULT_WAIT: Final = 60.0

F = TypeVar("F", bound=Callable[..., Any])


def config_path_now() -> str:
    """The configuration file when no ``-c`` is given: ``$VIGIL_CONFIG`` as it is now (not
    when the module was imported), else the system's."""
    return os.environ.get(CONFIG_ENV) or SYSTEM_CONFIG


config_option: Final = click.option(
    "--config", "-c", "config_path", envvar=CONFIG_ENV, show_envvar=True,
    default=SYSTEM_CONFIG, show_default=True, type=click.Path(dir_okay=False),
    help="Cluster configuration file.")


def _names(ctx: click.Context, kinds: Iterable[str], incomplete: str) -> list[CompletionItem]:
    """The configuration's names of ``kinds`` ("nodes", "groups", "resources") that start
    with ``incomplete``; none when the file cannot be read (completion never fails)."""
    from vigil.config import ConfigError, load

    path = ctx.params.get("config_path") or config_path_now()
    try:
        cfg = load(path)
    except (ConfigError, OSError):
        return []
    found: list[str] = []
    for kind in kinds:
        found += sorted(getattr(cfg, kind))
    return [CompletionItem(n) for n in found if n.startswith(incomplete)]


def complete(*kinds: str) -> Callable[[click.Context, click.Parameter, str],
                                      list[CompletionItem]]:
    """A ``shell_complete`` function that offers the configuration's names of ``kinds``."""
    def names(ctx: click.Context, param: click.Parameter, incomplete: str
              ) -> list[CompletionItem]:
        return _names(ctx, kinds, incomplete)
    return names


class _AliasedOption(click.Option):
    """An option whose help leaves out its hidden aliases (``--via`` of ``--node``)."""

    def __init__(self, *args: Any, hidden_aliases: tuple[str, ...] = (), **kwargs: Any
                 ) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_aliases = hidden_aliases

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        shown = ", ".join(o for o in (*self.opts, *self.secondary_opts)
                          if o not in self.hidden_aliases)
        metavar = self.make_metavar(ctx)
        return f"{shown} {metavar}", record[1]


def node_option_for(help_text: str) -> Callable[[F], F]:
    """``-n/--node NAME`` (hidden alias ``--via``) with ``help_text``."""
    return click.option("-n", "--node", "--via", "node", default=None, metavar="NAME",
                        cls=_AliasedOption, hidden_aliases=("--via",), help=help_text,
                        shell_complete=complete("nodes"))


#: The node whose daemon a command asks (default: this machine's).
node_option: Final = node_option_for(
    "The node whose daemon is asked (default: this machine's host name).")
#: The node a daemon or guardian runs as.
this_node_option: Final = node_option_for("Which node this is (default: the host name).")

wait_option: Final = click.option(
    "--wait", "wait", type=click.FloatRange(min=0, min_open=True), is_flag=False,
    flag_value=DEFAULT_WAIT, default=None, metavar="[SECONDS]",
    help=f"Return once the change is done (--wait alone: at most {DEFAULT_WAIT:g} s); "
         "exit 1 if it failed, 4 if it is not done in time.")


def unknown_name(what: str, name: str, known: Iterable[str]) -> str:
    """The message for an unknown ``what`` (node, group, resource) ``name``: the closest
    known name, and all of them."""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"no {what} named {name!r}{hint} ({what}s: {', '.join(names)})"
