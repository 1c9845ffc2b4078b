"""`paysim topics`: create paysim's Kafka topics where they are missing."""

from __future__ import annotations

import click

from paysim.cli.options import with_settings
from paysim.cli.render import console, safe
from paysim.infra.config import Settings
from paysim.infra.topics import ensure_topics


@click.group()
def topics() -> None:
    """paysim's Kafka topics."""


@topics.command()
@with_settings()
def ensure(settings: Settings) -> None:
    """Create missing topics (partitions and replication from config); leave others alone."""
    report = ensure_topics(settings)
    for name in report.created:
        console.print(f"created  {safe(name)}  ({settings.topics.partitions} partitions, "
                      f"replication factor {settings.replication_factor})")
    for name in report.existing:
        console.print(f"exists   {safe(name)}")
