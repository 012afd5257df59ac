"""KFP component: ingest the configured Shopify source into an immutable snapshot (a Dataset artifact)."""

from kfp import dsl

from storeflow.components.container import component


@component
def ingest(snapshot: dsl.Output[dsl.Dataset], config_json: str = "{}", source: str = "", path: str = ""):
    """Ingest the configured source (Shopify Admin API, files or a synthetic store) into a snapshot.

    Args:
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        source: Where the orders come from: shopify (the Admin API's bulk export), jsonl (a bulk JSONL
            export), csv (Shopify's orders CSV export) or synthetic; empty keeps the configured ingest.source.
        path: The export file or directory for jsonl/csv, as the task sees it; empty keeps ingest.path.
        snapshot: The snapshot every later stage reads: a directory of Parquet tables (customers, orders,
            line items, products, refunds) and its manifest; metadata has the content hash and row counts.
    """
    import json
    from dataclasses import asdict

    from storeflow.components.artifacts import describe, publish
    from storeflow.components.config import load_run_settings
    from storeflow.components.ingest import ingest as run
    from storeflow.components.snapshot_index import local_only

    result = run(load_run_settings(config_json, {"ingest.source": source, "ingest.path": path}))
    publish(result.snapshot, snapshot.path, ignore=local_only)  # a reused snapshot may hold the applier's index
    describe(snapshot.metadata, json.dumps(asdict(result), default=str), content_hash=result.content_hash,
             source=result.source, rows=result.row_counts)
    print(f"snapshot {result.content_hash[:12]} ({'reused' if result.reused else 'new'}): {result.row_counts}")
