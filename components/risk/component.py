"""KFP component: order risk rows from a snapshot, a model judged beside Shopify's risk level and the rules on a
time-split holdout, registered in MLflow under the propensity model's gate."""

from kfp import dsl

from storeflow.components.container import component


@component
def risk(snapshot: dsl.Input[dsl.Dataset], rows: dsl.Output[dsl.Dataset], model: dsl.Output[dsl.Model],
         metrics: dsl.Output[dsl.Metrics], model_curves: dsl.Output[dsl.ClassificationMetrics],
         shopify_curves: dsl.Output[dsl.ClassificationMetrics], report: dsl.Output[dsl.Markdown],
         config_json: str = "{}", export_path: str = "", holdout_days: int = -1, maturity_days: int = -1) -> str:
    """Score orders for fraud: order-time features, a model, and how it compares with Shopify's risk level.

    Args:
        snapshot: The validated snapshot Dataset (ingest's output, run after validate).
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        export_path: The bulk JSONL with the orders' risk fields (the OrderRisk query of
            components/risk/query.graphql, or a synthetic store with synthetic.fraud_rate), as the task sees
            it; empty reads the export the snapshot was ingested from (its manifest's inputs).
        holdout_days: The holdout: orders of this many days before the labels' maturity line; -1 keeps the
            configured risk.holdout_days.
        maturity_days: Days after an order by which its fraud label (a chargeback) is known; training orders
            end this long before the holdout, the holdout this long before the last order; -1 keeps the
            configured risk.maturity_days.
        rows: One row per order (Parquet): the features as of its creation, Shopify's risk level, the label.
        model: The fitted risk model as an MLflow model directory; metadata has its models:/ URI and version.
        metrics: PR-AUC, ROC-AUC and recall at 1 % false-positive rate of the model, Shopify's risk level and
            the rules on the same holdout.
        model_curves: The model's ROC curve and confusion matrix at 1 % false-positive rate.
        shopify_curves: Shopify's risk level's ROC curve and confusion matrix on the same rows.
        report: The comparison and the registry decision in words (Markdown).

    Returns:
        The RiskResult as JSON: run, model name and version, whether it became champion and why.
    """
    import json
    from pathlib import Path

    import mlflow

    from storeflow.components.artifacts import describe, publish
    from storeflow.components.config import load_run_settings
    from storeflow.components.risk.stage import risk_rows, train_and_register

    settings = load_run_settings(config_json, {"risk.holdout_days": holdout_days, "risk.maturity_days": maturity_days})
    frame = risk_rows(Path(snapshot.path), [Path(export_path)] if export_path else None)
    Path(rows.path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(rows.path, index=False)
    rows.metadata.update(rows=len(frame), fraud=int(frame["fraud"].sum()))
    result = train_and_register(settings, frame)
    for scorer, values in result.evaluation["metrics"].items():
        for name, value in values.items():
            metrics.log_metric(f"{scorer}.{name}", value)
    for scorer, artifact in (("model", model_curves), ("shopify", shopify_curves)):
        curves = result.evaluation["curves"][scorer]
        artifact.log_roc_curve(curves["fpr"], curves["tpr"], curves["thresholds"])
        artifact.log_confusion_matrix(curves["classes"], curves["confusion_matrix"])
    publish(Path(mlflow.artifacts.download_artifacts(result.model_uri)), model.path)
    describe(model.metadata, result.to_json(), model_uri=f"models:/{result.model_name}/{result.version}",
             version=result.version, champion=result.promoted)
    with open(report.path, "w") as out:
        out.write(result.evaluation["report"])
    print(result.evaluation["report"])
    return json.dumps({key: value for key, value in json.loads(result.to_json()).items() if key != "evaluation"})


@component
def risk_deploy(registration: str, config_json: str = "{}") -> str:
    """Roll a new order risk champion out: a canary judged on errors, latency and alert rate, or serve-risk's.

    deploy.target kserve: a canary on the risk InferenceService, rolled back when its errors, p99 latency or share
    of orders scored HIGH (against the champion's, risk.canary_alert_ratio) fail; local: the same canary on two
    `storeflow serve-risk`s given the store's newest orders, and `serve-risk` serves the champion alias from its
    next start.

    Args:
        registration: The risk task's RiskResult JSON (its registration); a version that did not become champion is not rolled out.
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.

    Returns:
        The rollout outcome as JSON.
    """
    import json

    from storeflow.components.config import load_settings
    from storeflow.components.risk.deploy import deploy_risk, deploy_risk_local

    settings = load_settings(config_json)
    registered = json.loads(registration)
    if not registered["promoted"]:
        print(f"risk v{registered['version']} did not become champion: nothing to roll out")
        return json.dumps({"outcome": "skipped", "model_version": registered["version"]})
    if settings.deploy.target == "kserve":
        outcome = deploy_risk(settings, registered["version"], registered.get("run_id", ""))
    else:
        outcome = deploy_risk_local(settings, registered["version"], registered.get("run_id", ""),
                                    registered.get("previous_champion"))
    for step in outcome.get("steps") or []:
        print(f"  canary {step['percent']}%: {step['action']}: {'; '.join(step['reasons'])}")
    print(f"deploy risk v{registered['version']}: {outcome.get('outcome')}: {'; '.join(outcome.get('reasons') or [])}")
    return json.dumps(outcome)
