"""The dummy resource type: a resource that is only a state file.

Like OCF's ``heartbeat/Dummy``, it exercises the whole resource life cycle without touching
the system, so tests and demos can place, move and fail resources cheaply. Its state lives in
a file (``<runtime_dir>/dummy/<name>.state``, containing ``started`` while in service) rather
than in memory, so that a restarted daemon probes the truth.

Parameters:

``state_dir``
    Directory of the state file (default ``<runtime_dir>/dummy``).
``start_delay``, ``stop_delay``
    How long a start or graceful stop takes: seconds, or a string such as ``"0.2s"``. A delay
    longer than ``start_timeout``/``stop_timeout`` makes the operation time out.
``fail``
    ``"none"`` (default), ``"start"``, ``"stop"`` or ``"monitor"``: that operation always fails.

The runtime fail switch: while a file ``<state file>.fail`` exists, monitor reports FAILED and
start fails, so a test can break a running resource by touching a file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from vigil.config import MonitorConfig, ParamValue, ResourceConfig
from vigil.local.rundir import private_dir, write_atomic
from vigil.resources.model import (
    OpResult,
    Resource,
    ResourceType,
    ServiceState,
    parse_seconds,
    unknown_params,
)

__all__ = ["DummyResource", "DummyType"]

_PARAMS: Final = ("fail", "start_delay", "state_dir", "stop_delay")
_FAIL_MODES: Final = ("none", "start", "stop", "monitor")
_STARTED: Final = "started"


class DummyType(ResourceType):
    """Factory of :class:`DummyResource` (``type = "dummy"``)."""

    def typename(self) -> str:
        return "dummy"

    def instantiate(self, config: ResourceConfig, node: str, runtime_dir: Path) -> DummyResource:
        return DummyResource(self, config, node, runtime_dir)

    def check_params(self, params: Mapping[str, ParamValue]) -> list[str]:
        problems = unknown_params(params, _PARAMS)
        for key in ("start_delay", "stop_delay"):
            if key in params:
                try:
                    parse_seconds(params[key])
                except ValueError as exc:
                    problems.append(f"parameter {key!r}: {exc}")
        fail = params.get("fail", "none")
        if fail not in _FAIL_MODES:
            problems.append(
                f"parameter 'fail' must be one of {', '.join(_FAIL_MODES)}, got {fail!r}"
            )
        if "state_dir" in params and not isinstance(params["state_dir"], str):
            problems.append(f"parameter 'state_dir' must be a path string, "
                            f"got {params['state_dir']!r}")
        return problems

    def default_monitor(self) -> MonitorConfig:
        return MonitorConfig(interval=5.0, timeout=5.0)


class DummyResource(Resource):
    """A resource whose being in service is a file that says ``started``."""

    def __init__(
        self, rtype: DummyType, config: ResourceConfig, node: str, runtime_dir: Path
    ) -> None:
        super().__init__(rtype, config, node, runtime_dir)  # checks the params
        params = config.params
        state_dir = params.get("state_dir")
        directory = Path(state_dir) if isinstance(state_dir, str) else runtime_dir / "dummy"
        #: the default directory is the daemon's own (0700); one the file names is the
        #: operator's, used as it is
        self.own_directory = not isinstance(state_dir, str)
        self.state_file = directory / f"{config.name}.state"
        self.fail_file = directory / f"{config.name}.state.fail"
        self.start_delay = parse_seconds(params.get("start_delay", 0.0))
        self.stop_delay = parse_seconds(params.get("stop_delay", 0.0))
        self.fail = str(params.get("fail", "none"))

    def _start(self, cancel: threading.Event) -> OpResult:
        failed = ServiceState.FAILED
        if self.fail == "start":
            return OpResult.failure(failed, "start fails by configuration (fail = 'start')")
        if self.fail_file.exists():
            return OpResult.failure(failed, f"fail switch {self.fail_file} exists")
        timeout = self.config.start_timeout
        if self.start_delay > timeout:
            if cancel.wait(timeout):
                return OpResult.failure(failed, "start interrupted")
            return OpResult.failure(failed, f"start timed out after {timeout:g}s")
        if cancel.wait(self.start_delay):
            return OpResult.failure(failed, "start interrupted")
        if self.own_directory:
            private_dir(self.state_file.parent)
        else:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a probe never reads a half-written file.
        write_atomic(self.state_file, f"{_STARTED}\n".encode(), sync=False)
        return OpResult.success(ServiceState.IN_SERVICE, f"started (state file {self.state_file})")

    def _stop(self, force: bool) -> OpResult:
        if self.fail == "stop":
            return OpResult.failure(ServiceState.UNCLEAN, "stop fails by configuration "
                                    "(fail = 'stop')")
        if not force and self.stop_delay > 0:
            timeout = self.config.stop_timeout
            if self.stop_delay > timeout:
                time.sleep(timeout)
                return OpResult.failure(ServiceState.UNCLEAN,
                                        f"stop timed out after {timeout:g}s")
            time.sleep(self.stop_delay)
        was_running = self.state_file.exists()
        self.state_file.unlink(missing_ok=True)
        return OpResult.success(ServiceState.OOS, "stopped" if was_running else "was not running")

    def _monitor(self) -> OpResult:
        failed = ServiceState.FAILED
        if self.fail == "monitor":
            return OpResult.failure(failed, "monitor fails by configuration (fail = 'monitor')")
        if self.fail_file.exists():
            return OpResult.failure(failed, f"fail switch {self.fail_file} exists")
        try:
            content = self.state_file.read_text().strip()
        except FileNotFoundError:
            return OpResult.success(ServiceState.OOS, "not running (no state file)")
        if content == _STARTED:
            return OpResult.success(ServiceState.IN_SERVICE, "running")
        return OpResult.failure(failed, f"state file {self.state_file} holds {content!r}, "
                                f"not {_STARTED!r}")
