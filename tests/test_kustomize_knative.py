"""What Knative's admission webhook takes: in Serverless mode KServe makes each InferenceService component a
Knative Service whose pod holds the component's volumes and, for a predictor, its ServingRuntime's. A stock
Knative admits only configMap, secret, projected and emptyDir volumes there; a PersistentVolumeClaim needs
``kubernetes.podspec-persistent-volume-claim`` (and ``-write``) enabled in its config-features, and without them
KServe reports "fails to reconcile predictor: admission webhook ... denied the request" and the service never
starts. Checked on the rendered manifests; nothing is applied to a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_kustomize import OVERLAYS, needs_kubectl
from test_kustomize_recommendations import render_with_component

KNATIVE_DEFAULT_VOLUMES = {"configMap", "secret", "projected", "emptyDir"}


def serverless_pod_volumes(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per Serverless InferenceService component (``<isvc>/<component>``), the volumes of the pod KServe makes."""
    runtimes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServingRuntime"}
    pods = {}
    for isvc in (o for o in objects if o["kind"] == "InferenceService"):
        if isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode", "Serverless") != "Serverless":
            continue
        for component in ("predictor", "transformer"):
            spec = isvc["spec"].get(component)
            if spec is None:
                continue
            volumes = list(spec.get("volumes", []))
            if runtime := spec.get("model", {}).get("runtime"):
                volumes += runtimes[runtime]["spec"].get("volumes", [])
            pods[f"{isvc['metadata']['name']}/{component}"] = volumes
    return pods


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_serverless_pod_holds_only_volumes_a_stock_knative_admits(overlay: str, tmp_path: Path) -> None:
    """The order risk and recommender runtimes claimed the storeflow-state PVC for their prediction and feedback
    logs, which they ship to the object store anyway: Knative refused both services. Found by testing from
    outside."""
    pods = serverless_pod_volumes(render_with_component(overlay, tmp_path))
    assert {"storeflow-repeat-purchase/predictor", "storeflow-order-risk/predictor",
            "storeflow-recommendations/predictor"} <= set(pods)
    refused = {pod: [v["name"] for v in volumes if not set(v) - {"name"} <= KNATIVE_DEFAULT_VOLUMES]
               for pod, volumes in pods.items()}
    assert not any(refused.values()), refused


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_runtimes_keep_their_logs_on_their_own_tmp_and_ship_them(overlay: str, tmp_path: Path) -> None:
    """Without the volume, the state dir the runtimes log under is on their writable /tmp (the root filesystem is
    read-only), and the object store they ship each closed file to is set."""
    objects = render_with_component(overlay, tmp_path)
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "storeflow-config")
    assert config["data"]["STOREFLOW_SERVING__PREDICTION_LOG_STORE"].startswith("s3://")
    for name in ("storeflow-order-risk", "storeflow-recommender"):
        (container,) = next(o for o in objects if o["kind"] == "ServingRuntime"
                            and o["metadata"]["name"] == name)["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["STOREFLOW_PROJECT__STATE_DIR"].startswith("/tmp/"), name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], name
