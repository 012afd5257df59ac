"""Expected spend in the label horizon per customer, and the spend tier a merchant segments on.

A Poisson-loss gradient-boosted regressor on the propensity model's features (spend is non-negative and
mostly zero), recalibrated on the calibration cutoff by a Poisson fit on its log prediction (spend =
e^a * predicted^b: with its intercept the predicted total matches that cutoff's actual), as the propensity
is calibrated there. Tiers follow Shopify's ``CustomerPredictedSpendTier`` (LOW, MEDIUM, HIGH):
HIGH above the 70th percentile of predicted spend, LOW at or below the 10th, over the calibration cutoff's
customers; the cut points travel with the model, so a tier means the same for every customer served.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor, StackingRegressor
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import PoissonRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from storeflow.components.features.dataset import SPEND_LABEL

SPEND_DIR = "spend"  # the spend model's folder inside the propensity model's directory (train.log_spend_model)
TIERS = ("LOW", "MEDIUM", "HIGH")
TIER_PERCENTILES = (10, 70)  # Shopify's predicted spend tier: LOW up to the 10th percentile, HIGH above the 70th
TREE_PARAMS = ("max_iter", "learning_rate", "max_leaf_nodes", "min_samples_leaf", "random_state")


def fit_spend(params: dict, train_x: pd.DataFrame, train_y: np.ndarray, calibration_x: pd.DataFrame,
              calibration_y: np.ndarray) -> tuple[StackingRegressor, list[float]]:
    """The spend model (fitted on the training cutoffs, scaled on the calibration cutoff) and its tier
    cut points (predicted spend at TIER_PERCENTILES on the calibration cutoff)."""
    if len(train_y) and np.min(train_y) < 0:
        raise ValueError(f"{SPEND_LABEL} must be non-negative (spend in the label window); got {np.min(train_y)}")
    trees = HistGradientBoostingRegressor(loss="poisson", **{k: v for k, v in params.items() if k in TREE_PARAMS})
    trees.fit(train_x, train_y)
    scale = make_pipeline(FunctionTransformer(np.log), PoissonRegressor(alpha=0))  # trees' predictions are > 0
    model = StackingRegressor([("trees", FrozenEstimator(trees))], final_estimator=scale, cv=2)
    model.fit(calibration_x, calibration_y)
    cuts = np.percentile(model.predict(calibration_x), TIER_PERCENTILES)
    return model, [float(c) for c in cuts]


def spend_tiers(spend: np.ndarray, cuts: list[float]) -> np.ndarray:
    """LOW, MEDIUM or HIGH per predicted spend, by the model's cut points (LOW at or below the first, HIGH
    above the second).

    At or below: the first cut is the 10th percentile, and tree predictions tie. When more than a tenth of
    customers share the lowest prediction (CDNOW: 11.5 % of the calibration cutoff, one-order customers
    long gone), the percentile *is* that prediction, and "below" it would leave LOW empty."""
    if len(cuts) != len(TIERS) - 1 or cuts[0] > cuts[1]:
        raise ValueError(f"spend tier cut points must be {len(TIERS) - 1} ascending numbers, got {cuts}")
    spend = np.asarray(spend, dtype=float)
    return np.where(spend <= cuts[0], TIERS[0], np.where(spend > cuts[1], TIERS[2], TIERS[1])).astype(object)


def tier_spend(tiers: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Per spend tier, the share of customers in it and what they then actually spent on average (no mean
    for an empty tier): how a merchant checks that the tiers rank spend before segmenting on them."""
    tiers, actual = np.asarray(tiers), np.asarray(actual, dtype=float)
    summary = {}
    for tier in TIERS:
        inside = tiers == tier
        summary[f"spend_tier_{tier.lower()}_share"] = float(inside.mean())
        if inside.any():
            summary[f"spend_tier_{tier.lower()}_actual_mean"] = float(actual[inside].mean())
    return summary
