"""One order's risk features at the moment its ``orders/create`` webhook arrives, all three parts from where
training's come, served live:

* the order's own (value, discount, items, addresses, gateway, hour): from its fields
  (:func:`storeflow.components.risk.features.own_features`, what the batch query computes of an order);
* its customer's history (prior orders, spend, refunds, fraud cancellations, account age): the customer's ledger in
  Feast's online store (:mod:`storeflow.components.risk.history`), seeded from the snapshot once and kept by this
  module as order and refund webhooks arrive;
* velocity: its email's and address's lists there (:mod:`storeflow.components.risk.velocity`), and its customer's
  from the customer's ledger (:func:`storeflow.components.risk.history.customer_velocity`).

Counts end one microsecond before the order, as the batch query's windows do, so an order's live features equal
its batch features once the same history is known (``tests/test_risk_live.py`` replays a store's orders as webhooks
and compares, history and velocity included).

Webhooks carry the risk fields in Shopify's REST shape: ``payment_gateway_names``, ``shipping_address``
(``address1``, ``zip``, ``country_code``), ``billing_address.country_code``, ``cancel_reason`` (lower case) and
``customer.created_at`` (the account age of a customer the snapshot does not know yet). Disputes never come
with an order: they are labels, not features.

Orders and refunds received live are also kept in SQLite (``risk_live_orders``, ``risk_live_refunds``) inside the
caller's transaction, so recording an order and queueing its assessment commit together; with the snapshot's order
keys they say which customer, email and address an updated or refunded order was counted under. An order is kept as
those keys and its newest ``updated_at`` (~170 bytes with its indexes), not as a copy of its payload: the copy,
~1 KB an order, was read by nothing but a data request; and only until a snapshot holds it and it is older than
``shopify.retention_days`` (:func:`forget_what_the_snapshot_holds`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError

from storeflow.components.config import Settings
from storeflow.components.features.repo import RISK_VIEWS, feature_store
from storeflow.components.features.repo import definitions as feast_definitions
from storeflow.components.ingest.snapshot import newest_snapshot, read_manifest, snapshot_identity
from storeflow.components.risk import history as ledger
from storeflow.components.risk.features import ORDER_FEATURES, own_features
from storeflow.components.risk.history import Arrival, OnlineHistory
from storeflow.components.risk.online_lists import EPOCH
from storeflow.components.risk.velocity import HORIZON_US, OnlineVelocity, Order, email_digest, orders_of
from storeflow.components.risk.orders import (CANCEL_REASONS, TABLE_SCHEMA, address_key,
                                              export_risk_table, snapshot_risk_table)
from storeflow.components.shopify import payloads as webhook
from storeflow.components.shopify.live_rows import forget_held
from storeflow.components.shopify.payloads import (ORDER_TOPICS, REFUND_TOPICS, PayloadError, Timestamp, describe,
                                                  order_rows, refund_row, rows_of)
from storeflow.components.tables import SCHEMAS, conform, email_key, table_path

log = logging.getLogger(__name__)

HISTORY_TOPICS = ORDER_TOPICS | REFUND_TOPICS  # what changes an order's history
SCORED_TOPIC = "orders/create"
# What an earlier order's risk fields give a new order's features: its fraud cancellation (history) and its address
# (velocity's keys). Its gateway, countries and disputes count only for itself (86 bytes an order held all, 32 these).
SNAPSHOT_RISK = ("order_id", "cancel_reason", "address_key")
# What the history reads of a snapshot's tables: to seed the customers' ledgers (risk.history) and velocity.
READ = {"orders": ("order_id", "customer_id", "email", "created_at", "cancelled_at", "total_price", "subtotal_price",
                   "total_discounts"),
        "refunds": ("refund_id", "order_id", "created_at"),
        "customers": ("customer_id", "created_at")}
# What is held afterwards, for an order updated or refunded live: its customer, email and address (to move it).
HELD = {"orders": ("order_id", "customer_id", "email"), "refunds": ("refund_id", "order_id", "created_at")}

# a live order: its keys (which customer, email and address it was counted under) and its newest version's time
LIVE_ORDERS = ("order_id INTEGER PRIMARY KEY, customer_id INTEGER, email TEXT, address_key TEXT, updated_at TEXT, "
               "customer_created_at TEXT")
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS risk_live_orders ({LIVE_ORDERS});
CREATE INDEX IF NOT EXISTS risk_live_orders_customer ON risk_live_orders(customer_id);
CREATE INDEX IF NOT EXISTS risk_live_orders_email ON risk_live_orders(email);
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


class _CustomerWithAge(webhook.Customer):
    created_at: Timestamp | None = None


class _OrderWithRisk(webhook.Order):
    """An order webhook and its risk fields (:class:`RiskFields`) in one model: one validation of the body."""

    customer: _CustomerWithAge | None = None
    payment_gateway_names: list[StrictStr] | None = None
    shipping_address: _Address | None = None
    billing_address: _Address | None = None
    cancel_reason: StrictStr | None = None


@dataclass(frozen=True, slots=True)
class NewOrder:
    """An ``orders/create`` body validated once, straight from its bytes, as the scorer's batch needs it: Shopify's
    whole order is ~10 KB, and building all of it as Python objects first (``orjson.loads``) was the scorer's
    largest single cost at that size, 18 % of its CPU under load."""

    id: int
    order: dict
    lines: list[dict]
    risk: dict
    customer_created: str | None


def new_order(body: bytes) -> NewOrder:
    """An ``orders/create`` body -> :class:`NewOrder`; :class:`PayloadError` naming the field, as
    :func:`~storeflow.components.shopify.payloads.order_rows` and :func:`risk_row` name it (or
    ``orjson.JSONDecodeError``) when it is not an order."""
    try:
        model = _OrderWithRisk.model_validate_json(body)
    except ValidationError:  # said as the receiver and the history say it (or an order only orjson reads: on)
        payload = orjson.loads(body)
        if not isinstance(payload, dict):
            raise PayloadError(f"orders/create body must be a JSON object, got {type(payload).__name__}") from None
        order, lines, risk, created = _to_score(payload)
    else:
        order, lines = rows_of(model)
        risk, created = _risk_of(model, order["order_id"])
    return NewOrder(order["order_id"], order, lines, risk, created)


def _to_score(payload: Mapping | NewOrder) -> tuple[dict, list[dict], dict, str | None]:
    """An order to score's rows (order, line items, risk fields) and its customer's creation time; a NewOrder was
    validated from its bytes already."""
    order, lines = (payload.order, payload.lines) if isinstance(payload, NewOrder) else order_rows(dict(payload))
    if order["created_at"] is None:
        raise PayloadError("field 'created_at': an order to score needs its creation time")
    if isinstance(payload, NewOrder):
        return order, lines, payload.risk, payload.customer_created
    return order, lines, *_risk(payload, order["order_id"])


def order_id(payload: Mapping | NewOrder) -> int:
    """An order webhook's id, parsed (:class:`NewOrder`) or not."""
    return payload.id if isinstance(payload, NewOrder) else payload["id"]


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
    return _risk_of(fields, order_id)


def _risk_of(fields: RiskFields | _OrderWithRisk, order_id: int) -> tuple[dict, str | None]:
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
                 risk: pd.DataFrame | pa.Table | None = None, velocity: OnlineVelocity | None = None,
                 history: OnlineHistory | None = None, seed_in_steps: bool = False):
        """``seed_in_steps``: when the ledgers were seeded from another snapshot before, this snapshot's events are
        folded in by :meth:`seed_step`, a chunk of customers at a time, not here (see :attr:`seeding`)."""
        self.db = db
        # the snapshot it was built from (ingest.snapshot.snapshot_identity), set by from_settings; None: none
        self.snapshot: tuple[str, int] | None = None
        # the snapshot's ledger chunks still to fold in (seed_step), and the customers written so far
        self._seeding: Iterator[int] | None = None
        self._seed_chunks: Callable[[], Iterator[int]] | None = None  # those chunks from the first, again
        self._seeding_since, self._seeded_customers = 0.0, 0
        self.velocity = velocity  # where velocity is read and pushed (None: features cannot be computed)
        # customers' ledgers (risk.history), in the same online store as velocity unless said otherwise
        self.history = history if history is not None or velocity is None else \
            OnlineHistory(velocity.store, velocity.cap)
        _drop_order_copies(db)
        db.executescript(SCHEMA)
        tables = tables or {}
        orders, refunds = _snapshot("orders", tables.get("orders")), _snapshot("refunds", tables.get("refunds"))
        risk = _risk_table(risk)
        known = _among(risk.column("order_id"), orders.column("order_id"))
        # the same table when every row is the snapshot's (ingest's order_risk): no second copy while seeding
        self._risk = risk if known.all() else risk.filter(pa.array(known))
        del risk, known
        if self.history is not None and orders.num_rows:
            customers = _snapshot("customers", tables.get("customers"))
            fingerprint = ledger.fingerprint(orders, refunds, customers)
            before = self.history.seeded()
            if before != fingerprint:  # once per snapshot: a restart reads the marker only
                if seed_in_steps and before is not None:
                    # the ledgers hold another snapshot and what arrived live: orders can be scored meanwhile, as
                    # they were before this snapshot appeared (the chunks hold the snapshot's tables until done)
                    def chunks(history=self.history, tables=(orders, refunds, customers, self._risk)) -> Iterator[int]:
                        return history.seeding(ledger.snapshot_event_shares(*tables, ledger.SEED_STEP_SHARE_ORDERS),
                                               fingerprint)

                    self._seed_chunks, self._seeding = chunks, chunks()
                    self._seeding_since = time.monotonic()
                    log.info("order history: seeding the ledgers from the snapshot between scoring passes")
                else:  # the ledgers are empty (a first start, an emptied store): nothing can be scored before
                    seeded = self.history.seed(ledger.snapshot_event_shares(orders, refunds, customers, self._risk),
                                               fingerprint)
                    log.info("order history: %d customers' ledgers seeded from the snapshot", seeded)
            del customers
        # held afterwards: an order's keys and refunds, for an order updated or refunded live (HELD); its rows are
        # found by position (indexes by order id), not by scanning
        self._orders = orders.select(list(HELD["orders"]))
        self._refunds = refunds.select(list(HELD["refunds"]))
        del orders, refunds, tables
        pa.default_memory_pool().release_unused()  # what reading and seeding freed, back to the system
        self._risk_of = _Index(self._risk.column("order_id"))
        self._refunds_of = _Index(self._refunds.column("order_id"))
        # the last features_many's payloads (by identity), validated and counted: record() of them (the scorer's
        # next step, once the risk server answered) reuses their rows
        self._scored: dict[int, tuple] = {}
        self._order_rows: _Index | None = None  # snapshot order id -> its row, for keys of an updated order

    @property
    def seeded_customers(self) -> int:
        """The ledgers :meth:`seed_step` has written so far."""
        return self._seeded_customers

    @property
    def seeding(self) -> bool:
        """Whether a snapshot's events are still being folded into the ledgers (:meth:`seed_step`)."""
        return self._seeding is not None

    def seed_step(self, seconds: float) -> bool:
        """Fold the snapshot's next chunks of customers into their ledgers for about ``seconds`` (one chunk at
        least); True while some remain. The scorer scores what waits between two calls: a newer snapshot's seeding,
        ~66 s at 500,000 customers, held every order that long."""
        if self._seeding is None:
            return False
        until = time.monotonic() + seconds
        try:
            for written in self._seeding:
                self._seeded_customers += written
                if time.monotonic() >= until:
                    return True
        except BaseException:
            # a chunk that failed (the online store went away) ended the chunks: the next call starts them over, each
            # adding only what a ledger lacks, rather than take the seeding for done with customers left out
            self._seeding = self._seed_chunks()
            raise
        self._seeding = self._seed_chunks = None  # the shares, and the snapshot's tables they read, go with them
        pa.default_memory_pool().release_unused()
        log.info("order history: %d customers' ledgers seeded from the snapshot in %.1f s, between scoring passes",
                 self._seeded_customers, time.monotonic() - self._seeding_since)
        return False

    @classmethod
    def from_settings(cls, settings: Settings, db: sqlite3.Connection, seed_in_steps: bool = False) -> LiveHistory:
        """History from the newest ingested snapshot and the export it came from; empty without one.
        ``seed_in_steps``: see :class:`LiveHistory`."""
        root = settings.data_dir / "snapshots"
        newest = newest_snapshot(root)
        identity = snapshot_identity(newest)  # before reading: a rewrite meanwhile is seen as newer next time
        if newest is None:
            log.warning("no snapshot under %s: order risk sees only the orders received live", root)
            history = cls(db, velocity=online_velocity(settings))
            history.snapshot = identity
            return history
        inputs = [Path(p) for p in read_manifest(newest).get("inputs", []) if Path(p).exists()]
        # Everything read here with the system allocator, tables with one thread and no pre-buffering: with Arrow's
        # default (mimalloc) freed buffers stayed in the process (5,000,000 orders' 399 MB of columns took 938 MB more
        # resident memory), and what the history does not keep is handed back below.
        pa.set_memory_pool(pa.system_memory_pool())
        risk = None
        try:
            risk = snapshot_risk_table(newest, SNAPSHOT_RISK)  # kept by ingest; else the export's
            if risk is None and inputs:
                risk = export_risk_table(inputs, SNAPSHOT_RISK)
            pa.default_memory_pool().release_unused()  # what decoding them took beyond the table
        except Exception as exc:  # noqa: BLE001 - features still work, without the snapshot orders' risk fields
            log.warning("order risk fields of snapshot %s not readable (%s): earlier orders count without their "
                        "addresses and gateways", newest.name, exc)
        if risk is None:
            log.warning("snapshot %s names no readable export: earlier orders count without their risk fields",
                        newest.name)
        # the columns seeding reads (READ; an order's own line items come with its webhook): line items, the
        # largest table, and products stay on disk; the history keeps fewer still (HELD)
        tables = {name: pq.read_table(table_path(newest, name), schema=SCHEMAS[name], columns=list(columns),
                                      pre_buffer=False, use_threads=False) for name, columns in READ.items()}
        velocity = online_velocity(settings)
        seeded = velocity.seed(_last_week(tables["orders"], risk))
        log.info("order velocity: %d keys of snapshot %s's last week written to the online store", seeded, newest.name)
        history = cls(db, tables, risk, velocity, seed_in_steps=seed_in_steps)
        history.snapshot = identity
        del tables, risk
        pa.default_memory_pool().release_unused()  # the snapshot's columns the history does not keep
        orders, refunds = forget_what_the_snapshot_holds(db, newest, settings.shopify.retention_days)
        if orders or refunds:
            log.info("order history: %d live orders and %d live refunds older than %s days left to snapshot %s, "
                     "which holds them", orders, refunds, settings.shopify.retention_days, newest.name)
        return history

    # --- recording what arrived -------------------------------------------------------------------------

    def record(self, topic: str, payload: Mapping) -> None:
        """Keep an order or refund webhook as history (inside the caller's transaction); the newest
        ``updated_at`` of an order wins, as in the webhook applier."""
        if topic in REFUND_TOPICS:
            refund = refund_row(dict(payload))
            self.db.execute("INSERT OR REPLACE INTO risk_live_refunds (refund_id, order_id, row) VALUES (?, ?, ?)",
                            (refund["refund_id"], refund["order_id"], _dumps(refund)))
            customer = self._customer_of(refund["order_id"]) if self.history is not None else None
            if customer is not None and refund.get("created_at"):  # else counted when its order arrives
                self.history.apply(customer, add=[ledger.Event(ledger.REFUND, refund["refund_id"],
                                                               _micros(refund["created_at"]))])
            return
        if topic not in ORDER_TOPICS:
            raise ValueError(f"topic {topic!r} is not an order or refund topic")
        scored = self._scored.pop(id(payload), None)
        just_scored = scored is not None and scored[0] is payload
        if just_scored:  # validated, and counted in velocity, by features_many
            _, order, risk, customer_created = scored
        elif isinstance(payload, NewOrder):
            order, risk, customer_created = payload.order, payload.risk, payload.customer_created
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
        if self.history is not None and order["created_at"] is not None:
            self._update_history(order, risk, current[1] if current else None, just_scored)
        self.db.execute(
            "INSERT OR REPLACE INTO risk_live_orders (order_id, customer_id, email, address_key, updated_at, "
            "customer_created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (order["order_id"], order["customer_id"], email_key(order["email"]), risk["address_key"], order["updated_at"],
             customer_created))

    def _update_history(self, order: dict, risk: dict, live_customer: int | None, just_scored: bool) -> None:
        """The order's events in its customer's ledger as its newest version has them: its price, a fraud
        cancellation, another customer (out of the old one's ledger with its refunds, into the new one's), as
        training counts every order by its last version. A just-scored order was folded by features_many, with
        the refunds that arrived before it: nothing to do."""
        if just_scored:
            return
        order_id, customer = order["order_id"], order["customer_id"]
        if live_customer is None:
            keys = self._snapshot_keys(order_id)
            live_customer = keys[0] if keys is not None else None
        refunds = self._refund_events(order_id)
        fraud = risk["cancel_reason"] == "FRAUD" and order.get("cancelled_at") is not None
        if live_customer is not None and live_customer != customer:
            self.history.apply(live_customer, remove=[(ledger.ORDER, order_id), (ledger.FRAUD_CANCEL, order_id),
                                                      *((ledger.REFUND, e.id) for e in refunds)])
        if customer is None:
            return
        events = [ledger.Event(ledger.ORDER, order_id, _micros(order["created_at"]), ledger.amount(order["total_price"])),
                  *refunds]
        if fraud:
            events.append(ledger.Event(ledger.FRAUD_CANCEL, order_id, _micros(order["cancelled_at"])))
        self.history.apply(customer, add=events, remove=[] if fraud else [(ledger.FRAUD_CANCEL, order_id)])

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
                email_key(self._orders.column("email")[position].as_py()), address)

    # --- one order's features ---------------------------------------------------------------------------

    def features(self, payload: Mapping) -> dict[str, float]:
        """The ``ORDER_FEATURES`` of the order in ``payload`` as of its creation, from the history recorded
        so far (the order itself need not be recorded; a recorded version of it is replaced by this one)."""
        return self.features_many([payload])[0]

    def features_many(self, payloads: list[Mapping | NewOrder]) -> list[dict[str, float]]:
        """The features of several new orders: each as :meth:`features` gives it after the ones before it in
        ``payloads`` were recorded. The order's own features from its fields (``features.own_features``), its
        customer's history from the ledgers in Feast's online store (:mod:`storeflow.components.risk.history`) and
        velocity from its lists there: one read and one write of each per batch, the batch's orders pushed once
        every feature of the batch is known; refunds of an order that arrived before it go there with it (so
        :meth:`record` of these payloads writes SQLite only)."""
        own, scored, scored_in_order = [], {}, []
        for payload in payloads:  # each payload validated once
            order, lines, risk, customer_created = _to_score(payload)
            scored[id(payload)] = (payload, order, risk, customer_created)
            scored_in_order.append(id(payload))
            own.append(own_features(order, lines, risk))
        if self.velocity is None or self.history is None:
            raise ValueError("order velocity and history need Feast's online store: LiveHistory.from_settings, or "
                             "velocity=")
        # history and velocity last: the batch's orders go to the online store only once the rest is known
        batch = [scored[key] for key in scored_in_order]
        early = self._live_refunds([order["order_id"] for (_, order, _, _) in batch])  # came before their order
        history = self.history.features_many([
            Arrival(order["order_id"], _micros(order["created_at"]), order["customer_id"], order["total_price"],
                    None if created is None else _micros(created), tuple(early.get(order["order_id"], {}).values()))
            for (_, order, _, created) in batch])
        velocity = self.velocity.features_many([_velocity_order(order, risk) for (_, order, risk, _) in batch])
        self._scored = scored  # record() of these very payloads (the scorer's next step) reuses their rows
        out = []
        for mine, past, counts in zip(own, history, velocity):
            merged = {**mine, **past, **counts}
            out.append({name: float(merged[name]) for name in ORDER_FEATURES})
        return out

    # --- what an order's features read, and what recording a delivery changes -----------------------------

    def reads(self, order: NewOrder) -> frozenset:
        """What a new order's features read besides its own fields, as :meth:`changes` names it: refunds of its order
        id that came before it, its customer's history and velocity, its email's and its address's velocity."""
        return _terms(order.id, order.order["customer_id"], email_key(order.order["email"]), order.risk["address_key"])

    def changes(self, topic: str, payload: NewOrder | Mapping) -> frozenset:
        """What recording this order (a :class:`NewOrder`) or refund delivery changes that another order's features
        read (:meth:`reads`): its order, and every customer, email and address the order was counted under and will
        be. An order whose reads share none of them is scored the same before this is recorded as after; the
        scorer uses it to score the orders journaled after an update or a refund with those before it."""
        if topic in REFUND_TOPICS:
            refund = refund_row(dict(payload))
            return _terms(refund["order_id"], self._customer_of(refund["order_id"]), None, None)
        if not isinstance(payload, NewOrder):
            raise TypeError("an order delivery's changes are read from its NewOrder")
        order = payload.order
        found = self.db.execute("SELECT customer_id, email, address_key FROM risk_live_orders WHERE order_id = ?",
                                (order["order_id"],)).fetchone()
        before = found if found is not None else self._snapshot_keys(order["order_id"])
        now = _terms(order["order_id"], order["customer_id"], email_key(order["email"]), payload.risk["address_key"])
        return now if before is None else now | _terms(order["order_id"], *before)

    def recording(self, changes: Iterable[tuple[str, object]]) -> AbstractContextManager:
        """Deliveries recorded together (a scorer's batch's waiting ones): the ledgers of the customers in
        ``changes`` (:meth:`changes`' terms) read once and written once (:meth:`OnlineHistory.gathered`)."""
        if self.history is None:
            return nullcontext()
        return self.history.gathered(term for kind, term in changes if kind == "customer")

    def _customer_of(self, order_id: int) -> int | None:
        """The customer of an order known live or to the snapshot (None: a guest's, or an order not known)."""
        found = self.db.execute("SELECT customer_id FROM risk_live_orders WHERE order_id = ?", (order_id,)).fetchone()
        if found is not None:
            return found[0]
        keys = self._snapshot_keys(order_id)
        return keys[0] if keys is not None else None

    def _live_refunds(self, order_ids: list[int]) -> dict[int, dict[int, ledger.Event]]:
        """The refunds received live of these orders as history events (order id -> refund id -> event): one query
        a batch. For a batch of new orders, those that came before their order (webhooks are not ordered)."""
        found: dict[int, dict[int, ledger.Event]] = {}
        for start in range(0, len(order_ids), 500):
            chunk = order_ids[start:start + 500]
            for order_id, text in self.db.execute(
                    f"SELECT order_id, row FROM risk_live_refunds WHERE order_id IN ({', '.join('?' * len(chunk))})",
                    chunk):
                refund = json.loads(text)
                if refund.get("created_at"):
                    found.setdefault(order_id, {})[refund["refund_id"]] = ledger.Event(
                        ledger.REFUND, refund["refund_id"], _micros(refund["created_at"]))
        return found

    def _refund_events(self, order_id: int) -> list[ledger.Event]:
        """An order's refunds as history events: those received live, and the snapshot's."""
        events = {}
        positions = self._refunds_of.rows([order_id])
        if len(positions):
            for refund_id, created in zip(self._refunds.column("refund_id").take(positions).to_pylist(),
                                          self._refunds.column("created_at").take(positions).to_pylist()):
                if created is not None:
                    events[refund_id] = ledger.Event(ledger.REFUND, refund_id, _micros(created))
        events.update(self._live_refunds([order_id]).get(order_id, {}))
        return list(events.values())


def forget_what_the_snapshot_holds(db: sqlite3.Connection, snapshot: Path, retention_days: float,
                                   now: datetime | None = None) -> tuple[int, int]:
    """Delete the live orders (``risk_live_orders``) and refunds (``risk_live_refunds``) received more than
    ``retention_days`` ago that ``snapshot`` holds (:func:`~storeflow.components.shopify.live_rows.forget_held`):
    the snapshot's keys of those orders are what the rows said, so nothing an update, a refund or a redaction reads
    changes; without this each order's row (~170 bytes and an email) stayed in ``risk.db`` for good. Returns
    (orders, refunds) deleted."""
    before = pd.Timestamp(now or datetime.now(timezone.utc)) - pd.Timedelta(days=retention_days)
    return (forget_held(db, "risk_live_orders", "order_id", "updated_at", table_path(snapshot, "orders"),
                        "updated_at", before),
            forget_held(db, "risk_live_refunds", "refund_id", "json_extract(row, '$.created_at')",
                        table_path(snapshot, "refunds"), None, before))


def _terms(order_id: int, customer_id: int | None, email: str | None, address: str | None) -> frozenset:
    """An order's terms for :meth:`LiveHistory.reads` and :meth:`LiveHistory.changes` (an email as its
    :func:`~storeflow.components.tables.email_key`); none for what it lacks."""
    return frozenset(term for term in (("order", order_id), ("customer", customer_id), ("email", email),
                                       ("address", address)) if term[1] is not None)


def _drop_order_copies(db: sqlite3.Connection) -> None:
    """Earlier scorers kept each live order's payload rows beside its keys (columns ``row`` and ``risk``, and an
    index on the address nothing queried): the table is rebuilt with its keys only, every order kept, in one
    transaction (a crash leaves the old table whole)."""
    columns = {name for (_, name, *_) in db.execute("PRAGMA table_info(risk_live_orders)")}
    if "row" not in columns:
        return
    keys = ", ".join(column.split()[0] for column in LIVE_ORDERS.split(", "))
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("ALTER TABLE risk_live_orders RENAME TO risk_live_orders_copies")
        db.execute("DROP INDEX IF EXISTS risk_live_orders_customer")
        db.execute("DROP INDEX IF EXISTS risk_live_orders_email")
        db.execute("DROP INDEX IF EXISTS risk_live_orders_address")
        db.execute(f"CREATE TABLE risk_live_orders ({LIVE_ORDERS})")
        db.execute(f"INSERT INTO risk_live_orders ({keys}) SELECT {keys} FROM risk_live_orders_copies")
        db.execute("DROP TABLE risk_live_orders_copies")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    log.info("order risk history: live orders kept as their keys only (payload copies dropped)")


def _dumps(row: dict) -> str:
    """A row as JSON text: orjson (an order's row ~10x faster than json), json for what orjson refuses (an integer
    past 64 bits)."""
    try:
        return orjson.dumps(row).decode()
    except TypeError:
        return json.dumps(row)


def online_velocity(settings: Settings) -> OnlineVelocity:
    """Velocity against the configured Feast online store, its views registered first when they are not."""
    store = feature_store(settings)
    registered = {view.name for view in store.list_feature_views()}
    if not set(RISK_VIEWS) <= registered:
        entities, views, _ = feast_definitions(settings)
        store.apply([*entities, *(view for view in views if view.name in RISK_VIEWS)])
    return OnlineVelocity(store, settings.risk.velocity_max_orders)


def _micros(value) -> int:
    """An ISO timestamp (or a datetime) as µs since the epoch."""
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return (when - EPOCH) // timedelta(microseconds=1)


def _velocity_order(order: dict, risk: dict) -> Order:
    return Order(order["order_id"], _micros(order["created_at"]), order["customer_id"], email_digest(order["email"]),
                 risk["address_key"])


def _last_week(orders: pd.DataFrame | pa.Table, risk: pd.DataFrame | pa.Table | None) -> list[Order]:
    """The snapshot's orders of the week before its newest (what velocity can still count), as velocity orders;
    ``risk`` (their address keys) as a frame or Arrow (only that week's rows go to pandas)."""
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
    if isinstance(risk, pa.Table):
        risk = risk.filter(pc.is_in(risk.column("order_id"), value_set=pa.array(recent["order_id"], pa.int64())))
        risk = risk.select(["order_id", "address_key"]).to_pandas()
    keys = risk[["order_id", "address_key"]].drop_duplicates("order_id") if risk is not None else \
        pd.DataFrame({"order_id": pd.Series(dtype="int64"), "address_key": pd.Series(dtype=object)})
    return orders_of(recent[["order_id", "customer_id", "email", "created_at"]].merge(keys, on="order_id", how="left"))


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
    """The schema a snapshot table is read in: its READ columns, or all of it."""
    return pa.schema([SCHEMAS[name].field(c) for c in READ[name]]) if name in READ else SCHEMAS[name]


def _among(ids: pa.ChunkedArray, known: pa.ChunkedArray) -> np.ndarray:
    """Whether each of ``ids`` is one of ``known`` (order ids, no nulls), by a binary search of ``known`` sorted:
    Arrow's ``is_in`` hashed the 5,000,000 orders of a 500,000-customer store at +420 MB, this sorts them at +80."""
    haystack = np.sort(pc.drop_null(known).to_numpy())
    wanted = pc.fill_null(ids, 0).to_numpy()
    if not len(haystack):
        return np.zeros(len(wanted), dtype=bool)
    at = np.minimum(np.searchsorted(haystack, wanted), len(haystack) - 1)
    return (haystack[at] == wanted) & pc.is_valid(ids).to_numpy(zero_copy_only=False)


def _risk_table(risk: pd.DataFrame | pa.Table | None) -> pa.Table:
    """The risk fields the history keeps (:data:`SNAPSHOT_RISK`) as Arrow: a frame of
    :func:`~storeflow.components.risk.orders.read_risk_fields`, a table read from the snapshot, or none."""
    schema = pa.schema([TABLE_SCHEMA.field(c) for c in SNAPSHOT_RISK])
    if risk is None:
        return schema.empty_table()
    if isinstance(risk, pd.DataFrame):
        return pa.Table.from_pandas(risk[list(SNAPSHOT_RISK)], preserve_index=False, schema=schema)
    return risk.select(list(SNAPSHOT_RISK)).cast(schema)


def _snapshot(name: str, frame: pd.DataFrame | pa.Table | None) -> pa.Table:
    """A snapshot table as the history keeps it: its READ columns, conformed (an Arrow table read with that
    schema as it is: no pandas copy, whose memory the process kept after it was dropped)."""
    if frame is None:
        return _schema(name).empty_table()
    if isinstance(frame, pa.Table):
        return frame.select(list(READ[name])).cast(_schema(name))
    return conform(name, frame, READ[name])
