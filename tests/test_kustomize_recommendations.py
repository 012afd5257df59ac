"""The recommender's kustomize component (kustomize/components/recommendations) on every overlay: it renders,
its objects pass the KServe CRD schemas (tests/data/crds) and Kubernetes' own, its pods satisfy the
restricted Pod Security Standard with pinned, bounded containers and the recommended labels, and the deploy
code's predictor for a registered recommender version is what the component declares (so a first rollout's
merge patch nulls nothing) and validates as a Serverless canary. Nothing is applied to a cluster."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_deploy import assert_valid, merge_patch
from test_kustomize import KUBERNETES_VERSION, KUSTOMIZE, OVERLAYS, container_problems, needs_kubectl
from test_kustomize_manners import RECOMMENDED, pod_specs, restricted_violations

from storeflow.components.config import load_settings
from storeflow.components.deploy import inference_service as isvc_spec
from storeflow.components.deploy.inference_service import ModelVersionRef

COMPONENT = KUSTOMIZE / "components" / "recommendations"
NAME = "storeflow-recommendations"


def render_with_component(overlay: str, tmp_path: Path) -> list[dict[str, Any]]:
    """The overlay as an operator opts in: ``components: [../../components/recommendations]`` added to its
    kustomization.yaml (in a copy of the tree), so the overlay's labels, images and config apply to it too."""
    tree = tmp_path / "kustomize"
    shutil.copytree(KUSTOMIZE, tree)
    path = tree / "overlays" / overlay / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    kustomization["components"] = ["../../components/recommendations"]
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
    out = subprocess.run(["kubectl", "kustomize", str(path.parent)], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _recommender(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "InferenceService" and o["metadata"]["name"] == NAME)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_component_adds_a_valid_confined_recommender_to_every_overlay(overlay, tmp_path):
    objects = render_with_component(overlay, tmp_path)
    ours = [o for o in objects if o["metadata"].get("labels", {}).get("app.kubernetes.io/name") == NAME]
    assert {(o["kind"], o["metadata"]["name"]) for o in ours} == {
        ("ServingRuntime", "storeflow-recommender"), ("InferenceService", NAME), ("NetworkPolicy", NAME),
        ("Role", "storeflow-recommendations-deployer"), ("RoleBinding", "storeflow-recommendations-deployer"),
        ("ConfigMap", "storeflow-recommendations-dashboard")}
    for obj in ours:
        if obj["apiVersion"].startswith("serving.kserve.io/"):
            assert_valid(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        assert not [label for label in RECOMMENDED if label not in obj["metadata"]["labels"]], obj["metadata"]["name"]
        assert container_problems(obj) == []
        assert [v for where, pod in pod_specs(obj) for v in restricted_violations(where, pod)] == []
    isvc = _recommender(objects)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/stop"] == "true"  # started by the first rollout
    assert isvc["spec"]["predictor"]["model"]["runtime"] == "storeflow-recommender"
    # The propensity objects are untouched: its Role still names only its own InferenceService.
    role = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == "storeflow-pipeline-runner")
    assert role["rules"][0]["resourceNames"] == ["storeflow-repeat-purchase"]
    mine = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == "storeflow-recommendations-deployer")
    assert mine["rules"] == [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                              "resourceNames": [NAME], "verbs": ["get", "patch"]}]
    runtime = next(o for o in ours if o["kind"] == "ServingRuntime")
    (container,) = runtime["spec"]["containers"]
    assert container["command"] == ["python", "-m", "storeflow.serving.recommender"]
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "storeflow-config")
    # answers and feedback are logged under the state dir, on the pod's own /tmp, and shipped to the object store
    # where CTR is computed (no volume claim: Knative refuses one in a Serverless pod, test_kustomize_knative)
    state_dir = next(e["value"] for e in container["env"] if e["name"] == "STOREFLOW_PROJECT__STATE_DIR")
    assert state_dir.startswith("/tmp/") and {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert config["data"]["STOREFLOW_SERVING__PREDICTION_LOG_STORE"].startswith("s3://")
    secrets = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert {"SHOPIFY_API_SECRET", "STOREFLOW_SERVING__SHOPIFY_CLIENT_ID", "REDIS_CONNECTION_STRING"} <= secrets


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_deploy_code_rolls_a_recommender_version_into_the_declared_service(overlay, tmp_path, monkeypatch):
    """With the overlay's storeflow-config and the recommender's names (``recommendations.inference_service``,
    ``serving_runtime``, ``model_format``), the deploy code's predictor equals the declared one where a merge
    patch would otherwise null fields, and a Serverless canary of a second version, its promotion and a
    rollback each leave a CRD-valid recommender."""
    objects = render_with_component(overlay, tmp_path)
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "storeflow-config")
    monkeypatch.chdir(tmp_path)
    for key, value in config["data"].items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    cfg = settings.recommendations
    settings = settings.model_copy(update={"deploy": settings.deploy.model_copy(update={
        "inference_service": cfg.inference_service, "serving_runtime": cfg.serving_runtime,
        "model_format": cfg.model_format})})
    declared = _recommender(objects)
    v1 = ModelVersionRef(cfg.model_name, "1", "s3://mlflow/2/aa/artifacts/model")
    built = isvc_spec.predictor_spec(settings, v1)
    assert (built["minReplicas"], built["maxReplicas"]) == (settings.deploy.min_replicas, settings.deploy.max_replicas)
    for key in ("securityContext", "scaleMetric", "scaleTarget", "serviceAccountName"):
        assert built[key] == declared["spec"]["predictor"][key], key
    assert built["model"]["resources"] == settings.deploy.predictor_resources  # the overlay's, at the first rollout
    for key in ("modelFormat", "runtime", "securityContext"):
        assert built["model"][key] == declared["spec"]["predictor"]["model"][key], key

    serving = merge_patch(declared, {"metadata": {"annotations": {isvc_spec.STOP: None, isvc_spec.STATE: "promoted",
                                                                  isvc_spec.MODEL_VERSION: "1"}},
                                     "spec": {"predictor": built}})
    assert_valid(serving)
    v2 = ModelVersionRef(cfg.model_name, "2", "s3://mlflow/2/bb/artifacts/model")
    canary = merge_patch(serving, isvc_spec.start_canary_patch(serving, settings, v2, "run-2", 10))
    canary["spec"].pop("transformer")  # the deploy code writes the propensity transformer; this service has none
    assert_valid(canary)
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert canary["spec"]["predictor"]["model"]["storageUri"] == v2.storage_uri
    promoted = merge_patch(canary, isvc_spec.promote_patch(canary, "Serverless"))
    assert_valid(promoted)
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    rolled_back = merge_patch(canary, isvc_spec.rollback_patch(canary, "Serverless", "ctr fell"))
    assert_valid(rolled_back)
    assert rolled_back["spec"]["predictor"]["model"]["storageUri"] == v1.storage_uri
    assert rolled_back["spec"]["predictor"]["canaryTrafficPercent"] == 0


@needs_kubectl
def test_the_dashboard_shows_ctr_by_version_from_metrics_the_recommender_exports(tmp_path):
    import json
    import re

    from storeflow.serving import metrics as serving_metrics
    from storeflow.serving import recommend_feedback

    objects = render_with_component("production", tmp_path)
    config_map = next(o for o in objects if o["kind"] == "ConfigMap"
                      and o["metadata"]["name"] == "storeflow-recommendations-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["recommendations.json"])
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {re.sub(r"_(bucket|count|sum|total)$", "", m) for q in queries for m in re.findall(r"storeflow_\w+", q)}
    exported = {m.describe()[0].name for m in (serving_metrics.REQUESTS, serving_metrics.LATENCY,
                                                recommend_feedback.IMPRESSIONS, recommend_feedback.CLICKS)}
    assert used <= exported, used - exported
    assert any("storeflow_recommendation_clicks_total" in q and "storeflow_recommendation_impressions_total" in q
               and "by (model_version)" in q for q in queries)  # CTR per version
    assert all('pod=~"storeflow-recommendations-.*"' in q for q in queries)  # not the propensity model's requests
