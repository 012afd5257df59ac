"""The order risk model's served window, beside the propensity model's: score and feature drift, alert rate, and
decay as dispute and chargeback labels mature weeks later.

Read from the risk server's prediction log (:mod:`storeflow.components.risk.logs`: every scored order with the 31
features it saw, locally and in ``<serving.prediction_log_store>/risk/``), against the version's holdout, which the
risk stage logs on its MLflow run (``reference/holdout.parquet``: features, the model's score, the label).

* Drift: Evidently, as for propensity (:func:`storeflow.components.monitor.drift.analyse`): each order feature's
  drift test and PSI, the share of drifted features, and the score's drift (prediction drift).
* Alert rate: the share of the window's orders scored HIGH or MEDIUM against the holdout's share under the same
  cut points, as a ratio either way, judged at 95 % confidence (the window's Wilson interval): a model that holds
  twice as many orders as it did on its holdout, or half as many, is critical at the default thresholds.
* Decay: predictions logged ``monitor.risk_decay_days`` before the labels' maturity line (``risk.maturity_days``
  before the window's end), joined by order id to the labels the newest snapshot has (orders created
  ``risk.maturity_days`` before its last order): PR-AUC and recall at ``risk.fpr`` against the holdout's.

A critical level starts the risk pipeline (:func:`storeflow.components.monitor.retrain.retrain_risk_if_needed`),
once per risk version and window, on its own verdict: each model retrains its own pipeline.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from storeflow.components.config import Settings
from storeflow.components.monitor import drift as drift_mod
from storeflow.components.monitor.recommendations import wilson_upper
from storeflow.components.risk.assess import Levels
from storeflow.components.risk.features import LABEL, ORDER_FEATURES
from storeflow.components.risk.logs import local_dir, window_files

ALERTS = ("HIGH", "MEDIUM")
SCORE = drift_mod.SCORE


@dataclass
class RiskReference:
    """A risk version's holdout: what its served orders are compared with."""

    model_version: str
    run_id: str
    frame: pd.DataFrame  # ORDER_FEATURES, score, fraud
    levels: Levels
    holdout: dict[str, float]  # the model's holdout metrics (pr_auc, recall_at_1pct_fpr, ...)

    @property
    def alert_rate(self) -> float:
        return alert_rate(self.frame[SCORE], self.levels)


@dataclass
class RiskWindow:
    summary: dict
    report: Any = field(default=None, repr=False)  # the Evidently snapshot of the drift, when it ran


def alert_rate(scores: pd.Series, levels: Levels) -> float:
    """The share of orders a score puts at HIGH or MEDIUM."""
    return float((np.asarray(scores, dtype=float) >= levels.medium).mean()) if len(scores) else float("nan")


def judge_alerts(alerts: int, rows: int, reference_rate: float, warning: float, critical: float) -> dict:
    """The window's alert share against the holdout's: the ratio either way that the window's 95 % Wilson interval
    still supports (no verdict without a reference share or rows)."""
    out: dict = {"alerts": int(alerts), "rows": int(rows), "rate": alerts / rows if rows else None,
                 "reference_rate": reference_rate, "ratio": None, "level": "ok"}
    if not rows or not reference_rate or np.isnan(reference_rate):
        return out
    high = wilson_upper(alerts, rows)
    low = 1 - wilson_upper(rows - alerts, rows)
    more, fewer = low / reference_rate, reference_rate / high if high > 0 else float("inf")
    ratio = max(more, fewer, 1.0)
    return {**out, "ratio": float(ratio), "direction": "more" if more >= fewer else "fewer",
            "rate_ci": [float(low), float(high)], "level": drift_mod.level(ratio, warning, critical)}


def decay(labelled: pd.DataFrame, reference: RiskReference | None, settings: Settings) -> dict:
    """PR-AUC and recall at ``risk.fpr`` of the matured predictions, against the version's holdout."""
    from storeflow.components.risk.model import risk_metrics

    cfg, fpr = settings.monitor, settings.risk.fpr
    recall = f"recall_at_{fpr:.0%}_fpr".replace("%", "pct")
    frauds = int(labelled[LABEL].sum()) if len(labelled) else 0
    out: dict = {"labelled": int(len(labelled)), "frauds": frauds, "status": "awaiting-labels", "level": "ok"}
    if len(labelled) < cfg.min_labelled_rows or frauds < cfg.risk_min_frauds:
        out["reason"] = (f"{len(labelled)} predictions with matured labels ({frauds} fraud; risk.maturity_days "
                         f"{settings.risk.maturity_days}); need {cfg.min_labelled_rows} and "
                         f"{cfg.risk_min_frauds} fraud")
        return out
    if frauds == len(labelled):
        return {**out, "status": "single-class", "reason": "every matured prediction was fraud"}
    served = risk_metrics(labelled[LABEL].astype(int).to_numpy(), labelled[SCORE].to_numpy(), fpr)
    holdout = reference.holdout if reference else {}
    pr_drop = None if "pr_auc" not in holdout else holdout["pr_auc"] - served["pr_auc"]
    recall_drop = None if recall not in holdout else holdout[recall] - served[recall]
    pr_level = drift_mod.level(pr_drop, cfg.risk_pr_auc_drop_warning, cfg.risk_pr_auc_drop_critical)
    recall_level = drift_mod.level(recall_drop, cfg.risk_recall_drop_warning, cfg.risk_recall_drop_critical)
    return {**out, "status": "measured", "pr_auc": served["pr_auc"], "holdout_pr_auc": holdout.get("pr_auc"),
            "pr_auc_drop": pr_drop, "recall": served[recall], "holdout_recall": holdout.get(recall),
            "recall_drop": recall_drop, "fpr": fpr, "roc_auc": served["roc_auc"], "pr_auc_level": pr_level,
            "recall_level": recall_level, "level": drift_mod.worst(pr_level, recall_level)}


def reasons(drift: drift_mod.DriftResult | None, alerts: dict, decay_: dict, fpr: float) -> list[str]:
    out = []
    if drift is not None:
        if drift.share_level != "ok":
            out.append(f"{drift.share_level}: {drift.drifted_share:.0%} of order features drifted")
        for column in [*drift.columns, *([drift.prediction] if drift.prediction else [])]:
            if column.level != "ok":
                name = "risk score" if column.column == SCORE else column.column
                out.append(f"{column.level}: {name} PSI {column.psi:.3f}")
    if alerts.get("level", "ok") != "ok":
        out.append(f"{alerts['level']}: {alerts['rate']:.2%} of orders scored HIGH or MEDIUM against "
                   f"{alerts['reference_rate']:.2%} on the holdout ({alerts['ratio']:.1f}x {alerts['direction']}, "
                   "95 % confidence)")
    if decay_.get("level", "ok") != "ok":
        if decay_["pr_auc_level"] != "ok":
            out.append(f"{decay_['pr_auc_level']}: served PR-AUC {decay_['pr_auc']:.3f} is "
                       f"{decay_['pr_auc_drop']:.3f} below holdout")
        if decay_["recall_level"] != "ok":
            out.append(f"{decay_['recall_level']}: served recall at {fpr:.0%} FPR {decay_['recall']:.3f} is "
                       f"{decay_['recall_drop']:.3f} below holdout")
    return out


def read_logged(files: list[Path], start: datetime, end: datetime, model_version: str | None, max_rows: int,
                seed: int = 0, features: bool = True) -> tuple[pd.DataFrame, dict[str, int], str | None, bool]:
    """Risk predictions logged in ``[start, end)`` by ``model_version`` (None: the most served one): order id,
    score, level and (``features``) the 31 order features as floats, sampled uniformly down to ``max_rows``.
    Returns the frame, counts per version, the version read and whether it was sampled."""
    import duckdb

    if not files:
        return pd.DataFrame(), {}, model_version, False
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    paths = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
    con.execute(f"""CREATE TEMP VIEW windowed AS
        SELECT TRY_CAST(ts AS TIMESTAMPTZ) AS ts, coalesce(model_version, 'none') AS model_version, order_id, score,
               level, features
        FROM read_json([{paths}], format='newline_delimited', ignore_errors=true,
                       columns={{ts: 'VARCHAR', model_version: 'VARCHAR', order_id: 'VARCHAR', score: 'DOUBLE',
                                level: 'VARCHAR', features: 'JSON'}})
        WHERE TRY_CAST(ts AS TIMESTAMPTZ) >= TIMESTAMPTZ '{start.isoformat()}'
          AND TRY_CAST(ts AS TIMESTAMPTZ) < TIMESTAMPTZ '{end.isoformat()}'""")
    counts = {str(v): int(n) for v, n in con.execute(
        "SELECT model_version, count(*) FROM windowed GROUP BY 1 ORDER BY 2 DESC").fetchall()}
    if model_version is None and counts:
        model_version = next(iter(counts))
    if not counts.get(str(model_version)):
        return pd.DataFrame(), counts, model_version, False
    rows = "SELECT ts, order_id, score, level, features FROM windowed WHERE model_version = $1"
    sampled = counts[str(model_version)] > max_rows
    if sampled:
        rows = f"SELECT * FROM ({rows}) USING SAMPLE reservoir({int(max_rows)} ROWS) REPEATABLE ({int(seed)})"
    values = "".join(f", TRY_CAST(json_extract(features, '$.{c}') AS DOUBLE) AS {c}" for c in ORDER_FEATURES)
    query = f"SELECT ts, order_id, score, level{values if features else ''} FROM ({rows})"
    frame = con.execute(query, [str(model_version)]).df()
    return frame, counts, str(model_version), sampled


def load_reference(settings: Settings, version: str) -> RiskReference:
    """The holdout the risk stage logged on ``version``'s run, its metrics and the assessment's cut points."""
    import mlflow

    from storeflow.components import tracking
    from storeflow.components.risk.stage import REFERENCE

    client = tracking.connect(settings)
    found = client.get_model_version(settings.risk.model_name, version)
    run = client.get_run(found.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=found.run_id, artifact_path=REFERENCE, dst_path=tmp,
                                                   tracking_uri=settings.tracking_uri)
        frame = pd.read_parquet(path)
    params = run.data.params
    holdout = {key.split(".", 1)[1]: value for key, value in run.data.metrics.items() if key.startswith("model.")}
    return RiskReference(version, found.run_id, frame,
                         Levels(high=float(params["level_high"]), medium=float(params["level_medium"])), holdout)


def matured_labels(snapshot: Path, maturity_days: int) -> pd.DataFrame:
    """``order_id`` (as text, as logged) and the fraud label of the snapshot's orders whose labels are mature:
    created ``maturity_days`` before its last order."""
    from storeflow.components.risk.features import TIME
    from storeflow.components.risk.stage import risk_rows

    rows = risk_rows(Path(snapshot))
    line = rows[TIME].max() - pd.Timedelta(days=maturity_days)
    mature = rows[rows[TIME] < line]
    return pd.DataFrame({"order_id": mature["order_id"].astype(str), LABEL: mature[LABEL].astype(int)})


def risk_window(settings: Settings, start: datetime, end: datetime, snapshot: Path | None,
                reference: RiskReference | None = None) -> RiskWindow:
    """The order risk part of a monitoring summary for ``[start, end)``: status, level, reasons, notes, drift
    (Evidently), alert rate and decay of the risk champion (else the most served risk version)."""
    from storeflow.components import tracking

    cfg = settings.monitor
    name = settings.risk.model_name
    notes: list[str] = []
    version = reference.model_version if reference else None
    if version is None:
        try:
            version = tracking.current_champion(tracking.connect(settings), name)
        except Exception as exc:  # noqa: BLE001 - registry unreachable: the most served version
            notes.append(f"risk champion lookup failed ({exc}); monitoring the most served risk version")
    decay_end = end - timedelta(days=settings.risk.maturity_days)
    decay_start = decay_end - timedelta(days=cfg.risk_decay_days)
    scratch = settings.data_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="monitor-risk-") as fetched:
        current, counts, version, sampled = read_logged(window_files(settings, start, end, Path(fetched)), start,
                                                        end, version, cfg.max_rows, cfg.seed)
        older = window_files(settings, decay_start, decay_end, Path(fetched) / "decay")
        served, _, _, _ = read_logged(older, decay_start, decay_end, version, 10**9, features=False)
    part: dict = {"model_name": name, "model_version": version,
                  "window": {"start": start.isoformat(), "end": end.isoformat(), "hours": cfg.window_hours},
                  "rows": {"window": counts.get(str(version), 0), "sampled": int(len(current)),
                           "by_version": counts},
                  "drift": None, "alerts": None, "decay": {"status": "skipped", "level": "ok"}}
    if not counts and served.empty:
        return RiskWindow({**part, "status": "no-data", "level": "ok", "reasons": [], "notes": notes})
    if reference is None and version is not None:
        try:
            reference = load_reference(settings, version)
        except Exception as exc:  # noqa: BLE001 - no holdout logged (older version), registry down
            notes.append(f"no holdout reference for {name} v{version}: {exc}")
    drift, report, status = None, None, "analysed"
    rows = part["rows"]["window"]
    if reference is None:
        status = "no-reference"
    elif rows < cfg.min_rows:
        status = "insufficient-data"
        notes.append(f"{rows} risk predictions in the window; monitor.min_rows is {cfg.min_rows}")
    else:
        present = [c for c in ORDER_FEATURES if current[c].notna().any()]
        drift = drift_mod.analyse(reference.frame, current, list(ORDER_FEATURES), present, cfg)
        report = drift.report
        part["drift"] = drift.to_dict()
        alerts = int((current[SCORE].to_numpy(dtype=float) >= reference.levels.medium).sum())
        part["alerts"] = judge_alerts(alerts, len(current), reference.alert_rate, cfg.risk_alert_ratio_warning,
                                      cfg.risk_alert_ratio_critical)
    if sampled:
        notes.append(f"analysed a uniform sample of {len(current)} of {rows} risk predictions")
    labelled = pd.DataFrame(columns=["order_id", SCORE, LABEL])
    if not served.empty:
        label_snapshot = snapshot
        if label_snapshot is None:
            from storeflow.components.ingest.snapshot import newest_snapshot

            label_snapshot = newest_snapshot(settings.data_dir / "snapshots")
        if label_snapshot is None:
            notes.append("no snapshot to take order risk labels from")
        else:
            try:
                labels = matured_labels(label_snapshot, settings.risk.maturity_days)
                labelled = served.drop_duplicates("order_id", keep="last").merge(labels, on="order_id")
            except Exception as exc:  # noqa: BLE001 - a snapshot without the risk fields: no decay, a note
                notes.append(f"order risk labels not read from {label_snapshot}: {exc}")
    part["decay"] = {**decay(labelled, reference, settings),
                     "predictions": {"start": decay_start.isoformat(), "end": decay_end.isoformat(),
                                     "logged": int(len(served))}}
    level = drift_mod.worst(drift.level if drift else "ok", (part["alerts"] or {}).get("level", "ok"),
                            part["decay"]["level"])
    return RiskWindow({**part, "status": status, "level": level,
                       "reasons": reasons(drift, part["alerts"] or {}, part["decay"], settings.risk.fpr),
                       "notes": notes}, report)


def log_location(settings: Settings) -> str:
    store = settings.serving.prediction_log_store
    return str(local_dir(settings)) + (f" and {store.rstrip('/')}/risk" if store else "")
