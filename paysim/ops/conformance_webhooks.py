"""The merchant's side of `paysim conformance notifier`: an HTTP receiver on 127.0.0.1 that
takes the candidate's webhook POSTs, answers 200, and keeps each one (its path's last part,
its signature header, its body) for the notifier's cases to judge."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO

from paysim.domain.webhooks import STRIPE_SIGNATURE_HEADER

MAX_BODY_BYTES = 64 * 1024  # a notification's envelope is well under 1 KiB


@dataclass(frozen=True)
class Received:
    """One POST as it came."""

    signature: str | None  # the Stripe-Signature header
    body: bytes


@dataclass
class Receiver:
    """Where the candidate posts (``url`` + "/<payment id>") and what it posted, by the
    path's last part."""

    url: str
    posts: dict[str, list[Received]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def keep(self, name: str, received: Received) -> None:
        with self.lock:
            self.posts.setdefault(name, []).append(received)

    def taken(self) -> dict[str, list[Received]]:
        with self.lock:
            return {name: list(posts) for name, posts in self.posts.items()}


def _length(header: str | None) -> int:
    """The body's length to read: a missing, malformed or negative Content-Length reads none
    (the case then reports the unsigned body), never a traceback or a read to the end."""
    try:
        length = int(header or 0)
    except ValueError:
        return 0
    return max(0, min(length, MAX_BODY_BYTES))


def _chunked(stream: BinaryIO) -> bytes:
    """A ``Transfer-Encoding: chunked`` body (an HTTP client with no length to give sends one),
    at most MAX_BODY_BYTES of it; a malformed chunk size ends it where it stands."""
    body = b""
    while len(body) < MAX_BODY_BYTES:
        line = stream.readline(64).split(b";", 1)[0].strip()
        try:
            size = int(line, 16)
        except ValueError:
            break
        if size <= 0:
            break
        body += stream.read(min(size, MAX_BODY_BYTES - len(body)))
        stream.readline(64)  # the CRLF after the chunk
    return body


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                body = _chunked(self.rfile)
                self.close_connection = True  # a trailer or an overlong body may be left
            else:
                body = self.rfile.read(_length(self.headers.get("Content-Length")))
            receiver.keep(self.path.rstrip("/").rsplit("/", 1)[-1],
                          Received(self.headers.get(STRIPE_SIGNATURE_HEADER), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass  # the cases say what came; no access log on the terminal

    return Handler


@contextmanager
def receiving(run_id: str, host: str = "127.0.0.1") -> Iterator[Receiver]:
    """A receiver on a free port of ``host`` for the block."""
    receiver = Receiver("")
    server = ThreadingHTTPServer((host, 0), _handler(receiver))
    receiver.url = f"http://{host}:{server.server_address[1]}/conformance/{run_id}"
    thread = threading.Thread(target=server.serve_forever, name="conformance-webhooks",
                              daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
