"""bench/risk_throughput.py's stream options: ``--follow-ups`` interleaves each order's later deliveries with later
orders' creates as a store's webhooks come, each one a whole order the receiver accepts; ``--applier``'s CPU
accounting finds the receiver's processes by what they hold open."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from storeflow.components.shopify.payloads import check, order_rows

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))
        yield importlib.import_module("risk_throughput")


def test_each_orders_follow_ups_come_after_its_create_between_later_orders(bench):
    sent = list(bench.stream(3_000, 2))
    assert len(sent) == 3_000
    position = {(kind, i, k): n for n, (kind, i, k) in enumerate(sent)}
    creates = [i for kind, i, _ in sent if kind == "create"]
    assert creates == list(range(len(creates)))  # every order once, in order
    follow_ups = [(i, k) for kind, i, k in sent if kind == "follow-up"]
    assert len(follow_ups) == len(set(follow_ups)) and {k for _, k in follow_ups} == {1, 2}
    for i, k in follow_ups:  # k * FOLLOW_UP_GAP creates later, after the create of that later order
        later = i + k * bench.FOLLOW_UP_GAP
        next_create = position.get(("create", later + 1, 0), len(sent))
        assert position[("create", later, 0)] < position[("follow-up", i, k)] < next_create
    assert 0.32 < len(creates) / len(sent) < 0.34  # three deliveries an order, but for the stream's two ends
    assert list(bench.stream(50, 0)) == [("create", i, 0) for i in range(50)]


@pytest.mark.parametrize("body", ["subscribed", "full", "trimmed"])
def test_a_follow_up_is_the_same_order_paid_then_updated_later(bench, body):
    now = datetime(2026, 12, 7, tzinfo=timezone.utc).isoformat()
    create = bench.order(41, now, body)
    paid_topic, paid = bench.follow_up(41, 1, now, body)
    updated_topic, updated = bench.follow_up(41, 2, now, body)
    assert (paid_topic, updated_topic) == ("orders/paid", "orders/updated")
    for topic, payload in (("orders/create", create), (paid_topic, paid), (updated_topic, updated)):
        assert check(topic, payload) == create["customer"]["id"]  # what the receiver accepts
    rows = [order_rows(p)[0] for p in (create, paid, updated)]
    assert len({r["order_id"] for r in rows}) == 1
    assert rows[0]["updated_at"] < rows[1]["updated_at"] < rows[2]["updated_at"]  # each replaces the one before


@pytest.mark.parametrize("body", ["subscribed", "full"])
def test_an_order_is_then_refunded_and_cancelled_some_for_fraud(bench, body):
    """--follow-ups 4: each order's refunds/create and orders/cancelled after its paid and updated deliveries, as the
    receiver accepts them; the refund pays back one line item, one cancellation in FRAUD_EVERY is for fraud."""
    from storeflow.components.risk.live import risk_row
    from storeflow.components.shopify.payloads import refund_row

    now = datetime(2026, 12, 7, tzinfo=timezone.utc).isoformat()
    create = bench.order(50, now, body)
    (refund_topic, refund), (cancel_topic, cancelled) = bench.follow_up(50, 3, now, body), bench.follow_up(50, 4, now, body)
    assert (refund_topic, cancel_topic) == ("refunds/create", "orders/cancelled")
    check(refund_topic, refund)  # what the receiver accepts
    assert check(cancel_topic, cancelled) == create["customer"]["id"]
    row = refund_row(refund)
    assert (row["order_id"], row["amount"]) == (create["id"], 42.5) and row["created_at"] > now
    order = order_rows(cancelled)[0]
    assert order["order_id"] == create["id"] and order["cancelled_at"] is not None
    assert risk_row(cancelled)["cancel_reason"] == "FRAUD"  # order 50: one in FRAUD_EVERY
    assert risk_row(bench.follow_up(51, 4, now, body)[1])["cancel_reason"] == "CUSTOMER"
    assert {kind for kind, _, _ in bench.stream(200, 4)} == {"create", "follow-up"}
    assert {k for _, _, k in bench.stream(200, 4)} == {0, 1, 2, 3, 4}


def test_the_subscribed_body_is_the_whole_order_as_storeflows_subscription_has_shopify_send_it(bench):
    """The default delivery: Shopify's whole orders/create cut to the subscription's include_fields, which the
    receiver and the risk scorer read as the whole order."""
    from storeflow.components.risk.live import new_order
    from storeflow.components.shopify.subscriptions import filtered, include_fields

    now = datetime(2026, 12, 7, tzinfo=timezone.utc).isoformat()
    whole, sent = bench.order(41, now, "full"), bench.order(41, now)
    assert sent == filtered(whole, include_fields("orders/create"))
    assert len(json.dumps(sent)) < len(json.dumps(whole)) / 4
    assert order_rows(sent) == order_rows(whole)
    assert new_order(json.dumps(sent).encode()) == new_order(json.dumps(whole).encode())


def test_the_receivers_processes_are_told_apart_by_the_files_they_hold(bench, tmp_path):
    """As the receiver's children would: the scorer holds the journal and the outbox, the applier the journal,
    the write-back the outbox."""
    for name in ("webhooks.db", "risk.db"):
        (tmp_path / name).write_bytes(b"")
    hold = "import sys, time; files = [open(p) for p in sys.argv[1:]]; print('ready', flush=True); time.sleep(60)"
    holding = {"scorer": ["webhooks.db", "risk.db"], "applier": ["webhooks.db"], "writer": ["risk.db"]}
    children = {}
    try:
        for role, files in holding.items():
            children[role] = subprocess.Popen([sys.executable, "-c", hold, *(str(tmp_path / f) for f in files)],
                                              stdout=subprocess.PIPE, text=True)
            assert children[role].stdout.readline().strip() == "ready"
        parts = bench.scorer_parts(os.getpid())
        assert parts[bench.SCORER] == children["scorer"].pid
        assert parts[bench.APPLIER] == children["applier"].pid
        assert parts[bench.WRITER] == children["writer"].pid
    finally:
        for child in children.values():
            child.kill()
            child.wait()
    assert bench.SCORER not in bench.scorer_parts(os.getpid())
