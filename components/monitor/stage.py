"""The monitoring stage: one window of served traffic against the served model's training set.

Statuses a person reads first (``summary['status']``): ``analysed``; ``no-data`` (no predictions by the
model version in the window); ``insufficient-data`` (fewer than ``monitor.min_rows``); ``no-reference``
(the version's training set cannot be found); ``no-columns`` (every feature missing or null); ``no-model`` (no
champion and no version in the logs: nothing is registered or served yet; or the version asked for is neither
registered nor in the logs). Only ``analysed`` carries a drift
verdict; the others never raise, so a scheduled run always leaves a report.
"""

from __future__ import annotations

import html
import json
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from storeflow.components.config import Settings
from storeflow.components.monitor import drift as drift_mod
from storeflow.components.ingest.snapshot import newest_snapshot
from storeflow.components.monitor.labels import matured_outcomes
from storeflow.components.monitor.predictions import Window, log_dir, read_window
from storeflow.components.monitor.reference import (NoReference, Reference, UnknownVersion, champion_version,
                                                     load_reference)
from storeflow.components.monitor.retrain import window_id
from storeflow.components.prediction_logs import window_files


@dataclass
class MonitorResult:
    summary: dict
    report_html: Path
    report_json: Path | None
    summary_json: Path
    metrics_target: str

    @property
    def level(self) -> str:
        return self.summary["level"]

    @property
    def status(self) -> str:
        return self.summary["status"]

    def to_json(self) -> str:
        return json.dumps({"summary": self.summary, "report_html": str(self.report_html),
                           "report_json": self.report_json and str(self.report_json),
                           "summary_json": str(self.summary_json), "metrics": self.metrics_target})


def decay(labelled: pd.DataFrame, reference: Reference | None, settings: Settings) -> dict:
    """ROC-AUC and calibration of matured predictions, against the version's own holdout AUC."""
    from storeflow.components.evaluate.metrics import holdout_metrics

    cfg = settings.monitor
    out: dict = {"labelled": int(len(labelled)), "status": "awaiting-labels", "level": "ok"}
    if len(labelled) < cfg.min_labelled_rows:
        out["reason"] = (f"{len(labelled)} predictions have matured labels "
                         f"(horizon {settings.features.label.horizon_days} d); need {cfg.min_labelled_rows}")
        return out
    labels = labelled["label"].astype(int).to_numpy()
    if labels.min() == labels.max():
        return {**out, "status": "single-class", "reason": "every matured prediction has the same outcome"}
    metrics = holdout_metrics(labels, labelled["score"].to_numpy())
    spend = _spend_decay(labelled)
    holdout_auc = (reference.holdout if reference else {}).get("roc_auc")
    drop = None if holdout_auc is None else holdout_auc - metrics["roc_auc"]
    auc_level = drift_mod.level(drop, cfg.auc_drop_warning, cfg.auc_drop_critical)
    cal_level = drift_mod.level(metrics["calibration_error"], cfg.calibration_warning, cfg.calibration_critical)
    return {**out, "status": "measured", "roc_auc": metrics["roc_auc"], "holdout_roc_auc": holdout_auc,
            "auc_drop": drop, "calibration_error": metrics["calibration_error"], "brier": metrics["brier"],
            "positive_rate": metrics["positive_rate"], "auc_level": auc_level, "calibration_level": cal_level,
            "level": drift_mod.worst(auc_level, cal_level), **spend}


def _spend_decay(labelled: pd.DataFrame) -> dict:
    """Served expected spend against what the customers then spent in the horizon (aggregate error, error per
    customer, top-decile lift: how train.spend is judged), over the matured predictions that logged one."""
    from storeflow.components.evaluate.metrics import spend_metrics

    if "expected_spend" not in labelled or "label_spend" not in labelled:
        return {}
    served = labelled[labelled["expected_spend"].notna() & labelled["label_spend"].notna()]
    if served.empty:
        return {}
    found = spend_metrics(served["label_spend"].to_numpy(), served["expected_spend"].to_numpy())
    return {"spend_labelled": int(len(served)), **found}


def _reasons(drift: drift_mod.DriftResult | None, decay_: dict) -> list[str]:
    reasons = []
    if drift is not None:
        if drift.share_level != "ok":
            reasons.append(f"{drift.share_level}: {drift.drifted_share:.0%} of features drifted")
        for column in [*drift.columns, *([drift.prediction] if drift.prediction else [])]:
            if column.level != "ok":
                name = "prediction score" if column.column == drift_mod.SCORE else column.column
                reasons.append(f"{column.level}: {name} PSI {column.psi:.3f}")
    if decay_.get("level", "ok") != "ok":
        if decay_["auc_level"] != "ok":
            reasons.append(f"{decay_['auc_level']}: served ROC-AUC {decay_['roc_auc']:.3f} is "
                           f"{decay_['auc_drop']:.3f} below holdout")
        if decay_["calibration_level"] != "ok":
            reasons.append(f"{decay_['calibration_level']}: calibration error {decay_['calibration_error']:.3f}")
    return reasons


def _classification_report(labelled: pd.DataFrame):
    """Evidently's binary classification report (ROC-AUC, log loss, precision/recall...) on the matured
    predictions: the served score against the outcome the later orders gave it."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset

    frame = pd.DataFrame({"label": labelled["label"].astype(int).to_numpy(),
                          "score": labelled["score"].astype(float).to_numpy()})
    definition = DataDefinition(classification=[BinaryClassification(target="label", prediction_probas="score")])
    return Report([ClassificationPreset()]).run(Dataset.from_pandas(frame, data_definition=definition), None)


def _banner(summary: dict) -> str:
    colour = {"ok": "#1b7f3b", "warning": "#b26a00", "critical": "#b00020"}.get(summary["level"], "#555")
    rows = "".join(f"<li>{html.escape(r)}</li>" for r in summary["reasons"] + summary["notes"])
    window = summary["window"]
    return (f'<div style="font-family:sans-serif;padding:12px 16px;border-left:6px solid {colour};margin:8px">'
            f"<h2 style=\"margin:0\">storeflow monitoring · model {html.escape(str(summary['model_name']))} "
            f"{_version_text(summary['model_version'])} · <span style=\"color:{colour}\">"
            f"{html.escape(summary['status'])} / {html.escape(summary['level'])}</span></h2>"
            f"<p>window {html.escape(window['start'])} → {html.escape(window['end'])} · "
            f"{summary['rows']['window']} predictions, {summary['rows']['sampled']} analysed, "
            f"{summary['rows']['labelled']} labelled</p><ul>{rows}</ul>{_decay_link(summary)}"
            f"{_recommendations_html(summary.get('recommendations'))}{_risk_html(summary.get('risk'))}</div>")


def _version_text(version: str | None) -> str:
    return "(none registered)" if version is None else f"v{html.escape(str(version))}"


def _decay_link(summary: dict) -> str:
    page = (summary.get("decay") or {}).get("report_html")
    if not page:
        return ""
    decay = summary["decay"]
    holdout = decay.get("holdout_roc_auc")
    versus = f" (holdout {holdout:.3f})" if holdout is not None else ""
    spend = (f' · expected spend {decay["spend_predicted"]:,.0f} vs {decay["spend_actual"]:,.0f} actual '
             f'({decay["spend_aggregate_error"]:+.1%}), top-decile lift {decay["spend_top_decile_lift"]:.2f}'
             if decay.get("spend_labelled") else "")
    return (f'<p>decay on {decay["labelled"]} matured predictions: ROC-AUC {decay["roc_auc"]:.3f}{versus}{spend} · '
            f'<a href="{html.escape(page)}">classification report</a></p>')


def _write_html(path: Path, summary: dict, snapshot) -> None:
    """Evidently's standalone HTML with a summary banner on top; a plain page when Evidently did not run."""
    banner = _banner(summary)
    if snapshot is None:
        text = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>storeflow monitoring</title></head>"
                f"<body>{banner}<pre>{html.escape(json.dumps(summary, indent=2, default=str))}</pre></body></html>")
    else:
        snapshot.save_html(str(path))
        text = path.read_text()
        at = text.find("<body")
        close = text.find(">", at) + 1 if at >= 0 else 0
        text = text[:close] + banner + text[close:]
    path.write_text(text)


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC, one without a zone taken as UTC (``--window-end`` and the pipeline's window_end say so, as
    ingest reads times), not as this machine's local time, which ``astimezone`` takes it for: on a laptop in New
    York a window ending 12:00 ended 17:00 UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def monitor(settings: Settings, *, model_version: str | None = None, end: datetime | None = None,
            snapshot: Path | None = None, out_dir: Path | None = None, publish: bool = True,
            log_to_mlflow: bool = True) -> MonitorResult:
    """Analyse the trailing ``monitor.window_hours`` of prediction logs ending at ``end`` (default now) for
    ``model_version`` (default the champion, else the most served version), write the report, summary and
    metrics, and record them on the model version. Never raises for bad data: see the module docstring."""
    from storeflow.components.monitor.metrics import publish as publish_metrics

    cfg = settings.monitor
    drift_mod.check_method(cfg)
    end = as_utc(end or datetime.now(timezone.utc))
    start = end - timedelta(hours=cfg.window_hours)
    notes: list[str] = []
    version = model_version
    lookup_failed = None
    if version is None:
        try:
            version = champion_version(settings)
        except Exception as exc:  # noqa: BLE001 - registry unreachable: fall back to the logs
            lookup_failed = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            notes.append(f"champion lookup failed ({exc}); monitoring the most served version")

    reference, no_reference, unknown = None, None, False

    def reference_for(v: str | None) -> None:
        nonlocal reference, no_reference, unknown
        if v is None or v == "none":
            no_reference = "no model version to compare (no champion and no logged version)"
            return
        try:
            reference = load_reference(settings, v, cfg.reference_rows, cfg.seed, cfg.reference_cutoffs)
        except NoReference as exc:
            no_reference, unknown = str(exc), isinstance(exc, UnknownVersion)

    reference_for(version)
    columns = reference.columns if reference else list(settings.features.customer_features)
    scratch = settings.data_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="monitor-window-") as fetched:  # the store's files, read once
        window: Window = read_window(window_files(settings, start, end, Path(fetched)), start, end, columns, version,
                                     cfg.max_rows, cfg.seed)
    if version is None and window.model_version is not None:
        version = window.model_version
        reference_for(version)
    if window.rows_by_version and version not in window.rows_by_version:
        notes.append("versions served in the window: "
                     + ", ".join(f"v{v} ({n})" for v, n in window.rows_by_version.items()))

    current = window.frame
    labelled = pd.DataFrame()
    if not current.empty:
        label_snapshot = snapshot or newest_snapshot(settings.data_dir / "snapshots")
        outcomes = matured_outcomes(current, label_snapshot, settings.features.label.horizon_days)
        current = current.assign(label=outcomes["label"], label_spend=outcomes["label_spend"])
        labelled = current[current["label"].notna()]

    drift = None
    if version is None:  # neither a champion nor a logged version: there is nothing to monitor
        status = "no-model"
        why, then = ((f"the champion could not be looked up ({lookup_failed})", "") if lookup_failed is not None else
                     (f"{settings.registry.model_name} has no champion in the registry at {settings.tracking_uri}",
                      "; train and register one first (storeflow run)"))
        notes.append(f"no model to monitor: {why}, and no model version's predictions were logged between "
                     f"{start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} UTC{then}")
    elif unknown and window.rows == 0:  # a version neither registered nor served (a typo of --model-version)
        status = "no-model"
        notes.append(f"no model to monitor: {no_reference}, and no predictions of v{version} were logged between "
                     f"{start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} UTC")
    elif window.rows == 0:
        status = "no-data"
        notes.append(f"no logged predictions for v{version} between {start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} "
                     f"UTC in {log_dir(settings)}{' and ' + store if (store := settings.serving.prediction_log_store) else ''} "
                     f"({len(window.files)} log file(s))")
    elif window.rows < cfg.min_rows:
        status = "insufficient-data"
        notes.append(f"{window.rows} predictions in the window; monitor.min_rows is {cfg.min_rows}")
    elif reference is None:
        status = "no-reference"
        notes.append(no_reference or "no reference")
    else:
        drift = drift_mod.analyse(reference.frame, current, columns, window.present_features, cfg)
        status = "analysed" if drift.report is not None else "no-columns"
        for column in drift.columns:
            if column.status != "analysed":
                notes.append(f"{column.column}: {column.status} in the served traffic, not compared")
    decay_ = decay(labelled, reference, settings) if status == "analysed" else {"labelled": len(labelled),
                                                                                 "status": "skipped", "level": "ok"}
    level = drift_mod.worst(drift.level if drift else "ok", decay_.get("level", "ok"))
    if window.sampled:
        notes.append(f"analysed a uniform sample of {len(current)} of {window.rows} predictions: each column's "
                     f"distribution is within {window.cdf_error_95:.4f} (CDF distance, 95%) of the full window's")
    summary = {
        "status": status, "level": level, "reasons": _reasons(drift, decay_), "notes": notes,
        "model_name": settings.registry.model_name, "model_version": version,
        "window": {"start": start.isoformat(), "end": end.isoformat(), "hours": cfg.window_hours,
                   "id": window_id(end, cfg.window_hours)},
        "rows": {"window": window.rows, "sampled": int(len(current)), "labelled": int(len(labelled)),
                 "by_version": window.rows_by_version},
        "sample_cdf_error_95": window.cdf_error_95,
        "reference": None if reference is None else {
            "training_set": str(reference.training_set), "dataset_hash": reference.dataset_hash,
            "run_id": reference.run_id, "rows": int(len(reference.frame))},
        "drift": drift.to_dict() if drift else None,
        "decay": decay_,
        "recommendations": _recommendations(settings, start, end),
    }
    risk = _risk(settings, start, end, snapshot)
    summary["risk"] = risk.summary
    summary = json.loads(json.dumps(summary, default=_plain))

    root = out_dir or (cfg.report_dir or settings.project.state_dir / "monitoring") / "reports"
    out = Path(root) / f"{'no-model' if version is None else f'v{version}'}-{end:%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True, exist_ok=True)
    report_html, report_json = out / "report.html", None
    classification_html = None
    if decay_.get("status") == "measured":
        classification_html = out / "classification.html"
        _classification_report(labelled).save_html(str(classification_html))
        summary["decay"]["report_html"] = classification_html.name
    if risk.report is not None:  # the order risk model's Evidently drift report, linked from the banner
        risk.report.save_html(str(out / "risk.html"))
        summary["risk"]["report_html"] = "risk.html"
    _write_html(report_html, summary, drift.report if drift else None)
    if drift and drift.report is not None:
        report_json = out / "report.json"
        drift.report.save_json(str(report_json))
    summary_json = out / "summary.json"
    summary_json.write_text(json.dumps(summary, indent=2))
    target, late_notes = "", []
    if publish:
        try:
            target = publish_metrics(summary, out / "metrics.prom", cfg.pushgateway, cfg.job)
        except OSError as exc:  # gateway down: keep the figures beside the report instead
            late_notes.append(f"Pushgateway {cfg.pushgateway} unreachable ({exc}); metrics written to a textfile")
            target = publish_metrics(summary, out / "metrics.prom", None, cfg.job)
    if log_to_mlflow and reference is not None:
        try:
            _record_on_version(settings, reference, summary,
                               [report_html, summary_json, *([report_json] if report_json else []),
                                *([classification_html] if classification_html else [])])
        except Exception as exc:  # noqa: BLE001 - the report stands without the registry copy
            late_notes.append(f"could not record the report on {reference.model_name} v{reference.model_version}: {exc}")
    if late_notes:
        summary["notes"] += late_notes
        summary_json.write_text(json.dumps(summary, indent=2))
    return MonitorResult(summary, report_html, report_json, summary_json, target)


def _recommendations(settings: Settings, start: datetime, end: datetime) -> dict:
    """The recommender's window (CTR per version, CTR drop, item popularity), with its own level; a log that
    cannot be read is a note in the report, never a failed monitoring run."""
    from storeflow.components.monitor.recommendations import recommender_window

    try:
        return recommender_window(settings, start, end)
    except Exception as exc:  # noqa: BLE001 - the propensity report stands without it
        return {"status": "error", "level": "ok", "reasons": [], "notes": [f"recommendation logs not read: {exc}"],
                "model_version": None, "ctr": []}


def _risk(settings: Settings, start: datetime, end: datetime, snapshot: Path | None):
    """The order risk model's window (drift, alert rate, decay: monitor.risk), with its own level; a log or
    registry that cannot be read is a note in the report, never a failed monitoring run."""
    from storeflow.components.monitor.risk import RiskWindow, risk_window

    try:
        return risk_window(settings, start, end, snapshot)
    except Exception as exc:  # noqa: BLE001 - the propensity report stands without it
        return RiskWindow({"status": "error", "level": "ok", "reasons": [], "notes": [f"risk logs not read: {exc}"],
                           "model_name": settings.risk.model_name, "model_version": None})


def _risk_html(part: dict | None) -> str:
    if not part or part.get("status") in ("no-data", None):
        return ""
    colour = {"ok": "#1b7f3b", "warning": "#b26a00", "critical": "#b00020"}.get(part["level"], "#555")
    alerts, decay_ = part.get("alerts") or {}, part.get("decay") or {}
    lines = [f"{part['rows']['window']:,} orders scored"] if part.get("rows") else []
    if alerts.get("rate") is not None:
        lines.append(f"HIGH or MEDIUM {_percent(alerts['rate'])} (holdout {_percent(alerts['reference_rate'])})")
    if decay_.get("status") == "measured":
        lines.append(f"on {decay_['labelled']:,} matured orders ({decay_['frauds']} fraud): PR-AUC "
                     f"{decay_['pr_auc']:.3f} (holdout {decay_['holdout_pr_auc'] or float('nan'):.3f}), recall at "
                     f"{decay_['fpr']:.0%} FPR {decay_['recall']:.3f}")
    elif decay_.get("reason"):
        lines.append(f"decay: {decay_['reason']}")
    link = f' · <a href="{html.escape(part["report_html"])}">drift report</a>' if part.get("report_html") else ""
    items = "".join(f"<li>{html.escape(r)}</li>" for r in part.get("reasons", []) + part.get("notes", []))
    return (f"<h3 style=\"margin:12px 0 4px\">order risk · {html.escape(str(part.get('model_name')))} "
            f"v{html.escape(str(part.get('model_version')))} · <span style=\"color:{colour}\">"
            f"{html.escape(part['status'])} / {html.escape(part['level'])}</span></h3>"
            f"<p>{html.escape(' · '.join(lines))}{link}</p><ul>{items}</ul>")


def _recommendations_html(part: dict | None) -> str:
    if not part or part.get("status") == "no-data":
        return ""
    colour = {"ok": "#1b7f3b", "warning": "#b26a00", "critical": "#b00020"}.get(part["level"], "#555")
    rows = "".join(
        f"<tr><td>v{html.escape(r['model_version'])}</td><td>{r['answers']:,}</td><td>{r['impressions']:,}</td>"
        f"<td>{r['clicks']:,}</td><td>{_percent(r['ctr'])}</td></tr>" for r in part.get("ctr", []))
    items = "".join(f"<li>{html.escape(r)}</li>" for r in part.get("reasons", []) + part.get("notes", []))
    return (f"<h3 style=\"margin:12px 0 4px\">recommendations · {html.escape(str(part.get('model_name')))} "
            f"v{html.escape(str(part.get('model_version')))} · <span style=\"color:{colour}\">"
            f"{html.escape(part['status'])} / {html.escape(part['level'])}</span></h3>"
            f"<table><tr><th>model version</th><th>answers</th><th>impressions</th><th>clicks</th><th>CTR</th></tr>"
            f"{rows}</table><ul>{items}</ul>")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (datetime, Path)):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _record_on_version(settings: Settings, reference: Reference, summary: dict, files: list[Path]) -> None:
    """Reports as artifacts of the version's run, and the latest verdict as version tags."""
    from storeflow.components import tracking

    client = tracking.connect(settings)
    folder = f"monitoring/{summary['window']['end'][:19].replace(':', '')}"
    for path in files:
        client.log_artifact(reference.run_id, str(path), artifact_path=folder)
    tags = {"storeflow.monitor.status": summary["status"], "storeflow.monitor.level": summary["level"],
            "storeflow.monitor.window_end": summary["window"]["end"], "storeflow.monitor.report": folder}
    if summary["drift"]:
        tags["storeflow.monitor.drift_share"] = f"{summary['drift']['drifted_share']:.4f}"
    for key, value in tags.items():
        client.set_model_version_tag(reference.model_name, reference.model_version, key, value)
