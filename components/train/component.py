"""KFP component: fit the configured estimator and track it in MLflow."""

from storeflow.components.container import component


@component
def train(config_json: str, features: str) -> str:
    """Fit the configured estimator on the training set and track the run in MLflow.

    Args:
        config_json: storeflow settings as a JSON object (the storeflow config model); keys given here
            override the task's environment and config file, '{}' uses those alone.
        features: FeatureResult JSON from the features task (training set path and hash).

    Returns:
        The TrainResult as JSON (MLflow run id and model URI).
    """
    from storeflow.components.config import load_settings
    from storeflow.components.features import FeatureResult
    from storeflow.components.train import train as run

    result = run(load_settings(config_json), FeatureResult.from_json(features))
    print(f"MLflow run {result.run_id}: {result.metrics}")
    return result.to_json()
