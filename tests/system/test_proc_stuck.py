"""A process that survives SIGKILL, for real: it writes to a frozen filesystem (``fsfreeze``)
and so sleeps uninterruptibly in the kernel, as on a hung disk or NFS server. The runner must
give up on it after ``kill_wait`` and name it, in the result and in the log.

The filesystem is a loop-mounted ext4 image inside a private mount namespace (``unshare
--mount``), reached through ``/proc/<pid>/root`` of the process that holds the namespace, so
nothing appears in the machine's own mount table. Needs root and util-linux.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vigil.resources import proc
from vigil.resources.ocf import run_agent

SBIN_PATH = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
TOOLS = ("unshare", "mount", "mkfs.ext4", "fsfreeze")


def tool(name: str) -> str:
    found = shutil.which(name, path=SBIN_PATH)
    assert found is not None
    return found


@pytest.fixture
def frozen(tmp_path: Path) -> Iterator[Path]:
    """A directory on a frozen filesystem: whoever writes there sleeps in state D."""
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mounts, fsfreeze)")
    missing = [name for name in TOOLS if shutil.which(name, path=SBIN_PATH) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    image, mnt, ready = tmp_path / "image", tmp_path / "mnt", tmp_path / "ready"
    with image.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    subprocess.run([tool("mkfs.ext4"), "-q", "-F", str(image)], check=True,
                   capture_output=True, timeout=60)
    mnt.mkdir()
    holder = subprocess.Popen(
        [tool("unshare"), "--mount", "--propagation", "private", "sh", "-c",
         f"mount -o loop {image} {mnt} && touch {ready} && exec sleep 600"],
        env=dict(os.environ, PATH=SBIN_PATH), start_new_session=True)
    target = Path(f"/proc/{holder.pid}/root{mnt}")
    frozen = False
    try:
        if not proc.wait_until(lambda: ready.exists() or holder.poll() is not None, 30):
            pytest.fail("the loop mount in a private namespace did not come up")
        if holder.poll() is not None:
            pytest.skip("cannot loop-mount in a private mount namespace here")
        subprocess.run([tool("fsfreeze"), "-f", str(target)], check=True, timeout=30)
        frozen = True
        yield target
    finally:
        if frozen:
            subprocess.run([tool("fsfreeze"), "-u", str(target)], check=False, timeout=30)
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)  # its namespace goes, and with it the mount and loop device


def test_a_process_that_survives_sigkill_is_named_in_the_result_and_the_log(
        frozen: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="vigil.resources.proc")
    result = proc.run(["sh", "-c", f"echo writing; echo x > {frozen}/file"], timeout=1.0,
                      kill_wait=1.0)
    assert result.timed_out and result.returncode is None
    assert result.pid is not None and result.stuck == (result.pid,)
    assert result.stdout == "writing\n"
    assert "survived SIGKILL for 1s" in caplog.text
    assert f"pid {result.pid} (sh, state D)" in caplog.text
    # Once the disk answers again the killed process goes, and the group with it.
    subprocess.run([tool("fsfreeze"), "-u", str(frozen)], check=True, timeout=30)
    assert proc.wait_until(lambda: not proc.group_members(result.pid or 0), 30)


def test_an_agent_action_names_its_stuck_processes_in_its_reason(
        frozen: Path, tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    agent.write_text(f"#!/bin/sh\necho x > {frozen}/file\nexit 0\n")
    agent.chmod(0o755)
    run = run_agent(agent, "start", env=dict(os.environ), timeout=1.0)
    assert run.timed_out and len(run.stuck) == 1
    assert run.describe(1.0) == (
        f"start: timed out after 1s; killed the agent's process group, but processes "
        f"{run.stuck[0]} survived SIGKILL (see the log)")
