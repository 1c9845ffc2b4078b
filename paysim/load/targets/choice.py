"""`paysim send`'s target flags to the target they name (or none: paysim's own pipeline)."""

from __future__ import annotations

from dataclasses import dataclass

from paysim.infra.errors import ConfigError
from paysim.load.targets.http_target import HttpTarget
from paysim.load.targets.kafka_target import KafkaTarget


@dataclass(frozen=True)
class TargetFlags:
    """The flags that point `send` at another system; None means not given."""

    url: str | None = None  # --target
    request_template: str | None = None
    concurrency: int | None = None
    to_topic: str | None = None
    record_template: str | None = None
    outcome_topic: str | None = None
    correlate: str | None = None

    def given(self) -> bool:
        return any(value is not None for value in vars(self).values())


def _needs(flag: str, values: dict[str, object]) -> None:
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise ConfigError(f"{flag} needs {' and '.join(missing)}")


def _goes_with(flag: str, values: dict[str, object]) -> None:
    given = [name for name, value in values.items() if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: only with {flag}")


def open_target(flags: TargetFlags, timeout: float) -> HttpTarget | KafkaTarget | None:
    """The target the flags name, its template loaded and checked (ConfigError: exit 2,
    before anything is sent); None without any of them."""
    http = {"--request-template": flags.request_template, "--concurrency": flags.concurrency}
    kafka = {"--record-template": flags.record_template, "--outcome-topic": flags.outcome_topic,
             "--correlate": flags.correlate}
    if flags.url is not None and flags.to_topic is not None:
        raise ConfigError("--target and --to-topic: one target at a time")
    if flags.url is not None:
        _needs("--target", {"--request-template": flags.request_template})
        _goes_with("--to-topic", kafka)
        return HttpTarget(flags.url, flags.request_template or "",
                          **({} if flags.concurrency is None
                             else {"concurrency": flags.concurrency}),
                          timeout=timeout)
    _goes_with("--target", http)
    if flags.to_topic is not None:
        _needs("--to-topic", {"--record-template": flags.record_template,
                              "--outcome-topic": flags.outcome_topic})
        return KafkaTarget(flags.to_topic, flags.record_template or "",
                           flags.outcome_topic or "", flags.correlate)
    _goes_with("--to-topic", kafka)
    return None
