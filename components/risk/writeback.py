"""The order risk write-back: queued assessments (the outbox, :mod:`storeflow.components.shopify.assessments`)
drained to Shopify's Admin API whenever the scorer queued some, batch after batch while a drain makes progress.
Shopify's waits (a throttled bucket, an outage's backoff) stay here, so scoring goes on meanwhile.

Under ``storeflow webhooks`` (``risk.scorer: process``) it is a process of its own, beside the scorer's, which the
receiver starts and restarts (:func:`run_writer`): sending a document of assessments (building it, the HTTP
exchange, the answer's marks) took an eighth of the scorer process's CPU, and, sharing its GIL, held up scoring
for as long. With ``risk.scorer: thread`` it is a thread of the receiver's scorer
(:class:`storeflow.components.risk.realtime.RiskScorer`).

Imports stay light (no pandas, Feast or the order history): the process holds the outbox and the Admin API client,
~85 MB resident.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from storeflow.components.config import Settings
from storeflow.components.shopify import assessments, layout
from storeflow.components.shopify.admin import AdminClient, ShopifyError, credentials

log = logging.getLogger(__name__)

BATCH = 1_000  # journal rows per scoring pass (realtime.RiskScorer), and so assessments per drain
# why the scoring or the write-back loop's last pass failed, while it does (/healthz reads it from any process)
FAILING_SCHEMA = "CREATE TABLE IF NOT EXISTS risk_failing (part TEXT PRIMARY KEY, error TEXT NOT NULL, at REAL);"


def risk_db(settings: Settings) -> Path:
    """SQLite (WAL): the assessment outbox, the orders received live as risk history, the journal position."""
    return layout.connection_dir(settings) / "risk.db"


def record_failing(db: sqlite3.Connection, part: str, error: str | None) -> None:
    """Record (or clear, ``error`` None) why ``part``'s loop fails, where /healthz finds it whichever process asks
    (``risk_failing``)."""
    if error is None:
        db.execute("DELETE FROM risk_failing WHERE part = ?", (part,))
    else:
        db.execute("INSERT OR REPLACE INTO risk_failing VALUES (?, ?, julianday('now'))", (part, error))


class WriteBack:
    """Drains the outbox when woken (``wake``: a ``threading.Event``, or the ``PipeWake`` the scorer's process sets
    after each batch it queued) and every ``shopify.apply_idle_seconds``, for what a failed drain left."""

    def __init__(self, settings: Settings, admin: AdminClient | None = None, wake=None,
                 stop: threading.Event | None = None):
        self.settings = settings
        self.admin = admin  # built on first use: without credentials assessments stay queued, scoring goes on
        self.wake = wake if wake is not None else threading.Event()
        self.stopping = stop if stop is not None else threading.Event()
        self.error: str | None = None  # why the last drain failed (None once one succeeds)
        self.unable = ""  # why no Admin API client could be built (drain returned None)
        self._thread: threading.Thread | None = None

    def drain(self, db: sqlite3.Connection) -> assessments.DrainResult | None:
        """Send queued assessments (up to a pass's worth) over ``db``; None while the Admin API credentials are not
        set (``unable`` says why)."""
        if self.admin is None:
            try:
                self.admin = AdminClient(self.settings, credentials(self.settings), sleep=self._pause)
            except ShopifyError as exc:
                self.unable = f"risk assessments stay queued: {exc}"
                return None
        return assessments.drain(db, self.admin, limit=BATCH, max_attempts=self.settings.risk.writeback_max_attempts)

    def drain_all(self, db: sqlite3.Connection) -> None:
        """Drain batch after batch while drains make progress; :class:`ShopifyError` when one could send nothing
        for a reason (no credentials, Shopify down, the token refused): the loop backs off and says why. Taken as
        an empty outbox, such a drain was tried again at every wake-up (``shopify.apply_idle_seconds``, and each
        batch scored), a request every 0.2 s for as long as the token stayed revoked, with nothing logged and
        /healthz saying no error."""
        while not self.stopping.is_set():
            result = self.drain(db)
            if result is None:
                raise ShopifyError(self.unable)
            progress = result.sent or result.already_assessed or result.rejected
            if result.error is not None and not progress:
                raise ShopifyError(f"{result.pending} assessment(s) wait: {result.error}")
            if not result.pending or not progress:
                return

    def run(self) -> None:
        """The loop, until ``stopping`` is set, over a connection of its own (one per thread)."""
        idle, cap = self.settings.shopify.apply_idle_seconds, self.settings.shopify.max_backoff_seconds
        wait = self.settings.risk.retry_seconds
        db = assessments.connect(risk_db(self.settings))
        try:
            db.execute(FAILING_SCHEMA)
            # a write-back before this one's (killed, restarted) left why it failed: this one has not failed yet, and
            # only a failure of its own was ever cleared, so /healthz showed that error after Shopify took assessments
            record_failing(db, "write_back", None)
            while not self.stopping.is_set():
                self.wake.wait(idle)
                self.wake.clear()  # before the drain: what is queued after this wakes the next wait
                try:
                    self.drain_all(db)
                    if self.error is not None:
                        record_failing(db, "write_back", None)
                    wait, self.error = self.settings.risk.retry_seconds, None
                except Exception as exc:  # noqa: BLE001 - assessments stay queued: retried
                    self.error = str(exc)[:500]
                    try:
                        record_failing(db, "write_back", self.error)
                    except sqlite3.Error:  # the database itself failing: the log says so
                        pass
                    log.warning("order risk write-back: %s; retrying in %.1f s", exc, wait)
                    self.stopping.wait(wait)
                    wait = min(wait * 2, cap)
        finally:
            db.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, daemon=True, name="order-risk-writeback")
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join()
        if self.admin is not None:
            self.admin.close()

    def _pause(self, seconds: float) -> None:
        """The Admin API client's wait between retries, cut short by :meth:`stop` (a throttled or failing Shopify
        had stop() wait out backoffs of up to ``shopify.max_backoff_seconds``, 60 s); the call is then abandoned
        as an outage: its orders stay queued and ask Shopify before they go again."""
        if self.stopping.wait(seconds):
            raise ShopifyError("the write-back is stopping: the call is abandoned and its orders stay queued")


def run_writer(settings_json: str, receiver_pid: int | None = None, wake=None) -> None:
    """The write-back's process (``risk.scorer: process``, started and restarted by the receiver beside the
    scorer's); ``wake``: the ``supervisor.PipeWake`` the scorer's process sets after each batch it queued. It ends
    when the receiver has gone (see :func:`storeflow.components.shopify.supervisor.run_applier`)."""
    from storeflow.components.config import load_settings

    run_while_receiver_lives(WriteBack(load_settings(settings_json), wake=wake), receiver_pid)


def run_while_receiver_lives(worker, receiver_pid: int | None) -> None:
    """A worker process's life: ``worker`` (with ``start`` and ``stop``) started, and stopped once the receiver
    ``receiver_pid`` has gone (uvicorn re-raises the SIGTERM it handled, so the receiver dies without stopping its
    workers). What startup built is frozen first: no full collection walks it again."""
    import os
    import time

    from storeflow.components.heap import freeze_startup_objects

    freeze_startup_objects()  # imports, and the scorer's snapshot history
    worker.start()
    try:
        while receiver_pid is None or os.getppid() == receiver_pid:
            time.sleep(0.5)
    finally:
        worker.stop()
