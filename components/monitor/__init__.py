"""Monitoring stage: prediction-log drift and decay against the served model's training set (Evidently),
Prometheus gauges, and a retraining run when a level turns critical.

Public API: :func:`monitor` (one window → report, summary, metrics), :func:`retrain_if_needed` (the
action, once per model version and window), :func:`simulate_shift` (demo traffic after a promotion).
Nothing here imports Evidently at module level; it loads only when a window is analysed.
"""

from storeflow.components.monitor.retrain import RetrainDecision, marker_path, retrain_if_needed, window_id
from storeflow.components.monitor.simulate import Simulated, simulate_shift
from storeflow.components.monitor.stage import MonitorResult, monitor

__all__ = ["MonitorResult", "RetrainDecision", "Simulated", "marker_path", "monitor", "retrain_if_needed",
           "simulate_shift", "window_id"]
