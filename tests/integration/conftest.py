"""Fixtures of the integration tests that need the services running."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from paysim.config import Settings, settings_env
from tests.helpers import free_port, run_paysim, settings_for


@pytest.fixture(scope="module")
def pipeline(local_stack, service_flags: dict[str, object]) -> Iterator[Settings]:
    """run-all in the background against the test stack, with no random issuer declines so
    every outcome is the one the generator injected."""
    settings = settings_for({**service_flags, "http.port": free_port(),
                             "issuer.decline_rate": 0, "issuer.fault_rate": 0})
    started = run_paysim("run-all", "--detach", env=settings_env(settings))
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield settings
    finally:
        run_paysim("stop", env=settings_env(settings))
