"""What the applier and the scorer keep of orders received live leaves their tables once the newest snapshot holds
it and it is older than shopify.retention_days: each order's whole rows stayed in the journal for good (~1-2 KB an
order, 10-20 GB a year at 10 million orders, on a 20 GiB volume), and the features read from the snapshot and the
live rows are the same before and after."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone

import orjson
import pandas as pd
import random

from conftest import small_store, write_snapshot
from test_applier_pending import a_refund, an_order, tables_of

from storeflow.components.ingest.snapshot import MANIFEST
from storeflow.components.shopify import layout
from storeflow.components.shopify.apply import Applier, Pending, _read_back
from storeflow.components.shopify.journal import transaction
from storeflow.components.shopify.retention import prune
from storeflow.components.tables import SCHEMAS

START = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _live(hooks, table: str, key: str) -> list[int]:
    with sqlite3.connect(layout.journal_path(hooks)) as conn:
        return [k for (k,) in conn.execute(f"SELECT {key} FROM {table} ORDER BY {key}")]


def test_live_orders_a_newer_snapshot_holds_go_after_the_retention_and_the_features_read_the_same(hooks):
    store = small_store(customers=6, days=120, seed=4)
    write_snapshot(store, hooks.data_dir / "snapshots" / "s1")
    (hooks.data_dir / "snapshots" / "s1" / MANIFEST).write_text(json.dumps({"ingested_at": START.isoformat()}))
    applier = Applier(hooks)
    rng = random.Random(4)
    snapshot_order = int(store["orders"]["order_id"].iloc[0])
    customer = int(store["orders"]["customer_id"].iloc[0])
    held, unheld = an_order(rng, 700_001, customer, 10), an_order(rng, 700_002, customer, 20)
    newer = {**an_order(rng, snapshot_order, customer, 30), "total_price": "77.00"}  # an update the snapshot lacks
    for order in (held, unheld, newer):  # line items of its own each
        for n, item in enumerate(order["line_items"]):
            item["id"] = order["id"] * 10 + n
    run = [Pending("a", "shop", "orders/create", orjson.dumps(held)),
           Pending("b", "shop", "orders/create", orjson.dumps(unheld)),
           Pending("c", "shop", "orders/updated", orjson.dumps(newer)),
           Pending("d", "shop", "refunds/create", orjson.dumps(a_refund(900_001, 700_001, 40))),
           Pending("e", "shop", "refunds/create", orjson.dumps(a_refund(900_002, 700_002, 41)))]
    try:
        with transaction(applier.conn):
            applier._upsert_all(run, _read_back(run))
        # the next day's ingest: the snapshot now holds order 700,001 and its refund as they arrived (not 700,002,
        # nor the update of the snapshot's order)
        with sqlite3.connect(layout.journal_path(hooks)) as conn:
            def rows(table: str, key: str, ids: list[int]) -> pd.DataFrame:
                found = [orjson.loads(r) for (r,) in conn.execute(
                    f"SELECT row FROM {table} WHERE {key} IN ({','.join('?' * len(ids))})", ids)]
                return pd.DataFrame(found)[SCHEMAS[table.removeprefix("live_")].names]
            nextday = {**store,
                       "orders": pd.concat([store["orders"], rows("live_orders", "order_id", [700_001])]),
                       "line_items": pd.concat([store["line_items"], rows("live_line_items", "order_id", [700_001])]),
                       "refunds": pd.concat([store["refunds"], rows("live_refunds", "refund_id", [900_001])])}
        write_snapshot(nextday, hooks.data_dir / "snapshots" / "s2")
        (hooks.data_dir / "snapshots" / "s2" / MANIFEST).write_text(
            json.dumps({"ingested_at": (START + timedelta(days=1)).isoformat()}))
        before = tables_of(applier.customer_tables({customer}))

        prune(hooks, at=START + timedelta(days=hooks.shopify.retention_days))  # within the retention: nothing goes
        assert _live(hooks, "live_orders", "order_id") == sorted([700_001, 700_002, snapshot_order])
        pruned = prune(hooks, at=START + timedelta(days=hooks.shopify.retention_days + 2))

        assert (pruned.live_orders, pruned.live_refunds) == (1, 1)
        assert _live(hooks, "live_orders", "order_id") == sorted([700_002, snapshot_order])
        assert 700_001 not in {o for o in _live(hooks, "live_line_items", "order_id")}
        assert _live(hooks, "live_refunds", "refund_id") == [900_002]
        assert tables_of(applier.customer_tables({customer})) == before  # the features read the same rows
    finally:
        applier.conn.close()
