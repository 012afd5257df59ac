"""The synthetic store: deterministic, consistent, Shopify-shaped, and a learnable repeat-purchase label."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from storeflow.components.config import Settings, SyntheticStoreConfig, ValidateConfig
from storeflow.components.ingest import generate_store, ingest, read_bulk_jsonl
from storeflow.components.validate import validate_tables

CONFIG = SyntheticStoreConfig(customers=2_000, orders=20_000, products=120, seed=11)
END = pd.Timestamp(CONFIG.end, tz="UTC")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, pd.DataFrame]]:
    path = generate_store(CONFIG, tmp_path_factory.mktemp("synthetic") / "store.jsonl")
    return path, read_bulk_jsonl([path])


def test_same_config_same_bytes_other_seed_other_store(store, tmp_path: Path):
    path, _ = store
    assert generate_store(CONFIG, tmp_path / "again.jsonl").read_bytes() == path.read_bytes()
    other = generate_store(CONFIG.model_copy(update={"seed": 12}), tmp_path / "other.jsonl")
    assert other.read_bytes() != path.read_bytes()


def test_lines_are_shopify_bulk_records(store):
    path, _ = store
    with path.open("rb") as lines:
        first, second = orjson.loads(next(lines)), orjson.loads(next(lines))
    assert first["id"].startswith("gid://shopify/Order/") and "__parentId" not in first
    assert first["totalPriceSet"]["shopMoney"]["currencyCode"] == "USD"
    assert first["risk"]["assessments"][0]["riskLevel"] in {"LOW", "MEDIUM", "HIGH"}
    assert second["id"].startswith("gid://shopify/LineItem/") and second["__parentId"] == first["id"]


def test_sizes_and_references_are_consistent(store):
    _, tables = store
    orders, customers, items = tables["orders"], tables["customers"], tables["line_items"]
    assert len(orders) == CONFIG.orders and len(customers) == CONFIG.customers
    assert len(tables["products"]) == CONFIG.products
    assert orders["order_id"].is_unique and items["line_item_id"].is_unique
    assert orders["customer_id"].isin(customers["customer_id"]).all()
    assert items["order_id"].isin(orders["order_id"]).all()
    assert items["product_id"].isin(tables["products"]["product_id"]).all()
    assert tables["refunds"]["order_id"].isin(orders["order_id"]).all()
    start = END - pd.Timedelta(days=CONFIG.days)
    assert orders["created_at"].between(start, END).all()
    assert (tables["refunds"]["created_at"] <= END).all()
    subtotal = (items["price"] * items["quantity"]).groupby(items["order_id"]).sum()
    np.testing.assert_allclose(orders.set_index("order_id")["subtotal_price"].loc[subtotal.index], subtotal, atol=0.01)


def test_the_store_passes_the_validation_gate(store):
    _, tables = store
    report = validate_tables(tables, ValidateConfig(), now=datetime(2026, 11, 23, tzinfo=timezone.utc))
    assert report.passed, report.render()


def test_realistic_behaviour(store):
    _, tables = store
    orders = tables["orders"]
    refund_share = orders["order_id"].isin(tables["refunds"]["order_id"]).mean()
    assert 0.03 <= refund_share <= 0.07
    assert 0.005 <= (orders["risk_level"] == "HIGH").mean() <= 0.05
    high = orders[orders["risk_level"] == "HIGH"]
    assert high["cancelled_at"].notna().mean() > 0.4 > orders["cancelled_at"].notna().mean()
    assert orders["currency"].nunique() >= 4 and (orders["currency"] == "USD").mean() > 0.5
    assert 0.1 <= (orders["total_discounts"] > 0).mean() <= 0.4
    assert tables["products"]["product_type"].nunique() >= 5

    per_day = orders.set_index("created_at").resample("D").size()
    year = str(END.year - 1)  # the last full November; the store grows, so compare within one year
    assert per_day[f"{year}-11-24":f"{year}-11-30"].mean() > 2 * per_day[f"{year}-10"].mean()
    weekday = per_day.groupby(per_day.index.dayofweek).mean()
    assert weekday[6] > weekday[5]  # Sunday evening shopping beats Saturday

    per_customer = orders.groupby("customer_id").size()
    assert 0.2 < (per_customer == 1).mean() < 0.6  # many never come back; loyal ones buy a lot
    assert per_customer.max() > 10 * per_customer.median()


def rfm(orders: pd.DataFrame, cutoff: pd.Timestamp, horizon: pd.Timedelta) -> tuple[pd.DataFrame, np.ndarray]:
    past = orders[orders["created_at"] <= cutoff].groupby("customer_id")
    future = orders[(orders["created_at"] > cutoff) & (orders["created_at"] <= cutoff + horizon)]
    features = pd.DataFrame({
        "recency": (cutoff - past["created_at"].max()).dt.days,
        "frequency": past.size(),
        "monetary": past["total_price"].sum(),
        "tenure": (cutoff - past["created_at"].min()).dt.days,
    })
    return features, features.index.isin(future["customer_id"]).astype(int)


def test_repeat_purchase_label_is_learnable_but_not_trivial(store):
    _, tables = store
    orders, horizon = tables["orders"], pd.Timedelta(days=90)
    test_cutoff = END - horizon
    train = [rfm(orders, test_cutoff - horizon - pd.Timedelta(days=28 * k), horizon) for k in range(8)]
    model = HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(
        pd.concat([x for x, _ in train]), np.concatenate([y for _, y in train]))
    features, label = rfm(orders, test_cutoff, horizon)

    auc = roc_auc_score(label, model.predict_proba(features)[:, 1])

    assert 0.7 < auc < 0.95, auc
    assert 0.15 < label.mean() < 0.6


def test_ingest_caches_the_generated_store(settings: Settings):
    settings.ingest.synthetic = SyntheticStoreConfig(customers=300, orders=2_000, products=40)
    first = ingest(settings)
    cached = list((settings.data_dir / "synthetic").glob("*.jsonl"))
    assert len(cached) == 1 and first.source == "synthetic" and first.row_counts["orders"] == 2_000
    stamp = cached[0].stat().st_mtime_ns

    again = ingest(settings)

    assert again.reused and again.snapshot == first.snapshot
    assert cached[0].stat().st_mtime_ns == stamp
    settings.ingest.synthetic = SyntheticStoreConfig(customers=300, orders=2_000, products=40, seed=8)
    assert ingest(settings).snapshot != first.snapshot
    assert len(list((settings.data_dir / "synthetic").glob("*.jsonl"))) == 2


BGNBD_CONFIG = SyntheticStoreConfig(customers=3_000, orders=9_000, products=120, seed=11)


@pytest.fixture(scope="module")
def bgnbd_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    path = generate_store(BGNBD_CONFIG, tmp_path_factory.mktemp("bgnbd") / "store.jsonl", process="bgnbd")
    return read_bulk_jsonl([path])


def test_a_bgnbd_store_has_the_configured_size_and_passes_validation(bgnbd_store):
    assert len(bgnbd_store["orders"]) == BGNBD_CONFIG.orders and len(bgnbd_store["customers"]) == BGNBD_CONFIG.customers
    report = validate_tables(bgnbd_store, ValidateConfig(), now=datetime(2026, 11, 23, tzinfo=timezone.utc))
    assert report.passed, report.render()


def test_bgnbd_purchase_timing_looks_like_a_buy_till_you_die_panel(bgnbd_store):
    from storeflow.components.ingest.synthetic import MAX_WEEKLY_RATE

    orders = bgnbd_store["orders"]
    per_customer = orders.groupby("customer_id").size()
    assert 0.3 < (per_customer == 1).mean() < 0.65  # most never come back, as in CDNOW
    assert per_customer.max() < 1.5 * MAX_WEEKLY_RATE * CONFIG.days / 7  # capped rates: no customer buys daily
    # Dropout: of the customers with 3+ orders in the first year, many buy nothing in the last half year.
    first_year = orders[orders["created_at"] < END - pd.Timedelta(days=365)].groupby("customer_id").size()
    late = set(orders[orders["created_at"] >= END - pd.Timedelta(days=182)]["customer_id"])
    regulars = first_year[first_year >= 3].index
    assert 0.2 < 1 - np.mean([c in late for c in regulars]) < 0.8
    refunders = set(bgnbd_store["refunds"].merge(orders, on="order_id")["customer_id"])
    assert per_customer[per_customer.index.isin(refunders)].mean() > 0  # refunds exist among them
    assert 0.02 <= orders["order_id"].isin(bgnbd_store["refunds"]["order_id"]).mean() <= 0.08


def test_a_bgnbd_store_too_dense_for_its_customers_says_so(tmp_path: Path):
    dense = SyntheticStoreConfig(customers=200, orders=200_000, products=20)
    with pytest.raises(ValueError, match="cannot place .* repeat orders"):
        generate_store(dense, tmp_path / "dense.jsonl", process="bgnbd")
    with pytest.raises(ValueError, match="unknown purchase process"):
        generate_store(CONFIG, tmp_path / "x.jsonl", process="pareto")


def test_the_store_is_written_in_chunks_with_the_same_bytes(store, tmp_path: Path, monkeypatch):
    """A 5M-order store is formatted a chunk of orders at a time; chunk edges change no byte."""
    from storeflow.components.ingest import synthetic

    path, _ = store
    monkeypatch.setattr(synthetic, "WRITE_CHUNK_ORDERS", 777)  # edges inside orders with several line items
    assert generate_store(CONFIG, tmp_path / "chunked.jsonl").read_bytes() == path.read_bytes()
