"""A private stack driven through the real CLI: kills, restarts, and a clean `stack down`."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from paysim.infra.config import Settings
from paysim.infra.topics import ensure_topics
from paysim.infra.waiting import wait_until
from paysim.stack.process import is_alive
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
    # A space and a non-ASCII letter in the path: configs must quote and escape it.
    stack = CliStack(private_stack_flags(tmp_path_factory.mktemp("life cycle é")))
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


def test_a_failed_start_reports_fresh_log_lines_and_stops_what_it_started(
    tmp_path: Path,
) -> None:
    stack = CliStack(private_stack_flags(tmp_path / "stack"))
    try:
        stack.up()
        assert stack.run("stack", "down").returncode == 0
        meta = stack.settings.stack.dir / "kafka" / "data" / "meta.properties"
        meta.write_text("this is not a properties file for any broker\n")

        failed = stack.run("stack", "up")

        assert failed.returncode == 1
        lines = failed.stderr.splitlines()
        assert lines[0] == "paysim: error: kafka exited while starting"
        assert "Traceback" not in failed.stderr
        assert "stopped redis, which this `up` had started" in failed.stderr
        # Only what this start wrote: the earlier clean run's shutdown is not in the tail.
        assert "shutting down" not in failed.stderr.lower()
        code, status = stack.status()
        assert code == 1
        assert {entry["state"] for entry in status.values()} == {"down"}

        fresh = stack.run("stack", "up", "--fresh")
        assert fresh.returncode == 0, fresh.stderr
        assert "wiping kafka data" in fresh.stdout
        assert stack.status()[0] == 0
    finally:
        stack.run("stack", "down")


def test_two_ups_at_once_start_each_component_once(tmp_path: Path) -> None:
    stack = CliStack(private_stack_flags(tmp_path / "stack"))
    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda _: stack.run("stack", "up"), range(2)))
        assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
        output = results[0].stdout + results[1].stdout
        assert output.count("kafka  started") == 1
        assert output.count("kafka  already running") == 1
        _, status = stack.status()
        pids = [entry["pid"] for entry in status.values()]
        assert stack.run("stack", "down").returncode == 0
        assert not [pid for pid in pids if is_alive(pid)]
    finally:
        stack.run("stack", "down")
