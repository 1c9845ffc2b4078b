"""`paysim run-all`, `ps`, `stop`, and `service` (one service, as run-all starts it)."""

from __future__ import annotations

import functools
import signal
import sys
import threading
import time

import click
import redis
from rich.live import Live
from rich.table import Table

from paysim.cli.options import with_settings
from paysim.cli.render import console, print_json, safe
from paysim.infra.config import Settings
from paysim.ops.panel import ExternalLags, view
from paysim.ops.run_all import (
    external_lag,
    external_services,
    run_all,
    running_supervisor,
    start_in_background,
    stop_background,
)
from paysim.ops.supervisor import Supervisor
from paysim.pipeline import registry, store
from paysim.pipeline.process import run_pipeline_service

STATE_STYLE = {"up": "green", "external": "cyan", "starting": "yellow", "restarting": "red",
               "down": "red"}


SCALABLE = tuple(spec.name for spec in registry.ALL if spec.scalable)


def instance_options(command):
    """--<name>s N for every service that scales, handed to the command as ``counts``."""
    for name in reversed(SCALABLE):
        command = click.option(f"--{name}s", f"count_{name}", type=click.IntRange(1, 16),
                               default=1, show_default=True,
                               help=f"{name} processes in its consumer group")(command)

    @functools.wraps(command)
    def with_counts(*args, **kwargs):
        counts = {name: kwargs.pop(f"count_{name}") for name in SCALABLE}
        return command(*args, counts=counts, **kwargs)

    return with_counts


class RateMeter:
    """Messages per second per service, from successive processed counts."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[float, int]] = {}

    def rate(self, name: str, processed: int) -> float:
        now = time.monotonic()
        then, before = self.last.get(name, (now, processed))
        self.last[name] = (now, processed)
        return (processed - before) / (now - then) if now > then else 0.0


def services_table(supervisor: Supervisor, beats: dict[str, store.Heartbeat],
                   meter: RateMeter, external: ExternalLags) -> Table:
    table = Table("service", "state", "pid", "restarts", "processed", "rate/s", "lag",
                  "dead letters", "metrics", title="paysim services (Ctrl-C stops them all)")
    for row in view(supervisor.children, beats):
        table.add_row(safe(row.name), f"[{STATE_STYLE[row.state]}]{row.state}[/]",
                      str(row.pid or "-"), str(row.restarts), f"{row.processed:,}",
                      f"{meter.rate(row.name, row.processed):,.0f}", _count(row.lag),
                      str(row.dead_letters), safe(row.metrics_url or "-"))
    for row in external.rows():  # what paysim sees of them: their groups' lag
        table.add_row(safe(row.name), f"[{STATE_STYLE[row.state]}]{row.state}[/]", "-", "-",
                      "-", "-", _count(row.lag), "-", "-")
    return table


@click.command("run-all")
@instance_options
@click.option("--detach", is_flag=True, help="Run in the background; see `paysim ps`, "
              "`paysim stop`.")
@click.option("--no-live", is_flag=True, help="Plain log lines instead of the live panel.")
@click.option("--external", "external", multiple=True,
              type=click.Choice(registry.EXTERNAL_NAMES),
              help="Leave this service's consumer group to an outside implementation "
              "(repeatable); `paysim ps` shows its lag; `paysim conformance processor` "
              "checks an external processor.")
@with_settings("http.port", "http.host", "services.first_instance")
def run_all_command(settings: Settings, counts: dict[str, int], detach: bool,
                    no_live: bool, external: tuple[str, ...]) -> None:
    """Start the authorizer, processor, notifier, ledger and HTTP API as local processes.

    Starts the local stack first when no Kafka or Redis is configured and none answers.
    Restarts a service that dies; Ctrl-C or SIGTERM stops everything cleanly."""
    external = tuple(dict.fromkeys(external))  # each once, in the order given
    if detach:
        argv = ["run-all", "--no-live", *(f"--{name}s={n}" for name, n in counts.items()),
                *(f"--external={name}" for name in external)]
        with console.status("starting the services in the background"):
            record, started = start_in_background(settings, counts, argv, external=external)
        verb = "started" if started else "already running"
        console.print(f"paysim services {verb} (supervisor pid {record.pid}); HTTP API on "
                      f"http://{safe(settings.http.host)}:{settings.http.port}; logs in "
                      f"{safe(settings.services.dir / 'logs')}. `paysim ps` shows them, "
                      "`paysim stop` stops them.")
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    live_panel = console.is_terminal and not no_live
    client = store.connect(settings)
    meter = RateMeter()
    lags = ExternalLags(settings, external)
    live = Live(console=console, refresh_per_second=2, transient=False) if live_panel else None

    def announce(line: str) -> None:
        (live.console if live else console).print(safe(line))

    def tick(supervisor: Supervisor) -> None:
        if live:
            try:
                beats = store.read_heartbeats(client)
            except redis.RedisError:
                beats = {}  # Redis away: the panel shows what the supervisor itself knows
            live.update(services_table(supervisor, beats, meter, lags))

    if live:
        live.start()
    try:
        run_all(settings, counts, announce, stop, tick, external)
    finally:
        if live:
            live.stop()
        client.close()
    console.print("all services stopped")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@with_settings()
@click.pass_context
def ps(ctx: click.Context, settings: Settings, as_json: bool) -> None:
    """Show the running services (from their heartbeats). Exit 1 if any expected one is down."""
    record = running_supervisor(settings)
    counts = {name: 1 for name in registry.NAMES}
    if record:
        counts.update(record.details.get("counts", {}))
    client = store.connect_answering(settings)
    try:
        beats = store.read_heartbeats(client)
    finally:
        client.close()
    external = external_services(record)
    rows = []
    now = time.time()
    for name in external:  # no heartbeat: the group's lag is all paysim can see of it
        rows.append({"name": name, "state": "external", "pid": None, "processed": None,
                     "dead_letters": None, "lag": external_lag(settings, name),
                     "uptime_s": None, "metrics_url": None})
    first = settings.services.first_instance
    for name in sorted(set(registry.instance_names(counts, external, first)) | beats.keys()):
        beat = beats.get(name)
        rows.append({
            "name": name, "state": "up" if beat else "down",
            "pid": beat.pid if beat else None,
            "processed": beat.processed if beat else 0,
            "dead_letters": beat.dead_letters if beat else 0,
            "lag": beat.lag if beat else 0,
            "uptime_s": round(now - beat.started_at, 1) if beat else None,
            "metrics_url": beat.metrics_url or None if beat else None,
        })
    if as_json:
        print_json({"supervisor_pid": record.pid if record else None, "services": rows})
    else:
        table = Table("service", "state", "pid", "processed", "lag", "dead letters", "uptime",
                      "metrics", caption=f"supervisor pid {record.pid}" if record
                      else "no `paysim run-all` supervisor is running")
        for row in rows:
            table.add_row(safe(row["name"]), f"[{STATE_STYLE[row['state']]}]{row['state']}[/]",
                          str(row["pid"] or "-"), _count(row["processed"]), _count(row["lag"]),
                          _count(row["dead_letters"]),
                          f"{row['uptime_s']:.0f} s" if row["uptime_s"] is not None else "-",
                          safe(row["metrics_url"] or "-"))
        console.print(table)
    if any(row["state"] not in ("up", "external") for row in rows):
        ctx.exit(1)


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


@click.command()
@with_settings()
def stop(settings: Settings) -> None:
    """Stop the services a `paysim run-all` started (SIGTERM: batches finish and commit)."""
    with console.status("stopping the services"):
        record = stop_background(settings)
    if record is None:
        console.print("nothing to stop: no `paysim run-all` is running")
    else:
        console.print(f"stopped paysim services (supervisor pid {record.pid})")


UI_STREAMS = 2


@click.command(hidden=True)
@click.argument("name", type=click.Choice(registry.NAMES))
@click.option("--instance", type=click.IntRange(0, 99), default=0)
@with_settings()
def service(settings: Settings, name: str, instance: int) -> None:
    """Run one service in the foreground (what run-all starts)."""
    spec = registry.by_name(name)
    if spec.in_pipeline:
        sys.exit(run_pipeline_service(spec, settings, instance))
    # The dashboard, Flask and the server load only where served.
    from paysim.dashboard.serve import dashboard_app
    from paysim.edge.server import run_edge

    # The dashboard under /ui: two pages at once, so its streams keep to 2 of the 8 threads.
    sys.exit(run_edge(settings, lambda stop: dashboard_app(settings, UI_STREAMS, stop),
                      instance))
