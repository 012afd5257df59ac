"""KFP component: fit the item-item recommender on the snapshot's purchases; a Model artifact out."""

from typing import Optional

from kfp import dsl

from storeflow.components.container import component


@component
def train_recommender(snapshot: dsl.Input[dsl.Dataset], model: dsl.Output[dsl.Model],
                      product_features: Optional[dsl.Input[dsl.Dataset]] = None, config_json: str = "{}",
                      neighbours: int = -1):
    """Fit the item-item recommender on every purchase in the snapshot, with Feast's product categories.

    The model to serve: similarities from every purchase, and each product's category and price band (the
    product_features task's Feast rows) for the fallback where similarities run out.

    Args:
        snapshot: The validated snapshot Dataset (ingest's output, run after validate).
        product_features: The product_features task's Dataset (Feast's product_catalog rows); its serving-time
            rows give the model each product's category and price band. Left out, the model has no category
            fallback (a basket of products it never saw gets no recommendations).
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        neighbours: Similar products kept per product; -1 keeps the configured recommendations.neighbours.
        model: The fitted ItemItem (products.npy, similarity.npz, popularity.npy; category.npy, price_band.npy
            and categories.npy with product features); metadata has its kind (recommendations: what the shared
            register task registers it as), product count, neighbours, which the evaluate and register tasks
            judge and log, and the categories it knows.
    """
    import json
    from pathlib import Path

    import pandas as pd

    from storeflow.components.artifacts import describe
    from storeflow.components.config import load_run_settings
    from storeflow.components.recommend import fit_recommender
    from storeflow.components.recommend.catalog import as_of
    from storeflow.components.tables import read_tables

    settings = load_run_settings(config_json, {"recommendations.neighbours": neighbours})
    cfg = settings.recommendations
    catalog = as_of(pd.read_parquet(product_features.path)) if product_features is not None else None
    fitted = fit_recommender(read_tables(Path(snapshot.path)), cfg, catalog)
    fitted.save(model.path)
    categories = 0 if fitted.categories is None else len(fitted.categories)
    # kind: which model family the shared register and deploy tasks are given (the propensity Model has none)
    trained = {"kind": "recommendations", "products": len(fitted.products), "neighbours": cfg.neighbours,
               "categories": categories}
    describe(model.metadata, json.dumps(trained), **trained)
    print(f"item-item recommender: {trained['products']:,} products, {cfg.neighbours} neighbours each, "
          f"{categories} categories for the fallback")
