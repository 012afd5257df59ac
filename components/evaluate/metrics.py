"""Holdout metrics and the champion/challenger decision: pure functions over labels and scores."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    log_loss,
    roc_auc_score,
    roc_curve,
)

METRICS = {"roc_auc": roc_auc_score, "pr_auc": average_precision_score}


def holdout_metrics(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> dict[str, float]:
    """ROC-AUC, PR-AUC, log loss, Brier score and expected calibration error."""
    prob_true, prob_pred = calibration_curve(labels, scores, n_bins=bins, strategy="quantile")
    # calibration_curve drops empty bins; with quantile bins the rest hold about equal weight.
    ece = float(np.mean(np.abs(prob_true - prob_pred)))
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "pr_auc": float(average_precision_score(labels, scores)),
        "log_loss": float(log_loss(labels, np.clip(scores, 1e-15, 1 - 1e-15))),
        "brier": float(brier_score_loss(labels, scores)),
        "calibration_error": ece,
        "positive_rate": float(np.mean(labels)),
        "rows": float(len(labels)),
        "positives": float(np.sum(labels)),
        "predicted_positives": float(np.sum(scores)),  # expected repeat buyers, if scores are probabilities
    }


def ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC-AUC and PR-AUC only: for a ranking whose scores are not probabilities."""
    return {"roc_auc": float(roc_auc_score(labels, scores)), "pr_auc": float(average_precision_score(labels, scores)),
            "positive_rate": float(np.mean(labels)), "rows": float(len(labels)), "positives": float(np.sum(labels))}


def decile_lift(actual: np.ndarray, predicted: np.ndarray, groups: int = 10) -> list[float]:
    """Actual spend per customer in each decile of predicted spend (highest first), over the mean: how
    many times the average a merchant gets by targeting that decile (1.0 everywhere: no ranking)."""
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    order = np.argsort(-predicted, kind="stable")
    # Customers with the same prediction are indistinguishable: each gets their tie group's mean, so a
    # decile boundary inside a tie splits it fairly instead of by row order.
    _, codes = np.unique(predicted[order], return_inverse=True)
    ranked = (np.bincount(codes, actual[order]) / np.bincount(codes))[codes]
    mean = actual.mean()
    return [float(part.mean() / mean) if mean > 0 and len(part) else float("nan")
            for part in np.array_split(ranked, groups)]


def spend_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Spend predictions judged as a merchant uses them: the aggregate (predicted over actual total, minus
    one), the error per customer, and the lift of the top decile (and top two) of predicted spend."""
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    lift = decile_lift(actual, predicted)
    return {
        "spend_actual": float(actual.sum()),
        "spend_predicted": float(predicted.sum()),
        "spend_aggregate_error": float(predicted.sum() / actual.sum() - 1) if actual.sum() > 0 else float("nan"),
        "spend_mae": float(np.mean(np.abs(predicted - actual))),
        "spend_top_decile_lift": lift[0],
        "spend_top_20_lift": float(np.mean(lift[:2])),
    }


CLASSES = ("no repeat order", "repeat order")


def classification_curves(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5,
                          max_points: int = 200) -> dict:
    """The ROC curve (at most ``max_points`` points, first and last kept: what a KFP UI can draw) and the
    confusion matrix at ``threshold`` (rows: actual class, columns: predicted), as plain lists."""
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=True)
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    # roc_curve's first threshold is +inf (nothing predicted positive); JSON has no infinity, and for
    # probabilities a threshold of 1 predicts the same nobody.
    thresholds = np.where(np.isfinite(thresholds), thresholds, np.nextafter(max(1.0, float(np.max(scores))), np.inf))
    matrix = confusion_matrix(labels, (np.asarray(scores) >= threshold).astype(int), labels=[0, 1])
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist(), "threshold": threshold,
            "classes": list(CLASSES), "confusion_matrix": matrix.tolist()}


@dataclass(frozen=True)
class Comparison:
    metric: str
    challenger: float
    champion: float
    difference: float
    ci_low: float
    ci_high: float
    samples: int


class Presorted:
    """One score's ranking of a fixed set of rows, sorted once, so that a resample's weighted ROC-AUC or
    average precision (what scikit-learn's ``roc_auc_score``/``average_precision_score`` return with
    ``sample_weight``) costs two bincounts and a cumulative sum instead of a sort of every row: the
    bootstrap rescores the same rows hundreds of times (1M holdout rows on the 100x store)."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray):
        scores = np.asarray(scores, dtype=np.float64)
        order = np.argsort(-scores, kind="stable")
        ranked = scores[order]
        starts = np.r_[True, ranked[1:] != ranked[:-1]]  # a new, lower distinct score begins here
        group = np.empty(len(scores), dtype=np.intp)
        group[order] = np.cumsum(starts) - 1  # rows of equal score share a group; group 0 scores highest
        self._groups = int(starts.sum())
        self._bin = 2 * group + (np.asarray(labels) == 1)  # (group, is positive) in one bincount

    def _counts(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weight of the positives and of the negatives at each distinct score, highest score first."""
        counts = np.bincount(self._bin, weights=weights, minlength=2 * self._groups).reshape(-1, 2)
        return counts[:, 1], counts[:, 0]

    def roc_auc(self, weights: np.ndarray) -> float:
        """P(a positive outranks a negative), ties counted half: the area under the ROC curve."""
        positives, negatives = self._counts(weights)
        below = negatives.sum() - np.cumsum(negatives)  # negative weight scored lower than each group
        return float(np.sum(positives * (below + 0.5 * negatives)) / (positives.sum() * negatives.sum()))

    def average_precision(self, weights: np.ndarray) -> float:
        """Precision at each distinct threshold, weighted by the recall it adds."""
        positives, negatives = self._counts(weights)
        true, false = np.cumsum(positives), np.cumsum(negatives)
        predicted = true + false
        precision = np.divide(true, predicted, out=np.ones_like(true), where=predicted > 0)
        return float(np.sum(positives / true[-1] * precision))

    def score(self, metric: str, weights: np.ndarray) -> float:
        return self.roc_auc(weights) if metric == "roc_auc" else self.average_precision(weights)


def paired_bootstrap(
    labels: np.ndarray, challenger: np.ndarray, champion: np.ndarray, metric: str, samples: int,
    confidence: float, seed: int, groups: np.ndarray | None = None,
) -> Comparison:
    """Bootstrap CI of (challenger - champion) on the same resample each time.

    ``groups`` (customer ids) are resampled instead of rows: a customer appears once per holdout
    cutoff, and those rows share most of their history and label window, so resampling rows would
    count one customer's luck several times and make the interval too narrow."""
    score = METRICS[metric]
    ours, theirs = Presorted(labels, challenger), Presorted(labels, champion)
    rng = np.random.default_rng(seed)
    codes, uniques = pd.factorize(np.arange(len(labels)) if groups is None else np.asarray(groups))
    n = len(uniques)
    diffs = []
    for _ in range(samples):
        # A resample of groups (n draws with replacement), as row weights: multinomial(n, 1/n) alike,
        # drawn as integers and counted because numpy's multinomial costs 10x that at 500,000 customers.
        weights = np.bincount(rng.integers(0, n, size=n), minlength=n)[codes].astype(np.float64)
        if labels[weights > 0].min() == labels[weights > 0].max():
            continue  # a resample with a single class has no AUC
        diffs.append(ours.score(metric, weights) - theirs.score(metric, weights))
    if not diffs:
        raise ValueError("no bootstrap resample had both label classes; the holdout is too small")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    a, b = float(score(labels, challenger)), float(score(labels, champion))
    return Comparison(metric, a, b, a - b, float(low), float(high), len(diffs))


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    comparison: Comparison | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def versus_baseline(comparison: Comparison | None, name: str, gate: bool = True) -> str:
    """How the challenger stands against the best baseline, in words (with the gate off, a loss is only
    reported)."""
    if comparison is None:
        return "no baseline could be scored on this holdout"
    c = comparison
    interval = f"CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
    if c.difference <= 0:
        return (f"it LOSES to the {name} baseline: {c.metric} {c.challenger:.4f} vs {c.champion:.4f} "
                f"({c.difference:+.4f}, {interval}); "
                + ("a model that a baseline beats is never promoted" if gate else
                   "evaluate.baseline_gate is off, so this is reported, not enforced"))
    sure = "with a CI above zero" if c.ci_low > 0 else "but the CI includes zero"
    return f"it beats the best baseline, {name}, {c.metric} {c.challenger:.4f} vs {c.champion:.4f} ({c.difference:+.4f}, {sure}: {interval})"


def decide(comparison: Comparison | None, margin: float, baseline: Comparison | None = None,
           baseline_name: str = "", baseline_gate: bool = True) -> Decision:
    """Promote only a challenger that beats the best baseline (higher on the metric; unless the gate
    is off, when losing is only reported) and is the first model or wins against the champion by
    ``margin`` with a CI above zero."""
    if baseline_gate and baseline is not None and baseline.difference <= 0:
        return Decision(False, f"not promoted: {versus_baseline(baseline, baseline_name)}", comparison)
    against = "" if baseline is None else f"; {versus_baseline(baseline, baseline_name, baseline_gate)}"
    decision = _against_champion(comparison, margin)
    return Decision(decision.promote, decision.reason + against, comparison)


def _against_champion(comparison: Comparison | None, margin: float) -> Decision:
    if comparison is None:
        return Decision(True, "no champion yet: the first model becomes champion")
    c = comparison
    if c.difference < margin:
        return Decision(False, f"{c.metric} {c.challenger:.4f} vs champion {c.champion:.4f}: "
                               f"difference {c.difference:+.4f} is below the margin {margin:.4f}", c)
    if c.ci_low <= 0:
        return Decision(False, f"{c.metric} difference {c.difference:+.4f} but its confidence interval "
                               f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}] includes zero", c)
    return Decision(True, f"{c.metric} {c.challenger:.4f} beats champion {c.champion:.4f} by {c.difference:+.4f} "
                          f"(CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}])", c)
