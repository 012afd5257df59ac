"""The order risk write-back when Shopify's Admin API fails it, from outside: the write-back loop
(risk/writeback.py) and the Admin API client against answers a real Admin API or what stands in front of it gives
(a revoked token, an outage, a page that is not GraphQL), served on 127.0.0.1."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fake_admin import running

from storeflow.components.config import load_settings
from storeflow.components.shopify import assessments

SHOP = "kettle-and-leaf.myshopify.com"
REVOKED = b'{"errors":"[API] Invalid API key or access token (unrecognized login or wrong password)"}'


class Answers(ThreadingHTTPServer):
    """Answers every POST with ``status`` and ``body`` (bytes, as sent), ``headers`` too; counts the requests."""

    daemon_threads = True

    def __init__(self, status: int, body: bytes, headers: dict | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.origin = f"http://127.0.0.1:{self.server_address[1]}"
        self.status, self.body, self.headers = status, body, headers or {}
        self.requests = 0


class _Handler(BaseHTTPRequestHandler):
    server: Answers

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self.server.requests += 1
        self.send_response(self.server.status)
        for name, value in self.server.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)


def _until(what, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def _failing(settings) -> str | None:
    from storeflow.components.risk.realtime import risk_state

    return risk_state(settings)["last_error"]


@pytest.mark.parametrize(("status", "body", "token", "why"), [
    (401, REVOKED, "shpat_revoked", "HTTP 401"),  # the app uninstalled: its token revoked
    (503, b'{"errors":"Service Unavailable"}', "shpat_test", "HTTP 503"),
    (200, b"{}", None, "SHOPIFY_ACCESS_TOKEN"),  # no credentials given to the receiver
], ids=["revoked-token", "shopify-down", "no-credentials"])
def test_a_write_back_shopify_refuses_backs_off_and_says_why(tmp_path, monkeypatch, caplog, status, body, token,
                                                              why) -> None:
    """Every drain that could send nothing was taken as an empty outbox: the loop asked again at its next wake-up
    (0.2 s, and every scored batch), for as long as the token stayed revoked, logged nothing, and /healthz showed no
    error. Now it backs off (risk.retry_seconds, doubling), logs why and /healthz says it."""
    from storeflow.components.risk.realtime import open_risk_db
    from storeflow.components.risk.writeback import WriteBack

    if token is None:
        monkeypatch.delenv("SHOPIFY_ACCESS_TOKEN", raising=False)
    else:
        monkeypatch.setenv("SHOPIFY_ACCESS_TOKEN", token)
    with running(Answers(status, body)) as shopify:
        settings = load_settings({
            "project": {"state_dir": str(tmp_path / "state"), "shop_domain": SHOP},
            "shopify": {"admin_origin": shopify.origin, "max_retries": 0, "apply_idle_seconds": 0.01},
            "risk": {"endpoint": "http://risk.test", "retry_seconds": 3600}})  # one failure: an hour's wait
        open_risk_db(settings).close()
        with sqlite3.connect(tmp_path / "state" / "shopify" / "risk.db") as db:
            assessments.enqueue(db, 5001, "HIGH", [], "3")
        stop = threading.Event()
        writer = WriteBack(settings, stop=stop)
        with caplog.at_level(logging.WARNING, logger="storeflow.components.risk.writeback"):
            writer.start()
            try:
                error = _until(lambda: _failing(settings))
                failed_with = shopify.requests  # the requests of the drain that failed
                time.sleep(0.5)  # fifty wake-ups at 0.01 s
                requests = shopify.requests
            finally:
                writer.stop()
    assert why in error and ("1 assessment(s) wait" in error or "stay queued" in error)
    assert requests == failed_with and (requests > 0) == (token is not None)  # then the backoff: none more
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and why in warnings[0]


def test_the_write_back_says_nothing_once_shopify_takes_assessments_again(tmp_path, monkeypatch) -> None:
    """Shopify back (the outage over): the next drain sends what waited and the error is gone from /healthz."""
    from storeflow.components.risk.realtime import open_risk_db
    from storeflow.components.risk.writeback import WriteBack

    monkeypatch.setenv("SHOPIFY_ACCESS_TOKEN", "shpat_test")
    from test_risk_writeback import FakeAdmin

    with running(FakeAdmin()) as shopify:
        settings = load_settings({
            "project": {"state_dir": str(tmp_path / "state"), "shop_domain": SHOP},
            "shopify": {"admin_origin": shopify.origin, "max_retries": 0, "apply_idle_seconds": 0.01},
            "risk": {"endpoint": "http://risk.test", "retry_seconds": 0.05}})
        open_risk_db(settings).close()
        with sqlite3.connect(tmp_path / "state" / "shopify" / "risk.db") as db:
            assessments.enqueue(db, 5002, "LOW", [], "3")
        shopify.down = True
        writer = WriteBack(settings)
        writer.start()
        try:
            assert "503" in _until(lambda: _failing(settings))
            shopify.down = False
            _until(lambda: len(shopify.created) == 1 and _failing(settings) is None)
        finally:
            writer.stop()
    assert [c["orderId"] for c in shopify.created] == ["gid://shopify/Order/5002"]


@pytest.mark.parametrize("lost", [500, 502, 504, "cut"])
def test_a_document_whose_answer_is_lost_is_not_sent_again_blind(tmp_path, lost) -> None:
    """Shopify ran the mutation and its answer was lost (a gateway's 5xx, the connection cut): the client sent the
    same document again at once (and shopifyapp twice more itself for 502-504), so every order of it was assessed
    twice. Now the drain stops there, and the next one asks Shopify first: each order is assessed once."""
    from fake_admin import admin_client
    from test_risk_writeback import FakeAdmin

    class Lossy(FakeAdmin):
        """Runs the first mutation document, then loses its answer."""

        lose = True

        def respond(self, body: dict) -> tuple[int, dict]:
            status, answer = super().respond(body)
            if self.lose and "orderRiskAssessmentCreate" in body["query"]:
                self.lose = False
                if lost == "cut":
                    raise ConnectionResetError("cut before the answer")
                return lost, {"errors": "Bad gateway"}
            return status, answer

    db = assessments.connect(tmp_path / "risk.db")
    for order in (5101, 5102, 5103):
        assessments.enqueue(db, order, "HIGH", [], "3")
    with running(Lossy()) as shopify:
        client = admin_client(shopify, SHOP)
        try:
            first = assessments.drain(db, client)
            second = assessments.drain(db, client)
        finally:
            client.close()
    assert first.error and (first.sent, first.pending) == (0, 3)
    assert (second.sent, second.already_assessed, second.pending) == (0, 3, 0)
    assert sorted(c["orderId"] for c in shopify.created) == [f"gid://shopify/Order/{o}" for o in (5101, 5102, 5103)]


@pytest.mark.parametrize(("answer", "said"), [
    (b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>", "<!DOCTYPE html>"),  # a proxy's page
    (b'{"data": {"a0": {"orderRiskAssessment": {"riskLevel": "ME', '{"data": {"a0"'),  # the answer cut short
    (b'{"data": {}}', "held no answer for it"),  # an answer holding nothing for the orders sent
], ids=["html-page", "cut-short", "no-alias"])
def test_an_answer_that_is_not_graphql_is_an_error_naming_it_and_nothing_is_assessed_twice(tmp_path, answer,
                                                                                          said) -> None:
    """A 200 whose body was no GraphQL answer was taken as an answer holding nothing: the orders stayed pending with
    no error recorded, nothing was logged and /healthz said nothing. Now each order waits with what came back as its
    error (a failed drain: the write-back backs off and says it), and as the document may have run, it asks Shopify
    before going again."""
    from fake_admin import admin_client
    from test_risk_writeback import FakeAdmin

    class Garbled(FakeAdmin):
        """Runs the first mutation document, and answers it with ``answer``."""

        garble = True

        def respond(self, body: dict) -> tuple[int, dict | bytes]:
            status, reply = super().respond(body)
            if self.garble and "orderRiskAssessmentCreate" in body["query"]:
                self.garble = False
                return 200, answer
            return status, reply

    db = assessments.connect(tmp_path / "risk.db")
    for order in (5201, 5202):
        assessments.enqueue(db, order, "MEDIUM", [], "3")
    with running(Garbled()) as shopify:
        client = admin_client(shopify, SHOP)
        try:
            first = assessments.drain(db, client)
            errors = [error for (error,) in db.execute("SELECT last_error FROM risk_outbox")]
            second = assessments.drain(db, client)
        finally:
            client.close()
    assert (first.sent, first.pending) == (0, 2)
    assert len(errors) == 2 and all(said in (error or "") for error in errors), errors
    assert (second.sent, second.already_assessed, second.pending) == (0, 2, 0)
    assert sorted(c["orderId"] for c in shopify.created) == ["gid://shopify/Order/5201", "gid://shopify/Order/5202"]


def test_healthz_says_behind_while_assessments_wait_for_shopify(tmp_path, monkeypatch) -> None:
    """Shopify down for hours (or the app's token revoked): no order was assessed, and /healthz said ok (200) for
    as long, queued growing, whatever the wait. The oldest queued assessment's wait is now shown and, past
    shopify.apply_max_lag_seconds, /healthz says behind (503), as for orders waiting for their score."""
    from starlette.testclient import TestClient
    from test_webhook_signing import SECRET

    from storeflow.components.risk.realtime import open_risk_db
    from storeflow.components.shopify.webhooks import create_app

    monkeypatch.setenv("SHOPIFY_API_SECRET", SECRET)
    monkeypatch.delenv("SHOPIFY_ACCESS_TOKEN", raising=False)  # nothing to write back with: they stay queued
    settings = load_settings({
        "project": {"state_dir": str(tmp_path / "state"), "shop_domain": SHOP},
        "serving": {"shopify_client_id": "storeflow-test-app"},
        "shopify": {"apply_max_lag_seconds": 120},
        "risk": {"endpoint": "http://127.0.0.1:9", "scorer": "thread"}})
    with closing(open_risk_db(settings)) as db:
        assessments.enqueue(db, 5301, "HIGH", [], "3")
        db.execute("UPDATE risk_outbox SET enqueued_at = enqueued_at - 3 * 3600")  # queued three hours ago
    with TestClient(create_app(settings, apply=False)) as client:
        health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["status"] == "behind", health.json()
    assert health.json()["risk"]["queued"] == 1 and health.json()["risk"]["oldest_queued_seconds"] >= 3 * 3600



@pytest.mark.parametrize(("retry_after", "waited"), [
    ("7", (7.0, 7.0)),
    ("2.5", (2.5, 2.5)),  # Shopify's REST limits send 2.0
    (30, (25.0, 30.0)),  # an HTTP date 30 s ahead
    ("86400", (60.0, 60.0)),  # a day: held to shopify.max_backoff_seconds
    ("soon", (1.0, 1.0)),  # unreadable: the client's own backoff
], ids=["seconds", "fraction", "http-date", "huge", "garbage"])
def test_a_429_is_retried_when_its_retry_after_says(tmp_path, retry_after, waited) -> None:
    """shopifyapp looks Retry-After up by a name its lower-cased headers never have: a 429 was retried after 1 s
    whatever Shopify asked. The client now waits what Retry-After says, seconds or an HTTP date, at most
    shopify.max_backoff_seconds (the wait asked of the client's sleep, not timed)."""
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    from test_risk_writeback import FakeAdmin

    from storeflow.components.shopify.admin import AdminClient, Credentials

    class Limited(FakeAdmin):
        limited = True

        def answer(self, body: dict):
            if self.limited:
                self.limited = False
                return 429, b'{"errors":"Exceeded 2 calls per second for api client. Reduce request rates."}'
            return super().answer(body)

    if isinstance(retry_after, int):
        retry_after = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=retry_after), usegmt=True)
    waits: list[float] = []
    db = assessments.connect(tmp_path / "risk.db")
    assessments.enqueue(db, 5401, "LOW", [], "3")
    with running(Limited()) as shopify:
        shopify.retry_after = retry_after
        settings = load_settings({"shopify": {"admin_origin": shopify.origin, "max_retries": 2}})
        client = AdminClient(settings, Credentials(SHOP, "shpat_test"), sleep=waits.append)
        try:
            assert assessments.drain(db, client).sent == 1
        finally:
            client.close()
    assert waited[0] <= waits[0] <= waited[1] and len(shopify.created) == 1


def test_a_restarted_write_back_does_not_leave_its_predecessors_error_in_healthz(tmp_path, monkeypatch) -> None:
    """The write-back's process killed (or restarted by the receiver) while Shopify failed: the new one cleared only
    errors of its own, so once Shopify took assessments again /healthz kept showing the old one's error for good."""
    from storeflow.components.risk.realtime import open_risk_db
    from storeflow.components.risk.writeback import WriteBack, record_failing
    from test_risk_writeback import FakeAdmin

    monkeypatch.setenv("SHOPIFY_ACCESS_TOKEN", "shpat_test")
    with running(FakeAdmin()) as shopify:
        settings = load_settings({
            "project": {"state_dir": str(tmp_path / "state"), "shop_domain": SHOP},
            "shopify": {"admin_origin": shopify.origin, "max_retries": 0, "apply_idle_seconds": 0.01},
            "risk": {"endpoint": "http://risk.test"}})
        with closing(open_risk_db(settings)) as db:
            assessments.enqueue(db, 5501, "LOW", [], "3")
            record_failing(db, "write_back", "1 assessment(s) wait: ... HTTP 503")  # the killed one's last word
        writer = WriteBack(settings)
        writer.start()
        try:
            _until(lambda: len(shopify.created) == 1)
            _until(lambda: _failing(settings) is None, timeout=10)
        finally:
            writer.stop()


def test_a_restarted_scorer_leaves_the_write_backs_error_in_healthz(tmp_path) -> None:
    """The scorer's process restarted (a crash, an OOM kill) while the write-back failed on Shopify: the new scorer
    cleared every loop's error, the write-back's too, and /healthz said no error while assessments still waited."""
    from storeflow.components.risk.realtime import RiskScorer, open_risk_db
    from storeflow.components.risk.writeback import record_failing

    settings = load_settings({"project": {"state_dir": str(tmp_path / "state"), "shop_domain": SHOP},
                              "risk": {"endpoint": "http://risk.test"}})
    with closing(open_risk_db(settings)) as db:
        record_failing(db, "scoring", "risk server http://risk.test: ConnectError")  # the dead scorer's
        record_failing(db, "write_back", "1 assessment(s) wait: ... HTTP 401")  # the running write-back's
    scorer = RiskScorer(settings)  # the scorer's process, started again
    try:
        assert "HTTP 401" in (_failing(settings) or "")
    finally:
        scorer.stop()
