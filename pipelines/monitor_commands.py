"""``storeflow monitor`` (the monitoring pipeline, once) and ``storeflow simulate-shift`` (demo traffic)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Optional

import typer
from rich.text import Text

from storeflow.components.cli_options import ConfigOption, SetOption, console, fail, refusing, settings_from


def monitor(
    config: ConfigOption = None,
    set_: SetOption = None,
    model_version: Annotated[Optional[str], typer.Option("--model-version", help="Default: the champion.")] = None,
    window_end: Annotated[Optional[datetime], typer.Option("--window-end", help="UTC end of the window (default now).")] = None,
    in_process: Annotated[bool, typer.Option("--in-process", help="Run the stages here, without kfp.local.")] = False,
) -> None:
    """Compare recent prediction logs with the training reference; retrain when critical (monitor.retrain)."""
    import json

    settings = settings_from(config, set_)
    if in_process:
        from storeflow.components.config import ConfigError
        from storeflow.components.monitor import monitor as run, retrain_if_needed, retrain_recommender_if_needed
        from storeflow.pipelines.retraining import LAUNCHERS, RECOMMENDER_LAUNCHERS

        with refusing(ConfigError):
            result = run(settings, model_version=model_version, end=window_end)
        summary, decision = result.summary, json.loads(retrain_if_needed(settings, result.summary, LAUNCHERS).to_json())
        decision["recommendations"] = json.loads(
            retrain_recommender_if_needed(settings, result.summary, RECOMMENDER_LAUNCHERS).to_json())
        from storeflow.components.monitor.retrain import retrain_risk_if_needed
        from storeflow.pipelines.retraining import RISK_LAUNCHERS

        decision["risk"] = json.loads(retrain_risk_if_needed(settings, result.summary, RISK_LAUNCHERS).to_json())
        report = result.report_html
    else:
        from storeflow.components.monitor.stage import as_utc
        from storeflow.pipelines.pipeline_runs import run_pipeline
        from storeflow.pipelines.monitoring import STAGES, monitoring_pipeline

        # The window's end is fixed here, so this run's report is the one named by it (the newest report may be
        # another monitoring run's). A failed task is named with its own error, as storeflow run says it.
        end = as_utc(window_end or datetime.now(timezone.utc))  # one without a zone is UTC, as the stage reads it
        run = run_pipeline("monitoring", monitoring_pipeline, settings, STAGES, window_end=end.isoformat(),
                           model_version=model_version or "")
        decision = json.loads(run.output)
        summary, report = _summary_of(settings, end)
    if summary["status"] == "no-model" and not any(_served(summary.get(part)) for part in ("recommendations", "risk")):
        # a version the user named that does not exist is their value (2); nothing registered yet, the state (1)
        fail(next(n for n in summary["notes"] if n.startswith("no model to monitor")), 2 if model_version else 1)
    _print(summary, decision, report)


def _served(part: dict | None) -> bool:
    """Whether the recommender's or order risk's part of the window has traffic to report on."""
    return bool(part) and part.get("status") not in ("no-data", "error")


def _summary_of(settings, end: datetime):
    """The summary and report of the window ending at ``end`` (reports are named ``<version>-<end>``)."""
    import json

    root = (settings.monitor.report_dir or settings.project.state_dir / "monitoring") / "reports"
    latest = max(root.glob(f"*-{end:%Y%m%dT%H%M%SZ}/summary.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(latest.read_text()), latest.parent / "report.html"


def _print(summary: dict, decision: dict, report) -> None:
    from rich.table import Table

    colour = {"ok": "green", "warning": "yellow", "critical": "red"}[summary["level"]]
    version = summary["model_version"]
    console.print(Text.assemble(f"model {'(none registered)' if version is None else f'v{version}'} · window {summary['window']['start'][:16]} → "
                                f"{summary['window']['end'][:16]} · {summary['rows']['window']} predictions · "
                                f"status {summary['status']} · ", (summary["level"], colour)))
    drift = summary.get("drift")
    if drift:
        table = Table(title=f"drift: {drift['drifted_count']} feature(s) drifted ({drift['drifted_share']:.0%})")
        for name in ("column", "method", "drift score", "drifted", "PSI", "level"):
            table.add_column(name)
        for c in [*drift["columns"], *([drift["prediction"]] if drift.get("prediction") else [])]:
            table.add_row(c["column"], c["method"] or c["status"], "-" if c["drift_score"] is None else
                          f"{c['drift_score']:.3f}", "yes" if c["drifted"] else "", "-" if c["psi"] is None else
                          f"{c['psi']:.3f}", c["level"])
        console.print(table)
    decay = summary.get("decay") or {}
    if decay.get("roc_auc") is not None:
        console.print(f"served ROC-AUC {decay['roc_auc']:.3f} (holdout {decay.get('holdout_roc_auc') or float('nan'):.3f}),"
                      f" calibration error {decay['calibration_error']:.3f}")
    for line in summary["notes"]:
        console.print(f"· {line}")
    console.print(_retraining("retraining", decision))
    _print_recommendations(summary.get("recommendations") or {}, decision.get("recommendations") or {})
    console.print(f"report: {report}")


def _retraining(what: str, decision: dict) -> Text:
    """``<what>: started (why)`` (started in bold) or ``<what>: not started (why)``."""
    return Text.assemble(f"{what}: ", ("started", "bold") if decision.get("started") else "not started",
                         f" ({decision.get('reason')})")


def _print_recommendations(part: dict, decision: dict) -> None:
    """The recommender's window: CTR per model version, CTR drop, item popularity, and its retraining."""
    from rich.table import Table

    if not part or part.get("status") == "no-data":
        return
    colour = {"ok": "green", "warning": "yellow", "critical": "red"}.get(part["level"], "white")
    table = Table(title=Text.assemble(f"recommendations v{part.get('model_version')}: {part['status']} · ",
                                      (part["level"], colour)))
    for name in ("model version", "answers", "impressions", "clicks", "CTR"):
        table.add_column(name)
    for row in part.get("ctr", []):
        table.add_row(row["model_version"], f"{row['answers']:,}", f"{row['impressions']:,}", f"{row['clicks']:,}",
                      "n/a" if row["ctr"] is None else f"{row['ctr']:.2%}")
    console.print(table)
    for line in part.get("reasons", []) + part.get("notes", []):
        console.print(f"· {line}")
    if decision:
        console.print(_retraining("recommender retraining", decision))


def simulate_shift(
    config: ConfigOption = None,
    set_: SetOption = None,
    requests: Annotated[int, typer.Option(min=1, help="Predictions to log.")] = 2000,
    no_shift: Annotated[bool, typer.Option("--no-shift", help="Traffic as the store is, without the promotion.")] = False,
) -> None:
    """Log champion predictions for customers after a simulated holiday promotion (demo drift)."""
    from storeflow.components.monitor import simulate_shift as run

    settings = settings_from(config, set_)
    with refusing(FileNotFoundError, LookupError):
        sim = run(settings, requests=requests, shift=not no_shift)
    console.print(f"logged {sim.records} predictions by v{sim.model_version} for {sim.customers} customers"
                  f"{' after a holiday promotion' if sim.shifted else ''}: {sim.path}")
