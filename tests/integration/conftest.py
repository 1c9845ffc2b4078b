"""Fixtures of the integration tests that need the services running."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from paysim.infra.config import Settings
from paysim.stack.manager import LocalStack
from tests.helpers import settings_for
from tests.integration.pipeline_helpers import pipeline_on, redis_cluster_flags


@pytest.fixture(scope="module")
def pipeline(local_stack, service_flags: dict[str, object]) -> Iterator[Settings]:
    """run-all in the background against the test stack, with no random issuer declines so
    every outcome is the one the generator injected."""
    with pipeline_on(service_flags) as settings:
        yield settings


@pytest.fixture(scope="session")
def redis_cluster(local_stack, service_flags: dict[str, object],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The flags of a Redis Cluster beside the suite's broker, started once by paysim's own
    stack code (`stack up --redis-cluster`: 3 primaries, a replica each) for the modules
    that run the services on it; stopped at the end of the session."""
    flags = {**service_flags, **redis_cluster_flags(tmp_path_factory.mktemp("redis-cluster"))}
    stack = LocalStack(settings_for(flags).stack, announce=print, kafka=False)
    try:
        stack.up()
        yield flags
    finally:
        stack.down()
