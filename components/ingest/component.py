"""KFP component: ingest the configured Shopify source into an immutable snapshot."""

from storeflow.components.container import component


@component
def ingest(config_json: str) -> str:
    """Ingest the configured source (Shopify Admin API, files or a synthetic store) into a snapshot.

    Args:
        config_json: storeflow settings as a JSON object (the storeflow config model); keys given here
            override the task's environment and config file, '{}' uses those alone.

    Returns:
        The snapshot directory every later stage reads.
    """
    from storeflow.components.config import load_settings
    from storeflow.components.ingest import ingest as run

    result = run(load_settings(config_json))
    print(f"snapshot {result.snapshot} ({'reused' if result.reused else 'new'}): {result.row_counts}")
    return str(result.snapshot)
