"""An order risk champion is rolled out as the propensity model's is: a canary on the risk InferenceService
(kustomize's bootstrap object, filled by the first rollout), judged on errors and p99 latency from Prometheus
(the risk pods' series only) and on its alert rate, the share of orders it scored HIGH, against the champion's in
the same window (the risk server's storeflow_risk_assessments_total in Prometheus, tests/test_risk_metrics.py
scrapes a real one). A canary flagging far more, or far fewer, orders is rolled back.

storeflow's own loop (:func:`storeflow.components.deploy.rollout.run`) runs against the loopback KServe API and
Prometheus stubs of test_deploy and test_canary_prometheus; no cluster is involved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_canary_prometheus import PrometheusStub, serving
from test_deploy import HEALTHY, KubeStub, Recorder, assert_valid

from storeflow.components.deploy.analysis import decide
from storeflow.components.deploy.inference_service import ModelVersionRef
from storeflow.components.deploy.kube import connect
from storeflow.components.deploy.prometheus import Prometheus, VersionMetrics
from storeflow.components.deploy.local import rollout_record
from storeflow.components.risk.deploy import RiskCanaryMetrics, alert_queries, deploy_risk, deploy_risk_local

BOOTSTRAP = Path(__file__).parents[1] / "kustomize" / "base" / "risk-inference-service.yaml"
NAME = "storeflow-order-risk"


@pytest.fixture
def policy(settings):
    settings.deploy.canary_steps = [10, 50, 100]
    settings.deploy.max_holds_per_step = 3
    settings.deploy.analysis_window = "5m"
    settings.deploy.target = "kserve"
    settings.risk.canary_alert_ratio = 2.0
    settings.risk.canary_min_orders = 1000
    return settings


def scored(orders=None, alerts=None, error_rate=0.001) -> VersionMetrics:
    return VersionMetrics(1000, error_rate, 0.01, (), orders=orders, alerts=alerts)


# --- the judgement ---------------------------------------------------------------------------------------------

def test_far_more_or_far_fewer_alerts_roll_back_naming_both_rates(policy):
    more = decide(policy, 10, 0, scored(5000, 200), scored(5000, 50))  # 4 % against 1 %
    assert more.action == "rollback"
    assert ("alert rate 4.00% (200 of 5000 orders scored HIGH) against champion's 1.00% (50 of 5000): 4 times the "
            "champion's, beyond 2x either way") in more.reasons[0]
    fewer = decide(policy, 10, 0, scored(5000, 10), scored(5000, 50))  # 0.2 % against 1 %: fraud let through
    assert fewer.action == "rollback" and "alert rate 0.20%" in fewer.reasons[0] and "1.00%" in fewer.reasons[0]
    assert decide(policy, 10, 0, scored(5000, 40), scored(5000, 0)).action == "rollback"  # the champion flagged none


def test_an_alert_rate_within_the_bound_or_within_noise_advances(policy):
    assert decide(policy, 10, 0, scored(5000, 60), scored(5000, 50)).action == "advance"  # 1.2 x: within
    assert decide(policy, 50, 0, scored(5000, 30), scored(5000, 50)).action == "promote"  # 0.6 x: within
    assert decide(policy, 10, 0, scored(1000, 5), scored(1000, 2)).action == "advance"  # 2.5 x of few: p > 0.05
    policy.risk.canary_alert_ratio = 1.1  # the bound is the setting's
    assert decide(policy, 10, 0, scored(5000, 100), scored(5000, 50)).action == "rollback"


def test_too_few_orders_hold_then_roll_back(policy):
    held = decide(policy, 10, 0, scored(400, 20), scored(5000, 50))
    assert held.action == "hold" and held.reasons == ("canary scored 400 orders in 5m, fewer than 1000",)
    assert decide(policy, 10, 2, scored(400, 20), scored(5000, 50)).action == "rollback"


def test_errors_still_roll_back_a_risk_canary(policy):
    failing = decide(policy, 10, 0, scored(5000, 50, error_rate=0.2), scored(5000, 50))
    assert failing.action == "rollback" and "error rate 0.2000" in failing.reasons[0]


# --- the alert counts: the risk server's counters in Prometheus ------------------------------------------------

def with_alerts(answer, counts: dict[str, tuple[int, int]]):
    """``answer`` (test_canary_prometheus.serving) plus each version's (orders, HIGH) for the alert queries."""
    import re

    from test_canary_prometheus import recorded, vector_of

    def both(query: str) -> tuple[int, str]:
        if "storeflow_risk_assessments_total" not in query:
            return answer(query)
        version = re.search(r'model_version="([^"]+)"', query).group(1)
        if version not in counts:
            return 200, json.dumps(recorded("no_series"))
        orders, alerts = counts[version]
        return 200, vector_of(alerts if 'level="HIGH"' in query else orders)

    return both


def test_the_alert_queries_read_the_risk_servers_counters(policy):
    asked = alert_queries(policy, "4", 'pod=~"storeflow-order-risk-.*"')
    assert asked == {
        "orders": 'sum(increase(storeflow_risk_assessments_total{model_version="4",pod=~"storeflow-order-risk-.*"}[5m]))',
        "alerts": ('sum(increase(storeflow_risk_assessments_total{model_version="4",pod=~"storeflow-order-risk-.*",'
                   'level="HIGH"}[5m]))')}


def test_the_request_metrics_and_alerts_are_the_risk_pods_only(policy):
    stub = PrometheusStub(with_alerts(serving({"4": HEALTHY}), {"4": (5000, 60)}))
    try:
        found = RiskCanaryMetrics(Prometheus(stub.url)).version_metrics(policy, "4")
    finally:
        stub.close()
    assert (found.orders, found.alerts, found.requests, found.score_buckets) == (5000, 60, 1800, ())
    assert len(stub.queries) == 6
    assert all('model_version="4",pod=~"storeflow-order-risk-.*"' in q for q in stub.queries)


# --- the rollout: kustomize's stopped object, a first champion, then a canary ---------------------------------

def bootstrap() -> dict:
    isvc = next(yaml.safe_load_all(BOOTSTRAP.read_text()))
    isvc["metadata"]["namespace"] = "storeflow"
    return isvc


def roll(policy, kube, version: str, counts, record=None, served=None):
    model = ModelVersionRef(NAME, version, f"s3://mlflow/7/{version}/artifacts/model")
    prom = PrometheusStub(with_alerts(serving(served or {"3": HEALTHY, "4": HEALTHY}), counts))
    try:
        return deploy_risk(policy, version, f"run-{version}", isvcs=connect(policy, kube.api_client()),
                           prometheus=Prometheus(prom.url), resolve=lambda s, v: model, record=record or Recorder(),
                           sleep=lambda s: None)
    finally:
        prom.close()


@pytest.fixture
def risk_cluster():
    kube = KubeStub(bootstrap())
    yield kube
    kube.server.shutdown()


@pytest.mark.parametrize("canary, outcome, actions", [
    ((5000, 250), "rolled-back", ["rollback"]),  # 5 % against 1 %
    ((5000, 60), "promoted", ["advance", "promote"]),  # 1.2 %: within 2x
])
def test_a_risk_rollout_is_decided_by_the_alert_rate(policy, risk_cluster, canary, outcome, actions):
    kube = risk_cluster
    first = Recorder()
    assert roll(policy, kube, "3", {}, first)["outcome"] == "created"
    spec = kube.obj["spec"]
    assert_valid(kube.obj)
    assert "serving.kserve.io/stop" not in kube.obj["metadata"]["annotations"]
    assert "transformer" not in spec  # the receiver sends the features: no Feast transformer
    assert (spec["predictor"]["model"]["runtime"], spec["predictor"]["model"]["modelFormat"]["name"],
            spec["predictor"]["model"]["storageUri"]) == (NAME, NAME, "s3://mlflow/7/3/artifacts/model")
    assert (spec["predictor"]["minReplicas"], spec["predictor"]["maxReplicas"]) == (1, 4)
    assert first.tags == [("3", {"storeflow.deploy.state": "promoted", "storeflow.deploy.run_id": "run-3"})]

    record = Recorder()
    result = roll(policy, kube, "4", {"3": (5000, 50), "4": canary}, record)
    assert result["outcome"] == outcome and result["inference_service"] == NAME
    assert [s["action"] for s in result["steps"]] == actions
    assert_valid(kube.obj)
    assert "transformer" not in kube.obj["spec"]
    annotations = kube.obj["metadata"]["annotations"]
    if outcome == "rolled-back":
        assert "alert rate 5.00% (250 of 5000 orders scored HIGH) against champion's 1.00% (50 of 5000)" in result["reasons"][0]
        assert (annotations["storeflow.io/rollout-state"], annotations["storeflow.io/model-version"]) == ("rolled-back", "3")
        assert kube.obj["spec"]["predictor"]["model"]["storageUri"] == "s3://mlflow/7/3/artifacts/model"
        assert ("4", {"storeflow.deploy.state": "rolled-back", "storeflow.deploy.reason": result["reasons"][0]}) in record.tags
    else:
        assert (annotations["storeflow.io/rollout-state"], annotations["storeflow.io/model-version"]) == ("promoted", "4")
        assert "canaryTrafficPercent" not in kube.obj["spec"]["predictor"]
        assert record.tags == [("4", {"storeflow.deploy.state": "promoted"})]


def test_errors_roll_a_risk_canary_back_whatever_its_alert_rate(policy, risk_cluster):
    kube = risk_cluster
    failing = {"3": HEALTHY, "4": HEALTHY | {"errors": 400}}
    roll(policy, kube, "3", {}, served=failing)
    result = roll(policy, kube, "4", {"3": (5000, 50), "4": (5000, 50)}, served=failing)
    assert result["outcome"] == "rolled-back" and "error rate 0.2222 exceeds champion's 0.0050" in result["reasons"][0]
    assert kube.obj["metadata"]["annotations"]["storeflow.io/model-version"] == "3"


def test_target_local_records_the_champion_serve_risk_picks_up(policy, monkeypatch):
    """The first risk champion is recorded without a canary (one that replaced a champion is canaried:
    tests/test_risk_local_canary.py)."""
    policy.deploy.target = "local"
    record = Recorder()
    monkeypatch.setattr("storeflow.components.deploy.local.record_rollout", record)
    entry = deploy_risk_local(policy, "1", "run-1", None)
    assert entry["outcome"] == "promoted-locally" and entry["model_name"] == NAME
    assert "storeflow serve-risk serves v1" in entry["reasons"][0]
    assert record.tags == [("1", {"storeflow.deploy.state": "promoted", "storeflow.deploy.target": "local"})]
    # the local record every model shares: what `storeflow status|rollback --model risk` read
    [line] = rollout_record(policy).read_text().splitlines()
    assert json.loads(line) | {"at": None} == {"model_name": NAME, "outcome": "promoted-locally", "model_version": "1",
                                             "run_id": "run-1", "previous_champion": None, "at": None}
