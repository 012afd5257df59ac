"""The recommender's local canary: the KServe rollout's steps and bounds, judged on real
`storeflow serve-recommendations` processes, on errors, p99 latency and click-through rate.

The propensity model's local canary (:mod:`storeflow.components.deploy.local_canary`) starts `storeflow serve`
with a canary split inside it; the recommender server serves one version, so here two servers start side by
side on 127.0.0.1, the champion's and the challenger's (``--version``), and the traffic driver splits the
requests between them at each of ``deploy.canary_steps`` below 100, as KServe's ingress does on a cluster.

Traffic is replayed shoppers of the latest ingested snapshot: a customer's order before their last one is
the cart (or, one product, the product page) a request sends; the answer is shown (an impression, posted to
the server's ``/v1/feedback`` as the storefront block does) and each shown product the customer went on to
buy in their last order is clicked. So a challenger that recommends what shoppers want less is clicked less.
Each server's ``/metrics`` (requests, errors, latency, impressions, clicks per version) before and after a
step's traffic is that step's window, the same :class:`VersionMetrics` the Prometheus path builds, and
:func:`storeflow.components.deploy.analysis.decide` says hold, advance, promote or roll back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
import numpy as np
import pandas as pd

from storeflow.components.config import Settings
from storeflow.components.deploy.analysis import Decision, decide
from storeflow.components.deploy.local_canary import (
    WARMUP_REQUESTS,
    Counts,
    LocalCanaryError,
    LocalCanaryResult,
    LocalServer,
    _free_port,
    run_steps,
    scrape,
    start_server,
    version_metrics,
)
from storeflow.components.deploy.prometheus import VersionMetrics

log = logging.getLogger(__name__)

IMPRESSIONS = "storeflow_recommendation_impressions_total"
CLICKS = "storeflow_recommendation_clicks_total"
PRODUCT_GID = "gid://shopify/Product/"


@dataclass(frozen=True)
class Shopper:
    basket: list[int]  # an earlier order's products: the cart or product page a request sends
    wants: frozenset[int]  # what they bought next, not in the basket: a shown one of these is clicked


def shoppers(tables: dict[str, pd.DataFrame]) -> list[Shopper]:
    """Every customer with two orders or more: their second-to-last order's products as the basket, their
    last order's other products as what they click when shown."""
    from storeflow.components.recommend.purchases import purchases

    events = purchases(tables)
    orders = events.groupby(["customer_id", "order_id"], sort=False).agg(
        at=("created_at", "first"), products=("product_id", lambda s: sorted(set(s))))
    found = []
    for _, rows in orders.sort_values("at", kind="stable").groupby(level=0, sort=True):
        if len(rows) < 2:
            continue
        basket, last = rows["products"].iloc[-2], rows["products"].iloc[-1]
        wants = frozenset(last) - set(basket)
        if wants:
            found.append(Shopper(basket, wants))
    return found


def latest_shoppers(settings: Settings) -> list[Shopper]:
    from storeflow.components.ingest.snapshot import newest_snapshot
    from storeflow.components.tables import read_tables

    snapshot = newest_snapshot(settings.data_dir / "snapshots")
    if snapshot is None:
        raise LocalCanaryError(f"no snapshot under {settings.data_dir}: no shoppers to replay")
    found = shoppers(read_tables(snapshot))
    if not found:
        raise LocalCanaryError(f"the snapshot {snapshot.name} has no customer with two orders: no shoppers to replay")
    return found


# -- servers --------------------------------------------------------------------------------------------
def launch(settings: Settings, version: str, role: str) -> LocalServer:
    """`storeflow serve-recommendations --version <version>` on a free loopback port (not yet ready): no auth
    (loopback, replayed traffic) and no logs, so the canary's made-up shoppers reach neither the feedback
    logs monitoring and the evaluate task read nor the prediction logs."""
    directory = settings.project.state_dir / "serving" / "local-canary"
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    served = settings.model_copy(update={
        "serving": settings.serving.model_copy(update={"host": "127.0.0.1", "auth": "off", "prediction_log": False}),
        "recommendations": settings.recommendations.model_copy(update={"port": port})})
    return start_server(served, port, directory / f"recommender-{role}-v{version}.log",
                        ["serve-recommendations", "--version", str(version)], settings.recommendations.model_name, 0)


@contextmanager
def servers(settings: Settings, champion: str, canary: str) -> Iterator[tuple[LocalServer, LocalServer]]:
    """The champion's and the canary's servers, started together (start-up dominates) and always stopped."""
    started: list[LocalServer] = []
    try:
        started.append(launch(settings, champion, "champion"))
        started.append(launch(settings, canary, "canary"))
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


def feedback_counts(text: str) -> dict[str, tuple[float, float]]:
    """(impressions, clicks) per ``model_version`` of a recommender server's ``/metrics`` text."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (IMPRESSIONS, CLICKS) and "model_version" in sample.labels:
                counts = found.setdefault(sample.labels["model_version"], [0.0, 0.0])
                counts[sample.name == CLICKS] += sample.value
    return {version: (shown, clicked) for version, (shown, clicked) in found.items()}


@dataclass(frozen=True)
class Scrape:
    counts: Counts
    impressions: float
    clicks: float

    def minus(self, before: Scrape) -> Scrape:
        return Scrape(self.counts.minus(before.counts), self.impressions - before.impressions,
                      self.clicks - before.clicks)

    def metrics(self) -> VersionMetrics:
        return replace(version_metrics(self.counts), score_buckets=(), impressions=self.impressions,
                       clicks=self.clicks)


def read(server: LocalServer, http: httpx.Client, version: str, error_status_regex: str) -> Scrape:
    text = server.exposition(http)
    shown, clicked = feedback_counts(text).get(version, (0.0, 0.0))
    return Scrape(scrape(text, error_status_regex).get(version, Counts()), shown, clicked)


# -- traffic --------------------------------------------------------------------------------------------
def shop(server: LocalServer, http: httpx.Client, shopper: Shopper, k: int) -> None:
    """One replayed shopper: ask, show (impression), click what they went on to buy."""
    try:
        answer = http.post(f"{server.url}/v1/models/{server.model_name}:predict",
                           json={"instances": [{"products": [f"{PRODUCT_GID}{p}" for p in shopper.basket], "k": k}]})
        if answer.status_code != 200:
            return  # counted as the error it is by the server's request metrics
        body = answer.json()
        shown = body["predictions"][0]["products"]
        if not shown:
            return
        event = {"request_id": body["request_id"], "model_version": str(body["model_version"]), "products": shown}
        http.post(f"{server.url}/v1/feedback", json={"event": "impression", **event})
        for gid in shown:
            if int(gid.removeprefix(PRODUCT_GID)) in shopper.wants:
                http.post(f"{server.url}/v1/feedback", json={"event": "click", "product": gid, **event})
    except httpx.HTTPError as exc:
        if server.process.poll() is not None:
            raise LocalCanaryError(f"storeflow serve-recommendations died during the canary: {server.log_path}") from exc


def drive(champion: LocalServer, canary: LocalServer, percent: int, http: httpx.Client, found: list[Shopper],
          requests: int, k: int, concurrency: int, deadline: float, rng: np.random.Generator) -> int:
    """Up to ``requests`` replayed shoppers, ``percent`` % of them sent to the canary; returns how many."""
    picked = rng.integers(0, len(found), requests)
    to_canary = rng.random(requests) < percent / 100

    def one(i: int) -> int:
        if time.monotonic() > deadline:
            return 0
        shop(canary if to_canary[i] else champion, http, found[picked[i]], k)
        return 1

    with ThreadPoolExecutor(concurrency) as pool:
        return sum(pool.map(one, range(requests)))


# -- the rollout ----------------------------------------------------------------------------------------
def run_recommender_canary(settings: Settings, version: str, previous: str, *, seed: int = 0) -> LocalCanaryResult:
    """Canary recommender ``version`` against ``previous`` on local servers (:func:`~storeflow.components.deploy.
    local_canary.run_steps`; :func:`storeflow.components.deploy.local.deploy_local` moves the alias on the
    outcome): the newest snapshot's shoppers replayed, judged on errors, p99 latency and click-through rate."""
    rng = np.random.default_rng(seed)
    deploy = settings.deploy

    @contextmanager
    def steps(result: LocalCanaryResult) -> Iterator[Callable[[int], Decision]]:
        found = latest_shoppers(settings)
        with servers(settings, result.previous_champion, result.model_version) as (champion, canary), \
                httpx.Client(timeout=10.0, limits=httpx.Limits(max_connections=2 * deploy.local_concurrency)) as http:
            start_seconds = max(s.wait_ready(deploy.local_start_timeout_seconds) for s in (champion, canary))
            yield lambda percent: _step(settings, champion, canary, percent, http, found, rng, result, start_seconds)

    return run_steps(settings, version, previous, "local recommender canary", steps)


def _step(settings: Settings, champion: LocalServer, canary: LocalServer, percent: int, http: httpx.Client,
          found: list[Shopper], rng: np.random.Generator, result: LocalCanaryResult, start_seconds: float) -> Decision:
    """Traffic and analyses at one step until ``decide`` stops holding (or the step's time runs out)."""
    deploy, k = settings.deploy, settings.recommendations.k
    started = time.monotonic()
    deadline = started + deploy.local_step_timeout_seconds
    regex = deploy.error_status_regex
    # first-call costs judge no one: warm both servers up before the window opens
    for server in (champion, canary):
        for i in rng.integers(0, len(found), WARMUP_REQUESTS):
            shop(server, http, found[i], k)
    before = (read(champion, http, result.previous_champion, regex), read(canary, http, result.model_version, regex))
    holds = 0
    while True:
        sent = drive(champion, canary, percent, http, found, deploy.local_requests_per_step, k,
                     deploy.local_concurrency, deadline, rng)
        theirs = read(champion, http, result.previous_champion, regex).minus(before[0]).metrics()
        ours = read(canary, http, result.model_version, regex).minus(before[1]).metrics()
        elapsed = f"{max(1, round(time.monotonic() - started))}s"  # the analysis window is this step so far
        decision = decide(settings.model_copy(update={"deploy": deploy.model_copy(update={"analysis_window": elapsed})}),
                          percent, holds, ours, theirs)
        if decision.action == "hold" and time.monotonic() > deadline:
            decision = Decision("rollback", 0, (f"insufficient data after {deploy.local_step_timeout_seconds:g} s at "
                                                f"{percent}%: " + "; ".join(decision.reasons),))
        result.steps.append(_record(percent, decision, start_seconds, time.monotonic() - started, sent, ours, theirs))
        log.info("local recommender canary v%s at %d%%: %s %s", result.model_version, percent, decision.action,
                 "; ".join(decision.reasons))
        if decision.action != "hold":
            return decision
        holds += 1


def _record(percent: int, decision: Decision, start: float, traffic: float, sent: int, canary: VersionMetrics,
            champion: VersionMetrics) -> dict[str, Any]:
    def ctr(m: VersionMetrics) -> float | None:
        return m.clicks / m.impressions if m.impressions else None

    return {"percent": percent, "action": decision.action, "reasons": list(decision.reasons),
            "server_start_seconds": round(start, 2), "traffic_seconds": round(traffic, 2), "sent": sent,
            "canary_requests": canary.requests, "champion_requests": champion.requests,
            "canary_error_rate": canary.error_rate, "champion_error_rate": champion.error_rate,
            "canary_p99_seconds": canary.p99_latency_seconds, "champion_p99_seconds": champion.p99_latency_seconds,
            "canary_impressions": canary.impressions, "champion_impressions": champion.impressions,
            "canary_ctr": ctr(canary), "champion_ctr": ctr(champion)}
