"""The resource model's semantics (through the dummy agent), the application agent with real
processes, and the resource type registry."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vigil.config import MonitorConfig, ParamValue, ResourceConfig
from vigil.resources import proc
from vigil.resources.application import ApplicationResource, ApplicationType
from vigil.resources.dummy import DummyResource, DummyType
from vigil.resources.model import (
    Catalog,
    DependencyCycle,
    OpResult,
    Resource,
    ResourceList,
    ServiceState,
    default_catalog,
    dependson,
    find_resource,
    parse_seconds,
)
from vigil.resources.registry import (
    ResourceTypeRegistry,
    UnloadableResourceType,
    default_registry,
)

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    return proc.wait_until(condition, timeout, interval=0.02)


def make_dummy(
    tmp_path: Path, name: str = "d", group: str = "g", node: str = "n1",
    depends_on: tuple[str, ...] = (), start_timeout: float = 20.0, **params: ParamValue,
) -> DummyResource:
    config = ResourceConfig(name=name, type="dummy", group=group, params=params,
                            depends_on=depends_on, start_timeout=start_timeout)
    return DummyType().instantiate(config, node, tmp_path)


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Callable[..., ApplicationResource]]:
    """Make application resources; whatever they started is killed after the test."""
    made: list[ApplicationResource] = []

    def make(name: str = "app", *, stop_timeout: float = 5.0, start_timeout: float = 10.0,
             monitor_timeout: float = 5.0, **params: ParamValue) -> ApplicationResource:
        config = ResourceConfig(name=name, type="application", group="g", params=params,
                                stop_timeout=stop_timeout, start_timeout=start_timeout,
                                monitor=MonitorConfig(interval=1.0, timeout=monitor_timeout))
        resource = ApplicationType().instantiate(config, "n1", tmp_path)
        made.append(resource)
        return resource

    yield make
    for resource in made:
        pid = resource.pid
        if pid is not None and proc.pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def python(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


# -- the seed's semantics, through the dummy agent ----------------------------------------------


def test_a_dummy_goes_into_service_and_out_again(tmp_path: Path) -> None:
    resource = make_dummy(tmp_path)
    assert resource.service_state() is ServiceState.UNKNOWN
    assert resource.provided_by() is None

    started = resource.in_service()
    assert started.ok and started.state is ServiceState.IN_SERVICE
    assert resource.state_file.read_text().strip() == "started"
    assert resource.provided_by() == "n1"
    assert resource.monitor().state is ServiceState.IN_SERVICE

    stopped = resource.oo_service()
    assert stopped.ok and stopped.state is ServiceState.OOS
    assert not resource.state_file.exists()
    assert resource.provided_by() is None
    assert resource.monitor().state is ServiceState.OOS


def test_in_service_on_a_resource_in_service_succeeds_without_acting(tmp_path: Path) -> None:
    resource = make_dummy(tmp_path, start_delay="0.3s")
    assert resource.in_service().ok
    again = resource.in_service()
    assert again.ok and again.state is ServiceState.IN_SERVICE
    assert again.reason == "already in service"
    assert again.duration < 0.3


def test_stopping_a_stopped_resource_succeeds(tmp_path: Path) -> None:
    resource = make_dummy(tmp_path)
    first = resource.oo_service()  # never probed: the agent is asked and finds nothing to stop
    assert first.ok and first.state is ServiceState.OOS
    assert resource.oo_service().ok
    forced = resource.force_oos()
    assert forced.ok and forced.state is ServiceState.OOS


def test_a_failed_start_leaves_the_resource_failed_until_stopped(tmp_path: Path) -> None:
    resource = make_dummy(tmp_path, fail="start")
    result = resource.in_service()
    assert not result.ok
    assert result.state is ServiceState.FAILED
    assert "fail = 'start'" in result.reason
    assert resource.service_state() is ServiceState.FAILED
    assert resource.provided_by() is None
    recovered = resource.oo_service()
    assert recovered.ok and resource.service_state() is ServiceState.OOS


def test_a_failed_stop_makes_the_resource_unclean_until_fencing_marks_it_oos(
    tmp_path: Path,
) -> None:
    resource = make_dummy(tmp_path, fail="stop")
    assert resource.in_service().ok
    stop = resource.oo_service()
    assert not stop.ok and stop.state is ServiceState.UNCLEAN
    assert not resource.in_service().ok, "an unclean resource must not be started again"
    refused = resource.force_oos()
    assert not refused.ok and "fencing" in refused.reason
    resource.mark_oos()
    assert resource.service_state() is ServiceState.OOS


def test_mark_oos_records_the_state_and_takes_no_action(tmp_path: Path) -> None:
    resource = make_dummy(tmp_path)
    assert resource.in_service().ok
    resource.mark_oos()
    assert resource.service_state() is ServiceState.OOS
    assert resource.state_file.exists()


def test_the_fail_switch_file_makes_a_running_dummy_fail_its_monitor(tmp_path: Path) -> None:
    resource = make_dummy(tmp_path)
    assert resource.in_service().ok
    resource.fail_file.touch()
    probe = resource.monitor()
    assert not probe.ok
    assert probe.state is ServiceState.FAILED
    assert str(resource.fail_file) in probe.reason
    assert resource.service_state() is ServiceState.FAILED
    assert resource.oo_service().ok
    assert not resource.in_service().ok, "start fails while the switch exists"
    resource.fail_file.unlink()
    assert resource.oo_service().ok
    assert resource.in_service().ok


def test_a_resource_found_stopped_while_in_service_is_failed(tmp_path: Path) -> None:
    resource = make_dummy(tmp_path)
    assert resource.in_service().ok
    resource.state_file.unlink()
    probe = resource.monitor()
    assert not probe.ok and probe.state is ServiceState.FAILED
    assert "found stopped" in probe.reason


def test_a_probe_after_restart_finds_a_dummy_that_is_running(tmp_path: Path) -> None:
    before = make_dummy(tmp_path)
    assert before.in_service().ok
    after_restart = make_dummy(tmp_path)
    assert after_restart.service_state() is ServiceState.UNKNOWN
    probe = after_restart.monitor()
    assert probe.ok and probe.state is ServiceState.IN_SERVICE
    assert after_restart.provided_by() == "n1"


def test_a_start_slower_than_start_timeout_fails(tmp_path: Path) -> None:
    resource = make_dummy(tmp_path, start_delay="5s", start_timeout=0.2)
    result = resource.in_service()
    assert not result.ok and result.state is ServiceState.FAILED
    assert result.reason == "start timed out after 0.2s"
    assert 0.2 <= result.duration < 2.0


def test_force_oos_interrupts_a_slow_start(tmp_path: Path) -> None:
    resource = make_dummy(tmp_path, start_delay="30s", start_timeout=60.0)
    outcome: list[OpResult] = []
    starter = threading.Thread(target=lambda: outcome.append(resource.in_service()))
    starter.start()
    try:
        assert wait_for(lambda: resource.service_state() is ServiceState.PENDING_IN_SERVICE)
        assert resource.provided_by() == "n1"
        began = time.monotonic()
        forced = resource.force_oos()
        assert forced.ok and forced.state is ServiceState.OOS
        assert time.monotonic() - began < 2.0
    finally:
        starter.join(timeout=5.0)
    assert not starter.is_alive()
    assert not outcome[0].ok and "interrupted" in outcome[0].reason
    assert resource.service_state() is ServiceState.OOS
    assert not resource.state_file.exists()


def test_an_agent_exception_becomes_a_failed_result(tmp_path: Path) -> None:
    class Broken(DummyResource):
        def _start(self, cancel: threading.Event) -> OpResult:
            raise RuntimeError("agent bug")

    config = ResourceConfig(name="b", type="dummy", group="g")
    resource = Broken(DummyType(), config, "n1", tmp_path)
    result = resource.in_service()
    assert not result.ok and resource.service_state() is ServiceState.FAILED
    assert "RuntimeError: agent bug" in result.reason


def test_dummy_params_are_checked() -> None:
    problems = DummyType().check_params({"fail": "sometimes", "start_dealy": 1,
                                         "stop_delay": "soon"})
    text = "\n".join(problems)
    assert "'fail' must be one of" in text
    assert "unknown parameter 'start_dealy'" in text and "did you mean 'start_delay'" in text
    assert "'stop_delay'" in text
    with pytest.raises(ValueError, match="resource 'x' \\(dummy\\)"):
        make_dummy(Path("/nonexistent"), name="x", fail="sometimes")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0.5, 0.5), (2, 2.0), ("0.2s", 0.2), ("200ms", 0.2), ("2m", 120.0), ("3", 3.0)],
)
def test_durations_accept_numbers_and_unit_strings(value: ParamValue, seconds: float) -> None:
    assert parse_seconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "-1s", True, ["1"]])
def test_durations_reject_nonsense(value: ParamValue) -> None:
    with pytest.raises(ValueError):
        parse_seconds(value)


# -- catalogs and dependencies ------------------------------------------------------------------


def test_dependencies_are_seen_from_both_ends(tmp_path: Path) -> None:
    catalog = Catalog()
    ip, fs, web = (make_dummy(tmp_path, name=n) for n in ("ip", "fs", "web"))
    for resource in (web, ip, fs):
        catalog.add(resource)
    dependson(web, ip, catalog)
    catalog.dependson("web", "fs")
    assert isinstance(web.dependson_list(), ResourceList)
    assert list(web.dependson_list()) == [ip, fs]
    assert web.dependson_list().names() == ["ip", "fs"]
    assert list(ip.dependents_list()) == [web]
    assert list(web.dependents_list()) == []
    assert catalog.group("g") == [ip, fs, web]


def test_a_dependency_cycle_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    catalog = Catalog(make_dummy(tmp_path, name=n) for n in ("a", "b", "c"))
    catalog.dependson("a", "b")
    catalog.dependson("b", "c")
    with pytest.raises(DependencyCycle, match="c -> a -> b -> c"):
        catalog.dependson("c", "a")
    assert catalog.find_resource("c").dependson_list().names() == []


def test_configured_dependencies_order_a_group(tmp_path: Path) -> None:
    catalog = Catalog()
    catalog.add(make_dummy(tmp_path, name="app", depends_on=("fs", "ip")))
    catalog.add(make_dummy(tmp_path, name="fs", depends_on=("disk",)))
    catalog.add(make_dummy(tmp_path, name="ip"))
    catalog.add(make_dummy(tmp_path, name="disk"))
    catalog.add(make_dummy(tmp_path, name="other", group="h"))
    catalog.add_configured_dependencies()
    assert [r.name for r in catalog.group("g")] == ["ip", "disk", "fs", "app"]
    assert catalog.graph().stop_order()[0] in ("app", "other")
    with pytest.raises(KeyError, match="groups: g, h"):
        catalog.group("nope")


def test_find_resource_names_close_matches(tmp_path: Path) -> None:
    catalog = Catalog([make_dummy(tmp_path, name="webserver"), make_dummy(tmp_path, name="db")])
    assert find_resource("db", catalog).name == "db"
    with pytest.raises(KeyError) as caught:
        find_resource("web-server", catalog)
    message = str(caught.value)
    assert message.startswith("no resource named 'web-server'")
    assert "did you mean 'webserver'" in message
    assert "known: db, webserver" in message


def test_catalogs_of_different_nodes_are_independent(tmp_path: Path) -> None:
    node1, node2 = Catalog(), Catalog()
    on1 = make_dummy(tmp_path / "n1", name="web", node="n1")
    on2 = make_dummy(tmp_path / "n2", name="web", node="n2")
    node1.add(on1)
    node2.add(on2)
    node1.add(make_dummy(tmp_path / "n1", name="ip", node="n1"))
    node1.dependson("web", "ip")
    assert find_resource("web", node1) is on1
    assert find_resource("web", node2) is on2
    assert on2.dependson_list().names() == []
    assert on1.in_service().ok
    assert on2.service_state() is ServiceState.UNKNOWN
    with pytest.raises(KeyError):
        node2.find_resource("ip")
    with pytest.raises(KeyError, match="in this catalog"):
        node2.dependson(on2, node1.find_resource("ip"))


def test_the_default_catalog_serves_the_module_level_functions(tmp_path: Path) -> None:
    unique = f"default-{os.getpid()}-{time.monotonic_ns()}"
    resource = make_dummy(tmp_path, name=unique)
    default_catalog().add(resource)
    assert find_resource(unique) is resource
    assert default_catalog() is default_catalog()


def test_a_resource_belongs_to_one_catalog_and_names_are_unique(tmp_path: Path) -> None:
    first = Catalog([make_dummy(tmp_path, name="a")])
    with pytest.raises(ValueError, match="already holds"):
        first.add(make_dummy(tmp_path, name="a"))
    with pytest.raises(ValueError, match="another catalog"):
        Catalog([first.find_resource("a")])


# -- the application agent, with real processes -------------------------------------------------


def test_an_http_server_starts_healthy_and_stops_gracefully(
    apps: Callable[..., ApplicationResource],
) -> None:
    port = free_port()
    health = python(f"""
        import socket
        socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
    """)
    resource = apps(start=[PY, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                    health=health)
    started = resource.in_service()
    assert started.ok, started.reason
    assert resource.pid is not None and proc.pid_alive(resource.pid)
    probe = resource.monitor()
    assert probe.ok and probe.state is ServiceState.IN_SERVICE
    pid = resource.pid

    stopped = resource.oo_service()
    assert stopped.ok and stopped.state is ServiceState.OOS
    assert "SIGTERM" in stopped.reason
    assert not proc.pid_alive(pid)
    assert resource.monitor().state is ServiceState.OOS


def test_a_process_killed_behind_our_back_is_reported_failed(
    apps: Callable[..., ApplicationResource],
) -> None:
    resource = apps(start=python("import time; time.sleep(60)"))
    assert resource.in_service().ok
    pid = resource.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not proc.pid_alive(pid))
    probe = resource.monitor()
    assert not probe.ok and probe.state is ServiceState.FAILED
    assert "SIGKILL" in probe.reason
    assert resource.oo_service().ok
    assert resource.service_state() is ServiceState.OOS


def test_a_failing_health_check_makes_monitor_report_failed(
    apps: Callable[..., ApplicationResource], tmp_path: Path,
) -> None:
    healthy = tmp_path / "healthy"
    healthy.touch()
    resource = apps(start=python("import time; time.sleep(60)"),
                    health=["test", "-e", str(healthy)])
    assert resource.in_service().ok
    healthy.unlink()
    probe = resource.monitor()
    assert not probe.ok and probe.state is ServiceState.FAILED
    assert probe.reason.startswith("exit code 1 from health command 'test -e ")
    assert resource.oo_service().ok


def test_a_process_ignoring_sigterm_is_killed_after_stop_timeout(
    apps: Callable[..., ApplicationResource], tmp_path: Path,
) -> None:
    ready = tmp_path / "ready"
    resource = apps(
        start=python(f"""
            import signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            open({str(ready)!r}, "w").close()
            time.sleep(60)
        """),
        health=["test", "-e", str(ready)],
        stop_timeout=0.5,
    )
    assert resource.in_service().ok
    pid = resource.pid
    assert pid is not None
    stopped = resource.oo_service()
    assert stopped.ok and stopped.state is ServiceState.OOS
    assert "SIGKILL" in stopped.reason and "stop_timeout" in stopped.reason
    assert 0.5 <= stopped.duration < 5.0
    assert not proc.pid_alive(pid)


def test_a_stop_reaches_the_whole_process_group(
    apps: Callable[..., ApplicationResource], tmp_path: Path,
) -> None:
    child_pid_file = tmp_path / "grandchild"
    resource = apps(
        start=python(f"""
            import subprocess, sys, time
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            open({str(child_pid_file)!r}, "w").write(str(child.pid))
            time.sleep(60)
        """),
        health=["test", "-s", str(child_pid_file)],
    )
    assert resource.in_service().ok
    grandchild = int(child_pid_file.read_text())
    assert proc.pid_alive(grandchild)
    assert resource.oo_service().ok
    assert not proc.pid_alive(grandchild)


def test_a_start_fails_when_the_command_exits_at_once(
    apps: Callable[..., ApplicationResource],
) -> None:
    resource = apps(start=python("import sys; print('no config file', file=sys.stderr); "
                                 "sys.exit(3)"))
    result = resource.in_service()
    assert not result.ok and result.state is ServiceState.FAILED
    assert "exited with code 3" in result.reason
    assert "no config file" in result.reason, "the log tail says why"
    assert resource.pid is None


def test_a_start_fails_when_the_program_does_not_exist(
    apps: Callable[..., ApplicationResource],
) -> None:
    result = apps(start="/nonexistent/program --serve").in_service()
    assert not result.ok and result.state is ServiceState.FAILED
    assert "cannot run command '/nonexistent/program --serve'" in result.reason


def test_a_start_fails_and_cleans_up_when_health_never_passes(
    apps: Callable[..., ApplicationResource],
) -> None:
    resource = apps(start=python("import time; time.sleep(60)"), health="false",
                    start_timeout=0.6)
    result = resource.in_service()
    assert not result.ok and result.state is ServiceState.FAILED
    assert "start timed out after 0.6s" in result.reason
    # what the last health check said: its exit code, or, on a loaded machine where the
    # start's deadline came first, that it was cut short
    assert "health command 'false'" in result.reason
    assert resource.pid is None, "a failed start kills what it started"


def test_force_oos_interrupts_an_application_waiting_for_health(
    apps: Callable[..., ApplicationResource],
) -> None:
    resource = apps(start=python("import time; time.sleep(60)"), health="false",
                    start_timeout=60.0)
    outcome: list[OpResult] = []
    starter = threading.Thread(target=lambda: outcome.append(resource.in_service()))
    starter.start()
    try:
        assert wait_for(lambda: resource.pid is not None)
        pid = resource.pid
        assert pid is not None
        forced = resource.force_oos()
        assert forced.ok and forced.state is ServiceState.OOS
    finally:
        starter.join(timeout=10.0)
    assert not starter.is_alive()
    assert not outcome[0].ok and "interrupted" in outcome[0].reason
    assert not proc.pid_alive(pid)


def test_output_goes_to_the_resource_log_with_the_environment_set(
    apps: Callable[..., ApplicationResource], tmp_path: Path,
) -> None:
    resource = apps(
        name="talker",
        start=python("""
            import os, time
            print("hello from", os.environ["VIGIL_RESOURCE"], os.environ["GREETING"], flush=True)
            time.sleep(60)
        """),
        env=["GREETING=hi"],
    )
    assert resource.in_service().ok
    log = tmp_path / "logs" / "talker.log"
    assert wait_for(lambda: "hello from talker hi" in log.read_text())
    assert resource.oo_service().ok


def test_a_program_that_forks_away_is_watched_through_its_pid_file(
    apps: Callable[..., ApplicationResource], tmp_path: Path,
) -> None:
    pid_file = tmp_path / "service.pid"
    resource = apps(start=["sh", "-c", f"sleep 60 & echo $! > {pid_file}"],
                    pid_file=str(pid_file))
    started = resource.in_service()
    assert started.ok, started.reason
    service_pid = int(pid_file.read_text())
    assert resource.pid == service_pid
    assert resource.monitor().state is ServiceState.IN_SERVICE
    assert resource.oo_service().ok
    assert not proc.pid_alive(service_pid)


@pytest.mark.parametrize("check", ["health_tcp", "health_url"])
def test_tcp_and_http_health_checks_follow_the_service(
    apps: Callable[..., ApplicationResource], tmp_path: Path, check: str,
) -> None:
    port = free_port()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("up")
    target = (f"127.0.0.1:{port}" if check == "health_tcp"
              else f"http://127.0.0.1:{port}/index.html")
    resource = apps(start=[PY, "-m", "http.server", "--bind", "127.0.0.1", str(port),
                           "--directory", str(tmp_path / "www")], **{check: target})
    started = resource.in_service()  # waits until the server answers
    assert started.ok and "healthy" in started.reason, started.reason
    assert resource.monitor().state is ServiceState.IN_SERVICE
    if check == "health_url":
        (tmp_path / "www" / "index.html").unlink()
        probe = resource.monitor()
        assert not probe.ok and probe.reason == f"GET {target} answered HTTP 404"
    else:
        pid = resource.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # alive but deaf: only the health check can tell
        try:
            # a stopped process still completes TCP handshakes from the backlog: fill it
            probe = resource.monitor()
            socks = []
            for _ in range(200):
                if not probe.ok:
                    break
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                socks.append(s)
                probe = resource.monitor()
            assert not probe.ok and "TCP connect to 127.0.0.1:" in probe.reason
        finally:
            for s in socks:
                s.close()
            os.kill(pid, signal.SIGCONT)
    assert resource.oo_service().ok


def test_application_params_are_checked() -> None:
    problems = ApplicationType().check_params({"stop_signal": "TERMINATE", "env": ["NOEQUALS"]})
    text = "\n".join(problems)
    assert "parameter 'start' (the command to run) is missing" in text
    assert "'stop_signal'" in text
    assert "'NOEQUALS' is not of the form" in text
    assert ApplicationType().check_params({"start": "sleep 1", "stop_signal": "INT"}) == []
    two = "\n".join(ApplicationType().check_params(
        {"start": "x", "health": "true", "health_url": "http://h/"}))
    assert "give at most one health check" in two
    bad = "\n".join(ApplicationType().check_params(
        {"start": "x", "health_tcp": "nohost", "health_url": "ftp://h/"}))
    assert "'health_tcp' must be \"HOST:PORT\"" in bad
    assert "'health_url' must be an http:// or https:// URL" in bad


CHILD_OF_A_DAEMON = """
import sys, time
from pathlib import Path
from vigil.config import ResourceConfig
from vigil.resources.application import ApplicationType

config = ResourceConfig(name="sleeper", type="application", group="g",
                        params={"start": [sys.executable, "-c", "import time; time.sleep(60)"]})
resource = ApplicationType().instantiate(config, "n1", Path(sys.argv[1]))
result = resource.in_service()
print(resource.pid if result.ok else "FAILED " + result.reason, flush=True)
time.sleep(60)
"""


def test_services_die_when_their_daemon_is_sigkilled(tmp_path: Path) -> None:
    script = tmp_path / "daemon.py"
    script.write_text(CHILD_OF_A_DAEMON)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    daemon = subprocess.Popen([PY, str(script), str(tmp_path)], stdout=subprocess.PIPE,
                              cwd=REPO, env=env)
    service_pid: int | None = None
    try:
        assert daemon.stdout is not None
        readable, _, _ = select.select([daemon.stdout], [], [], 30.0)
        assert readable, "the stand-in daemon did not report its service's pid"
        line = daemon.stdout.readline().decode().strip()
        assert line.isdigit(), line
        service_pid = int(line)
        assert proc.pid_alive(service_pid)

        daemon.kill()
        daemon.wait(timeout=10)
        assert wait_for(lambda: not proc.pid_alive(service_pid or 0), timeout=5.0), \
            "the service outlived its SIGKILLed daemon"
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
        if service_pid is not None and proc.pid_alive(service_pid):
            os.kill(service_pid, signal.SIGKILL)


# -- the registry -------------------------------------------------------------------------------


def test_the_default_registry_has_the_built_in_types() -> None:
    registry = default_registry()
    assert {"dummy", "application"} <= set(registry.names())
    assert isinstance(registry.get("dummy"), DummyType)
    assert isinstance(registry.get("application"), ApplicationType)


def test_an_unknown_type_is_reported_with_the_known_ones() -> None:
    with pytest.raises(KeyError) as caught:
        default_registry().get("aplication")
    message = str(caught.value)
    assert "unknown resource type 'aplication'" in message
    assert "application, dummy" in message
    assert "did you mean 'application'" in message


def test_a_broken_plugin_is_skipped_and_the_good_ones_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "good_vigil_plugin.py").write_text(textwrap.dedent("""
        from vigil.resources.dummy import DummyType

        class EchoType(DummyType):
            def typename(self) -> str:
                return "echo"
    """))
    dist = tmp_path / "vigil_test_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vigil-test-plugins\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [vigil.resource_types]
        echo = good_vigil_plugin:EchoType
        broken = no_such_module_for_vigil:Type
        notatype = os:getcwd
    """))
    monkeypatch.syspath_prepend(str(tmp_path))

    registry = ResourceTypeRegistry()
    loaded = registry.load_entry_points()
    assert "echo" in loaded
    assert "echo" in registry.names()
    assert "ModuleNotFoundError" in registry.load_errors["broken"]
    assert "not a ResourceType" in registry.load_errors["notatype"]
    with pytest.raises(UnloadableResourceType, match="'broken' cannot be loaded: "
                       "ModuleNotFoundError"):
        registry.get("broken")
    config = ResourceConfig(name="e", type="echo", group="g")
    assert isinstance(registry.get("echo").instantiate(config, "n1", tmp_path), Resource)


def test_a_lazy_type_whose_module_fails_is_no_type_here_and_says_why() -> None:
    registry = ResourceTypeRegistry()
    registry.register_lazy("broken", "no_such_module_for_vigil:Type")
    registry.register_lazy("dummy", "vigil.resources.dummy:DummyType")
    assert registry.names() == ["broken", "dummy"]
    assert "broken" not in registry  # not an ImportError out of `in`
    why = ("no_such_module_for_vigil: ModuleNotFoundError: No module named "
           "'no_such_module_for_vigil'")
    assert registry.load_errors == {"broken": why}
    with pytest.raises(UnloadableResourceType) as caught:
        registry.get("broken")
    assert str(caught.value) == f"resource type 'broken' cannot be loaded: {why}"
    assert registry.names() == ["dummy"]
    assert "dummy" in registry


def test_a_type_name_cannot_be_taken_twice() -> None:
    registry = ResourceTypeRegistry()
    registry.register(DummyType())
    registry.register(DummyType())  # the same class again: harmless

    class Impostor(ApplicationType):
        def typename(self) -> str:
            return "dummy"

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Impostor())
