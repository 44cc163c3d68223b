"""The filesystem resource type: a shared disk mounted on the node that runs the service.

Start checks the disk (``fsck``) and mounts it; stop unmounts it, killing the processes that
keep it busy if need be; monitor checks that it is still mounted and, by writing and reading
back a small file, that it still works. Everything acts in the mount namespace of the daemon's
process: run the daemon in a node's own mount namespace and the mount lands there. Needs root.

Parameters:

``device`` (required)
    The disk: a block device path (``"/dev/sdb1"``, ``"/dev/disk/by-id/..."``), or
    ``"UUID=..."``, ``"LABEL=..."``, ``"PARTUUID=..."`` or ``"PARTLABEL=..."``, looked up at
    every start (in udev's ``/dev/disk/by-*`` links, or else by probing the block devices with
    ``blkid -p``; several devices with the same tag are an error, except that a device held by
    another, such as a multipath path, gives way to the one built on it).
``directory`` (required)
    The mount point, an absolute path (not ``/``). Created, with its parents, if missing. Its
    last component must not be a symbolic link (give the real path).
``fstype`` (required)
    The filesystem type, e.g. ``"ext4"`` or ``"xfs"``. ``"auto"`` is refused: a disk that no
    longer holds the filesystem it should must not be mounted as whatever it looks like.
``options``
    Mount options as ``mount -o`` takes them, e.g. ``"noatime,nodev"`` (default ``""``: the
    filesystem's defaults). ``remount``, ``bind``, ``rbind`` and ``move`` are refused. With
    ``ro`` the monitor probe only reads.
``fsck``
    ``true`` (default) or ``false``: run ``fsck -a -t <fstype> <device>`` before mounting.
    Exit codes 0 (clean) and 1 (errors repaired, said in the start's reason) let the start
    go on; 2 or 3 (repaired, but the system should be rebooted) and 4 or more (errors left,
    operational error) make it fail, with fsck's last lines in the reason. fsck has no
    timeout of its own: it runs within the resource's ``start_timeout``, which is therefore
    60 s by default; raise it for a large disk (a start that times out kills fsck and fails).
``probe``
    ``true`` (default) or ``false``: every monitor creates ``.vigil-probe-<node>`` in the
    directory, writes a few bytes, fsyncs, reads them back and deletes it. The probe runs in a
    child process with the monitor timeout, so that a hung disk or server cannot hang the
    daemon: it makes the monitor FAILED after ``monitor.timeout``. A full disk (ENOSPC,
    EDQUOT) does not fail the probe: another node would not do better with the same disk.

Start, in this order: finds the device (it must be a block device); if the device is already
mounted on the directory it succeeds at once, and if something else is mounted there it fails,
naming it. It creates the directory, refuses a device that is in use (opened exclusively, which
a mounted filesystem is, also in another mount namespace: on one machine running several test
nodes that is "mounted by another node"), runs fsck, and mounts with ``mount(8)`` (not
``mount(2)``: mount(8) turns the options string into flags and data exactly as the system does
everywhere else, and runs mount helpers such as ``mount.nfs``). A start that times out or is
cancelled kills what it runs (fsck and mount get SIGTERM and :data:`TOOL_TERM_GRACE` before
SIGKILL) and unmounts what it mounted.

Stop runs ``umount <directory>``. While the filesystem is busy a graceful stop retries every
0.5 s for half its ``stop_timeout``; then, like a forced stop (``force_oos``) at once, it unmounts
what is mounted below or on top of the directory, finds the processes using the filesystem (in
``/proc/*``: working directory, root, executable, open files, memory-mapped files), sends them
SIGTERM, SIGKILL after 2 s, and unmounts (up to three rounds, in case new users come). It never
signals the daemon itself or PID 1. A directory where the device is not mounted is stopped. A
filesystem that cannot be unmounted makes the stop fail (UNCLEAN), naming the processes that
hold it. There is deliberately no lazy unmount (``umount -l``): it detaches the directory but
leaves the filesystem in use by whoever holds it, so the disk would be written by this node
while another node mounts it, which corrupts it. Fencing this node is the safe way out, and
UNCLEAN is what asks for it. For the same reason, after unmounting, the stop checks that the
device is free (not held open exclusively); a copy of the mount that lives on in another mount
namespace (a container or service started while it was mounted) or another mount of the device
makes the stop UNCLEAN too.

Monitor: IN_SERVICE when the device is mounted on the directory (the topmost mount there),
read-write unless ``ro`` was asked for (the kernel remounts a filesystem read-only after I/O
errors), and the probe succeeds. Nothing mounted is out of service (OOS), unless the resource
is believed in service: then it is FAILED ("... is no longer mounted on ..."). ``monitor.depth``
is not used. Defaults (as ocf:heartbeat:Filesystem): monitor every 20 s with a 40 s timeout;
start and stop timeouts 60 s.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vigil.config import MonitorConfig, ParamValue, ResourceConfig, TypeDefaults
from vigil.guard.holdings import MountHolding, ResourceHolding
from vigil.resources import proc
from vigil.resources.model import OpResult, Resource, ResourceType, ServiceState, unknown_params
from vigil.resources.mountinfo import Holder, Mount, find_holders, read_mountinfo, under

__all__ = [
    "FilesystemResource",
    "FilesystemType",
    "Holder",
    "Mount",
    "find_holders",
    "read_mountinfo",
]

log = logging.getLogger(__name__)

_PARAMS: Final = ("device", "directory", "fsck", "fstype", "options", "probe")
_DEVICE_TAGS: Final = ("UUID", "LABEL", "PARTUUID", "PARTLABEL")
_UDEV_DIRS: Final = {"UUID": "by-uuid", "LABEL": "by-label", "PARTUUID": "by-partuuid",
                     "PARTLABEL": "by-partlabel"}
_BLKID_KEYS: Final = {"UUID": "UUID", "LABEL": "LABEL", "PARTUUID": "PART_ENTRY_UUID",
                      "PARTLABEL": "PART_ENTRY_NAME"}
_FSTYPE_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.+-]*")
#: Options that make mount(8) do something other than mount a filesystem.
_FORBIDDEN_OPTIONS: Final = ("bind", "move", "rbind", "remount")

#: How long holders get between SIGTERM and SIGKILL.
TERM_GRACE: Final = 2.0
#: How long a holder may survive SIGKILL (e.g. in uninterruptible I/O) before we give up on it.
KILL_WAIT: Final = 5.0
#: How long fsck and mount get to stop cleanly on SIGTERM when interrupted or out of time.
TOOL_TERM_GRACE: Final = 1.0
#: How long a killed tool (or probe) may survive SIGKILL before it is left behind as stuck.
TOOL_KILL_WAIT: Final = 1.0
#: fsck and mount say what went wrong at the start of their output: keep plenty of it.
_TOOL_OUTPUT_LIMIT: Final = 1024 * 1024
#: Rounds of "kill the holders, unmount" before a stop gives up.
KILL_ROUNDS: Final = 3
#: How long a stop waits for the device to be released after the unmount.
RELEASE_WAIT: Final = 1.0
_RETRY: Final = 0.5
_UMOUNT_PASSES: Final = 8
_POLL: Final = 0.1
_BLKID_TIMEOUT: Final = 10.0

# The probe runs in a child so that a hung filesystem blocks that child, not a daemon thread
# (a thread stuck in uninterruptible I/O can neither be interrupted nor abandoned cleanly).
# Exit 3: the disk is full, which the monitor does not count as a failure. The mounted
# filesystem may be writable by users: whatever is at the probe's name (a stale probe, a link
# planted there) is removed, and the probe made anew (O_EXCL, O_NOFOLLOW), never followed.
_PROBE_WRITE: Final = """
import errno, os, sys
path, token = sys.argv[1], sys.argv[2].encode()
step = "create"
try:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        step = "write"
        os.write(fd, token)
        step = "fsync"
        os.fsync(fd)
    finally:
        os.close(fd)
    step = "read back"
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
        data = f.read()
    step = "delete"
    os.unlink(path)
except OSError as e:
    print(f"{step} {path}: {e.strerror or e}")
    sys.exit(3 if e.errno in (errno.ENOSPC, errno.EDQUOT) else 1)
if data != token:
    print(f"read back {data[:40]!r} from {path}, wrote {token!r}")
    sys.exit(1)
"""
_PROBE_READ: Final = """
import os, sys
try:
    os.listdir(sys.argv[1])
    os.statvfs(sys.argv[1])
except OSError as e:
    print(f"list {sys.argv[1]}: {e.strerror or e}")
    sys.exit(1)
"""
_PROBE_DISK_FULL: Final = 3
#: The exit code :func:`_run` reports for a program it could not start (as a shell does).
_NOT_RUN: Final = 127

# fsck(8) exit status bits (1 and 2 are handled separately).
_FSCK_BITS: Final = (
    (4, "filesystem errors left uncorrected"),
    (8, "operational error"),
    (16, "usage or syntax error"),
    (32, "checking canceled"),
    (128, "shared-library error"),
)


# -- the mount table --------------------------------------------------------------------------




def _stack(mounts: Iterable[Mount], mount_point: str) -> list[Mount]:
    """The mounts on ``mount_point``, bottom first (only the last one is visible)."""
    here = [m for m in mounts if m.mount_point == mount_point]
    ids = {m.mount_id for m in here}
    above = {m.parent_id: m for m in here if m.parent_id in ids}
    stack = [m for m in here if m.parent_id not in ids][:1]
    while stack and stack[-1].mount_id in above and len(stack) <= len(here):
        stack.append(above[stack[-1].mount_id])
    # Anything the parent chain missed (not expected) still counts as mounted there.
    return stack + [m for m in here if m not in stack]


def _kill(holders: list[Holder]) -> list[int]:
    """SIGTERM, then SIGKILL after :data:`TERM_GRACE`; the PIDs still alive after that."""
    targets: dict[int, int | None] = {}  # pid -> pidfd
    for holder in holders:
        if holder.pid in (os.getpid(), 1):
            continue  # never the daemon, never init
        # A pidfd pins the process: a PID reused while we wait cannot be signalled by mistake.
        try:
            targets[holder.pid] = os.pidfd_open(holder.pid)
        except ProcessLookupError:
            continue
        except OSError:
            targets[holder.pid] = None

    def send(pid: int, sig: signal.Signals) -> None:
        pidfd = targets[pid]
        with contextlib.suppress(ProcessLookupError):
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(pid, sig)

    def alive() -> list[int]:
        return [pid for pid in targets if proc.pid_alive(pid)]

    try:
        for pid in targets:
            send(pid, signal.SIGTERM)
        if not proc.wait_until(lambda: not alive(), TERM_GRACE, interval=_POLL / 2):
            for pid in alive():
                log.warning("pid %d still uses the filesystem %.0fs after SIGTERM: SIGKILL",
                            pid, TERM_GRACE)
                send(pid, signal.SIGKILL)
            proc.wait_until(lambda: not alive(), KILL_WAIT, interval=_POLL / 2)
        return alive()
    finally:
        for pidfd in targets.values():
            if pidfd is not None:
                os.close(pidfd)


# -- running the system's tools ---------------------------------------------------------------


def _which(program: str) -> str | None:
    return shutil.which(program, path=proc.tool_environment()["PATH"])


@dataclass(frozen=True, slots=True)
class _Ran:
    returncode: int | None  # None: killed (timeout or cancel)
    output: str
    cancelled: bool = False
    stuck: tuple[int, ...] = ()  # survived SIGKILL (uninterruptible I/O)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def lines(self) -> list[str]:
        return [line.strip() for line in self.output.splitlines() if line.strip()
                and not line.lstrip().startswith(("fsck from ", "dmesg(1) may have"))]

    def tail(self, lines: int = 3) -> str:
        return " | ".join(self.lines()[-lines:])

    def summary(self, limit: int = 300) -> str:
        """The output on one line; when long, its start (where fsck and mount say what went
        wrong) and its last line."""
        kept = self.lines()
        text = " | ".join(kept)
        if len(text) > limit and len(kept) > 3:
            text = " | ".join([*kept[:2], "...", kept[-1]])
        return text if len(text) <= limit else text[:limit - 3] + "..."


def _run(argv: list[str], timeout: float, cancel: threading.Event | None = None, *,
         term_grace: float = 0.0) -> _Ran:
    """Run one of the system's tools with :func:`proc.run`, stdout and stderr together (fsck
    and mount interleave them). A group that survives SIGKILL (a process in uninterruptible
    I/O on a hung disk) is waited for only :data:`TOOL_KILL_WAIT`, then returned in ``stuck``,
    so that a monitor is never held up much past its timeout."""
    ran = proc.run(argv, timeout=max(0.0, timeout), cancel=cancel, term_grace=term_grace,
                   kill_wait=TOOL_KILL_WAIT, env=proc.tool_environment(), merge_stderr=True,
                   stdout_limit=_TOOL_OUTPUT_LIMIT)
    if ran.start_error is not None:
        return _Ran(_NOT_RUN, ran.start_problem())
    return _Ran(ran.returncode, ran.stdout, cancelled=ran.cancelled, stuck=ran.stuck)


def _describe_fsck_code(code: int) -> str:
    meanings = [text for bit, text in _FSCK_BITS if code & bit]
    return f"exit code {code}" + (f" ({', '.join(meanings)})" if meanings else "")


# -- parameters -------------------------------------------------------------------------------


def _device_problem(value: ParamValue) -> str | None:
    hint = ('a block device path such as "/dev/sdb1", or "UUID=...", "LABEL=...", '
            '"PARTUUID=..." or "PARTLABEL=..."')
    if not isinstance(value, str):
        return f"parameter 'device' must be {hint}, got {value!r}"
    if "\0" in value:
        return "parameter 'device' must not contain a NUL character"
    tag, sep, rest = value.partition("=")
    if sep and tag in _DEVICE_TAGS:
        if not rest.strip():
            return f"parameter 'device' {value!r} gives no value after {tag}="
        return None
    if sep and tag.upper() in _DEVICE_TAGS:
        return f"parameter 'device': write {tag.upper()}= in capitals, got {value!r}"
    if not value.startswith("/"):
        return f"parameter 'device' must be {hint}, got {value!r}"
    return None


def _directory_problem(value: ParamValue) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return (f"parameter 'directory' must be the mount point, an absolute path such as "
                f"\"/srv/data\", got {value!r}")
    if "\0" in value:
        return "parameter 'directory' must not contain a NUL character"
    if not value.startswith("/"):
        return (f"parameter 'directory' must be an absolute path such as \"/srv/data\", got "
                f"{value!r} (a relative path would depend on the daemon's working directory)")
    if os.path.normpath(value) in ("/", "//"):
        return "parameter 'directory' must not be '/': mounting over it would hide the system"
    return None


def _fstype_problem(value: ParamValue) -> str | None:
    if not isinstance(value, str) or not _FSTYPE_RE.fullmatch(value):
        return (f"parameter 'fstype' must be one filesystem type such as \"ext4\" or \"xfs\", "
                f"got {value!r}")
    if value == "auto":
        return ("parameter 'fstype' must name the filesystem type (e.g. \"ext4\"), not 'auto': "
                "a disk must be checked and mounted as what it is supposed to hold")
    return None


def _options_problem(value: ParamValue) -> str | None:
    if not isinstance(value, str):
        return (f"parameter 'options' must be a string of comma-separated mount options such "
                f"as \"noatime,nodev\", got {value!r}")
    if "\0" in value or "\n" in value:
        return "parameter 'options' must not contain NUL or newline characters"
    bad = [o for o in _option_list(value) if o in _FORBIDDEN_OPTIONS]
    if bad:
        return (f"parameter 'options' must not contain {', '.join(repr(b) for b in bad)}: the "
                "filesystem resource mounts a device; it does not remount, bind or move")
    return None


def _option_list(options: str) -> list[str]:
    return [o.strip() for o in options.split(",") if o.strip()]


def _flag_problem(params: Mapping[str, ParamValue], key: str) -> str | None:
    if key in params and not isinstance(params[key], bool):
        return f"parameter {key!r} must be true or false, got {params[key]!r}"
    return None


class FilesystemType(ResourceType):
    """Factory of :class:`FilesystemResource` (``type = "filesystem"``)."""

    def typename(self) -> str:
        return "filesystem"

    def instantiate(
        self, config: ResourceConfig, node: str, runtime_dir: Path
    ) -> FilesystemResource:
        return FilesystemResource(self, config, node, runtime_dir)

    def check_params(self, params: Mapping[str, ParamValue]) -> list[str]:
        problems = unknown_params({k: v for k, v in params.items() if k != "fsck_timeout"},
                                  _PARAMS)
        if "fsck_timeout" in params:
            problems.append("parameter 'fsck_timeout' does not exist: fsck runs within the "
                            "resource's start_timeout; raise start_timeout for a large disk")
        required = {
            "device": 'the disk to mount: a block device such as "/dev/sdb1", or "UUID=..." '
                      'or "LABEL=..."',
            "directory": 'the mount point, an absolute path such as "/srv/data"',
            "fstype": 'the filesystem type, e.g. "ext4" or "xfs"',
        }
        for key, what in required.items():
            if key not in params:
                problems.append(f"parameter {key!r} ({what}) is missing")
        checks = {"device": _device_problem, "directory": _directory_problem,
                  "fstype": _fstype_problem, "options": _options_problem}
        for key, check in checks.items():
            if key in params:
                problem = check(params[key])
                if problem is not None:
                    problems.append(problem)
        for key in ("fsck", "probe"):
            problem = _flag_problem(params, key)
            if problem is not None:
                problems.append(problem)
        return problems

    def default_monitor(self) -> MonitorConfig:
        return MonitorConfig(interval=20.0, timeout=40.0)

    def defaults(self) -> TypeDefaults:
        # fsck of a large disk takes time, and it runs within start_timeout.
        return TypeDefaults(self.default_monitor(), start_timeout=60.0, stop_timeout=60.0)

    def validate(self, config: ResourceConfig) -> list[str]:
        problems = self.check_params(config.params)
        if problems:
            return problems
        params = config.params
        device, fstype = str(params["device"]), str(params["fstype"])
        tools = ["mount", "umount"] + (["fsck"] if params.get("fsck", True) else [])
        problems += [f"the program {tool!r} is not installed (needed to mount {device})"
                     for tool in tools if _which(tool) is None]
        path, problem = _resolve_device(device, _BLKID_TIMEOUT)
        if problem is None and path is not None:
            _, problem = _device_number(path, device)
        if problem is not None:
            problems.append(problem)
        if not _fstype_known(fstype):
            problems.append(f"filesystem type {fstype!r} is not known here: it is not in "
                            f"/proc/filesystems, no kernel module {fstype}.ko is listed and "
                            f"there is no mount.{fstype} helper")
        if params.get("fsck", True) and _which(f"fsck.{fstype}") is None:
            problems.append(f"fsck = true, but there is no fsck.{fstype} program (fsck would "
                            f"check nothing); install it or set fsck = false")
        directory = os.path.normpath(str(params["directory"]))
        if os.path.lexists(directory) and not os.path.isdir(directory):
            problems.append(f"directory {directory} exists and is not a directory")
        return problems


def _fstype_known(fstype: str) -> bool:
    try:
        with open("/proc/filesystems") as f:
            if any(line.split()[-1:] == [fstype] for line in f):
                return True
    except OSError:
        return True  # cannot tell: do not complain
    if _which(f"mount.{fstype}") is not None:
        return True
    modules_dep = Path("/lib/modules", os.uname().release, "modules.dep")
    try:
        listing = modules_dep.read_text(errors="replace")
    except OSError:
        return True  # no module list (a container): mount may still load one
    return any(line.split(":", 1)[0].rsplit("/", 1)[-1].split(".ko")[0] == fstype
               for line in listing.splitlines())


def _udev_encode(value: str) -> str:
    # How udev names /dev/disk/by-label/... links: unsafe bytes become \xNN.
    safe = b"#+-.:=@_"
    out = bytearray()
    for byte in value.encode():
        if byte >= 0x80 or chr(byte).isalnum() or byte in safe:
            out.append(byte)
        else:
            out += b"\\x%02x" % byte
    return out.decode(errors="surrogateescape")


def _block_devices() -> list[tuple[str, bool]]:
    """Every block device with a size: (its /dev path, whether another device holds it)."""
    devices = []
    try:
        names = sorted(os.listdir("/sys/class/block"))
    except OSError:
        return []
    for name in names:
        base = f"/sys/class/block/{name}"
        try:
            if int(Path(base, "size").read_text().strip() or "0") == 0:
                continue
            held = bool(os.listdir(f"{base}/holders"))
        except (OSError, ValueError):
            continue
        devices.append(("/dev/" + name.replace("!", "/"), held))
    return devices


def _parse_export(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = re.sub(r"\\(.)", r"\1", value)
    return values


def _resolve_device(device: str, timeout: float) -> tuple[str | None, str | None]:
    """(path, None) for a device path or a tag found on a device; (None, problem) otherwise.

    A tag is looked up in udev's /dev/disk/by-* links when they exist, else by probing every
    block device with ``blkid -p``. Not with blkid's cache: it can be stale (a disk moved, or
    another blkid wrote it while devices came and went) and then blkid misses the device.
    """
    tag, sep, value = device.partition("=")
    if not (sep and tag in _DEVICE_TAGS):
        return device, None
    link = Path("/dev/disk", _UDEV_DIRS[tag], _udev_encode(value))
    if link.exists():
        return os.path.realpath(link), None
    deadline = time.monotonic() + timeout
    devices = _block_devices()
    found = []
    for path, held in devices:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, (f"looking up {device} with blkid did not finish within {timeout:g}s "
                          f"(a device that does not answer?)")
        probed = _run(["blkid", "-p", "-o", "export", path], remaining)
        if probed.returncode == _NOT_RUN:
            return None, f"cannot look up {device}: {probed.output}"
        if _parse_export(probed.output).get(_BLKID_KEYS[tag]) == value:
            found.append((path, held))
    if not found:
        return None, (f"no block device with {device} found (blkid -p probed "
                      f"{len(devices)} devices)")
    # A multipath or RAID member carries the same UUID as the device built on it; use the top.
    candidates = [path for path, held in found if not held] or [path for path, _ in found]
    if len(candidates) > 1:
        return None, (f"several block devices carry {device}: {', '.join(candidates)}; set "
                      f"'device' to the path of the right one")
    return candidates[0], None


def _device_number(path: str, device: str) -> tuple[tuple[int, int] | None, str | None]:
    shown = path if path == device else f"{path} ({device})"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, f"device {shown} does not exist"
    except OSError as exc:
        return None, f"cannot examine device {shown}: {exc.strerror or exc}"
    if not stat.S_ISBLK(st.st_mode):
        return None, f"device {shown} is not a block device"
    return (os.major(st.st_rdev), os.minor(st.st_rdev)), None


# -- the resource -----------------------------------------------------------------------------


class FilesystemResource(Resource):
    """One filesystem mounted on this node (see the module docstring)."""

    def __init__(
        self, rtype: FilesystemType, config: ResourceConfig, node: str, runtime_dir: Path
    ) -> None:
        super().__init__(rtype, config, node, runtime_dir)  # checks the params
        params = config.params
        self.device = str(params["device"])
        self.directory = os.path.normpath(str(params["directory"]))
        self.fstype = str(params["fstype"])
        self.options = str(params.get("options", ""))
        self.fsck = bool(params.get("fsck", True))
        self.probe = bool(params.get("probe", True))
        self.read_only = "ro" in _option_list(self.options)
        self.probe_name = f".vigil-probe-{node}"
        self._lock = threading.Lock()
        self._resolved: str | None = None  # the device path a tag was last found at
        self._stuck_probe: tuple[int, ...] = ()  # a probe that survived SIGKILL

    def holding(self) -> ResourceHolding:
        # the device as last found (a UUID= tag resolves at start); the guardian unmounts
        # by mount point and names the device only in what it says
        return ResourceHolding(self.name, mounts=(MountHolding(
            self.directory, self._resolved or self.device),))

    # -- agent operations ---------------------------------------------------------------------

    def _start(self, cancel: threading.Event) -> OpResult:
        timeout = self.config.start_timeout
        deadline = time.monotonic() + timeout

        def remaining() -> float:
            return max(0.0, deadline - time.monotonic())

        def failed(reason: str) -> OpResult:
            return OpResult.failure(ServiceState.FAILED, reason)

        mount_point = self._mount_point()
        path, problem = _resolve_device(self.device, min(_BLKID_TIMEOUT, remaining()))
        devnum: tuple[int, int] | None = None
        if path is not None:
            devnum, problem = _device_number(path, self.device)
        if problem is not None or path is None or devnum is None:
            return failed(f"cannot mount: {problem}")
        with self._lock:
            self._resolved = path
        stack = _stack(read_mountinfo(), mount_point)
        if stack:
            top = stack[-1]
            if self._is_ours(top, devnum, path) and top.root == "/":
                return OpResult.success(ServiceState.IN_SERVICE,
                                        f"{self._shown(path)} was already mounted on "
                                        f"{mount_point}")
            return failed(f"{top.describe()} is mounted on {mount_point}; unmount it, or choose "
                          "another directory")
        problem = self._prepare_directory(mount_point)
        if problem is not None:
            return failed(problem)
        problem = self._device_busy(path)
        if problem is not None:
            return failed(f"will not mount: {problem}")
        notes = []
        if self.fsck:
            if cancel.is_set():
                return failed("start interrupted")
            argv = ["fsck", "-a", "-t", self.fstype, path]
            ran = _run(argv, remaining(), cancel, term_grace=TOOL_TERM_GRACE)
            if ran.cancelled:
                return failed("start interrupted during fsck")
            code = ran.returncode
            if code is None:
                return failed(f"fsck of {self._shown(path)} did not finish within start_timeout "
                              f"({timeout:g}s), which is also fsck's budget: raise start_timeout "
                              f"or run fsck by hand{self._tail(ran)}")
            if code == _NOT_RUN:
                return failed(f"{ran.output}; install it or set fsck = false")
            if code == 0:
                notes.append("fsck: clean")
            elif code == 1:
                notes.append(f"fsck repaired errors{self._tail(ran)}")
            elif code < 4:  # 2 or 3: repaired, but the system should be rebooted
                return failed(f"'{' '.join(argv)}' repaired errors but asks for a reboot (exit "
                              f"code {code}); check the disk by hand{self._tail(ran)}")
            else:
                return failed(f"'{' '.join(argv)}' failed with "
                              f"{_describe_fsck_code(code)}{self._tail(ran)}")
        if cancel.is_set():
            return failed("start interrupted")
        argv = ["mount", "-t", self.fstype]
        if self.options:
            argv += ["-o", self.options]
        argv += [path, mount_point]
        ran = _run(argv, remaining(), cancel, term_grace=TOOL_TERM_GRACE)
        if not ran.ok:
            undone = self._undo_mount(mount_point, devnum, path)
            if ran.cancelled:
                return failed(f"start interrupted during mount{undone}")
            if ran.returncode is None:
                return failed(f"'{' '.join(argv)}' did not finish within start_timeout "
                              f"({timeout:g}s){undone}")
            return failed(f"'{' '.join(argv)}' failed (exit code {ran.returncode})"
                          f"{self._tail(ran)}{undone}")
        stack = _stack(read_mountinfo(), mount_point)
        if not stack or not self._is_ours(stack[-1], devnum, path):
            found = stack[-1].describe() if stack else "nothing"
            return failed(f"mount of {self._shown(path)} on {mount_point} reported success, but "
                          f"the mount table shows {found} there")
        if cancel.is_set():
            return failed(f"start interrupted{self._undo_mount(mount_point, devnum, path)}")
        reason = f"mounted {self._shown(path)} on {mount_point} ({self.fstype})"
        return OpResult.success(ServiceState.IN_SERVICE, "; ".join([reason, *notes]))

    def _stop(self, force: bool) -> OpResult:
        started = time.monotonic()
        mount_point = self._mount_point()
        path, devnum = self._locate(_BLKID_TIMEOUT)
        mine = self._mine(mount_point, devnum, path)
        if not mine:
            stack = _stack(read_mountinfo(), mount_point)
            there = f" ({stack[-1].describe()} is mounted there, left alone)" if stack else ""
            return OpResult.success(ServiceState.OOS, f"not mounted on {mount_point}{there}")
        why = "forced stop"
        if not force:
            timeout = self.config.stop_timeout
            patience = started + timeout / 2
            while True:
                error = self._umount(mount_point, devnum, path,
                                     max(1.0, started + timeout - time.monotonic()))
                if error is None:
                    return self._released(path, devnum, f"unmounted {mount_point}")
                if time.monotonic() >= patience:
                    break
                time.sleep(max(0.0, min(_RETRY, patience - time.monotonic())))
            why = f"busy for {time.monotonic() - started:.1f}s: {error}"
        return self._force_unmount(mount_point, devnum, path, why)

    def _monitor(self) -> OpResult:
        mount_point = self._mount_point()
        path, devnum = self._locate(min(_BLKID_TIMEOUT, self.config.monitor.timeout))
        stack = _stack(read_mountinfo(), mount_point)
        believed = self.service_state() is ServiceState.IN_SERVICE
        shown = self._shown(path)
        if stack and self._is_ours(stack[-1], devnum, path) and stack[-1].root == "/":
            top = stack[-1]
            if top.read_only and not self.read_only:
                return OpResult.failure(
                    ServiceState.FAILED,
                    f"{shown} on {mount_point} is mounted read-only (the kernel does that after "
                    "I/O or filesystem errors; see dmesg)")
            if self.probe:
                problem = self._probe(mount_point)
                if problem is not None:
                    return OpResult.failure(ServiceState.FAILED, problem)
            return OpResult.success(ServiceState.IN_SERVICE,
                                    f"{shown} mounted on {mount_point}"
                                    + (", probe ok" if self.probe else ""))
        if any(self._is_ours(m, devnum, path) for m in stack):
            return OpResult.failure(ServiceState.FAILED,
                                    f"{shown} is mounted on {mount_point} but hidden by "
                                    f"{stack[-1].describe()} mounted over it")
        there = f" ({stack[-1].describe()} is mounted there instead)" if stack else ""
        if believed:
            return OpResult.failure(ServiceState.FAILED,
                                    f"{shown} is no longer mounted on {mount_point}{there}")
        return OpResult.success(ServiceState.OOS, f"not mounted on {mount_point}{there}")

    # -- helpers ------------------------------------------------------------------------------

    def _mount_point(self) -> str:
        # The kernel reports mount points with symbolic links resolved. Only the parent is
        # resolved: resolving the directory itself would stat the mounted filesystem, and a
        # hung one would hang us.
        parent, name = os.path.split(self.directory)
        return os.path.join(os.path.realpath(parent), name)

    def _shown(self, path: str | None) -> str:
        if path is None or path == self.device:
            return self.device
        return f"{self.device} ({path})"

    @staticmethod
    def _tail(ran: _Ran) -> str:
        summary = ran.summary()
        return f": {summary}" if summary else ""

    def _locate(self, timeout: float) -> tuple[str | None, tuple[int, int] | None]:
        """The device's path and number, as far as they can be found: a tag is looked up
        once (then at every start), so that a restarted daemon recognises its mount."""
        with self._lock:
            path = self._resolved
        if path is None:
            path, _ = _resolve_device(self.device, timeout)
            if path is None:
                return None, None
            with self._lock:
                self._resolved = path
        devnum, _ = _device_number(path, self.device)
        return path, devnum

    @staticmethod
    def _is_ours(mount: Mount, devnum: tuple[int, int] | None, path: str | None) -> bool:
        if devnum is not None and (mount.major, mount.minor) == devnum:
            return True
        # Some filesystems (btrfs) report an anonymous device number: compare the source.
        if path is None or not mount.source.startswith("/"):
            return False
        return mount.source == path or os.path.realpath(mount.source) == os.path.realpath(path)

    def _mine(self, mount_point: str, devnum: tuple[int, int] | None,
              path: str | None) -> list[Mount]:
        return [m for m in _stack(read_mountinfo(), mount_point)
                if self._is_ours(m, devnum, path)]

    def _prepare_directory(self, mount_point: str) -> str | None:
        if os.path.islink(mount_point):
            return (f"directory {mount_point} is a symbolic link (to "
                    f"{os.readlink(mount_point)}); set 'directory' to the real path")
        if os.path.lexists(mount_point) and not os.path.isdir(mount_point):
            return f"{mount_point} exists and is not a directory"
        try:
            os.makedirs(mount_point, exist_ok=True)
        except OSError as exc:
            return f"cannot create directory {mount_point}: {exc.strerror or exc}"
        return None

    def _device_busy(self, path: str, strict: bool = True) -> str | None:
        """Why ``path`` is in use, or None. ``strict``: failing to open it is a problem too."""
        # O_EXCL on a block device (without O_CREAT) claims it like a mount does: it fails
        # while the device is mounted anywhere on this machine, in any mount namespace.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                if not strict:
                    return None
                return f"cannot open {self._shown(path)}: {exc.strerror or exc}"
            elsewhere = [m.mount_point for m in read_mountinfo()
                         if self._is_ours(m, self._devnum_of(path), path)]
            where = (f"mounted on {', '.join(elsewhere)}" if elsewhere else
                     "mounted in another mount namespace (another node on this machine, a "
                     "container) or held by another program")
            return f"{self._shown(path)} is in use: {where}"
        os.close(fd)
        return None

    def _devnum_of(self, path: str) -> tuple[int, int] | None:
        return _device_number(path, self.device)[0]

    def _released(self, path: str | None, devnum: tuple[int, int] | None,
                  reason: str) -> OpResult:
        """The stop's result once unmounted here: OOS only if the device is free."""
        if path is None or devnum is None:
            return OpResult.success(ServiceState.OOS, reason)
        busy: list[str | None] = [None]

        def free() -> bool:
            busy[0] = self._device_busy(path, strict=False)
            return busy[0] is None

        if proc.wait_until(free, RELEASE_WAIT, interval=_POLL):
            return OpResult.success(ServiceState.OOS, reason)
        return OpResult.failure(ServiceState.UNCLEAN,
                                f"{reason}, but {busy[0]}: mounting it on another node now "
                                "would corrupt it")

    def _umount(self, mount_point: str, devnum: tuple[int, int] | None, path: str | None,
                timeout: float) -> str | None:
        """Unmount our filesystem from ``mount_point``: None when done, else why not."""
        for _ in range(_UMOUNT_PASSES):  # each pass removes one of ours (rarely several)
            stack = _stack(read_mountinfo(), mount_point)
            if not any(self._is_ours(m, devnum, path) for m in stack):
                return None
            if not self._is_ours(stack[-1], devnum, path):
                return f"{stack[-1].describe()} is mounted over it"
            ran = _run(["umount", mount_point], timeout)
            if ran.returncode is None:
                return f"umount {mount_point} did not finish within {timeout:g}s"
            if not ran.ok:
                after = _stack(read_mountinfo(), mount_point)
                if len(after) < len(stack):
                    continue  # someone else unmounted it meanwhile
                return ran.tail(2) or f"umount {mount_point} failed (exit code {ran.returncode})"
        return f"still mounted on {mount_point} after {_UMOUNT_PASSES} successful umounts"

    def _unmount_others(self, mount_point: str, devnum: tuple[int, int] | None,
                        path: str | None) -> list[str]:
        """Unmount what is mounted below the directory or on top of ours (either keeps ours
        busy), deepest and topmost first; the errors."""
        mounts = read_mountinfo()
        inside = sorted({m.mount_point for m in mounts
                         if under(m.mount_point, mount_point) and m.mount_point != mount_point},
                        key=len, reverse=True)
        errors = []
        for where in inside:
            ran = _run(["umount", where], self.config.stop_timeout)
            if not ran.ok:
                errors.append(ran.tail(1) or f"umount {where} failed")
        for _ in range(len(_stack(mounts, mount_point))):
            stack = _stack(read_mountinfo(), mount_point)
            if not stack or self._is_ours(stack[-1], devnum, path):
                break
            log.warning("unmounting %s from %s: it covers %s", stack[-1].describe(),
                        mount_point, self._shown(path))
            ran = _run(["umount", mount_point], self.config.stop_timeout)
            if not ran.ok:
                errors.append(ran.tail(1) or f"umount {mount_point} failed")
                break
        return errors

    def _force_unmount(self, mount_point: str, devnum: tuple[int, int] | None,
                       path: str | None, why: str) -> OpResult:
        killed: list[Holder] = []
        survivors: list[int] = []
        error = why
        for _ in range(KILL_ROUNDS):
            errors = self._unmount_others(mount_point, devnum, path)
            victims = [h for h in find_holders(mount_point, devnum)
                       if h.pid not in (os.getpid(), 1)]
            survivors = []
            if victims:
                log.warning("resource %s: killing the users of %s: %s", self.name, mount_point,
                            "; ".join(h.describe() for h in victims))
                survivors = _kill(victims)
                killed += victims
            umount_error = self._umount(mount_point, devnum, path,
                                        max(1.0, self.config.stop_timeout))
            if umount_error is None:
                done = f"unmounted {mount_point} ({why})"
                if killed:
                    count = len({h.pid for h in killed})
                    done += (f" after killing {count} process{'es' if count > 1 else ''} using "
                             "it: " + "; ".join(h.describe() for h in killed[:5]))
                return self._released(path, devnum, done)
            error = "; ".join([umount_error, *errors])
            # Another round helps only if new users came after we killed all we found; with
            # nobody to kill, or users that survive SIGKILL (stuck in I/O), it changes nothing.
            if not victims or survivors:
                break
        holders = find_holders(mount_point, devnum)
        if holders:
            held = "held by " + "; ".join(h.describe() for h in holders[:8])
            if survivors:
                held += f" (pid {', '.join(map(str, survivors))} survived SIGKILL)"
        else:
            held = ("no process found using it (it may be held by the kernel: a loop device, "
                    "swap file or NFS export on it, or a process in another mount namespace)")
        return OpResult.failure(
            ServiceState.UNCLEAN,
            f"cannot unmount {self._shown(path)} from {mount_point}: {error}; {held}. No lazy "
            "unmount: the disk would stay in use here; fence this node")

    def _undo_mount(self, mount_point: str, devnum: tuple[int, int], path: str) -> str:
        """After a failed or cancelled start: unmount ours if it got mounted; a note."""
        if not self._mine(mount_point, devnum, path):
            return ""
        error = self._umount(mount_point, devnum, path, max(1.0, self.config.stop_timeout))
        if error is None:
            return f"; unmounted {mount_point} again"
        return f"; it is still mounted on {mount_point} ({error})"

    def _probe(self, mount_point: str) -> str | None:
        """Write and read back a file (or just list the directory if mounted ``ro``) in a
        child process, within the monitor timeout; None when fine, else the problem."""
        timeout = self.config.monitor.timeout
        with self._lock:
            stuck = self._stuck_probe
        if stuck:
            alive = [pid for pid in stuck if proc.pid_alive(pid)]
            if alive:
                return (f"probe of {mount_point} failed: the previous probe (pid {alive[0]}) is "
                        "still stuck in I/O; the disk or server is not responding")
            with self._lock:
                self._stuck_probe = ()
        target = os.path.join(mount_point, self.probe_name)
        if self.read_only:
            argv = [sys.executable, "-I", "-S", "-c", _PROBE_READ, mount_point]
            what = f"listing {mount_point}"
        else:
            token = f"vigil {self.node} {time.time():.6f} {secrets.token_hex(8)}"
            argv = [sys.executable, "-I", "-S", "-c", _PROBE_WRITE, target, token]
            what = f"writing, fsyncing and reading back {target}"
        ran = _run(argv, timeout)
        if ran.stuck:
            with self._lock:
                self._stuck_probe = ran.stuck
        if ran.returncode is None:
            return (f"probe of {mount_point} ({what}) did not finish within the monitor timeout "
                    f"({timeout:g}s): the disk or server is not responding")
        if ran.returncode == _PROBE_DISK_FULL:
            log.warning("resource %s: %s is full (%s); not counted as a failure", self.name,
                        mount_point, ran.tail(1))
            return None
        if not ran.ok:
            return f"probe of {mount_point} failed: {ran.tail(2) or ran.returncode}"
        return None
