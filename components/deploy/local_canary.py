"""The local canary: the KServe rollout's steps and bounds, judged on a real `storeflow serve`.

For each of ``deploy.canary_steps`` below 100 a server is started on 127.0.0.1 with the previous champion
as main version and the new one as canary at that percent; bounded synthetic traffic (one customer of the
latest snapshot per request) goes through it, its ``/metrics`` become the same :class:`VersionMetrics`
the Prometheus path builds, and the same pure :func:`analysis.decide` says hold, advance, promote or
roll back. A fresh server per step makes its counters the step's analysis window, as ``increase()`` over
``analysis_window`` is on a cluster; warm-up requests are subtracted so first-call costs judge no one.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from storeflow.components.config import CONFIG_ENV, Settings
from storeflow.components.deploy.analysis import Decision, decide
from storeflow.components.deploy.prometheus import LATENCY, REQUESTS, SCORE, VersionMetrics

log = logging.getLogger(__name__)

WARMUP_REQUESTS = 20
CLI = "from storeflow.pipelines.cli import app; app()"


class LocalCanaryError(RuntimeError):
    """The local canary could not be run (no server, no customers, unreadable metrics); names why."""


# -- metrics --------------------------------------------------------------------------------------------
@dataclass
class Counts:
    """One version's raw counters from a ``/metrics`` scrape; differences of two scrapes are a window."""

    requests: float = 0.0
    errors: float = 0.0
    latency_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    score_buckets: dict[float, float] = field(default_factory=dict)

    def minus(self, before: Counts | None) -> Counts:
        if before is None:
            return self
        return Counts(
            self.requests - before.requests,
            self.errors - before.errors,
            {le: c - before.latency_buckets.get(le, 0.0) for le, c in self.latency_buckets.items()},
            {le: c - before.score_buckets.get(le, 0.0) for le, c in self.score_buckets.items()},
        )


def scrape(text: str, error_status_regex: str) -> dict[str, Counts]:
    """Per-``model_version`` counters of a storeflow server's Prometheus exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    errors = re.compile(error_status_regex)
    found: dict[str, Counts] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            version = sample.labels.get("model_version")
            if version is None:
                continue
            counts = found.setdefault(version, Counts())
            if sample.name == f"{REQUESTS}":
                counts.requests += sample.value
                if errors.fullmatch(sample.labels.get("status", "")):  # PromQL =~ is anchored
                    counts.errors += sample.value
            elif sample.name == f"{LATENCY}_bucket":
                le = float(sample.labels["le"])
                counts.latency_buckets[le] = counts.latency_buckets.get(le, 0.0) + sample.value
            elif sample.name == f"{SCORE}_bucket":
                le = float(sample.labels["le"])
                counts.score_buckets[le] = counts.score_buckets.get(le, 0.0) + sample.value
    return found


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative buckets (same interpolation, same edge cases)."""
    ordered = sorted(buckets.items())
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]) or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return ordered[-2][0]  # in the +Inf bucket: the highest finite bound
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return ordered[-2][0]


def version_metrics(counts: Counts | None) -> VersionMetrics:
    """The :class:`VersionMetrics` the Prometheus queries would give for this window of counters."""
    if counts is None or counts.requests <= 0:
        return VersionMetrics(0.0, None, None, tuple(sorted((counts.score_buckets if counts else {}).items())))
    return VersionMetrics(
        requests=counts.requests,
        error_rate=counts.errors / counts.requests,
        p99_latency_seconds=histogram_quantile(0.99, counts.latency_buckets),
        score_buckets=tuple(sorted(counts.score_buckets.items())),
    )


# -- server ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    """One `storeflow serve` process with the canary at ``percent``; :meth:`stop` always ends it."""

    url: str
    model_name: str
    percent: int
    process: subprocess.Popen
    log_path: Path
    config: Path
    launched: float

    def wait_ready(self, timeout: float) -> float:
        """Block until the model answers; returns seconds since launch."""
        deadline = self.launched + timeout
        with httpx.Client(timeout=2.0) as http:
            while True:
                if self.process.poll() is not None:
                    raise LocalCanaryError(f"storeflow serve exited with {self.process.returncode}: "
                                           + self.log_path.read_text()[-1500:])
                try:
                    if http.get(f"{self.url}/v1/models/{self.model_name}").status_code == 200:
                        return time.monotonic() - self.launched
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise LocalCanaryError(f"storeflow serve did not become ready within {timeout:g} s "
                                           f"(log {self.log_path})")
                time.sleep(0.2)

    def metrics(self, http: httpx.Client, error_status_regex: str) -> dict[str, Counts]:
        return scrape(self.exposition(http), error_status_regex)

    def exposition(self, http: httpx.Client) -> str:
        """The server's /metrics text; one it will not give fails the analysis (blind is failed)."""
        response = http.get(f"{self.url}/metrics")
        if response.status_code != 200:
            raise LocalCanaryError(f"{self.url}/metrics answered HTTP {response.status_code}")
        return response.text

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.config.unlink(missing_ok=True)


def launch_server(settings: Settings, main: str, canary: str, percent: int) -> LocalServer:
    """Start `storeflow serve` on a free loopback port with ``canary`` at ``percent`` (not yet ready).

    No auth (loopback, synthetic traffic) and no prediction log: the canary's made-up requests must not
    reach the logs that drift monitoring reads as real traffic.
    """
    directory = settings.project.state_dir / "serving" / "local-canary"
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    # Everything through the config file (STOREFLOW_CONFIG) and nothing on the command line: KServe parses
    # the server's argv with abbreviations allowed (`--config` reads as its `--configure_logging`), and
    # `--no-auth`'s `serving.auth=off` is YAML, where `off` is the boolean false.
    served = settings.model_copy(update={"serving": settings.serving.model_copy(update={
        "host": "127.0.0.1", "port": port, "workers": 1, "auth": "off", "prediction_log": False,
        "model_version": str(main), "canary_version": str(canary), "canary_percent": percent})})
    return start_server(served, port, directory / f"v{canary}-{percent}pct.log", ["serve"],
                        settings.registry.model_name, percent)


def start_server(served: Settings, port: int, log_path: Path, command: list[str], model_name: str,
                 percent: int) -> LocalServer:
    """Start ``storeflow <command>`` on loopback ``port`` with ``served`` as its whole config (a file beside
    its log, through STOREFLOW_CONFIG; no STOREFLOW_* of ours leaks in), not yet ready. Every model's local
    canary starts its servers so."""
    config = Path(tempfile.mkstemp(prefix="settings-", suffix=".yaml", dir=log_path.parent)[1])
    config.write_text(served.to_json())  # JSON is YAML: the server sees exactly these settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREFLOW_")} | {CONFIG_ENV: str(config)}
    with log_path.open("w") as out:
        process = subprocess.Popen([sys.executable, "-c", CLI, *command], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return LocalServer(f"http://127.0.0.1:{port}", model_name, percent, process, log_path, config, time.monotonic())


@contextmanager
def step_servers(settings: Settings, main: str, canary: str) -> Iterator[dict[int, LocalServer]]:
    """A server per analysed step, all launched at once: start-up (imports, model loads) dominates the
    local canary, and started side by side the steps cost one start-up, not one each. A server whose
    step is never reached (rolled back earlier) is stopped unused."""
    servers: dict[int, LocalServer] = {}
    try:
        for percent in settings.deploy.canary_steps[:-1]:
            servers[percent] = launch_server(settings, main, canary, percent)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


# -- traffic --------------------------------------------------------------------------------------------
def customer_ids(settings: Settings) -> np.ndarray:
    """Customers the online store has features for: the newest rows of Feast's customer source (what the
    features stage materialized), else the customers with orders in the latest ingested snapshot."""
    import pandas as pd

    from storeflow.components.features import offline
    from storeflow.components.features.repo import CUSTOMER_KEY, CUSTOMER_VIEW, source_path

    source = offline.snapshot_part(source_path(settings, CUSTOMER_VIEW))  # the applier's rows: its last batch's
    if source.exists():
        rows = pd.read_parquet(source, columns=[CUSTOMER_KEY, "event_timestamp"])
        ids = rows.loc[rows["event_timestamp"] == rows["event_timestamp"].max(), CUSTOMER_KEY]
    else:
        from storeflow.components.ingest.snapshot import newest_snapshot
        from storeflow.components.tables import read_table

        snapshot = newest_snapshot(settings.data_dir / "snapshots")
        if snapshot is None:
            raise LocalCanaryError(f"neither {source} nor a snapshot under {settings.data_dir}: no customers")
        ids = read_table(snapshot, "orders")["customer_id"]
    ids = ids.dropna().astype("int64").unique()
    if len(ids) == 0:
        raise LocalCanaryError("no customers to send canary traffic for")
    return np.sort(ids)


def drive(server: LocalServer, http: httpx.Client, customers: np.ndarray, requests: int, concurrency: int,
          deadline: float, rng: np.random.Generator) -> int:
    """Send up to ``requests`` single-customer V1 predictions, stopping at ``deadline``; returns how many.

    Any answer counts (errors are what the analysis is for); only an unreachable server is an error.
    """
    path = f"{server.url}/v1/models/{server.model_name}:predict"
    picked = rng.choice(customers, size=requests)

    def one(customer: int) -> int:
        if time.monotonic() > deadline:
            return 0
        try:
            http.post(path, json={"instances": [{"customer_id": int(customer)}]})
        except httpx.HTTPError as exc:
            if server.process.poll() is not None:
                raise LocalCanaryError(f"storeflow serve died during the canary: {server.log_path}") from exc
        return 1

    with ThreadPoolExecutor(concurrency) as pool:
        return sum(pool.map(one, picked))


# -- the rollout ----------------------------------------------------------------------------------------
@dataclass
class LocalCanaryResult:
    outcome: str  # promoted | rolled-back
    model_version: str
    previous_champion: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _analyse_step(settings: Settings, server: LocalServer, version: str, previous: str, customers: np.ndarray,
                  rng: np.random.Generator, steps: list[dict[str, Any]]) -> Decision:
    """Traffic and analyses at one step until ``decide`` stops holding (or the step's time runs out)."""
    deploy = settings.deploy
    percent = server.percent
    start_seconds = server.wait_ready(deploy.local_start_timeout_seconds)
    started = time.monotonic()
    deadline = started + deploy.local_step_timeout_seconds
    with httpx.Client(timeout=10.0, limits=httpx.Limits(max_connections=deploy.local_concurrency)) as http:
        drive(server, http, customers, WARMUP_REQUESTS, deploy.local_concurrency, deadline, rng)
        baseline = server.metrics(http, deploy.error_status_regex)
        holds = 0
        while True:
            sent = drive(server, http, customers, deploy.local_requests_per_step, deploy.local_concurrency,
                         deadline, rng)
            window = {v: c.minus(baseline.get(v)) for v, c in server.metrics(http, deploy.error_status_regex).items()}
            canary, champion = version_metrics(window.get(version)), version_metrics(window.get(previous))
            # The analysis window here is this step so far, not the cluster's PromQL range: say so.
            elapsed = f"{max(1, round(time.monotonic() - started))}s"
            step_settings = settings.model_copy(
                update={"deploy": deploy.model_copy(update={"analysis_window": elapsed})})
            decision = decide(step_settings, percent, holds, canary, champion)
            if decision.action == "hold" and time.monotonic() > deadline:
                decision = Decision("rollback", 0, (
                    f"insufficient data after {deploy.local_step_timeout_seconds:g} s at {percent}%: "
                    + "; ".join(decision.reasons),))
            steps.append({"percent": percent, "action": decision.action, "reasons": list(decision.reasons),
                          "server_start_seconds": round(start_seconds, 2),
                          "traffic_seconds": round(time.monotonic() - started, 2), "sent": sent,
                          "canary_requests": canary.requests, "champion_requests": champion.requests,
                          "canary_error_rate": canary.error_rate, "champion_error_rate": champion.error_rate,
                          "canary_p99_seconds": canary.p99_latency_seconds,
                          "champion_p99_seconds": champion.p99_latency_seconds})
            log.info("local canary v%s at %d%%: %s %s", version, percent, decision.action, "; ".join(decision.reasons))
            if decision.action != "hold":
                return decision
            holds += 1


def run_steps(settings: Settings, version: str, previous: str, what: str,
              open_steps: Callable[[LocalCanaryResult], AbstractContextManager[Callable[[int], Decision]]],
              ) -> LocalCanaryResult:
    """Canary ``version`` against ``previous`` through ``deploy.canary_steps``, the same walk for every model:
    ``open_steps(result)`` starts what the canary needs (servers, traffic) and gives the analysis of one step
    at a traffic percent, which advances, promotes or rolls back. No registry writes here.

    A canary that cannot be judged (a server does not start, nothing to send, metrics unreadable) is rolled
    back, as on a cluster: blind analysis is a failed analysis. ``what`` names it in that reason.
    """
    started = time.monotonic()
    result = LocalCanaryResult("promoted", str(version), str(previous))
    if settings.deploy.canary_steps == [100]:
        result.reasons = ["deploy.canary_steps is [100]: promoted without a canary"]
        return result
    percent = settings.deploy.canary_steps[0]
    try:
        with open_steps(result) as step:
            while True:
                decision = step(percent)
                if decision.action != "advance":
                    break
                percent = decision.percent
        result.outcome = "promoted" if decision.action == "promote" else "rolled-back"
        result.reasons = list(decision.reasons)
    except (LocalCanaryError, httpx.HTTPError, ValueError, OSError) as exc:
        reason = f"{what} failed at {percent}%: {exc}"
        log.error(reason)
        result.steps.append({"percent": percent, "action": "rollback", "reasons": [reason]})
        result.outcome, result.reasons = "rolled-back", [reason]
    result.seconds = round(time.monotonic() - started, 2)
    return result


def run_local_canary(settings: Settings, version: str, previous: str, *, seed: int = 0) -> LocalCanaryResult:
    """Canary propensity ``version`` against ``previous`` on local servers (:func:`run_steps`): the store's
    customers scored by both, judged on errors, p99 latency and the score distribution."""
    rng = np.random.default_rng(seed)

    @contextmanager
    def steps(result: LocalCanaryResult) -> Iterator[Callable[[int], Decision]]:
        customers = customer_ids(settings)
        with step_servers(settings, result.previous_champion, result.model_version) as servers:
            yield lambda percent: _analyse_step(settings, servers[percent], result.model_version,
                                                result.previous_champion, customers, rng, result.steps)

    return run_steps(settings, version, previous, "local canary", steps)


def summary(result: LocalCanaryResult) -> str:
    """One line per analysis, for people (the demo and the pipeline log)."""
    lines = []
    for step in result.steps:
        counts = ""
        if "canary_requests" in step:
            counts = f" (canary {step['canary_requests']:g} / champion {step['champion_requests']:g} requests)"
        lines.append(f"  {step['percent']:>3}% {step['action']:<8}{counts}: {'; '.join(step['reasons'])}")
    lines.append(f"  → {result.outcome} v{result.model_version} in {result.seconds:.1f} s")
    return "\n".join(lines)
