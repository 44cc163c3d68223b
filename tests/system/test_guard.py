"""The guardian (`vigil guard`) as a real process, fencing real things: processes in a cgroup
and in a process group, an address in a network namespace made here, an ext4 filesystem on a
loop device mounted in a private mount namespace, and stand-ins for the watchdog device and
/proc/sysrq-trigger (regular files made here: never the real ones).

The daemon is played by the test through :class:`GuardClient`, or by a child process that the
test SIGKILLs. Every wait is a bounded poll for a condition; nothing asserts a speed. Needs
root (cgroups, namespaces, loop devices); skips with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vigil.guard.cgroups import NodeCgroups, kill_cgroup
from vigil.guard.client import Connected, FencedEvent, GuardClient, GuardError, GuardEvent
from vigil.guard.holdings import Address, Holdings, MountHolding, ResourceHolding
from vigil.guard.protocol import FenceReport
from vigil.resources import proc
from vigil.resources.filesystem import read_mountinfo

REPO = Path(__file__).resolve().parents[2]
SBIN_PATH = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
WAIT = 20.0  # every wait for a condition gives up after this long
_names = itertools.count()

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the guardian needs root: cgroups, "
                                "signals to any process, namespaces, mounts")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=SBIN_PATH, LC_ALL="C")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT, check=False,
                          env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
    return done


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def holds_open(pid: int, suffix: str) -> bool:
    """Whether ``pid`` has a file ending in ``suffix`` open. Its descriptors come and go
    while the shell it starts as execs (``fd/3`` listed, then gone), so a vanished one is
    just not (yet) the file."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").endswith(suffix):
                return True
        except FileNotFoundError:
            continue
    return False


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t, path=SBIN_PATH) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


def cluster_file(tmp: Path, node: str, guardian_toml: str = "") -> str:
    """A one-node cluster whose runtime directory is under ``tmp``."""
    return f"""
[cluster]
name = "guardtest"
key_file = "unused.key"
runtime_dir = "{tmp / 'run'}"

[timing]
guard_time = "100ms"

[guardian]
{guardian_toml}

[nodes.{node}]
links = [{{ name = "lan0", address = "127.0.0.1", port = 7999 }}]

[groups.g]
resources = ["r"]

[resources.r]
type = "dummy"
"""


class Guard:
    """One `vigil guard` process for a node of its own, and the daemon's side of it."""

    def __init__(self, tmp: Path, *, guardian_toml: str = "", args: tuple[str, ...] = (),
                 wrapper: tuple[str, ...] = ()) -> None:
        self.node = f"gt{os.getpid()}-{next(_names)}"
        self.tmp = tmp
        self.config = tmp / f"{self.node}.toml"
        self.config.write_text(cluster_file(tmp, self.node, guardian_toml))
        self.socket = tmp / "run" / self.node / "guard.sock"
        self.log = tmp / f"{self.node}.log"
        self.cgroups = NodeCgroups(self.node, cluster="guardtest")
        self.clients: list[GuardClient] = []
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*wrapper, sys.executable, "-m", "vigil.cli.main", "guard", "-c",
                 str(self.config), "-n", self.node, "--log-level", "debug", *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                env=dict(os.environ, PATH=SBIN_PATH))
        wait_for(lambda: self.socket.exists() or self.process.poll() is not None,
                 f"the guardian's socket {self.socket}")
        assert self.process.poll() is None, f"the guardian exited: {self.text()}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self) -> GuardClient:
        """A daemon's connection, once the guardian has answered hello."""
        client = GuardClient(self.socket, self.node)
        self.clients.append(client)
        events: list[GuardEvent] = []
        wait_for(lambda: events.extend(client.wait(0.05)) or any(
            isinstance(e, Connected) for e in events), "the guardian's welcome")
        return client

    def terminate(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the guardian ignored SIGTERM: {self.text()}") from None

    def cleanup(self) -> None:
        for client in self.clients:
            client.close(flush_timeout=0)
        if self.process.poll() is None:
            self.process.kill()  # by PID
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=WAIT)
        if self.cgroups.path is not None and self.cgroups.path.exists():
            self.cgroups.kill(wait=5.0)
            self.cgroups.remove()


@pytest.fixture
def guards(tmp_path: Path) -> Iterator[Callable[..., Guard]]:
    made: list[Guard] = []

    def make(**kwargs: object) -> Guard:
        guard = Guard(tmp_path, **kwargs)  # type: ignore[arg-type]
        made.append(guard)
        return guard

    try:
        yield make
    finally:
        for guard in made:
            guard.cleanup()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; whatever the guardian left is killed by PID afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for p in started:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=WAIT)


def start(processes: list[subprocess.Popen[bytes]], argv: list[str]) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                         env=dict(os.environ, PATH=SBIN_PATH))
    processes.append(p)
    return p


def fenced(client: GuardClient, what: str) -> FenceReport:
    reports: list[FenceReport] = []

    def got() -> bool:
        reports.extend(e.report for e in client.wait(0.05) if isinstance(e, FencedEvent))
        return bool(reports)

    wait_for(got, what)
    return reports[0]


def dead(pids: list[int]) -> Callable[[], bool]:
    return lambda: not any(proc.pid_alive(p) for p in pids)


# ---- processes ------------------------------------------------------------------------------


def test_processes_in_a_cgroup_and_a_process_group_die_when_the_lease_runs_out(
        guards: Callable[..., Guard], processes: list[subprocess.Popen[bytes]]) -> None:
    guard = guards()
    problem = guard.cgroups.problem()
    if problem is not None:
        pytest.skip(f"cgroup v2 is not usable here: {problem}")
    # A service that daemonizes a child into a session of its own: only the cgroup knows it.
    app = start(processes, guard.cgroups.wrap(
        "web-app", ["/bin/sh", "-c", "setsid sleep 1000 & exec sleep 1000"]))
    worker = start(processes, ["sleep", "1000"])
    wait_for(lambda: len(guard.cgroups.pids("web-app")) == 2, "both sleeps in the cgroup")
    in_cgroup = guard.cgroups.pids("web-app")
    assert app.pid in in_cgroup
    client = guard.client()
    holdings = Holdings((
        ResourceHolding("web-app", cgroup=str(guard.cgroups.resource_path("web-app"))),
        ResourceHolding("worker", pgids=(worker.pid,))))
    lease_until = time.monotonic() + 0.3
    assert client.report(lease_until, holdings)  # and then the daemon falls silent

    report = fenced(client, "the fence after the lease")
    wait_for(dead([*in_cgroup, worker.pid]), "every process to die")
    assert report.at >= lease_until  # not before the lease's end
    assert report.resources == ("web-app", "worker")
    killed = {(k.kind, k.target): k.processes for k in report.killed}
    assert killed[("cgroup", f"vigil-guardtest.{guard.node}")] == 2
    assert killed[("pgid", str(worker.pid))] == 1
    assert report.problems == () and report.remaining.empty
    assert "lease ran out at" in guard.text() and "FENCED" in guard.text()
    assert guard.cgroups.pids() == []


def test_a_daemon_killed_while_holding_something_is_fenced_at_once(
        guards: Callable[..., Guard], processes: list[subprocess.Popen[bytes]]) -> None:
    guard = guards()
    worker = start(processes, ["sleep", "1000"])
    daemon = subprocess.Popen(
        [sys.executable, "-c", FAKE_DAEMON, str(guard.socket), guard.node, str(worker.pid)],
        stdout=subprocess.PIPE, start_new_session=True, cwd=REPO)
    processes.append(daemon)
    assert daemon.stdout is not None
    assert daemon.stdout.readline() == b"reported\n"  # its lease runs for ten more minutes
    daemon.kill()  # SIGKILL, by PID
    wait_for(dead([worker.pid]), "the worker to die")
    wait_for(lambda: "FENCED" in guard.text(), "the fence in the guardian's log")
    text = guard.text()
    assert "is gone without saying bye, holding 1 resource(s)" in text
    assert f"killed process group {worker.pid} (1 process)" in text


FAKE_DAEMON = """
import sys, time
from vigil.guard.client import GuardClient, Connected
from vigil.guard.holdings import Holdings, ResourceHolding
path, node, pgid = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = GuardClient(path, node)
while not any(isinstance(e, Connected) for e in client.wait(0.05)):
    pass
client.report(time.monotonic() + 600, Holdings((ResourceHolding("worker", pgids=(pgid,)),)))
print("reported", flush=True)
while True:
    client.wait(1.0)
"""


def test_a_clean_bye_kills_nothing(guards: Callable[..., Guard],
                                   processes: list[subprocess.Popen[bytes]]) -> None:
    guard = guards()
    worker = start(processes, ["sleep", "1000"])
    client = guard.client()
    lease_until = time.monotonic() + 0.3
    client.report(lease_until, Holdings((ResourceHolding("worker", pgids=(worker.pid,)),)))
    client.bye()
    client.close()
    wait_for(lambda: "left after bye" in guard.text(), "the guardian to see the bye")
    wait_for(lambda: time.monotonic() > lease_until + 0.5, "the old lease to be long over")
    # A new daemon's hello is answered only by a loop that has been round since.
    guard.client().close()
    assert proc.pid_alive(worker.pid)
    assert "FENCED" not in guard.text()


def test_a_frozen_daemon_is_fenced_while_its_connection_stays_open(
        guards: Callable[..., Guard], processes: list[subprocess.Popen[bytes]]) -> None:
    guard = guards()
    worker = start(processes, ["sleep", "1000"])
    client = guard.client()
    client.report(time.monotonic() + 0.3, Holdings((ResourceHolding("w", pgids=(worker.pid,)),)))
    # The client neither reports nor closes: like a daemon under SIGSTOP.
    report = fenced(client, "the fence of a silent daemon")
    assert report.killed[0].target == str(worker.pid)
    wait_for(dead([worker.pid]), "the worker to die")


def test_malformed_lines_are_dropped_with_a_clear_error(guards: Callable[..., Guard]) -> None:
    import socket

    guard = guards()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(WAIT)
        s.connect(str(guard.socket))
        s.sendall(b"not json\n" + b'{"v": 1, "type": "report", "lease_until": 1, '
                  b'"holdings": []}\n{"v": 9, "type": "hello"}\n')
        answer = b""
        while answer.count(b"\n") < 3:
            answer += s.recv(4096)
    lines = answer.decode().splitlines()
    assert "not JSON" in lines[0] and "report before hello" in lines[1]
    assert "protocol version 9 is not spoken here" in lines[2]
    assert guard.process.poll() is None
    assert "dropped a message from the daemon" in guard.text()


# ---- an address in a network namespace ------------------------------------------------------


def test_an_address_in_a_network_namespace_is_removed(
        guards: Callable[..., Guard], tmp_path: Path) -> None:
    need("ip")
    ns = f"vgtest-{os.getpid()}-{next(_names)}"
    made = run("ip", "netns", "add", ns, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create network namespaces: {made.stderr.strip()}")
    try:
        # A veth pair with both ends in the namespace (not every kernel has "dummy").
        run("ip", "-n", ns, "link", "add", "vgd0", "type", "veth", "peer", "name", "vgd1")
        run("ip", "-n", ns, "link", "set", "vgd0", "up")
        # The resource's address is the primary of its subnet; the node's own is secondary
        # and must survive its removal.
        run("ip", "-n", ns, "addr", "add", "198.18.77.10/24", "dev", "vgd0")
        run("ip", "-n", ns, "addr", "add", "198.18.77.1/24", "dev", "vgd0")
        guard = guards(wrapper=("ip", "netns", "exec", ns))
        client = guard.client()
        address = Address("vgd0", "198.18.77.10/24")
        client.report(time.monotonic() + 0.3,
                      Holdings((ResourceHolding("web-ip", addresses=(address,)),)))
        report = fenced(client, "the fence of the address")
        assert report.removed == (address,)
        shown = run("ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "vgd0").stdout
        assert "198.18.77.10/" not in shown
        assert "198.18.77.1/24" in shown
        assert "removed 198.18.77.10/24 from vgd0" in guard.text()
    finally:
        run("ip", "netns", "del", ns, check=False)


# ---- a mounted filesystem -------------------------------------------------------------------


def test_a_mounted_filesystem_is_unmounted_and_its_holder_killed(
        guards: Callable[..., Guard], processes: list[subprocess.Popen[bytes]],
        tmp_path: Path) -> None:
    need("losetup", "mkfs.ext4", "mount", "unshare", "nsenter")
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(32 * 1024 * 1024)
    run("mkfs.ext4", "-q", "-F", str(image))
    attached = run("losetup", "--find", "--show", str(image), check=False)
    if attached.returncode != 0:
        pytest.skip(f"loop devices do not work here: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    guard: Guard | None = None
    try:
        # The guardian in a private mount namespace; the mount and its user in there too.
        guard = guards(wrapper=("unshare", "--mount", "--propagation", "private"))
        pid = str(guard.process.pid)
        run("nsenter", "-t", pid, "-m", "mount", device, str(mountpoint))
        run("nsenter", "-t", pid, "-m", "sh", "-c", 'echo data > "$0"/file', str(mountpoint))
        holder = start(processes, ["nsenter", "-t", pid, "-m", "/bin/sh", "-c",
                                   'exec 3<"$0"; exec sleep 1000', str(mountpoint / "file")])
        in_guard_ns = f"/proc/{pid}/mountinfo"

        def mounted() -> bool:
            return any(m.mount_point == str(mountpoint) for m in read_mountinfo(in_guard_ns))

        assert mounted()
        wait_for(lambda: holds_open(holder.pid, "/file"), "the holder to open its file")
        client = guard.client()
        held = MountHolding(str(mountpoint), device)
        client.report(time.monotonic() + 0.3,
                      Holdings((ResourceHolding("data", mounts=(held,)),)))
        report = fenced(client, "the fence of the mount")
        assert report.unmounted == (held,), report
        assert ("holders", str(mountpoint)) in {(k.kind, k.target) for k in report.killed}
        assert not mounted()
        wait_for(dead([holder.pid]), "the holder to die")
        assert f"unmounted {mountpoint}" in guard.text()
    finally:
        # The mount lives in the guardian's namespace: it goes when its last process does.
        for p in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=WAIT)
        if guard is not None:
            guard.cleanup()
        run("losetup", "-d", device, check=False)


# ---- the watchdog and the reboot ------------------------------------------------------------


def pets(watchdog: Path) -> int:
    return watchdog.read_bytes().count(b".")


def test_reboot_mode_writes_b_and_stops_petting_the_watchdog(
        guards: Callable[..., Guard], processes: list[subprocess.Popen[bytes]],
        tmp_path: Path) -> None:
    watchdog, sysrq = tmp_path / "watchdog", tmp_path / "sysrq-trigger"
    watchdog.touch()
    sysrq.touch()
    guard = guards(guardian_toml='self_fence = "reboot"\nwatchdog_interval = "50ms"',
                   args=("--watchdog-device", str(watchdog), "--sysrq-trigger", str(sysrq)))
    wait_for(lambda: pets(watchdog) >= 2, "pets with nothing held")
    worker = start(processes, ["sleep", "1000"])
    client = guard.client()
    holdings = Holdings((ResourceHolding("w", pgids=(worker.pid,)),))
    client.report(time.monotonic() + 600, holdings)
    before = pets(watchdog)
    wait_for(lambda: pets(watchdog) >= before + 3, "pets while the lease is valid")
    assert sysrq.read_bytes() == b""
    client.report(None, holdings)  # holding something without a valid lease: fenced at once
    wait_for(lambda: sysrq.read_bytes() == b"b", "the reboot through the sysrq stand-in")
    wait_for(dead([worker.pid]), "the worker to die")
    after = pets(watchdog)
    # Ten intervals later, still no pet: the hardware would reset the node (it is rebooting).
    stop = time.monotonic() + 0.5
    wait_for(lambda: time.monotonic() > stop, "ten watchdog intervals")
    assert pets(watchdog) == after
    assert "REBOOTING node" in guard.text()
    assert guard.terminate() == 0
    assert not watchdog.read_bytes().endswith(b"V")  # left armed: a reboot is under way


def test_a_clean_exit_disarms_the_watchdog(guards: Callable[..., Guard],
                                           tmp_path: Path) -> None:
    watchdog = tmp_path / "watchdog"
    watchdog.touch()
    guard = guards(guardian_toml=f'watchdog_device = "{watchdog}"\nwatchdog_interval = "50ms"')
    wait_for(lambda: pets(watchdog) >= 2, "pets with nothing held")
    assert guard.terminate() == 0
    data = watchdog.read_bytes()
    assert data.endswith(b"V") and set(data[:-1]) == {ord(".")}
    assert "disarmed (magic close)" in guard.text()


def test_a_second_guardian_for_the_same_node_refuses_to_start(
        guards: Callable[..., Guard], tmp_path: Path) -> None:
    guard = guards()
    second = subprocess.run(
        [sys.executable, "-m", "vigil.cli.main", "guard", "-c", str(guard.config), "-n",
         guard.node, "--no-realtime"], capture_output=True, text=True, timeout=WAIT, cwd=REPO)
    assert second.returncode == 1
    assert "another guardian already listens" in second.stderr
    assert guard.process.poll() is None


def test_one_daemon_a_node_and_only_for_its_own_node(guards: Callable[..., Guard]) -> None:
    guard = guards()
    first = guard.client()

    def refusal(client: GuardClient) -> str:
        events: list[GuardEvent] = []
        wait_for(lambda: events.extend(client.wait(0.05)) or any(
            isinstance(e, GuardError) for e in events), "a refusal")
        client.close(flush_timeout=0)
        return next(e.message for e in events if isinstance(e, GuardError))

    assert "is connected already; one daemon a node" in refusal(
        GuardClient(guard.socket, guard.node))
    first.close()
    wait_for(lambda: "is gone, holding nothing" in guard.text(), "the first daemon to leave")
    assert f"guards node {guard.node}, not another-node" in refusal(
        GuardClient(guard.socket, "another-node"))


def test_cgroup_kill_and_its_fallback_catch_daemonized_children(
        guards: Callable[..., Guard], processes: list[subprocess.Popen[bytes]]) -> None:
    cgroups = NodeCgroups(f"gc{os.getpid()}-{next(_names)}")
    problem = cgroups.problem()
    if problem is not None:
        pytest.skip(f"cgroup v2 is not usable here: {problem}")
    try:
        for use_cgroup_kill in (True, False):
            start(processes, cgroups.wrap("svc", [
                "/bin/sh", "-c", "setsid sh -c 'sleep 1000 & sleep 1000' & exec sleep 1000"]))
            wait_for(lambda: len(cgroups.pids("svc")) == 4, "four processes in the cgroup")
            pids = cgroups.pids()
            result = kill_cgroup(cgroups.resource_path("svc"), wait=WAIT,
                                 use_cgroup_kill=use_cgroup_kill)
            assert result.ok and result.processes == 4, result
            assert result.method == ("cgroup.kill" if use_cgroup_kill
                                     else "SIGKILL to each process")
            wait_for(dead(pids), "every process of the cgroup to die")
        assert cgroups.remove() == []
        assert cgroups.path is not None and not cgroups.path.exists()
    finally:
        cgroups.kill(wait=5.0)
        cgroups.remove()


def test_a_guardian_inside_its_own_nodes_cgroup_refuses_to_start(tmp_path: Path) -> None:
    node = f"gi{os.getpid()}-{next(_names)}"
    cgroups = NodeCgroups(node, cluster="guardtest")
    problem = cgroups.problem()
    if problem is not None:
        pytest.skip(f"cgroup v2 is not usable here: {problem}")
    config = tmp_path / "inside.toml"
    config.write_text(cluster_file(tmp_path, node))
    try:
        inside = subprocess.run(
            cgroups.wrap("oops", [sys.executable, "-m", "vigil.cli.main", "guard", "-c",
                                  str(config), "-n", node, "--no-realtime"]),
            capture_output=True, text=True, timeout=WAIT, cwd=REPO, check=False)
        assert inside.returncode == 1, inside.stderr
        assert f"runs inside {cgroups.path}, which a fence kills whole" in inside.stderr
        assert not cgroups.holds(os.getpid())
    finally:
        cgroups.kill(wait=5.0)
        cgroups.remove()
