"""docker-compose.yml cannot run here (no Docker engine): check it matches paysim's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from paysim.infra.config import load_settings
from paysim.stack.jars import kafka_version
from paysim.stack.kafka import SINGLE_NODE_SETTINGS
from paysim.stack.redis import PERSISTENCE_SETTINGS

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def published_ports(service: dict) -> set[int]:
    return {int(mapping.split(":")[-2]) for mapping in service["ports"]}


def test_ports_match_the_local_stack_defaults(services: dict) -> None:
    defaults = load_settings(env={}).stack
    assert published_ports(services["kafka"]) == {defaults.kafka_port}
    assert published_ports(services["redis"]) == {defaults.redis_port}
    for service in services.values():
        assert all(mapping.startswith("127.0.0.1:") for mapping in service.get("ports", []))


def test_kafka_runs_the_pinned_version_with_the_single_node_settings(services: dict) -> None:
    kafka = services["kafka"]
    assert kafka["image"] == f"apache/kafka:{kafka_version()}"
    env = kafka["environment"]
    for prop, value in SINGLE_NODE_SETTINGS.items():
        name = "KAFKA_" + prop.upper().replace(".", "_")
        assert env.get(name) == value, f"{name} should be {value!r} as in the local stack"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == (
        f"PLAINTEXT://{load_settings(env={}).kafka_bootstrap}"
    )


def test_data_lives_on_the_named_volumes(services: dict) -> None:
    kafka_dir = services["kafka"]["environment"]["KAFKA_LOG_DIRS"]
    assert f"kafka-data:{kafka_dir}" in services["kafka"]["volumes"]
    assert "redis-data:/data" in services["redis"]["volumes"]


def test_redis_keeps_an_append_only_file(services: dict) -> None:
    command = services["redis"]["command"]
    for key, value in PERSISTENCE_SETTINGS.items():
        assert command[command.index(f"--{key}") + 1] == value
