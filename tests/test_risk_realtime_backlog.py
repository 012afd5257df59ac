"""Under a steady stream of orders the receiver's risk loop writes each batch's assessments back as soon as the
batch is scored, not once the whole backlog is: an order's mutation never waits for orders that arrived after it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from storeflow.components.config import load_settings
from storeflow.components.risk.protocol import MAX_INSTANCES
from storeflow.components.risk.realtime import BATCH, RiskScorer
from test_risk_realtime import _answering, _journal, new_order
from tests.conftest import quick_overrides


def test_assessments_go_out_batch_by_batch_while_a_backlog_is_scored(tmp_path):
    settings = load_settings(quick_overrides(tmp_path, risk={"endpoint": "http://risk.test"}))
    seen: list = []
    requests: list[int] = []
    scorer = RiskScorer(settings, http=_answering(seen, requests))
    queued_at_each_drain: list[int] = []

    def drain():
        queued_at_each_drain.append(scorer.db.execute("SELECT count(*) FROM risk_outbox").fetchone()[0])

    scorer.drain = drain
    try:
        orders = 2 * BATCH + 50
        _journal(settings, *((f"w{i}", "orders/create", new_order(9300000000 + i, i, f"c{i}@example.com"))
                             for i in range(orders)))
        assert scorer.step() == orders
        assert queued_at_each_drain == [BATCH, 2 * BATCH, orders]  # before: [250], once the backlog was scored
        # a batch goes to the risk server in as few requests as it takes (it refuses more than MAX_INSTANCES)
        per_batch = -(-BATCH // MAX_INSTANCES)
        assert max(requests) <= MAX_INSTANCES and sum(requests) == orders and len(requests) == 2 * per_batch + 1
        assert scorer.step() == 0 and queued_at_each_drain[-1] == orders  # idle: what a failed drain left goes out
    finally:
        scorer.stop()


def test_a_backlog_is_scored_in_batches_with_each_orders_features_as_if_one_by_one(tmp_path):
    """One features query and one risk server request per batch; every order's features equal those it gets
    scored alone after the orders before it were recorded (same customer, email and address velocity)."""
    settings = load_settings(quick_overrides(tmp_path / "batched", risk={"endpoint": "http://risk.test"}))
    alone = load_settings(quick_overrides(tmp_path / "alone", risk={"endpoint": "http://risk.test"}))
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
    events = [(f"w{i}", "orders/create", new_order(9400000000 + i, i % 7, f"c{i % 5}@example.com",
                                                   created_at=(start + timedelta(minutes=i)).isoformat()))
              for i in range(40)]
    batched_seen: list = []
    requests: list[int] = []
    scorer = RiskScorer(settings, http=_answering(batched_seen, requests))
    scorer.drain = lambda: None
    one_seen: list = []
    single = RiskScorer(alone, http=_answering(one_seen))
    single.drain = lambda: None
    try:
        _journal(settings, *events)
        assert scorer.step() == 40 and requests == [40]
        for event in events:  # one delivery at a time: each scored after the ones before were recorded
            _journal(alone, event)
            single.step()
        assert len(one_seen) == 40 and batched_seen == one_seen
        assert max(i["customer_orders_24h"] for i in one_seen) >= 5  # the batch's orders saw each other
    finally:
        scorer.stop()
        single.stop()


class _WaitingShopify:
    """An Admin API client whose answers wait until released (Shopify's cost bucket refilling); then every alias of
    a document is created."""

    def __init__(self):
        import threading

        self.release = threading.Event()
        self.last_cost: dict = {}
        self.created: list[str] = []

    def execute(self, query: str, variables: dict | None = None, repeat: bool = True) -> dict:
        self.release.wait(30)
        self.created += [given["orderId"] for given in (variables or {}).values()]
        return {alias: {"orderRiskAssessment": {}, "userErrors": []} for alias in (f"a{j}" for j in range(len(variables)))}

    def close(self) -> None:
        pass


def test_orders_are_scored_while_the_write_back_waits_on_shopify(tmp_path):
    import time

    settings = load_settings(quick_overrides(tmp_path, risk={"endpoint": "http://risk.test"}))
    shopify = _WaitingShopify()
    scorer = RiskScorer(settings, http=_answering([]), admin=shopify)

    def queued(n: int) -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if scorer.state()["queued"] >= n:
                return True
            time.sleep(0.05)
        return False

    scorer.start()
    try:
        _journal(settings, *((f"x{i}", "orders/create", new_order(9500000000 + i, i, f"x{i}@example.com"))
                             for i in range(5)))
        assert queued(5)  # scored; their write-back now waits on Shopify
        _journal(settings, *((f"y{i}", "orders/create", new_order(9500000100 + i, 100 + i, f"y{i}@example.com"))
                             for i in range(5)))
        assert queued(10), "the orders that arrived meanwhile were not scored"  # before: scoring waited too
        assert shopify.created == []
        shopify.release.set()
        deadline = time.monotonic() + 20
        while scorer.state()["sent"] < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scorer.state()["sent"] == 10 and len(set(shopify.created)) == len(shopify.created) == 10
    finally:
        shopify.release.set()
        scorer.stop()


def test_stop_does_not_wait_out_shopifys_backoff(tmp_path, monkeypatch):
    """Stopping the scorer while Shopify answers 503 returns at once, the assessment still queued; the client's
    backoff (1, 2, 4 ... up to 60 s, 8 retries) held stop() for over a minute."""
    import sqlite3
    import threading
    import time
    from contextlib import closing

    from fake_admin import running
    from storeflow.components.shopify import assessments
    from storeflow.components.shopify.assessments import Fact
    from test_risk_writeback import FakeAdmin

    with running(FakeAdmin()) as shopify:
        shopify.down = True
        monkeypatch.setenv("SHOPIFY_ACCESS_TOKEN", "shpat_test")
        settings = load_settings(quick_overrides(tmp_path, risk={"endpoint": "http://risk.test"},
                                                 shopify={"admin_origin": shopify.origin}))
        scorer = RiskScorer(settings, http=_answering([]))
        assessments.enqueue(scorer.db, 9500000001, "HIGH", [Fact("Shipping country differs", "NEGATIVE")], "1")
        calls: list[dict] = []
        answer = shopify.answer
        shopify.answer = lambda body: (calls.append(body), answer(body))[1]
        scorer.start()
        deadline = time.monotonic() + 30
        while not calls:  # the write-back has met the outage
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.5)  # into the client's backoff
        stopping = threading.Thread(target=scorer.stop)
        stopping.start()
        stopping.join(10)
        assert not stopping.is_alive(), "stop() waited for Shopify's backoff"
    with closing(sqlite3.connect(tmp_path / "state" / "shopify" / "risk.db")) as db:
        assert db.execute("SELECT state FROM risk_outbox").fetchall() == [("pending",)]


def test_a_pass_asks_the_outbox_once_and_a_second_delivery_of_an_order_is_not_scored_again(tmp_path):
    """Which of a pass's orders were queued already (a second delivery, under another webhook id) is one query a
    pass, not one an order (3-5 % of the scorer's CPU); an order queued in an earlier pass, or earlier in the same
    one, is still scored once and queued once."""
    settings = load_settings(quick_overrides(tmp_path, risk={"endpoint": "http://risk.test"}))
    seen: list = []
    scorer = RiskScorer(settings, http=_answering(seen))
    scorer.drain = lambda: None
    asked: list[str] = []
    scorer.db.set_trace_callback(lambda sql: asked.append(sql) if "FROM risk_outbox WHERE order_id" in sql else None)
    first = new_order(9500000000, 1, "a@example.com")
    try:
        _journal(settings, ("w-first", "orders/create", first))
        assert scorer.step() == 1
        asked.clear()
        later = [new_order(9500000001 + i, 2 + i, f"b{i}@example.com") for i in range(20)]
        _journal(settings, *((f"w{i}", "orders/create", order) for i, order in enumerate(later)),
                 ("w-first-again", "orders/create", first), ("w3-again", "orders/create", later[3]))
        assert scorer.step() == 22
        assert len(asked) == 1  # before: one per order, 22
        assert sorted(int(i["order_id"]) for i in seen) == sorted([first["id"], *(o["id"] for o in later)])
        (queued,) = scorer.db.execute("SELECT count(*) FROM risk_outbox").fetchone()
        assert queued == 21
    finally:
        scorer.stop()
