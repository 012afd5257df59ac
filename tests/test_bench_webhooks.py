"""bench/webhooks.py's store-sized offline history: what it writes is a history the real applier appends to and
Feast reads, so the bench measures the applier beside a features stage's rows, not beside an empty directory."""

from __future__ import annotations

import importlib
from pathlib import Path

import pandas as pd
import pytest
from starlette.testclient import TestClient
from test_webhook_signing import delivery, order

from storeflow.components.features import offline
from storeflow.components.features.repo import CUSTOMER_VIEW, apply, feature_store, source_path
from storeflow.components.shopify.webhooks import create_app

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench_webhooks():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))
        yield importlib.import_module("webhooks")


def test_the_benchs_history_is_one_the_applier_appends_to_and_feast_reads(hooks, bench_webhooks):
    bench_webhooks.write_history(hooks.project.state_dir, 2_100)
    path = source_path(hooks, CUSTOMER_VIEW)
    assert bench_webhooks.history_dir(hooks.project.state_dir) == path
    written = pd.read_parquet(offline.snapshot_part(path))
    assert len(written) == 2_100 and written["event_timestamp"].nunique() == 21  # a row per customer and cutoff
    apply(hooks)

    with TestClient(create_app(hooks), base_url="https://storeflow.example") as client:
        client.post("/webhooks", **delivery("orders/create", order(9001, 42, "b@example.com", 40.0), "wh-b-1"))
        client.app.state.applier.drain()
        assert client.get("/healthz").json()["pending"] == 0

    assert len(offline.live_parts(path)) == 1 and len(pd.read_parquet(path)) == 2_101
    newest = written["event_timestamp"].max()
    one = int(written.loc[written["event_timestamp"] == newest, "customer_id"].iloc[0])
    after_the_order = pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=1)
    entities = pd.DataFrame({"customer_id": [one, 42], "event_timestamp": [newest, after_the_order]})
    got = feature_store(hooks).get_historical_features(
        entity_df=entities, features=[f"{CUSTOMER_VIEW}:frequency", f"{CUSTOMER_VIEW}:monetary"]).to_df()
    got = got.set_index("customer_id")
    mine = written[(written["customer_id"] == one) & (written["event_timestamp"] == newest)].iloc[0]
    assert got.loc[one, "monetary"] == pytest.approx(mine["monetary"])
    assert (got.loc[42, "frequency"], got.loc[42, "monetary"]) == (1, pytest.approx(40.0))


def test_the_benchs_snapshot_is_one_the_applier_reads_its_customers_from(hooks, bench_webhooks):
    """The deliveries' customers are the snapshot's: the applier's features count their snapshot orders too."""
    bench_webhooks.write_store_snapshot(hooks.project.state_dir, 300)
    (snapshot,) = (hooks.data_dir / "snapshots").iterdir()
    tables = {name: pd.read_parquet(snapshot / f"{name}.parquet") for name in ("orders", "line_items", "customers")}
    assert len(tables["orders"]) == 3_000 and tables["customers"]["customer_id"].min() == bench_webhooks.CUSTOMER_BASE
    assert 1.6 < len(tables["line_items"]) / 3_000 < 1.8
    (_, body, _), = bench_webhooks.deliveries(1, 2_000)
    customer = bench_webhooks.CUSTOMER_BASE  # the first delivery's customer
    before = int((tables["orders"]["customer_id"] == customer).sum())
    assert before > 0
    apply(hooks)

    with TestClient(create_app(hooks), base_url="https://storeflow.example") as client:
        client.post("/webhooks", **delivery("orders/create", order(9001, customer, "c@example.com", 40.0), "wh-c-1"))
        client.app.state.applier.drain()
        assert client.get("/healthz").json()["pending"] == 0

    online = feature_store(hooks).get_online_features(features=[f"{CUSTOMER_VIEW}:frequency"],
                                                      entity_rows=[{"customer_id": customer}]).to_dict()
    assert online["frequency"] == [before + 1]  # its orders: the snapshot's and the live one


def test_the_benchs_store_with_risk_fields_is_what_the_risk_scorer_seeds_from(hooks, bench_webhooks):
    """risk_throughput --snapshot-customers writes this store after training, customers from the deliveries' first:
    the orders' risk fields are kept as ingest keeps them (one row an order, named in the manifest), so the scorer's
    start reads them from the snapshot, as on a store exported with them (what its memory is measured on)."""
    from storeflow.components.ingest.snapshot import newest_snapshot, read_manifest
    from storeflow.components.risk.orders import snapshot_risk_table

    bench_webhooks.write_store_snapshot(hooks.project.state_dir, 400, first_customer=7_000_000, risk_fields=True)
    snapshot = newest_snapshot(hooks.data_dir / "snapshots")
    orders = pd.read_parquet(snapshot / "orders.parquet")
    risk = snapshot_risk_table(snapshot)
    assert risk is not None and sorted(risk.column("order_id").to_pylist()) == sorted(orders["order_id"])
    assert read_manifest(snapshot)["extra_tables"]["order_risk"]["rows"] == len(orders) == 4_000
    assert pd.read_parquet(snapshot / "customers.parquet")["customer_id"].min() == 7_000_000
    reasons = risk.column("cancel_reason").to_pylist()
    assert 0 < reasons.count("FRAUD") < 40 and len(set(risk.column("address_key").to_pylist())) == 4_000
