"""A store's webhooks interleave: each order's orders/paid and orders/updated (and refunds) come between later
orders' creates. The scorer recorded each such delivery on its own, which ended the batch there: with two follow-ups
an order, every order was scored alone (one features query and one risk server request each). Now a delivery that
changes nothing a later order of the batch reads waits for the batch and is recorded in its transaction; the
features every order is scored with are those of handling the journal strictly in order."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from storeflow.components.config import load_settings
from tests.conftest import quick_overrides
from test_risk_realtime import NAME, _answering, _journal

BASE = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)


def order(order_id: int, customer: int | None, email: str | None, street: str, minute: int, **fields) -> dict:
    at = (BASE + timedelta(minutes=minute)).isoformat()
    return {
        "id": order_id, "email": email, "created_at": at, "updated_at": at, "currency": "USD",
        "financial_status": "pending", "total_price": "120.00", "subtotal_price": "120.00", "total_discounts": "0.00",
        "payment_gateway_names": ["shopify_payments"],
        "customer": None if customer is None else {"id": customer, "email": email,
                                                   "created_at": (BASE - timedelta(days=30)).isoformat()},
        "shipping_address": {"address1": street, "zip": "2000", "country_code": "AU"},
        "billing_address": {"country_code": "AU"},
        "line_items": [{"id": order_id * 10, "product_id": 1, "title": "Tea", "quantity": 1, "price": "120.00"}],
        **fields,
    }


def later_version(payload: dict, minute: int, **fields) -> dict:
    return {**payload, "updated_at": (BASE + timedelta(minutes=minute)).isoformat(), **fields}


def _scorer(tmp_path, http: httpx.Client):
    from storeflow.components.risk.realtime import RiskScorer

    settings = load_settings(quick_overrides(tmp_path, risk={"endpoint": "http://risk.test"}))
    return settings, RiskScorer(settings, http=http)


def _cursor(scorer) -> int:
    return scorer.db.execute("SELECT journal_rowid FROM risk_cursor").fetchone()[0]


def _live(scorer) -> list[tuple]:
    return scorer.db.execute("SELECT order_id, customer_id, email, address_key, updated_at FROM risk_live_orders "
                             "ORDER BY order_id").fetchall()


def test_orders_paid_updated_and_refunded_between_creates_do_not_end_the_batch(tmp_path):
    first = order(9300000001, 1, "one@example.com", "1 First St", 0)
    second = order(9300000002, 2, "two@example.com", "2 Second St", 1)
    events = [("c1", "orders/create", first),
              ("p1", "orders/paid", later_version(first, 2, financial_status="paid")),
              ("c2", "orders/create", second),
              ("u1", "orders/updated", later_version(first, 3, financial_status="paid", tags="gift")),
              ("c3", "orders/create", order(9300000003, 3, "three@example.com", "3 Third St", 4)),
              ("r2", "refunds/create", {"id": 9300000092, "order_id": 9300000002,
                                        "created_at": (BASE + timedelta(minutes=5)).isoformat()}),
              ("c4", "orders/create", order(9300000004, 4, "four@example.com", "4 Fourth St", 6))]
    seen, sizes = [], []
    settings, scorer = _scorer(tmp_path, _answering(seen, sizes))
    try:
        _journal(settings, *events)
        assert scorer.score_pending() == len(events)
        assert sizes == [4]  # one request for the four orders (before: four requests of one)
        assert [i["order_id"] for i in seen] == ["9300000001", "9300000002", "9300000003", "9300000004"]
        assert _cursor(scorer) == len(events)  # every delivery handled
        assert scorer.db.execute("SELECT count(*) FROM risk_skipped").fetchone()[0] == 0
        # the follow-ups were recorded: order 1 at its newest version, the refund of order 2
        assert dict((o, u) for o, _, _, _, u in _live(scorer))[9300000001] == later_version(first, 3)["updated_at"]
        assert scorer.db.execute("SELECT refund_id, order_id FROM risk_live_refunds").fetchall() == [
            (9300000092, 9300000002)]
        assert len(scorer.db.execute("SELECT order_id FROM risk_outbox").fetchall()) == 4
    finally:
        scorer.stop()


def test_a_later_order_that_reads_what_a_waiting_update_changes_is_scored_after_it(tmp_path):
    """Order 1 is cancelled for fraud; the same customer's next order must count that fraud cancellation."""
    first = order(9300000011, 11, "eleven@example.com", "11 Elm St", 0)
    events = [("c1", "orders/create", first),
              ("x1", "orders/cancelled", later_version(first, 2, cancel_reason="fraud",
                                                        cancelled_at=(BASE + timedelta(minutes=2)).isoformat())),
              ("c2", "orders/create", order(9300000012, 11, "eleven@example.com", "11 Elm St", 3))]
    seen, sizes = [], []
    settings, scorer = _scorer(tmp_path, _answering(seen, sizes))
    try:
        _journal(settings, *events)
        assert scorer.score_pending() == 3
        assert sizes == [1, 1]
        later = next(i for i in seen if i["order_id"] == "9300000012")
        assert later["prior_fraud_cancels"] == 1.0
    finally:
        scorer.stop()


def _stream(seed: int, orders: int = 60) -> list[tuple[str, str, dict]]:
    """A store's interleaved deliveries where orders share customers, emails and addresses and their later
    versions move them (another customer, email or address), are cancelled for fraud or refunded."""
    rng = random.Random(seed)
    customers, emails, streets = [21, 22, 23, 24, None], ["a@x.com", "b@x.com", "c@x.com", None], ["1 A St", "2 B St"]
    created: list[dict] = []
    events: list[tuple[str, str, dict]] = []
    minute = 0
    for n in range(orders):
        minute += rng.choice([1, 2, 5])
        payload = order(9310000000 + n, rng.choice(customers), rng.choice(emails), rng.choice(streets), minute)
        created.append(payload)
        events.append((f"c{n}", "orders/create", payload))
        for k in range(rng.choice([0, 1, 2, 3])):
            target = rng.choice(created[-8:])
            minute += 1
            at = (BASE + timedelta(minutes=minute)).isoformat()
            kind = rng.choice(["paid", "updated", "moved", "fraud", "refund"])
            if kind == "refund":
                events.append((f"r{n}-{k}", "refunds/create", {"id": 9319000000 + n * 10 + k, "order_id": target["id"],
                                                               "created_at": at}))
                continue
            customer = rng.choice(customers)
            changes = {"paid": {"financial_status": "paid"}, "updated": {"tags": "vip"},
                       "moved": {"email": rng.choice(emails), "shipping_address": {
                           "address1": rng.choice(streets), "zip": "2000", "country_code": "AU"},
                                 "customer": None if customer is None else {**(target["customer"] or {}),
                                                                            "id": customer}},
                       "fraud": {"cancel_reason": "fraud", "cancelled_at": at}}[kind]
            topic = {"paid": "orders/paid", "fraud": "orders/cancelled"}.get(kind, "orders/updated")
            events.append((f"{kind}{n}-{k}", topic, later_version(target, minute, **changes)))
    return events


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_order_is_scored_with_the_features_of_handling_the_journal_in_order(tmp_path, seed):
    events = _stream(seed)
    in_order, batched, sizes = [], [], []
    settings, one_at_a_time = _scorer(tmp_path / "in-order", _answering(in_order))
    try:
        _journal(settings, *events)
        while one_at_a_time.score_pending(limit=1):  # each pass one delivery: the journal strictly in order
            pass
        reference_live = _live(one_at_a_time)
    finally:
        one_at_a_time.stop()
    settings, scorer = _scorer(tmp_path / "batched", _answering(batched, sizes))
    try:
        _journal(settings, *events)
        assert scorer.score_pending() == len(events)
        assert len(sizes) < len(batched)  # some orders were batched past a waiting delivery (few: they collide)
        by_order = {i["order_id"]: i for i in in_order}
        assert len(batched) == len(in_order) == sum(topic == "orders/create" for _, topic, _ in events)
        for instance in batched:
            assert instance == by_order[instance["order_id"]]
        assert _live(scorer) == reference_live
        assert _cursor(scorer) == len(events)
    finally:
        scorer.stop()


def _refusing(bad: set[str], seen: list):
    """A risk server refusing (400) any request holding one of ``bad``'s order ids; the rest answered."""
    def handle(request: httpx.Request) -> httpx.Response:
        instances = json.loads(request.content)["instances"]
        if any(i["order_id"] in bad for i in instances):
            return httpx.Response(400, json={"error": "refused"})
        seen.extend(instances)
        return httpx.Response(200, json={"model_name": NAME, "model_version": "4", "predictions": [
            {"order_id": i["order_id"], "score": 0.5, "level": "MEDIUM",
             "facts": [{"description": "Risk score 0.500", "sentiment": "NEUTRAL"}]} for i in instances]})
    return httpx.Client(transport=httpx.MockTransport(handle))


def test_a_refused_batch_is_handled_in_journal_order_and_a_crash_on_the_way_loses_nothing(tmp_path, monkeypatch):
    """The batch is refused (one order's 400), so its orders go one by one. The orders/paid that waited for them
    must be recorded before the journal place passes it, whatever stops the scorer in between: it is handled
    where the journal has it, between order 1 and orders 2 and 3."""
    from storeflow.components.risk.realtime import RiskScorer

    first = order(9300000031, 31, "a31@example.com", "31 Oak St", 0)
    events = [("c1", "orders/create", first),
              ("p1", "orders/paid", later_version(first, 2, financial_status="paid")),
              ("c2", "orders/create", order(9300000032, 32, "a32@example.com", "32 Oak St", 3)),
              ("c3", "orders/create", order(9300000033, 33, "a33@example.com", "33 Oak St", 4))]
    seen: list = []
    settings, scorer = _scorer(tmp_path, _refusing({"9300000032"}, seen))
    try:
        _journal(settings, *events)
        handle = scorer._handle

        def killed_at_the_paid(rowid, webhook_id, topic, body):
            if webhook_id == "p1":
                raise RuntimeError("the scorer's process was killed")
            return handle(rowid, webhook_id, topic, body)
        monkeypatch.setattr(scorer, "_handle", killed_at_the_paid)
        with pytest.raises(RuntimeError, match="killed"):
            scorer.score_pending()
        assert _cursor(scorer) == 1  # order 1 scored; not past orders/paid (row 2)
    finally:
        scorer.stop()
    again = RiskScorer(settings, http=_refusing({"9300000032"}, seen))
    try:
        assert again.score_pending() == 3
        assert dict((o, u) for o, _, _, _, u in _live(again))[9300000031] == later_version(first, 2)["updated_at"]
        assert sorted(o for (o,) in again.db.execute("SELECT order_id FROM risk_outbox")) == [
            "gid://shopify/Order/9300000031", "gid://shopify/Order/9300000033"]  # each once
        (reason,) = again.db.execute("SELECT reason FROM risk_skipped WHERE webhook_id = 'c2'").fetchone()
        assert "refused" in reason
        assert _cursor(again) == 4
    finally:
        again.stop()


def _count_ledger_reads(scorer) -> list[list[int]]:
    """The customers of each read of the ledgers from here on, as the scorer reads them."""
    reads: list[list[int]] = []
    read = scorer.history.history.read

    def counted(customers):
        customers = list(customers)
        reads.append(sorted(c for c in customers if c is not None))
        return read(customers)
    scorer.history.history.read = counted
    return reads


def test_the_deliveries_that_waited_for_a_batch_read_their_customers_ledgers_once(tmp_path):
    """Each orders/paid read its customer's ledger from the online store to find it unchanged: a Redis round trip a
    delivery, a third of the scorer's CPU with two follow-ups an order (py-spy, bench/risk_throughput). Now the
    waiting deliveries' customers are read in one go and what changed is written once."""
    orders = [order(9300000041 + n, 41 + n, f"a{n}@example.com", f"{n} Ash St", n) for n in range(4)]
    events = [("c0", "orders/create", orders[0])]
    for n in range(1, 4):
        events += [(f"c{n}", "orders/create", orders[n]),
                   (f"p{n - 1}", "orders/paid", later_version(orders[n - 1], 10 + n, financial_status="paid"))]
    events.append(("r2", "refunds/create", {"id": 9300000099, "order_id": orders[2]["id"],
                                            "created_at": (BASE + timedelta(minutes=20)).isoformat()}))
    seen, sizes = [], []
    settings, scorer = _scorer(tmp_path, _answering(seen, sizes))
    read, reads = scorer.history.history.read, _count_ledger_reads(scorer)
    try:
        _journal(settings, *events)
        assert scorer.score_pending() == len(events)
        assert sizes == [4]
        assert reads == [[41, 42, 43, 44], [41, 42, 43]]  # the batch's features, then the waiting deliveries' all at once
        ledger = read([43])[43]  # the refund reached order 3's customer
        assert any(event.id == 9300000099 for event in ledger.events)
    finally:
        scorer.stop()


def test_a_pass_that_begins_with_follow_ups_records_them_with_its_orders(tmp_path):
    """The deliveries before a pass's first order were each handled on their own: a transaction and a ledger read
    and write apiece. At a shop's pace a pass holds a few deliveries, and with each order paid, updated, refunded and
    cancelled four in five are follow-ups, so most passes began with one (bench/risk_throughput --follow-ups 4: the
    scorer's CPU an order 2.0 ms, against 0.8-1.1 with two follow-ups). Now they wait for the pass's orders too."""
    earlier = [order(9300000061 + n, 61 + n, f"e{n}@example.com", f"{n} Oak St", n) for n in range(3)]
    later = [order(9300000071 + n, 71 + n, f"l{n}@example.com", f"{n} Pine St", 20 + n) for n in range(2)]
    seen, sizes = [], []
    settings, scorer = _scorer(tmp_path, _answering(seen, sizes))
    read = scorer.history.history.read
    try:
        _journal(settings, *((f"c{n}", "orders/create", o) for n, o in enumerate(earlier)))
        assert scorer.score_pending() == 3
        reads = _count_ledger_reads(scorer)
        follow_ups = [("p0", "orders/paid", later_version(earlier[0], 10, financial_status="paid")),
                      ("r1", "refunds/create", {"id": 9300000169, "order_id": earlier[1]["id"],
                                                "created_at": (BASE + timedelta(minutes=11)).isoformat()}),
                      ("x2", "orders/cancelled", later_version(earlier[2], 12, cancelled_at=(
                          BASE + timedelta(minutes=12)).isoformat(), cancel_reason="fraud"))]
        _journal(settings, *follow_ups, *((f"d{n}", "orders/create", o) for n, o in enumerate(later)))
        assert scorer.score_pending() == 5
        assert sizes == [3, 2]
        assert reads == [[71, 72], [61, 62, 63]]  # the orders' features, then the three follow-ups' ledgers at once
        assert _cursor(scorer) == 8 and scorer.db.execute("SELECT count(*) FROM risk_skipped").fetchone()[0] == 0
        ledgers = read([61, 62, 63])
        assert any(e.id == 9300000169 for e in ledgers[62].events)  # the refund reached order 2's customer
        assert any(e.kind == 3 and e.id == earlier[2]["id"] for e in ledgers[63].events)  # the fraud cancellation
        assert dict((o, u) for o, _, _, _, u in _live(scorer))[earlier[0]["id"]] == later_version(earlier[0], 10)[
            "updated_at"]
    finally:
        scorer.stop()


def test_a_waiting_delivery_the_history_refuses_is_set_aside_and_its_batch_is_kept(tmp_path):
    first = order(9300000051, 51, "a51@example.com", "51 Pine St", 0)
    events = [("c1", "orders/create", first),
              ("p1", "orders/paid", later_version(first, 2, financial_status="paid")),
              ("c2", "orders/create", order(9300000052, 52, "a52@example.com", "52 Pine St", 3))]
    seen, sizes = [], []
    settings, scorer = _scorer(tmp_path, _answering(seen, sizes))
    record = scorer.history.record

    def refusing(topic, payload):
        if topic == "orders/paid":
            record(topic, payload)  # its rows written, then refused: none of it may stay
            raise ValueError("an order the history cannot hold")
        return record(topic, payload)
    scorer.history.record = refusing
    try:
        _journal(settings, *events)
        assert scorer.score_pending() == 3
        assert sizes == [2]
        (reason,) = scorer.db.execute("SELECT reason FROM risk_skipped WHERE webhook_id = 'p1'").fetchone()
        assert reason == "ValueError: an order the history cannot hold"
        assert dict((o, u) for o, _, _, _, u in _live(scorer))[9300000051] == first["updated_at"]  # rolled back
        assert len(scorer.db.execute("SELECT order_id FROM risk_outbox").fetchall()) == 2
        assert _cursor(scorer) == 3
    finally:
        scorer.stop()
