"""The webhook event journal: SQLite in WAL mode, the webhook id as primary key.

A delivery is answered 200 only after its row is committed (``synchronous=FULL``), so an accepted event
survives a crash; the applier turns committed rows into Feast writes afterwards. Shopify retries a
failed delivery up to 8 times over 4 hours with the same ``X-Shopify-Webhook-Id``: the primary key makes
a retry or duplicate a no-op. Commits are grouped: one writer thread commits every event waiting, so a
burst costs one fsync per batch rather than per event. ``secure_delete`` overwrites erased rows
(privacy requests) instead of leaving them in free pages. An event the applier cannot apply is parked
in ``dead_letters`` with its reason (:func:`park`), so the events after it still apply.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from storeflow.components.queues import STOP, batches

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    webhook_id   TEXT PRIMARY KEY,
    shop         TEXT NOT NULL,
    topic        TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    triggered_at TEXT,
    customer_id  INTEGER,          -- whose data the body holds, when known (privacy requests find it)
    body         BLOB,             -- NULL once applied data was erased
    applied_at   TEXT,
    outcome      TEXT
);
CREATE INDEX IF NOT EXISTS events_unapplied ON events(received_at) WHERE applied_at IS NULL;
CREATE INDEX IF NOT EXISTS events_customer ON events(customer_id);
CREATE TABLE IF NOT EXISTS live_orders (
    order_id INTEGER PRIMARY KEY, customer_id INTEGER, email TEXT, updated_at TEXT, row TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS live_orders_customer ON live_orders(customer_id);
CREATE TABLE IF NOT EXISTS live_line_items (
    line_item_id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, row TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS live_refunds (
    refund_id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, row TEXT NOT NULL);
-- the applier replaces an order's line items and reads orders' items and refunds by order id, under the journal's
-- write lock: without these each did a scan of every live row, the receiver's commits waiting behind it
CREATE INDEX IF NOT EXISTS live_line_items_order ON live_line_items(order_id);
CREATE INDEX IF NOT EXISTS live_refunds_order ON live_refunds(order_id);
CREATE TABLE IF NOT EXISTS shops (shop TEXT PRIMARY KEY, uninstalled_at TEXT);
-- Events the applier could not apply, with why; the event row stays (outcome 'dead_letter') with its body.
CREATE TABLE IF NOT EXISTS dead_letters (
    webhook_id TEXT PRIMARY KEY REFERENCES events(webhook_id),
    parked_at  TEXT NOT NULL,
    reason     TEXT NOT NULL
);
-- A reason may quote the body it came from: erasing the body (privacy requests) erases the reason too.
CREATE TRIGGER IF NOT EXISTS dead_letter_erased AFTER UPDATE OF body ON events WHEN NEW.body IS NULL
BEGIN
    UPDATE dead_letters SET reason = 'erased' WHERE webhook_id = NEW.webhook_id;
END;
"""
DEAD_LETTER = "dead_letter"  # events.outcome of a parked event



@dataclass(frozen=True)
class Event:
    webhook_id: str
    shop: str
    topic: str
    body: bytes
    customer_id: int | None = None
    triggered_at: str | None = None


BUSY_SECONDS = 30  # how long a connection waits for another's write lock before it gives up
BUSY_POLL_SECONDS = 0.0005  # the journal's commit tries again this soon meanwhile (Journal._begin)
BUSY_POLL_MAX_SECONDS = 0.004  # and at least this often however long the lock is held


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_SECONDS, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA secure_delete=ON")
    conn.executescript(SCHEMA)
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on a :func:`connect` connection (autocommit otherwise): all or nothing."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


PRUNE_ROWS = 500  # rows removed per write transaction: a writer's commit waits for one at most


def remove_rows(conn: sqlite3.Connection, table: str, where: str, params: tuple = (), last_rowid: int | None = None,
                stopping: threading.Event | None = None) -> int:
    """Remove the rows of ``table`` (up to ``last_rowid``) that meet ``where``; returns how many. The pruning of the
    receiver's databases (``retention``): the rows are found outside any transaction (a WAL reader never holds up a
    writer's commits), oldest first, and removed :data:`PRUNE_ROWS` at a time, each still meeting ``where`` when it
    goes; ``stopping`` set, it ends after the transaction under way."""
    bound = "" if last_rowid is None else f" AND rowid <= {int(last_rowid)}"
    removed, after = 0, 0
    while True:
        rows = [rowid for (rowid,) in conn.execute(
            f"SELECT rowid FROM {table} WHERE rowid > ?{bound} AND ({where}) ORDER BY rowid LIMIT ?",
            (after, *params, PRUNE_ROWS))]
        if not rows or (stopping is not None and stopping.is_set()):
            return removed
        with transaction(conn):
            removed += conn.execute(f"DELETE FROM {table} WHERE rowid IN ({','.join('?' * len(rows))}) AND ({where})",
                                    (*rows, *params)).rowcount
        after = rows[-1]


def prune(conn: sqlite3.Connection, before: str, read_through: int | None = None,
          stopping: threading.Event | None = None) -> int:
    """Remove the deliveries received before ``before`` (an ISO time, as :func:`now` writes) that were applied,
    up to row ``read_through`` (what a reader that goes by row number, the risk scorer, has read); returns how
    many went (:func:`remove_rows`). Dead letters stay, with their bodies, until they are retried or resolved; so
    does the newest row, whatever its age: SQLite numbers a new row after the highest one left, and a reader's
    place is such a number (the journal emptied, the next delivery would be row 1, behind it)."""
    (newest,) = conn.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()
    last = newest - 1 if read_through is None else min(newest - 1, read_through)
    return remove_rows(conn, "events", "received_at < ? AND applied_at IS NOT NULL AND outcome IS NOT ?",
                       (before, DEAD_LETTER), last, stopping)


@dataclass(frozen=True)
class Backlog:
    """What the applier has not done yet, for /healthz."""

    pending: int
    oldest_pending_seconds: float | None
    dead_letters: int


def backlog(conn: sqlite3.Connection) -> Backlog:
    pending, oldest = conn.execute("SELECT count(*), min(received_at) FROM events WHERE applied_at IS NULL").fetchone()
    age = (datetime.now(timezone.utc) - datetime.fromisoformat(oldest)).total_seconds() if oldest else None
    parked = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    return Backlog(pending, age, parked)


def park(conn: sqlite3.Connection, webhook_id: str, reason: str) -> None:
    """Take an event out of the applier's way, with why; inside the caller's transaction."""
    stamp = now()
    conn.execute("INSERT OR REPLACE INTO dead_letters (webhook_id, parked_at, reason) VALUES (?, ?, ?)",
                 (webhook_id, stamp, reason))
    conn.execute("UPDATE events SET applied_at = ?, outcome = ? WHERE webhook_id = ?", (stamp, DEAD_LETTER, webhook_id))


def dead_letters(conn: sqlite3.Connection) -> list[dict]:
    """Every parked event, oldest first: webhook id, shop, topic, when received and parked, and why."""
    rows = conn.execute("SELECT d.webhook_id, e.shop, e.topic, e.received_at, d.parked_at, d.reason FROM dead_letters d "
                        "JOIN events e USING (webhook_id) ORDER BY d.parked_at, d.rowid").fetchall()
    return [dict(zip(("webhook_id", "shop", "topic", "received_at", "parked_at", "reason"), row)) for row in rows]


def read_dead_letters(path: Path) -> list[dict]:
    """:func:`dead_letters` of the journal at ``path`` (none when nothing was ever received)."""
    if not path.exists():
        return []
    conn = connect(path)
    try:
        return dead_letters(conn)
    finally:
        conn.close()


def requeue(conn: sqlite3.Connection, webhook_ids: list[str] | None = None) -> int:
    """Hand parked events (all, or those named) back to the applier, e.g. after a fix; returns how many."""
    chosen = [r["webhook_id"] for r in dead_letters(conn)] if webhook_ids is None else webhook_ids
    count = 0
    with transaction(conn):
        for webhook_id in chosen:
            if conn.execute("DELETE FROM dead_letters WHERE webhook_id = ?", (webhook_id,)).rowcount:
                conn.execute("UPDATE events SET applied_at = NULL, outcome = NULL WHERE webhook_id = ?", (webhook_id,))
                count += 1
    return count


def uninstalled_at(path: Path, shop: str) -> str | None:
    """When app/uninstalled arrived for ``shop`` (and no reinstall since), else None."""
    if not path.exists():
        return None
    conn = sqlite3.connect(path, timeout=BUSY_SECONDS)
    try:
        row = conn.execute("SELECT uninstalled_at FROM shops WHERE shop = ?", (shop,)).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return row[0] if row else None


class Journal:
    """Durable, de-duplicated intake. :meth:`record` resolves after the event's commit."""

    def __init__(self, path: Path, gather: float = 0.0):
        self.path = Path(path)
        self.gather = gather  # seconds a commit waits after its first delivery for more (queues.batches)
        self.conn = connect(self.path)
        self.conn.execute("PRAGMA busy_timeout = 0")  # a write lock held elsewhere: _begin's own wait, not SQLite's
        # events set after each commit (threading.Event, supervisor.PipeWake): they wake the applier and the risk
        # scorer, in this process or their own
        self.listeners: list = []
        # lists of (event, future): a request's event waits in _arrived until the loop's current pass ends, then
        # that pass's events go to the writer in one put (one wake-up of it, not one per delivery)
        self._queue: queue.Queue = queue.Queue()
        self._arrived: list[tuple[Event, asyncio.Future]] = []
        self._thread = threading.Thread(target=self._write, daemon=True, name="webhook-journal")
        self._thread.start()

    async def record(self, event: Event) -> bool:
        """True if new, False if this webhook id was journaled before."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._arrived:
            loop.call_soon(self._hand_over)
        self._arrived.append((event, future))
        return await future

    def record_now(self, event: Event) -> bool:
        future: Future = Future()
        self._queue.put([(event, future)])
        return future.result()

    def _hand_over(self) -> None:
        arrived, self._arrived = self._arrived, []
        self._queue.put(arrived)

    def close(self) -> None:
        if self._arrived:  # closed from the loop before its pass ended: those requests still get their commit
            self._hand_over()
        self._queue.put(STOP)
        self._thread.join()
        self.conn.close()

    def _write(self) -> None:
        for groups in batches(self._queue, 100, self.gather):
            self._commit([item for group in groups for item in group])

    def _commit(self, items: list[tuple[Event, Future]]) -> None:
        received = now()
        try:
            self._begin()
            fresh = [
                self.conn.execute(
                    "INSERT OR IGNORE INTO events (webhook_id, shop, topic, received_at, triggered_at, customer_id, body)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (e.webhook_id, e.shop, e.topic, received, e.triggered_at, e.customer_id, e.body),
                ).rowcount == 1
                for e, _ in items
            ]
            self.conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - every waiting request must hear about it (-> 503)
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            _settle([(future, exc) for _, future in items])
            return
        _settle([(future, is_new) for (_, future), is_new in zip(items, fresh)])
        for listener in self.listeners:
            listener.set()

    def _begin(self) -> None:
        """BEGIN IMMEDIATE, tried again while another connection holds the write lock (the applier's batch, the
        scorer, retention), for :data:`BUSY_SECONDS` at most: every :data:`BUSY_POLL_SECONDS` at first, the wait
        doubling up to :data:`BUSY_POLL_MAX_SECONDS` (a lock held for seconds, an erasure's, is not polled 2,000
        times a second). SQLite's own busy wait sleeps 1, 2, 5, 10 ... up to 100 ms between its tries, so the
        deliveries of a commit waited for the lock past its release (bench/risk_throughput --applier, paced, two
        runs each: acknowledgement p99 24-29 ms at 1,000/s and 26-32 ms at 2,000/s, against 35-36 and 32-43 ms
        with SQLite's wait; one run with the doubling wait: 26 and 31 ms)."""
        deadline, wait = time.monotonic() + BUSY_SECONDS, BUSY_POLL_SECONDS
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(wait)
            wait = min(wait * 2, BUSY_POLL_MAX_SECONDS)


def _settle(outcomes: list[tuple[asyncio.Future | Future, object]]) -> None:
    """Each waiting request's outcome (True/False, or the exception): the requests of an event loop are resolved by
    one callback in that loop per commit, not a wake-up of the loop per request (asyncio.wrap_future's, ~5% of the
    receiver's CPU at a few thousand deliveries a second)."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for future, outcome in outcomes:
        if isinstance(future, asyncio.Future):
            by_loop.setdefault(future.get_loop(), []).append((future, outcome))
        elif isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, pairs)
        except RuntimeError:  # the loop closed: nobody waits any more
            pass


def _resolve(pairs: list[tuple[asyncio.Future, object]]) -> None:
    for future, outcome in pairs:
        if future.done():  # the request was cancelled (its client went away)
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
