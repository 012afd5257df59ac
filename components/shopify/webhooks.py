"""``storeflow webhooks``: the ASGI receiver for Shopify webhooks (Starlette).

Per delivery, cheapest and least trusting first: headers are checked for shape (an HMAC that is not a
base64 SHA-256 digest is 401 before anything is read or computed); the body is read as it arrives, never
past ``shopify.webhook_max_body_bytes`` + 1 bytes (413) nor longer than
``shopify.webhook_body_timeout_seconds`` (408; both close the connection); the HMAC
(``X-Shopify-Hmac-Sha256`` over the raw body) is checked on the raw bytes, as shopifyapp decides it, by
:meth:`.verify.ShopifyVerifier.verify_webhook_body` (constant-time compare, old secret during rotation, shop
allow-list), before anything parses the body; only then is the body parsed and every field the topic needs
validated (:mod:`.payloads`); then the event is committed to the journal and only then answered 200.
A delivery whose webhook id was seen before is answered 200 and changes nothing. Bad input gets a 4xx
JSON naming the problem; nothing already stored is touched.

With ``risk.endpoint`` set, every journaled ``orders/create`` is scored with the risk model server and its
assessment written back to Shopify (:mod:`storeflow.components.risk.realtime`): under ``storeflow webhooks``
by a process of its own the receiver restarts when it dies (``risk.scorer: process``, the default), or by
threads of the receiver (``thread``).

``/healthz`` reports the applier: 503 ``behind`` when it is down or the oldest pending event has waited
longer than ``shopify.apply_max_lag_seconds``, with the pending count, the oldest age and the number of
dead letters; with order risk on, also what the risk path has not scored or written back yet (``risk``), and
``behind`` when an order has waited for its score that long. ``/livez`` only says the receiver answers (a
backlog is no reason to restart it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
import sqlite3
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from storeflow.components.config import Settings
from storeflow.components.heap import freeze_startup_objects
from storeflow.components.shopify import layout, products
from storeflow.components.shopify.journal import Event, Journal, backlog
from storeflow.components.shopify.payloads import TOPICS, PayloadError, check
from storeflow.components.shopify.products import AVAILABILITY_TOPICS
from storeflow.components.shopify.retention import Retention
from storeflow.components.shopify.supervisor import ApplierSupervisor, RiskSupervisor
from storeflow.components.shopify.verify import AuthError, ShopifyVerifier, shop_domain

log = logging.getLogger(__name__)

PATH = "/webhooks"
HMAC_HEADER = "x-shopify-hmac-sha256"
REQUIRED_HEADERS = (HMAC_HEADER, "x-shopify-topic", "x-shopify-webhook-id", "x-shopify-shop-domain")
TEXT_HEADERS = ("x-shopify-topic", "x-shopify-webhook-id", "x-shopify-shop-domain", "x-shopify-triggered-at")
MAX_HEADER_CHARS = 255
SHOP_HEADER = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
CLOSE = {"Connection": "close"}  # the rest of the body is unread: this connection cannot carry another request


class BodyTooLarge(Exception):
    pass


def _problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": detail, "code": code}, status_code=status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The body as it arrives, stopping as soon as it passes ``limit`` bytes (:class:`BodyTooLarge`)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def _is_digest(value: str) -> bool:
    """A base64 SHA-256 digest, the only thing shopifyapp can compare (anything else raised in it)."""
    if not value.isascii():
        return False
    try:
        return len(base64.b64decode(value, validate=True)) == hashlib.sha256().digest_size
    except (binascii.Error, ValueError):
        return False


def first_values(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """A request's headers (ASGI's, names lower case) as a dict, the first value of a repeated name, as Starlette's
    ``Headers`` answers a lookup: built once, where each of a delivery's ~20 lookups in ``Headers`` scanned and
    decoded the whole list (~6 % of the receiver's CPU under load)."""
    headers: dict[str, str] = {}
    for name, value in raw:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


def header_problem(headers: Headers | dict[str, str]) -> JSONResponse | None:
    """Missing or malformed headers, before any work is done on the body."""
    missing = [h for h in REQUIRED_HEADERS if not headers.get(h)]
    if missing:
        return _problem(400, "missing_header", f"missing header(s): {', '.join(missing)}")
    if not _is_digest(headers[HMAC_HEADER]):
        return _problem(401, "invalid_hmac", f"{HMAC_HEADER} is not a base64-encoded SHA-256 digest")
    for name in TEXT_HEADERS:
        value = headers.get(name)
        if value is not None and not (value.isascii() and value.isprintable() and len(value) <= MAX_HEADER_CHARS):
            return _problem(400, "bad_header", f"{name} must be printable ASCII of at most {MAX_HEADER_CHARS} characters")
    if not SHOP_HEADER.fullmatch(headers["x-shopify-shop-domain"]):
        return _problem(400, "bad_header", "x-shopify-shop-domain is not a shop domain")
    return None


def create_app(settings: Settings, verifier: ShopifyVerifier | None = None, apply: bool = True,
               supervisor: ApplierSupervisor | None = None,
               risk_supervisor: RiskSupervisor | None = None) -> Starlette:
    """The receiver. ``apply=True`` applies in a thread of this process; ``apply=False`` only journals, and
    ``supervisor`` (if given) runs the applier as a process and restarts it (what ``serve`` does). With
    ``risk.endpoint`` set, orders are scored by threads of this process, or by the process ``risk_supervisor``
    runs: a scorer's and a write-back's (what ``serve`` does under ``risk.scorer: process``)."""
    verifier = verifier or ShopifyVerifier.from_settings(settings)
    cfg = settings.shopify
    limit = cfg.webhook_max_body_bytes
    too_large = f"body over {limit} bytes"

    async def receive(request: Request) -> JSONResponse:
        headers = first_values(request.scope["headers"])
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return _problem(413, "body_too_large", too_large, CLOSE)
        problem = header_problem(headers)
        if problem is not None:
            problem.headers.update(CLOSE)  # answered without reading the body
            return problem
        try:
            async with asyncio.timeout(cfg.webhook_body_timeout_seconds):
                raw = await read_body(request, limit)
        except BodyTooLarge:
            return _problem(413, "body_too_large", too_large, CLOSE)
        except TimeoutError:
            return _problem(408, "body_timeout", f"body not received within {cfg.webhook_body_timeout_seconds} s",
                            CLOSE)
        except ClientDisconnect:
            return _problem(400, "client_disconnected", "the client went away before sending the whole body")
        try:
            principal = verifier.verify_webhook_body(raw, headers)
        except AuthError as exc:
            detail = f"{HMAC_HEADER} is not the body's signature" if exc.code == "invalid_hmac" else exc.detail
            return _problem(401, exc.code, f"webhook rejected: {detail}")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return _problem(400, "not_utf8", "body is not UTF-8 JSON")
        topic = headers["x-shopify-topic"]
        if topic not in TOPICS and topic not in AVAILABILITY_TOPICS:
            return _problem(400, "unknown_topic", f"topic {topic!r} is not handled here; handled: "
                            f"{sorted(TOPICS | AVAILABILITY_TOPICS)}")
        try:
            payload: Any = orjson.loads(raw)  # after the HMAC; orjson refuses over 1024 levels (no recursion)
        except orjson.JSONDecodeError as exc:
            return _problem(400, "malformed_json", f"body is not valid JSON: {exc}")
        try:
            customer = check(topic, payload) if topic in TOPICS else products.check(topic, payload)
        except PayloadError as exc:
            return _problem(400, "bad_payload", str(exc))
        event = Event(webhook_id=headers["x-shopify-webhook-id"], shop=principal.shop, topic=topic,
                      body=raw, customer_id=customer, triggered_at=headers.get("x-shopify-triggered-at"))
        try:
            fresh = await request.app.state.journal.record(event)
        except Exception:  # noqa: BLE001 - not stored: Shopify must retry
            log.exception("journal write failed for webhook %s", event.webhook_id)
            return _problem(503, "journal_unavailable", "event not stored; retry later")
        return JSONResponse({"status": "accepted" if fresh else "duplicate", "webhook_id": event.webhook_id})

    async def health(request: Request) -> JSONResponse:
        state = backlog(request.app.state.reader)
        applier = request.app.state.applier_state()
        late = state.oldest_pending_seconds is not None and state.oldest_pending_seconds > cfg.apply_max_lag_seconds
        behind = applier == "down" or late
        oldest = round(state.oldest_pending_seconds, 3) if state.oldest_pending_seconds is not None else None
        answer = {"status": "ok", "applier": applier, "pending": state.pending, "oldest_pending_seconds": oldest,
                  "dead_letters": state.dead_letters}
        risk = None
        if request.app.state.risk is not None:  # scored by this process's threads
            risk = request.app.state.risk.state()
        elif risk_supervisor is not None:  # by a process of its own
            from storeflow.components.risk.realtime import risk_state

            risk = {**risk_supervisor.states(), **risk_state(settings)}
        if risk is not None:  # orders waiting for a risk score or for Shopify to take it, or no scorer or write-back,
            answer["risk"] = risk  # count as being behind too
            behind = (behind or risk.get("scorer") == "down" or risk.get("writer") == "down"
                      or (risk["oldest_unscored_seconds"] or 0) > cfg.apply_max_lag_seconds
                      or (risk["oldest_queued_seconds"] or 0) > cfg.apply_max_lag_seconds)
        answer["status"] = "behind" if behind else "ok"
        return JSONResponse(answer, status_code=503 if behind else 200)

    async def live(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(app: Starlette):
        app.state.journal = Journal(layout.journal_path(settings), cfg.journal_gather_seconds)
        app.state.reader = sqlite3.connect(layout.journal_path(settings), timeout=30)
        app.state.applier = None
        app.state.supervisor = supervisor
        app.state.applier_state = _applier_state(app)
        if apply:
            from storeflow.components.shopify.apply import Applier

            app.state.applier = Applier(settings)
            app.state.journal.listeners.append(app.state.applier.committed)
            app.state.applier.start()
        if supervisor is not None:
            if getattr(supervisor, "wake", None) is not None:  # each commit wakes the applier process (else it polls)
                app.state.journal.listeners.append(supervisor.wake)
            supervisor.start()
        app.state.risk = None
        if risk_supervisor is not None:
            from storeflow.components.risk.realtime import open_risk_db

            open_risk_db(settings).close()  # where scoring starts: before the first delivery is taken
            if getattr(risk_supervisor, "wake", None) is not None:  # each commit wakes the scorer (else it polls)
                app.state.journal.listeners.append(risk_supervisor.wake)
            risk_supervisor.start()
        elif settings.risk.endpoint:  # orders/create scored by the risk model server, assessed on Shopify
            from storeflow.components.risk.realtime import ReceiverScorer, open_risk_db

            open_risk_db(settings).close()  # where scoring starts: before the first delivery is taken
            app.state.risk = ReceiverScorer(settings, wake=threading.Event())  # built again while it cannot be
            app.state.journal.listeners.append(app.state.risk.wake)
            app.state.risk.start()
        app.state.retention = Retention(settings)  # what is past shopify.retention_days leaves the databases
        app.state.retention.start()
        try:
            yield
        finally:
            app.state.retention.stop()
            if app.state.risk is not None:
                app.state.risk.stop()
            if risk_supervisor is not None:
                risk_supervisor.stop()
            if app.state.applier:
                app.state.applier.stop()
            if supervisor is not None:
                supervisor.stop()
            app.state.journal.close()
            app.state.reader.close()

    return Starlette(routes=[Route(PATH, receive, methods=["POST"]), Route("/healthz", health, methods=["GET"]),
                             Route("/livez", live, methods=["GET"])], lifespan=lifespan)


def _applier_state(app: Starlette) -> Callable[[], str]:
    """``running`` / ``down`` for an applier this receiver runs; ``external`` when it runs none."""
    def state() -> str:
        runner = app.state.applier or app.state.supervisor
        if runner is None:
            return "external"
        up = runner.alive() if app.state.applier else runner.running
        return "running" if up else "down"
    return state


def scorer_supervisor(settings: Settings, target: Callable[..., None] | None = None) -> RiskSupervisor | None:
    """The order risk scorer's process (``target``, by default :func:`~storeflow.components.risk.realtime.run_scorer`)
    and the write-back's (:func:`~storeflow.components.risk.writeback.run_writer`) when order risk is on and
    ``risk.scorer`` is ``process``; else None (scored in the receiver's threads, or not)."""
    if not settings.risk.endpoint or settings.risk.scorer != "process":
        return None
    if target is None:
        from storeflow.components.risk.realtime import run_scorer as target
    from storeflow.components.risk.writeback import run_writer

    return RiskSupervisor(settings, target, run_writer)


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    cfg = settings.shopify
    app = create_app(settings, apply=False, supervisor=ApplierSupervisor(settings),
                     risk_supervisor=scorer_supervisor(settings))
    log.info("webhooks for %s on %s:%s%s", shop_domain(settings.project.shop_domain), host or cfg.webhook_host,
             port or cfg.webhook_port, PATH)
    run(app, host or cfg.webhook_host, port if port is not None else cfg.webhook_port,
        cfg.webhook_header_timeout_seconds)


def headers_in_time(seconds: float):
    """uvicorn's HTTP protocol (httptools), closing a connection whose request headers have not all arrived
    ``seconds`` after the connection, or after the request's first byte. uvicorn times out neither: a client
    sending a header byte now and then held its socket for ever, and ~20,000 such (the receiver's open-file
    limit) had every signed delivery and /healthz refused while they lasted (found by testing from outside).
    Bodies have their own limit (``webhook_body_timeout_seconds``); idle keep-alive connections uvicorn's."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeadersInTime(HttpToolsProtocol):
        _deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._deadline = self.loop.call_later(seconds, self._late)

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and (self.cycle is None or self.cycle.response_complete):  # a next request
                self._deadline = self.loop.call_later(seconds, self._late)
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _late(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeadersInTime


def run(app: Starlette, host: str, port: int, header_timeout: float = 10.0) -> None:
    """Take deliveries on ``app`` as ``storeflow webhooks`` does: what startup built frozen first, then uvicorn
    without access lines. Unfrozen, each full collection walks every import again: at 2,000 full-size
    deliveries/s a receiver fell behind (p99 acknowledged 100-120 ms against 17-28 ms frozen; bench/risk_throughput
    runs its receivers through here)."""
    import uvicorn

    freeze_startup_objects()  # a full collection then walks what deliveries left, not every import
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning",
                http=headers_in_time(header_timeout))
