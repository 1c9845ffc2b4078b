"""Nothing lost, nothing doubled, whatever is killed: the fault run of the exactly-once issue."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from paysim.domain.messages import NOTIFIED, REQUESTED
from paysim.infra.config import Settings, settings_env
from paysim.infra.waiting import wait_until
from paysim.stack.manager import LocalStack
from paysim.stack.process import is_alive
from tests.helpers import free_port, run_paysim, settings_for
from tests.integration.pipeline_helpers import paysim, run_done_entries, running_pipeline

RATE, SECONDS = 250, 80  # 20,000 payments
# The bound on the latency a broker restart may add is 15 s (the broker's own restart,
# about 5 s, and the services' recovery). Not asserted yet: on this 2-core machine the broker
# alone took 6-12 s to answer again and the worst measured 26-32 s (issue 17, left open); the
# table below prints the figure every run.


@pytest.fixture(scope="module")
def fault_pipeline(local_stack, service_flags: dict[str, object]) -> Iterator[Settings]:
    """Its own run-all, with the watchdog at its default (30 s): within the bound above, a
    broker restart can only be survived by services that recover by themselves."""
    with running_pipeline(settings_for({**service_flags, "http.port": free_port(),
                                        "services.stuck_after": 30})) as settings:
        yield settings


@dataclass(frozen=True)
class Fault:
    at: float  # time.monotonic() of the kill
    label: str
    broker: bool = False


def service_pid(settings: Settings, name: str) -> int | None:
    rows = json.loads(paysim(settings, "ps", "--json").stdout)["services"]
    return next((row["pid"] for row in rows if row["name"] == name and row["state"] == "up"),
                None)


def kill_service(settings: Settings, name: str) -> Fault:
    # Wait until the supervisor has it back up from any earlier kill, then kill it again.
    seen: list[int] = []
    assert wait_until(lambda: bool(seen.append(service_pid(settings, name)) or seen[-1]),
                      timeout=60, interval=0.5)
    os.kill(seen[-1], signal.SIGKILL)
    return Fault(time.monotonic(), f"SIGKILL {name} (pid {seen[-1]})")


def restart_component(stack: LocalStack, name: str) -> Fault:
    component = next(c for c in stack.components if c.name == name)
    record = stack.running(component)
    assert record is not None
    os.killpg(record.pid, signal.SIGKILL)  # the component and any child it forked
    killed = time.monotonic()
    assert wait_until(lambda: not is_alive(record.pid), timeout=10)
    stack.up()
    return Fault(killed, f"SIGKILL {name} (pid {record.pid}), answering again after "
                         f"{time.monotonic() - killed:.1f} s", broker=name == "kafka")


def test_every_payment_gets_one_outcome_through_kills_and_restarts(
    fault_pipeline: Settings, local_stack: LocalStack,
) -> None:
    pipeline = fault_pipeline
    faults: list[tuple[float, Callable[[], Fault]]] = [
        (8, lambda: kill_service(pipeline, "authorizer-0")),
        (14, lambda: kill_service(pipeline, "processor-0")),
        (20, lambda: kill_service(pipeline, "notifier-0")),
        (28, lambda: restart_component(local_stack, "kafka")),
        (42, lambda: kill_service(pipeline, "authorizer-0")),
        (48, lambda: kill_service(pipeline, "processor-0")),
        (54, lambda: kill_service(pipeline, "notifier-0")),
        (62, lambda: restart_component(local_stack, "redis")),
        # After a second broker restart all three services once needed the watchdog.
        (70, lambda: restart_component(local_stack, "kafka")),
    ]
    done: list[Fault] = []
    errors: list[BaseException] = []
    supervisor_log = pipeline.services.dir / "run-all.log"
    log_start = supervisor_log.stat().st_size  # earlier pipelines of the session wrote before
    start, start_wall = time.monotonic(), time.time()
    stop = threading.Event()

    def inject() -> None:
        for at, fault in faults:
            if stop.wait(max(0.0, start + at - time.monotonic())):
                return
            try:
                done.append(fault())
            except BaseException as exc:
                errors.append(exc)
                return

    injector = threading.Thread(target=inject)
    injector.start()
    try:
        result = run_paysim("send", "--rate", str(RATE), "--duration", f"{SECONDS}s",
                            "--seed", "66", "--timeout", "240", "--json",
                            env=settings_env(pipeline), timeout=420)
    finally:
        stop.set()
        injector.join()
    print("\n".join(f"{f.at - start:5.1f} s  {f.label}" for f in done))
    assert not errors, errors
    assert len(done) == len(faults)
    assert result.returncode in (0, 1), result.stderr  # 1: a threshold; lost is checked below
    report = json.loads(result.stdout)
    assert report["load"]["sent"] == RATE * SECONDS
    assert report["outcomes"]["lost"] == 0, report["outcomes"]["lost_ids"][:5]

    audit = paysim(pipeline, "audit", "--run", report["run_id"], "--json")
    found = json.loads(audit.stdout)
    print(json.dumps({k: found[k] for k in ("sent", "outcomes", "lost_count", "doubled_count",
                                            "disagreeing_count", "ledgers_checked")}))
    assert audit.returncode == 0, found
    assert found["sent"] == RATE * SECONDS
    assert (found["lost_count"], found["doubled_count"], found["disagreeing_count"]) == (0, 0, 0)
    assert found["ledger_mismatches"] == []
    e2e = report["latency"]["end_to_end"]
    print(f"end to end p50 {e2e['p50_ms']} ms, p99 {e2e['p99_ms']} ms, max {e2e['max_ms']} ms")
    latencies = sent_and_latency(pipeline, report["run_id"], start_wall - start)
    windows = fault_windows(latencies, done)
    table = format_windows(done, windows)
    print(table)

    # Recovery is the services' own: the watchdog had no one to kill.
    with supervisor_log.open() as log:
        log.seek(log_start)
        supervised = log.read()
    assert "killed as stuck" not in supervised, supervised


def sent_and_latency(settings: Settings, run_id: str, offset: float) -> list[tuple[float, float]]:
    """Each payment's send time (on the test's time.monotonic() clock: wall clock minus
    ``offset``) and its latency in ms from that send to its notification."""
    first: dict[str, tuple[float, float]] = {}
    for entry in run_done_entries(settings, run_id):  # a replayed record may add a repeat
        sent, notified = entry.stages.get(REQUESTED), entry.stages.get(NOTIFIED)
        if sent is not None and notified is not None and entry.payment_id not in first:
            first[entry.payment_id] = (sent / 1e6 - offset, (notified - sent) / 1000)
    return list(first.values())


def fault_windows(latencies: list[tuple[float, float]],
                  faults: list[Fault]) -> list[tuple[int, float]]:
    """Per fault: of the payments sent from 1 s before it (those in flight when it struck)
    until 1 s before the next, how many took over a second, and the worst latency in ms.

    By send time, not completion time: a backlog a fault leaves behind completes during the
    faults that follow, and by completion it would be charged to them."""
    bounds = [f.at - 1 for f in faults] + [float("inf")]
    windows = []
    for begin, end in itertools.pairwise(bounds):
        taken = [ms for sent, ms in latencies if begin <= sent < end]
        windows.append((sum(1 for ms in taken if ms > 1000), max(taken, default=0.0)))
    return windows


def format_windows(faults: list[Fault], windows: list[tuple[int, float]]) -> str:
    lines = [f"{'fault':<62} {'delayed':>7}  {'worst ms':>8}"]
    lines += [f"{fault.label:<62} {delayed:>7,}  {worst:>8,.0f}"
              for fault, (delayed, worst) in zip(faults, windows, strict=True)]
    return "\n".join(lines)
