"""One label definition, ``[t, t + horizon)``, for training rows and monitoring's decay labels alike."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from conftest import write_snapshot
from storeflow.components.features.compute import labelled_cutoffs
from storeflow.components.monitor.labels import attach_labels, matured_outcomes

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

    outcomes = matured_outcomes(predictions, write_snapshot(tables, tmp_path / "snap2"), HORIZON)
    assert dict(zip(later, outcomes["label_spend"].tolist())) == {c: spend[c] for c in later}  # training's label_spend


def test_monitoring_judges_the_logged_expected_spend_against_what_customers_then_spent(store_tables, tmp_path):
    """Issue 14: spend as served (the prediction log's expected_spend) is judged on matured predictions like
    the score: aggregate error and top-decile lift against the label window's spend."""
    import json

    from storeflow.components.config import load_settings
    from storeflow.components.evaluate.metrics import spend_metrics
    from storeflow.components.monitor.predictions import read_window
    from storeflow.components.monitor.stage import decay

    later = {c: T + timedelta(days=c % 3 * 20) for c in range(1, 41)}  # two in three order again within 30 days
    tables = _tables(store_tables, later)
    logs = tmp_path / "predictions"
    logs.mkdir()
    served = {c: 10.0 + c for c in later}
    (logs / "predictions-1.jsonl").write_text("".join(json.dumps(
        {"ts": T.isoformat(), "model_version": "3", "customer_id": c, "fallback": False, "score": 0.5 + (c % 3 == 2) * 0.1,
         "expected_spend": served[c], "spend_tier": "MEDIUM", "features": {}}) + "\n" for c in later))
    window = read_window(logs, T - timedelta(hours=1), T + timedelta(hours=1), [], "3", 1_000)
    assert window.frame["expected_spend"].tolist() == [served[c] for c in window.frame["customer_id"]]
    outcomes = matured_outcomes(window.frame, write_snapshot(tables, tmp_path / "snap"), HORIZON)
    labelled = window.frame.assign(label=outcomes["label"], label_spend=outcomes["label_spend"])
    found = decay(labelled, None, load_settings({"monitor": {"min_labelled_rows": 10}}))
    expected = spend_metrics(labelled["label_spend"].to_numpy(), labelled["expected_spend"].to_numpy())
    assert found["spend_labelled"] == 40
    assert {k: found[k] for k in expected} == expected
    assert found["spend_actual"] > 0
