"""Fixtures of the integration tests that need the services running."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from paysim.infra.config import Settings
from tests.helpers import free_port, settings_for
from tests.integration.pipeline_helpers import running_pipeline


@pytest.fixture(scope="module")
def pipeline(local_stack, service_flags: dict[str, object]) -> Iterator[Settings]:
    """run-all in the background against the test stack, with no random issuer declines so
    every outcome is the one the generator injected."""
    with running_pipeline(settings_for({**service_flags, "http.port": free_port(),
                                        "issuer.decline_rate": 0,
                                        "issuer.fault_rate": 0})) as settings:
        yield settings
