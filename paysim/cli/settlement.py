"""`paysim settlement` (the batches) and `paysim settle` (close the open windows now)."""

from __future__ import annotations

from datetime import UTC, datetime

import click
import msgspec
from rich.table import Table

from paysim.cli.options import with_settings
from paysim.cli.render import console, print_json, safe
from paysim.domain.money import format_amount
from paysim.infra.config import Settings
from paysim.ops.settlement import settle_now, settlement_view
from paysim.pipeline.settlement_store import run_folder

FEES = ("interchange", "scheme_fees", "dispute_fees")


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _amount(minor: int, currency: str) -> str:
    """An amount without its currency (the table has a column for it)."""
    return format_amount(minor, currency).rsplit(" ", 1)[0]


@click.command()
@click.option("--run", "run_id", help="One run's batches (default: every run's).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings()
def settlement(settings: Settings, run_id: str | None, as_json: bool) -> None:
    """Show the settlement batches: per merchant, currency and window, the gross captures,
    refunds, chargebacks, reversals, fees and the net paid out; then what is not yet
    settled. Windows close `lifecycle.settlement_window` after they open (`paysim settle`
    closes them at once)."""
    view = settlement_view(settings, run_id)
    if as_json:
        print_json({"batches": [msgspec.to_builtins(b) for b in view.batches],
                    "unsettled": [{"merchant_id": m, "currency": c, **sums}
                                  for (m, c), sums in sorted(view.unsettled.items())]})
        return
    table = Table("window from (UTC)", "merchant", "cur", "moves", "gross", "refunds",
                  "chargebacks", "reversals", "fees", "net",
                  title=f"settlement batches of {safe(run_id) if run_id else 'every run'}")
    for batch in view.batches:
        fees = sum(getattr(batch, name) for name in FEES)
        table.add_row(_when(batch.window_start), safe(batch.merchant_id), safe(batch.currency),
                      f"{batch.movements:,}",
                      *(_amount(value, batch.currency) for value in (
                          batch.gross, batch.refunds, batch.chargebacks, batch.reversals,
                          fees, batch.net)))
    console.print(table)
    if view.unsettled:
        open_table = Table("merchant", "moves", "net", title="not yet settled")
        for (merchant, currency), sums in sorted(view.unsettled.items()):
            open_table.add_row(safe(merchant), f"{sums['movements']:,}",
                               format_amount(sums["net"], currency))
        console.print(open_table)
    else:
        console.print("nothing left to settle")


@click.command()
@click.option("--run", "run_id", help="One run's windows (default: every run's).")
@with_settings()
def settle(settings: Settings, run_id: str | None) -> None:
    """Close the open settlement windows now (the current ones too), pay their batches on
    the ledger, put them on the settlements topic and in each run's clearing file."""
    closed = settle_now(settings, run_id)
    batches = sum(len(c.batches) for c in closed)
    rows = sum(len(c.movements) for c in closed)
    # On a Redis Cluster a window closes bucket by bucket: count each window once.
    windows = len({(c.run_id, c.window) for c in closed})
    console.print(f"closed {windows} window(s): {batches:,} batch(es) of {rows:,} "
                  "movement(s)")
    for run in sorted({c.run_id for c in closed}):
        console.print(f"clearing file of {safe(run)}: "
                      f"{safe(str(run_folder(settings, run) / 'clearing.csv'))}")
