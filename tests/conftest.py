"""Test-wide settings. The machines that run the tests are shared and noisy: Hypothesis must
not fail a test because generating inputs was slow, and no example has a time limit."""

from __future__ import annotations

from collections.abc import Iterator

import pykka
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "vigil", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("vigil")


@pytest.fixture(autouse=True)
def _no_actor_outlives_its_test() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=10)


_TIERS = ("unit", "sim", "integration", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier (the folder it lives in): ``pytest -m unit`` and
    ``pytest tests/unit tests/sim`` give an answer in under a minute."""
    for item in items:
        parts = item.path.parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
                break
