"""Drift figures as Prometheus gauges, for dashboards, alerts and the canary analysis.

Pushed to a Pushgateway when ``monitor.pushgateway`` is set (a batch job has no /metrics to scrape);
otherwise written as a node-exporter textfile beside the report. Names (a contract, like serving's):

* ``storeflow_drift_share{model_version}``: share of features Evidently finds drifted.
* ``storeflow_drift_score{model_version,feature,method}``: Evidently's drift score per feature (and ``score``).
* ``storeflow_feature_psi{model_version,feature}``: population stability index per feature (and ``score``).
* ``storeflow_monitor_level{model_version}``: 0 ok, 1 warning, 2 critical.
* ``storeflow_served_auc{model_version}`` / ``storeflow_served_calibration_error{model_version}``: decay, once labelled.
* ``storeflow_monitor_rows{model_version,kind}``: predictions in the window (``window``), analysed (``sampled``), ``labelled``.
* ``storeflow_monitor_last_run_timestamp_seconds{model_version}``.
* ``storeflow_recommendation_window_ctr{model_version}``: the recommender's click-through rate per version in
  the window (joined to logged answers; versions with impressions only).
* ``storeflow_recommendation_ctr_drop{model_version}`` / ``storeflow_recommendation_popularity_psi{model_version}``
  / ``storeflow_recommendation_monitor_level{model_version}``: the served recommender's CTR drop against the
  baseline hours, item-popularity PSI and level (0 ok, 1 warning, 2 critical), once analysed.
"""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

LEVEL_VALUE = {"ok": 0, "warning": 1, "critical": 2}


def build_registry(summary: dict) -> CollectorRegistry:
    """Gauges for one monitoring summary (see :func:`storeflow.components.monitor.monitor`)."""
    registry = CollectorRegistry()
    version = str(summary.get("model_version") or "none")
    share = Gauge("storeflow_drift_share", "Share of features drifted (Evidently).", ["model_version"],
                  registry=registry)
    score = Gauge("storeflow_drift_score", "Evidently drift score per feature.", ["model_version", "feature", "method"],
                  registry=registry)
    psi = Gauge("storeflow_feature_psi", "Population stability index per feature.", ["model_version", "feature"],
                registry=registry)
    level = Gauge("storeflow_monitor_level", "Monitoring level: 0 ok, 1 warning, 2 critical.", ["model_version"],
                  registry=registry)
    rows = Gauge("storeflow_monitor_rows", "Predictions in the monitored window.", ["model_version", "kind"],
                 registry=registry)
    last = Gauge("storeflow_monitor_last_run_timestamp_seconds", "When monitoring last ran.", ["model_version"],
                 registry=registry)
    level.labels(version).set(LEVEL_VALUE.get(summary.get("level", "ok"), 0))
    last.labels(version).set(time.time())
    for kind in ("window", "sampled", "labelled"):
        rows.labels(version, kind).set(summary.get("rows", {}).get(kind, 0))
    drift = summary.get("drift") or {}
    if drift:
        share.labels(version).set(drift["drifted_share"])
        for column in [*drift["columns"], *([drift["prediction"]] if drift.get("prediction") else [])]:
            if column["drift_score"] is not None:
                score.labels(version, column["column"], column["method"]).set(column["drift_score"])
            if column["psi"] is not None:
                psi.labels(version, column["column"]).set(column["psi"])
    decay = summary.get("decay") or {}
    if decay.get("roc_auc") is not None:
        Gauge("storeflow_served_auc", "ROC-AUC of served predictions once labelled.", ["model_version"],
              registry=registry).labels(version).set(decay["roc_auc"])
        Gauge("storeflow_served_calibration_error", "Expected calibration error of served predictions.",
              ["model_version"], registry=registry).labels(version).set(decay["calibration_error"])
    _recommendations(summary.get("recommendations") or {}, registry)
    return registry


def _recommendations(part: dict, registry: CollectorRegistry) -> None:
    ctr = Gauge("storeflow_recommendation_window_ctr", "Recommendation click-through rate in the monitored window.",
                ["model_version"], registry=registry)
    for row in part.get("ctr", []):
        if row["ctr"] is not None:
            ctr.labels(row["model_version"]).set(row["ctr"])
    if part.get("status") != "analysed":
        return
    version = str(part["model_version"])
    Gauge("storeflow_recommendation_monitor_level", "Recommender monitoring level: 0 ok, 1 warning, 2 critical.",
          ["model_version"], registry=registry).labels(version).set(LEVEL_VALUE.get(part["level"], 0))
    for name, key, text in (("ctr_drop", "ctr_drop", "CTR drop as a share of the baseline's CTR."),
                            ("popularity_psi", "popularity_psi", "PSI of the products asked about vs the baseline.")):
        if part.get(key) is not None:
            Gauge(f"storeflow_recommendation_{name}", text, ["model_version"], registry=registry).labels(
                version).set(part[key])


def publish(summary: dict, textfile: Path, pushgateway: str | None, job: str) -> str:
    """Push to the gateway, or write the textfile; returns where the metrics went."""
    registry = build_registry(summary)
    if pushgateway:
        push_to_gateway(pushgateway, job=job, registry=registry,
                        grouping_key={"model_version": str(summary.get("model_version") or "none")})
        return pushgateway
    textfile.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(textfile), registry)
    return str(textfile)
