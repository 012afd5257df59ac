"""Monitoring without a trained model: reading the prediction log, Evidently drift levels, ground truth,
the Prometheus exposition and the once-per-window retraining rule."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import write_snapshot
from storeflow.components.config import MonitorConfig
from storeflow.components.monitor import drift, metrics, retrain_if_needed, window_id
from storeflow.components.monitor.retrain import marker_path
from storeflow.components.monitor.labels import attach_labels
from storeflow.components.monitor.predictions import read_window

COLUMNS = ["recency_days", "frequency", "avg_order_value"]
END = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)


def _frame(n: int, seed: int, value_lift: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"recency_days": rng.exponential(40, n), "frequency": rng.poisson(4, n).astype(float),
                         "avg_order_value": rng.gamma(2, 30 * value_lift, n), "score": rng.beta(2, 5, n)})


def _log(directory: Path, frame: pd.DataFrame, version: str = "1", end: datetime = END, name: str = "a",
         drop: tuple[str, ...] = ()) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"predictions-20260601T000000-{name}.jsonl"
    with path.open("a") as out:
        for i, row in frame.reset_index(drop=True).iterrows():
            out.write(json.dumps({
                "ts": (end - timedelta(minutes=1 + i % 600)).isoformat(), "request_id": str(i),
                "model_name": "m", "model_version": version, "customer_id": int(i), "fallback": False,
                "score": float(row["score"]),
                "features": {c: (None if pd.isna(row[c]) else float(row[c])) for c in COLUMNS if c not in drop},
                "cart": None, "shop": "demo-store.myshopify.com"}) + "\n")
    return path


# -- the prediction log -------------------------------------------------------------------------------

def test_window_reads_the_most_served_version_and_skips_unfinished_lines(tmp_path: Path) -> None:
    path = _log(tmp_path, _frame(300, 0), version="3")
    _log(tmp_path, _frame(50, 1), version="4", name="b")
    _log(tmp_path, _frame(20, 2), version="3", end=END - timedelta(days=2), name="c")  # before the window
    with path.open("a") as out:
        out.write('{"ts": "2026-06-01T11:00:00+00:00", "model_version": "3", "sco')  # being written
    window = read_window(tmp_path, END - timedelta(hours=24), END, COLUMNS, None, max_rows=10_000)
    assert window.model_version == "3" and window.rows == 300
    assert window.rows_by_version == {"3": 300, "4": 50}
    assert list(window.frame.columns[:4]) == ["ts", "customer_id", "fallback", "score"]
    assert window.frame["avg_order_value"].notna().all() and not window.sampled


def test_large_window_is_sampled_with_a_stated_error(tmp_path: Path) -> None:
    _log(tmp_path, _frame(3000, 0))
    window = read_window(tmp_path, END - timedelta(hours=24), END, COLUMNS, "1", max_rows=1000)
    assert window.rows == 3000 and len(window.frame) == 1000 and window.sampled
    assert window.cdf_error_95 == pytest.approx(np.sqrt(np.log(40) / 2000))


def test_feature_absent_from_every_line_is_reported_missing(tmp_path: Path) -> None:
    _log(tmp_path, _frame(200, 0), drop=("frequency",))
    window = read_window(tmp_path, END - timedelta(hours=24), END, COLUMNS, "1", max_rows=1000)
    assert window.present_features == ["recency_days", "avg_order_value"]


def test_empty_or_absent_log_dir_is_an_empty_window(tmp_path: Path) -> None:
    window = read_window(tmp_path / "nowhere", END - timedelta(hours=1), END, COLUMNS, None, max_rows=1000)
    assert window.rows == 0 and window.frame.empty and window.rows_by_version == {}


# -- drift levels (Evidently) -------------------------------------------------------------------------

def test_shifted_order_values_are_critical_and_unshifted_traffic_is_ok() -> None:
    reference, cfg = _frame(3000, 0), MonitorConfig()
    same = drift.analyse(reference, _frame(2000, 1), COLUMNS, COLUMNS, cfg)
    assert same.level == "ok" and same.drifted_count == 0
    assert all(c.status == "analysed" and c.psi is not None and c.method for c in same.columns)

    shifted = drift.analyse(reference, _frame(2000, 1, value_lift=1.8), COLUMNS, COLUMNS, cfg)
    by_name = {c.column: c for c in shifted.columns}
    assert by_name["avg_order_value"].drifted and by_name["avg_order_value"].level == "critical"
    assert by_name["avg_order_value"].psi > cfg.psi_critical
    assert not by_name["recency_days"].drifted and by_name["recency_days"].level == "ok"
    assert shifted.drifted_share == pytest.approx(1 / 3) and shifted.share_level == "warning"
    assert shifted.level == "critical" and shifted.prediction is not None


def test_thresholds_come_from_config() -> None:
    reference, current = _frame(3000, 0), _frame(2000, 1, value_lift=1.8)
    lenient = MonitorConfig(feature_thresholds={"avg_order_value": {"warning": 5, "critical": 10}},
                            drift_share_warning=0.5, drift_share_critical=0.9)
    result = drift.analyse(reference, current, COLUMNS, COLUMNS, lenient)
    assert result.level == "ok"
    with pytest.raises(ValueError, match="must not be below"):
        MonitorConfig(psi_warning=0.3, psi_critical=0.2)


def test_missing_and_all_null_columns_get_a_status_not_a_crash() -> None:
    current = _frame(500, 1).drop(columns=["frequency"]).assign(recency_days=np.nan)
    result = drift.analyse(_frame(1000, 0), current, COLUMNS, ["recency_days", "avg_order_value"], MonitorConfig())
    statuses = {c.column: c.status for c in result.columns}
    assert statuses == {"avg_order_value": "analysed", "recency_days": "all-null", "frequency": "missing"}
    assert result.report is not None

    nothing = drift.analyse(_frame(100, 0), current.drop(columns=["score"]), ["recency_days"], ["recency_days"],
                            MonitorConfig())
    assert nothing.report is None and nothing.columns[0].status == "all-null" and nothing.level == "ok"


# -- ground truth -------------------------------------------------------------------------------------

def test_labels_come_from_later_orders_once_the_horizon_has_passed(tmp_path: Path, store_tables) -> None:
    snapshot = write_snapshot(store_tables, tmp_path / "snap")
    orders = store_tables["orders"]
    last = orders["created_at"].max()
    first = orders.sort_values("created_at").groupby("customer_id").first()
    returning = int(orders.groupby("customer_id").size().idxmax())
    t0 = first.loc[returning, "created_at"]
    quiet = orders.groupby("customer_id")["created_at"].max().idxmin()  # last order long ago
    predictions = pd.DataFrame({
        "customer_id": [returning, int(quiet), returning],
        "ts": [t0 + timedelta(seconds=1), orders.groupby("customer_id")["created_at"].max().min()
               + timedelta(seconds=1), last - timedelta(days=5)]})
    labels = attach_labels(predictions, snapshot, horizon_days=60)
    assert labels.iloc[0] == 1 and labels.iloc[1] == 0  # came back / never did
    assert pd.isna(labels.iloc[2])  # its 60 days are not over yet


# -- Prometheus ---------------------------------------------------------------------------------------

SUMMARY = {"model_version": "7", "level": "critical", "rows": {"window": 5000, "sampled": 5000, "labelled": 300},
           "drift": {"drifted_share": 0.5, "columns": [
               {"column": "avg_order_value", "method": "Wasserstein distance (normed)", "drift_score": 0.4,
                "psi": 0.31},
               {"column": "frequency", "method": None, "drift_score": None, "psi": None}],
               "prediction": {"column": "score", "method": "Wasserstein distance (normed)", "drift_score": 0.2,
                              "psi": 0.12}},
           "decay": {"roc_auc": 0.71, "calibration_error": 0.04}}


def _samples(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_textfile_exposition_has_drift_share_scores_psi_and_level(tmp_path: Path) -> None:
    target = metrics.publish(SUMMARY, tmp_path / "metrics.prom", None, "job")
    samples = _samples(Path(target).read_text())
    assert samples[("storeflow_drift_share", (("model_version", "7"),))] == 0.5
    assert samples[("storeflow_feature_psi", (("feature", "avg_order_value"), ("model_version", "7")))] == 0.31
    assert samples[("storeflow_feature_psi", (("feature", "score"), ("model_version", "7")))] == 0.12
    assert samples[("storeflow_drift_score", (("feature", "avg_order_value"),
                                              ("method", "Wasserstein distance (normed)"),
                                              ("model_version", "7")))] == 0.4
    assert samples[("storeflow_monitor_level", (("model_version", "7"),))] == 2
    assert samples[("storeflow_served_auc", (("model_version", "7"),))] == 0.71
    assert not any(k[0] == "storeflow_feature_psi" and ("feature", "frequency") in k[1] for k in samples)


def test_pushgateway_gets_the_same_gauges_grouped_by_version() -> None:
    received: dict = {}

    class Gateway(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802 - http.server API
            received["path"] = self.path
            received["body"] = self.rfile.read(int(self.headers["Content-Length"])).decode()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Gateway)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        assert metrics.publish(SUMMARY, Path("unused.prom"), url, "storeflow-monitoring") == url
        thread.join(5)
    finally:
        server.server_close()
    assert received["path"] == "/metrics/job/storeflow-monitoring/model_version/7"
    assert _samples(received["body"])[("storeflow_drift_share", (("model_version", "7"),))] == 0.5


# -- retraining, once per window ----------------------------------------------------------------------

def _summary(level: str, end: datetime = END, version: str = "3") -> dict:
    return {"level": level, "model_version": version, "reasons": ["critical: avg_order_value PSI 0.4"],
            "window": {"start": (end - timedelta(hours=24)).isoformat(), "end": end.isoformat()}}


def test_critical_starts_one_training_run_per_version_and_window(settings) -> None:
    started: list = []
    launchers = {"local": lambda s: started.append(s) or {"run": len(started)}}
    first = retrain_if_needed(settings, _summary("critical"), launchers)
    again = retrain_if_needed(settings, _summary("critical", END + timedelta(minutes=30)), launchers)
    assert first.started and first.run == {"run": 1} and not again.started
    assert "already started" in again.reason and len(started) == 1
    assert json.loads(Path(first.marker).read_text())["run"] == {"run": 1}

    next_window = END + timedelta(hours=settings.monitor.window_hours)
    assert window_id(next_window, settings.monitor.window_hours) != window_id(END, settings.monitor.window_hours)
    assert retrain_if_needed(settings, _summary("critical", next_window), launchers).started
    assert retrain_if_needed(settings, _summary("critical", version="4"), launchers).started  # a new champion
    assert len(started) == 3


def test_warning_or_off_never_retrains(settings) -> None:
    launchers = {"local": lambda s: pytest.fail("must not start"), "cluster": lambda s: pytest.fail("must not")}
    assert not retrain_if_needed(settings, _summary("warning"), launchers).started
    off = settings.model_copy(deep=True)
    off.monitor.retrain = "off"
    assert "off" in retrain_if_needed(off, _summary("critical"), launchers).reason


def test_failed_launch_leaves_the_window_open_for_a_retry(settings) -> None:
    cluster = settings.model_copy(deep=True)
    cluster.monitor.retrain = "cluster"

    def unreachable(s):
        raise ValueError("no Kubeflow Pipelines host")

    with pytest.raises(RuntimeError, match="no Kubeflow Pipelines host"):
        retrain_if_needed(cluster, _summary("critical"), {"cluster": unreachable})
    assert retrain_if_needed(cluster, _summary("critical"), {"cluster": lambda s: {"run_id": "r1"}}).started



def test_a_retraining_start_that_was_killed_is_started_again_by_the_next_run(settings) -> None:
    """A monitor killed while its local training run went (kill -9, Ctrl-C) left the window's marker, and every
    later run said 'retraining already started for v3 in this window' with nothing running: the window's
    retraining was lost. While the start goes on, another run still starts nothing."""
    import signal
    import subprocess
    import sys
    import time

    summary = _summary("critical")
    code = ("import json, sys, time; from storeflow.components.config import load_settings; "
            "from storeflow.components.monitor import retrain_if_needed; "
            "settings, summary = load_settings(sys.stdin.readline()), json.loads(sys.stdin.readline()); "
            "retrain_if_needed(settings, summary, {'local': lambda s: time.sleep(600)})")
    starting = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True)
    starting.stdin.write(settings.to_json() + "\n" + json.dumps(summary) + "\n")
    starting.stdin.close()
    marker = marker_path(settings, "3", END)
    try:
        while not (marker.exists() and marker.read_text()):  # its training run has started
            assert starting.poll() is None, "the starting process ended"
            time.sleep(0.1)
        launchers = {"local": lambda s: {"run": "again"}}
        assert "already started" in retrain_if_needed(settings, summary, launchers).reason  # it still goes on
    finally:
        starting.send_signal(signal.SIGKILL)
        starting.wait()
    again = retrain_if_needed(settings, summary, launchers)
    assert again.started and again.run == {"run": "again"}
    assert json.loads(marker.read_text())["run"] == {"run": "again"}
    assert not retrain_if_needed(settings, summary, launchers).started  # and only once

def test_cluster_mode_submits_the_compiled_training_pipeline(settings, monkeypatch) -> None:
    from storeflow.pipelines import kfp_api
    from storeflow.pipelines.retraining import LAUNCHERS

    calls = []
    monkeypatch.setattr(kfp_api, "start_run", lambda s, package, **kw: calls.append(package) or kfp_api.Submitted(
        "run-1", "http://kfp/#/runs/details/run-1"))
    cluster = settings.model_copy(deep=True)
    cluster.monitor.retrain = "cluster"
    decision = retrain_if_needed(cluster, _summary("critical"), LAUNCHERS)
    assert decision.started and decision.run["run_id"] == "run-1" and len(calls) == 1
    assert calls[0].name == "training.yaml"


# -- Grafana dashboard --------------------------------------------------------------------------------

@pytest.mark.skipif(__import__("shutil").which("kubectl") is None, reason="kubectl renders kustomize")
def test_grafana_dashboard_ships_and_queries_only_metrics_storeflow_exports() -> None:
    import re
    import subprocess

    import yaml

    from storeflow.serving import metrics as serving_metrics

    base = Path(__file__).parents[1] / "kustomize" / "base"
    rendered = subprocess.run(["kubectl", "kustomize", str(base)], capture_output=True, text=True, check=True).stdout
    config_map = next(d for d in yaml.safe_load_all(rendered)
                      if d and d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard"))
    dashboard = json.loads(config_map["data"]["storeflow.json"])
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {re.sub(r"_(bucket|count|sum|total)$", "", m) for q in queries for m in re.findall(r"storeflow_\w+", q)}

    exported = {m.describe()[0].name for m in (serving_metrics.REQUESTS, serving_metrics.LATENCY)}
    exported |= {f.name for f in metrics.build_registry(SUMMARY).collect()}
    assert used <= exported, f"dashboard queries unknown metrics {used - exported}"
    assert any("storeflow_request_latency_seconds_bucket" in q and "model_version" in q for q in queries)
    assert any("storeflow_requests_total" in q and "by (model_version)" in q for q in queries)
    assert {"storeflow_drift_share", "storeflow_feature_psi"} <= used


def test_cluster_retraining_starts_from_inside_a_kfp_task(tmp_path) -> None:
    """A monitoring pipeline's retrain task runs with the kfp SDK in runtime mode (_KFP_RUNTIME=true): the
    cluster launcher failed there with ImportError (no PipelineTask, no client), and since that is not a
    'nothing started' error the window's marker stayed, so retraining never happened. It now submits from
    a child process with the whole SDK; tested against a recorded-format KFP API on loopback."""
    import os
    import subprocess
    import sys

    from kfp_api import KfpApi

    from storeflow.components.config import load_settings

    token = tmp_path / "token"
    token.write_text("projected-token\n")
    code = ("import json, sys; from storeflow.components.config import load_settings; "
            "from storeflow.pipelines.retraining import LAUNCHERS; "
            "print(json.dumps(LAUNCHERS['cluster'](load_settings(sys.stdin.read()))))")
    with KfpApi() as api:
        settings = load_settings({"project": {"state_dir": str(tmp_path / "state")}, "monitor": {"retrain": "cluster"},
                                  "kfp": {"host": api.url, "token_path": str(token), "namespace": "shop-ml"}})
        done = subprocess.run([sys.executable, "-c", code], input=settings.to_json(), capture_output=True, text=True,
                              env={**os.environ, "_KFP_RUNTIME": "true"}, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    assert run["run_id"] == "0b5c9a3e-0000-4000-8000-00000000abcd"
    created = [r for r in api.requests if r.path == "/apis/v2beta1/runs"]
    assert len(created) == 1 and created[0].headers["authorization"] == "Bearer projected-token"
    assert created[0].body["display_name"].startswith("retrain-")


def test_monitor_with_no_model_registered_says_so_and_fails(settings) -> None:
    """It printed 'model vNone · ... no-data · ok' and exited 0, as if a model had been watched and found fine."""
    from typer.testing import CliRunner

    from storeflow.pipelines.cli import app

    result = CliRunner().invoke(app, ["monitor", "--in-process", "--set",
                                      f"project.state_dir={settings.project.state_dir}"], env={"COLUMNS": "1000"})
    assert result.exit_code == 1, result.output
    assert "no model to monitor: storeflow-repeat-purchase has no champion in the registry" in result.output
    assert "storeflow run" in result.output and "vNone" not in result.output and "Traceback" not in result.output


def test_monitor_with_a_registry_it_cannot_read_names_why(settings) -> None:
    """The reason stayed in the report's notes; the line said only that the champion could not be asked for."""
    from typer.testing import CliRunner

    from storeflow.pipelines.cli import app

    settings.project.state_dir.mkdir(parents=True)
    (settings.project.state_dir / "mlflow.db").write_bytes(b"not a database " * 100)
    result = CliRunner().invoke(app, ["monitor", "--in-process", "--set",
                                      f"project.state_dir={settings.project.state_dir}"], env={"COLUMNS": "1000"})
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"no model to monitor: the champion could not be looked up (the MLflow registry "
                                    f"{settings.tracking_uri} (registry.tracking_uri) cannot be read: file is not a "
                                    "database), and no model version's predictions were logged"), result.output


@pytest.mark.parametrize("method", ["bogus", "chisquare"])
def test_a_drift_method_evidently_has_no_numerical_test_of_is_a_config_error(settings, method: str) -> None:
    """It was taken, and monitoring died in Evidently's StatTestNotFoundError traceback once the report ran."""
    from typer.testing import CliRunner

    from storeflow.pipelines.cli import app

    result = CliRunner().invoke(app, ["monitor", "--in-process", "--set", f"project.state_dir={settings.project.state_dir}",
                                      "--set", f"monitor.drift_method={method}"], env={"COLUMNS": "1000"})
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"monitor.drift_method '{method}' is not an Evidently drift test of numerical "
                                    "features"), result.output
    assert len(result.output.splitlines()) == 1 and not (settings.project.state_dir / "monitoring").exists()


@pytest.mark.slow
def test_a_failed_monitoring_pipeline_says_the_tasks_error(settings, tmp_path: Path) -> None:
    """storeflow monitor (kfp.local) said only 'monitoring failed at task validate; log: ...': the validation
    report naming the rule and rows was left in the log; storeflow run says the task's error."""
    from typer.testing import CliRunner

    from storeflow.pipelines.cli import app
    from test_cli import _orders_csv

    csv = _orders_csv(tmp_path, "no-currency")
    result = CliRunner().invoke(app, ["monitor", "--set", f"project.state_dir={settings.project.state_dir}",
                                      "--set", "ingest.source=csv", "--set", f"ingest.path={csv}"],
                                env={"COLUMNS": "1000"})
    assert result.exit_code == 1, result.output
    said = result.output[result.output.index("pipeline failed at task validate: "):]
    assert "Validation FAILED for snapshot" in said and "have no currency: order_id" in said, result.output
    assert "Traceback" not in result.output and "full log (with the traceback): " in result.output


@pytest.mark.parametrize("version", ["99", "abc"])
def test_monitoring_a_version_that_is_neither_registered_nor_served_is_an_error(settings, version: str) -> None:
    """--model-version 99 (a typo) printed 'no logged predictions for v99 ... ok' and exited 0."""
    from typer.testing import CliRunner

    from storeflow.pipelines.cli import app

    result = CliRunner().invoke(app, ["monitor", "--in-process", "--model-version", version, "--set",
                                      f"project.state_dir={settings.project.state_dir}"], env={"COLUMNS": "1000"})
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1].startswith(
        f"no model to monitor: storeflow-repeat-purchase has no version '{version}' in the registry at "
        f"{settings.tracking_uri}, and no predictions of v{version} were logged between "), result.output


def test_a_window_end_without_a_zone_is_utc_whatever_the_machines_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`storeflow monitor --window-end 2026-12-07T12:00` ("UTC end of the window") analysed the window ending 17:00 UTC
    on a machine in New York: a time without a zone was taken as local time. Found by testing from outside."""
    import time

    from conftest import quick_overrides
    from storeflow.components.config import load_settings
    from storeflow.components.monitor import monitor

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        settings = load_settings(quick_overrides(tmp_path))
        result = monitor(settings, end=datetime(2026, 12, 7, 12), log_to_mlflow=False, publish=False)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert result.summary["window"]["end"] == "2026-12-07T12:00:00+00:00"
    assert result.summary["window"]["start"] == "2026-12-06T12:00:00+00:00"


@pytest.mark.slow
def test_monitor_prints_its_own_runs_report_not_the_newest_one(settings) -> None:
    """storeflow monitor (kfp.local) printed the newest summary.json under the reports folder: a monitoring run
    that finished beside it (a scheduled one, a second terminal) had its verdict printed as this run's."""
    import os
    import time

    from typer.testing import CliRunner

    from storeflow.pipelines.cli import app

    other = settings.project.state_dir / "monitoring" / "reports" / "v7-20261208T000000Z"
    other.mkdir(parents=True)
    (other / "summary.json").write_text(json.dumps({
        "status": "analysed", "level": "critical", "model_version": "7", "rows": {"window": 900}, "notes": [],
        "reasons": ["critical: the other run's verdict"], "window": {"start": "2026-12-07T00:00:00+00:00",
                                                                     "end": "2026-12-08T00:00:00+00:00"}}))
    later = time.time() + 3600
    os.utime(other / "summary.json", (later, later))  # it finishes after this one
    result = CliRunner().invoke(app, ["monitor", "--set", f"project.state_dir={settings.project.state_dir}",
                                      "--set", "ingest.synthetic.customers=50", "--set", "ingest.synthetic.orders=300"],
                                env={"COLUMNS": "1000"})
    assert result.exit_code == 1, result.output  # this run: nothing registered, nothing to monitor
    assert "no model to monitor: storeflow-repeat-purchase has no champion" in result.output
    assert "v7" not in result.output and "the other run's verdict" not in result.output


@pytest.mark.slow
def test_a_local_run_does_not_retry_a_failed_task(settings) -> None:
    """kfp.local honours the tasks' retry policy (kfp.retry, for a cluster's passing outages): a config error in
    the monitor task was run four times, 30 s, 60 s and 120 s apart, before the run failed."""
    from typer.testing import CliRunner

    from storeflow.pipelines.cli import app

    result = CliRunner().invoke(app, ["monitor", "--set", f"project.state_dir={settings.project.state_dir}",
                                      "--set", "ingest.synthetic.customers=50", "--set", "ingest.synthetic.orders=300",
                                      "--set", "monitor.drift_method=bogus"], env={"COLUMNS": "1000"})
    assert result.exit_code == 1 and "pipeline failed at task monitor: " in result.output, result.output
    log = Path(result.output.split("full log (with the traceback): ")[1].split()[0]).read_text()
    assert log.count("Executing task 'monitor'") == 1 and "Retrying in" not in log


def test_a_version_whose_model_files_are_gone_is_reported_not_a_crash(settings) -> None:
    """Its artifacts deleted (a pruned artifact store, a copied state dir), monitoring died in MLflow's 'No such
    artifact' traceback, though a scheduled run always leaves a report."""
    import shutil
    from urllib.parse import urlparse

    import mlflow
    from sklearn.linear_model import LogisticRegression

    from storeflow.components import tracking
    from storeflow.components.monitor import monitor
    from storeflow.components.monitor.predictions import log_dir

    client, name, digest = tracking.connect(settings), settings.registry.model_name, "0123456789abcdef" * 2
    training = _frame(300, seed=1)
    (settings.data_dir / "training").mkdir(parents=True)
    training.to_parquet(settings.data_dir / "training" / f"{digest[:16]}.parquet")  # the version's training set
    model = LogisticRegression().fit(training[COLUMNS], training["score"] > 0.3)
    with mlflow.start_run(experiment_id=tracking.experiment_id(settings, client),
                          tags={"storeflow.dataset_hash": digest}):
        info = mlflow.sklearn.log_model(model, name="model")
    version = str(mlflow.register_model(info.model_uri, name).version)
    client.set_registered_model_alias(name, tracking.CHAMPION, version)
    files = urlparse(client.get_model_version_download_uri(name, version)).path
    shutil.rmtree(files)  # ... and its model's files are gone
    _log(log_dir(settings), _frame(150, seed=2), version=version)

    result = monitor(settings, end=END, publish=False)
    assert result.status == "no-reference" and result.summary_json.exists()
    assert f"{name} v{version}: its model could not be loaded from file://{files}: " in " ".join(result.summary["notes"])


@pytest.mark.slow
def test_the_monitoring_pipelines_window_end_without_a_zone_is_utc_too(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """storeflow monitor (kfp.local) fixes the window's end itself (9706325) and took a --window-end without a zone
    as this machine's local time there, as the stage did before 7de8596."""
    import time

    from typer.testing import CliRunner

    from storeflow.pipelines.cli import app

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        result = CliRunner().invoke(app, ["monitor", "--window-end", "2026-12-07T12:00", "--set",
                                          f"project.state_dir={settings.project.state_dir}",
                                          "--set", "ingest.synthetic.customers=50", "--set",
                                          "ingest.synthetic.orders=300"], env={"COLUMNS": "1000"})
    finally:
        monkeypatch.undo()
        time.tzset()
    assert result.exit_code == 1, result.output  # nothing registered: the line names the window
    assert "logged between 2026-12-06 12:00 and 2026-12-07 12:00 UTC" in result.output, result.output
