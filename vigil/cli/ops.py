"""``vigil units``: the shipped systemd units (package data, ``vigil/units/*.service``)
rendered with the absolute command of this installation, so that they work wherever pip put
the ``vigil`` script (a virtualenv, ``--user``, /usr/local) and whatever systemd's PATH is."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

__all__ = ["UNITS", "render_unit", "units_command", "vigil_command"]

# vigil.cli.main's (not imported: main imports this module at its end)
EXIT_REFUSED = 1
DEFAULT_CONFIG = "/etc/vigil/cluster.toml"

#: the units shipped with the package, in the order they are printed
UNITS = ("vigil.service", "vigil-guard.service", "vigil-ha.service")
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")

#: characters systemd takes literally in a command line's word
_PLAIN = re.compile(r"[A-Za-z0-9_@%$+=:,./-]+")


def systemd_word(word: str) -> str:
    """``word`` as one word of a unit's command line: specifiers (%) and variables ($)
    escaped, quoted when it holds anything else than plain characters."""
    word = word.replace("%", "%%").replace("$", "$$")
    if _PLAIN.fullmatch(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def vigil_command() -> list[str]:
    """The absolute command that runs this installation's ``vigil``: its script where pip put
    it beside this interpreter, else this interpreter with ``-m vigil.cli.main``."""
    import sysconfig  # here: every `vigil` command (every daemon) loads this module

    for scheme_dir in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        script = Path(scheme_dir) / "vigil"
        if script.is_file() and os.access(script, os.X_OK):
            return [str(script.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "vigil.cli.main"]


def render_unit(name: str, config_path: str, command: list[str] | None = None) -> str:
    """The shipped unit ``name`` with ``@VIGIL@`` and ``@CONFIG@`` filled in."""
    from importlib import resources

    template = resources.files("vigil").joinpath("units", name).read_text()
    vigil = " ".join(systemd_word(w) for w in (command or vigil_command()))
    return template.replace("@VIGIL@", vigil).replace(
        "@CONFIG@", systemd_word(str(Path(config_path).absolute())))


@click.command("units")
@click.option("--config", "-c", "config_path", default=None, type=click.Path(dir_okay=False),
              help="The cluster file the units name (default: $VIGIL_CONFIG, else "
                   "/etc/vigil/cluster.toml).")
@click.option("--install", is_flag=True,
              help=f"Write the units to {SYSTEM_UNIT_DIR} instead of printing them.")
@click.option("--dir", "directory", default=None, type=click.Path(file_okay=False),
              help="Write the units to this directory instead (implies --install).")
def units_command(config_path: str | None, install: bool, directory: str | None) -> None:
    """Print or install the systemd units (vigil, vigil-guard, vigil-ha) with the absolute
    path of this installation's vigil. After --install: `systemctl daemon-reload`, then
    `systemctl enable --now vigil` (docs/operations.md, "systemd")."""
    config_path = config_path or os.environ.get("VIGIL_CONFIG", DEFAULT_CONFIG)
    rendered = {name: render_unit(name, config_path) for name in UNITS}
    if directory is None and not install:
        for name, text in rendered.items():
            click.echo(f"# --- {name}\n{text}")
        return
    target = Path(directory) if directory is not None else SYSTEM_UNIT_DIR
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            path = target / name
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(text)
            tmp.chmod(0o644)
            tmp.replace(path)
            click.echo(f"wrote {path}")
    except OSError as exc:
        click.echo(f"vigil: cannot write the units to {target}: {exc}"
                   + (" (run it as root, or pass --dir)" if directory is None else ""),
                   err=True)
        sys.exit(EXIT_REFUSED)
    if directory is None:
        click.echo("now: systemctl daemon-reload && systemctl enable --now vigil")
