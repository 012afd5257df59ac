"""A Shopify Admin API on 127.0.0.1 for write-back tests: a subclass answers each GraphQL body it is posted
(status and JSON, composed from tests/data/shopify_api), the server does the HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeAdminServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.origin = f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, body: dict) -> tuple[int, dict]:
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    server: FakeAdminServer

    def log_message(self, *args):
        pass

    def do_POST(self):
        status, body = self.server.answer(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def running(server: FakeAdminServer) -> Iterator[FakeAdminServer]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
