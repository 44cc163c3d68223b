"""The runnable examples of the documentation run (docs/api.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_notification_example_sees_a_failover_both_ways() -> None:
    out = subprocess.run([sys.executable, str(EXAMPLES / "notifications.py")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    crash = next(i for i, line in enumerate(lines) if "dies now" in line)
    after = "\n".join(lines[crash:])
    assert "in process" in after and "subscriber" in after
    assert after.count("node_lost") == 2 and after.count("group_moved") == 2
    assert lines[-1] == "both saw web move"
