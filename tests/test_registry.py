"""Train → evaluate → register against a real MLflow (SQLite): versions, aliases and the gate."""

from pathlib import Path

import mlflow
import pytest

from conftest import write_snapshot
from storeflow.components import tracking
from storeflow.components.evaluate import evaluate
from storeflow.components.features import build_features
from storeflow.components.register import register
from storeflow.components.train import build_estimator, train


@pytest.fixture
def features(settings, store_tables, tmp_path: Path):
    return build_features(settings, write_snapshot(store_tables, tmp_path / "snapshot"))


def _cycle(settings, features, estimator: str, params: dict):
    settings = settings.model_copy(deep=True)
    settings.train.estimator, settings.train.params = estimator, params
    trained = train(settings, features)
    evaluation = evaluate(settings, features, trained)
    return trained, evaluation, register(settings, trained, evaluation)


GOOD = ("sklearn.ensemble.HistGradientBoostingClassifier", {"max_iter": 40, "random_state": 0})
CONSTANT = ("sklearn.dummy.DummyClassifier", {"strategy": "prior"})


def test_first_model_becomes_champion_and_is_tracked(settings, features) -> None:
    trained, evaluation, registered = _cycle(settings, features, *GOOD)
    assert registered.promoted and registered.version == "1" and registered.champion_version == "1"
    client = tracking.connect(settings)
    run = client.get_run(trained.run_id)
    assert run.data.tags["storeflow.dataset_hash"] == features.dataset_hash
    assert run.data.tags["storeflow.feature_refs"].split(",") == features.feature_refs
    assert run.data.params["max_iter"] == "40"
    model_info = mlflow.models.get_model_info(trained.model_uri)
    assert [i.name for i in model_info.signature.inputs] == settings.features.customer_features
    assert evaluation.challenger_metrics["roc_auc"] > 0.6
    assert client.get_model_version_by_alias(settings.registry.model_name, "champion").version in (1, "1")


def test_losing_challenger_is_registered_but_not_promoted(settings, features) -> None:
    _cycle(settings, features, *GOOD)
    _, evaluation, registered = _cycle(settings, features, *CONSTANT)
    assert not evaluation.promote and not registered.promoted
    client = tracking.connect(settings)
    name = settings.registry.model_name
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    assert len(client.search_model_versions(f"name='{name}'")) == 2  # nothing overwritten or deleted
    tags = client.get_model_version(name, "2").tags
    assert tags["storeflow.decision"] == "keep-champion" and "roc_auc" in tags["storeflow.reason"]
    assert float(tags["champion_holdout.roc_auc"]) > float(tags["holdout.roc_auc"])


def test_winning_challenger_takes_the_champion_alias(settings, features) -> None:
    _cycle(settings, features, *CONSTANT)
    _, evaluation, registered = _cycle(settings, features, *GOOD)
    assert evaluation.promote and evaluation.comparison["ci_low"] > 0
    assert registered.promoted and registered.previous_champion == "1" and registered.champion_version == "2"


def test_bad_estimator_config_is_named() -> None:
    with pytest.raises(ValueError, match="cannot be imported"):
        build_estimator("sklearn.ensemble.NoSuchModel", {})
    with pytest.raises(ValueError, match="do not fit"):
        build_estimator("sklearn.ensemble.HistGradientBoostingClassifier", {"max_itr": 3})
    with pytest.raises(ValueError, match="no predict_proba"):
        build_estimator("sklearn.linear_model.LinearRegression", {})


def test_challenger_that_loses_to_a_baseline_is_registered_flagged_and_never_promoted(settings, features) -> None:
    gated = settings.model_copy(deep=True)
    gated.evaluate.baseline_gate = True
    trained, evaluation, registered = _cycle(gated, features, *CONSTANT)  # a constant loses to every baseline
    assert evaluation.loses_to_baseline and not evaluation.promote and not registered.promoted
    assert "LOSES to the" in evaluation.reason and evaluation.best_baseline in evaluation.reason
    client = tracking.connect(settings)
    name = settings.registry.model_name
    tags = client.get_model_version(name, registered.version).tags
    assert tags["storeflow.baseline"] == f"loses-to-baseline:{evaluation.best_baseline}"
    assert tags["storeflow.decision"] == "keep-champion"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == registered.version
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(name, "champion")  # not even a first model gets the alias
    # Every baseline was scored on the same holdout rows as the challenger.
    for baseline in ("bgnbd", "pareto_nbd", "frequency_recency"):
        assert float(tags[f"baseline_holdout.{baseline}.rows"]) == evaluation.challenger_metrics["rows"]
        assert float(tags[f"baseline_holdout.{baseline}.roc_auc"]) > 0.6


def test_evaluation_is_an_mlflow_run_with_every_models_holdout_metrics_side_by_side(settings, features) -> None:
    """The MLflow UI compares challenger and champion: one evaluation run holds both (and the baselines)
    as metrics, and the challenger's training run carries its holdout metrics (they were string tags)."""
    from storeflow.components.evaluate.report import markdown

    _cycle(settings, features, *GOOD)
    trained, evaluation, _ = _cycle(settings, features, *CONSTANT)
    client = tracking.connect(settings)
    run = client.get_run(evaluation.evaluation_run_id)
    metrics = run.data.metrics
    assert metrics["challenger_roc_auc"] == pytest.approx(evaluation.challenger_metrics["roc_auc"])
    assert metrics["champion_roc_auc"] == pytest.approx(evaluation.champion_metrics["roc_auc"])
    assert metrics["champion_roc_auc"] > metrics["challenger_roc_auc"] and metrics["promote"] == 0.0
    assert any(name.startswith("baseline_bgnbd_") for name in metrics)
    assert run.data.tags["storeflow.challenger_run_id"] == trained.run_id
    assert run.data.tags["storeflow.decision"] == "keep champion"
    assert client.get_run(trained.run_id).data.metrics["holdout_roc_auc"] == pytest.approx(metrics["challenger_roc_auc"])
    curves = evaluation.champion_curves
    assert curves and sum(map(sum, curves["confusion_matrix"])) == evaluation.champion_metrics["rows"]
    text = markdown(evaluation)
    assert text.startswith("## Keep the champion") and "| roc_auc |" in text and "champion v1" in text
