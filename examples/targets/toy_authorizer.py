"""A toy authorization API for trying `paysim send --target` (standard library only).

It approves every payment up to 100.00 in minor units (10000) and refuses larger ones with
code 51, in the format of http-authorize.toml. It never looks at the card beyond its length
and logs nothing.

    python examples/targets/toy_authorizer.py 8085
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LIMIT = 10_000


class Authorize(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real API
    # The headers and the body go out in two writes: without this, Nagle's algorithm and the
    # client's delayed ACK hold the body back 40 ms.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        amount = body["amount"]["value"]
        if amount <= LIMIT:
            status, answer = 200, {"result": "authorised", "refusal_code": None}
        else:
            status, answer = 402, {"result": "refused", "refusal_code": "51"}
        data = json.dumps({"reference": body["reference"], **answer}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass  # the requests carry card numbers: nothing is logged


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8085
    ThreadingHTTPServer(("127.0.0.1", port), Authorize).serve_forever()
