"""Buy-till-you-die baselines (pymc-marketing's CLV models) and the order-count-then-recency ranking.

Why here: their outputs are features of the model (probability alive, expected purchases), and the
same fitted models are the baselines a challenger must beat on the very holdout rows it is judged on.
The models are fitted once, by MAP, on every customer's history strictly before the first holdout
cutoff, so no holdout label reaches them; scoring any (customer, cutoff) row then needs only its own
frequency, recency and age. pymc-marketing costs ~10 s to import: it is imported inside functions
and only by the features stage, never by serving, which reads the outputs from Feast.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

WEEK_DAYS = 7.0  # BTYD time unit: weeks, as in the published CDNOW estimates
BTYD_FEATURES = ("btyd_p_alive", "btyd_expected_purchases", "btyd_p_order")
# BG/NBD's P(an order within the horizon): the baseline's own answer, which the model stacks onto (train.stack)
P_ORDER = "btyd_p_order"
# Baseline scores written beside each training row (not model inputs): P(an order within the horizon).
BASELINES = {"bgnbd": "baseline_bgnbd", "pareto_nbd": "baseline_pareto_nbd",
             "frequency_recency": "baseline_frequency_recency"}
RANKINGS = frozenset({"frequency_recency"})  # scores that rank but are not probabilities
# The spend baseline beside each holdout row: BG/NBD's expected orders in the horizon times Gamma-Gamma's
# expected order value (Fader, Hardie & Lee 2005), the classic expected spend of a customer.
SPEND_BASELINE = "baseline_spend_bgnbd_gamma_gamma"
# Where a trained model version keeps the BG/NBD its training rows were scored with: ``btyd/bgnbd.nc`` in
# its MLflow model directory (the webhook receiver scores live customers with the champion's).
LOGGED_DIR = "btyd"
LOGGED_FILE = "bgnbd.nc"


def rfm(features: pd.DataFrame) -> pd.DataFrame:
    """BTYD inputs from customer feature rows: repeat orders (frequency), weeks from first to last order
    (recency) and weeks from first order to the row's time (T)."""
    age = features["days_since_first_order"].to_numpy(dtype=float) / WEEK_DAYS
    since_last = features["recency_days"].to_numpy(dtype=float) / WEEK_DAYS
    return pd.DataFrame({"customer_id": np.arange(len(features)),
                         "frequency": features["frequency"].to_numpy(dtype=float) - 1,
                         "recency": np.clip(age - since_last, 0, None), "T": np.maximum(age, 1e-6)})


@dataclass
class Fitted:
    """The fitted BG/NBD, Pareto/NBD and Gamma-Gamma models and the cutoff whose history they saw."""

    bgnbd: object
    pareto_nbd: object | None
    fitted_before: datetime
    gamma_gamma: object | None = None

    def parameters(self) -> dict[str, float]:
        found = {f"bgnbd.{k}": float(v) for k, v in self.bgnbd.fit_summary().items()}
        for name in ("pareto_nbd", "gamma_gamma"):
            if (model := getattr(self, name)) is not None:
                found |= {f"{name}.{k}": float(v) for k, v in model.fit_summary().items()}
        return found


def _flat(values) -> np.ndarray:
    return np.asarray(values).reshape(-1)


def spend_inputs(features: pd.DataFrame) -> pd.DataFrame:
    """Gamma-Gamma inputs: repeat orders and the mean order value (over all of a customer's orders: the
    features keep no per-order values), one row per feature row."""
    return pd.DataFrame({"customer_id": np.arange(len(features)),
                         "frequency": features["frequency"].to_numpy(dtype=float) - 1,
                         "monetary_value": features["avg_order_value"].to_numpy(dtype=float)})


def fit(snapshot: pd.DataFrame, fitted_before: datetime, pareto: bool = True, max_customers: int | None = None,
        seed: int = 0) -> Fitted:
    """MAP fits on one snapshot's rows (one per customer, all history strictly before ``fitted_before``).
    Gamma-Gamma sees the customers with a repeat order and a positive order value, as the model assumes.

    ``max_customers``: fit on a uniform sample (seeded) of at most this many rows. The models have four
    population parameters (BG/NBD: r, alpha, a, b), which tens of thousands of customers pin down, while
    the fit costs grow with the rows: Pareto/NBD's MAP took 192 s on 200,000 customers here (17 s on
    20,000), so a 500,000-customer store never finished. Scoring stays per row, for every customer."""
    if max_customers is not None and len(snapshot) > max_customers:
        snapshot = snapshot.sample(n=max_customers, random_state=seed).sort_index()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pymc_marketing.clv import BetaGeoModel, GammaGammaModel, ParetoNBDModel

        data = rfm(snapshot)
        bgnbd = BetaGeoModel(data=data)
        bgnbd.fit(method="map", progressbar=False)
        pareto_nbd = None
        if pareto:
            pareto_nbd = ParetoNBDModel(data=data)
            pareto_nbd.fit(method="map", progressbar=False)
        spend = spend_inputs(snapshot)
        spend = spend[(spend["frequency"] > 0) & (spend["monetary_value"] > 0)]
        gamma_gamma = None
        if len(spend) >= 10:
            gamma_gamma = GammaGammaModel(data=spend.assign(customer_id=np.arange(len(spend))))
            gamma_gamma.fit(method="map", progressbar=False)
    return Fitted(bgnbd, pareto_nbd, fitted_before, gamma_gamma)


def btyd_features(fitted: Fitted, features: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """BG/NBD probability alive, expected orders and P(an order) within the horizon, one row per feature row."""
    return _scored(fitted.bgnbd, features, horizon_days)


def _scored(bgnbd, features: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    if features.empty:
        return pd.DataFrame({name: pd.Series(dtype=float) for name in BTYD_FEATURES}, index=features.index)
    data = rfm(features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alive = _flat(bgnbd.expected_probability_alive(data=data))
        purchases = _flat(bgnbd.expected_purchases(data=data, future_t=horizon_days / WEEK_DAYS))
    return pd.DataFrame({"btyd_p_alive": alive, "btyd_expected_purchases": purchases,
                         P_ORDER: _p_order(bgnbd, data, horizon_days)}, index=features.index)


def _p_order(bgnbd, data: pd.DataFrame, horizon_days: int) -> np.ndarray:
    """BG/NBD's P(at least one order within the horizon), in [0, 1]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        none = _flat(bgnbd.expected_probability_no_purchase(t=horizon_days / WEEK_DAYS, data=data))
    return np.clip(1 - none, 0, 1)


def save(fitted: Fitted, path: Path) -> None:
    """Keep the fitted BG/NBD model (pymc-marketing's netCDF) beside the feature sources, so features
    computed later (webhook updates, simulations) score with the very model the training rows saw.
    The file holds only anonymous (frequency, recency, T) rows: no customer id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted.bgnbd.save(str(tmp))
    tmp.replace(path)


class LiveScorer:
    """BTYD features for rows computed after the features stage, from a saved BG/NBD model.

    ``source`` is the model file, or a callable naming the file to use now (the webhook receiver's: the
    champion's, which changes when a new version is promoted). The model is loaded on first use and again
    whenever the file changes; until there is one, the BTYD features are missing (NaN) and serving treats
    them as such."""

    def __init__(self, source: Path | Callable[[], Path | None]) -> None:
        self._locate = source if callable(source) else (lambda: source)
        self._lock = threading.Lock()
        self._loaded: tuple[tuple[Path, int], object] | None = None

    def _model(self):
        path = self._locate()
        if path is None:
            return None
        try:
            stamp = (Path(path), os.stat(path).st_mtime_ns)
        except FileNotFoundError:
            return None
        with self._lock:
            if self._loaded is None or self._loaded[0] != stamp:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    import arviz as az
                    from pymc_marketing.clv import BetaGeoModel

                    # build_from_idata, not load: pymc-marketing 0.19's load leaves the pymc model unbuilt.
                    self._loaded = (stamp, BetaGeoModel.build_from_idata(az.from_netcdf(str(path))))
            return self._loaded[1]

    def features(self, features: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
        model = self._model()
        if model is None:
            return pd.DataFrame({name: np.nan for name in BTYD_FEATURES}, index=features.index)
        return _scored(model, features, horizon_days)


def frequency_recency_rank(features: pd.DataFrame) -> np.ndarray:
    """Order count first, then the most recent order: a ranking score in [0, 1) (no probability)."""
    order = np.lexsort((-features["recency_days"].to_numpy(), features["frequency"].to_numpy()))
    rank = np.empty(len(order))
    rank[order] = np.arange(len(order))
    return rank / max(len(order), 1)


def baseline_scores(fitted: Fitted, features: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """Each baseline's score per row: BG/NBD's and Pareto/NBD's P(an order within the horizon), and the
    frequency-then-recency ranking (a rank, so only its ROC-AUC and PR-AUC mean anything)."""
    data = rfm(features)
    weeks = horizon_days / WEEK_DAYS
    scores = {BASELINES["bgnbd"]: _p_order(fitted.bgnbd, data, horizon_days)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fitted.pareto_nbd is not None:
            none = fitted.pareto_nbd.expected_purchase_probability(data=data, n_purchases=0, future_t=weeks)
            scores[BASELINES["pareto_nbd"]] = 1 - _flat(none)
    scores[BASELINES["frequency_recency"]] = frequency_recency_rank(features)
    found = pd.DataFrame(scores, index=features.index).clip(0, 1)
    if fitted.gamma_gamma is not None:
        found[SPEND_BASELINE] = expected_spend(fitted, features, horizon_days)
    return found


def expected_spend(fitted: Fitted, features: pd.DataFrame, horizon_days: int) -> np.ndarray:
    """Expected spend in the horizon: BG/NBD's expected orders times Gamma-Gamma's expected order value
    (for a customer without a repeat order, the population's mean blended with their one order)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        orders = _flat(fitted.bgnbd.expected_purchases(data=rfm(features), future_t=horizon_days / WEEK_DAYS))
        spend = spend_inputs(features)
        spend["monetary_value"] = spend["monetary_value"].clip(lower=0.01)
        value = _flat(fitted.gamma_gamma.expected_customer_spend(data=spend))
    return orders * value


def warm_compile_cache(customers: int = 300, horizon_days: int = 60) -> None:
    """Fit and score every model once on a small seeded store, so PyTensor's compiled C ops land in its
    cache (the image points it at /var/cache/pytensor). The project image runs this at build time: without it every features
    task compiled ~60 ops with g++ in its fresh container (100-160 s here) before fitting anything. Ops
    whose code embeds the data still compile at run time (9 of 67 on a new store, ~20 s)."""
    rng = np.random.default_rng(0)
    first = rng.integers(30, 400, customers)
    features = pd.DataFrame({"days_since_first_order": first, "recency_days": rng.integers(0, 30, customers),
                             "frequency": rng.integers(1, 6, customers),
                             "avg_order_value": rng.uniform(10, 100, customers)})
    fitted = fit(features, datetime(2000, 1, 1))
    baseline_scores(fitted, features, horizon_days)
    btyd_features(fitted, features, horizon_days)


if __name__ == "__main__":
    warm_compile_cache()
