"""`paysim dashboard`'s own server: the dashboard app on the standard library's WSGI server,
a thread per connection (each open page holds one for its event stream)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from paysim.dashboard.app import DashboardApp
from paysim.dashboard.live import LiveCollector
from paysim.dashboard.runs import PastRuns
from paysim.infra.config import Settings
from paysim.infra.errors import PaysimError

log = logging.getLogger("paysim.dashboard")


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        log.debug(format, *args)


def dashboard_app(settings: Settings, max_streams: int = 8,
                  stop: threading.Event | None = None) -> DashboardApp:
    """The dashboard over this configuration's Redis and runs folder."""
    return DashboardApp(LiveCollector(settings), PastRuns(settings.lifecycle.runs_dir),
                        max_streams, stop)


@dataclass
class Dashboard:
    """A dashboard being served, and where."""

    url: str
    server: WSGIServer
    app: DashboardApp
    thread: threading.Thread

    def close(self) -> None:
        self.app.stop.set()  # open event streams end at once
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        self.app.collector.close()


def serve_dashboard(settings: Settings, host: str, port: int) -> Dashboard:
    """Serve the dashboard on host:port (0: a free port) in a thread of its own."""
    app = dashboard_app(settings)
    try:
        server = make_server(host, port, app, server_class=_ThreadingServer,
                             handler_class=_QuietHandler)
    except OSError as exc:
        raise PaysimError(f"the dashboard cannot listen on {host}:{port}: "
                          f"{exc.strerror or exc}") from None
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    return Dashboard(f"http://{shown}:{server.server_port}/", server, app, thread)
