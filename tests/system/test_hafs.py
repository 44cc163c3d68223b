"""/ha as an operator meets it: a real FUSE mount (``vigil mount`` in a child process) of one
node of a real three-node cluster (every actor real, the wire in memory, the control sockets
real Unix sockets), read with open/read and written with write(2), as root and as nobody."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_harness import MemoryCluster, cluster_toml, wait_for
from vigil.config import load, load_key
from vigil.ha.fs import build_tree, diagnosis_text, refusal_errno
from vigil.status import (
    ClusterStatus,
    GroupStatus,
    NodeStatus,
    Operation,
    ResourceStatus,
    Transition,
)

NODES = ("alpha", "beta", "gamma")
# The entry point without the console script, which may be missing in a bare checkout.
VIGIL = [sys.executable, "-c", "from vigil.cli.main import main; main()"]


def _fuse_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: mounts FUSE with allow_other and writes as other users"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse (FUSE in the kernel, or the device in the container)"
    if shutil.which("fusermount3") is None:
        return "needs fusermount3 (Debian package fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"needs mfusepy and libfuse3: {exc}"
    return None


needs_fuse = pytest.mark.skipif(_fuse_missing() is not None, reason=_fuse_missing() or "")


# ---- helpers ------------------------------------------------------------------------------


def read(path: Path) -> str:
    return path.read_text().removesuffix("\n")


def write(path: Path, text: str) -> None:
    """One write(2) of ``text``, as ``echo text > path`` does it."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def write_errno(path: Path, text: str) -> int:
    try:
        write(path, text)
    except OSError as exc:
        return exc.errno or 0
    return 0


def as_user(uid: int, gid: int, script: str, groups: tuple[int, ...] = ()) -> \
        subprocess.CompletedProcess[str]:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to act as another user")
    extra = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", *extra,
                           "sh", "-c", script], capture_output=True, text=True, timeout=20)


def log_says(log: Path, *words: str) -> None:
    wait_for(lambda: all(w in log.read_text() for w in words), 5,
             f"the mount's log to say {words}")


def unmount(mountpoint: Path, proc: subprocess.Popen[bytes] | None) -> None:
    """Unmount and end the server (ours, by its PID), whatever state it is in."""
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, timeout=15)
    if proc is not None:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    with suppress(OSError):
        if os.path.ismount(mountpoint):  # the server died: only a lazy unmount clears it
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True,
                           timeout=15)


@contextmanager
def mount_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp is root's only): its ``ha`` is the mount
    point, made by `vigil mount` itself."""
    base = Path(tempfile.mkdtemp(prefix="vigil-ha-"))
    base.chmod(0o755)
    try:
        yield base / "ha"
    finally:
        with suppress(OSError):
            (base / "ha").rmdir()
        with suppress(OSError):
            base.rmdir()


@contextmanager
def mounted(config: Path, node: str, log: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    with mount_dir() as mountpoint, open(log, "wb") as err:
        proc = subprocess.Popen([*VIGIL, "mount", str(mountpoint), "-c", str(config), "-n", node,
                                 "--foreground"], stdout=err, stderr=err)
        try:
            wait_for(lambda: os.path.ismount(mountpoint) or proc.poll() is not None, 20,
                     "the mount")
            assert proc.poll() is None, f"vigil mount ended: {log.read_text()}"
            yield mountpoint, proc
        finally:
            unmount(mountpoint, proc)


def write_config(tmp: Path, admin_group: str = "", runtime: str = "run",
                 status_group: str = "") -> Path:
    text = cluster_toml(tmp).replace(f'runtime_dir = "{tmp}/run"',
                                     f'runtime_dir = "{tmp}/{runtime}"')
    for key, value in (("admin_group", admin_group), ("status_group", status_group)):
        if value:
            text = text.replace("[cluster]\n", f'[cluster]\n{key} = "{value}"\n', 1)
    path = tmp / "cluster.toml"
    path.write_text(text)
    return path


@dataclass
class Ha:
    mc: MemoryCluster
    root: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def status(self) -> dict[str, Any]:
        return self.mc.status("alpha")


@contextmanager
def cluster_with_ha(tmp: Path, admin_group: str = "", status_group: str = "") -> Iterator[Ha]:
    config = write_config(tmp, admin_group, status_group=status_group)
    cfg = load(config)
    mc = MemoryCluster(cfg, load_key(cfg))
    try:
        for n in NODES:
            mc.start(n)
        wait_for(lambda: mc.holders("web") == ["alpha"]
                 and mc.status("alpha")["groups"]["web"]["state"] == "running", 15,
                 "web in service on alpha")
        with mounted(config, "alpha", tmp / "mount.log") as (root, proc):
            yield Ha(mc, root, tmp / "mount.log", proc)
    finally:
        mc.stop()


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[Ha]:
    with cluster_with_ha(tmp_path) as h:
        yield h


# ---- reading ------------------------------------------------------------------------------


@needs_fuse
def test_the_files_agree_with_status_and_every_file_reads(ha: Ha) -> None:
    root = ha.root
    st = ha.status()
    assert read(root / "cluster/name") == "test"
    assert read(root / "cluster/seen_from") == "alpha"
    assert read(root / "cluster/epoch") == st["epoch"] == "1.alpha"
    assert read(root / "cluster/master") == "alpha"
    assert read(root / "cluster/quorate") == "yes"
    assert read(root / "cluster/quorum") == st["quorum"]
    assert sorted(os.listdir(root / "nodes")) == list(NODES)
    for n in NODES:
        assert read(root / f"nodes/{n}/state") == "online"
        assert read(root / f"nodes/{n}/standby") == "no"
        assert read(root / f"nodes/{n}/links/lan0") == "up"
    # alpha's own link, each peer on it (the in-memory links say nothing of connections)
    assert read(root / "cluster/links_down") == ""
    assert read(root / "links/lan0/state") == "up"
    assert read(root / "links/lan0/why") == "beta, gamma heard on it"
    assert read(root / "links/lan0/cut") == "0"
    assert sorted(os.listdir(root / "links/lan0/peers")) == ["beta", "gamma"]
    assert read(root / "links/lan0/peers/beta/state") == "up"
    assert float(read(root / "links/lan0/peers/beta/heard_ago")) < 1.0
    assert read(root / "links/lan0/peers/beta/connection") == "unknown"
    web = root / "groups/web"
    assert read(web / "node") == "alpha"
    assert read(web / "state") == "running"
    assert read(web / "resources").split("\n") == ["web-ip", "web-data", "web-app"]
    assert read(web / "fail_count") == "0"
    for r, v in st["resources"].items():
        d = root / "resources" / r
        assert read(d / "service_state") == v.get("service_state", v["state"]) == "IN_SERVICE"
        assert read(d / "type") == "dummy"
        assert read(d / "group") == "web"
        assert read(d / "on_fail") == v["on_fail"]
        assert read(d / "depends_on").split("\n") == (v["depends_on"] or [""])
    assert read(root / "resources/web-ip/dependents") == "web-data"
    assert read(root / "resources/web-app/dependents") == ""
    assert read(root / "resources/web-app/last_diagnostic").endswith("IN_SERVICE: running")

    # every file reads (as `grep -r` would), value files are read-only, control files root's
    seen = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = Path(dirpath, f)
            path.read_bytes()
            seen.append(str(path.relative_to(root)))
            mode = stat.S_IMODE(path.stat().st_mode)
            writable = f in ("control", "move", "maintenance")
            assert mode == (0o644 if writable else 0o444), (path, oct(mode))
    for expected in ("cluster/transition", "cluster/maintenance", "nodes/beta/control",
                     "groups/web/move", "groups/web/control", "resources/web-app/control",
                     "resources/web-app/last_failure", "resources/web-app/reason",
                     "resources/web-app/provided_by", "resources/web-app/diagnosis"):
        assert expected in seen
    assert subprocess.run(["grep", "-rq", "IN_SERVICE", str(root)], timeout=20).returncode == 0


@needs_fuse
def test_without_a_daemon_reads_and_writes_fail_with_enotconn(tmp_path: Path) -> None:
    config = write_config(tmp_path, runtime="nobody-runs-here")
    log = tmp_path / "mount.log"
    with mounted(config, "alpha", log) as (root, _):
        assert sorted(os.listdir(root)) == ["cluster", "fencing", "groups", "links", "nodes",
                                            "resources"]
        with pytest.raises(OSError) as caught:
            read(root / "cluster/epoch")
        assert caught.value.errno == errno.ENOTCONN
        with pytest.raises(OSError) as caught:
            os.listdir(root / "nodes")
        assert caught.value.errno == errno.ENOTCONN
        assert write_errno(root / "nodes/alpha/control", "standby\n") == errno.ENOTCONN
        log_says(log, "no daemon for node alpha listens on", "nobody-runs-here")


# ---- control ------------------------------------------------------------------------------


@needs_fuse
def test_writing_a_node_name_to_move_moves_the_group(ha: Ha) -> None:
    write(ha.root / "groups/web/move", "beta\n")
    wait_for(lambda: read(ha.root / "groups/web/node") == "beta"
             and read(ha.root / "groups/web/state") == "running", 15, "web moved to beta")
    assert ha.mc.holders("web") == ["beta"]
    assert read(ha.root / "resources/web-app/node") == "beta"
    log_says(ha.log, "/groups/web/move: 'beta' by uid 0 (root)", "move of web to beta")


@needs_fuse
def test_standby_empties_a_node_and_online_brings_it_back(ha: Ha) -> None:
    alpha = ha.root / "nodes/alpha"
    write(alpha / "control", "standby\n")
    wait_for(lambda: read(alpha / "standby") == "yes", 10, "alpha in standby")
    wait_for(lambda: read(ha.root / "groups/web/node") not in ("", "alpha")
             and read(ha.root / "groups/web/state") == "running", 15, "web off alpha")
    assert "alpha" not in ha.mc.holders("web")
    write(alpha / "control", "online")
    wait_for(lambda: read(alpha / "standby") == "no", 10, "alpha online again")
    assert read(alpha / "state") == "online"


@needs_fuse
def test_diagnose_answers_in_the_diagnosis_file_and_cleanup_clears_fail_counts(
        ha: Ha, tmp_path: Path) -> None:
    app = ha.root / "resources/web-app"
    assert read(app / "diagnosis") == ""
    write(app / "control", "diagnose\n")  # returns once the monitor has answered
    assert "diagnose healthy, IN_SERVICE" in read(app / "diagnosis")
    log_says(ha.log, "/resources/web-app/control: 'diagnose' by uid 0")

    # a failure on alpha counts there; cleanup (through a resource's file) forgets it
    fail_switch = tmp_path / "run/alpha/dummy/web-app.state.fail"
    fail_switch.touch()
    try:
        wait_for(lambda: int(read(ha.root / "groups/web/fail_count") or 0) >= 1, 15,
                 "the failure of web-app counted")
        assert read(app / "last_failure") != ""
    finally:
        fail_switch.unlink()
    write(app / "control", "cleanup\n")
    wait_for(lambda: read(ha.root / "groups/web/fail_count") == "0", 10, "fail counts cleared")


@needs_fuse
def test_bad_writes_fail_with_an_errno_and_the_log_says_why(ha: Ha) -> None:
    root = ha.root
    assert write_errno(root / "nodes/alpha/control", "bogus\n") == errno.EINVAL
    log_says(ha.log, "/nodes/alpha/control: 'bogus'", "not a command of this file",
             "standby | online")
    assert write_errno(root / "groups/web/move", "delta\n") == errno.EINVAL
    log_says(ha.log, "no node named 'delta'", "alpha | beta | gamma")
    assert write_errno(root / "groups/web/move", "beta gamma\n") == errno.EINVAL
    log_says(ha.log, "more than one word in one write")
    assert write_errno(root / "cluster/maintenance", "\n") == errno.EINVAL
    log_says(ha.log, "an empty write")
    assert write_errno(root / "cluster/epoch", "2.beta\n") == errno.EACCES
    log_says(ha.log, "/cluster/epoch: write by uid 0 (root)", "a value file")
    with pytest.raises(PermissionError):
        (root / "groups/new-file").write_text("x")
    log_says(ha.log, "/groups/new-file", "no room for new files")
    # nothing happened
    assert read(root / "groups/web/node") == "alpha"
    assert read(root / "nodes/alpha/standby") == "no"


@needs_fuse
def test_a_daemon_refusal_becomes_an_errno_and_a_log_line(ha: Ha) -> None:
    # Both leave the cluster as it is when the daemon knows them; a daemon without them
    # refuses them ("unknown command"): the write fails and the log quotes the daemon.
    for path, word in (("resources/web-app/control", "in_service"),
                       ("cluster/maintenance", "off")):
        code = write_errno(ha.root / path, word + "\n")
        if code:
            assert code == errno.EINVAL
            log_says(ha.log, f"/{path}: '{word}' by uid 0", "refused by node alpha's daemon")
    assert ha.mc.holders("web") == ["alpha"]


def test_refusals_map_to_errnos() -> None:
    assert refusal_errno("unknown command 'in_service'") == errno.EINVAL
    assert refusal_errno("no group named 'x'") == errno.EINVAL
    assert refusal_errno("the node is starting or stopping; try again") == errno.EAGAIN
    assert refusal_errno("the coordinator did not answer in time") == errno.EIO
    assert refusal_errno("permission denied: not in the admin group") == errno.EPERM


# ---- who may write ------------------------------------------------------------------------


@needs_fuse
def test_the_status_group_reads_everything_but_cannot_write(tmp_path: Path) -> None:
    import grp

    try:
        nogroup = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pytest.skip("needs the group nogroup to stand for a status group")
    with cluster_with_ha(tmp_path, status_group="nogroup") as ha:
        control = ha.root / "nodes/alpha/control"
        reading = as_user(65534, nogroup, f"cat {ha.root}/cluster/epoch && "
                          f"grep -r . {ha.root} | wc -l")
        assert reading.returncode == 0, reading.stderr
        epoch, lines = reading.stdout.split()
        assert epoch == "1.alpha" and int(lines) > 40
        writing = as_user(65534, nogroup, f"echo standby > {control}")
        assert writing.returncode != 0
        assert "Permission denied" in writing.stderr  # EACCES
        assert as_user(65534, nogroup, f"test -w {control}").returncode != 0
        log_says(ha.log, "/nodes/alpha/control: write by uid 65534",
                 "is not root, and no admin_group is set")
        assert read(ha.root / "nodes/alpha/standby") == "no"
        # in neither group: not even status
        outsider = as_user(1, 1, f"cat {ha.root}/cluster/epoch")
        assert outsider.returncode != 0 and "Permission denied" in outsider.stderr
        log_says(ha.log, "read by uid 1", "is not root or in status_group 'nogroup'")


@needs_fuse
def test_members_of_the_admin_group_may_write(tmp_path: Path) -> None:
    import grp

    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pytest.skip("needs the group nogroup to stand for an admin group")
    with cluster_with_ha(tmp_path, admin_group="nogroup") as ha:
        control = ha.root / "nodes/gamma/control"
        assert control.stat().st_gid == gid
        assert stat.S_IMODE(control.stat().st_mode) == 0o664
        # the primary group, then a supplementary group, make an administrator
        assert as_user(65534, gid, f"echo online > {control}").returncode == 0
        member = as_user(1, 1, f"echo online > {control}", groups=(gid,))
        assert member.returncode == 0, member.stderr
        log_says(ha.log, "/nodes/gamma/control: 'online' by uid 1")
        outsider = as_user(1, 1, f"echo standby > {control}")
        assert "Permission denied" in outsider.stderr
        log_says(ha.log, "write by uid 1", "is not root or in admin_group 'nogroup'")
        assert read(ha.root / "nodes/gamma/standby") == "no"


# ---- mounting -----------------------------------------------------------------------------


@needs_fuse
def test_mount_refuses_a_busy_or_non_empty_mount_point_and_sigterm_unmounts(
        tmp_path: Path) -> None:
    config = write_config(tmp_path, runtime="nobody-runs-here")
    with mounted(config, "alpha", tmp_path / "mount.log") as (root, proc):
        again = subprocess.run([*VIGIL, "mount", str(root), "-c", str(config), "-n", "alpha"],
                               capture_output=True, text=True, timeout=30)
        assert again.returncode == 2
        assert f"{root} is already a mount point" in again.stderr
        full = tmp_path / "full"
        full.mkdir()
        (full / "something").touch()
        refused = subprocess.run([*VIGIL, "mount", str(full), "-c", str(config), "-n", "alpha"],
                                 capture_output=True, text=True, timeout=30)
        assert refused.returncode == 2
        assert f"{full} is not empty" in refused.stderr
        unknown = subprocess.run([*VIGIL, "mount", str(full), "-c", str(config), "-n", "delta"],
                                 capture_output=True, text=True, timeout=30)
        assert unknown.returncode == 2 and "'delta'" in unknown.stderr

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not os.path.ismount(root)
    assert "unmounted" in (tmp_path / "mount.log").read_text()


@needs_fuse
def test_background_mount_returns_once_mounted(tmp_path: Path) -> None:
    config = write_config(tmp_path, runtime="nobody-runs-here")
    log = tmp_path / "server.log"
    with mount_dir() as root:
        server: int | None = None
        try:
            done = subprocess.run([*VIGIL, "mount", str(root), "-c", str(config), "-n", "alpha",
                                   "--log-file", str(log)],
                                  capture_output=True, text=True, timeout=40)
            assert done.returncode == 0, done.stderr
            assert f"mounted at {root} (server pid " in done.stdout
            server = int(done.stdout.split("server pid ")[1].split(")")[0])
            assert os.path.ismount(root)
            assert sorted(os.listdir(root)) == ["cluster", "fencing", "groups", "links",
                                                "nodes", "resources"]
            subprocess.run(["fusermount3", "-u", str(root)], check=True, timeout=15)
            wait_for(lambda: not _alive(server), 10, "the server to end after the unmount")
            log_says(log, "serving /ha of node alpha", "unmounted")
        finally:
            if os.path.ismount(root):
                subprocess.run(["fusermount3", "-u", str(root)], capture_output=True, timeout=15)
            if server is not None and _alive(server):
                os.kill(server, signal.SIGKILL)  # the server we started, by its PID


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# ---- the tree of any status ---------------------------------------------------------------


def resource(group: str, depends_on: tuple[str, ...] = (), dependents: tuple[str, ...] = (),
             **changes: Any) -> ResourceStatus:
    fields: dict[str, Any] = {
        "group": group, "type": "dummy", "service_state": "IN_SERVICE", "provided_by": "n1",
        "reason": "running", "depends_on": depends_on, "dependents": dependents,
        "by_hand": None, "on_fail": "restart", "fail_count": 0, "last_failure": None,
        "last_diagnostic": None}
    return ResourceStatus(**(fields | changes))


def a_status(**changes: Any) -> ClusterStatus:
    """Two nodes, one group g of resources b and a (b after a), and a resource whose name is
    no file name."""
    fields: dict[str, Any] = {
        "cluster": "test", "node": "n1", "epoch": "1.n1", "accepted": "1.n1", "closed": True,
        "master": "n1", "quorate": True, "quorum": "2 of 2 votes", "lease_valid": True,
        "members": ("n1", "n2"), "alive": ("n1", "n2"), "transition": None,
        "maintenance": False, "standby": (), "disabled": {},
        "nodes": {n: NodeStatus(state="online", standby=False, links={"lan0": True})
                  for n in ("n1", "n2")},
        "groups": {"g": GroupStatus(node="n1", state="running", placed="n1",
                                    active_on={"n1": "running"}, resources=("b", "a"),
                                    fail_count=2)},
        "resources": {"a": resource("g", dependents=("b",), service_state="OOS"),
                      "b": resource("g", depends_on=("a",)), "../x": resource("g")},
        "local": {"g": "running"}, "fail_counts": {"g": 2}, "mismatched": (), "dropped": 0}
    return ClusterStatus(**(fields | changes))


def test_values_the_status_lacks_are_empty_files() -> None:
    tree = build_tree(a_status(master=None, nodes={"n1": NodeStatus(
        state="offline", standby=True, links={})}))
    assert tree["/cluster/master"].content == b""
    assert tree["/cluster/transition"].content == b""
    assert tree["/cluster/maintenance"].content == b"off\n"
    assert tree["/cluster/maintenance"].control is not None
    assert tree["/nodes/n1/standby"].content == b"yes\n"
    assert tree["/nodes/n1/links"].children == ()
    assert tree["/resources/a/last_failure"].content == b""
    assert tree["/resources/b/dependents"].content == b""


def test_the_files_of_a_status() -> None:
    failed = Operation(ok=False, op="monitor", state="FAILED", reason="gone", at="19:30:12")
    st = a_status(maintenance=True, transition=Transition(phase="commit", reason="node n2 lost"))
    st = replace(st, resources={**st.resources, "a": replace(
        st.resources["a"], fail_count=1, last_failure=failed)})
    tree = build_tree(st, {"a": diagnosis_text({"healthy": False, "state": "FAILED",
                                                "reason": "gone", "duration": 0.5})})
    assert tree["/cluster/maintenance"].content == b"on\n"
    assert tree["/cluster/transition"].content == b"commit: node n2 lost\n"
    assert tree["/cluster/quorate"].content == b"yes\n"
    assert tree["/groups/g/resources"].content == b"b\na\n"
    assert tree["/groups/g/fail_count"].content == b"2\n"
    assert tree["/resources/a/service_state"].content == b"OOS\n"
    assert tree["/resources/a/provided_by"].content == b"n1\n"
    assert tree["/resources/a/node"].content == b"n1\n"
    assert tree["/resources/a/dependents"].content == b"b\n"
    assert tree["/resources/b/depends_on"].content == b"a\n"
    assert tree["/resources/a/last_failure"].content == \
        b"19:30:12 monitor failed, FAILED: gone\n"
    assert b"diagnose FAILED, FAILED (0.50s): gone" in tree["/resources/a/diagnosis"].content
    move = tree["/groups/g/move"].control
    assert move is not None and move.choices == ("n1", "n2")
    assert not any(".." in p for p in tree)  # names that are no file names are left out
