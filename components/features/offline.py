"""The customer view's offline history as a Parquet dataset: a directory Feast reads as one table, holding the
features stage's rows in one part and the rows the webhook applier computed live in parts of their own.

Why a directory: Feast's file offline store appends by reading the whole file, concatenating the batch and
writing everything back (feast 0.67, ``duckdb._write_data_source``). The features stage writes a row per customer
and cutoff, 5.2M rows (462 MB) at a 500,000-customer store: there, offered 300 deliveries a second, the applier
fell 3,500 events behind in 15 s and peaked at 2.3 GB, more than the whole webhooks pod may hold (2 GiB). Feast's
FileSource reads a directory of Parquet files as one table (DuckDB's ``read_parquet`` and pyarrow's datasets both
do), so an append is one new file whatever the history holds.

Parts merge by level: ``LEVEL_PARTS`` parts of one level make one of the next, so a live row is rewritten once a
level (the log of its batches' count, base ``LEVEL_PARTS``) and a directory holds fewer than ``LEVEL_PARTS`` parts
a level. A merged part names its sources in its metadata: a merge cut short before they were removed is finished
by the next one, so no row is read twice for long. Names of files being written end in ``.tmp`` and start with a
dot: DuckDB reads every ``*.parquet`` of the directory, pyarrow every file not hidden.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

SNAPSHOT_PART = "snapshot.parquet"  # the features stage's rows: every customer at every cutoff
LEVEL_PARTS = 16
_LIVE = re.compile(r"^live-(\d{2})-\d{20}-[0-9a-f]{8}\.parquet$")
_MERGED_FROM = b"storeflow.merged_from"


class OfflineHistoryError(ValueError):
    """Live rows that do not fit the history they would join (columns the features stage did not write)."""


def dataset(path: Path) -> Path:
    """``path`` as a dataset directory, made if missing. A history written by storeflow before 2026-12-07 is one
    file at that path: it becomes the directory's snapshot part (moved aside first, so a move cut short is
    finished here the next time)."""
    moving = path.with_name(f".{path.name}.moving")
    if path.is_file():
        os.replace(path, moving)
    if moving.exists():
        path.mkdir(parents=True, exist_ok=True)
        os.replace(moving, path / SNAPSHOT_PART)
    path.mkdir(parents=True, exist_ok=True)
    return path


def snapshot_part(path: Path) -> Path:
    """The features stage's rows (what was materialized to the online store at its newest cutoff): the file
    itself for a history written as one file."""
    return path if path.is_file() else path / SNAPSHOT_PART


def live_parts(path: Path, level: int | None = None) -> list[Path]:
    """The live parts, oldest first within a level (their names sort by when they were written)."""
    if not path.is_dir():
        return []
    found = [p for p in path.iterdir() if (m := _LIVE.match(p.name)) and (level is None or int(m[1]) == level)]
    return sorted(found, key=lambda p: p.name)


def append(path: Path, rows: pa.Table) -> Path:
    """Write live feature rows as a part of their own, with the columns and types of the history's parts:
    DuckDB (what Feast reads the history with) refuses a directory whose files disagree on their columns, so
    one such part would stop every historical retrieval and materialization of the view."""
    path = dataset(path)
    rows = _conformed(rows, _reference_schema(path))
    part = path / _live_name(0)
    _write(part, rows)
    return part


def compact(path: Path) -> int:
    """Merge each level holding ``LEVEL_PARTS`` parts into one part of the next; returns the parts merged.
    A directory listing when there is nothing to merge: the applier calls it after every append."""
    merged = 0
    level = 0
    while True:
        parts = live_parts(path, level)
        if len(parts) >= LEVEL_PARTS:
            finish_merges(path)
            _merge(path, parts[:LEVEL_PARTS], level + 1)
            merged += LEVEL_PARTS
            continue
        if not any(_level(p) > level for p in live_parts(path)):
            return merged
        level += 1


def finish_merges(path: Path) -> int:
    """Remove the sources a merged part names that are still there (a merge cut short); returns how many."""
    removed = 0
    for part in live_parts(path):
        try:
            sources = json.loads((pq.read_schema(part).metadata or {}).get(_MERGED_FROM, b"[]"))
        except FileNotFoundError:
            continue
        for name in sources:
            if (path / name).exists():
                (path / name).unlink(missing_ok=True)
                removed += 1
    if removed:
        log.warning("finished a merge of the offline history cut short: %d part(s) it had merged removed", removed)
    return removed


def drop_superseded(path: Path, as_of) -> list[str]:
    """After the features stage wrote its snapshot part: remove the live parts it supersedes, those whose every
    row is at or before its newest cutoff ``as_of`` (it computed every customer as of then from a snapshot holding
    what they had seen live) and those with other columns (written before ``features.customer_features``
    changed: DuckDB would refuse the directory). Returns their names."""
    columns = set(pq.read_schema(path / SNAPSHOT_PART).names)
    dropped = []
    for part in live_parts(path):
        try:
            if set(pq.read_schema(part).names) == columns:
                newest = pc.max(pq.read_table(part, columns=["event_timestamp"])["event_timestamp"]).as_py()
                if newest is not None and newest > as_of:
                    continue
            part.unlink()
        except FileNotFoundError:  # merged meanwhile by the applier: its merged part is read in turn
            continue
        dropped.append(part.name)
    return dropped


def _merge(path: Path, parts: list[Path], level: int) -> None:
    tables = []
    for part in parts:
        try:
            tables.append(pq.read_table(part))
        except FileNotFoundError:  # dropped by the features stage since it was listed
            continue
    reference = _reference_schema(path)
    merged = pa.concat_tables([_conformed(t, reference) for t in tables]) if tables else None
    if merged is not None:
        metadata = {**(merged.schema.metadata or {}), _MERGED_FROM: json.dumps([p.name for p in parts]).encode()}
        _write(path / _live_name(level), merged.replace_schema_metadata(metadata))
    for part in parts:
        part.unlink(missing_ok=True)


def _reference_schema(path: Path) -> pa.Schema | None:
    """The columns live rows must have: the snapshot part's, else the oldest live part's."""
    for part in [path / SNAPSHOT_PART, *live_parts(path)]:
        try:
            return pq.read_schema(part).remove_metadata()
        except FileNotFoundError:
            continue
    return None


def _conformed(rows: pa.Table, schema: pa.Schema | None) -> pa.Table:
    if schema is None:
        return rows.replace_schema_metadata(None)
    missing = [name for name in schema.names if name not in rows.column_names]
    extra = [name for name in rows.column_names if name not in schema.names]
    if missing or extra:
        raise OfflineHistoryError(
            f"live customer feature rows do not fit the offline history: they lack {missing or 'nothing'} and have "
            f"{extra or 'nothing'} more; the history was written with other features.customer_features (run the "
            "features stage again with these settings)")
    return rows.select(schema.names).cast(schema)


def _write(part: Path, table: pa.Table) -> None:
    """Whole or not at all, and on disk before the caller marks its events applied."""
    tmp = part.with_name(f".{part.name}.tmp")
    pq.write_table(table, tmp)
    _fsync(tmp)
    os.replace(tmp, part)
    _fsync(part.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _live_name(level: int) -> str:
    return f"live-{level:02d}-{time.time_ns():020d}-{secrets.token_hex(4)}.parquet"


def _level(part: Path) -> int:
    return int(_LIVE.match(part.name)[1])
