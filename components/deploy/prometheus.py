"""Per-model-version serving metrics from Prometheus' instant-query API (``/api/v1/query``).

The storeflow server labels its metrics with ``model_version``, so champion and canary are told apart by
that label whatever the deployment mode (Knative revisions or Standard-mode Deployments).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx

from storeflow.components.config import Settings

REQUESTS = "storeflow_requests_total"
LATENCY = "storeflow_request_latency_seconds"
SCORE = "storeflow_prediction_score"


class PrometheusError(RuntimeError):
    """Prometheus could not be asked or gave an answer this module cannot read; names the query."""


@dataclass(frozen=True)
class VersionMetrics:
    """One model version's serving over the analysis window; None where there was nothing to measure."""

    requests: float
    error_rate: float | None
    p99_latency_seconds: float | None
    score_buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), ascending
    # A recommender's: recommendation lists shown and products clicked from them (its feedback log); None for a
    # model judged on its score histogram instead.
    impressions: float | None = None
    clicks: float | None = None
    # An order risk model's: orders scored and those scored HIGH (its prediction log); None for other models.
    orders: float | None = None
    alerts: float | None = None


def _label(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def queries(settings: Settings, version: str, matchers: str = "") -> dict[str, str]:
    """The PromQL asked for ``version``: request and error counts, p99 latency, score histogram; ``matchers``
    (PromQL label matchers, e.g. ``pod=~"storeflow-order-risk-.*"``) narrow every query to one model's series."""
    window = settings.deploy.analysis_window
    selector = f"model_version={_label(version)}" + (f",{matchers}" if matchers else "")
    errors = f"{selector},status=~{_label(settings.deploy.error_status_regex)}"
    return {
        "requests": f"sum(increase({REQUESTS}{{{selector}}}[{window}]))",
        "errors": f"sum(increase({REQUESTS}{{{errors}}}[{window}]))",
        "p99": f"histogram_quantile(0.99, sum by (le) (rate({LATENCY}_bucket{{{selector}}}[{window}])))",
        "scores": f"sum by (le) (increase({SCORE}_bucket{{{selector}}}[{window}]))",
    }


def _number(raw: Any, query: str) -> float | None:
    try:
        value = float(raw[1])
    except (TypeError, ValueError, IndexError) as exc:
        raise PrometheusError(f"query {query!r}: sample {raw!r} is not [timestamp, \"number\"]") from exc
    # NaN means "no data" (0/0); +Inf is a real answer (p99 beyond the last bucket) and fails the bounds.
    return None if math.isnan(value) else value


def parse_vector(answer: Any, query: str) -> list[tuple[dict[str, str], float | None]]:
    """(labels, value) pairs of a query answer; NaN (no data, e.g. 0/0 quantiles) becomes None."""
    if not isinstance(answer, dict) or "status" not in answer:
        raise PrometheusError(f"query {query!r}: answer is not a Prometheus API response: {str(answer)[:200]}")
    if answer["status"] != "success":
        raise PrometheusError(
            f"query {query!r} failed: {answer.get('errorType', 'unknown error')}: {answer.get('error', '')}"
        )
    data = answer.get("data")
    if not isinstance(data, dict) or data.get("resultType") not in ("vector", "scalar"):
        raise PrometheusError(f"query {query!r}: expected an instant vector or scalar, got {str(data)[:200]}")
    if data["resultType"] == "scalar":
        return [({}, _number(data.get("result"), query))]
    result = data.get("result")
    if not isinstance(result, list):
        raise PrometheusError(f"query {query!r}: 'result' is not a list")
    samples = []
    for item in result:
        if not isinstance(item, dict) or "value" not in item:
            raise PrometheusError(f"query {query!r}: series {str(item)[:200]} has no 'value'")
        samples.append((item.get("metric") or {}, _number(item["value"], query)))
    return samples


class Prometheus:
    """A small client for instant queries; ``http`` is an ``httpx.Client`` (tests point it at loopback)."""

    def __init__(self, base_url: str, http: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http or httpx.Client(timeout=10.0)

    def query(self, promql: str) -> list[tuple[dict[str, str], float | None]]:
        try:
            response = self.http.get(f"{self.base_url}/api/v1/query", params={"query": promql})
        except httpx.HTTPError as exc:
            raise PrometheusError(f"cannot reach Prometheus at {self.base_url}: {exc}") from exc
        try:
            answer = response.json()
        except ValueError as exc:
            raise PrometheusError(
                f"query {promql!r}: HTTP {response.status_code}, body is not JSON: {response.text[:200]}"
            ) from exc
        return parse_vector(answer, promql)

    def single(self, promql: str) -> float | None:
        """The value of a query that aggregates to one series; None when there is no data."""
        samples = self.query(promql)
        if len(samples) > 1:
            raise PrometheusError(f"query {promql!r}: expected one series, got {len(samples)}")
        return samples[0][1] if samples else None

    def version_metrics(self, settings: Settings, version: str, matchers: str = "") -> VersionMetrics:
        asked = queries(settings, version, matchers)
        requests = self.single(asked["requests"]) or 0.0
        errors = self.single(asked["errors"]) or 0.0
        buckets = []
        for labels, count in self.query(asked["scores"]):
            if "le" not in labels:
                raise PrometheusError(f"query {asked['scores']!r}: series {labels} has no 'le' label")
            buckets.append((float(labels["le"]), count or 0.0))
        return VersionMetrics(
            requests=requests,
            error_rate=errors / requests if requests > 0 else None,
            p99_latency_seconds=self.single(asked["p99"]),
            score_buckets=tuple(sorted(buckets)),
        )
