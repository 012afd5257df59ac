"""The local deploy target end to end: a real `storeflow serve` on 127.0.0.1 per canary step, real HTTP
traffic for customers of the snapshot, its /metrics judged by the same `decide()` the KServe path uses,
and the outcome on the MLflow aliases, the version's tags and the local rollout record."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import quick_overrides, small_store, write_snapshot
from storeflow.components import tracking
from storeflow.components.config import load_settings
from storeflow.components.deploy import commands
from storeflow.components.deploy.local import deploy_local, rollouts
from storeflow.components.deploy.local_canary import histogram_quantile, scrape, version_metrics

pytestmark = pytest.mark.slow

MODEL = "storeflow-repeat-purchase"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Features of a small store in a materialized online store, and a registered champion (v1)."""
    from storeflow.components.evaluate import evaluate
    from storeflow.components.features import build_features
    from storeflow.components.register import register
    from storeflow.components.train import train

    root = tmp_path_factory.mktemp("local-canary")
    settings = load_settings(quick_overrides(
        root,
        # Few requests so the test is quick: a step holds until each version has min_requests. With
        # ~75 requests behind the 10% canary, score PSI between two healthy versions is large from sampling
        # alone (about buckets / requests): the healthy challenger below measured 0.92 at 10% and 0.38 at 50%
        # (a bound of 1.0 once rolled it back in CI), the shifted one 9.4. The p99 of ~50 requests is their
        # slowest one on a shared runner; the bounds are sized for that.
        deploy={"min_requests": 50, "local_requests_per_step": 400, "max_score_psi": 2.0,
                "max_p99_latency_ratio": 2.0},
    ))
    features = build_features(settings, write_snapshot(small_store(customers=1000), root / "snapshot"))
    first = train(settings, features)
    register(settings, first, evaluate(settings, features, first))
    return settings, features


def _new_champion(settings, features, estimator: str, params: dict):
    """Train and register a version that the evaluation gate made champion (as the pipeline would)."""
    from storeflow.components.evaluate import evaluate
    from storeflow.components.register import register
    from storeflow.components.train import train

    settings = settings.model_copy(deep=True)
    settings.train.estimator, settings.train.params = estimator, params
    trained = train(settings, features)
    return register(settings, trained, dataclasses.replace(evaluate(settings, features, trained), promote=True))


def test_healthy_challenger_goes_through_every_step_and_is_promoted(store):
    settings, features = store
    registered = _new_champion(settings, features, "sklearn.ensemble.HistGradientBoostingClassifier",
                               {"max_iter": 40, "random_state": 1})
    outcome = deploy_local(settings, registered.version, registered.run_id, registered.previous_champion)

    assert outcome["outcome"] == "promoted", (outcome["reasons"], outcome["steps"])
    judged = [s for s in outcome["steps"] if s["action"] != "hold"]
    assert [(s["percent"], s["action"]) for s in judged] == [(10, "advance"), (50, "promote")]
    assert all(s["canary_requests"] >= 50 and s["champion_requests"] >= 50 for s in judged)
    assert all(s["canary_error_rate"] == 0 for s in judged)

    client = tracking.connect(settings)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == registered.version
    tags = client.get_model_version(MODEL, registered.version).tags
    assert tags["storeflow.deploy.state"] == "promoted" and tags["storeflow.deploy.target"] == "local"
    assert [s["percent"] for s in json.loads(tags["storeflow.deploy.steps"])][-1] == 50
    assert rollouts(settings)[-1]["model_version"] == registered.version
    shown = commands.status(settings)
    assert shown["champion_version"] == registered.version and shown["last_rollout"]["outcome"] == "promoted"


def test_challenger_with_shifted_scores_is_rolled_back_and_the_reason_recorded(store):
    settings, features = store
    # A constant score (the training prior) puts every canary answer in one bucket: a huge score PSI.
    registered = _new_champion(settings, features, "sklearn.dummy.DummyClassifier", {"strategy": "prior"})
    previous = registered.previous_champion
    outcome = deploy_local(settings, registered.version, registered.run_id, previous)

    assert outcome["outcome"] == "rolled-back", outcome
    assert outcome["steps"][-1]["percent"] == 10 and "PSI" in " ".join(outcome["reasons"])
    client = tracking.connect(settings)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == previous
    tags = client.get_model_version(MODEL, registered.version).tags
    assert tags["storeflow.deploy.state"] == "rolled-back" and "PSI" in tags["storeflow.deploy.reason"]
    assert commands.status(settings)["champion_version"] == previous

    # The operator overrides: promote the challenger by hand, then roll that back again.
    assert commands.promote(settings)["champion_version"] == registered.version
    assert commands.rollback(settings, reason="checked by hand")["champion_version"] == previous
    assert client.get_model_version(MODEL, registered.version).tags["storeflow.deploy.reason"] == "checked by hand"


def test_metrics_text_becomes_the_metrics_the_prometheus_path_builds():
    text = "\n".join([
        "# TYPE storeflow_requests_total counter",
        'storeflow_requests_total{model_version="1",status="200"} 90',
        'storeflow_requests_total{model_version="1",status="500"} 10',
        'storeflow_requests_total{model_version="none",status="401"} 4',
        "# TYPE storeflow_request_latency_seconds histogram",
        'storeflow_request_latency_seconds_bucket{le="0.01",model_version="1"} 50',
        'storeflow_request_latency_seconds_bucket{le="0.02",model_version="1"} 100',
        'storeflow_request_latency_seconds_bucket{le="+Inf",model_version="1"} 100',
        'storeflow_request_latency_seconds_count{model_version="1"} 100',
        'storeflow_request_latency_seconds_sum{model_version="1"} 1.2',
        "# TYPE storeflow_prediction_score histogram",
        'storeflow_prediction_score_bucket{le="0.5",model_version="1"} 60',
        'storeflow_prediction_score_bucket{le="1.0",model_version="1"} 100',
        'storeflow_prediction_score_bucket{le="+Inf",model_version="1"} 100',
        "",
    ])
    metrics = version_metrics(scrape(text, "5..|error")["1"])
    assert metrics.requests == 100 and metrics.error_rate == pytest.approx(0.1)
    assert metrics.p99_latency_seconds == pytest.approx(0.0198)  # as histogram_quantile interpolates
    assert metrics.score_buckets == ((0.5, 60), (1.0, 100), (float("inf"), 100))
    assert histogram_quantile(0.99, {0.01: 0, float("inf"): 5}) == 0.01  # beyond the last bound
    assert version_metrics(None).requests == 0 and version_metrics(None).error_rate is None
