"""Strategy plug-ins: the built-in strategies plus those installed in the entry-point group
``vigil.strategies``. Loading installed packages is the shell's work; the pure core only knows
its built-ins (:data:`vigil.cluster.strategy.BUILTIN_STRATEGIES`) and is handed the instance."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from vigil.cluster.strategy import (
    BUILTIN_STRATEGIES,
    ENTRY_POINT_GROUP,
    Strategy,
    unknown_strategy,
)

__all__ = ["available_strategies", "load_strategy"]

log = logging.getLogger(__name__)

def available_strategies() -> dict[str, type[Strategy]]:
    """Every strategy by name: the built-ins, then the plug-ins that load (a built-in's name
    cannot be taken over)."""
    found: dict[str, type[Strategy]] = dict(BUILTIN_STRATEGIES)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plug-in must not take the daemon down
            log.warning("strategy plug-in %s could not be loaded: %s", ep.name, exc)
            continue
        if isinstance(cls, type) and issubclass(cls, Strategy):
            found[ep.name] = cls
        else:
            log.warning("strategy plug-in %s is not a vigil Strategy subclass", ep.name)
    return found


def load_strategy(name: str) -> Strategy:
    """A new instance of strategy ``name``; UnknownStrategy naming the known ones if none."""
    strategies = available_strategies()
    try:
        return strategies[name]()
    except KeyError:
        raise unknown_strategy(name, strategies) from None
