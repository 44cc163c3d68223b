"""The seed's Message: a set of name/value pairs sent to all nodes or to one node.

A message is immutable (Pykka does not copy messages between actors, so immutable
messages are also thread-safe ones). Its envelope names the type, the sender, the
destination (``*`` for every node), the sender's incarnation (new at every daemon start)
and a per-sender sequence number. Authentication lives in :mod:`vigil.transports.codec`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

BROADCAST: Final = "*"

#: Node, group, resource and link names: short, printable, safe in topics, paths and
#: the /ha tree.
NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
#: Message types and field names.
TOKEN_RE: Final = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")


def _freeze(fields: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(fields))


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One name/value message. ``fields`` values are always strings."""

    type: str
    sender: str
    dest: str = BROADCAST
    fields: Mapping[str, str] = field(default_factory=dict)
    incarnation: int = 0
    seq: int = 0

    def __post_init__(self) -> None:
        if not TOKEN_RE.match(self.type):
            raise ValueError(f"message type {self.type!r} is not a valid token")
        if not NAME_RE.match(self.sender):
            raise ValueError(f"message sender {self.sender!r} is not a valid node name")
        if self.dest != BROADCAST and not NAME_RE.match(self.dest):
            raise ValueError(f"message destination {self.dest!r} is neither '*' nor a node name")
        for name, value in self.fields.items():
            if not isinstance(name, str) or not TOKEN_RE.match(name):
                raise ValueError(f"field name {name!r} is not a valid token")
            if not isinstance(value, str):
                raise ValueError(f"field {name!r} has a {type(value).__name__} value, not a string")
        object.__setattr__(self, "fields", _freeze(self.fields))

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)

    def __hash__(self) -> int:
        return hash((self.type, self.sender, self.dest, self.incarnation, self.seq,
                     tuple(sorted(self.fields.items()))))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.type, self.sender, self.dest, self.incarnation, self.seq,
                dict(self.fields)) == (other.type, other.sender, other.dest,
                                       other.incarnation, other.seq, dict(other.fields))

    def with_envelope(self, *, incarnation: int, seq: int) -> Message:
        return Message(type=self.type, sender=self.sender, dest=self.dest,
                       fields=self.fields, incarnation=incarnation, seq=seq)
