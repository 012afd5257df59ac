"""KFP component: analyse one window of prediction logs.

The monitoring pipeline's next task, ``retrain`` (start training when the window is critical), starts
a pipeline, so it is the pipelines': :func:`storeflow.pipelines.monitoring.retrain`.
"""

from kfp import dsl

from storeflow.components.container import component


@component
def monitor(report: dsl.Output[dsl.HTML], metrics: dsl.Output[dsl.Metrics], config_json: str = "{}",
            window_end: str = "", model_version: str = "", window_hours: float = -1.0,
            snapshot: dsl.Input[dsl.Dataset] = None) -> str:
    """Analyse one window of prediction logs for drift (Evidently, PSI) and decay.

    Args:
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        window_end: End of the analysed window as an ISO 8601 timestamp; empty means now.
        model_version: The registered model version whose predictions are analysed; empty means the
            version the logs are read for by default (the champion).
        window_hours: Trailing window of prediction logs analysed (also the retraining cooldown); -1 keeps
            the configured monitor.window_hours.
        snapshot: A snapshot of the store holding the orders placed after the window (ingest's output): the
            decay labels. Optional: without it, the newest snapshot in the task's state directory, if any.
        report: The Evidently drift report (HTML).
        metrics: Drift and decay figures of the window.

    Returns:
        The monitoring summary as JSON.
    """
    import json
    import shutil
    from datetime import datetime
    from pathlib import Path

    from storeflow.components.config import load_run_settings
    from storeflow.components.monitor import monitor as run

    end = datetime.fromisoformat(window_end) if window_end else None
    settings = load_run_settings(config_json, {"monitor.window_hours": window_hours})
    result = run(settings, model_version=model_version or None, end=end,
                 snapshot=Path(snapshot.path) if snapshot is not None else None)
    shutil.copyfile(result.report_html, report.path)
    summary = result.summary
    metrics.log_metric("level", {"ok": 0, "warning": 1, "critical": 2}[summary["level"]])
    metrics.log_metric("rows", summary["rows"]["window"])
    if summary["drift"]:
        metrics.log_metric("drift_share", summary["drift"]["drifted_share"])
        for column in [*summary["drift"]["columns"], summary["drift"]["prediction"]]:
            if column and column["psi"] is not None:
                metrics.log_metric(f"psi.{column['column']}", column["psi"])
    if summary["decay"].get("roc_auc") is not None:
        metrics.log_metric("served_roc_auc", summary["decay"]["roc_auc"])
        metrics.log_metric("served_calibration_error", summary["decay"]["calibration_error"])
    for row in (summary.get("recommendations") or {}).get("ctr", []):
        if row["ctr"] is not None:  # the recommender's click-through rate per version in the window
            metrics.log_metric(f"recommendations.v{row['model_version']}.ctr", row["ctr"])
    print(f"monitoring v{summary['model_version']}: {summary['status']} / {summary['level']}: "
          f"{'; '.join(summary['reasons'] + summary['notes']) or 'no drift'}; report {result.report_html}")
    return json.dumps(summary)
