"""/healthz's answer from the last check, and which requests skip waitress's worker threads."""

from __future__ import annotations

from types import SimpleNamespace

from paysim.edge.health import STALE_AFTER_S, Health, answer
from paysim.edge.server import _is_health_check

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


def channel(*requests: SimpleNamespace, outbufs: int = 0) -> SimpleNamespace:
    return SimpleNamespace(requests=list(requests), total_outbufs_len=outbufs)


def request(command: str = "GET", path: str = "/healthz",
            error: object = None) -> SimpleNamespace:
    return SimpleNamespace(command=command, path=path, error=error)


def test_only_a_lone_get_or_head_of_healthz_runs_on_the_event_loop() -> None:
    assert _is_health_check(channel(request()))
    assert _is_health_check(channel(request("HEAD")))
    assert not _is_health_check(channel(request("POST")))
    assert not _is_health_check(channel(request(path="/healthz/x")))
    assert not _is_health_check(channel(request(path="/authorize")))
    assert not _is_health_check(channel(request(error=ValueError("bad request line"))))
    # Behind another pipelined request, or an answer not yet sent: the workers keep the order.
    assert not _is_health_check(channel(request(), request()))
    assert not _is_health_check(channel(request(), outbufs=10))
