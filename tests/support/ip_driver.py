"""Holds ip resources in a long-lived process, as the daemon does, for tests/test_ip.py.

The tests start it inside a network namespace (``ip netns exec NS python -m tests.support.ip_driver
SPECS``) because the resource acts on the namespace of the process that runs it. SPECS is a JSON
list of ``{"name": ..., "params": {...}}`` (optionally ``start_timeout``, ``stop_timeout``).

It prints ``{"ready": true}``, then answers each JSON line on stdin, ``{"op": OP, "name": NAME}``
with OP one of start, stop, force_stop, monitor, state, validate, nics_changed (with ``"down":
[NIC, ...]``), with one JSON line: ``{"ok", "state", "reason", "active_nic"}``; validate:
``{"problems": [...]}``; nics_changed: ``{"result": null or {"ok", "state", "reason"},
"started": its time.monotonic() when called, "duration", "active_nic"}``. It exits when stdin
closes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from vigil.config import ResourceConfig
from vigil.resources.ip import IpResource, IpType
from vigil.resources.model import OpResult


def _config(spec: dict[str, Any]) -> ResourceConfig:
    return ResourceConfig(
        name=spec["name"], type="ip", group="test", params=spec["params"],
        start_timeout=float(spec.get("start_timeout", 15.0)),
        stop_timeout=float(spec.get("stop_timeout", 15.0)))


def _answer(result: OpResult) -> dict[str, Any]:
    return {"ok": result.ok, "state": result.state.value, "reason": result.reason}


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    rtype = IpType()
    configs = {spec["name"]: _config(spec) for spec in json.loads(sys.argv[1])}
    resources: dict[str, IpResource] = {
        name: rtype.instantiate(config, "node-test", Path("/nonexistent"))
        for name, config in configs.items()
    }
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        name, op = command["name"], command["op"]
        resource = resources[name]
        answer: dict[str, Any]
        if op == "validate":
            answer = {"problems": rtype.validate(configs[name])}
        elif op == "nics_changed":
            started = time.monotonic()
            changed = resource.nics_changed(frozenset(command["down"]))
            answer = {"result": None if changed is None else _answer(changed),
                      "started": started, "duration": time.monotonic() - started}
        elif op == "state":
            answer = {"ok": True, "state": resource.service_state().value,
                      "reason": resource.last_reason()}
        else:
            operation = {"start": resource.in_service, "stop": resource.oo_service,
                         "force_stop": resource.force_oos, "monitor": resource.monitor}[op]
            answer = _answer(operation())
        if op != "validate":
            answer["active_nic"] = resource.active_nic
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
