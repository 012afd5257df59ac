"""Real-time order risk (issue 16): every ``orders/create`` the webhook receiver journaled is scored by the risk
model server and its assessment written back to Shopify with ``orderRiskAssessmentCreate``.

With ``risk.endpoint`` set, a scorer follows the journal in arrival order: under ``storeflow webhooks`` a process of
its own the receiver starts and restarts (``risk.scorer: process``, :func:`run_scorer`; scoring never holds the
receiver's GIL), or threads of the receiver's process (``thread``). For an ``orders/create`` it
computes the order's features from live history (:mod:`storeflow.components.risk.live`), asks the risk server
(KServe V1, :mod:`storeflow.components.risk.protocol`) for the score, level and facts, and then, in one SQLite
transaction, records the order as history, queues the assessment in the outbox
(:mod:`storeflow.components.shopify.assessments`) and moves its place in the journal on. Other order and refund
topics only add history. The write-back (:mod:`storeflow.components.risk.writeback`: a process of its own beside
the scorer's under ``process``, a second thread under ``thread``) drains the outbox to the Admin API as assessments
are queued, so scoring goes on while the write-back waits on Shopify's cost bucket (a shop's bucket admits 10-200
assessments a second: scoring would otherwise run at that pace).

Nothing is lost and nothing is sent twice: the journal keeps a delivery from the moment it was answered 200; its
place in the journal moves only with the outbox row, so a crash or a risk server that does not answer leaves the
order to be scored again (a second score of a queued order changes nothing: the outbox keeps one row per order);
the outbox sends a row until Shopify answered and, after a crash in between, asks Shopify before sending again.
The same delivery twice is one journal row; a second delivery of one order is one outbox row.
"""

from __future__ import annotations

import gc
import logging
import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field

import httpx
import orjson
import pyarrow as pa

from storeflow.components.config import Settings
from storeflow.components.heap import freeze_startup_objects
from storeflow.components.ingest.snapshot import newest_snapshot, snapshot_identity
from storeflow.components.risk.features import ORDER_FEATURES
from storeflow.components.risk.live import HISTORY_TOPICS, SCORED_TOPIC, LiveHistory, NewOrder, new_order, order_id
from storeflow.components.risk.protocol import MAX_INSTANCES, ORDER_ID
from storeflow.components.shopify import assessments, journal, layout
# BATCH: journal rows per pass, a backlog is scored in batches this large (ms per order falls with size); a drain
# sends as many
from storeflow.components.risk.writeback import (BATCH, FAILING_SCHEMA, WriteBack, record_failing, risk_db,
                                                 run_while_receiver_lives)
from storeflow.components.shopify.admin import AdminClient
from storeflow.components.shopify.assessments import Fact
from storeflow.components.shopify.journal import transaction
from storeflow.components.shopify.payloads import REFUND_TOPICS, PayloadError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS risk_cursor (id INTEGER PRIMARY KEY CHECK (id = 0), journal_rowid INTEGER NOT NULL);
-- deliveries the risk path could not use (a payload it refuses, a request the risk server refuses), with why
CREATE TABLE IF NOT EXISTS risk_skipped (webhook_id TEXT PRIMARY KEY, topic TEXT, reason TEXT NOT NULL, at REAL);
-- the history's work on a snapshot while it lasts, for /healthz: 'building' (nothing is scored meanwhile) or
-- 'seeding' (scored meanwhile, a customer not folded in yet counted as before the snapshot); no row: ready
CREATE TABLE IF NOT EXISTS risk_history_work (id INTEGER PRIMARY KEY CHECK (id = 0), state TEXT NOT NULL,
    snapshot TEXT, customers INTEGER NOT NULL, since REAL NOT NULL);
"""


# What an order's own data can raise on its way to a score: it is set aside with why and the next order goes on.
# Anything else (the online store or the database failing) is an outage: the pass fails and the order waits.
# ArithmeticError: an overflow from a value no order has (one stopped every order after it until it was caught here).
REFUSED = (PayloadError, orjson.JSONDecodeError, KeyError, TypeError, ValueError, ArithmeticError)
# ... of which these say the order itself is malformed. The others may as well be a fault of the code, the config or
# the model (a model whose features the server does not send: a 400 for every order): such an order is set aside
# only once another order of the same pass was scored; while every order fails alike, they all wait (OrdersFailAlike).
ORDER_FAULTS = (PayloadError, orjson.JSONDecodeError)


class ScoringUnavailable(RuntimeError):
    """The risk server did not answer (down, restarting, overloaded): the order stays in the journal."""


class OrdersFailAlike(RuntimeError):
    """Every order of a pass failed on its way to a score, none for a malformed payload: a fault of the code, the
    config or the model, not of the orders; they stay in the journal (the loop retries, /healthz says behind)."""


def open_risk_db(settings: Settings) -> sqlite3.Connection:
    """The risk database, created if new, with its place in the journal.

    Turned on for a receiver that journaled orders before, the risk path starts after them: those were never
    scored and are not now (their assessments would land weeks late); from here on every delivery is. The
    receiver opens it before it takes a delivery (a scorer process starts a few seconds later), and before
    anything else can fail, so a later start scores what arrived meanwhile."""
    path = risk_db(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(assessments.SCHEMA)
    db.executescript(SCHEMA)
    db.execute(FAILING_SCHEMA)
    with closing(journal.connect(layout.journal_path(settings))) as events:
        (last,) = events.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()
    db.execute("INSERT OR IGNORE INTO risk_cursor VALUES (0, ?)", (last,))
    return db


@dataclass
class _Batch:
    """A pass's new orders scored together, and the deliveries journaled among them that wait to be recorded after
    them (``later``: row, webhook id, topic, body, parsed payload), with what those change and what each order
    reads."""

    orders: list[tuple[int, str, str, bytes | None, NewOrder | dict]] = field(default_factory=list)
    ids: set = field(default_factory=set)
    reads: dict[int, frozenset | None] = field(default_factory=dict)
    later: list[tuple[int, str, str, bytes | None, NewOrder | dict | None]] = field(default_factory=list)
    changed: set = field(default_factory=set)

    def add(self, rowid: int, webhook_id: str, topic: str, body: bytes | None, order: NewOrder | dict,
            reads: frozenset | None) -> None:
        number = order_id(order)
        self.orders.append((rowid, webhook_id, topic, body, order))
        self.ids.add(number)
        self.reads[number] = reads

    def defer(self, rowid: int, webhook_id: str, topic: str, body: bytes | None, payload: NewOrder | dict | None,
              changes: frozenset) -> None:
        self.later.append((rowid, webhook_id, topic, body, payload))
        self.changed |= changes

    @property
    def last(self) -> int:
        """The last journal row the batch holds."""
        return max(self.orders[-1][0] if self.orders else 0, self.later[-1][0] if self.later else 0)


class RiskScorer:
    """Scores what the receiver journaled, queues the assessments, and writes them back: with a thread of its own
    (:class:`~storeflow.components.risk.writeback.WriteBack`), or, given ``writer_wake``, by waking the write-back's
    process (``risk.scorer: process``: :func:`~storeflow.components.risk.writeback.run_writer`)."""

    def __init__(self, settings: Settings, http: httpx.Client | None = None, admin: AdminClient | None = None,
                 wake=None, writer_wake=None):
        if not settings.risk.endpoint:
            raise ValueError("risk.endpoint is not set: the URL of the risk model server (storeflow serve-risk, or "
                             "the risk InferenceService on a cluster)")
        self.settings = settings
        self.url = predict_url(settings)
        # built here, used by the scoring thread (one user at a time)
        self.db = open_risk_db(settings)
        # Its commits are not synced to disk (WAL, synchronous NORMAL): a machine losing power loses at most its last
        # few, which puts the journal place back before orders the journal (synced) still holds; they are scored
        # again and queued once (the outbox keeps one row per order). The write-back's synced commit before it sends
        # syncs them with its own (assessments.drain). A sync cost 123-173 us of CPU and 277-396 us here, once a batch.
        self.db.execute("PRAGMA synchronous=NORMAL")
        # a scorer before this one's: this one has not failed yet (the write-back's error is the write-back's to
        # clear: a scorer restarted while Shopify failed emptied /healthz's last_error until its next failure)
        record_failing(self.db, "scoring", None)
        self.journal = journal.connect(layout.journal_path(settings))
        self.history: LiveHistory | None = None
        self._build_history()
        self._snapshot_looked = time.monotonic()
        self.http = http or httpx.Client(timeout=settings.risk.request_timeout_seconds)
        self._stop = threading.Event()
        # assessments were queued: the write-back wakes up (this process's thread, or the write-back's process)
        self.write_back = WriteBack(settings, admin, wake=writer_wake, stop=self._stop)
        self._own_writer = writer_wake is None
        # deliveries were journaled: set by the receiver after each commit (a threading.Event, or a PipeWake);
        # None: the scoring loop looks every shopify.apply_idle_seconds (0.2 s: most of an order's time end to end)
        self.wake = wake
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None  # why the last pass failed (None once one succeeds)
        self._outbox: set = set()  # the pass's orders with an assessment queued (score_pending)

    # --- one pass -------------------------------------------------------------------------------------

    def score_pending(self, limit: int = BATCH) -> int:
        """Handle up to ``limit`` journaled order and refund deliveries after the last one handled, each batch
        committed before the next is scored; returns how many. :class:`ScoringUnavailable` when the risk server
        does not answer (the rest wait).

        A store's deliveries interleave: each order's orders/paid and orders/updated come between later orders'
        creates. An update or refund that changes nothing a later order of the batch reads
        (:meth:`LiveHistory.changes`) waits for the batch and is recorded in its transaction, after its orders;
        one that does, or whose effect cannot be told, ends the batch, as every such delivery once did (with two
        follow-ups an order, that scored one order a request). The deliveries before a pass's first order wait the
        same way: each was handled on its own, a transaction and a ledger read and write apiece, and at a shop's
        pace most passes began with one."""
        (after,) = self.db.execute("SELECT journal_rowid FROM risk_cursor").fetchone()
        topics = sorted(HISTORY_TOPICS)
        rows = self.journal.execute(
            f"SELECT rowid, webhook_id, topic, body FROM events WHERE rowid > ? AND topic IN "
            f"({', '.join('?' * len(topics))}) ORDER BY rowid LIMIT ?", (after, *topics, limit)).fetchall()
        if rows:
            self._check_ledgers()
        batch = _Batch()
        orders = [self._new_order(topic, body) for _, _, topic, body in rows]
        self._outbox = self._in_outbox({order_id(order) for order in orders if order is not None})
        for (rowid, webhook_id, topic, body), order in zip(rows, orders):
            if order is not None and (order_id(order) in batch.ids or order_id(order) in self._outbox):
                order = None  # a second delivery of an order batched or queued: handled on its own
            if order is not None:
                reads = self.history.reads(order) if isinstance(order, NewOrder) else None
                if batch.changed and (reads is None or not reads.isdisjoint(batch.changed)):  # it must see them first
                    self._flush(batch)
                    batch = _Batch()
                batch.add(rowid, webhook_id, topic, body, order, reads)
                continue
            if (later := self._later(topic, body, batch)) is not None:  # before the pass's first order too
                batch.defer(rowid, webhook_id, topic, body, *later)
                continue
            self._flush(batch)
            batch = _Batch()
            self._handle(rowid, webhook_id, topic, body)
        self._flush(batch)
        return len(rows)

    def _later(self, topic: str, body: bytes | None, batch: _Batch) -> tuple[NewOrder | dict | None, frozenset] | None:
        """A delivery that is not a new order of ``batch``, parsed, and what recording it changes, when it can wait
        for the batch's later orders (see :meth:`score_pending`); None when it must be handled where it is."""
        if body is None:  # erased before it was scored: nothing to record
            return None, frozenset()
        try:
            payload = orjson.loads(body) if topic in REFUND_TOPICS else new_order(body)
            if topic == SCORED_TOPIC and not (payload.id in batch.ids or payload.id in self._outbox):
                return None  # an order to score on its own
            changes = self.history.changes(topic, payload)
        except REFUSED:  # handled on its own: set aside with why
            return None
        # an order of the batch itself (its orders/paid): it changes what that order reads too
        theirs = [batch.reads[number] for kind, number in changes if kind == "order" and number in batch.ids]
        if any(reads is None for reads in theirs):
            return None
        return payload, changes.union(*theirs)

    def _new_order(self, topic: str, body: bytes | None) -> NewOrder | dict | None:
        """An orders/create to score, validated from its bytes, or None to handle the row on its own (another
        topic, erased, malformed)."""
        if topic != SCORED_TOPIC or body is None:
            return None
        try:
            return new_order(body)
        except ORDER_FAULTS:  # malformed: on its own, it is set aside with why
            return None
        except REFUSED:  # any other failure is judged with the batch's (_one_by_one): it may be the code's
            return orjson.loads(body)

    def _in_outbox(self, numbers: set) -> set:
        """Which of these orders have an assessment queued already (a second delivery of theirs), in one query a
        pass: one a delivery was 3-5 % of the scorer's CPU. Orders the pass queues are added as it goes."""
        if not numbers:
            return set()
        found = self.db.execute(
            "SELECT order_id FROM risk_outbox WHERE order_id IN (SELECT value FROM json_each(?))",
            (orjson.dumps([f"{assessments.ORDER_GID}{number}" for number in numbers]),)).fetchall()
        return {int(gid.removeprefix(assessments.ORDER_GID)) for (gid,) in found}

    def _flush(self, batch: _Batch) -> None:
        """Score a batch of new orders with one features query and one request to the risk server, then record,
        queue and advance past all of them in one transaction, with the deliveries that waited for them, and wake
        the write-back. An order the path refuses sends the batch one by one (:meth:`_one_by_one`), so that order
        is set aside with why and the others go on, in journal order with the deliveries that waited.

        Recorded as soon as answered: the scorer once computed the next batch's features while the risk server
        scored this one (the answer waited for them), which made each order wait a batch longer and cost more CPU
        (bench/risk_throughput, 5,000 customers, paced 2,500/s, two runs each: p50 journaled to answered 34-35 ->
        25-26 ms, scorer CPU 0.28-0.29 -> 0.26-0.27 ms an order)."""
        if not batch.orders and not batch.later:
            return
        try:
            scored = self._score_many([item[4] for item in batch.orders]) if batch.orders else []
        except REFUSED:
            return self._in_journal_order(batch)
        with transaction(self.db):
            for (_, _, topic, _, payload), (order, level, facts, version) in zip(batch.orders, scored):
                self.history.record(topic, payload)
                assessments.enqueue(self.db, order, level, facts, version)
            if batch.later:
                with self.history.recording(batch.changed):
                    for _, webhook_id, topic, _, payload in batch.later:
                        self._record_later(webhook_id, topic, payload)
            self._advance(batch.last)
        if batch.orders:
            self._outbox |= batch.ids
            self.write_back.wake.set()

    def _in_journal_order(self, batch: _Batch) -> None:
        """A refused batch handled as the journal has it, as the scorer did before deliveries waited for batches:
        the orders between two waiting deliveries one by one (:meth:`_one_by_one`), each waiting delivery on its
        own (:meth:`_handle`), so the journal place never passes a delivery not handled yet."""
        run: list[tuple[int, str, str, bytes | None, NewOrder | dict]] = []
        waiting = iter(batch.later)
        following = next(waiting, None)
        for item in batch.orders:
            while following is not None and following[0] < item[0]:
                if run:
                    self._one_by_one(run)
                    run = []
                self._handle(*following[:4])
                following = next(waiting, None)
            run.append(item)
        if run:
            self._one_by_one(run)
        while following is not None:
            self._handle(*following[:4])
            following = next(waiting, None)

    def _record_later(self, webhook_id: str, topic: str, payload: NewOrder | dict | None) -> None:
        """A delivery that waited for a batch, recorded as history inside the caller's transaction; one the history
        refuses is set aside with why, the rest of the transaction kept."""
        if payload is None:
            return
        self.db.execute("SAVEPOINT later")
        try:
            self.history.record(topic, payload)
        except REFUSED as exc:
            self.db.execute("ROLLBACK TO later")
            self._set_aside(webhook_id, topic, f"{type(exc).__name__}: {exc}")
        self.db.execute("RELEASE later")

    def _one_by_one(self, batch: list[tuple[int, str, str, bytes | None, NewOrder | dict]]) -> None:
        """A batch the path refused, order by order, in journal order: each order scored is recorded at once; one
        that fails is set aside with why once it is known to be the order's (a malformed payload, or another order
        of the batch scored). While none scored, the failed orders wait: :class:`OrdersFailAlike` (the ones before
        them with a malformed payload are set aside)."""
        failed: list[tuple[int, str, str, str, bool]] = []  # (rowid, webhook id, topic, why, the payload's fault)
        scored = False
        for rowid, webhook_id, topic, _, payload in batch:
            try:
                assessment = self._score(payload)
            except REFUSED as exc:
                failed.append((rowid, webhook_id, topic, f"{type(exc).__name__}: {exc}", isinstance(exc, ORDER_FAULTS)))
                continue
            scored = True
            for *row, _ in failed:  # the path works: their failures were theirs
                self._skip(*row)
            failed = []
            self._record(rowid, topic, payload, assessment)
        while failed and (scored or failed[0][4]):
            self._skip(*failed.pop(0)[:4])
        if failed:
            raise OrdersFailAlike(f"{len(failed)} order(s) failed alike and none scored, e.g. webhook {failed[0][1]}: "
                                  f"{failed[0][3]}; they wait (a fault of the code, config or model, not theirs)")

    def _handle(self, rowid: int, webhook_id: str, topic: str, body: bytes | None) -> None:
        """One delivery on its own: an order update or refund (history only), or an order not scored in a batch.
        One the path refuses, scoring it or recording it as history (an update whose cancel_reason is none Shopify
        documents, which once stopped every order after it), is set aside with why."""
        if body is None:  # erased before it was scored (a privacy request)
            return self._advance(rowid)
        try:
            payload = orjson.loads(body)
            assessment = None
            if topic == SCORED_TOPIC and not self._queued(payload["id"]):
                assessment = self._score(payload)
            self._record(rowid, topic, payload, assessment)
        except REFUSED as exc:
            return self._skip(rowid, webhook_id, topic, f"{type(exc).__name__}: {exc}")

    def _record(self, rowid: int, topic: str, payload: dict | NewOrder,
                assessment: tuple[int, str, list[Fact], str] | None) -> None:
        """One delivery's history, its assessment queued (if any) and the journal place past it, in one transaction."""
        with transaction(self.db):
            self.history.record(topic, payload)
            if assessment is not None:
                order, level, facts, version = assessment
                assessments.enqueue(self.db, order, level, facts, version)
            self.db.execute("UPDATE risk_cursor SET journal_rowid = ?", (rowid,))
        if assessment is not None:
            self._outbox.add(assessment[0])
            self.write_back.wake.set()

    def _queued(self, number) -> bool:
        return self.db.execute("SELECT 1 FROM risk_outbox WHERE order_id = ?",
                               (f"{assessments.ORDER_GID}{number}",)).fetchone() is not None

    def _score(self, payload: dict | NewOrder) -> tuple[int, str, list[Fact], str]:
        return self._score_many([payload])[0]

    def _score_many(self, payloads: list[dict | NewOrder]) -> list[tuple[int, str, list[Fact], str]]:
        return self._ask(payloads, self._prepare(payloads))

    def _prepare(self, payloads: list[dict | NewOrder]) -> list[dict]:
        """The orders' features (their velocity and history counted in the online store) as the risk server's
        instances."""
        rows = self.history.features_many(payloads)
        return [{ORDER_ID: str(order_id(payload)), **{name: features[name] for name in ORDER_FEATURES}}
                for payload, features in zip(payloads, rows)]

    def _ask(self, payloads: list[dict | NewOrder], instances: list[dict]) -> list[tuple[int, str, list[Fact], str]]:
        """The risk server's score, level and facts of each order (as few requests as it takes)."""
        answered: list[tuple[dict, str]] = []  # each order's prediction and the version that made it
        for start in range(0, len(instances), MAX_INSTANCES):  # as few requests as the server takes
            chunk = instances[start:start + MAX_INSTANCES]
            try:
                answer = self.http.post(self.url, content=orjson.dumps({"instances": chunk}),
                                        headers={"content-type": "application/json"})
            except httpx.HTTPError as exc:
                raise ScoringUnavailable(f"risk server {self.url}: {type(exc).__name__}: {exc}") from exc
            if answer.status_code >= 500 or answer.status_code in (404, 408, 429):  # 404: not loaded yet
                raise ScoringUnavailable(f"risk server {self.url} answered {answer.status_code}: {answer.text[:300]}")
            if answer.status_code != 200:
                raise ValueError(f"risk server refused the order ({answer.status_code}): {answer.text[:300]}")
            try:
                body = orjson.loads(answer.content)
            except orjson.JSONDecodeError as exc:
                raise ScoringUnavailable(f"risk server {self.url} answered 200 without JSON: {exc}") from exc
            predictions = body["predictions"]
            if [str(p.get(ORDER_ID)) for p in predictions] != [i[ORDER_ID] for i in chunk]:
                raise ScoringUnavailable(f"risk server {self.url} answered {len(predictions)} predictions for "
                                         f"{len(chunk)} orders, or not in their order")
            answered.extend((p, str(body["model_version"])) for p in predictions)
        out = [(int(order_id(payload)), p["level"], [Fact(f["description"], f["sentiment"]) for f in p["facts"]], version)
               for payload, (p, version) in zip(payloads, answered)]
        for order, level, facts, _ in out:  # what Shopify would refuse is refused here, before it is queued
            try:
                assessments.check(level, facts)
            except ValueError as exc:
                raise ValueError(f"risk server's answer for order {order}: {exc}") from None
        return out

    def _advance(self, rowid: int) -> None:
        self.db.execute("UPDATE risk_cursor SET journal_rowid = ?", (rowid,))

    def _skip(self, rowid: int, webhook_id: str, topic: str, reason: str) -> None:
        with transaction(self.db):
            self._set_aside(webhook_id, topic, reason)
            self._advance(rowid)

    def _set_aside(self, webhook_id: str, topic: str, reason: str) -> None:
        log.error("order risk skipped webhook %s (%s): %s", webhook_id, topic, reason)
        self.db.execute("INSERT OR REPLACE INTO risk_skipped VALUES (?, ?, ?, julianday('now'))",
                        (webhook_id, topic, reason[:500]))

    def drain(self) -> assessments.DrainResult | None:
        """Send queued assessments to Shopify (up to a batch's worth: a pass queues up to ``BATCH``), from this
        thread; None while the Admin API credentials are not set."""
        return self.write_back.drain(self.db)

    def step(self, drain: bool = True) -> int:
        """Score what arrived, writing back what is queued after each batch (under a steady stream of orders a
        backlog is never scored to the end: assessments must not wait for it); returns how many deliveries were
        handled. ``drain`` False: the write-back (woken after each batch) sends them."""
        handled = 0
        while count := self.score_pending():
            handled += count
            if drain:
                self.drain()
        if not handled and drain:
            self.drain()  # assessments left queued by a failed drain
        return handled

    def refresh_history(self) -> bool:
        """Rebuild the history from the newest snapshot when it is not the one it was built from (a daily ingest,
        or a redaction's rewrite); True if it did. The old history goes first: both at once would not fit the
        webhooks pod at a large store (~770 MB held and ~1.1 GB building at 500,000 customers). Until this, a
        snapshot reached the scorer only when its process restarted, and the ledgers missed what it holds and no
        webhook brought. Scoring waits while it builds (~7 s at that size; deliveries wait in the journal); the
        snapshot's events are then folded into the ledgers a chunk of customers at a time between scoring passes
        (:meth:`LiveHistory.seed_step`; all at once held every order ~66 s more there). If building fails, the next
        pass tries again and scores nothing until it succeeds."""
        newest = snapshot_identity(newest_snapshot(self.settings.data_dir / "snapshots"))
        if self.history is not None:
            if newest == self.history.snapshot:
                return False
            log.info("order risk: snapshot %s is not the history's (%s): rebuilding it", newest, self.history.snapshot)
        frozen = gc.get_freeze_count() > 0  # the scorer's process froze what it built at its start (components.heap)
        if frozen:
            gc.unfreeze()  # else the old history, frozen, would never be collected if it were cyclic garbage
        self.history = None
        gc.collect()
        pa.default_memory_pool().release_unused()
        self._build_history()
        if frozen:
            freeze_startup_objects()
        return True

    def seed_step(self) -> bool:
        """Fold the next chunks of a newer snapshot into the ledgers for about ``risk.seed_step_seconds``
        (:meth:`LiveHistory.seed_step`), what is done told to /healthz; True while some remain."""
        if self.history is None or not self.history.seeding:
            return False
        seeding = self.history.seed_step(self.settings.risk.seed_step_seconds)
        self._report_history("seeding" if seeding else None)
        return seeding

    def _build_history(self) -> None:
        """The history from the newest snapshot, what it does meanwhile and afterwards told to /healthz
        (``risk_history_work``): building it holds scoring; a first start's seeding too, a newer snapshot's not."""
        newest = newest_snapshot(self.settings.data_dir / "snapshots")
        self._report_history("building", None if newest is None else newest.name)
        self.history = LiveHistory.from_settings(self.settings, self.db, seed_in_steps=True)
        ledgers = self.history.history
        self._seeded = ledgers is not None and ledgers.seeded() is not None  # the marker _check_ledgers looks for
        self._report_history("seeding" if self.history.seeding else None)

    def _check_ledgers(self) -> None:
        """Seed the ledgers again when the online store lost them, before a pass's orders are counted against them:
        one read of the seed marker a pass. A Redis restarted without persistence (or flushed, or failed over to
        an empty replica) held no ledger and no velocity list, and until the next snapshot or a restart of the
        scorer every returning customer was scored as a first-time one (no prior orders, spend or recent orders:
        another risk level). What arrived live since the snapshot is not restored: the scorer keeps its keys only."""
        if not self._seeded or self.history.history.seeded() is not None:
            return
        log.warning("order risk: the online store has lost the customers' ledgers (restarted empty?): seeding them "
                    "again from the newest snapshot before scoring")
        self.history.snapshot = None  # not the snapshot's any more: rebuilt from it
        self.refresh_history()

    def _report_history(self, state: str | None, snapshot: str | None = None) -> None:
        """Record what the history is doing (None: ready); a seeding's row keeps its start and counts customers."""
        if state is None:
            self.db.execute("DELETE FROM risk_history_work")
        elif state == "seeding":
            self.db.execute("UPDATE risk_history_work SET state = 'seeding', customers = ?",
                            (self.history.seeded_customers,))
        else:
            self.db.execute("INSERT OR REPLACE INTO risk_history_work VALUES (0, ?, ?, 0, julianday('now'))",
                            (state, snapshot))

    def state(self) -> dict:
        """What waits, for the receiver's /healthz (see :func:`risk_state`)."""
        return risk_state(self.settings)

    # --- running --------------------------------------------------------------------------------------

    @property
    def write_error(self) -> str | None:
        """Why the write-back thread's last drain failed (None once one succeeds)."""
        return self.write_back.error

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="order-risk")
        self._thread.start()
        if self._own_writer:
            self.write_back.start()

    def stop(self) -> None:
        self._stop.set()
        if self.wake is not None:
            self.wake.set()
        if self._thread:
            self._thread.join()
        self.write_back.stop()  # its thread (the same stop event), or only its Admin API client
        self.http.close()
        self.journal.close()
        self.db.close()

    def _loop(self) -> None:
        idle, cap = self.settings.shopify.apply_idle_seconds, self.settings.shopify.max_backoff_seconds
        wait = self.settings.risk.retry_seconds
        look = self.settings.risk.snapshot_check_seconds
        while not self._stop.is_set():
            try:
                if self.history is None or time.monotonic() - self._snapshot_looked >= look:
                    self._snapshot_looked = time.monotonic()
                    self.refresh_history()
                seeding = self.seed_step()
                self.step(drain=False)
                if self.last_error is not None:
                    record_failing(self.db, "scoring", None)
                self.last_error = None
                wait = self.settings.risk.retry_seconds
                self._idle(0 if seeding else idle)
            except Exception as exc:  # noqa: BLE001 - deliveries stay journaled, assessments queued: retried
                self.last_error = str(exc)[:500]
                self._record_failure(self.db, "scoring", self.last_error)
                log.warning("order risk: %s; retrying in %.1f s", exc, wait)
                self._stop.wait(wait)
                wait = min(wait * 2, cap)

    def _idle(self, seconds: float) -> None:
        """Wait for the next delivery (at most ``seconds``: what a failed drain left is tried again then)."""
        if self.wake is None:
            self._stop.wait(seconds)
            return
        self.wake.wait(seconds)
        self.wake.clear()  # before the next pass: a commit after this wakes the wait after it

    def _record_failure(self, db: sqlite3.Connection, part: str, error: str) -> None:
        try:
            record_failing(db, part, error)
        except sqlite3.Error:  # the database itself failing: the log says so
            pass


class ReceiverScorer:
    """The scorer of ``risk.scorer: thread``: a :class:`RiskScorer` in threads of the receiver, built again with
    backoff (``risk.retry_seconds``, doubling) while building it fails. Building seeds the online store from the
    snapshot: with Redis down at the receiver's start, the receiver took webhooks with no scorer for as long as it
    ran, and /healthz, reporting no order risk at all, said ok. Meanwhile /healthz says the scorer is down and why."""

    def __init__(self, settings: Settings, wake: threading.Event):
        self.settings, self.wake = settings, wake
        self.scorer: RiskScorer | None = None
        self.error: str | None = None  # why the last build failed (None once one succeeded)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Build and start the scorer here (the receiver's start, as before), or keep trying in a thread."""
        if not self._build():
            self._thread = threading.Thread(target=self._retry, daemon=True, name="order-risk-start")
            self._thread.start()

    def _build(self) -> bool:
        try:
            scorer = RiskScorer(self.settings, wake=self.wake)
        except Exception as exc:  # noqa: BLE001 - intake goes on; orders wait in the journal until one is built
            self.error = f"the scorer could not start: {type(exc).__name__}: {exc}"[:500]
            log.exception("order risk is not scoring yet (the receiver takes webhooks; they wait in the journal)")
            return False
        self.scorer, self.error = scorer, None
        scorer.start()
        return True

    def _retry(self) -> None:
        wait = self.settings.risk.retry_seconds
        while not self._stop.wait(wait) and not self._build():
            wait = min(wait * 2, self.settings.shopify.max_backoff_seconds)

    def state(self) -> dict:
        """The scorer's :func:`risk_state`; while none runs, ``scorer`` down (/healthz: behind) and why."""
        if self.scorer is not None:
            return self.scorer.state()
        return {"scorer": "down", **risk_state(self.settings), "last_error": self.error}

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.scorer is not None:
            self.scorer.stop()


def predict_url(settings: Settings) -> str:
    """Where the scorer asks for scores: the risk model server at ``risk.endpoint`` (KServe V1), the model named
    after its InferenceService, as the ServingRuntime serves it (``--model_name={{.Name}}``)."""
    return f"{settings.risk.endpoint.rstrip('/')}/v1/models/{settings.risk.inference_service}:predict"


def journal_position(settings: Settings) -> int | None:
    """The last journal row the scorer has handled (None: no scorer has started here yet)."""
    path = risk_db(settings)
    if not path.exists():
        return None
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)) as db:
            found = db.execute("SELECT journal_rowid FROM risk_cursor").fetchone()
    except sqlite3.OperationalError:  # the scorer is creating it
        return None
    return None if found is None else int(found[0])


def risk_state(settings: Settings) -> dict:
    """What waits, for the receiver's /healthz, read from the databases (the scorer may be another process):
    orders journaled and not scored yet (and how long the oldest has waited), assessments queued for Shopify (and
    how long the oldest has waited: Shopify down or the app's token revoked, no order is assessed), sent, refused
    and set aside, why the scoring or write-back loop fails, while it does, and the history's state:
    ``ready``, ``building`` from a snapshot (scoring waits) or ``seeding`` a newer snapshot's events into the
    customers' ledgers between passes (``customers_seeded`` so far). Before a scorer first started there is nothing
    of its own to report."""
    from datetime import datetime, timezone

    path = risk_db(settings)
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            (after,) = db.execute("SELECT journal_rowid FROM risk_cursor").fetchone()
            counts = dict(db.execute("SELECT state, count(*) FROM risk_outbox GROUP BY state").fetchall())
            (queued_since,) = db.execute("SELECT min(enqueued_at) FROM risk_outbox WHERE state = 'pending'").fetchone()
            (skipped,) = db.execute("SELECT count(*) FROM risk_skipped").fetchone()
            failing = dict(db.execute("SELECT part, error FROM risk_failing").fetchall())
            work = db.execute("SELECT state, snapshot, customers, (julianday('now') - since) * 86400 "
                              "FROM risk_history_work").fetchone()
    except (sqlite3.OperationalError, TypeError):  # no database or no cursor yet: the scorer is starting
        return {"unscored": 0, "oldest_unscored_seconds": None, "queued": 0, "oldest_queued_seconds": None, "sent": 0,
                "rejected": 0,
                "skipped": 0, "last_error": None, "history": None}
    with closing(sqlite3.connect(layout.journal_path(settings), timeout=5)) as log_db:
        unscored, oldest = log_db.execute("SELECT count(*), min(received_at) FROM events WHERE rowid > ? AND "
                                          "topic = ?", (after, SCORED_TOPIC)).fetchone()
    age = (datetime.now(timezone.utc) - datetime.fromisoformat(oldest)).total_seconds() if oldest else None
    return {"unscored": unscored, "oldest_unscored_seconds": None if age is None else round(age, 3),
            "queued": counts.get("pending", 0),
            "oldest_queued_seconds": None if queued_since is None else round(max(0.0, time.time() - queued_since), 3),
            "sent": counts.get("sent", 0),
            "rejected": counts.get("rejected", 0), "skipped": skipped,
            "last_error": failing.get("scoring") or failing.get("write_back"),
            "history": {"state": "ready"} if work is None else {
                "state": work[0], "snapshot": work[1], "customers_seeded": work[2], "seconds": round(work[3], 1)}}


def run_scorer(settings_json: str, receiver_pid: int | None = None, wake=None, writer_wake=None) -> None:
    """The scorer's process (``risk.scorer: process``, started and restarted by the receiver): scoring as in the
    receiver's threads, in a process of its own, so scoring never holds the receiver's GIL (bench/risk_throughput:
    about twice the deliveries acknowledged a second on 2 cores). It ends when the receiver has gone (see
    :func:`storeflow.components.shopify.supervisor.run_applier`). ``wake``: the ``supervisor.PipeWake`` the
    receiver sets after each journal commit; ``writer_wake``: the one the write-back's process waits on
    (:func:`~storeflow.components.risk.writeback.run_writer`; None: a write-back thread of this process)."""
    from storeflow.components.config import load_settings

    scorer = RiskScorer(load_settings(settings_json), wake=wake, writer_wake=writer_wake)
    run_while_receiver_lives(scorer, receiver_pid)
