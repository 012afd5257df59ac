"""Rolling a new order risk champion out, as the propensity model's is (:mod:`storeflow.components.deploy`).

``deploy.target`` kserve: the risk InferenceService (``risk.inference_service``, kustomize's bootstrap object on
the first run) gets the new version as a canary at ``deploy.canary_steps`` and :func:`rollout.run` promotes or
rolls it back on each version's errors and p99 latency (Prometheus, narrowed to the risk pods by
``risk.canary_metrics_selector``: risk and propensity versions share numbers) and on its **alert rate**, the share
of the orders it scored HIGH, against the champion's in the same window (its prediction log,
:mod:`storeflow.components.risk.logs`; :func:`analysis.alert_shift`, bound ``risk.canary_alert_ratio``).

``deploy.target`` local: `storeflow serve-risk` serves the ``champion`` alias the risk stage set, from its next
start; the rollout is recorded (the version's tags, ``<state_dir>/risk/rollouts.jsonl``). No local canary yet.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from storeflow.components.config import Settings
from storeflow.components.deploy import registry, rollout
from storeflow.components.deploy.prometheus import Prometheus, VersionMetrics
from storeflow.components.recommend.canary import window_seconds
from storeflow.components.risk.logs import FOLDER, window_files

HIGH = "HIGH"
RUNTIME = "storeflow-order-risk"  # the ServingRuntime and model format of kustomize/base/risk-serving-runtime.yaml

# (start, end) -> {model_version: (orders scored, orders scored HIGH)} of the risk model's logged predictions
Counts = Callable[[datetime, datetime], dict[str, tuple[int, int]]]


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


def alert_counts(files: list[Path], start: datetime, end: datetime, model_name: str) -> dict[str, tuple[int, int]]:
    """Orders scored and scored HIGH per version of ``model_name`` in ``[start, end)`` of the risk log ``files``."""
    import duckdb

    if not files:
        return {}
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    paths = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
    rows = con.execute(f"""
        SELECT model_version, count(*), count(*) FILTER (WHERE level = '{HIGH}')
        FROM read_json([{paths}], format='newline_delimited', ignore_errors=true,
                       columns={{ts: 'VARCHAR', model_name: 'VARCHAR', model_version: 'VARCHAR', level: 'VARCHAR'}})
        WHERE model_name = $1 AND TRY_CAST(ts AS TIMESTAMPTZ) >= $2 AND TRY_CAST(ts AS TIMESTAMPTZ) < $3
        GROUP BY 1""", [model_name, start, end]).fetchall()
    return {str(version): (int(orders), int(alerts)) for version, orders, alerts in rows}


def logged_counts(settings: Settings) -> Counts:
    """The risk servers' prediction logs, this machine's and those shipped to ``serving.prediction_log_store``."""

    def count(start: datetime, end: datetime) -> dict[str, tuple[int, int]]:
        with tempfile.TemporaryDirectory(prefix="risk-logs-") as scratch:
            return alert_counts(window_files(settings, start, end, Path(scratch)), start, end,
                                settings.risk.model_name)

    return count


class RiskCanaryMetrics:
    """``version_metrics(settings, version)`` for :func:`rollout.run`: the version's request metrics from
    ``prometheus`` (risk pods only) with its orders and alerts of the analysis window added, and no score
    histogram (the risk server exports none; the alert rate is what a merchant notices)."""

    def __init__(self, prometheus, counts: Counts,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.prometheus, self.counts, self.clock = prometheus, counts, clock

    def version_metrics(self, settings: Settings, version: str) -> VersionMetrics:
        served = self.prometheus.version_metrics(settings, version, metrics_selector(settings))
        end = self.clock()
        orders, alerts = self.counts(end - timedelta(seconds=window_seconds(settings.deploy.analysis_window)),
                                     end).get(str(version), (0, 0))
        return dataclasses.replace(served, score_buckets=(), orders=float(orders), alerts=float(alerts))


def deploy_risk(settings: Settings, model_version: str, run_id: str, *, isvcs=None, prometheus: Prometheus | None = None,
                counts: Counts | None = None,
                resolve: Callable[[Settings, str], Any] = registry.resolve_model_version,
                record: rollout.Record = registry.record_rollout,
                sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> dict[str, Any]:
    """Roll ``model_version`` of ``risk.model_name`` out to the risk InferenceService (see the module docstring);
    returns the outcome (created | unchanged | promoted | rolled-back), each analysis and its reasons. The keyword
    arguments exist for tests; the pipeline passes none."""
    from storeflow.components.deploy.kube import connect

    ours = risk_deploy_settings(settings)
    metrics = RiskCanaryMetrics(prometheus or Prometheus(settings.deploy.prometheus_url),
                                counts or logged_counts(settings), clock)
    result = rollout.run(isvcs or connect(ours), metrics, ours, resolve(ours, str(model_version)), run_id, sleep,
                         record)
    return result.to_dict()


def rollout_record(settings: Settings) -> Path:
    return settings.project.state_dir / FOLDER / "rollouts.jsonl"


def deploy_risk_local(settings: Settings, model_version: str, run_id: str,
                      record: rollout.Record = registry.record_rollout) -> dict[str, Any]:
    """Target local: the champion alias (set by the risk stage) is what `storeflow serve-risk` serves from its
    next start; tag the version and append the rollout to :func:`rollout_record`."""
    version = str(model_version)
    recorded = record(risk_deploy_settings(settings), version,
                      {"storeflow.deploy.state": "promoted", "storeflow.deploy.target": "local"})
    entry = {"model_name": settings.risk.model_name, "outcome": "promoted-locally", "model_version": version,
             "run_id": run_id, "recorded_in_mlflow": recorded,
             "reasons": [f"storeflow serve-risk serves v{version} (the champion alias) from its next start"],
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = rollout_record(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(entry) + "\n")
    return entry
