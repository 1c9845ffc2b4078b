"""A private stack driven through the real CLI: kills, restarts, and a clean `stack down`."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from paysim.config import Settings
from paysim.stack.process import is_alive
from paysim.topics import ensure_topics
from paysim.waiting import wait_until
from tests.helpers import cli_args, private_stack_flags, run_paysim, settings_for
from tests.integration.kafka_helpers import consume_all, produce_numbered


class CliStack:
    def __init__(self, flags: dict[str, object]) -> None:
        self.args = cli_args(flags)
        self.settings: Settings = settings_for(flags)

    def run(self, *command: str):
        return run_paysim(*command, *self.args)

    def up(self) -> str:
        result = self.run("stack", "up")
        assert result.returncode == 0, result.stderr
        return result.stdout

    def status(self) -> tuple[int, dict[str, dict]]:
        result = self.run("stack", "status", "--json")
        return result.returncode, json.loads(result.stdout)

    def kill(self, name: str) -> int:
        _, status = self.status()
        pid = status[name]["pid"]
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not is_alive(pid), timeout=10)
        return pid


@pytest.fixture(scope="module")
def cli_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliStack]:
    stack = CliStack(private_stack_flags(tmp_path_factory.mktemp("lifecycle")))
    try:
        yield stack
    finally:
        stack.run("stack", "down")


def test_killed_broker_shows_down_and_comes_back_with_its_records(cli_stack: CliStack) -> None:
    cli_stack.up()
    topic = f"test.survives.{uuid.uuid4().hex[:8]}"
    ensure_topics(cli_stack.settings, [topic])
    produce_numbered(cli_stack.settings, topic, 300)

    killed = cli_stack.kill("kafka")
    code, status = cli_stack.status()
    assert code == 1
    assert status["kafka"]["state"] == "down"
    assert status["redis"]["state"] == "up"

    output = cli_stack.up()
    assert "kafka  started" in output
    assert "redis  already running" in output
    code, status = cli_stack.status()
    assert code == 0
    assert status["kafka"]["pid"] != killed
    received = consume_all(cli_stack.settings, topic, expected=300)
    assert sorted(value for _, value in received) == list(range(300))


def test_killed_redis_shows_down_and_comes_back_with_its_keys(cli_stack: CliStack) -> None:
    cli_stack.up()
    client = redis.Redis.from_url(cli_stack.settings.redis_url)
    client.set("paysim:test:durable", "kept")
    client.close()

    cli_stack.kill("redis")
    code, status = cli_stack.status()
    assert code == 1
    assert status["redis"]["state"] == "down"

    output = cli_stack.up()
    assert "redis  started" in output
    assert "kafka  already running" in output
    client = redis.Redis.from_url(cli_stack.settings.redis_url)
    assert client.get("paysim:test:durable") == b"kept"
    client.close()


def test_status_json_describes_each_component(cli_stack: CliStack) -> None:
    cli_stack.up()
    code, status = cli_stack.status()
    assert code == 0
    assert set(status) == {"kafka", "redis"}
    for name, port in (("kafka", cli_stack.settings.stack.kafka_port),
                       ("redis", cli_stack.settings.stack.redis_port)):
        entry = status[name]
        assert entry["state"] == "up"
        assert entry["address"] == f"127.0.0.1:{port}"
        assert Path(entry["data_dir"]).is_dir()
        assert entry["version"][0].isdigit()
        assert is_alive(entry["pid"])


def test_down_leaves_no_started_process_and_a_second_down_is_fine(cli_stack: CliStack) -> None:
    cli_stack.up()
    _, status = cli_stack.status()
    pids = [entry["pid"] for entry in status.values()]

    result = cli_stack.run("stack", "down")
    assert result.returncode == 0, result.stderr
    assert not [pid for pid in pids if is_alive(pid)]
    code, status = cli_stack.status()
    assert code == 1
    assert {entry["state"] for entry in status.values()} == {"down"}

    again = cli_stack.run("stack", "down")
    assert again.returncode == 0
    assert "nothing to stop" in again.stdout
