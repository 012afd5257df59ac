"""KFP component: Feast features, the point-in-time training set, and online materialization."""

from storeflow.components.container import component


@component
def features(config_json: str, snapshot: str) -> str:
    """Build Feast features and the point-in-time training set from a validated snapshot; materialize online.

    Args:
        config_json: storeflow settings as a JSON object (the storeflow config model); keys given here
            override the task's environment and config file, '{}' uses those alone.
        snapshot: Validated snapshot directory (validate's output).

    Returns:
        The FeatureResult as JSON (training set path, dataset hash, feature references).
    """
    from storeflow.components.config import load_settings
    from storeflow.components.features import build_features

    result = build_features(load_settings(config_json), snapshot)
    print(f"training set: {result.rows} rows, positive rate {result.positive_rate:.3f}, hash {result.dataset_hash[:12]}")
    return result.to_json()
