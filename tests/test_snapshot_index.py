"""The applier reads a batch's customers from a memory-mapped index of the snapshot (components/snapshot_index.py),
not from the snapshot held whole in memory: the rows it finds are the rows a filter of the whole table finds, in the
same order; the index follows the snapshot when a redaction rewrites it; a large store costs the applier little
memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from conftest import large_snapshot, small_store, write_snapshot

from storeflow.components.snapshot_index import KEYS, SnapshotIndex, local_only
from storeflow.components.tables import SCHEMAS, read_tables


def awkward_store(seed: int) -> dict[str, pd.DataFrame]:
    """A small store plus what real exports hold: guest orders (no customer), an order id twice (two versions), line
    items and refunds of orders the export lacks or with no order, rows out of key order."""
    store = small_store(customers=40, days=200, seed=seed)
    orders = store["orders"]
    guests = orders.sample(5, random_state=seed).assign(customer_id=None, order_id=lambda f: f["order_id"] + 10**7)
    twice = orders.sample(3, random_state=seed + 1).assign(total_price=1.0)
    store["orders"] = pd.concat([orders, guests, twice]).sample(frac=1, random_state=seed)
    items = store["line_items"]
    orphans = items.sample(4, random_state=seed).assign(order_id=[None, 424242, None, 515151],
                                                        line_item_id=lambda f: f["line_item_id"] + 10**8)
    store["line_items"] = pd.concat([items, orphans]).sample(frac=1, random_state=seed)
    store["refunds"] = store["refunds"].sample(frac=1, random_state=seed)
    return store


@pytest.mark.parametrize("seed", [1, 2])
def test_rows_found_by_key_are_the_rows_a_filter_of_the_table_finds(tmp_path, seed):
    snapshot = write_snapshot(awkward_store(seed), tmp_path / "snap")
    index = SnapshotIndex.open(snapshot)
    tables = read_tables(snapshot)
    rng = np.random.default_rng(seed)
    for name, key in KEYS.items():
        present = tables[name][key].dropna().astype("int64").unique()
        for size in sorted({0, min(1, len(present)), min(7, len(present)), len(present)}):
            keys = [*rng.choice(present, size, replace=False).tolist(), 999_999_999]  # and one no row has
            expected = tables[name][tables[name][key].isin(keys)].reset_index(drop=True)
            found = index.rows(name, keys)
            assert found.schema == SCHEMAS[name]
            pd.testing.assert_frame_equal(found.to_pandas(), expected, check_dtype=False)
    orders = tables["orders"].dropna(subset=["customer_id"]).drop_duplicates("order_id")
    owners = index.customers_of_orders([*orders["order_id"].tolist(), 999_999_999])
    assert owners == dict(zip(orders["order_id"].tolist(), orders["customer_id"].astype("int64").tolist()))


def test_an_empty_snapshot_is_indexed_and_finds_nothing(tmp_path):
    snapshot = write_snapshot({name: schema.empty_table().to_pandas() for name, schema in SCHEMAS.items()},
                              tmp_path / "snap")
    index = SnapshotIndex.open(snapshot)
    assert index.rows("orders", [1, 2]).num_rows == 0
    assert index.customers_of_orders([1]) == {}


def test_a_rewritten_snapshot_is_indexed_again_and_its_old_index_removed(tmp_path):
    store = awkward_store(3)
    snapshot = write_snapshot(store, tmp_path / "snap")
    first = SnapshotIndex.open(snapshot)
    customer = int(store["orders"]["customer_id"].dropna().iloc[0])
    assert first.rows("orders", [customer]).num_rows > 0
    # a redaction writes the tables again (privacy._rewrite_snapshot): the customer's orders are gone
    store["orders"] = store["orders"][store["orders"]["customer_id"] != customer]
    write_snapshot(store, snapshot)
    assert not first.current()
    second = SnapshotIndex.open(snapshot)
    assert second.rows("orders", [customer]).num_rows == 0
    assert [p.name for p in snapshot.glob(".index-*")] == [second.folder.name]


def test_the_index_is_not_part_of_a_published_snapshot(tmp_path):
    from storeflow.components.artifacts import publish

    snapshot = write_snapshot(awkward_store(4), tmp_path / "snap")
    SnapshotIndex.open(snapshot)
    published = publish(snapshot, str(tmp_path / "artifact"), ignore=local_only)
    assert sorted(p.name for p in published.iterdir()) == sorted(p.name for p in snapshot.iterdir()
                                                                if not p.name.startswith(".index-"))


def test_the_applier_reads_a_large_snapshot_without_holding_it(tmp_path, hooks):
    """A store of 1,000,000 orders: the applier's features for a batch of 150 customers cost it 39 MB of heap
    (measured), not the 452 MB of reading the whole tables into pandas as it did (at a 500,000-customer store's size:
    bench/webhooks.py)."""
    large_snapshot(hooks.data_dir / "snapshots" / "big", orders=1_000_000, customers=100_000)
    script = textwrap.dedent("""
        import json, sys
        from storeflow.components.config import load_settings
        from storeflow.components.shopify.apply import Applier

        def anon():
            return int(next(l for l in open("/proc/self/status") if l.startswith("RssAnon")).split()[1]) // 1024

        applier = Applier(load_settings(json.loads(sys.argv[1])))
        before = anon()
        frame = applier._features(set(range(1, 151))).frame
        print(json.dumps({"grew_mb": anon() - before, "rows": len(frame)}))
    """)
    done = subprocess.run([sys.executable, "-c", script, hooks.to_json()], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["rows"] == 150
    assert measured["grew_mb"] < 150, measured


def test_builders_at_once_each_get_the_index_and_leave_one(tmp_path):
    """The applier's first batch and its start-up warming (or two processes) may build the same index together."""
    from concurrent.futures import ThreadPoolExecutor

    store = awkward_store(5)
    snapshot = write_snapshot(store, tmp_path / "snap")
    customer = int(store["orders"]["customer_id"].dropna().iloc[0])
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda _: SnapshotIndex.open(snapshot).rows("orders", [customer]).num_rows, range(4)))
    assert found == [int((store["orders"]["customer_id"] == customer).sum())] * 4
    assert len(list(snapshot.glob(".index-*"))) == 1


def test_a_builder_finishing_while_another_looks_at_its_scratch_folder_fails_neither(tmp_path, monkeypatch):
    """After building, a builder removes the scratch folders others left over an hour ago. One it listed may be
    renamed into place (that builder finished) before it looks at its age: the look raised FileNotFoundError and
    the applier's build failed (seen once in the four-builders test above)."""
    import pathlib

    store = awkward_store(8)
    snapshot = write_snapshot(store, tmp_path / "snap")
    listed = pathlib.Path.glob

    def with_a_vanished_scratch(self, pattern):
        found = list(listed(self, pattern))
        return [*found, self / ".index-0123456789abcdef.building-1-gone"] if pattern == ".index-*" else found

    monkeypatch.setattr(pathlib.Path, "glob", with_a_vanished_scratch)
    customer = int(store["orders"]["customer_id"].dropna().iloc[0])
    assert SnapshotIndex.open(snapshot).rows("orders", [customer]).num_rows == \
        int((store["orders"]["customer_id"] == customer).sum())


def test_the_applier_keeps_the_index_of_the_newest_snapshot_only(hooks):
    """A newer snapshot is indexed and the older one's index removed: at 5M orders an index is ~1.4 GB of disk."""
    from storeflow.components.ingest.snapshot import MANIFEST
    from storeflow.components.shopify.apply import Applier

    root = hooks.data_dir / "snapshots"
    older = write_snapshot(awkward_store(6), root / "older")
    (older / MANIFEST).write_text(json.dumps({"ingested_at": "2026-11-01T00:00:00+00:00"}))
    applier = Applier(hooks)
    try:
        applier.prepare()
        assert len(list(older.glob(".index-*"))) == 1
        newer = write_snapshot(awkward_store(7), root / "newer")
        (newer / MANIFEST).write_text(json.dumps({"ingested_at": "2026-12-01T00:00:00+00:00"}))
        customer = int(awkward_store(7)["orders"]["customer_id"].dropna().iloc[0])
        assert len(applier.customer_tables({customer})["orders"]) > 0
        assert list(older.glob(".index-*")) == [] and len(list(newer.glob(".index-*"))) == 1
    finally:
        applier.conn.close()
