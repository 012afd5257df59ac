"""The applier: turns committed journal events into state, after the delivery was acknowledged.

Order and refund events upsert the live order tables, then the affected customers' features are
recomputed with ``compute.customer_features`` (the newest snapshot plus everything received live, as of
now) and written to the Feast online store (one Feast write per batch) and appended to the offline
history (a Parquet part per batch, :mod:`~storeflow.components.features.offline`). Privacy and
app/uninstalled events are handled in arrival order. An event is marked applied only after its effects
are written, so a crash re-applies it; recomputing from state makes that harmless, and the journal's
webhook-id key makes a re-delivered event a no-op before it gets here.

An event that fails on its own data (it passed an older receiver's check, or a case the check misses)
is parked in the journal's ``dead_letters`` with the reason, and the events after it go on applying.
Failures that are not one event's (SQLite busy, disk, or every event failing alike: a code or config
fault) leave the batch pending, retried with backoff, and /healthz says the applier is behind.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import NamedTuple

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from storeflow.components.config import Settings
from storeflow.components.features import offline
from storeflow.components.features.btyd import LiveScorer
from storeflow.components.features.compute import connection, customer_features
from storeflow.components.features.repo import (CUSTOMER_KEY, CUSTOMER_VIEW, apply as feast_apply,
                                                feature_store, source_path)
from storeflow.components.ingest.snapshot import newest_snapshot
from storeflow.components.recommend import availability, catalog
from storeflow.components.shopify import layout, online, privacy, products
from storeflow.components.shopify.baseline import ServedBaseline
from storeflow.components.shopify.journal import connect, now, park, transaction
from storeflow.components.shopify.payloads import (ORDER_TOPICS, REFUND_TOPICS, PayloadError, customer_request, order_rows,
                                                  refund_row)
from storeflow.components.snapshot_index import SnapshotIndex, remove_others
from storeflow.components.tables import SCHEMAS, conform, empty_frame

log = logging.getLogger(__name__)

LIVE_TOPICS = ORDER_TOPICS | REFUND_TOPICS
# Sent only to an app installed on the shop (the compliance topics come after an uninstall too).
INSTALLED_TOPICS = LIVE_TOPICS | products.AVAILABILITY_TOPICS
# Their request's body stays until they are done: emptied by the erasure itself, a failed try was never tried again.
ERASURES = frozenset({"customers/redact", "shop/redact"})
# Not the event's fault: the whole batch stays pending and is retried with backoff instead of parked.
INFRASTRUCTURE = (sqlite3.OperationalError, OSError, MemoryError)
REASON_CHARS = 500
# A run where this many events failed alone and none applied is probably not their data: stop splitting.
LONE_FAILURES_BEFORE_DOUBT = 8
# Ids as one JSON array parameter: one SQL text whatever their number. A placeholder per id made a new
# statement per batch size, and SQLite's statement cache (128 per connection) kept them, ~190 bytes an id
# (the soak's applier grew with its live orders); and SQLite caps the placeholders (32,766 in its default build).
_ANY = "(SELECT value FROM json_each(?))"


@dataclass
class _Split:
    """What splitting a failing run found: events that failed alone, and how many applied."""

    failed: list[tuple[Pending, Exception]] = field(default_factory=list)
    applied: int = 0


@dataclass
class _Pending:
    """A run's rows as :meth:`Applier._upsert_all` will store them: each of its orders' version then (the stored one
    when the run's is older), the line items of those it replaces, and its refunds in arrival order."""

    orders: dict[int, dict]
    items: list[tuple[int, list[dict]]] = field(default_factory=list)
    refunds: list[dict] = field(default_factory=list)


class Pending(NamedTuple):
    webhook_id: str
    shop: str
    topic: str
    body: bytes | None


class Applier:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.conn = connect(layout.journal_path(settings))
        products.ensure_schema(self.conn)
        self.committed = threading.Event()  # the receiver adds it to its journal's listeners: set after each commit
        self.lock = threading.Lock()
        self.store = feature_store(settings)
        if CUSTOMER_VIEW not in {v.name for v in self.store.list_feature_views()}:
            self.store = feast_apply(settings)
        self._snapshot: SnapshotIndex | None = None
        self.baseline = ServedBaseline(settings, layout.baselines_dir(settings))  # the served version's BG/NBD
        self.btyd = LiveScorer(self.baseline)
        offline.finish_merges(source_path(settings, CUSTOMER_VIEW))  # one a crash cut short
        self._duck = connection()  # the features' DuckDB, kept: one per batch cost ~6 % of the applier's CPU
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0

    # --- running -------------------------------------------------------------------------------------

    def start(self) -> None:
        self.baseline.start()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="webhook-applier")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.committed.set()
        if self._thread:
            self._thread.join()
        self.baseline.stop()
        self.conn.close()
        self._duck.close()

    def _loop(self) -> None:
        idle, gather = self.settings.shopify.apply_idle_seconds, self.settings.shopify.apply_gather_seconds
        self.prepare()
        while not self._stop.is_set():
            if self.committed.wait(idle):
                self._stop.wait(gather)  # the events that follow this commit join its batch (supervisor.run_applier)
            self.committed.clear()
            try:
                self.drain()
                self.failures = 0
            except Exception:  # noqa: BLE001 - keep the events; try again on the next tick
                self.failures += 1
                log.exception("applying webhook events failed; they stay journaled and are retried")
                self._stop.wait(min(30.0, idle * 2 ** min(self.failures, 8)))

    def prepare(self) -> None:
        """Index the newest snapshot now: a large store's takes seconds (~11 s at 5M orders), better spent before the
        first batch than in it. A failure is logged; the first batch tries again and fails with it."""
        try:
            with self.lock:
                self._snapshot_index()
        except Exception:  # noqa: BLE001 - see above
            log.exception("indexing the newest snapshot failed; the first batch tries again")

    def drain(self) -> int:
        """Apply every event committed before the call; returns how many were applied. It stops at the first batch
        short of ``shopify.apply_batch_size``: that one took every event there was, and those committed since wait
        for the loop's next batch rather than make one of a few events each."""
        total = 0
        while True:
            with self.lock:
                count = self.apply_batch()
            total += count
            if count < self.settings.shopify.apply_batch_size:
                return total

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def pending(self) -> int:
        return self.conn.execute("SELECT count(*) FROM events WHERE applied_at IS NULL").fetchone()[0]

    # --- one batch -----------------------------------------------------------------------------------

    def apply_batch(self) -> int:
        """Apply the oldest pending events: runs of orders and refunds together, anything else alone."""
        rows = [Pending(*row) for row in self.conn.execute(
            "SELECT webhook_id, shop, topic, body FROM events WHERE applied_at IS NULL ORDER BY received_at, rowid "
            "LIMIT ?", (self.settings.shopify.apply_batch_size,)).fetchall()]
        run: list[Pending] = []
        for event in rows:
            if event.body is None or event.topic in LIVE_TOPICS:
                run.append(event)
                continue
            # Everything that follows must see the features written so far, in arrival order.
            self._apply_live(run)
            run = []
            self._apply_one(event)
        self._apply_live(run)
        self._reinstalled([event.webhook_id for event in rows if event.topic in INSTALLED_TOPICS])
        return len(rows)

    def _reinstalled(self, webhook_ids: list[str]) -> None:
        """Syncing resumes for a shop that sent a subscription's delivery received after its app/uninstalled was
        applied: Shopify sends those only to an installed app. Nothing cleared the mark, and ``storeflow sync``
        refused for good although it says reinstalling resumes it."""
        if not webhook_ids or self.conn.execute(  # the common case: no shop uninstalled, no write lock taken
                "SELECT 1 FROM shops WHERE uninstalled_at IS NOT NULL LIMIT 1").fetchone() is None:
            return
        with transaction(self.conn):
            shops = [shop for (shop,) in self.conn.execute(
                "SELECT s.shop FROM shops s WHERE s.uninstalled_at IS NOT NULL AND EXISTS (SELECT 1 FROM events e "
                f"WHERE e.webhook_id IN {_ANY} AND e.shop = s.shop AND e.received_at > s.uninstalled_at)",
                (json.dumps(webhook_ids),))]
            self.conn.executemany("UPDATE shops SET uninstalled_at = NULL WHERE shop = ?", [(shop,) for shop in shops])
        for shop in shops:
            log.info("deliveries from %s again: the app was reinstalled, syncing resumes", shop)

    def _apply_live(self, events: list[Pending]) -> None:
        """Upsert orders and refunds and recompute their customers' features, in one transaction.

        A payload that does not validate is parked on its own. Any other failure undoes the
        transaction and the run is split in halves, down to single events. Those that fail alone are
        parked only if some other event of the run applied: then it is their data. If every event
        fails, it is not (a code or config fault): nothing is parked, the error goes to the caller and
        the run stays pending. Features are written after the commit and the events marked after that;
        a crash in between re-applies them, which recomputes the same values.
        """
        if not events:
            return
        split = _Split()
        self._split(events, split)
        if split.failed and not split.applied:
            raise split.failed[0][1]
        for event, exc in split.failed:
            self._park(event, exc)

    def _split(self, events: list[Pending], split: _Split) -> None:
        try:
            stored = _read_back(events)  # before the journal's write lock is taken: the receiver commits meanwhile
            if stored is None:  # an event does not read back: each is checked, and may be parked, under the lock
                with transaction(self.conn):
                    touched, done = self._upsert_all(events, None)
                    computed = self._features(touched)
            else:
                # The features of the state the run will leave, computed before the write lock: they took ~80 % of a
                # batch's time, and the receiver's commits waited on the lock for all of it. A failure here is
                # narrowed down as before: nothing was written yet.
                touched, pending = self._pending(stored)
                computed = self._features(touched, pending)
                with transaction(self.conn):
                    stored_for, done = self._upsert_all(events, stored)
                if stored_for != touched:  # the run did not store what _pending foresaw: the stored state decides
                    log.error("applier: the run touched customers %s, not %s as foreseen; features recomputed",
                              sorted(stored_for), sorted(touched))
                    computed = self._features(stored_for)
        except INFRASTRUCTURE:
            raise
        except Exception as exc:  # noqa: BLE001 - narrowed down below
            if len(events) == 1:
                split.failed.append((events[0], exc))
            elif split.applied or len(split.failed) < LONE_FAILURES_BEFORE_DOUBT:
                half = len(events) // 2
                self._split(events[:half], split)
                self._split(events[half:], split)
            # else: many lone failures and no success yet: leave this run pending rather than bisect it all
            return
        self._write_features(computed)
        self._mark(done)
        split.applied += len(done)

    def _upsert_all(self, events: list[Pending], stored: list[dict[str, list[dict]] | None] | None = None
                    ) -> tuple[set[int], list[tuple[str, str]]]:
        """Upsert the run's events (inside the caller's transaction). ``stored``: their rows, every one read back
        already (:func:`_read_back`); None: each event is parsed and its rows read back here, on its own."""
        touched: set[int] = set()
        done: list[tuple[str, str]] = []
        for number, event in enumerate(events):
            if event.body is None:
                done.append((event.webhook_id, "erased"))
                continue
            self.conn.execute("SAVEPOINT event")
            try:
                if stored is None:
                    rows = _rows_of(event.topic, orjson.loads(event.body))
                    for name, found in rows.items():  # what the features will read must read back
                        _rows(name, found)
                else:
                    rows = stored[number]
                customer, moved_from = self._upsert(rows)
            except (PayloadError, orjson.JSONDecodeError) as exc:  # this event's data: undo its writes, park it
                self.conn.execute("ROLLBACK TO event")
                self.conn.execute("RELEASE event")
                park(self.conn, event.webhook_id, _reason(exc))
                log.warning("webhook %s (%s) parked as a dead letter: %s", event.webhook_id, event.topic, _reason(exc))
                continue
            if customer is not None:
                self.conn.execute("UPDATE events SET customer_id = ? WHERE webhook_id = ?", (customer, event.webhook_id))
                touched.add(customer)
            if moved_from is not None:
                touched.add(moved_from)
            self.conn.execute("RELEASE event")
            done.append((event.webhook_id, "live"))
        return touched, done

    def _apply_one(self, event: Pending) -> None:
        """A privacy or app event, alone and in arrival order. One whose payload does not validate is parked;
        any other failure is retried (an erasure must not be skipped because a store was unavailable)."""
        try:
            outcome = self._handle(event.topic, event.shop, orjson.loads(event.body), event.webhook_id)
        except (PayloadError, orjson.JSONDecodeError) as exc:
            self._park(event, exc)
            return
        if event.topic in ERASURES:  # its body, kept for a retry until now, names the erased
            with transaction(self.conn):
                self.conn.execute("UPDATE events SET body = NULL, customer_id = NULL WHERE webhook_id = ?",
                                  (event.webhook_id,))
                self._marked([(event.webhook_id, outcome)])
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # secure_delete zeroed it in the pages; the WAL too
            return
        self._mark([(event.webhook_id, outcome)])

    def _park(self, event: Pending, exc: Exception) -> None:
        with transaction(self.conn):
            park(self.conn, event.webhook_id, _reason(exc))
        log.error("webhook %s (%s) parked as a dead letter: %s", event.webhook_id, event.topic, _reason(exc))

    def _mark(self, done: list[tuple[str, str]]) -> None:
        if done:
            with transaction(self.conn):
                self._marked(done)

    def _marked(self, done: list[tuple[str, str]]) -> None:
        stamp = now()
        self.conn.executemany("UPDATE events SET applied_at = ?, outcome = ? WHERE webhook_id = ?",
                              [(stamp, outcome, webhook_id) for webhook_id, outcome in done])

    def _handle(self, topic: str, shop: str, payload: dict, webhook_id: str | None = None) -> str:
        if topic in products.AVAILABILITY_TOPICS:  # what recommendations may show (published, in stock)
            try:
                with transaction(self.conn):
                    rows = products.apply(self.conn, topic, payload)
                    named = products.category_rows(self.conn, topic, payload)
            except Exception as exc:  # noqa: BLE001 - sorted below
                if isinstance(exc, PayloadError) or not _own_data(exc):
                    raise
                # the payload and the journal alone: a failure not the journal's own is this event's data, which
                # fails the same on every try (two levels of 2**63-1 overflowed a sum, retried for ever)
                raise PayloadError(f"{topic}: {_reason(exc)}") from exc
            availability.write(self.store, self.settings, rows)
            # a product created or recategorized since the last pipeline run: its category, for the fallback
            described = catalog.describe_online(self.store, self.settings, named)
            return f"availability of {len(rows)} product(s), category of {len(described)}"
        if topic == "app/uninstalled":
            with transaction(self.conn):
                self.conn.execute("INSERT INTO shops (shop, uninstalled_at) VALUES (?, ?) "
                                  "ON CONFLICT(shop) DO UPDATE SET uninstalled_at = excluded.uninstalled_at",
                                  (shop, now()))
            log.info("app uninstalled from %s: syncing stops", shop)
            return "sync stopped"
        if topic == "shop/redact":
            self._snapshot = None
            return json.dumps(privacy.redact_shop(self.settings, self.conn, self.store, shop, webhook_id))
        customer_id, email, orders, request = customer_request(topic, payload)
        subject = privacy.Subject(customer_id, email, orders)
        if topic == "customers/redact":
            self._snapshot = None
            return json.dumps(privacy.redact_customer(self.settings, self.conn, self.store, subject, webhook_id))
        privacy.export_customer(self.settings, self.conn, self.store, subject, request)
        return f"exported for data request {request}"  # the file name holds the customer id: not here

    # --- live orders ---------------------------------------------------------------------------------

    def _upsert(self, rows: dict[str, list[dict]]) -> tuple[int | None, int | None]:
        """Store an order's or a refund's rows (:func:`_rows_of`, inside the caller's transaction); returns whose
        features change: the order's customer, and the one it was moved from (None: it was not)."""
        if "orders" in rows:
            (order,), items = rows["orders"], rows["line_items"]
            current = self.conn.execute("SELECT updated_at, customer_id FROM live_orders WHERE order_id = ?",
                                        (order["order_id"],)).fetchone()
            if current and _superseded(current[0], order["updated_at"]):
                return order["customer_id"], None  # an older version arrived late (Shopify does not order deliveries)
            before = current[1] if current else self._snapshot_owners([order["order_id"]]).get(order["order_id"])
            self.conn.execute(
                "INSERT OR REPLACE INTO live_orders (order_id, customer_id, email, updated_at, row) VALUES (?,?,?,?,?)",
                (order["order_id"], order["customer_id"], order["email"], order["updated_at"], _text(order)))
            self.conn.execute("DELETE FROM live_line_items WHERE order_id = ?", (order["order_id"],))
            self.conn.executemany("INSERT OR REPLACE INTO live_line_items (line_item_id, order_id, row) VALUES (?,?,?)",
                                  [(i["line_item_id"], i["order_id"], _text(i)) for i in items])
            return order["customer_id"], _moved_from(before, order["customer_id"])
        (refund,) = rows["refunds"]
        self.conn.execute("INSERT OR REPLACE INTO live_refunds (refund_id, order_id, row) VALUES (?,?,?)",
                          (refund["refund_id"], refund["order_id"], _text(refund)))
        return self._customer_of_order(refund["order_id"]), None

    def _snapshot_owners(self, order_ids: list[int]) -> dict[int, int]:
        """The customer of each order the newest snapshot holds with one."""
        index = self._snapshot_index()
        return index.customers_of_orders(order_ids) if index and order_ids else {}

    def _customer_of_order(self, order_id: int) -> int | None:
        row = self.conn.execute("SELECT customer_id FROM live_orders WHERE order_id = ?", (order_id,)).fetchone()
        if row:
            return row[0]
        index = self._snapshot_index()
        return index.customers_of_orders([order_id]).get(order_id) if index else None

    # --- features ------------------------------------------------------------------------------------

    def _snapshot_index(self) -> SnapshotIndex | None:
        """The newest ingested snapshot's index (:mod:`~storeflow.components.snapshot_index`), opened again when
        another snapshot appears or a redaction rewrote this one; None before the first snapshot."""
        root = self.settings.data_dir / "snapshots"
        newest = newest_snapshot(root)
        if newest is None:
            return None
        if self._snapshot is None or self._snapshot.snapshot != newest or not self._snapshot.current():
            self._snapshot = SnapshotIndex.open(newest)
            remove_others(root, newest)
        return self._snapshot

    def _pending(self, stored: list[dict[str, list[dict]] | None]) -> tuple[set[int], _Pending]:
        """What :meth:`_upsert_all` will store of a run's rows, read from the live tables without writing: the
        customers whose features change, and the run's orders and refunds as they will then be stored."""
        ids = [rows["orders"][0]["order_id"] for rows in stored if rows and "orders" in rows]
        pending = _Pending({o["order_id"]: o for o in self._live("live_orders", "order_id", ids)})
        owners = self._snapshot_owners([i for i in ids if i not in pending.orders])  # of those not received live yet
        touched: set[int] = set()
        for rows in stored:
            if rows is None:
                continue
            if "orders" in rows:
                (order,), items = rows["orders"], rows["line_items"]
                current = pending.orders.get(order["order_id"])
                if current is None or not _superseded(current["updated_at"], order["updated_at"]):
                    pending.orders[order["order_id"]] = order
                    pending.items.append((order["order_id"], items))
                    before = current["customer_id"] if current else owners.get(order["order_id"])
                    if (moved_from := _moved_from(before, order["customer_id"])) is not None:
                        touched.add(moved_from)
                customer = order["customer_id"]
            else:
                (refund,) = rows["refunds"]
                pending.refunds.append(refund)
                version = pending.orders.get(refund["order_id"])
                customer = version["customer_id"] if version else self._customer_of_order(refund["order_id"])
            if customer is not None:
                touched.add(customer)
        return touched, pending

    def customer_tables(self, customers: set[int], pending: _Pending | None = None) -> dict[str, pd.DataFrame]:
        """The customers' orders: the snapshot's, with what arrived live replacing the same order ids; with
        ``pending`` (:meth:`_pending`), as they will be once the run is stored."""
        index = self._snapshot_index()
        ids = sorted(customers)
        live = {o["order_id"]: o for o in self._live("live_orders", "customer_id", ids)}
        if pending is not None:
            live.update(pending.orders)  # each of the run's orders as it will be: another customer's now, perhaps
            live = {key: order for key, order in live.items() if order["customer_id"] in customers}
        live_ids = sorted(live)
        snap_orders = _snapshot_rows(index, "orders", ids)
        # an order received live replaces the snapshot's, whoever it belongs to now (moved to another customer: gone)
        received = {o["order_id"] for o in self._live("live_orders", "order_id", snap_orders["order_id"].to_pylist())}
        received |= set(pending.orders) if pending is not None else set()
        snap_orders = snap_orders.filter(pc.invert(pc.is_in(snap_orders["order_id"],
                                                            pa.array(sorted({*live_ids, *received}), pa.int64()))))
        snap_order_ids = snap_orders["order_id"].to_pylist()
        order_ids = [*snap_order_ids, *live_ids]
        items = {i["line_item_id"]: i for i in self._live("live_line_items", "order_id", order_ids)}
        refunds = {r["refund_id"]: r for r in self._live("live_refunds", "order_id", order_ids)}
        if pending is not None:  # an order's line items are replaced with it; a row's id is its key in every order
            _replace_items(items, pending.items)
            refunds.update((refund["refund_id"], refund) for refund in pending.refunds)
            wanted = set(order_ids)
            items = {key: item for key, item in items.items() if item["order_id"] in wanted}
            refunds = {key: refund for key, refund in refunds.items() if refund["order_id"] in wanted}
        live_refunds = [refunds[key] for key in sorted(refunds)]
        snap_refunds = _snapshot_rows(index, "refunds", order_ids)
        snap_refunds = snap_refunds.filter(pc.invert(pc.is_in(snap_refunds["refund_id"],
                                                              pa.array(sorted(refunds), pa.int64()))))
        return {
            "orders": _concat("orders", snap_orders, [live[key] for key in live_ids]),
            "line_items": _concat("line_items", _snapshot_rows(index, "line_items", snap_order_ids),
                                  [items[key] for key in sorted(items)]),
            "refunds": _concat("refunds", snap_refunds, live_refunds),
            "products": index.products if index else empty_frame("products"),
            "customers": _snapshot_rows(index, "customers", ids).to_pandas(),
        }

    def _live(self, table: str, column: str, ids: list[int]) -> list[dict]:
        """The rows of a live table whose ``column`` is one of ``ids`` (both indexed), as stored."""
        return [orjson.loads(r) for (r,) in self.conn.execute(
            f"SELECT row FROM {table} WHERE {column} IN {_ANY}", (_id_list(ids),))]

    def _features(self, customers: set[int], pending: _Pending | None = None) -> _Computed:
        """The customers' features as of now, from the snapshot and what arrived live."""
        if not customers:
            return _Computed(None, [])
        as_of = datetime.now(timezone.utc) + pd.Timedelta(seconds=1)  # 1 s of clock skew; µs keep batches apart
        frame = customer_features(self.customer_tables(customers, pending), [as_of], self._duck)
        gone = sorted(customers - set(frame[CUSTOMER_KEY].tolist())) if not frame.empty else sorted(customers)
        if frame.empty:
            return _Computed(None, gone)
        frame = frame.join(self.btyd.features(frame, self.settings.features.label.horizon_days))
        return _Computed(frame[[CUSTOMER_KEY, "event_timestamp", *self.settings.features.customer_features]], gone)

    def _write_features(self, computed: _Computed) -> None:
        """Online (the next prediction) and offline (history); online, customers with none left have none."""
        if computed.gone:
            online.forget(self.store, computed.gone)
        if computed.frame is None:
            return
        online.write(self.store, computed.frame)
        self._append_offline(computed.frame)

    def _append_offline(self, frame: pd.DataFrame) -> None:
        """A part of its own in the history's dataset (:mod:`~storeflow.components.features.offline`): Feast's own
        append rewrote the whole history, every cutoff of every customer, for each batch."""
        path = source_path(self.settings, CUSTOMER_VIEW)
        offline.append(path, pa.Table.from_pandas(frame, preserve_index=False))
        offline.compact(path)


class _Computed(NamedTuple):
    """A run's customer features: ``frame`` (None: no one has any), and the customers ``gone``, touched but with no
    features any more (their last order moved to another customer)."""

    frame: pd.DataFrame | None
    gone: list[int]


def _replace_items(items: dict[int, dict], replaced: list[tuple[int, list[dict]]]) -> None:
    """``items`` (by line item id) after each order's line items were replaced, in turn, as :meth:`Applier._upsert`
    replaces them: its rows deleted, then the new ones stored by id (a line item id another order held moves)."""
    by_order: dict[int, set[int]] = {}
    for key, item in items.items():
        by_order.setdefault(item["order_id"], set()).add(key)
    for order_id, rows in replaced:
        for key in by_order.pop(order_id, set()):
            del items[key]
        for item in rows:
            key = item["line_item_id"]
            if key in items:
                by_order[items[key]["order_id"]].discard(key)
            items[key] = item
            by_order.setdefault(order_id, set()).add(key)


def _moved_from(before: int | None, after: int | None) -> int | None:
    """The customer an order version takes the order from (None: the same owner, or none before): their features
    lose it. Only the new owner's were recomputed, and the old one went on counting it."""
    return before if before is not None and before != after else None


def _superseded(stored: str | None, arriving: str | None) -> bool:
    """Whether an order version updated at ``arriving`` is older than the one stored (updated at ``stored``)."""
    return bool(stored and arriving and _ts(stored) > _ts(arriving))


def _ts(text: str) -> datetime:
    """An ISO time as UTC (no offset: UTC). ``datetime.fromisoformat`` is ~30 times pandas' parser, which takes
    what it does not (called twice an order: before the write lock and in it)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = pd.Timestamp(text).to_pydatetime()
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _text(row: dict) -> str:
    """A live row as the JSON text its table keeps (orjson: the stdlib's encoder and decoder were ~6 % of the
    applier's CPU under load, py-spy at 1,000 orders/s)."""
    return orjson.dumps(row).decode()


def _id_list(ids: list[int]) -> str:
    return json.dumps([int(i) for i in ids])


def _own_data(exc: Exception) -> bool:
    """Whether a failure of storing an event in the journal is the event's data: anything but the journal being
    unavailable (locked, disk, memory); SQLite says an integer overflow or a value too big with the same class."""
    if isinstance(exc, sqlite3.OperationalError):
        return any(words in str(exc) for words in ("integer overflow", "too big"))
    return not isinstance(exc, INFRASTRUCTURE)


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:REASON_CHARS]


def _rows_of(topic: str, payload: dict) -> dict[str, list[dict]]:
    """The rows an order or refund delivery stores, by table; :class:`PayloadError` when it is not one."""
    if topic in ORDER_TOPICS:
        order, items = order_rows(payload)
        return {"orders": [order], "line_items": items}
    return {"refunds": [refund_row(payload)]}


def _read_back(events: list[Pending]) -> list[dict[str, list[dict]] | None] | None:
    """Each event's rows (:func:`_rows_of`; None for an erased one) when every event parses and every row reads back
    as the features will read it, one cast per table for the whole run; None when one does not (each is then
    checked on its own, inside the transaction, as before). Done before the transaction: casting each event's rows
    on its own, under the journal's write lock, cost ~4 ms of CPU a full-size delivery and held off the receiver's
    commits (bench/risk_throughput --applier: 170-240 deliveries a second acknowledged)."""
    stored: list[dict[str, list[dict]] | None] = []
    by_table: dict[str, list[dict]] = {}
    try:
        for event in events:
            rows = _rows_of(event.topic, orjson.loads(event.body)) if event.body is not None else None
            stored.append(rows)
            for name, found in (rows or {}).items():
                by_table.setdefault(name, []).extend(found)
        for name, found in by_table.items():
            if found:
                _rows(name, found)
    except Exception:  # noqa: BLE001 - one event's data, or not: _upsert_all finds out event by event
        return None
    return stored


def _rows(name: str, rows: list[dict]) -> pa.Table:
    """Live rows as the table's schema. Object columns keep Python ints exact: pandas would turn an id
    column with a null into float64 and ids above 2**53 would change (or fail near 2**63)."""
    return conform(name, pd.DataFrame(rows, columns=SCHEMAS[name].names, dtype=object))


def _snapshot_rows(index: SnapshotIndex | None, name: str, keys: list[int]) -> pa.Table:
    return index.rows(name, keys) if index else SCHEMAS[name].empty_table()


def _concat(name: str, snapshot: pa.Table, live: list[dict]) -> pd.DataFrame:
    """The snapshot's rows, then the live ones, as one frame of the table's schema."""
    return (pa.concat_tables([snapshot, _rows(name, live)]) if live else snapshot).to_pandas()

