"""The champion/challenger gate: metrics and every branch of the promotion decision."""

import numpy as np
import pytest

from storeflow.components.evaluate.metrics import Comparison, decide, holdout_metrics, paired_bootstrap


def _scores(seed: int, n: int = 2000, signal: float = 1.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    noise = rng.normal(0, 1, n)
    return labels, 1 / (1 + np.exp(-(signal * (labels - 0.5) * 2 + noise)))


def test_holdout_metrics_are_those_of_sklearn() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels, scores = _scores(0)
    metrics = holdout_metrics(labels, scores)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(labels, scores))
    assert 0 < metrics["calibration_error"] < 0.5 and metrics["log_loss"] > 0
    assert metrics["rows"] == 2000


def test_clearly_better_challenger_has_interval_above_zero() -> None:
    labels, good = _scores(1, signal=1.5)
    rng = np.random.default_rng(2)
    weak = np.clip(good + rng.normal(0, 0.6, len(good)), 0, 1)
    comparison = paired_bootstrap(labels, good, weak, "roc_auc", samples=200, confidence=0.95, seed=0)
    assert comparison.difference > 0.05 and comparison.ci_low > 0
    assert decide(comparison, margin=0.01).promote


def test_identical_models_are_never_promoted() -> None:
    labels, scores = _scores(3)
    comparison = paired_bootstrap(labels, scores, scores, "pr_auc", samples=100, confidence=0.95, seed=0)
    assert comparison.difference == 0
    decision = decide(comparison, margin=0.0)
    assert not decision.promote and "includes zero" in decision.reason


def test_decision_branches() -> None:
    assert decide(None, 0.01).promote  # first model becomes champion
    below_margin = Comparison("roc_auc", 0.805, 0.80, 0.005, 0.001, 0.01, 100)
    assert not decide(below_margin, 0.01).promote
    assert "below the margin" in decide(below_margin, 0.01).reason
    straddles = Comparison("roc_auc", 0.83, 0.80, 0.03, -0.002, 0.06, 100)
    assert not decide(straddles, 0.01).promote
    wins = Comparison("roc_auc", 0.83, 0.80, 0.03, 0.01, 0.05, 100)
    assert decide(wins, 0.01).promote
    loses = Comparison("roc_auc", 0.70, 0.80, -0.10, -0.12, -0.08, 100)
    assert not decide(loses, 0.0).promote


def test_single_class_holdout_is_a_clear_error() -> None:
    labels = np.ones(50, dtype=int)
    scores = np.linspace(0, 1, 50)
    with pytest.raises(ValueError, match="both label classes"):
        paired_bootstrap(labels, scores, scores, "roc_auc", 50, 0.95, 0)


def test_bootstrap_resamples_customers_so_repeated_rows_do_not_narrow_the_interval() -> None:
    labels, good = _scores(4, n=600, signal=0.6)
    weak = np.clip(good + np.random.default_rng(5).normal(0, 0.4, len(good)), 0, 1)
    customers = np.arange(len(labels))

    def width(repeat: int, grouped: bool) -> float:
        # The same customers seen at ``repeat`` holdout cutoffs (identical rows, as a worst case).
        args = [np.tile(a, repeat) for a in (labels, good, weak)]
        groups = np.tile(customers, repeat) if grouped else None
        c = paired_bootstrap(*args, "roc_auc", samples=300, confidence=0.95, seed=0, groups=groups)
        return c.ci_high - c.ci_low

    once = width(1, grouped=True)
    assert width(3, grouped=True) == pytest.approx(once, rel=0.2)  # 3 rows per customer add no evidence
    assert width(3, grouped=False) < 0.75 * once  # resampling rows would claim ~1/sqrt(3) of it


def test_a_challenger_a_baseline_beats_is_never_promoted_and_the_reason_says_so() -> None:
    loses = Comparison("roc_auc", 0.80, 0.82, -0.02, -0.03, -0.01, 100)
    first = decide(None, 0.0, baseline=loses, baseline_name="bgnbd")
    assert not first.promote and "LOSES to the bgnbd baseline" in first.reason
    wins_champion = Comparison("roc_auc", 0.83, 0.80, 0.03, 0.01, 0.05, 100)
    assert not decide(wins_champion, 0.01, baseline=loses, baseline_name="bgnbd").promote
    ahead = Comparison("roc_auc", 0.83, 0.82, 0.01, -0.002, 0.02, 100)
    decision = decide(None, 0.0, baseline=ahead, baseline_name="pareto_nbd")
    assert decision.promote and "beats the best baseline, pareto_nbd" in decision.reason
    assert "CI includes zero" in decision.reason
    # With the gate off (stores too small to judge) a loss is reported, not enforced.
    reported = decide(None, 0.0, baseline=loses, baseline_name="bgnbd", baseline_gate=False)
    assert reported.promote and "LOSES" in reported.reason
    assert "never promoted" not in reported.reason and "baseline_gate is off" in reported.reason


def test_classification_curves_are_what_the_kfp_ui_draws() -> None:
    """ROC points (bounded, finite, from (0,0) to (1,1)) and the confusion matrix at 0.5, as lists."""
    from sklearn.metrics import auc, roc_auc_score

    from storeflow.components.evaluate.metrics import classification_curves

    labels, scores = _scores(5, n=5000)
    curves = classification_curves(labels, scores, max_points=200)
    assert 2 < len(curves["fpr"]) <= 200 and len(curves["fpr"]) == len(curves["tpr"]) == len(curves["thresholds"])
    assert (curves["fpr"][0], curves["tpr"][0]) == (0.0, 0.0) and (curves["fpr"][-1], curves["tpr"][-1]) == (1.0, 1.0)
    assert all(np.isfinite(curves["thresholds"])) and curves["thresholds"][0] > max(scores)
    assert auc(curves["fpr"], curves["tpr"]) == pytest.approx(roc_auc_score(labels, scores), abs=0.005)
    (tn, fp), (fn, tp) = curves["confusion_matrix"]
    predicted = scores >= 0.5
    assert (tp, fp, fn, tn) == (int(np.sum(predicted & (labels == 1))), int(np.sum(predicted & (labels == 0))),
                                int(np.sum(~predicted & (labels == 1))), int(np.sum(~predicted & (labels == 0))))
    assert curves["classes"] == ["no repeat order", "repeat order"]


def test_spend_is_judged_by_its_aggregate_and_the_lift_of_its_top_decile() -> None:
    from storeflow.components.evaluate.metrics import decile_lift, spend_metrics

    actual = np.array([0.0] * 90 + [100.0] * 10)  # ten customers spend everything
    perfect = spend_metrics(actual, actual * 1.1)
    assert perfect["spend_aggregate_error"] == pytest.approx(0.1) and perfect["spend_actual"] == 1000
    assert perfect["spend_top_decile_lift"] == pytest.approx(10.0)  # the top tenth holds all the spend
    assert perfect["spend_mae"] == pytest.approx(1.0)
    flat = spend_metrics(actual, np.full(100, 10.0))  # the right total, no ranking at all
    assert flat["spend_aggregate_error"] == pytest.approx(0.0) and flat["spend_top_decile_lift"] == pytest.approx(1.0)
    backwards = decile_lift(actual, -actual)
    assert backwards[0] == 0 and backwards[-1] == pytest.approx(10.0) and len(backwards) == 10


def test_the_spend_baseline_is_reported_beside_the_classification_metrics() -> None:
    import pandas as pd

    from storeflow.components.evaluate import EvaluationResult, baseline_spend, side_by_side
    from storeflow.components.evaluate.report import markdown
    from storeflow.components.features.btyd import SPEND_BASELINE

    frame = pd.DataFrame({"label_spend": [0.0, 50.0, 150.0, 0.0], SPEND_BASELINE: [10.0, 40.0, 120.0, 5.0]})
    spend = baseline_spend(frame)
    assert spend["bgnbd_gamma_gamma"]["spend_aggregate_error"] == pytest.approx(175 / 200 - 1)
    assert baseline_spend(frame.drop(columns=SPEND_BASELINE)) == {}
    result = EvaluationResult(True, "first model", {"roc_auc": 0.8}, None, None, None, spend_metrics=spend)
    assert side_by_side(result)["spend_bgnbd_gamma_gamma_aggregate_error"] == pytest.approx(-0.125)
    assert "175 predicted vs 200 actual (-12.5%)" in markdown(result)
    assert EvaluationResult.from_json(result.to_json()) == result


def test_the_bootstrap_scores_each_resample_as_scikit_learn_does_with_ties_and_unsampled_rows() -> None:
    """paired_bootstrap ranks the holdout once (metrics.Presorted) instead of sorting it per resample; each
    resample's ROC-AUC and average precision must still be scikit-learn's, ties and zero weights included."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from storeflow.components.evaluate.metrics import Presorted

    rng = np.random.default_rng(7)
    labels = (rng.random(3_000) < 0.15).astype(int)
    scores = np.round(rng.random(3_000) + 0.4 * labels, 2)  # many tied scores
    ranked = Presorted(labels, scores)
    for _ in range(5):
        weights = rng.multinomial(len(labels), np.full(len(labels), 1 / len(labels))).astype(float)
        assert ranked.roc_auc(weights) == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights), abs=1e-12)
        assert ranked.average_precision(weights) == pytest.approx(
            average_precision_score(labels, scores, sample_weight=weights), abs=1e-12)


@pytest.mark.slow
def test_a_champion_whose_model_files_are_gone_keeps_its_place_and_the_challenger_is_registered(settings) -> None:
    """Its files deleted (a pruned artifact store), every training run failed at evaluate with MLflow's
    'No such artifact' and its challenger was never registered."""
    import shutil
    from urllib.parse import urlparse

    from conftest import small_store, write_snapshot
    from storeflow.components import tracking
    from storeflow.components.evaluate import evaluate
    from storeflow.components.features import build_features
    from storeflow.components.register import register
    from storeflow.components.train import train

    features = build_features(settings, write_snapshot(small_store(customers=120, days=360),
                                                       settings.data_dir / "snapshots" / "s1"))
    first = train(settings, features)
    champion = register(settings, first, evaluate(settings, features, first)).version
    client, name = tracking.connect(settings), settings.registry.model_name
    files = urlparse(client.get_model_version_download_uri(name, champion)).path
    shutil.rmtree(files)

    second = train(settings, features)
    judged = evaluate(settings, features, second)
    assert not judged.promote and judged.champion_version == champion
    assert judged.reason.startswith(f"champion v{champion}'s model could not be loaded from file://{files} ("), judged.reason
    registered = register(settings, second, judged)
    assert not registered.promoted and tracking.current_champion(client, name) == champion
    assert str(client.get_model_version_by_alias(name, tracking.CHALLENGER).version) == registered.version
