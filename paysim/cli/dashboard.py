"""`paysim dashboard`: the live web dashboard on a port of its own, until Ctrl-C."""

from __future__ import annotations

import signal
import threading

import click

from paysim.cli.options import with_settings
from paysim.cli.render import console, safe
from paysim.infra.config import Settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8090, show_default=True,
              help="Port to listen on (0: a free one).")
@with_settings()
def dashboard(settings: Settings, host: str, port: int) -> None:
    """Serve the live dashboard (throughput, latency, lag, services, runs) in the browser.

    It reads what the services and `paysim send` publish (heartbeats, metrics, run progress)
    and the reports under lifecycle.runs_dir. run-all serves the same page at /ui."""
    from paysim.dashboard.serve import serve_dashboard  # loaded only where served

    served = serve_dashboard(settings, host, port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"dashboard at {safe(served.url)} (Ctrl-C stops it)")
    try:
        stop.wait()
    finally:
        served.close()
    console.print("dashboard stopped")
