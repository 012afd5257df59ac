"""KFP component: Feast features, the point-in-time training set, and online materialization."""

from storeflow.components.container import component


@component
def features(snapshot: str, config_json: str = "{}", label_horizon_days: int = -1) -> str:
    """Build Feast features and the point-in-time training set from a validated snapshot; materialize online.

    Args:
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        snapshot: Validated snapshot directory (validate's output).
        label_horizon_days: A customer is a repeat buyer when they order within this many days after a
            cutoff (the label); -1 keeps the configured features.label.horizon_days.

    Returns:
        The FeatureResult as JSON (training set path, dataset hash, feature references).
    """
    from storeflow.components.config import load_run_settings
    from storeflow.components.features import build_features

    result = build_features(load_run_settings(config_json, {"features.label.horizon_days": label_horizon_days}), snapshot)
    print(f"training set: {result.rows} rows, positive rate {result.positive_rate:.3f}, hash {result.dataset_hash[:12]}")
    return result.to_json()
