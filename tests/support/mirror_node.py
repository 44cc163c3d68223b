"""A node's mirror receiver alone in a process of its own, for tests that kill it mid-stream:
``python -m tests.support.mirror_node SETTINGS_JSON`` (node, endpoints, cluster key, the
mirror resources' root, subvolume and keep). It prints "ready PORT" once it listens and runs
until killed."""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path

from vigil.resources.replication import MirrorService, MirrorSpec
from vigil.transports.keys import LinkKeys


def main() -> None:
    settings = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    node = settings["node"]
    endpoints = {n: (a, int(p)) for n, (a, p) in settings["endpoints"].items()}
    keys = LinkKeys.derive([settings["key"].encode()], "test", set(endpoints), node)
    specs = [MirrorSpec(r["resource"], Path(r["root"]), r["subvolume"], Path("/nonexistent"),
                        keep=int(r["keep"])) for r in settings["mirrors"]]
    service = MirrorService(node, specs, endpoints, keys, lambda _fact: None,
                            idle_timeout=3.0, stream_timeout=3.0)
    service.start()
    assert service.server is not None
    print(f"ready {service.server.port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
