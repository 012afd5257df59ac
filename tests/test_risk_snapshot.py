"""Ingest keeps the orders' risk fields in the snapshot (``order_risk.parquet``): the risk stage builds its rows
from the snapshot alone, so a task on another pod, without the export ingest read, trains the same model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from storeflow.components.config import load_settings
from storeflow.components.ingest import ingest
from storeflow.components.ingest.snapshot import read_manifest
from storeflow.components.risk.orders import read_risk_fields
from storeflow.components.risk.stage import risk_rows, snapshot_inputs
from tests.conftest import quick_overrides

STORE = {"customers": 400, "orders": 4_000, "products": 40, "seed": 5, "fraud_rate": 0.01}


def _ingest(root: Path, **store) -> Path:
    return ingest(load_settings(quick_overrides(root, ingest={"source": "synthetic",
                                                             "synthetic": {**STORE, **store}}))).snapshot


def test_the_snapshot_holds_the_risk_fields_and_the_stage_needs_no_export(tmp_path: Path):
    snapshot = _ingest(tmp_path)
    export = snapshot_inputs(snapshot)
    kept = pd.read_parquet(snapshot / "order_risk.parquet").sort_values("order_id").reset_index(drop=True)
    read = read_risk_fields(export).sort_values("order_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, read, check_dtype=False)
    assert read_manifest(snapshot)["extra_tables"]["order_risk"]["rows"] == len(read)
    expected = risk_rows(snapshot, export)
    moved = tmp_path / "elsewhere" / snapshot.name  # another pod: the snapshot, not the export
    shutil.copytree(snapshot, moved)
    for path in export:
        path.unlink()
    pd.testing.assert_frame_equal(risk_rows(moved), expected)


def test_a_store_without_risk_fields_keeps_no_risk_table(tmp_path: Path):
    snapshot = _ingest(tmp_path, fraud_rate=0.0)
    assert not (snapshot / "order_risk.parquet").exists() and "extra_tables" not in read_manifest(snapshot)


def test_a_risk_value_not_shopifys_is_a_warning_not_a_failed_ingest(tmp_path: Path, caplog):
    snapshot = _ingest(tmp_path / "first")
    export = snapshot_inputs(snapshot)[0]
    lines = export.read_text().splitlines()
    for i, line in enumerate(lines):
        record = json.loads(line)
        if record.get("cancelReason"):
            record["cancelReason"] = "SOMETHING_NEW"
            lines[i] = json.dumps(record)
            break
    folder = tmp_path / "export"  # a good file, then one with the bad value: no part of the risk table is kept
    folder.mkdir()
    shutil.copyfile(export, folder / "a-orders.jsonl")
    (folder / "b-orders.jsonl").write_text("\n".join(lines) + "\n")
    settings = load_settings(quick_overrides(tmp_path / "second", ingest={"source": "jsonl", "path": str(folder)}))
    again = ingest(settings).snapshot
    assert (again / "orders.parquet").exists() and not (again / "order_risk.parquet").exists()
    assert "extra_tables" not in read_manifest(again)
    assert "SOMETHING_NEW" in caplog.text and "not kept in the snapshot" in caplog.text
    with pytest.raises(Exception, match="SOMETHING_NEW"):  # the risk stage names it
        risk_rows(again)


def test_the_scorer_takes_an_older_snapshots_risk_fields_from_its_export_without_the_whole_frame(tmp_path: Path,
                                                                                                monkeypatch):
    """A snapshot ingested before ingest kept the risk fields (no ``order_risk.parquet``): the order risk scorer
    takes them from the export, the three columns it keeps, batch by batch. It read them with read_risk_fields, all
    ten columns of every order as one pandas frame, at its start in the webhooks pod (2 GiB for four processes):
    at 1,000,000 orders (a 1.4 GB export) that read alone peaked at 828-832 MB, now 384-409 MB."""
    import sqlite3

    from storeflow.components.risk import live
    from storeflow.components.risk.orders import snapshot_risk_table

    settings = load_settings(quick_overrides(tmp_path, ingest={"source": "synthetic", "synthetic": STORE}))
    snapshot = ingest(settings).snapshot
    kept = snapshot_risk_table(snapshot, live.SNAPSHOT_RISK)
    (snapshot / "order_risk.parquet").unlink()  # as an older ingest left it; the export is still there

    def whole_frame(paths):
        raise AssertionError("the scorer read every risk column of every order into one frame")

    monkeypatch.setattr(live, "read_risk_fields", whole_frame, raising=False)
    history = live.LiveHistory.from_settings(settings, sqlite3.connect(":memory:", isolation_level=None))
    assert history._risk.num_rows == kept.num_rows > 0
    assert history._risk.sort_by("order_id").to_pylist() == kept.sort_by("order_id").to_pylist()


def test_the_exports_risk_table_is_read_frame_by_frame_and_equals_the_whole_read(tmp_path: Path):
    """export_risk_table (the scorer's read of an export) gives what read_risk_fields gives, an order's last row
    each, while holding a batch's Python objects at a time, not every order's: on this 60,000-order export 2.5 MB of
    Python allocations at the highest against 27.5 MB."""
    import tracemalloc

    from storeflow.components.risk.orders import COLUMNS, export_risk_table

    export = snapshot_inputs(_ingest(tmp_path, customers=6_000, orders=60_000))

    def peak(read):  # Python's allocations (numpy's and pandas' among them) at their highest, above the start
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            return read(export), tracemalloc.get_traced_memory()[1] - start
        finally:
            tracemalloc.stop()

    table, table_peak = peak(lambda paths: export_risk_table(paths, COLUMNS))
    whole, whole_peak = peak(read_risk_fields)
    found = table.to_pandas().sort_values("order_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(found, whole.sort_values("order_id").reset_index(drop=True), check_dtype=False)
    assert table_peak < whole_peak / 4, (table_peak, whole_peak)
