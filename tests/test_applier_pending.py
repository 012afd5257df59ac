"""The applier computes a run's features before it takes the journal's write lock, from the live tables as they are
and the run's rows as it will store them (``Applier._pending``). Random runs of orders, re-deliveries (older and
newer versions), orders moving between customers, guest orders, refunds before and after their orders and of the
snapshot's orders: the tables it foresees are the tables the run leaves, and so are the customers it touches."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import orjson
import pandas as pd
import pytest
from conftest import small_store, write_snapshot

from storeflow.components.ingest.snapshot import MANIFEST
from storeflow.components.shopify.apply import Applier, Pending, _read_back
from storeflow.components.shopify.journal import transaction

START = datetime(2026, 12, 1, tzinfo=timezone.utc)


def an_order(rng: random.Random, order_id: int, customer: int | None, minute: int) -> dict:
    at = (START + timedelta(minutes=minute)).isoformat()
    items = rng.randint(1, 3)
    base = rng.choice([order_id * 10, (order_id + 1) * 10])  # now and then the next order's line item ids
    return {"id": order_id, "email": f"c{customer}@example.com" if customer else "guest@example.com",
            "created_at": START.isoformat(), "updated_at": at, "cancelled_at": None, "currency": "USD",
            "financial_status": rng.choice(["paid", "partially_refunded"]), "total_price": f"{rng.uniform(5, 90):.2f}",
            "subtotal_price": "10.00", "total_discounts": f"{rng.choice([0, 2.5]):.2f}",
            "customer": {"id": customer, "email": f"c{customer}@example.com"} if customer else None,
            "line_items": [{"id": base + n, "product_id": 77, "sku": "TEA", "title": "Tea", "quantity": rng.randint(1, 3),
                            "price": "10.00"} for n in range(items)]}


def a_refund(refund_id: int, order_id: int, minute: int) -> dict:
    return {"id": refund_id, "order_id": order_id, "created_at": (START + timedelta(minutes=minute)).isoformat(),
            "refund_line_items": [], "transactions": [{"kind": "refund", "status": "success", "amount": "3.00"}]}


def a_run(rng: random.Random, snapshot_orders: list[int], minute: int, size: int) -> list[Pending]:
    run = []
    for n in range(size):
        kind = rng.random()
        order_id = rng.choice([*range(700_000, 700_012), *snapshot_orders[:5]])
        if kind < 0.7:
            customer = rng.choice([1, 2, 3, 4, 9_999, None])  # 9,999: a customer the snapshot does not know
            version = minute + rng.randint(-30, 30)  # an older version arrives late, now and then
            topic, payload = rng.choice(["orders/create", "orders/updated", "orders/paid"]), \
                an_order(rng, order_id, customer, version)
        else:
            topic, payload = "refunds/create", a_refund(rng.choice([900_001, 900_002, 900_000 + minute * 10 + n]),
                                                        order_id, minute)
        run.append(Pending(f"wh-{minute}-{n}", "shop", topic, orjson.dumps(payload)))
    return run


def tables_of(tables: dict[str, pd.DataFrame]) -> dict[str, list]:
    keys = {"orders": "order_id", "line_items": "line_item_id", "refunds": "refund_id"}
    return {name: json.loads(tables[name].sort_values(key).to_json(orient="records")) for name, key in keys.items()}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_tables_foreseen_before_the_lock_are_the_tables_the_run_leaves(hooks, seed):
    store = small_store(customers=6, days=120, seed=seed)
    snapshot = write_snapshot(store, hooks.data_dir / "snapshots" / "s1")
    (snapshot / MANIFEST).write_text(json.dumps({"ingested_at": START.isoformat()}))
    applier = Applier(hooks)
    rng = random.Random(seed)
    snapshot_orders = store["orders"]["order_id"].tolist()
    try:
        for minute in range(0, 600, 60):
            run = a_run(rng, snapshot_orders, minute, rng.randint(1, 25))
            stored = _read_back(run)
            assert stored is not None
            touched, pending = applier._pending(stored)
            foreseen = tables_of(applier.customer_tables(touched, pending))
            with transaction(applier.conn):
                stored_for, _ = applier._upsert_all(run, stored)
            assert stored_for == touched
            assert foreseen == tables_of(applier.customer_tables(touched))
    finally:
        applier.conn.close()


def test_the_receiver_commits_while_the_applier_computes_features(hooks, monkeypatch):
    """The features of a run took ~80 % of a batch's time, under the journal's write lock: each delivery arriving
    meanwhile waited for it (bench/risk_throughput --applier: journaling p99 118 -> 58 ms once they did not)."""
    import sqlite3

    from storeflow.components.shopify import apply, layout
    from storeflow.components.shopify.journal import connect

    connect(layout.journal_path(hooks)).close()
    real = apply.customer_features
    commits: list[bool] = []

    def while_computing(tables, times, *con):
        other = sqlite3.connect(layout.journal_path(hooks), timeout=0)  # a receiver's commit, that does not wait
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("UPDATE shops SET uninstalled_at = uninstalled_at")
            other.execute("COMMIT")
            commits.append(True)
        except sqlite3.OperationalError:  # database is locked
            commits.append(False)
        finally:
            other.close()
        return real(tables, times, *con)

    monkeypatch.setattr(apply, "customer_features", while_computing)
    applier = Applier(hooks)
    try:
        run = [Pending("wh-lock-1", "shop", "orders/create", orjson.dumps(an_order(random.Random(0), 700_001, 1, 5)))]
        applier._apply_live(run)
    finally:
        applier.conn.close()
    assert commits == [True]


def test_order_versions_compare_as_times_whatever_their_iso_form():
    """An older version arriving late is recognised however its ``updated_at`` is written: an offset, Z, none (UTC),
    or a form only pandas reads (``_ts`` falls back to it where ``datetime.fromisoformat`` gives up)."""
    from storeflow.components.shopify.apply import _superseded

    assert _superseded("2026-12-01T10:00:00-05:00", "2026-12-01T14:59:59Z")  # stored 15:00 UTC, arriving a second older
    assert not _superseded("2026-12-01T10:00:00-05:00", "2026-12-01T15:00:01+00:00")
    assert not _superseded("2026-12-01T15:00:00", "2026-12-01T10:00:00-05:00")  # the same moment: not older
    assert _superseded("2026/12/01 15:00:00", "2026-12-01T14:00:00Z")  # a form fromisoformat refuses
    assert not _superseded(None, "2026-12-01T14:00:00Z") and not _superseded("2026-12-01T14:00:00Z", None)
