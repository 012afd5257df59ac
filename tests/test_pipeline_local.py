"""The training pipeline end to end through kfp.local.SubprocessRunner: the pipeline a cluster runs."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from storeflow.components import tracking
from storeflow.components.config import load_settings
from storeflow.components.deploy.local import rollout_record
from storeflow.pipelines.cli import app
from storeflow.pipelines.local import PipelineFailed, run_local
from storeflow.pipelines.training import STAGES, training_pipeline

pytestmark = pytest.mark.slow

SMALL_STORE = {"customers": 600, "orders": 5000, "products": 60}


def _settings(state: Path, **train):
    return load_settings({
        "project": {"state_dir": str(state)},
        "ingest": {"synthetic": SMALL_STORE},
        "features": {"label": {"horizon_days": 60, "cutoff_every_days": 30, "min_history_days": 60}},
        "train": train or {"params": {"max_iter": 60, "random_state": 0}},
        "evaluate": {"bootstrap_samples": 100, "baseline_gate": False},  # wiring under test, not the gate (tests/test_registry.py)
    })


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory):
    """`storeflow run` from the CLI on a fresh state dir: the first model becomes champion."""
    root = tmp_path_factory.mktemp("pipeline")
    state = root / "state"
    settings = _settings(state)
    config = root / "storeflow.yaml"
    config.write_text(__import__("yaml").safe_dump(__import__("json").loads(settings.to_json())))
    result = CliRunner().invoke(app, ["run", "--config", str(config)], env={"COLUMNS": "200"})
    return settings, result


def test_cli_run_prints_the_model_and_where_to_look(first_run) -> None:
    settings, result = first_run
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "model storeflow-repeat-purchase v1" in text and "roc_auc" in text
    assert "promoted to champion: no champion yet" in text
    assert f"MLflow: {settings.tracking_uri}" in text and f"Feast repo: {settings.feature_repo_dir}" in text
    for stage in STAGES:
        assert f"{stage}" in text
    # Where the artifacts are, and the model card the register task wrote among them.
    artifacts = Path(text.split("artifacts (snapshot, training set, model, model card, reports): ")[1].split()[0])
    (card,) = artifacts.glob("storeflow-training-*/register/model_card")
    assert "storeflow-repeat-purchase v1" in card.read_text() and "Status:** champion" in card.read_text()


def test_losing_challenger_is_not_promoted_when_the_pipeline_runs_locally(first_run) -> None:
    import json

    settings, _ = first_run
    losing = settings.model_copy(deep=True)
    losing.train.params = {"strategy": "prior"}  # DummyClassifier's, given as the typed run input below
    second = run_local(training_pipeline, losing, STAGES, estimator="sklearn.dummy.DummyClassifier")
    registered = json.loads(second.output)
    assert registered["version"] == "2" and not registered["promoted"] and registered["champion_version"] == "1"
    # When each task ran (what bench/pipeline.py reads per stage): every task, in the order it ran.
    assert list(second.task_seconds) == list(STAGES) and all(t > 0 for t in second.task_seconds.values())

    client = tracking.connect(losing)
    name = losing.registry.model_name
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    assert client.get_model_version(name, "2").tags["storeflow.decision"] == "keep-champion"
    log = second.log.read_text()
    assert "Task 'register' finished with status" in log
    # The winner of the first run was rolled out, the loser of the second was not.
    rollouts = [json.loads(line) for line in rollout_record(losing).read_text().splitlines()]
    assert [r["model_version"] for r in rollouts] == ["1"]
    assert "v2 did not become champion: nothing to roll out" in log

    # What the KFP UI shows of the evaluation: both models' ROC curves and confusion matrices, both
    # models' metrics and the decision in words, as the evaluate task's output artifacts.
    (executor_output,) = second.log.parent.glob("artifacts/*/evaluate/executor_output.json")
    artifacts = {name: found["artifacts"][0] for name, found in json.loads(executor_output.read_text())["artifacts"].items()}
    for curves, points in (("challenger_curves", 2), ("champion_curves", 3)):  # the challenger is a constant
        metadata = artifacts[curves]["metadata"]
        assert len(metadata["confidenceMetrics"]) >= points and metadata["confusionMatrix"]["annotationSpecs"]
    assert artifacts["champion_metrics"]["metadata"]["roc_auc"] > artifacts["metrics"]["metadata"]["roc_auc"]
    report = Path(artifacts["report"]["uri"]).read_text()
    assert report.startswith("## Keep the champion") and "champion v1" in report


def test_failing_gate_stops_the_run_and_leaves_the_registry_untouched(tmp_path: Path) -> None:
    csv = tmp_path / "orders_export.csv"
    source = Path(__file__).parent / "data" / "shopify" / "orders_export.csv"
    text = source.read_text()
    header, first_row, *rest = text.splitlines()
    columns = header.split(",")
    cells = first_row.split(",")
    cells[columns.index("Total")] = "-12.50"  # a negative order total
    csv.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    settings = load_settings({"project": {"state_dir": str(tmp_path / "state")},
                              "ingest": {"source": "csv", "path": str(csv)}})
    with pytest.raises(PipelineFailed) as failed:
        run_local(training_pipeline, settings, STAGES)
    assert failed.value.failed_task == "validate"
    log = failed.value.log.read_text()
    assert "negative" in log.lower()
    assert not (settings.project.state_dir / "mlflow.db").exists()  # nothing trained, nothing registered
