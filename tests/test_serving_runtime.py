"""The compiled tree runtime scores exactly like scikit-learn, or is not used."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from storeflow.serving.runtime import RuntimeUnavailable, build_scorer


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    # Money-like values with cents and small counts: thresholds fall between close float64 values.
    x = np.column_stack([rng.gamma(2.0, 60.0, 3000).round(2), rng.poisson(3, 3000).astype(float),
                         rng.uniform(0, 400, 3000), rng.beta(1, 5, 3000)])
    logit = 0.01 * x[:, 0] - 0.5 * x[:, 1] + 0.004 * x[:, 2] + 3 * x[:, 3] + rng.normal(0, 1, 3000)
    return x, (logit > np.median(logit)).astype(int)


@pytest.mark.parametrize("estimator", [
    HistGradientBoostingClassifier(max_iter=60, random_state=0),
    RandomForestClassifier(n_estimators=25, random_state=0),
    GradientBoostingClassifier(n_estimators=30, random_state=0),
], ids=lambda e: type(e).__name__)
def test_tree_models_are_scored_by_treelite_with_the_same_scores(data, estimator):
    x, y = data
    estimator.fit(x, y)
    scorer = build_scorer(estimator)
    assert scorer.runtime == "treelite", scorer.reason
    rng = np.random.default_rng(1)
    # Unseen rows, rows exactly on training values (where thresholds sit between), one row at a time too.
    fresh = np.column_stack([rng.uniform(0, 600, 500), rng.integers(0, 12, 500), rng.uniform(-50, 500, 500),
                             rng.uniform(0, 1, 500)])
    rows = np.vstack([fresh, x[:500]])
    expected = estimator.predict_proba(rows)[:, 1]
    assert np.max(np.abs(scorer.score(rows) - expected)) <= 1e-12
    assert scorer.score(rows[:1])[0] == pytest.approx(expected[0], abs=1e-12)


@pytest.mark.parametrize("estimator", [
    HistGradientBoostingClassifier(max_iter=60, random_state=0),
    RandomForestClassifier(n_estimators=25, random_state=0),
], ids=lambda e: type(e).__name__)
def test_calibrated_tree_models_as_train_registers_them_are_scored_by_treelite_exactly(data, estimator):
    """train wraps every estimator in a Platt-scaled CalibratedClassifierCV: serving had fallen back to
    scikit-learn's per-tree Python loop for every model it registered."""
    from storeflow.components.train import calibrated

    x, y = data
    model = calibrated(estimator.fit(x[:2000], y[:2000]), x[2000:], y[2000:])
    scorer = build_scorer(model, "treelite")
    assert scorer.runtime == "treelite", scorer.reason
    rng = np.random.default_rng(2)
    rows = np.vstack([np.column_stack([rng.uniform(0, 600, 300), rng.integers(0, 12, 300),
                                       rng.uniform(-50, 500, 300), rng.uniform(0, 1, 300)]), x[:300]])
    assert np.max(np.abs(scorer.score(rows) - model.predict_proba(rows)[:, 1])) <= 1e-12


def test_models_treelite_cannot_import_keep_scikit_learn_and_say_why(data):
    x, y = data
    estimator = LogisticRegression(max_iter=500).fit(x, y)
    scorer = build_scorer(estimator)
    assert scorer.runtime == "sklearn"
    assert "LogisticRegression" in scorer.reason
    assert np.array_equal(scorer.score(x[:5]), estimator.predict_proba(x[:5])[:, 1])
    with pytest.raises(RuntimeUnavailable, match="serving.model_runtime is treelite"):
        build_scorer(estimator, "treelite")


def test_sklearn_mode_is_respected(data):
    x, y = data
    estimator = HistGradientBoostingClassifier(max_iter=10).fit(x, y)
    assert build_scorer(estimator, "sklearn").runtime == "sklearn"


def test_a_runtime_that_rounds_to_float32_is_caught_by_the_threshold_probes(data, monkeypatch):
    """What an ONNX tree ensemble does (float32 inputs and thresholds): off by whole leaves near splits."""
    from storeflow.serving.runtime import GTILWalk

    x, y = data
    estimator = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(x, y)
    exact = GTILWalk.__call__

    def float32_walk(self, rows, dtype=np.float64):
        return exact(self, np.asarray(rows, dtype=dtype).astype(np.float32).astype(np.float64), dtype)

    monkeypatch.setattr(GTILWalk, "__call__", float32_walk)
    scorer = build_scorer(estimator)
    assert scorer.runtime == "sklearn"
    assert "differs by up to" in scorer.reason
    with pytest.raises(RuntimeUnavailable, match="differs by up to"):
        build_scorer(estimator, "treelite")


def test_a_stack_as_train_registers_it_walks_its_trees_in_treelite_with_the_same_scores(data):
    """train.stack registers a StackingClassifier (trees, a linear model and BG/NBD's P(an order)): its
    trees are walked by Treelite, the rest by scikit-learn, and the scores are the stack's own."""
    import pandas as pd

    from storeflow.components.train.stack import stack

    x, y = data
    frame = pd.DataFrame(x, columns=["spend", "orders", "days", "p_order"])
    model = stack(HistGradientBoostingClassifier(max_iter=60, random_state=0), "p_order",
                  frame[:2000], y[:2000], frame[2000:], y[2000:])
    scorer = build_scorer(model, "treelite")
    assert scorer.runtime == "treelite", scorer.reason
    rng = np.random.default_rng(3)
    rows = np.vstack([np.column_stack([rng.uniform(0, 600, 300), rng.integers(0, 12, 300),
                                       rng.uniform(-50, 500, 300), rng.uniform(0, 1, 300)]), x[:300]])
    expected = model.predict_proba(pd.DataFrame(rows, columns=frame.columns))[:, 1]
    assert np.max(np.abs(scorer.score(rows) - expected)) <= 1e-12
    assert scorer.score(rows[:1])[0] == pytest.approx(expected[0], abs=1e-12)


def test_the_spend_model_as_train_registers_it_is_predicted_by_treelite_with_the_same_values(data):
    """train.spend registers trees under a log-linked Poisson fit (a StackingRegressor): scikit-learn's
    predict walks its trees from Python on every request (0.1 s a call on the 50,000-customer bench model
    under load). Treelite walks them, the Poisson step is the same arithmetic, the values are the model's."""
    import pandas as pd

    from storeflow.components.train.spend import fit_spend
    from storeflow.serving.runtime import build_regressor

    x, _ = data
    rng = np.random.default_rng(4)
    spend = rng.poisson(np.exp(0.3 * x[:, 1] + 2 * x[:, 3])) * rng.gamma(2.0, 30.0, len(x))
    frame = pd.DataFrame(x, columns=["spend", "orders", "days", "p_order"])
    model, _ = fit_spend({"max_iter": 60, "random_state": 0}, frame[:2000], spend[:2000], frame[2000:], spend[2000:])
    predictor = build_regressor(model, "treelite")
    assert predictor.runtime == "treelite", predictor.reason
    rows = np.vstack([np.column_stack([rng.uniform(0, 600, 300), rng.integers(0, 12, 300),
                                       rng.uniform(-50, 500, 300), rng.uniform(0, 1, 300)]), x[:300]])
    expected = model.predict(pd.DataFrame(rows, columns=frame.columns))
    assert np.max(np.abs(predictor.score(rows) - expected) / expected) <= 1e-12
    assert predictor.score(rows[:1])[0] == pytest.approx(expected[0], rel=1e-12)


def test_a_regressor_treelite_cannot_import_keeps_scikit_learn_and_says_why(data):
    from sklearn.linear_model import PoissonRegressor

    from storeflow.serving.runtime import build_regressor

    x, _ = data
    model = PoissonRegressor().fit(x, x[:, 1])
    predictor = build_regressor(model)
    assert predictor.runtime == "sklearn" and "PoissonRegressor" in predictor.reason
    assert np.array_equal(predictor.score(x[:5]), model.predict(x[:5]))
    with pytest.raises(RuntimeUnavailable, match="serving.model_runtime is treelite"):
        build_regressor(model, "treelite")


def test_a_served_version_predicts_spend_with_treelite_and_the_spend_models_own_values(data, tmp_path):
    """A version as train logs it (propensity model, spend model under spend/ with its tier cut points):
    the predictor walks the spend model's trees in Treelite, with the values and tiers the model gives."""
    import mlflow.sklearn
    import pandas as pd

    from storeflow.components import tracking
    from storeflow.components.train.spend import SPEND_DIR, fit_spend, spend_tiers
    from storeflow.serving.predictor import StoreflowPredictor

    x, y = data
    frame = pd.DataFrame(x, columns=["spend", "orders", "days", "p_order"])
    rng = np.random.default_rng(5)
    amount = y * rng.gamma(3.0, 30.0, len(y))
    propensity = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(frame, y)
    spend, cuts = fit_spend({"max_iter": 30, "random_state": 0}, frame[:2000], amount[:2000], frame[2000:], amount[2000:])
    for model, path, metadata in ((propensity, tmp_path / "model", None),
                                  (spend, tmp_path / "model" / SPEND_DIR, {"spend_tier_cuts": cuts})):
        mlflow.sklearn.save_model(model, str(path), serialization_format="skops", metadata=metadata,
                                  skops_trusted_types=tracking.skops_trusted_types(model))
    predictor = StoreflowPredictor("m", tmp_path / "model", version="1", runtime="treelite")
    predictor.load()
    assert predictor.spend_scorer.runtime == "treelite", predictor.spend_scorer.reason
    rows = x[:200]
    values, tiers = predictor.expected_spend(rows)
    expected = spend.predict(pd.DataFrame(rows, columns=frame.columns))
    assert np.max(np.abs(values - expected) / expected) <= 1e-12
    assert list(tiers) == list(spend_tiers(expected, cuts))


def test_a_stacks_linear_parts_and_combiner_are_computed_without_scikit_learns_checks_with_the_same_values(data):
    """train.stack's linear model and baseline log-odds (imputer, scaler, clip and logit in pipelines) and
    its logistic combiner cost ~2 ms of scikit-learn's input validation a call on the 50,000-customer bench
    model; computed step by step they give the same values, missing values imputed as the imputer does."""
    import pandas as pd

    from storeflow.components.train.stack import stack
    from storeflow.serving.runtime import _binary_logistic, _linear_decision, _unfrozen

    x, y = data
    frame = pd.DataFrame(x, columns=["spend", "orders", "days", "p_order"])
    model = stack(HistGradientBoostingClassifier(max_iter=30, random_state=0), "p_order",
                  frame[:2000], y[:2000], frame[2000:], y[2000:])
    rows = x[:300].copy()
    rows[::7, 0] = np.nan  # imputed with the training median
    rows[::11, 3] = np.nan
    rows[::13, 3] = 0.0  # clipped before its log-odds
    for part in model.estimators_[1:]:
        expected = part.decision_function(pd.DataFrame(rows, columns=frame.columns))
        assert np.max(np.abs(_linear_decision(_unfrozen(part))(rows) - expected)) <= 1e-12
    meta = np.random.default_rng(6).normal(size=(50, 3))
    combiner = model.final_estimator_
    assert np.max(np.abs(_binary_logistic(combiner)(meta) - combiner.predict_proba(meta)[:, 1])) <= 1e-15


def test_treelite_walks_go_through_gtil_with_a_config_parsed_once_and_give_the_same_scores(data, monkeypatch):
    """A stack and a spend model as train registers them are walked through GTIL's C predict with one parsed
    config per model: ``treelite.gtil.predict`` built and parsed a new config (JSON, in C++) and looked the
    model's types up through ctypes on every call, more of a one-row call than the walk itself. Scores and
    values stay the models' own, one row at a time and in batches."""
    import pandas as pd
    import treelite.gtil
    from treelite.gtil import gtil

    from storeflow.components.train.spend import fit_spend
    from storeflow.components.train.stack import stack
    from storeflow.serving.runtime import build_regressor

    x, y = data
    frame = pd.DataFrame(x, columns=["spend", "orders", "days", "p_order"])
    model = stack(HistGradientBoostingClassifier(max_iter=40, random_state=0), "p_order",
                  frame[:2000], y[:2000], frame[2000:], y[2000:])
    rng = np.random.default_rng(6)
    amount = rng.poisson(np.exp(0.3 * x[:, 1] + 2 * x[:, 3])) * rng.gamma(2.0, 30.0, len(x))
    spend, _ = fit_spend({"max_iter": 40, "random_state": 0}, frame[:2000], amount[:2000], frame[2000:], amount[2000:])
    scorer, predictor = build_scorer(model, "treelite"), build_regressor(spend, "treelite")
    assert scorer.runtime == predictor.runtime == "treelite"

    configs = []
    original = gtil.GTILConfig.__post_init__
    monkeypatch.setattr(gtil.GTILConfig, "__post_init__", lambda self: (configs.append(self), original(self)))
    monkeypatch.setattr(treelite.gtil, "predict", lambda *a, **k: pytest.fail("gtil.predict called per request"))
    rows = np.vstack([x[2000:2300], np.column_stack([rng.uniform(0, 600, 64), rng.integers(0, 12, 64),
                                                      rng.uniform(-50, 500, 64), rng.uniform(0, 1, 64)])])
    named = pd.DataFrame(rows, columns=frame.columns)
    expected, expected_spend = model.predict_proba(named)[:, 1], spend.predict(named)
    for size in (1, 2, 7, 64):
        for start in range(0, len(rows), size * 9):
            part = slice(start, start + size)
            assert np.max(np.abs(scorer.score(rows[part]) - expected[part])) <= 1e-12
            assert np.max(np.abs(predictor.score(rows[part]) - expected_spend[part]) / expected_spend[part]) <= 1e-12
    assert configs == []  # no config parsed on the request path
