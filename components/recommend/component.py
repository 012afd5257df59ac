"""KFP component: fit the item-item recommender and judge it against the baselines on a time-ordered holdout."""

from kfp import dsl

from storeflow.components.container import component


@component
def recommend(snapshot: dsl.Input[dsl.Dataset], model: dsl.Output[dsl.Model], metrics: dsl.Output[dsl.Metrics],
              report: dsl.Output[dsl.Markdown], config_json: str = "{}", k: int = -1,
              horizon_days: int = -1) -> str:
    """Fit the item-item recommender on the snapshot's purchases; compare it with popularity and
    frequently-bought-together on what customers newly bought after a cutoff; register it in MLflow.

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
        report: The comparison in words with the customer-grouped CI of the model minus the best baseline,
            and the live click-through rate of each served version (impressions and clicks joined to the
            recommendations they answer), when a recommender server has logged any.

    Returns:
        The registration as JSON: MLflow model name and version, whether it became champion (it must beat
        the best baseline with a CI above zero and not be worse than the champion's settings) and why.
    """
    import json
    from dataclasses import asdict
    from pathlib import Path

    from storeflow.components.artifacts import describe
    from storeflow.components.config import load_run_settings
    from storeflow.components.recommend import evaluate_recommenders, fit_recommender
    from storeflow.components.recommend.evaluate import markdown
    from storeflow.components.recommend.feedback import served_ctr
    from storeflow.components.recommend.feedback import markdown as ctr_markdown
    from storeflow.components.recommend.registry import register_recommender
    from storeflow.components.tables import read_tables

    settings = load_run_settings(config_json, {"recommendations.k": k, "recommendations.horizon_days": horizon_days})
    cfg = settings.recommendations
    tables = read_tables(Path(snapshot.path))
    judged = evaluate_recommenders(tables, cfg)
    for recommender, values in judged.metrics.items():
        for name, value in values.items():
            metrics.log_metric(f"{recommender}.{name}", value)
    fitted = fit_recommender(tables, cfg)
    fitted.save(model.path)
    describe(model.metadata, json.dumps(judged.to_dict()), products=len(fitted.products),
             beats_baselines=judged.beats_baselines, metric=judged.metric, difference=judged.difference)
    registered = register_recommender(settings, Path(model.path), judged, tables)
    model.metadata.update(model_uri=f"models:/{registered.model_name}/{registered.version}",
                          version=registered.version, champion=registered.promoted)
    live = served_ctr(settings)  # this machine's logs and those shipped to the object store
    for row in live.dropna(subset=["ctr"]).itertuples():
        metrics.log_metric(f"served_v{row.model_version}.ctr", float(row.ctr))
    with open(report.path, "w") as out:
        out.write(markdown(judged, cfg.k) + f"\nRegistered {registered.model_name} v{registered.version}: "
                  f"{'champion' if registered.promoted else 'challenger only'} ({registered.reason})\n")
        if not live.empty:
            out.write("\n## Served: click-through rate by model version\n\n" + ctr_markdown(live))
    print(judged.summary())
    return json.dumps({**asdict(registered), "beats_baselines": judged.beats_baselines})
