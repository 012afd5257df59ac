"""Order risk when the online store (Redis in production) fails the scorer: restarted without persistence, found
empty by the next pass; down when the receiver starts its scorer."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import redis_server as throwaway
from redis_server import redis_server
from test_risk_realtime import _answering, _journal, new_order
from test_webhook_signing import SECRET, SHOP, delivery

from storeflow.components.config import load_settings
from tests.conftest import free_port, quick_overrides

STORE = {"customers": 200, "orders": 2000, "products": 20, "seed": 3}


def test_a_redis_restarted_empty_is_seeded_again_before_the_next_order_is_counted(tmp_path: Path) -> None:
    """Redis emptied under a running scorer: the customers' ledgers were gone, and until the next snapshot or a
    restart of the scorer every returning customer was scored as a first-time one (198 prior orders became 0). The
    next pass finds the seed marker gone and seeds the ledgers from the snapshot again before counting."""
    import redis

    from storeflow.components.ingest import ingest
    from storeflow.components.risk.realtime import RiskScorer

    with redis_server(tmp_path) as address:
        settings = load_settings(quick_overrides(
            tmp_path, risk={"endpoint": "http://risk.test"}, ingest={"source": "synthetic", "synthetic": STORE},
            features={"feast": {"online_store": "redis", "redis_connection_string": address}}))
        snapshot = ingest(settings).snapshot
        orders = pd.read_parquet(Path(snapshot) / "orders.parquet", columns=["customer_id"])
        customer, known = orders["customer_id"].value_counts().index[0], orders["customer_id"].value_counts().iloc[0]
        seen: list = []
        scorer = RiskScorer(settings, http=_answering(seen))
        try:
            _journal(settings, ("first", "orders/create", new_order(9400000001, int(customer), "c@example.com")))
            assert scorer.score_pending() == 1 and seen[-1]["prior_orders"] == known

            host, port = address.split(":")
            redis.Redis(host=host, port=int(port)).flushall()  # restarted without persistence
            later = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()
            _journal(settings, ("second", "orders/create", new_order(9400000002, int(customer), "c@example.com",
                                                                     created_at=later, updated_at=later)))
            assert scorer.score_pending() == 1
        finally:
            scorer.stop()
    # the snapshot's orders again (the live one before it is not: the scorer keeps its keys, not its price)
    assert seen[-1]["order_id"] == "9400000002" and seen[-1]["prior_orders"] == known


class _RiskServer(ThreadingHTTPServer):
    """A risk model server answering every order MEDIUM (KServe V1)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Predict)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Predict(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        instances = json.loads(self.rfile.read(int(self.headers["content-length"])))["instances"]
        body = json.dumps({"model_name": "storeflow-order-risk", "model_version": "4", "predictions": [
            {"order_id": i["order_id"], "score": 0.5, "level": "MEDIUM",
             "facts": [{"description": "Risk score 0.500", "sentiment": "NEUTRAL"}]} for i in instances]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_thread_scorer_the_online_store_kept_from_starting_says_so_and_starts_once_it_can(tmp_path: Path,
                                                                                         monkeypatch) -> None:
    """Under risk.scorer: thread, Redis down when the receiver started: building the scorer failed once, the receiver
    took webhooks with no scorer for as long as it ran (no order assessed until someone restarted it) and /healthz
    said ok, with no order risk in it at all. Now /healthz says the scorer is down and why (503 behind), the scorer
    is built again with backoff, and the order delivered meanwhile is scored once Redis is up."""
    from starlette.testclient import TestClient

    from storeflow.components.shopify.webhooks import create_app

    monkeypatch.setenv("SHOPIFY_API_SECRET", SECRET)
    monkeypatch.delenv("SHOPIFY_ACCESS_TOKEN", raising=False)  # assessments stay queued: nothing to write back to
    port = free_port()
    server = _RiskServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = load_settings(quick_overrides(
        tmp_path, project={"state_dir": str(tmp_path / "state"), "shop_domain": SHOP},
        serving={"shopify_client_id": "storeflow-test-app"}, shopify={"max_backoff_seconds": 0.5},
        risk={"endpoint": server.url, "scorer": "thread", "retry_seconds": 0.1},
        features={"feast": {"online_store": "redis", "redis_connection_string": f"127.0.0.1:{port}"}}))
    try:
        with TestClient(create_app(settings, apply=False)) as client:
            down = client.get("/healthz")
            assert down.status_code == 503 and down.json()["status"] == "behind", down.json()
            assert down.json()["risk"]["scorer"] == "down" and "ConnectionError" in down.json()["risk"]["last_error"]
            order = new_order(9400000101, 101, "t@example.com")
            assert client.post("/webhooks", **delivery("orders/create", order, "t1")).status_code == 200
            monkeypatch.setattr(throwaway, "_free_port", lambda: port)
            with redis_server(tmp_path):  # Redis up on the port the scorer was given
                deadline = time.monotonic() + 60
                while (risk := client.get("/healthz").json()["risk"])["queued"] != 1:
                    assert time.monotonic() < deadline, risk
                    time.sleep(0.1)
    finally:
        server.shutdown()
        server.server_close()
    assert risk.get("scorer") != "down" and risk["unscored"] == 0


def test_a_redis_that_accepts_and_never_answers_fails_the_pass_rather_than_holding_it_for_ever(tmp_path: Path) -> None:
    """A Redis that takes connections and never answers (hung, or a failover's old address black-holed): the
    scorer's read waited for ever, with no timeout anywhere, so the scorer never failed, never logged, never
    recovered once Redis was back. Now the read times out (features.feast.redis_timeout_seconds): the pass fails
    with why, and the loop retries on a fresh connection."""
    import socket

    import redis

    from storeflow.components.risk.realtime import RiskScorer

    with redis_server(tmp_path) as address:
        settings = load_settings(quick_overrides(
            tmp_path, risk={"endpoint": "http://risk.test"},
            features={"feast": {"online_store": "redis", "redis_connection_string": address,
                                "redis_timeout_seconds": 1}}))
        seen: list = []
        scorer = RiskScorer(settings, http=_answering(seen))
        _journal(settings, ("a", "orders/create", new_order(9600000001, 1, "a@example.com")))
        assert scorer.score_pending() == 1
    hole = socket.socket()  # Redis gone; on its port, something that accepts and never answers
    hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hole.bind(("127.0.0.1", int(address.split(":")[1])))
    hole.listen(64)
    outcome: list = []

    def score() -> None:
        try:
            outcome.append(scorer.score_pending())
        except Exception as exc:  # noqa: BLE001 - what the scorer's loop would log and retry
            outcome.append(exc)

    try:
        _journal(settings, ("b", "orders/create", new_order(9600000002, 2, "b@example.com")))
        worker = threading.Thread(target=score, daemon=True)
        worker.start()
        worker.join(120)  # a hang guard, far above the 1 s timeout
        assert not worker.is_alive(), "the scorer's pass is still waiting on a Redis that never answers"
    finally:
        hole.close()
        if not worker.is_alive():
            scorer.stop()
    assert len(outcome) == 1 and isinstance(outcome[0], redis.exceptions.TimeoutError), outcome
