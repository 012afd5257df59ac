"""KFP component: fit the item-item recommender on the snapshot's purchases; a Model artifact out."""

from kfp import dsl

from storeflow.components.container import component


@component
def train_recommender(snapshot: dsl.Input[dsl.Dataset], model: dsl.Output[dsl.Model], config_json: str = "{}",
                      neighbours: int = -1):
    """Fit the item-item recommender on every purchase in the snapshot (the model to serve).

    Args:
        snapshot: The validated snapshot Dataset (ingest's output, run after validate).
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        neighbours: Similar products kept per product; -1 keeps the configured recommendations.neighbours.
        model: The fitted ItemItem (products.npy, similarity.npz, popularity.npy); metadata has its product
            count and neighbours, which the evaluate and register tasks judge and log.
    """
    import json
    from pathlib import Path

    from storeflow.components.artifacts import describe
    from storeflow.components.config import load_run_settings
    from storeflow.components.recommend import fit_recommender
    from storeflow.components.tables import read_tables

    settings = load_run_settings(config_json, {"recommendations.neighbours": neighbours})
    cfg = settings.recommendations
    fitted = fit_recommender(read_tables(Path(snapshot.path)), cfg)
    fitted.save(model.path)
    trained = {"products": len(fitted.products), "neighbours": cfg.neighbours}
    describe(model.metadata, json.dumps(trained), **trained)
    print(f"item-item recommender: {trained['products']:,} products, {cfg.neighbours} neighbours each")
