"""Expected spend (train.spend): calibrated on the latest pre-holdout cutoff, cut into Shopify-like spend
tiers, logged inside the propensity model's directory and served beside its score."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from storeflow.components.train.spend import TIERS, fit_spend, spend_tiers


def _rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"frequency": rng.poisson(2, n) + 1.0, "avg_order_value": rng.gamma(4, 20, n)})
    orders = rng.poisson(0.3 * x["frequency"])
    return x, orders * x["avg_order_value"].to_numpy() * rng.uniform(0.8, 1.2, n)


def test_spend_tiers_follow_the_cut_points_and_bad_cuts_are_named() -> None:
    assert spend_tiers(np.array([0.0, 5.0, 10.0, 50.0, 100.0, 101.0]), [5.0, 100.0]).tolist() == [
        "LOW", "MEDIUM", "MEDIUM", "MEDIUM", "MEDIUM", "HIGH"]
    with pytest.raises(ValueError, match="cut points"):
        spend_tiers(np.array([1.0]), [10.0, 5.0])


def test_spend_totals_match_the_calibration_cutoff_and_tiers_rank_what_customers_spend() -> None:
    x, y = _rows(6_000, 0)
    cx, cy = _rows(3_000, 1)
    cy = cy * 0.7  # the latest cutoff's customers spend less: the totals follow it, not the older rows
    model, cuts = fit_spend({"max_iter": 50, "random_state": 0}, x, y, cx, cy)
    assert model.predict(cx).sum() == pytest.approx(cy.sum(), rel=1e-3)
    hx, hy = _rows(3_000, 2)
    tiers = spend_tiers(model.predict(hx), cuts)
    means = [hy[tiers == tier].mean() for tier in TIERS]
    assert means[0] < means[1] < means[2]
    assert 0.05 < (tiers == "LOW").mean() < 0.15 and 0.25 < (tiers == "HIGH").mean() < 0.35
    with pytest.raises(ValueError, match="label_spend must be non-negative"):
        fit_spend({}, x, -y, cx, cy)


def test_a_trained_version_serves_expected_spend_and_tier_beside_an_unchanged_score(tmp_path: Path, monkeypatch) -> None:
    """train logs the spend model inside the propensity model's directory; the predictor loads both and
    the V1 answer carries expected_spend and spend_tier, with the very score the model gives."""
    import mlflow

    from storeflow.components.config import load_settings
    from storeflow.components.features import FeatureResult
    from storeflow.components.train import load_model, train
    from storeflow.serving.predictor import StoreflowPredictor
    from storeflow.serving.transformer import Scoring, StoreflowTransformer

    from test_propensity import _store

    monkeypatch.chdir(tmp_path)
    frame = _store(rows_per_cutoff=300)
    frame["label_spend"] = frame["label"] * np.random.default_rng(0).gamma(3, 30, len(frame))
    path = tmp_path / "training.parquet"
    frame.to_parquet(path)
    settings = load_settings({"project": {"state_dir": str(tmp_path / "state")},
                              "features": {"label": {"horizon_days": 56, "cutoff_every_days": 28, "min_history_days": 0}},
                              "train": {"params": {"max_iter": 30, "random_state": 0}}})
    features = FeatureResult(training_set=path, dataset_hash="test", feature_refs=[], rows=len(frame),
                             positive_rate=float(frame["label"].mean()), cutoffs=[], served_as_of="")
    trained = train(settings, features)
    assert trained.metrics["spend_calibration_predicted"] == pytest.approx(trained.metrics["spend_calibration_actual"],
                                                                           rel=1e-3)
    from storeflow.components.evaluate import challenger_spend
    from storeflow.components.train import holdout

    judged = challenger_spend(holdout(settings, features), trained)["challenger"]  # evaluate's spend figures
    assert judged["spend_actual"] > 0 and np.isfinite(judged["spend_aggregate_error"])
    assert sum(judged[f"spend_tier_{tier.lower()}_share"] for tier in TIERS) == pytest.approx(1)
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=trained.model_uri, dst_path=str(tmp_path / "m")))
    predictor = StoreflowPredictor("m", model_dir, version="1")
    predictor.load()
    rows = frame[trained.features].head(5).to_numpy(dtype=np.float64)
    expected = load_model(trained.model_uri).predict_proba(frame[trained.features].head(5))[:, 1]

    transformer = StoreflowTransformer("m", features=None, predictors={"1": predictor})
    scoring = Scoring(v2_request=None, refs=[str(i) for i in range(5)], ids=list(range(1, 6)), carts=[None] * 5,
                      pinned=None, shop=None, rows=rows, fallback=np.zeros(5, dtype=bool))
    answer = asyncio.run(_answer(transformer, scoring))["predictions"]
    assert [a["score"] for a in answer] == pytest.approx(expected.tolist(), abs=1e-12)
    spend, tiers = predictor.expected_spend(rows)
    assert [a["expected_spend"] for a in answer] == pytest.approx(np.round(spend, 2).tolist())
    assert [a["spend_tier"] for a in answer] == tiers.tolist() and set(tiers) <= set(TIERS)


async def _answer(transformer, scoring):
    return await transformer.postprocess(await transformer.predict(scoring))
