"""The webhook receiver under hostile or broken input (issue 11): no 5xx from unauthenticated bytes, reads
bounded in size and time, a poison event parked instead of blocking the rest, health that says when the
applier is behind."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import free_port
from starlette.testclient import TestClient
from test_webhook_signing import SECRET, SHOP, delivery, order, refund
from test_webhooks import ADA, client, journal, online, post  # noqa: F401 - fixtures (hooks: conftest)

from storeflow.components.config import load_settings
from storeflow.components.shopify import layout
from storeflow.components.shopify.journal import Event, Journal, connect, read_dead_letters, requeue
from storeflow.components.shopify.webhooks import create_app

GRACE = 7390277763243
BOGUS_HMAC = "dzukRpPHVT1u4g9h6l0nV6mk9KRNKEGuTpW1LkzWLbQ="  # a well-formed digest of something else


def with_shopify(settings, **shopify):
    data = json.loads(settings.to_json())
    return load_settings({**data, "shopify": {**data.get("shopify", {}), **shopify}})


def stored_by_an_older_receiver(settings, topic: str, payload: dict, webhook_id: str) -> None:
    """Journal an event as the receiver did before it validated every field."""
    journal_ = Journal(layout.journal_path(settings))
    try:
        journal_.record_now(Event(webhook_id, SHOP, topic, json.dumps(payload).encode(), ADA))
    finally:
        journal_.close()


# --- 500s from unauthenticated or malformed input ------------------------------------------------------

@pytest.mark.parametrize(("signatures", "status"), [("signed first", 200), ("bogus first", 401)])
def test_a_repeated_header_is_read_by_its_first_value(client, hooks, signatures, status):
    """As Starlette's Headers answers a lookup: a second X-Shopify-Hmac-Sha256 (or topic) neither rescues a bogus
    first one nor spoils a good one."""
    good = delivery("orders/create", order(9001, ADA, "ada@example.com", 40.0), f"wh-{status}")
    signed = good["headers"]["X-Shopify-Hmac-Sha256"]
    first, second = (signed, BOGUS_HMAC) if signatures == "signed first" else (BOGUS_HMAC, signed)
    headers = [(k, v) for k, v in good["headers"].items() if k != "X-Shopify-Hmac-Sha256"]
    headers += [("X-Shopify-Hmac-Sha256", first), ("X-Shopify-Hmac-Sha256", second), ("X-Shopify-Topic", "shop/redact")]

    response = client.post("/webhooks", content=good["content"], headers=headers)

    assert response.status_code == status, response.text
    stored = journal(hooks, "SELECT topic FROM events")
    assert stored == ([("orders/create",)] if status == 200 else [])

def test_a_non_ascii_hmac_header_is_a_401_naming_the_header(client):
    bad = delivery("orders/create", order(9001, ADA, "ada@example.com", 40.0), "wh-1")
    bad["headers"]["X-Shopify-Hmac-Sha256"] = "\u00e9".encode() + BOGUS_HMAC[2:].encode()  # raw UTF-8 bytes

    response = client.post("/webhooks", **bad)

    assert response.status_code == 401
    assert response.json()["code"] == "invalid_hmac" and "x-shopify-hmac-sha256" in response.json()["error"]


def test_a_deeply_nested_body_with_a_bogus_hmac_is_a_4xx_not_a_crash(client, hooks):
    deep = b"[" * 5000 + b"]" * 5000
    bad = delivery("orders/create", deep, "wh-deep")
    bad["headers"]["X-Shopify-Hmac-Sha256"] = BOGUS_HMAC

    response = client.post("/webhooks", **bad)

    assert response.status_code == 401 and response.json()["code"] == "invalid_hmac"  # never parsed
    assert journal(hooks, "SELECT count(*) FROM events") == [(0,)]


def test_a_delivery_signed_with_the_old_secret_is_accepted_during_rotation(hooks):
    from storeflow.components.shopify.verify import ShopifyVerifier

    rotated = ShopifyVerifier("storeflow-test-app", "whsec-new-secret", [SHOP], old_client_secret=SECRET)
    with TestClient(create_app(hooks, verifier=rotated, apply=False)) as c:
        old = post(c, "orders/create", order(9001, ADA, "ada@example.com", 40.0), "wh-old")
        new = post(c, "orders/create", order(9002, ADA, "ada@example.com", 40.0), "wh-new", secret="whsec-new-secret")
        other = post(c, "orders/create", order(9003, ADA, "ada@example.com", 40.0), "wh-x", secret="whsec-someone-else")
    assert [old.status_code, new.status_code, other.status_code] == [200, 200, 401]


def test_a_deeply_nested_signed_body_is_a_400(client):
    response = client.post("/webhooks", **delivery("orders/create", b'{"id": 1, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                                                   "wh-deep"))
    assert response.status_code == 400 and response.json()["code"] in ("too_deep", "malformed_json")


@pytest.mark.parametrize(("topic", "change", "field"), [
    ("orders/create", {"line_items": 7}, "line_items"),
    ("orders/create", {"created_at": "yesterday"}, "created_at"),
    ("orders/create", {"total_price_set": [1]}, "total_price_set"),
    ("orders/create", {"customer": {"id": "7390245781931"}}, "customer.id"),
    ("orders/create", {"id": 2**64}, "id"),
    # finite, but two such summed to inf (a customer's monetary feature; Infinity in a data-request export)
    ("orders/create", {"total_price": "1.7e308", "total_price_set": None}, "total_price"),
    ("orders/paid", {"email": 5}, "email"),
    ("refunds/create", {"transactions": [{"kind": "refund", "amount": "lots"}]}, "transactions[0].amount"),
    ("refunds/create", {"transactions": [{"kind": "refund", "amount": "-2e12"}]}, "transactions[0].amount"),
    ("customers/redact", {"orders_to_redact": "all"}, "orders_to_redact"),
])
def test_a_signed_payload_with_a_wrong_type_is_a_400_naming_the_field(client, hooks, topic, change, field):
    base = (refund(77001, 9001, 5.0) if topic.startswith("refunds")
            else {"customer": {"id": ADA}, "orders_to_redact": []} if topic.startswith("customers")
            else order(9001, ADA, "ada@example.com", 40.0))

    response = post(client, topic, {**base, **change}, "wh-typed")

    assert response.status_code == 400, response.text
    assert response.json()["code"] == "bad_payload" and f"'{field}'" in response.json()["error"]
    assert journal(hooks, "SELECT count(*) FROM events") == [(0,)]


# --- poison events ---------------------------------------------------------------------------------------

def test_an_event_that_fails_to_apply_is_parked_and_the_later_ones_apply(client, hooks):
    bad = {**order(9001, ADA, "ada@example.com", 40.0), "created_at": "yesterday", "updated_at": None}
    stored_by_an_older_receiver(hooks, "orders/create", bad, "wh-poison")
    post(client, "orders/create", order(9002, ADA, "ada@example.com", 25.0), "wh-2")
    post(client, "orders/create", order(9003, GRACE, "grace@example.org", 60.0), "wh-3")

    client.app.state.applier.drain()

    assert online(hooks, ADA)["frequency"] == [1] and online(hooks, GRACE)["monetary"] == [pytest.approx(60.0)]
    assert journal(hooks, "SELECT webhook_id, outcome FROM events ORDER BY webhook_id") == [
        ("wh-2", "live"), ("wh-3", "live"), ("wh-poison", "dead_letter")]
    assert journal(hooks, "SELECT count(*) FROM live_orders WHERE order_id = 9001") == [(0,)]
    [parked] = read_dead_letters(layout.journal_path(hooks))
    assert parked["webhook_id"] == "wh-poison" and "created_at" in parked["reason"]
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json() | {"oldest_pending_seconds": None} == {
        "status": "ok", "applier": "running", "pending": 0, "oldest_pending_seconds": None, "dead_letters": 1}


def test_a_batch_whose_features_fail_is_split_until_only_the_bad_event_is_parked(client, hooks, monkeypatch):
    """Features are computed for the whole batch at once; a failure there (here: one customer's) must not
    hold back, or park, the other customers' events in the same batch."""
    from storeflow.components.shopify import apply

    real = apply.customer_features

    def fails_for_grace(tables, as_of, *con):
        if GRACE in set(tables["orders"]["customer_id"]):
            raise ValueError("cannot compute features for this customer")
        return real(tables, as_of, *con)

    monkeypatch.setattr(apply, "customer_features", fails_for_grace)
    client.app.state.applier.stop()  # journal everything first: one batch
    client.app.state.applier = apply.Applier(hooks)
    for i, customer in enumerate([ADA, ADA, GRACE, ADA, ADA, ADA, ADA, ADA]):
        post(client, "orders/create", order(9100 + i, customer, f"{customer}@example.com", 10.0), f"wh-{i}")

    assert client.app.state.applier.drain() == 8

    assert journal(hooks, "SELECT webhook_id FROM dead_letters") == [("wh-2",)]
    assert journal(hooks, "SELECT count(*) FROM events WHERE outcome = 'live'") == [(7,)]
    assert online(hooks, ADA)["frequency"] == [7]
    assert journal(hooks, f"SELECT count(*) FROM live_orders WHERE customer_id = {GRACE}") == [(0,)]


def test_when_every_event_fails_alike_nothing_is_parked_and_all_stay_pending(client, hooks, monkeypatch):
    """A fault in the code or config (here: features that cannot be computed for anyone) is not the
    events' fault: parking every delivery would hide it; they wait, and health says the applier is behind."""
    from storeflow.components.shopify import apply

    def broken(tables, as_of, *con):
        raise KeyError("a feature the config names but compute does not produce")

    monkeypatch.setattr(apply, "customer_features", broken)
    client.app.state.applier.stop()
    client.app.state.applier = apply.Applier(hooks)
    for i in range(20):
        post(client, "orders/create", order(9100 + i, ADA + i, f"c{i}@example.com", 10.0), f"wh-{i}")

    with pytest.raises(KeyError, match="compute does not produce"):
        client.app.state.applier.drain()

    assert journal(hooks, "SELECT count(*), count(applied_at) FROM events") == [(20, 0)]
    assert journal(hooks, "SELECT count(*) FROM dead_letters") == [(0,)]
    assert journal(hooks, "SELECT count(*) FROM live_orders") == [(0,)]  # undone with their transactions


def test_a_lone_event_that_fails_waits_until_another_applies_then_is_parked(client, hooks, monkeypatch):
    from storeflow.components.shopify import apply

    real = apply.customer_features

    def fails_for_grace(tables, as_of, *con):
        if GRACE in set(tables["orders"]["customer_id"]):
            raise ValueError("cannot compute features for this customer")
        return real(tables, as_of, *con)

    monkeypatch.setattr(apply, "customer_features", fails_for_grace)
    client.app.state.applier.stop()
    client.app.state.applier = apply.Applier(hooks)
    post(client, "orders/create", order(9100, GRACE, "grace@example.org", 10.0), "wh-grace")
    with pytest.raises(ValueError):
        client.app.state.applier.drain()
    assert journal(hooks, "SELECT outcome FROM events") == [(None,)]

    post(client, "orders/create", order(9101, ADA, "ada@example.com", 10.0), "wh-ada")
    client.app.state.applier.drain()

    assert journal(hooks, "SELECT webhook_id, outcome FROM events ORDER BY webhook_id") == [
        ("wh-ada", "live"), ("wh-grace", "dead_letter")]
    assert "cannot compute features" in read_dead_letters(layout.journal_path(hooks))[0]["reason"]


def test_a_parked_event_can_be_requeued_and_nothing_is_lost(client, hooks):
    bad = {**order(9001, ADA, "ada@example.com", 40.0), "line_items": 7}
    stored_by_an_older_receiver(hooks, "orders/create", bad, "wh-poison")
    client.app.state.applier.drain()
    conn = connect(layout.journal_path(hooks))
    try:
        assert conn.execute("SELECT body IS NOT NULL FROM events WHERE webhook_id = 'wh-poison'").fetchone() == (1,)
        conn.execute("UPDATE events SET body = ? WHERE webhook_id = 'wh-poison'",  # the merchant fixed it
                     (json.dumps({**bad, "line_items": []}).encode(),))
        assert requeue(conn) == 1
    finally:
        conn.close()

    client.app.state.applier.drain()

    assert journal(hooks, "SELECT outcome FROM events") == [("live",)] and read_dead_letters(layout.journal_path(hooks)) == []
    assert online(hooks, ADA)["frequency"] == [1]


def test_erasing_a_parked_events_body_erases_its_reason(client, hooks):
    stored_by_an_older_receiver(hooks, "orders/create", {**order(9001, ADA, "ada@example.com", 40.0), "email": 5},
                                "wh-poison")
    client.app.state.applier.drain()
    with connect(layout.journal_path(hooks)) as conn:
        conn.execute("UPDATE events SET body = NULL WHERE webhook_id = 'wh-poison'")  # what privacy erasure does
    assert [r["reason"] for r in read_dead_letters(layout.journal_path(hooks))] == ["erased"]


# --- a journal that cannot store -------------------------------------------------------------------------------

class _FailingInserts:
    """A journal connection whose inserts fail as a full or broken disk makes them."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def execute(self, sql: str, *args):
        if sql.startswith("INSERT"):
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction


def test_deliveries_the_journal_cannot_store_are_503s_and_their_retries_are_new(client, hooks):
    """Every delivery waiting on a commit that fails hears 503 (Shopify retries it); nothing is stored, so the
    retries are accepted as new, not taken for duplicates."""
    from concurrent.futures import ThreadPoolExecutor

    state = client.app.state.journal
    deliveries = [delivery("orders/create", order(9100 + i, ADA, "ada@example.com", 10.0 + i), f"wh-down-{i}")
                  for i in range(6)]
    state.conn = _FailingInserts(state.conn)
    try:
        with ThreadPoolExecutor(6) as pool:  # waiting together: answered by one failed commit or a few
            answers = list(pool.map(lambda d: client.post("/webhooks", **d), deliveries))
    finally:
        state.conn = state.conn.conn
    assert [a.status_code for a in answers] == [503] * 6
    assert {a.json()["code"] for a in answers} == {"journal_unavailable"}
    assert journal(hooks, "SELECT count(*) FROM events WHERE webhook_id LIKE 'wh-down-%'") == [(0,)]
    assert [client.post("/webhooks", **d).json()["status"] for d in deliveries] == ["accepted"] * 6


# --- health ------------------------------------------------------------------------------------------------

def test_health_says_behind_when_the_oldest_pending_event_waited_too_long(hooks):
    with TestClient(create_app(with_shopify(hooks, apply_max_lag_seconds=60), apply=False)) as c:
        post(c, "orders/create", order(9001, ADA, "ada@example.com", 40.0), "wh-1")
        assert c.get("/healthz").status_code == 200
        with connect(layout.journal_path(hooks)) as conn:
            conn.execute("UPDATE events SET received_at = '2026-01-01T00:00:00+00:00'")

        health = c.get("/healthz")
        live = c.get("/livez")

    assert health.status_code == 503
    body = health.json()
    assert (body["status"], body["pending"], body["applier"]) == ("behind", 1, "external")
    assert body["oldest_pending_seconds"] > 3600
    assert live.status_code == 200


def test_health_says_behind_when_the_applier_thread_died(client, hooks):
    client.app.state.applier.stop()
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["applier"] == "down"


# --- bounded reads ---------------------------------------------------------------------------------------------

@contextmanager
def listening(app) -> Iterator[int]:
    """The app under uvicorn (httptools, as ``storeflow webhooks`` runs it) on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "uvicorn did not start"
            threading.Event().wait(0.05)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def request_head(port: int, extra: str) -> bytes:
    headers = delivery("orders/create", b"{}", "wh-big")["headers"]
    lines = [f"POST /webhooks HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items()), extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(sock: socket.socket) -> tuple[bytes, bool]:
    """What the server answered, and whether it then closed the connection."""
    sock.setblocking(True)
    sock.settimeout(30)
    data = b""
    while True:
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            return data, True
        if not part:
            return data, True
        data += part
        if b"\r\n\r\n" in data and data.endswith(b"}"):
            try:
                more = sock.recv(1)
            except ConnectionResetError:
                return data, True
            return data, more == b""


def test_a_chunked_body_over_the_limit_is_refused_while_it_is_still_arriving(hooks):
    limit = 64 * 1024
    frame = b"%x\r\n%s\r\n" % (limit, b"a" * limit)
    frames = 1024  # 64 MiB: far more than any socket buffer on the way
    with listening(create_app(with_shopify(hooks, webhook_max_body_bytes=limit), apply=False)) as port:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request_head(port, "Transfer-Encoding: chunked"))
        sock.setblocking(False)
        sent, offset = 0, 0
        while sent < frames:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                break
            assert writable, "the server neither read nor answered"
            try:
                offset += sock.send(frame[offset:])
            except (BrokenPipeError, ConnectionResetError):
                break
            if offset == len(frame):
                sent, offset = sent + 1, 0
        else:
            sock.setblocking(True)
            sock.sendall(b"0\r\n\r\n")
        answer, closed = read_answer(sock)
        sock.close()

    assert answer.startswith(b"HTTP/1.1 413") and b"body_too_large" in answer
    assert sent < frames // 2, f"the server read {sent} of {frames} frames before answering"
    assert closed


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closed(hooks):
    with listening(create_app(with_shopify(hooks, webhook_body_timeout_seconds=0.5), apply=False)) as port:
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        for sock in socks:
            sock.sendall(request_head(port, "Content-Length: 1000") + b'{"id": 1')  # and then nothing
        answers = [read_answer(sock) for sock in socks]
        for sock in socks:
            sock.close()

    assert all(answer.startswith(b"HTTP/1.1 408") and b"body_timeout" in answer for answer, _ in answers)
    assert all(closed for _, closed in answers)


# --- a supervised applier ------------------------------------------------------------------------------------

def test_waking_a_worker_never_blocks_the_receiver_even_when_nobody_reads():
    """The receiver wakes its scorer process after every commit; with the scorer down (killed, restarting) the
    wake-ups pile up in a full pipe and the receiver's set() returns at once; one clear() takes them all."""
    from storeflow.components.shopify.supervisor import PipeWake

    wake = PipeWake()
    assert not wake.wait(0)
    for _ in range(200_000):  # far past a pipe's 64 KB
        wake.set()
    assert wake.wait(0)
    wake.clear()
    assert not wake.wait(0)
    wake.set()
    assert wake.wait(1)


@pytest.mark.slow
def test_a_killed_applier_is_restarted_and_applies_what_arrived_meanwhile(tmp_path):
    """kill -9 of the applier process under the real ``storeflow webhooks``: health says so, the receiver
    starts another one and every event delivered meanwhile is applied, without restarting the receiver."""
    port = free_port()
    (tmp_path / "none.yaml").write_text("{}\n")
    env = {**os.environ, "SHOPIFY_API_SECRET": SECRET, "STOREFLOW_CONFIG": str(tmp_path / "none.yaml")}
    cli = Path(sys.executable).with_name("storeflow")
    state = tmp_path / "state"
    receiver = subprocess.Popen([str(cli), "webhooks", "--port", str(port), "-s", f"project.state_dir={state}",
                                 "-s", f"project.shop_domain={SHOP}", "-s", "serving.shopify_client_id=test",
                                 "-s", "shopify.applier_restart_seconds=5"],
                                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        health = until(lambda: _get(f"{base}/healthz"), lambda r: r is not None and r.status_code == 200, receiver)
        assert health.json()["applier"] == "running"
        [first] = appliers(receiver.pid)
        os.kill(first, signal.SIGKILL)

        down = until(lambda: _get(f"{base}/healthz"), lambda r: r is not None and r.json()["applier"] == "down", receiver)
        assert down.status_code == 503 and down.json()["status"] == "behind"
        answers = [httpx.post(f"{base}/webhooks", **delivery("orders/create", order(9000 + i, ADA + i, f"c{i}@example.com",
                                                                                     10.0), f"wh-{i}")).status_code
                   for i in range(30)]
        caught_up = until(lambda: _get(f"{base}/healthz"),
                          lambda r: r is not None and r.status_code == 200 and r.json()["pending"] == 0, receiver)

        assert answers == [200] * 30
        assert caught_up.json() | {"oldest_pending_seconds": None} == {
            "status": "ok", "applier": "running", "pending": 0, "oldest_pending_seconds": None, "dead_letters": 0}
        assert receiver.poll() is None and len(appliers(receiver.pid)) == 1 and appliers(receiver.pid) != [first]
    finally:
        receiver.terminate()
        receiver.wait(30)
    with sqlite3.connect(state / "shopify" / "webhooks.db") as conn:
        assert conn.execute("SELECT count(*), count(applied_at), sum(outcome = 'live') FROM events").fetchone() == (30, 30, 30)
        assert conn.execute("SELECT count(*) FROM live_orders").fetchone() == (30,)


@pytest.mark.slow
def test_a_delivery_wakes_the_applier_process_rather_than_waiting_for_its_next_look(tmp_path):
    """Each journal commit wakes the applier process: with its poll set to a minute, a delivery that arrives while
    it idles is applied within seconds (before, it waited for the next poll)."""
    receiver, base = _start_webhooks(tmp_path, "shopify.apply_idle_seconds=60")
    try:
        until(lambda: _get(f"{base}/healthz"), lambda r: r is not None and r.status_code == 200, receiver)
        for n in (1, 2):  # the first applied once its process is up; the second while it idles, for up to a minute
            answer = httpx.post(f"{base}/webhooks", **delivery("orders/create", order(9500 + n, ADA, "w@example.com",
                                                                                      10.0), f"wh-wake-{n}"))
            assert answer.status_code == 200
            if n == 1:
                until(lambda: _get(f"{base}/healthz"), lambda r: r is not None and r.json()["pending"] == 0, receiver)
                time.sleep(1.0)
        applied = until(lambda: _get(f"{base}/healthz"),
                        lambda r: r is not None and r.status_code == 200 and r.json()["pending"] == 0, receiver,
                        seconds=15)
        assert applied.json()["applier"] == "running"
    finally:
        receiver.terminate()
        receiver.wait(30)


@pytest.mark.slow
def test_deliveries_arriving_together_are_applied_in_a_few_batches_not_one_each(tmp_path):
    """Woken by a commit, the applier process waits shopify.apply_gather_seconds for the deliveries that follow and
    applies them as one batch. It applied at once, so a stream of deliveries became a batch of a few each: its
    fixed cost (features recomputed, Feast's writes, a journal transaction the receiver's commits wait on) paid
    over and over, a core's worth of CPU at any rate (bench/risk_throughput --applier)."""
    receiver, base = _start_webhooks(tmp_path, "shopify.apply_gather_seconds=0.25")
    healthy = lambda r: r is not None and r.status_code == 200 and r.json()["pending"] == 0  # noqa: E731
    try:
        until(lambda: _get(f"{base}/healthz"), lambda r: r is not None and r.status_code == 200, receiver)
        with httpx.Client(base_url=base) as http:
            first = http.post("/webhooks", **delivery("orders/create", order(9600, ADA, "g@example.com", 10.0), "wh-g-0"))
            assert first.status_code == 200
            until(lambda: _get(f"{base}/healthz"), healthy, receiver)  # the applier's first batch: its start-up
            started = time.monotonic()
            for n in range(1, 81):
                answer = http.post("/webhooks", **delivery("orders/create", order(9600 + n, ADA + n % 7, "g@example.com",
                                                                                  10.0 + n), f"wh-g-{n}"))
                assert answer.status_code == 200
            sent_in = time.monotonic() - started
        until(lambda: _get(f"{base}/healthz"), healthy, receiver)
    finally:
        receiver.terminate()
        receiver.wait(30)
    with sqlite3.connect(tmp_path / "state" / "shopify" / "webhooks.db") as conn:
        stamps = [s for (s,) in conn.execute("SELECT applied_at FROM events WHERE webhook_id != 'wh-g-0'")]
    assert len(stamps) == 80 and None not in stamps
    # a batch a gather, and one for what came during the last: the same stamp for every event of a batch
    assert len(set(stamps)) <= sent_in / 0.25 + 2, f"{len(set(stamps))} batches for 80 deliveries sent in {sent_in:.2f} s"


def test_the_applier_in_the_receivers_thread_gathers_its_batches_too(hooks):
    """The same gather when the applier is a thread of the receiver (create_app(apply=True))."""
    hooks = load_settings({**json.loads(hooks.to_json()), "shopify": {"apply_gather_seconds": 0.5}})
    with TestClient(create_app(hooks), base_url="https://storeflow.example") as c:
        post(c, "orders/create", order(9700, ADA, "t@example.com", 10.0), "wh-t-0")
        deadline = time.monotonic() + 60
        while c.get("/healthz").json()["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        for n in range(1, 61):  # over two seconds or so: applied at once, a batch each time the last one ended
            body = order(9700 + n, ADA + n % 5, "t@example.com", 10.0)
            assert post(c, "orders/create", body, f"wh-t-{n}").status_code == 200
            time.sleep(0.03)
        sent_in = time.monotonic() - started
        while c.get("/healthz").json()["pending"] and time.monotonic() < deadline + 60:
            time.sleep(0.05)
    stamps = [s for (s,) in journal(hooks, "SELECT applied_at FROM events WHERE webhook_id != 'wh-t-0'")]
    assert len(stamps) == 60 and None not in stamps
    batches = len(set(stamps))
    assert batches <= sent_in / 0.5 + 2, f"{batches} batches for 60 deliveries sent in {sent_in:.2f} s"


def _start_webhooks(tmp_path: Path, *overrides: str) -> tuple[subprocess.Popen, str]:
    """``storeflow webhooks`` as it is run (its applier a process of its own), state under ``tmp_path``."""
    port = free_port()
    (tmp_path / "none.yaml").write_text("{}\n")
    env = {**os.environ, "SHOPIFY_API_SECRET": SECRET, "STOREFLOW_CONFIG": str(tmp_path / "none.yaml")}
    cli = Path(sys.executable).with_name("storeflow")
    settings = [f"project.state_dir={tmp_path / 'state'}", f"project.shop_domain={SHOP}",
                "serving.shopify_client_id=test", *overrides]
    receiver = subprocess.Popen([str(cli), "webhooks", "--port", str(port), *(a for o in settings for a in ("-s", o))],
                                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return receiver, f"http://127.0.0.1:{port}"


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None


def until(probe, done, process: subprocess.Popen, seconds: float = 180):
    """Probe until ``done`` (a correctness deadline, not a speed target: generous on a loaded machine)."""
    deadline = time.monotonic() + seconds
    while True:
        result = probe()
        if done(result):
            return result
        assert process.poll() is None, "the receiver exited"
        assert time.monotonic() < deadline, f"gave up waiting; last answer: {result and result.text}"
        time.sleep(0.1)


def appliers(pid: int) -> list[int]:
    """The receiver's spawned children (not multiprocessing's resource tracker), whichever thread started them."""
    found = []
    for child in " ".join(p.read_text() for p in Path(f"/proc/{pid}/task").glob("*/children")).split():
        cmdline = open(f"/proc/{child}/cmdline", "rb").read()
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(child))
    return found


@pytest.mark.slow
def test_the_applier_process_indexes_the_newest_snapshot_before_any_delivery(tmp_path):
    """A large store's index takes seconds to build (components/snapshot_index.py): the applier process builds it when
    it starts, not in the first batch, whose deliveries would wait for it."""
    from conftest import small_store, write_snapshot

    from storeflow.components.ingest.snapshot import MANIFEST

    snapshot = write_snapshot(small_store(customers=20), tmp_path / "state" / "data" / "snapshots" / "s1")
    (snapshot / MANIFEST).write_text(json.dumps({"ingested_at": "2026-12-01T00:00:00+00:00"}))
    receiver, base = _start_webhooks(tmp_path)
    try:
        until(lambda: [p for p in snapshot.glob(".index-*") if ".building-" not in p.name], bool, receiver, seconds=120)
        assert httpx.get(f"{base}/healthz", timeout=5).json()["pending"] == 0  # no delivery was sent
    finally:
        receiver.terminate()
        receiver.wait(30)


def test_a_client_whose_headers_never_end_is_closed_and_deliveries_go_on(tmp_path):
    """uvicorn timed out neither a connection sending nothing nor headers sent a byte at a time: each held a socket
    for ever, and enough of them (the open-file limit) had every signed delivery refused while they lasted."""
    receiver, url = _start_webhooks(tmp_path, "shopify.webhook_header_timeout_seconds=1")
    try:
        until(lambda: _get(f"{url}/healthz"), lambda r: r is not None and r.status_code == 200, receiver, 60)
        port = int(url.rsplit(":", 1)[1])
        silent = socket.create_connection(("127.0.0.1", port))
        dripping = socket.create_connection(("127.0.0.1", port))
        dripping.sendall(b"POST /webhooks HTTP/1.1\r\nHost: x\r\n")
        closed = {"silent": False, "dripping": False}
        deadline = time.monotonic() + 15
        for sock in (silent, dripping):
            sock.settimeout(0.3)
        while not all(closed.values()) and time.monotonic() < deadline:
            for name, sock in (("silent", silent), ("dripping", dripping)):
                if closed[name]:
                    continue
                if name == "dripping":
                    try:
                        sock.sendall(b"X")  # a header byte now and then, never the end of the headers
                    except OSError:
                        closed[name] = True
                        continue
                try:
                    closed[name] = sock.recv(1024) == b""
                except socket.timeout:
                    pass
                except OSError:
                    closed[name] = True
        assert closed == {"silent": True, "dripping": True}
        with httpx.Client() as client:  # a keep-alive client's requests are answered as before
            for _ in range(3):
                assert client.get(f"{url}/healthz", timeout=5).status_code == 200
                time.sleep(0.5)
    finally:
        receiver.terminate()
        receiver.wait(timeout=30)
