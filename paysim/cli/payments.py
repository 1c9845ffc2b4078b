"""`paysim send` and `paysim status`."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import click
import redis
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from paysim import money, store
from paysim.cli.options import with_settings
from paysim.cli.render import console, err_console, print_json
from paysim.config import Settings
from paysim.errors import PaysimError
from paysim.generator import Mix
from paysim.report import Summary, summarize
from paysim.schema import STAGES
from paysim.sending import SendOptions, run_send
from paysim.supervisor import read_heartbeats

STATUS_STYLE = {"approved": "green", "declined": "red"}


def require_services(settings: Settings, via: str) -> None:
    """Fail at once, not after the timeout, when nothing would process the payments."""
    client = store.connect(settings)
    try:
        running = {name.rsplit("-", 1)[0] for name in read_heartbeats(client)}
    except redis.RedisError as exc:
        raise PaysimError(f"Redis at {settings.redis_url} does not answer: {exc}") from None
    finally:
        client.close()
    needed = ["authorizer", "processor", "notifier"] + (["http"] if via == "http" else [])
    missing = [name for name in needed if name not in running]
    if missing:
        raise PaysimError(f"no {', '.join(missing)} running: start the pipeline with "
                          "`paysim run-all` (or `paysim run-all --detach`)")


def render_summary(summary: Summary, seed: int) -> None:
    console.print(f"run [bold]{summary.run_id}[/]  seed {seed}  sent {summary.sent:,}  "
                  f"completed {summary.completed:,}  in {summary.elapsed_s:.2f} s  "
                  f"({summary.throughput_per_s:,.0f} payments/s)")
    outcomes = Table("status", "code", "reason", "count", "share", title="outcomes")
    for row in summary.reasons:
        outcomes.add_row(f"[{STATUS_STYLE.get(row.status, 'white')}]{row.status}[/]",
                         row.reason_code, row.reason_text, f"{row.count:,}",
                         f"{row.share:.1%}")
    console.print(outcomes)
    if summary.approved_amounts:
        amounts = Table("currency", "approved amount", title="approved amounts")
        for currency, amount in summary.approved_amounts.items():
            amounts.add_row(currency, amount)
        console.print(amounts)
    latency = Table("stage", "count", "p50 ms", "p90 ms", "p99 ms", "max ms", title="latency")
    rows = [("end to end", summary.end_to_end), *summary.stages.items()]
    for name, stats in rows:
        if stats:
            latency.add_row(name, f"{stats.count:,}", f"{stats.p50_ms:.1f}",
                            f"{stats.p90_ms:.1f}", f"{stats.p99_ms:.1f}", f"{stats.max_ms:.1f}")
    console.print(latency)


@click.command()
@click.option("--count", type=click.IntRange(1, 10_000_000), default=1000, show_default=True,
              help="Payments to send.")
@click.option("--seed", type=int, help="Seed: the same seed sends the same payments and gets "
              "the same outcomes. Default: a random one, printed.")
@click.option("--via", type=click.Choice(["kafka", "http"]), default="kafka", show_default=True,
              help="Ingress: straight onto Kafka, or through the HTTP API.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=120.0, show_default=True,
              help="Seconds to wait for the last outcome.")
@click.option("--bad-share", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="Share of payments with a bad card, split over the five card checks.")
@click.option("--test-card-share", type=click.FloatRange(0, 1), default=0.03,
              show_default=True, help="Share of payments with a documented test card.")
@click.option("--callback-url", help="Webhook URL every payment carries (signed POST).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@with_settings("http.port", "http.host")
@click.pass_context
def send(ctx: click.Context, settings: Settings, count: int, seed: int | None, via: str,
         timeout: float, bad_share: float, test_card_share: float, callback_url: str | None,
         as_json: bool) -> None:
    """Send fake card payments through the pipeline and report their outcomes."""
    if bad_share + test_card_share > 1:
        raise click.BadParameter("--bad-share and --test-card-share add up to more than 1")
    if callback_url and not callback_url.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http:// or https:// URL", param_hint="--callback-url")
    seed = random.randrange(2**31) if seed is None else seed
    require_services(settings, via)
    options = SendOptions(count=count, seed=seed, via=via, timeout=timeout,
                          mix=Mix(bad_share, test_card_share), callback_url=callback_url)
    show = console.is_terminal and not as_json
    with Progress(TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True, disable=not show) as bar:
        tasks = {phase: bar.add_task(phase, total=count) for phase in ("sent", "outcomes")}
        result = run_send(settings, options,
                          lambda phase, done, total: bar.update(tasks[phase], completed=done))
    summary = summarize(result)
    if as_json:
        print_json({"seed": seed, **summary.as_dict()})
    else:
        render_summary(summary, seed)
    if summary.missing:
        listed = ", ".join(summary.missing[:10])
        more = f" and {len(summary.missing) - 10} more" if len(summary.missing) > 10 else ""
        err_console.print(f"[red]{len(summary.missing)} payments had no outcome after "
                          f"{timeout:.0f} s:[/] {listed}{more}")
        ctx.exit(1)


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="milliseconds")


@click.command()
@click.argument("txn_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings()
def status(settings: Settings, txn_id: str, as_json: bool) -> None:
    """Show one payment: outcome, card, amount, reason and its timeline through the stages."""
    client = store.connect(settings)
    try:
        outcome = store.read_outcome(client, txn_id)
    finally:
        client.close()
    if outcome is None:
        raise PaysimError(f"no payment {txn_id} (unknown, or its outcome expired)")
    view = store.outcome_view(outcome)
    timeline, previous = [], None
    for stage in STAGES:
        if stage in view["stages"]:
            at = view["stages"][stage]
            since = (at - previous) / 1000 if previous is not None else None
            timeline.append({"stage": stage, "at": _iso(at), "ms_since_previous": since})
            previous = at
    if as_json:
        print_json({**view, "timeline": timeline})
        return
    style = STATUS_STYLE.get(view["status"], "white")
    merchant = view["merchant"]
    currency = view["currency"]
    amount = (money.format_amount(view["amount"], currency) if money.is_currency(currency)
              else f"{view['amount']} {currency}")
    webhook = view.get("webhook", {}).get("status", "none")
    console.print(f"payment  {view['payment_id']}  (run {view['run_id']})")
    console.print(f"outcome  [{style}]{view['status']}[/]  {view['reason_code']} "
                  f"{view['reason_text']}")
    console.print(f"amount   {amount}")
    console.print(f"card     {view['masked_pan'] or '-'}  {view['network'] or ''}")
    console.print(f"merchant {merchant.get('name', '-')} ({merchant.get('id', '-')}, MCC "
                  f"{merchant.get('mcc', '-')}, {merchant.get('country', '-')})")
    console.print(f"notified {view['notification'] or 'not yet'}; webhook {webhook}")
    table = Table("stage", "at (UTC)", "since previous")
    for row in timeline:
        since = row["ms_since_previous"]
        table.add_row(row["stage"], row["at"], f"{since:.1f} ms" if since is not None else "-")
    console.print(table)
