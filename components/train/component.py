"""KFP component: fit the configured estimator on the training set Dataset; a Model artifact out."""

from kfp import dsl

from storeflow.components.container import component


@component
def train(training_set: dsl.Input[dsl.Dataset], model: dsl.Output[dsl.Model], config_json: str = "{}",
          estimator: str = "", label_horizon_days: int = -1, baseline_model: dsl.Input[dsl.Model] = None):
    """Fit the configured estimator on the training set and track the run in MLflow.

    Args:
        training_set: The training set Dataset from the features task.
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        estimator: A scikit-learn classifier as module.Class with predict_proba (e.g.
            sklearn.ensemble.HistGradientBoostingClassifier); empty keeps the configured train.estimator.
        label_horizon_days: A customer is a repeat buyer when they order within this many days after a
            cutoff (the label), as the features task was given; -1 keeps the configured features.label.horizon_days.
        baseline_model: The features task's BG/NBD model, kept in the logged model (btyd/bgnbd.nc) for the
            webhook receiver; optional (without it, and not on the features task's volume, the version has none).
        model: The fitted, calibrated model as an MLflow model directory (loadable with mlflow.pyfunc);
            metadata has its MLflow model URI, run id and training metrics.
    """
    import dataclasses
    from pathlib import Path

    import mlflow

    from storeflow.components.artifacts import describe
    from storeflow.components.config import load_run_settings
    from storeflow.components.features import FeatureResult
    from storeflow.components.train import train as run

    settings = load_run_settings(config_json, {"train.estimator": estimator,
                                              "features.label.horizon_days": label_horizon_days})
    features = FeatureResult.from_artifact(training_set)
    if baseline_model is not None:
        features = dataclasses.replace(features, baseline_model=Path(baseline_model.path))
    result = run(settings, features)
    mlflow.artifacts.download_artifacts(artifact_uri=result.model_uri, dst_path=model.path)
    describe(model.metadata, result.to_json(), model_uri=result.model_uri, run_id=result.run_id,
             estimator=settings.train.estimator, dataset_hash=features.dataset_hash, **result.metrics)
    print(f"MLflow run {result.run_id}: {result.metrics}")
