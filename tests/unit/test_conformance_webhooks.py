"""The conformance notifier's webhook receiver (paysim/ops/conformance_webhooks.py)."""

from __future__ import annotations

import socket
import urllib.parse

from paysim.ops.conformance_webhooks import Received, receiving


def post(url: str, head: bytes, body: bytes = b"") -> bytes:
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST " + parts.path.encode() + b"/pay-1 HTTP/1.1\r\nHost: x\r\n"
                     b"Stripe-Signature: t=1,v1=ab\r\nConnection: close\r\n" + head
                     + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def test_a_post_is_kept_by_its_paths_last_part() -> None:
    with receiving("run-1") as receiver:
        answer = post(receiver.url, b"Content-Length: 2\r\n", b"{}")
        taken = receiver.taken()
    assert answer.startswith(b"HTTP/1.0 200") or answer.startswith(b"HTTP/1.1 200")
    assert taken == {"pay-1": [Received("t=1,v1=ab", b"{}")]}


def test_a_malformed_or_negative_content_length_reads_no_body() -> None:
    with receiving("run-1") as receiver:
        for length in (b"nonsense", b"-5"):
            answer = post(receiver.url, b"Content-Length: " + length + b"\r\n", b"{}")
            assert b" 200 " in answer.split(b"\r\n", 1)[0]
        taken = receiver.taken()
    assert taken == {"pay-1": [Received("t=1,v1=ab", b""), Received("t=1,v1=ab", b"")]}


def test_a_chunked_body_is_read_whole() -> None:
    with receiving("run-1") as receiver:
        answer = post(receiver.url, b"Transfer-Encoding: chunked\r\n",
                      b"3\r\n{\"a\r\n5;ext=1\r\n\": 1}\r\n0\r\n\r\n")
        taken = receiver.taken()
    assert b" 200 " in answer.split(b"\r\n", 1)[0]
    assert taken == {"pay-1": [Received("t=1,v1=ab", b'{"a": 1}')]}
