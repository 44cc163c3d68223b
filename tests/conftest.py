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
