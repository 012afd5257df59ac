"""The monitoring pipeline: prediction logs of one window → Evidently drift and decay report, Prometheus
gauges → the training pipeline when a level is critical (its evaluation gate and canary decide what ships).

Two tasks and no pipeline branch: ``retrain`` decides itself, so the once-per-window rule lives in one
place whichever runner (kfp.local or a cluster) executes the pipeline.
"""

from kfp import dsl

from storeflow.components.config import Settings
from storeflow.components.container import component
from storeflow.components.monitor.component import monitor
from storeflow.pipelines.training import DEFAULTS, feast_credentials, mlflow_credentials, on_cluster

PIPELINE_NAME = "storeflow-monitoring"
STAGES = ("monitor", "retrain")


@component
def retrain(config_json: str, summary: str) -> str:
    """Start the training pipeline when the summary is critical, once per model version and window.

    Args:
        config_json: storeflow settings as a JSON object (the storeflow config model); keys given here
            override the task's environment and config file, '{}' uses those alone.
        summary: Monitoring summary JSON from the monitor task.

    Returns:
        The RetrainDecision as JSON.
    """
    import json

    from storeflow.components.config import load_settings
    from storeflow.components.monitor import retrain_if_needed
    from storeflow.pipelines.retraining import LAUNCHERS

    decision = retrain_if_needed(load_settings(config_json), json.loads(summary), LAUNCHERS)
    print(f"retraining {'started' if decision.started else 'not started'}: {decision.reason}")
    return decision.to_json()


def build_monitoring_pipeline(settings: Settings = DEFAULTS):
    """The monitoring pipeline wired for the cluster ``settings`` describe (see ``training.on_cluster``)."""

    @dsl.pipeline(name=PIPELINE_NAME, description="Drift and decay of served predictions; retraining when critical.")
    def monitoring_pipeline(config_json: str = "{}", window_end: str = "", model_version: str = "") -> str:
        """Analyse one window of served predictions; start retraining when drift or decay is critical.

        Args:
            config_json: storeflow settings for this run as a JSON object (the storeflow config model);
                keys given here override the task's environment and config file. '{}' runs with those alone.
            window_end: End of the analysed window as an ISO 8601 timestamp; empty means now.
            model_version: The registered model version whose predictions are analysed; empty means the
                current champion.
        """
        checked = mlflow_credentials(on_cluster(
            monitor(config_json=config_json, window_end=window_end, model_version=model_version), "monitor",
            settings), settings)
        # retrain: local runs the training pipeline in this task, so it needs what training's tasks need.
        decided = feast_credentials(mlflow_credentials(on_cluster(
            retrain(config_json=config_json, summary=checked.outputs["Output"]), "retrain", settings), settings),
            settings)
        return decided.output

    return monitoring_pipeline


monitoring_pipeline = build_monitoring_pipeline()
