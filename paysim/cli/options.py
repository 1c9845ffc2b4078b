"""Flags every command shares; they feed paysim.config, which owns precedence and validation."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from paysim.infra.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_FILE,
    OPTIONS_BY_KEY,
    finite_number,
    load_settings,
)

# Flags on every command: where the services paysim talks to are.
CONNECTION_KEYS = ("kafka.bootstrap", "redis.url")
# Flags of the local stack commands: where it keeps its files and which ports it takes.
STACK_KEYS = ("stack.dir", "stack.kafka_port", "stack.controller_port", "stack.redis_port",
              "stack.brokers", "stack.redis_cluster")


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that refuses nan and inf, which float() takes and a range check lets
    through (every comparison with nan is False): the type of every number flag."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        try:
            number = finite_number(value)
        except ValueError:
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


def _param(key: str) -> str:
    return key.replace(".", "__")


def with_settings(*keys: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add --config and a flag per key to a command; call it with ``settings=`` resolved."""
    all_keys = CONNECTION_KEYS + keys

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def run(*args: Any, config_file: str | None, **kwargs: Any) -> Any:
            flags = {key: kwargs.pop(_param(key)) for key in all_keys}
            return command(*args, settings=load_settings(flags, config_file=config_file),
                           **kwargs)

        for key in reversed(all_keys):
            option = OPTIONS_BY_KEY[key]
            metavar = option.metavar or key.split(".")[-1].upper()
            # A switch is a bare flag; absent, it is None, so the env and file still count.
            extra: dict[str, Any] = ({"is_flag": True, "default": None}
                                     if option.switch else {"metavar": metavar})
            run = click.option(option.flag_name, _param(key),
                               help=f"{option.help} [env {option.env}]", **extra)(run)
        return click.option(
            "--config", "config_file", metavar="FILE",
            help=f"TOML settings file [env {CONFIG_ENV}; default ./{DEFAULT_CONFIG_FILE}]",
        )(run)

    return decorate
