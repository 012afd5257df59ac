"""Serving logs: one JSON line per error answer, and per request when ``serving.request_log`` is on.

KServe writes ~6 plain-text lines per request and a full traceback at ERROR for every 4xx (140 MB of
stderr for ~81k bad requests in the hardening run). Here its per-request lines are off
(``serving.quiet``) and :class:`storeflow.serving.http.RequestObserver` writes one line per request
it should log, to the ``storeflow.serving.requests`` logger, as JSON::

    {"ts": "2026-12-02T10:00:00.123+00:00", "level": "WARNING", "logger": "storeflow.serving.requests",
     "message": "POST /v1/models/m:predict 400", "method": "POST", "path": "/v1/models/m:predict",
     "status": 400, "model_version": "none", "duration_ms": 0.41, "code": "bad_request", "error": "..."}

4xx lines are WARNING and carry no traceback; an exception nothing handled is one ERROR line whose
``exc_info`` field holds the traceback as one string; successful requests are INFO lines, written only
with ``serving.request_log: true`` (off by default: writing a line took ~30 us on a 2-core dev machine).
"""

from __future__ import annotations

import logging
import sys
import warnings
from datetime import datetime, timezone

import orjson

REQUEST_LOGGER = "storeflow.serving.requests"
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: time, level, logger, message, its ``extra`` fields, its traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        entry.update((k, v) for k, v in record.__dict__.items() if k not in _RECORD_ATTRS)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def request_logger() -> logging.Logger:
    """The request logger, writing JSON lines to stderr (configured once per process)."""
    logger = logging.getLogger(REQUEST_LOGGER)
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def quiet_logging(quiet: bool = True) -> None:
    """No per-request lines from KServe and uvicorn: they log latency and access lines (~6) for each."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")  # KServe's default class
    if not quiet:
        return
    for name in ("kserve", "kserve.trace", "uvicorn.access", "uvicorn.error", "feast", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    access = logging.getLogger("uvicorn.access")
    access.disabled = True
    # uvicorn decides per connection whether to log access lines by ``hasHandlers()``, not the level.
    access.handlers = []
    access.propagate = False
