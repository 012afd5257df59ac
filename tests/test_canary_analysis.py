"""The canary decision: every branch of :func:`decide` and the score-shift index it uses."""

from __future__ import annotations

import dataclasses
import math

import pytest

from storeflow.components.deploy.analysis import Decision, decide, score_psi
from storeflow.components.deploy.prometheus import VersionMetrics

LE = (0.25, 0.5, 0.75, float("inf"))


def hist(*shares: float, total: float = 1000) -> tuple[tuple[float, float], ...]:
    running, out = 0.0, []
    for le, share in zip(LE, shares):
        running += share * total
        out.append((le, running))
    return tuple(out)


def metrics(requests=1000, error_rate=0.01, p99=0.1, scores=(0.25, 0.25, 0.25, 0.25)) -> VersionMetrics:
    return VersionMetrics(requests, error_rate, p99, hist(*scores, total=requests) if scores else ())


CHAMPION = metrics()


@pytest.fixture
def policy(settings):
    settings.deploy.canary_steps = [10, 50, 100]
    settings.deploy.min_requests = 200
    settings.deploy.max_holds_per_step = 3
    settings.deploy.max_error_rate_increase = 0.01
    settings.deploy.max_p99_latency_ratio = 1.25
    settings.deploy.max_score_psi = 0.2
    return settings


def test_healthy_canary_advances_to_next_step(policy):
    assert decide(policy, 10, 0, metrics(), CHAMPION) == Decision("advance", 50, ("canary within bounds at 10%",))


def test_healthy_canary_at_last_step_before_100_is_promoted(policy):
    assert decide(policy, 50, 2, metrics(), CHAMPION).action == "promote"
    assert decide(policy, 50, 2, metrics(), CHAMPION).percent == 100


def test_steps_come_from_config(policy):
    policy.deploy.canary_steps = [5, 25, 100]
    assert decide(policy, 5, 0, metrics(), CHAMPION).percent == 25
    assert decide(policy, 25, 0, metrics(), CHAMPION).action == "promote"


@pytest.mark.parametrize("who", ["canary", "champion"])
def test_too_few_requests_holds(policy, who):
    few = metrics(requests=199)
    canary, champion = (few, CHAMPION) if who == "canary" else (metrics(), few)
    decision = decide(policy, 10, 0, canary, champion)
    assert decision.action == "hold" and decision.percent == 10
    assert decision.reasons == (f"{who} served 199 requests in 5m, fewer than 200",)


def test_exactly_min_requests_is_enough(policy):
    assert decide(policy, 10, 0, metrics(requests=200), CHAMPION).action == "advance"


@pytest.mark.parametrize(
    ("canary", "reason"),
    [
        (metrics(error_rate=None), "canary has no error rate data"),
        (metrics(p99=None), "canary has no p99 latency data"),
        (metrics(scores=()), "no prediction-score histogram for both versions"),
        (metrics(scores=(0, 0, 0, 0)), "no prediction-score histogram for both versions"),
    ],
)
def test_missing_metric_holds(policy, canary, reason):
    assert decide(policy, 10, 0, canary, CHAMPION) == Decision("hold", 10, (reason,))


@pytest.mark.parametrize("canary", [metrics(error_rate=1.0, scores=()),
                                    VersionMetrics(1000, 1.0, 0.1, (), impressions=0.0, clicks=0.0),
                                    VersionMetrics(1000, 1.0, 0.1, (), orders=0.0, alerts=0.0)],
                         ids=["scorer", "recommender", "order risk"])
def test_a_canary_failing_every_request_rolls_back_at_the_first_look(policy, canary):
    """It leaves no scores (nor impressions, nor scored orders): it held for want of them, step after step, until
    max_holds_per_step, while a tenth of the traffic failed."""
    champion = dataclasses.replace(CHAMPION, impressions=canary.impressions and 5000.0, clicks=canary.clicks and 50.0,
                                   orders=canary.orders and 5000.0, alerts=canary.alerts and 50.0)
    decision = decide(policy, 10, 0, canary, champion)
    assert decision.action == "rollback" and decision.percent == 0
    assert decision.reasons == ("error rate 1.0000 exceeds champion's 0.0100 by 0.9900 > 0.01",)


def test_holding_too_long_rolls_back_with_the_reason(policy):
    decision = decide(policy, 50, 2, metrics(requests=3), CHAMPION)
    assert decision.action == "rollback" and decision.percent == 0
    assert decision.reasons == ("insufficient data after 3 analyses at 50%: canary served 3 requests in 5m, fewer than 200",)
    assert decide(policy, 50, 1, metrics(requests=3), CHAMPION).action == "hold"


def test_error_rate_bound_is_inclusive(policy):
    at_bound = metrics(error_rate=0.02)  # 0.02 - 0.01 == bound
    assert decide(policy, 10, 0, at_bound, CHAMPION).action == "advance"
    decision = decide(policy, 10, 0, metrics(error_rate=0.0201), CHAMPION)
    assert decision.action == "rollback"
    assert decision.reasons == ("error rate 0.0201 exceeds champion's 0.0100 by 0.0101 > 0.01",)


def test_error_rate_is_judged_against_the_champion(policy):
    # A bad hour for everyone (both at 30 %) is not the canary's fault.
    assert decide(policy, 10, 0, metrics(error_rate=0.3), metrics(error_rate=0.295)).action == "advance"


def test_p99_latency_bound_is_inclusive(policy):
    assert decide(policy, 10, 0, metrics(p99=0.125), CHAMPION).action == "advance"
    decision = decide(policy, 10, 0, metrics(p99=0.126), CHAMPION)
    assert decision == Decision("rollback", 0, (
        "p99 latency 0.1260s exceeds 1.25 x champion's 0.1000s (and it by more than 0.02s)",))


def test_small_absolute_p99_increase_is_noise_whatever_the_ratio(policy):
    fast = metrics(p99=0.010)
    assert decide(policy, 10, 0, metrics(p99=0.030), fast).action == "advance"  # 3x, but only +20 ms
    assert decide(policy, 10, 0, metrics(p99=0.031), fast).action == "rollback"


def test_latency_beyond_last_bucket_rolls_back(policy):
    assert decide(policy, 10, 0, metrics(p99=math.inf), CHAMPION).action == "rollback"


def test_prediction_shift_rolls_back(policy):
    shifted = metrics(scores=(0.05, 0.05, 0.2, 0.7))
    decision = decide(policy, 10, 0, shifted, CHAMPION)
    assert decision.action == "rollback"
    assert decision.reasons[0].startswith("prediction-score PSI ") and decision.reasons[0].endswith("exceeds 0.2")


def test_psi_bound_is_inclusive(policy):
    canary = metrics(scores=(0.15, 0.25, 0.25, 0.35))
    psi = score_psi(canary.score_buckets, CHAMPION.score_buckets)
    policy.deploy.max_score_psi = psi
    assert decide(policy, 10, 0, canary, CHAMPION).action == "advance"
    policy.deploy.max_score_psi = psi * 0.999
    assert decide(policy, 10, 0, canary, CHAMPION).action == "rollback"


def test_every_violated_bound_is_reported(policy):
    decision = decide(policy, 10, 0, metrics(error_rate=0.5, p99=9.0, scores=(0.0, 0.0, 0.0, 1.0)), CHAMPION)
    assert decision.action == "rollback"
    assert [r.split(" ")[0] for r in decision.reasons] == ["error", "p99", "prediction-score"]


def test_percent_outside_the_steps_is_an_error(policy):
    with pytest.raises(ValueError, match=r"canary at 30% is not one of the configured steps \[10, 50\]"):
        decide(policy, 30, 0, metrics(), CHAMPION)
    with pytest.raises(ValueError, match="not one of the configured steps"):
        decide(policy, 100, 0, metrics(), CHAMPION)


def test_psi_is_zero_for_identical_and_grows_with_shift():
    same = hist(0.25, 0.25, 0.25, 0.25)
    assert score_psi(same, same) == pytest.approx(0.0)
    small = score_psi(hist(0.3, 0.25, 0.25, 0.2), same)
    large = score_psi(hist(0.7, 0.1, 0.1, 0.1), same)
    assert 0 < small < large
    assert math.isfinite(score_psi(hist(1, 0, 0, 0), same))  # empty buckets are floored, not infinite


def test_psi_of_empty_or_mismatched_histograms():
    same = hist(0.25, 0.25, 0.25, 0.25)
    assert score_psi((), same) is None
    assert score_psi(hist(0, 0, 0, 0), same) is None
    with pytest.raises(ValueError, match="different buckets"):
        score_psi(((0.5, 1.0), (float("inf"), 2.0)), same)
