"""Fraud in the synthetic store (synthetic.fraud_rate): off, the store's bytes are what they were; on, fraud
patterns at a realistic rate, and what a store records of them, in the shape of Shopify's bulk export."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from storeflow.components.config import SyntheticStoreConfig, ValidateConfig
from storeflow.components.ingest import generate_store, read_bulk_jsonl
from storeflow.components.ingest.synthetic import CATEGORIES, DAY, _end_seconds, _simulate
from storeflow.components.ingest.synthetic_fraud import PATTERNS, add_fraud
from storeflow.components.validate import validate_tables

SMALL = SyntheticStoreConfig(customers=300, orders=2_000, products=40)
# sha256 of SMALL's store written before synthetic.fraud_rate existed (gamma-churn; and bgnbd for BGNBD_STORE).
SMALL_SHA256 = "3c7e9d8a97a1c95aa4d77a4df38368c721c256d5ca4961cf5284379525dc5ca4"
BGNBD_STORE = SyntheticStoreConfig(customers=2_000, orders=6_000, products=60, seed=3)
BGNBD_SHA256 = "59442c85132c2249333a303a691a79a7372e0c563f7088e86b4b14b08aa75879"
FRAUD = SyntheticStoreConfig(customers=3_000, orders=40_000, products=150, seed=5, fraud_rate=0.004)


def test_without_fraud_the_store_and_its_cache_key_are_what_they_were(tmp_path: Path):
    assert _sha256(generate_store(SMALL, tmp_path / "a.jsonl")) == SMALL_SHA256
    assert _sha256(generate_store(BGNBD_STORE, tmp_path / "b.jsonl", process="bgnbd")) == BGNBD_SHA256
    # ingest.synthetic_store names its cache by this dump: a store cached before the switch is still found
    assert SyntheticStoreConfig().model_dump_json() == (
        '{"customers":5000,"orders":50000,"days":730,"products":400,"end":"2026-11-01T00:00:00","seed":7}')
    assert '"fraud_rate":0.004' in FRAUD.model_dump_json()
    assert SyntheticStoreConfig.model_validate_json(FRAUD.model_dump_json()) == FRAUD


def test_a_fraud_rate_out_of_range_is_named():
    with pytest.raises(ValueError, match="fraud_rate"):
        SyntheticStoreConfig(fraud_rate=0.2)


@pytest.fixture(scope="module")
def fraud_store(tmp_path_factory: pytest.TempPathFactory):
    path = generate_store(FRAUD, tmp_path_factory.mktemp("fraud") / "store.jsonl")
    end = _end_seconds(FRAUD)
    truth = add_fraud(_simulate(FRAUD), FRAUD.fraud_rate, FRAUD.seed, end - FRAUD.days * DAY, end, list(CATEGORIES))
    with path.open("rb") as lines:
        orders = pd.json_normalize([orjson.loads(line) for line in lines if line.startswith(b'{"id":"gid://shopify/Order/')])
    return path, truth, orders


def test_fraud_is_rare_and_every_pattern_occurs(fraud_store):
    path, truth, orders = fraud_store
    fraud = truth.fraud.is_fraud
    assert len(orders) == len(fraud) > FRAUD.orders
    assert 0.002 < fraud.mean() < 0.006  # well under 1 %
    assert set(truth.fraud.pattern[fraud]) == set(PATTERNS)
    assert not truth.fraud.pattern[~fraud].any()
    assert (np.diff(truth.order_time) >= 0).all()


def test_fraud_looks_like_fraud(fraud_store):
    _, truth, orders = fraud_store
    fraud = truth.fraud.is_fraud
    mismatch = truth.fraud.ship_country != truth.fraud.bill_country
    assert mismatch[fraud].mean() > 0.3 > 0.03 > mismatch[~fraud].mean()
    assert np.median(truth.order_total[fraud]) > 2 * np.median(truth.order_total[~fraud])
    account_age = truth.order_time - truth.customer_created[truth.order_customer]
    # legitimate first orders come from accounts made at checkout too: about one order in thirteen here
    assert (account_age[fraud] < 3600).mean() > 0.4 > 0.1 > (account_age[~fraud] < 3600).mean()
    abuse = truth.fraud.pattern == "discount_abuse"
    assert (truth.order_discount[abuse] / truth.order_subtotal[abuse]).min() > 0.29  # 30-50 %, to the cent
    # bursts: orders to one shipping address within the hour
    burst = pd.DataFrame({"address": truth.fraud.ship_address, "zip": truth.fraud.ship_zip, "t": truth.order_time})[
        truth.fraud.pattern == "burst"]
    assert (burst.groupby(["address", "zip"])["t"].agg(lambda t: t.max() - t.min()) <= 3600).all()
    assert (burst.groupby(["address", "zip"]).size() >= 3).all()


def test_the_store_records_fraud_as_shopify_exports_it(fraud_store):
    _, truth, orders = fraud_store
    fraud = truth.fraud.is_fraud
    assert set(orders["cancelReason"].dropna()) <= {"CUSTOMER", "DECLINED", "FRAUD", "INVENTORY", "OTHER", "STAFF"}
    disputes = orders["disputes"].map(lambda d: d[0] if d else None)
    kinds = disputes.map(lambda d: d and d["initiatedAs"])
    statuses = disputes.map(lambda d: d and d["status"])
    assert set(kinds.dropna()) == {"CHARGEBACK", "INQUIRY"}
    assert set(statuses.dropna()) <= {"ACCEPTED", "LOST", "NEEDS_RESPONSE", "UNDER_REVIEW", "WON", "CHARGE_REFUNDED"}
    assert disputes.dropna().map(lambda d: d["id"].startswith("gid://shopify/ShopifyPaymentsDispute/")).all()
    # a refund after an inquiry
    refunded = orders["refunds"].map(len) > 0
    assert (refunded & (kinds == "INQUIRY")).sum() > 0
    # each trace is far likelier on fraud than on legitimate orders, and most fraud leaves one
    recorded = (orders["cancelReason"] == "FRAUD") | kinds.notna()
    assert recorded[fraud].mean() > 0.6
    assert recorded[~fraud].mean() < 0.01
    # Shopify's own assessment (provider null) first; an app's, with its title, second
    shopify = orders["risk.assessments"].map(lambda a: a[0])
    assert shopify.map(lambda a: a["provider"] is None).all()
    high = shopify.map(lambda a: a["riskLevel"]) == "HIGH"
    assert high[fraud].mean() > 0.3 > 0.05 > high[~fraud].mean()
    apps = orders["risk.assessments"].map(lambda a: a[1]["provider"]["title"] if len(a) > 1 else None)
    assert apps.notna().any()
    assert orders["paymentGatewayNames"].map(len).eq(1).all()
    assert orders["shippingAddress.countryCodeV2"].str.fullmatch("[A-Z]{2}").all()


def test_ingest_reads_the_fraud_store_and_it_passes_the_gate(fraud_store):
    path, truth, _ = fraud_store
    tables = read_bulk_jsonl([path])
    assert len(tables["orders"]) == len(truth.order_time)
    assert len(tables["customers"]) == len(truth.emails) > FRAUD.customers
    report = validate_tables(tables, ValidateConfig(), now=datetime(2026, 11, 23, tzinfo=timezone.utc))
    assert report.passed, report.render()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_catalog_without_high_value_products_still_gets_fraud(tmp_path: Path):
    tiny = SyntheticStoreConfig(customers=50, orders=300, products=1, days=400, seed=1, fraud_rate=0.02)  # coffee only
    path = generate_store(tiny, tmp_path / "tiny.jsonl")
    assert len(read_bulk_jsonl([path])["orders"]) > tiny.orders
