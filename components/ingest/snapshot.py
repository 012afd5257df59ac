"""Content-addressed, immutable snapshots: hash the input, write the tables once, atomically."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from storeflow.components.tables import SCHEMAS, conform, table_path
from storeflow.components.version import __version__

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
WRITING = ".writing-"  # in the name of a snapshot being written: .<snapshot name>.writing-<random>
DEDUP_MEMORY = "1GB"  # DuckDB's limit while it finds duplicate rows; beyond it, it spills to the snapshot's temp dir


def file_sha256(path: Path) -> str:
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def content_hash(files: list[Path]) -> str:
    """sha256 of the input bytes: of the file itself, or for several files (a directory) of the
    sorted ``<name> <sha256>`` lines of its files, so renaming, adding or changing any file counts."""
    if len(files) == 1:
        return file_sha256(files[0])
    listing = "".join(f"{path.name} {file_sha256(path)}\n" for path in sorted(files))
    return hashlib.sha256(listing.encode()).hexdigest()


def read_manifest(snapshot: Path) -> dict:
    return json.loads((Path(snapshot) / MANIFEST).read_text())


def finished_snapshots(root: Path) -> list[Path]:
    """The finished snapshots under ``root`` (a manifest written), by name; none when ``root`` is missing. A hidden
    folder is never one: a redaction's rewrite (``.<name>.redacted``) and the copy it replaces (``.<name>.old``, the
    erased customer still in it) have manifests too, and a rewrite cut short between its renames left them both
    listed, the old copy a reader could take for the store."""
    root = Path(root)
    return sorted(p for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST).exists()) \
        if root.exists() else []


def ingested_at(snapshot: Path) -> datetime:
    """When ``snapshot`` was ingested (its manifest's ``ingested_at``), as a time: manifests before 2026-12-07 wrote
    whole seconds, later ones microseconds, and the two do not compare as text."""
    try:
        stamp = datetime.fromisoformat(read_manifest(snapshot).get("ingested_at", ""))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def newest_snapshot(root: Path) -> Path | None:
    """The snapshot ingested last under ``root`` (what the applier, the risk scorer and a data request read), or
    None. A redaction rewrites a snapshot but keeps when it was ingested (:meth:`SnapshotWriter.commit`), so
    erasing a customer from an older snapshot does not make it the newest."""
    found = finished_snapshots(root)
    return max(found, key=lambda p: (ingested_at(p), p.name)) if found else None


def snapshot_identity(snapshot: Path | None) -> tuple[str, int] | None:
    """Which snapshot and which version of it: its name and when its manifest was written (a redaction's rewrite
    writes a new one); None for none. What a reader built from the newest snapshot compares to know it is behind."""
    if snapshot is None:
        return None
    try:
        return snapshot.name, (snapshot / MANIFEST).stat().st_mtime_ns
    except FileNotFoundError:  # swapped by a rewrite after it was found: the next look sees the new one
        return snapshot.name, 0


def write_snapshot(snapshot: Path, tables: dict[str, pd.DataFrame], metadata: dict) -> bool:
    """Write whole tables as a snapshot (see :class:`SnapshotWriter`); False if one was there first."""
    with SnapshotWriter(snapshot) as writer:
        writer.write(tables)
        return writer.commit(metadata)


class SnapshotWriter:
    """Write a snapshot batch by batch into a temp dir beside it, then rename it into place.

    Each table is one Parquet file appended to batch by batch, so ingest holds one batch in memory, not
    the store. :meth:`commit` drops exact duplicate rows (a record exported twice; one of each kept, in
    input order) with DuckDB over the written file, which spills to disk instead of holding the table,
    and records per table how many it dropped under ``duplicates_dropped``. Readers never see a
    half-written snapshot, and an existing snapshot is never touched: ``commit`` returns False (and writes
    nothing) when another run put the same snapshot there first.
    """

    def __init__(self, snapshot: Path):
        self.snapshot = Path(snapshot)
        self.snapshot.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _join_writers(self.snapshot.parent)
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.snapshot.name}{WRITING}", dir=self.snapshot.parent))
        except BaseException:
            if self._lock:
                self._lock.close()
            raise
        self.tmp.chmod(0o755)  # mkdtemp is private; snapshots are read by other users (pipeline pods)
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._written: set[str] = set()  # every table written (close empties _writers)
        self._dropped: set[str] = set()  # extra tables a reader gave up on: not kept

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self._lock:
            self._lock.close()  # leaves the writers: a later writer may sweep again

    def write(self, tables: dict[str, pd.DataFrame | pa.Table]) -> None:
        for name, frame in tables.items():
            if name not in SCHEMAS:  # a table a stage keeps beside the store's (order_risk): written as given
                if frame is None or name in self._dropped:  # None: the reader could not give all of it
                    self._dropped.add(name)
                    continue
                if name not in self._writers:
                    self._writers[name] = pq.ParquetWriter(table_path(self.tmp, name), frame.schema)
                self._writers[name].write_table(frame)
                continue
            if name not in self._writers:
                self._writers[name] = pq.ParquetWriter(table_path(self.tmp, name), SCHEMAS[name])
            self._writers[name].write_table(frame.cast(SCHEMAS[name]) if isinstance(frame, pa.Table)
                                            else conform(name, frame))

    def close(self) -> None:
        self._written |= set(self._writers)
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def commit(self, metadata: dict, deduplicate: bool = True, ingested_at: str | None = None) -> bool:
        """``deduplicate=False``: the rows are a snapshot's less some (an erasure), which has none to drop; DuckDB's
        search for them takes up to ``DEDUP_MEMORY``, in the webhook applier's process for an erasure.
        ``ingested_at``: a rewrite's original time (else now), so the rewritten snapshot keeps its place among
        the others (:func:`newest_snapshot`)."""
        self.close()
        entries, dropped = {}, {}
        for name in SCHEMAS:
            path = table_path(self.tmp, name)
            if not path.exists():
                pq.write_table(SCHEMAS[name].empty_table(), path)
            rows, repeated = (_drop_exact_duplicates(path, name, self.tmp) if deduplicate
                              else (pq.ParquetFile(path).metadata.num_rows, 0))
            if repeated:
                dropped[name] = repeated
            entries[name] = {"file": path.name, "rows": rows, "sha256": file_sha256(path)}
        for name in self._dropped:
            table_path(self.tmp, name).unlink(missing_ok=True)
        extra = {name: {"file": table_path(self.tmp, name).name, "rows": pq.ParquetFile(table_path(self.tmp, name))
                        .metadata.num_rows} for name in sorted(self._written - self._dropped) if name not in SCHEMAS}
        manifest = {
            **{key: value for key, value in metadata.items() if key != "extra_tables"},  # a rewrite names its own
            **({"extra_tables": extra} if extra else {}),
            # validate reports them; a rewrite (erasure) keeps what the first ingest dropped
            "duplicates_dropped": {**metadata.get("duplicates_dropped", {}), **dropped},
            "tables": entries,
            "ingested_at": ingested_at or datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "storeflow_version": __version__,
        }
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(self.tmp / ".duckdb", ignore_errors=True)
        try:
            os.rename(self.tmp, self.snapshot)
        except OSError:
            if (self.snapshot / MANIFEST).exists():
                return False
            raise
        return True


def _join_writers(root: Path) -> IO | None:
    """Join the writers of snapshots under ``root`` (a shared lock on ``.<root>.lock`` beside it, held while writing),
    first removing, when no other writer holds it, the temp dirs of writers that died: an ingest killed midway (OOM,
    a pod evicted, a retried task) left its half-written tables, customers' emails among them, for good, out of
    reach of erasure, and each retry of a large export one more copy filling the volume. The kernel drops a dead
    writer's lock, so only a live writer keeps its temp dir. None (nothing swept) where the lock cannot be made."""
    try:
        handle = (root.parent / f".{root.name}.lock").open("a+")
    except OSError:
        return None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another writer is at work: the next one alone sweeps
        else:
            abandoned = [path for path in root.glob(f".*{WRITING}*") if path.is_dir()]
            for path in abandoned:
                shutil.rmtree(path, ignore_errors=True)
            if abandoned:
                log.warning("removed %d snapshot(s) left half-written under %s by a writer that stopped (killed?): "
                            "%s", len(abandoned), root, ", ".join(path.name for path in abandoned))
        fcntl.flock(handle, fcntl.LOCK_SH)
    except OSError:  # a filesystem without locks: write as before, sweep nothing
        handle.close()
        return None
    return handle


def _drop_exact_duplicates(path: Path, name: str, scratch: Path) -> tuple[int, int]:
    """Rewrite ``path`` without exact duplicate rows, the first of each kept in order; (rows, dropped)."""
    import duckdb

    rows = pq.ParquetFile(path).metadata.num_rows
    if rows < 2:
        return rows, 0
    columns = ", ".join(f'"{field.name}"' for field in SCHEMAS[name])
    with duckdb.connect(config={"temp_directory": str(scratch / ".duckdb"), "memory_limit": DEDUP_MEMORY}) as con:
        con.execute("SET TimeZone = 'UTC'")
        source = f"read_parquet('{path}', file_row_number = true)"
        distinct = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {columns} FROM {source})").fetchall()[0][0]
        if distinct == rows:
            return rows, 0
        kept = path.with_name(f".{path.name}.kept")
        reader = con.sql(
            f"SELECT {columns} FROM {source} QUALIFY row_number() OVER (PARTITION BY {columns} "
            "ORDER BY file_row_number) = 1 ORDER BY file_row_number").to_arrow_reader()
        with pq.ParquetWriter(kept, SCHEMAS[name]) as writer:
            for batch in reader:
                writer.write_table(pa.Table.from_batches([batch]).cast(SCHEMAS[name]))
    kept.replace(path)
    return distinct, rows - distinct
