"""Access control of the local interfaces (control socket and event socket), with real users.

A node runs in this process as root, with ``admin_group`` and ``status_group`` set to groups
the test creates. Clients run as ``nobody`` (uid 65534) through ``setpriv``, with exactly
the groups each case gives them, using the system's Python and only ``socket`` + ``json``
(:mod:`tests.support.local_users`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from tests.support.cluster_harness import MemoryCluster, cluster_toml, wait_for
from tests.support.local_users import (
    CLIENT_ENV,
    NOBODY,
    SYSTEM_PYTHON,
    Groups,
    missing,
    reachable_tmp,
    setpriv,
    stopped_after,
    unix_groups,
)
from vigil.api import Decision
from vigil.config import load_key, loads
from vigil.local.protocol import request

CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect_error": exc.errno}))
    sys.exit(0)
if len(sys.argv) > 2:
    s.sendall(json.dumps({"command": sys.argv[2], "args": json.loads(sys.argv[3])}).encode()
              + b"\\n")
    data = b""
    while not data.endswith(b"\\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    print(data.decode())
else:
    print(json.dumps({"connected": True}))
"""


pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


@pytest.fixture
def groups() -> Iterator[Groups]:
    with unix_groups() as made:
        yield made


@pytest.fixture
def runtime_base() -> Iterator[Path]:
    with reachable_tmp("vigil-access-") as base:
        yield base


class Node:
    def __init__(self, tmp: Path, base: Path, admin: str = "", status: str = "") -> None:
        text = cluster_toml(tmp).replace(f'runtime_dir = "{tmp}/run"',
                                         f'runtime_dir = "{base}"')
        keys = [f'{key} = "{value}"' for key, value in (("admin_group", admin),
                                                         ("status_group", status)) if value]
        text = text.replace('name = "test"', "\n".join(['name = "test"', *keys]))
        self.text = text
        cfg = loads(text, tmp / "cluster.toml")
        self.mc = MemoryCluster(cfg, load_key(cfg))
        self.mc.start("alpha")
        self.control = cfg.nodes["alpha"].control_socket
        self.events = cfg.nodes["alpha"].event_socket
        # the actors bind their sockets on their own threads, just after start() returns
        wait_for(self.ready, 10, "the node's sockets")

    def ready(self) -> bool:
        try:
            return self.events.exists() and bool(request(self.control, "status")["ok"])
        except OSError:
            return False

    def stop(self) -> None:
        self.mc.stop()
        pykka.ActorRegistry.stop_all(timeout=10)


@pytest.fixture
def node_factory(tmp_path: Path, runtime_base: Path) -> Iterator[Any]:
    yield from stopped_after(lambda admin="", status="": Node(
        tmp_path, runtime_base, admin, status))


def as_nobody(gid: int, extra_groups: tuple[int, ...], path: Path, command: str | None = None,
              args: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the tiny client as uid 65534 with primary group ``gid`` and exactly
    ``extra_groups``; its answer (or ``connect_error``: the errno)."""
    argv = [*setpriv(NOBODY, gid, extra_groups), SYSTEM_PYTHON, "-I", "-c", CLIENT, str(path)]
    if command is not None:
        argv += [command, json.dumps(args or {})]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/",
                         env=CLIENT_ENV)
    assert out.returncode == 0, out.stderr
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


def test_a_status_group_member_reads_status_and_events_but_may_not_control(
        node_factory: Any, groups: Groups, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vigil.actors.control")
    node = node_factory(groups.admin, groups.status)
    member = (NOBODY, (groups.status_gid,))
    answer = as_nobody(*member, node.control, "status")
    assert answer["ok"], answer
    assert answer["status"]["node"] == "alpha"
    expected = (f"permission denied: user nobody (uid {NOBODY}) is not root or in admin_group "
                f"'{groups.admin}'")
    for command, args in (("move", {"group": "web", "node": "beta"}),
                          ("diagnose", {"resource": "web-app"}),  # it acts: admin only
                          ("config", {}),  # fence devices' passwords: admin only
                          ("shutdown", {})):
        answer = as_nobody(*member, node.control, command, args)
        assert answer == {"ok": False, "error": expected}
        assert f"refused control request '{command}' from user nobody (uid {NOBODY}, pid" \
            in caplog.text
    # the request never reached the coordinator: nothing was decided
    assert node.mc.status("alpha")["groups"]["web"]["node"] is None
    assert as_nobody(*member, node.events) == {"connected": True}


def test_a_user_in_neither_group_is_refused_even_status_and_events(
        node_factory: Any, groups: Groups, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vigil.actors.control")
    node = node_factory(groups.admin, groups.status)
    answer = as_nobody(NOBODY, (), node.control, "status")
    assert answer == {"ok": False, "error": (
        f"permission denied: user nobody (uid {NOBODY}) is not root or in status_group "
        f"'{groups.status}' or admin_group '{groups.admin}'")}
    assert f"refused control request 'status' from user nobody (uid {NOBODY}" in caplog.text
    garbage = as_nobody(NOBODY, (), node.control, "status", {"x": 1})  # type: ignore[dict-item]
    assert garbage["error"].startswith("permission denied")  # not even what was wrong
    assert as_nobody(NOBODY, (), node.events) == {"connect_error": 13}  # EACCES


def test_admin_group_members_may_control_through_their_primary_group_too(
        node_factory: Any, groups: Groups, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vigil.actors.control")
    node = node_factory(groups.admin, groups.status)
    for gid, extra in ((groups.admin_gid, ()), (NOBODY, (groups.admin_gid,))):
        assert as_nobody(gid, extra, node.control, "status")["ok"]
        answer = as_nobody(gid, extra, node.control, "cleanup", {"group": "web"})
        assert answer["ok"], answer
    assert f"control request 'cleanup' {{'group': 'web'}} from user nobody (uid {NOBODY}" \
        in caplog.text
    assert "refused" not in caplog.text


def test_root_may_do_everything_and_the_files_say_who_may_connect(
        node_factory: Any, groups: Groups) -> None:
    node = node_factory(groups.admin, groups.status)
    assert request(node.control, "status")["ok"]
    assert request(node.control, "move", {"group": "web", "node": "beta"})["ok"]
    assert request(node.control, "diagnose", {"resource": "web-app"})["ok"]
    control, events = node.control.stat(), node.events.stat()
    assert stat.S_IMODE(control.st_mode) == 0o666  # every request is checked by the daemon
    assert stat.S_IMODE(events.st_mode) == 0o660 and events.st_gid == groups.status_gid
    assert stat.S_IMODE(node.control.parent.stat().st_mode) & 0o011 == 0o011


def test_without_groups_only_root_may_connect(node_factory: Any, groups: Groups) -> None:
    node = node_factory()
    assert request(node.control, "status")["ok"]
    assert stat.S_IMODE(node.control.stat().st_mode) == 0o600
    assert stat.S_IMODE(node.events.stat().st_mode) == 0o600
    for path in (node.control, node.events):
        assert as_nobody(NOBODY, (groups.status_gid,), path) == {"connect_error": 13}


SUBSCRIBER = """
import sys
from vigil.api import subscribe
try:
    with subscribe(sys.argv[1], "alpha", timeout=20) as events:
        print("connected", flush=True)
        print(next(events).kind)
except PermissionError as exc:
    print(exc)
"""


def test_the_event_stream_through_the_api_as_an_unprivileged_user(
        node_factory: Any, groups: Groups) -> None:
    venv_python = sys.executable
    probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                            "--clear-groups", venv_python, "-c", "import vigil.api"],
                           capture_output=True, timeout=60, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot run {venv_python} with vigil: {probe.stderr[-200:]!r}")
    node = node_factory(groups.admin, groups.status)
    # the same file, where nobody can read it (subscribing does not need the key)
    shared = node.events.parent.parent / "cluster.toml"
    shared.write_text(node.text)
    shared.chmod(0o644)

    def run(*creds: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["setpriv", f"--reuid={NOBODY}", *creds, venv_python, "-c",
                                 SUBSCRIBER, str(shared)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd="/")

    refused = run(f"--regid={NOBODY}", "--clear-groups")
    out, err = refused.communicate(timeout=60)
    assert f"permission denied on {node.events}" in out, err
    assert f"status_group '{groups.status}'" in out
    member = run(f"--regid={NOBODY}", f"--groups={groups.status_gid}")
    try:
        assert member.stdout is not None
        assert member.stdout.readline().strip() == "connected", member.stderr
        rt = node.mc.nodes["alpha"]
        for _ in range(200):  # until its subscription is through
            if member.poll() is not None:
                break
            rt.directory.tell("notifier", Decision(node="alpha", time=0.0, text="hi"))
            with contextlib.suppress(subprocess.TimeoutExpired):
                member.wait(timeout=0.1)
        out, err = member.communicate(timeout=30)
        assert out.strip() == "decision", err
    finally:
        if member.poll() is None:
            member.kill()
            member.wait(timeout=5)
