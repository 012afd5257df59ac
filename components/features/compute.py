"""Point-in-time customer and product features, computed in DuckDB over ingested tables.

Every feature row is stamped with the snapshot time ``as_of`` and sees only events strictly before it,
so a training row whose cutoff equals ``as_of`` can never learn from the future. Feast's
point-in-time join then picks, for each (customer, cutoff), the latest snapshot at or before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from storeflow.components.config import LabelConfig
from storeflow.components.features.labels import in_label_window
from storeflow.components.tables import TABLES, read_table, table_path

# The store's tables: in memory (a webhook's few customers, tests), or an ingested snapshot directory,
# whose Parquet files DuckDB then reads itself, streaming and spilling, never as pandas frames.
Tables = Mapping[str, pd.DataFrame] | Path

RECENT_WINDOW_DAYS = (30, 90, 180, 365)  # orders_<d>d and spend_<d>d: counts and spend in recent windows

CUSTOMER_FEATURES_SQL = """
WITH snap AS (SELECT CAST(as_of AS TIMESTAMPTZ) AS as_of FROM snapshot_times),
o AS (
    SELECT order_id, customer_id, created_at, total_price, subtotal_price, total_discounts,
           -- days since the customer's previous order: known from this order's time on
           date_diff('microsecond', lag(created_at) OVER (PARTITION BY customer_id ORDER BY created_at, order_id),
                     created_at) / 86400e6 AS gap_days
    FROM orders WHERE customer_id IS NOT NULL AND cancelled_at IS NULL
),
base AS (
    SELECT o.customer_id, snap.as_of,
           count(*) AS frequency,
           sum(o.total_price) AS gross,
           avg(o.total_price) AS avg_order_value,
           max(o.created_at) AS last_order,
           min(o.created_at) AS first_order,
           avg(o.gap_days) AS gap_mean,
           stddev_samp(o.gap_days) AS gap_std,
{windows}
           sum(o.total_discounts) / nullif(sum(o.subtotal_price), 0) AS discount_share
    FROM o JOIN snap ON o.created_at < snap.as_of
    GROUP BY ALL
),
ref AS (
    SELECT o.customer_id, snap.as_of,
           count(DISTINCT r.order_id) AS refunded_orders,
           sum(r.amount) AS refunded
    FROM refunds r JOIN o USING (order_id) JOIN snap ON r.created_at < snap.as_of AND o.created_at < snap.as_of
    GROUP BY ALL
),
cat AS (
    SELECT customer_id, as_of, max(units) / sum(units) AS category_affinity
    FROM (
        -- the product type; the vendor where none is known (the orders CSV export has no product type)
        SELECT o.customer_id, snap.as_of, coalesce(nullif(p.product_type, ''), p.vendor, '') AS category,
               sum(li.quantity) AS units
        FROM line_items li JOIN o USING (order_id) JOIN snap ON o.created_at < snap.as_of
        LEFT JOIN products p USING (product_id)
        GROUP BY ALL
    ) GROUP BY ALL
)
SELECT base.customer_id,
       base.as_of AS event_timestamp,
       date_diff('microsecond', base.last_order, base.as_of) / 86400e6 AS recency_days,
       base.frequency::BIGINT AS frequency,
       (base.gross - coalesce(ref.refunded, 0))::DOUBLE AS monetary,
       base.avg_order_value::DOUBLE AS avg_order_value,
       (coalesce(ref.refunded_orders, 0) / base.frequency)::DOUBLE AS refund_rate,
       date_diff('microsecond', base.first_order, base.as_of) / 86400e6 AS days_since_first_order,
       coalesce(cat.category_affinity, 0)::DOUBLE AS category_affinity,
       base.orders_90d::BIGINT AS orders_last_90d,
       coalesce(base.discount_share, 0)::DOUBLE AS discount_share,
{window_columns}
       -- one order so far: the only gap known is at least the customer's age
       coalesce(base.gap_mean, date_diff('microsecond', base.first_order, base.as_of) / 86400e6)::DOUBLE
           AS inter_purchase_days_mean,
       coalesce(base.gap_std, 0)::DOUBLE AS inter_purchase_days_std,
       (date_diff('microsecond', base.last_order, base.as_of) / 86400e6
           / greatest(coalesce(base.gap_mean, date_diff('microsecond', base.first_order, base.as_of) / 86400e6), 1))
           ::DOUBLE AS recency_over_gap,
       -- orders in the last half year minus the half year before it: buying more, or fading
       (base.orders_180d - (base.orders_365d - base.orders_180d))::DOUBLE AS order_trend
FROM base
LEFT JOIN ref USING (customer_id, as_of)
LEFT JOIN cat USING (customer_id, as_of)
ORDER BY event_timestamp, customer_id
"""

PRODUCT_FEATURES_SQL = """
WITH snap AS (SELECT CAST(as_of AS TIMESTAMPTZ) AS as_of FROM snapshot_times)
SELECT li.product_id, snap.as_of AS event_timestamp,
       (sum(li.quantity) FILTER (WHERE o.created_at >= snap.as_of - INTERVAL 7 DAY) / 7.0)::DOUBLE
           AS units_per_day_7d,
       (sum(li.quantity) FILTER (WHERE o.created_at >= snap.as_of - INTERVAL 30 DAY) / 30.0)::DOUBLE
           AS units_per_day_30d,
       (sum(li.quantity * li.price) FILTER (WHERE o.created_at >= snap.as_of - INTERVAL 30 DAY))::DOUBLE
           AS revenue_30d
FROM line_items li JOIN orders o USING (order_id)
JOIN snap ON o.created_at < snap.as_of AND o.created_at >= snap.as_of - INTERVAL 30 DAY
WHERE li.product_id IS NOT NULL AND o.cancelled_at IS NULL
GROUP BY ALL
ORDER BY event_timestamp, product_id
"""

_WINDOWS = "\n".join(
    f"           count(*) FILTER (WHERE o.created_at >= snap.as_of - INTERVAL {d} DAY) AS orders_{d}d,\n"
    f"           coalesce(sum(o.total_price) FILTER (WHERE o.created_at >= snap.as_of - INTERVAL {d} DAY), 0)"
    f" AS spend_{d}d," for d in RECENT_WINDOW_DAYS)
_WINDOW_COLUMNS = "\n".join(  # the 90-day count is the older orders_last_90d
    (f"       base.orders_{d}d::DOUBLE AS orders_{d}d," if d != 90 else "")
    + f" base.spend_{d}d::DOUBLE AS spend_{d}d," for d in RECENT_WINDOW_DAYS)
CUSTOMER_FEATURES_SQL = CUSTOMER_FEATURES_SQL.format(windows=_WINDOWS, window_columns=_WINDOW_COLUMNS)

LABELS_SQL = f"""
WITH cut AS (SELECT CAST(as_of AS TIMESTAMPTZ) AS as_of FROM snapshot_times),
o AS (SELECT customer_id, created_at, total_price FROM orders WHERE customer_id IS NOT NULL AND cancelled_at IS NULL)
SELECT o.customer_id, cut.as_of AS event_timestamp,
       max(CASE WHEN {in_label_window("o.created_at", "cut.as_of")} THEN 1 ELSE 0 END)::BIGINT AS label,
       -- what the customer spends in the same window (gross of later refunds): the spend target
       coalesce(sum(o.total_price) FILTER (WHERE {in_label_window("o.created_at", "cut.as_of")}), 0)::DOUBLE
           AS label_spend
FROM o JOIN cut ON o.created_at < cut.as_of + to_days($horizon)
GROUP BY ALL
HAVING min(o.created_at) < cut.as_of
ORDER BY event_timestamp, customer_id
"""


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _connect(tables: Tables, times: list[datetime], memory_limit_mb: int | None = None,
             spill_dir: Path | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the store's tables and the snapshot times; past ``memory_limit_mb`` its
    joins, aggregates and sorts spill to ``spill_dir`` instead of growing."""
    con = connection()
    if memory_limit_mb is not None:
        con.execute(f"SET memory_limit = '{int(memory_limit_mb)}MB'")
        con.execute("SET preserve_insertion_order = false")  # every query here sorts what it returns
    if spill_dir is not None:
        Path(spill_dir).mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = {_sql_string(str(spill_dir))}")
    if isinstance(tables, Path):
        for name in TABLES:
            path = table_path(tables, name)
            if not path.exists():
                read_table(tables, name)  # raises the error that names the table and the missing file
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_sql_string(str(path))})")
        con.register("snapshot_times", _times(times))
    else:
        _register(con, tables, times)
    return con


def _times(times: list[datetime]) -> pd.DataFrame:
    return pd.DataFrame({"as_of": pd.to_datetime(times, utc=True)})


def _register(con: duckdb.DuckDBPyConnection, tables: dict[str, pd.DataFrame], times: list[datetime]) -> list[str]:
    for name, frame in tables.items():
        con.register(name, frame)
    con.register("snapshot_times", _times(times))
    return [*tables, "snapshot_times"]


def connection() -> duckdb.DuckDBPyConnection:
    """A connection for :func:`customer_features` to use call after call (``con``): a new one per call was ~6 % of
    the webhook applier's CPU, which computes a few customers' features several times a second."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def _microseconds(frame: pd.DataFrame) -> pd.DataFrame:
    # Feast's DuckDB store compares timestamps at microsecond precision; nanoseconds break the join.
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).astype("datetime64[us, UTC]")
    return frame


def customer_features(tables: Tables, as_of: list[datetime], con: duckdb.DuckDBPyConnection | None = None
                      ) -> pd.DataFrame:
    """One row per (customer, snapshot) with behaviour strictly before the snapshot. ``con`` (:func:`connection`):
    in-memory ``tables`` are registered on it for this call only, and it stays open."""
    if con is None or isinstance(tables, Path):
        with _connect(tables, as_of) as own:
            return _microseconds(own.execute(CUSTOMER_FEATURES_SQL).df())
    names = _register(con, tables, as_of)
    try:
        return _microseconds(con.execute(CUSTOMER_FEATURES_SQL).df())
    finally:
        for name in names:  # nothing of this call's frames is kept
            con.unregister(name)


def write_customer_features(snapshot: Path, as_of: list[datetime], out: Path, memory_limit_mb: int,
                            spill_dir: Path) -> int:
    """:func:`customer_features` of an ingested snapshot, written by DuckDB straight to Parquet at ``out``
    (timestamps in microseconds, as Feast joins them); returns the rows written. A large store's rows
    (500,000 customers x 13 snapshots) never become one pandas frame: that frame peaked at 7 GB."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with _connect(snapshot, as_of, memory_limit_mb, spill_dir) as con:
        con.execute(f"COPY ({CUSTOMER_FEATURES_SQL}) TO {_sql_string(str(out))} (FORMAT parquet)")
        return con.execute(f"SELECT count(*) FROM read_parquet({_sql_string(str(out))})").fetchall()[0][0]


def product_features(tables: Tables, as_of: list[datetime], memory_limit_mb: int | None = None,
                     spill_dir: Path | None = None) -> pd.DataFrame:
    """Sales velocity per (product, snapshot) over the 7 and 30 days before it."""
    with _connect(tables, as_of, memory_limit_mb, spill_dir) as con:
        return _microseconds(con.execute(PRODUCT_FEATURES_SQL).df())


def labelled_cutoffs(tables: Tables, cutoffs: list[datetime], horizon_days: int, memory_limit_mb: int | None = None,
                     spill_dir: Path | None = None) -> pd.DataFrame:
    """Training entities: every customer with an order before a cutoff, labelled 1 if they order again
    within ``horizon_days`` from it, with what they spend in that window (``label_spend``)."""
    with _connect(tables, cutoffs, memory_limit_mb, spill_dir) as con:
        return _microseconds(con.execute(LABELS_SQL, {"horizon": horizon_days}).df())


def cutoff_times(orders: pd.DataFrame, label: LabelConfig) -> list[datetime]:
    """Evenly spaced cutoffs, each with a full label horizon of observed history after it."""
    created = pd.to_datetime(orders["created_at"], utc=True)
    if created.empty:
        return []
    first, last = created.min().to_pydatetime(), created.max().to_pydatetime()
    horizon, step = timedelta(days=label.horizon_days), timedelta(days=label.cutoff_every_days)
    latest = last - horizon
    cutoffs: list[datetime] = []
    cutoff = latest
    while cutoff >= first + timedelta(days=label.min_history_days):
        cutoffs.append(cutoff.replace(microsecond=0))
        cutoff -= step
    return sorted(cutoffs)


def serving_time(orders: pd.DataFrame) -> datetime:
    """The snapshot materialized to the online store: just after the newest order."""
    return (pd.to_datetime(orders["created_at"], utc=True).max() + pd.Timedelta(seconds=1)).floor("s").to_pydatetime()
