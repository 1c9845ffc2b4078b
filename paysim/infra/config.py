"""One place that resolves every paysim setting: flags > environment > config file > defaults.

Each setting is declared once in OPTIONS with its dotted key. The key names it in the TOML
config file (``[stack] kafka_port = 9092``) and gives its environment variable
(``PAYSIM_STACK_KAFKA_PORT``). Kafka client properties (SASL, SSL, ...) pass through untouched
from ``[kafka.client]`` in the file or from any other ``PAYSIM_KAFKA_*`` variable
(``PAYSIM_KAFKA_SASL_MECHANISM`` -> ``sasl.mechanism``).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paysim.infra.errors import ConfigError

CONFIG_ENV = "PAYSIM_CONFIG"
DEFAULT_CONFIG_FILE = "paysim.toml"
KAFKA_CLIENT_ENV_PREFIX = "PAYSIM_KAFKA_"
REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
# A Redis Cluster: the URL names one node, the client finds the rest (docs/architecture.md).
REDIS_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
REDIS_CLUSTER_NODES = 6  # the local Redis Cluster: 3 primaries, a replica each


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


# Parsers take what a flag, env var or TOML value holds and return the typed value,
# or raise ValueError with what was expected.
def _whole_number(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    expected = (f"a whole number from {minimum} to {maximum}" if maximum is not None
                else f"a whole number >= {minimum}")

    def parse(raw: Any) -> int:
        if isinstance(raw, bool | float):
            raise ValueError(expected)
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ValueError(expected) from None
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(expected)
        return value

    return parse


_port = _whole_number(1, 65535)


def finite_number(raw: Any) -> float:
    """``raw`` (a number, or text such as a flag's '2.5') as a float; ValueError otherwise.

    The one check of nan and inf for every number a user gives (flags, settings, scenario
    files): float() takes 'nan' and 'inf', TOML has both, and a range check does not stop them
    (every comparison with nan is False; inf passes a bound left open)."""
    if isinstance(raw, bool):
        raise ValueError(f"a number, got {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"a finite number, got {raw!r}")
    return value


def _positive(what: str) -> Callable[[Any], float]:
    expected = f"{what} > 0"

    def parse(raw: Any) -> float:
        try:
            value = finite_number(raw)
        except ValueError:
            raise ValueError(expected) from None
        if value <= 0:
            raise ValueError(expected)
        return value

    return parse


_seconds = _positive("a number of seconds")


def _ratio(raw: Any) -> float:
    try:
        value = finite_number(raw)
    except ValueError:
        raise ValueError("a ratio from 0 to 1") from None
    if not 0 <= value <= 1:
        raise ValueError("a ratio from 0 to 1")
    return value


def _switch(raw: Any) -> bool:
    """on or off: a TOML boolean, or true/false, yes/no, on/off, 1/0 as text."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError("true or false")


def _text(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("a non-empty string")
    return raw.strip()


def _path(raw: Any) -> Path:
    return Path(_text(raw)).expanduser().absolute()


def _redis_url(raw: Any) -> str:
    url = _text(raw)
    if not url.startswith(REDIS_URL_SCHEMES):
        raise ValueError("a URL starting with redis://, rediss://, unix://, redis+cluster:// "
                         "or rediss+cluster://")
    return url


def _bootstrap(raw: Any) -> str:
    servers = _text(raw)
    for server in servers.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("host:port[,host:port...]")
    return servers


_HOST_NAME = re.compile(r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.?)+\Z", re.I)


def _hosts_and_networks(raw: Any) -> tuple[str, ...]:
    """A TOML list, or text separated by commas: each a host name, an address or a CIDR."""
    expected = "host names, addresses or networks (CIDR), separated by commas"
    items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
    entries = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(expected)
        entry = item.strip()
        if not entry:
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if not _HOST_NAME.match(entry):
                raise ValueError(f"{expected} ({entry!r} is none of them)") from None
        entries.append(entry)
    return tuple(entries)


@dataclass(frozen=True)
class Option:
    key: str
    parse: Callable[[Any], Any]
    default: Callable[[], Any]
    help: str
    flag: str = ""  # the CLI flag, where one exists; shown in errors
    metavar: str = ""

    @property
    def env(self) -> str:
        return "PAYSIM_" + self.key.upper().replace(".", "_")

    @property
    def switch(self) -> bool:
        """On or off: its flag takes no value."""
        return self.parse is _switch

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.key.split(".")[-1].replace("_", "-")


MAX_BROKERS = 9  # the local stack's Kafka nodes at most (ports are spaced 2 apart)

OPTIONS: tuple[Option, ...] = (
    Option("kafka.bootstrap", _bootstrap, lambda: None,
           "Kafka bootstrap servers; unset means the local stack", "--bootstrap",
           "HOST:PORT[,...]"),
    Option("kafka.timeout", _seconds, lambda: 30.0,
           "seconds a command waits for Kafka to answer or a topic read to end before it fails"),
    Option("redis.url", _redis_url, lambda: None,
           "Redis URL (redis://, rediss://, unix://; redis+cluster://host:port[,host:port...] "
           "or rediss+cluster:// for a Redis Cluster, naming one or more nodes); unset means "
           "the local stack", "--redis-url",
           "URL"),
    Option("redis.outcome_ttl", _whole_number(1), lambda: 3600,
           "seconds an outcome stays in Redis (the seed's one hour)"),
    Option("redis.ledger_ttl", _whole_number(1), lambda: 8 * 86400,
           "seconds a run's card books and payment records stay in Redis: how long a payment "
           "can still be captured, refunded or disputed (keep it above lifecycle.hold_ttl)"),
    Option("stack.dir", _path, lambda: _data_home() / "paysim" / "stack",
           "where the local stack keeps its data, configs, logs and pid records", "--stack-dir",
           "DIR"),
    Option("stack.cache_dir", _path, lambda: _cache_home() / "paysim",
           "where the Kafka jars are cached"),
    Option("stack.kafka_port", _port, lambda: 9092, "local broker port", metavar="PORT"),
    Option("stack.controller_port", _port, lambda: 9093, "local KRaft controller port",
           metavar="PORT"),
    Option("stack.redis_port", _port, lambda: 6379, "local redis-server port", metavar="PORT"),
    Option("stack.redis_cluster", _switch, lambda: False,
           "the local stack runs a Redis Cluster (3 primaries, 3 replicas) instead of one "
           "redis-server: node n listens on the Redis port + n - 1, its cluster bus on the "
           "Redis port + 5 + n", "--redis-cluster"),
    Option("stack.brokers", _whole_number(1, MAX_BROKERS), lambda: 1,
           "Kafka nodes in the local stack; 3 makes a KRaft cluster with replication 3 and "
           "min.insync.replicas 2 (node n listens on the ports + 2(n-1))", "--brokers", "N"),
    Option("stack.kafka_heap_mb", _whole_number(128), lambda: 512, "local broker heap in MiB"),
    Option("stack.start_timeout", _seconds, lambda: 90.0,
           "seconds to wait for a component to answer"),
    Option("stack.stop_timeout", _seconds, lambda: 30.0,
           "seconds between SIGTERM and SIGKILL"),
    Option("topics.partitions", _whole_number(1), lambda: 6, "partitions per paysim topic"),
    Option("topics.replication_factor", _whole_number(1), lambda: None,
           "replication factor of paysim topics [default: 1, or 3 on a local 3-node stack]"),
    Option("topics.requested", _text, lambda: "payments.requested", "ingress topic"),
    Option("topics.authorized", _text, lambda: "payments.authorized", "authorized payments"),
    Option("topics.results", _text, lambda: "payments.results", "final outcomes"),
    Option("topics.notifications", _text, lambda: "payments.notifications",
           "client notifications"),
    Option("topics.dlq", _text, lambda: "payments.dlq", "dead letters"),
    Option("topics.operations", _text, lambda: "payments.operations",
           "captures, voids, refunds and the other operations on payments"),
    Option("topics.events", _text, lambda: "payments.events",
           "every change in a payment's life"),
    Option("lifecycle.hold_ttl", _seconds, lambda: 7 * 86400.0,
           "seconds an uncaptured hold lasts before it expires"),
    Option("lifecycle.settlement_window", _seconds, lambda: 86400.0,
           "seconds per settlement window (whole seconds); each closes into batches"),
    Option("lifecycle.runs_dir", _path, lambda: _data_home() / "paysim" / "runs",
           "where each run's clearing file and report are kept (<dir>/<run>/clearing.csv, "
           "report.json)"),
    Option("topics.settlements", _text, lambda: "payments.settlements",
           "closed settlement batches"),
    Option("http.host", _text, lambda: "127.0.0.1", "address the HTTP API listens on",
           "--http-host", "HOST"),
    Option("http.port", _port, lambda: 8080, "port of the HTTP API", "--http-port", "PORT"),
    Option("issuer.decline_rate", _ratio, lambda: 0.02,
           "share of payments the issuer answers 05 do not honour"),
    Option("issuer.fault_rate", _ratio, lambda: 0.005,
           "share of payments the issuer answers 91 issuer unavailable"),
    Option("issuer.max_amount_usd", _positive("an amount"), lambda: 10_000.0,
           "largest payment accepted, in US dollars (converted per currency); above: 13"),
    Option("webhook.max_attempts", _whole_number(1), lambda: 6,
           "attempts to deliver a webhook before it is recorded as failed"),
    Option("webhook.timeout", _seconds, lambda: 5.0, "seconds per webhook attempt"),
    Option("webhook.allow", _hosts_and_networks, lambda: (),
           "the only hosts and networks webhooks may go to; empty: any but paysim's own"),
    Option("secrets.file", _path, lambda: _data_home() / "paysim" / "secrets.json",
           "where generated keys are kept when none are configured"),
    Option("secrets.card_key", _text, lambda: None,
           "base64 AES-256 key sealing card blocks on the requested topic"),
    Option("secrets.token_key", _text, lambda: None, "base64 HMAC key making card tokens"),
    Option("secrets.webhook_secret", _text, lambda: None, "shared secret signing webhooks"),
    Option("services.batch_size", _whole_number(1), lambda: 500,
           "messages a service takes per transaction"),
    Option("services.stuck_after", _seconds, lambda: 30.0,
           "seconds without a heartbeat after which run-all kills a service as stuck"),
    Option("services.dir", _path, lambda: _data_home() / "paysim" / "services",
           "where run-all keeps the services' logs and its pid record"),
    Option("services.first_instance", _whole_number(0, 99), lambda: 0,
           "the first instance number of each service this run-all starts: give each host's "
           "run-all its own range (host 2 of 2 processors each: 2), so that instance names, "
           "heartbeats and static group members stay unique", "--first-instance", "N"),
    Option("metrics.enabled", _switch, lambda: True,
           "serve Prometheus metrics from every service, the HTTP API and send"),
    Option("metrics.host", _text, lambda: "127.0.0.1", "address the metrics endpoints listen on"),
    Option("metrics.port", _whole_number(0, 65535), lambda: 0,
           "0: each process picks a free port (shown by `paysim ps`); N: the base of a fixed "
           "layout, N + 100 x the process's place + its instance", metavar="PORT"),
    Option("tracing.sample_ratio", _ratio, lambda: None,
           "share of payments traced, decided where each payment enters (only when "
           "OTEL_EXPORTER_OTLP_ENDPOINT is set); unset: OTEL_TRACES_SAMPLER_ARG, else 1",
           metavar="RATIO"),
)
OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}
_OPTION_ENVS = {option.env for option in OPTIONS}


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str | None  # None: the local stack
    timeout: float  # seconds a command waits on Kafka before it fails
    client: Mapping[str, str]  # pass-through client properties (SASL, SSL, ...)


@dataclass(frozen=True)
class RedisSettings:
    url: str | None  # None: the local stack
    outcome_ttl: int
    ledger_ttl: int


@dataclass(frozen=True)
class StackSettings:
    dir: Path
    cache_dir: Path
    kafka_port: int
    controller_port: int
    redis_port: int
    redis_cluster: bool
    brokers: int
    kafka_heap_mb: int
    start_timeout: float
    stop_timeout: float

    def redis_cluster_ports(self) -> list[int]:
        """Client ports of the local Redis Cluster's nodes (the bus ports come after them)."""
        return [self.redis_port + node for node in range(REDIS_CLUSTER_NODES)]

    def broker_ports(self, node: int) -> tuple[int, int]:
        """(client port, controller port) of local node ``node`` (1-based)."""
        return self.kafka_port + 2 * (node - 1), self.controller_port + 2 * (node - 1)


@dataclass(frozen=True)
class TopicSettings:
    partitions: int
    replication_factor: int | None  # None: 1, or up to 3 on a local multi-node stack
    requested: str
    authorized: str
    results: str
    notifications: str
    dlq: str
    operations: str
    events: str
    settlements: str

    def names(self) -> list[str]:
        return [self.requested, self.authorized, self.results, self.notifications, self.dlq,
                self.operations, self.events, self.settlements]


@dataclass(frozen=True)
class HttpSettings:
    host: str
    port: int


@dataclass(frozen=True)
class IssuerSettings:
    decline_rate: float
    fault_rate: float
    max_amount_usd: float


@dataclass(frozen=True)
class LifecycleSettings:
    hold_ttl: float  # seconds
    settlement_window: float  # seconds
    runs_dir: Path


@dataclass(frozen=True)
class WebhookSettings:
    max_attempts: int
    timeout: float
    allow: tuple[str, ...]  # empty: anywhere but paysim's own ports


@dataclass(frozen=True)
class SecretSettings:
    file: Path
    card_key: str | None
    token_key: str | None
    webhook_secret: str | None


@dataclass(frozen=True)
class ServiceSettings:
    batch_size: int
    stuck_after: float
    dir: Path
    first_instance: int


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool
    host: str
    port: int  # 0: a free port per process; else the base of the fixed layout


@dataclass(frozen=True)
class TracingSettings:
    # None: the standard OTEL_TRACES_SAMPLER_ARG, else every payment (paysim.infra.tracing)
    sample_ratio: float | None


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    redis: RedisSettings
    stack: StackSettings
    topics: TopicSettings
    http: HttpSettings
    issuer: IssuerSettings
    lifecycle: LifecycleSettings
    webhook: WebhookSettings
    secrets: SecretSettings
    services: ServiceSettings
    metrics: MetricsSettings
    tracing: TracingSettings

    @property
    def kafka_bootstrap(self) -> str:
        """The configured bootstrap servers, or the local stack's brokers."""
        return self.kafka.bootstrap or ",".join(
            f"127.0.0.1:{self.stack.broker_ports(node)[0]}"
            for node in range(1, self.stack.brokers + 1))

    @property
    def replication_factor(self) -> int:
        """Of paysim's topics: as configured, else 3 (at most) on a local multi-node stack."""
        if self.topics.replication_factor is not None:
            return self.topics.replication_factor
        return min(3, self.stack.brokers) if self.kafka.bootstrap is None else 1

    @property
    def redis_url(self) -> str:
        """The configured Redis URL, or the local stack's redis-server."""
        if self.redis.url:
            return self.redis.url
        if self.stack.redis_cluster:
            # Every node: a client must reach the cluster whichever nodes are down.
            return "redis+cluster://" + ",".join(
                f"127.0.0.1:{port}" for port in self.stack.redis_cluster_ports())
        return f"redis://127.0.0.1:{self.stack.redis_port}/0"



_SECTIONS = {"kafka": KafkaSettings, "redis": RedisSettings, "stack": StackSettings,
             "topics": TopicSettings, "http": HttpSettings, "issuer": IssuerSettings,
             "lifecycle": LifecycleSettings, "webhook": WebhookSettings, "secrets": SecretSettings,
             "services": ServiceSettings, "metrics": MetricsSettings,
             "tracing": TracingSettings}


def settings_env(settings: Settings) -> dict[str, str]:
    """Every resolved setting as PAYSIM_* variables: child processes resolve the same values
    whatever flags or config file the parent was given."""
    env = {}
    for option in OPTIONS:
        section, name = option.key.split(".", 1)
        value = getattr(getattr(settings, section), name)
        if isinstance(value, tuple):
            env[option.env] = ",".join(value)
        elif value is not None:
            env[option.env] = str(value)
    for prop, value in settings.kafka.client.items():
        env[KAFKA_CLIENT_ENV_PREFIX + prop.upper().replace(".", "_")] = value
    return env


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if key == "kafka.client":
            continue  # passthrough table, read separately
        if isinstance(value, dict):
            flat.update(_flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a paysim TOML config file; unknown keys are errors, not silently ignored."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key in _flatten(data):
        if key not in OPTIONS_BY_KEY:
            known = ", ".join(sorted(OPTIONS_BY_KEY))
            raise ConfigError(f"{path}: unknown setting '{key}' (known: {known}, kafka.client.*)")
    client = data.get("kafka", {}).get("client", {})
    if not isinstance(client, dict):
        raise ConfigError(f"{path}: kafka.client must be a table of Kafka client properties")
    return data


def _config_path(flag_path: str | None, env: Mapping[str, str]) -> Path | None:
    if flag_path:
        return Path(flag_path).expanduser()
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def kafka_client_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """PAYSIM_KAFKA_SASL_MECHANISM=PLAIN -> {"sasl.mechanism": "PLAIN"}."""
    props = {}
    for name, value in env.items():
        if name.startswith(KAFKA_CLIENT_ENV_PREFIX) and name not in _OPTION_ENVS:
            prop = name[len(KAFKA_CLIENT_ENV_PREFIX):].lower().replace("_", ".")
            props[prop] = value
    return props


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Resolve every setting. ``flags`` maps option keys to values; None means not given."""
    flags = {key: value for key, value in (flags or {}).items() if value is not None}
    env = os.environ if env is None else env
    path = _config_path(config_file, env)
    file_data = read_config_file(path) if path else {}
    file_values = _flatten(file_data)

    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.key in flags:
            raw, source = flags[option.key], option.flag_name
        elif option.env in env:
            raw, source = env[option.env], option.env
        elif option.key in file_values:
            raw, source = file_values[option.key], f"{path}: {option.key}"
        else:
            values[option.key] = option.default()
            continue
        try:
            values[option.key] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: expected {exc}, got {raw!r}") from None

    client = {str(k): str(v) for k, v in file_data.get("kafka", {}).get("client", {}).items()}
    client.update(kafka_client_from_env(env))

    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for key, value in values.items():
        name, field_name = key.split(".", 1)
        sections[name][field_name] = value
    sections["kafka"]["client"] = client
    return Settings(**{name: kind(**sections[name]) for name, kind in _SECTIONS.items()})
