"""Reading report.json files back, checking them against the schema, and comparing two runs.

``load_report`` turns every way a file can be wrong (missing, unreadable, not JSON, not a
``paysim.report/1`` document) into one ConfigError line that names the file; ``keep_report``
keeps every run's report in its run folder (the dashboard's past runs). ``diff_rows``
lines up the figures that say whether a run got better or worse: rates, losses, outcome shares
and latency percentiles, each with its absolute and relative change.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from paysim.infra.config import Settings
from paysim.infra.errors import ConfigError
from paysim.infra.files import owner_only
from paysim.load.report import SCHEMA, LatencyBlock, RunReport, TargetReport
from paysim.pipeline.settlement_store import run_folder

SCHEMA_FILE = "report.schema.json"
END_TO_END = "end to end"

LOWER, HIGHER = "lower", "higher"  # which way a figure is better


@functools.cache
def report_schema() -> dict[str, Any]:
    """The JSON Schema of report.json, shipped beside this module."""
    text = resources.files("paysim.load").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(report_schema())


def error_path(error: ValidationError) -> str:
    """``outcomes.by_reason[0].count``; ``(top level)`` for the document itself."""
    text = ""
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def schema_error(report: Any) -> str | None:
    """The first (most relevant) schema violation as ``path: message``, or None when valid."""
    error = best_match(_validator().iter_errors(report))
    if error is None:
        return None
    message = " ".join(error.message.split())
    if len(message) > 160:
        message = message[:157] + "..."
    return f"{error_path(error)}: {message}"


def validate_report(report: Any, name: str = "the report") -> None:
    """Raise a one-line ConfigError when ``report`` is not a valid paysim.report/1 document."""
    if isinstance(report, dict) and report.get("schema") != SCHEMA:
        found = report.get("schema")
        raise ConfigError(f"{name} is not a paysim run report: schema is {found!r}, "
                          f"expected {SCHEMA!r}")
    problem = schema_error(report)
    if problem is not None:
        raise ConfigError(f"{name} does not match the {SCHEMA} schema at {problem}")


def parse_report(data: Any, name: str = "the report") -> RunReport:
    """A report.json document, validated against the schema, as a RunReport."""
    validate_report(data, name)
    # The schema is stricter than the types, so what passed it converts.
    return msgspec.convert(data, RunReport)


def load_report(path: str | Path) -> RunReport:
    """Read and validate one report.json; every failure is a one-line ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no report file {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not a report file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a JSON report (not UTF-8 text)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} "
                          f"column {exc.colno}") from None
    return parse_report(report, str(path))


def keep_report(settings: Settings, report: RunReport) -> Path:
    """Write ``report`` as report.json in the run's folder under lifecycle.runs_dir, where the
    dashboard's list of past runs finds it; OSError when it cannot be written."""
    folder = run_folder(settings, report.run_id)
    path = folder / "report.json"
    with owner_only():  # beside the run's clearing file: state, for its owner alone
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict()) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ comparing


@dataclass(frozen=True)
class Row:
    """One compared figure. ``unit`` is ms, s, per_s, count or ratio (a 0..1 share)."""

    figure: str
    a: float | None
    b: float | None
    unit: str
    better: str | None = None  # LOWER, HIGHER, or None when no direction is clearly better

    @property
    def change(self) -> float | None:
        """b - a, in the figure's unit; None when either run lacks the figure."""
        if self.a is None or self.b is None:
            return None
        return self.b - self.a

    @property
    def change_pct(self) -> float | None:
        """The change relative to a, in percent; None when a is 0 or missing."""
        change = self.change
        if change is None or not self.a:
            return None
        return change / abs(self.a) * 100

    @property
    def verdict(self) -> str | None:
        """'better', 'worse', 'same', or None when the figure has no clear direction."""
        change = self.change
        if self.better is None or change is None:
            return None
        if abs(change) < 1e-9:
            return "same"
        return "better" if (change < 0) == (self.better == LOWER) else "worse"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "change": self.change, "change_pct": self.change_pct,
                "verdict": self.verdict}


def latency_blocks(report: RunReport) -> list[tuple[str, LatencyBlock]]:
    """(name, latency block) for end to end, then each stage in the report's order."""
    return [(END_TO_END, report.latency.end_to_end), *report.latency.stages.items()]


def _reason_shares(report: RunReport) -> dict[str, tuple[float, str]]:
    shares: dict[str, tuple[float, str]] = {}
    for row in report.outcomes.by_reason:
        before = shares.get(row.reason_code, (0.0, row.reason_text))[0]
        shares[row.reason_code] = (before + row.share, row.reason_text)
    return shares


def diff_rows(a: RunReport, b: RunReport) -> list[Row]:
    """The key figures of run ``a`` and run ``b``, side by side (b compared with a)."""
    rows = [
        Row("duration", a.duration_s, b.duration_s, "s"),
        Row("target rate", a.load.target_rate, b.load.target_rate, "per_s"),
        Row("achieved rate", a.load.achieved_rate, b.load.achieved_rate, "per_s", HIGHER),
        Row("throughput", a.outcomes.throughput_per_s, b.outcomes.throughput_per_s, "per_s",
            HIGHER),
        Row("sent", a.load.sent, b.load.sent, "count"),
        Row("completed", a.outcomes.completed, b.outcomes.completed, "count"),
        Row("lost", a.outcomes.lost, b.outcomes.lost, "count", LOWER),
        Row("dropped", a.load.dropped, b.load.dropped, "count", LOWER),
        Row("approved ratio", a.outcomes.approved_ratio, b.outcomes.approved_ratio, "ratio",
            HIGHER),
    ]
    shares_a, shares_b = _reason_shares(a), _reason_shares(b)
    order = list(shares_a) + [code for code in shares_b if code not in shares_a]
    for code in order:
        text = (shares_a.get(code) or shares_b[code])[1]
        rows.append(Row(f"share {code} {text}", shares_a.get(code, (0.0, ""))[0],
                        shares_b.get(code, (0.0, ""))[0], "ratio"))
    blocks_a, blocks_b = dict(latency_blocks(a)), dict(latency_blocks(b))
    names = list(blocks_a) + [name for name in blocks_b if name not in blocks_a]
    for name in names:
        # A stage one run has and the other lacks: its figures are missing on that side.
        absent = LatencyBlock(count=0, histogram=None)
        figures_a = blocks_a.get(name, absent).percentiles()
        figures_b = blocks_b.get(name, absent).percentiles()
        for (label, value_a), (_, value_b) in zip(figures_a, figures_b, strict=True):
            rows.append(Row(f"{name} {label}", value_a, value_b, "ms", LOWER))
    rows.append(Row("send delay p99", a.load.send_delay.p99_ms, b.load.send_delay.p99_ms, "ms",
                    LOWER))
    if a.target is not None or b.target is not None:
        rows += _target_rows(a.target, b.target)
    if a.thresholds or b.thresholds:
        rows.append(Row("thresholds failed", len(a.failed_thresholds),
                        len(b.failed_thresholds), "count", LOWER))
    return rows


def _target_rows(a: TargetReport | None, b: TargetReport | None) -> list[Row]:
    """A run against another system: its errors, in all and by kind (a kind one run lacks
    counts 0 there; a run without a target block has no figure)."""
    def count(report: TargetReport | None, kind: str) -> float | None:
        if report is None:
            return None
        return next((row.count for row in report.by_error if row.kind == kind), 0)

    rows = [Row("target errors", None if a is None else a.errors,
                None if b is None else b.errors, "count", LOWER)]
    kinds = [row.kind for row in (a.by_error if a else [])]
    kinds += [row.kind for row in (b.by_error if b else []) if row.kind not in kinds]
    rows += [Row(f"errors: {kind}", count(a, kind), count(b, kind), "count", LOWER)
             for kind in kinds]
    return rows


# ----------------------------------------------------------------------------- formatting


def format_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"


def format_value(value: float | None, unit: str) -> str:
    """A figure as the tables show it: ms with 1-2 decimals, ratios as percentages."""
    if value is None:
        return "-"
    if unit == "ms":
        return format_ms(value) + " ms"
    if unit == "ratio":
        return f"{value:.2%}"
    if unit == "count":
        return f"{value:,.0f}"
    if unit == "per_s":
        return f"{value:,.1f}/s"
    return f"{value:,.3f} s" if unit == "s" else f"{value:,}"


def format_change(row: Row) -> tuple[str, str]:
    """(change, change %) as text, signed; ratios change in percentage points."""
    change, pct = row.change, row.change_pct
    if change is None:
        text = "-"
    elif row.unit == "ratio":
        text = f"{change * 100:+.2f} pt"
    elif row.unit == "count":
        text = f"{change:+,.0f}"
    elif row.unit == "ms":
        text = ("+" if change >= 0 else "-") + format_ms(abs(change)) + " ms"
    elif row.unit == "per_s":
        text = f"{change:+,.1f}/s"
    else:
        text = f"{change:+,.3f} s"
    return text, "-" if pct is None else f"{pct:+.1f}%"
