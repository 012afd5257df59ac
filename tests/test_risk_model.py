"""The order risk model on a time-split holdout, beside Shopify's risk level and a rules baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from storeflow.components.config import RiskConfig, SyntheticStoreConfig
from storeflow.components.ingest import generate_store, read_bulk_jsonl
from storeflow.components.risk import model as risk_model
from storeflow.components.risk.features import LABEL, TIME, order_risk_features
from storeflow.components.risk.orders import read_risk_fields

STORE = SyntheticStoreConfig(customers=2_000, orders=24_000, products=80, seed=31, fraud_rate=0.006)


def test_recall_at_a_false_positive_rate_reads_the_roc_curve():
    labels = np.array([0] * 100 + [1] * 10)
    scores = np.concatenate([np.arange(100) / 100, [2.0] * 5, [-1.0] * 5])
    assert risk_model.recall_at_fpr(labels, scores, 0.01) == pytest.approx(0.5)
    assert risk_model.recall_at_fpr(labels, np.concatenate([np.zeros(100), np.ones(10)]), 0.01) == 1.0
    # three levels, the top one holding 2 % of the negatives and half the positives: at 1 % FPR, half of it
    tiers = np.concatenate([[2.0] * 2, [0.0] * 98, [2.0] * 5, [0.0] * 5])
    assert risk_model.recall_at_fpr(labels, tiers, 0.01) == pytest.approx(0.25)


def test_the_baselines_score_what_they_say():
    frame = pd.DataFrame({
        "shopify_risk_level": ["HIGH", "MEDIUM", "LOW", None, "NONE"],
        "country_mismatch": [1, 0, 0, 0, 0], "account_age_hours": [0.2, 0.1, 500.0, 0.1, 0.1],
        "prior_orders": [0, 0, 3, 0, 2], "total_price": [300.0, 100.0, 400.0, 20.0, 20.0],
        "address_orders_24h": [0, 2, 0, 0, 0], "customer_orders_1h": [0, 0, 0, 0, 1],
        "discount_share": [0.0, 0.0, 0.0, 0.4, 0.5], "hour_of_day": [3, 12, 12, 12, 23],
    })
    assert risk_model.shopify_score(frame).tolist() == [2, 1, 0, 0, 0]
    # mismatch 2 + new account high value 2 + night 1 | burst 2 | nothing | discounted first order 1 | velocity 2
    assert risk_model.rules_score(frame, high_value=250.0).tolist() == [5, 2, 0, 1, 2]


def _frame(days: int, fraud_every: int) -> pd.DataFrame:
    times = pd.date_range("2025-01-01", periods=days * 4, freq="6h", tz="UTC")
    return pd.DataFrame({TIME: times, LABEL: (np.arange(len(times)) % fraud_every == 0).astype(int)})


def test_training_labels_were_mature_when_the_holdout_began():
    settings = RiskConfig(maturity_days=60, holdout_days=90)
    frame = _frame(400, 50)
    split = risk_model.time_split(frame, settings)
    last = frame[TIME].max()
    assert split.holdout[TIME].max() < last - pd.Timedelta(days=60) <= split.holdout_end
    assert split.holdout[TIME].min() >= split.holdout_start
    assert split.train[TIME].max() < split.holdout_start - pd.Timedelta(days=60)
    assert len(split.train) + len(split.holdout) < len(frame)  # the gaps are left out


def test_a_history_too_short_for_the_split_is_named():
    with pytest.raises(ValueError, match="holdout of 180 days and label maturity of 90 days"):
        risk_model.time_split(_frame(200, 50), RiskConfig())


@pytest.fixture(scope="module")
def orders(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    path = generate_store(STORE, tmp_path_factory.mktemp("risk-model") / "store.jsonl")
    return order_risk_features(read_bulk_jsonl([path]), read_risk_fields([path]))


def test_the_model_is_judged_beside_shopify_and_the_rules_on_the_same_holdout(orders):
    settings = RiskConfig(bootstrap_samples=50)
    split = risk_model.time_split(orders, settings)
    model = risk_model.fit(split.train, settings)
    evaluation = risk_model.evaluate(model, split, settings)
    metrics = evaluation.metrics
    assert set(metrics) == {"model", "shopify", "rules"}
    assert {m["rows"] for m in metrics.values()} == {float(len(split.holdout))}
    base_rate = metrics["model"]["positive_rate"]
    assert 0 < base_rate < 0.02
    for name in metrics:
        assert metrics[name]["pr_auc"] > 3 * base_rate, name  # every scorer finds fraud far above chance
        assert 0 <= metrics[name]["recall_at_1pct_fpr"] <= 1
    # the learned model uses what the rules use and more: it ranks fraud at least about as well
    assert metrics["model"]["pr_auc"] > 0.8 * metrics["rules"]["pr_auc"]
    for baseline, comparison in evaluation.comparisons.items():
        assert comparison["ci_low"] <= comparison["difference"] <= comparison["ci_high"]
        assert comparison["challenger"] == pytest.approx(metrics["model"]["pr_auc"])
        assert comparison["champion"] == pytest.approx(metrics[baseline]["pr_auc"])
    text = risk_model.report(evaluation, settings.fpr)
    assert "Shopify's risk level" in text and "recall at 1% FPR" in text


def test_the_confusion_matrix_holds_orders_above_the_genuine_orders_quantile():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 1000 + [1] * 20)
    scores = np.concatenate([rng.random(1000), rng.random(20) + 0.5])
    curves = risk_model.curves_at_fpr(labels, scores, 0.01)
    (genuine_passed, genuine_held), (fraud_passed, fraud_held) = curves["confusion_matrix"]
    assert genuine_held <= 10 and genuine_passed + genuine_held == 1000
    assert fraud_held == int((scores[1000:] >= curves["threshold"]).sum()) and fraud_passed + fraud_held == 20
    assert curves["classes"] == ["genuine", "fraud"]
    assert curves["fpr"][0] == 0 and curves["tpr"][-1] == 1


def test_shopifys_level_is_a_model_input_only_when_asked():
    frame = pd.DataFrame({name: [0.0, 1.0] for name in risk_model.ORDER_FEATURES}
                         | {"shopify_risk_level": ["HIGH", None]})
    assert list(risk_model.inputs(frame, RiskConfig()).columns) == list(risk_model.ORDER_FEATURES)
    stacked = risk_model.inputs(frame, RiskConfig(shopify_level_as_input=True))
    assert list(stacked.columns) == [*risk_model.ORDER_FEATURES, "shopify_score"]
    assert stacked["shopify_score"].tolist() == [2.0, 0.0]
