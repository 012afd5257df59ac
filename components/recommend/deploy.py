"""The recommendations pipeline's deploy step as a plain function: the registered champion rolled out with
the propensity model's own deploy code (:func:`storeflow.components.deploy.deploy_stage` and
:mod:`storeflow.components.deploy.local`), pointed at the recommender.

On ``deploy.target`` kserve: the recommender's InferenceService (kustomize/components/recommendations; no
Feast transformer, its runtime reads availability itself) is filled at the first rollout, and a later
champion is a canary (``canaryTrafficPercent`` through ``deploy.canary_steps``) that
:func:`storeflow.components.deploy.rollout.run` promotes or rolls back on
:class:`~storeflow.components.recommend.canary.RecommenderCanaryMetrics`: errors and p99 latency as for the
propensity model (of the recommender's pods: version numbers are per model), and click-through rate from
the recommender's feedback log instead of a score histogram.
On local: as the propensity model's local rollout (:func:`storeflow.components.deploy.local.deploy_local`): the
first champion is recorded; a later one is canaried against the champion it replaces through
``deploy.canary_steps`` on two `storeflow serve-recommendations` servers with replayed shoppers, judged on
errors, p99 latency and click-through rate (:mod:`storeflow.components.recommend.local_canary`), and the
champion alias stays or goes back; MLflow tags and ``serving/rollouts.jsonl`` record it with the champion it
replaced, so `storeflow rollback --set registry.model_name=<recommendations.model_name>` goes back too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from storeflow.components.config import Settings
from storeflow.components.deploy import deploy_stage, registry, rollout
from storeflow.components.deploy.inference_service import ModelVersionRef
from storeflow.components.deploy.kube import InferenceServices
from storeflow.components.deploy.prometheus import Prometheus
from storeflow.components.recommend.canary import Logs, RecommenderCanaryMetrics, feedback_logs


def recommender_settings(settings: Settings) -> Settings:
    """``settings`` with ``deploy`` and ``registry.model_name`` naming the recommender: its InferenceService,
    ServingRuntime and model format (``recommendations.*``), no Feast transformer, and its registered model,
    whose versions a rollout resolves, tags and makes champion. Steps, bounds and namespace stay ``deploy.*``'s."""
    cfg = settings.recommendations
    deploy = settings.deploy.model_copy(update={
        "inference_service": cfg.inference_service, "serving_runtime": cfg.serving_runtime,
        "model_format": cfg.model_format, "feast_transformer": False})
    return settings.model_copy(update={"deploy": deploy,
                                       "registry": settings.registry.model_copy(update={"model_name": cfg.model_name})})


def deploy_recommender(
    settings: Settings,
    registration: dict[str, Any],
    *,
    isvcs: InferenceServices | None = None,
    prometheus: Prometheus | None = None,
    logs: Logs | None = None,
    resolve: Callable[[Settings, str], ModelVersionRef] = registry.resolve_model_version,
    record: rollout.Record = registry.record_rollout,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Roll out the version ``registration`` (the register task's JSON) names when it became champion.

    Returns the outcome: skipped (not champion), created | unchanged | promoted | rolled-back (kserve) or
    promoted-locally (local), with each canary analysis and its reasons. The keyword arguments exist for
    tests; the pipeline passes none.
    """
    version = str(registration["version"])
    if not registration["promoted"]:
        return {"outcome": "skipped", "model_version": version,
                "reasons": [f"v{version} did not become champion: nothing to roll out"]}
    ours = recommender_settings(settings)
    run_id = registration.get("run_id") or ""
    if settings.deploy.target == "kserve":
        # the recommender's pods only: its version numbers and the propensity model's are each their own
        judged = RecommenderCanaryMetrics(prometheus or Prometheus(ours.deploy.prometheus_url),
                                          logs or feedback_logs(settings),
                                          matchers=f'pod=~"{ours.deploy.inference_service}-.*"')
        return deploy_stage(ours, version, run_id, isvcs=isvcs, prometheus=judged, resolve=resolve, record=record,
                            sleep=sleep)
    from storeflow.components.deploy.local import deploy_local
    from storeflow.components.recommend.local_canary import run_recommender_canary

    return deploy_local(ours, version, run_id, registration.get("previous_champion"), canary=run_recommender_canary)
