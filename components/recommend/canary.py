"""What a recommender canary is judged on: the request metrics every storeflow server exports (requests,
errors, p99 latency per model version, from Prometheus as for the propensity canary) and, instead of a score
histogram, each version's impressions and clicks in the same window from the recommender's feedback log
(:func:`storeflow.components.recommend.feedback.ctr_by_version`: only events that join an answer of their own
version count). :func:`storeflow.components.deploy.analysis.decide` then rolls back a canary whose
click-through rate falls below the champion's (``deploy.max_ctr_drop``, significantly) as it does one whose
errors or latency do; :func:`storeflow.components.deploy.rollout.run` takes this as its metrics source.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pandas as pd

from storeflow.components.config import Settings
from storeflow.components.deploy.prometheus import VersionMetrics
from storeflow.components.recommend.feedback import ctr_by_version

Logs = Callable[[], tuple[pd.DataFrame, pd.DataFrame]]  # (answers, feedback events), as read_log reads them


def window_seconds(window: str) -> float:
    """``deploy.analysis_window`` (PromQL range: 30s, 5m, 2h) in seconds."""
    found = re.fullmatch(r"([1-9][0-9]*)([smh])", window)
    if found is None:
        raise ValueError(f"deploy.analysis_window {window!r} is not a PromQL range like 5m")
    return int(found.group(1)) * {"s": 1, "m": 60, "h": 3600}[found.group(2)]


def ctr_window(answers: pd.DataFrame, events: pd.DataFrame, end: datetime, seconds: float) -> pd.DataFrame:
    """CTR per version of the events logged in the ``seconds`` before ``end`` (joined to any logged answer)."""
    stamps = pd.to_datetime(events["ts"], utc=True, errors="coerce", format="ISO8601")
    recent = events[(stamps >= end - timedelta(seconds=seconds)) & (stamps < end)]
    return ctr_by_version(answers, recent)


class RecommenderCanaryMetrics:
    """``version_metrics(settings, version)`` for :func:`storeflow.components.deploy.rollout.run`: the request
    metrics of ``prometheus`` with the version's impressions and clicks of the analysis window added (and no
    score histogram: a recommender has none). ``matchers`` (PromQL label matchers, e.g. the recommender's
    ``pod=~"storeflow-recommendations-.*"``) keep another model's series of the same version number out."""

    def __init__(self, prometheus, logs: Logs, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 matchers: str = ""):
        self.prometheus, self.logs, self.clock, self.matchers = prometheus, logs, clock, matchers

    def version_metrics(self, settings: Settings, version: str) -> VersionMetrics:
        served = (self.prometheus.version_metrics(settings, version, self.matchers) if self.matchers
                  else self.prometheus.version_metrics(settings, version))
        answers, events = self.logs()
        table = ctr_window(answers, events, self.clock(), window_seconds(settings.deploy.analysis_window))
        row = table[table["model_version"].astype(str) == str(version)]
        impressions = float(row["impressions"].sum()) if not row.empty else 0.0
        clicks = float(row["clicks"].sum()) if not row.empty else 0.0
        return dataclasses.replace(served, score_buckets=(), impressions=impressions, clicks=clicks)


def feedback_logs(settings: Settings) -> Logs:
    """The recommender's answer and feedback logs: this machine's and those shipped to the object store."""
    import tempfile
    from pathlib import Path

    from storeflow.components.recommend.feedback import ANSWER_COLUMNS, EVENT_COLUMNS, read_logs

    def read() -> tuple[pd.DataFrame, pd.DataFrame]:
        with tempfile.TemporaryDirectory(prefix="recommender-logs-") as scratch:
            return (read_logs(settings, "predictions", ANSWER_COLUMNS, Path(scratch)),
                    read_logs(settings, "feedback", EVENT_COLUMNS, Path(scratch)))

    return read
