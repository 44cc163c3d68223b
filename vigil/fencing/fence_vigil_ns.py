"""fence_vigil_ns: a fence agent for Vigil's network-namespace test hosts.

A test host (``tests/support/nscluster.py``) is a network namespace named in ``/run/netns``
(``ip netns``) with processes in it. This agent powers one off as the test harness does: it
unplugs the host (every interface but ``lo`` set down, so its addresses stop answering), then
SIGKILLs every process in the namespace until none is left (found through ``/proc/*/ns/net``,
the code the harness uses: :mod:`vigil.fencing.netns`). ``on`` plugs the interfaces back in;
it cannot boot anything (whoever runs the host starts its daemon again). ``status`` is ``on``
while a process runs in the namespace or an interface other than ``lo`` is up.

It keeps the ``fence-agents`` contract, so Vigil runs it exactly as it runs ``fence_ipmilan``:
``name=value`` lines on stdin (``action``, ``plug`` = the namespace's name, ``port`` its old
name, ``power_timeout``; ``nodename`` and unknown names are ignored, with a warning for the
latter), or for a person ``-o ACTION -n PLUG`` on the command line; exit 0 on success, 1 on
failure with the reason on stderr (``... ERROR: Failed: ...``), and ``status`` exits 0 for on,
2 for off. ``action=metadata`` prints its metadata.

A namespace name is looked up in ``/run/netns``, and where that is not the machine's (a test
host has a private mount namespace, which does not see namespaces made after it was), in PID 1's
(``/proc/1/root/run/netns``). A file there that is not a namespace (an ``ip netns`` mount this
mount namespace does not see) is never taken for an empty, powered-off host. The machine's own
network namespace, and the agent's, are refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final
from xml.sax.saxutils import quoteattr

from vigil.fencing.netns import NamespaceId, held, kill_all, ns_id, pids_in
from vigil.resources import proc

log = logging.getLogger("fence_vigil_ns")

NAME: Final = "fence_vigil_ns"
NETNS_DIRS: Final = (Path("/run/netns"), Path("/proc/1/root/run/netns"))
ACTIONS: Final = ("on", "off", "reboot", "status", "list", "monitor", "metadata")
DEFAULT_POWER_TIMEOUT: Final = 10.0
_COMMAND_TIMEOUT: Final = 20.0
_PLUG_RE: Final = re.compile(r"[A-Za-z0-9_.+-]+")
#: Library exit codes (fence-agents' fencing.py): success, failure, and status "off".
EC_OK: Final = 0
EC_GENERIC_ERROR: Final = 1
EC_STATUS_OFF: Final = 2

#: (name, content type, required, default, deprecated, obsoletes, short description)
PARAMETERS: Final = (
    ("action", "string", True, "reboot", False, None, "Fencing action"),
    ("plug", "string", True, None, False, "port",
     "Name of the network namespace (ip netns) that is the host"),
    ("port", "string", True, None, True, None,
     "Name of the network namespace (ip netns) that is the host"),
    ("power_timeout", "second", False, str(int(DEFAULT_POWER_TIMEOUT)), False, None,
     "Seconds to wait for the host's processes to die after SIGKILL"),
    ("verbose", "boolean", False, None, False, None, "Verbose mode"),
)
_OPTIONS: Final = {"action", "plug", "port", "power_timeout", "verbose"}


class Failed(Exception):
    """The action failed; the message is the reason, for stderr."""


# -- the namespace ------------------------------------------------------------------------------


def _nsfs_device() -> int:
    return os.stat("/proc/self/ns/net").st_dev


def _ancestors() -> list[int]:
    """This process's ancestors, nearest first (up to init)."""
    out: list[int] = []
    pid = os.getppid()
    while pid > 1 and len(out) < 64:
        out.append(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def _netns_dirs() -> list[Path]:
    """Where `ip netns` names may be: here, then as each ancestor sees the machine (a test
    host's daemon runs in a mount namespace of its own, started from one that has them all),
    then as init sees it."""
    return [NETNS_DIRS[0], *(Path(f"/proc/{pid}/root/run/netns") for pid in _ancestors()),
            NETNS_DIRS[1]]


def find_namespace(plug: str) -> tuple[Path, NamespaceId]:
    """The namespace file named ``plug`` and its identity; Failed if there is none."""
    if not _PLUG_RE.fullmatch(plug) or plug in (".", ".."):
        raise Failed(f"plug {plug!r} is not a network namespace name")
    nsfs = _nsfs_device()
    seen = []
    for directory in _netns_dirs():
        path = directory / plug
        found = ns_id(str(path))
        if found is None:
            continue
        if found[0] != nsfs:
            seen.append(f"{path} is not a namespace here")
            continue
        own = {ns_id(f"/proc/{who}/ns/net") for who in ("self", "1")}
        if found in own:
            raise Failed(f"{path} is the network namespace of the machine or of this agent: "
                         "refusing to power it off")
        return path, found
    detail = f" ({'; '.join(seen)})" if seen else ""
    raise Failed(f"Unable to obtain correct plug status or plug is not available: no network "
                 f"namespace {plug!r} in {' or '.join(map(str, NETNS_DIRS))}{detail}")


def _ip(path: Path, *args: str) -> str:
    """``ip ARGS`` inside the namespace ``path``; Failed with its stderr if it fails."""
    for tool in ("nsenter", "ip"):
        if shutil.which(tool) is None:
            raise Failed(f"{tool} not found (Debian: apt-get install util-linux iproute2)")
    argv = ["nsenter", f"--net={path}", "--", "ip", *args]
    ran = proc.run(argv, timeout=_COMMAND_TIMEOUT, cwd="/")
    if not ran.ok:
        why = ran.start_problem() or proc.last_line(ran.stderr) or f"exit {ran.returncode}"
        raise Failed(f"`ip {' '.join(args)}` in {path.name} failed: {why}")
    return ran.stdout


def links(path: Path, *, up_only: bool = False) -> list[str]:
    """The interfaces of the namespace but ``lo``; with ``up_only``, those set up."""
    table: list[dict[str, object]] = json.loads(_ip(path, "-j", "link", "show") or "[]")
    return [str(link["ifname"]) for link in table if link.get("ifname") != "lo"
            and (not up_only or _is_up(link))]


def _is_up(link: dict[str, object]) -> bool:
    flags = link.get("flags")
    return isinstance(flags, list) and "UP" in flags


def _set_links(path: Path, state: str, names: Sequence[str]) -> None:
    for name in names:
        _ip(path, "link", "set", "dev", name, state)


def power_state(path: Path, namespace: NamespaceId) -> str:
    return "on" if pids_in([("net", namespace)]) or links(path, up_only=True) else "off"


def power_off(path: Path, namespace: NamespaceId, wait: float) -> None:
    """Unplug, then kill everything inside; Failed if processes survive ``wait`` seconds."""
    _set_links(path, "down", links(path, up_only=True))
    with held(str(path)) as now:
        if now != namespace:
            raise Failed(f"{path} was deleted or replaced while powering off")
        problems = kill_all(lambda: pids_in([("net", namespace)]), path.name, wait=wait)
    # A process may have set a link up again before it died.
    _set_links(path, "down", links(path, up_only=True))
    if problems:
        raise Failed(f"Timed out waiting to power OFF: {'; '.join(problems)}")
    if power_state(path, namespace) != "off":
        raise Failed("Timed out waiting to power OFF: the namespace still shows life")


def power_on(path: Path) -> None:
    _set_links(path, "up", links(path))


# -- the actions --------------------------------------------------------------------------------


def metadata() -> str:
    """The agent's metadata, in the fence-agents library's format."""
    lines = ['<?xml version="1.0" ?>',
             f'<resource-agent name="{NAME}" shortdesc="Fence agent for Vigil\'s '
             'network-namespace test hosts" >',
             "<longdesc>Powers off a network namespace that stands for a host: its "
             "interfaces are set down and every process in it is killed. For Vigil's test "
             "clusters; it powers nothing real.</longdesc>",
             "<vendor-url></vendor-url>",
             "<parameters>"]
    for name, kind, required, default, deprecated, obsoletes, shortdesc in PARAMETERS:
        extra = (' deprecated="1"' if deprecated else "") + \
            (f' obsoletes="{obsoletes}"' if obsoletes else "")
        option = "-n, --plug=[namespace]" if name in ("plug", "port") else \
            f"--{name.replace('_', '-')}" + ("" if kind == "boolean" else "=[value]")
        content_default = f" default={quoteattr(default)}" if default is not None else ""
        lines += [f'\t<parameter name="{name}" unique="0" required="{int(required)}"{extra}>',
                  f"\t\t<getopt mixed={quoteattr(option)} />",
                  f'\t\t<content type="{kind}"{content_default} />',
                  f'\t\t<shortdesc lang="en">{shortdesc}</shortdesc>',
                  "\t</parameter>"]
    lines += ["</parameters>", "<actions>", '\t<action name="on" automatic="0"/>']
    lines += [f'\t<action name="{action}" />' for action in ACTIONS if action != "on"]
    lines += ["</actions>", "</resource-agent>"]
    return "\n".join(lines) + "\n"


def _monitor() -> None:
    if os.geteuid() != 0:
        raise Failed("not root: cannot kill a namespace's processes")
    for tool in ("nsenter", "ip"):
        if shutil.which(tool) is None:
            raise Failed(f"{tool} not found (Debian: apt-get install util-linux iproute2)")


def _list() -> list[str]:
    names: set[str] = set()
    for directory in NETNS_DIRS:
        try:
            names |= {entry.name for entry in os.scandir(directory)}
        except OSError:
            continue
    return sorted(names)


def act(options: dict[str, str]) -> int:
    """Do ``options["action"]``: print what the library prints, return the exit code."""
    action = options.get("action", "reboot").lower()
    if action == "meta-data":
        action = "metadata"
    if action not in ACTIONS:
        raise Failed(f"Unrecognised action '{action}'")
    if action == "metadata":
        sys.stdout.write(metadata())
        return EC_OK
    if action == "monitor":
        _monitor()
        return EC_OK
    if action == "list":
        for name in _list():
            print(f"{name},")
        return EC_OK
    plug = options.get("plug") or options.get("port")
    if not plug:
        raise Failed("You have to enter plug number or machine identification")
    try:
        wait = float(options.get("power_timeout", DEFAULT_POWER_TIMEOUT))
    except ValueError:
        raise Failed(f"power_timeout {options['power_timeout']!r} is not a number of "
                     "seconds") from None
    path, namespace = find_namespace(plug)
    status = power_state(path, namespace)
    if action == "status":
        print(f"Status: {status.upper()}")
        return EC_OK if status == "on" else EC_STATUS_OFF
    if action == status:
        print(f"Success: Already {status.upper()}")
        return EC_OK
    if action in ("off", "reboot") and status != "off":
        log.info("powering off %s", path)
        power_off(path, namespace, wait)
    if action == "off":
        print("Success: Powered OFF")
        return EC_OK
    power_on(path)
    print("Success: Rebooted" if action == "reboot" else "Success: Powered ON")
    return EC_OK


# -- input --------------------------------------------------------------------------------------


def parse_stdin(lines: Sequence[str]) -> dict[str, str]:
    """Options from ``name=value`` lines, as ``fencing.py``'s ``_parse_input_stdin`` reads
    them: blank lines and ``#`` comments skipped, one pair of surrounding double quotes
    dropped, ``-`` in names read as ``_``."""
    options: dict[str, str] = {}
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        name = name.replace("-", "_")
        value = re.sub(r'^"(.*)"$', r"\1", value)
        if name == "nodename":
            continue  # Pacemaker and Vigil always pass it; the plug says which namespace
        if name not in _OPTIONS:
            log.warning("Parse error: Ignoring unknown option '%s'", name)
            continue
        options[name] = value
    return options


def parse_command_line(argv: Sequence[str]) -> dict[str, str]:
    parser = argparse.ArgumentParser(prog=NAME, description="Power off a network namespace "
                                     "that stands for a host (stdin: name=value lines).")
    parser.add_argument("-o", "--action", default="reboot", choices=ACTIONS)
    parser.add_argument("-n", "--plug", "--port", dest="plug", help="the namespace's name")
    parser.add_argument("--power-timeout", dest="power_timeout")
    parser.add_argument("-v", "--verbose", action="store_const", const="1")
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)-15s %(levelname)s: %(message)s",
                        level=logging.WARNING, stream=sys.stderr)
    options = parse_command_line(args) if args else parse_stdin(sys.stdin.readlines())
    if options.get("verbose", "").lower() in ("1", "yes", "on", "true"):
        log.setLevel(logging.DEBUG)
    try:
        return act(options)
    except Failed as exc:
        log.error("Failed: %s", exc)
        return EC_GENERIC_ERROR


if __name__ == "__main__":
    sys.exit(main())
