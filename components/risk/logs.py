"""Where the risk server's prediction log lives: the propensity log's format and shipping
(:mod:`storeflow.components.prediction_logs`), in a folder of its own.

Each record is one scored order: ``ts``, ``model_name``, ``model_version``, ``order_id``, ``score``, ``level``,
``facts`` and the 31 ``features`` it saw. Locally the files are under ``<state_dir>/risk/predictions``; with
``serving.prediction_log_store`` set, the risk server ships each closed file to ``<store>/risk/`` (the
propensity reader lists its folder without recursing, so neither model's monitoring reads the other's records)
and monitoring (:mod:`storeflow.components.monitor.risk`) reads both places.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from storeflow.components.config import Settings
from storeflow.components.prediction_logs import LogStore, files_in_window

FOLDER = "risk"


def local_dir(settings: Settings) -> Path:
    return settings.project.state_dir / FOLDER / "predictions"


def log_store(settings: Settings) -> LogStore | None:
    """The object-store folder the risk server ships closed log files to (None without a store)."""
    uri = settings.serving.prediction_log_store
    if not uri:
        return None
    base, _, query = uri.partition("?")
    return LogStore(f"{base.rstrip('/')}/{FOLDER}" + (f"?{query}" if query else ""))


def window_files(settings: Settings, start: datetime, end: datetime, scratch: Path) -> list[Path]:
    """The risk log files that may hold predictions made in ``[start, end)``: this machine's and the stored
    ones (:func:`storeflow.components.prediction_logs.files_in_window`)."""
    return files_in_window(local_dir(settings), log_store(settings), start, end, scratch)
