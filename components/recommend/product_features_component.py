"""KFP component: the products' category and price band as Feast features (view product_catalog), written,
materialized online and read back through Feast's point-in-time join; a Dataset out."""

from kfp import dsl

from storeflow.components.container import component


@component
def product_features(snapshot: dsl.Input[dsl.Dataset], product_features: dsl.Output[dsl.Dataset],
                     config_json: str = "{}", horizon_days: int = -1):
    """Each product's category and price band as Feast features (view product_catalog), materialized online.

    Computed at the evaluation's cutoff and at serving time, registered in Feast, the newest materialized to
    the online store (what the recommender server reads for a product its model never saw), and the rows
    Feast's point-in-time join returns handed on.

    Args:
        snapshot: The validated snapshot Dataset (ingest's output, run after validate).
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        horizon_days: The evaluation's holdout (its cutoff is this many days before the last purchase): the
            features are also taken as of that cutoff; -1 keeps the configured recommendations.horizon_days.
        product_features: Parquet: one row per product and time (the cutoff, serving time) with category,
            median price paid before that time and its band within the category (0 budget, 1 mid, 2 premium,
            -1 never sold); metadata has the Feast feature references, both times and the row count.
    """
    import json
    from pathlib import Path

    from storeflow.components.artifacts import describe
    from storeflow.components.config import load_run_settings
    from storeflow.components.features.compute import serving_time
    from storeflow.components.recommend import purchases
    from storeflow.components.recommend.catalog import FEATURES, VIEW, product_catalog, publish
    from storeflow.components.recommend.purchases import evaluation_cutoff
    from storeflow.components.tables import read_tables

    settings = load_run_settings(config_json, {"recommendations.horizon_days": horizon_days})
    tables = read_tables(Path(snapshot.path))
    events = purchases(tables)
    cutoff = evaluation_cutoff(events, settings.recommendations.horizon_days)
    served_at = serving_time(tables["orders"])  # as the features stage materializes customers
    _, rows = publish(settings, product_catalog(tables, [cutoff, served_at]))
    Path(product_features.path).parent.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(product_features.path, index=False)
    result = {"feature_refs": [f"{VIEW}:{name}" for name in FEATURES], "cutoff": cutoff.isoformat(),
              "served_as_of": served_at.isoformat(), "rows": len(rows),
              "categories": int(rows["category"].replace("", None).nunique())}
    describe(product_features.metadata, json.dumps(result), **result)
    print(f"product features: {result['rows']:,} rows ({result['categories']} categories) as of {cutoff:%Y-%m-%d} "
          f"and {served_at:%Y-%m-%d %H:%M}, materialized online")
