"""Settings resolution: flags > environment > config file > defaults, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from paysim.infra.config import OPTIONS, OPTIONS_BY_KEY, load_settings, settings_env
from paysim.infra.errors import ConfigError, PaysimError
from paysim.infra.kafka import admin_client, client_config
from paysim.infra.secrets import load_keys


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


def test_a_cluster_url_or_the_local_cluster_switch_names_a_redis_cluster() -> None:
    local = load_settings({"stack.redis_cluster": True, "stack.redis_port": 24000}, env={})
    # Every node, so a client reaches the cluster whichever node is down.
    assert local.redis_url == "redis+cluster://" + ",".join(
        f"127.0.0.1:{port}" for port in range(24000, 24006))
    from_env = load_settings(env={"PAYSIM_STACK_REDIS_CLUSTER": "yes"})
    assert from_env.stack.redis_cluster is True
    given = load_settings(env={"PAYSIM_REDIS_URL": "rediss+cluster://node-1:7000",
                               "PAYSIM_STACK_REDIS_CLUSTER": "no"})
    assert given.redis_url == "rediss+cluster://node-1:7000"
    with pytest.raises(ConfigError, match="redis\\+cluster://"):
        load_settings(env={"PAYSIM_REDIS_URL": "cluster://node-1:7000"})


def test_kafka_client_properties_pass_through_from_file_and_env(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[kafka.client]\n"security.protocol" = "SASL_SSL"\n'
                                    '"sasl.mechanism" = "PLAIN"\n')
    env = {"PAYSIM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "PAYSIM_KAFKA_SASL_USERNAME": "paysim",
           "PAYSIM_KAFKA_BOOTSTRAP": "broker:9093"}

    settings = load_settings(env=env, config_file=config)

    assert settings.kafka.client == {"security.protocol": "SASL_SSL",
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
        ({}, {"PAYSIM_STACK_START_TIMEOUT": "nan"}, "expected a number of seconds > 0"),
        ({}, {"PAYSIM_STACK_STOP_TIMEOUT": "inf"}, "expected a number of seconds > 0"),
        ({}, {"PAYSIM_ISSUER_DECLINE_RATE": "1.5"}, "expected a ratio from 0 to 1"),
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


def test_non_utf8_config_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "paysim.toml"
    path.write_bytes(b"[stack]\nkafka_port = \xff\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_settings(env={}, config_file=str(path))


def test_bootstrap_setting_beats_a_passed_through_bootstrap_servers() -> None:
    settings = load_settings({"kafka.bootstrap": "flag:1"},
                             env={"PAYSIM_KAFKA_BOOTSTRAP_SERVERS": "env:2"})
    assert client_config(settings)["bootstrap.servers"] == "flag:1"


def test_unknown_kafka_client_property_is_a_config_error() -> None:
    settings = load_settings(env={"PAYSIM_KAFKA_NO_SUCH_PROPERTY": "1"})
    with pytest.raises(ConfigError, match="Kafka client settings"):
        admin_client(settings)


def test_settings_survive_the_trip_through_child_environment(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[kafka.client]\n"sasl.mechanism" = "PLAIN"\n'
                                    '[issuer]\ndecline_rate = 0.25\n')
    settings = load_settings({"stack.kafka_port": 19092}, env={}, config_file=config)
    assert load_settings(env=settings_env(settings)) == settings


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(env={}, config_file=str(tmp_path / "nope.toml"))


NUMERIC_KEYS = [option.key for option in OPTIONS
                if isinstance(option.default(), int | float) or option.key.endswith("_factor")]


@pytest.mark.parametrize("key", NUMERIC_KEYS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_no_numeric_setting_takes_nan_or_inf(tmp_path: Path, key: str, value: str) -> None:
    option = OPTIONS_BY_KEY[key]
    with pytest.raises(ConfigError, match=f"^{option.env}: expected"):
        load_settings(env={option.env: value})
    section, name = key.split(".")
    config = write_config(tmp_path, f"[{section}]\n{name} = {value}\n")
    with pytest.raises(ConfigError, match=f": {key}: expected"):
        load_settings(env={}, config_file=config)


def test_an_unwritable_secrets_file_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should be\n")
    path = tmp_path / "blocker" / "secrets.json"
    with pytest.raises(PaysimError) as error:
        load_keys(load_settings(env={"PAYSIM_SECRETS_FILE": str(path)}))
    assert error.value.exit_code == 1
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_keys_that_must_exist_already_are_not_made_up(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    settings = load_settings(env={"PAYSIM_SECRETS_FILE": str(path)})
    with pytest.raises(ConfigError) as error:
        load_keys(settings, create=False)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not path.exists()
    made = load_keys(settings)  # a service's first start makes them
    assert load_keys(settings, create=False) == made
