"""The pipeline as the integration tests run it: `paysim run-all --detach` and the CLI."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from paysim.domain import decisions
from paysim.infra.config import Settings, settings_env
from paysim.load.generator import Mix, PaymentStream, build_population
from paysim.pipeline import store
from tests.helpers import run_paysim


@contextmanager
def running_pipeline(settings: Settings) -> Iterator[Settings]:
    """`paysim run-all --detach` with these settings, stopped on the way out."""
    started = run_paysim("run-all", "--detach", env=settings_env(settings))
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield settings
    finally:
        run_paysim("stop", env=settings_env(settings))


def paysim(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_paysim(*args, env=settings_env(settings))


def send(settings: Settings, *args: str) -> dict:
    result = paysim(settings, "send", "--json", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def injected(seed: int, count: int, settings: Settings) -> Counter:
    stream = PaymentStream(build_population(seed), seed, Mix(), settings.issuer.max_amount_usd)
    return Counter(p.expected or decisions.APPROVED for p in stream.take(count))


def reason_counts(report: dict) -> dict[str, int]:
    return {row["reason_code"]: row["count"] for row in report["outcomes"]["by_reason"]}


def run_done_entries(settings: Settings, run_id: str) -> list[store.DoneEntry]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return [store.read_done_entry(fields)
                for _, fields in client.xrange(store.run_stream_key(run_id))]
    finally:
        client.close()
