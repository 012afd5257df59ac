"""Rolling a new order risk champion out, as the propensity model's is (:mod:`storeflow.components.deploy`).

``deploy.target`` kserve: the risk InferenceService (``risk.inference_service``, kustomize's bootstrap object on
the first run) gets the new version as a canary at ``deploy.canary_steps`` and :func:`rollout.run` promotes or
rolls it back on each version's errors and p99 latency and on its **alert rate**, the share of the orders it
scored HIGH, against the champion's in the same window (:func:`analysis.alert_shift`, bound
``risk.canary_alert_ratio``), all from Prometheus: the risk server's request metrics and its
``storeflow_risk_assessments_total{model_version,level}`` (:func:`alert_queries`), narrowed to the risk pods by
``risk.canary_metrics_selector`` (risk and propensity versions share numbers).

``deploy.target`` local: `storeflow serve-risk` serves the ``champion`` alias the risk stage set, from its next
start, once a canary on two `storeflow serve-risk`s (:mod:`storeflow.components.risk.local_canary`) judged it on
the same bounds; the rollout is recorded (the version's tags, the local record ``<state_dir>/serving/rollouts.jsonl``
every model shares, with the champion it replaced).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from storeflow.components.config import Settings
from storeflow.components.deploy import registry, rollout
from storeflow.components.deploy.prometheus import Prometheus, VersionMetrics, _label
from storeflow.components.risk.protocol import ALERT_LEVEL, ASSESSMENTS_METRIC

RUNTIME = "storeflow-order-risk"  # the ServingRuntime and model format of kustomize/base/risk-serving-runtime.yaml

def risk_deploy_settings(settings: Settings) -> Settings:
    """``settings`` as the generic rollout reads them, pointed at the risk model: its registered name, its
    InferenceService, runtime and replicas, and no Feast transformer (the receiver sends the features)."""
    risk = settings.risk
    deploy = settings.deploy.model_copy(update={
        "inference_service": risk.inference_service, "serving_runtime": RUNTIME, "model_format": RUNTIME,
        "min_replicas": risk.min_replicas, "max_replicas": risk.max_replicas, "feast_transformer": False})
    return settings.model_copy(update={"deploy": deploy,
                                       "registry": settings.registry.model_copy(update={"model_name": risk.model_name})})


def metrics_selector(settings: Settings) -> str:
    return settings.risk.canary_metrics_selector or f'pod=~"{settings.risk.inference_service}-.*"'


def alert_queries(settings: Settings, version: str, matchers: str = "") -> dict[str, str]:
    """The PromQL of ``version``'s orders assessed and assessed HIGH in ``deploy.analysis_window``: increases of the
    risk server's ``storeflow_risk_assessments_total{model_version, level}`` (:mod:`storeflow.serving.risk`),
    narrowed by ``matchers`` as the request metrics are."""
    window = settings.deploy.analysis_window
    selector = f"model_version={_label(version)}" + (f",{matchers}" if matchers else "")
    series = f"{ASSESSMENTS_METRIC}_total"
    return {"orders": f"sum(increase({series}{{{selector}}}[{window}]))",
            "alerts": f"sum(increase({series}{{{selector},level={_label(ALERT_LEVEL)}}}[{window}]))"}


class RiskCanaryMetrics:
    """``version_metrics(settings, version)`` for :func:`rollout.run`: the version's request metrics and its
    orders and alerts in the analysis window, all from ``prometheus`` (the risk pods' series only), and no score
    histogram (the risk server exports none; the alert rate is what a merchant notices)."""

    def __init__(self, prometheus: Prometheus):
        self.prometheus = prometheus

    def version_metrics(self, settings: Settings, version: str) -> VersionMetrics:
        matchers = metrics_selector(settings)
        served = self.prometheus.version_metrics(settings, version, matchers)
        asked = alert_queries(settings, str(version), matchers)
        orders, alerts = (self.prometheus.single(asked[key]) or 0.0 for key in ("orders", "alerts"))
        return dataclasses.replace(served, score_buckets=(), orders=orders, alerts=alerts)


def deploy_risk(settings: Settings, model_version: str, run_id: str, *, isvcs=None, prometheus: Prometheus | None = None,
                resolve: Callable[[Settings, str], Any] = registry.resolve_model_version,
                record: rollout.Record = registry.record_rollout,
                sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Roll ``model_version`` of ``risk.model_name`` out to the risk InferenceService (see the module docstring);
    returns the outcome (created | unchanged | promoted | rolled-back), each analysis and its reasons. The keyword
    arguments exist for tests; the pipeline passes none."""
    from storeflow.components.deploy.kube import connect

    ours = risk_deploy_settings(settings)
    metrics = RiskCanaryMetrics(prometheus or Prometheus(settings.deploy.prometheus_url))
    result = rollout.run(isvcs or connect(ours), metrics, ours, resolve(ours, str(model_version)), run_id, sleep,
                         record)
    return result.to_dict()


def deploy_risk_local(settings: Settings, model_version: str, run_id: str,
                      previous_champion: str | None = None) -> dict[str, Any]:
    """Target local: a new champion that replaced one is canaried against it on two `storeflow serve-risk`s
    (:func:`storeflow.components.risk.local_canary.run_local_risk_canary`: errors, p99 latency and alert rate);
    promoted, the champion alias the risk stage set stays (`serve-risk` serves it from its next start); rolled back,
    the alias returns to ``previous_champion``. The first champion is recorded without a canary. Either way the
    version is tagged and the rollout appended, with the champion it replaced, to the local record every model
    shares (:func:`storeflow.components.deploy.local.rollout_record`), where `storeflow status|rollback --model
    risk` read it."""
    from storeflow.components.deploy.local import deploy_local, record_local_rollout
    from storeflow.components.risk.local_canary import run_local_risk_canary

    ours, version = risk_deploy_settings(settings), str(model_version)
    if not previous_champion or str(previous_champion) == version:
        entry = record_local_rollout(ours, version, run_id, previous_champion)
        return entry | {"reasons": [f"storeflow serve-risk serves v{version} (the champion alias) from its next start"]}
    return deploy_local(ours, version, run_id, str(previous_champion), canary=run_local_risk_canary)
