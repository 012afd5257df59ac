"""Evaluate stage: score the challenger and the current champion on the same holdout and decide."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from storeflow.components.config import Settings
from storeflow.components.evaluate.metrics import Decision, decide, holdout_metrics, paired_bootstrap
from storeflow.components.features import FeatureResult
from storeflow.components.features.dataset import CUSTOMER, LABEL
from storeflow.components.train import TrainResult, holdout, load_model

__all__ = ["EvaluationResult", "evaluate"]


@dataclass(frozen=True)
class EvaluationResult:
    promote: bool
    reason: str
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    champion_version: str | None
    comparison: dict | None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EvaluationResult:
        return cls(**json.loads(text))


def _model_columns(model, fallback: list[str]) -> list[str]:
    names = getattr(model, "feature_names_in_", None)
    return list(names) if names is not None else fallback


def evaluate(settings: Settings, features: FeatureResult, trained: TrainResult) -> EvaluationResult:
    from storeflow.components import tracking

    client = tracking.connect(settings)  # before loading: model URIs resolve against this tracking server
    frame = holdout(settings, features)
    labels = frame[LABEL].to_numpy()
    challenger = load_model(trained.model_uri)
    challenger_scores = challenger.predict_proba(frame[trained.features])[:, 1]
    challenger_metrics = holdout_metrics(labels, challenger_scores)

    champion_version = tracking.current_champion(client, settings.registry.model_name)
    if champion_version is None:
        decision: Decision = decide(None, settings.evaluate.margin)
        return EvaluationResult(decision.promote, decision.reason, challenger_metrics, None, None, None)

    champion = load_model(f"models:/{settings.registry.model_name}/{champion_version}")
    columns = _model_columns(champion, trained.features)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        return EvaluationResult(
            False, f"champion v{champion_version} needs features the holdout lacks ({', '.join(missing)}); "
            "not promoting automatically", challenger_metrics, None, champion_version, None)
    champion_scores = champion.predict_proba(frame[columns])[:, 1]
    cfg = settings.evaluate
    comparison = paired_bootstrap(labels, challenger_scores, np.asarray(champion_scores), cfg.metric,
                                  cfg.bootstrap_samples, cfg.confidence, cfg.seed, groups=frame[CUSTOMER].to_numpy())
    decision = decide(comparison, cfg.margin)
    return EvaluationResult(decision.promote, decision.reason, challenger_metrics,
                            holdout_metrics(labels, champion_scores), champion_version,
                            asdict(comparison))
