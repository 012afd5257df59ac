"""The order risk model and how it is judged: pure functions over the frame of :mod:`risk.features`.

* a time split: the holdout is the latest orders whose labels are mature (disputes arrive weeks later), and
  training takes only orders whose labels were mature when the holdout began (no label from its future);
* the model: the train stage's configured-estimator builder (``train.build_estimator``), default a
  class-weighted HistGradientBoostingClassifier, fitted on ``ORDER_FEATURES`` (and, with
  ``shopify_level_as_input``, Shopify's own level as one more input: :func:`inputs`);
* two baselines on the same rows: Shopify's own risk level (the bulk export's assessment without a provider:
  LOW < MEDIUM < HIGH) and transparent rules a merchant could write in Shopify Flow (:func:`rules_score`);
* metrics for a rare class: PR-AUC (average precision) and recall at 1 % false-positive rate (the share of
  fraud caught when one genuine order in a hundred is held), with the evaluate stage's customer-grouped
  paired bootstrap of the model minus each baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from storeflow.components.config import RiskConfig
from storeflow.components.evaluate.metrics import Comparison, classification_curves, paired_bootstrap
from storeflow.components.risk.assess import levels_from
from storeflow.components.risk.features import LABEL, ORDER_FEATURES, TIME
from storeflow.components.train import build_estimator

CLASSES = ("genuine", "fraud")
SHOPIFY_LEVELS = {"HIGH": 2.0, "MEDIUM": 1.0}  # LOW, NONE, pending or absent: 0
SHOPIFY_INPUT = "shopify_score"


def columns(settings: RiskConfig) -> list[str]:
    """The model's input columns."""
    return [*ORDER_FEATURES, *([SHOPIFY_INPUT] if settings.shopify_level_as_input else [])]


def inputs(frame: pd.DataFrame, settings: RiskConfig) -> pd.DataFrame:
    """The model's inputs of ``frame`` (rows of risk.features)."""
    if settings.shopify_level_as_input:
        frame = frame.assign(**{SHOPIFY_INPUT: shopify_score(frame)})
    return frame[columns(settings)]


@dataclass(frozen=True)
class RiskSplit:
    train: pd.DataFrame
    holdout: pd.DataFrame
    train_until: pd.Timestamp  # training orders were created before this
    holdout_start: pd.Timestamp
    holdout_end: pd.Timestamp  # labels are mature for orders created before this


def time_split(frame: pd.DataFrame, settings: RiskConfig) -> RiskSplit:
    """Holdout: orders of the ``holdout_days`` before the labels' maturity line; training: orders created
    ``maturity_days`` before the holdout starts, whose labels were known by then."""
    if frame.empty:
        raise ValueError("no orders to split")
    end = frame[TIME].max() - pd.Timedelta(days=settings.maturity_days)
    start = end - pd.Timedelta(days=settings.holdout_days)
    until = start - pd.Timedelta(days=settings.maturity_days)
    split = RiskSplit(frame[frame[TIME] < until].reset_index(drop=True),
                      frame[(frame[TIME] >= start) & (frame[TIME] < end)].reset_index(drop=True), until, start, end)
    for name in ("train", "holdout"):
        part = getattr(split, name)
        if part[LABEL].sum() == 0 or part[LABEL].nunique() < 2:
            span = (frame[TIME].max() - frame[TIME].min()).days
            raise ValueError(
                f"the {name} orders ({len(part)}) hold no fraud label; the store's {span} days of orders with "
                f"{int(frame[LABEL].sum())} labelled frauds are too few for a holdout of {settings.holdout_days} "
                f"days and label maturity of {settings.maturity_days} days: ingest more history or lower them")
    return split


def shopify_score(frame: pd.DataFrame) -> np.ndarray:
    """Shopify's own risk level as a score: HIGH 2, MEDIUM 1, anything else 0."""
    return frame["shopify_risk_level"].map(SHOPIFY_LEVELS).fillna(0.0).to_numpy(dtype=float)


def rules_score(frame: pd.DataFrame, high_value: float) -> np.ndarray:
    """Points a merchant's rules would give: shipping country differs from billing (2); a new account
    (under a day old) whose first order is worth ``high_value`` or more (2); a second order within the day
    to one address or within the hour from one customer (2); a first order with a 30 %+ discount (1); placed
    between midnight and 6 am UTC (1)."""
    first = frame["prior_orders"] == 0
    points = (2 * frame["country_mismatch"]
              + 2 * ((frame["account_age_hours"] < 24) & first & (frame["total_price"] >= high_value))
              + 2 * ((frame["address_orders_24h"] >= 1) | (frame["customer_orders_1h"] >= 1))
              + 1 * (first & (frame["discount_share"] >= 0.3))
              + 1 * (frame["hour_of_day"] < 6))
    return points.to_numpy(dtype=float)


def high_value_threshold(train: pd.DataFrame) -> float:
    """The rules' high value: the 95th percentile of order value on the training orders."""
    return float(train["total_price"].quantile(0.95))


def recall_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """The share of positives caught at false-positive rate ``fpr``, on the ROC curve interpolated between its
    points (what holding a random share of the orders tied at the threshold gives)."""
    false, true, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(np.interp(fpr, false, true))


def risk_metrics(labels: np.ndarray, scores: np.ndarray, fpr: float) -> dict[str, float]:
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    return {"pr_auc": float(average_precision_score(labels, scores)), "roc_auc": float(roc_auc_score(labels, scores)),
            f"recall_at_{fpr:.0%}_fpr".replace("%", "pct"): recall_at_fpr(labels, scores, fpr),
            "rows": float(len(labels)), "positives": float(labels.sum()), "positive_rate": float(labels.mean())}


def fit(train: pd.DataFrame, settings: RiskConfig):
    """The configured estimator fitted on the training orders' :func:`inputs`."""
    estimator = build_estimator(settings.estimator, settings.params)
    return estimator.fit(inputs(train, settings), train[LABEL].to_numpy())


@dataclass(frozen=True)
class RiskEvaluation:
    metrics: dict[str, dict[str, float]]  # model, shopify, rules -> metrics on the holdout
    comparisons: dict[str, dict]  # model minus each baseline: paired bootstrap of PR-AUC
    split: dict[str, str | int]
    rules_high_value: float
    curves: dict[str, dict] = field(default_factory=dict)  # scorer -> ROC curve, confusion matrix at the FPR
    levels: dict[str, float] = field(default_factory=dict)  # the model's HIGH/MEDIUM cut points (risk.assess)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(model, split: RiskSplit, settings: RiskConfig) -> RiskEvaluation:
    """The model and both baselines on the same holdout rows, with the model-minus-baseline CI (customers
    resampled; a guest order is its own group)."""
    holdout = split.holdout
    labels = holdout[LABEL].to_numpy()
    high_value = high_value_threshold(split.train)
    scores = {"model": model.predict_proba(inputs(holdout, settings))[:, 1],
              "shopify": shopify_score(holdout), "rules": rules_score(holdout, high_value)}
    groups = holdout["customer_id"].astype("string").fillna("guest-" + holdout["order_id"].astype(str)).to_numpy()
    comparisons: dict[str, dict] = {}
    for baseline in ("shopify", "rules"):
        comparison: Comparison = paired_bootstrap(labels, scores["model"], scores[baseline], "pr_auc",
                                                  settings.bootstrap_samples, settings.confidence, settings.seed,
                                                  groups=groups)
        comparisons[baseline] = asdict(comparison)
    return RiskEvaluation(
        metrics={name: risk_metrics(labels, score, settings.fpr) for name, score in scores.items()},
        comparisons=comparisons,
        split={"train_rows": len(split.train), "train_positives": int(split.train[LABEL].sum()),
               "holdout_rows": len(holdout), "holdout_positives": int(labels.sum()),
               "train_until": split.train_until.isoformat(), "holdout_start": split.holdout_start.isoformat(),
               "holdout_end": split.holdout_end.isoformat()},
        rules_high_value=high_value,
        curves={name: curves_at_fpr(labels, score, settings.fpr) for name, score in scores.items()},
        levels=asdict(levels_from(scores["model"][labels == 0], high_fpr=settings.fpr)),
    )


def curves_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> dict:
    """The ROC curve and the confusion matrix when orders scoring above the genuine orders' ``1 - fpr``
    quantile are held (what a KFP ClassificationMetrics artifact shows)."""
    threshold = float(np.nextafter(np.quantile(scores[labels == 0], 1 - fpr), np.inf))
    return {**classification_curves(labels, scores, threshold=threshold), "classes": list(CLASSES)}


def report(evaluation: RiskEvaluation, fpr: float) -> str:
    """The comparison as a Markdown table, then each model-minus-baseline interval in words."""
    recall = f"recall_at_{fpr:.0%}_fpr".replace("%", "pct")
    s = evaluation.split
    lines = [f"Holdout: {s['holdout_rows']} orders created {s['holdout_start'][:10]} to {s['holdout_end'][:10]}, "
             f"{s['holdout_positives']} labelled fraud; trained on {s['train_rows']} orders before "
             f"{s['train_until'][:10]} ({s['train_positives']} fraud).", "",
             f"| scorer | PR-AUC | ROC-AUC | recall at {fpr:.0%} FPR |", "|---|---|---|---|"]
    names = {"model": "model", "shopify": "Shopify's risk level", "rules": "rules"}
    for key, name in names.items():
        m = evaluation.metrics[key]
        lines.append(f"| {name} | {m['pr_auc']:.4f} | {m['roc_auc']:.4f} | {m[recall]:.4f} |")
    lines.append("")
    for key, c in evaluation.comparisons.items():
        lines.append(f"- model minus {names[key]}: PR-AUC {c['difference']:+.4f}, "
                     f"{c['samples']} customer-grouped resamples, CI [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]")
    return "\n".join(lines) + "\n"
