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
