"""``storeflow webhooks``: the ASGI receiver for Shopify webhooks (Starlette).

Per delivery: the HMAC (``X-Shopify-Hmac-Sha256`` over the raw body) is checked by shopifyapp through
:class:`storeflow.serving.auth.ShopifyVerifier` (constant-time compare, old secret during rotation, shop
allow-list); topic, webhook id and JSON shape are checked; then the event is committed to the journal
and only then answered 200. A delivery whose webhook id was seen before is answered 200 and changes
nothing. Bad input gets a 4xx JSON naming the problem; nothing already stored is touched.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import time
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from storeflow.components.config import Settings
from storeflow.components.shopify import layout
from storeflow.components.shopify.journal import Event, Journal
from storeflow.components.shopify.payloads import TOPICS, PayloadError, check
from storeflow.serving.auth import AuthError, ShopifyVerifier, shop_domain

log = logging.getLogger(__name__)

PATH = "/webhooks"
REQUIRED_HEADERS = ("x-shopify-hmac-sha256", "x-shopify-topic", "x-shopify-webhook-id", "x-shopify-shop-domain")


def _problem(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": detail, "code": code}, status_code=status)


def create_app(settings: Settings, verifier: ShopifyVerifier | None = None, apply: bool = True) -> Starlette:
    """The receiver. ``apply=False`` only journals (the applier runs elsewhere, e.g. a second process)."""
    verifier = verifier or ShopifyVerifier.from_settings(settings)
    limit = settings.shopify.webhook_max_body_bytes

    async def receive(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return _problem(413, "body_too_large", f"body over {limit} bytes")
        raw = await request.body()
        if len(raw) > limit:
            return _problem(413, "body_too_large", f"body over {limit} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return _problem(400, "not_utf8", "body is not UTF-8 JSON")
        missing = [h for h in REQUIRED_HEADERS if not request.headers.get(h)]
        if missing:
            return _problem(400, "missing_header", f"missing header(s): {', '.join(missing)}")
        try:
            principal = verifier.verify_webhook(request.method, str(request.url), dict(request.headers), text)
        except AuthError as exc:
            return _problem(401, exc.code, f"webhook rejected: {exc.detail}")
        topic = request.headers["x-shopify-topic"]
        if topic not in TOPICS:
            return _problem(400, "unknown_topic", f"topic {topic!r} is not handled here; handled: {sorted(TOPICS)}")
        try:
            payload: Any = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _problem(400, "malformed_json", f"body is not valid JSON: {exc}")
        try:
            customer = check(topic, payload)
        except PayloadError as exc:
            return _problem(400, "bad_payload", str(exc))
        event = Event(webhook_id=request.headers["x-shopify-webhook-id"], shop=principal.shop, topic=topic,
                      body=raw, customer_id=customer, triggered_at=request.headers.get("x-shopify-triggered-at"))
        try:
            fresh = await request.app.state.journal.record(event)
        except Exception:  # noqa: BLE001 - not stored: Shopify must retry
            log.exception("journal write failed for webhook %s", event.webhook_id)
            return _problem(503, "journal_unavailable", "event not stored; retry later")
        return JSONResponse({"status": "accepted" if fresh else "duplicate", "webhook_id": event.webhook_id})

    async def health(request: Request) -> JSONResponse:
        pending = request.app.state.reader.execute("SELECT count(*) FROM events WHERE applied_at IS NULL").fetchone()[0]
        return JSONResponse({"status": "ok", "pending": pending})

    @asynccontextmanager
    async def lifespan(app: Starlette):
        app.state.journal = Journal(layout.journal_path(settings))
        app.state.reader = sqlite3.connect(layout.journal_path(settings), timeout=30)
        app.state.applier = None
        if apply:
            from storeflow.components.shopify.apply import Applier

            app.state.applier = Applier(settings, app.state.journal.committed)
            app.state.applier.start()
        try:
            yield
        finally:
            if app.state.applier:
                app.state.applier.stop()
            app.state.journal.close()
            app.state.reader.close()

    return Starlette(routes=[Route(PATH, receive, methods=["POST"]), Route("/healthz", health, methods=["GET"])],
                     lifespan=lifespan)


def run_applier(settings_json: str, receiver_pid: int | None = None) -> None:
    """The applier as its own process: Feast writes never hold the receiver's GIL.

    It ends when the receiver has gone: uvicorn re-raises the SIGTERM it handled, so the receiver dies
    without running its ``finally`` and would leave this process applying on its own.
    """
    from storeflow.components.config import load_settings
    from storeflow.components.shopify.apply import Applier

    settings = load_settings(settings_json)
    applier = Applier(settings)
    while receiver_pid is None or os.getppid() == receiver_pid:
        try:
            if not applier.drain():
                time.sleep(settings.shopify.apply_idle_seconds)
        except Exception:  # noqa: BLE001 - events stay journaled; retry
            log.exception("applying webhook events failed; retrying")
            time.sleep(5)


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    cfg = settings.shopify
    app = create_app(settings, apply=False)
    applier = multiprocessing.get_context("spawn").Process(target=run_applier, args=(settings.to_json(), os.getpid()),
                                                           name="webhook-applier", daemon=True)
    applier.start()
    log.info("webhooks for %s on %s:%s%s", shop_domain(settings.project.shop_domain), host or cfg.webhook_host,
             port or cfg.webhook_port, PATH)
    try:
        uvicorn.run(app, host=host or cfg.webhook_host, port=port if port is not None else cfg.webhook_port,
                    access_log=False, log_level="warning")
    finally:
        applier.terminate()
        applier.join(10)
