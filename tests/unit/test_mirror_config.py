"""The configuration of mirrored data: the ``mirror`` type's parameters (what ``vigil config
check`` says about them) and each node's replication endpoint (its default, and the clash check
against the links)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_config import CLUSTER, NODES, document, only, problems, write
from vigil.config import load
from vigil.resources.registry import default_registry
from vigil.resources.replication import MirrorSpec, parse_bandwidth

MIRROR = """
[groups.db]
resources = ["db-data"]

[resources.db-data]
type = "mirror"
params.root = "/srv/mirror"
params.mount_point = "/var/lib/db"
"""


def test_the_mirror_type_is_registered_with_its_defaults() -> None:
    rtype = default_registry().get("mirror")
    assert rtype.check_params({"root": "/srv/mirror", "mount_point": "/var/lib/db"}) == []
    spec = MirrorSpec.of("db-data", {"root": "/srv/mirror", "mount_point": "/var/lib/db"})
    assert (spec.subvolume, spec.interval, spec.keep, spec.max_lag, spec.bandwidth) == \
        ("db-data", 1.0, 10, 30.0, None)
    spec = MirrorSpec.of("db-data", {"root": "/srv/mirror", "mount_point": "/var/lib/db",
                                     "subvolume": "db", "interval": "500ms", "keep": 3,
                                     "max_lag": "2m", "bandwidth": "50M"})
    assert (spec.subvolume, spec.interval, spec.keep, spec.max_lag, spec.bandwidth) == \
        ("db", 0.5, 3, 120.0, 50 * 1024 * 1024)


@pytest.mark.parametrize(("params", "said"), [
    ({"mount_point": "/var/lib/db"}, "missing required parameter 'root'"),
    ({"root": "/srv/mirror"}, "missing required parameter 'mount_point'"),
    ({"root": "srv", "mount_point": "/x"}, "root must be an absolute path"),
    ({"root": "/srv", "mount_point": "/"}, "mount_point must be an absolute path other than /"),
    ({"root": "/srv", "mount_point": "/x", "subvolume": "a.b"}, "subvolume must be letters"),
    ({"root": "/srv", "mount_point": "/x", "interval": "soon"}, "interval: expected a duration"),
    ({"root": "/srv", "mount_point": "/x", "interval": 0}, "interval must be more than"),
    ({"root": "/srv", "mount_point": "/x", "keep": 0}, "keep must be a whole number"),
    ({"root": "/srv", "mount_point": "/x", "keep": True}, "keep must be a whole number"),
    ({"root": "/srv", "mount_point": "/x", "max_lag": 0}, "max_lag must be more than"),
    ({"root": "/srv", "mount_point": "/x", "bandwidth": "fast"}, "bandwidth: expected bytes"),
    ({"root": "/srv", "mount_point": "/x", "bandwith": "5M"}, "did you mean 'bandwidth'?"),
])
def test_bad_mirror_params_are_named(params: dict[str, object], said: str) -> None:
    found = default_registry().get("mirror").check_params(params)  # type: ignore[arg-type]
    assert any(said in p for p in found), found
    with pytest.raises(ValueError, match="mirror resource 'db-data'"):
        MirrorSpec.of("db-data", params)  # type: ignore[arg-type]


def test_a_resource_name_that_cannot_name_a_subvolume_needs_one() -> None:
    with pytest.raises(ValueError, match=r"give params\.subvolume"):
        MirrorSpec.of("db.data", {"root": "/srv", "mount_point": "/x"})


@pytest.mark.parametrize(("text", "rate"), [(1024, 1024.0), ("512K", 524288.0),
                                            ("1.5M", 1.5 * 1024 ** 2), ("2G", 2.0 * 1024 ** 3),
                                            ("10MiB", 10.0 * 1024 ** 2)])
def test_bandwidths_are_bytes_per_second(text: str | int, rate: float) -> None:
    assert parse_bandwidth(text) == rate


def test_the_replication_endpoint_defaults_to_the_first_link_port_plus_20(
        tmp_path: Path) -> None:
    cfg = load(write(tmp_path, document(services=MIRROR)))
    assert cfg.nodes["alpha"].replication_endpoint == ("127.0.0.1", 7421)
    nodes = NODES.replace('port = 7402 }]', 'port = 7402 }]\nreplication_port = 7500')
    cfg = load(write(tmp_path, document(nodes=nodes, services=MIRROR)))
    assert cfg.nodes["beta"].replication_endpoint == ("127.0.0.1", 7500)


def test_a_replication_endpoint_that_clashes_with_a_link_is_refused(tmp_path: Path) -> None:
    nodes = NODES.replace('port = 7402 }]', 'port = 7402 }]\nreplication_port = 7403')
    found = problems(tmp_path, document(nodes=nodes, services=MIRROR))
    message = only(found, "nodes.beta.replication_port")
    assert "127.0.0.1 port 7403 is already used by nodes.gamma.links[0]" in message
    # the defaults of two nodes whose links are 20 apart clash with a link
    nodes = NODES.replace("7402", "7421")
    found = problems(tmp_path, document(nodes=nodes, services=MIRROR))
    assert "the default: the first link's port + 20" in only(
        found, "nodes.alpha.replication_port")


def test_without_a_mirror_resource_the_endpoint_is_not_checked(tmp_path: Path) -> None:
    nodes = NODES.replace("7402", "7421")
    assert load(write(tmp_path, document(cluster=CLUSTER, nodes=nodes))).nodes["beta"]
