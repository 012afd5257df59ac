"""The risk server's /metrics count every assessment by version and level, and the risk canary's PromQL reads
exactly those series: a real `storeflow serve-risk` (the registered model, KServe's ModelServer on 127.0.0.1) scores
a store's real order rows, its /metrics are scraped as Prometheus would (the pod label added, as the Kubernetes
scrape does), and the canary's own queries, evaluated over that scrape, find the orders and alerts it answered."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from storeflow.components.config import RiskConfig, load_settings
from storeflow.components.deploy.local_canary import histogram_quantile
from storeflow.components.deploy.prometheus import Prometheus
from storeflow.components.ingest import ingest
from storeflow.components.risk.deploy import RiskCanaryMetrics, alert_queries
from storeflow.components.risk.features import LABEL, ORDER_FEATURES
from storeflow.components.risk.stage import risk_rows, train_and_register
from test_canary_prometheus import PrometheusStub
from tests.conftest import free_port, quick_overrides, stop_process

STORE = {"customers": 800, "orders": 8_000, "products": 40, "seed": 7, "fraud_rate": 0.02}
QUICK = RiskConfig(params={**RiskConfig().params, "max_iter": 60}, bootstrap_samples=50)
NAME = RiskConfig().inference_service
POD = f"{NAME}-predictor-00001-deployment-7d9f8-x2x9z"  # what the Kubernetes scrape adds to every series


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A synthetic store with fraud, ingested, its risk model registered (v1, champion), and its order rows."""
    root = tmp_path_factory.mktemp("risk-metrics")
    config = quick_overrides(root, ingest={"source": "synthetic", "synthetic": STORE})
    settings = load_settings(config)
    rows = risk_rows(ingest(settings).snapshot)
    result = train_and_register(settings, rows, QUICK)
    assert result.promoted, result.reason
    return root, config, rows


def serve_risk(root: Path, config: dict, *args: str) -> tuple[subprocess.Popen, str, object]:
    port = free_port()
    path = root / f"storeflow-{port}.yaml"
    path.write_text(yaml.safe_dump({**config, "risk": {"port": port}}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STOREFLOW_")}, "STOREFLOW_CONFIG": str(path)}
    log = open(root / f"serve-risk-{port}.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("storeflow")), "serve-risk", *args], env=env,
                            cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, (root / f"serve-risk-{port}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "serve-risk did not start"
        try:
            if httpx.get(f"{url}/v2/models/{NAME}/ready", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            pass
        time.sleep(0.3)


# --- Prometheus over one scrape: what increase() over a window from the server's start gives ------------------

SUM = re.compile(r"^sum(?: by \((?P<by>\w+)\) )?\(increase\((?P<name>\w+)\{(?P<sel>.*)\}\[\w+\]\)\)$")
QUANTILE = re.compile(r"^histogram_quantile\((?P<q>[\d.]+), sum by \(le\) \(rate\((?P<name>\w+)\{(?P<sel>.*)\}\[\w+\]\)\)\)$")
MATCHER = re.compile(r'(\w+)(=~|!=|=)"((?:[^"\\]|\\.)*)"')


def matches(labels: dict[str, str], selector: str) -> bool:
    found = MATCHER.findall(selector)
    assert ",".join(f'{k}{op}"{v}"' for k, op, v in found) == selector, f"unparsed selector {selector}"
    for key, op, value in found:
        value = value.replace('\\"', '"').replace("\\\\", "\\")
        have = labels.get(key, "")
        if (op == "=" and have != value) or (op == "=~" and not re.fullmatch(value, have)) \
                or (op == "!=" and have == value):
            return False
    return True


class Scraped:
    """Answers the canary's PromQL over the samples of one /metrics scrape of a server started fresh."""

    def __init__(self, text: str):
        from prometheus_client.parser import text_string_to_metric_families

        self.samples = [(s.name, {**s.labels, "pod": POD}, s.value)
                        for family in text_string_to_metric_families(text) for s in family.samples]

    def __call__(self, query: str) -> tuple[int, str]:
        import json

        def vector(result: list[tuple[dict, float]]) -> tuple[int, str]:
            return 200, json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
                {"metric": labels, "value": [time.time(), "NaN" if value is None else repr(float(value))]}
                for labels, value in result]}})

        if found := QUANTILE.match(query):
            buckets = Counter()
            for name, labels, value in self.samples:
                if name == found["name"] and matches(labels, found["sel"]):
                    buckets[float(labels["le"])] += value
            return vector([({}, histogram_quantile(float(found["q"]), dict(buckets)))] if buckets else [])
        found = SUM.match(query)
        assert found, f"a query this stub cannot read: {query}"
        groups: Counter = Counter()
        for name, labels, value in self.samples:
            if name == found["name"] and matches(labels, found["sel"]):
                groups[labels.get(found["by"], "") if found["by"] else ""] += value
        return vector([({found["by"]: key} if found["by"] else {}, value) for key, value in groups.items()])


def test_the_canary_reads_the_orders_and_alerts_the_risk_server_counted(trained, settings):
    root, config, rows = trained
    proc, url, log = serve_risk(root, config)
    try:
        # real orders of the store, most of its fraud among them, so some are HIGH
        picked = [*rows[rows[LABEL] == 1].head(40).itertuples(), *rows[rows[LABEL] == 0].head(160).itertuples()]
        levels: Counter = Counter()
        for start in range(0, len(picked), 50):
            answer = httpx.post(f"{url}/v1/models/{NAME}:predict", json={"instances": [
                {"order_id": str(row.order_id), **{c: float(getattr(row, c)) for c in ORDER_FEATURES}}
                for row in picked[start:start + 50]]}, timeout=30)
            assert answer.status_code == 200, answer.text
            levels.update(p["level"] for p in answer.json()["predictions"])
        assert levels["HIGH"] > 0 and levels["LOW"] > 0
        scraped = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        stop_process(proc, log)

    samples = {(s["level"], s["model_version"]): v for n, s, v in Scraped(scraped).samples
               if n == "storeflow_risk_assessments_total"}
    assert samples == {(level, "1"): float(n) for level, n in levels.items()}

    settings.deploy.analysis_window = "5m"
    stub = PrometheusStub(Scraped(scraped))
    try:
        found = RiskCanaryMetrics(Prometheus(stub.url)).version_metrics(settings, "1")
        other = RiskCanaryMetrics(Prometheus(stub.url)).version_metrics(settings, "2")
    finally:
        stub.close()
    assert (found.orders, found.alerts) == (len(picked), levels["HIGH"])
    assert found.requests == 4 and found.error_rate == 0 and not math.isnan(found.p99_latency_seconds)
    assert (other.orders, other.alerts, other.requests) == (0, 0, 0)  # a version it never served: no series
    asked = alert_queries(settings, "1", f'pod=~"{NAME}-.*"')
    assert all(q in stub.queries for q in asked.values())
    assert asked["alerts"] == ('sum(increase(storeflow_risk_assessments_total{model_version="1",'
                               f'pod=~"{NAME}-.*",level="HIGH"}}[5m]))')
