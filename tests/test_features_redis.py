"""Production config, same code: the Feast online store on a real Redis (started on loopback)."""

from pathlib import Path

import pytest

from conftest import write_snapshot
from redis_server import redis_server
from storeflow.components.config import load_settings
from storeflow.components.features import build_features, feature_store
from storeflow.components.features.compute import customer_features
from storeflow.components.features.repo import CUSTOMER_KEY, feature_refs, store_config


def _redis_settings(tmp_path: Path, address: str):
    return load_settings({
        "project": {"state_dir": str(tmp_path / "state")},
        "features": {"feast": {"online_store": "redis", "redis_connection_string": address},
                     "label": {"horizon_days": 60, "cutoff_every_days": 30, "min_history_days": 60}},
    })


def test_redis_online_store_serves_materialized_features(tmp_path: Path, store_tables) -> None:
    import pandas as pd

    with redis_server(tmp_path) as address:
        settings = _redis_settings(tmp_path, address)
        assert store_config(settings)["online_store"] == {
            "type": "redis", "connection_string": f"socket_timeout=10.0,socket_connect_timeout=10.0,{address}"}
        result = build_features(settings, write_snapshot(store_tables, tmp_path / "snapshot"))
        customer = int(store_tables["orders"]["customer_id"].iloc[0])
        online = feature_store(settings).get_online_features(
            features=feature_refs(settings), entity_rows=[{CUSTOMER_KEY: customer}]).to_df()
        newest = customer_features(store_tables, [pd.Timestamp(result.served_as_of).to_pydatetime()])
        expected = newest.set_index(CUSTOMER_KEY).loc[customer]
        assert online.loc[0, "frequency"] == expected["frequency"]
        assert online.loc[0, "monetary"] == pytest.approx(expected["monetary"])
        assert not (settings.feature_repo_dir / "data" / "online.db").exists()  # nothing went to SQLite


def test_privacy_erasure_reaches_the_redis_online_store(tmp_path: Path, store_tables) -> None:
    """customers/redact and shop/redact erase Feast's Redis rows, not only SQLite's."""
    from storeflow.components.shopify.online import erase_all, erase_customers

    with redis_server(tmp_path) as address:
        settings = _redis_settings(tmp_path, address)
        build_features(settings, write_snapshot(store_tables, tmp_path / "snapshot"))
        store = feature_store(settings)
        first, second = (int(c) for c in store_tables["orders"]["customer_id"].drop_duplicates().iloc[:2])

        def frequency(customer: int):
            return store.get_online_features(features=feature_refs(settings),
                                             entity_rows=[{CUSTOMER_KEY: customer}]).to_dict()["frequency"][0]

        assert frequency(first) is not None and frequency(second) is not None
        assert erase_customers(store, [first]) == 1
        assert frequency(first) is None and frequency(second) is not None
        assert erase_all(store) >= 1
        assert frequency(second) is None


def test_forgetting_a_customers_features_keeps_their_order_risk_ledger_in_the_same_redis_key(tmp_path: Path,
                                                                                            store_tables) -> None:
    """A customer whose last order moved away has no customer features any more; in Redis their order risk history
    ledger is a field of the same key, and must stay."""
    from storeflow.components.risk.history import ORDER, Event, Ledger, OnlineHistory, amount, fold
    from storeflow.components.shopify.online import forget

    with redis_server(tmp_path) as address:
        settings = _redis_settings(tmp_path, address)
        build_features(settings, write_snapshot(store_tables, tmp_path / "snapshot"))
        store = feature_store(settings)
        first, second = (int(c) for c in store_tables["orders"]["customer_id"].drop_duplicates().iloc[:2])
        history, ledger = OnlineHistory(store), Ledger()
        fold(ledger, Event(ORDER, 1, 3_600_000_000, amount(42.5)))
        history.write({first: ledger})
        assert first in history.read([first])

        def frequency(customer: int):
            return store.get_online_features(features=feature_refs(settings),
                                             entity_rows=[{CUSTOMER_KEY: customer}]).to_dict()["frequency"][0]

        assert forget(store, [first]) == 1
        assert frequency(first) is None and frequency(second) is not None
        assert first in history.read([first])  # the ledger in the same key stays
