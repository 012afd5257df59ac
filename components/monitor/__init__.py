"""Monitoring stage: prediction-log drift and decay against the served model's training set (Evidently),
Prometheus gauges, and a retraining run when a level turns critical.

Public API: :func:`monitor` (one window → report, summary, metrics), :func:`retrain_if_needed` (the
action, once per model version and window), :func:`simulate_shift` (demo traffic after a promotion).
Nothing here imports Evidently at module level; it loads only when a window is analysed.
"""

from importlib import import_module

# Loaded on first use: whoever imports one piece (a KFP task, a command) does not pay for the others.
_EXPORTS = {
    "RetrainDecision": "retrain", "marker_path": "retrain", "retrain_if_needed": "retrain", "window_id": "retrain",
    "retrain_recommender_if_needed": "retrain", "recommender_window": "recommendations",
    "Simulated": "simulate", "simulate_shift": "simulate",
    "MonitorResult": "stage", "monitor": "stage",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
