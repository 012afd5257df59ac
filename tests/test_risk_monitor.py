"""Monitoring covers order risk: the risk server's prediction log reaches the object store, and the monitoring
report judges its score and feature drift (Evidently), its alert rate against the holdout's, and its decay once
dispute labels have matured; a critical verdict starts the risk pipeline once per version and window."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from storeflow.components.config import RiskConfig, load_settings
from storeflow.components.ingest import ingest
from storeflow.components.monitor import monitor
from storeflow.components.monitor.retrain import retrain_risk_if_needed
from storeflow.components.monitor.risk import RiskReference, decay, judge_alerts, risk_window
from storeflow.components.prediction_logs import LogStore
from storeflow.components.risk import model as risk_model
from storeflow.components.risk.assess import Levels
from storeflow.components.risk.features import ORDER_FEATURES
from storeflow.components.risk.stage import risk_rows, train_and_register
from tests.conftest import quick_overrides

STORE = {"customers": 2_000, "orders": 24_000, "products": 80, "seed": 31, "fraud_rate": 0.006}
QUICK = RiskConfig(params={**RiskConfig().params, "max_iter": 100}, bootstrap_samples=100)


def test_alert_rate_is_judged_either_way_at_95_percent_confidence():
    twice = judge_alerts(240, 2_000, 0.05, 1.5, 2.0)  # 12 % held against 5 % on the holdout
    assert twice["level"] == "critical" and twice["direction"] == "more" and twice["ratio"] >= 2.0
    assert judge_alerts(110, 2_000, 0.05, 1.5, 2.0)["level"] == "ok"  # 5.5 %: noise
    assert judge_alerts(8, 100, 0.05, 1.5, 2.0)["level"] == "ok"  # 8 % of 100 orders: too few to say
    fewer = judge_alerts(10, 2_000, 0.05, 1.5, 2.0)  # 0.5 %: the model stopped holding orders
    assert fewer["level"] == "critical" and fewer["direction"] == "fewer"


def test_decay_compares_matured_pr_auc_and_recall_with_the_holdout(tmp_path):
    settings = load_settings(quick_overrides(tmp_path))
    rng = np.random.default_rng(0)
    labels = (rng.random(3_000) < 0.02).astype(int)
    reference = RiskReference("1", "run", pd.DataFrame(), Levels(0.9, 0.5),
                              {"pr_auc": 0.6, "recall_at_1pct_fpr": 0.5})
    good = decay(pd.DataFrame({"score": labels * 0.9 + rng.random(3_000) * 0.2, "fraud": labels}), reference,
                 settings)
    assert good["status"] == "measured" and good["level"] == "ok" and good["pr_auc"] > 0.6
    lost = decay(pd.DataFrame({"score": rng.random(3_000), "fraud": labels}), reference, settings)
    assert lost["level"] == "critical" and lost["pr_auc_drop"] > 0.2 and lost["recall_level"] == "critical"
    few = decay(pd.DataFrame({"score": rng.random(300), "fraud": np.r_[np.ones(3), np.zeros(297)]}), reference,
                settings)
    assert few["status"] == "awaiting-labels" and "need 200 and 10 fraud" in few["reason"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A risk champion trained on a synthetic store with fraud, whose server scored the holdout's orders and
    shipped its log to the object store (a path here; S3 in tests/test_prediction_log_store.py)."""
    from storeflow.serving.risk import RiskPredictor, prediction_log, resolve

    root = tmp_path_factory.mktemp("risk-monitor")
    config = quick_overrides(root, ingest={"source": "synthetic", "synthetic": STORE},
                             serving={"prediction_log_store": str(root / "bucket" / "logs")})
    settings = load_settings(config)
    snapshot = ingest(settings).snapshot
    rows = risk_rows(snapshot)
    result = train_and_register(settings, rows, QUICK)
    assert result.promoted, result.reason
    version, model_dir = resolve(settings)
    holdout = risk_model.time_split(rows, QUICK).holdout

    def score(frame: pd.DataFrame) -> None:
        log = prediction_log(settings)
        model = RiskPredictor(settings.risk.inference_service, model_dir, version, log)
        model.load()

        async def send():
            for at in range(0, len(frame), 256):
                part = frame.iloc[at:at + 256]
                payload = {"instances": [{"order_id": str(row.order_id), **{c: float(getattr(row, c))
                                                                             for c in ORDER_FEATURES}}
                                         for row in part.itertuples()]}
                await model.postprocess(await model.predict(await model.preprocess(payload)))

        asyncio.run(send())
        log.close()

    return settings, snapshot, holdout, score


def test_the_risk_log_is_shipped_to_its_own_folder_of_the_store(served):
    settings, _, holdout, score = served
    score(holdout.head(300))
    store = LogStore(settings.serving.prediction_log_store + "/risk")
    records = [json.loads(line) for _, line in store.records()]
    assert len(records) >= 300 and set(records[0]["features"]) == set(ORDER_FEATURES)
    assert not LogStore(settings.serving.prediction_log_store).logs()  # propensity's folder holds none of it
    assert not list((settings.project.state_dir / "risk" / "predictions").glob("*.jsonl"))  # left the pod


def test_served_holdout_traffic_is_ok_and_decay_is_measured_on_matured_labels(served):
    settings, snapshot, holdout, score = served
    for log in LogStore(settings.serving.prediction_log_store + "/risk").logs():
        LogStore(settings.serving.prediction_log_store + "/risk").delete(log.name)
    score(holdout)
    now = datetime.now(timezone.utc)
    window = risk_window(settings, now - timedelta(hours=1), now + timedelta(minutes=1), snapshot).summary
    assert window["status"] == "analysed" and window["rows"]["window"] == len(holdout)
    assert window["alerts"]["level"] == "ok" and window["drift"]["prediction"]["level"] == "ok"
    assert window["level"] == "ok", window["reasons"]
    # 91 days on, the same predictions are past risk.maturity_days: judged against the snapshot's labels
    later = now + timedelta(days=settings.risk.maturity_days, hours=1)
    aged = risk_window(settings, later - timedelta(hours=24), later, snapshot).summary
    assert aged["decay"]["status"] == "measured", aged["decay"]
    assert aged["decay"]["labelled"] == len(holdout) and aged["decay"]["pr_auc"] == pytest.approx(
        aged["decay"]["holdout_pr_auc"], abs=1e-9)  # the very holdout orders: the holdout's own PR-AUC
    assert aged["decay"]["level"] == "ok"


def test_a_flood_of_risky_orders_is_critical_in_the_report_and_starts_the_risk_pipeline_once(served, tmp_path):
    settings, snapshot, holdout, score = served
    store = LogStore(settings.serving.prediction_log_store + "/risk")
    for log in store.logs():
        store.delete(log.name)
    # a card-testing wave: new accounts, shipping abroad, several orders an hour to one address
    shifted = holdout.head(2_000).assign(country_mismatch=1.0, account_age_hours=0.2, prior_orders=0.0,
                                         address_orders_1h=4.0, address_orders_24h=9.0, customer_orders_1h=3.0)
    score(shifted)
    result = monitor(settings, snapshot=snapshot, out_dir=tmp_path, publish=False, log_to_mlflow=False)
    risk = result.summary["risk"]
    assert risk["status"] == "analysed" and risk["level"] == "critical"
    assert risk["alerts"]["direction"] == "more" and risk["alerts"]["level"] == "critical"
    assert any("scored HIGH or MEDIUM" in r for r in risk["reasons"])
    assert any("risk score PSI" in r for r in risk["reasons"])
    page = result.report_html.read_text()
    assert "order risk · storeflow-order-risk v1" in page and (result.report_html.parent / "risk.html").exists()
    started = []
    launchers = {"local": lambda s: started.append(s) or {"run": "risk"}}
    first = retrain_risk_if_needed(settings, result.summary, launchers)
    again = retrain_risk_if_needed(settings, result.summary, launchers)
    assert first.started and "storeflow-order-risk-v1-" in first.marker and not again.started and len(started) == 1
