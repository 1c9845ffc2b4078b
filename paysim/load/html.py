"""report.html: one self-contained page for a run, readable anywhere with no network.

Everything is in the one file: the styles inline, the charts as SVG drawn here in Python (no
JavaScript, no chart library, no fonts, images or links to fetch; a Content-Security-Policy
forbids the browser to load anything at all), and the whole report.json embedded as
``<script type="application/json" id="paysim-report">`` so the page carries its own data.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from paysim.domain import money
from paysim.load.report import PERCENTILE_LABELS, InvalidRow, RunReport, TimelineSecond
from paysim.load.report_compare import format_ms, format_value, latency_blocks

# Colours that read on white and for the common colour-vision deficiencies (blue / orange).
P50_COLOUR = "#1f77b4"
P99_COLOUR = "#e8590c"
SENT_COLOUR = "#495057"
COMPLETED_COLOUR = "#1f77b4"
STATUS_COLOURS = {"approved": "#2b8a3e", "declined": "#c92a2a"}
OTHER_COLOUR = "#868e96"

CHART_WIDTH = 960
CHART_HEIGHT = 280
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 24, 36, 44
POINT_MARKERS_UP_TO = 600  # seconds; beyond that the lines alone (hover titles per point)

STYLE = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; background: #fff; color: #212529;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; }
main { max-width: 1040px; margin: 0 auto; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #dee2e6; }
.sub { color: #495057; margin: 0 0 8px; font-family: ui-monospace, Menlo, Consolas, monospace; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 4px; font-weight: 600;
         font-size: 13px; vertical-align: middle; margin-left: 8px; }
.badge.pass { background: #d3f9d8; color: #1b5e20; border: 1px solid #8ce99a; }
.badge.fail { background: #ffe3e3; color: #a51111; border: 1px solid #ffa8a8; }
.badge.none { background: #f1f3f5; color: #495057; border: 1px solid #dee2e6; }
table { border-collapse: collapse; margin: 4px 0 8px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e9ecef; text-align: left; }
th { background: #f8f9fa; font-weight: 600; border-bottom: 2px solid #dee2e6; }
td.num, th.num { text-align: right; }
.columns { display: flex; flex-wrap: wrap; gap: 8px 48px; align-items: flex-start; }
table.kv th { background: none; border-bottom: 1px solid #e9ecef; font-weight: 500;
              color: #495057; }
tr.pass td { background: #ebfbee; }
tr.fail td { background: #ffe8e8; }
.pass-text { color: #2b8a3e; font-weight: 600; }
.fail-text { color: #c92a2a; font-weight: 600; }
.approved { color: #2b8a3e; }
.declined { color: #c92a2a; }
.note { color: #868e96; }
figure { margin: 8px 0 16px; }
figcaption { color: #495057; font-size: 13px; margin-top: 2px; }
svg.chart { width: 100%; height: auto; display: block; border: 1px solid #e9ecef;
            border-radius: 4px; background: #fff; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif;
           fill: #343a40; }
svg .axis { stroke: #adb5bd; stroke-width: 1; }
svg .grid { stroke: #f1f3f5; stroke-width: 1; }
svg .tick { font-size: 12px; fill: #495057; }
svg .title { font-size: 14px; font-weight: 600; }
svg .legend { font-size: 13px; }
svg .empty { font-size: 15px; fill: #868e96; }
details { margin: 4px 0; }
code, .mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
footer { margin-top: 40px; color: #868e96; font-size: 12px; }
"""

# Nothing may be fetched: not a script, style, font, image or frame, not even by accident.
CSP = "default-src 'none'; style-src 'unsafe-inline'"


def esc(value: Any) -> str:
    """Text for the page: HTML-escaped, and with ``=`` and ``/`` as character references too,
    so no report text can ever read as an attribute (``src=``) or a URL (``https://``)."""
    return html.escape(str(value), quote=True).replace("=", "&#61;").replace("/", "&#47;")


def _num(value: float) -> str:
    """A number for an SVG attribute: short, no exponent."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}/s"


def embed_json(report: RunReport) -> str:
    """The report as JSON that cannot end its <script> element or open a comment early.

    ``<``, ``>``, ``&``, ``=`` and ``/`` only occur inside JSON strings, where ``\\u003c`` and
    friends mean the same characters, so ``json.loads`` of the element's text gives the report
    back; and no string in it can read as ``</script>``, ``src=`` or ``https://``.
    """
    text = json.dumps(report.to_dict(), ensure_ascii=True, separators=(",", ":"))
    for char in "<>&=/":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


# --------------------------------------------------------------------------------- charts


def nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about ``ticks`` ticks."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        if raw <= multiple * magnitude + 1e-12:
            return multiple * magnitude
    return 10 * magnitude


def _tick_label(value: float, step: float) -> str:
    """As many decimals as the step needs: 0, 2.5, 5, 7.5 keep theirs; 0, 50, 100 none."""
    decimals = next((d for d in range(6) if abs(round(step, d) - step) < 1e-9), 6)
    return f"{value:,.{decimals}f}"


@dataclass(frozen=True)
class Series:
    """One line of a chart: its per-second points (None: no value that second)."""

    key: str
    label: str
    colour: str
    points: list[tuple[int, float | None]]
    dashed: bool = False


def _segments(points: list[tuple[int, float | None]]) -> list[list[tuple[int, float]]]:
    """Runs of consecutive seconds that have a value; a missing second breaks the line."""
    runs: list[list[tuple[int, float]]] = []
    previous: int | None = None
    for second, value in points:
        if value is None:
            previous = None
            continue
        if previous is None or second != previous + 1:
            runs.append([])
        runs[-1].append((second, value))
        previous = second
    return runs


def _empty_chart(chart_id: str, title: str, message: str) -> str:
    return (f'<svg class="chart" id="{esc(chart_id)}" viewBox="0 0 {CHART_WIDTH} 120" '
            f'role="img" aria-label="{esc(title)}: {esc(message)}">'
            f'<text class="title" x="{MARGIN_LEFT}" y="24">{esc(title)}</text>'
            f'<text class="empty" x="{CHART_WIDTH / 2}" y="72" text-anchor="middle">'
            f'{esc(message)}</text></svg>')


def line_chart(chart_id: str, title: str, unit: str, series: Sequence[Series],
               last_second: int) -> str:
    """Lines over the run's seconds; each series' data also sits in its data-points."""
    values = [v for line in series for _, v in line.points if v is not None]
    if not values:
        return _empty_chart(chart_id, title, "no per-second data in this run")
    x_max = max(1, last_second)
    y_step = nice_step(max(values))
    y_max = max(y_step, math.ceil(max(values) / y_step - 1e-9) * y_step)
    left, right = MARGIN_LEFT, CHART_WIDTH - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, CHART_HEIGHT - MARGIN_BOTTOM

    def x(second: float) -> float:
        return left + (right - left) * second / x_max

    def y(value: float) -> float:
        return bottom - (bottom - top) * value / y_max

    out = [f'<svg class="chart" id="{esc(chart_id)}" viewBox="0 0 {CHART_WIDTH} '
           f'{CHART_HEIGHT}" role="img" aria-label="{esc(title)}">',
           f'<text class="title" x="{left}" y="22">{esc(title)}</text>']
    tick, y_ticks = 0.0, []
    while tick <= y_max + 1e-9:
        y_ticks.append(tick)
        tick += y_step
    for value in y_ticks:
        out.append(f'<line class="grid" x1="{left}" x2="{right}" y1="{_num(y(value))}" '
                   f'y2="{_num(y(value))}"/>')
        out.append(f'<text class="tick" x="{left - 8}" y="{_num(y(value) + 4)}" '
                   f'text-anchor="end">{esc(_tick_label(value, y_step))}</text>')
    x_step = max(1.0, nice_step(x_max, ticks=10))
    second = 0.0
    while second <= x_max + 1e-9:
        out.append(f'<line class="axis" x1="{_num(x(second))}" x2="{_num(x(second))}" '
                   f'y1="{bottom}" y2="{bottom + 5}"/>')
        out.append(f'<text class="tick" x="{_num(x(second))}" y="{bottom + 19}" '
                   f'text-anchor="middle">{second:,.0f}</text>')
        second += x_step
    out.append(f'<line class="axis" x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}"/>')
    out.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{bottom}"/>')
    out.append(f'<text class="tick" x="{(left + right) / 2}" y="{CHART_HEIGHT - 6}" '
               'text-anchor="middle">seconds into the run</text>')
    out.append(f'<text class="tick" transform="translate(16 {(top + bottom) / 2}) rotate(-90)" '
               f'text-anchor="middle">{esc(unit)}</text>')
    legend_x = right
    for line in reversed(series):
        legend_x -= 48 + 7.5 * len(line.label)
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        out.append(f'<line x1="{_num(legend_x)}" x2="{_num(legend_x + 24)}" y1="17" y2="17" '
                   f'stroke="{line.colour}" stroke-width="3"{dash}/>')
        out.append(f'<text class="legend" x="{_num(legend_x + 30)}" y="22">'
                   f'{esc(line.label)}</text>')
    for line in series:  # in order: the later lines are drawn over the earlier ones
        data = " ".join(f"{s}:{v!r}" for s, v in line.points if v is not None)
        out.append(f'<g class="series" data-series="{esc(line.key)}" '
                   f'data-points="{esc(data)}">')
        markers = len(line.points) <= POINT_MARKERS_UP_TO and not line.dashed
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        for run in _segments(line.points):
            if len(run) > 1:
                coords = " ".join(f"{_num(x(s))},{_num(y(v))}" for s, v in run)
                out.append(f'<polyline points="{coords}" fill="none" stroke="{line.colour}" '
                           f'stroke-width="2" stroke-linejoin="round"{dash}/>')
            for s, v in run:
                if markers or len(run) == 1:
                    shown = format_ms(v) if unit == "ms" else f"{v:,.0f}"
                    out.append(f'<circle cx="{_num(x(s))}" cy="{_num(y(v))}" r="2.5" '
                               f'fill="{line.colour}"><title>{s} s: {esc(line.label)} '
                               f'{esc(shown)} {esc(unit)}</title></circle>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def latency_chart(report: RunReport) -> str:
    timeline = report.timeline
    last = max((row.second for row in timeline), default=0)
    series = [
        Series("p50_ms", "p50", P50_COLOUR, [(row.second, row.p50_ms) for row in timeline]),
        Series("p99_ms", "p99", P99_COLOUR, [(row.second, row.p99_ms) for row in timeline]),
    ]
    return line_chart("chart-latency", "End-to-end latency per second (p50, p99)", "ms",
                      series, last)


def throughput_chart(report: RunReport) -> str:
    timeline = report.timeline
    last = max((row.second for row in timeline), default=0)
    by_second = {row.second: row for row in timeline}
    seconds = range(last + 1) if timeline else range(0)

    def points(count: Callable[[TimelineSecond], int]) -> list[tuple[int, float | None]]:
        # A second with no entry saw nothing: zero, not a gap.
        return [(s, float(count(by_second[s])) if s in by_second else 0.0) for s in seconds]

    series = [
        Series("completed", "completed", COMPLETED_COLOUR, points(lambda row: row.completed)),
        Series("sent", "sent", SENT_COLOUR, points(lambda row: row.sent), dashed=True),
    ]
    return line_chart("chart-throughput", "Throughput per second (sent, completed)",
                      "payments/s", series, last)


def outcomes_chart(report: RunReport) -> str:
    rows = report.outcomes.by_reason
    title = "Outcomes by reason"
    if not rows:
        return _empty_chart("chart-outcomes", title, "no outcomes in this run")
    label_width, value_width, bar_height, gap = 300, 130, 20, 8
    top = 40
    height = top + len(rows) * (bar_height + gap) + 12
    left, right = label_width, CHART_WIDTH - value_width
    largest = max(row.count for row in rows)
    out = [f'<svg class="chart" id="chart-outcomes" viewBox="0 0 {CHART_WIDTH} {height}" '
           f'role="img" aria-label="{esc(title)}">',
           f'<text class="title" x="16" y="24">{esc(title)}</text>']
    for index, row in enumerate(rows):
        y = top + index * (bar_height + gap)
        colour = STATUS_COLOURS.get(row.status, OTHER_COLOUR)
        width = max(1.0, (right - left) * row.count / largest)
        label = f"{row.reason_code}  {row.reason_text}"
        out.append(f'<g class="bar" data-code="{esc(row.reason_code)}" '
                   f'data-count="{row.count}">')
        out.append(f'<text class="legend" x="{left - 10}" y="{y + 15}" text-anchor="end">'
                   f'{esc(label)}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{_num(width)}" height="{bar_height}" '
                   f'rx="2" fill="{colour}"><title>{esc(row.status)} {esc(label)}: '
                   f'{row.count:,} ({row.share:.2%})</title></rect>')
        out.append(f'<text class="tick" x="{_num(left + width + 8)}" y="{y + 15}">'
                   f'{row.count:,}  ({row.share:.1%})</text>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------------- tables


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int],
           row_classes: Sequence[str] | None = None, table_id: str = "") -> str:
    """Cells arrive escaped already (they may carry markup)."""
    def cls(index: int) -> str:
        return ' class="num"' if index in numeric else ""

    ident = f' id="{esc(table_id)}"' if table_id else ""
    head = "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = []
    for n, row in enumerate(rows):
        row_cls = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        body.append(f"<tr{row_cls}>" + "".join(f"<td{cls(i)}>{cell}</td>"
                                                for i, cell in enumerate(row)) + "</tr>")
    return (f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
            "</tbody></table>")


def summary_table(report: RunReport) -> str:
    load, outcomes = report.load, report.outcomes
    target = load.target_rate
    if target:
        target_text = _rate(target)
        share = load.achieved_rate / target
        achieved = f"{_rate(load.achieved_rate)} ({share:.1%} of target)"
    else:
        target_text = "none: as fast as possible" if load.mode == "burst" else "-"
        achieved = _rate(load.achieved_rate)
    failed = len(report.failed_thresholds)
    if report.thresholds:
        verdict = (f'<span class="{"fail" if failed else "pass"}-text">'
                   f"{len(report.thresholds) - failed} passed, {failed} failed</span>")
    else:
        verdict = '<span class="note">none set</span>'
    lost = outcomes.lost
    run = [
        ("run id", f'<span class="mono">{esc(report.run_id)}</span>'),
        ("scenario", esc(report.scenario or "-")),
        ("seed", esc("-" if report.seed is None else report.seed)),
        ("via", esc(report.via)),
        ("started at", esc(report.started_at)),
        ("duration", esc(f"{report.duration_s:,.3f} s")),
        ("mode", esc(load.mode)),
        ("thresholds", verdict),
    ]
    figures = [
        ("target rate", esc(target_text)),
        ("achieved rate", esc(achieved)),
        ("scheduled", _int(load.scheduled)),
        ("sent", _int(load.sent)),
        ("completed", _int(outcomes.completed)),
        ("lost", f'<span class="{"fail-text" if lost else ""}">{_int(lost)}</span>'),
        ("dropped", _int(load.dropped)),
        ("throughput", esc(_rate(outcomes.throughput_per_s))),
        ("approved", esc(f"{outcomes.approved_ratio:.2%}")),
        ("send delay p99", esc(format_value(load.send_delay.p99_ms, "ms"))),
    ]
    tables = "".join(
        '<table class="kv"><tbody>'
        + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
        + "</tbody></table>" for rows in (run, figures))
    return f'<div class="columns" id="summary">{tables}</div>'


def latency_table(report: RunReport) -> str:
    headers = ["stage", "count", "mean ms", *(f"{label} ms" for label in PERCENTILE_LABELS)]
    rows = []
    for name, block in latency_blocks(report):
        rows.append([esc(name), _int(block.count), esc(format_ms(block.mean_ms)),
                     *(esc(format_ms(value)) for _, value in block.percentiles())])
    return _table(headers, rows, set(range(1, len(headers))), table_id="latency")


def outcomes_table(report: RunReport) -> str:
    rows = [[f'<span class="{esc(r.status)}">{esc(r.status)}</span>',
             f'<span class="mono">{esc(r.reason_code)}</span>', esc(r.reason_text),
             _int(r.count), esc(f"{r.share:.2%}")]
            for r in report.outcomes.by_reason]
    if not rows:
        return '<p class="note">No payment completed.</p>'
    return _table(["status", "code", "reason", "count", "share"], rows, {3, 4},
                  table_id="outcomes")


def amounts_table(report: RunReport) -> str:
    amounts = report.outcomes.approved_amounts
    if not amounts:
        return '<p class="note">No approved amounts.</p>'
    rows = [[esc(currency), esc(value.formatted), _int(value.minor_units)]
            for currency, value in amounts.items()]
    return _table(["currency", "approved amount", "minor units"], rows, {1, 2},
                  table_id="amounts")


def thresholds_table(report: RunReport) -> str:
    thresholds = report.thresholds
    if not thresholds:
        return '<p class="note">No thresholds were set for this run.</p>'
    rows, classes = [], []
    for t in thresholds:
        worst = t.worst_window
        worst_text = "-" if worst is None else (
            ("no value" if worst.actual is None else f"{worst.actual:,.4g}")
            + f" (from {worst.start_s} s)")
        result = ('<span class="pass-text">pass</span>' if t.passed
                  else '<span class="fail-text">FAIL</span>')
        rows.append([f'<span class="mono">{esc(t.expression)}</span>',
                     esc("whole run" if not t.window_s else f"run + each {t.window_s} s"),
                     esc(f"{t.bound:,.4g}"),
                     esc("no value" if t.actual is None else f"{t.actual:,.4g}"),
                     _int(t.failed_windows), esc(worst_text), result])
        classes.append("pass" if t.passed else "fail")
    headers = ["threshold", "over", "bound", "actual", "failed windows", "worst failed window",
               "result"]
    return _table(headers, rows, {2, 3, 4}, classes, table_id="thresholds")


def lifecycle_section(report: RunReport) -> str:
    """The follow-up operations of a run with a lifecycle mix; nothing otherwise."""
    lifecycle = report.lifecycle
    if lifecycle is None:
        return ""
    kinds = [[esc(row.kind), _int(row.scheduled), _int(row.answered),
              f'<span class="{"fail-text" if row.lost else ""}">{_int(row.lost)}</span>',
              *(esc(format_ms(value)) for value in (row.latency.p50_ms, row.latency.p99_ms,
                                                    row.latency.max_ms))]
             for row in lifecycle.kinds]
    codes = [[esc(row.kind), f'<span class="mono">{esc(row.reason_code)}</span>',
              esc(row.reason_text), _int(row.count),
              esc(", ".join(money.format_amount(amount, currency)
                            for currency, amount in row.amounts.items()))]
             for row in lifecycle.by_code]
    return "".join([
        "<h2>Lifecycle operations</h2>",
        f'<p class="note">{_int(lifecycle.answered)} of {_int(lifecycle.scheduled)} '
        f"operations answered ({esc(_rate(lifecycle.throughput_per_s))}); latency from each "
        "one's intended time to the ledger's answer.</p>",
        _table(["operation", "scheduled", "answered", "lost", "p50 ms", "p99 ms", "max ms"],
               kinds, set(range(1, 7)), table_id="lifecycle"),
        _table(["operation", "code", "reason", "count", "amount"], codes, {3, 4},
               table_id="lifecycle-answers"),
        _invalid_table(lifecycle.invalid),
    ])


def _invalid_table(rows: list[InvalidRow]) -> str:
    if not rows:
        return ""
    cells = [[esc(row.kind), _int(row.answered), _int(row.refused),
              f'<span class="{"fail-text" if row.accepted else ""}">{_int(row.accepted)}</span>']
             for row in rows]
    return ('<p class="note">Invalid transitions sent on purpose: each must be refused.</p>'
            + _table(["operation", "answered", "refused", "accepted"], cells, {1, 2, 3},
                     table_id="lifecycle-invalid"))


def target_section(report: RunReport) -> str:
    """Where a run against another system sent its payments, and its errors; nothing on a
    run of paysim's pipeline."""
    target = report.target
    if target is None:
        return ""
    rows = [("kind", esc(target.kind)),
            ("sent to", f'<span class="mono">{esc(target.address)}</span>')]
    if target.outcome_topic is not None:
        rows.append(("outcomes from", f'<span class="mono">{esc(target.outcome_topic)}</span>'))
    if target.correlate is not None:
        rows.append(("matched by", f'<span class="mono">{esc(target.correlate)}</span>'))
    if target.concurrency is not None:
        rows.append(("in flight at most", _int(target.concurrency)))
    rows += [("errors", f'<span class="{"fail-text" if target.errors else ""}">'
                        f"{_int(target.errors)}</span>"),
             ("audit", esc(target.audit))]
    errors = _table(["error", "count", "first"],
                    [[esc(row.kind), _int(row.count), esc(row.first)]
                     for row in target.by_error], {1}, table_id="target-errors"
                    ) if target.by_error else ""
    return "".join([
        "<h2>Target</h2>",
        '<table class="kv" id="target"><tbody>'
        + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
        + "</tbody></table>", errors])


def lost_section(report: RunReport) -> str:
    outcomes = report.outcomes
    if not outcomes.lost:
        return ""
    ids = outcomes.lost_ids
    listed = "".join(f"<li><code>{esc(i)}</code></li>" for i in ids)
    more = (f'<p class="note">{outcomes.lost - len(ids):,} more not listed.</p>'
            if outcomes.lost > len(ids) else "")
    return (f'<h2>Lost payments</h2><p class="fail-text">{outcomes.lost:,} payments had no '
            f"outcome.</p><details><summary>payment ids</summary><ul>{listed}</ul></details>"
            + more)


# ----------------------------------------------------------------------------------- page


def render_html(report: RunReport) -> str:
    """The run report as one self-contained HTML page (inline CSS and SVG, no network)."""
    if not report.thresholds:
        badge = '<span class="badge none">no thresholds</span>'
    elif report.passed:
        badge = '<span class="badge pass">PASSED</span>'
    else:
        badge = '<span class="badge fail">FAILED</span>'
    scenario = f" scenario {report.scenario}" if report.scenario else ""
    subtitle = f"{report.run_id}{scenario} · {report.started_at} · {report.duration_s:,.1f} s"
    body = [
        f"<h1>paysim run report {badge}</h1>",
        f'<p class="sub">{esc(subtitle)}</p>',
        "<h2>Summary</h2>", summary_table(report),
        target_section(report),
        "<h2>Latency over time</h2>",
        f"<figure>{latency_chart(report)}<figcaption>End to end, from the intended send time "
        "to the client's notification; p50 and p99 of the payments completed in each second. "
        "A gap is a second in which none completed.</figcaption></figure>",
        "<h2>Throughput over time</h2>",
        f"<figure>{throughput_chart(report)}<figcaption>Payments sent (by intended second) and "
        "completed (by second of notification) per second.</figcaption></figure>",
        "<h2>Latency per stage</h2>", latency_table(report),
        "<h2>Outcomes</h2>", f"<figure>{outcomes_chart(report)}</figure>",
        outcomes_table(report),
        "<h2>Approved amounts</h2>", amounts_table(report),
        lifecycle_section(report),
        "<h2>Thresholds</h2>", thresholds_table(report),
        lost_section(report),
        "<footer>Made by paysim (schema "
        f"{esc(report.schema)}). The full report.json is embedded in this page: the "
        "element <code>script#paysim-report</code> holds it as JSON.</footer>",
    ]
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>paysim report {esc(report.run_id)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body><main>",
        *body,
        "</main>",
        f'<script type="application/json" id="paysim-report">{embed_json(report)}</script>',
        "</body>",
        "</html>",
        "",
    ])
