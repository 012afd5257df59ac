"""What the receiver's databases keep, and for how long (``shopify.retention_days``).

The webhook journal holds every delivery's body and the risk outbox every order's assessment: a busy store's
receiver filled its volume with them, and every privacy request read all the journal's bodies. Once a delivery is
applied (and, with order risk on, scored) and older than the retention, and once an assessment was written back
that long ago, nothing needs it: Shopify's retries, which the journal recognizes by webhook id, end after 4 hours.
The receiver removes them every ``shopify.prune_every_seconds`` in a thread of its own, and with them the orders and
refunds the applier kept live that the newest snapshot now holds (:mod:`~storeflow.components.shopify.live_rows`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pandas as pd

from storeflow.components.config import Settings
from storeflow.components.ingest.snapshot import newest_snapshot
from storeflow.components.shopify import assessments, journal, layout, live_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pruned:
    deliveries: int  # journal rows removed
    assessments: int  # risk outbox rows removed
    live_orders: int = 0  # the applier's live orders the newest snapshot holds (live_rows), their line items with them
    live_refunds: int = 0


def prune(settings: Settings, at: datetime | None = None, stopping: threading.Event | None = None) -> Pruned:
    """Remove what is past retention at ``at`` (now): journaled deliveries applied and (order risk on) read by the
    scorer, and assessments written back. With order risk on and no scorer started yet, the journal stays whole.
    ``stopping`` set (the receiver is stopping), it ends after the transaction under way."""
    from storeflow.components.risk.realtime import journal_position, risk_db

    at = at or datetime.now(timezone.utc)
    before = at - timedelta(days=settings.shopify.retention_days)
    read_through, outbox = None, 0
    if settings.risk.endpoint:
        read_through = journal_position(settings)
        if read_through is None:
            return Pruned(0, 0)
        with closing(assessments.connect(risk_db(settings))) as db:
            outbox = assessments.prune(db, before.timestamp(), stopping=stopping)
    newest = newest_snapshot(settings.data_dir / "snapshots")
    with closing(journal.connect(layout.journal_path(settings))) as conn:
        deliveries = journal.prune(conn, before.isoformat(), read_through, stopping)
        orders, refunds = live_rows.forget_applied(conn, newest, pd.Timestamp(before), stopping) if newest else (0, 0)
    return Pruned(deliveries, outbox, orders, refunds)


class Retention:
    """The receiver's pruning thread: :func:`prune` at start and every ``shopify.prune_every_seconds``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="journal-retention")
        self.last: Pruned | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.last = prune(self.settings, stopping=self._stop)
                if any((self.last.deliveries, self.last.assessments, self.last.live_orders, self.last.live_refunds)):
                    log.info("retention: %d deliveries, %d assessments, and %d live orders and %d live refunds the "
                             "newest snapshot holds, older than %g days, removed", self.last.deliveries,
                             self.last.assessments, self.last.live_orders, self.last.live_refunds,
                             self.settings.shopify.retention_days)
            except sqlite3.Error as exc:  # a busy or failing database: tried again next time, nothing lost
                log.warning("retention: nothing removed this time: %s", exc)
            except Exception:  # noqa: BLE001 - anything else: said, and tried again; the thread ended here before,
                log.exception("retention: nothing removed this time")  # and nothing past retention was removed again
            self._stop.wait(self.settings.shopify.prune_every_seconds)
