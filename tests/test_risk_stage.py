"""The risk stage end to end on an ingested synthetic store with fraud: rows from the snapshot and its export,
an MLflow run with the model's and both baselines' holdout metrics, and the registry gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from storeflow.components.config import Settings, load_settings
from storeflow.components.ingest import ingest
from storeflow.components.config import RiskConfig
from storeflow.components.risk.stage import risk_rows, snapshot_inputs, train_and_register
from tests.conftest import quick_overrides

STORE = {"customers": 2_000, "orders": 24_000, "products": 80, "seed": 31, "fraud_rate": 0.006}
QUICK = RiskConfig(params={**RiskConfig().params, "max_iter": 100}, bootstrap_samples=100)
MODEL_NAME = RiskConfig().model_name


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("risk-stage")
    settings = load_settings(quick_overrides(root, ingest={"source": "synthetic", "synthetic": STORE}))
    snapshot = ingest(settings).snapshot
    return settings, snapshot, risk_rows(snapshot)


def test_rows_come_from_the_snapshot_and_the_export_it_was_ingested_from(stage):
    settings, snapshot, rows = stage
    assert snapshot_inputs(snapshot)[0].name.startswith("store-")
    assert rows["order_id"].is_unique and len(rows) > STORE["orders"]
    assert rows["fraud"].sum() > 50 and rows["shopify_risk_level"].notna().all()


def test_a_snapshot_whose_export_is_gone_is_named(stage, tmp_path: Path):
    settings, snapshot, _ = stage
    copy = tmp_path / "snapshot"
    copy.mkdir()
    (copy / "_manifest.json").write_text('{"inputs": ["/nowhere/store.jsonl"]}')
    with pytest.raises(FileNotFoundError, match="/nowhere/store.jsonl"):
        risk_rows(copy)


def test_the_first_model_is_champion_and_an_equal_one_is_not(stage):
    from mlflow import MlflowClient

    settings, _, rows = stage
    first = train_and_register(settings, rows, QUICK)
    assert first.promoted and first.version == "1", first.reason
    assert "beats the best baseline" in first.reason
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    logged = client.get_run(first.run_id).data.metrics
    for scorer in ("model", "shopify", "rules"):
        assert logged[f"{scorer}.pr_auc"] == pytest.approx(first.evaluation["metrics"][scorer]["pr_auc"])
        assert f"{scorer}.recall_at_1pct_fpr" in logged
    params = client.get_run(first.run_id).data.params
    assert float(params["level_high"]) >= float(params["level_medium"]) > 0  # the assessment's cut points
    again = train_and_register(settings, rows, QUICK)  # the same data and settings: no better than the champion
    assert not again.promoted and again.version == "2"
    assert "below the margin" in again.reason
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(MODEL_NAME, "challenger").version) == "2"
    # a challenger that also reads Shopify's level is compared with the champion on the champion's own inputs
    stacked = train_and_register(settings, rows, RiskConfig(
        params=QUICK.params, bootstrap_samples=100, shopify_level_as_input=True))
    assert stacked.version == "3" and stacked.evaluation["champion"]["samples"] > 0
    assert client.get_run(stacked.run_id).data.params["shopify_level_as_input"] == "True"


def test_a_model_that_a_baseline_beats_is_not_promoted(stage, tmp_path: Path):
    settings, _, rows = stage
    gated = Settings.model_validate({**settings.model_dump(by_alias=True),
                                     "project": {"state_dir": str(tmp_path / "state")},
                                     "evaluate": {**settings.evaluate.model_dump(), "baseline_gate": True}})
    dummy = RiskConfig(estimator="sklearn.dummy.DummyClassifier", params={"strategy": "prior"},
                                    bootstrap_samples=100)
    result = train_and_register(gated, rows, dummy)
    assert not result.promoted and "LOSES" in result.reason
