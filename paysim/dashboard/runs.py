"""Past runs for the dashboard: the report.json files in a folder, each run's HTML report (the
one `send --html` writes), and the comparison of two (`paysim report diff`'s figures).

A run is named by its run id as its report holds it, never by a path from the request: the
page can only open what the listing found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from paysim.infra.errors import ConfigError
from paysim.load.html import CSP, STYLE, esc, render_html
from paysim.load.report import RunReport
from paysim.load.report_compare import diff_rows, format_change, format_value, load_report

MAX_LISTED = 50
REPORT_NAME = "report.json"


class RunEntry(msgspec.Struct, frozen=True):
    """One past run as the list shows it."""

    run_id: str
    scenario: str | None
    started_at: str
    duration_s: float
    sent: int
    achieved_rate: float
    p99_ms: float | None
    passed: bool
    thresholds: int


def entry(report: RunReport) -> RunEntry:
    return RunEntry(report.run_id, report.scenario, report.started_at, report.duration_s,
                    report.load.sent, report.load.achieved_rate,
                    report.latency.end_to_end.p99_ms, report.passed, len(report.thresholds))


@dataclass
class PastRuns:
    """The reports under ``folder`` (``<folder>/*/report.json`` and ``<folder>/*.json``),
    read once each and again when the file changes."""

    folder: Path
    _cache: dict[Path, tuple[float, RunReport | None]] = field(default_factory=dict)

    def _paths(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        paths = [*self.folder.glob(f"*/{REPORT_NAME}"), *self.folder.glob("*.json")]
        paths.sort(key=_mtime, reverse=True)
        return paths[:MAX_LISTED]

    def _read(self, path: Path) -> RunReport | None:
        mtime = _mtime(path)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            report: RunReport | None = load_report(path)
        except ConfigError:
            report = None  # some other JSON file: not listed
        self._cache[path] = (mtime, report)
        return report

    def reports(self) -> list[RunReport]:
        """The latest reports first, at most MAX_LISTED, each run once."""
        seen: dict[str, RunReport] = {}
        for path in self._paths():
            report = self._read(path)
            if report is not None and report.run_id not in seen:
                seen[report.run_id] = report
        return sorted(seen.values(), key=lambda r: r.started_at, reverse=True)

    def listing(self) -> list[RunEntry]:
        return [entry(report) for report in self.reports()]

    def find(self, run_id: str) -> RunReport | None:
        return next((r for r in self.reports() if r.run_id == run_id), None)

    def report_page(self, run_id: str) -> str | None:
        report = self.find(run_id)
        return None if report is None else render_html(report)

    def diff_page(self, run_a: str, run_b: str) -> str | None:
        a, b = self.find(run_a), self.find(run_b)
        if a is None or b is None:
            return None
        return diff_html(a, b)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def diff_html(a: RunReport, b: RunReport) -> str:
    """Two runs' key figures side by side, as `paysim report diff` prints them."""
    rows = []
    for row in diff_rows(a, b):
        change, pct = format_change(row)
        verdict = row.verdict or ""
        rows.append(f'<tr class="{esc(verdict)}"><td>{esc(row.figure)}</td>'
                    f'<td class="num">{esc(format_value(row.a, row.unit))}</td>'
                    f'<td class="num">{esc(format_value(row.b, row.unit))}</td>'
                    f'<td class="num">{esc(change)}</td><td class="num">{esc(pct)}</td>'
                    f"<td>{esc(verdict)}</td></tr>")
    title = f"{a.run_id} → {b.run_id}"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>paysim diff {esc(title)}</title>",
        f"<style>{STYLE} tr.better td{{color:#1a7f37}} tr.worse td{{color:#cf222e}}</style>",
        "</head>", "<body><main>", f"<h1>paysim runs compared</h1><p class=\"sub\">"
        f"A: {esc(a.run_id)} ({esc(a.started_at)}) · B: {esc(b.run_id)} "
        f"({esc(b.started_at)})</p>",
        "<table><thead><tr><th>figure</th><th>A</th><th>B</th><th>change</th><th>%</th>"
        "<th></th></tr></thead><tbody>", *rows, "</tbody></table>",
        "</main></body></html>", ""])


def listing_json(runs: list[RunEntry]) -> bytes:
    return json.dumps([msgspec.to_builtins(run) for run in runs]).encode()
