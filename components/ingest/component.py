"""KFP component: ingest the configured Shopify source into an immutable snapshot."""

from storeflow.components.container import component


@component
def ingest(config_json: str = "{}", source: str = "", path: str = "") -> str:
    """Ingest the configured source (Shopify Admin API, files or a synthetic store) into a snapshot.

    Args:
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        source: Where the orders come from: shopify (the Admin API's bulk export), jsonl (a bulk JSONL
            export), csv (Shopify's orders CSV export) or synthetic; empty keeps the configured ingest.source.
        path: The export file or directory for jsonl/csv, as the task sees it; empty keeps ingest.path.

    Returns:
        The snapshot directory every later stage reads.
    """
    from storeflow.components.config import load_run_settings
    from storeflow.components.ingest import ingest as run

    result = run(load_run_settings(config_json, {"ingest.source": source, "ingest.path": path}))
    print(f"snapshot {result.snapshot} ({'reused' if result.reused else 'new'}): {result.row_counts}")
    return str(result.snapshot)
