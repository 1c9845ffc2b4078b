"""`paysim conformance SERVICE`: golden cases against an implementation already running."""

from __future__ import annotations

import click
from rich.table import Table

from paysim.cli.options import with_settings
from paysim.cli.render import console, print_json, safe
from paysim.infra.config import Settings
from paysim.ops.conformance import SUITES, run_conformance


@click.command()
@click.argument("service", type=click.Choice(sorted(SUITES)))
@click.option("--timeout", type=click.FloatRange(1, 600), default=60.0, show_default=True,
              help="Seconds to wait for the service to consume the cases.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@with_settings()
@click.pass_context
def conformance(ctx: click.Context, settings: Settings, service: str, timeout: float,
                as_json: bool) -> None:
    """Drive a running SERVICE (paysim's, or your own in its consumer group: see
    `run-all --external`) through golden cases over Kafka and Redis. Exit 1 if any fails."""
    with console.status(f"driving {service} through its cases"):
        report = run_conformance(settings, service, timeout)
    if as_json:
        print_json({"service": report.service, "run_id": report.run_id, "group": report.group,
                    "passed": report.passed,
                    "cases": [{"name": v.name, "passed": v.passed, "detail": v.detail}
                              for v in report.verdicts]})
    else:
        table = Table("case", "result", "detail",
                      title=f"{safe(service)} conformance (group {safe(report.group)} on "
                            f"{safe(report.input_topic)}, run {safe(report.run_id)})")
        for verdict in report.verdicts:
            table.add_row(safe(verdict.name),
                          "[green]pass[/]" if verdict.passed else "[red]FAIL[/]",
                          safe(verdict.detail))
        console.print(table)
        failed = sum(not v.passed for v in report.verdicts)
        console.print(f"{len(report.verdicts) - failed} passed, {failed} failed")
    if not report.passed:
        ctx.exit(1)
