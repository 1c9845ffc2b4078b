"""A distributed run: one schedule shared by N generators, here or on other hosts, coordinated
through Redis (which every host of a deployment already reaches).

The coordinator announces the run with its request (a scenario's text travels with it, as
another host has no copy of the file); each generator claims a share k of n with INCR, plans
the same run from the same seed (the same payments, the same intended times), says it is
ready, and waits for the common start the coordinator sets once all n are ready. Generator k
sends the payments numbered k, k + n, k + 2n...: the shares interleave, so together they send
exactly the schedule one generator would have made. Each beats its progress once a second
and, at its end, hands in every counter and HDR histogram it measured (load/metrics_wire.py);
the coordinator merges them into one report and judges the thresholds on the merged data.
A generator that stops beating (or whose process ended) without handing in is reported dead
with what it had last said it sent; its share's unsent payments stay in the report's
scheduled count, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec
import redis

from paysim.domain.messages import now_us
from paysim.infra.collector import tune_for_batches
from paysim.infra.config import Settings
from paysim.infra.errors import ConfigError, PaysimError
from paysim.infra.files import writing
from paysim.load import metrics_wire
from paysim.load.distributed_live import LiveHandIn, LiveMerge
from paysim.load.ingress import new_run_id
from paysim.load.live import LivePublisher
from paysim.load.metrics_wire import MetricsWire
from paysim.load.plan import PlannedRun, SendRequest, plan_run
from paysim.load.report import RunInfo, RunReport, WorkerRow, build_report
from paysim.load.runner import Interrupt, LoadRun, Tick, share_size
from paysim.pipeline import store

KEY_TTL_S = 3600
DEAD_AFTER_S = 5.0  # no beat for this long, and no result: the generator is gone
START_LEAD_S = 1.0  # from "all ready" to the common start: time to hear it
# How long the coordination rides out a Redis that does not answer: a Redis Cluster's
# failover (a replica promoted after cluster-node-timeout, 5 s locally) is well inside it.
OUTAGE_S = 60.0
RETRY_EVERY_S = 0.5
OPEN_RUNS = "paysim:dist:open"  # run ids awaiting generators, by announcement time
LOST_IDS_KEPT = 100
T = TypeVar("T")


def plan_key(run_id: str) -> str:
    return f"paysim:dist:{run_id}:plan"


def claims_key(run_id: str) -> str:
    return f"paysim:dist:{run_id}:claims"


def worker_key(run_id: str, share: int) -> str:
    return f"paysim:dist:{run_id}:worker:{share}"


def result_key(run_id: str, share: int) -> str:
    return f"paysim:dist:{run_id}:result:{share}"


class Announcement(msgspec.Struct, frozen=True):
    """What every generator needs to plan the run exactly as the coordinator did."""

    run_id: str
    workers: int
    request: SendRequest
    scenario_text: str | None = None


class Beat(msgspec.Struct, frozen=True):
    """A generator's last word on its progress (kept after it dies: it is what it sent)."""

    host: str
    pid: int
    ready: bool = False
    sent: int = 0
    completed: int = 0
    dropped: int = 0
    at_us: int = 0
    approved: int = 0
    declined: int = 0
    rolling_p99_ms: float | None = None


class Handed(msgspec.Struct, frozen=True):
    """A generator's end: everything it measured."""

    share: int
    host: str
    pid: int
    scheduled: int
    lost: int
    lost_ids: list[str]
    finished_us: int
    metrics: MetricsWire
    error: str | None = None


_announcement = msgspec.json.Decoder(Announcement)
_beat = msgspec.json.Decoder(Beat)
_handed = msgspec.json.Decoder(Handed)
_encode = msgspec.json.Encoder().encode


# ------------------------------------------------------------------------- coordinator


@dataclasses.dataclass
class Coordinated:
    """A distributed run as the coordinator ends it: the merged report."""

    report: RunReport
    dead: list[int]  # shares whose generator died before handing in
    # With --record: the shares whose part of the record file is not on this host (their
    # generator ran elsewhere, or died before writing it); the rest are merged.
    record_parts_away: list[int] = dataclasses.field(default_factory=list)


def run_distributed(settings: Settings, request: SendRequest, workers: int,
                    local: int | None = None,
                    on_progress: Callable[[Tick], None] | None = None,
                    interrupt: Interrupt | None = None, join_timeout_s: float = 60.0,
                    ) -> Coordinated:
    """Run ``request`` over ``workers`` generators, ``local`` of them (default all) started
    here as processes; the others are `paysim worker` on other hosts."""
    local = workers if local is None else local
    if not 1 <= workers <= 64 or not 0 <= local <= workers:
        raise ConfigError(f"--workers: expected 1 to 64 generators with --local-workers from "
                          f"0 to --workers, got {workers} and {local}")
    if request.replay or request.target.given():
        raise ConfigError("--replay, --target and --to-topic send from one generator: drop "
                          "--workers")
    planned = plan_run(settings, request)  # every mistake named before anything starts
    scenario_text = Path(request.scenario).read_text() if request.scenario else None
    run_id = new_run_id()
    client = store.connect(settings)
    processes: list[multiprocessing.process.BaseProcess] = []
    try:
        _announce(client, Announcement(run_id, workers, request, scenario_text))
        spawn = multiprocessing.get_context("spawn")
        for _ in range(local):
            process = spawn.Process(target=_worker_process, args=(settings, run_id),
                                    daemon=True)
            process.start()
            processes.append(process)
        start_at = _start_when_ready(client, run_id, workers, processes, join_timeout_s)
        follower = LiveMerge(run_id, workers, start_at)
        with LivePublisher(settings, run_id, planned.plan.scenario, planned.thresholds,
                           lambda: follower.merged, lambda: follower.generators) as live:
            handed, dead = _follow(client, run_id, workers, processes, on_progress, interrupt,
                                   start_at, planned, follower, live)
    finally:
        client.zrem(OPEN_RUNS, run_id)
        client.close()
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
    away = merge_record(Path(request.record), workers) if request.record else []
    return Coordinated(_merged_report(planned, run_id, start_at, handed, dead, workers),
                       sorted(dead), away)


def _announce(client: redis.Redis, announcement: Announcement) -> None:
    run_id = announcement.run_id
    pipe = client.pipeline(transaction=False)
    pipe.set(plan_key(run_id), _encode(announcement), ex=KEY_TTL_S)
    pipe.zadd(OPEN_RUNS, {run_id: time.time()})
    pipe.execute()


def _beats(client: redis.Redis, run_id: str, workers: int) -> dict[int, Beat]:
    raw = store.mget(client, [worker_key(run_id, k) for k in range(workers)])
    return {k: _beat.decode(value) for k, value in enumerate(raw) if value}


def _start_when_ready(client: redis.Redis, run_id: str, workers: int,
                      processes: list[multiprocessing.process.BaseProcess],
                      timeout_s: float) -> int:
    """Once every share is claimed and its generator ready: the common start (Unix µs)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ready = sum(beat.ready for beat in _beats(client, run_id, workers).values())
        if ready == workers:
            break
        failed = [p for p in processes if p.exitcode not in (None, 0)]
        if failed:
            raise PaysimError(f"a local generator ended before the run started (exit "
                              f"{failed[0].exitcode}); see its error above")
        if time.monotonic() >= deadline:
            raise PaysimError(
                f"only {ready} of {workers} generators were ready within {timeout_s:g} s: "
                f"start the others with `paysim worker --run {run_id}` on their hosts")
        time.sleep(0.1)
    start_at = now_us() + int(START_LEAD_S * 1e6)
    client.set(start_key(run_id), str(start_at), ex=KEY_TTL_S)
    client.zrem(OPEN_RUNS, run_id)
    return start_at


def start_key(run_id: str) -> str:
    return f"paysim:dist:{run_id}:start"


def _follow(client: redis.Redis, run_id: str, workers: int,
            processes: list[multiprocessing.process.BaseProcess],
            on_progress: Callable[[Tick], None] | None, interrupt: Interrupt | None,
            start_at: int, planned: PlannedRun, follower: LiveMerge, live: LivePublisher,
            ) -> tuple[dict[int, Handed], dict[int, Beat]]:
    """Until every generator handed in or died: progress summed from their beats, published
    with their measurements merged (``follower``) for the dashboard. The dead ones' last
    beats (what they said they sent)."""
    handed: dict[int, Handed] = {}
    dead: set[int] = set()
    stop_sent = False
    heard_us = now_us()  # since when Redis has answered without a break
    outage = _Outage()
    beats: dict[int, Beat] = {}
    while len(handed) + len(dead) < workers:
        try:
            if interrupt is not None and interrupt.requested and not stop_sent:
                client.set(stop_key(run_id), "1", ex=KEY_TTL_S)
                stop_sent = True
            results = store.mget(client, [result_key(run_id, k) for k in range(workers)])
            beats = _beats(client, run_id, workers)
            if outage.over():
                heard_us = now_us()
            for k, raw in enumerate(results):
                if raw and k not in handed:
                    handed[k] = _handed.decode(raw)
            now = now_us()
            for k in range(workers):
                if k in handed or k in dead:
                    continue
                beat = beats.get(k)
                # A beat missed while Redis did not answer (the generator could not write
                # it either) is not the generator's silence.
                silent = beat is None or now - max(beat.at_us, heard_us) > DEAD_AFTER_S * 1e6
                if silent or _exited(beat, processes):
                    # One more look: it may have handed in between the two reads.
                    if client.exists(result_key(run_id, k)):
                        continue
                    dead.add(k)
            follower.refresh(client)
        except redis.RedisError as exc:
            outage.begun(exc)  # raises once Redis has not answered for OUTAGE_S
        follower.generators = _generator_rows(beats, dead)
        tick = follower.tick(_tick(beats, start_at, planned))
        live.publish(tick)  # a Redis error is its own to ignore
        if on_progress is not None:
            on_progress(tick)
        time.sleep(0.5)
    # The final figures: the run's last progress (marked finished when ``live`` closes).
    _riding_out(lambda: follower.refresh(client, last=True))
    beats = _riding_out(lambda: _beats(client, run_id, workers))
    follower.generators = _generator_rows(beats, dead)
    live.publish(follower.tick(_tick(beats, start_at, planned)))
    return handed, {k: beats.get(k, Beat("", 0)) for k in sorted(dead)}


def _generator_rows(beats: dict[int, Beat], dead: set[int]) -> list[store.GeneratorProgress]:
    return [store.GeneratorProgress(k, beat.host, beat.pid, beat.sent, beat.completed,
                                    beat.dropped, alive=k not in dead)
            for k, beat in sorted(beats.items())]


class _Outage:
    """Redis not answering a coordination loop: ridden out for OUTAGE_S, then raised."""

    def __init__(self) -> None:
        self.since: float | None = None

    def begun(self, error: redis.RedisError) -> None:
        """Redis failed with ``error``: raised once it has failed for OUTAGE_S."""
        if self.since is None:
            self.since = time.monotonic()
        elif time.monotonic() - self.since > OUTAGE_S:
            raise error

    def over(self) -> bool:
        """Redis answered: True when that ends an outage."""
        ended, self.since = self.since is not None, None
        return ended


def _riding_out(call: Callable[[], T]) -> T:
    """``call`` retried through a Redis outage of up to OUTAGE_S (a cluster's failover):
    for the coordination's writes and reads a run cannot end without."""
    outage = _Outage()
    while True:
        try:
            return call()
        except redis.RedisError as exc:
            outage.begun(exc)
        time.sleep(RETRY_EVERY_S)


def stop_key(run_id: str) -> str:
    return f"paysim:dist:{run_id}:stop"


def _exited(beat: Beat, processes: list[multiprocessing.process.BaseProcess]) -> bool:
    """A local generator's process that ended (a remote one is judged by its beats)."""
    return any(p.pid == beat.pid and p.exitcode is not None for p in processes) and \
        beat.host == socket.gethostname()


def _tick(beats: dict[int, Beat], start_at: int, planned: PlannedRun) -> Tick:
    sent = sum(beat.sent for beat in beats.values())
    completed = sum(beat.completed for beat in beats.values())
    # The live p99 is the worst generator's (the report merges their histograms).
    p99s = [beat.rolling_p99_ms for beat in beats.values() if beat.rolling_p99_ms is not None]
    elapsed = max(0.0, (now_us() - start_at) / 1e6)
    profile = planned.plan.profile
    return Tick(elapsed_s=elapsed, sent=sent, completed=completed,
                dropped=sum(beat.dropped for beat in beats.values()),
                scheduled=planned.plan.count,
                target_rate=profile.mean_rate() if profile else None,
                current_rate=sent / elapsed if elapsed else 0.0,
                approved=sum(beat.approved for beat in beats.values()),
                declined=sum(beat.declined for beat in beats.values()),
                rolling_p99_ms=max(p99s, default=None))


def _merged_report(planned: PlannedRun, run_id: str, start_at: int, handed: dict[int, Handed],
                   dead: dict[int, Beat], workers: int) -> RunReport:
    metrics = metrics_wire.merge([h.metrics for h in handed.values()], start_at)
    lost_ids = [pid for h in handed.values() for pid in h.lost_ids]
    plan, profile = planned.plan, planned.plan.profile
    info = RunInfo(
        run_id=run_id, seed=plan.seed, via=planned.options.via,
        mode="burst" if plan.offsets is None else "open", scenario=plan.scenario,
        target_rate=round(profile.mean_rate(), 3) if profile else None,
        stages=[{"duration_s": s.duration_s, "target_rate": s.target_rate}
                for s in profile.stages] if profile else [],
        scheduled=plan.count, lost_ids=lost_ids,
        finished_us=max((h.finished_us for h in handed.values()), default=now_us()))
    report = build_report(metrics, info, planned.thresholds)
    lost = sum(h.lost for h in handed.values())
    rows = []
    for k in range(workers):
        h = handed.get(k)
        if h is None:  # dead: what its last beat said
            last = dead.get(k, Beat("", 0))
            rows.append(WorkerRow(share=k, host=last.host, pid=last.pid,
                                  scheduled=share_size(plan.count, k, workers),
                                  sent=last.sent, completed=last.completed,
                                  dropped=last.dropped, status="dead"))
            continue
        span_s = max(1e-6, (h.metrics.last_send_us - start_at) / 1e6)
        rows.append(WorkerRow(
            share=k, host=h.host, pid=h.pid, scheduled=h.scheduled, sent=h.metrics.sent,
            completed=h.metrics.completed, dropped=h.metrics.dropped,
            rate_per_s=round(h.metrics.sent / span_s, 1),
            status="failed" if h.error else "ok", error=h.error))
    outcomes = msgspec.structs.replace(report.outcomes, lost=lost)
    return msgspec.structs.replace(report, outcomes=outcomes, workers=rows)


def record_part(record: str | Path, share: int) -> Path:
    return Path(f"{record}.part{share}")


def merge_record(record: Path, workers: int) -> list[int]:
    """The generators' parts of a --record file (those on this host) as one file, payments
    in order of their intended time, as one generator would have written it; the parts
    merged are removed. The shares whose part is not here."""
    header: str | None = None
    lines: list[tuple[float, int, str]] = []
    away, merged = [], []
    for share in range(workers):
        part = record_part(record, share)
        try:
            text = part.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            away.append(share)
            continue
        merged.append(part)
        if text:
            header = header or text[0]
        for line in text[1:]:
            if line.strip():
                entry = json.loads(line)
                lines.append((float(entry["offset_s"]), int(entry["seq"]), line))
    if header is None:
        return away
    with writing("the record file", record):
        record.write_text("\n".join([header, *(line for _, _, line in sorted(lines))]) + "\n",
                          encoding="utf-8")
    for part in merged:
        part.unlink()
    return away


# ------------------------------------------------------------------------------ worker


def _worker_process(settings: Settings, run_id: str) -> None:
    """A local generator's process: errors are handed in, not raised (nobody reads them)."""
    tune_for_batches()
    try:
        run_worker(settings, run_id)
    except PaysimError as exc:
        print(f"paysim worker: error: {exc}", flush=True)
        raise SystemExit(1) from None


def run_worker(settings: Settings, run_id: str | None = None, wait_s: float = 60.0,
               on_joined: Callable[[str, int, int], None] | None = None) -> Handed:
    """Join a run (``run_id``, else the oldest with a share free, waiting up to ``wait_s``),
    send its share, hand in what was measured."""
    client = store.connect(settings)
    try:
        run_id, share, announcement = _claim(client, run_id, wait_s)
        if on_joined is not None:
            on_joined(run_id, share, announcement.workers)
        return _run_share(settings, client, announcement, share)
    finally:
        client.close()


def _claim(client: redis.Redis, run_id: str | None,
           wait_s: float) -> tuple[str, int, Announcement]:
    deadline = time.monotonic() + wait_s
    while True:
        candidates = [run_id] if run_id else [
            raw.decode() for raw in client.zrange(OPEN_RUNS, 0, -1)]
        for candidate in candidates:
            raw = client.get(plan_key(candidate))
            if raw is None:
                continue
            announcement = _announcement.decode(raw)
            share = client.incr(claims_key(candidate)) - 1
            client.expire(claims_key(candidate), KEY_TTL_S)
            if share < announcement.workers:
                return candidate, share, announcement
        if time.monotonic() >= deadline:
            what = f"run {run_id} has no share free" if run_id else "no run has a share free"
            raise PaysimError(f"{what} after {wait_s:g} s: start `paysim send --workers N "
                              "--local-workers M` (M < N) first")
        time.sleep(0.2)


def _run_share(settings: Settings, client: redis.Redis, announcement: Announcement,
               share: int) -> Handed:
    run_id, workers = announcement.run_id, announcement.workers
    host, pid = socket.gethostname(), os.getpid()
    with tempfile.TemporaryDirectory(prefix="paysim-worker-") as folder:
        request = announcement.request
        if request.record:  # each generator its own part; the coordinator merges them
            request = dataclasses.replace(request, record=str(record_part(request.record,
                                                                          share)))
        if announcement.scenario_text is not None:
            path = Path(folder) / "scenario.toml"
            path.write_text(announcement.scenario_text)
            request = dataclasses.replace(request, scenario=str(path))
        planned = plan_run(settings, request)
    beat = Beat(host, pid, ready=True, at_us=now_us())
    client.set(worker_key(run_id, share), _encode(beat), ex=KEY_TTL_S)
    start_at = _wait_for_start(client, run_id, share, beat)
    options = dataclasses.replace(planned.options, share=(share, workers), start_at_us=start_at)
    interrupt = Interrupt()
    run = LoadRun(settings, planned.plan, options, run_id=run_id, interrupt=interrupt)
    hand_in = LiveHandIn(client, run_id, share)

    def on_tick(tick: Tick) -> None:
        try:
            if client.exists(stop_key(run_id)):
                interrupt.request()
            client.set(worker_key(run_id, share), _encode(Beat(
                host, pid, True, tick.sent, tick.completed, tick.dropped, now_us(),
                tick.approved, tick.declined, tick.rolling_p99_ms)), ex=KEY_TTL_S)
            hand_in(run.metrics)
        except redis.RedisError:
            pass  # Redis failing over: the next tick beats again (the coordinator allows it)

    error = None
    try:
        metrics, info = run.run(on_tick)
    except PaysimError as exc:
        if run.metrics is None:
            raise
        error = str(exc)
        metrics, info = run.metrics, None
    _riding_out(lambda: hand_in(metrics, last=True))
    handed = Handed(
        share=share, host=host, pid=pid, scheduled=options.share_of(planned.plan.count),
        lost=len(info.lost_ids) if info else 0,
        lost_ids=info.lost_ids[:LOST_IDS_KEPT] if info else [],
        finished_us=info.finished_us if info else now_us(),
        metrics=metrics_wire.to_wire(metrics), error=error)
    _riding_out(lambda: client.set(result_key(run_id, share), _encode(handed), ex=KEY_TTL_S))
    return handed


def _wait_for_start(client: redis.Redis, run_id: str, share: int, beat: Beat) -> int:
    """The common start, once the coordinator sets it; beating meanwhile."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        raw = client.get(start_key(run_id))
        if raw is not None:
            return int(raw)
        client.set(worker_key(run_id, share), _encode(
            msgspec.structs.replace(beat, at_us=now_us())), ex=KEY_TTL_S)
        time.sleep(0.1)
    raise PaysimError(f"run {run_id} never started: its coordinator did not set a start "
                      "within 120 s")
