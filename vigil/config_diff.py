"""What differs between two cluster files, key by key: ``vigil config diff``.

Pure: it compares two parsed TOML documents (:attr:`vigil.config.ClusterConfig.document`,
or the ``document`` the daemon's ``config`` request answers) and knows nothing of what the
keys mean. Each :class:`Difference` names one key by its path (``groups.web.stickiness``,
``resources.web-ip.params.address``, list items by index: ``nodes.alpha.links[0].port``)
with its old and new value (:data:`ABSENT` where the key is not there).

The values of fence devices' ``params`` may be passwords (as :class:`vigil.config.FenceDevice`
says): what is shown to a person (:meth:`Difference.render`, :meth:`Difference.to_json`)
says that they changed, never what they are.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["ABSENT", "Difference", "apply", "differences", "json_safe"]


class _Absent:
    """The value of a key that one of the two documents does not have."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Final = _Absent()

Key = str | int
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_HIDDEN: Final = "(hidden)"


@dataclass(frozen=True, slots=True)
class Difference:
    keys: tuple[Key, ...]  # table keys (str) and list indexes (int), from the top
    old: object  # ABSENT: added
    new: object  # ABSENT: removed

    @property
    def path(self) -> str:
        """The dotted path, TOML's way: ``resources."odd.name".params.address``, ``[0]``."""
        out = ""
        for key in self.keys:
            if isinstance(key, int):
                out += f"[{key}]"
            else:
                out += f".{_key_name(key)}" if out else _key_name(key)
        return out

    @property
    def kind(self) -> str:
        """``added``, ``removed`` or ``changed``."""
        if self.old is ABSENT:
            return "added"
        return "removed" if self.new is ABSENT else "changed"

    @property
    def secret(self) -> bool:
        """Whether the values may be secrets (a fence device's parameters)."""
        return len(self.keys) >= 3 and self.keys[0] == "fence_devices" and self.keys[2] == "params"

    def render(self) -> str:
        """One line for people: ``~ groups.web.stickiness: 100 -> 200``, ``+ groups.db
        (new)``, ``- resources.old-ip (removed)``."""
        if self.kind == "added":
            return f"+ {self.path}{self._shown(self.new)} (new)"
        if self.kind == "removed":
            return f"- {self.path}{self._shown(self.old)} (removed)"
        return f"~ {self.path}: {self._value(self.old)} -> {self._value(self.new)}"

    def to_json(self) -> dict[str, Any]:
        """``{"path", "kind", "old", "new"}``, JSON-safe (an absent value is left out)."""
        out: dict[str, Any] = {"path": self.path, "kind": self.kind}
        for name, value in (("old", self.old), ("new", self.new)):
            if value is not ABSENT:
                out[name] = _HIDDEN if self.secret else json_safe(value)
        return out

    def _shown(self, value: object) -> str:
        # a whole table added or removed is named; its keys are in the file
        return "" if isinstance(value, Mapping) else f": {self._value(value)}"

    def _value(self, value: object) -> str:
        return _HIDDEN if self.secret else _toml(value)


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Difference]:
    """Every key whose value differs from ``old`` to ``new``, in key order. A table or list
    that is only on one side is one difference; tables and lists on both are compared key by
    key (index by index: items past the shorter list are added or removed). Values compare
    by type too: ``1``, ``1.0`` and ``true`` differ, as they do in TOML."""
    out: list[Difference] = []
    _compare((), old, new, out)
    return out


def _compare(keys: tuple[Key, ...], old: object, new: object, out: list[Difference]) -> None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new)):
            _compare((*keys, key), old.get(key, ABSENT), new.get(key, ABSENT), out)
    elif isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            _compare((*keys, i), old[i] if i < len(old) else ABSENT,
                     new[i] if i < len(new) else ABSENT, out)
    elif not _same(old, new):
        out.append(Difference(keys, old, new))


def _same(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # TOML's nan is one value
    return a == b


def apply(old: Mapping[str, Any], diffs: list[Difference]) -> dict[str, Any]:
    """``old`` with ``diffs`` applied (a copy): ``apply(a, differences(a, b)) == b``."""
    doc: dict[str, Any] = _copy(old)
    # removals last, of list items from the highest index down: lower indexes stay right
    # (the rest keep their order: items past a list's end are appended in index order)
    for d in sorted(diffs, key=lambda d: (d.kind == "removed",
                                          _removal_order(d) if d.kind == "removed" else ())):
        *parents, last = d.keys
        container: Any = doc
        for key in parents:
            container = container[key]
        if d.new is ABSENT:
            del container[last]
        elif isinstance(container, list) and last == len(container):
            container.append(_copy(d.new))
        else:
            container[last] = _copy(d.new)
    return doc


def _removal_order(d: Difference) -> tuple[int, ...]:
    return tuple(-k if isinstance(k, int) else 0 for k in d.keys)


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def json_safe(value: object) -> Any:
    """A parsed TOML value as JSON can carry it: dates and times become ISO 8601 strings."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return value


def _key_name(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _toml(value: object) -> str:
    """A value as TOML writes it inline (close enough for people: strings quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key_name(str(k))} = {_toml(v)}"
                                for k, v in value.items()) + " }"
    return repr(value) if isinstance(value, float) else str(value)
