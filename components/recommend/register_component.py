"""KFP component: register the recommender as a new MLflow version; champion only on a win."""

from kfp import dsl

from storeflow.components.container import component


@component
def register_recommender(snapshot: dsl.Input[dsl.Dataset], model: dsl.Input[dsl.Model], evaluation: str,
                         registered_model: dsl.Output[dsl.Model], report: dsl.Output[dsl.Markdown],
                         config_json: str = "{}", k: int = -1, horizon_days: int = -1) -> str:
    """Register the trained recommender as a new version (alias challenger); make it champion only when it
    beats the best baseline (CI above zero) and is not worse than the champion's settings refit on the same split.

    Args:
        snapshot: The validated snapshot Dataset: the champion's settings are refit on its purchases.
        model: The train task's Model (the fitted ItemItem and its neighbours).
        evaluation: The evaluate task's RecommenderReport JSON (the comparison with the baselines).
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        k: Products recommended per customer, cart or product page, as the evaluate task was given; -1 keeps
            the configured recommendations.k.
        horizon_days: The holdout, as the evaluate task was given; -1 keeps the configured
            recommendations.horizon_days.
        registered_model: The same model as the registered version: metadata has its models:/ URI, version
            and whether it became champion.
        report: The registration in words: version, champion or challenger only, and why.

    Returns:
        The registration as JSON: MLflow model name and version, whether it became champion and why, its run
        id, the champion it was judged against, and whether it beats the baselines.
    """
    import json
    from dataclasses import asdict
    from pathlib import Path

    from storeflow.components.artifacts import describe, publish, result_of
    from storeflow.components.config import load_run_settings
    from storeflow.components.recommend import RecommenderReport
    from storeflow.components.recommend.registry import register_recommender as run
    from storeflow.components.tables import read_tables

    trained = result_of(model.metadata, "model")
    settings = load_run_settings(config_json, {"recommendations.k": k, "recommendations.horizon_days": horizon_days,
                                              "recommendations.neighbours": int(trained["neighbours"])})
    judged = RecommenderReport.from_dict(json.loads(evaluation))
    registered = run(settings, Path(model.path), judged, read_tables(Path(snapshot.path)))
    publish(Path(model.path), registered_model.path)
    result = json.dumps({**asdict(registered), "beats_baselines": judged.beats_baselines})
    describe(registered_model.metadata, result, model_uri=f"models:/{registered.model_name}/{registered.version}",
             version=registered.version, champion=registered.promoted, run_id=registered.run_id)
    line = (f"Registered {registered.model_name} v{registered.version}: "
            f"{'champion' if registered.promoted else 'challenger only'} ({registered.reason})")
    with open(report.path, "w") as out:
        out.write(f"## {registered.model_name} v{registered.version}\n\n{line}\n")
    print(line)
    return result
