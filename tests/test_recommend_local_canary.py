"""The recommender on the local deploy target: a later champion is canaried against the one it replaces on two
real `storeflow serve-recommendations` servers, with replayed shoppers of the snapshot (their earlier order as
the cart, a click when a shown product is one they bought next), judged by the same `decide()` as the KServe
path on errors, p99 latency and click-through rate; the outcome moves the champion alias and is recorded."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import write_snapshot
from storeflow.components import tracking
from storeflow.components.config import SyntheticStoreConfig, load_settings
from storeflow.components.deploy.local import rollouts
from storeflow.components.ingest.bulk_jsonl import read_bulk_jsonl
from storeflow.components.ingest.synthetic import generate_store
from storeflow.components.recommend import evaluate_recommenders, fit_recommender
from storeflow.components.recommend.deploy import deploy_recommender, recommender_settings
from storeflow.components.recommend.local_canary import feedback_counts, shoppers
from storeflow.components.recommend.registry import register_recommender
from storeflow.components.tables import snapshot_dir

pytestmark = pytest.mark.slow

NAME = "storeflow-recommendations"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A snapshot under the state dir (the shoppers replayed) and a registered first champion (v1)."""
    root = tmp_path_factory.mktemp("recommender-canary")
    settings = load_settings({
        "project": {"state_dir": str(root / "state")},
        "recommendations": {"bootstrap_samples": 200},
        # quick steps: a step holds until each version has min_requests and min_impressions; the p99 bounds
        # are for a shared 2-core runner, where a request's p99 is its slowest few
        "deploy": {"target": "local", "canary_steps": [10, 50, 100], "min_requests": 50, "min_impressions": 50,
                   "local_requests_per_step": 600, "max_p99_latency_ratio": 4.0,
                   "min_p99_latency_increase_seconds": 0.5, "local_start_timeout_seconds": 240}})
    tables = read_bulk_jsonl([generate_store(SyntheticStoreConfig(customers=1500, orders=15000, products=150),
                                             root / "store.jsonl")])
    write_snapshot(tables, snapshot_dir(settings.data_dir, "canary-test"))
    report = evaluate_recommenders(tables, settings.recommendations)
    assert report.beats_baselines, report.summary()
    first = register_recommender(settings, fit_recommender(tables, settings.recommendations).save(root / "v1"),
                                 report, tables)
    assert first.promoted and first.version == "1"
    assert deploy_recommender(settings, _registration(first))["outcome"] == "promoted-locally"  # nothing to canary
    return settings, tables, report, root


def _registration(registered) -> dict:
    return {"model_name": registered.model_name, "version": registered.version, "promoted": registered.promoted,
            "run_id": registered.run_id, "previous_champion": registered.previous_champion}


def _champion(settings) -> str:
    return str(tracking.connect(settings).get_model_version_by_alias(NAME, "champion").version)


def test_shoppers_are_an_earlier_order_and_what_they_bought_next():
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    orders = pd.DataFrame({"order_id": [1, 2, 3, 4], "customer_id": [7, 7, 7, 8],
                           "created_at": [t0 + timedelta(days=d) for d in (0, 5, 9, 1)], "cancelled_at": pd.NaT})
    items = pd.DataFrame({"order_id": [1, 2, 2, 3, 3, 4], "product_id": [10, 11, 12, 12, 13, 10]})
    (one,) = shoppers({"orders": orders, "line_items": items})  # 8 has one order: nothing to replay
    assert one.basket == [11, 12] and one.wants == {13}  # 12 again is not a click on a recommendation


def test_a_challenger_as_good_as_the_champion_goes_through_every_step_and_is_promoted(store):
    settings, tables, report, root = store
    model = fit_recommender(tables, settings.recommendations).save(root / "v2")
    registered = register_recommender(settings, model, report, tables)
    assert registered.promoted and registered.previous_champion == "1"

    outcome = deploy_recommender(settings, _registration(registered))

    assert outcome["outcome"] == "promoted", outcome
    judged = [s for s in outcome["steps"] if s["action"] != "hold"]
    assert [(s["percent"], s["action"]) for s in judged] == [(10, "advance"), (50, "promote")]
    for step in judged:  # both versions served, were shown and clicked, and made no errors
        assert step["canary_impressions"] >= 50 and step["champion_impressions"] >= 50
        assert step["canary_error_rate"] == 0 and step["champion_error_rate"] == 0
        assert step["canary_ctr"] > 0.05 and step["champion_ctr"] > 0.05
    assert _champion(settings) == registered.version
    ours = recommender_settings(settings)
    assert rollouts(ours)[-1]["outcome"] == "promoted" and rollouts(ours)[-1]["previous_champion"] == "1"
    tags = tracking.connect(settings).get_model_version(NAME, registered.version).tags
    assert tags["storeflow.deploy.state"] == "promoted" and tags["storeflow.deploy.target"] == "local"


def test_a_challenger_shoppers_click_less_is_rolled_back_on_click_through_rate(store):
    """Fit on purchases whose products were shuffled: it serves as fast and as error-free as the champion,
    but recommends what shoppers did not go on to buy."""
    settings, tables, report, root = store
    previous = _champion(settings)
    shuffled = dict(tables)
    items = tables["line_items"].copy()
    ids = items["product_id"].dropna().unique()
    swap = dict(zip(ids, np.random.default_rng(7).permutation(ids)))
    items["product_id"] = items["product_id"].map(swap)
    shuffled["line_items"] = items
    model = fit_recommender(shuffled, settings.recommendations).save(root / "shuffled")
    registered = register_recommender(settings, model, report, tables)  # the gate judged the settings, not this
    assert registered.promoted

    outcome = deploy_recommender(settings, _registration(registered))

    assert outcome["outcome"] == "rolled-back", outcome
    last = outcome["steps"][-1]
    assert last["percent"] == 10 and last["canary_error_rate"] == 0
    assert last["canary_ctr"] < last["champion_ctr"] / 2
    assert any("click-through" in reason or "CTR" in reason for reason in outcome["reasons"]), outcome["reasons"]
    assert _champion(settings) == previous  # the alias went back
    tags = tracking.connect(settings).get_model_version(NAME, registered.version).tags
    assert tags["storeflow.deploy.state"] == "rolled-back"
    assert json.loads(tags["storeflow.deploy.steps"])[-1]["action"] == "rollback"
    assert rollouts(recommender_settings(settings))[-1]["outcome"] == "rolled-back"


def test_the_servers_feedback_counters_are_read_per_version():
    text = "\n".join([
        "# TYPE storeflow_recommendation_impressions_total counter",
        'storeflow_recommendation_impressions_total{model_version="2"} 40',
        'storeflow_recommendation_impressions_total{model_version="unknown"} 3',
        "# TYPE storeflow_recommendation_clicks_total counter",
        'storeflow_recommendation_clicks_total{model_version="2"} 6',
        ""])
    assert feedback_counts(text) == {"2": (40.0, 6.0), "unknown": (3.0, 0.0)}
