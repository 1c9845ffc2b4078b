"""One local stack (real Kafka broker and redis-server) shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from paysim.infra.config import Settings
from paysim.stack.manager import LocalStack
from tests.helpers import private_stack_flags, settings_for


@pytest.fixture(scope="session")
def stack_flags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return private_stack_flags(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="session")
def service_flags(stack_flags: dict[str, object],
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The stack's flags plus private folders for keys and service logs."""
    home = tmp_path_factory.mktemp("paysim-home")
    return {**stack_flags, "secrets.file": str(home / "secrets.json"),
            "services.dir": str(home / "services")}


@pytest.fixture(scope="session")
def settings(service_flags: dict[str, object]) -> Settings:
    return settings_for(service_flags)


@pytest.fixture(scope="session")
def local_stack(settings: Settings) -> Iterator[LocalStack]:
    """Started once with paysim's own stack code; stopped at the end of the session."""
    stack = LocalStack(settings.stack, announce=print)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
