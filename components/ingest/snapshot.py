"""Content-addressed, immutable snapshots: hash the input, write the tables once, atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from storeflow.components.tables import SCHEMAS, conform, table_path
from storeflow.components.version import __version__

MANIFEST = "_manifest.json"


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


def write_snapshot(snapshot: Path, tables: dict[str, pd.DataFrame], metadata: dict) -> bool:
    """Write all tables and the manifest into a temp dir beside ``snapshot`` and rename it into place.

    Returns False (and writes nothing) when another run put the same snapshot there first: readers
    never see a half-written snapshot, and an existing snapshot is never touched.
    """
    snapshot = Path(snapshot)
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{snapshot.name}.", dir=snapshot.parent))
    tmp.chmod(0o755)  # mkdtemp is private; snapshots are read by other users (pipeline pods)
    try:
        entries = {}
        for name in SCHEMAS:
            path = table_path(tmp, name)
            pq.write_table(conform(name, tables[name]), path)
            entries[name] = {"file": path.name, "rows": len(tables[name]), "sha256": file_sha256(path)}
        manifest = {
            **metadata,
            "tables": entries,
            "ingested_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "storeflow_version": __version__,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, snapshot)
        except OSError:
            if (snapshot / MANIFEST).exists():
                return False
            raise
        return True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
