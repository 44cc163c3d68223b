"""The runtime directory no one else can touch, and the daemon's life cycle around it.

Real `vigil node run` processes (a one-node cluster on 127.0.0.1, running a group of a dummy
and an application resource); the other local user is ``nobody`` (uid 65534) through
``setpriv``, doing what the attacker of the security review did: pre-creating the directory
and planting symbolic links at the temporary and log paths where root writes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_harness import wait_for
from tests.support.local_users import (
    CLIENT_ENV,
    NOBODY,
    SYSTEM_PYTHON,
    reachable_tmp,
    setpriv,
    stopped_after,
)
from vigil.config import write_key
from vigil.daemon import STOP_GRACE
from vigil.local.protocol import request

PRECIOUS = b"root's own data\n"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the daemon runs as root, the other user is uid 65534"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux)"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"needs {SYSTEM_PYTHON} for the unprivileged user's actions"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


def as_nobody(code: str, *args: str) -> None:
    """Run Python ``code`` as uid/gid 65534 without supplementary groups."""
    out = subprocess.run([*setpriv(NOBODY, NOBODY), SYSTEM_PYTHON, "-I", "-c", code, *args],
                         capture_output=True, text=True, timeout=60, cwd="/", env=CLIENT_ENV)
    assert out.returncode == 0, out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def base() -> Iterator[Path]:
    with reachable_tmp("vigil-rd-") as path:  # nobody must reach into it
        yield path


@pytest.fixture
def precious(base: Path) -> Iterator[list[Path]]:
    """Files of root's that a planted link points at: they must stay as they are."""
    vault = base / "vault"
    vault.mkdir(mode=0o700)
    files = [vault / "a", vault / "b"]
    for f in files:
        f.write_bytes(PRECIOUS)
        f.chmod(0o600)
    before = [f.stat() for f in files]
    yield files
    for f, st in zip(files, before, strict=True):
        assert f.read_bytes() == PRECIOUS, f"{f} was written through a planted link"
        assert (f.stat().st_mtime_ns, f.stat().st_size) == (st.st_mtime_ns, st.st_size)


class Node:
    """A one-node cluster's daemon, alpha, with its runtime directory at ``runtime_dir``."""

    def __init__(self, base: Path, runtime_dir: Path, cluster_extra: str = "") -> None:
        self.base = base
        self.dir = runtime_dir
        self.config = base / "cluster.toml"
        key = base / "cluster.key"
        if not key.exists():
            write_key(key)
        self.config.write_text("\n".join([
            "[cluster]", 'name = "rd"', f'key_file = "{key}"', 'fencer = "silence"',
            cluster_extra, "",
            "[timing]", 'heartbeat_interval = "100ms"', "",
            "[nodes.alpha]", f"runtime_dir = \"{runtime_dir}\"",
            f'links = [{{ name = "lan0", address = "127.0.0.1", port = {free_port()} }}]', "",
            "[groups.web]", 'resources = ["web-state", "web-app"]', "",
            "[resources.web-state]", 'type = "dummy"', 'stop_timeout = "1s"', "",
            "[resources.web-app]", 'type = "application"', 'depends_on = ["web-state"]',
            'params = { start = "sleep 600" }', 'stop_timeout = "1s"', "",
        ]))
        self.procs: list[subprocess.Popen[str]] = []

    def start(self) -> subprocess.Popen[str]:
        with self.log_file.open("a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "vigil.cli.main", "node", "run",
                                     "-c", str(self.config), "--node", "alpha"], stdout=log,
                                    stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        return proc

    @property
    def log_file(self) -> Path:
        return self.base / "alpha.log"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def run(self) -> subprocess.CompletedProcess[str]:
        """A daemon that is expected to refuse: its exit status and output."""
        return subprocess.run([sys.executable, "-m", "vigil.cli.main", "node", "run", "-c",
                               str(self.config), "--node", "alpha"], capture_output=True,
                              text=True, timeout=60)

    def status(self) -> dict[str, Any] | None:
        try:
            answer = request(self.dir / "control.sock", "status", timeout=5.0)
        except OSError:
            return None
        return answer.get("status") if answer.get("ok") else None

    def service_state(self, resource: str) -> str | None:
        st = self.status()
        return None if st is None else str(st["resources"][resource]["service_state"])

    def web_running(self) -> bool:
        st = self.status()
        return st is not None and st["groups"]["web"]["state"] == "running"

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


@pytest.fixture
def node_at(base: Path) -> Iterator[Any]:
    yield from stopped_after(lambda runtime_dir, cluster_extra="": Node(
        base, runtime_dir, cluster_extra))


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_runtime_directory_and_every_file_in_it_are_the_daemons_alone(
        node_at: Any, base: Path) -> None:
    node = node_at(base / "run" / "alpha")  # neither exists: both made 0700
    node.start()
    wait_for(node.web_running, 60, "web running on alpha")
    wait_for((node.dir / "logs" / "web-app.log").exists, 10, "the application's log")
    assert {p: mode(p) for p in (base / "run", node.dir, node.dir / "logs",
                                 node.dir / "dummy")} == dict.fromkeys(
        (base / "run", node.dir, node.dir / "logs", node.dir / "dummy"), 0o700)
    files = [node.dir / "state.json", node.dir / "node.lock", node.dir / "logs" / "web-app.log",
             node.dir / "dummy" / "web-state.state"]
    assert {f: mode(f) for f in files} == dict.fromkeys(files, 0o600)
    assert all(os.lstat(f).st_uid == 0 for f in [node.dir, *files])
    # the other user can neither list the directory nor read the state or a log
    as_nobody("""
import os, sys
for path in sys.argv[1:]:
    try:
        os.listdir(path) if os.path.isdir(path) else open(path, "rb")
    except PermissionError:
        continue
    sys.exit(f"nobody could read {path}")
""", str(node.dir), str(node.dir / "state.json"), str(node.dir / "logs" / "web-app.log"))


def test_with_an_access_group_the_directory_is_traversable_not_listable(
        node_at: Any, base: Path) -> None:
    node = node_at(base / "run" / "alpha", 'admin_group = "root"')
    node.start()
    wait_for(node.web_running, 60, "web running on alpha")
    assert mode(base / "run") == mode(node.dir) == 0o711
    assert mode(node.dir / "state.json") == 0o600
    as_nobody("""
import os, socket, sys
try:
    os.listdir(sys.argv[1])
    sys.exit("nobody could list the runtime directory")
except PermissionError:
    pass
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1] + "/control.sock")  # the sockets are reachable: the daemon decides
""", str(node.dir))


def test_what_an_older_daemon_left_readable_is_made_private(node_at: Any, base: Path) -> None:
    old = base / "run" / "alpha"
    (old / "logs").mkdir(mode=0o755, parents=True)
    for path in (base / "run", old, old / "logs"):
        path.chmod(0o755)
    (old / "state.json").write_text("{}")  # unreadable as state: ignored, with a warning
    (old / "logs" / "web-app.log").write_text("an old line\n")
    for f in (old / "state.json", old / "logs" / "web-app.log"):
        f.chmod(0o644)
    node = node_at(old)
    node.start()
    wait_for(node.web_running, 60, "web running on alpha")
    assert (mode(old), mode(old / "logs"), mode(old / "state.json"),
            mode(old / "logs" / "web-app.log")) == (0o700, 0o700, 0o600, 0o600)
    assert mode(base / "run") == 0o755  # an existing parent is the operator's: left alone
    assert (old / "logs" / "web-app.log").read_text().startswith("an old line\n")


def _unsafe_parent(base: Path) -> tuple[Path, str, str]:
    shared = base / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    return (shared / "run" / "alpha",
            f"{shared}, above the runtime directory {shared}/run/alpha, is writable by "
            "everyone (mode 0777) without the sticky bit", f"chmod go-w {shared}")


def _parent_of_another_user(base: Path) -> tuple[Path, str, str]:
    theirs = base / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    return (theirs / "alpha", f"{theirs}, above the runtime directory {theirs}/alpha, is owned "
            "by nobody", f"chown root {theirs}")


def _directory_of_another_user(base: Path) -> tuple[Path, str, str]:
    theirs = base / "alpha"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    return theirs, f"{theirs} is owned by nobody, not by root", f"chown root {theirs}"


def _directory_others_may_write(base: Path) -> tuple[Path, str, str]:
    wide = base / "alpha"
    wide.mkdir()
    wide.chmod(0o1777)  # sticky or not: they could plant names in it
    return (wide, f"{wide} is writable by everyone (mode 1777): they could plant files",
            f"chmod 700 {wide}")


def _link_of_another_user(base: Path) -> tuple[Path, str, str]:
    public = base / "public"
    public.mkdir()
    public.chmod(0o1777)  # like /tmp: the sticky bit alone does not make their link ours
    (base / "safe").mkdir(mode=0o700)
    as_nobody("import os, sys; os.symlink(sys.argv[1], sys.argv[2])", str(base / "safe"),
              str(public / "run"))
    return (public / "run" / "alpha", f"{public / 'run'}, on the way to the runtime directory "
            f"{public}/run/alpha, is a symbolic link owned by nobody", "remove it")


def _link_to_a_directory_of_another_user(base: Path) -> tuple[Path, str, str]:
    theirs = base / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    (base / "alpha").symlink_to(theirs)  # root's own link: followed, and what it names checked
    return base / "alpha", f"{theirs} is owned by nobody, not by root", f"chown root {theirs}"


@pytest.mark.parametrize("setup", [_unsafe_parent, _parent_of_another_user,
                                   _directory_of_another_user, _directory_others_may_write,
                                   _link_of_another_user, _link_to_a_directory_of_another_user])
def test_a_runtime_directory_another_user_could_change_is_refused(
        node_at: Any, base: Path, setup: Any) -> None:
    runtime_dir, what, fix = setup(base)
    before = sorted(p for p in base.rglob("*"))
    out = node_at(runtime_dir).run()
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("vigil: refusing to start: unsafe runtime directory: ")
    assert what in out.stderr and fix in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    # refused before anything was made or started
    assert sorted(p for p in base.rglob("*") if p.name not in ("cluster.toml", "cluster.key"))\
        == before
    assert not (base / "safe" / "alpha").exists()


def test_links_of_roots_on_the_way_are_followed(base: Path) -> None:
    from vigil.local.rundir import prepare_runtime_dir

    for d in ("var", "real"):
        (base / d).mkdir(mode=0o755)
    (base / "var" / "run").symlink_to(base / "real")  # like /var/run -> /run
    prepare_runtime_dir(base / "var" / "run" / "vigil" / "alpha")
    assert mode(base / "real" / "vigil") == mode(base / "real" / "vigil" / "alpha") == 0o700


PLANT = """
import os, sys
root, a, b = (sys.argv[1], sys.argv[2], sys.argv[3])
for d in ("alpha", "alpha/logs", "alpha/dummy"):
    os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, d), 0o777)
for name, target in (("alpha/state.json.tmp", a), ("alpha/state.tmp", a),
                     ("alpha/logs/web-app.log", b), ("alpha/dummy/web-state.state.tmp", a)):
    os.symlink(target, os.path.join(root, name))
"""


def test_a_directory_prepared_by_another_user_is_refused_and_their_links_untouched(
        node_at: Any, base: Path, precious: list[Path]) -> None:
    # The review's attack: runtime_dir below a world-writable directory (the demo used
    # /tmp), which nobody fills first with links at the temporary and log paths.
    public = base / "public"
    public.mkdir()
    public.chmod(0o1777)
    as_nobody(PLANT, str(public / "vigil"), *map(str, precious))
    node = node_at(public / "vigil" / "alpha")
    out = node.run()
    assert out.returncode == 2
    assert (f"{public / 'vigil'}, above the runtime directory {node.dir}, is owned by nobody"
            in out.stderr)
    assert os.path.islink(node.dir / "state.json.tmp")  # not even removed: not ours to touch


def test_links_left_in_the_runtime_directory_are_never_followed(
        node_at: Any, base: Path, precious: list[Path]) -> None:
    # Links planted while the directory was open to everyone, before the operator closed it:
    # defence in depth, the daemon writes nothing through them.
    root = base / "run"
    root.mkdir()
    root.chmod(0o1777)
    as_nobody(PLANT, str(root), *map(str, precious))
    for d in (root, root / "alpha", root / "alpha" / "logs", root / "alpha" / "dummy"):
        os.chown(d, 0, 0)
        d.chmod(0o700)
    node = node_at(root / "alpha")
    node.start()
    # The state is written (the link at its temporary name removed, a new file made), the
    # dummy's too; the application, whose log is a link, does not start, and says why.
    wait_for(lambda: "started (state file" in node.log(), 60, "web-state started")
    log_link = node.dir / "logs" / "web-app.log"
    wait_for(lambda: f"{log_link} is a symbolic link" in node.log(), 60, "web-app refused")
    assert "Vigil never follows one in its runtime directory" in node.log()
    wait_for((node.dir / "state.json").is_file, 10, "state.json written")
    assert not os.path.islink(node.dir / "state.json")
    assert mode(node.dir / "state.json") == 0o600
    # the planted link is gone; a state.json.tmp may exist for a moment while the daemon
    # writes the state again (a regular file of its own, renamed at once)
    assert not os.path.islink(node.dir / "state.json.tmp")
    wait_for(lambda: not os.path.lexists(node.dir / "state.json.tmp"), 10,
             "no state.json.tmp between two writes")
    node.stop()
    assert os.path.islink(log_link)  # left for the operator to see


def test_a_second_daemon_for_the_same_node_refuses_before_it_binds_anything(
        node_at: Any, base: Path) -> None:
    node = node_at(base / "run" / "alpha")
    first = node.start()
    wait_for(node.web_running, 60, "web running on alpha")
    second = node.run()
    assert second.returncode == 2
    assert second.stderr == (
        f"vigil: refusing to start: node alpha is already running on this machine (pid "
        f"{first.pid} holds {node.dir / 'node.lock'}); stop that daemon first (kill -TERM "
        f"{first.pid}, or systemctl stop vigil)\n")
    assert first.poll() is None and node.web_running()  # the first one did not notice
    node.stop()
    assert first.returncode == 0
    # the lock goes with the process: the node can be started again
    node.start()
    wait_for(node.web_running, 60, "web running on alpha again")


def test_sigterm_ends_a_daemon_whose_runtime_directory_was_deleted(
        node_at: Any, base: Path) -> None:
    node = node_at(base / "run" / "alpha")
    proc = node.start()
    wait_for(node.web_running, 60, "web running on alpha")
    shutil.rmtree(node.dir)
    proc.send_signal(signal.SIGTERM)
    # its groups' stop timeouts and two steps (about 2.4 s here), then the actors: bounded
    bound = 2 * 1.0 + 2 * 3 * 0.4 + STOP_GRACE
    wait_for(lambda: proc.poll() is not None, bound + 10, "the daemon to exit")
    assert proc.returncode in (0, 1)


def test_a_stopping_daemon_that_hangs_still_exits_by_its_deadline() -> None:
    # Whatever hangs (an actor, a socket): the deadline started at the signal ends the process.
    code = ("import logging, threading\n"
            "from vigil.daemon import exit_by\n"
            "logging.basicConfig()\n"
            "exit_by(0.2, 'alpha', 'the signal')\n"
            "threading.Thread(target=threading.Event().wait).start()  # never ends\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert "node alpha: still running 0s after the signal; exiting now" in out.stderr


def test_the_demo_directory_is_made_private_and_refused_when_another_user_has_it(
        base: Path) -> None:
    from vigil.demo import make_private

    public = base / "public"  # /tmp, as far as the demo is concerned
    public.mkdir()
    public.chmod(0o1777)
    theirs = public / "vigil-demo"
    as_nobody("import os, sys; os.mkdir(sys.argv[1], 0o777)", str(theirs))
    with pytest.raises(OSError, match="is not a directory of this user"):
        make_private(theirs)
    link = public / "link"
    link.symlink_to(base)
    with pytest.raises(OSError, match="is not a directory of this user"):
        make_private(link)
    ours = base / "ours"
    (ours / "alpha").mkdir(parents=True)
    (ours / "alpha" / "state.json").write_text("{}")
    make_private(ours)  # a run before: made anew
    assert mode(ours) == 0o700 and list(ours.iterdir()) == []


def test_the_filesystem_probe_never_writes_through_a_planted_link(
        base: Path, precious: list[Path]) -> None:
    from vigil.resources.filesystem import _PROBE_WRITE

    mounted = base / "mnt"  # a filesystem whose root everyone may write in
    mounted.mkdir()
    mounted.chmod(0o1777)
    probe = mounted / ".vigil-probe-n1"
    as_nobody("import os, sys; os.symlink(sys.argv[1], sys.argv[2])", str(precious[0]),
              str(probe))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", _PROBE_WRITE, str(probe), "token"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout
    assert not os.path.lexists(probe)
