"""Evaluate stage: score the challenger, the current champion and the baselines on the same holdout
rows and decide. A challenger must beat the best baseline and the champion."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from storeflow.components.config import Settings
from storeflow.components.evaluate.metrics import (
    Comparison,
    Decision,
    classification_curves,
    decide,
    holdout_metrics,
    paired_bootstrap,
    ranking_metrics,
    spend_metrics,
)
from storeflow.components.features import FeatureResult
from storeflow.components.features.btyd import BASELINES, RANKINGS, SPEND_BASELINE
from storeflow.components.features.dataset import CUSTOMER, LABEL, SPEND_LABEL
from storeflow.components.train import TrainResult, holdout, load_model, load_spend_model

__all__ = ["EvaluationResult", "baseline_metrics", "baseline_spend", "challenger_spend", "evaluate", "log_evaluation_run", "side_by_side"]


@dataclass(frozen=True)
class EvaluationResult:
    promote: bool
    reason: str
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    champion_version: str | None
    comparison: dict | None
    baseline_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    best_baseline: str | None = None
    baseline_comparison: dict | None = None
    challenger_curves: dict | None = None  # ROC curve and confusion matrix (metrics.classification_curves)
    champion_curves: dict | None = None
    evaluation_run_id: str | None = None  # the MLflow run holding every model's holdout metrics side by side
    spend_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # expected spend vs actual, per model

    @property
    def loses_to_baseline(self) -> bool:
        return self.baseline_comparison is not None and self.baseline_comparison["difference"] <= 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EvaluationResult:
        return cls(**json.loads(text))


def _model_columns(model, fallback: list[str]) -> list[str]:
    names = getattr(model, "feature_names_in_", None)
    return list(names) if names is not None else fallback


def baseline_metrics(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Each baseline scored on the holdout rows (rankings get ROC-AUC and PR-AUC only)."""
    labels = frame[LABEL].to_numpy()
    found = {}
    for name, column in BASELINES.items():
        if column in frame and frame[column].notna().all():
            scores = frame[column].to_numpy()
            found[name] = ranking_metrics(labels, scores) if name in RANKINGS else holdout_metrics(labels, scores)
    return found


def baseline_spend(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The BG/NBD x Gamma-Gamma expected spend against what each holdout customer spent in the horizon."""
    if SPEND_LABEL not in frame or SPEND_BASELINE not in frame or frame[SPEND_BASELINE].isna().any():
        return {}
    return {"bgnbd_gamma_gamma": spend_metrics(frame[SPEND_LABEL].to_numpy(), frame[SPEND_BASELINE].to_numpy())}


def challenger_spend(frame: pd.DataFrame, trained: TrainResult) -> dict[str, dict[str, float]]:
    """The challenger's expected spend (its spend model, train.spend) against what each holdout customer
    spent in the horizon, and per spend tier the share of rows and their actual mean spend."""
    from storeflow.components.train.spend import spend_tiers, tier_spend

    found = load_spend_model(trained.model_uri) if SPEND_LABEL in frame else None
    if found is None:
        return {}
    model, cuts = found
    predicted = model.predict(frame[trained.features])
    tiers = spend_tiers(predicted, cuts)
    actual = frame[SPEND_LABEL].to_numpy()
    return {"challenger": spend_metrics(actual, predicted) | tier_spend(tiers, actual)}


def _bootstrap(settings: Settings, frame: pd.DataFrame, challenger: np.ndarray, other: np.ndarray) -> Comparison:
    cfg = settings.evaluate
    return paired_bootstrap(frame[LABEL].to_numpy(), challenger, np.asarray(other), cfg.metric, cfg.bootstrap_samples,
                            cfg.confidence, cfg.seed, groups=frame[CUSTOMER].to_numpy())


def evaluate(settings: Settings, features: FeatureResult, trained: TrainResult) -> EvaluationResult:
    from storeflow.components import tracking

    client = tracking.connect(settings)  # before loading: model URIs resolve against this tracking server
    result = _judge(settings, client, features, trained)
    return replace(result, evaluation_run_id=log_evaluation_run(settings, client, trained, result))


def _unloadable(client, name: str, version: str, exc: BaseException) -> str:
    """Why a champion whose model cannot be loaded keeps its place: the challenger is registered, not promoted."""
    from mlflow.exceptions import MlflowException

    try:
        where = client.get_model_version_download_uri(name, version)
    except MlflowException:
        where = f"models:/{name}/{version}"
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (f"champion v{version}'s model could not be loaded from {where} ({reason}), so the challenger cannot be "
            "compared with it; not promoting automatically: restore the champion's files, or make the challenger "
            "champion by hand (storeflow promote)")


def _judge(settings: Settings, client, features: FeatureResult, trained: TrainResult) -> EvaluationResult:
    from mlflow.exceptions import MlflowException

    from storeflow.components import tracking

    frame = holdout(settings, features)
    labels = frame[LABEL].to_numpy()
    challenger = load_model(trained.model_uri)
    challenger_scores = challenger.predict_proba(frame[trained.features])[:, 1]
    challenger_metrics = holdout_metrics(labels, challenger_scores)
    cfg = settings.evaluate

    baselines = baseline_metrics(frame)
    best = max(baselines, key=lambda name: baselines[name][cfg.metric], default=None)
    versus = None if best is None else _bootstrap(settings, frame, challenger_scores, frame[BASELINES[best]])
    found = {"baseline_metrics": baselines, "best_baseline": best,
             "baseline_comparison": None if versus is None else asdict(versus),
             "challenger_curves": classification_curves(labels, challenger_scores),
             "spend_metrics": challenger_spend(frame, trained) | baseline_spend(frame)}

    champion_version = tracking.current_champion(client, settings.registry.model_name)
    if champion_version is None:
        decision: Decision = decide(None, cfg.margin, versus, best or "", cfg.baseline_gate)
        return EvaluationResult(decision.promote, decision.reason, challenger_metrics, None, None, None, **found)

    try:
        champion = load_model(f"models:/{settings.registry.model_name}/{champion_version}")
    except (MlflowException, OSError) as exc:  # its files deleted, unreachable or unreadable
        return EvaluationResult(False, _unloadable(client, settings.registry.model_name, champion_version, exc),
                                challenger_metrics, None, champion_version, None, **found)
    columns = _model_columns(champion, trained.features)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        return EvaluationResult(
            False, f"champion v{champion_version} needs features the holdout lacks ({', '.join(missing)}); "
            "not promoting automatically", challenger_metrics, None, champion_version, None, **found)
    champion_scores = champion.predict_proba(frame[columns])[:, 1]
    comparison = _bootstrap(settings, frame, challenger_scores, champion_scores)
    decision = decide(comparison, cfg.margin, versus, best or "", cfg.baseline_gate)
    return EvaluationResult(decision.promote, decision.reason, challenger_metrics,
                            holdout_metrics(labels, champion_scores), champion_version,
                            asdict(comparison), **found, champion_curves=classification_curves(labels, champion_scores))


def side_by_side(result: EvaluationResult) -> dict[str, float]:
    """Every model's holdout metrics under one prefix each (challenger_, champion_, baseline_<name>_), so
    the MLflow UI shows them as columns of one run and charts them against each other across runs."""
    found = {f"challenger_{k}": v for k, v in result.challenger_metrics.items()}
    found |= {f"champion_{k}": v for k, v in (result.champion_metrics or {}).items()}
    for name, metrics in result.baseline_metrics.items():
        found |= {f"baseline_{name}_{k}": v for k, v in metrics.items()}
    for name, metrics in result.spend_metrics.items():
        found |= {f"spend_{name}_{k.removeprefix('spend_')}": v for k, v in metrics.items()}
    if result.comparison:
        found |= {"difference": result.comparison["difference"], "difference_ci_low": result.comparison["ci_low"],
                  "difference_ci_high": result.comparison["ci_high"]}
    return found | {"promote": float(result.promote)}


def log_evaluation_run(settings: Settings, client, trained: TrainResult, result: EvaluationResult) -> str:
    """An MLflow run of the evaluation (every model's holdout metrics, the decision, the curves), and the
    challenger's holdout metrics on its own training run too (``holdout_*``), so training runs compare
    by what they scored on the holdout, not only on their training rows."""
    import time

    from mlflow.entities import Metric

    from storeflow.components import tracking

    tags = {"storeflow.stage": "evaluate", "storeflow.challenger_run_id": trained.run_id,
            "storeflow.decision": "promote" if result.promote else "keep champion",
            "storeflow.champion_version": result.champion_version or "none"}
    run = client.create_run(tracking.experiment_id(settings, client), tags=tags,
                            run_name=f"evaluate-{trained.run_id[:8]}")
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in side_by_side(result).items()])
    client.log_text(run.info.run_id, result.reason, "decision.txt")
    client.log_dict(run.info.run_id, {"challenger": result.challenger_curves, "champion": result.champion_curves},
                    "classification_curves.json")
    client.set_terminated(run.info.run_id)
    client.log_batch(trained.run_id, metrics=[Metric(f"holdout_{k}", float(v), now, 0)
                                              for k, v in result.challenger_metrics.items()])
    return run.info.run_id
