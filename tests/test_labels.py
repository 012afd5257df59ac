"""One label definition, ``[t, t + horizon)``, for training rows and monitoring's decay labels alike."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from conftest import write_snapshot
from storeflow.components.features.compute import labelled_cutoffs
from storeflow.components.monitor.labels import attach_labels

T = datetime(2026, 3, 1, tzinfo=timezone.utc)
HORIZON = 30


def _tables(store_tables, later: dict[int, datetime]) -> dict[str, pd.DataFrame]:
    """Customers 1..n each with a first order a year before T and one more order at ``later[c]``."""
    template = store_tables["orders"].iloc[[0]]
    rows = []
    for customer, second in later.items():
        for number, when in enumerate([T - timedelta(days=365), second]):
            row = template.copy()
            row["order_id"], row["customer_id"] = customer * 10 + number, customer
            row["created_at"] = row["updated_at"] = when
            rows.append(row)
    # One late order keeps every customer's horizon observed.
    tail = template.copy()
    tail["order_id"], tail["customer_id"] = 999, 99
    tail["created_at"] = tail["updated_at"] = T + timedelta(days=HORIZON + 5)
    empty = {name: frame.iloc[0:0] for name, frame in store_tables.items()}
    return {**empty, "orders": pd.concat([*rows, tail], ignore_index=True)}


def test_features_and_monitoring_label_the_window_boundaries_alike(store_tables, tmp_path: Path) -> None:
    later = {1: T, 2: T + timedelta(days=HORIZON) - timedelta(seconds=1), 3: T + timedelta(days=HORIZON),
             4: T - timedelta(seconds=1)}
    expected = {1: 1, 2: 1, 3: 0, 4: 0}  # an order at t counts, one at t + horizon does not
    tables = _tables(store_tables, later)
    training = labelled_cutoffs(tables, [T], HORIZON).set_index("customer_id")["label"]
    assert {c: int(training[c]) for c in later} == expected
    spend = labelled_cutoffs(tables, [T], HORIZON).set_index("customer_id")["label_spend"]
    price = float(tables["orders"]["total_price"].iloc[0])
    assert {c: spend[c] for c in later} == {c: price * e for c, e in expected.items()}  # the same window

    predictions = pd.DataFrame({"customer_id": list(later), "ts": [T] * len(later)})
    decay = attach_labels(predictions, write_snapshot(tables, tmp_path / "snap"), HORIZON)
    assert dict(zip(later, decay.astype(int).tolist())) == expected
