"""One order's risk features at the moment its ``orders/create`` webhook arrives: its velocity from Feast's online
store (:mod:`storeflow.components.risk.velocity`, which this pushes the order to), the rest from live history by the
very query the batch features use (:data:`storeflow.components.risk.features.RISK_FEATURES_SQL`).

Every other feature of an order depends only on its own fields and on earlier orders of its customer (with their
refunds and fraud cancellations). So those live features of an order are the batch query run over exactly those
orders: the newest snapshot's and what arrived by webhook since, the live version of an order replacing the
snapshot's. The query's windows end one microsecond before the order, so an order's live features equal its batch
features once the same history is known (``tests/test_risk_live.py`` replays a store's orders as webhooks and
compares, velocity included).

Webhooks carry the risk fields in Shopify's REST shape: ``payment_gateway_names``, ``shipping_address``
(``address1``, ``zip``, ``country_code``), ``billing_address.country_code``, ``cancel_reason`` (lower case) and
``customer.created_at`` (the account age of a customer the snapshot does not know yet). Disputes never come
with an order: they are labels, not features.

History received live is kept in SQLite (``risk_live_orders``, ``risk_live_refunds``) inside the caller's
transaction, so recording an order and queueing its assessment commit together.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError

from storeflow.components.config import Settings
from storeflow.components.ingest.snapshot import MANIFEST, read_manifest
from storeflow.components.features.repo import VELOCITY_VIEWS, feature_store
from storeflow.components.features.repo import definitions as feast_definitions
from storeflow.components.risk.features import ORDER_FEATURES, QUERY_FEATURES, RISK_FEATURES_SQL
from storeflow.components.risk.velocity import EPOCH, HORIZON_US, OnlineVelocity, Order, email_digest, orders_of
from storeflow.components.risk.orders import (CANCEL_REASONS, COLUMNS, TABLE_SCHEMA, address_key,
                                              read_risk_fields, snapshot_risk_fields)
from storeflow.components.shopify.payloads import (ORDER_TOPICS, REFUND_TOPICS, PayloadError, Timestamp, describe,
                                                  order_rows, refund_row)
from storeflow.components.tables import SCHEMAS, conform, table_path

log = logging.getLogger(__name__)

HISTORY_TOPICS = ORDER_TOPICS | REFUND_TOPICS  # what changes an order's history
SCORED_TOPIC = "orders/create"
TABLES = ("orders", "line_items", "customers", "refunds")
DECODED_ROWS = 200_000  # live rows kept parsed in memory (about 1 KB each)
# What an earlier order's risk fields give a new order's features: its fraud cancellation (history) and its address
# (velocity's keys). Its gateway, countries and disputes count only for itself (86 bytes an order held all, 32 these).
SNAPSHOT_RISK = ("order_id", "cancel_reason", "address_key")
# What RISK_FEATURES_SQL (and velocity's keys) read of the history's tables: only these are held.
READ = {"orders": ("order_id", "customer_id", "email", "created_at", "cancelled_at", "total_price", "subtotal_price",
                   "total_discounts"),
        "refunds": ("refund_id", "order_id", "created_at"),
        "customers": ("customer_id", "created_at")}

SCHEMA = """
CREATE TABLE IF NOT EXISTS risk_live_orders (
    order_id INTEGER PRIMARY KEY, customer_id INTEGER, email TEXT, address_key TEXT, updated_at TEXT,
    row TEXT NOT NULL, risk TEXT NOT NULL, customer_created_at TEXT);
CREATE INDEX IF NOT EXISTS risk_live_orders_customer ON risk_live_orders(customer_id);
CREATE INDEX IF NOT EXISTS risk_live_orders_email ON risk_live_orders(email);
CREATE INDEX IF NOT EXISTS risk_live_orders_address ON risk_live_orders(address_key);
CREATE TABLE IF NOT EXISTS risk_live_refunds (refund_id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, row TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS risk_live_refunds_order ON risk_live_refunds(order_id);
"""


class _Shape(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Address(_Shape):
    address1: StrictStr | None = None
    zip: StrictStr | None = None
    country_code: StrictStr | None = None


class _Customer(_Shape):
    created_at: Timestamp | None = None


class RiskFields(_Shape):
    """The risk fields of an order webhook (REST)."""

    payment_gateway_names: list[StrictStr] | None = None
    shipping_address: _Address | None = None
    billing_address: _Address | None = None
    cancel_reason: StrictStr | None = None
    customer: _Customer | None = None


def _email(value: Any) -> str | None:
    """As the batch query compares emails: trimmed and lower case."""
    return None if value is None or pd.isna(value) else str(value).strip().lower()


def risk_row(payload: Mapping) -> dict:
    """An order webhook -> its row of the risk fields (:data:`storeflow.components.risk.orders.COLUMNS`);
    :class:`PayloadError` naming the field when one is not Shopify's."""
    return _risk(payload, order_rows(dict(payload))[0]["order_id"])[0]


def _risk(payload: Mapping, order_id: int) -> tuple[dict, str | None]:
    """The risk fields of an order webhook whose id is known, and its customer's creation time (ISO, or None)."""
    try:
        fields = RiskFields.model_validate(payload)
    except ValidationError as exc:
        raise PayloadError(f"order risk fields: {describe(exc)}") from None
    reason = fields.cancel_reason.upper() if fields.cancel_reason else None
    if reason is not None and reason not in CANCEL_REASONS:
        raise PayloadError(f"field 'cancel_reason': {fields.cancel_reason!r} is not one of "
                           f"{', '.join(sorted(r.lower() for r in CANCEL_REASONS))}")
    ship, bill = fields.shipping_address, fields.billing_address
    ship_country = ship.country_code if ship else None
    customer = fields.customer
    return ({"order_id": order_id, "cancel_reason": reason,
             "gateway": "+".join(fields.payment_gateway_names) if fields.payment_gateway_names is not None else None,
             "ship_country": ship_country, "bill_country": bill.country_code if bill else None,
             "address_key": address_key(ship.address1, ship.zip, ship_country) if ship else None,
             "dispute_type": None, "dispute_status": None, "disputes": 0, "shopify_risk_level": None},
            customer.created_at.isoformat() if customer is not None and customer.created_at is not None else None)


class LiveHistory:
    """Orders known so far (a snapshot and what arrived live), and one order's features against them."""

    def __init__(self, db: sqlite3.Connection, tables: dict[str, pd.DataFrame | pa.Table] | None = None,
                 risk: pd.DataFrame | None = None, velocity: OnlineVelocity | None = None):
        self.db = db
        self.velocity = velocity  # where velocity is read and pushed (None: features cannot be computed)
        db.executescript(SCHEMA)
        tables = tables or {}
        # the snapshot as Arrow tables of the columns the query reads (READ), conformed once; an order's related rows
        # are taken from them by position (indexes by customer and order), not found by scanning. Nothing else of
        # the snapshot is kept: a pandas copy of the orders and of their risk fields (Python strings) was most of
        # the receiver's memory.
        self._orders = _snapshot("orders", tables.get("orders"))
        self._refunds = _snapshot("refunds", tables.get("refunds"))
        self._customers = _snapshot("customers", tables.get("customers"))
        self._order_ids = self._orders.column("order_id").to_numpy()
        risk = risk if risk is not None else pd.DataFrame(columns=list(COLUMNS))
        risk = risk[risk["order_id"].isin(self._order_ids)]
        self._risk = pa.Table.from_pandas(risk[list(SNAPSHOT_RISK)], preserve_index=False,
                                          schema=pa.schema([TABLE_SCHEMA.field(c) for c in SNAPSHOT_RISK]))
        del risk
        self._by_customer = _Index(self._orders.column("customer_id"))
        self._risk_of = _Index(self._risk.column("order_id"))
        self._refunds_of = _Index(self._refunds.column("order_id"))
        self._refund_ids = self._refunds.column("refund_id").to_numpy(zero_copy_only=False)
        self._customer_rows = _Index(self._customers.column("customer_id"))
        self._duck = duckdb.connect()  # one connection for the history's life: its start costs tens of ms
        self._scored: dict[int, tuple] = {}  # the last features_many's payloads (by identity), validated
        self._decoded: dict[str, dict] = {}  # a live row's JSON -> its dict: related history is read batch after batch
        self._order_rows: _Index | None = None  # snapshot order id -> its row, for keys of an updated order
        self._duck.execute("SET TimeZone = 'UTC'")

    @classmethod
    def from_settings(cls, settings: Settings, db: sqlite3.Connection) -> LiveHistory:
        """History from the newest ingested snapshot and the export it came from; empty without one."""
        root = settings.data_dir / "snapshots"
        snaps = [p for p in root.iterdir() if (p / MANIFEST).exists()] if root.exists() else []
        if not snaps:
            log.warning("no snapshot under %s: order risk sees only the orders received live", root)
            return cls(db, velocity=online_velocity(settings))
        newest = max(snaps, key=lambda p: read_manifest(p).get("ingested_at", ""))
        inputs = [Path(p) for p in read_manifest(newest).get("inputs", []) if Path(p).exists()]
        risk = None
        try:
            risk = snapshot_risk_fields(newest)  # kept by ingest; else the export's
            if risk is None:
                risk = read_risk_fields(inputs) if inputs else None
        except Exception as exc:  # noqa: BLE001 - features still work, without the snapshot orders' risk fields
            log.warning("order risk fields of snapshot %s not readable (%s): earlier orders count without their "
                        "addresses and gateways", newest.name, exc)
        if risk is None:
            log.warning("snapshot %s names no readable export: earlier orders count without their risk fields",
                        newest.name)
        # the tables the history reads (an order's own line items come with its webhook): line items, the
        # largest table, and products stay on disk
        # The process holds these tables for its life. Read with the system allocator, one thread and no
        # pre-buffering: with Arrow's default (mimalloc) the parquet reader's freed buffers stayed in the
        # process, 5,000,000 orders' 399 MB of columns took 938 MB more resident memory (448 MB this way).
        pa.set_memory_pool(pa.system_memory_pool())
        tables = {name: pq.read_table(table_path(newest, name), schema=SCHEMAS[name], columns=list(columns),
                                      pre_buffer=False, use_threads=False) for name, columns in READ.items()}
        velocity = online_velocity(settings)
        seeded = velocity.seed(_last_week(tables["orders"], risk))
        log.info("order velocity: %d keys of snapshot %s's last week written to the online store", seeded, newest.name)
        return cls(db, tables, risk, velocity)

    # --- recording what arrived -------------------------------------------------------------------------

    def record(self, topic: str, payload: Mapping) -> None:
        """Keep an order or refund webhook as history (inside the caller's transaction); the newest
        ``updated_at`` of an order wins, as in the webhook applier."""
        if topic in REFUND_TOPICS:
            refund = refund_row(dict(payload))
            self.db.execute("INSERT OR REPLACE INTO risk_live_refunds (refund_id, order_id, row) VALUES (?, ?, ?)",
                            (refund["refund_id"], refund["order_id"], json.dumps(refund)))
            return
        if topic not in ORDER_TOPICS:
            raise ValueError(f"topic {topic!r} is not an order or refund topic")
        scored = self._scored.get(id(payload))
        just_scored = scored is not None and scored[0] is payload
        if just_scored:  # validated, and counted in velocity, by features_many
            _, order, risk, customer_created = scored
        else:
            order, _ = order_rows(dict(payload))
            risk, customer_created = _risk(payload, order["order_id"])
        current = self.db.execute("SELECT updated_at, customer_id, email, address_key FROM risk_live_orders "
                                  "WHERE order_id = ?", (order["order_id"],)).fetchone()
        if current and current[0] and order["updated_at"] and \
                pd.Timestamp(current[0]) > pd.Timestamp(order["updated_at"]):
            return  # an older version arrived late
        if not just_scored and self.velocity is not None and order["created_at"] is not None:
            # a version not just counted (an update): velocity keys the order by its newest customer, email and
            # address, as training keys it by its last version
            before = current[1:] if current else self._snapshot_keys(order["order_id"])
            self.velocity.move(None if before is None else _velocity_order(
                {"order_id": order["order_id"], "created_at": order["created_at"], "customer_id": before[0],
                 "email": before[1]}, {"address_key": before[2]}), _velocity_order(order, risk))
        self.db.execute(
            "INSERT OR REPLACE INTO risk_live_orders (order_id, customer_id, email, address_key, updated_at, row, risk, "
            "customer_created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (order["order_id"], order["customer_id"], _email(order["email"]), risk["address_key"], order["updated_at"],
             json.dumps(order), json.dumps(risk), customer_created))

    def _snapshot_keys(self, order_id: int) -> tuple | None:
        """A snapshot order's customer id, email and address key (None: the snapshot does not hold it)."""
        if self._order_rows is None:  # built on the first update of a snapshot order
            self._order_rows = _Index(self._orders.column("order_id"))
        found = self._order_rows.rows([order_id])
        if not len(found):
            return None
        position = int(found[0])
        found = self._risk_of.rows([order_id])
        address = self._risk.column("address_key")[int(found[0])].as_py() if len(found) else None
        return (self._orders.column("customer_id")[position].as_py(),
                _email(self._orders.column("email")[position].as_py()), address)

    # --- one order's features ---------------------------------------------------------------------------

    def features(self, payload: Mapping) -> dict[str, float]:
        """The ``ORDER_FEATURES`` of the order in ``payload`` as of its creation, from the history recorded
        so far (the order itself need not be recorded; a recorded version of it is replaced by this one)."""
        return self.features_many([payload])[0]

    def features_many(self, payloads: list[Mapping]) -> list[dict[str, float]]:
        """The features of several new orders in one DuckDB query: each as :meth:`features` gives it after the
        ones before it in ``payloads`` were recorded (the query is point-in-time per order, so orders of the same
        batch see each other only when created before). One query per batch, not per order: the per-order cost
        of the receiver's risk thread (bench/risk_throughput.py)."""
        news, items, new_risks, created_rows, order_of, scored, scored_in_order = {}, [], {}, {}, [], {}, []
        for payload in payloads:  # each payload validated once
            order, lines = order_rows(dict(payload))
            if order["created_at"] is None:
                raise PayloadError("field 'created_at': an order to score needs its creation time")
            risk, customer_created = _risk(payload, order["order_id"])
            scored[id(payload)] = (payload, order, risk, customer_created)
            scored_in_order.append(id(payload))
            news[order["order_id"]] = order  # the same order twice: its last version, as record() keeps
            items.extend(lines)
            new_risks[order["order_id"]] = risk
            order_of.append(order["order_id"])
            cid = order["customer_id"]
            if cid is not None and cid not in created_rows and customer_created is not None:
                created_rows[cid] = {"customer_id": cid, "email": order["email"], "created_at": customer_created,
                                     "updated_at": None}
        if self.velocity is None:
            raise ValueError("order velocity needs Feast's online store: LiveHistory.from_settings, or velocity=")
        customers_of = {o["customer_id"] for o in news.values()} - {None}
        ids_new = list(news)
        live = self.db.execute(
            "SELECT order_id, row, risk, customer_created_at FROM risk_live_orders WHERE order_id NOT IN "
            "(SELECT value FROM json_each(?)) AND customer_id IN (SELECT value FROM json_each(?))",
            (json.dumps(ids_new), json.dumps(sorted(customers_of)))).fetchall()
        live_ids = {row[0] for row in live}
        live_orders, live_risks = [self._decode(r) for _, r, _, _ in live], [self._decode(r) for _, _, r, _ in live]
        related = self._by_customer.rows(customers_of)
        snap = related[~np.isin(self._order_ids[related], list(live_ids | set(ids_new)))]
        snap_ids = self._order_ids[snap].tolist()
        ids = [*snap_ids, *live_ids, *ids_new]

        live_refunds = [json.loads(r) for (r,) in self.db.execute(
            "SELECT row FROM risk_live_refunds WHERE order_id IN (SELECT value FROM json_each(?))", (json.dumps(ids),))]
        refunds = self._refunds_of.rows(ids)
        refunds = refunds[~np.isin(self._refund_ids[refunds], [r["refund_id"] for r in live_refunds])]
        customers = self._customer_rows.rows(customers_of)
        known = set(self._customers.column("customer_id").take(customers).to_pylist())
        tables = {  # a customer the snapshot does not know yet: its creation time from the webhook
            "orders": _table("orders", self._orders.take(snap), live_orders + list(news.values())),
            "line_items": _table("line_items", None, items),
            "customers": _table("customers", self._customers.take(customers),
                                [row for cid, row in created_rows.items() if cid not in known]),
            "refunds": _table("refunds", self._refunds.take(refunds), live_refunds),
            "risk": pa.concat_tables([_full_risk(self._risk.take(self._risk_of.rows(snap_ids))),
                                      _arrow(TABLE_SCHEMA, live_risks + list(new_risks.values()))]),
        }
        for name, table in tables.items():
            self._duck.register(name, table)
        try:
            got = self._duck.execute(f"SELECT order_id, {', '.join(QUERY_FEATURES)} FROM ({RISK_FEATURES_SQL}) "
                                     f"WHERE order_id IN (SELECT unnest(?::BIGINT[]))", [ids_new]).fetchnumpy()
        finally:
            for name in tables:
                self._duck.unregister(name)
        values = np.column_stack([np.ma.filled(np.ma.asarray(got[name], dtype=float), np.nan)
                                  for name in QUERY_FEATURES])
        rows = {int(oid): dict(zip(QUERY_FEATURES, row)) for oid, row in zip(got["order_id"], values.tolist())}
        # velocity last: the batch's orders go to the online store only once the rest of their features are known
        velocity = self.velocity.features_many([_velocity_order(order, risk) for (_, order, risk, _) in
                                                (scored[key] for key in scored_in_order)])
        self._scored = scored  # record() of these very payloads (the risk thread's next step) reuses their rows
        return [{name: float(({**rows[oid], **counts})[name]) for name in ORDER_FEATURES}
                for oid, counts in zip(order_of, velocity)]

    def _decode(self, text: str) -> dict:
        """A live row's JSON, parsed once (the same text is the same row; the dicts are only read)."""
        row = self._decoded.get(text)
        if row is None:
            if len(self._decoded) >= DECODED_ROWS:
                self._decoded.clear()
            row = self._decoded[text] = json.loads(text)
        return row


def online_velocity(settings: Settings) -> OnlineVelocity:
    """Velocity against the configured Feast online store, its views registered first when they are not."""
    store = feature_store(settings)
    registered = {view.name for view in store.list_feature_views()}
    if not set(VELOCITY_VIEWS) <= registered:
        entities, views, _ = feast_definitions(settings)
        store.apply([*entities, *(view for view in views if view.name in VELOCITY_VIEWS)])
    return OnlineVelocity(store, settings.risk.velocity_max_orders)


def _velocity_order(order: dict, risk: dict) -> Order:
    created = datetime.fromisoformat(order["created_at"])
    return Order(order["order_id"], (created - EPOCH) // timedelta(microseconds=1), order["customer_id"],
                 email_digest(order["email"]), risk["address_key"])


def _last_week(orders: pd.DataFrame | pa.Table, risk: pd.DataFrame | None) -> list[Order]:
    """The snapshot's orders of the week before its newest (what velocity can still count), as velocity orders."""
    if isinstance(orders, pa.Table):  # only that week goes to pandas
        if orders.num_rows == 0:
            return []
        created = orders.column("created_at").cast(pa.timestamp("us", tz="UTC"))
        start = pa.scalar(pc.max(created).value - HORIZON_US, type=created.type)
        orders = orders.filter(pc.greater_equal(created, start)).select(
            ["order_id", "customer_id", "email", "created_at"]).to_pandas()
    if orders.empty:
        return []
    created = pd.to_datetime(orders["created_at"], utc=True)
    recent = orders[created >= created.max() - pd.Timedelta(microseconds=HORIZON_US)]
    keys = risk[["order_id", "address_key"]].drop_duplicates("order_id") if risk is not None else \
        pd.DataFrame({"order_id": pd.Series(dtype="int64"), "address_key": pd.Series(dtype=object)})
    return orders_of(recent[["order_id", "customer_id", "email", "created_at"]].merge(keys, on="order_id", how="left"))


def _full_risk(part: pa.Table) -> pa.Table:
    """Snapshot risk rows (SNAPSHOT_RISK) in the risk table's schema, the other fields null."""
    return pa.table([part.column(f.name) if f.name in SNAPSHOT_RISK else pa.nulls(part.num_rows, f.type)
                     for f in TABLE_SCHEMA], schema=TABLE_SCHEMA)


class _Index:
    """Each key of a table column -> the positions of its rows, as two arrays: the keys sorted and the rows'
    positions in that order (nulls left out). A dict of one array per key held ~180 bytes a key more: 220 MB
    for a store of 500,000 customers and 5,000,000 orders."""

    def __init__(self, keys: pa.ChunkedArray):
        keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        valid = np.flatnonzero(keys.is_valid().to_numpy(zero_copy_only=False))
        values = keys.fill_null(0).to_numpy(zero_copy_only=False)[valid].astype(np.int64)
        order = np.argsort(values, kind="stable")
        self.keys = values[order]
        self.positions = valid[order].astype(np.int32 if len(keys) < 2**31 else np.int64)

    def rows(self, wanted) -> np.ndarray:
        """The positions, ascending and once each, of the rows of any key in ``wanted``."""
        wanted = np.fromiter((int(k) for k in wanted), dtype=np.int64)
        if not len(wanted) or not len(self.keys):
            return np.empty(0, dtype=np.int64)
        lo, hi = np.searchsorted(self.keys, wanted, "left"), np.searchsorted(self.keys, wanted, "right")
        parts = [self.positions[a:b] for a, b in zip(lo.tolist(), hi.tolist()) if b > a]
        return np.unique(np.concatenate(parts)).astype(np.int64) if parts else np.empty(0, dtype=np.int64)


def _schema(name: str) -> pa.Schema:
    """The schema the query reads of a table: the READ columns, or all of it."""
    return pa.schema([SCHEMAS[name].field(c) for c in READ[name]]) if name in READ else SCHEMAS[name]


def _snapshot(name: str, frame: pd.DataFrame | pa.Table | None) -> pa.Table:
    """A snapshot table as the history keeps it: its READ columns, conformed (an Arrow table read with that
    schema as it is: no pandas copy, whose memory the process kept after it was dropped)."""
    if frame is None:
        return _schema(name).empty_table()
    if isinstance(frame, pa.Table):
        return frame.select(list(READ[name])).cast(_schema(name))
    return conform(name, frame, READ[name])


def _table(name: str, snapshot: pa.Table | None, rows: list[dict]) -> pa.Table:
    """Snapshot rows and live rows in the schema the query reads."""
    parts = [] if snapshot is None or snapshot.num_rows == 0 else [snapshot]
    if rows:
        parts.append(_arrow(_schema(name), rows))
    return pa.concat_tables(parts) if parts else _schema(name).empty_table()


def _arrow(schema: pa.Schema, rows: list[dict]) -> pa.Table:
    """Rows as ``order_rows``/``refund_row``/``risk_row`` give them (ISO timestamps, a missing key null) in
    ``schema``, straight to Arrow: pandas' frame and its parsing cost more than the query on a few orders."""
    columns = []
    for field in schema:
        values = [row.get(field.name) for row in rows]
        if pa.types.is_timestamp(field.type):
            values = [None if v is None else datetime.fromisoformat(v) for v in values]
        columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)
