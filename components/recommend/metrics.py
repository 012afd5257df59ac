"""Ranking metrics per evaluated customer (binary relevance: products bought new after the cutoff), and a
customer-grouped bootstrap CI of the difference between two recommenders on the same customers."""

from __future__ import annotations

import numpy as np
from scipy import stats


def per_customer(recommended: np.ndarray, relevant: list[np.ndarray], k: int) -> dict[str, np.ndarray]:
    """recall@k, NDCG@k and AP@k (MAP@k is its mean) for each row of ``recommended`` (-1 is no product)."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall, ndcg, ap = (np.zeros(len(relevant)) for _ in range(3))
    for i, (ranked, wanted) in enumerate(zip(recommended[:, :k], relevant)):
        hits = np.isin(ranked, wanted) & (ranked >= 0)
        ideal = min(k, len(wanted))
        recall[i] = hits.sum() / len(wanted)
        ndcg[i] = (hits * discounts[:len(hits)]).sum() / discounts[:ideal].sum()
        precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        ap[i] = (precision_at * hits).sum() / ideal
    return {f"recall@{k}": recall, f"ndcg@{k}": ndcg, f"map@{k}": ap}


def coverage(recommended: np.ndarray, catalog: int) -> float:
    """Share of the catalog recommended to anyone: a model that shows everyone the same ten scores low."""
    return len(np.setdiff1d(np.unique(recommended), [-1])) / catalog


def difference_ci(a: np.ndarray, b: np.ndarray, samples: int, confidence: float, seed: int) -> tuple[float, float, float]:
    """Mean of ``a - b`` over customers and its bootstrap CI, resampling customers (each is one unit)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(diff) < 2 or np.all(diff == diff[0]):
        return float(diff.mean()), float(diff.mean()), float(diff.mean())
    ci = stats.bootstrap((diff,), np.mean, n_resamples=samples, confidence_level=confidence,
                         method="percentile", random_state=seed).confidence_interval
    return float(diff.mean()), float(ci.low), float(ci.high)
