"""Typed, immutable notifications for applications (the seed's "application notification")."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Notification:
    """Something happened in the cluster, as this node saw it.

    ``kind`` is one of: ``transition`` (started/completed), ``membership`` (node joined,
    lost, left), ``quorum``, ``placement``, ``group`` (started, stopped, failed), ``fencing``,
    ``config``, ``request``, ``resource``.
    """

    kind: str
    text: str
    node: str
    time: float  # seconds since the epoch (wall clock), for people
    fields: tuple[tuple[str, str], ...] = ()

    def field(self, name: str, default: str = "") -> str:
        return dict(self.fields).get(name, default)
