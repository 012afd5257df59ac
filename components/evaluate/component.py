"""KFP component: challenger vs champion on the same holdout, with a bootstrap confidence interval."""

from typing import NamedTuple

from kfp import dsl

from storeflow.components.container import component


@component
def evaluate(training_set: dsl.Input[dsl.Dataset], model: dsl.Input[dsl.Model],
             metrics: dsl.Output[dsl.Metrics],
             champion_metrics: dsl.Output[dsl.Metrics],
             challenger_curves: dsl.Output[dsl.ClassificationMetrics],
             champion_curves: dsl.Output[dsl.ClassificationMetrics],
             report: dsl.Output[dsl.Markdown],
             config_json: str = "{}", label_horizon_days: int = -1,
             promotion_margin: float = -1.0) -> NamedTuple("Evaluation", evaluation=str, promote=bool):
    """Compare the challenger with the champion on the same holdout, with a bootstrap confidence interval.

    Args:
        config_json: Advanced: storeflow settings as a JSON object (the storeflow config model), over the
            task's environment, the storeflow-config ConfigMap and config file; '{}' uses those alone.
        training_set: The training set Dataset from the features task (the holdout is its latest cutoffs).
        model: The challenger, the train task's Model (its MLflow run and model URI in the metadata).
        label_horizon_days: A customer is a repeat buyer when they order within this many days after a
            cutoff (the label), as the features task was given; -1 keeps the configured features.label.horizon_days.
        promotion_margin: How much the challenger must beat the champion by on the evaluation metric (with
            a bootstrap CI above zero) to be promoted; -1 keeps the configured evaluate.margin.
        metrics: The challenger's holdout metrics.
        champion_metrics: The current champion's holdout metrics on the same rows (empty without a champion).
        challenger_curves: The challenger's ROC curve and confusion matrix (at 0.5) on the holdout.
        champion_curves: The champion's ROC curve and confusion matrix on the same rows (empty without one).
        report: The decision in words, with every model's holdout metrics side by side (Markdown).

    Returns:
        evaluation: The EvaluationResult as JSON. promote: whether the challenger should become champion.
    """
    from collections import namedtuple

    from storeflow.components.artifacts import result_of
    from storeflow.components.config import load_run_settings
    from storeflow.components.evaluate import evaluate as run
    from storeflow.components.evaluate.report import markdown
    from storeflow.components.features import FeatureResult
    from storeflow.components.train import TrainResult

    settings = load_run_settings(config_json, {"features.label.horizon_days": label_horizon_days,
                                              "evaluate.margin": promotion_margin})
    features = FeatureResult.from_artifact(training_set)
    result = run(settings, features, TrainResult(**result_of(model.metadata, "model")))
    for name, value in result.challenger_metrics.items():
        metrics.log_metric(name, value)
    for name, value in (result.champion_metrics or {}).items():
        champion_metrics.log_metric(name, value)
    for curves, artifact in ((result.challenger_curves, challenger_curves), (result.champion_curves, champion_curves)):
        if curves:
            artifact.log_roc_curve(curves["fpr"], curves["tpr"], curves["thresholds"])
            artifact.log_confusion_matrix(curves["classes"], curves["confusion_matrix"])
    with open(report.path, "w") as out:
        out.write(markdown(result))
    print(f"decision: {'promote' if result.promote else 'keep champion'}: {result.reason}")
    return namedtuple("Evaluation", ["evaluation", "promote"])(result.to_json(), result.promote)
