"""vigil(1): generated from the click commands, committed up to date, valid roff, and
installed by `pip install` under share/man/man1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import click
import pytest

from vigil.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "man" / "vigil.1"


def generated() -> str:
    env = {k: v for k, v in os.environ.items() if k != "VIGIL_CONFIG"}
    out = subprocess.run([sys.executable, "-m", "vigil.cli.manpage"], capture_output=True,
                         text=True, env=env, timeout=60, check=True)
    return out.stdout


def test_the_committed_page_is_up_to_date() -> None:
    assert PAGE.read_text() == generated(), \
        "man/vigil.1 is stale: run `make man` and commit it"


def leaf_commands(group: click.Group, path: str) -> list[str]:
    out = []
    for name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        if isinstance(command, click.Group):
            out += leaf_commands(command, f"{path} {name}")
        else:
            out.append(f"{path} {name}")
    return out


def test_every_command_has_its_section_with_its_options() -> None:
    page = PAGE.read_text()
    sections = [line.removeprefix(".SS ").replace("\\-", "-") for line in page.splitlines()
                if line.startswith(".SS ")]
    assert sorted(sections) == sorted(leaf_commands(cli, "vigil"))
    assert "\\fB\\-\\-install\\fR" in page  # vigil units --install
    assert ".SH EXIT STATUS" in page and ".SH ENVIRONMENT" in page


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_groff_reads_the_page_without_a_warning() -> None:
    out = subprocess.run(["groff", "-man", "-ww", "-z", str(PAGE)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr


@pytest.mark.long
def test_pip_install_puts_the_page_under_share_man(tmp_path: Path) -> None:
    """A fresh virtualenv, `pip install` of this tree (its dependencies, prometheus_client
    included, from the configured index): the page, the units and the metrics work there."""
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "*.egg-info", "build", "__pycache__", ".*_cache", ".hypothesis"))
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(source)],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    page = tmp_path / "env" / "share" / "man" / "man1" / "vigil.1"
    assert page.read_text() == PAGE.read_text()
    units = subprocess.run([str(tmp_path / "env" / "bin" / "vigil"), "units", "--dir",
                            str(tmp_path / "units")], capture_output=True, text=True,
                           timeout=60)
    assert units.returncode == 0, units.stderr
    assert f"ExecStart={tmp_path}/env/bin/vigil node run" in \
        (tmp_path / "units" / "vigil.service").read_text()
    check = subprocess.run([str(python), "-c", "import prometheus_client, vigil.metrics"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
