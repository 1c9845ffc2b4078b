"""Bad input and missing programs end as one line on stderr and a non-zero exit, no traceback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest

from paysim.cli import CLOSED_PIPE_EXIT
from paysim.cli.bench import bench
from paysim.cli.payments import send
from paysim.infra.config import load_settings
from paysim.stack import manager
from paysim.stack.jars import jars_ready
from tests.helpers import assert_one_line_error, cli_args, private_stack_flags
from tests.unit.cli_runner import PaysimCli


def path_with_only(tmp_path: Path, *programs: str) -> str:
    """A PATH holding links to just these programs."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for program in programs:
        found = shutil.which(program)
        assert found, f"{program} should be installed for this test"
        os.symlink(found, folder / program)
    return str(folder)


@pytest.fixture
def stack_args(tmp_path: Path) -> list[str]:
    return cli_args(private_stack_flags(tmp_path / "stack"))


# The programs are looked up on PATH and JAVA_HOME as the command runs: set in this process,
# they hide java and redis-server as well as a child's environment would.
def test_java_and_redis_missing_say_what_to_install(tmp_path: Path, stack_args,
                                                    paysim_cli: PaysimCli) -> None:
    env = {"PATH": path_with_only(tmp_path), "JAVA_HOME": ""}
    result = paysim_cli("stack", "up", *stack_args, env=env)
    assert_one_line_error(result, 3, "Java 17+", "apt-get install openjdk-17-jre-headless",
                          "redis-server", "apt-get install redis-server")


def test_only_redis_missing_names_only_redis(tmp_path: Path, stack_args,
                                            paysim_cli: PaysimCli) -> None:
    assert jars_ready(load_settings(env={}).stack.cache_dir), "the test setup fetches the jars"
    env = {"PATH": path_with_only(tmp_path, "java"), "JAVA_HOME": ""}
    result = paysim_cli("stack", "up", *stack_args, env=env)
    assert_one_line_error(result, 3, "redis-server (apt-get install redis-server)")
    assert "Java" not in result.stderr


def test_only_java_missing_names_only_java(tmp_path: Path, stack_args,
                                          paysim_cli: PaysimCli) -> None:
    env = {"PATH": path_with_only(tmp_path, "redis-server"), "JAVA_HOME": ""}
    result = paysim_cli("stack", "up", *stack_args, env=env)
    assert_one_line_error(result, 3, "Java 17+")
    assert "redis-server" not in result.stderr


def test_a_taken_port_is_reported_and_nothing_starts(tmp_path: Path, paysim_cli: PaysimCli,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The squatter never lets go: the grace `up` gives a port just freed (5 s) would only be
    # waited out.
    monkeypatch.setattr(manager, "PORT_GRACE_S", 0.3)
    flags = private_stack_flags(tmp_path / "stack")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", flags["stack.redis_port"]))
        squatter.listen()
        result = paysim_cli("stack", "up", *cli_args(flags))
    assert_one_line_error(result, 1, f"port {flags['stack.redis_port']}", "paysim did not start")
    assert not (tmp_path / "stack" / "redis" / "pid.json").exists()
    assert not (tmp_path / "stack" / "kafka" / "pid.json").exists()


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["stack", "up", "--frsh"], 2, "--frsh"),
        (["stack", "status", "--kafka-port", "nope"], 2, "--kafka-port: expected a whole number"),
        (["stack", "status", "--config", "/nonexistent/paysim.toml"], 2, "does not exist"),
        (["stak"], 2, "stak"),
    ],
)
def test_bad_flags_give_one_line(args: list[str], code: int, fragment: str,
                                 paysim_cli: PaysimCli) -> None:
    assert_one_line_error(paysim_cli(*args), code, fragment)


def test_bad_env_value_gives_one_line(paysim_cli: PaysimCli) -> None:
    result = paysim_cli("stack", "status", env={"PAYSIM_STACK_REDIS_PORT": "redis"})
    assert_one_line_error(result, 2, "PAYSIM_STACK_REDIS_PORT: expected a whole number")


def test_redis_unreachable_is_one_line(paysim_cli: PaysimCli) -> None:
    result = paysim_cli("ps", "--redis-url", "redis://127.0.0.1:1/0")
    assert_one_line_error(result, 1, "Redis")


@pytest.mark.parametrize("url", ["http://[::1", "ftp://example.com/x", "file:///etc/passwd",
                                 "http:// spaces.example"])
def test_a_bad_callback_url_is_refused_before_anything_is_sent(url: str,
                                                               paysim_cli: PaysimCli) -> None:
    result = paysim_cli("send", "--count", "1", "--callback-url", url)
    assert_one_line_error(result, 2, "--callback-url")


@pytest.mark.parametrize(("url", "why"), [
    ("http://127.0.0.1:6379/", "paysim's own Redis"),
    ("http://localhost:9092/", "paysim's own Kafka"),
    ("http://[::1]:8080/hook", "paysim's own HTTP API"),
    ("https://hooks.example.com/4242424242424242", "card number"),
    ("https://hooks.example.com/x?c=4242-4242-4242-4242", "card number"),
])
def test_a_callback_url_to_paysim_itself_or_holding_a_card_is_refused(
        url: str, why: str, paysim_cli: PaysimCli) -> None:
    result = paysim_cli("send", "--count", "1", "--callback-url", url)
    assert_one_line_error(result, 2, "--callback-url", why)
    assert "4242" not in result.stderr


def test_a_callback_url_outside_webhook_allow_is_refused(paysim_cli: PaysimCli) -> None:
    result = paysim_cli("send", "--count", "1", "--callback-url", "https://other.example/x",
                        env={"PAYSIM_WEBHOOK_ALLOW": "hooks.example.com"})
    assert_one_line_error(result, 2, "--callback-url", "not in webhook.allow")


NO_REDIS = ("--redis-url", "redis://127.0.0.1:1/0")


@pytest.mark.parametrize(("args", "flag"), [
    (["--rate", "nan", "--count", "5"], "--rate"),
    (["--stage", "10s:inf"], "--stage"),
])
def test_nan_and_inf_in_send_flags_are_bad_input(args: list[str], flag: str,
                                                  paysim_cli: PaysimCli) -> None:
    assert_one_line_error(paysim_cli("send", *args, *NO_REDIS), 2, flag)


def test_a_ramp_beyond_the_bounds_is_bad_input(paysim_cli: PaysimCli) -> None:
    result = paysim_cli("send", "--stage", "1h:1000000", *NO_REDIS)
    assert_one_line_error(result, 2, "--stage", "1,800,000,000", "100,000,000")
    result = paysim_cli("send", "--stage", "10s:1000000000", *NO_REDIS)
    assert_one_line_error(result, 2, "--stage")


def test_nan_in_a_scenario_is_bad_input(tmp_path: Path, paysim_cli: PaysimCli) -> None:
    scenario = tmp_path / "nan.toml"
    scenario.write_text("[issuer]\ndecline_rate = nan\n")
    result = paysim_cli("send", "--scenario", str(scenario), *NO_REDIS)
    assert_one_line_error(result, 2, "issuer.decline_rate")


# Parsed only, not run: were `bench --rate nan` accepted, the benchmark would start.
@pytest.mark.parametrize(("command", "args", "flag"), [
    (send, ["--rate", "nan"], "--rate"),
    (send, ["--rate", "inf"], "--rate"),
    (send, ["--rate", "2000000"], "--rate"),
    (send, ["--start-rate", "nan"], "--start-rate"),
    (send, ["--start-rate", "inf"], "--start-rate"),
    (send, ["--bad-share", "nan"], "--bad-share"),
    (send, ["--test-card-share", "nan"], "--test-card-share"),
    (send, ["--timeout", "nan"], "--timeout"),
    (send, ["--timeout", "inf"], "--timeout"),
    (send, ["--count", "100000001"], "--count"),
    (bench, ["--rate", "nan"], "--rate"),
    (bench, ["--rate", "inf"], "--rate"),
    (bench, ["--project-cores", "0"], "--project-cores"),
    (bench, ["--project-partitions", "0"], "--project-partitions"),
    (bench, ["--partitions", "0"], "--partitions"),
    (bench, ["--project-primaries", "x"], "--project-primaries"),
    (bench, ["--project-workers", "0"], "--project-workers"),
])
def test_number_flags_refuse_nan_inf_and_out_of_bounds(command: click.Command, args: list[str],
                                                       flag: str) -> None:
    with pytest.raises(click.BadParameter) as error:
        command.make_context(command.name, args)
    assert flag in error.value.format_message()


# Root (as the tests run here) writes through chmod, so an unwritable state folder is made the
# way that stops root too: a path under a regular file (NotADirectoryError, or FileExistsError
# from mkdir).
@pytest.fixture
def blocker(tmp_path: Path) -> Path:
    path = tmp_path / "blocker"
    path.write_text("a file where a folder should be\n")
    return path


UNREACHABLE = {"PAYSIM_REDIS_URL": "redis://127.0.0.1:1/0",
               "PAYSIM_KAFKA_BOOTSTRAP": "127.0.0.1:1"}


@pytest.mark.parametrize(("args", "setting", "under"), [
    (["run-all", "--detach"], "PAYSIM_SERVICES_DIR", "services"),
    (["run-all", "--no-live"], "PAYSIM_SERVICES_DIR", "services"),
    (["stop"], "PAYSIM_SERVICES_DIR", "services"),
    (["stack", "prepare"], "PAYSIM_STACK_CACHE_DIR", "cache"),
])
def test_an_unwritable_state_folder_is_one_line_naming_it(
        blocker: Path, args: list[str], setting: str, under: str,
        paysim_cli: PaysimCli) -> None:
    """In this process: run-all stops at its folder, before it starts or spawns anything."""
    path = blocker / under
    env = {setting: str(path), **UNREACHABLE}
    assert_one_line_error(paysim_cli(*args, env=env), 1, str(path))


@pytest.mark.parametrize("service", ["authorizer", "http"])
def test_a_service_that_cannot_write_its_secrets_logs_one_line(
        blocker: Path, service: str, paysim_cli: PaysimCli) -> None:
    """A service's failure is a log line (run-all keeps its log), not `paysim: error:`.
    In this process: the service stops at its keys, before it starts a thread or a server."""
    path = blocker / "secrets.json"
    result = paysim_cli("service", service, env={"PAYSIM_SECRETS_FILE": str(path),
                                                 **UNREACHABLE})
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot write the secrets file {path}" in lines[0], lines
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("service", ["authorizer", "notifier"])
def test_conformance_without_the_candidate_s_secrets_says_so_before_it_connects(
        tmp_path: Path, service: str, paysim_cli: PaysimCli) -> None:
    """Keys made up here would seal cards and sign webhooks the candidate cannot read."""
    path = tmp_path / "secrets.json"
    result = paysim_cli("conformance", service, env={"PAYSIM_SECRETS_FILE": str(path),
                                                     **UNREACHABLE})
    assert_one_line_error(result, 2, f"conformance {service}: no secrets: {path}")
    assert not path.exists()


def test_bench_names_an_unwritable_out_before_it_starts(blocker: Path,
                                                       paysim_cli: PaysimCli) -> None:
    out = blocker / "results.json"
    assert_one_line_error(paysim_cli("bench", "--out", str(out)), 1, str(out))


def test_a_reader_that_goes_away_ends_the_command_as_sigpipe_would_not_as_a_failure() -> None:
    """`paysim audit | head`: exit 1 is the audit's "a payment was lost", so a closed pipe
    must say something else: 141, as for a tool killed by SIGPIPE, and nothing on stderr."""
    command = subprocess.Popen([sys.executable, "-m", "paysim", "schema", "asyncapi"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert command.stdout is not None and command.stderr is not None
    command.stdout.close()  # before it writes: its first write meets a closed pipe
    error = command.stderr.read()
    assert command.wait(timeout=60) == CLOSED_PIPE_EXIT
    assert error == b""
