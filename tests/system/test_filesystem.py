"""The filesystem resource type, with real loop devices, real ext4, real mounts.

Every mount happens inside a private mount namespace (tests/fs_driver.py, started under
``unshare --mount``), so nothing leaks into the machine's own mount table; each driver is one
"host". The tests that need root, loop devices or the tools skip with the reason otherwise; the
parameter checks run everywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vigil.config import ResourceConfig
from vigil.resources import proc
from vigil.resources.filesystem import FilesystemType, read_mountinfo
from vigil.resources.registry import default_registry

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent.parent / "support" / "fs_driver.py"
SBIN_PATH = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
TOOLS = ("losetup", "mkfs.ext4", "mount", "umount", "unshare", "fsck", "blkid")


def tool(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


def run(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=SBIN_PATH, LC_ALL="C")
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=False, env=env)


# -- parameter checks (no root needed) ---------------------------------------------------------


GOOD = {"device": "/dev/sdb1", "directory": "/srv/data", "fstype": "ext4"}


def problems(**params: Any) -> list[str]:
    return FilesystemType().check_params(params)


def test_good_params_have_no_problems() -> None:
    assert problems(**GOOD) == []
    assert problems(**GOOD, options="noatime,nodev", fsck=False, probe=True) == []
    assert problems(**{**GOOD, "device": "UUID=0b4e-11"}) == []
    assert problems(**{**GOOD, "device": "LABEL=shared data"}) == []


def test_missing_directory_is_named() -> None:
    found = problems(device="/dev/sdb1", fstype="ext4")
    assert len(found) == 1
    assert "'directory'" in found[0] and "missing" in found[0] and "absolute path" in found[0]


def test_relative_directory_is_refused() -> None:
    found = problems(**{**GOOD, "directory": "srv/data"})
    assert len(found) == 1
    assert "'directory'" in found[0] and "absolute path" in found[0] and "'srv/data'" in found[0]
    found = problems(**{**GOOD, "directory": "/"})
    assert len(found) == 1 and "must not be '/'" in found[0]


def test_bad_fsck_value_is_refused() -> None:
    found = problems(**GOOD, fsck="yes")
    assert found == ["parameter 'fsck' must be true or false, got 'yes'"]
    assert problems(**GOOD, probe=1) == ["parameter 'probe' must be true or false, got 1"]


def test_fsck_timeout_points_to_start_timeout() -> None:
    found = problems(**GOOD, fsck_timeout="10m")
    assert len(found) == 1
    assert "'fsck_timeout' does not exist" in found[0] and "start_timeout" in found[0]


def test_bad_device_fstype_and_options_are_explained() -> None:
    (device,) = problems(**{**GOOD, "device": "sdb1"})
    assert "'device'" in device and "'sdb1'" in device and "UUID=" in device
    (empty,) = problems(**{**GOOD, "device": "UUID="})
    assert "no value after UUID=" in empty
    (lower,) = problems(**{**GOOD, "device": "uuid=1234"})
    assert "capitals" in lower
    (auto,) = problems(**{**GOOD, "fstype": "auto"})
    assert "'fstype'" in auto and "'auto'" in auto
    (several,) = problems(**{**GOOD, "fstype": "ext4,xfs"})
    assert "one filesystem type" in several
    (bind,) = problems(**GOOD, options="bind,ro")
    assert "'bind'" in bind
    (typed,) = problems(**GOOD, options=["noatime"])
    assert "'options'" in typed and "comma-separated" in typed
    (unknown,) = problems(**GOOD, devices="/dev/sdc")
    assert "unknown parameter 'devices'" in unknown and "did you mean 'device'" in unknown


def test_all_required_params_missing_are_all_reported() -> None:
    found = problems()
    assert [p.split()[1] for p in found] == ["'device'", "'directory'", "'fstype'"]


def test_instantiate_refuses_bad_params_naming_the_resource(tmp_path: Path) -> None:
    config = ResourceConfig(name="data", type="filesystem", group="g",
                            params={"device": "/dev/sdb1", "directory": "rel", "fstype": "ext4"})
    with pytest.raises(ValueError, match=r"resource 'data' \(filesystem\).*'directory'"):
        FilesystemType().instantiate(config, "n1", tmp_path)


def test_type_defaults_and_registry() -> None:
    rtype = FilesystemType()
    assert (rtype.default_monitor().interval, rtype.default_monitor().timeout) == (20.0, 40.0)
    defaults = rtype.defaults()
    assert (defaults.start_timeout, defaults.stop_timeout) == (60.0, 60.0)
    assert isinstance(default_registry().get("filesystem"), FilesystemType)


def test_validate_reports_a_missing_device(tmp_path: Path) -> None:
    config = ResourceConfig(name="data", type="filesystem", group="g", params={
        "device": str(tmp_path / "no-such-disk"), "directory": str(tmp_path / "mnt"),
        "fstype": "ext4"})
    found = FilesystemType().validate(config)
    assert any("does not exist" in p and "no-such-disk" in p for p in found), found


def test_read_mountinfo_unescapes_paths(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_bytes(b"36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 "
                     b"/dev/root rw,errors=continue\n")
    (mount,) = read_mountinfo(str(info))
    assert mount.mount_point == "/mnt/with space"
    assert (mount.major, mount.minor, mount.root, mount.fstype, mount.source) == (
        98, 0, "/mnt1", "ext3", "/dev/root")
    assert not mount.read_only


# -- real disks in private mount namespaces ----------------------------------------------------


_usable: str | None = None  # None: not probed yet; "" usable; else why not


def require_mounts() -> None:
    """Skip unless this machine lets us make loop devices and mount namespaces."""
    global _usable
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices, mounts and mount namespaces")
    if _usable is None:
        missing = [t for t in TOOLS if tool(t) is None]
        if missing:
            _usable = f"needs {', '.join(missing)} (util-linux, e2fsprogs)"
        else:
            done = run("unshare", "--mount", "--propagation", "private", "true")
            _usable = "" if done.returncode == 0 else (
                f"cannot make a mount namespace here: {done.stderr.strip()}")
    if _usable:
        pytest.skip(_usable)


@dataclass(frozen=True)
class Disk:
    device: str  # /dev/loopN
    image: Path
    uuid: str
    label: str  # with a space, as labels may have


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    """A 32 MiB ext4 filesystem on a loop device, detached after the test."""
    require_mounts()
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(32 * 1024 * 1024)
    label = f"vt {secrets.token_hex(4)}"
    made = run("mkfs.ext4", "-q", "-F", "-L", label, str(image))
    assert made.returncode == 0, made.stderr
    attached = run("losetup", "--find", "--show", str(image))
    if attached.returncode != 0:
        pytest.skip(f"loop devices do not work here: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        uuid = run("blkid", "-p", "-o", "value", "-s", "UUID", device).stdout.strip()
        yield Disk(device, image, uuid, label)
    finally:
        # Mounts live in the drivers' namespaces, gone by now; this is in case one leaked.
        rdev = os.stat(device).st_rdev
        for mount in reversed(read_mountinfo()):
            if (mount.major, mount.minor) == (os.major(rdev), os.minor(rdev)):
                run("umount", mount.mount_point)
        run("losetup", "-d", device)
        image.unlink()  # 32 MiB each; pytest keeps the last runs' directories


class Host:
    """One fs_driver.py in its own mount namespace."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.name = name
        self.log = tmp_path / f"{name}.stderr"
        env = dict(os.environ, PATH=SBIN_PATH,
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", sys.executable, str(DRIVER)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=REPO, env=env)

    def call(self, op: str, timeout: float = 60.0, **args: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            status = self.process.poll()
            what = f"within {timeout}s" if status is None else f"(it ended with status {status})"
            raise AssertionError(f"host {self.name}: no answer to {op} {what}; stderr: "
                                 f"{self.log.read_text()[-2000:]}")
        reply = json.loads(line)
        if isinstance(reply, dict) and "error" in reply:
            raise AssertionError(f"host {self.name}: {op} raised {reply['error']}")
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # the driver cleans up and exits
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Callable[[str], Host]]:
    made: list[Host] = []

    def make(name: str = "a") -> Host:
        host = Host(tmp_path, name)
        made.append(host)
        return host

    try:
        yield make
    finally:
        for host in made:
            host.close()


@pytest.fixture
def host(hosts: Callable[[str], Host]) -> Host:
    return hosts("a")


def configure(host: Host, disk: Disk, mnt: Path, name: str = "data", **extra: Any) -> None:
    timeouts = {k: extra.pop(k) for k in ("start_timeout", "stop_timeout", "monitor_timeout")
                if k in extra}
    params = {"device": disk.device, "directory": str(mnt), "fstype": "ext4", **extra}
    host.call("configure", name=name, params=params, **timeouts)


def op(host: Host, what: str, name: str = "data") -> dict[str, Any]:
    reply: dict[str, Any] = host.call(what, name=name)
    return reply


def mounted_here(directory: Path) -> bool:
    return any(m.mount_point == str(directory) for m in read_mountinfo())


def test_start_mounts_monitor_probes_stop_unmounts_and_data_survives(
        disk: Disk, host: Host, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"  # does not exist yet: start creates it
    configure(host, disk, mnt)
    assert op(host, "monitor") == {"ok": True, "state": "oos",
                                   "reason": f"not mounted on {mnt}"}
    started = op(host, "start")
    assert started["ok"] and started["state"] == "in_service", started
    assert "fsck: clean" in started["reason"]
    (mount,) = host.call("mounts", directory=str(mnt))
    assert (mount["source"], mount["fstype"]) == (disk.device, "ext4")
    assert not mounted_here(mnt), "the mount leaked out of the driver's namespace"

    checked = op(host, "monitor")
    assert checked["ok"] and checked["state"] == "in_service" and "probe ok" in checked["reason"]
    assert host.call("listdir", path=str(mnt)) == ["lost+found"]  # the probe cleaned up

    host.call("write", path=str(mnt / "data.txt"), text="kept on the disk")
    stopped = op(host, "stop")
    assert stopped == {"ok": True, "state": "oos", "reason": f"unmounted {mnt}"}
    assert host.call("mounts", directory=str(mnt)) == []
    assert host.call("read", path=str(mnt / "data.txt")) is None  # it was on the disk
    assert op(host, "stop")["reason"] == "already out of service"

    assert op(host, "start")["ok"]
    assert host.call("read", path=str(mnt / "data.txt")) == "kept on the disk"


def test_start_of_a_mounted_disk_is_idempotent(disk: Disk, host: Host, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    configure(host, disk, mnt)
    assert op(host, "start")["ok"]
    assert op(host, "start")["reason"] == "already in service"
    # A fresh resource object, as after a daemon restart, finds it mounted and does nothing.
    configure(host, disk, mnt)
    again = op(host, "start")
    assert again == {"ok": True, "state": "in_service",
                     "reason": f"{disk.device} was already mounted on {mnt}"}
    assert len(host.call("mounts", directory=str(mnt))) == 1
    configure(host, disk, mnt)
    assert op(host, "monitor")["state"] == "in_service"  # adopted after a restart


@pytest.mark.parametrize("tag", ["UUID", "LABEL"])
def test_start_by_uuid_or_label(disk: Disk, host: Host, tmp_path: Path, tag: str) -> None:
    mnt = tmp_path / "mnt"
    device = f"UUID={disk.uuid}" if tag == "UUID" else f"LABEL={disk.label}"
    host.call("configure", name="data", params={
        "device": device, "directory": str(mnt), "fstype": "ext4"})
    started = op(host, "start")
    assert started["ok"] and f"{device} ({disk.device})" in started["reason"], started
    # A fresh object (a restarted daemon) looks the tag up again to recognise its mount.
    host.call("configure", name="data", params={
        "device": device, "directory": str(mnt), "fstype": "ext4"})
    assert op(host, "monitor")["state"] == "in_service"
    assert op(host, "stop")["ok"]
    assert host.call("mounts", directory=str(mnt)) == []


def test_start_fails_when_something_else_is_mounted_there(
        disk: Disk, host: Host, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert host.call("run", argv=["mount", "-t", "tmpfs", "scratch", str(mnt)])["returncode"] == 0
    configure(host, disk, mnt)
    failed = op(host, "start")
    assert not failed["ok"] and failed["state"] == "failed"
    assert f"scratch (tmpfs) is mounted on {mnt}" in failed["reason"]
    # The stop that recovers it leaves the other mount alone.
    stopped = op(host, "stop")
    assert stopped["ok"] and "scratch (tmpfs) is mounted there, left alone" in stopped["reason"]
    assert [m["fstype"] for m in host.call("mounts", directory=str(mnt))] == ["tmpfs"]


def test_wrong_fstype_fails_with_mounts_message(disk: Disk, host: Host, tmp_path: Path) -> None:
    wrong = "xfs" if "xfs" in Path("/proc/filesystems").read_text().split() else "vfat"
    configure(host, disk, tmp_path / "mnt", fstype=wrong, fsck=False)
    failed = op(host, "start")
    assert not failed["ok"] and failed["state"] == "failed"
    assert f"'mount -t {wrong} {disk.device}" in failed["reason"]
    assert "exit code 32" in failed["reason"]
    assert "wrong fs type" in failed["reason"] or "unknown filesystem type" in failed["reason"]


def test_missing_device_or_not_a_block_device_fails(
        disk: Disk, host: Host, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-disk"
    host.call("configure", name="data", params={
        "device": str(missing), "directory": str(tmp_path / "mnt"), "fstype": "ext4"})
    failed = op(host, "start")
    assert failed == {"ok": False, "state": "failed",
                      "reason": f"cannot mount: device {missing} does not exist"}
    host.call("configure", name="data", params={
        "device": str(disk.image), "directory": str(tmp_path / "mnt"), "fstype": "ext4"})
    failed = op(host, "start")
    assert failed["reason"] == f"cannot mount: device {disk.image} is not a block device"
    host.call("configure", name="data", params={
        "device": "UUID=00000000-dead-beef-0000-000000000000",
        "directory": str(tmp_path / "mnt"), "fstype": "ext4"})
    assert "no block device with UUID=00000000-dead" in op(host, "start")["reason"]


def test_fsck_runs_before_mounting_and_repairs(disk: Disk, host: Host, tmp_path: Path) -> None:
    if tool("debugfs") is None:
        pytest.skip("needs debugfs (e2fsprogs) to mark the filesystem not clean")
    # As after a crash: the superblock says "not clean", so e2fsck -p checks it and exits 1.
    marked = run("debugfs", "-w", "-R", "ssv state 0", disk.device)
    assert marked.returncode == 0, marked.stderr
    configure(host, disk, tmp_path / "mnt")
    started = op(host, "start")
    assert started["ok"], started
    assert "fsck repaired errors" in started["reason"]
    assert "was not cleanly unmounted, check forced" in started["reason"]


def test_fsck_failure_fails_the_start(disk: Disk, host: Host, tmp_path: Path) -> None:
    # No filesystem any more (the superblock zeroed): e2fsck -p gives up with exit code 8.
    fd = os.open(disk.device, os.O_WRONLY)
    try:
        os.write(fd, bytes(1024 * 1024))
        os.fsync(fd)
    finally:
        os.close(fd)
    mnt = tmp_path / "mnt"
    configure(host, disk, mnt)
    failed = op(host, "start")
    assert not failed["ok"] and failed["state"] == "failed"
    assert f"'fsck -a -t ext4 {disk.device}' failed with exit code 8 (operational error)" in (
        failed["reason"])
    assert "Bad magic number in super-block" in failed["reason"]
    assert host.call("mounts", directory=str(mnt)) == []


def test_graceful_stop_kills_a_process_working_in_the_mount(
        disk: Disk, host: Host, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    configure(host, disk, mnt, stop_timeout=1.0)
    assert op(host, "start")["ok"]
    pid = host.call("spawn", argv=["sleep", "600"], cwd=str(mnt))
    stopped = op(host, "stop")
    assert stopped["ok"] and stopped["state"] == "oos", stopped
    assert "target is busy" in stopped["reason"]
    assert f"pid {pid} (sleep 600: cwd)" in stopped["reason"]
    assert not host.call("alive", pid=pid)
    assert host.call("mounts", directory=str(mnt)) == []


def test_force_oos_kills_a_process_holding_a_file(
        disk: Disk, host: Host, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    configure(host, disk, mnt)
    assert op(host, "start")["ok"]
    host.call("write", path=str(mnt / "log"), text="x")
    pid = host.call("spawn", argv=["sleep", "600"], cwd="/", hold=str(mnt / "log"))
    stopped = op(host, "force_stop")
    assert stopped["ok"] and stopped["state"] == "oos", stopped
    assert f"pid {pid} (sleep 600: open file {mnt / 'log'})" in stopped["reason"]
    assert not host.call("alive", pid=pid)
    assert host.call("mounts", directory=str(mnt)) == []


def test_stop_never_kills_the_daemon_and_fails_unclean(
        disk: Disk, host: Host, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    configure(host, disk, mnt)
    assert op(host, "start")["ok"]
    host.call("write", path=str(mnt / "log"), text="x")
    host.call("hold", path=str(mnt / "log"))  # the "daemon" itself keeps the disk busy
    driver_pid = host.call("pid")
    stopped = op(host, "force_stop")
    assert not stopped["ok"] and stopped["state"] == "unclean", stopped
    assert f"pid {driver_pid} (" in stopped["reason"]
    assert "this daemon itself: open file" in stopped["reason"]
    assert "fence this node" in stopped["reason"]
    assert host.call("pid") == driver_pid  # alive and answering
    assert len(host.call("mounts", directory=str(mnt))) == 1
    host.call("release")
    op(host, "mark_oos")  # as after fencing; the driver unmounts on exit


def test_monitor_fails_when_unmounted_behind_its_back(
        disk: Disk, host: Host, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    configure(host, disk, mnt)
    assert op(host, "start")["ok"]
    assert host.call("run", argv=["umount", str(mnt)])["returncode"] == 0
    checked = op(host, "monitor")
    assert checked == {"ok": False, "state": "failed",
                       "reason": f"{disk.device} is no longer mounted on {mnt}"}
    assert op(host, "stop")["ok"]  # recovery: nothing left to unmount


def test_monitor_fails_when_remounted_read_only(disk: Disk, host: Host, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    configure(host, disk, mnt)
    assert op(host, "start")["ok"]
    remount = host.call("run", argv=["mount", "-o", "remount,ro", str(mnt)])
    assert remount["returncode"] == 0, remount
    checked = op(host, "monitor")
    assert not checked["ok"] and checked["state"] == "failed"
    assert "is mounted read-only" in checked["reason"]
    assert op(host, "stop")["ok"]


def test_read_only_mount_is_probed_by_reading(disk: Disk, host: Host, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    configure(host, disk, mnt, options="ro,noatime")
    assert op(host, "start")["ok"]
    (mount,) = host.call("mounts", directory=str(mnt))
    assert mount["options"].split(",")[0] == "ro"
    checked = op(host, "monitor")
    assert checked["ok"] and checked["state"] == "in_service" and "probe ok" in checked["reason"]


def test_hung_disk_makes_the_monitor_fail_after_its_timeout(
        disk: Disk, host: Host, tmp_path: Path) -> None:
    if tool("fsfreeze") is None:
        pytest.skip("needs fsfreeze (util-linux) to make the disk hang")
    mnt = tmp_path / "mnt"
    configure(host, disk, mnt, monitor_timeout=1.0)
    assert op(host, "start")["ok"]
    frozen = host.call("run", argv=["fsfreeze", "-f", str(mnt)])
    assert frozen["returncode"] == 0, frozen
    try:
        checked = op(host, "monitor")
        assert not checked["ok"] and checked["state"] == "failed"
        assert "did not finish within the monitor timeout (1s)" in checked["reason"]
        # The stuck probe is not piled up on: the next monitor says it is still stuck.
        again = op(host, "monitor")
        assert "still stuck" in again["reason"] or "did not finish" in again["reason"]
    finally:
        host.call("run", argv=["fsfreeze", "-u", str(mnt)])
    assert op(host, "stop")["ok"]


def test_a_second_host_cannot_mount_the_disk_while_the_first_has_it(
        disk: Disk, hosts: Callable[[str], Host], tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    a, b = hosts("a"), hosts("b")
    configure(a, disk, mnt)
    configure(b, disk, mnt)
    assert op(a, "start")["ok"]
    refused = op(b, "start")
    assert not refused["ok"] and refused["state"] == "failed"
    assert f"{disk.device} is in use: mounted in another mount namespace" in refused["reason"]
    assert b.call("mounts", directory=str(mnt)) == []
    assert op(a, "stop")["ok"]
    assert op(b, "stop")["ok"]  # recovery of b's failed start: nothing mounted there
    assert op(b, "start")["ok"]
    assert b.call("mounts", directory=str(mnt))[0]["source"] == disk.device


def test_stop_is_unclean_while_a_copy_of_the_mount_lives_elsewhere(
        disk: Disk, host: Host, tmp_path: Path) -> None:
    if tool("nsenter") is None:
        pytest.skip("needs nsenter (util-linux)")
    mnt = tmp_path / "mnt"
    configure(host, disk, mnt)
    assert op(host, "start")["ok"]
    # Like a container started while the disk was mounted: a new mount namespace made from
    # the host's gets its own copy of the mount.
    copy = proc.spawn(["nsenter", "-t", str(host.call("pid")), "-m", "--", "unshare",
                       "--mount", "--propagation", "private", "sleep", "600"],
                      env=dict(os.environ, PATH=SBIN_PATH))
    try:
        assert proc.wait_until(
            lambda: f" {mnt} " in Path(f"/proc/{copy.pid}/mountinfo").read_text()
            and Path(f"/proc/{copy.pid}/exe").resolve().name == "sleep", 10.0)
        stopped = op(host, "stop")
        assert not stopped["ok"] and stopped["state"] == "unclean", stopped
        assert stopped["reason"].startswith(f"unmounted {mnt}, but {disk.device} is in use")
        assert "would corrupt it" in stopped["reason"]
    finally:
        copy.kill()
        copy.wait(timeout=10)
    op(host, "mark_oos")
    configure(host, disk, mnt)
    started = op(host, "start")  # the device is free again
    assert started["ok"], started


def test_force_stop_of_a_never_started_resource_is_oos(
        disk: Disk, host: Host, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    configure(host, disk, mnt)
    stopped = op(host, "force_stop")
    assert stopped["ok"] and stopped["state"] == "oos"
    assert stopped["reason"] == f"not mounted on {mnt}"


def test_stop_unmounts_what_is_mounted_below_the_directory(
        disk: Disk, host: Host, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    configure(host, disk, mnt, stop_timeout=1.0)
    assert op(host, "start")["ok"]
    host.call("run", argv=["mkdir", str(mnt / "sub")])
    assert host.call("run", argv=["mount", "-t", "tmpfs", "inner", str(mnt / "sub")])[
        "returncode"] == 0
    stopped = op(host, "stop")
    assert stopped["ok"] and stopped["state"] == "oos", stopped
    assert host.call("mounts", directory=str(mnt)) == []


def test_a_mount_over_ours_fails_the_monitor_and_the_stop_removes_both(
        disk: Disk, host: Host, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    configure(host, disk, mnt)
    assert op(host, "start")["ok"]
    assert host.call("run", argv=["mount", "-t", "tmpfs", "cover", str(mnt)])["returncode"] == 0
    checked = op(host, "monitor")
    assert not checked["ok"] and checked["state"] == "failed"
    assert checked["reason"] == (f"{disk.device} is mounted on {mnt} but hidden by cover (tmpfs) "
                                 "mounted over it")
    stopped = op(host, "force_stop")
    assert stopped["ok"] and stopped["state"] == "oos", stopped
    assert host.call("mounts", directory=str(mnt)) == []
