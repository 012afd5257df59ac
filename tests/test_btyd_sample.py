"""BTYD baselines fitted on a sample of customers (features.btyd_fit_customers): a large store's fit costs
what a sample's does, and every customer is still scored, close to what the full fit would say."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd

from storeflow.components.features import btyd


def _customers(n: int, seed: int = 0) -> pd.DataFrame:
    """Feature rows as the features stage writes them, drawn from a BG/NBD-like process: each customer
    orders at their own Poisson rate until they drop out after some order."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(30, 700, n)  # days since the first order
    rate = rng.gamma(0.8, 1 / 40, n)  # orders per day
    alive_for = np.minimum(age, rng.geometric(rng.beta(1, 4, n)) / np.maximum(rate, 1e-3))
    repeats = rng.poisson(rate * alive_for)
    last = np.where(repeats > 0, alive_for * rng.beta(np.maximum(repeats, 1), 1), 0.0)
    return pd.DataFrame({"days_since_first_order": age, "recency_days": age - last,
                         "frequency": repeats + 1, "avg_order_value": rng.gamma(2, 40, n)})


def test_a_store_larger_than_the_sample_is_fitted_on_the_same_sample_each_run_and_every_customer_scored_alike():
    customers = _customers(12_000)
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    full = btyd.fit(customers, at, pareto=False, max_customers=12_000)  # no larger than the bound: fitted whole
    sampled = btyd.fit(customers, at, pareto=False, max_customers=3_000)

    assert len(sampled.bgnbd.data) == 3_000 and len(full.bgnbd.data) == 12_000
    scores, full_scores = (btyd.btyd_features(f, customers, 90) for f in (sampled, full))
    assert len(scores) == len(customers) and scores.notna().all().all()
    gap = (scores - full_scores).abs().max()
    assert gap["btyd_p_order"] < 0.03 and gap["btyd_p_alive"] < 0.05, gap
    again = btyd.fit(customers, at, pareto=False, max_customers=3_000)
    assert again.parameters() == sampled.parameters()  # a seeded sample: a rerun scores alike

