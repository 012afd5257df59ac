"""Prometheus metrics the canary analysis and dashboards read (names are a contract: keep them).

* ``storeflow_requests_total{model_version,status}``: answered inference requests; ``status`` is the
  HTTP status code (``200``, ``400``, ``401``, ``500``...), ``model_version`` the version that answered or
  failed it (an error raised once its version was chosen says so: ``errors.answered_by``), each version for a
  request two answered, ``none`` when no model was reached (bad credentials, a malformed body).
* ``storeflow_request_latency_seconds{model_version}``: whole-request latency, histogram.
* ``storeflow_feature_lookup_seconds``: Feast online lookup (cache included) per request, histogram.
* ``storeflow_prediction_score{model_version}``: served scores, histogram on [0, 1] (for PSI).
* ``storeflow_fallback_rows_total``: customers answered with the fallback row.
* ``storeflow_prediction_log_dropped_total``: prediction-log records dropped (queue full or write error).
* ``storeflow_cache_lookups_total{cache}`` / ``storeflow_cache_hits_total{cache}``: lookups the feature
  cache (``features``) and the score memo (``scores``) answered, and how many of them from memory (their
  ratio is the hit rate); per worker ``storeflow_cache_hit_ratio{cache}`` (the estimate that switches the
  cache on or off), ``storeflow_cache_enabled{cache}`` and ``storeflow_cache_entries{cache}``
  (see :mod:`storeflow.serving.caching`).
* ``storeflow_risk_assessments_total{model_version,level}``: orders the risk server assessed, by level (HIGH,
  MEDIUM, LOW); the risk canary's alert rate (:func:`storeflow.components.risk.deploy.alert_queries`).
* ``storeflow_model_info{model_version,runtime}``: 1 per served version; ``runtime`` is what scores it
  (``treelite`` or ``sklearn``, see :mod:`storeflow.serving.runtime`).

With several workers, set ``PROMETHEUS_MULTIPROC_DIR`` (``storeflow serve`` does): ``/metrics`` then
sums all workers.
"""

from __future__ import annotations

import os
import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, exposition, multiprocess, values

from storeflow.components.risk.protocol import ASSESSMENTS_METRIC

# Decided when prometheus_client was first imported; Feast sets PROMETHEUS_MULTIPROC_DIR on import
# (for its own server) whether or not values are really kept in files, so the variable alone misleads.
MULTIPROCESS = values.ValueClass is not values.MutexValue

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))

REQUESTS = Counter("storeflow_requests", "Inference requests answered.", ["model_version", "status"])
LATENCY = Histogram("storeflow_request_latency_seconds", "Inference request latency.", ["model_version"],
                    buckets=LATENCY_BUCKETS)
FEATURE_LOOKUP = Histogram("storeflow_feature_lookup_seconds", "Feast online feature lookup per request.",
                           buckets=LOOKUP_BUCKETS)
SCORES = Histogram("storeflow_prediction_score", "Served propensity scores.", ["model_version"],
                   buckets=SCORE_BUCKETS)
FALLBACK_ROWS = Counter("storeflow_fallback_rows", "Customers scored with the fallback feature row.")
MODEL_INFO = Gauge("storeflow_model_info", "Served model versions and the runtime scoring each.",
                   ["model_version", "runtime"], multiprocess_mode="max")
# Here, not in serving/risk.py: `python -m storeflow.serving.risk` imports that module twice (as __main__ too).
RISK_ASSESSMENTS = Counter(ASSESSMENTS_METRIC, "Orders assessed, by served risk model version and level.",
                           ["model_version", "level"])
LOG_DROPPED = Counter("storeflow_prediction_log_dropped", "Prediction log records dropped.")
CACHE_LOOKUPS = Counter("storeflow_cache_lookups", "Lookups a serving cache answered (while on).", ["cache"])
CACHE_HITS = Counter("storeflow_cache_hits", "Lookups a serving cache answered from memory.", ["cache"])
CACHE_HIT_RATIO = Gauge("storeflow_cache_hit_ratio", "Estimated hit rate of a serving cache over its last window "
                        "(per worker; below the threshold the cache is off).", ["cache"], multiprocess_mode="liveall")
CACHE_ENABLED = Gauge("storeflow_cache_enabled", "1 while a serving cache is consulted, 0 while its hit rate is "
                      "too low to help (per worker).", ["cache"], multiprocess_mode="liveall")
CACHE_ENTRIES = Gauge("storeflow_cache_entries", "Entries a serving cache holds (per worker).", ["cache"],
                      multiprocess_mode="liveall")
# Caches whose locally counted lookups /metrics adds to the counters first (storeflow.serving.caching).
REGISTERED_CACHES: weakref.WeakSet = weakref.WeakSet()


def exposition_body(accept: str | None) -> tuple[bytes, str]:
    """The /metrics body: every worker's metrics in multiprocess mode, this process's otherwise."""
    from prometheus_client import REGISTRY

    for cache in list(REGISTERED_CACHES):
        cache.flush()
    registry = REGISTRY
    if MULTIPROCESS and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    encoder, content_type = exposition.choose_encoder(accept)
    return encoder(registry), content_type
