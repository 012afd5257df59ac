"""What ``storeflow promote|rollback|status`` do; ``kubernetes`` is imported only when they run."""

from __future__ import annotations

from typing import Any

from storeflow.components.config import Settings
from storeflow.components.deploy import inference_service as isvc_spec
from storeflow.components.deploy import registry, rollout
from storeflow.components.deploy.kube import InferenceServices, connect


def promote(settings: Settings, *, isvcs: InferenceServices | None = None) -> dict[str, Any]:
    """Give the in-flight canary all traffic now, skipping the remaining analysis steps.

    Target local (and no cluster client given): the challenger takes the ``champion`` alias.
    """
    if settings.deploy.target == "local" and isvcs is None:
        from storeflow.components.deploy import local

        return local.promote(settings)
    promoted, recorded = rollout.promote(isvcs or connect(settings), settings, registry.record_rollout)
    return status_of(promoted, settings) | {"recorded_in_mlflow": recorded}


def rollback(
    settings: Settings, reason: str = "manual rollback", *, isvcs: InferenceServices | None = None
) -> dict[str, Any]:
    """Send all traffic back to the champion, restoring its spec from the InferenceService itself.

    Works with MLflow down: only the tag recording the reason is skipped (``recorded_in_mlflow`` false).
    Target local (and no cluster client given): the ``champion`` alias returns to the version it replaced.
    """
    if settings.deploy.target == "local" and isvcs is None:
        from storeflow.components.deploy import local

        return local.rollback(settings, reason)
    restored, recorded = rollout.rollback(isvcs or connect(settings), settings, reason, registry.record_rollout)
    return status_of(restored, settings) | {"recorded_in_mlflow": recorded}


def status(settings: Settings, *, isvcs: InferenceServices | None = None) -> dict[str, Any]:
    """Which versions serve, at what traffic split, and whether KServe reports the service Ready.

    Target local (and no cluster client given): the registry aliases and the last local rollout.
    """
    if settings.deploy.target == "local" and isvcs is None:
        from storeflow.components.deploy import local

        return local.status(settings)
    isvcs = isvcs or connect(settings)
    return status_of(isvcs.require(settings.deploy.inference_service), settings)


def status_of(isvc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A readable summary of one InferenceService object (spec intent and KServe's observed status)."""
    mode = isvc_spec.deployment_mode(isvc, settings.deploy.mode)
    annotations = isvc["metadata"].get("annotations") or {}
    observed = isvc.get("status") or {}
    predictor = (observed.get("components") or {}).get("predictor") or {}
    ready = next((c.get("status") for c in observed.get("conditions", []) if c.get("type") == "Ready"), "Unknown")
    summary = {
        "inference_service": f"{isvc['metadata'].get('namespace', settings.deploy.namespace)}/{isvc['metadata']['name']}",
        "mode": mode,
        "state": isvc_spec.rollout_state(isvc),
        "model_version": isvc_spec.serving_version(isvc),
        "champion_version": annotations.get(isvc_spec.CHAMPION_VERSION) or isvc_spec.serving_version(isvc),
        "canary_percent": isvc_spec.canary_percent(isvc, mode),
        "model_uri": annotations.get(isvc_spec.MODEL_URI),
        "pipeline_run_id": annotations.get(isvc_spec.PIPELINE_RUN),
        "rollback_reason": annotations.get(isvc_spec.ROLLBACK_REASON),
        "ready": ready,
        "url": observed.get("url"),
    }
    if mode == "Serverless":
        summary["traffic"] = [
            {"revision": t.get("revisionName"), "percent": t.get("percent"), "tag": t.get("tag"),
             "latest": t.get("latestRevision")}
            for t in predictor.get("traffic", [])
        ]
        summary["latest_rolled_out_revision"] = predictor.get("latestRolledoutRevision")
        summary["previous_rolled_out_revision"] = predictor.get("previousRolledoutRevision")
    else:
        summary["canaries"] = [
            {"name": c.get("name"), "percent": c.get("trafficPercent"), "ready": c.get("ready")}
            for c in observed.get("canaryStatuses", [])
        ]
    return summary
