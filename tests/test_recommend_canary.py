"""A recommender canary is judged on click-through rate beside errors and latency: each version's impressions
and clicks in the analysis window come from the recommender's feedback log (joined to its answers), and
the canary analysis rolls back a canary whose CTR drops below the champion's and promotes one that holds.

The rollout is storeflow's own loop (:func:`storeflow.components.deploy.rollout.run`) against the loopback
KServe API and Prometheus stubs of test_deploy (their recorded InferenceService stands in for the
recommender's: the writes are the same kind); no cluster is involved."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from test_deploy import HEALTHY, V4, Recorder, cluster, recorded  # noqa: F401 - cluster is a fixture

from storeflow.components.deploy import rollout
from storeflow.components.deploy.analysis import decide
from storeflow.components.deploy.prometheus import VersionMetrics
from storeflow.components.recommend.canary import RecommenderCanaryMetrics, window_seconds

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


def feedback(ctr: dict[str, float], impressions: int = 2000, minutes_ago: float = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Answers and their impression and click events per version, ``ctr`` of the impressions clicked."""
    answers, events = [], []
    stamp = (NOW - timedelta(minutes=minutes_ago)).isoformat()
    for version, rate in ctr.items():
        clicks = round(impressions * rate)
        for n in range(impressions):
            request = f"{version}{n:031x}"[-32:]
            answers.append({"ts": stamp, "request_id": request, "model_version": version, "products": [7, 8]})
            events.append({"ts": stamp, "request_id": request, "model_version": version, "event": "impression",
                           "product": None})
            if n < clicks:
                events.append({"ts": stamp, "request_id": request, "model_version": version, "event": "click",
                               "product": "gid://shopify/Product/8"})
    return pd.DataFrame(answers), pd.DataFrame(events)


def served(impressions=None, clicks=None) -> VersionMetrics:
    return VersionMetrics(1000, 0.001, 0.01, (), impressions, clicks)


@pytest.fixture
def policy(settings):
    settings.deploy.canary_steps = [10, 50, 100]
    settings.deploy.max_holds_per_step = 3
    settings.deploy.max_ctr_drop = 0.1
    settings.deploy.min_impressions = 500
    settings.deploy.analysis_window = "5m"
    return settings


def test_a_ctr_drop_rolls_back_and_a_held_ctr_advances(policy):
    dropped = decide(policy, 10, 0, served(2000, 100), served(2000, 200))  # 5 % against 10 %
    assert dropped.action == "rollback"
    assert "click-through rate 5.00% is 50% below champion's 10.00%" in dropped.reasons[0]
    assert decide(policy, 10, 0, served(2000, 196), served(2000, 200)).action == "advance"  # 2 % lower: holds
    assert decide(policy, 50, 0, served(2000, 260), served(2000, 200)).action == "promote"  # better


def test_a_drop_within_noise_or_within_the_bound_is_not_a_rollback(policy):
    assert decide(policy, 10, 0, served(600, 45), served(600, 60)).action == "advance"  # 25 % lower, p > 0.05
    assert decide(policy, 10, 0, served(20000, 1820), served(20000, 2000)).action == "advance"  # 9 %: within


def test_too_few_impressions_hold_and_no_score_histogram_is_needed(policy):
    held = decide(policy, 10, 0, served(120, 12), served(2000, 200))
    assert held.action == "hold" and held.reasons == ("canary had 120 impressions in 5m, fewer than 500",)
    assert decide(policy, 10, 2, served(120, 12), served(2000, 200)).action == "rollback"  # held too long


def test_errors_and_latency_still_count_for_a_recommender(policy):
    failing = VersionMetrics(1000, 0.2, 0.01, (), 2000, 200)
    assert decide(policy, 10, 0, failing, served(2000, 200)).action == "rollback"


def test_the_window_reads_only_recent_feedback(policy):
    metrics = RecommenderCanaryMetrics(_Prometheus(), lambda: feedback({"4": 0.05}, minutes_ago=30),
                                       clock=lambda: NOW)
    assert metrics.version_metrics(policy, "4").impressions == 0  # half an hour ago: outside 5m
    metrics = RecommenderCanaryMetrics(_Prometheus(), lambda: feedback({"4": 0.05}), clock=lambda: NOW)
    found = metrics.version_metrics(policy, "4")
    assert (found.impressions, found.clicks, found.score_buckets, found.requests) == (2000, 100, (), 1800)
    with pytest.raises(ValueError, match="analysis_window"):
        window_seconds("5 minutes")


class _Prometheus:
    def version_metrics(self, settings, version):
        return VersionMetrics(1800, 0.005, 0.08, ((1.0, 1800.0),))


@pytest.mark.parametrize("canary_ctr, outcome, actions", [
    (0.05, "rolled-back", ["rollback"]),
    (0.099, "promoted", ["advance", "promote"]),
])
def test_a_recommender_rollout_is_decided_by_ctr(policy, cluster, canary_ctr, outcome, actions):  # noqa: F811
    kube, isvcs, prom = cluster(recorded("Serverless"), versions={"3": HEALTHY, "4": HEALTHY})
    logs = feedback({"3": 0.10, "4": canary_ctr})
    record = Recorder()
    result = rollout.run(isvcs, RecommenderCanaryMetrics(prom, lambda: logs, clock=lambda: NOW), policy, V4,
                         "run-7", sleep=lambda s: None, record=record)
    assert result.outcome == outcome
    assert [s["action"] for s in result.steps] == actions
    if outcome == "rolled-back":
        assert "click-through rate 5.00% is 50% below champion's 10.00%" in result.reasons[0]
        assert kube.obj["metadata"]["annotations"]["storeflow.io/rollout-state"] == "rolled-back"
        assert ("4", {"storeflow.deploy.state": "rolled-back", "storeflow.deploy.reason": result.reasons[0]}) in record.tags
    else:
        assert record.tags == [("4", {"storeflow.deploy.state": "promoted"})]
