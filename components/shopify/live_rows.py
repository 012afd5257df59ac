"""What arrived live that a snapshot now holds: such rows leave the live tables once older than the retention.

The webhook applier keeps each order it applies (``live_orders`` with its line items, ``live_refunds``: the whole
rows, ~1-2 KB an order) and the risk scorer each order's keys (``risk_live_orders``, ``risk_live_refunds``), because
until a snapshot holds them nothing else does. Kept for good, they grew with every order (a 10-million-order year:
10-20 GB of the receiver's 20 GiB volume, and every privacy request read them). Once the newest snapshot holds an
order at the live version or newer (a refund by its id), its live row says nothing the snapshot does not, so it goes
when older than ``shopify.retention_days`` (Shopify's retries end within 48 hours); what no snapshot holds yet (an
ingest that stopped) stays.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storeflow.components.shopify.journal import PRUNE_ROWS, transaction
from storeflow.components.tables import table_path

PAGE = 50_000  # live rows looked at a time (the receiver's retention thread shares its process's GIL with intake)


def forget_held(db: sqlite3.Connection, table: str, key: str, received: str, snapshot_table: Path,
                snapshot_version: str | None, before: pd.Timestamp,
                dependents: tuple[tuple[str, str], ...] = (), stopping: threading.Event | None = None) -> int:
    """Delete the rows of ``table`` received before ``before`` that ``snapshot_table`` (its Parquet file) holds by
    ``key``: with ``snapshot_version`` (a timestamp column) only where the snapshot's is at least the row's
    ``received`` (an SQL expression of its time: its version), and the rows of each (table, column) in
    ``dependents`` that belong to them (an order's live line items). A row without a time stays. Looked at a page
    of keys at a time, deleted in transactions of :data:`~storeflow.components.shopify.journal.PRUNE_ROWS` (the
    receiver's and the applier's commits wait little); ``stopping`` set, it ends after the transaction under way.
    Returns how many rows of ``table`` went."""
    if not snapshot_table.exists():
        return 0
    after, forgotten = -(2**63), 0
    while stopping is None or not stopping.is_set():
        # only rows already past ``before`` (SQLite's julianday reads the offsets): the retention thread looks every
        # hour, and most live rows are within the retention
        page = db.execute(f"SELECT {key}, {received} FROM {table} WHERE {key} > ? AND julianday({received}) < "
                          f"julianday(?) ORDER BY {key} LIMIT ?", (after, before.isoformat(), PAGE)).fetchall()
        if not page:
            return forgotten
        after = page[-1][0]
        ids = np.array([row[0] for row in page], dtype=np.int64)
        times = pd.to_datetime(pd.Series([row[1] for row in page], dtype=object), utc=True, format="ISO8601",
                               errors="coerce")
        old = (times < before).to_numpy()  # no time (NaT): kept
        if not old.any():
            continue
        ids = ids[old]
        versions = times[old].astype("datetime64[us, UTC]").astype("int64").to_numpy()
        gone = _held(snapshot_table, key, snapshot_version, ids, versions).tolist()
        for start in range(0, len(gone), PRUNE_ROWS):
            if stopping is not None and stopping.is_set():
                return forgotten
            chunk = [(k,) for k in gone[start:start + PRUNE_ROWS]]
            with transaction(db):
                for other, column in dependents:
                    db.executemany(f"DELETE FROM {other} WHERE {column} = ?", chunk)
                db.executemany(f"DELETE FROM {table} WHERE {key} = ?", chunk)
            forgotten += len(chunk)
    return forgotten


def forget_applied(db: sqlite3.Connection, snapshot: Path, before: pd.Timestamp,
                   stopping: threading.Event | None = None) -> tuple[int, int]:
    """:func:`forget_held` for the applier's live tables in the journal: orders (with their line items) and
    refunds received before ``before`` that ``snapshot`` holds. Returns (orders, refunds) deleted."""
    return (forget_held(db, "live_orders", "order_id", "updated_at", table_path(snapshot, "orders"), "updated_at",
                        before, dependents=(("live_line_items", "order_id"),), stopping=stopping),
            forget_held(db, "live_refunds", "refund_id", "json_extract(row, '$.created_at')",
                        table_path(snapshot, "refunds"), None, before, stopping=stopping))


def _held(snapshot_table: Path, key: str, version: str | None, ids: np.ndarray, versions: np.ndarray) -> np.ndarray:
    """Which of ``ids`` the snapshot's table holds (with ``version``: at least at ``versions``, µs)."""
    held = pq.read_table(snapshot_table, columns=[key] if version is None else [key, version],
                         filters=[(key, "in", ids.tolist())])
    if held.num_rows == 0:
        return ids[:0]
    keys = held.column(key).to_numpy()
    order = np.argsort(keys)
    at = np.minimum(np.searchsorted(keys[order], ids), len(keys) - 1)
    found = keys[order][at] == ids
    if version is not None:
        theirs = pc.fill_null(pc.cast(pc.cast(held.column(version), pa.timestamp("us", tz="UTC")), pa.int64()),
                              np.iinfo(np.int64).min).to_numpy()[order][at]
        found &= theirs >= versions  # the snapshot's version is the live one or newer
    return ids[found]
