"""Prediction log for monitoring: one JSON line per scored customer, written off the request path.

Location: ``serving.prediction_log_dir`` (default ``<state_dir>/predictions``). Each server process
writes its own files, ``predictions-<UTC start %Y%m%dT%H%M%S%f>-<host>-<pid>.jsonl`` (each replica as pid 1
of its own pod); a file is closed and a new one started past ``serving.prediction_log_rotate_bytes``, and
with ``serving.prediction_log_store`` set every ``serving.prediction_log_ship_seconds`` too: a closed file
is shipped to that object store and its local copy deleted (:mod:`storeflow.components.prediction_logs`),
so replicas share no volume with each other or with the monitoring pipeline. Locally only the newest
``serving.prediction_log_keep_files`` of the process are kept. Lines are UTF-8 JSON objects:

.. code-block:: json

    {"ts": "2026-06-01T12:00:00.123456+00:00", "request_id": "abc", "model_name": "storeflow-repeat-purchase",
     "model_version": "3", "customer_id": 123, "fallback": false, "score": 0.734,
     "features": {"recency_days": 12.0, "frequency": 4.0, ...}, "cart": {"subtotal": 42.5, "item_count": 2},
     "shop": "demo-store.myshopify.com"}

``features`` holds exactly what the model saw (fallback values included), in training column order;
``cart`` and ``shop`` may be null. A version that carries a spend model (train.spend) adds what the answer
said of spend: ``"expected_spend": 84.2`` (rounded to cents) and ``"spend_tier": "HIGH"``. Readers should skip a last line without a newline (a file being
written). Appending is asynchronous: requests add records to a bounded buffer
(``serving.prediction_log_queue``) and a writer thread takes them every :data:`DRAIN_SECONDS`; when the
buffer is full or a write fails the records are dropped and counted in
``storeflow_prediction_log_dropped_total``, so logging can never slow or fail a prediction. Adding
is a ``deque.extend``: no lock and no wake-up of the writer per request (a ``queue.Queue`` put notified
the writer thread each time, ~5 % of a serving worker at 50,000 customers, and a GIL hand-off each).

Erasure (customers/redact) rewrites these files in place while the writer has them open: each batch is
appended under the file's lock (:mod:`storeflow.components.erasure`), so the eraser never sees half a
batch, no line slips in between its read and its rewrite, and later lines land in the same file.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from storeflow.components.erasure import append_locked
from storeflow.components.prediction_logs import LogStore, local_dir, log_store, ship
from storeflow.serving.metrics import LOG_DROPPED

if TYPE_CHECKING:
    from storeflow.components.config import Settings

DRAIN_SECONDS = 0.05  # how often the writer takes what was added
SHIP_RETRY_SECONDS = 30  # after the object store refused a file
log = logging.getLogger(__name__)
WRITE_BATCH = 1000  # records per write at most


class PredictionLog:
    def __init__(self, directory: Path, max_queue: int = 10_000, rotate_bytes: int = 64 << 20, keep_files: int = 20,
                 store: LogStore | None = None, ship_seconds: float = 300):
        self.directory = Path(directory)
        self.rotate_bytes = rotate_bytes
        self.keep_files = keep_files
        self.dropped = 0
        self.max_queue = max_queue
        self.store = store
        self.ship_seconds = ship_seconds
        self._buffer: deque = deque()
        self._stop = threading.Event()
        self._fd: int | None = None
        self._opened = 0.0  # monotonic time the open file was started
        self._files: list[Path] = []  # this process's local files, oldest first (closed ones not yet shipped)
        self._next_ship_retry = 0.0
        self._thread = threading.Thread(target=self._drain, daemon=True, name="prediction-log")
        self._thread.start()

    def append(self, records: list[dict]) -> None:
        """Add records without blocking; count what does not fit."""
        room = self.max_queue - len(self._buffer)
        if room >= len(records):
            self._buffer.extend(records)
            return
        if room > 0:
            self._buffer.extend(records[:room])
        self._drop(len(records) - max(room, 0))

    def close(self, timeout: float = 5.0) -> None:
        """Write what was added, then stop."""
        self._stop.set()
        self._thread.join(timeout)

    def _drop(self, count: int) -> None:
        self.dropped += count
        LOG_DROPPED.inc(count)

    def _drain(self) -> None:
        buffer = self._buffer
        while True:
            stopping = self._stop.wait(DRAIN_SECONDS)
            while buffer:
                records = [buffer.popleft() for _ in range(min(WRITE_BATCH, len(buffer)))]
                try:
                    self._write(b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
                                         for r in records))
                except Exception:  # noqa: BLE001 - disk full, permissions...: drop, count, go on
                    self._drop(len(records))
                    self._close_file()
            if self.store is not None and self._fd is not None and time.monotonic() - self._opened >= self.ship_seconds:
                self._close_file()  # quiet traffic: what was logged still reaches the store on time
            if self.store is not None and len(self._files) > (self._fd is not None) and time.monotonic() >= self._next_ship_retry:
                self._ship_closed()
            if stopping:
                break
        self._close_file()

    def _write(self, data: bytes) -> None:
        if self._fd is None or os.lseek(self._fd, 0, os.SEEK_CUR) >= self.rotate_bytes:
            self._rotate()
        append_locked(self._fd, data)

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            if self.store is not None:
                self._ship_closed()

    def _ship_closed(self) -> None:
        """Ship every closed local file, oldest first; one the store refuses stays here and is retried."""
        closed = self._files if self._fd is None else self._files[:-1]
        for path in list(closed):
            try:
                ship(self.store, path)
            except FileNotFoundError:
                pass
            except Exception:  # noqa: BLE001 - the store is down: keep the file, retry later
                log.warning("could not ship %s to %s; kept here and retried", path.name, self.store.uri, exc_info=True)
                self._next_ship_retry = time.monotonic() + SHIP_RETRY_SECONDS
                return
            self._files.remove(path)

    def _rotate(self) -> None:
        self._close_file()
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        path = self.directory / f"predictions-{stamp}-{socket.gethostname()}-{os.getpid()}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._opened = time.monotonic()
        self._files.append(path)
        while len(self._files) > self.keep_files:
            old = self._files.pop(0)
            old.unlink(missing_ok=True)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def prediction_log(settings: Settings) -> PredictionLog | None:
    """The prediction log ``serving.*`` configures; None when ``serving.prediction_log`` is off."""
    cfg = settings.serving
    if not cfg.prediction_log:
        return None
    return PredictionLog(local_dir(settings), cfg.prediction_log_queue, cfg.prediction_log_rotate_bytes,
                         cfg.prediction_log_keep_files, log_store(settings), cfg.prediction_log_ship_seconds)
