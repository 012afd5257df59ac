"""Reading per-version serving metrics from Prometheus.

Answers are recorded-format ``/api/v1/query`` JSON (tests/data/prometheus) served on 127.0.0.1 and read
with the real httpx client; no live Prometheus is involved.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from storeflow.components.deploy.prometheus import Prometheus, PrometheusError, queries

DATA = Path(__file__).parent / "data" / "prometheus"


def recorded(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


class PrometheusStub:
    """A loopback HTTP server answering ``/api/v1/query`` with ``answer(query) -> (status, body)``."""

    def __init__(self, answer: Callable[[str], tuple[int, str]]) -> None:
        self.queries: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                url = urlparse(self.path)
                query = parse_qs(url.query)["query"][0] if url.path == "/api/v1/query" else ""
                stub.queries.append(query)
                status, body = answer(query) if query else (404, "404 page not found")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def vector_of(value: float | str) -> str:
    answer = recorded("requests_total")
    answer["data"]["result"][0]["value"][1] = str(value)
    return json.dumps(answer)


def buckets_of(cumulative: list[tuple[str, float]]) -> str:
    answer = recorded("score_buckets")
    template = answer["data"]["result"][0]
    answer["data"]["result"] = [
        {"metric": {"le": le}, "value": [template["value"][0], str(count)]} for le, count in cumulative
    ]
    return json.dumps(answer)


SCORE_LE = ["0.1", "0.25", "0.5", "0.75", "1", "+Inf"]


def serving(versions: dict[str, dict]) -> Callable[[str], tuple[int, str]]:
    """Answers for each model version: requests, errors, p99 (None = NaN), score shares per bucket."""

    def answer(query: str) -> tuple[int, str]:
        version = re.search(r'model_version="([^"]+)"', query).group(1)
        served = versions.get(version)
        if served is None:
            return 200, json.dumps(recorded("no_series"))
        if "storeflow_prediction_score_bucket" in query:
            running, cumulative = 0.0, []
            for le, share in zip(SCORE_LE, served["scores"] + [0.0]):
                running += share * served["requests"]
                cumulative.append((le, running))
            return 200, buckets_of(cumulative)
        if "histogram_quantile" in query:
            return 200, vector_of("NaN" if served["p99"] is None else served["p99"])
        if "status=~" in query:
            return 200, vector_of(served["errors"]) if served["errors"] else json.dumps(recorded("no_series"))
        return 200, vector_of(served["requests"])

    return answer


@pytest.fixture
def stub_factory() -> Iterator[Callable[[Callable[[str], tuple[int, str]]], PrometheusStub]]:
    stubs: list[PrometheusStub] = []

    def make(answer: Callable[[str], tuple[int, str]]) -> PrometheusStub:
        stubs.append(PrometheusStub(answer))
        return stubs[-1]

    yield make
    for stub in stubs:
        stub.close()


def test_queries_select_the_version_and_configured_window(settings):
    settings.deploy.analysis_window = "10m"
    asked = queries(settings, '7"x')
    assert asked["requests"] == 'sum(increase(storeflow_requests_total{model_version="7\\"x"}[10m]))'
    assert asked["errors"] == (
        'sum(increase(storeflow_requests_total{model_version="7\\"x",status=~"5..|error"}[10m]))'
    )
    assert asked["p99"].startswith("histogram_quantile(0.99, sum by (le) (rate(storeflow_request_latency_seconds_bucket")
    assert asked["scores"] == 'sum by (le) (increase(storeflow_prediction_score_bucket{model_version="7\\"x"}[10m]))'


def test_version_metrics_from_recorded_answers(settings, stub_factory):
    stub = stub_factory(serving({"4": {"requests": 1800, "errors": 18, "p99": 0.084, "scores": [0.2, 0.3, 0.3, 0.1, 0.1]}}))
    metrics = Prometheus(stub.url).version_metrics(settings, "4")
    assert metrics.requests == 1800
    assert metrics.error_rate == pytest.approx(0.01)
    assert metrics.p99_latency_seconds == pytest.approx(0.084)
    assert [le for le, _ in metrics.score_buckets] == [0.1, 0.25, 0.5, 0.75, 1.0, float("inf")]
    assert metrics.score_buckets[-1][1] == pytest.approx(1800)
    assert len(stub.queries) == 4


def test_no_traffic_is_no_data_not_an_error(settings, stub_factory):
    stub = stub_factory(lambda q: (200, json.dumps(recorded("p99_nan" if "quantile" in q else "no_series"))))
    metrics = Prometheus(stub.url).version_metrics(settings, "4")
    assert (metrics.requests, metrics.error_rate, metrics.p99_latency_seconds, metrics.score_buckets) == (0, None, None, ())


def test_scalar_answer_is_read():
    answer = recorded("scalar")
    from storeflow.components.deploy.prometheus import parse_vector

    assert parse_vector(answer, "scalar(x)") == [({}, 0.042)]


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, json.dumps(recorded("bad_data")), "failed: bad_data: invalid parameter"),
        (200, json.dumps(recorded("matrix")), "expected an instant vector or scalar"),
        (502, "<html>Bad Gateway</html>", "HTTP 502, body is not JSON"),
        (200, '{"data": {}}', "not a Prometheus API response"),
        (200, '{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"abc"]}]}}',
         "is not [timestamp"),
    ],
)
def test_malformed_answers_name_the_query_and_problem(settings, stub_factory, status, body, message):
    stub = stub_factory(lambda q: (status, body))
    with pytest.raises(PrometheusError, match=re.escape(message)) as raised:
        Prometheus(stub.url).single("sum(up)")
    assert "sum(up)" in str(raised.value) or "HTTP" in str(raised.value)


def test_several_series_where_one_is_expected_is_an_error(settings, stub_factory):
    two = copy.deepcopy(recorded("requests_total"))
    two["data"]["result"] *= 2
    stub = stub_factory(lambda q: (200, json.dumps(two)))
    with pytest.raises(PrometheusError, match="expected one series, got 2"):
        Prometheus(stub.url).single("sum(x)")


def test_score_series_without_le_label_is_an_error(settings, stub_factory):
    stub = stub_factory(lambda q: (200, json.dumps(recorded("requests_total"))))
    with pytest.raises(PrometheusError, match="has no 'le' label"):
        Prometheus(stub.url).version_metrics(settings, "4")


def test_unreachable_prometheus_is_named():
    with pytest.raises(PrometheusError, match="cannot reach Prometheus at http://127.0.0.1:9"):
        Prometheus("http://127.0.0.1:9").single("sum(x)")
