"""A snapshot's tables sorted by key and memory-mapped: a few customers' rows without the store in memory.

The webhook applier recomputes a batch's customers' features from the newest snapshot plus what arrived live. It
held the snapshot whole in pandas: on a 500,000-customer store (5.0M orders, 8.5M line items) that was 2,156 MB
resident and 142 ms of ``isin`` a batch. A filtered Parquet read is no answer: the snapshot is in arrival order, so
every row group holds some of any 150 customers (983 ms with pyarrow's filter).

So each table the applier reads by key is written once, beside the snapshot's Parquet, as an uncompressed Arrow IPC
file sorted by that key, with the key column again as raw int64 (``<table>.keys``). Both are memory-mapped: a
lookup is a binary search of the keys and a ``take`` of the rows found, and what stays resident is the operating
system's page cache of the files, which it can drop, not the process's heap. The index lives in the snapshot's
folder (``.index-<stamp>``), named by the table files' sizes and times: a redaction rewrites the snapshot into a
new folder, so the index goes with the data it copied and the next lookup builds it again.

Rows come back in the Parquet file's order (each keeps its ``file_row_number``), as a filter of the whole table
would give them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from storeflow.components.tables import SCHEMAS, read_table, table_path

FORMAT = 1  # bumped when what an index holds changes: an older index is then rebuilt
# What is looked up by what: each table sorted by its key (rows with a null key are never looked up).
KEYS = {"orders": "customer_id", "line_items": "order_id", "refunds": "order_id", "customers": "customer_id"}
ORDER_CUSTOMERS = "order_customers"  # (order_id, customer_id) by order: whose is an order only the snapshot holds
ROW = "file_row_number"
BATCH_ROWS = 262_144  # rows per IPC record batch: what a build holds at once (~30 MB of orders)
BUILD_MEMORY = "128MB"  # DuckDB's limit while sorting; it spills to the index's scratch folder past it
ABANDONED_SECONDS = 3600  # a scratch folder this old is a build that died (one takes ~11 s at 5M orders): removed


class SnapshotIndex:
    """The keyed tables of one snapshot (:meth:`open` builds them on first use), and its products whole."""

    def __init__(self, snapshot: Path, folder: Path):
        self.snapshot = snapshot
        self.folder = folder
        self.stamp = stamp(snapshot)
        self._tables = {name: _Keyed(folder, name) for name in [*KEYS, ORDER_CUSTOMERS]}
        self.products = read_table(snapshot, "products").reset_index(drop=True)

    @classmethod
    def open(cls, snapshot: Path) -> SnapshotIndex:
        """The snapshot's index, built first if it has none for its tables as they are now."""
        folder = snapshot / f".index-{stamp(snapshot)}"
        if not folder.exists():
            build(snapshot, folder)
        return cls(snapshot, folder)

    def current(self) -> bool:
        """Whether the snapshot's tables are still the ones indexed (a redaction rewrites them)."""
        try:
            return stamp(self.snapshot) == self.stamp
        except FileNotFoundError:
            return False

    def rows(self, name: str, keys: Iterable[int]) -> pa.Table:
        """``name``'s rows whose key (:data:`KEYS`) is one of ``keys``, in the table's order, as its schema."""
        return self._tables[name].rows(keys).cast(SCHEMAS[name])

    def customers_of_orders(self, order_ids: Iterable[int]) -> dict[int, int]:
        """Each order's customer, for the orders the snapshot holds with one (its first row's, in file order)."""
        found = self._tables[ORDER_CUSTOMERS].rows(order_ids)
        owners: dict[int, int] = {}
        for order_id, customer_id in zip(found.column("order_id").to_pylist(), found.column("customer_id").to_pylist()):
            owners.setdefault(order_id, customer_id)
        return owners


class _Keyed:
    """One memory-mapped table and its sorted keys."""

    def __init__(self, folder: Path, name: str):
        reader = ipc.open_file(pa.memory_map(str(folder / f"{name}.arrow")))
        self.schema = reader.schema.remove(reader.schema.get_field_index(ROW))
        self.batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        self.starts = np.cumsum([0, *(batch.num_rows for batch in self.batches)])
        keys = folder / f"{name}.keys"
        size = keys.stat().st_size
        self.keys = np.memmap(keys, dtype=np.int64, mode="r") if size else np.empty(0, np.int64)

    def rows(self, keys: Iterable[int]) -> pa.Table:
        wanted = np.unique(np.fromiter((int(k) for k in keys if k is not None), dtype=np.int64))
        low = np.searchsorted(self.keys, wanted, "left")
        counts = np.searchsorted(self.keys, wanted, "right") - low
        total = int(counts.sum())
        if not total:
            return self.schema.empty_table()
        # every position of every run [low, low + count): the run's start repeated, plus 0..count-1 within it
        positions = np.repeat(low - np.cumsum(counts) + counts, counts) + np.arange(total)
        batch_of = np.searchsorted(self.starts, positions, "right") - 1
        parts = [self.batches[b].take(pa.array(positions[batch_of == b] - self.starts[b])) for b in np.unique(batch_of)]
        found = pa.Table.from_batches(parts)
        found = found.take(pc.sort_indices(found.column(ROW)))
        return found.drop_columns([ROW])


def remove_others(snapshots: Path, keep: Path) -> None:
    """Remove the indexes of every snapshot under ``snapshots`` but ``keep``: only the newest is read, and a large
    store's index is as large as its tables uncompressed (~1.4 GB at 5M orders)."""
    for folder in snapshots.glob("*/.index-*"):
        if folder.parent != keep:
            shutil.rmtree(folder, ignore_errors=True)


def local_only(directory: str, names: list[str]) -> set[str]:
    """What of a snapshot's folder is this volume's cache, not the snapshot (a ``shutil.copytree`` ignore): its
    indexes, built or being built."""
    return {name for name in names if name.startswith(".index-")}


def stamp(snapshot: Path) -> str:
    """Names the tables' current files: their sizes and modification times, and the index format."""
    parts = [f"v{FORMAT}"]
    for name in KEYS:
        info = table_path(snapshot, name).stat()
        parts.append(f"{name}:{info.st_size}:{info.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def build(snapshot: Path, folder: Path) -> None:
    """Write the index into ``folder`` (a scratch folder renamed into place: a half-built index is never read), and
    remove the snapshot's older indexes and abandoned builds."""
    scratch = folder.with_name(f"{folder.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    scratch.mkdir(parents=True)
    con = duckdb.connect(config={"memory_limit": BUILD_MEMORY, "threads": 1, "preserve_insertion_order": False,
                                 "temp_directory": str(scratch / "spill")})
    try:
        for name, key in KEYS.items():
            columns = ", ".join(f'"{c}"' for c in SCHEMAS[name].names)
            _write(con, f"SELECT {columns}, {ROW} FROM {_scan(snapshot, name)} WHERE {key} IS NOT NULL "
                        f"ORDER BY {key}, {ROW}", scratch, name, key)
        _write(con, f"SELECT order_id, customer_id, {ROW} FROM {_scan(snapshot, 'orders')} "
                    f"WHERE order_id IS NOT NULL AND customer_id IS NOT NULL ORDER BY order_id, {ROW}",
               scratch, ORDER_CUSTOMERS, "order_id")
    finally:
        con.close()
    shutil.rmtree(scratch / "spill", ignore_errors=True)
    try:
        os.rename(scratch, folder)
    except OSError:  # another process built it meanwhile
        if not folder.exists():
            raise
        shutil.rmtree(scratch, ignore_errors=True)
    for older in snapshot.glob(".index-*"):
        if older != folder and (".building-" not in older.name or _abandoned(older)):
            shutil.rmtree(older, ignore_errors=True)


def _abandoned(scratch: Path) -> bool:
    """Whether another builder's scratch folder was left over an hour ago; one that finished (renamed it) or was
    removed between the listing and this look is not (it was seen gone: FileNotFoundError failed the build)."""
    try:
        return time.time() - scratch.stat().st_mtime > ABANDONED_SECONDS
    except FileNotFoundError:
        return False


def _scan(snapshot: Path, name: str) -> str:
    path = table_path(snapshot, name)
    if not path.exists():
        raise FileNotFoundError(f"table '{name}' not found at {path}: run the ingest stage first")
    return "read_parquet('{}', file_row_number = true)".format(str(path).replace("'", "''"))


def _write(con: duckdb.DuckDBPyConnection, query: str, folder: Path, name: str, key: str) -> None:
    reader = con.sql(query).to_arrow_reader(BATCH_ROWS)
    with ipc.new_file(folder / f"{name}.arrow", reader.schema) as rows, open(folder / f"{name}.keys", "wb") as keys:
        for batch in reader:
            rows.write_batch(batch)
            batch.column(key).to_numpy().astype(np.int64, copy=False).tofile(keys)
