"""The order risk model's local canary: the KServe rollout's steps and bounds, judged on two real
`storeflow serve-risk` processes on errors, p99 latency and the alert rate.

`serve-risk` serves one version, so the champion's and the challenger's servers (``--version``) start side by side
on 127.0.0.1 and the traffic driver splits the requests between them at each of ``deploy.canary_steps`` below 100,
as KServe's ingress does on a cluster. The traffic is the store's own orders: the newest ones of the latest
ingested snapshot, each with its order-time features (:func:`storeflow.components.risk.stage.risk_rows`), sent in
requests of :data:`ORDERS_PER_REQUEST` as the receiver's risk thread sends consecutive new orders. Each server's
``/metrics`` before and after a step's traffic is that step's window: its request counters and latency histogram
and its ``storeflow_risk_assessments_total{model_version, level}``, the series the cluster's canary reads from
Prometheus, become the same :class:`VersionMetrics` and :func:`storeflow.components.deploy.analysis.decide` says
hold, advance, promote or roll back. No prediction log: made-up traffic must not reach what monitoring reads.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np

from storeflow.components.config import Settings
from storeflow.components.deploy.analysis import Decision, decide
from storeflow.components.deploy.local_canary import (WARMUP_REQUESTS, Counts, LocalCanaryError,
                                                      LocalCanaryResult, LocalServer, _free_port, run_steps,
                                                      scrape, start_server, version_metrics)
from storeflow.components.deploy.prometheus import VersionMetrics
from storeflow.components.risk.protocol import ALERT_LEVEL, ASSESSMENTS_METRIC, ORDER_ID

log = logging.getLogger(__name__)

ORDERS_PER_REQUEST = 10
NEWEST_ORDERS = 20_000  # the traffic: at most this many of the snapshot's newest orders, drawn at random


# -- metrics --------------------------------------------------------------------------------------------
def assessments(text: str) -> dict[str, tuple[float, float]]:
    """(orders assessed, assessed HIGH) per ``model_version`` of a risk server's Prometheus exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != f"{ASSESSMENTS_METRIC}_total":
                continue
            orders, alerts = found.get(sample.labels["model_version"], (0.0, 0.0))
            high = sample.value if sample.labels.get("level") == ALERT_LEVEL else 0.0
            found[sample.labels["model_version"]] = (orders + sample.value, alerts + high)
    return found


@dataclasses.dataclass
class Window:
    """One server's counters at a scrape; :meth:`minus` of two scrapes is what happened between them."""

    requests: Counts
    orders: float = 0.0
    alerts: float = 0.0

    def minus(self, before: Window) -> Window:
        return Window(self.requests.minus(before.requests), self.orders - before.orders, self.alerts - before.alerts)

    def metrics(self) -> VersionMetrics:
        served = version_metrics(self.requests if self.requests.requests > 0 else None)
        return dataclasses.replace(served, score_buckets=(), orders=self.orders, alerts=self.alerts)


def scrape_window(server: LocalServer, http: httpx.Client, version: str, error_status_regex: str) -> Window:
    text = server.exposition(http)
    orders, alerts = assessments(text).get(version, (0.0, 0.0))
    return Window(scrape(text, error_status_regex).get(version, Counts()), orders, alerts)


# -- servers --------------------------------------------------------------------------------------------
def launch_risk_server(settings: Settings, version: str) -> LocalServer:
    """Start `storeflow serve-risk --version <version>` on a free loopback port (not yet ready), its prediction
    log off; everything through the config file, as the propensity canary's servers are started."""
    directory = settings.project.state_dir / "risk" / "local-canary"
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    served = settings.model_copy(update={
        "serving": settings.serving.model_copy(update={"host": "127.0.0.1", "prediction_log": False}),
        "risk": settings.risk.model_copy(update={"port": port})})
    return start_server(served, port, directory / f"v{version}.log", ["serve-risk", "--version", str(version)],
                        settings.risk.inference_service, 100)


@contextmanager
def risk_servers(settings: Settings, champion: str, canary: str) -> Iterator[tuple[LocalServer, LocalServer]]:
    servers: list[LocalServer] = []
    try:
        servers.append(launch_risk_server(settings, champion))
        servers.append(launch_risk_server(settings, canary))
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


# -- traffic --------------------------------------------------------------------------------------------
def order_instances(settings: Settings) -> list[dict[str, Any]]:
    """The newest orders of the latest ingested snapshot as V1 instances (order id and order-time features)."""
    from storeflow.components.ingest.snapshot import newest_snapshot
    from storeflow.components.risk.features import ORDER_FEATURES, TIME
    from storeflow.components.risk.stage import risk_rows

    snapshot = newest_snapshot(settings.data_dir / "snapshots")
    if snapshot is None:
        raise LocalCanaryError(f"no snapshot under {settings.data_dir}: no orders to send the risk canary")
    rows = risk_rows(snapshot).sort_values(TIME).tail(NEWEST_ORDERS)
    rows = rows[np.isfinite(rows[list(ORDER_FEATURES)].astype("float64")).all(axis=1)]
    if rows.empty:
        raise LocalCanaryError(f"snapshot {snapshot} has no orders to send the risk canary")
    features = rows[list(ORDER_FEATURES)].astype("float64").to_dict("records")
    return [{ORDER_ID: str(order), **row} for order, row in zip(rows["order_id"], features)]


def drive(champion: LocalServer, canary: LocalServer, percent: int, http: httpx.Client,
          orders: list[dict[str, Any]], requests: int, concurrency: int, deadline: float,
          rng: np.random.Generator) -> int:
    """Send up to ``requests`` requests of :data:`ORDERS_PER_REQUEST` random orders, each to the canary with
    probability ``percent`` %, stopping at ``deadline``; returns how many. Any answer counts (errors are what the
    analysis is for); only an unreachable server is an error."""
    picks = rng.integers(0, len(orders), size=(requests, ORDERS_PER_REQUEST))
    to_canary = rng.random(requests) < percent / 100

    def one(i: int) -> int:
        if time.monotonic() > deadline:
            return 0
        server = canary if to_canary[i] else champion
        try:
            http.post(f"{server.url}/v1/models/{server.model_name}:predict",
                      json={"instances": [orders[j] for j in picks[i]]})
        except httpx.HTTPError as exc:
            if server.process.poll() is not None:
                raise LocalCanaryError(f"storeflow serve-risk died during the canary: {server.log_path}") from exc
        return 1

    with ThreadPoolExecutor(concurrency) as pool:
        return sum(pool.map(one, range(requests)))


# -- the rollout ----------------------------------------------------------------------------------------
def _analyse_step(settings: Settings, percent: int, servers: tuple[LocalServer, LocalServer], versions: tuple[str, str],
                  orders: list[dict[str, Any]], rng: np.random.Generator, steps: list[dict[str, Any]]) -> Decision:
    """Traffic and analyses at one step until ``decide`` stops holding (or the step's time runs out)."""
    deploy = settings.deploy
    started = time.monotonic()
    deadline = started + deploy.local_step_timeout_seconds
    champion, canary = servers
    with httpx.Client(timeout=10.0, limits=httpx.Limits(max_connections=deploy.local_concurrency)) as http:
        def windows() -> tuple[Window, Window]:
            return tuple(scrape_window(s, http, v, deploy.error_status_regex) for s, v in zip(servers, versions))

        before = windows()
        holds = 0
        while True:
            sent = drive(champion, canary, percent, http, orders, deploy.local_requests_per_step,
                         deploy.local_concurrency, deadline, rng)
            ours, theirs = (now.minus(then) for now, then in zip(windows(), before))
            champion_m, canary_m = ours.metrics(), theirs.metrics()
            elapsed = f"{max(1, round(time.monotonic() - started))}s"  # this step so far, not the cluster's window
            step_settings = settings.model_copy(update={"deploy": deploy.model_copy(update={"analysis_window": elapsed})})
            decision = decide(step_settings, percent, holds, canary_m, champion_m)
            if decision.action == "hold" and time.monotonic() > deadline:
                decision = Decision("rollback", 0, (f"insufficient data after {deploy.local_step_timeout_seconds:g} s "
                                                    f"at {percent}%: " + "; ".join(decision.reasons),))
            steps.append({"percent": percent, "action": decision.action, "reasons": list(decision.reasons),
                          "traffic_seconds": round(time.monotonic() - started, 2), "sent": sent,
                          "canary_requests": canary_m.requests, "champion_requests": champion_m.requests,
                          "canary_orders": canary_m.orders, "champion_orders": champion_m.orders,
                          "canary_alerts": canary_m.alerts, "champion_alerts": champion_m.alerts,
                          "canary_error_rate": canary_m.error_rate, "champion_error_rate": champion_m.error_rate,
                          "canary_p99_seconds": canary_m.p99_latency_seconds,
                          "champion_p99_seconds": champion_m.p99_latency_seconds})
            log.info("local risk canary v%s at %d%%: %s %s", versions[1], percent, decision.action,
                     "; ".join(decision.reasons))
            if decision.action != "hold":
                return decision
            holds += 1


def run_local_risk_canary(settings: Settings, version: str, previous: str, *, seed: int = 0) -> LocalCanaryResult:
    """Canary risk ``version`` against ``previous`` on local servers (:func:`~storeflow.components.deploy.local_canary.
    run_steps`; the caller, :func:`storeflow.components.deploy.local.deploy_local`, keeps or undoes the champion
    alias): the store's newest orders scored by both, judged on errors, p99 latency and the alert rate."""
    rng = np.random.default_rng(seed)

    @contextmanager
    def steps(result: LocalCanaryResult) -> Iterator[Callable[[int], Decision]]:
        orders = order_instances(settings)
        with risk_servers(settings, result.previous_champion, result.model_version) as servers:
            with httpx.Client(timeout=10.0) as http:
                for server in servers:
                    server.wait_ready(settings.deploy.local_start_timeout_seconds)
                    for _ in range(WARMUP_REQUESTS):  # first-call costs judge no one: before every window
                        http.post(f"{server.url}/v1/models/{server.model_name}:predict",
                                  json={"instances": orders[:ORDERS_PER_REQUEST]})
            versions = (result.previous_champion, result.model_version)
            yield lambda percent: _analyse_step(settings, percent, servers, versions, orders, rng, result.steps)

    return run_steps(settings, version, previous, "local risk canary", steps)
