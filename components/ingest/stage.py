"""The ingest stage: one input (synthetic store, bulk JSONL or orders CSV) -> one immutable snapshot."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from storeflow.components.config import Settings, SyntheticStoreConfig
from storeflow.components.ingest.bulk_jsonl import stream_bulk_jsonl
from storeflow.components.ingest.errors import IngestError
from storeflow.components.ingest.orders_csv import read_csv_exports
from storeflow.components.ingest.snapshot import MANIFEST, SnapshotWriter, content_hash, read_manifest
from storeflow.components.ingest.synthetic import GENERATOR_VERSION, generate_store
from storeflow.components.tables import SCHEMAS, schema_fingerprint, snapshot_dir

log = logging.getLogger(__name__)

SUFFIX = {"synthetic": ".jsonl", "jsonl": ".jsonl", "csv": ".csv", "shopify": ".jsonl"}


@dataclass
class IngestResult:
    snapshot: Path
    content_hash: str
    row_counts: dict[str, int]
    reused: bool  # the same input was ingested before: nothing was written
    source: str
    duplicates_dropped: dict[str, int] = field(default_factory=dict)  # exact duplicate rows, per table


def ingest(settings: Settings) -> IngestResult:
    """Ingest ``settings.ingest`` into ``<data_dir>/snapshots/<sha256 of the input>-<reader key>``.

    The same input read by the same reader always maps to the same snapshot, so a re-run reuses it
    untouched; a reader change (its ``READER_VERSION``, the table schemas) ingests it anew. Bad input raises
    :class:`IngestError` (file, line or row, problem) before anything is written.
    """
    config = settings.ingest
    if config.source == "synthetic":
        files = [synthetic_store(config.synthetic, settings.data_dir)]
    elif config.source == "shopify":  # an incremental bulk pull, merged into one raw JSONL
        from storeflow.components.shopify.sync import pull

        files = [pull(settings).store]
    else:
        files = input_files(Path(config.path), SUFFIX[config.source])
    started = time.perf_counter()
    digest = content_hash(files)
    snapshot = snapshot_dir(settings.data_dir, digest, reader_key(config.source))
    if snapshot.exists():
        return _reuse(snapshot, digest, config.source)

    metadata = {
        "content_hash": digest,
        "reader": reader_key(config.source),
        "source": config.source,
        "inputs": [str(path) for path in files],
    }
    with SnapshotWriter(snapshot) as writer:  # batch by batch: memory is one batch's, not the store's
        batches = stream_bulk_jsonl(files) if config.source != "csv" else [read_csv_exports(files)]
        for tables in batches:
            writer.write(tables)
        if not writer.commit(metadata):
            return _reuse(snapshot, digest, config.source)
    manifest = read_manifest(snapshot)
    counts = {name: entry["rows"] for name, entry in manifest["tables"].items()}
    dropped = manifest["duplicates_dropped"]
    if dropped:
        log.warning("%s: dropped exact duplicate rows (the same record more than once; one of each kept): %s",
                    ", ".join(map(str, files)), dropped)
    log.info("ingested %s into %s in %.1fs: %s", config.source, snapshot, time.perf_counter() - started, counts)
    return IngestResult(snapshot, digest, counts, reused=False, source=config.source, duplicates_dropped=dropped)


def reader_key(source: str) -> str:
    """What parsed the input: the source's reader version and the table schemas (see snapshot_dir)."""
    from storeflow.components.ingest import bulk_jsonl, orders_csv

    reader = orders_csv if source == "csv" else bulk_jsonl
    return f"r{reader.READER_VERSION}.{schema_fingerprint()}"


def synthetic_store(config: SyntheticStoreConfig, data_dir: Path) -> Path:
    """The generated store for ``config``, cached under ``<data_dir>/synthetic`` so re-runs skip generation."""
    key = hashlib.sha256(f"{GENERATOR_VERSION}:{config.model_dump_json()}".encode()).hexdigest()[:16]
    path = Path(data_dir) / "synthetic" / f"store-{key}.jsonl"
    if not path.exists():
        started = time.perf_counter()
        generate_store(config, path)
        log.info("generated synthetic store %s in %.1fs", path, time.perf_counter() - started)
    return path


def input_files(path: Path, suffix: str) -> list[Path]:
    """A file, or every ``*<suffix>`` file of a directory (e.g. one JSONL result per bulk query). Hidden files are
    not the export's: a folder copied from a Mac holds ``._orders.jsonl`` (Finder's AppleDouble metadata, binary),
    which ingest read and failed on ("not UTF-8 ... save or export the file as UTF-8") for a file nobody sees."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.name.endswith(suffix) and not p.name.startswith("."))
        if not files:
            raise IngestError(f"directory has no {suffix} files", path)
        return files
    if not path.is_file():
        raise IngestError("input does not exist", path)
    return [path]


def _reuse(snapshot: Path, digest: str, source: str) -> IngestResult:
    if not (snapshot / MANIFEST).exists():
        raise IngestError(f"snapshot exists without {MANIFEST} (not written by ingest?): remove it and re-run", snapshot)
    manifest = read_manifest(snapshot)
    counts = {name: entry["rows"] for name, entry in manifest["tables"].items()}
    log.info("input already ingested: reusing %s", snapshot)
    return IngestResult(snapshot, digest, counts, reused=True, source=source,
                        duplicates_dropped=manifest.get("duplicates_dropped", {}))
