"""KFP component: fit the configured estimator and track it in MLflow."""

from storeflow.components.container import component


@component
def train(config_json: str, features: str) -> str:
    """Returns the TrainResult as JSON (MLflow run id and model URI)."""
    from storeflow.components.config import load_settings
    from storeflow.components.features import FeatureResult
    from storeflow.components.train import train as run

    result = run(load_settings(config_json), FeatureResult.from_json(features))
    print(f"MLflow run {result.run_id}: {result.metrics}")
    return result.to_json()
