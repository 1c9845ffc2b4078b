"""`paysim report show` and `paysim report diff`: read report.json files back."""

from __future__ import annotations

import click
from rich.table import Table

from paysim.cli.payments import render_report as render_send_summary
from paysim.cli.render import console, print_json, safe
from paysim.load.report import RunReport
from paysim.load.report_compare import diff_rows, format_change, format_value, load_report

VERDICT_STYLE = {"better": "green", "worse": "red"}


@click.group()
def report() -> None:
    """Read run reports (report.json): show one again, or compare two runs."""


def render_report(data: RunReport) -> None:
    """The report as `paysim send` summed the run up, then what send put on stderr."""
    render_send_summary(data)
    outcomes = data.outcomes
    if outcomes.lost:
        listed = safe(", ".join(outcomes.lost_ids[:10]))
        more = outcomes.lost - min(10, len(outcomes.lost_ids))
        console.print(f"[red]{outcomes.lost:,} payments had no outcome:[/] {listed}"
                      + (f" and {more:,} more" if more > 0 else ""))
    failed = [t.expression for t in data.failed_thresholds]
    if failed:
        console.print(f"[red]thresholds failed: {safe('; '.join(failed))}[/]")
    elif data.thresholds:
        console.print("[green]all thresholds passed[/]")


@report.command()
@click.argument("path", metavar="REPORT.json")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def show(path: str, as_json: bool) -> None:
    """Show a run's report.json again, as `paysim send` showed it."""
    data = load_report(path)
    if as_json:
        print_json(data.to_dict())
    else:
        render_report(data)


@report.command()
@click.argument("path_a", metavar="A.json")
@click.argument("path_b", metavar="B.json")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def diff(path_a: str, path_b: str, as_json: bool) -> None:
    """Compare two runs' reports: each key figure of A and B, the change and the change %.

    Green is better and red worse where the direction is clear (lower latency, fewer lost,
    higher approved ratio and throughput); figures with no clear direction stay plain.
    """
    a, b = load_report(path_a), load_report(path_b)
    rows = diff_rows(a, b)
    if as_json:
        print_json({"a": {"path": path_a, "run_id": a.run_id},
                    "b": {"path": path_b, "run_id": b.run_id},
                    "rows": [row.as_dict() for row in rows]})
        return
    console.print(f"A  {safe(path_a)}  (run {safe(a.run_id)})")
    console.print(f"B  {safe(path_b)}  (run {safe(b.run_id)})")
    table = Table("figure", "A", "B", "change", "change %", title="B compared with A")
    for row in rows:
        change, pct = format_change(row)
        style = VERDICT_STYLE.get(row.verdict or "")
        if style:
            change, pct = f"[{style}]{change}[/]", f"[{style}]{pct}[/]"
        table.add_row(safe(row.figure), format_value(row.a, row.unit),
                      format_value(row.b, row.unit), change, pct)
    console.print(table)
