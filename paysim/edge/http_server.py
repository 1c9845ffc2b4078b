"""An HTTP/1.1 server for a WSGI app: connections on one asyncio event loop, requests parsed
there by httptools (llhttp, in C), the app run on a pool of worker threads.

Why not waitress: waitress parses every request in Python on its one event-loop thread, and
under load that thread was the edge's bottleneck (its parser took most of the process's Python
time) while payments waited on Kafka behind it. Here the loop only moves bytes; a request
waiting on Kafka holds a worker thread but no CPU, and there are more workers than the
benchmark's connections. Requests the caller marks as answered without I/O (``on_loop``:
/healthz) run on the loop's thread itself, so they never queue behind the workers.

A route the caller serves itself (``direct``: POST /authorize) runs without the WSGI app: the
caller's handler takes the parsed request and gives the whole answer, on a worker thread; or,
when the caller has it in the form (``direct_on_loop``), on the loop itself, the handler
starting the work and calling back with the answer on the loop once its waits are over (no
worker thread a request, and no wake-up of one).

Keep-alive, pipelining (answers in request order), ``Expect: 100-continue``, chunked request
bodies, HEAD. An answer of type ``text/event-stream`` (the dashboard's server-sent events
under /ui) is streamed: each chunk written as the app yields it, from its worker thread,
then the connection closes. Errors the server answers itself (a malformed request, a body
far past the app's limit) are JSON like the app's own: ``{"error": "<one line>"}``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import httptools

try:  # the event loop and its transports in C (libuv); asyncio's own where it is missing
    import uvloop
except ImportError:  # pragma: no cover - a platform without it (Windows)
    uvloop = None  # type: ignore[assignment]

log = logging.getLogger("paysim.http")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# (method, path) -> whether the app answers it without I/O, on the loop's thread.
OnLoop = Callable[[str, str], bool]

WORKERS = 64  # threads running the app; a request waiting on Kafka holds one, but no CPU
MAX_REQUEST_BYTES = 1024 * 1024  # headers and body of one request, buffered
MAX_PIPELINED = 16  # requests read ahead on one connection before reading pauses
IDLE_TIMEOUT_S = 120.0  # a connection with nothing in flight is closed after this
STOP_POLL_S = 0.1
STREAMED_TYPES = ("text/event-stream",)
READ_PENDING_S = 0.05


@dataclass
class Answer:
    """What the app answered: status line, headers, body."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes
    stream: Iterator[bytes] | None = None  # sent as the app yields it (event streams)


@dataclass
class Request:
    method: str
    target: bytes
    version: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    keep_alive: bool = True
    refused: Answer | None = None  # answered by the server itself, then the connection closes
    _by_name: dict[str, str] | None = field(default=None, repr=False, compare=False)

    def payload(self) -> bytes:
        """The whole body (chunked bodies decoded)."""
        return b"".join(self.body)

    def header(self, name: str) -> str | None:
        """A header's value as the WSGI app would read it: names matched as in the environ
        (case and - or _ alike), repeated headers joined with commas."""
        if self._by_name is None:  # once a request: a route may read several
            self._by_name = {}
            for raw_name, value in self.headers:
                key, text = _environ_name(raw_name), value.decode("latin-1")
                known = self._by_name.get(key)
                self._by_name[key] = text if known is None else f"{known},{text}"
        return self._by_name.get(_environ_name(name.encode("latin-1")))


# A route the caller answers itself, without the WSGI app: the request to its answer.
Direct = Callable[[Request], Answer]
# (method, path) -> that route's handler, or None: the WSGI app answers.
DirectRoutes = Callable[[str, str], Direct | None]
# A route answered on the loop: given the request and what to call with its answer (on the
# loop), it starts the work and returns at once.
LoopDirect = Callable[[Request, Callable[[Answer], None]], None]
LoopRoutes = Callable[[str, str], LoopDirect | None]


def _environ_name(raw_name: bytes) -> str:
    """A header's name as the WSGI environ has it (without the HTTP_ prefix)."""
    return raw_name.decode("latin-1").upper().replace("-", "_")


def json_answer(status: str, message: str) -> Answer:
    return Answer(status, [("Content-Type", "application/json")],
                  json.dumps({"error": message}).encode())


def call_app(app: WsgiApp, environ: dict[str, Any]) -> Answer:
    """Run the WSGI app for one request and collect its whole answer."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [(status, headers)]
        return chunks.append

    chunks: list[bytes] = []
    try:
        result = app(environ, start_response)
        streaming = False
        try:
            iterator = iter(result)
            if not started:  # a generator app calls start_response with its first chunk
                chunks.extend(_first(iterator))
            if started and _streamed(started[0][1]):
                streaming = True
                return Answer(started[0][0], started[0][1], b"",
                              stream=_stream_of(chunks, iterator, result))
            chunks.extend(iterator)
        finally:
            close = getattr(result, "close", None)
            if close is not None and not streaming:
                close()
    except Exception as exc:  # the app's own handlers answer its errors; this is a last line
        log.error("the app failed on %s %s: %s", environ.get("REQUEST_METHOD"),
                  environ.get("PATH_INFO"), type(exc).__name__)
        return json_answer("500 Internal Server Error", "internal error")
    if not started:
        return json_answer("500 Internal Server Error", "internal error")
    status, headers = started[0]
    return Answer(status, headers, b"".join(chunks))


def _first(iterator: Iterator[bytes]) -> list[bytes]:
    for chunk in iterator:
        return [chunk]
    return []


def _streamed(headers: list[tuple[str, str]]) -> bool:
    return any(name.lower() == "content-type" and value.split(";")[0].strip().lower()
               in STREAMED_TYPES for name, value in headers)


def _stream_of(first: list[bytes], rest: Iterator[bytes], result: Any) -> Iterator[bytes]:
    """The app's chunks, the ones already pulled first; the app's result closed at the end."""
    try:
        yield from first
        yield from rest
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def new_loop() -> asyncio.AbstractEventLoop:
    """The server's event loop: uvloop's (libuv, its transports in C) where installed."""
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


class Clock:
    """The Date header, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def date(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._text = now, formatdate(now, usegmt=True)
        return self._text


class Connection(asyncio.Protocol):
    """One client connection: parse, run each request in order, write each answer."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.current: Request | None = None  # being parsed
        self.received = 0  # bytes of the request being parsed
        self.waiting: deque[Request] = deque()  # parsed, not yet answered, in order
        self.busy = False  # the head of ``waiting`` is running
        self.closing = False
        self.paused = False
        self.last_active = time.monotonic()

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport, but is one).
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("", 0)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = time.monotonic()
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(json_answer("400 Bad Request", "protocol upgrades are not served"))
        except httptools.HttpParserError as exc:
            reason = str(exc).strip() or "malformed request"
            self._refuse(json_answer("400 Bad Request", f"malformed HTTP request: {reason}"))
        else:
            if self.current is not None and self.received > MAX_REQUEST_BYTES:
                self._refuse(json_answer("413 Content Too Large",
                                         f"request is larger than {MAX_REQUEST_BYTES // 1024}"
                                         " KiB"))

    # ------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self.current = Request(method="", target=b"", version="1.1")

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self.current
        assert request is not None and self.transport is not None
        request.method = self.parser.get_method().decode("ascii", "replace")
        request.version = self.parser.get_http_version()
        if (request.version == "1.1" and not self.waiting and not self.busy
                and any(name.lower() == b"expect" and value.lower() == b"100-continue"
                        for name, value in request.headers)):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body.append(body)

    def on_message_complete(self) -> None:
        request = self.current
        assert request is not None
        request.keep_alive = self.parser.should_keep_alive()
        self.current, self.received = None, 0
        self.waiting.append(request)
        if len(self.waiting) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._next()

    # ------------------------------------------------------------ running requests

    def _refuse(self, answer: Answer) -> None:
        """Answer once every request before this one is answered, then close."""
        request = self.current or Request(method="GET", target=b"", version="1.1")
        self.current = None
        request.refused, request.keep_alive = answer, False
        self.waiting.append(request)
        self.closing = True  # nothing more is read
        if self.transport is not None:
            self.transport.pause_reading()
        self._next()

    def _next(self) -> None:
        if self.busy or not self.waiting or self.transport is None:
            return
        request = self.waiting[0]
        if request.refused is not None:
            self._respond(request, request.refused)
            return
        self.busy = True
        path = self.server.path_of(request)
        on_loop = self.server.direct_on_loop(request.method, path)
        if on_loop is not None:
            self._start_on_loop(on_loop, request)
            return
        direct = self.server.direct(request.method, path)
        if direct is not None:
            future = self.server.executor.submit(direct, request)
        else:
            environ = self.server.environ(request, self.peer)
            if self.server.on_loop(request.method, environ["PATH_INFO"]):
                self._respond(request, call_app(self.server.app, environ))
                return
            future = self.server.executor.submit(call_app, self.server.app, environ)
        future.add_done_callback(lambda done: self.server.loop.call_soon_threadsafe(
            self._respond_from, request, done))

    def _start_on_loop(self, handler: LoopDirect, request: Request) -> None:
        answered = False

        def respond(answer: Answer) -> None:
            nonlocal answered
            answered = True
            self._respond(request, answer)

        try:
            handler(request, respond)
        except Exception as exc:  # the handler answers its own errors; this is a last line
            log.error("%r %r failed outside its route: %s", request.method,
                      self.server.path_of(request), type(exc).__name__)
            if not answered:
                self._respond(request, json_answer("500 Internal Server Error",
                                                   "internal error"))

    def _respond_from(self, request: Request, done: Future[Answer]) -> None:
        try:
            answer = done.result()
        except CancelledError:  # the pool was shut down with this request still waiting
            answer = json_answer("503 Service Unavailable", "the server is stopping")
        except Exception as exc:  # call_app answers the app's errors; a direct route may not
            log.error("%r %r failed outside its route: %s", request.method,
                      self.server.path_of(request), type(exc).__name__)
            answer = json_answer("500 Internal Server Error", "internal error")
        self._respond(request, answer)

    def _respond(self, request: Request, answer: Answer) -> None:
        self.busy = False
        self.waiting.popleft()
        self.last_active = time.monotonic()
        transport = self.transport
        if transport is None:  # the client went away meanwhile
            return
        keep_alive = request.keep_alive and not self.server.stopping
        if answer.stream is not None:
            transport.write(self.server.head(answer, request, keep_alive=False))
            self._pump(answer.stream, request.method != "HEAD")
            return
        transport.write(self.server.head(answer, request, keep_alive)
                        + (b"" if request.method == "HEAD" else answer.body))
        if not keep_alive:
            self.closing = True
            transport.close()
            return
        if self.paused and len(self.waiting) < MAX_PIPELINED:
            self.paused = False
            transport.resume_reading()
        self._next()

    def _pump(self, stream: Iterator[bytes], send_body: bool) -> None:
        """Write a streamed answer's chunks as the app yields them (on a worker thread), then
        close the connection; stop early when the client went away."""
        self.busy = self.closing = True  # nothing more is read or answered here
        loop = self.server.loop

        def pump() -> None:
            try:
                for chunk in stream:
                    if self.transport is None or not send_body:
                        break
                    if chunk:
                        loop.call_soon_threadsafe(self._write, chunk)
            except Exception as exc:  # the stream's own errors end it, not the server
                log.warning("a streamed answer ended early: %s", type(exc).__name__)
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
                loop.call_soon_threadsafe(self.close)

        self.server.executor.submit(pump)

    def _write(self, chunk: bytes) -> None:
        if self.transport is not None:
            self.transport.write(chunk)
            self.last_active = time.monotonic()

    @property
    def idle(self) -> bool:
        """Nothing for the app to answer: between requests, or one only partly sent (a client
        that stops mid-request is closed after IDLE_TIMEOUT_S too)."""
        return not self.busy and not self.waiting

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


class HttpServer:
    """Serves ``app`` on host:port until ``stop`` is set (``serve_until``)."""

    def __init__(self, app: WsgiApp, host: str, port: int, on_loop: OnLoop,
                 workers: int = WORKERS, direct: DirectRoutes | None = None,
                 direct_on_loop: LoopRoutes | None = None) -> None:
        self.app = app
        self.host, self.port = host, port
        self.on_loop = on_loop
        self.direct: DirectRoutes = direct or (lambda _method, _path: None)
        self.direct_on_loop: LoopRoutes = direct_on_loop or (lambda _method, _path: None)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="http")
        self.connections: set[Connection] = set()
        self.stopping = False
        self.clock = Clock()
        self.loop = new_loop()
        self._server: asyncio.base_events.Server | None = None

    def listen(self) -> None:
        """Bind the listening sockets (OSError when it cannot)."""
        self._server = self.loop.run_until_complete(self.loop.create_server(
            lambda: Connection(self), self.host, self.port, reuse_address=True, backlog=1024))

    def serve_until(self, stop: threading.Event, grace_s: float) -> None:
        """Serve until ``stop`` is set; then stop accepting, let the requests in flight be
        answered (at most ``grace_s``), and close every connection."""
        try:
            self.loop.run_until_complete(self._run(stop, grace_s))
        finally:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.loop.close()

    async def _run(self, stop: threading.Event, grace_s: float) -> None:
        assert self._server is not None
        swept = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(STOP_POLL_S)
            if time.monotonic() - swept > IDLE_TIMEOUT_S / 10:
                swept = time.monotonic()
                self._close_idle(swept - IDLE_TIMEOUT_S)
        self.stopping = True
        self._server.close()  # stop accepting
        # What clients sent before the stop is read first (a loop pass or two) and answered,
        # each connection closing after its answer; one with nothing in flight closes now.
        await asyncio.sleep(READ_PENDING_S)
        self._close_idle(float("inf"))
        deadline = time.monotonic() + grace_s
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            self._close_idle(float("inf"))
        for connection in list(self.connections):
            connection.close()
        await self._server.wait_closed()

    def _close_idle(self, before: float) -> None:
        for connection in list(self.connections):
            if connection.idle and connection.last_active < before:
                connection.close()

    @staticmethod
    def path_of(request: Request) -> str:
        """The request's path, decoded as the environ's PATH_INFO."""
        return unquote_to_bytes(httptools.parse_url(request.target).path or b"/").decode(
            "latin-1")

    def environ(self, request: Request, peer: tuple[str, int]) -> dict[str, Any]:
        """The WSGI environ of one request (PEP 3333)."""
        url = httptools.parse_url(request.target)
        body = request.payload()
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": self.path_of(request),
            "QUERY_STRING": (url.query or b"").decode("latin-1"),
            "SERVER_NAME": self.host,
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": f"HTTP/{request.version}",
            "REMOTE_ADDR": peer[0],
            "REMOTE_PORT": str(peer[1]),
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for raw_name, raw_value in request.headers:
            name = _environ_name(raw_name)
            value = raw_value.decode("latin-1")
            if name == "CONTENT_TYPE":
                environ[name] = value
                continue
            if name in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
                continue  # the body is whole and decoded: its length is set above
            key = f"HTTP_{name}"
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    def head(self, answer: Answer, request: Request, keep_alive: bool) -> bytes:
        """The status line and headers of an answer."""
        lines = [f"HTTP/1.1 {answer.status}"]
        has_length = False
        for name, value in answer.headers:
            lowered = name.lower()
            if lowered in ("connection", "transfer-encoding"):
                continue
            has_length = has_length or lowered == "content-length"
            lines.append(f"{name}: {value}")
        if not has_length and answer.stream is None:  # a stream ends with the connection
            lines.append(f"Content-Length: {len(answer.body)}")
        lines.append(f"Date: {self.clock.date()}")
        if not keep_alive:
            lines.append("Connection: close")
        elif request.version == "1.0":
            lines.append("Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def close(self) -> None:
        """Release what ``__init__`` took, for a server that never served."""
        self.executor.shutdown(wait=False)
        self.loop.close()
