"""A Shopify Admin API on 127.0.0.1 for write-back tests: a subclass answers each GraphQL body it is posted
(status and JSON, composed from tests/data/shopify_api, or bytes sent as they are); the server does the HTTP, an
outage (``down``) and throttling (``throttle_next`` calls answered THROTTLED) for all of them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RECORDED = Path(__file__).parent / "data" / "shopify_api"


class FakeAdminServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.origin = f"http://127.0.0.1:{self.server_address[1]}"
        self.throttle_next = 0
        self.down = False
        self.retry_after: str | None = None  # sent with a 429

    def answer(self, body: dict) -> tuple[int, dict | bytes]:
        if self.down:
            return 503, {"errors": "Service Unavailable"}
        if self.throttle_next:
            self.throttle_next -= 1
            return 200, json.loads((RECORDED / "throttled.json").read_text())
        return self.respond(body)

    def respond(self, body: dict) -> tuple[int, dict]:
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    server: FakeAdminServer

    def log_message(self, *args):
        pass

    def do_POST(self):
        status, body = self.server.answer(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if status == 429 and self.server.retry_after is not None:
            self.send_header("Retry-After", self.server.retry_after)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def admin_client(server: FakeAdminServer, shop: str):
    """storeflow's Admin API client pointed at the fake, retrying twice without sleeping."""
    from storeflow.components.config import load_settings
    from storeflow.components.shopify.admin import AdminClient, Credentials

    settings = load_settings({"shopify": {"admin_origin": server.origin, "max_retries": 2}})
    return AdminClient(settings, Credentials(shop, "shpat_test"), sleep=lambda seconds: None)


@contextmanager
def running(server: FakeAdminServer) -> Iterator[FakeAdminServer]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
