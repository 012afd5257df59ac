"""An ingest killed midway (OOM, an evicted pod, a retried task) and run again: the rerun's snapshot is whole, and
what the killed writer left half-written is gone, while a writer still at work keeps its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from storeflow.components.config import IngestConfig, Settings
from storeflow.components.ingest import ingest
from storeflow.components.ingest.stage import reader_key
from storeflow.components.ingest.snapshot import content_hash
from storeflow.components.tables import snapshot_dir

BULK = Path(__file__).parent / "data" / "shopify" / "bulk"

# A writer of <snapshot> that writes the orders of orders.jsonl, says so, then waits for a line on stdin and,
# given "kill", dies as SIGKILL would leave it (no cleanup), else commits.
WRITER = """
import os, sys
from pathlib import Path
from storeflow.components.ingest import read_bulk_jsonl
from storeflow.components.ingest.snapshot import SnapshotWriter
writer = SnapshotWriter(Path(sys.argv[1])).__enter__()
writer.write({"orders": read_bulk_jsonl([Path(sys.argv[2])])["orders"]})
writer.close()
print(writer.tmp, flush=True)
if sys.stdin.readline().strip() == "kill":
    os._exit(137)
writer.commit({"source": "jsonl"})
writer.__exit__(None, None, None)
"""


def writer(snapshot: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(snapshot), str(BULK / "orders.jsonl")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def use(settings: Settings, path: Path) -> Settings:
    settings.ingest = IngestConfig(source="jsonl", path=path)
    return settings


def test_a_rerun_after_a_killed_ingest_leaves_only_the_whole_snapshot(settings: Settings):
    """The killed writer's temp dir (half the tables, customers' emails in them) stayed beside the snapshots for
    good: out of reach of erasure, and one more copy of the export per retry. Found by testing from outside."""
    path = BULK / "orders.jsonl"
    snapshot = snapshot_dir(settings.data_dir, content_hash([path]), reader_key("jsonl"))
    proc, tmp = writer(snapshot)
    assert tmp.is_dir() and (tmp / "orders.parquet").exists()
    proc.communicate("kill\n")
    assert proc.returncode == 137 and tmp.is_dir()  # what a killed ingest leaves

    result = ingest(use(settings, path))

    assert not result.reused and result.row_counts["orders"] == 3 and result.row_counts["line_items"] == 4
    assert [p.name for p in snapshot.parent.iterdir()] == [snapshot.name]


def test_a_writer_still_at_work_keeps_its_temp_dir_and_commits(settings: Settings):
    other = snapshot_dir(settings.data_dir, "f" * 64, reader_key("jsonl"))
    proc, tmp = writer(other)
    try:
        ingest(use(settings, BULK / "products.jsonl"))  # another ingest meanwhile
        assert tmp.is_dir() and (tmp / "orders.parquet").exists()
    finally:
        proc.communicate("commit\n")
    assert proc.returncode == 0
    assert (other / "_manifest.json").exists() and not tmp.exists()
