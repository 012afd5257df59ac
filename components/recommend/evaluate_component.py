"""KFP component: the item-item recommender against popularity and frequently-bought-together on a
time-ordered holdout, with a customer-grouped CI; served click-through rate per version beside it."""

from typing import Optional

from kfp import dsl

from storeflow.components.container import component


@component
def evaluate_recommender(snapshot: dsl.Input[dsl.Dataset], model: dsl.Input[dsl.Model],
                         metrics: dsl.Output[dsl.Metrics], report: dsl.Output[dsl.Markdown],
                         product_features: Optional[dsl.Input[dsl.Dataset]] = None, config_json: str = "{}",
                         k: int = -1, horizon_days: int = -1) -> str:
    """Judge the trained recommender's configuration, refit on purchases before a cutoff, against the baselines
    on what customers newly bought after it.

    And decide, as the propensity model's evaluate does, whether it should become champion: it must beat the
    best baseline (CI above zero) and not be worse than the current champion's settings refit on the same
    split (MLflow's champion alias); register acts on the decision.

    Args:
        snapshot: The validated snapshot Dataset (ingest's output, run after validate).
        model: The train task's Model; its neighbours (metadata) are the configuration judged.
        product_features: The product_features task's Dataset (Feast's product_catalog rows): the rows as of
            the cutoff (what was known then) give the model its category and price-band fallback and the
            cold-start comparison with popularity. Left out, neither is judged.
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        k: Products recommended per customer, cart or product page (the metrics are at k); -1 keeps the
            configured recommendations.k.
        horizon_days: The holdout: what customers newly bought in this many days after the cutoff; -1 keeps
            the configured recommendations.horizon_days.
        metrics: recall, NDCG and MAP at k and catalog coverage of the model and each baseline, the cold-start
            metric of the category fallback and of popularity, and the live click-through rate of each served
            version when a recommender server has logged any.
        report: The comparison in words with the customer-grouped CI of the model minus the best baseline,
            the decision, and the served click-through rate by model version (impressions and clicks joined to the
            recommendations they answer).

    Returns:
        The evaluation (RecommenderReport) as JSON: every recommender's metrics, the best baseline, the
        model's difference from it with its CI, whether the model beats the baselines, k and horizon_days as
        judged, and the decision (promote, reason, the champion judged against) the register task acts on.
    """
    import json
    from dataclasses import asdict
    from pathlib import Path

    import pandas as pd

    from storeflow.components.artifacts import result_of
    from storeflow.components.config import load_run_settings
    from storeflow.components.recommend import evaluate_recommenders, purchases
    from storeflow.components.recommend.catalog import as_of
    from storeflow.components.recommend.evaluate import markdown
    from storeflow.components.recommend.feedback import markdown as ctr_markdown
    from storeflow.components.recommend.feedback import served_ctr
    from storeflow.components.recommend.purchases import evaluation_cutoff
    from storeflow.components.recommend.registry import judge
    from storeflow.components.tables import read_tables

    trained = result_of(model.metadata, "model")
    settings = load_run_settings(config_json, {"recommendations.k": k, "recommendations.horizon_days": horizon_days,
                                              "recommendations.neighbours": int(trained["neighbours"])})
    cfg = settings.recommendations
    tables = read_tables(Path(snapshot.path))
    catalog = None
    if product_features is not None:  # what Feast knew at the cutoff: no later price moves a band
        catalog = as_of(pd.read_parquet(product_features.path), evaluation_cutoff(purchases(tables), cfg.horizon_days))
    judged = evaluate_recommenders(tables, cfg, catalog)
    decision = judge(settings, judged, tables)
    for recommender, values in judged.metrics.items():
        for name, value in values.items():
            metrics.log_metric(f"{recommender}.{name}", value)
    for name, value in (judged.cold_start or {}).items():
        metrics.log_metric(f"cold_start.{name}", value)
    live = served_ctr(settings)  # this machine's logs and those shipped to the object store
    for row in live.dropna(subset=["ctr"]).itertuples():
        metrics.log_metric(f"served_v{row.model_version}.ctr", float(row.ctr))
    with open(report.path, "w") as out:
        out.write(markdown(judged, cfg.k))
        out.write(f"\n**{'Promote' if decision.promote else 'Keep the champion'}**: {decision.reason}\n")
        if not live.empty:
            out.write("\n## Served: click-through rate by model version\n\n" + ctr_markdown(live))
    print(judged.summary())
    print(judged.cold_start_summary())
    print(f"decision: {'promote' if decision.promote else 'keep the champion'} ({decision.reason})")
    return json.dumps({**judged.to_dict(), "k": cfg.k, "horizon_days": cfg.horizon_days, "decision": asdict(decision)})
