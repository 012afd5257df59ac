"""KFP component: challenger vs champion on the same holdout, with a bootstrap confidence interval."""

from typing import NamedTuple

from kfp import dsl

from storeflow.components.container import component


@component
def evaluate(config_json: str, features: str, trained: str,
             metrics: dsl.Output[dsl.Metrics]) -> NamedTuple("Evaluation", evaluation=str, promote=bool):
    """Returns the EvaluationResult JSON and whether the challenger should become champion."""
    from collections import namedtuple

    from storeflow.components.config import load_settings
    from storeflow.components.evaluate import evaluate as run
    from storeflow.components.features import FeatureResult
    from storeflow.components.train import TrainResult

    result = run(load_settings(config_json), FeatureResult.from_json(features), TrainResult.from_json(trained))
    for name, value in result.challenger_metrics.items():
        metrics.log_metric(name, value)
    print(f"decision: {'promote' if result.promote else 'keep champion'}: {result.reason}")
    return namedtuple("Evaluation", ["evaluation", "promote"])(result.to_json(), result.promote)
