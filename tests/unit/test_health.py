"""/healthz's answer from the last check, and which requests skip the server's worker threads."""

from __future__ import annotations

from paysim.edge.health import STALE_AFTER_S, Health, answer
from paysim.edge.server import answers_on_loop

UP = {"authorizer": "up", "processor": "up", "notifier": "up"}


def test_all_well_is_200_ok_with_the_age_of_the_check() -> None:
    status, body = answer(Health("ok", "ok", UP, checked_at=100.0), now=100.25)
    assert status == 200
    assert body == {"status": "ok", "kafka": "ok", "redis": "ok", "services": UP,
                    "checked_s_ago": 0.25}


def test_kafka_or_redis_failing_is_503_naming_each() -> None:
    status, body = answer(Health("does not answer (x)", "refuses writes (y)",
                                 dict.fromkeys(UP, "unknown"), 10.0), now=10.0)
    assert status == 503
    assert body["status"] == "unavailable"
    assert body["error"] == "Kafka: does not answer (x); Redis: refuses writes (y)"


def test_a_service_without_a_heartbeat_is_200_degraded() -> None:
    status, body = answer(Health("ok", "ok", {**UP, "processor": "down"}, 10.0), now=10.0)
    assert (status, body["status"], body["services"]["processor"]) == (200, "degraded", "down")


def test_a_stale_check_is_503_even_when_it_was_fine() -> None:
    status, body = answer(Health("ok", "ok", UP, 10.0), now=10.0 + STALE_AFTER_S + 1)
    assert status == 503
    assert "health check" in body["error"]


def test_no_check_yet_is_503() -> None:
    assert answer(None, now=1.0)[0] == 503


def test_only_a_get_or_head_of_healthz_runs_on_the_event_loop() -> None:
    assert answers_on_loop("GET", "/healthz")
    assert answers_on_loop("HEAD", "/healthz")
    assert not answers_on_loop("POST", "/healthz")
    assert not answers_on_loop("GET", "/healthz/x")
    assert not answers_on_loop("GET", "/authorize")
    assert not answers_on_loop("POST", "/authorize")
