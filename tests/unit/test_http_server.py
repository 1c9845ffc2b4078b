"""The edge's HTTP/1.1 server on a small WSGI app: keep-alive, pipelining in order, requests
answered on the loop while every worker is busy, the server's own JSON errors, the graceful
stop."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from paysim.edge import http_server
from paysim.edge.http_server import HttpServer
from paysim.infra.waiting import wait_until
from tests.helpers import free_port


class App:
    """Echoes what it was given; /slow waits until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.threads: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.threads.append(threading.current_thread().name)
        if environ["PATH_INFO"] == "/slow":
            self.started.release()
            self.release.wait(10)
        body = json.dumps({
            "method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
            "query": environ["QUERY_STRING"], "body": environ["wsgi.input"].read().decode(),
            "length": environ["CONTENT_LENGTH"], "type": environ.get("CONTENT_TYPE"),
            "key": environ.get("HTTP_IDEMPOTENCY_KEY"),
        }).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]


def direct_echo(request: http_server.Request) -> http_server.Answer:
    """A route answered without the app (as the edge's POST /authorize): what it was given."""
    body = json.dumps({"direct": True, "body": request.payload().decode(),
                       "key": request.header("Idempotency-Key")}).encode()
    return http_server.Answer("200 OK", [("Content-Type", "application/json")], body)


def direct_boom(request: http_server.Request) -> http_server.Answer:
    """A direct route that fails outside any handler of its own."""
    raise ValueError("a bug")


def later_echo(request: http_server.Request,
               answered: Any) -> None:
    """A route answered on the loop (as the edge's POST /authorize is): the answer comes in a
    later pass of the loop, as after a wait; the thread that answered is in the body."""
    body = json.dumps({"on_loop": True, "body": request.payload().decode(),
                       "thread": threading.current_thread().name}).encode()
    asyncio.get_running_loop().call_soon(
        answered, http_server.Answer("200 OK", [("Content-Type", "application/json")], body))


def later_boom(request: http_server.Request, answered: Any) -> None:
    raise ValueError("a bug")


@contextlib.contextmanager
def serving(app: App, workers: int = 4, grace_s: float = 5.0) -> Iterator[tuple[int, Any]]:
    port = free_port()
    server = HttpServer(app, "127.0.0.1", port, lambda method, path: path == "/loop",
                        workers=workers,
                        direct=lambda method, path: {"/direct": direct_echo,
                                                     "/boom": direct_boom}.get(path)
                        if method == "POST" else None,
                        direct_on_loop=lambda method, path: {
                            "/later": later_echo, "/later-boom": later_boom}.get(path)
                        if method == "POST" else None)
    server.listen()
    stop = threading.Event()
    thread = threading.Thread(target=server.serve_until, args=(stop, grace_s), daemon=True)
    thread.start()
    try:
        yield port, stop
    finally:
        stop.set()
        app.release.set()
        thread.join(10)
    assert not thread.is_alive()


def raw(port: int, data: bytes, until: bytes = b"", timeout: float = 5) -> bytes:
    """Send ``data``, read until the server closes or ``until`` has been seen."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        got = b""
        while until not in got or not until:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
            if until and until in got:
                break
        return got


def test_the_server_runs_on_uvloop_where_it_is_installed() -> None:
    server = HttpServer(App(), "127.0.0.1", 0, lambda _method, _path: False)
    try:
        assert isinstance(server.loop, uvloop.Loop)
    finally:
        server.close()


def test_keep_alive_requests_on_one_connection_with_their_bodies_and_headers() -> None:
    app = App()
    with serving(app) as (port, _):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for n in range(3):
            connection.request("POST", f"/pay%2Fments/{n}?x=1", body=f'{{"n":{n}}}',
                               headers={"Content-Type": "application/json",
                                        "Idempotency-Key": f"k{n}"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200 and response.getheader("Date")
            # %2F decodes into the path, as WSGI servers give it (the app refuses such ids)
            assert answer == {"method": "POST", "path": f"/pay/ments/{n}", "query": "x=1",
                              "body": f'{{"n":{n}}}', "length": str(len(f'{{"n":{n}}}')),
                              "type": "application/json", "key": f"k{n}"}
        connection.close()
    assert all(name.startswith("http") for name in app.threads)  # the workers ran the app


def test_a_direct_route_is_answered_without_the_app_in_order_with_the_others() -> None:
    app = App()
    with serving(app) as (port, _):
        # Pipelined: the direct route's, then the app's; repeated and differently
        # written header names read as the WSGI environ reads them.
        got = raw(port, b"POST /direct HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                        b"idempotency_key: a\r\nIDEMPOTENCY-KEY: b\r\n\r\n{}"
                        b"GET /direct HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                  until=b"")
    answers = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in
               got.split(b"HTTP/1.1 200 OK")[1:]]
    assert answers[0] == {"direct": True, "body": "{}", "key": "a,b"}
    assert answers[1]["method"] == "GET" and answers[1]["key"] is None  # GET: the app's
    assert len(app.threads) == 1  # the direct route did not go through the app
    request = http_server.Request("POST", b"/", "1.1", headers=[(b"X-A", b"1")])
    assert request.header("Idempotency-Key") is None and request.header("x_a") == "1"


def test_a_route_answered_on_the_loop_keeps_its_place_among_pipelined_requests(
        caplog: pytest.LogCaptureFixture) -> None:
    app = App()
    with serving(app) as (port, _):
        got = raw(port, b"POST /later HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
                        b"POST /direct HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                        b"POST /later-boom HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                        b"POST /later HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                        b"Connection: close\r\n\r\n1", until=b"")
    parts = [part for part in got.split(b"HTTP/1.1 ")[1:]]
    assert [part[:3] for part in parts] == [b"200", b"200", b"500", b"200"]
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in parts]
    assert bodies[0]["on_loop"] and bodies[0]["body"] == "{}"
    assert not bodies[0]["thread"].startswith("http")  # the loop's thread, not a worker
    assert bodies[1]["direct"] and bodies[2] == {"error": "internal error"}
    assert bodies[3]["on_loop"] and bodies[3]["body"] == "1"
    assert "'/later-boom' failed outside its route: ValueError" in caplog.text
    assert app.threads == []


def test_a_direct_route_that_raises_is_a_logged_500_and_the_connection_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    app = App()
    with serving(app) as (port, _):
        got = raw(port, b"POST /boom HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                        b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                  until=b"")
    assert got.startswith(b"HTTP/1.1 500 Internal Server Error")
    assert b'"internal error"' in got and b"HTTP/1.1 200 OK" in got  # the next one answered
    assert "'/boom' failed outside its route: ValueError" in caplog.text


def test_pipelined_requests_are_answered_in_order() -> None:
    app = App()
    with serving(app) as (port, _):
        data = (b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers: list[bytes] = []
        reader = threading.Thread(target=lambda: answers.append(raw(port, data)))
        reader.start()
        assert app.started.acquire(timeout=5)
        app.release.set()
        reader.join(10)
    text = answers[0].decode()
    assert text.index('"/slow"') < text.index('"/fast"') < text.index('"/last"')
    assert text.count("HTTP/1.1 200 OK") == 3 and "Connection: close" in text


def test_a_request_answered_on_the_loop_does_not_wait_for_busy_workers() -> None:
    app = App()
    with serving(app, workers=2) as (port, _):
        slow = [threading.Thread(target=raw, args=(port, b"GET /slow HTTP/1.1\r\nHost: x\r\n"
                                                   b"Connection: close\r\n\r\n"))
                for _ in range(4)]  # both workers held, two more queued
        for thread in slow:
            thread.start()
        assert app.started.acquire(timeout=5) and app.started.acquire(timeout=5)
        answer = raw(port, b"GET /loop HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"200 OK" in answer and b'"/loop"' in answer
        assert not app.release.is_set()  # answered while the workers were still held
        app.release.set()
        for thread in slow:
            thread.join(10)
    assert app.threads.count("MainThread") == 0
    assert sum(1 for name in app.threads if not name.startswith("http")) == 1  # the loop's


def test_malformed_requests_get_a_json_400_and_the_connection_closes() -> None:
    with serving(App()) as (port, _):
        answer = raw(port, b"NOT A REQUEST\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"Connection: close" in head and b"Content-Type: application/json" in head
    assert json.loads(body)["error"].startswith("malformed HTTP request")


def test_a_request_past_the_size_bound_is_413_without_buffering_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_server, "MAX_REQUEST_BYTES", 4096)
    with serving(App()) as (port, _):
        answer = raw(port, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                     + b"a" * 8192)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert "larger than 4 KiB" in json.loads(answer.partition(b"\r\n\r\n")[2])["error"]


def test_chunked_bodies_expect_continue_and_head() -> None:
    with serving(App()) as (port, _):
        answer = raw(port, b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["body"] == "abcde"

        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                         b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
            assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(b"hi")
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
        assert json.loads(got.partition(b"\r\n\r\n")[2])["body"] == "hi"

        head = raw(port, b"HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
        assert b"Content-Length: " in head


def test_http_1_0_closes_unless_asked_to_keep_alive() -> None:
    with serving(App()) as (port, _):
        closed = raw(port, b"GET /a HTTP/1.0\r\n\r\n")
        assert closed.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in closed
        kept = raw(port, b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", until=b"}")
        assert b"Connection: keep-alive" in kept


def test_stop_answers_the_request_in_flight_then_refuses_connections() -> None:
    app = App()
    with serving(app) as (port, stop):
        answers: list[bytes] = []
        reader = threading.Thread(target=lambda: answers.append(
            raw(port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")))
        reader.start()
        assert app.started.acquire(timeout=5)
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        stop.set()
        # The idle keep-alive connection is closed; the request in flight is not.
        assert idle.recv(10) == b""
        idle.close()
        assert wait_until(lambda: _refused(port), 5)
        assert not answers
        app.release.set()
        reader.join(10)
    assert answers[0].startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in answers[0]


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_a_connection_quiet_past_the_idle_timeout_is_closed_even_mid_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_server, "IDLE_TIMEOUT_S", 0.5)
    with serving(App()) as (port, _), \
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Le")  # and nothing more
        assert sock.recv(10) == b""  # closed by the server's sweep, not the timeout


class EventApp:
    """Server-sent events: yields one event, waits for ``more``, yields another, ends."""

    def __init__(self) -> None:
        self.more = threading.Event()
        self.release = self.more  # what serving() sets at its end

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        yield b"data: one\n\n"
        self.more.wait(10)
        yield b"data: two\n\n"


def test_an_event_stream_is_written_as_the_app_yields_it() -> None:
    app = EventApp()
    with serving(app) as (port, _), socket.create_connection(  # type: ignore[arg-type]
            ("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /ui/events HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"data: one" not in got:  # before the app yields its second event
            got += sock.recv(65536)
        assert b"Content-Length" not in got and b"Connection: close" in got
        assert b"data: two" not in got
        app.more.set()
        while chunk := sock.recv(65536):  # then the server closes after the last one
            got += chunk
        assert got.endswith(b"data: two\n\n")
