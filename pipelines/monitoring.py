"""The monitoring pipeline: prediction logs of one window → Evidently drift and decay report, Prometheus
gauges → the training pipeline when a level is critical (its evaluation gate and canary decide what ships).

Two tasks and no pipeline branch: ``retrain`` decides itself, so the once-per-window rule lives in one
place whichever runner (kfp.local or a cluster) executes the pipeline.
"""

from kfp import dsl

from storeflow.components.monitor.component import monitor, retrain
from storeflow.pipelines.training import feast_credentials, mlflow_credentials, on_cluster

PIPELINE_NAME = "storeflow-monitoring"
STAGES = ("monitor", "retrain")


@dsl.pipeline(name=PIPELINE_NAME, description="Drift and decay of served predictions; retraining when critical.")
def monitoring_pipeline(config_json: str = "{}", window_end: str = "", model_version: str = "") -> str:
    checked = mlflow_credentials(on_cluster(
        monitor(config_json=config_json, window_end=window_end, model_version=model_version), "monitor"))
    # retrain: local runs the training pipeline in this task, so it needs what training's tasks need.
    decided = feast_credentials(mlflow_credentials(on_cluster(
        retrain(config_json=config_json, summary=checked.outputs["Output"]), "retrain")))
    return decided.output
