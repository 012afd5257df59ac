"""KFP component: fit the configured estimator and track it in MLflow."""

from storeflow.components.container import component


@component
def train(features: str, config_json: str = "{}", estimator: str = "", label_horizon_days: int = -1) -> str:
    """Fit the configured estimator on the training set and track the run in MLflow.

    Args:
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        features: FeatureResult JSON from the features task (training set path and hash).
        estimator: A scikit-learn classifier as module.Class with predict_proba (e.g.
            sklearn.ensemble.HistGradientBoostingClassifier); empty keeps the configured train.estimator.
        label_horizon_days: A customer is a repeat buyer when they order within this many days after a
            cutoff (the label), as the features task was given; -1 keeps the configured features.label.horizon_days.

    Returns:
        The TrainResult as JSON (MLflow run id and model URI).
    """
    from storeflow.components.config import load_run_settings
    from storeflow.components.features import FeatureResult
    from storeflow.components.train import train as run

    settings = load_run_settings(config_json, {"train.estimator": estimator,
                                              "features.label.horizon_days": label_horizon_days})
    result = run(settings, FeatureResult.from_json(features))
    print(f"MLflow run {result.run_id}: {result.metrics}")
    return result.to_json()
