"""`paysim stack up|down|status`: the local Kafka broker and redis-server."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from paysim.cli.options import STACK_KEYS, with_settings
from paysim.cli.render import console, print_json, safe
from paysim.infra.config import Settings
from paysim.stack.jars import libs_dir
from paysim.stack.manager import LocalStack

STATE_STYLE = {"up": "green", "down": "red", "not answering": "yellow"}


@click.group()
def stack() -> None:
    """Run a real Kafka broker and redis-server as local processes (no Docker needed)."""


def _local_stack(settings: Settings) -> LocalStack:
    return LocalStack(settings.stack, announce=lambda line: console.print(safe(line)))


@stack.command()
@with_settings(*STACK_KEYS)
def prepare(settings: Settings) -> None:
    """Check java, mvn and redis-server are installed and fetch the Kafka jars; start nothing."""
    local = _local_stack(settings)
    local.prepare()
    width = max(len(c.name) for c in local.components) + 1
    for component in local.components:
        console.print(f"{component.name:<{width}} {safe(component.version()):<8} ready to start")
    console.print(f"Kafka jars in {safe(libs_dir(settings.stack.cache_dir))}")


@stack.command()
@click.option("--fresh", is_flag=True, help="Stop the stack and wipe its data folders first.")
@with_settings(*STACK_KEYS)
def up(settings: Settings, fresh: bool) -> None:
    """Start Kafka and Redis; return once both answer."""
    local = _local_stack(settings)
    with console.status("starting the local stack"):
        results = local.up(fresh=fresh)
    width = max(len(r.name) for r in results) + 1
    for result in results:
        if result.started:
            console.print(f"{result.name:<{width}} [green]started[/]          pid {result.pid:<8} "
                          f"{safe(result.address):<16} ready in {result.seconds:.1f} s")
        else:
            console.print(f"{result.name:<{width}} [cyan]already running[/]  pid {result.pid:<8} "
                          f"{safe(result.address)}")


@stack.command()
@with_settings(*STACK_KEYS)
def down(settings: Settings) -> None:
    """Stop what `paysim stack up` started (SIGTERM, then SIGKILL after a grace period)."""
    local = _local_stack(settings)
    with console.status("stopping the local stack"):
        results = local.down()
    if not results:
        console.print(f"nothing to stop: no paysim stack runs under {safe(settings.stack.dir)}")
    width = max((len(r.name) for r in results), default=0) + 1
    for result in results:
        how = "killed after the grace period" if result.killed else "stopped"
        console.print(f"{result.name:<{width}} {how} (pid {result.pid})")


@stack.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@with_settings(*STACK_KEYS)
@click.pass_context
def status(ctx: click.Context, settings: Settings, as_json: bool) -> None:
    """Show each component: state, pid, address, version, data folder. Exit 1 if any is down."""
    statuses = _local_stack(settings).status()
    if as_json:
        print_json({s.name: s.as_dict() for s in statuses})
    else:
        root = settings.stack.dir
        table = Table("component", "state", "pid", "address", "version", "uptime", "data folder",
                      caption=f"data folders are under {safe(root)}")
        for s in statuses:
            table.add_row(
                s.name, f"[{STATE_STYLE[s.state]}]{s.state}[/]", str(s.pid or "-"),
                safe(s.address), safe(s.version),
                f"{s.uptime_s:.0f} s" if s.uptime_s is not None else "-",
                safe(Path(s.data_dir).relative_to(root)),
            )
        console.print(table)
    if any(s.state != "up" for s in statuses):
        ctx.exit(1)
