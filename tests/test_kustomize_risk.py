"""The order risk InferenceService in every overlay (kustomize/base/risk-*.yaml): valid against the KServe CRDs and
Kubernetes' schemas, autoscaled on concurrency and never below one replica (no cold start when an order
arrives), more replicas in production with a disruption budget that keeps one through a drain, its runtime the
risk server the receiver's config points at, the receiver allowed to reach it and given the Admin API token for
the write-back. Nothing is applied to a cluster."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from test_deploy import assert_valid
from test_kustomize import KUBERNETES_VERSION, OVERLAYS, needs_kubectl, render
from test_kustomize_manners import pod_specs, restricted_violations

from storeflow.components.config import load_settings


def _named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
    return found[0]


def _settings(objects: list[dict[str, Any]], monkeypatch, tmp_path):
    config = _named(objects, "ConfigMap", "storeflow-config")
    monkeypatch.chdir(tmp_path)
    for key, value in config["data"].items():
        monkeypatch.setenv(key, value)
    # The Secrets' values a pod gets beside the ConfigMap (stand-ins: a SQL registry in a file, no Redis is reached).
    # Before, these came from whatever an earlier test file left in os.environ, which two workers do not share.
    monkeypatch.setenv("FEAST_REGISTRY_URL", f"sqlite:///{tmp_path / 'feast-registry.db'}")  # SQL, no server
    monkeypatch.setenv("REDIS_CONNECTION_STRING", "redis:6379,password=placeholder")
    return load_settings()


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_risk_service_autoscales_on_concurrency_without_cold_starts(overlay, monkeypatch, tmp_path):
    objects = render(overlay)
    settings = _settings(objects, monkeypatch, tmp_path)
    name = settings.risk.inference_service
    isvc = _named(objects, "InferenceService", name)
    assert_valid(isvc)  # the KServe CRD: scaleMetric's enum, scaleTarget an integer
    predictor = isvc["spec"]["predictor"]
    assert predictor["scaleMetric"] == "concurrency"
    assert isinstance(predictor["scaleTarget"], int) and predictor["scaleTarget"] > 0
    assert predictor["minReplicas"] >= (2 if overlay == "production" else 1)
    assert predictor["maxReplicas"] > predictor["minReplicas"]
    assert [v for where, pod in pod_specs(isvc) for v in restricted_violations(where, pod)] == []

    runtime = _named(objects, "ServingRuntime", predictor["model"]["runtime"])
    assert_valid(runtime)
    assert predictor["model"]["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    container = runtime["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "storeflow.serving.risk"]
    assert container["args"] == ["--model_name={{.Name}}"]  # the model is named after the service the receiver calls
    # off until the service has a model (kustomize/README.md): then the receiver is given Knative's
    # in-namespace address of the predictor, and calls the model by the name the runtime serves it under
    assert settings.risk.endpoint is None
    monkeypatch.setenv("STOREFLOW_RISK__ENDPOINT", f"http://{name}-predictor")
    from storeflow.components.risk.realtime import predict_url

    # what the scorer asks (building one needs the overlay's Redis, which is not here)
    assert predict_url(load_settings()) == f"http://{name}-predictor/v1/models/{name}:predict"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_drain_never_takes_the_last_risk_pod_where_there_are_two(overlay):
    objects = render(overlay)
    isvc = _named(objects, "InferenceService", "storeflow-order-risk")
    budget = _named(objects, "PodDisruptionBudget", "storeflow-order-risk-predictor")
    kubernetes_validate.validate(budget, KUBERNETES_VERSION, strict=True)
    assert budget["spec"]["selector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": "storeflow-order-risk",
                                                         "component": "predictor"}
    replicas = isvc["spec"]["predictor"]["minReplicas"]
    if replicas > 1:
        assert budget["spec"]["minAvailable"] == 1 < replicas
    else:  # one replica: a budget that kept it would block every drain
        assert "minAvailable" not in budget["spec"] and budget["spec"]["maxUnavailable"] == 1


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_receiver_may_reach_the_risk_service_and_write_back(overlay):
    objects = render(overlay)
    policy = _named(objects, "NetworkPolicy", "storeflow-order-risk")
    kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)
    assert policy["spec"]["podSelector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": "storeflow-order-risk"}
    assert {"podSelector": {}} in policy["spec"]["ingress"][0]["from"]  # the receiver, in this namespace
    receiver = _named(objects, "Deployment", "storeflow-webhooks")["spec"]["template"]["spec"]["containers"][0]
    token = next(e for e in receiver["env"] if e["name"] == "SHOPIFY_ACCESS_TOKEN")["valueFrom"]["secretKeyRef"]
    assert token == {"name": "storeflow-shopify", "key": "access-token", "optional": True}


@needs_kubectl
def test_the_pipeline_runner_may_patch_the_risk_service_and_nothing_more(monkeypatch, tmp_path):
    objects = render(OVERLAYS[0])
    name = _settings(objects, monkeypatch, tmp_path).risk.inference_service
    role = _named(objects, "Role", "storeflow-order-risk-deployer")
    assert role["rules"] == [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                              "resourceNames": [name], "verbs": ["get", "patch"]}]
    binding = _named(objects, "RoleBinding", "storeflow-order-risk-deployer")
    assert [s["name"] for s in binding["subjects"]] == ["storeflow-pipeline-runner"]
    # the propensity Role still names only its own InferenceService
    assert _named(objects, "Role", "storeflow-pipeline-runner")["rules"][0]["resourceNames"] == ["storeflow-repeat-purchase"]
