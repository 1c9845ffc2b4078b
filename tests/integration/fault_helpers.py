"""What the fault runs measure: each fault as it was injected, and the end-to-end latency of
the payments sent around it (from the run's done stream)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

from paysim.domain.messages import NOTIFIED, REQUESTED
from paysim.infra.config import Settings
from paysim.load import distributed
from paysim.pipeline.store import Client, DoneEntry
from tests.integration.pipeline_helpers import paysim

# Payments living their life while the faults happen (issue 12): holds captured in parts,
# voids, refunds, disputes and their resolution, reversals (half racing their authorization).
LIFECYCLE_MIX = """
name = "faults with a lifecycle mix"
[lifecycle]
manual_capture_share = 0.3
capture_delay = { min = "1s", max = "3s" }
split_capture_share = 0.3
split_parts = 2
void_share = 0.05
void_delay = "2s"
refund_share = 0.05
refund_delay = "3s"
dispute_share = 0.01
dispute_delay = "3s"
dispute_won_share = 0.5
resolve_delay = "2s"
reversal_share = 0.01
reversal_delay = "1s"
reversal_race_share = 0.5
"""


@dataclass(frozen=True)
class Fault:
    at: float  # time.monotonic() of the kill
    label: str
    answered: float | None = None  # time.time() at which a restarted component answered
    down_s: float = 0.0  # from the kill until it answered (a broker: for the groups)
    broker: bool = False


def first_entries(entries: list[DoneEntry]) -> list[DoneEntry]:
    """Each payment's first entry: a record replayed after a crash may add a repeat."""
    seen: set[str] = set()
    return [e for e in entries if e.payment_id not in seen and not seen.add(e.payment_id)]


def sent_and_latency(entries: list[DoneEntry], offset: float) -> list[tuple[float, float]]:
    """Each payment's send time (on the test's time.monotonic() clock: wall clock minus
    ``offset``) and its latency in ms from that send to its notification."""
    return [(sent / 1e6 - offset, (notified - sent) / 1000) for e in entries
            if (sent := e.stages.get(REQUESTED)) is not None
            and (notified := e.stages.get(NOTIFIED)) is not None]


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


def baseline_p99(latencies: list[tuple[float, float]], faults: list[Fault],
                 seconds: float = 10.0) -> float:
    """The p99 latency in ms of the payments sent in the ``seconds`` before the first fault's
    window opened (1 s before it): the run undisturbed and past its start (the first fault
    comes once the pipeline has caught up), which each fault's worst is compared with."""
    opens = faults[0].at - 1
    before = sorted(ms for sent, ms in latencies if opens - seconds <= sent < opens)
    assert before, "no payment was sent before the first fault"
    return before[min(len(before) - 1, int(0.99 * len(before)))]


def format_windows(faults: list[Fault], windows: list[tuple[int, float]],
                   baseline_ms: float | None = None) -> str:
    """The table of fault_windows; with ``baseline_ms``, each worst's excess over it."""
    width = max((len(fault.label) for fault in faults), default=5)
    added = baseline_ms is not None
    lines = [f"{'fault':<{width}} {'delayed':>7}  {'worst ms':>8}"
             + (f"  {'added ms':>8}" if added else "")]
    for fault, (delayed, worst) in zip(faults, windows, strict=True):
        extra = f"  {worst - baseline_ms:>8,.0f}" if baseline_ms is not None else ""
        lines.append(f"{fault.label:<{width}} {delayed:>7,}  {worst:>8,.0f}{extra}")
    return "\n".join(lines)


def audited_clean(settings: Settings, run_id: str) -> dict:
    """`paysim audit --run` after faults: every payment sent has one outcome (none lost,
    doubled or disagreeing), and the ledger is consistent. Returns the audit's JSON."""
    audit = paysim(settings, "audit", "--run", run_id, "--json")
    found = json.loads(audit.stdout)
    print(json.dumps({k: found[k] for k in ("sent", "outcomes", "lost_count", "doubled_count",
                                            "disagreeing_count", "ledgers_checked")}))
    assert audit.returncode == 0, found
    assert (found["lost_count"], found["doubled_count"], found["disagreeing_count"]) == (0, 0, 0)
    assert found["ledger_mismatches"] == []
    # The ledger under every fault: each book balances and agrees with its payments' records
    # (no operation applied twice), money is conserved per currency, nothing held past its TTL.
    assert found["unbalanced"] == {} and found["holds_overdue"] == []
    assert all(sum(kinds.values()) == 0 for kinds in found["balances"].values())
    return found


def started_runs(client: Client) -> set[str]:
    """The ids of the distributed runs whose generators were given their common start."""
    return {key.decode().split(":")[2]
            for key in client.scan_iter(match=distributed.start_key("*"), count=1000)}


def generator_beat(client: Client, share: int, workers: int,
                   earlier: set[str] | frozenset[str] = frozenset()) -> distributed.Beat | None:
    """The last beat of generator ``share`` (of ``workers``) in a distributed run started
    since the runs ``earlier``, once it has sent something; None before."""
    for run_id in started_runs(client) - earlier:
        beat = distributed._beats(client, run_id, workers).get(share)
        if beat is not None and beat.pid and beat.sent > 0:
            return beat
    return None
