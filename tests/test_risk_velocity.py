"""Order velocity in Feast (issue 16): counted by serving against the lists pushed to the online store as orders
arrive, by training over a snapshot's orders, with the same functions; the values are identical, a second delivery
counts nothing, and a key keeps one week of orders (at most risk.velocity_max_orders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from storeflow.components.config import load_settings
from storeflow.components.risk.history import ORDER, Arrival, Event, Ledger, OnlineHistory, customer_velocity
from storeflow.components.risk.live import online_velocity
from storeflow.components.risk.velocity import (DAY_US, HOUR_US, VELOCITY_FEATURES, Recent, batch, counts, fold,
                                                orders_of)

START = pd.Timestamp("2026-11-01T00:00:00Z")


def _burst_store(n: int = 3_000, seed: int = 3) -> pd.DataFrame:
    """Orders over ten days with bursts: few customers, emails and addresses, many orders within minutes, guests,
    orders sharing an address across customers, and ties on the same microsecond."""
    rng = np.random.default_rng(seed)
    minutes = np.sort(rng.exponential(5.0, n).cumsum() % (10 * 24 * 60))
    created = pd.Series(START + pd.to_timedelta(minutes, unit="min")).dt.floor("us")
    created = created.where(rng.random(n) > 0.05, created.shift(1).fillna(created[0]))  # same-instant ties
    customers = rng.integers(1, 120, n).astype(object)
    customers[rng.random(n) < 0.1] = None  # guests
    return pd.DataFrame({
        "order_id": np.arange(1, n + 1) * 7, "customer_id": pd.array(customers, dtype="Int64"),
        "email": [f" Buyer{c if c is not None else g}@Example.com" for c, g in zip(customers, rng.integers(0, 50, n))],
        "address_key": np.where(rng.random(n) < 0.05, None, [f"addr{a}" for a in rng.integers(0, 60, n)]),
        "created_at": created})


def _settings(tmp_path: Path, **risk):
    return load_settings({"project": {"state_dir": str(tmp_path / "state")}, "risk": risk})


class Served:
    """Serving's velocity as the scorer counts it: emails' and addresses' lists in Feast's online store
    (OnlineVelocity), a customer's from their history ledger there (OnlineHistory)."""

    def __init__(self, tmp_path: Path, cap: int = 1_000):
        self.velocity = online_velocity(_settings(tmp_path, velocity_max_orders=cap))
        self.history = OnlineHistory(self.velocity.store, cap)

    def features_many(self, orders: list) -> list[dict]:
        customers = self.history.features_many([Arrival(o.order_id, o.t, o.customer_id, None, None) for o in orders])
        lists = self.velocity.features_many(orders)
        return [{name: {**mine, **theirs}[name] for name in VELOCITY_FEATURES} for mine, theirs in zip(customers, lists)]


def test_serving_from_feast_and_training_count_the_same_velocity(tmp_path: Path):
    frame = _burst_store()
    cap = 40  # small enough that busy keys reach it inside a week
    training = batch(frame, cap).set_index("order_id")
    velocity = Served(tmp_path, cap)
    arriving = sorted(orders_of(frame), key=lambda o: (o.t, o.order_id))  # webhooks arrive in creation order
    served = {}
    for start in range(0, len(arriving), 1_000):  # the risk thread's batches, each read from and pushed to Feast
        chunk = arriving[start:start + 1_000]
        served.update({o.order_id: row for o, row in zip(chunk, velocity.features_many(chunk))})
    served = pd.DataFrame.from_dict(served, orient="index")[list(VELOCITY_FEATURES)].sort_index()
    pd.testing.assert_frame_equal(served, training.loc[served.index, list(VELOCITY_FEATURES)], check_names=False)
    for name in VELOCITY_FEATURES:  # every window was exercised
        assert (served[name] > 0).any(), name
    assert served["address_orders_7d"].max() == cap  # a busy address stops at the cap, on both sides


def _replayed(frame: pd.DataFrame, cap: int) -> pd.DataFrame:
    """Velocity as serving's functions give it: each order, in creation order, counted against its keys' lists
    (counts) and then folded into them (fold)."""
    states: dict[int, dict] = {0: {}, 1: {}, 2: {}}
    rows = []
    for order in sorted(orders_of(frame), key=lambda o: (o.t, o.order_id)):
        mine = [states[view].get(key) if key is not None else None for view, key in enumerate(order.keys())]
        rows.append({"order_id": order.order_id, **counts(*mine, order.t, order.order_id)})
        for view, key in enumerate(order.keys()):
            if key is not None:
                fold(states[view].setdefault(key, Recent()), order, cap)
    return pd.DataFrame(rows, columns=["order_id", *VELOCITY_FEATURES], dtype="int64")


@pytest.mark.parametrize(("seed", "cap"), [(1, 1), (2, 3), (5, 40), (8, 1_000)])
def test_trainings_velocity_is_what_folding_each_order_in_turn_gives(seed: int, cap: int):
    """Training counts velocity over arrays (7x faster at 500,000 orders than folding each order); every value is
    what serving's fold and counts give order by order: same-microsecond ties, guests, blank and differently written
    emails, orders without an address or a creation time, a busy key over the cap, and a shuffled frame."""
    frame = _burst_store(n=2_500, seed=seed).sample(frac=1.0, random_state=seed)
    frame.loc[frame.index[::11], "email"] = ""
    frame.loc[frame.index[::97], "created_at"] = pd.NaT  # no creation time: counts none, counted by none
    expected = _replayed(frame, cap)
    got = batch(frame, cap)
    pd.testing.assert_frame_equal(got, expected)
    assert (expected["address_customers_7d"] == min(cap, 2)).any() and (expected["customer_orders_1h"] > 0).any()
    if cap < 40:
        assert expected["address_orders_7d"].max() == cap  # the cap binds


def test_repeated_order_ids_are_named_not_counted_twice():
    frame = _burst_store(n=20)
    frame.loc[5, "order_id"] = frame.loc[4, "order_id"]
    with pytest.raises(ValueError, match=f"order ids repeated.*{frame.loc[4, 'order_id']}"):
        batch(frame, 1_000)


def test_a_customers_velocity_comes_from_their_history_not_a_list_of_its_own(tmp_path: Path):
    """An order's customer velocity is counted from the customer's ledger, which the scorer reads and writes for
    the history features anyway: the scorer no longer reads and writes a velocity list per customer (two of the
    eight online-store keys an order: its CPU was about half Feast's Redis store)."""
    from storeflow.components.features.repo import CUSTOMER_KEY, VELOCITY_STATE
    from storeflow.components.risk.online_lists import OnlineLists
    from storeflow.components.risk.velocity import CUSTOMER_VIEW

    served = Served(tmp_path)
    orders = [_order(k, 100 * DAY_US + k * HOUR_US // 4, customer=31) for k in range(3)]
    rows = served.features_many(orders[:2]) + served.features_many(orders[2:])
    assert [row["customer_orders_1h"] for row in rows] == [0, 1, 2]
    customer_lists = OnlineLists(served.velocity.store, {CUSTOMER_VIEW: CUSTOMER_KEY}, VELOCITY_STATE)
    assert customer_lists.read(CUSTOMER_VIEW, [31]) == {}  # no list of the customer's own in the online store
    assert [e.id for e in served.history.read([31])[31].events] == [0, 1, 2]


def test_a_customers_velocity_from_their_ledger_keeps_the_newest_orders_up_to_the_cap():
    ledger = Ledger([Event(ORDER, k, k * HOUR_US) for k in range(10)])
    assert customer_velocity(ledger, 10 * HOUR_US, 10, cap=3)["customer_orders_24h"] == 3  # as the list's cap has it
    assert customer_velocity(ledger, 10 * HOUR_US, 10, cap=1_000) == {"customer_orders_1h": 1,
                                                                      "customer_orders_24h": 10}
    assert customer_velocity(None, 10 * HOUR_US, 10, cap=3) == {"customer_orders_1h": 0, "customer_orders_24h": 0}


def test_a_burst_placed_in_one_second_counts_its_earlier_orders_in_serving_and_training(tmp_path: Path):
    """Shopify's creation times are whole seconds: four orders a card-testing bot placed in one second from one
    account, email and address each counted none of the others (windows ended one microsecond before the order),
    so velocity missed the very burst it is for. Orders of the same instant now count those of lower ids, alike in
    serving (whatever order they arrive in) and training; a second delivery still counts nothing more."""
    t = START + pd.Timedelta(days=3)
    frame = pd.DataFrame({"order_id": [5101, 5102, 5103, 5104], "customer_id": pd.array([77] * 4, dtype="Int64"),
                          "email": ["bot@example.com"] * 4, "address_key": ["addr-bot"] * 4, "created_at": [t] * 4})
    training = batch(frame, 1_000).set_index("order_id")
    burst = ("customer_orders_1h", "email_orders_1h", "address_orders_24h", "address_orders_7d")
    for name in burst:
        assert training[name].tolist() == [0, 1, 2, 3], name
    assert training["address_customers_7d"].tolist() == [0, 1, 1, 1]

    orders = orders_of(frame)
    served = Served(tmp_path).features_many([orders[1], orders[0], orders[3], orders[2]])  # arriving out of order
    by_id = dict(zip([5102, 5101, 5104, 5103], served))
    assert [by_id[o][name] for o in (5101, 5103) for name in burst] == [0] * 4 + [2] * 4  # all lower ids there
    in_order = Served(tmp_path / "in-order").features_many(orders)
    assert [row[name] for row in in_order for name in burst] == [k for k in range(4) for _ in burst]


def test_a_second_delivery_counts_nothing_and_orders_see_only_earlier_ones(tmp_path: Path):
    velocity = Served(tmp_path)
    frame = _burst_store(n=50)
    orders = sorted(orders_of(frame), key=lambda o: (o.t, o.order_id))
    first = velocity.features_many(orders)
    assert velocity.features_many(orders) == first  # delivered again (a restart before commit): same counts
    assert velocity.features_many(orders[::-1]) == first[::-1]  # the same orders late: only earlier ones count
    assert first == batch(frame, 1_000)[list(VELOCITY_FEATURES)].to_dict("records")


def test_counts_are_the_windows_before_the_order():
    state = Recent()
    t = 100 * DAY_US
    for k, at in enumerate([t - 8 * DAY_US, t - 2 * DAY_US, t - DAY_US, t - DAY_US + 1, t - HOUR_US, t - 1, t, t + 5]):
        fold(state, _order(k, at, customer=k % 2 + 1), cap=1_000)
    assert fold(state, _order(3, t - DAY_US + 1, customer=2), cap=1_000) is False  # already there
    got = counts(state, state, state, t, 6)  # the order at t itself (its second delivery)
    # [t - 1 h, t - 1 µs]: t - 1 h and t - 1; [t - 24 h, t - 1 µs]: also t - 24 h and t - 24 h + 1 µs; the order at t
    # itself and later ones never; the one of eight days ago was dropped from the list (older than a week)
    assert got["customer_orders_1h"] == 2 and got["email_orders_24h"] == 4
    assert got["address_orders_7d"] == 5 and got["address_customers_7d"] == 2
    assert min(state.times) == t - 2 * DAY_US


def _order(k: int, t: int, customer: int):
    from storeflow.components.risk.velocity import Order

    return Order(k, t, customer, "e", "a")


@pytest.mark.parametrize("cap", [3])
def test_a_key_keeps_its_newest_orders_up_to_the_cap(cap: int):
    state = Recent()
    for k in range(10):
        fold(state, _order(k, k * HOUR_US, customer=1), cap=cap)
    assert state.ids == [7, 8, 9]
    assert counts(state, None, None, 10 * HOUR_US, 10)["customer_orders_24h"] == cap


def test_orders_without_an_email_are_not_counted_as_one_buyers(tmp_path: Path):
    """Shopify's REST order sends ``"email": ""`` for an order without one (a point-of-sale sale, a draft). Those
    orders were one key: the tenth such order of a busy hour counted nine earlier ones of other customers in
    email_orders_1h, live and in training alike. A blank email is now no email."""
    frame = pd.DataFrame({"order_id": [1, 2, 3, 4], "customer_id": pd.array([11, 12, None, 14], dtype="Int64"),
                          "email": ["", "  ", None, " A@Example.com "], "address_key": [None] * 4,
                          "created_at": [START + pd.Timedelta(minutes=m) for m in range(4)]})
    orders = orders_of(frame)
    assert [o.email is None for o in orders] == [True, True, True, False]
    training = batch(frame, 1_000)
    assert training["email_orders_1h"].tolist() == [0, 0, 0, 0]
    assert Served(tmp_path).features_many(orders) == training[list(VELOCITY_FEATURES)].to_dict("records")
