"""The monitoring pipeline: prediction logs of one window → Evidently drift and decay report, Prometheus
gauges → the training pipeline when a level is critical (its evaluation gate and canary decide what ships);
the recommender's CTR and item popularity in the same window → the recommendations pipeline when critical.

ingest → validate → monitor → retrain, and no pipeline branch: ``retrain`` decides itself, so the
once-per-window rule lives in one place whichever runner (kfp.local or a cluster) executes the pipeline.
The ingested snapshot is decay's labels (the orders placed after the predictions), handed to ``monitor``
as a Dataset: no task reads a snapshot another run left on a volume.
"""

from kfp import dsl

from storeflow.components.config import Settings
from storeflow.components.container import component
from storeflow.components.monitor.component import monitor
from storeflow.pipelines.training import (DEFAULTS, feast_credentials, ingested_and_validated, mlflow_credentials,
                                         object_store_credentials, on_cluster)

PIPELINE_NAME = "storeflow-monitoring"
STAGES = ("ingest", "validate", "monitor", "retrain")


@component
def retrain(summary: str, config_json: str = "{}", window_hours: float = -1.0) -> str:
    """Start the training (or recommendations) pipeline when the summary is critical, once per version and window.

    The recommendations pipeline starts when the summary's recommendations part is critical (a CTR drop or
    item-popularity drift), on its own once-per-window rule.

    Args:
        summary: Monitoring summary JSON from the monitor task.
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        window_hours: The monitoring window, which is also the retraining cooldown; -1 keeps the configured
            monitor.window_hours.

    Returns:
        The training RetrainDecision as JSON, with the recommender's under "recommendations" and order risk's
        under "risk" (the risk pipeline starts when the summary's risk part is critical).
    """
    import json

    from storeflow.components.config import load_run_settings
    from storeflow.components.monitor import retrain_if_needed, retrain_recommender_if_needed
    from storeflow.components.monitor.retrain import retrain_risk_if_needed
    from storeflow.pipelines.retraining import LAUNCHERS, RECOMMENDER_LAUNCHERS, RISK_LAUNCHERS

    settings = load_run_settings(config_json, {"monitor.window_hours": window_hours})
    decision = retrain_if_needed(settings, json.loads(summary), LAUNCHERS)
    print(f"retraining {'started' if decision.started else 'not started'}: {decision.reason}")
    recommender = retrain_recommender_if_needed(settings, json.loads(summary), RECOMMENDER_LAUNCHERS)
    print(f"recommender retraining {'started' if recommender.started else 'not started'}: {recommender.reason}")
    risk = retrain_risk_if_needed(settings, json.loads(summary), RISK_LAUNCHERS)
    print(f"order risk retraining {'started' if risk.started else 'not started'}: {risk.reason}")
    return json.dumps({**json.loads(decision.to_json()), "recommendations": json.loads(recommender.to_json()),
                       "risk": json.loads(risk.to_json())})


def build_monitoring_pipeline(settings: Settings = DEFAULTS):
    """The monitoring pipeline wired for the cluster ``settings`` describe (see ``training.on_cluster``)."""

    @dsl.pipeline(name=PIPELINE_NAME, description="Drift and decay of served predictions; retraining when critical.")
    def monitoring_pipeline(window_end: str = "", model_version: str = "", window_hours: float = -1.0,
                            ingest_source: str = "", ingest_path: str = "", config_json: str = "{}") -> str:
        """Analyse one window of served predictions; start retraining when drift or decay is critical.

        The store's orders are ingested (and validated) first: decay needs the orders placed after the
        predictions, and they reach the monitor task as a Dataset, not from a volume a training run left.

        Args:
            window_end: End of the analysed window as an ISO 8601 timestamp; empty means now.
            model_version: The registered model version whose predictions are analysed; empty means the
                current champion.
            window_hours: Trailing window of prediction logs analysed, also the retraining cooldown; -1 keeps
                the cluster's configured monitor.window_hours.
            ingest_source: Where the newest orders come from (decay labels): shopify, jsonl, csv or synthetic;
                empty keeps the configured ingest.source.
            ingest_path: The export file or directory for jsonl/csv, as the tasks see it; empty keeps the configured one.
            config_json: Advanced: any storeflow settings as a JSON object (the storeflow config model), over
                the storeflow-config ConfigMap each task mounts; the inputs above win over it.
        """
        ingested, validated = ingested_and_validated(config_json, ingest_source, ingest_path, settings)
        # monitor reads the prediction log serving shipped to the object store: the bucket's login.
        checked = object_store_credentials(mlflow_credentials(on_cluster(
            monitor(config_json=config_json, window_end=window_end, model_version=model_version,
                    window_hours=window_hours, snapshot=ingested.outputs["snapshot"]), "monitor", settings),
            settings), settings)
        checked.after(validated)  # labels only from a snapshot validate passed
        # retrain: local runs the training pipeline in this task, so it needs what training's tasks need.
        decided = feast_credentials(mlflow_credentials(on_cluster(
            retrain(config_json=config_json, summary=checked.outputs["Output"], window_hours=window_hours),
            "retrain", settings), settings), settings)
        return decided.output

    return monitoring_pipeline


monitoring_pipeline = build_monitoring_pipeline()
