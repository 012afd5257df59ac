"""Order risk features at the moment an order arrives: a store's last weeks replayed as Shopify webhooks (orders,
refunds, fraud cancellations, in time order) over a history of the weeks before; every replayed order's live
features equal its batch features (risk.features over the whole store), velocity included: served from Feast's
online store (SQLite, and Redis as in production) as the replay pushed it, computed for training from the
snapshot, by the same functions."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from redis_server import redis_server
from storeflow.components.config import SyntheticStoreConfig, load_settings
from storeflow.components.ingest import generate_store, read_bulk_jsonl
from storeflow.components.risk.features import ORDER_FEATURES, order_risk_features
from storeflow.components.risk.live import HELD, SNAPSHOT_RISK, LiveHistory, _last_week, online_velocity, risk_row
from storeflow.components.risk.velocity import VELOCITY_FEATURES, email_digest
from storeflow.components.risk.velocity import batch as velocity_batch
from storeflow.components.risk.orders import read_risk_fields
from storeflow.components.shopify.payloads import PayloadError

STORE = SyntheticStoreConfig(customers=600, orders=6_000, products=40, seed=5, fraud_rate=0.02)


def _iso(value) -> str | None:
    return None if value is None or pd.isna(value) else pd.Timestamp(value).isoformat()


def _num(value):
    return None if value is None or pd.isna(value) else float(value)


class Replay:
    """A generated store as webhook payloads in Shopify's REST shape."""

    def __init__(self, path):
        self.tables = read_bulk_jsonl([path])
        self.risk = read_risk_fields([path])
        self.raw = {}
        for line in path.read_bytes().splitlines():
            record = orjson.loads(line)
            if str(record.get("id", "")).startswith("gid://shopify/Order/"):
                self.raw[int(record["id"].rsplit("/", 1)[1])] = record
        self.items = self.tables["line_items"].groupby("order_id")
        self.customers = self.tables["customers"].set_index("customer_id")

    def order(self, row: pd.Series, cancelled: bool = False) -> dict:
        raw = self.raw[int(row["order_id"])]
        customer = None
        if not pd.isna(row["customer_id"]):
            known = self.customers.loc[int(row["customer_id"])]
            customer = {"id": int(row["customer_id"]), "email": known["email"], "created_at": _iso(known["created_at"])}
        items = self.items.get_group(row["order_id"]) if row["order_id"] in self.items.groups else []
        ship, bill = raw.get("shippingAddress"), raw.get("billingAddress")
        return {
            "id": int(row["order_id"]), "name": row["name"], "email": row["email"], "customer": customer,
            "created_at": _iso(row["created_at"]),
            "updated_at": _iso(row["cancelled_at"] if cancelled else row["created_at"]),
            "cancelled_at": _iso(row["cancelled_at"]) if cancelled else None,
            "cancel_reason": (raw.get("cancelReason") or "").lower() or None if cancelled else None,
            "currency": row["currency"], "total_price": _num(row["total_price"]),
            "subtotal_price": _num(row["subtotal_price"]), "total_discounts": _num(row["total_discounts"]),
            "payment_gateway_names": raw.get("paymentGatewayNames"),
            "shipping_address": ship and {"address1": ship.get("address1"), "zip": ship.get("zip"),
                                          "country_code": ship.get("countryCodeV2")},
            "billing_address": bill and {"country_code": bill.get("countryCodeV2")},
            "line_items": [{"id": int(i.line_item_id), "product_id": None if pd.isna(i.product_id) else int(i.product_id),
                            "sku": i.sku, "title": i.title, "quantity": int(i.quantity), "price": _num(i.price)}
                           for i in (items.itertuples() if len(items) else [])],
        }

    @staticmethod
    def refund(row: pd.Series) -> dict:
        return {"id": int(row["refund_id"]), "order_id": int(row["order_id"]), "created_at": _iso(row["created_at"]),
                "transactions": [{"kind": "refund", "status": "success", "amount": _num(row["amount"])}]}


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Replay:
    return Replay(generate_store(STORE, tmp_path_factory.mktemp("risk-live") / "store.jsonl"))


def _settings(tmp_path: Path, redis: str | None = None):
    feast = {"online_store": "redis", "redis_connection_string": redis} if redis else {}
    return load_settings({"project": {"state_dir": str(tmp_path / "state")}, "features": {"feast": feast}})


@pytest.mark.parametrize("online_store", ["sqlite", "redis"])
def test_an_order_arriving_live_has_the_features_the_batch_gives_it(replay: Replay, tmp_path: Path, online_store: str):
    if online_store == "redis":
        with redis_server(tmp_path) as address:
            _replay_and_compare(replay, _settings(tmp_path, address))
    else:
        _replay_and_compare(replay, _settings(tmp_path))


def _replay_and_compare(replay: Replay, settings) -> None:
    tables, risk = replay.tables, replay.risk
    batch = order_risk_features(tables, risk).set_index("order_id")  # training's features, velocity included
    orders = tables["orders"].sort_values(["created_at", "order_id"])
    cut = orders["created_at"].iloc[int(len(orders) * 0.96)]
    before = orders[orders["created_at"] < cut]
    velocity = online_velocity(settings)
    assert velocity.seed(_last_week(before, risk)) > 0  # the snapshot's last week, as the receiver starts
    history = LiveHistory(sqlite3.connect(":memory:", isolation_level=None), {
        "orders": before, "refunds": tables["refunds"][tables["refunds"]["order_id"].isin(before["order_id"])],
        "customers": tables["customers"][tables["customers"]["created_at"] < cut]}, risk, velocity)

    later = orders[orders["created_at"] >= cut]
    events = [(row["created_at"], 0, "orders/create", replay.order(row)) for _, row in later.iterrows()]
    events += [(row["cancelled_at"], 1, "orders/cancelled", replay.order(row, cancelled=True))
               for _, row in later[later["cancelled_at"].notna()].iterrows()]
    refunds = tables["refunds"][tables["refunds"]["order_id"].isin(later["order_id"])]
    events += [(row["created_at"], 2, "refunds/create", replay.refund(row)) for _, row in refunds.iterrows()]
    live = {}
    for _, _, topic, payload in sorted(events, key=lambda e: (e[0], e[1], e[3]["id"])):
        if topic == "orders/create":
            live[payload["id"]] = history.features(payload)
        history.record(topic, payload)

    got = pd.DataFrame.from_dict(live, orient="index")[list(ORDER_FEATURES)].sort_index()
    want = batch.loc[got.index, list(ORDER_FEATURES)].astype(float)
    assert len(got) > 200
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-12, atol=1e-9)
    # the replay exercised the history: repeat customers, velocity, fraud cancellations and refunds seen live
    for name in ("prior_orders", "prior_refunds", "prior_fraud_cancels", "country_mismatch",
                 *(name for name in VELOCITY_FEATURES if not name.endswith("_1h"))):  # no replayed burst within an hour
        assert (got[name] > 0).any(), name
    # what serving read was in Feast: the online store answers get_online_features with the rows it pushed (a
    # customer's velocity is counted from their history ledger; emails and addresses have lists)
    store = velocity.store
    last = later[later["customer_id"].notna()].iloc[-1]
    found = store.get_online_features(features=["customer_order_history:events"],
                                      entity_rows=[{"customer_id": int(last["customer_id"])}]).to_dict()["events"][0]
    assert int(last["order_id"]) in found[1::4]
    found = store.get_online_features(features=["order_velocity_email:orders"],
                                      entity_rows=[{"email_digest": email_digest(last["email"])}]).to_dict()["orders"]
    assert int(last["order_id"]) in found[0][0::3]


def test_the_risk_fields_of_a_webhook_are_the_exports(replay: Replay):
    risk = replay.risk.set_index("order_id")
    for _, row in replay.tables["orders"].head(50).iterrows():
        live = risk_row(replay.order(row))
        assert live["address_key"] == risk.loc[row["order_id"], "address_key"]
        assert live["gateway"] == risk.loc[row["order_id"], "gateway"]


@pytest.mark.parametrize(("change", "named"), [
    ({"cancel_reason": "hacked"}, "field 'cancel_reason': 'hacked'"),
    ({"shipping_address": {"country_code": 7}}, "shipping_address.country_code"),
    ({"payment_gateway_names": "paypal"}, "payment_gateway_names"),
    ({"created_at": None}, "needs its creation time"),
])
def test_a_bad_field_is_named(replay: Replay, change: dict, named: str):
    payload = replay.order(replay.tables["orders"].iloc[0]) | change
    history = LiveHistory(sqlite3.connect(":memory:", isolation_level=None))
    with pytest.raises(PayloadError, match=named):
        history.features(payload)


NEW_ADDRESS = {"address1": "1 Moved Street", "zip": "99999", "country_code": "CA"}


def _with_contact(replay: Replay, n: int) -> list[pd.Series]:
    """``n`` orders of different customers, each with an email and a shipping address."""
    orders = replay.tables["orders"].sort_values(["created_at", "order_id"])
    rows, customers = [], set()
    for _, row in orders.iterrows():
        payload = replay.order(row)
        if payload["email"] and payload["shipping_address"] and payload["customer"] and \
                payload["customer"]["id"] not in customers:
            rows.append(row)
            customers.add(payload["customer"]["id"])
        if len(rows) == n:
            return rows
    raise AssertionError("the store has too few orders with an email and an address")


def _at(payload: dict, when: pd.Timestamp, **change) -> dict:
    return payload | {"created_at": when.isoformat(), "updated_at": when.isoformat()} | change


def _training_velocity(payloads: list[dict]) -> pd.DataFrame:
    """What training counts for these orders, keyed by each one's last version."""
    frame = pd.DataFrame([{"order_id": p["id"], "customer_id": p["customer"]["id"], "email": p["email"],
                           "created_at": p["created_at"], "address_key": risk_row(p)["address_key"]}
                          for p in payloads])
    return velocity_batch(frame, 1_000).set_index("order_id")


@pytest.mark.parametrize("online_store", ["sqlite", "redis"])
def test_an_order_whose_email_and_address_change_is_counted_under_its_new_ones(replay: Replay, tmp_path: Path,
                                                                               online_store: str):
    """orders/updated moves an order's velocity to its new email and address: the next order from the new ones
    counts it and the next from the old ones does not, as training (keyed by the order's last version) counts."""
    with contextlib.ExitStack() as stack:
        address = stack.enter_context(redis_server(tmp_path)) if online_store == "redis" else None
        history = LiveHistory(sqlite3.connect(":memory:", isolation_level=None),
                              velocity=online_velocity(_settings(tmp_path, address)))
        a, b, c = (replay.order(row) for row in _with_contact(replay, 3))
        t0 = pd.Timestamp("2031-03-01T10:00:00Z")
        first = _at(a, t0)
        history.features(first)
        history.record("orders/create", first)
        moved = first | {"email": "Moved@Example.com ", "shipping_address": NEW_ADDRESS,
                         "updated_at": (t0 + pd.Timedelta(minutes=1)).isoformat()}
        history.record("orders/updated", moved)
        to_new = _at(b, t0 + pd.Timedelta(minutes=10), email="moved@example.com", shipping_address=NEW_ADDRESS)
        to_old = _at(c, t0 + pd.Timedelta(minutes=20), email=first["email"], shipping_address=first["shipping_address"])
        live = {}
        for payload in (to_new, to_old):
            live[payload["id"]] = history.features(payload)
            history.record("orders/create", payload)

    assert live[to_new["id"]]["email_orders_1h"] == 1 and live[to_new["id"]]["address_orders_1h"] == 1
    assert live[to_old["id"]]["email_orders_1h"] == 0 and live[to_old["id"]]["address_orders_24h"] == 0
    training = _training_velocity([moved, to_new, to_old])
    for payload in (to_new, to_old):
        assert {name: live[payload["id"]][name] for name in VELOCITY_FEATURES} == \
            training.loc[payload["id"]].astype(float).to_dict()


def test_a_snapshot_order_that_changes_email_is_counted_under_its_new_one(replay: Replay, tmp_path: Path):
    settings = _settings(tmp_path)
    orders = replay.tables["orders"].sort_values(["created_at", "order_id"])
    target, other = _with_contact(replay, 2)
    snapshot = orders[orders["created_at"] <= target["created_at"]]
    velocity = online_velocity(settings)
    velocity.seed(_last_week(snapshot, replay.risk))
    history = LiveHistory(sqlite3.connect(":memory:", isolation_level=None), {"orders": snapshot}, replay.risk,
                          velocity)
    was = replay.order(target)
    history.record("orders/updated", was | {"email": "moved@example.com",
                                            "updated_at": (target["created_at"] + pd.Timedelta(minutes=1)).isoformat()})
    later = _at(replay.order(other), target["created_at"] + pd.Timedelta(minutes=5), email="moved@example.com")
    assert history.features(later)["email_orders_1h"] == 1
    back = _at(replay.order(other), target["created_at"] + pd.Timedelta(minutes=6), email=was["email"], id=10**15)
    assert history.features(back)["email_orders_1h"] == 0


def test_an_order_moved_to_another_customer_counts_for_that_customer(replay: Replay, tmp_path: Path):
    """orders/updated naming another customer: the order leaves the first customer's velocity, joins the second's,
    and the address it kept counts the second customer, not the first, among its week's customers."""
    history = LiveHistory(sqlite3.connect(":memory:", isolation_level=None), velocity=online_velocity(_settings(tmp_path)))
    a, b, c = (replay.order(row) for row in _with_contact(replay, 3))
    t0 = pd.Timestamp("2031-03-01T10:00:00Z")
    first = _at(a, t0)
    history.features(first)
    history.record("orders/create", first)
    moved = first | {"customer": b["customer"], "updated_at": (t0 + pd.Timedelta(minutes=1)).isoformat()}
    history.record("orders/updated", moved)
    by_b = _at(b, t0 + pd.Timedelta(minutes=10), shipping_address=first["shipping_address"])
    by_a = _at(c, t0 + pd.Timedelta(minutes=20), customer=a["customer"], id=10**15)
    live = {}
    for payload in (by_b, by_a):
        live[payload["id"]] = history.features(payload)
        history.record("orders/create", payload)
    assert live[by_b["id"]]["customer_orders_1h"] == 1 and live[by_b["id"]]["address_customers_7d"] == 1
    assert live[by_a["id"]]["customer_orders_1h"] == 0
    training = _training_velocity([moved, by_b, by_a])
    for payload in (by_b, by_a):
        assert {name: live[payload["id"]][name] for name in VELOCITY_FEATURES} == \
            training.loc[payload["id"]].astype(float).to_dict()


OLD_LIVE_ORDERS = """
CREATE TABLE risk_live_orders (
    order_id INTEGER PRIMARY KEY, customer_id INTEGER, email TEXT, address_key TEXT, updated_at TEXT,
    row TEXT NOT NULL, risk TEXT NOT NULL, customer_created_at TEXT);
CREATE INDEX risk_live_orders_customer ON risk_live_orders(customer_id);
CREATE INDEX risk_live_orders_email ON risk_live_orders(email);
CREATE INDEX risk_live_orders_address ON risk_live_orders(address_key);
"""


def test_live_orders_kept_with_their_payloads_by_an_earlier_scorer_keep_their_keys(replay: Replay, tmp_path: Path):
    """Scorers before this one kept each live order's payload rows (~1 KB an order, read by nothing but a data
    request) beside its keys. Opened by this one, the table holds the keys only, every order kept; an order such a
    scorer counted, moved to another customer afterwards, still leaves the first customer's velocity."""
    velocity = online_velocity(_settings(tmp_path))
    a, b, c = (replay.order(row) for row in _with_contact(replay, 3))
    t0 = pd.Timestamp("2031-03-01T10:00:00Z")
    first = _at(a, t0)
    earlier = LiveHistory(sqlite3.connect(":memory:", isolation_level=None), velocity=velocity)
    earlier.features(first)
    earlier.record("orders/create", first)
    (kept,) = earlier.db.execute("SELECT order_id, customer_id, email, address_key, updated_at, customer_created_at "
                                 "FROM risk_live_orders").fetchall()
    db = sqlite3.connect(str(tmp_path / "risk.db"), isolation_level=None)
    db.executescript(OLD_LIVE_ORDERS)
    db.execute("INSERT INTO risk_live_orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*kept[:5], '{"order_id": 1}', "{}",
                                                                                 kept[5]))
    history = LiveHistory(db, velocity=velocity)
    columns = [name for (_, name, *_) in db.execute("PRAGMA table_info(risk_live_orders)")]
    assert columns == ["order_id", "customer_id", "email", "address_key", "updated_at", "customer_created_at"]
    assert db.execute("SELECT * FROM risk_live_orders").fetchall() == [kept]
    assert {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                                           "tbl_name = 'risk_live_orders'")} == {"risk_live_orders_customer",
                                                                                 "risk_live_orders_email"}
    moved = first | {"customer": b["customer"], "updated_at": (t0 + pd.Timedelta(minutes=1)).isoformat()}
    history.record("orders/updated", moved)
    by_a = _at(c, t0 + pd.Timedelta(minutes=20), customer=a["customer"], id=10**15)
    assert history.features(by_a)["customer_orders_1h"] == 0  # the move found the order under the first customer


def test_the_history_holds_only_the_snapshot_columns_its_features_read(replay: Replay, tmp_path: Path):
    """The receiver's scorer keeps the newest snapshot for its life: only what an order updated or refunded live
    needs (its customer, email, address and refunds), as Arrow. Customers' histories are in Feast's online store
    (risk.history), seeded from the snapshot. With the whole tables and a pandas copy of the orders and their risk
    fields (Python strings), a store of 5,000,000 orders held 3.3 GB (peak 3.9 GB) in a pod whose limit is 2 GiB
    for three processes."""
    history = LiveHistory(sqlite3.connect(":memory:", isolation_level=None), replay.tables, replay.risk,
                          online_velocity(_settings(tmp_path)))
    assert history._orders.column_names == list(HELD["orders"])
    assert history._refunds.column_names == list(HELD["refunds"])
    assert not hasattr(history, "_customers")
    assert history._risk.column_names == list(SNAPSHOT_RISK)  # earlier orders' gateways, countries, disputes: unused
    held = [name for name, value in vars(history).items() if isinstance(value, (pd.DataFrame, pd.Series))]
    assert not held, f"pandas copies held: {held}"


# --- customer history (risk.history): ledgers in Feast's online store ------------------------------------------
def _training(orders: list[dict], refunds: list[dict] = ()) -> pd.DataFrame:
    """Training's features of these orders (each by its last version) and refunds: the batch query over them."""
    from storeflow.components.shopify.payloads import order_rows, refund_row
    from storeflow.components.tables import SCHEMAS, conform

    parsed = [order_rows(dict(p)) for p in orders]
    customers = {p["customer"]["id"]: {"customer_id": p["customer"]["id"], "email": p["customer"]["email"],
                                       "created_at": p["customer"]["created_at"]} for p in orders if p["customer"]}
    rows = {"orders": [o for o, _ in parsed], "line_items": [line for _, lines in parsed for line in lines],
            "customers": list(customers.values()), "refunds": [refund_row(dict(r)) for r in refunds]}
    tables = {name: conform(name, pd.DataFrame(rows[name], columns=SCHEMAS[name].names)).to_pandas() for name in rows}
    return order_risk_features(tables, pd.DataFrame([risk_row(p) for p in orders])).set_index("order_id")


HISTORY = ("prior_orders", "prior_spend", "prior_avg_order_value", "value_over_prior_avg", "days_since_prior_order",
           "prior_refunds", "prior_fraud_cancels", "account_age_hours")


def test_a_customers_history_follows_price_refund_fraud_cancel_and_a_move_to_another_customer(replay: Replay,
                                                                                             tmp_path: Path):
    """Updates after an order was scored change what later orders see of its customer: a new price (spend), a
    refund, a fraud cancellation, and a move to another customer (out of the first's history, with its refund and
    cancellation, into the second's), as training, which counts every order by its last version."""
    history = LiveHistory(sqlite3.connect(":memory:", isolation_level=None), velocity=online_velocity(_settings(tmp_path)))
    a, b, c = (replay.order(row) for row in _with_contact(replay, 3))
    t0 = pd.Timestamp("2031-03-01T10:00:00Z")
    at = lambda minutes: (t0 + pd.Timedelta(minutes=minutes)).isoformat()  # noqa: E731
    first = _at(a, t0)
    history.features(first)
    history.record("orders/create", first)
    history.record("orders/updated", first | {"total_price": 500.0, "updated_at": at(1)})
    refund = {"id": 7_700_001, "order_id": first["id"], "created_at": at(2),
              "transactions": [{"kind": "refund", "status": "success", "amount": 20.0}]}
    history.record("refunds/create", refund)
    cancelled = first | {"total_price": 500.0, "cancelled_at": at(3), "cancel_reason": "fraud", "updated_at": at(3)}
    history.record("orders/cancelled", cancelled)
    second = _at(c, t0 + pd.Timedelta(minutes=10), customer=a["customer"], id=10**15)
    seen = history.features(second)
    history.record("orders/create", second)
    assert (seen["prior_orders"], seen["prior_spend"], seen["prior_refunds"], seen["prior_fraud_cancels"]) == \
        (1, 500.0, 1, 1)

    moved = cancelled | {"customer": b["customer"], "updated_at": at(11)}
    history.record("orders/updated", moved)
    by_b = _at(b, t0 + pd.Timedelta(minutes=20))
    by_a = _at(c, t0 + pd.Timedelta(minutes=21), customer=a["customer"], id=10**15 + 1)
    live = {}
    for payload in (by_b, by_a):
        live[payload["id"]] = history.features(payload)
        history.record("orders/create", payload)
    assert (live[by_b["id"]]["prior_orders"], live[by_b["id"]]["prior_spend"], live[by_b["id"]]["prior_refunds"],
            live[by_b["id"]]["prior_fraud_cancels"]) == (1, 500.0, 1, 1)
    assert (live[by_a["id"]]["prior_orders"], live[by_a["id"]]["prior_refunds"],
            live[by_a["id"]]["prior_fraud_cancels"]) == (1, 0, 0)
    training = _training([moved, second, by_b, by_a], [refund])
    for payload in (by_b, by_a):
        assert {name: live[payload["id"]][name] for name in HISTORY} == \
            pytest.approx(training.loc[payload["id"], list(HISTORY)].astype(float).to_dict(), rel=1e-12)


def _refunded_before_its_order(replay: Replay, tmp_path: Path, t0: pd.Timestamp, refund_id: int, later_id: int):
    """History that recorded a refund of an order not received yet, that order (created at ``t0``), the refund, and
    a later order (30 minutes on) of the same customer."""
    history = LiveHistory(sqlite3.connect(":memory:", isolation_level=None), velocity=online_velocity(_settings(tmp_path)))
    a, c = (replay.order(row) for row in _with_contact(replay, 2))
    first = _at(a, t0)
    refund = {"id": refund_id, "order_id": first["id"], "created_at": (t0 + pd.Timedelta(minutes=5)).isoformat(),
              "transactions": [{"kind": "refund", "status": "success", "amount": 5.0}]}
    history.record("refunds/create", refund)  # webhooks are not ordered: the refund came first
    return history, first, refund, _at(c, t0 + pd.Timedelta(minutes=30), customer=a["customer"], id=later_id)


def test_a_refund_that_arrives_before_its_order_counts_once_the_order_does(replay: Replay, tmp_path: Path):
    history, first, refund, later = _refunded_before_its_order(replay, tmp_path, pd.Timestamp("2031-03-01T10:00:00Z"),
                                                               7_700_002, 10**15)
    history.features(first)
    history.record("orders/create", first)
    seen = history.features(later)
    assert seen["prior_refunds"] == 1 and seen["prior_orders"] == 1
    assert seen["prior_refunds"] == _training([first, later], [refund]).loc[later["id"], "prior_refunds"]


def test_recording_the_batch_just_counted_validates_none_of_its_orders_again(replay: Replay, tmp_path: Path,
                                                                              monkeypatch):
    """The scorer records a batch once the risk server answered it: record() takes the rows features_many validated
    and counted for those very payloads, so no order is validated (nor its velocity keys read) a second time."""
    from storeflow.components.risk import live

    history = LiveHistory(sqlite3.connect(":memory:", isolation_level=None), velocity=online_velocity(_settings(tmp_path)))
    t0 = pd.Timestamp("2031-04-01T10:00:00Z")
    orders = [_at(replay.order(row), t0 + pd.Timedelta(minutes=i), id=10**15 + 100 + i)
              for i, row in enumerate(_with_contact(replay, 4))]
    validated = []
    risk = live._risk
    monkeypatch.setattr(live, "_risk", lambda payload, order_id: validated.append(order_id) or risk(payload, order_id))
    for batch in (orders[:2], orders[2:]):
        history.features_many(batch)
        for order in batch:
            history.record("orders/create", order)
    assert validated == [o["id"] for o in orders]  # by features_many only


def test_history_is_seeded_once_per_snapshot_and_a_restart_keeps_what_arrived_live(replay: Replay, tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch):
    """The scorer seeds customers' ledgers from the snapshot once (a marker row in the online store says which
    snapshot); a restart neither seeds again nor puts back a snapshot order's price an update changed live. An
    online store emptied since (a Redis without persistence) is seeded again."""
    from storeflow.components.risk.online_lists import OnlineLists
    from storeflow.components.shopify import online

    writes = []
    real_write = OnlineLists.write
    monkeypatch.setattr(OnlineLists, "write", lambda self, view, rows: writes.append(view) or real_write(self, view, rows))
    settings = _settings(tmp_path)
    orders = replay.tables["orders"].sort_values(["created_at", "order_id"])
    (target,) = _with_contact(replay, 1)
    snapshot = {"orders": orders[orders["created_at"] <= target["created_at"]],
                "refunds": replay.tables["refunds"].iloc[:0], "customers": replay.tables["customers"]}

    def start() -> LiveHistory:
        writes.clear()
        return LiveHistory(sqlite3.connect(":memory:", isolation_level=None), snapshot, replay.risk,
                           online_velocity(settings))

    first = start()
    assert first.history.seeded() is not None and "customer_order_history" in writes
    was = replay.order(target)
    first.record("orders/updated", was | {"total_price": 9_999.0,
                                          "updated_at": (target["created_at"] + pd.Timedelta(minutes=1)).isoformat()})
    again = start()  # a restart
    assert writes == []
    later = _at(replay.order(target), target["created_at"] + pd.Timedelta(minutes=5), id=10**15)
    mine = orders[(orders["customer_id"] == target["customer_id"]) & (orders["created_at"] < target["created_at"])]
    assert again.features(later)["prior_spend"] == pytest.approx(9_999.0 + mine["total_price"].sum(), rel=1e-12)
    online.erase_all(again.velocity.store)
    assert again.history.seeded() is None
    start()
    assert "customer_order_history" in writes


def test_a_new_snapshot_adds_what_a_ledger_lacks_and_keeps_what_arrived_live(tmp_path: Path):
    """Seeding from a newer snapshot (a new fingerprint) adds its events a ledger does not hold and leaves the ones it
    holds as they are: an update received live is newer than any snapshot's version of the order."""
    import pyarrow as pa

    from storeflow.components.risk import history as ledger

    online = ledger.OnlineHistory(online_velocity(_settings(tmp_path)).store)
    hour = 3_600_000_000
    online.apply(5, add=[ledger.Event(ledger.ORDER, 1, hour, ledger.amount(999.0))])  # its price, updated live
    events = pa.table({"customer_id": [5, 5, 6], "kind": [ledger.ORDER] * 3, "id": [1, 2, 3],
                       "t": [hour, 2 * hour, 3 * hour], "amount": [ledger.amount(10.0)] * 3})
    assert online.seed(events, fingerprint=42) == 2 and online.seeded() == 42
    held = online.read([5, 6])
    assert [(e.id, e.amount) for e in held[5].events] == [(1, ledger.amount(999.0)), (2, ledger.amount(10.0))]
    assert [e.id for e in held[6].events] == [3]
    assert ledger.counts(held[5], 3 * hour, 1.0)["prior_spend"] == 1_009.0


def test_a_row_orjson_refuses_is_still_written_as_json():
    """Rows the scorer keeps are written with orjson; an integer past 64 bits (a malformed id) goes through json,
    not a TypeError that would stop the scorer's pass."""
    import json

    from storeflow.components.risk.live import _dumps

    assert json.loads(_dumps({"order_id": 5, "total_price": 1.5})) == {"order_id": 5, "total_price": 1.5}
    assert json.loads(_dumps({"refund_id": 2**70})) == {"refund_id": 2**70}


def test_risk_lists_skip_redis_s_timestamp_read_and_the_materialized_views_keep_it(tmp_path: Path):
    """The risk scorer is its lists' one writer: their writes go to Redis in one round (no HMGET of the stored event
    time first, a quarter of the scorer's Redis work). Every other view of the store still refuses an older row."""
    import redis
    from datetime import datetime, timezone

    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Int64List, Value

    from storeflow.components.features.repo import VELOCITY_STATE
    from storeflow.components.risk.velocity import CUSTOMER_VIEW as VELOCITY_CUSTOMERS
    from storeflow.components.risk.velocity import EMAIL_VIEW

    with redis_server(tmp_path) as address:
        host, port = address.split(":")
        client = redis.Redis(host=host, port=int(port))
        lists = online_velocity(_settings(tmp_path, address)).lists

        def hmgets() -> int:
            return int(client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))

        before = hmgets()
        lists.write(EMAIL_VIEW, [("e7", [11, 1_000, 7], 1_000)])
        assert hmgets() == before  # written without reading first
        assert lists.read(EMAIL_VIEW, ["e7"]) == {"e7": (1_000, [11, 1_000, 7])}
        lists.write(EMAIL_VIEW, [("e7", [11, 1_000, 7, 12, 2_000, 7], 2_000)])
        assert lists.read(EMAIL_VIEW, ["e7"])["e7"][1] == [11, 1_000, 7, 12, 2_000, 7]

        store = lists.store  # through the store as configured (as materialization writes), an older row is refused
        view = store.get_feature_view(VELOCITY_CUSTOMERS)
        key = EntityKey(join_keys=["customer_id"], entity_values=[Value(int64_val=8)])
        provider = store._get_provider()
        for day, value in ((2, 2), (1, 1)):
            provider.online_write_batch(store.config, view, [(key, {VELOCITY_STATE: Value(
                int64_list_val=Int64List(val=[value]))}, datetime(2026, 1, day, tzinfo=timezone.utc), None)], None)
        [(_, stored)] = provider.online_read(store.config, view, [key], [VELOCITY_STATE])
        assert list(stored[VELOCITY_STATE].int64_list_val.val) == [2]


def test_a_refund_that_arrived_before_its_order_counts_for_a_later_order_in_the_same_batch(replay: Replay,
                                                                                            tmp_path: Path):
    """A batch's orders are counted as if recorded one by one: a refund that came before its order is in the
    customer's history for that customer's next order of the batch, as training counts it. (The refund once went
    to the ledger only when the batch was recorded, after every feature of the batch: the next order saw 0.)"""
    history, first, refund, later = _refunded_before_its_order(replay, tmp_path, pd.Timestamp("2031-05-01T10:00:00Z"),
                                                               7_700_003, 10**15 + 7)
    _, seen = history.features_many([first, later])
    assert seen["prior_refunds"] == 1 and seen["prior_orders"] == 1
    assert seen["prior_refunds"] == _training([first, later], [refund]).loc[later["id"], "prior_refunds"]


def _full_order() -> dict:
    return orjson.loads((Path(__file__).parent / "data" / "shopify_webhooks" / "orders_create.json").read_bytes())


@pytest.mark.parametrize("change", [
    {},
    {"email": "", "contact_email": None, "customer": None},  # a guest sale without an email (a draft)
    {"email": "", "contact_email": "", "customer": {"id": 7390123456891, "email": "", "phone": "+61 400 555 010",
                                                    "created_at": "2025-06-02T18:12:44+10:00"}},  # point of sale
    {"shipping_address": None, "shipping_lines": [], "payment_gateway_names": []},  # a digital order, no gateway
    {"billing_address": {"country_code": "NZ", "country": "New Zealand", "zip": "1010"}},  # countries differ
], ids=["web order", "guest without an email", "customer without an email", "digital", "country mismatch"])
def test_a_full_size_orders_create_is_scored_with_the_features_training_gives_it(tmp_path: Path, change: dict):
    """Shopify's orders/create at its full size (every documented field, tax lines, discount allocations, a
    customer with a default address) and three variants: live features equal training's from the same order.
    Two orders of each, ten minutes apart, so velocity and history count the first."""
    base = {**_full_order(), **change}
    second = {**base, "id": base["id"] + 1, "name": "#1043", "created_at": "2026-01-14T09:51:27+11:00",
              "updated_at": "2026-01-14T09:51:29+11:00"}
    history = LiveHistory(sqlite3.connect(":memory:", isolation_level=None), velocity=online_velocity(_settings(tmp_path)))
    live = history.features_many([base, second])
    training = _training([base, second])
    for order, features in zip((base, second), live):
        expected = training.loc[order["id"], list(ORDER_FEATURES)].astype(float).to_dict()
        assert features == pytest.approx(expected), order["id"]
    first = live[0]
    assert (first["item_count"], first["line_count"], first["max_unit_price"]) == (3.0, 2.0, 48.0)
    assert first["total_price"] == 128.75 and first["discount_share"] == pytest.approx(13.20 / 118.80)
    assert first["country_mismatch"] == (1.0 if "billing_address" in change else 0.0)
    assert first["is_guest"] == (1.0 if change.get("customer", "") is None else 0.0)
    if "email" in change:  # no email: it does not tie the second order to the first (nor to any email-less one)
        assert live[1]["email_orders_1h"] == 0
        assert live[1]["customer_orders_1h"] == (0 if change["customer"] is None else 1)
    else:
        assert live[1]["email_orders_1h"] == 1


@pytest.mark.parametrize("change, named", [
    ({}, None),
    ({"email": "", "contact_email": None, "customer": None, "shipping_address": None}, None),
    ({"cancel_reason": "hacked"}, "cancel_reason"),
    ({"shipping_address": {"country_code": 61}}, "shipping_address.country_code"),
    ({"line_items": [{"id": "x"}]}, "line_items[0].id"),
    ({"created_at": "yesterday"}, "created_at"),
], ids=["whole order", "guest, no address", "bad cancel reason", "bad country", "bad line item", "bad time"])
def test_an_order_read_from_its_bytes_is_what_the_webhook_gives(change: dict, named: str | None):
    """The scorer reads a journaled orders/create straight from its bytes (live.new_order, one validation, no
    Python objects for the ~10 KB it does not read): the same rows as the payload's order_rows and risk_row, and a
    bad field named with the same words."""
    from storeflow.components.risk.live import new_order
    from storeflow.components.shopify.payloads import order_rows

    payload = {**_full_order(), **change}
    body = orjson.dumps(payload)
    if named is not None:
        with pytest.raises(PayloadError) as from_dict:
            order, _ = order_rows(dict(payload))
            risk_row(payload)
        with pytest.raises(PayloadError) as from_bytes:
            new_order(body)
        assert named in str(from_bytes.value) and str(from_bytes.value) == str(from_dict.value)
        return
    parsed = new_order(body)
    order, lines = order_rows(dict(payload))
    assert (parsed.id, parsed.order, parsed.lines, parsed.risk) == (payload["id"], order, lines, risk_row(payload))
    assert parsed.customer_created == (None if payload["customer"] is None else "2025-06-02T08:12:44+00:00")


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"an order"'])
def test_a_journaled_body_that_is_no_order_is_refused_by_name(body: bytes):
    from storeflow.components.risk.live import new_order

    with pytest.raises((PayloadError, orjson.JSONDecodeError)):
        new_order(body)


def test_the_scorer_starts_on_a_large_store_with_its_risk_fields_within_the_pods_memory(tmp_path: Path):
    """A store exported with its risk fields keeps them in the snapshot (order_risk), and the scorer reads them when
    it starts, in the webhooks pod (2 GiB for four processes). It read all ten columns as a pandas frame and hashed
    every order id to filter them: at a 500,000-customer store (5M orders) the start peaked at 2,525 MB of heap in
    one process, over the pod's limit alone (bench/results/risk_pod.json: the pod's sum within 43 MB of it). It now
    keeps the three columns it uses, as Arrow, found by a binary search, and seeds a share of the customers at a
    time: 1,133 MB there. Here bench/webhooks.py's store at 1,000,000 orders (100,000 customers), in a fresh
    interpreter, on Redis as in production: 575-598 MB above the start before, 361-363 MB now."""
    import importlib
    import json
    import subprocess
    import sys
    import textwrap

    with pytest.MonkeyPatch.context() as patch:  # bench/webhooks.py's store: what risk_pod measures at 500,000
        patch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
        importlib.import_module("webhooks").write_store_snapshot(tmp_path / "state", 100_000, risk_fields=True)
    script = textwrap.dedent("""
        import json, re, sqlite3, sys, threading
        from pathlib import Path
        from storeflow.components.config import load_settings
        from storeflow.components.risk.live import LiveHistory, online_velocity

        def anon():
            return int(re.search(r"RssAnon:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024

        peak, done = [0.0], threading.Event()

        def sample():
            while not done.wait(0.02):
                peak[0] = max(peak[0], anon())

        settings = load_settings(json.loads(sys.stdin.read()))
        online_velocity(settings)  # Feast's views registered: not measured
        before = anon()
        threading.Thread(target=sample, daemon=True).start()
        history = LiveHistory.from_settings(settings, sqlite3.connect(":memory:", isolation_level=None))
        done.set()
        print(json.dumps({"peak_mb": peak[0] - before, "rows": history._risk.num_rows,
                          "columns": history._risk.column_names}))
    """)
    with redis_server(tmp_path) as address:
        settings = _settings(tmp_path, address)
        done = subprocess.run([sys.executable, "-c", script], input=settings.to_json(), capture_output=True, text=True,
                              timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["rows"] == 1_000_000 and measured["columns"] == list(SNAPSHOT_RISK)
    assert measured["peak_mb"] < 470, measured  # 575-598 MB before


def test_live_orders_and_refunds_a_snapshot_holds_are_forgotten_after_the_retention(tmp_path: Path):
    """Every order and refund received live kept a row in risk.db for good (its keys, its email): ~170 bytes an
    order, 1.7 GB a year at 10 million orders. Once a snapshot holds an order at least as new as the live version,
    and the delivery is older than shopify.retention_days, the row goes (the snapshot's keys are the same); what no
    snapshot holds yet, a version newer than the snapshot's and what arrived within the retention are kept."""
    from datetime import datetime, timedelta, timezone

    from conftest import write_snapshot

    now = datetime.now(timezone.utc).replace(microsecond=0)
    month, fortnight, days = now - timedelta(days=30), now - timedelta(days=20), now - timedelta(days=2)
    ids = {"held": 9_500_000_001, "newer_live": 9_500_000_002, "not_held": 9_500_000_003, "recent": 9_500_000_004}
    snapshot_orders = [ids["held"], ids["newer_live"], ids["recent"]]
    updated = [month, month, days]
    orders = pd.DataFrame({
        "order_id": snapshot_orders, "name": ["#1", "#2", "#4"], "customer_id": [77] * 3,
        "email": ["a@example.com"] * 3, "created_at": [month - timedelta(days=1)] * 3, "updated_at": updated,
        "cancelled_at": [None] * 3, "currency": ["USD"] * 3, "total_price": [10.0] * 3, "subtotal_price": [10.0] * 3,
        "total_discounts": [0.0] * 3, "financial_status": ["paid"] * 3, "risk_level": ["LOW"] * 3})
    refunds = pd.DataFrame({"refund_id": [700], "order_id": [ids["held"]], "created_at": [month], "amount": [5.0]})
    customers = pd.DataFrame({"customer_id": [77], "email": ["a@example.com"], "created_at": [month - timedelta(days=90)],
                              "updated_at": [month - timedelta(days=90)]})
    settings = _settings(tmp_path)
    write_snapshot({"orders": orders, "refunds": refunds, "customers": customers},
                   settings.data_dir / "snapshots" / "monday")
    db = sqlite3.connect(":memory:", isolation_level=None)
    LiveHistory(db)  # its tables
    db.executemany("INSERT INTO risk_live_orders (order_id, customer_id, email, address_key, updated_at) "
                   "VALUES (?, 77, 'a@example.com', NULL, ?)", [
                       (ids["held"], month.astimezone(timezone(timedelta(hours=-5))).isoformat()),  # another offset
                       (ids["newer_live"], fortnight.isoformat()), (ids["not_held"], month.isoformat()),
                       (ids["recent"], days.isoformat())])
    db.executemany("INSERT INTO risk_live_refunds VALUES (?, ?, ?)", [
        (700, ids["held"], orjson.dumps({"refund_id": 700, "created_at": month.isoformat()}).decode()),
        (701, ids["not_held"], orjson.dumps({"refund_id": 701, "created_at": month.isoformat()}).decode())])

    LiveHistory.from_settings(settings, db)

    kept = [row[0] for row in db.execute("SELECT order_id FROM risk_live_orders ORDER BY order_id")]
    assert kept == [ids["newer_live"], ids["not_held"], ids["recent"]]
    assert [row[0] for row in db.execute("SELECT refund_id FROM risk_live_refunds")] == [701]
