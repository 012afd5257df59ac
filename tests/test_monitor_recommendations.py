"""The recommender in monitoring: click-through rate per model version in the report, the metrics and
`storeflow monitor`'s summary, and a CTR drop or item-popularity drift starting the recommendations pipeline
once per window, from logs in the format the recommender server writes (answers and feedback events)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from storeflow.components.monitor import monitor, retrain_if_needed, retrain_recommender_if_needed
from storeflow.components.monitor.recommendations import popularity_psi

END = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)
GID = "gid://shopify/Product/"


def _traffic(settings, name: str, start: datetime, hours: float, answers: int, version: str, ctr: float,
             products: np.ndarray, seed: int) -> None:
    """``answers`` recommendation answers of ``version`` spread over ``hours`` from ``start``, each shown
    (an impression) and clicked with probability ``ctr``, baskets drawn from ``products``."""
    rng = np.random.default_rng(seed)
    root = settings.project.state_dir / "recommendations"
    (root / "predictions").mkdir(parents=True, exist_ok=True)
    (root / "feedback").mkdir(parents=True, exist_ok=True)
    with open(root / "predictions" / f"predictions-{name}.jsonl", "a") as shown, \
            open(root / "feedback" / f"predictions-{name}.jsonl", "a") as events:
        for i in range(answers):
            ts = (start + timedelta(hours=hours * (i + 0.5) / answers)).isoformat()
            request_id = f"{seed:08x}{i:024x}"
            basket = [int(p) for p in rng.choice(products, 2, replace=False)]
            recommended = [int(p) + 1_000 for p in basket] + [9_999]
            shown.write(json.dumps({"ts": ts, "request_id": request_id, "model_name": "storeflow-recommendations",
                                    "model_version": version, "basket": basket, "products": recommended}) + "\n")
            event = {"ts": ts, "request_id": request_id, "model_version": version,
                     "products": [f"{GID}{p}" for p in recommended]}
            events.write(json.dumps({**event, "event": "impression", "product": None}) + "\n")
            if rng.random() < ctr:
                events.write(json.dumps({**event, "event": "click", "product": f"{GID}{recommended[0]}"}) + "\n")


def _week_then_day(settings, *, ctr_now: float, products_now: np.ndarray, answers_now: int = 1_500) -> None:
    catalog = np.arange(1, 201)
    _traffic(settings, "baseline", END - timedelta(hours=24 + 168), 168, 6_000, "1", 0.10, catalog, 1)
    _traffic(settings, "window", END - timedelta(hours=24), 24, answers_now, "2", ctr_now, products_now, 2)


def _fake_launchers(calls: list):
    return {"local": lambda settings: calls.append(settings.recommendations.model_name) or {"run": "recommend"}}


def test_ctr_per_version_is_in_the_report_the_metrics_and_the_summary(settings):
    _week_then_day(settings, ctr_now=0.095, products_now=np.arange(1, 201))
    result = monitor(settings, end=END, log_to_mlflow=False)
    part = result.summary["recommendations"]
    assert part["status"] == "analysed" and part["level"] == "ok" and part["model_version"] == "2", part
    (row,) = part["ctr"]
    assert row["model_version"] == "2" and row["answers"] == row["impressions"] == 1_500
    assert 0.07 < row["ctr"] < 0.12 and row["clicks"] == round(row["ctr"] * 1_500)
    assert [r["model_version"] for r in part["baseline_ctr"]] == ["1"]
    page = result.report_html.read_text()
    assert "recommendations" in page and f"{row['ctr']:.2%}" in page
    metrics = open(result.metrics_target).read()
    assert f'storeflow_recommendation_window_ctr{{model_version="2"}} {row["ctr"]}' in metrics
    calls: list = []
    assert not retrain_recommender_if_needed(settings, result.summary, _fake_launchers(calls)).started
    assert calls == []


def test_a_ctr_drop_starts_the_recommendations_pipeline_once_per_window(settings):
    _week_then_day(settings, ctr_now=0.03, products_now=np.arange(1, 201))
    result = monitor(settings, end=END, log_to_mlflow=False)
    part = result.summary["recommendations"]
    assert part["ctr_level"] == "critical" and part["level"] == "critical", part
    assert 0.5 < part["ctr_drop"] < 0.9
    assert any("click-through rate of v2" in reason for reason in part["reasons"])
    assert result.summary["level"] == "ok"  # the propensity model's verdict is its own
    assert "storeflow_recommendation_monitor_level{model_version=\"2\"} 2.0" in open(result.metrics_target).read()
    calls: list = []
    first = retrain_recommender_if_needed(settings, result.summary, _fake_launchers(calls))
    again = retrain_recommender_if_needed(settings, result.summary, _fake_launchers(calls))
    assert first.started and not again.started and calls == ["storeflow-recommendations"]
    assert "storeflow-recommendations-v2-" in first.marker
    propensity: list = []
    assert not retrain_if_needed(settings, result.summary, _fake_launchers(propensity)).started and propensity == []


def test_item_popularity_drift_starts_the_recommendations_pipeline(settings):
    _week_then_day(settings, ctr_now=0.10, products_now=np.arange(500, 560))  # shoppers look at other products
    part = monitor(settings, end=END, log_to_mlflow=False).summary["recommendations"]
    assert part["ctr_level"] == "ok" and part["popularity_level"] == "critical", part
    assert part["popularity_psi"] > settings.monitor.psi_critical
    calls: list = []
    assert retrain_recommender_if_needed(settings, {"recommendations": part}, _fake_launchers(calls)).started


def test_too_few_impressions_or_no_baseline_gives_no_ctr_verdict(settings):
    quiet = settings.monitor.model_copy(update={"ctr_min_impressions": 5_000})
    settings = settings.model_copy(update={"monitor": quiet})
    _week_then_day(settings, ctr_now=0.01, products_now=np.arange(1, 201))
    part = monitor(settings, end=END, log_to_mlflow=False).summary["recommendations"]
    assert part["ctr_drop"] is None and part["ctr_level"] == "ok"
    assert any("ctr_min_impressions" in note for note in part["notes"])


def test_no_recommendation_logs_is_no_data_not_an_error(settings):
    part = monitor(settings, end=END, log_to_mlflow=False).summary["recommendations"]
    assert part["status"] == "no-data" and part["level"] == "ok"


def test_popularity_psi_is_zero_for_the_same_mix_and_large_for_another():
    same = pd.Series(np.repeat(np.arange(10), 50))
    assert popularity_psi(same, same.value_counts(), 5) == pytest.approx(0.0, abs=1e-6)
    assert popularity_psi(pd.Series(np.repeat(np.arange(20, 30), 50)), same.value_counts(), 5) > 1.0
    assert popularity_psi(pd.Series([], dtype="int64"), same.value_counts(), 5) is None


def test_item_popularity_is_judged_against_the_served_versions_training_purchases(settings, monkeypatch):
    """With the served version's training popularity (popularity.npy), the window's baskets are compared
    with it, not with the week before: baskets like the training purchases are ok even when last week's
    traffic looked elsewhere, and baskets unlike them are critical and start the recommendations pipeline."""
    from storeflow.components.monitor import recommendations

    trained = pd.Series(np.full(60, 40), index=np.arange(500, 560))  # the model learned products 500..559
    monkeypatch.setattr(recommendations, "training_popularity", lambda settings, version: (
        trained, f"storeflow-recommendations v{version}'s training purchases"))
    _week_then_day(settings, ctr_now=0.10, products_now=np.arange(500, 560))  # the week before: 1..200
    part = monitor(settings, end=END, log_to_mlflow=False).summary["recommendations"]
    assert part["popularity_level"] == "ok" and part["popularity_psi"] < settings.monitor.psi_warning, part
    assert part["popularity_baseline"] == "storeflow-recommendations v2's training purchases"

    shifted = pd.Series(np.full(200, 40), index=np.arange(1, 201))  # it learned 1..200; shoppers ask for 500..559
    monkeypatch.setattr(recommendations, "training_popularity", lambda settings, version: (shifted, "training"))
    part = monitor(settings, end=END, log_to_mlflow=False).summary["recommendations"]
    assert part["popularity_level"] == "critical" and "drifted from training" in " ".join(part["reasons"]), part
    calls: list = []
    assert retrain_recommender_if_needed(settings, {"recommendations": part}, _fake_launchers(calls)).started


def test_a_model_keeps_its_training_popularity(tmp_path):
    from scipy import sparse

    from storeflow.components.recommend.model import ItemItem

    bought = sparse.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [1, 0, 1]], dtype=float))
    model = ItemItem.fit(bought, np.array([11, 12, 13]))
    assert model.popularity.tolist() == [3, 1, 1]
    assert ItemItem.load(model.save(tmp_path / "m")).popularity.tolist() == [3, 1, 1]


def test_storeflow_monitor_prints_ctr_and_starts_the_recommendations_pipeline_not_training(settings, tmp_path,
                                                                                          monkeypatch):
    """`storeflow monitor --in-process`: the CTR table per version and the recommender's retraining, through
    the recommendations launcher (the training launcher is not called: the propensity model has no data)."""
    from typer.testing import CliRunner

    from storeflow.pipelines import retraining
    from storeflow.pipelines.cli import app

    started: list[str] = []
    monkeypatch.setitem(retraining._LAUNCH, "recommendations-local", lambda s: started.append("recommend") or {})
    monkeypatch.setitem(retraining._LAUNCH, "local", lambda s: started.append("train") or {})
    _week_then_day(settings, ctr_now=0.03, products_now=np.arange(1, 201))
    config = tmp_path / "storeflow.yaml"
    config.write_text(settings.to_json())
    result = CliRunner().invoke(app, ["monitor", "--in-process", "--config", str(config),
                                      "--window-end", END.strftime("%Y-%m-%dT%H:%M:%S")])
    assert result.exit_code == 0, result.output
    assert "recommendations v2" in result.output and "CTR" in result.output
    assert "recommender retraining: started" in result.output
    assert started == ["recommend"]
    # the verdict's colour is a style, not rich markup printed as it is (the console reads no markup)
    assert re.search(r"status [\w-]+ · (ok|warning|critical)$", result.output, re.M), result.output
    assert not re.search(r"\[/?(red|green|yellow|bold)\]", result.output), result.output


def test_a_baseline_without_clicks_is_named_not_divided_by(settings):
    catalog = np.arange(1, 201)
    _traffic(settings, "baseline", END - timedelta(hours=24 + 168), 168, 2_000, "1", 0.0, catalog, 1)
    _traffic(settings, "window", END - timedelta(hours=24), 24, 1_000, "1", 0.05, catalog, 2)
    part = monitor(settings, end=END, log_to_mlflow=False).summary["recommendations"]
    assert part["ctr_drop"] is None and part["ctr_level"] == "ok"
    assert any("no clicks" in note for note in part["notes"]), part["notes"]


def test_a_click_in_the_window_on_an_answer_just_before_it_counts(settings):
    """Answered a minute before the window opened, shown and clicked inside it: that answer's version gets the
    impression and the click, not an 'unjoined' event."""
    _week_then_day(settings, ctr_now=0.10, products_now=np.arange(1, 201))
    root = settings.project.state_dir / "recommendations"
    request_id, opened = "f" * 32, END - timedelta(hours=24)
    shown = [11, 12]
    with open(root / "predictions" / "predictions-edge.jsonl", "w") as answers:
        answers.write(json.dumps({"ts": (opened - timedelta(minutes=1)).isoformat(), "request_id": request_id,
                                  "model_version": "2", "basket": [1], "products": shown}) + "\n")
    with open(root / "feedback" / "predictions-edge.jsonl", "w") as events:
        for kind, product in (("impression", None), ("click", f"{GID}11")):
            events.write(json.dumps({"ts": (opened + timedelta(minutes=1)).isoformat(), "request_id": request_id,
                                     "model_version": "2", "event": kind, "product": product}) + "\n")
    part = monitor(settings, end=END, log_to_mlflow=False).summary["recommendations"]
    (row,) = part["ctr"]
    assert row["unjoined"] == 0 and row["impressions"] == 1_501 and row["answers"] == 1_500
