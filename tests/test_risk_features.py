"""Order risk: the risk fields read from bulk JSONL, fraud labels as a store records them, and order-time
features that see only what was known when each order was created."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from storeflow.components.config import SyntheticStoreConfig
from storeflow.components.ingest import generate_store, read_bulk_jsonl
from storeflow.components.ingest.errors import IngestError
from storeflow.components.risk.features import LABEL, ORDER_FEATURES, order_risk_features
from storeflow.components.risk.orders import read_risk_fields
from storeflow.components.tables import SCHEMAS

STORE = SyntheticStoreConfig(customers=1_500, orders=15_000, products=80, seed=21, fraud_rate=0.005)
T0 = pd.Timestamp("2026-03-01T12:00:00Z")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    path = generate_store(STORE, tmp_path_factory.mktemp("risk") / "store.jsonl")
    return read_bulk_jsonl([path]), read_risk_fields([path])


def _order(number: int, **fields) -> dict:
    return {"id": f"gid://shopify/Order/{number}", "createdAt": "2026-03-01T12:00:00Z", "currencyCode": "USD",
            "totalPriceSet": {"shopMoney": {"amount": "10.0"}}, **fields}


def _write(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(record) for record in records) + b"\n")
    return path


def test_shopifys_own_risk_level_is_the_assessment_without_a_provider(tmp_path: Path):
    path = _write(tmp_path / "orders.jsonl", [
        _order(1, risk={"assessments": [{"riskLevel": "LOW", "provider": None},
                                        {"riskLevel": "HIGH", "provider": {"title": "An app"}}]},
               shippingAddress={"address1": " 1 Main St", "zip": "10001", "countryCodeV2": "US"},
               billingAddress={"countryCodeV2": "US"}, paymentGatewayNames=["shopify_payments", "gift_card"],
               disputes=[{"id": "gid://shopify/ShopifyPaymentsDispute/5", "initiatedAs": "INQUIRY", "status": "WON"},
                         {"id": "gid://shopify/ShopifyPaymentsDispute/6", "initiatedAs": "CHARGEBACK", "status": "LOST"}]),
        _order(2, cancelReason="FRAUD", risk={"assessments": [{"riskLevel": "PENDING", "provider": None}]},
               shippingAddress={"address1": "1 MAIN ST", "zip": "10001", "countryCodeV2": "US"}),
        {"id": "gid://shopify/LineItem/9", "quantity": 1, "__parentId": "gid://shopify/Order/1",
         "originalUnitPriceSet": {"shopMoney": {"amount": "10.0"}}},
    ])
    risk = read_risk_fields([path]).set_index("order_id")
    assert read_bulk_jsonl([path])["orders"].set_index("order_id").loc[1, "risk_level"] == "HIGH"  # ingest: the highest
    assert risk.loc[1, "shopify_risk_level"] == "LOW"
    assert pd.isna(risk.loc[2, "shopify_risk_level"])  # pending: not assessed yet
    assert risk.loc[1, "gateway"] == "shopify_payments+gift_card"
    assert (risk.loc[1, "dispute_type"], risk.loc[1, "dispute_status"], risk.loc[1, "disputes"]) == ("CHARGEBACK", "LOST", 2)
    assert risk.loc[2, "cancel_reason"] == "FRAUD" and pd.isna(risk.loc[2, "bill_country"])
    assert risk.loc[1, "address_key"] == risk.loc[2, "address_key"]  # case and spaces do not make another address
    assert len(risk) == 2


@pytest.mark.parametrize(("fields", "named"), [
    ({"cancelReason": "HACKED"}, "cancelReason 'HACKED' of order 1"),
    ({"disputes": [{"initiatedAs": "CHARGEBACK", "status": "LOSTISH"}]}, "disputes.status 'LOSTISH' of order 1"),
    ({"risk": {"assessments": [{"riskLevel": "SEVERE", "provider": None}]}}, "riskLevel 'SEVERE' of order 1"),
])
def test_a_value_shopify_never_sends_is_named(tmp_path: Path, fields: dict, named: str):
    path = _write(tmp_path / "bad.jsonl", [_order(1, **fields)])
    with pytest.raises(IngestError, match=named):
        read_risk_fields([path])


def test_an_export_without_the_risk_fields_says_which_query_gives_them(tmp_path: Path):
    path = _write(tmp_path / "plain.jsonl", [_order(1), _order(2)])
    with pytest.raises(IngestError, match="OrderRisk"):
        read_risk_fields([path])
    tables = read_bulk_jsonl([path])
    with pytest.raises(ValueError, match="synthetic.fraud_rate"):
        order_risk_features(tables, read_risk_fields([]))


def _tables(orders: list[dict], refunds: list[dict] = (), customers: list[dict] = ()) -> dict[str, pd.DataFrame]:
    def frame(name: str, rows) -> pd.DataFrame:
        empty = SCHEMAS[name].empty_table().to_pandas()
        return pd.DataFrame(list(rows), columns=empty.columns).astype(empty.dtypes.to_dict()) if rows else empty

    base = {"name": None, "email": None, "updated_at": None, "cancelled_at": None, "currency": "USD",
            "subtotal_price": 10.0, "total_discounts": 0.0, "financial_status": "PAID", "risk_level": "LOW"}
    orders = [{**base, **row} for row in orders]
    for row in orders:
        row.setdefault("total_price", row["subtotal_price"])
    return {"orders": frame("orders", orders), "refunds": frame("refunds", refunds),
            "customers": frame("customers", customers), "line_items": frame("line_items", [])}


def _risk(rows: list[dict]) -> pd.DataFrame:
    from storeflow.components.risk.orders import COLUMNS

    return pd.DataFrame([{"disputes": 0, **row} for row in rows], columns=list(COLUMNS))


def test_labels_are_what_the_store_recorded():
    minutes = [T0 + pd.Timedelta(minutes=k) for k in range(6)]
    tables = _tables([{"order_id": k + 1, "customer_id": 50 + k, "created_at": t} for k, t in enumerate(minutes)],
                     refunds=[{"refund_id": 1, "order_id": 4, "created_at": T0 + pd.Timedelta(days=30), "amount": 10.0}])
    risk = _risk([
        {"order_id": 1, "cancel_reason": "FRAUD"},
        {"order_id": 2, "dispute_type": "CHARGEBACK", "dispute_status": "LOST"},
        {"order_id": 3, "dispute_type": "CHARGEBACK", "dispute_status": "WON"},  # the merchant proved it genuine
        {"order_id": 4, "dispute_type": "INQUIRY", "dispute_status": "CHARGE_REFUNDED"},  # refunded after it
        {"order_id": 5, "dispute_type": "INQUIRY", "dispute_status": "WON"},
        {"order_id": 6, "cancel_reason": "CUSTOMER"},
    ])
    frame = order_risk_features(tables, risk).set_index("order_id")
    assert frame[LABEL].tolist() == [1, 1, 0, 1, 0, 0]
    assert frame["label_source"].tolist() == ["cancelled_fraud", "chargeback", "", "refund_after_dispute", "", ""]


def test_velocity_counts_only_earlier_orders_by_customer_email_and_address():
    at = [T0, T0 + pd.Timedelta(minutes=10), T0 + pd.Timedelta(minutes=50), T0 + pd.Timedelta(minutes=80),
          T0 + pd.Timedelta(hours=30)]
    customers = [1, 2, 3, 1, 1]  # three accounts, one address
    tables = _tables(
        [{"order_id": k + 1, "customer_id": c, "email": f"u{c}@x.com", "created_at": t, "subtotal_price": 20.0}
         for k, (c, t) in enumerate(zip(customers, at))],
        refunds=[{"refund_id": 1, "order_id": 1, "created_at": T0 + pd.Timedelta(minutes=5), "amount": 5.0}],
        customers=[{"customer_id": c, "email": f"u{c}@x.com", "created_at": T0 - pd.Timedelta(hours=2),
                    "updated_at": T0} for c in (1, 2, 3)],
    )
    risk = _risk([{"order_id": k + 1, "address_key": "a", "ship_country": "US", "bill_country": "CA" if k else "US"}
                  for k in range(5)])
    frame = order_risk_features(tables, risk).set_index("order_id")
    assert frame["address_orders_1h"].tolist() == [0, 1, 2, 1, 0]
    assert frame["address_orders_24h"].tolist() == [0, 1, 2, 3, 0]
    assert frame["address_customers_7d"].tolist() == [0, 1, 2, 3, 3]
    assert frame["customer_orders_1h"].tolist() == [0, 0, 0, 0, 0]
    assert frame["customer_orders_24h"].tolist() == [0, 0, 0, 1, 0]
    assert frame["email_orders_24h"].tolist() == frame["customer_orders_24h"].tolist()
    assert frame["prior_orders"].tolist() == [0, 0, 0, 1, 2]
    assert frame["prior_refunds"].tolist() == [0, 0, 0, 1, 1]  # refunded 5 minutes after order 1
    assert frame["value_over_prior_avg"].tolist() == [0, 0, 0, 1.0, 1.0]
    assert frame["country_mismatch"].tolist() == [0, 1, 1, 1, 1]
    np.testing.assert_allclose(frame["account_age_hours"], [2.0, 2 + 1 / 6, 2 + 5 / 6, 2 + 4 / 3, 32.0])
    assert frame["hour_of_day"].tolist() == [12, 12, 12, 13, 18]


def test_every_feature_is_what_was_known_when_the_order_was_created(store):
    """Cut the store at a time, as an export taken then would have it (later orders, refunds and accounts
    absent, later cancellations not yet made): every earlier order's features are the same."""
    tables, risk = store
    full = order_risk_features(tables, risk).set_index("order_id")
    cut = full["created_at"].quantile(0.6)
    orders = tables["orders"][tables["orders"]["created_at"] < cut].copy()
    later = orders["cancelled_at"] >= cut
    orders.loc[later, "cancelled_at"] = pd.NaT
    early = risk[risk["order_id"].isin(orders["order_id"])].copy()
    early.loc[early["order_id"].isin(orders.loc[later, "order_id"]), "cancel_reason"] = None
    early[["dispute_type", "dispute_status"]] = None  # disputes come weeks later
    then = {
        "orders": orders,
        "line_items": tables["line_items"][tables["line_items"]["order_id"].isin(orders["order_id"])],
        "refunds": tables["refunds"][tables["refunds"]["created_at"] < cut],
        "customers": tables["customers"][tables["customers"]["created_at"] < cut],
    }
    partial = order_risk_features(then, early).set_index("order_id")
    assert len(partial) == len(orders) > 5_000
    columns = list(ORDER_FEATURES)
    pd.testing.assert_frame_equal(partial[columns], full.loc[partial.index, columns], check_exact=False, rtol=1e-12)
    assert (full.loc[partial.index, LABEL].sum() > partial[LABEL].sum())  # labels, unlike features, came later


def test_fraud_in_the_synthetic_store_shows_in_the_features(store):
    tables, risk = store
    frame = order_risk_features(tables, risk)
    assert len(frame) == len(tables["orders"])
    assert 0.002 < frame[LABEL].mean() < 0.01
    fraud, legit = frame[frame[LABEL] == 1], frame[frame[LABEL] == 0]
    assert fraud["country_mismatch"].mean() > 5 * legit["country_mismatch"].mean()
    assert fraud["address_orders_24h"].mean() > 3 * legit["address_orders_24h"].mean()
    assert fraud["total_price"].median() > legit["total_price"].median()
    assert np.isfinite(frame[list(ORDER_FEATURES)].to_numpy(dtype=float)).all()


def test_a_directory_of_bulk_results_reads_the_risk_fields_from_the_orderrisk_file(tmp_path: Path):
    orders = _write(tmp_path / "orders.jsonl", [_order(1), _order(2)])  # ingest's Orders export: no risk fields
    risk_file = _write(tmp_path / "order_risk.jsonl", [
        {"id": "gid://shopify/Order/1", "cancelReason": "FRAUD", "paymentGatewayNames": ["paypal"], "disputes": []},
        {"id": "gid://shopify/Order/2", "cancelReason": None, "paymentGatewayNames": ["shopify_payments"],
         "disputes": []},
    ])
    for files in ([orders, risk_file], [risk_file, orders]):
        risk = read_risk_fields(files).set_index("order_id")
        assert risk["cancel_reason"].to_dict() == {1: "FRAUD", 2: None}
        assert risk["gateway"].to_dict() == {1: "paypal", 2: "shopify_payments"}


def test_an_export_without_the_risk_fields_is_read_a_batch_at_a_time(tmp_path: Path, monkeypatch):
    """The scorer looks for the fields in the export when the snapshot kept none. An export without them is refused
    having held one batch: every batch was listed and made a pandas frame first, 1.8 GB for 5,000,000 orders."""
    from storeflow.components.risk import orders

    path = _write(tmp_path / "plain.jsonl", [_order(n) for n in range(1, 3_001)])
    monkeypatch.setattr(orders, "BATCH_BYTES", 16 << 10)  # many batches from a small file
    framed = []
    real = orders._frame
    monkeypatch.setattr(orders, "_frame", lambda table, *rest: framed.append(table.num_rows) or real(table, *rest))
    with pytest.raises(IngestError, match="no order has any of"):
        read_risk_fields([path])
    assert framed == []
    mixed = _write(tmp_path / "mixed.jsonl", [_order(n, cancelReason="FRAUD" if n == 2_999 else None)
                                              for n in range(1, 3_001)])
    found = read_risk_fields([mixed])
    assert found.loc[found["order_id"] == 2_999, "cancel_reason"].tolist() == ["FRAUD"]
    assert 0 < sum(framed) < 3_000  # only the batch that carries a value became a frame


def test_an_order_line_longer_than_a_block_is_read(tmp_path: Path, monkeypatch):
    """An order whose line is longer than a parse block (very many disputes or refunds) is read, in blocks that hold
    it, with the orders before and after it once each (4 MB blocks since the scorer's memory was cut)."""
    from storeflow.components.risk import orders

    monkeypatch.setattr(orders, "BATCH_BYTES", 16 << 10)
    disputes = [{"id": f"gid://shopify/ShopifyPaymentsDispute/{n}", "initiatedAs": "INQUIRY", "status": "WON"}
                for n in range(400)]  # ~40 KB on one line
    records = [_order(n, cancelReason="FRAUD" if n == 7 else None) for n in range(1, 500)]
    records.insert(300, _order(900, disputes=disputes, cancelReason="CUSTOMER"))
    found = read_risk_fields([_write(tmp_path / "long.jsonl", records)])
    assert found["order_id"].is_unique and {7, 900} <= set(found["order_id"])  # batches with no value make no rows
    assert found.set_index("order_id").loc[[7, 900], "cancel_reason"].tolist() == ["FRAUD", "CUSTOMER"]
    assert found.set_index("order_id").loc[900, "disputes"] == 400
