"""The normalized store tables every source is ingested into, and how they are stored.

One schema per table (pyarrow), shared by ingest (writes), validate (checks) and features (reads).
Ids are Shopify's numeric ids (the number at the end of ``gid://shopify/Order/123``); money is in the
shop's currency; timestamps are UTC at microsecond precision (Feast's DuckDB store needs no finer).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TS = pa.timestamp("us", tz="UTC")
MAX_AMOUNT = 1e12
"""The largest money amount (shop currency, either sign) storeflow takes from any source: a trillion, past any
real order in any currency, and small enough that a store's sums stay finite. Two totals of 1.7e308 each were
taken, summed to inf: the customer's monetary feature was infinite and the data-request export said Infinity."""

SCHEMAS: dict[str, pa.Schema] = {
    "orders": pa.schema(
        [
            ("order_id", pa.int64()),
            ("name", pa.string()),
            ("customer_id", pa.int64()),  # null: guest checkout or missing (validate flags it)
            ("email", pa.string()),
            ("created_at", TS),
            ("updated_at", TS),
            ("cancelled_at", TS),
            ("currency", pa.string()),  # presentment currency the customer paid in
            ("total_price", pa.float64()),  # shop money
            ("subtotal_price", pa.float64()),
            ("total_discounts", pa.float64()),
            ("financial_status", pa.string()),
            ("risk_level", pa.string()),  # highest of risk.assessments: LOW, MEDIUM, HIGH, NONE, or null
        ]
    ),
    "line_items": pa.schema(
        [
            ("line_item_id", pa.int64()),
            ("order_id", pa.int64()),
            ("product_id", pa.int64()),
            ("sku", pa.string()),
            ("title", pa.string()),
            ("quantity", pa.int64()),
            ("price", pa.float64()),
        ]
    ),
    "customers": pa.schema(
        [
            ("customer_id", pa.int64()),
            ("email", pa.string()),
            ("created_at", TS),
            ("updated_at", TS),
        ]
    ),
    "products": pa.schema(
        [
            ("product_id", pa.int64()),
            ("title", pa.string()),
            ("product_type", pa.string()),
            ("vendor", pa.string()),
            ("created_at", TS),
        ]
    ),
    "refunds": pa.schema(
        [
            ("refund_id", pa.int64()),
            ("order_id", pa.int64()),
            ("created_at", TS),
            ("amount", pa.float64()),
        ]
    ),
}

TABLES = tuple(SCHEMAS)


def email_key(value) -> str | None:
    """An email as every store compares it (velocity's keys, erasure's searches): trimmed and lower case. Blank or
    missing is None: Shopify's REST order says ``""`` for an order without one (a point-of-sale sale, a draft), and
    such orders share no buyer."""
    return (value.strip().lower() or None) if isinstance(value, str) else None


def conform(name: str, frame: pd.DataFrame, columns: Sequence[str] | None = None) -> pa.Table:
    """Cast a frame to its table schema (only ``columns`` of it, in that order, when given); a missing column is
    an error naming the table and column."""
    schema = SCHEMAS[name] if columns is None else pa.schema([SCHEMAS[name].field(c) for c in columns])
    missing = [f.name for f in schema if f.name not in frame.columns]
    if missing:
        raise ValueError(f"table '{name}' is missing column(s): {', '.join(missing)}")
    columns = []
    for field in schema:
        values = frame[field.name]
        if pa.types.is_timestamp(field.type):
            values = pd.to_datetime(values, utc=True, format="ISO8601").astype("datetime64[us, UTC]")
        columns.append(pa.array(values, type=field.type, from_pandas=True))
    return pa.Table.from_arrays(columns, schema=schema)


def schema_fingerprint() -> str:
    """Changes whenever a table's schema does (part of every snapshot's name)."""
    import hashlib

    text = "\n".join(f"{name}: {schema}" for name, schema in SCHEMAS.items())
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def snapshot_dir(data_dir: Path, content_hash: str, reader: str = "") -> Path:
    """Ingest writes each distinct input once, to an immutable snapshot named by its content hash and
    by the reader (parser version and table schemas) that made it: a new reader re-ingests."""
    return Path(data_dir) / "snapshots" / (f"{content_hash}-{reader}" if reader else content_hash)


def table_path(snapshot: Path, name: str) -> Path:
    return Path(snapshot) / f"{name}.parquet"


def read_table(snapshot: Path, name: str) -> pd.DataFrame:
    """Read one table of an ingested snapshot; a clear error if ingest has not written it."""
    path = table_path(snapshot, name)
    if not path.exists():
        raise FileNotFoundError(f"table '{name}' not found at {path}: run the ingest stage first")
    return pq.read_table(path, schema=SCHEMAS[name]).to_pandas()


def read_columns(snapshot: Path, name: str, columns: list[str]) -> pd.DataFrame:
    """Some columns of one table of an ingested snapshot (a large store's table is read only in part)."""
    path = table_path(snapshot, name)
    if not path.exists():
        raise FileNotFoundError(f"table '{name}' not found at {path}: run the ingest stage first")
    return pq.read_table(path, schema=SCHEMAS[name], columns=columns).to_pandas()


def read_tables(snapshot: Path) -> dict[str, pd.DataFrame]:
    return {name: read_table(snapshot, name) for name in TABLES}


def empty_frame(name: str) -> pd.DataFrame:
    return SCHEMAS[name].empty_table().to_pandas()
