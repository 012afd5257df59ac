"""The propensity model as a stack: the configured estimator, a logistic regression on the same features
and BG/NBD's own P(an order), combined by a logistic regression fitted on the calibration cutoff.

Why: a gradient-boosted model alone lost to the buy-till-you-die baselines (bench/results/model.json),
which encode the purchase process in three numbers a tree needs many rows to approximate. The baseline's
probability enters the combination as it is; the trees and the linear model add what it cannot see
(refunds, discounts, category focus). The combiner is fitted on the latest pre-holdout cutoff, so it is
also the calibration: with its intercept it predicts as many repeat buyers there as there were (what
Platt scaling did for the estimator alone). Everything is scikit-learn, saved and served like any model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import logit
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import StackingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

EPSILON = 1e-6  # probabilities are clipped to [EPSILON, 1 - EPSILON] before their log-odds


def linear():
    """Logistic regression on standardized features (missing values: the training median)."""
    return make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                         LogisticRegression(max_iter=2_000))


def baseline_log_odds(column: str, columns: list[str]):
    """A one-input logistic regression on the baseline's log-odds: its margin is a + b * logit(p), so the
    combiner weighs the baseline's own answer (an identity the stacking API can hold)."""
    select = ColumnTransformer([(column, make_pipeline(
        SimpleImputer(strategy="median"),
        FunctionTransformer(np.clip, kw_args={"a_min": EPSILON, "a_max": 1 - EPSILON}),
        FunctionTransformer(logit)), [columns.index(column)])])
    return make_pipeline(select, LogisticRegression())


def stack(estimator, baseline: str, train_x: pd.DataFrame, train_y: np.ndarray, calibration_x: pd.DataFrame,
          calibration_y: np.ndarray) -> StackingClassifier:
    """Fit ``estimator`` (unfitted, with a ``decision_function``), the linear model and the baseline's
    log-odds on the training cutoffs, then their combination on the calibration cutoff."""
    if baseline not in train_x.columns:
        raise ValueError(f"train.stack needs the feature '{baseline}' (BG/NBD's P(an order)) among "
                         "features.customer_features; add it, or set train.stack to false")
    if not hasattr(estimator, "decision_function"):
        raise ValueError(f"train.stack needs an estimator with decision_function; {type(estimator).__name__} "
                         "has none: set train.stack to false")
    columns = list(train_x.columns)
    parts = [("estimator", estimator), ("linear", linear()), ("baseline", baseline_log_odds(baseline, columns))]
    fitted = [(name, FrozenEstimator(part.fit(train_x, train_y))) for name, part in parts]
    # Frozen parts: the stack's own cross-validation only scores them; the combiner learns on these rows.
    return StackingClassifier(fitted, final_estimator=LogisticRegression(), stack_method="decision_function",
                              cv=2).fit(calibration_x, calibration_y)
