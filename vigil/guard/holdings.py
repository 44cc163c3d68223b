"""What a node holds, as the daemon tells its guardian: per resource, the process groups, the
cgroup, the addresses and the mounts that the guardian removes when it fences the node.

Plain frozen data and its JSON form, pure (no I/O), so that the guardian's core
(:mod:`vigil.guard.core`) and the local protocol (:mod:`vigil.guard.protocol`) share it.
:meth:`Holdings.from_json` checks every field and raises :class:`ValueError` naming the field
and what is wrong with it, so that a malformed report is refused whole, never half-read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["Address", "Holdings", "MountHolding", "ResourceHolding"]

#: Linux interface names have at most 15 characters (IFNAMSIZ with its NUL).
_MAX_IFNAME: Final = 15
_MAX_PATH: Final = 4096


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _absolute(value: object, where: str) -> str:
    text = _text(value, where)
    if not text.startswith("/") or len(text) > _MAX_PATH:
        raise ValueError(f"{where} must be an absolute path, got {value!r}")
    return text


def _fields(value: object, where: str, known: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a JSON object, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise ValueError(f"{where} has unknown fields {', '.join(unknown)} "
                         f"(known: {', '.join(known)})")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a JSON array, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class Address:
    """An address on an interface: ``Address("eth0", "198.18.0.10/24")``."""

    ifname: str
    address: str  # address/prefix, as `ip addr` writes it

    def __post_init__(self) -> None:
        _text(self.ifname, "ifname")
        if len(self.ifname) > _MAX_IFNAME or "/" in self.ifname or ":" in self.ifname:
            raise ValueError(f"ifname {self.ifname!r} is not a Linux interface name")
        if "/" not in self.address:
            raise ValueError(f"address {self.address!r} needs its prefix length, e.g. "
                             "'198.18.0.10/24'")
        try:
            ipaddress.ip_interface(self.address)
        except ValueError:
            raise ValueError(f"address {self.address!r} is not an IPv4 or IPv6 "
                             "address/prefix") from None

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(self.address)

    def __str__(self) -> str:
        return f"{self.address} on {self.ifname}"

    def to_json(self) -> dict[str, str]:
        return {"ifname": self.ifname, "address": self.address}

    @classmethod
    def from_json(cls, value: object, where: str = "address") -> Address:
        t = _fields(value, where, ("ifname", "address"))
        return cls(_text(t.get("ifname"), f"{where}.ifname"),
                   _text(t.get("address"), f"{where}.address"))


@dataclass(frozen=True, slots=True)
class MountHolding:
    """A filesystem mounted for a resource: the device on the mount point."""

    mountpoint: str
    device: str  # the block device as mounted ("/dev/sdb1"), not a UUID= tag

    def __post_init__(self) -> None:
        _absolute(self.mountpoint, "mountpoint")
        if self.mountpoint.rstrip("/") == "":
            raise ValueError("mountpoint must not be '/'")
        _text(self.device, "device")

    def __str__(self) -> str:
        return f"{self.mountpoint} ({self.device})"

    def to_json(self) -> dict[str, str]:
        return {"mountpoint": self.mountpoint, "device": self.device}

    @classmethod
    def from_json(cls, value: object, where: str = "mount") -> MountHolding:
        t = _fields(value, where, ("mountpoint", "device"))
        return cls(_absolute(t.get("mountpoint"), f"{where}.mountpoint"),
                   _text(t.get("device"), f"{where}.device"))


@dataclass(frozen=True, slots=True)
class ResourceHolding:
    """What one resource in service holds on this node. A resource with none of these (a
    dummy, an agent whose processes Vigil cannot see) still counts as held: the guardian
    cannot remove it, but a reboot (``self_fence = "reboot"``) does."""

    name: str
    pgids: tuple[int, ...] = ()  # process groups (an application's, a monitor's)
    cgroup: str | None = None  # absolute path of the resource's cgroup v2 directory
    addresses: tuple[Address, ...] = ()
    mounts: tuple[MountHolding, ...] = ()

    def __post_init__(self) -> None:
        _text(self.name, "resource name")
        for pgid in self.pgids:
            # 0 and -1 mean "my group" and "everyone" to kill(2); 1 is init's.
            if isinstance(pgid, bool) or not isinstance(pgid, int) or pgid <= 1:
                raise ValueError(f"resource {self.name}: pgid {pgid!r} is not a process "
                                 "group of a resource (an integer > 1)")
        if self.cgroup is not None:
            _absolute(self.cgroup, f"resource {self.name}: cgroup")

    @property
    def opaque(self) -> bool:
        """Nothing here the guardian can remove, so nothing it can vouch for."""
        return not (self.pgids or self.cgroup or self.addresses or self.mounts)

    def __str__(self) -> str:
        parts = [f"pgid {p}" for p in self.pgids]
        parts += [f"cgroup {self.cgroup}"] if self.cgroup else []
        parts += [str(a) for a in self.addresses] + [f"mount {m}" for m in self.mounts]
        return f"{self.name} ({', '.join(parts) or 'nothing the guardian can remove'})"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.pgids:
            out["pgids"] = list(self.pgids)
        if self.cgroup is not None:
            out["cgroup"] = self.cgroup
        if self.addresses:
            out["addresses"] = [a.to_json() for a in self.addresses]
        if self.mounts:
            out["mounts"] = [m.to_json() for m in self.mounts]
        return out

    @classmethod
    def from_json(cls, value: object, where: str = "resource") -> ResourceHolding:
        t = _fields(value, where, ("name", "pgids", "cgroup", "addresses", "mounts"))
        name = _text(t.get("name"), f"{where}.name")
        pgids = _list(t.get("pgids", []), f"{where}.pgids")
        cgroup = t.get("cgroup")
        return cls(
            name=name,
            pgids=tuple(pgids),
            cgroup=None if cgroup is None else _absolute(cgroup, f"{where}.cgroup"),
            addresses=tuple(Address.from_json(a, f"{where}.addresses[{i}]")
                            for i, a in enumerate(_list(t.get("addresses", []),
                                                        f"{where}.addresses"))),
            mounts=tuple(MountHolding.from_json(m, f"{where}.mounts[{i}]")
                         for i, m in enumerate(_list(t.get("mounts", []), f"{where}.mounts"))),
        )


@dataclass(frozen=True, slots=True)
class Holdings:
    """Everything the node holds; empty: nothing (the guardian then never fences)."""

    resources: tuple[ResourceHolding, ...] = ()

    def __post_init__(self) -> None:
        names = [r.name for r in self.resources]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"resources listed twice: {', '.join(twice)}")

    @classmethod
    def of(cls, resources: Iterable[ResourceHolding]) -> Holdings:
        return cls(tuple(resources))

    @property
    def empty(self) -> bool:
        return not self.resources

    def __bool__(self) -> bool:
        return bool(self.resources)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.resources)

    @property
    def pgids(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(p for r in self.resources for p in r.pgids))

    @property
    def cgroups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.cgroup for r in self.resources if r.cgroup))

    @property
    def addresses(self) -> tuple[Address, ...]:
        return tuple(dict.fromkeys(a for r in self.resources for a in r.addresses))

    @property
    def mounts(self) -> tuple[MountHolding, ...]:
        return tuple(dict.fromkeys(m for r in self.resources for m in r.mounts))

    def __str__(self) -> str:
        return "; ".join(str(r) for r in self.resources) or "nothing"

    def merged(self, other: Holdings) -> Holdings:
        """Everything in either; a resource in both holds the parts of both."""
        mine = {r.name: r for r in self.resources}
        for r in other.resources:
            had = mine.get(r.name)
            mine[r.name] = r if had is None else ResourceHolding(
                r.name, pgids=tuple(dict.fromkeys(had.pgids + r.pgids)),
                cgroup=had.cgroup or r.cgroup,
                addresses=tuple(dict.fromkeys(had.addresses + r.addresses)),
                mounts=tuple(dict.fromkeys(had.mounts + r.mounts)))
        return Holdings(tuple(mine.values()))

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.resources]

    @classmethod
    def from_json(cls, value: object, where: str = "holdings") -> Holdings:
        return cls(tuple(ResourceHolding.from_json(r, f"{where}[{i}]")
                         for i, r in enumerate(_list(value, where))))
