"""`paysim audit`: reconcile a run's payments, or scan for card data with --pci."""

from __future__ import annotations

import click
from rich.table import Table

from paysim.cli.options import with_settings
from paysim.cli.render import console, err_console, print_json, safe
from paysim.infra.config import Settings
from paysim.ops.audit import LISTED, reconcile, scan_card_data


@click.command()
@click.option("--run", "run_id", help="One run's payments (default: every payment sent).")
@click.option("--pci", is_flag=True,
              help="Instead, scan every topic after the edge, Redis and the service logs for "
              "anything like a card number (13-19 digits passing Luhn) or a CVV field.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings()
@click.pass_context
def audit(ctx: click.Context, settings: Settings, run_id: str | None, pci: bool,
          as_json: bool) -> None:
    """Check that every payment sent got exactly one outcome and was settled at most once.

    Lost: sent, no outcome. Doubled: more than one final outcome. Ledger: each card's balance
    against the sum of its approved payments. Exit 1 on any discrepancy."""
    if pci:
        with console.status("scanning topics, Redis and logs for card data"):
            findings, scanned = scan_card_data(settings)
        if as_json:
            print_json({"findings": [f.__dict__ for f in findings], "scanned": scanned,
                        "ok": not findings})
        else:
            console.print("scanned " + ", ".join(f"{n:,} {what}" for what, n in scanned.items()))
            if findings:
                table = Table("where", "what", title="card data found (masked)")
                for finding in findings[:100]:
                    table.add_row(safe(finding.where), safe(finding.what))
                console.print(table)
            else:
                console.print("[green]no card number or CVV found past the edge[/]")
        if findings:
            err_console.print(f"[red]{len(findings)} findings of card data[/]")
            ctx.exit(1)
        return
    with console.status("reading the topics, Redis and the ledgers"):
        report = reconcile(settings, run_id)
    if as_json:
        print_json(report.as_dict())
    else:
        table = Table("check", "count", "result",
                      title=f"audit of {safe(run_id) if run_id else 'every run'}")

        def row(name: str, count: int, bad: bool) -> None:
            table.add_row(name, f"{count:,}", "[red]FAIL[/]" if bad else "[green]ok[/]")

        row("payments sent", report.sent, report.sent == 0 and run_id is not None)
        row("with an outcome", report.outcomes, False)
        row("lost (no outcome)", report.lost_count, bool(report.lost_count))
        row("doubled (more than one outcome)", report.doubled_count, bool(report.doubled_count))
        row("Redis and results topic disagree", report.disagreeing_count,
            bool(report.disagreeing_count))
        row("card books checked", report.ledgers_checked, False)
        row("payment records checked", report.records_checked, False)
        row("books or records not adding up", report.ledger_mismatch_count,
            bool(report.ledger_mismatch_count))
        row("currencies whose books do not sum to zero", len(report.unbalanced),
            bool(report.unbalanced))
        row("holds open (within their TTL)", report.holds_open, False)
        row("holds past their TTL", len(report.holds_overdue), bool(report.holds_overdue))
        row("settlement batches checked", report.settlement_batches, False)
        console.print(table)
        if report.balances:
            money = Table("currency", "account", "balance", title="where the money is")
            for currency, kinds in report.balances.items():
                for kind, value in kinds.items():
                    money.add_row(safe(currency), safe(kind), f"{value:,}")
                money.add_row(safe(currency), "[b]sum[/]", f"[b]{sum(kinds.values()):,}[/]")
            console.print(money)
        for name, ids in (("lost", report.lost), ("doubled", report.doubled),
                          ("disagreeing", report.disagreeing)):
            if ids:
                console.print(f"{name} (first {LISTED}): {safe(', '.join(ids))}")
        if report.holds_overdue:
            console.print(f"holds past their TTL (first {LISTED}): "
                          f"{safe(', '.join(report.holds_overdue))}")
        for mismatch in report.ledger_mismatches[:LISTED]:
            console.print(f"ledger {safe(mismatch.run_id)} card {safe(mismatch.token)} "
                          f"payment {safe(mismatch.payment_id or '-')}: {safe(mismatch.what)}")
    if run_id is not None and report.sent == 0:
        err_console.print(f"[red]no payment of run {safe(run_id)} on "
                          f"{safe(settings.topics.requested)}[/]")
        ctx.exit(1)
    if not report.ok:
        ctx.exit(1)
