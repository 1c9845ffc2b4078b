"""`paysim send` and `paysim status`."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from paysim.cli.options import FiniteFloatRange, with_settings
from paysim.cli.render import console, err_console, print_json, safe
from paysim.domain import money
from paysim.domain.messages import STAGES, CallbackUrl, failed_value_check
from paysim.domain.webhooks import refused_callback
from paysim.infra.collector import tune_for_batches
from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError
from paysim.load.distributed import run_distributed
from paysim.load.plan import SendRequest
from paysim.load.report import LifecycleReport, RunReport, TargetReport, WorkerRow
from paysim.load.report_compare import keep_report, latency_blocks
from paysim.load.run import require_services, run_load
from paysim.load.runner import Interrupt, Tick
from paysim.load.schedule import MAX_RATE, MAX_SCHEDULED
from paysim.load.targets.choice import TargetFlags
from paysim.load.targets.http_target import MAX_CONCURRENCY
from paysim.pipeline import ledger_store, store
from paysim.pipeline.webhook_dispatch import callback_policy

STATUS_STYLE = {"approved": "green", "declined": "red"}
# After a Ctrl-C, how long `send` still waits for the outcomes of what it sent.
INTERRUPT_GRACE_S = 5.0


def render_report(report: RunReport) -> None:
    """The end-of-run summary: load, outcomes, amounts, latency, thresholds."""
    load, outcomes = report.load, report.outcomes
    console.print(
        f"run [bold]{safe(report.run_id)}[/]"
        + (f"  scenario {safe(report.scenario)}" if report.scenario else "")
        + f"  seed {report.seed}  sent {load.sent:,}  completed "
        f"{outcomes.completed:,}  in {report.duration_s:.2f} s  "
        f"({outcomes.throughput_per_s:,.0f} payments/s)")
    if load.mode == "open":
        achieved, target = load.achieved_rate, load.target_rate or 0.0
        short = bool(target) and achieved < 0.98 * target
        mark = ("[red]", "[/]") if short else ("", "")
        send_delay_p99 = load.send_delay.p99_ms or 0
        console.print(
            f"load     target {target:,.1f}/s  achieved {mark[0]}{achieved:,.1f}/s{mark[1]}  "
            f"dropped {load.dropped:,}  send delay p99 {send_delay_p99:.1f} ms"
            + ("  [red](the generator could not keep up)[/]" if short else ""))
    if report.target is not None:
        render_target(report.target)
    table = Table("status", "code", "reason", "count", "share", title="outcomes")
    for row in outcomes.by_reason:
        table.add_row(f"[{STATUS_STYLE.get(row.status, 'white')}]{safe(row.status)}[/]",
                      safe(row.reason_code), safe(row.reason_text), f"{row.count:,}",
                      f"{row.share:.1%}")
    console.print(table)
    if outcomes.approved_amounts:
        amounts = Table("currency", "approved amount", title="approved amounts")
        for currency, amount in outcomes.approved_amounts.items():
            amounts.add_row(safe(currency), safe(amount.formatted))
        console.print(amounts)
    latency = Table("stage", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
                    title="latency")
    for name, stats in latency_blocks(report):
        if stats.count:
            latency.add_row(safe(name), f"{stats.count:,}",
                            *(f"{value:.1f}" for _, value in stats.percentiles()))
    console.print(latency)
    if report.lifecycle is not None:
        render_lifecycle(report.lifecycle)
    if report.workers:
        render_workers(report.workers)
    if report.thresholds:
        checks = Table("threshold", "over", "actual", "result", title="thresholds")
        for check in report.thresholds:
            actual = "-" if check.actual is None else f"{check.actual:,.4g}"
            verdict = "[green]pass[/]" if check.passed else "[red]FAIL[/]"
            if check.failed_windows and check.worst_window is not None:
                worst = check.worst_window
                verdict += (f" [red]({check.failed_windows} windows; worst from "
                            f"{worst.start_s} s: {worst.actual})[/]")
            over = f"run + each {check.window_s} s" if check.window_s else "run"
            checks.add_row(safe(check.expression), over, actual, verdict)
        console.print(checks)


def render_target(target: TargetReport) -> None:
    """Where the payments went instead of paysim's pipeline, and what failed there."""
    where = safe(target.address)
    if target.kind == "kafka":
        where += (f" -> outcomes on {safe(target.outcome_topic or '-')} matched by "
                  f"{safe(target.correlate or '-')}")
    elif target.concurrency:
        where += f" ({target.concurrency} requests in flight at most)"
    errors = f"[red]{target.errors:,}[/]" if target.errors else "0"
    console.print(f"target   {safe(target.kind)} {where}  errors {errors}")
    console.print(f"audit    {safe(target.audit)}", soft_wrap=True)
    if target.by_error:
        table = Table("error", "count", "first", title="errors")
        for row in target.by_error:
            table.add_row(safe(row.kind), f"{row.count:,}", safe(row.first))
        console.print(table)


AMOUNTS_SHOWN = 3  # currencies per row in the terminal; report.json has them all


def amounts_text(amounts: dict[str, int]) -> str:
    """A row's first few amounts by currency code, formatted in their currencies; "-" when
    it moved nothing (refusals)."""
    moved = [(currency, amount) for currency, amount in sorted(amounts.items()) if amount]
    if not moved:
        return "-"
    shown = ", ".join(money.format_amount(amount, currency)
                      for currency, amount in moved[:AMOUNTS_SHOWN])
    more = len(moved) - AMOUNTS_SHOWN
    return shown + (f" +{more} more" if more > 0 else "")


def render_workers(rows: list[WorkerRow]) -> None:
    """A distributed run's generators: each one's share and what it did."""
    table = Table("share", "host", "pid", "scheduled", "sent", "completed", "dropped",
                  "rate/s", "status", title="generators")
    for row in rows:
        status = {"ok": "[green]ok[/]", "dead": "[red]dead[/]"}.get(
            row.status, f"[red]{safe(row.status)}[/]")
        if row.error:
            status += f" {safe(row.error)}"
        table.add_row(str(row.share), safe(row.host) or "-", str(row.pid or "-"),
                      f"{row.scheduled:,}", f"{row.sent:,}", f"{row.completed:,}",
                      f"{row.dropped:,}", f"{row.rate_per_s:,.1f}", status)
    console.print(table)


def render_lifecycle(lifecycle: LifecycleReport) -> None:
    """The follow-up operations: per kind with latency, then per kind and answer."""
    kinds = Table("operation", "scheduled", "answered", "lost", "p50 ms", "p99 ms", "max ms",
                  title=f"lifecycle operations ({lifecycle.throughput_per_s:,.1f}/s answered)")
    for row in lifecycle.kinds:
        figures = [row.latency.p50_ms, row.latency.p99_ms, row.latency.max_ms]
        kinds.add_row(safe(row.kind), f"{row.scheduled:,}", f"{row.answered:,}",
                      f"[red]{row.lost:,}[/]" if row.lost else "0",
                      *("-" if value is None else f"{value:,.1f}" for value in figures))
    console.print(kinds)
    answers = Table("operation", "code", "reason", "count", "amount",
                    title="lifecycle answers")
    for code in lifecycle.by_code:
        answers.add_row(safe(code.kind), safe(code.reason_code), safe(code.reason_text),
                        f"{code.count:,}", safe(amounts_text(code.amounts)))
    console.print(answers)
    if lifecycle.invalid:
        invalid = Table("operation", "answered", "refused", "accepted",
                        title="invalid transitions sent on purpose (each must be refused)")
        for row in lifecycle.invalid:
            invalid.add_row(safe(row.kind), f"{row.answered:,}", f"{row.refused:,}",
                            f"[red]{row.accepted:,}[/]" if row.accepted else "0")
        console.print(invalid)


class LiveProgress:
    """Progress while sending: a live line on a terminal, a plain line every 5 s elsewhere."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.live = (Live(console=out, refresh_per_second=4, transient=True)
                     if out.is_terminal else None)
        self.last_line = 0.0

    def __enter__(self) -> LiveProgress:
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.live:
            self.live.stop()

    def __call__(self, tick: Tick) -> None:
        target = f" (target {tick.target_rate:,.0f}/s)" if tick.target_rate is not None else ""
        p99 = f"{tick.rolling_p99_ms:,.1f} ms" if tick.rolling_p99_ms is not None else "-"
        line = (f"{tick.elapsed_s:6.1f} s  sent {tick.sent:,}/{tick.scheduled:,}  completed "
                f"{tick.completed:,}  in flight {tick.in_flight:,}  rate "
                f"{tick.current_rate:,.0f}/s{target}  approved {tick.approved:,}  declined "
                f"{tick.declined:,}  p99 (last 5 s) {p99}"
                + (f"  dropped {tick.dropped:,}" if tick.dropped else "")
                + (f"  errors {tick.errors:,}" if tick.errors else "")
                + (f"  operations {tick.operations_answered:,}/{tick.operations:,}"
                   if tick.operations is not None else ""))
        if self.live:
            self.live.update(Text(line))
        elif time.monotonic() - self.last_line >= 5:
            self.last_line = time.monotonic()
            self.out.print(Text(line))


def check_callback_url(url: str, settings: Settings) -> None:
    """The declared checks of a callback URL (an http(s) URL, no card number), then where it
    may go (paysim's own ports, webhook.allow: as written, without DNS); exit 2 saying why."""
    problem = failed_value_check(CallbackUrl, url)
    if problem is not None:
        raise click.BadParameter(problem, param_hint="--callback-url")
    refusal = refused_callback(url, callback_policy(settings))
    if refusal is not None:
        raise click.BadParameter(f"refused: {refusal}", param_hint="--callback-url")


@click.command()
@click.option("--count", type=click.IntRange(1, MAX_SCHEDULED),
              help="Payments to send; alone: as fast as possible. [default: 1000]")
@click.option("--rate", type=FiniteFloatRange(0.001, MAX_RATE),
              help="Open model: payments per second on schedule, whatever the pipeline does.")
@click.option("--duration", help="With --rate: how long, e.g. 60s, 2m.")
@click.option("--stage", "stages", multiple=True, metavar="DURATION:RATE",
              help="A ramp stage, e.g. --stage 30s:100 --stage 1m:500 (repeatable).")
@click.option("--start-rate", type=FiniteFloatRange(0, MAX_RATE),
              help="Rate the first --stage ramps from. [default: 0]")
@click.option("--scenario", type=click.Path(dir_okay=False),
              help="A scenario file (scenarios/*.toml); flags override its values.")
@click.option("--replay", type=click.Path(dir_okay=False),
              help="Send the payments of a --record file (same schedule unless --rate), or "
              "of a PaySim-format CSV.")
@click.option("--record", type=click.Path(dir_okay=False),
              help="Write what is sent, with send offsets, as JSON lines (fake cards only).")
@click.option("--seed", type=int, help="Seed: the same seed sends the same payments and gets "
              "the same outcomes. Default: the scenario's, else a random one (printed).")
@click.option("--via", type=click.Choice(["kafka", "http"]), default="kafka", show_default=True,
              help="Ingress: straight onto Kafka, or through the HTTP API.")
@click.option("--timeout", type=FiniteFloatRange(min=0.1), default=120.0, show_default=True,
              help="Seconds to wait for outcomes after the last send (with --target: "
              "for each answer).")
@click.option("--bad-share", type=FiniteFloatRange(0, 1),
              help="Share of payments with a bad card, split over the five card checks. "
              "[default: 0.05]")
@click.option("--test-card-share", type=FiniteFloatRange(0, 1),
              help="Share of payments with a documented test card. [default: 0.03]")
@click.option("--threshold", "thresholds", multiple=True, metavar="EXPR[@WINDOW]",
              help="Pass/fail check, e.g. 'p99_ms < 250' or 'p99_ms < 250 @ 10s' "
              "(repeatable); any failure exits 1.")
@click.option("--callback-url", help="Webhook URL every payment carries (signed POST).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write report.json here.")
@click.option("--html", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Generators sharing the schedule (interleaved), with one merged report.")
@click.option("--local-workers", type=click.IntRange(0, 64),
              help="How many of --workers to start on this machine (default all); the others "
                   "join with `paysim worker` on other hosts.")
@click.option("--target", "target_url", metavar="URL",
              help="Drive this HTTP authorization endpoint instead of paysim's pipeline "
              "(with --request-template).")
@click.option("--request-template", type=click.Path(dir_okay=False),
              help="With --target: the request's body and headers, and how to read the "
              "decision (TOML; examples/targets/).")
@click.option("--concurrency", type=click.IntRange(1, MAX_CONCURRENCY),
              help="With --target: requests in flight at most. [default: 64]")
@click.option("--to-topic", metavar="TOPIC",
              help="Produce the payments into this Kafka topic instead of paysim's pipeline "
              "(with --record-template and --outcome-topic).")
@click.option("--record-template", type=click.Path(dir_okay=False),
              help="With --to-topic: the record's value, key and headers, and how to read "
              "the outcome (TOML; examples/targets/).")
@click.option("--outcome-topic", metavar="TOPIC",
              help="With --to-topic: where the system under test writes its outcomes.")
@click.option("--correlate", metavar="POINTER",
              help="With --to-topic: JSON pointer to the payment's id in an outcome record, "
              "e.g. /payment_ref (else the template's outcome.correlate).")
@with_settings("http.port", "http.host")
@click.pass_context
def send(ctx: click.Context, settings: Settings, count: int | None, rate: float | None,
         duration: str | None, stages: tuple[str, ...], start_rate: float | None,
         scenario: str | None, replay: str | None, record: str | None, seed: int | None,
         via: str, timeout: float, bad_share: float | None, test_card_share: float | None,
         thresholds: tuple[str, ...], callback_url: str | None, out: str | None,
         html: str | None, as_json: bool, workers: int, local_workers: int | None,
         target_url: str | None, request_template: str | None, concurrency: int | None,
         to_topic: str | None, record_template: str | None, outcome_topic: str | None,
         correlate: str | None) -> None:
    """Send fake card payments through the pipeline and report what happened.

    Alone, --count sends as fast as it can. --rate (with --duration or --count), --stage or a
    scenario sends on an open-model schedule: latency counts from each payment's intended
    send time, so a stalled pipeline shows in the figures.

    --target (an HTTP endpoint) or --to-topic (a Kafka topic pair) sends the same payments,
    on the same schedule, to a system that is not paysim, in its own format."""
    if callback_url is not None:
        check_callback_url(callback_url, settings)
    target = TargetFlags(url=target_url, request_template=request_template,
                         concurrency=concurrency, to_topic=to_topic,
                         record_template=record_template, outcome_topic=outcome_topic,
                         correlate=correlate)
    request = SendRequest(
        count=count, rate=rate, duration=duration, stages=stages, start_rate=start_rate,
        scenario=scenario, replay=replay, record=record, seed=seed, bad_share=bad_share,
        test_card_share=test_card_share, thresholds=thresholds, via=via, timeout=timeout,
        callback_url=callback_url, target=target)
    interrupt = Interrupt(grace_s=min(INTERRUPT_GRACE_S, timeout))
    dead: list[int] = []
    with LiveProgress(err_console if as_json else console) as progress, \
            ctrl_c_requests(interrupt):
        if workers > 1 or local_workers is not None:
            require_services(settings, via)
            coordinated = run_distributed(settings, request, workers, local_workers, progress,
                                          interrupt)
            report, dead = coordinated.report, coordinated.dead
            if record and coordinated.record_parts_away:
                err_console.print(
                    "the record file holds this host's generators' payments; share(s) "
                    f"{', '.join(map(str, coordinated.record_parts_away))} wrote theirs on "
                    f"their own hosts ({safe(record)}.part<share>)", soft_wrap=True)
        else:
            tune_for_batches()
            report = run_load(settings, request, progress, interrupt)
    write_outputs(report, out, html)
    try:
        keep_report(settings, report)
    except OSError as exc:  # the run's own outputs are written; the dashboard lacks it only
        err_console.print(f"paysim: warning: the report was not kept for the dashboard: "
                          f"{safe(exc.strerror or str(exc))}")
    if as_json:
        print_json(report.to_dict())
    else:
        render_report(report)
    outcomes = report.outcomes
    if outcomes.lost:
        listed = safe(", ".join(outcomes.lost_ids[:10]))
        more = f" and {outcomes.lost - 10} more" if outcomes.lost > 10 else ""
        waited = (f"within {interrupt.grace_s:.0f} s of the interrupt" if interrupt.requested
                  else f"after {timeout:.0f} s")
        err_console.print(f"[red]{outcomes.lost} payments had no outcome {waited}:[/] "
                          f"{listed}{more}")
    errors = report.target.by_error if report.target is not None else []
    for row in errors:
        err_console.print(f"[red]{row.count:,} errors ({safe(row.kind)}):[/] "
                          f"{safe(row.first)}", soft_wrap=True)
    failed = [t.expression for t in report.failed_thresholds]
    if failed:
        err_console.print(f"[red]thresholds failed: {safe('; '.join(failed))}[/]")
    if dead:  # said also when interrupted: a dead share is not the user's doing
        err_console.print(f"[red]{len(dead)} generator(s) died before handing in:[/] share(s) "
                          f"{', '.join(map(str, dead))}; the generators table shows what each "
                          "had sent")
    if interrupt.requested:
        run_id = safe(report.run_id)
        audit = ("" if report.target is not None
                 else f"; `paysim audit --run {run_id}` checks it")
        err_console.print(
            f"interrupted: sent {report.load.sent:,} of {report.load.scheduled:,} payments; "
            f"the report covers them (run {run_id}{audit})", soft_wrap=True)
        ctx.exit(130)
    if outcomes.lost or failed or errors or dead:
        ctx.exit(1)


@contextmanager
def ctrl_c_requests(interrupt: Interrupt) -> Iterator[None]:
    """While inside, Ctrl-C (SIGINT) asks the run to stop instead of raising
    KeyboardInterrupt: the first stops sending, the second stops waiting for outcomes.
    SIGTERM (a supervisor, `kill`) does the same: Python's default for it would end the
    process with no report and leave `--workers`' generator processes sending on."""

    def on_ctrl_c(*_: object) -> None:
        first = not interrupt.requested
        interrupt.request()
        line = (f"stopping: no more payments are sent; waiting up to {interrupt.grace_s:g} s "
                "for the outcomes in flight (Ctrl-C again to stop now)" if first
                else "stopping now: not waiting for more outcomes")
        # Straight to the descriptor: the handler may run while the console is mid-print.
        os.write(err_console.file.fileno(), f"{line}\n".encode())

    previous = {sig: signal.signal(sig, on_ctrl_c) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def write_outputs(report: RunReport, out: str | None, html: str | None) -> None:
    try:
        if out:
            Path(out).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        if html:
            from paysim.load.html import render_html  # only when asked for

            Path(html).write_text(render_html(report))
    except OSError as exc:
        raise PaysimError(f"cannot write the report: {exc.strerror}: {exc.filename}") from None


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="milliseconds")


@click.command()
@click.argument("txn_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings()
def status(settings: Settings, txn_id: str, as_json: bool) -> None:
    """Show one payment: outcome, card, amount, reason and its timeline through the stages."""
    client = store.connect_answering(settings)
    try:
        stored = store.read_outcome(client, txn_id)
        view = None if stored is None else msgspec.to_builtins(
            ledger_store.payment_view(client, stored))
    finally:
        client.close()
    if view is None:
        raise PaysimError(f"no payment {txn_id} (unknown, or its outcome expired)")
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
    # What Redis holds came from clients (the merchant, the run id through the HTTP API).
    console.print(f"payment  {safe(view['payment_id'])}  (run {safe(view['run_id'])})")
    console.print(f"outcome  [{style}]{safe(view['status'])}[/]  {safe(view['reason_code'])} "
                  f"{safe(view['reason_text'])}")
    console.print(f"amount   {safe(amount)}")
    console.print(f"card     {safe(view['masked_pan'] or '-')}  {safe(view['network'] or '')}")
    console.print(f"merchant {safe(merchant.get('name', '-'))} ({safe(merchant.get('id', '-'))}, "
                  f"MCC {safe(merchant.get('mcc', '-'))}, {safe(merchant.get('country', '-'))})")
    console.print(f"notified {safe(view['notification'] or 'not yet')}; webhook {safe(webhook)}")
    if view.get("trace_id"):  # traced (OpenTelemetry) and sampled
        console.print(f"trace    {safe(view['trace_id'])}")
    table = Table("stage", "at (UTC)", "since previous")
    for row in timeline:
        since = row["ms_since_previous"]
        table.add_row(safe(row["stage"]), row["at"],
                      f"{since:.1f} ms" if since is not None else "-")
    console.print(table)
    life = view.get("lifecycle")
    if life is not None:
        _print_lifecycle(life)


def _print_lifecycle(life: dict[str, Any]) -> None:
    """The payment's life on the ledger: its state, amounts and events in order."""
    currency = life["currency"]

    def money_of(amount: int) -> str:
        return money.format_amount(amount, currency) if money.is_currency(currency) else str(
            amount)

    amounts = life["amounts"]
    console.print(f"ledger   {safe(life['state'])} ({safe(life['capture'])} capture); "
                  + ", ".join(f"{name} {money_of(amounts[name])}" for name in (
                      "authorized", "captured", "held", "refunded", "disputed", "fees", "net")
                              if amounts[name] or name in ("captured", "net")))
    events = Table("event", "at (UTC)", "amount", "ISO 8583", "operation",
                   title="life on the ledger")
    for event in life["events"]:
        events.add_row(safe(event["kind"]), _iso(event["at"]), money_of(event["amount"]),
                       safe(event["mti"] or "-"), safe(event["operation"]))
    console.print(events)
