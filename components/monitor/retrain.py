"""The action: a critical monitoring level starts the training pipeline, at most once per model version
and window, however often monitoring runs (a marker file, locked while its run is being started, says so).

The training pipeline's evaluation gate and the canary decide what ships; monitoring only asks. How a
run is started is the pipelines' business: the caller hands the launchers in
(:data:`storeflow.pipelines.retraining.LAUNCHERS`).
"""

from __future__ import annotations

import fcntl
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from storeflow.components.config import Settings


@dataclass(frozen=True)
class RetrainDecision:
    started: bool
    reason: str
    marker: str | None = None
    mode: str | None = None
    run: dict | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def window_id(end: datetime, window_hours: float) -> int:
    """Windows are fixed periods of ``monitor.window_hours`` since the epoch: the retraining cooldown."""
    return math.floor(end.timestamp() / (window_hours * 3600))


def marker_path(settings: Settings, model_version: str, end: datetime, model_name: str | None = None) -> Path:
    root = settings.monitor.report_dir or settings.project.state_dir / "monitoring"
    return (root / "retraining" / f"{model_name or settings.registry.model_name}-v{model_version}-"
                                  f"w{window_id(end, settings.monitor.window_hours)}.json")


def retrain_if_needed(settings: Settings, summary: dict,
                      launchers: dict[str, Callable[[Settings], dict]]) -> RetrainDecision:
    """Start training when ``summary['level']`` is critical, unless this window already started one.

    ``launchers`` maps ``monitor.retrain`` (``local``, ``cluster``) to the function that starts a run and
    returns what to record of it; a ValueError, FileNotFoundError or OSError from it means nothing started.
    """
    return _once(settings, summary, launchers, settings.registry.model_name)


def retrain_recommender_if_needed(settings: Settings, summary: dict,
                                  launchers: dict[str, Callable[[Settings], dict]]) -> RetrainDecision:
    """The same for the recommender: start the recommendations pipeline (``launchers``, by ``monitor.retrain``)
    when the summary's ``recommendations`` part (:func:`storeflow.components.monitor.recommendations.
    recommender_window`: a CTR drop, item-popularity drift) is critical, once per recommender version and window."""
    part = summary.get("recommendations") or {"level": "ok"}
    return _once(settings, part, launchers, settings.recommendations.model_name)


def retrain_risk_if_needed(settings: Settings, summary: dict,
                           launchers: dict[str, Callable[[Settings], dict]]) -> RetrainDecision:
    """The same for order risk: start the risk pipeline (``launchers``, by ``monitor.retrain``) when the summary's
    ``risk`` part (:func:`storeflow.components.monitor.risk.risk_window`: score or feature drift, the alert rate,
    decay on matured dispute labels) is critical, once per risk version and window."""
    part = summary.get("risk") or {"level": "ok"}
    return _once(settings, part, launchers, settings.risk.model_name)


def _once(settings: Settings, summary: dict, launchers: dict[str, Callable[[Settings], dict]],
          model_name: str) -> RetrainDecision:
    mode = settings.monitor.retrain
    if summary.get("level") != "critical":
        return RetrainDecision(False, f"level is {summary.get('level')}, not critical")
    if mode == "off":
        return RetrainDecision(False, "critical, but monitor.retrain is off", mode=mode)
    version = str(summary.get("model_version") or "none")
    end = datetime.fromisoformat(summary["window"]["end"])
    marker = marker_path(settings, version, end, model_name)
    marker.parent.mkdir(parents=True, exist_ok=True)
    record = {"model_version": version, "window": summary["window"], "reasons": summary.get("reasons", []),
              "mode": mode, "started_at": datetime.now(timezone.utc).isoformat()}
    already = RetrainDecision(False, f"retraining already started for v{version} in this window", str(marker), mode)
    # The marker stays locked while its run is being started (a local run: until the training ends). A lock the
    # system released with the process that held it, on a marker that records neither a run nor an error, is a
    # start that was killed (kill -9, Ctrl-C, a lost machine): nothing runs, so this window's retraining starts now.
    with open(marker, "a+") as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return already
        held.seek(0)
        if _settled(held.read()):
            return already

        def note(entry: dict) -> None:
            held.seek(0)
            held.truncate()
            held.write(json.dumps(entry, default=str))
            held.flush()

        note(record)
        launch = launchers[mode]
        try:
            run = launch(settings)
        except (ValueError, FileNotFoundError, OSError) as exc:
            # Nothing started (no KFP host, no compiled package, unreachable API): let the next run try again.
            marker.unlink(missing_ok=True)
            raise RuntimeError(f"could not start retraining ({mode}): {exc}") from exc
        except Exception as exc:
            # A run started and failed: keep the marker so a broken pipeline is not restarted every run.
            note({**record, "error": str(exc)[:2000]})
            raise
        note({**record, "run": run})
    return RetrainDecision(True, "; ".join(summary.get("reasons", [])) or "critical", str(marker), mode, run)


def _settled(text: str) -> bool:
    """Whether a marker's text records a start that finished (its run, or the error it ended in)."""
    try:
        entry = json.loads(text)
    except ValueError:  # empty, or cut short by the kill: a start that never finished
        return False
    return isinstance(entry, dict) and ("run" in entry or "error" in entry)
