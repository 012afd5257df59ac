"""Ground truth for served predictions, once it exists: did the customer order again within the label
horizon from the prediction time? The one definition training labels use (``features.labels``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from storeflow.components.features.labels import in_label_window
from storeflow.components.tables import read_table

LABELS_SQL = f"""
WITH o AS (SELECT customer_id, created_at, total_price FROM orders
           WHERE customer_id IS NOT NULL AND cancelled_at IS NULL),
p AS (SELECT row, customer_id, CAST(ts AS TIMESTAMPTZ) AS ts FROM predictions)
SELECT p.row,
       CASE WHEN count(o.created_at) > 0 THEN 1 ELSE 0 END AS label,
       -- what the customer spent in the same window, as training's label_spend (features.compute)
       coalesce(sum(o.total_price), 0)::DOUBLE AS label_spend
FROM p LEFT JOIN o ON o.customer_id = p.customer_id AND {in_label_window("o.created_at", "p.ts")}
WHERE p.ts + to_days($horizon) <= $observed_until
GROUP BY p.row
ORDER BY p.row
"""


def attach_labels(predictions: pd.DataFrame, snapshot: Path | None, horizon_days: int) -> pd.Series:
    """A label per prediction (index aligned), null while its horizon is not yet covered by the snapshot."""
    return matured_outcomes(predictions, snapshot, horizon_days)["label"]


def matured_outcomes(predictions: pd.DataFrame, snapshot: Path | None, horizon_days: int) -> pd.DataFrame:
    """Per prediction (index aligned): ``label`` and ``label_spend`` (what the customer spent in the label
    window), both null while its horizon is not yet covered by the snapshot."""
    import duckdb

    labels = pd.Series(pd.NA, index=predictions.index, dtype="Int64")
    spend = pd.Series(float("nan"), index=predictions.index, dtype=float)
    outcomes = pd.DataFrame({"label": labels, "label_spend": spend})
    if snapshot is None or predictions.empty:
        return outcomes
    orders = read_table(snapshot, "orders")
    if orders.empty:
        return outcomes
    observed_until = pd.to_datetime(orders["created_at"], utc=True).max()
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("orders", orders)
        frame = predictions[["customer_id", "ts"]].reset_index(drop=True)
        con.register("predictions", frame.assign(row=range(len(frame))))
        found = con.execute(LABELS_SQL, {"horizon": horizon_days, "observed_until": observed_until}).df()
    labels.iloc[found["row"].to_numpy()] = found["label"].to_numpy()
    spend.iloc[found["row"].to_numpy()] = found["label_spend"].to_numpy()
    return pd.DataFrame({"label": labels, "label_spend": spend})
