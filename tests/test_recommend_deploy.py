"""The recommendations pipeline's deploy step: the registered recommender champion rolled out by the
propensity model's deploy code, pointed at the recommender. On kserve the recommender's InferenceService
(kustomize/components/recommendations, created stopped) is filled and started by the first champion, with the
recommender's runtime and no Feast transformer, and a later champion is a canary promoted or rolled back on
click-through rate; on local the rollout is recorded for `storeflow serve-recommendations` and a rollback.

Against test_deploy's loopback KServe API (it applies merge patches as the API server does, every object
checked against the KServe CRD schema) and test_canary_prometheus's Prometheus stub; no cluster, no MLflow."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from test_deploy import HEALTHY, PATH, Recorder, assert_valid, cluster  # noqa: F401 - cluster is a fixture
from test_canary_prometheus import PrometheusStub, serving
from test_recommend_canary import NOW, feedback

from storeflow.components.deploy.inference_service import ModelVersionRef
from storeflow.components.deploy.local import rollouts
from storeflow.components.deploy.prometheus import Prometheus
from storeflow.components.recommend.deploy import deploy_recommender

NAME = "storeflow-recommendations"
DECLARED = Path(__file__).parents[1] / "kustomize" / "components" / "recommendations" / "inference-service.yaml"


def uri(version: str) -> str:
    return f"s3://mlflow/2/{version * 4}/artifacts/model"


def resolved(settings, version) -> ModelVersionRef:
    assert settings.registry.model_name == NAME  # the recommender's registered model, not the propensity one
    return ModelVersionRef(settings.registry.model_name, version, uri(version))


def recent(logs):
    """test_recommend_canary's feedback, logged a minute ago by the wall clock (the rollout's analysis window)."""
    shift = datetime.now(timezone.utc) - NOW
    for frame in logs:
        frame["ts"] = [(datetime.fromisoformat(ts) + shift).isoformat() for ts in frame["ts"]]
    return logs


@pytest.fixture
def kserve(settings):
    settings.deploy.target = "kserve"
    settings.deploy.canary_steps = [10, 50, 100]
    settings.deploy.min_impressions = 500
    settings.deploy.analysis_window = "5m"
    return settings


def deploy(settings, version, isvcs, prom, logs=None, record=None, promoted=True):
    registration = {"model_name": NAME, "version": version, "promoted": promoted, "run_id": f"run-{version}",
                    "previous_champion": None}
    return deploy_recommender(settings, registration, isvcs=isvcs, prometheus=prom,
                              logs=lambda: logs or feedback({}), resolve=resolved, record=record or Recorder(),
                              sleep=lambda s: None)


def test_the_first_champion_fills_and_starts_the_declared_recommender(kserve, cluster):  # noqa: F811
    bootstrap = yaml.safe_load(DECLARED.read_text())
    bootstrap["metadata"]["namespace"] = "storeflow"
    kube, isvcs, prom = cluster(bootstrap)
    record = Recorder()
    assert deploy(kserve, "1", isvcs, prom, record=record)["outcome"] == "created"
    [(method, path, _, body)] = kube.writes()
    assert (method, path) == ("PATCH", f"{PATH}/{NAME}")  # the recommender's object, not storeflow-repeat-purchase
    served = kube.obj
    assert "serving.kserve.io/stop" not in served["metadata"]["annotations"]
    model = served["spec"]["predictor"]["model"]
    assert (model["runtime"], model["modelFormat"]["name"], model["storageUri"]) == (
        "storeflow-recommender", "storeflow-recommender", uri("1"))
    assert {"name": "STOREFLOW_MODEL_VERSION", "value": "1"} in model["env"]
    assert "transformer" not in served["spec"]  # the runtime reads availability from Feast itself
    assert served["metadata"]["annotations"]["storeflow.io/model-name"] == NAME
    assert_valid(served)
    assert record.tags == [("1", {"storeflow.deploy.state": "promoted", "storeflow.deploy.run_id": "run-1"})]


@pytest.mark.parametrize("canary_ctr, outcome, actions", [
    (0.05, "rolled-back", ["rollback"]),  # half the champion's click-through rate
    (0.10, "promoted", ["advance", "promote"]),
])
def test_a_later_champion_is_a_canary_judged_on_click_through_rate(kserve, cluster, canary_ctr, outcome,
                                                                   actions):  # noqa: F811
    bootstrap = yaml.safe_load(DECLARED.read_text())
    bootstrap["metadata"]["namespace"] = "storeflow"
    kube, isvcs, _ = cluster(bootstrap)
    stub = PrometheusStub(serving({"1": HEALTHY, "2": HEALTHY}))
    prom = Prometheus(stub.url)
    try:
        deploy(kserve, "1", isvcs, prom)
        result = deploy(kserve, "2", isvcs, prom, logs=recent(feedback({"1": 0.10, "2": canary_ctr})))
    finally:
        stub.close()
    # errors and latency of the recommender's pods only: the propensity model has a v1 and v2 of its own
    assert stub.queries and all('pod=~"storeflow-recommendations-.*"' in query for query in stub.queries)
    assert (result["outcome"], result["champion_version"]) == (outcome, "1")
    assert [step["action"] for step in result["steps"]] == actions
    start = kube.writes()[1][3]
    assert start["spec"]["predictor"]["canaryTrafficPercent"] == 10 and "transformer" not in start["spec"]
    predictor = kube.obj["spec"]["predictor"]
    if outcome == "rolled-back":
        assert "click-through rate 5.00% is 50% below champion's 10.00%" in result["reasons"][0]
        assert (predictor["model"]["storageUri"], predictor["canaryTrafficPercent"]) == (uri("1"), 0)
    else:
        assert predictor["model"]["storageUri"] == uri("2") and "canaryTrafficPercent" not in predictor
    assert "transformer" not in kube.obj["spec"]
    assert_valid(kube.obj)


def test_a_version_that_did_not_become_champion_is_not_rolled_out(kserve, cluster):  # noqa: F811
    kube, isvcs, prom = cluster(None)
    result = deploy(kserve, "3", isvcs, prom, promoted=False)
    assert result["outcome"] == "skipped" and kube.writes() == []


def test_locally_the_first_champion_is_recorded_beside_the_propensity_models(settings, monkeypatch):
    """Target local: the record says which recommender version serves; the propensity model's history, numbered
    on its own, does not see it. (A later champion is canaried: test_recommend_local_canary.)"""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    settings.registry.tracking_uri = "http://127.0.0.1:9"  # MLflow down: the tags are skipped, the record kept
    registration = {"model_name": NAME, "version": "1", "promoted": True, "run_id": "run-1", "previous_champion": None}
    outcome = deploy_recommender(settings, registration)
    assert (outcome["outcome"], outcome["model_name"], outcome["previous_champion"]) == ("promoted-locally", NAME, None)
    ours = settings.model_copy(update={"registry": settings.registry.model_copy(update={"model_name": NAME})})
    assert [r["model_version"] for r in rollouts(ours)] == ["1"]
    assert rollouts(settings) == []  # storeflow-repeat-purchase has no rollout
