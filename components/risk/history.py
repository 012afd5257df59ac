"""A customer's history at the moment of an order (issue 16): prior orders, spend, refunds, fraud cancellations,
days since the last order and the account's age, served from Feast's online store (``features.repo.HISTORY_VIEW``)
and kept there by the webhook receiver's risk thread, as velocity is (:mod:`storeflow.components.risk.velocity`).

What is kept per customer is a :class:`Ledger`: every event of the customer's, in time order, as (kind, id, time in
µs since the epoch, amount in millionths): :data:`ORDER` (the order's id, creation time and total price),
:data:`REFUND` (the refund's id and time), :data:`FRAUD_CANCEL` (the order's id and its cancellation time, for an
order cancelled with reason fraud) and :data:`ACCOUNT` (the customer's id and creation time). An event is known by
its kind and id: folding it again replaces it (an updated price), :func:`unfold` takes it out (an order moved to
another customer). A ledger past :data:`MAX_EVENTS` is compacted (:func:`compact`) to its newest events and a
:class:`Summary` of the rest. :func:`counts` gives an order's :data:`HISTORY_FEATURES` from its customer's ledger:
the events strictly before the order, as training's query counts them (``risk.features.RISK_FEATURES_SQL``: windows
end one microsecond before the order); ``tests/test_risk_live.py`` replays a store as webhooks and finds them equal.

:class:`OnlineHistory` reads a batch's customers' ledgers, counts and folds the batch's orders in arrival order and
writes the changed ledgers back; it seeds the online store from a snapshot once per snapshot (a marker row says
which), adding only events it does not hold, so history received live is never replaced by an older snapshot's.
The scorer then holds no snapshot table for these features (they were a DuckDB query over every earlier order of
the batch's customers per batch: ~0.3 ms an order, 25 ms for an order alone).
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storeflow.components.features.repo import HISTORY_STATE, HISTORY_VIEW
from storeflow.components.risk.online_lists import OnlineLists, next_write_us
from storeflow.components.risk.velocity import CUSTOMER_FEATURES, DAY_US, before, kept_from, window_counts

if TYPE_CHECKING:
    from feast import FeatureStore

ACCOUNT, ORDER, REFUND, FRAUD_CANCEL = 0, 1, 2, 3
ORDERS_BEFORE, OTHERS_BEFORE = 4, 5  # a compacted ledger's summary, held as two events at its front (:class:`Summary`)
KIND_NAMES = {ACCOUNT: "account", ORDER: "order", REFUND: "refund", FRAUD_CANCEL: "fraud_cancellation"}
NO_AMOUNT = -(2**63)  # an order without a total price: counted, adds no spend (SQL's sum skips a null)
MICROS = 1_000_000
# The most an amount holds (millionths, either sign): 4.6 trillion in the shop's currency, exact in a float64. A
# webhook's price is any finite number; past this it is held as this (training's query sums the prices as they are,
# so the two differ only for prices no store charges), and a summary's spend stops at int64's range.
AMOUNT_LIMIT = 2**62
INT64_MAX = 2**63 - 1
HISTORY_FEATURES = ("account_age_hours", "prior_orders", "prior_spend", "prior_avg_order_value", "value_over_prior_avg",
                    "days_since_prior_order", "prior_refunds", "prior_fraud_cancels")
MARKER = -1  # the customer id of the row naming the snapshot the online store was seeded from (no customer has it)
# A ledger past MAX_EVENTS is compacted before it is written: all but its newest KEEP_EVENTS events, and those of the
# LATE_US before its newest, become its Summary. Unbounded, a customer with 20,000 orders (a wholesale buyer, a
# point-of-sale walk-in customer) cost ~32 ms of Python and two 625 KB online-store values per order of theirs.
MAX_EVENTS, KEEP_EVENTS = 512, 256
LATE_US = 2 * DAY_US  # a delivery can come this late (Shopify retries for up to 48 h): its order's time stays exact
MOST_EVENTS = 2_048  # ... but not more than this many: a customer ordering thousands a day is bounded too
SEED_CHUNK = 5_000  # customers read, folded and written at a time while seeding
# a snapshot's events are made for a share of its customers at a time, about this many orders' worth: all at once,
# they and what making them took were +660 MB of the scorer's start at 5M orders
SEED_SHARE_ORDERS = 1_000_000
# ... and while orders are scored between chunks (LiveHistory.seed_step), fewer: a share's events are made in one go,
# which no pass can interrupt (a million orders' share held scoring up to 8.6 s at 5M orders)
SEED_STEP_SHARE_ORDERS = 200_000


class Event(NamedTuple):
    kind: int
    id: int
    t: int  # µs since the epoch
    amount: int = 0  # millionths (an order's total price), NO_AMOUNT for none


class Summary(NamedTuple):
    """What a compacted ledger's events before ``horizon`` (µs) counted: every one of them is earlier than it."""

    orders: int
    spend: int  # millionths
    last_order: int  # µs (0: no order compacted)
    refunds: int
    frauds: int
    horizon: int

    def events(self) -> tuple[Event, Event]:
        return (Event(ORDERS_BEFORE, self.orders, self.last_order, self.spend),
                Event(OTHERS_BEFORE, self.refunds, self.horizon, self.frauds))


@dataclass
class Ledger:
    """One customer's events in time order (kind, then id, within the same microsecond), and the summary of the
    events compacted away (None: none were)."""

    events: list[Event] = field(default_factory=list)
    written_us: int = 0  # the event time (µs) of its last write to the online store (each write moves it on)
    summary: Summary | None = None

    def flat(self) -> list[int]:
        head = self.summary.events() if self.summary is not None else ()
        return [v for event in (*head, *self.events) for v in event]

    @classmethod
    def of(cls, flat: Sequence[int], written_us: int = 0) -> Ledger:
        values = list(flat)  # a protobuf repeated field, copied once and cut by stride
        events = list(map(Event._make, zip(values[0::4], values[1::4], values[2::4], values[3::4])))
        summary = None
        if len(events) >= 2 and events[0].kind == ORDERS_BEFORE and events[1].kind == OTHERS_BEFORE:
            (_, orders, last, spend), (_, refunds, horizon, frauds) = events[0], events[1]
            summary, events = Summary(orders, spend, last, refunds, frauds, horizon), events[2:]
        return cls(events, written_us, summary)

    def compacted(self, event: Event) -> bool:
        """Whether ``event`` falls before the summary's horizon (an account's event never does: it is kept)."""
        return self.summary is not None and event.kind != ACCOUNT and event.t < self.summary.horizon


def compact(ledger: Ledger) -> bool:
    """Fold all but the newest :data:`KEEP_EVENTS` events (and those of the :data:`LATE_US` before the newest, up to
    :data:`MOST_EVENTS` in all) of a ledger past :data:`MAX_EVENTS` into its summary; False when nothing was folded.
    Accounts' events are kept.

    Every feature of an order at or after the new horizon is what the whole ledger gives. What is lost: an edit of
    an event before the horizon (an old order's new price, or it moved to another customer) leaves the summary as
    it was, and an event arriving before the horizon is taken as counted already (:func:`fold`)."""
    if len(ledger.events) <= MAX_EVENTS:
        return False
    events = ledger.events
    cut = min(len(events) - KEEP_EVENTS, bisect_left(events, events[-1].t - LATE_US, key=lambda e: e.t))
    cut = max(cut, len(events) - MOST_EVENTS)
    while 0 < cut < len(events) and events[cut - 1].t == events[cut].t:
        cut -= 1  # one microsecond's events on one side: the horizon is a time
    if cut <= 0:
        return False
    before, kept = events[:cut], events[cut:]
    orders, spend, last, refunds, frauds = ((s.orders, s.spend, s.last_order, s.refunds, s.frauds)
                                            if (s := ledger.summary) is not None else (0, 0, 0, 0, 0))
    accounts = []
    for event in before:
        if event.kind == ORDER:
            orders += 1
            spend += event.amount if event.amount != NO_AMOUNT else 0
            last = max(last, event.t)
        elif event.kind == REFUND:
            refunds += 1
        elif event.kind == FRAUD_CANCEL:
            frauds += 1
        elif event.kind == ACCOUNT:
            accounts.append(event)
    spend = max(-INT64_MAX, min(spend, INT64_MAX))  # an online-store value is an int64
    ledger.summary = Summary(orders, spend, last, refunds, frauds, kept[0].t)
    ledger.events = accounts + kept
    return True


def present(value) -> bool:
    """A value a webhook or a table gave: not None, not NaN (a null read through pandas)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def amount(price) -> int:
    """A price in millionths (NO_AMOUNT for none), held within ±AMOUNT_LIMIT (a price of 1e308 made the ledger's
    integer overflow and stopped the risk path)."""
    if not present(price):
        return NO_AMOUNT
    micros = price * MICROS
    return round(micros) if -AMOUNT_LIMIT < micros < AMOUNT_LIMIT else AMOUNT_LIMIT if micros > 0 else -AMOUNT_LIMIT


def fold(ledger: Ledger, event: Event, replace: bool = True) -> bool:
    """Put ``event`` into ``ledger`` (the same kind and id replaced, unless ``replace`` is False); False when
    nothing changed. An event before a compacted ledger's horizon that it does not hold is taken as one of the
    summary's (:func:`compact`): counted already, not again."""
    for at, held in enumerate(ledger.events):
        if held.kind == event.kind and held.id == event.id:
            if held == event or not replace:
                return False
            del ledger.events[at]
            break
    else:
        if ledger.compacted(event):
            return False
    ledger.events.insert(bisect_left(ledger.events, (event.t, event.kind, event.id),
                                     key=lambda e: (e.t, e.kind, e.id)), event)
    return True


def unfold(ledger: Ledger, kind: int, ids: Iterable[int]) -> bool:
    """Take the events of ``kind`` with these ids out of ``ledger``; False when none was there."""
    ids = set(ids)
    kept = [e for e in ledger.events if not (e.kind == kind and e.id in ids)]
    changed = len(kept) != len(ledger.events)
    ledger.events = kept
    return changed


def counts(ledger: Ledger | None, t: int, total_price: float | None, account_created: int | None = None
           ) -> dict[str, float]:
    """The :data:`HISTORY_FEATURES` of an order created at ``t`` (µs) whose customer's ledger is ``ledger`` (None:
    a guest, or a customer with no history); ``account_created`` (µs) when the ledger has no account event."""
    orders = refunds = frauds = 0
    spend, last = 0, None
    if ledger is not None and (summary := ledger.summary) is not None:  # each of its events was before the horizon
        orders, spend, refunds, frauds = summary.orders, summary.spend, summary.refunds, summary.frauds
        last = summary.last_order if summary.orders else None
    if ledger is not None:
        for event in ledger.events:
            if event.kind == ACCOUNT:  # whenever it is: an account created after the order is 0 hours old
                account_created = event.t
            elif event.t >= t:
                continue
            elif event.kind == ORDER:
                orders += 1
                spend += event.amount if event.amount != NO_AMOUNT else 0
                last = event.t
            elif event.kind == REFUND:
                refunds += 1
            elif event.kind == FRAUD_CANCEL:
                frauds += 1
    spend_value = spend / MICROS
    average = spend_value / orders if orders else 0.0
    price = total_price if present(total_price) else 0.0
    age = 0.0 if account_created is None else max((t // MICROS - account_created // MICROS) / 3600.0, 0.0)
    return {"account_age_hours": age, "prior_orders": float(orders), "prior_spend": spend_value,
            "prior_avg_order_value": average, "value_over_prior_avg": price / average if average else 0.0,
            "days_since_prior_order": (t - last) / DAY_US if last is not None else -1.0,
            "prior_refunds": float(refunds), "prior_fraud_cancels": float(frauds)}


def customer_velocity(ledger: Ledger | None, t: int, order_id: int, cap: int) -> dict[str, int]:
    """The customer's velocity features (:data:`~storeflow.components.risk.velocity.CUSTOMER_FEATURES`) of the
    order ``order_id`` created at ``t`` from the customer's ledger: its orders are what velocity's list of the customer holds
    (the newest ``cap`` of the week before the newest, :func:`storeflow.components.risk.velocity.kept_from`), so
    training, which counts that list (``velocity.batch``), counts the same. One exception: a ledger past
    :data:`MAX_EVENTS` keeps its orders of the two days before its newest event (at most :data:`MOST_EVENTS`), so an
    order arriving more than a day after that customer's newest event may count fewer."""
    orders = [event for event in ledger.events if event.kind == ORDER] if ledger is not None else []
    times, ids = [event.t for event in orders], [event.id for event in orders]  # a ledger's ties are in id order
    start = kept_from(times, cap)
    times, ids = times[start:], ids[start:]
    found = window_counts("customer", times, t, before(times, ids, t, order_id))
    return {name: found[name] for name in CUSTOMER_FEATURES}


class Arrival(NamedTuple):
    """What the history needs of an order arriving to be scored."""

    order_id: int
    t: int
    customer_id: int | None
    total_price: float | None
    account_created: int | None  # the webhook's customer.created_at (µs), for a customer the history does not date
    refunds: tuple[Event, ...] = ()  # the order's refunds that arrived before it (live): folded with it


class OnlineHistory:
    """Customers' ledgers in Feast's online store (:data:`HISTORY_VIEW`); ``velocity_cap``: ``risk.velocity_max_orders``
    (a customer's velocity is counted from their ledger, :func:`customer_velocity`)."""

    def __init__(self, store: FeatureStore, velocity_cap: int = 1_000):
        self.store = store
        self.velocity_cap = velocity_cap
        self.lists = OnlineLists(store, {HISTORY_VIEW: "customer_id"}, HISTORY_STATE)
        self._gathered: dict[int, Ledger] | None = None  # see gathered()
        self._gathered_keys: set[int] = set()
        self._dirty: dict[int, Ledger] = {}

    def read(self, customers: Iterable[int]) -> dict[int, Ledger]:
        keys = list(dict.fromkeys(int(c) for c in customers if c is not None))
        return {key: Ledger.of(flat, written) for key, (written, flat) in self.lists.read(HISTORY_VIEW, keys).items()}

    def write(self, ledgers: dict[int, Ledger]) -> None:
        rows = []
        for key, ledger in ledgers.items():
            compact(ledger)
            ledger.written_us = next_write_us(ledger.written_us, ledger.events[-1].t if ledger.events else 0)
            rows.append((key, ledger.flat(), ledger.written_us))
        self.lists.write(HISTORY_VIEW, rows)

    def features_many(self, orders: Sequence[Arrival]) -> list[dict[str, float]]:
        """Each order's :data:`HISTORY_FEATURES` and its customer's velocity (:func:`customer_velocity`) as if the
        orders before it in ``orders`` had arrived (with their refunds) before it; the orders, their refunds and the
        accounts first dated by them are in the online store afterwards."""
        ledgers = self.read(o.customer_id for o in orders)
        changed: dict[int, Ledger] = {}
        out = []
        for order in orders:
            ledger = ledgers.get(order.customer_id) if order.customer_id is not None else None
            out.append({**counts(ledger, order.t, order.total_price, order.account_created),
                        **customer_velocity(ledger, order.t, order.order_id, self.velocity_cap)})
            if order.customer_id is None:
                continue
            ledger = ledgers.setdefault(order.customer_id, Ledger())
            folded = fold(ledger, Event(ORDER, order.order_id, order.t, amount(order.total_price)), replace=False)
            for refund in order.refunds:
                folded |= fold(ledger, refund)
            if order.account_created is not None and not any(e.kind == ACCOUNT for e in ledger.events):
                folded |= fold(ledger, Event(ACCOUNT, order.customer_id, order.account_created))
            if folded:
                changed[order.customer_id] = ledger
        self.write(changed)
        return out

    def apply(self, customer_id: int, add: Iterable[Event] = (), remove: Iterable[tuple[int, int]] = ()) -> bool:
        """Events added to (or replaced in) and (kind, id) taken out of one customer's ledger; False when unchanged."""
        gathering = self._gathered is not None and customer_id in self._gathered_keys
        if gathering:
            ledger = self._gathered.setdefault(customer_id, Ledger())
        else:
            ledger = self.read([customer_id]).get(customer_id, Ledger())
        changed = False
        for kind, ident in remove:
            changed |= unfold(ledger, kind, [ident])
        for event in add:
            changed |= fold(ledger, event)
        if changed and gathering:
            compact(ledger)  # as a write at once would: the next apply sees what it would have read
            self._dirty[customer_id] = ledger
        elif changed:
            self.write({customer_id: ledger})
        return changed

    @contextmanager
    def gathered(self, customers: Iterable[int]) -> Iterator[None]:
        """:meth:`apply` calls inside read these customers' ledgers once, all in one read, and what they changed is
        written once, at the end: a scorer's batch of updates and refunds costs a round trip each way, not one per
        delivery (each orders/paid of an order read its customer's ledger to find it unchanged). Nothing is
        written when the block raises: its caller's pass is retried."""
        keys = {int(c) for c in customers if c is not None}
        self._gathered, self._gathered_keys, self._dirty = self.read(keys), keys, {}
        try:
            yield
            if self._dirty:
                self.write(self._dirty)
        finally:
            self._gathered, self._gathered_keys, self._dirty = None, set(), {}

    # --- seeding from a snapshot -------------------------------------------------------------------------

    def seeded(self) -> int | None:
        """The fingerprint of the snapshot the online store was seeded from (None: never, or it was emptied)."""
        marker = self.read([MARKER]).get(MARKER)
        return marker.events[0].id if marker is not None and marker.events else None

    def seed(self, events: pa.Table | Iterable[pa.Table], fingerprint: int) -> int:
        """Fold a snapshot's events (:func:`snapshot_events`, or the shares of :func:`snapshot_event_shares`: no
        customer in two) into the customers' ledgers, adding only what a ledger does not hold (what arrived live is
        newer than any snapshot), then mark the store seeded from ``fingerprint`` (callers check :meth:`seeded`
        first: once per snapshot). Returns the customers written."""
        return sum(self.seeding(events, fingerprint))

    def seeding(self, events: pa.Table | Iterable[pa.Table], fingerprint: int) -> Iterator[int]:
        """:meth:`seed` a chunk of :data:`SEED_CHUNK` customers at a time, yielding how many ledgers each chunk wrote;
        the marker goes last, once every chunk is in. Between two chunks the caller may read and write ledgers (the
        scorer scores what waits: :meth:`LiveHistory.seed_step`); a chunk adds only what a ledger lacks then."""
        for share in ([events] if isinstance(events, pa.Table) else events):
            yield from self._seed_share(share)
        self.write({MARKER: Ledger([Event(ACCOUNT, fingerprint, 0)])})

    def _seed_share(self, events: pa.Table) -> Iterator[int]:
        """:meth:`seeding` of events whose customers have all their events here. Customers are taken a chunk at a
        time by an index sorted on (customer, time): no sorted copy of the events is made."""
        customers = events.column("customer_id").to_numpy()
        order = np.lexsort((events.column("t").to_numpy(), customers))
        customers = customers[order]
        bounds = np.flatnonzero(np.diff(customers)) + 1
        starts = np.concatenate([[0], bounds]) if len(customers) else np.empty(0, dtype=np.int64)
        del customers
        yield 0  # the share's events made and sorted: a pass may run before its first chunk
        for first in range(0, len(starts), SEED_CHUNK):
            a = int(starts[first])
            b = int(starts[first + SEED_CHUNK]) if first + SEED_CHUNK < len(starts) else len(order)
            part = events.take(order[a:b]).to_pydict()
            by_customer: dict[int, dict[tuple, Event]] = {}
            for c, kind, ident, t, money in zip(part["customer_id"], part["kind"], part["id"], part["t"],
                                                part["amount"]):
                by_customer.setdefault(c, {})[kind, ident] = Event(kind, ident, t, money)
            ledgers = self.read(by_customer)
            changed = {}
            for customer, found in by_customer.items():
                ledger = ledgers.setdefault(customer, Ledger())
                held = {(e.kind, e.id) for e in ledger.events}
                new = [event for key, event in found.items() if key not in held and not ledger.compacted(event)]
                if new:  # one sort, not a fold per event: a customer with thousands of orders stays linear
                    ledger.events = sorted(ledger.events + new, key=lambda e: (e.t, e.kind, e.id))
                    changed[customer] = ledger
            self.write(changed)
            yield len(changed)


def snapshot_events(orders: pa.Table, refunds: pa.Table, customers: pa.Table, risk: pa.Table) -> pa.Table:
    """A snapshot's history events (customer_id, kind, id, t, amount), as training's query counts them: orders of
    customers, refunds of their orders, fraud cancellations, accounts."""
    def micros(column: pa.ChunkedArray) -> pa.ChunkedArray:
        return pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())

    def part(customer, kind, ident, t, money=None) -> pa.Table:
        table = pa.table({"customer_id": pc.cast(customer, pa.int64()),
                          "kind": pa.array(np.full(len(customer), kind, dtype=np.int64)),
                          "id": pc.cast(ident, pa.int64()), "t": t,
                          "amount": money if money is not None else pa.array(np.zeros(len(customer), dtype=np.int64))})
        if table.column("customer_id").null_count == 0 and table.column("t").null_count == 0:
            return table  # a copy of every order's event kept out of the peak (~200 MB at 5M orders)
        return table.filter(pc.and_(pc.is_valid(table.column("customer_id")), pc.is_valid(table.column("t"))))

    owner = orders.select(["order_id", "customer_id"]).filter(pc.is_valid(orders.column("customer_id")))
    price = pc.cast(orders.column("total_price"), pa.float64())
    millionths = pc.round(pc.multiply(price, MICROS))  # within ±AMOUNT_LIMIT, as amount(); NaN as none
    millionths = pc.max_element_wise(pc.min_element_wise(millionths, float(AMOUNT_LIMIT)), float(-AMOUNT_LIMIT))
    money = pc.if_else(pc.and_kleene(pc.is_valid(price), pc.invert(pc.is_nan(price))),
                       pc.cast(millionths, pa.int64()), pa.scalar(NO_AMOUNT, pa.int64()))
    parts = [part(orders.column("customer_id"), ORDER, orders.column("order_id"), micros(orders.column("created_at")),
                  money)]
    if refunds.num_rows:
        joined = refunds.select(["refund_id", "order_id", "created_at"]).join(owner, "order_id")
        parts.append(part(joined.column("customer_id"), REFUND, joined.column("refund_id"),
                          micros(joined.column("created_at"))))
    fraud = risk.filter(pc.equal(risk.column("cancel_reason"), "FRAUD")).select(["order_id"])
    if fraud.num_rows:
        cancelled = orders.select(["order_id", "customer_id", "cancelled_at"]).join(fraud, "order_id", join_type="inner")
        parts.append(part(cancelled.column("customer_id"), FRAUD_CANCEL, cancelled.column("order_id"),
                          micros(cancelled.column("cancelled_at"))))
    parts.append(part(customers.column("customer_id"), ACCOUNT, customers.column("customer_id"),
                      micros(customers.column("created_at"))))
    return pa.concat_tables([p.cast(parts[0].schema) for p in parts])


def snapshot_event_shares(orders: pa.Table, refunds: pa.Table, customers: pa.Table, risk: pa.Table,
                          share_orders: int = SEED_SHARE_ORDERS) -> Iterator[pa.Table]:
    """:func:`snapshot_events` a share of the customers at a time (customer id modulo the number of shares, about
    ``share_orders`` orders each), every event of a customer in its share: a refund goes with its order, whose
    customer it is, a fraud cancellation too."""
    shares = max(1, -(-orders.num_rows // share_orders))
    if shares == 1:
        yield snapshot_events(orders, refunds, customers, risk)
        return
    of_order = pc.fill_null(orders.column("customer_id"), 0).to_numpy() % shares  # a null customer: dropped anyway
    of_account = pc.fill_null(customers.column("customer_id"), 0).to_numpy() % shares
    for share in range(shares):
        yield snapshot_events(orders.filter(pa.array(of_order == share)), refunds,
                              customers.filter(pa.array(of_account == share)), risk)


def fingerprint(*tables: pa.Table) -> int:
    """A snapshot's identity for the seed marker: its tables' sizes and a digest of their ids and times."""
    digest = hashlib.sha256()
    for table in tables:
        digest.update(str(table.num_rows).encode())
        for name in table.column_names:
            column = table.column(name)
            if pa.types.is_integer(column.type) or pa.types.is_timestamp(column.type):
                values = pc.cast(column, pa.int64())  # its extremes and float sum (an int64 sum of µs overflows)
                digest.update(repr((pc.min_max(values).as_py(), pc.sum(pc.cast(values, pa.float64())).as_py())).encode())
    return int.from_bytes(digest.digest()[:7], "big")
