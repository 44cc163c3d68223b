"""`vigil units`: the shipped systemd units rendered with this installation's absolute
command, written where asked, and accepted by systemd's own checker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vigil.cli.ops import UNITS, systemd_word


def vigil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vigil.cli.main", *args], capture_output=True,
                          text=True, timeout=60)


def exec_lines(text: str) -> dict[str, str]:
    return {k: v for k, _, v in (line.partition("=") for line in text.splitlines())
            if k.startswith("Exec")}


def test_the_units_name_the_installed_vigil_by_its_absolute_path(tmp_path: Path) -> None:
    config = tmp_path / "my cluster.toml"
    out = vigil("units", "--dir", str(tmp_path / "units"), "-c", str(config))
    assert out.returncode == 0, out.stderr
    written = sorted(p.name for p in (tmp_path / "units").iterdir())
    assert written == sorted(UNITS)
    daemon = (tmp_path / "units" / "vigil.service").read_text()
    for key in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30s",
                "ExecReload=/bin/kill -HUP $MAINPID", "TimeoutStartSec=infinity"):
        assert f"\n{key}\n" in daemon, key
    for name in UNITS:
        text = (tmp_path / "units" / name).read_text()
        assert "@" not in "".join(exec_lines(text).values()) and "/usr/bin/env" not in text
        start = exec_lines(text)["ExecStart"]
        program = start.split()[0]
        # no PATH lookup: the program is this installation's, and runs
        assert program.startswith("/") and os.access(program, os.X_OK), start
        assert f'--config "{config}"' in start
    argv = exec_lines(daemon)["ExecStart"].replace(f'"{config}"', "X").split()
    assert argv[-4:] == ["node", "run", "--config", "X"]
    version = subprocess.run([*argv[:-4], "--version"], capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0 and "version" in version.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed: the units' syntax is unchecked")
def test_systemd_accepts_the_rendered_units(tmp_path: Path) -> None:
    assert vigil("units", "--dir", str(tmp_path), "-c", "/etc/vigil/cluster.toml"
                 ).returncode == 0
    # --man=no: the man page is looked up with man(1), which does not search a virtualenv
    check = subprocess.run(["systemd-analyze", "verify", "--man=no",
                            *(str(tmp_path / name) for name in UNITS)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert "vigil" not in check.stderr, check.stderr  # not even a warning about our units


def test_printing_writes_nothing_and_a_directory_that_cannot_be_written_says_so(
        tmp_path: Path) -> None:
    out = vigil("units")
    assert out.returncode == 0
    assert [line for line in out.stdout.splitlines() if line.startswith("# --- ")] == \
        [f"# --- {name}" for name in UNITS]
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = vigil("units", "--dir", str(blocker / "sub"))
    assert out.returncode == 1
    assert out.stderr.startswith(f"vigil: cannot write the units to {blocker / 'sub'}: ")


def test_words_are_quoted_and_escaped_for_systemd() -> None:
    assert systemd_word("/usr/local/bin/vigil") == "/usr/local/bin/vigil"
    assert systemd_word("/opt/my venv/bin/vigil") == '"/opt/my venv/bin/vigil"'
    assert systemd_word("/srv/100%/$HOME") == "/srv/100%%/$$HOME"
    assert systemd_word('/a "b"\\c') == '"/a \\"b\\"\\\\c"'
