"""InferenceService bodies for a registered model version: pure functions, no cluster access.

Two KServe rollout styles share one vocabulary (start a canary, set its percent, promote, roll back):

* Serverless: the new model replaces ``spec.predictor`` and ``spec.predictor.canaryTrafficPercent`` splits
  traffic with the last rolled-out revision; removing the field promotes, 0 sends all traffic back.
* Standard (RawDeployment, KServe 0.20+): ``spec.predictor`` stays the champion and ``spec.canary[]`` holds
  the challenger predictor (named) with ``trafficPercent``; promotion moves the canary predictor, name
  included, into ``spec.predictor`` (KServe retargets without restarting pods); rollback drops ``spec.canary``.

Every write is a JSON merge patch (RFC 7386): the kubernetes client sends CustomObjects patches that way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from storeflow.components.config import FEAST_REGISTRY_URL_ENV, REDIS_CONNECTION_STRING_ENV, Settings

GROUP, VERSION, PLURAL, KIND = "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
PREVIOUS_SPEC = "storeflow.io/previous-spec"
STATE = "storeflow.io/rollout-state"
MODEL_NAME = "storeflow.io/model-name"
MODEL_VERSION = "storeflow.io/model-version"
MODEL_URI = "storeflow.io/model-uri"
CHAMPION_VERSION = "storeflow.io/champion-version"
PIPELINE_RUN = "storeflow.io/pipeline-run-id"
ROLLBACK_REASON = "storeflow.io/rollback-reason"
STOP = "serving.kserve.io/stop"
FEAST_MOUNT = "/etc/storeflow/feast"

Mode = Literal["Serverless", "Standard"]


class DeployError(RuntimeError):
    """A rollout cannot proceed; the message names the object and the problem."""


@dataclass(frozen=True)
class ModelVersionRef:
    """A registered MLflow model version and where KServe's storage initializer downloads it from."""

    name: str
    version: str
    storage_uri: str


def _label_value(value: str) -> str:
    # Label values: at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends; annotations keep the full value.
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in value)[:63]
    return cleaned.strip("-_.")


def _security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security_context() -> dict[str, Any]:
    """Pod level, so containers KServe and Knative inject inherit it: the restricted Pod Security Standard."""
    return {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"}}


# What the kustomize base declares for each component; the deploy step writes the same, or its patch
# would null them (a merge patch drops every key the desired spec lacks).
SCALE_TARGETS = {"predictor": 8, "transformer": 16}
LIVENESS = {"httpGet": {"path": "/v2/health/live", "port": 8080}, "initialDelaySeconds": 30, "periodSeconds": 20,
            "failureThreshold": 3}


def canary_name(model: ModelVersionRef) -> str:
    """Standard-mode predictor name: one Deployment per model version, ``<isvc>-v<version>-predictor``."""
    return f"v{_label_value(model.version).lower()}"


def predictor_spec(settings: Settings, model: ModelVersionRef) -> dict[str, Any]:
    """The predictor serving ``model``: the storeflow runtime, the project image, /mnt/models from storageUri."""
    deploy = settings.deploy
    return {
        "serviceAccountName": deploy.service_account,
        "minReplicas": deploy.min_replicas,
        "maxReplicas": deploy.max_replicas,
        "labels": {"storeflow.io/model-version": _label_value(model.version)},
        "securityContext": _pod_security_context(),
        "scaleMetric": "concurrency",
        "scaleTarget": SCALE_TARGETS["predictor"],
        "model": {
            "name": "kserve-container",  # KServe's container name; the CRD requires it in spec.canary[]
            "modelFormat": {"name": deploy.model_format},
            "runtime": deploy.serving_runtime,
            "storageUri": model.storage_uri,
            "image": settings.image.reference,
            # The server labels its metrics with this; canary analysis selects each version by it.
            "env": [
                {"name": "STOREFLOW_MODEL_NAME", "value": model.name},
                {"name": "STOREFLOW_MODEL_VERSION", "value": model.version},
            ],
            "resources": deploy.predictor_resources,
            "securityContext": _security_context(),
        },
    }


def _from_secret(env: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def transformer_spec(settings: Settings) -> dict[str, Any]:
    """Feast feature lookup in front of the predictor; model-agnostic, so it never takes part in a canary."""
    deploy = settings.deploy
    name = deploy.inference_service
    state_path = settings.kfp.state_mount_path  # the same volume, at the same path, as the pipeline tasks
    # The prediction log: shipped to the object store from the pod's /tmp when one is configured (no volume
    # shared with anyone), else on the state volume where the monitoring pipeline reads it.
    shipped = bool(settings.serving.prediction_log_store)
    log_dir = "/tmp/predictions" if shipped else str(state_path / "predictions")
    state_mounts = [] if shipped else [{"name": "state", "mountPath": str(state_path)}]
    state_volumes = [] if shipped else [{"name": "state", "persistentVolumeClaim": {"claimName": settings.kfp.state_pvc}}]
    return {
        "serviceAccountName": deploy.service_account,
        "minReplicas": deploy.min_replicas,
        "maxReplicas": deploy.max_replicas,
        "securityContext": _pod_security_context(),
        "scaleMetric": "concurrency",
        "scaleTarget": SCALE_TARGETS["transformer"],
        "containers": [
            {
                "name": "kserve-container",
                "image": settings.image.reference,
                "command": ["python", "-m", "storeflow.serving.transformer"],
                "args": ["--model_name", name, "--predictor_host", f"{name}-predictor"],  # same namespace
                "env": [
                    {"name": "STOREFLOW_FEATURES__FEAST__REPO_DIR", "value": FEAST_MOUNT},
                    {"name": "STOREFLOW_SERVING__PREDICTION_LOG_DIR", "value": log_dir},
                    # feature_store.yaml reads ${REDIS_CONNECTION_STRING} and ${FEAST_REGISTRY_URL}; the values
                    # never leave their Secrets.
                    _from_secret(REDIS_CONNECTION_STRING_ENV, deploy.online_store_secret, "connection-string"),
                    _from_secret(FEAST_REGISTRY_URL_ENV, settings.features.feast.registry_secret, "url"),
                    # Session tokens are checked against the app's client id (audience) and secret.
                    _from_secret("STOREFLOW_SERVING__SHOPIFY_CLIENT_ID", deploy.shopify_app_secret, "client-id"),
                    _from_secret(settings.serving.shopify_secret_env, deploy.shopify_app_secret, "api-secret"),
                    *object_store_env(settings),
                ],
                "envFrom": [{"configMapRef": {"name": deploy.config_map}}],
                "resources": deploy.transformer_resources,
                "securityContext": _security_context(),
                "livenessProbe": LIVENESS,
                "volumeMounts": [
                    {"name": "feast-config", "mountPath": FEAST_MOUNT, "readOnly": True},
                    *state_mounts,
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [
            {"name": "feast-config", "configMap": {"name": deploy.feast_config_map}},
            *state_volumes,
            {"name": "tmp", "emptyDir": {}},
        ],
    }


OBJECT_STORE_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL")


def object_store_env(settings: Settings) -> list[dict[str, Any]]:
    """The object store's credentials and endpoint, from the Secret the MLflow server's bucket uses
    (optional: a pod with workload identity needs none), as the variables pyarrow and boto3 read."""
    if not settings.serving.prediction_log_store:
        return []
    secret = settings.serving.prediction_log_store_secret
    return [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
            for key in OBJECT_STORE_KEYS]


def _tracking(model: ModelVersionRef, run_id: str) -> tuple[dict[str, str], dict[str, str]]:
    labels = {
        "app.kubernetes.io/part-of": "storeflow",
        MODEL_NAME: _label_value(model.name),
        MODEL_VERSION: _label_value(model.version),
        "storeflow.io/pipeline-run": _label_value(run_id),
    }
    annotations = {MODEL_NAME: model.name, MODEL_VERSION: model.version, MODEL_URI: model.storage_uri, PIPELINE_RUN: run_id}
    return labels, annotations


def new_inference_service(settings: Settings, model: ModelVersionRef, run_id: str) -> dict[str, Any]:
    """The first deployment: no champion exists, so the model takes all traffic at once."""
    labels, annotations = _tracking(model, run_id)
    annotations |= {
        MODE_ANNOTATION: settings.deploy.mode,
        "serving.kserve.io/enable-prometheus-scraping": "true",
        STATE: "promoted",
    }
    predictor = predictor_spec(settings, model)
    if settings.deploy.mode == "Standard":
        predictor["name"] = canary_name(model)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": settings.deploy.inference_service,
            "namespace": settings.deploy.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {"predictor": predictor} | ({"transformer": transformer_spec(settings)}
                                             if settings.deploy.feast_transformer else {}),
    }


def first_deploy_patch(isvc: dict[str, Any], settings: Settings, model: ModelVersionRef, run_id: str) -> dict[str, Any]:
    """Fill the stopped bootstrap object kustomize created: no champion yet, so no canary either."""
    mode = deployment_mode(isvc, settings.deploy.mode)
    desired = new_inference_service(settings.model_copy(update={"deploy": settings.deploy.model_copy(update={"mode": mode})}), model, run_id)
    annotations = desired["metadata"]["annotations"] | {STOP: None}
    return {
        "metadata": {"labels": desired["metadata"]["labels"], "annotations": annotations},
        "spec": _replacing(isvc["spec"], desired["spec"]),
    }


def deployment_mode(isvc: dict[str, Any], default: Mode) -> Mode:
    """The mode KServe runs this object in: its annotation (fixed at creation) beats the config."""
    value = (isvc.get("metadata", {}).get("annotations") or {}).get(MODE_ANNOTATION, default)
    if value in ("Standard", "RawDeployment"):
        return "Standard"
    if value == "Serverless":
        return "Serverless"
    raise DeployError(f"InferenceService {isvc['metadata'].get('name')}: unsupported {MODE_ANNOTATION} {value!r}")


def _annotations(isvc: dict[str, Any]) -> dict[str, str]:
    return isvc.get("metadata", {}).get("annotations") or {}


def serving_version(isvc: dict[str, Any]) -> str | None:
    """The model version the object was last rolled to (canary or promoted)."""
    return _annotations(isvc).get(MODEL_VERSION)


def rollout_state(isvc: dict[str, Any]) -> str:
    return _annotations(isvc).get(STATE, "promoted")


def canary_percent(isvc: dict[str, Any], mode: Mode) -> int | None:
    """Traffic percent the spec gives the canary, or None when no canary is in flight."""
    spec = isvc.get("spec", {})
    if mode == "Serverless":
        return spec.get("predictor", {}).get("canaryTrafficPercent")
    canaries = spec.get("canary") or []
    return canaries[0]["trafficPercent"] if canaries else None


def _replacing(old: Any, new: Any) -> Any:
    """Merge-patch value that turns ``old`` into exactly ``new``: keys only ``old`` has become null."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {key: _replacing(old.get(key), value) for key, value in new.items()}
    patch |= {key: None for key in old.keys() - new.keys()}
    return patch


def start_canary_patch(
    isvc: dict[str, Any], settings: Settings, model: ModelVersionRef, run_id: str, percent: int
) -> dict[str, Any]:
    """Send ``percent`` of traffic to ``model``, remembering the champion's spec for a rollback without MLflow."""
    mode = deployment_mode(isvc, settings.deploy.mode)
    spec = isvc["spec"]
    if rollout_state(isvc) == "canary":
        raise DeployError(
            f"InferenceService {isvc['metadata']['name']} already runs a canary of version "
            f"{serving_version(isvc)}: promote or roll it back first"
        )
    champion = {k: v for k, v in spec["predictor"].items() if k != "canaryTrafficPercent"}
    previous = {
        "modelVersion": serving_version(isvc),
        "predictor": champion,
        "transformer": spec.get("transformer"),
    }
    labels, annotations = _tracking(model, run_id)
    annotations |= {
        PREVIOUS_SPEC: json.dumps(previous, sort_keys=True, separators=(",", ":")),
        CHAMPION_VERSION: serving_version(isvc) or "",
        STATE: "canary",
        ROLLBACK_REASON: None,
    }
    challenger = predictor_spec(settings, model)
    new_spec: dict[str, Any] = {}
    if settings.deploy.feast_transformer:  # none (order risk): the object keeps what it has, which is none
        new_spec["transformer"] = _replacing(spec.get("transformer"), transformer_spec(settings))
    if mode == "Serverless":
        new_spec["predictor"] = _replacing(spec["predictor"], challenger | {"canaryTrafficPercent": percent})
    else:
        # Canary predictors may not carry autoscaling fields; KServe derives their replicas from the percent.
        challenger = {k: v for k, v in challenger.items() if k not in ("minReplicas", "maxReplicas")}
        new_spec["canary"] = [{"trafficPercent": percent, "predictor": challenger | {"name": canary_name(model)}}]
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": new_spec}


def set_percent_patch(isvc: dict[str, Any], mode: Mode, percent: int) -> dict[str, Any]:
    """Move the in-flight canary to ``percent`` of traffic."""
    if canary_percent(isvc, mode) is None:
        raise DeployError(f"InferenceService {isvc['metadata']['name']} has no canary in flight")
    if mode == "Serverless":
        return {"spec": {"predictor": {"canaryTrafficPercent": percent}}}
    canary = isvc["spec"]["canary"][0]
    return {"spec": {"canary": [canary | {"trafficPercent": percent}]}}


def promote_patch(isvc: dict[str, Any], mode: Mode) -> dict[str, Any]:
    """Give the canary all traffic and make it the champion."""
    if canary_percent(isvc, mode) is None:
        raise DeployError(f"InferenceService {isvc['metadata']['name']} has no canary to promote")
    meta = {"annotations": {STATE: "promoted", CHAMPION_VERSION: serving_version(isvc)}}
    if mode == "Serverless":
        return {"metadata": meta, "spec": {"predictor": {"canaryTrafficPercent": None}}}
    stable = isvc["spec"]["predictor"]
    promoted = isvc["spec"]["canary"][0]["predictor"]
    scaling = {k: stable[k] for k in ("minReplicas", "maxReplicas") if k in stable}
    return {"metadata": meta, "spec": {"predictor": _replacing(stable, promoted | scaling), "canary": None}}


def previous_spec(isvc: dict[str, Any]) -> dict[str, Any]:
    """The champion spec saved when the canary started; rollback needs nothing else (no MLflow)."""
    raw = _annotations(isvc).get(PREVIOUS_SPEC)
    if not raw:
        raise DeployError(
            f"InferenceService {isvc['metadata']['name']} has no {PREVIOUS_SPEC} annotation: nothing to roll back to"
        )
    try:
        previous = json.loads(raw)
        previous["predictor"]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError) as exc:
        raise DeployError(f"InferenceService {isvc['metadata']['name']}: {PREVIOUS_SPEC} is not a saved spec") from exc
    return previous


def rollback_patch(isvc: dict[str, Any], mode: Mode, reason: str) -> dict[str, Any]:
    """Send all traffic back to the champion and restore its spec from the annotation.

    Serverless keeps ``canaryTrafficPercent: 0``: traffic stays pinned on the champion's revision while the
    restored spec's (identical-model) revision starts, instead of flowing to the bad latest-ready revision.
    """
    previous = previous_spec(isvc)
    spec = isvc["spec"]
    version = previous.get("modelVersion")
    annotations = {
        STATE: "rolled-back",
        ROLLBACK_REASON: reason,
        MODEL_VERSION: version,
        CHAMPION_VERSION: version,
        MODEL_URI: previous["predictor"].get("model", {}).get("storageUri"),
    }
    labels = {MODEL_VERSION: _label_value(version) if version else None}
    new_spec: dict[str, Any] = {}
    if previous.get("transformer") is not None:
        new_spec["transformer"] = _replacing(spec.get("transformer"), previous["transformer"])
    if mode == "Serverless":
        new_spec["predictor"] = _replacing(spec["predictor"], previous["predictor"] | {"canaryTrafficPercent": 0})
    else:
        new_spec["predictor"] = _replacing(spec["predictor"], previous["predictor"])
        new_spec["canary"] = None
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": new_spec}
