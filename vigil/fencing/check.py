"""``vigil config check`` for fence devices: each agent found and answering metadata, each
parameter known to it and of its type, each required one given.

Loading a configuration (:func:`vigil.config.load`) checks everything that needs no agent
(names, hosts, plugs, levels); the daemon loads it often, so it never runs one. This module
runs each device's agent once (``action=metadata``), for the check only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from vigil.config import ClusterConfig, ConfigProblem, FenceDevice, FenceParamValue
from vigil.fencing.agents import FenceAgentError, is_secret, read_metadata
from vigil.fencing.metadata import FenceMetadata, FenceMetadataError, FenceParameter
from vigil.resources.model import unknown_params
from vigil.resources.ocf import param_string

__all__ = ["check_fence_devices", "check_params"]

#: What ``fencing.py`` takes as a boolean's value (anything else is ignored, with a warning).
_BOOLEANS = ("1", "yes", "on", "true", "0", "no", "off", "false")
#: Fencing needs one of these; Vigil asks for ``off`` where both are there.
_POWER_ACTIONS = ("off", "reboot")


def check_params(device: FenceDevice, metadata: FenceMetadata) -> list[tuple[str, str]]:
    """Problems of ``device``'s parameters against its agent's metadata, as (key, message):
    unknown (with the closest known name), of the wrong type, required and missing."""
    key = f"fence_devices.{device.name}"
    agent = metadata.name or device.agent
    problems = [(f"{key}.params", f"{agent}: {problem}")
                for problem in unknown_params(device.params, metadata.names())]
    for name, value in sorted(device.params.items()):
        parameter = metadata.parameter(name)
        if parameter is not None:
            problem = _type_problem(parameter, value)
            if problem:
                problems.append((f"{key}.params.{_bare(name)}", f"{agent}: {problem}"))
    given = set(device.params) | {"action", "nodename"}
    plug = device.host_argument if device.host_argument is not None \
        else metadata.host_argument
    if plug is not None and plug != "none":
        given.add(plug)  # passed by Vigil for each operation
    newest = _newest(metadata)
    for parameter in metadata.parameters:
        if parameter.required and not metadata.aliases(parameter.name) & given:
            if parameter.name not in newest:
                continue  # its newer name is required too: named once, by that name
            what = f" ({parameter.shortdesc})" if parameter.shortdesc else ""
            problems.append((f"{key}.params", f"{agent}: required parameter "
                             f"'{parameter.name}'{what} is missing"))
    if not any(metadata.supports(action) for action in _POWER_ACTIONS):
        problems.append((f"{key}.agent", f"{agent} supports neither 'off' nor 'reboot' (its "
                         f"actions: {', '.join(metadata.actions) or 'none'}), so it cannot "
                         "fence"))
    return problems


def _bare(name: str) -> str:
    """``name`` as a TOML key: bare where it can be, else quoted."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _newest(metadata: FenceMetadata) -> set[str]:
    """Parameters that no other one obsoletes."""
    obsoleted = {p.obsoletes for p in metadata.parameters if p.obsoletes}
    return {p.name for p in metadata.parameters if p.name not in obsoleted}


def _type_problem(parameter: FenceParameter, value: FenceParamValue) -> str:
    text = param_string(value)
    shown = "***" if is_secret(parameter.name) else repr(text)
    if parameter.type == "boolean" and text.lower() not in _BOOLEANS:
        return f"'{parameter.name}' is a boolean: give true or false, got {shown}"
    if parameter.type == "integer" and not _reads_as(int, text):
        return f"'{parameter.name}' is an integer, got {shown}"
    if parameter.type == "second" and not _reads_as(float, text):
        return f"'{parameter.name}' is a number of seconds, got {shown}"
    if parameter.type == "select" and parameter.choices and text not in parameter.choices:
        return (f"'{parameter.name}' is one of {', '.join(parameter.choices)}, got {shown}")
    return ""


def _reads_as(convert: Callable[[str], object], text: str) -> bool:
    try:
        convert(text)
    except ValueError:
        return False
    return True


def check_fence_devices(
    config: ClusterConfig,
    metadata_of: Callable[[str], FenceMetadata] = read_metadata,
) -> list[ConfigProblem]:
    """Every problem of ``config``'s fence devices that needs their agents: an agent that
    does not exist or does not answer metadata, and :func:`check_params`'s problems.
    Runs each agent (``action=metadata``) once."""
    file = str(config.path)
    problems: list[ConfigProblem] = []
    known: dict[str, FenceMetadata | None] = {}
    for device in config.fence_devices.values():
        if device.agent not in known:
            known[device.agent] = _metadata(device, metadata_of, problems, file)
        metadata = known[device.agent]
        if metadata is not None:
            problems += [ConfigProblem(file, key, message)
                         for key, message in check_params(device, metadata)]
    return problems


def _metadata(device: FenceDevice, metadata_of: Callable[[str], FenceMetadata],
              problems: list[ConfigProblem], file: str) -> FenceMetadata | None:
    try:
        return metadata_of(device.agent)
    except (FenceAgentError, FenceMetadataError) as exc:
        problems.append(ConfigProblem(file, f"fence_devices.{device.name}.agent", str(exc)))
        return None
