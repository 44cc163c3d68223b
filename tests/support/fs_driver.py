"""A test "host" for the filesystem resource: runs its operations inside a private mount
namespace, on JSON commands.

tests/test_filesystem.py starts it as ``unshare --mount --propagation private python
tests/fs_driver.py``, so that every mount it makes lives and dies with this process (a mount
namespace ends with its last process) and never shows in the machine's own mount table. One
JSON object per line on stdin; one JSON answer per line on stdout (``{"error": ...}`` when a
command raised). Commands (``op``):

``configure`` name, params, [start_timeout, stop_timeout, monitor_timeout, node]
    Make a fresh resource object called ``name`` (a new object, as after a daemon restart).
``start`` / ``stop`` / ``force_stop`` / ``monitor`` / ``mark_oos`` / ``state`` name
    The resource operations; answer ``{"ok", "state", "reason"}``.
``mounts`` directory
    The mounts at or below ``directory`` in this namespace: ``[{"source", "fstype",
    "mount_point", "options"}]`` (read here, independently of the module under test).
``write`` path, text / ``read`` path / ``listdir`` path
    File access through this namespace (``read`` answers null for a missing file).
``spawn`` argv, cwd, [hold]
    Start a child (in its own session), optionally holding file ``hold`` open (as its
    stdin); answers its PID.
``alive`` pid
    Whether a child started by ``spawn`` still runs (reaps it when it ended).
``hold`` path / ``release``
    Keep a file open in this very process (the "daemon"), or close them all.
``run`` argv
    Run a command here: ``{"returncode", "output"}``.
``pid``
    This process's PID.

On end of input it kills its children, closes what it holds and unmounts what its resources
mounted (the namespace would drop the mounts anyway; unmounting first frees the device at once).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from vigil.config import MonitorConfig, ResourceConfig
from vigil.resources.filesystem import FilesystemResource, FilesystemType
from vigil.resources.model import OpResult

resources: dict[str, FilesystemResource] = {}
children: dict[int, subprocess.Popen[bytes]] = {}
held: list[int] = []


def result(r: OpResult) -> dict[str, Any]:
    return {"ok": r.ok, "state": r.state.value, "reason": r.reason}


def mounts(directory: str) -> list[dict[str, str]]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        dash = fields.index("-")
        point = fields[4]
        if point == directory or point.startswith(directory.rstrip("/") + "/"):
            found.append({"source": fields[dash + 2], "fstype": fields[dash + 1],
                          "mount_point": point, "options": fields[5]})
    return found


def handle(req: dict[str, Any]) -> Any:
    op = req["op"]
    if op == "configure":
        config = ResourceConfig(
            name=req["name"], type="filesystem", group="g", params=req["params"],
            start_timeout=req.get("start_timeout", 30.0),
            stop_timeout=req.get("stop_timeout", 10.0),
            monitor=MonitorConfig(interval=20.0, timeout=req.get("monitor_timeout", 10.0)))
        resources[req["name"]] = FilesystemType().instantiate(
            config, req.get("node", "n1"), Path("/tmp"))
        return {"configured": req["name"]}
    operations = {
        "start": lambda r: r.in_service(),
        "stop": lambda r: r.oo_service(),
        "force_stop": lambda r: r.force_oos(),
        "monitor": lambda r: r.monitor(),
    }
    if op in operations:
        return result(operations[op](resources[req["name"]]))
    if op == "mark_oos":
        resources[req["name"]].mark_oos()
        return {"state": resources[req["name"]].service_state().value}
    if op == "state":
        return {"state": resources[req["name"]].service_state().value}
    if op == "mounts":
        return mounts(req["directory"])
    if op == "write":
        with open(req["path"], "w") as f:
            f.write(req["text"])
            f.flush()
            os.fsync(f.fileno())
        return {"written": req["path"]}
    if op == "read":
        try:
            return Path(req["path"]).read_text()
        except FileNotFoundError:
            return None
    if op == "listdir":
        return sorted(os.listdir(req["path"]))
    if op == "spawn":
        # A held file is the child's stdin: open in the child only, not here.
        fd = os.open(req["hold"], os.O_RDONLY) if req.get("hold") else subprocess.DEVNULL
        try:
            child = subprocess.Popen(req["argv"], cwd=req.get("cwd", "/"), stdin=fd,
                                     stdout=subprocess.DEVNULL, start_new_session=True)
        finally:
            if fd != subprocess.DEVNULL:
                os.close(fd)
        children[child.pid] = child
        return child.pid
    if op == "alive":
        return children[req["pid"]].poll() is None
    if op == "hold":
        held.append(os.open(req["path"], os.O_RDONLY))
        return len(held)
    if op == "release":
        while held:
            os.close(held.pop())
        return 0
    if op == "run":
        done = subprocess.run(req["argv"], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=30, check=False)
        return {"returncode": done.returncode, "output": done.stdout + done.stderr}
    if op == "pid":
        return os.getpid()
    raise ValueError(f"unknown op {op!r}")


def cleanup() -> None:
    for child in children.values():
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print(f"fs_driver: child {child.pid} survived SIGKILL", file=sys.stderr)
    while held:
        os.close(held.pop())
    for resource in resources.values():
        if mounts(resource.directory):
            # Thaw first: a test that froze the filesystem and failed must not leave it frozen.
            subprocess.run(["fsfreeze", "-u", resource.directory], capture_output=True,
                           timeout=10, check=False)
        for _ in range(5):
            if not mounts(resource.directory):
                break
            subprocess.run(["umount", resource.directory], capture_output=True, timeout=10,
                           check=False)


def main() -> None:
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                reply = handle(json.loads(line))
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        cleanup()


if __name__ == "__main__":
    main()
