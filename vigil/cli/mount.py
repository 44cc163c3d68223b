"""``vigil mount``: /ha, one node's view of the cluster as files, with control through
writable files (vigil/ha/fs.py; docs/ha.md for the layout).

Exit codes: 0 mounted (and, in the foreground, unmounted cleanly later); 1 the mount failed;
2 usage or configuration error (bad mount point, unknown node, no FUSE on this machine).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click

from vigil.cli.options import config_option, node_option_for
from vigil.journal import configure
from vigil.local.access import Access as SocketAccess
from vigil.local.access import prepare_runtime_dir
from vigil.local.rundir import open_append, private_dir

DEFAULT_MOUNTPOINT = "/ha"
EXIT_FAILED, EXIT_USAGE = 1, 2
#: How long ``--background`` waits for the mount to come up before it gives up.
READY_TIMEOUT = 30.0

log = logging.getLogger("vigil.ha")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"vigil: {message}", err=True)
    sys.exit(code)


def check_mountpoint(path: Path) -> None:
    """Refuse a mount point that is already a mount or not an empty directory; make it when it
    does not exist. Raises ValueError saying why and what to do."""
    try:
        if os.path.ismount(path):
            raise ValueError(f"{path} is already a mount point; unmount it first "
                             f"(fusermount3 -u {path}) or choose another MOUNTPOINT")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            path.mkdir(mode=0o755, parents=True)
            return
        if not stat.S_ISDIR(st.st_mode):
            raise ValueError(f"{path} is not a directory; choose another MOUNTPOINT")
        if os.listdir(path):
            raise ValueError(f"{path} is not empty; /ha is mounted on an empty directory only "
                             "(so nothing is hidden under it): empty it or choose another "
                             "MOUNTPOINT")
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:  # a FUSE process died and left its mount behind
            raise ValueError(f"{path} is a dead FUSE mount (transport endpoint is not "
                             f"connected); unmount it first: fusermount3 -u {path}") from exc
        raise ValueError(f"{path}: {exc.strerror}") from exc


def _allow_other() -> bool:
    """Whether this process may mount with allow_other (root may; other users only with
    user_allow_other in /etc/fuse.conf)."""
    if os.geteuid() == 0:
        return True
    try:
        lines = Path("/etc/fuse.conf").read_text().splitlines()
    except OSError:
        return False
    return any(line.strip() == "user_allow_other" for line in lines)


def _setup_logging(level: str, node: str) -> None:
    configure(level, f"[{node}]", node, identifier="vigil-ha")


def _log_to(log_file: str | None, in_runtime_dir: bool = False) -> None:
    """Send this process's stderr (the log and libfuse's own messages) to ``log_file``; the
    default one, in the runtime directory, never through a link planted there."""
    if log_file is None:
        return
    if in_runtime_dir:
        fd = open_append(Path(log_file), 0o640)
    else:
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    os.dup2(fd, 2)
    os.close(fd)


@click.command("mount")
@click.argument("mountpoint", default=DEFAULT_MOUNTPOINT, type=click.Path(file_okay=False))
@config_option
@node_option_for("Whose daemon /ha shows (default: the host name).")
@click.option("--foreground/--background", default=False, show_default=True,
              help="Serve in this process (for systemd), or return once the mount is up and "
                   "serve from a background process.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-file", default=None, type=click.Path(dir_okay=False),
              help="Append the log to FILE (default: stderr in the foreground, "
              "<runtime_dir>/logs/ha-mount.log in the background).")
def mount_command(mountpoint: str, config_path: str, node: str | None, foreground: bool,
                  log_level: str, log_file: str | None) -> None:
    """Mount /ha at MOUNTPOINT (default /ha): the cluster as directories and small text files,
    with control through writable files (docs/ha.md). Unmount with `fusermount3 -u
    MOUNTPOINT` (or umount); SIGTERM unmounts and ends the process too."""
    from vigil.config import ConfigError, load, resolve_node
    from vigil.ha.fs import MountError, StatusSource, load_fuse

    try:
        cfg = load(config_path)
        name = resolve_node(cfg, node)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    _setup_logging(log_level, name)
    try:
        load_fuse()
    except MountError as exc:
        _fail(str(exc), EXIT_USAGE)
    if not os.path.exists("/dev/fuse"):
        _fail("/dev/fuse does not exist: this machine (or container) has no FUSE; load the "
              "module (modprobe fuse) or give the container the device", EXIT_USAGE)
    path = Path(mountpoint).absolute()
    try:
        check_mountpoint(path)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    allow_other = _allow_other()
    if not allow_other:
        log.warning("not root and no user_allow_other in /etc/fuse.conf: only this user will "
                    "see %s", path)
    socket_path = cfg.nodes[name].control_socket
    access = SocketAccess(cfg.admin_group, cfg.status_group)
    try:
        StatusSource(socket_path, name).ask("status", {}, 5.0)
    except OSError as exc:  # not fatal: /ha shows the cluster once the daemon answers
        log.warning("%s; mounting anyway: reads below %s fail until it answers",
                    exc.strerror, path)
    if foreground:
        _log_to(log_file)
        sys.exit(_serve(path, socket_path, name, access, allow_other))
    in_runtime_dir = log_file is None
    if log_file is None:
        # In the background stderr is nobody's: the log (every refused write) goes to a file.
        runtime_dir = cfg.nodes[name].runtime_dir
        try:
            prepare_runtime_dir(runtime_dir, access)
            log_file = str(private_dir(runtime_dir / "logs") / "ha-mount.log")
        except OSError as exc:
            _fail(f"cannot log to {runtime_dir / 'logs'}: {exc}; give --log-file FILE",
                  EXIT_USAGE)
    _background(path, socket_path, name, access, allow_other, log_file, in_runtime_dir)


def _serve(path: Path, socket_path: Path, node: str, access: SocketAccess, allow_other: bool,
           on_ready: Callable[[], None] | None = None) -> int:
    from vigil.ha.fs import MountError, serve

    try:
        serve(path, socket_path, node, access, allow_other=allow_other,
              on_ready=on_ready)
    except MountError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    return 0


def _background(path: Path, socket_path: Path, node: str, access: SocketAccess,
                allow_other: bool, log_file: str | None, in_runtime_dir: bool) -> NoReturn:
    """Serve from a child process; return (exit) once the mount is up, saying where."""
    sys.stdout.flush()
    sys.stderr.flush()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the server: its own session, no terminal input, output to the log only
        os.close(ready_r)
        code = EXIT_FAILED
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.close(devnull)
            _log_to(log_file, in_runtime_dir)

            def ready() -> None:
                os.write(ready_w, b"1")
                os.close(ready_w)

            code = _serve(path, socket_path, node, access, allow_other, ready)
        except BaseException:
            log.exception("the /ha server failed")
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(ready_w)
    deadline = time.monotonic() + READY_TIMEOUT
    outcome = "late"
    while time.monotonic() < deadline:
        readable, _, _ = select.select([ready_r], [], [], max(0.0, deadline - time.monotonic()))
        if readable:  # "1" once mounted; end of file when the server ended before that
            outcome = "ready" if os.read(ready_r, 1) == b"1" else "ended"
            break
    os.close(ready_r)
    where = f"; see {log_file}" if log_file else ""
    if outcome == "ready":
        click.echo(f"vigil: /ha of node {node} mounted at {path} (server pid {pid}); unmount "
                   f"with `fusermount3 -u {path}`")
        sys.exit(0)
    if outcome == "late":  # ours to stop: it may still mount later, unseen by anybody
        os.kill(pid, signal.SIGTERM)
        _fail(f"the mount at {path} was not up after {READY_TIMEOUT:g}s; stopped the server "
              f"(pid {pid}){where}", EXIT_FAILED)
    _reap(pid)
    _fail(f"mounting /ha at {path} failed (the messages above say why){where}", EXIT_FAILED)


def _reap(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0] != 0:
            return
        time.sleep(0.05)
