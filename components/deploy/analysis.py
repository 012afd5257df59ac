"""Automated canary analysis: one pure decision per look at the metrics, so every branch is testable.

At each traffic step the canary is judged against the champion it would replace, never against fixed
numbers alone: a busy Black-Friday hour slows both versions, and only the difference is the canary's fault.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from storeflow.components.config import Settings
from storeflow.components.deploy.prometheus import VersionMetrics

Action = Literal["hold", "advance", "promote", "rollback"]


@dataclass(frozen=True)
class Decision:
    action: Action
    percent: int  # canary traffic after the action (100 on promote, 0 on rollback)
    reasons: tuple[str, ...] = field(default=())


def score_psi(canary: tuple[tuple[float, float], ...], champion: tuple[tuple[float, float], ...]) -> float | None:
    """Population stability index of two cumulative score histograms with the same buckets; None if empty.

    Empty buckets get a small floor so that one unseen bucket gives a large, finite index.
    """
    if not canary or not champion:
        return None
    if [le for le, _ in canary] != [le for le, _ in champion]:
        raise ValueError(f"score histograms have different buckets: {[le for le, _ in canary]} vs {[le for le, _ in champion]}")

    def shares(cumulative: tuple[tuple[float, float], ...]) -> list[float] | None:
        counts = [cumulative[0][1]] + [b[1] - a[1] for a, b in zip(cumulative, cumulative[1:])]
        total = cumulative[-1][1]
        return [max(c, 0.0) / total for c in counts] if total > 0 else None

    p, q = shares(canary), shares(champion)
    if p is None or q is None:
        return None
    floor = 1e-4
    return sum((max(a, floor) - max(b, floor)) * math.log(max(a, floor) / max(b, floor)) for a, b in zip(p, q))


def ctr_drop(canary: VersionMetrics, champion: VersionMetrics, max_drop: float, p_value: float = 0.05) -> str | None:
    """Why the canary's click-through rate fails against the champion's in the same window, or None: its CTR
    is below the champion's by more than ``max_drop`` (a share of the champion's) and significantly so (one-sided
    Fisher exact test on the two versions' clicks and impressions, scipy's), so that a quiet hour's noise rolls
    nothing back and a real drop smaller than ``max_drop`` is tolerated."""
    clicks, shown = int(canary.clicks or 0), int(canary.impressions or 0)
    their_clicks, their_shown = int(champion.clicks or 0), int(champion.impressions or 0)
    if shown <= 0 or their_shown <= 0 or their_clicks <= 0:
        return None  # no CTR to drop from
    ours, theirs = clicks / shown, their_clicks / their_shown
    drop = 1.0 - ours / theirs
    if not _beyond(drop, max_drop):
        return None
    p = _fisher(clicks, shown, their_clicks, their_shown, "less")
    if p >= p_value:
        return None
    return (f"click-through rate {ours:.2%} is {drop:.0%} below champion's {theirs:.2%} (more than {max_drop:.0%}; "
            f"Fisher exact p = {p:.2g})")


def _fisher(hits: int, total: int, their_hits: int, their_total: int, alternative: str) -> float:
    """scipy's Fisher exact test of ``hits`` of ``total`` against ``their_hits`` of ``their_total``."""
    from scipy.stats import fisher_exact

    return float(fisher_exact([[hits, total - hits], [their_hits, their_total - their_hits]],
                              alternative=alternative).pvalue)


def alert_shift(canary: VersionMetrics, champion: VersionMetrics, max_ratio: float, p_value: float = 0.05) -> str | None:
    """Why an order risk canary's alert rate (share of its orders scored HIGH) fails against the champion's in the
    same window, or None: it is more than ``max_ratio`` times the champion's or less than 1/``max_ratio`` of it,
    and significantly so (two-sided Fisher exact test on the two versions' HIGH and other orders), so that a quiet
    window's few alerts roll nothing back. A canary flagging far more orders holds up genuine customers; one
    flagging far fewer lets fraud through."""
    alerts, orders = int(canary.alerts or 0), int(canary.orders or 0)
    their_alerts, their_orders = int(champion.alerts or 0), int(champion.orders or 0)
    if orders <= 0 or their_orders <= 0 or alerts + their_alerts == 0:
        return None  # neither flagged anything: nothing to compare
    ours, theirs = alerts / orders, their_alerts / their_orders
    ratio = ours / theirs if theirs > 0 else math.inf
    if not (_beyond(ratio, max_ratio) or _beyond(1.0 / max_ratio, ratio)):
        return None
    p = _fisher(alerts, orders, their_alerts, their_orders, "two-sided")
    if p >= p_value:
        return None
    times = "the champion flagged none" if theirs == 0 else f"{ratio:.2g} times the champion's"
    return (f"alert rate {ours:.2%} ({alerts} of {orders} orders scored HIGH) against champion's {theirs:.2%} "
            f"({their_alerts} of {their_orders}): {times}, beyond {max_ratio:g}x either way "
            f"(Fisher exact p = {p:.2g})")


def _beyond(value: float, bound: float) -> bool:
    # Inclusive and tolerant of float noise: 0.03 - 0.02 must count as "at" a 0.01 bound.
    return value > bound and not math.isclose(value, bound, rel_tol=1e-9, abs_tol=1e-12)


def _serving_violations(deploy, canary: VersionMetrics, champion: VersionMetrics) -> list[str]:
    """The canary's error rate and p99 latency beyond their bounds against the champion's (both known)."""
    assert canary.error_rate is not None and champion.error_rate is not None  # checked by the caller
    assert canary.p99_latency_seconds is not None and champion.p99_latency_seconds is not None
    violations = []
    error_increase = canary.error_rate - champion.error_rate
    if _beyond(error_increase, deploy.max_error_rate_increase):
        violations.append(
            f"error rate {canary.error_rate:.4f} exceeds champion's {champion.error_rate:.4f} "
            f"by {error_increase:.4f} > {deploy.max_error_rate_increase}"
        )
    latency_limit = max(champion.p99_latency_seconds * deploy.max_p99_latency_ratio,
                        champion.p99_latency_seconds + deploy.min_p99_latency_increase_seconds)
    if _beyond(canary.p99_latency_seconds, latency_limit):
        violations.append(
            f"p99 latency {canary.p99_latency_seconds:.4f}s exceeds {deploy.max_p99_latency_ratio} x "
            f"champion's {champion.p99_latency_seconds:.4f}s (and it by more than "
            f"{deploy.min_p99_latency_increase_seconds}s)"
        )
    return violations


def decide(
    settings: Settings, percent: int, holds: int, canary: VersionMetrics, champion: VersionMetrics
) -> Decision:
    """What to do with a canary now serving ``percent`` after ``holds`` inconclusive looks at this step.

    Bounds are inclusive: a canary exactly at a bound passes.
    """
    deploy = settings.deploy
    steps = deploy.canary_steps
    if percent not in steps[:-1]:
        raise ValueError(f"canary at {percent}% is not one of the configured steps {steps[:-1]} below 100")

    missing = [
        f"{who} served {m.requests:g} requests in {deploy.analysis_window}, fewer than {deploy.min_requests}"
        for who, m in (("canary", canary), ("champion", champion))
        if m.requests < deploy.min_requests
    ]
    if not missing:
        missing = [
            f"{who} has no {what} data"
            for who, m in (("canary", canary), ("champion", champion))
            for what, value in (("error rate", m.error_rate), ("p99 latency", m.p99_latency_seconds))
            if value is None
        ]
    served = not missing  # enough requests, with their error rate and latency
    # A recommender is judged on its click-through rate (from its feedback log) where a scorer is judged on
    # the shift of its score histogram.
    by_ctr = canary.impressions is not None or champion.impressions is not None
    # and an order risk model on its alert rate (from its prediction log).
    by_alerts = canary.orders is not None or champion.orders is not None
    psi = None if missing or by_ctr or by_alerts else score_psi(canary.score_buckets, champion.score_buckets)
    if not missing and not by_ctr and not by_alerts and psi is None:
        missing = ["no prediction-score histogram for both versions"]
    if not missing and by_ctr:
        missing = [f"{who} had {m.impressions or 0:g} impressions in {deploy.analysis_window}, fewer than "
                   f"{deploy.min_impressions}" for who, m in (("canary", canary), ("champion", champion))
                   if (m.impressions or 0) < deploy.min_impressions]
    if not missing and by_alerts:
        missing = [f"{who} scored {m.orders or 0:g} orders in {deploy.analysis_window}, fewer than "
                   f"{settings.risk.canary_min_orders}" for who, m in (("canary", canary), ("champion", champion))
                   if (m.orders or 0) < settings.risk.canary_min_orders]
    if missing:
        if served and (failing := _serving_violations(deploy, canary, champion)):
            # what only answered requests leave (scores, impressions, orders) is missing, but the requests say
            # enough: a canary failing every request leaves none of it, and held (until max_holds_per_step)
            return Decision("rollback", 0, tuple(failing))
        if holds + 1 >= deploy.max_holds_per_step:
            reason = f"insufficient data after {holds + 1} analyses at {percent}%: " + "; ".join(missing)
            return Decision("rollback", 0, (reason,))
        return Decision("hold", percent, tuple(missing))

    violations = _serving_violations(deploy, canary, champion)
    if psi is not None and _beyond(psi, deploy.max_score_psi):
        violations.append(f"prediction-score PSI {psi:.4f} against champion exceeds {deploy.max_score_psi}")
    if by_ctr and (drop := ctr_drop(canary, champion, deploy.max_ctr_drop)) is not None:
        violations.append(drop)
    if by_alerts and (shift := alert_shift(canary, champion, settings.risk.canary_alert_ratio)) is not None:
        violations.append(shift)
    if violations:
        return Decision("rollback", 0, tuple(violations))

    following = steps[steps.index(percent) + 1]
    passed = (f"canary within bounds at {percent}%",)
    if following == 100:
        return Decision("promote", 100, passed)
    return Decision("advance", following, passed)
