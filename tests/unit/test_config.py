"""Settings resolution: flags > environment > config file > defaults, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from paysim.config import load_settings
from paysim.errors import ConfigError


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "paysim.toml"
    path.write_text(text)
    return str(path)


def test_defaults_point_at_the_local_stack() -> None:
    settings = load_settings(env={})
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.stack.kafka_heap_mb == 512
    assert settings.topics.requested == "payments.requested"


def test_flag_beats_env_beats_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[stack]\nkafka_port = 1111\nredis_port = 2222\n'
                                    'controller_port = 3333\n')
    env = {"PAYSIM_STACK_KAFKA_PORT": "4444", "PAYSIM_STACK_REDIS_PORT": "5555"}

    settings = load_settings({"stack.kafka_port": 6666}, env=env, config_file=config)

    assert settings.stack.kafka_port == 6666  # flag
    assert settings.stack.redis_port == 5555  # env
    assert settings.stack.controller_port == 3333  # file
    assert settings.kafka_bootstrap == "127.0.0.1:6666"


def test_none_flags_count_as_not_given() -> None:
    settings = load_settings({"stack.kafka_port": None},
                             env={"PAYSIM_STACK_KAFKA_PORT": "19092"})
    assert settings.stack.kafka_port == 19092


def test_explicit_services_replace_the_local_stack_addresses() -> None:
    settings = load_settings(env={"PAYSIM_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
                                  "PAYSIM_REDIS_URL": "rediss://:secret@cache:6380/1"})
    assert settings.kafka_bootstrap == "k1:9092,k2:9092"
    assert settings.redis_url == "rediss://:secret@cache:6380/1"


def test_kafka_client_properties_pass_through_from_file_and_env(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[kafka.client]\n"security.protocol" = "SASL_SSL"\n'
                                    '"sasl.mechanism" = "PLAIN"\n')
    env = {"PAYSIM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "PAYSIM_KAFKA_SASL_USERNAME": "paysim",
           "PAYSIM_KAFKA_BOOTSTRAP": "broker:9093"}

    settings = load_settings(env=env, config_file=config)

    assert settings.kafka_client == {"security.protocol": "SASL_SSL",
                                     "sasl.mechanism": "SCRAM-SHA-512",
                                     "sasl.username": "paysim"}


def test_config_file_from_env_variable(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[topics]\npartitions = 12\n')
    assert load_settings(env={"PAYSIM_CONFIG": config}).topics.partitions == 12


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"stack.kafka_port": "abc"}, {}, "--kafka-port: expected a whole number from 1 to 65535"),
        ({}, {"PAYSIM_STACK_REDIS_PORT": "70000"}, "PAYSIM_STACK_REDIS_PORT: expected a whole"),
        ({"redis.url": "http://x"}, {}, "--redis-url: expected a URL starting with redis://"),
        ({"kafka.bootstrap": "nohost"}, {}, "--bootstrap: expected host:port"),
        ({}, {"PAYSIM_STACK_START_TIMEOUT": "-1"}, "expected a number of seconds > 0"),
        ({}, {"PAYSIM_TOPICS_PARTITIONS": "0"}, "PAYSIM_TOPICS_PARTITIONS: expected a whole"),
    ],
)
def test_bad_values_name_their_source(flags: dict, env: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(flags, env=env)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[stack\n", "is not valid TOML"),
        ("[stack]\nkafka_prot = 1\n", "unknown setting 'stack.kafka_prot'"),
        ("[stack]\nkafka_port = true\n", "stack.kafka_port: expected a whole number"),
        ("[topics]\npartitions = 1.5\n", "topics.partitions: expected a whole number"),
        ('[kafka]\nclient = "x"\n', "kafka.client must be a table"),
    ],
)
def test_bad_config_files_give_one_line(tmp_path: Path, text: str, message: str) -> None:
    config = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_settings(env={}, config_file=config)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(env={}, config_file=str(tmp_path / "nope.toml"))
