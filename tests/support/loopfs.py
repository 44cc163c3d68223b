"""Filesystems of a test's own, mounted where no one else sees them.

:class:`LoopFilesystem`: a sparse image file, a loop device over it, mkfs, and a mount on a
directory of the test's. :func:`in_own_mount_namespace`: runs a test in a private mount
namespace of its own, so that such mounts are made where code under test in the test process
itself sees them (unlike ``nscluster.SharedDisk``, a disk the hosts mount in their namespaces)
and nowhere else.

Why not mount in the machine's own namespace: every mount namespace made while the mount
exists (another test's namespace cluster on this shared machine, a container) gets a copy of
it, keeps the filesystem and its loop device busy after the test unmounted its own, and shows
it in its mount table. A private namespace also undoes every mount when its last process ends,
however the test ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from vigil.resources.mountinfo import read_mountinfo

REPO: Final = Path(__file__).resolve().parents[2]
_SBIN_PATH: Final = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
_PACKAGES: Final = {"btrfs": "btrfs-progs", "ext4": "e2fsprogs", "xfs": "xfsprogs"}
#: Set (to "1") in the pytest that :func:`in_own_mount_namespace` starts.
INSIDE: Final = "VIGIL_TEST_OWN_MOUNT_NAMESPACE"
_RUN_TIMEOUT: Final = 900.0


def _run(*argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=_SBIN_PATH, LC_ALL="C")
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=False, env=env)


def missing_tools(fstype: str) -> str | None:
    """None if this machine can make a ``fstype`` loop filesystem, else why not."""
    if os.geteuid() != 0:
        return "needs root (loop devices and mounts)"
    tools = ("losetup", "mount", "umount", "unshare", f"mkfs.{fstype}")
    missing = [t for t in tools if shutil.which(t, path=_SBIN_PATH) is None]
    if missing:
        package = _PACKAGES.get(fstype, f"the {fstype} tools")
        return f"needs {', '.join(missing)} (util-linux, {package})"
    return None


def skip_unless_btrfs() -> None:
    """Skip the calling test (pytest) without root or a usable btrfs, saying why."""
    import pytest

    from vigil.resources.btrfs import btrfs_available

    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices, mounts and btrfs ioctls")
    why = btrfs_available()
    if why is not None:
        pytest.skip(why)


def in_own_mount_namespace(test: Callable[..., None]) -> Callable[..., None]:
    """Decorate a test function (not parametrized) to run in a pytest of its own under
    ``unshare --mount --propagation private``: there the test runs as written, fixtures and
    all; here it passes, skips or fails as it did there, with its output (shown by ``pytest
    -s`` or on failure). Costs a pytest start-up (a second or two)."""
    if os.environ.get(INSIDE) == "1":
        return test
    node_id = f"{Path(sys.modules[test.__module__].__file__ or '').relative_to(REPO)}::" \
              f"{test.__name__}"

    def outside() -> None:
        import pytest

        if os.geteuid() != 0:
            pytest.skip("needs root: a mount namespace, loop devices and mounts")
        if shutil.which("unshare", path=_SBIN_PATH) is None:
            pytest.skip("needs unshare (util-linux) for a private mount namespace")
        argv = ["unshare", "--mount", "--propagation", "private", sys.executable, "-m",
                "pytest", "-q", "-s", "-rs", "-p", "no:cacheprovider", node_id]
        env = dict(os.environ, PATH=_SBIN_PATH, **{INSIDE: "1"})
        env.pop("PYTEST_ADDOPTS", None)
        try:
            done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=_RUN_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
            pytest.fail(f"{node_id} did not finish within {_RUN_TIMEOUT:g}s in its own mount "
                        f"namespace:\n{out[-6000:]}")
        output = done.stdout + done.stderr
        summary = output.strip().splitlines()[-1] if output.strip() else ""
        if done.returncode == 0 and "skipped" in summary and "passed" not in summary:
            reasons = [line.split(": ", 1)[-1] for line in output.splitlines()
                       if line.startswith("SKIPPED")]
            pytest.skip(reasons[0] if reasons else summary)
        if done.returncode != 0 or "1 passed" not in summary:
            pytest.fail(f"{node_id} failed in its own mount namespace (exit code "
                        f"{done.returncode}):\n{output[-8000:]}", pytrace=False)
        print(output)  # what the test printed (figures): shown by pytest -s

    outside.__name__ = outside.__qualname__ = test.__name__
    outside.__doc__ = test.__doc__
    outside.__module__ = test.__module__
    return outside


#: Runs a command (mount, umount) where the filesystem is to be mounted: ``(argv) -> result``.
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run_here(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return _run(*argv)


class LoopFilesystem:
    """A ``size_mb`` MiB ``fstype`` filesystem on a loop device, mounted on ``directory /
    name`` (or ``mount_point``): a context manager. Skips the test (pytest) where root, the
    tools, loop devices or the kernel's support for ``fstype`` are missing.

    The loop device is detached as soon as the filesystem is mounted: the kernel then frees
    it with the last unmount (this one on exit, or the end of the mount namespace if the test
    process is killed), and never is a device number that someone else may have taken since
    detached by mistake. On exit everything mounted at or below the mount point is unmounted
    and the image removed.

    By default the mount is made in this process's mount namespace. ``run`` (which runs
    ``mount`` and ``umount``) and ``mountinfo`` (the path of the mount table to read) put it
    in another's, e.g. a namespace cluster host's: there :meth:`create`, :meth:`mount` (again
    after that namespace is gone and a new one made: the image is the disk), :meth:`released`
    and :meth:`remove` are used one by one."""

    def __init__(self, directory: Path, name: str, *, fstype: str = "btrfs",
                 size_mb: int = 256, mount_options: str = "", mount_point: Path | None = None,
                 run: Runner = _run_here,
                 mountinfo: Callable[[], str] = lambda: "/proc/self/mountinfo") -> None:
        self.image = directory / f"{name}.img"
        self.mount_point = mount_point if mount_point is not None else directory / name
        self.fstype = fstype
        self.size_mb = size_mb
        self.mount_options = mount_options
        self.device = ""
        self._run = run
        self._mountinfo = mountinfo

    def __enter__(self) -> LoopFilesystem:
        self.create()
        try:
            self.mount()
        except BaseException:
            self.remove()
            raise
        return self

    def create(self) -> None:
        """The image file with a new, empty filesystem on it."""
        import pytest

        why = missing_tools(self.fstype)
        if why is not None:
            pytest.skip(why)
        with self.image.open("wb") as f:
            f.truncate(self.size_mb * 1024 * 1024)
        force = ["-f"] if self.fstype in ("btrfs", "xfs") else ["-F"]
        made = _run(f"mkfs.{self.fstype}", "-q", *force, str(self.image))
        if made.returncode != 0:
            self.image.unlink(missing_ok=True)
            raise RuntimeError(f"mkfs.{self.fstype} {self.image} failed: {made.stderr.strip()}")

    def mount(self) -> None:
        """Attach the image to a loop device and mount it (then detach: see the class)."""
        import pytest

        attached = _run("losetup", "--find", "--show", str(self.image))
        if attached.returncode != 0:
            pytest.skip(f"loop devices do not work here: {attached.stderr.strip()}")
        self.device = attached.stdout.strip()
        try:
            self.mount_point.mkdir(parents=True, exist_ok=True)
            options = ["-o", self.mount_options] if self.mount_options else []
            mounted = self._run(["mount", "-t", self.fstype, *options, self.device,
                                 str(self.mount_point)])
        finally:
            # Mounted, the device only gets its auto-clear flag; unmounted, it goes now.
            _run("losetup", "-d", self.device)
        if mounted.returncode != 0:
            reason = mounted.stderr.strip()
            if "unknown filesystem type" in reason:
                pytest.skip(f"the kernel cannot mount {self.fstype} here: {reason}")
            raise RuntimeError(f"mount {self.device} {self.mount_point} failed: {reason}")

    def released(self) -> bool:
        """No loop device is backed by the image any longer: the filesystem is gone from
        every mount namespace (the auto-clear flag detaches the device with the last
        unmount)."""
        found = _run("losetup", "--associated", str(self.image))
        return found.returncode == 0 and not found.stdout.strip()

    def _mounted_below(self) -> list[str]:
        top = str(self.mount_point)
        try:
            mounts = read_mountinfo(self._mountinfo())
        except OSError:  # that namespace is gone, and its mounts with it
            return []
        points = {m.mount_point for m in mounts
                  if m.mount_point == top or m.mount_point.startswith(top + "/")}
        return sorted(points, key=len, reverse=True)

    def unmount(self) -> None:
        """Unmount everything at or below the mount point."""
        for _ in range(50):  # a process of the test may still be letting go of it
            below = self._mounted_below()
            if not below:
                return
            for point in below:
                self._run(["umount", point])
            if self._mounted_below():
                time.sleep(0.1)
        # Still busy after 5 s: detach it; the device goes when its last user lets go.
        for point in self._mounted_below():
            self._run(["umount", "-l", point])

    def remove(self) -> None:
        self.image.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        self.unmount()
        self.remove()
