"""The benchmark's HTTP phase: wrk, a load generator that is not paysim's own, POSTs valid
/authorize bodies (bench/authorize.lua) to the running HTTP API over a fixed number of
connections for a bounded time; then the outcomes of the payments it accepted are waited for
in Redis, to tell whether the pipeline behind the API kept up."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.infra.waiting import wait_until
from paysim.pipeline import store

WRK_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "authorize.lua"
CONNECTIONS = 32
WRK_THREADS = 2  # the script's seq numbering holds up to 16
# The pipeline kept up when every accepted payment had its outcome this soon after the load
# ended: a backlog of a few hundred milliseconds, not one that grew for the whole run.
KEPT_UP_S = 2.0
OUTCOME_WAIT_S = 60.0
MARKER = "paysim-wrk "


@dataclass(frozen=True)
class HttpFigures:
    """One wrk run against POST /authorize, and the outcomes behind it."""

    run_id: str
    connections: int
    duration_s: float
    requests: int  # answered
    accepted: int  # answered 2xx: on Kafka
    failed: int  # answered otherwise, timed out, or a socket error
    requests_per_s: float
    latency: dict[str, float]  # p50_ms, p90_ms, p99_ms, p99_9_ms, max_ms
    outcomes: int  # the run's outcomes in Redis when the wait ended
    # Seconds from the end of the load until every accepted payment had its outcome; None
    # when they did not all arrive within OUTCOME_WAIT_S.
    caught_up_s: float | None

    @property
    def kept_up(self) -> bool:
        return self.caught_up_s is not None and self.caught_up_s <= KEPT_UP_S

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kept_up": self.kept_up}


def wrk_command(url: str, run_id: str, duration_s: float,
                connections: int = CONNECTIONS) -> list[str]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise PaysimError("wrk is not installed: `apt-get install wrk` (scripts/setup.sh "
                          "installs it)")
    return [wrk, f"-t{min(WRK_THREADS, connections)}", f"-c{connections}",
            f"-d{max(1, round(duration_s))}s", "--timeout", "10s", "-s", str(WRK_SCRIPT),
            url, "--", run_id]


def parse_wrk(output: str) -> dict[str, int]:
    """The figures the script's done() printed. PaysimError when it printed none."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            figures = json.loads(line[len(MARKER):])
            if isinstance(figures, dict):
                return {str(key): int(value) for key, value in figures.items()}
    raise PaysimError(f"wrk printed no figures: {output.strip()[-300:] or 'nothing'}")


def figures_from_wrk(raw: dict[str, int], run_id: str, connections: int, outcomes: int,
                     caught_up_s: float | None) -> HttpFigures:
    duration_s = raw["duration_us"] / 1e6
    failed = raw["non_2xx"] + raw["socket_errors"] + raw["timeouts"]
    return HttpFigures(
        run_id=run_id, connections=connections, duration_s=round(duration_s, 2),
        requests=raw["requests"], accepted=raw["requests"] - raw["non_2xx"], failed=failed,
        requests_per_s=round(raw["requests"] / duration_s, 1) if duration_s else 0.0,
        latency={f"{name}_ms": round(raw[f"{name}_us"] / 1000, 1)
                 for name in ("p50", "p90", "p99", "p99_9", "max")},
        outcomes=outcomes, caught_up_s=caught_up_s)


def http_phase(settings: Settings, duration_s: float,
               connections: int = CONNECTIONS) -> HttpFigures:
    """wrk against the HTTP API at settings.http for ``duration_s``; then the accepted
    payments' outcomes waited for (at most OUTCOME_WAIT_S)."""
    run_id = f"wrk-{uuid.uuid4().hex[:12]}"
    url = f"http://{settings.http.host}:{settings.http.port}"
    done = subprocess.run(wrk_command(url, run_id, duration_s, connections),
                          capture_output=True, text=True, timeout=duration_s + 60, check=False)
    ended = time.monotonic()
    if done.returncode != 0:
        raise PaysimError(f"wrk failed ({done.returncode}): "
                          f"{(done.stderr or done.stdout).strip()[-300:]}")
    raw = parse_wrk(done.stdout)
    accepted = raw["requests"] - raw["non_2xx"]
    client = store.connect(settings)
    try:
        key = store.run_stream_key(run_id)
        count = [0]
        last_id: list[bytes | str] = ["0"]

        def all_in() -> bool:
            # Counted from the entries: the notifier's holds a batch's payments each.
            entries, last_id[0] = store.read_stream(client, key, last_id[0],
                                                    store.read_done_entries, 10_000, 10)
            count[0] += len(entries)
            return count[0] >= accepted

        caught_up = wait_until(all_in, OUTCOME_WAIT_S, interval=0.05)
    finally:
        client.close()
    return figures_from_wrk(raw, run_id, connections, count[0],
                            round(time.monotonic() - ended, 2) if caught_up else None)
