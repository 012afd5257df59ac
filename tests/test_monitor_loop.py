"""Monitoring against a real registered model (MLflow on SQLite): bad-data statuses, decay once labels
exist, and the closed loop: shift injected → drift detected → one training run → challenger evaluated."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from conftest import small_store, write_snapshot
from storeflow.components import tracking
from storeflow.components.evaluate import evaluate
from storeflow.components.features import build_features
from storeflow.components.monitor import monitor, retrain_if_needed, simulate_shift
from storeflow.components.register import register
from storeflow.components.train import train

pytestmark = pytest.mark.slow


def _training_run(settings, snapshot: Path) -> dict:
    """The training pipeline's stages in order, in this process (kfp.local runs the same functions)."""
    features = build_features(settings, snapshot)
    trained = train(settings, features)
    evaluation = evaluate(settings, features, trained)
    return json.loads(register(settings, trained, evaluation).to_json())


@pytest.fixture
def served(settings):
    """A champion trained on a small store, its snapshot where ingest puts snapshots."""
    snapshot = write_snapshot(small_store(customers=120, days=360), settings.data_dir / "snapshots" / "s1")
    registration = _training_run(settings, snapshot)
    return settings, snapshot, registration["version"]


def test_shift_is_detected_and_answered_by_exactly_one_evaluated_challenger(served) -> None:
    settings, snapshot, champion = served
    simulate_shift(settings, requests=600, share=0.7, seed=1)
    started = []
    launchers = {"local": lambda s: started.append(1) or _training_run(s, snapshot)}

    first = monitor(settings)
    assert first.status == "analysed" and first.level == "critical"
    assert first.summary["model_version"] == champion and first.summary["rows"]["window"] == 600
    drifted = {c["column"] for c in first.summary["drift"]["columns"] if c["level"] == "critical"}
    assert {"discount_share", "orders_last_90d"} & drifted  # what a promotion changes
    decision = retrain_if_needed(settings, first.summary, launchers)
    assert decision.started and started == [1]

    # Monitoring runs again in the same window: no second training run.
    again = monitor(settings)
    assert again.level == "critical"
    assert not retrain_if_needed(settings, again.summary, launchers).started and started == [1]

    client = tracking.connect(settings)
    challenger = client.get_model_version(settings.registry.model_name, decision.run["version"])
    assert challenger.version != champion
    assert challenger.tags["storeflow.decision"] in ("promote", "keep-champion")
    assert "holdout.roc_auc" in challenger.tags and "champion_holdout.roc_auc" in challenger.tags

    # The report opens in a browser on its own, and is recorded on the model version.
    page = first.report_html.read_text()
    assert page.lstrip().lower().startswith("<!doctype html") or "<html" in page[:500].lower()
    assert "critical" in page and "discount_share" in page
    assert re.search(r"<script[^>]*\bsrc=", page, re.IGNORECASE) is None  # no CDN: opens offline
    version = client.get_model_version(settings.registry.model_name, champion)
    assert version.tags["storeflow.monitor.level"] == "critical"
    artifacts = client.list_artifacts(version.run_id, "monitoring")
    assert artifacts and {"report.html", "summary.json"} <= {Path(a.path).name for a in
                                                            client.list_artifacts(version.run_id, artifacts[0].path)}


def test_bad_data_gives_a_status_never_a_crash(served) -> None:
    settings, snapshot, champion = served
    assert monitor(settings).status == "no-data"  # nothing logged yet
    simulate_shift(settings, requests=50, shift=False)
    assert monitor(settings).status == "insufficient-data"
    unknown = monitor(settings, model_version="99")
    assert unknown.status == "no-model" and "v" + champion in " ".join(unknown.summary["notes"])

    log = simulate_shift(settings, requests=300, shift=False, model_version=champion).path
    stray = log.with_name("predictions-stray.jsonl")
    stray.write_text(log.read_text().replace(f'"model_version":"{champion}"', '"model_version":"42"'))
    orphan = monitor(settings, model_version="42")
    assert orphan.status == "no-reference" and "no version" in " ".join(orphan.summary["notes"])
    assert "no-reference" in orphan.report_html.read_text()


def test_decay_is_measured_once_predictions_have_matured_labels(served) -> None:
    settings, snapshot, champion = served
    # Predictions made 120 days before the snapshot's last order: their 60-day horizon has passed.
    orders = pd.read_parquet(snapshot / "orders.parquet")
    past = orders["created_at"].max().to_pydatetime() - timedelta(days=120)
    simulate_shift(settings, requests=400, shift=False, as_of=past, end=past + timedelta(hours=1), hours=1)
    strict = settings.model_copy(deep=True)
    strict.monitor.calibration_warning, strict.monitor.calibration_critical = 0.0001, 0.0002
    result = monitor(strict, end=past + timedelta(hours=2))
    decay = result.summary["decay"]
    assert result.status == "analysed" and decay["labelled"] == 400 and decay["status"] == "measured"
    assert 0.55 < decay["roc_auc"] <= 1 and decay["holdout_roc_auc"] is not None
    assert decay["level"] == "critical" and any("calibration error" in r for r in result.summary["reasons"])
    text = (result.report_html.parent / "metrics.prom").read_text()
    assert f'storeflow_served_auc{{model_version="{champion}"}} {decay["roc_auc"]}' in text
    # Evidently's classification report on the matured predictions, linked from the main report.
    page = result.report_html.parent / decay["report_html"]
    assert page.name == "classification.html" and "RocAuc" in page.read_text()
    assert f'ROC-AUC {decay["roc_auc"]:.3f}' in result.report_html.read_text()
    assert 'href="classification.html"' in result.report_html.read_text()
