"""KFP component: fit the item-item recommender and judge it against the baselines on a time-ordered holdout."""

from kfp import dsl

from storeflow.components.container import component


@component
def recommend(snapshot: dsl.Input[dsl.Dataset], model: dsl.Output[dsl.Model], metrics: dsl.Output[dsl.Metrics],
              report: dsl.Output[dsl.Markdown], config_json: str = "{}", k: int = -1,
              horizon_days: int = -1) -> bool:
    """Fit the item-item recommender on the snapshot's purchases; compare it with popularity and
    frequently-bought-together on what customers newly bought after a cutoff.

    Args:
        snapshot: The validated snapshot Dataset (ingest's output, run after validate).
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        k: Products recommended per customer, cart or product page (the metrics are at k); -1 keeps the
            configured recommendations.k.
        horizon_days: The holdout: what customers newly bought in this many days after the cutoff; -1 keeps
            the configured recommendations.horizon_days.
        model: The item-item model fitted on every purchase (products.npy, similarity.npz).
        metrics: recall, NDCG and MAP at k and catalog coverage of the model and each baseline.
        report: The comparison in words with the customer-grouped CI of the model minus the best baseline.

    Returns:
        Whether the model beats the best baseline with a CI above zero.
    """
    import json
    from pathlib import Path

    from storeflow.components.artifacts import describe
    from storeflow.components.config import load_run_settings
    from storeflow.components.recommend import evaluate_recommenders, fit_recommender
    from storeflow.components.recommend.evaluate import markdown
    from storeflow.components.tables import read_tables

    cfg = load_run_settings(config_json, {"recommendations.k": k,
                                          "recommendations.horizon_days": horizon_days}).recommendations
    tables = read_tables(Path(snapshot.path))
    judged = evaluate_recommenders(tables, cfg)
    for recommender, values in judged.metrics.items():
        for name, value in values.items():
            metrics.log_metric(f"{recommender}.{name}", value)
    fitted = fit_recommender(tables, cfg)
    fitted.save(model.path)
    describe(model.metadata, json.dumps(judged.to_dict()), products=len(fitted.products),
             beats_baselines=judged.beats_baselines, metric=judged.metric, difference=judged.difference)
    with open(report.path, "w") as out:
        out.write(markdown(judged, cfg.k))
    print(judged.summary())
    return judged.beats_baselines
