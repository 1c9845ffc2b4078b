"""One local stack (real Kafka broker and redis-server) shared by the integration tests, and
the `integration` marker: every test under tests/integration has it, and no other test may
start the stack (`pytest -m "not integration"` runs the pure tests alone)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from paysim.infra.config import Settings
from paysim.stack.manager import LocalStack
from tests.helpers import private_stack_flags, settings_for

INTEGRATION_DIR = Path(__file__).parent / "integration"
# The fixtures that start the local stack or the services on it.
STACK_FIXTURES = frozenset({"local_stack", "pipeline"})


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration needs the real broker and Redis."""
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test outside tests/integration that asks for the stack would start it in a
    `-m "not integration"` run: refuse it rather than let it slow the pure tests down."""
    wants_stack = STACK_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if wants_stack and item.get_closest_marker("integration") is None:
        pytest.fail(f"{item.nodeid} uses {', '.join(sorted(wants_stack))} but is not marked "
                    "integration (put it under tests/integration)", pytrace=False)


@pytest.fixture(scope="session")
def stack_flags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return private_stack_flags(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="session")
def service_flags(stack_flags: dict[str, object],
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The stack's flags plus private folders for keys, service logs and runs' files."""
    home = tmp_path_factory.mktemp("paysim-home")
    return {**stack_flags, "secrets.file": str(home / "secrets.json"),
            "services.dir": str(home / "services"), "lifecycle.runs_dir": str(home / "runs")}


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
