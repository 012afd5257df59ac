"""Drift of served traffic against the reference, measured by Evidently 0.7, and judged by config.

Evidently computes every statistic: per column the drift score with its method (chosen by Evidently
by type and sample size unless ``monitor.drift_method`` says otherwise) and whether the column drifted
(its test), the share of drifted features, and PSI for business readers. This module only turns those
numbers into levels. ``import evidently`` takes seconds, so it happens inside :func:`analyse` only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from storeflow.components.config import ConfigError, MonitorConfig

LEVELS = ("ok", "warning", "critical")
SCORE = "score"


def worst(*levels: str) -> str:
    known = [lvl for lvl in levels if lvl in LEVELS]
    return max(known, key=LEVELS.index) if known else "ok"


def level(value: float | None, warning: float, critical: float) -> str:
    if value is None or pd.isna(value):
        return "ok"
    return "critical" if value >= critical else "warning" if value >= warning else "ok"


@dataclass
class ColumnDrift:
    column: str
    status: str  # analysed | missing | all-null
    method: str | None = None
    drift_score: float | None = None
    drift_threshold: float | None = None
    drifted: bool = False
    psi: float | None = None
    level: str = "ok"
    null_share: float | None = None


@dataclass
class DriftResult:
    columns: list[ColumnDrift]
    prediction: ColumnDrift | None
    drifted_count: int
    drifted_share: float
    share_level: str
    level: str
    report: Any = field(default=None, repr=False)  # the Evidently Snapshot, when it ran

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("report")
        return data


def psi_thresholds(cfg: MonitorConfig, column: str) -> tuple[float, float]:
    custom = cfg.feature_thresholds.get(column)
    return (custom.warning, custom.critical) if custom else (cfg.psi_warning, cfg.psi_critical)


def _screen(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str],
            present: list[str]) -> tuple[list[str], list[ColumnDrift]]:
    """Columns Evidently can compare, and a status for those it cannot (absent from the logs, all null)."""
    usable, skipped = [], []
    for column in columns:
        if column not in present or column not in current.columns:
            skipped.append(ColumnDrift(column, "missing"))
        elif current[column].isna().all() or reference[column].isna().all():
            skipped.append(ColumnDrift(column, "all-null", null_share=1.0))
        else:
            usable.append(column)
    return usable, skipped


def check_method(cfg: MonitorConfig) -> None:
    """A ``monitor.drift_method`` Evidently has no numerical-feature test of is a config error naming it, raised
    before any window is read: Evidently itself refuses it only once the report runs, in a traceback."""
    if cfg.drift_method is None:
        return
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    try:
        get_registered_stattest(cfg.drift_method, ColumnType.Numerical)
    except ValueError as exc:
        raise ConfigError(f"monitor.drift_method {cfg.drift_method!r} is not an Evidently drift test of numerical "
                          f"features, which every monitored column is: {exc}") from exc


def analyse(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], present: list[str],
            cfg: MonitorConfig) -> DriftResult:
    """Compare ``current`` with ``reference`` on ``columns`` and on the ``score`` column (prediction drift)."""
    usable, skipped = _screen(reference, current, columns, present)
    with_score = SCORE in current.columns and current[SCORE].notna().any() and SCORE in reference.columns
    if not usable and not with_score:
        return DriftResult(skipped, None, 0, 0.0, "ok", "ok")

    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    compared = usable + ([SCORE] if with_score else [])
    definition = DataDefinition(numerical_columns=compared)
    metrics: list = []
    if usable:
        metrics.append(DataDriftPreset(columns=usable, method=cfg.drift_method, drift_share=cfg.drift_share_critical))
    if with_score:
        metrics.append(ValueDrift(column=SCORE, method=cfg.drift_method))
    metrics += [ValueDrift(column=c, method="psi", threshold=psi_thresholds(cfg, c)[1]) for c in compared]
    report = Report(metrics, include_tests=True)
    snapshot = report.run(Dataset.from_pandas(current[compared].astype(float), data_definition=definition),
                          Dataset.from_pandas(reference[compared].astype(float), data_definition=definition))
    result = snapshot.dict()

    failed = {t["metric_config"]["metric_id"] for t in result["tests"] if t["status"] == "FAIL"}
    by_column: dict[str, ColumnDrift] = {c: ColumnDrift(c, "analysed", null_share=float(current[c].isna().mean()))
                                         for c in compared}
    drifted_count, drifted_share = 0, 0.0
    for metric in result["metrics"]:
        config = metric["config"]
        kind = config["type"].rsplit(":", 1)[-1]
        if kind == "DriftedColumnsCount":
            drifted_count, drifted_share = int(metric["value"]["count"]), float(metric["value"]["share"])
        elif kind == "ValueDrift":
            entry = by_column[config["column"]]
            if config["method"] == "psi":
                entry.psi = float(metric["value"])
            if config["method"] != "psi" or cfg.drift_method == "psi":
                entry.method, entry.drift_score = config["method"], float(metric["value"])
                entry.drift_threshold = config.get("threshold")
                entry.drifted = metric["id"] in failed
    for entry in by_column.values():
        entry.level = level(entry.psi, *psi_thresholds(cfg, entry.column))
    prediction = by_column.pop(SCORE, None)
    share_level = level(drifted_share, cfg.drift_share_warning, cfg.drift_share_critical) if usable else "ok"
    columns_out = [by_column[c] for c in usable] + skipped
    overall = worst(share_level, *(c.level for c in columns_out), prediction.level if prediction else "ok")
    return DriftResult(columns_out, prediction, drifted_count, drifted_share, share_level, overall, snapshot)
