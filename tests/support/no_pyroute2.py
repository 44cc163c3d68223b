"""pyroute2 refused, as if it were not installed or broken, in a fresh interpreter of a test
(this one has long imported it): ``install()`` puts first in ``sys.meta_path`` a finder that
refuses it and counts how often it was asked."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType


class Refuse:
    asked = 0

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name.partition(".")[0] != "pyroute2":
            return None
        Refuse.asked += 1
        raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)", name=name)


refuse = Refuse()


def install() -> None:
    assert "pyroute2" not in sys.modules, "too late: pyroute2 is loaded"
    sys.meta_path.insert(0, refuse)


def remove() -> None:
    sys.meta_path.remove(refuse)
