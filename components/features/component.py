"""KFP component: Feast features, the point-in-time training set (a Dataset artifact), and online
materialization."""

from kfp import dsl

from storeflow.components.container import component


@component
def features(snapshot: dsl.Input[dsl.Dataset], training_set: dsl.Output[dsl.Dataset],
             baseline_model: dsl.Output[dsl.Model], config_json: str = "{}", label_horizon_days: int = -1):
    """Build Feast features and the point-in-time training set from a validated snapshot; materialize online.

    Args:
        snapshot: The validated snapshot Dataset (ingest's output, run after validate).
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        label_horizon_days: A customer is a repeat buyer when they order within this many days after a
            cutoff (the label); -1 keeps the configured features.label.horizon_days.
        training_set: The point-in-time training set (Parquet: one row per customer and cutoff, the Feast
            features, the label, the baselines' scores on holdout rows); metadata has its content hash,
            rows, positive rate and Feast feature references.
        baseline_model: The BG/NBD model the BTYD features were scored with (pymc-marketing's netCDF),
            fitted on the history before the holdout; give it to train, which keeps it in the MLflow model so
            the webhook receiver scores live customers with the champion's. Metadata has its parameters.
    """
    from storeflow.components.artifacts import describe, publish
    from storeflow.components.config import load_run_settings
    from storeflow.components.features import build_features

    result = build_features(load_run_settings(config_json, {"features.label.horizon_days": label_horizon_days}),
                            snapshot.path)
    publish(result.training_set, training_set.path)
    publish(result.baseline_model, baseline_model.path)
    baseline_model.metadata.update({k: v for k, v in result.baseline_parameters.items() if k.startswith("bgnbd.")})
    describe(training_set.metadata, result.to_json(), dataset_hash=result.dataset_hash, rows=result.rows,
             positive_rate=result.positive_rate, feature_refs=result.feature_refs)
    print(f"training set: {result.rows} rows, positive rate {result.positive_rate:.3f}, hash {result.dataset_hash[:12]}")
