"""The customer view's offline history as a Parquet dataset (components/features/offline.py): the applier's live
rows go into parts of their own, the features stage's rows are never rewritten for them, Feast reads both, a part
that would stop Feast reading is refused, parts merge by level without losing or doubling a row, and what reads
"the newest snapshot" reads the features stage's rows, not the applier's last batch."""

from __future__ import annotations

import hashlib
import shutil
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient
from test_webhook_signing import delivery, order

from storeflow.components.features import offline
from storeflow.components.features.repo import CUSTOMER_VIEW, apply, feature_store, source_path
from storeflow.components.shopify.webhooks import create_app

ADA, GRACE = 7390245781931, 7390245781932


def features_stage_rows(settings, customers: list[int], at: datetime) -> pd.DataFrame:
    """Rows as the features stage writes them: its own column order (not the applier's), one per customer."""
    names = sorted(settings.features.customer_features, reverse=True)  # an order unlike the applier's
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"customer_id": customers, "event_timestamp": pd.Timestamp(at).tz_convert("UTC")})
    for name in names:
        frame[name] = rng.integers(50, 60, len(customers)) if name in ("frequency", "orders_last_90d") else \
            rng.uniform(500.0, 600.0, len(customers))
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us, UTC]")
    return frame


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def older_history(hooks):
    """A history written as storeflow wrote it before 2026-12-07: one file, the features stage's rows."""
    path = source_path(hooks, CUSTOMER_VIEW)
    path.parent.mkdir(parents=True, exist_ok=True)
    at = datetime.now(timezone.utc) - timedelta(days=2)
    rows = features_stage_rows(hooks, [GRACE, *range(1, 2_000)], at)
    rows.to_parquet(path, index=False)
    apply(hooks)
    return path, rows, at


def test_the_applier_appends_a_part_and_never_rewrites_the_history(hooks, older_history):
    """Feast's file offline store appended by reading the whole history and writing it back with the batch:
    at a 500,000-customer store (5.2M rows) each batch of webhooks took seconds and 2.3 GB."""
    path, rows, _ = older_history
    before = digest(path)
    with TestClient(create_app(hooks), base_url="https://storeflow.example") as client:
        client.post("/webhooks", **delivery("orders/create", order(9001, ADA, "ada@example.com", 40.0), "wh-1"))
        client.app.state.applier.drain()
        snapshot = offline.snapshot_part(path)
        assert path.is_dir() and snapshot == path / offline.SNAPSHOT_PART
        assert digest(snapshot) == before  # the older file, moved whole into the dataset
        first = offline.live_parts(path)
        assert len(first) == 1 and pd.read_parquet(first[0])["customer_id"].tolist() == [ADA]

        client.post("/webhooks", **delivery("orders/create", order(9002, ADA, "ada@example.com", 25.0), "wh-2"))
        client.app.state.applier.drain()
    assert digest(snapshot) == before
    assert len(offline.live_parts(path)) == 2
    history = pd.read_parquet(path)
    assert len(history) == len(rows) + 2
    assert history.loc[history["customer_id"] == ADA, "frequency"].sort_values().tolist() == [1, 2]


def test_feast_reads_live_rows_by_column_name_beside_the_features_stage_rows(hooks, older_history):
    """Feast's point-in-time join over the dataset: a customer's live row after the order, another's the
    features stage wrote (in a column order of its own, unlike the applier's)."""
    path, rows, at = older_history
    with TestClient(create_app(hooks), base_url="https://storeflow.example") as client:
        client.post("/webhooks", **delivery("orders/create", order(9001, ADA, "ada@example.com", 40.0), "wh-1"))
        client.app.state.applier.drain()
    later = pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=5)
    entities = pd.DataFrame({"customer_id": [ADA, GRACE], "event_timestamp": [later, later]})
    refs = [f"{CUSTOMER_VIEW}:{name}" for name in ("frequency", "monetary", "recency_days")]
    got = feature_store(hooks).get_historical_features(entity_df=entities, features=refs).to_df()
    got = got.set_index("customer_id")
    assert (got.loc[ADA, "frequency"], got.loc[ADA, "monetary"]) == (1, pytest.approx(40.0))
    assert got.loc[ADA, "recency_days"] < 1  # ordered an hour ago
    grace = rows.set_index("customer_id").loc[GRACE]
    assert got.loc[GRACE, "frequency"] == grace["frequency"]
    assert got.loc[GRACE, "monetary"] == pytest.approx(grace["monetary"])


def live_rows(n: int, start: int = 0) -> pa.Table:
    at = pd.Timestamp("2026-12-01", tz="UTC")
    return pa.table({"customer_id": pa.array(range(start, start + n), pa.int64()),
                     "event_timestamp": pa.array([at + pd.Timedelta(seconds=i) for i in range(start, start + n)],
                                                 pa.timestamp("us", tz="UTC")),
                     "frequency": pa.array([1] * n, pa.int64())})


def test_parts_merge_by_level_and_keep_every_row_once(tmp_path):
    path = tmp_path / "customer_features.parquet"
    batches = offline.LEVEL_PARTS ** 2 + 3
    for batch in range(batches):
        offline.append(path, live_rows(2, start=2 * batch))
        offline.compact(path)
    levels = sorted(int(p.name.split("-")[1]) for p in offline.live_parts(path))
    assert levels == [0, 0, 0, 2]  # 256 batches: 16 parts of level 1, merged into one of level 2
    ids = pd.read_parquet(path)["customer_id"]
    assert sorted(ids) == list(range(2 * batches))


def test_a_merge_cut_short_is_finished_without_doubling_a_row(tmp_path):
    path = tmp_path / "customer_features.parquet"
    for batch in range(offline.LEVEL_PARTS):
        offline.append(path, live_rows(1, start=batch))
    sources = offline.live_parts(path)
    kept = tmp_path / "kept"
    kept.mkdir()
    for part in sources:
        shutil.copy(part, kept / part.name)
    offline.compact(path)
    for part in sources:  # as if the process died after writing the merged part, before removing its sources
        shutil.copy(kept / part.name, part)
    assert len(pd.read_parquet(path)) == 2 * offline.LEVEL_PARTS

    assert offline.finish_merges(path) == offline.LEVEL_PARTS
    assert sorted(pd.read_parquet(path)["customer_id"]) == list(range(offline.LEVEL_PARTS))


def test_live_rows_with_other_columns_are_refused_with_why(tmp_path):
    path = tmp_path / "customer_features.parquet"
    offline.append(path, live_rows(1))
    with pytest.raises(offline.OfflineHistoryError, match=r"lack \['frequency'\].*features\.customer_features"):
        offline.append(path, live_rows(1).drop_columns(["frequency"]))
    assert len(pd.read_parquet(path)) == 1


def test_the_features_stage_drops_the_live_parts_its_snapshot_supersedes(tmp_path):
    path = offline.dataset(tmp_path / "customer_features.parquet")
    as_of = datetime(2026, 12, 1, 0, 1, tzinfo=timezone.utc)
    older = offline.append(path, live_rows(2, start=0))  # 2026-12-01 00:00:00 and :01, before the snapshot's cutoff
    newer = offline.append(path, live_rows(2, start=59))  # 00:00:59 and 00:01:00... and one after it:
    later = offline.append(path, live_rows(1, start=61))
    pq.write_table(live_rows(5, start=10), path / offline.SNAPSHOT_PART)

    assert offline.drop_superseded(path, as_of) == [older.name, newer.name]
    assert offline.live_parts(path) == [later]

    # features.customer_features changed: the new snapshot has other columns, the live part would be read by position
    pq.write_table(live_rows(1, start=300).append_column("spend_30d", pa.array([1.0])), path / offline.SNAPSHOT_PART)
    assert offline.drop_superseded(path, as_of) == [later.name]
    assert offline.live_parts(path) == []


def test_the_canary_sends_traffic_for_the_snapshots_customers_not_the_last_batchs(settings):
    """Once the applier appended, the newest rows of the history were its last batch's customers (one, here)."""
    from storeflow.components.deploy.local_canary import customer_ids

    path = offline.dataset(source_path(settings, CUSTOMER_VIEW))
    at = datetime(2026, 11, 30, tzinfo=timezone.utc)
    features_stage_rows(settings, [3, 1, 2], at).to_parquet(path / offline.SNAPSHOT_PART, index=False)
    live = features_stage_rows(settings, [2], at + timedelta(days=1))
    offline.append(path, pa.Table.from_pandas(live, preserve_index=False))
    assert customer_ids(settings).tolist() == [1, 2, 3]


def test_a_features_run_keeps_the_live_rows_newer_than_its_snapshot(tmp_path):
    """The features stage replaces its own rows and drops the live parts at or before its newest cutoff; the
    applier's rows after it stay, and Feast's join and materialization read the dataset with them in it."""
    from conftest import END, quick_overrides, small_store, write_snapshot

    from storeflow.components.config import load_settings
    from storeflow.components.features import build_features

    settings = load_settings(quick_overrides(tmp_path))
    path = offline.dataset(source_path(settings, CUSTOMER_VIEW))
    before = offline.append(path, pa.Table.from_pandas(features_stage_rows(settings, [1], END - timedelta(days=30)),
                                                       preserve_index=False))
    after = offline.append(path, pa.Table.from_pandas(features_stage_rows(settings, [1], END + timedelta(days=1)),
                                                      preserve_index=False))

    result = build_features(settings, write_snapshot(small_store(), tmp_path / "snapshot"))

    assert result.rows > 0 and (path / offline.SNAPSHOT_PART).exists()
    assert offline.live_parts(path) == [after] and not before.exists()
    live = pd.read_parquet(path).query("customer_id == 1")["event_timestamp"].max()
    assert live == pd.Timestamp(END + timedelta(days=1))
