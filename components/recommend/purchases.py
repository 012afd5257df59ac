"""Who bought what, when: the interactions every recommender here learns from, and the time-ordered split
that keeps evaluation honest (learn from purchases before a cutoff, judge on what customers bought after)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd
from scipy import sparse


class RecommendError(ValueError):
    """The data cannot support the requested recommender or evaluation; the message says why."""


def purchases(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (order, product) a known customer bought in an order that was not cancelled."""
    orders = tables["orders"]
    kept = orders[orders["customer_id"].notna() & orders["cancelled_at"].isna()][["order_id", "customer_id", "created_at"]]
    items = tables["line_items"][["order_id", "product_id"]].dropna().drop_duplicates()
    events = items.merge(kept, on="order_id", how="inner", validate="many_to_one")
    return events.astype({"customer_id": "int64", "product_id": "int64"}).sort_values(
        ["created_at", "order_id"], kind="stable").reset_index(drop=True)


def bought(customers: np.ndarray, products: np.ndarray, shape: tuple[int, int]) -> sparse.csr_matrix:
    """Rows x product columns, 1 where bought at all (not how often)."""
    m = sparse.csr_matrix((np.ones(len(customers), dtype=np.float32), (customers, products)), shape=shape)
    m.data[:] = 1.0
    return m


def purchase_matrix(events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, sparse.csr_matrix]:
    """(customer ids, product ids, customers x products matrix) of every purchase in ``events``."""
    products = np.sort(events["product_id"].unique())
    customers = np.sort(events["customer_id"].unique())
    rows = np.searchsorted(customers, events["customer_id"].to_numpy())
    cols = np.searchsorted(products, events["product_id"].to_numpy())
    return customers, products, bought(rows, cols, (len(customers), len(products)))


@dataclass(frozen=True)
class Interactions:
    """Purchases before the cutoff as sparse matrices over one product index, and what each evaluated
    customer newly bought in the window after it (the relevant items)."""

    products: np.ndarray  # column index -> product id
    customers: np.ndarray  # row index of ``history`` -> customer id
    history: sparse.csr_matrix  # customers x products: 1 where bought before the cutoff
    last_order: sparse.csr_matrix  # customers x products: the products of each customer's latest order
    orders: sparse.csr_matrix  # orders x products (before the cutoff): what was bought together
    relevant: dict[int, np.ndarray]  # row of an evaluated customer -> product columns bought new in the window
    cutoff: pd.Timestamp


def evaluation_cutoff(events: pd.DataFrame, horizon_days: int) -> pd.Timestamp:
    """Where :func:`time_split` cuts by default: ``horizon_days`` before the last purchase."""
    if events.empty:
        raise RecommendError("no purchases by known customers: a recommender has nothing to learn from")
    return events["created_at"].max() - timedelta(days=horizon_days)


def time_split(events: pd.DataFrame, horizon_days: int, cutoff: pd.Timestamp | None = None) -> Interactions:
    """Split at ``cutoff`` (default: ``horizon_days`` before the last purchase). A customer is evaluated when
    they bought before the cutoff and bought something new to them in ``[cutoff, cutoff + horizon)``."""
    if events.empty:
        raise RecommendError("no purchases by known customers: a recommender has nothing to learn from")
    last = events["created_at"].max()
    cutoff = pd.Timestamp(cutoff) if cutoff is not None else evaluation_cutoff(events, horizon_days)
    before = events[events["created_at"] < cutoff]
    window = events[(events["created_at"] >= cutoff) & (events["created_at"] < cutoff + timedelta(days=horizon_days))]
    if before.empty or window.empty:
        raise RecommendError(
            f"the history has no purchases on both sides of the cutoff {cutoff:%Y-%m-%d} (last purchase "
            f"{last:%Y-%m-%d}): it needs more than recommendations.horizon_days={horizon_days} days of orders")
    customers, products, history = purchase_matrix(before)
    col = pd.Series(np.arange(len(products)), index=products)
    row = pd.Series(np.arange(len(customers)), index=customers)
    latest = before[before["created_at"] == before.groupby("customer_id")["created_at"].transform("max")]
    last_order = bought(row[latest["customer_id"]].to_numpy(), col[latest["product_id"]].to_numpy(), history.shape)
    order_codes, order_index = np.unique(before["order_id"].to_numpy(), return_inverse=True)
    orders = bought(order_index, col[before["product_id"]].to_numpy(), (len(order_codes), len(products)))

    known = window[window["customer_id"].isin(row.index) & window["product_id"].isin(col.index)]
    relevant: dict[int, np.ndarray] = {}
    for customer, items in known.groupby("customer_id")["product_id"]:
        r = int(row[customer])
        new = np.setdiff1d(col[items.unique()].to_numpy(), history[r].indices)
        if len(new):
            relevant[r] = new
    if not relevant:
        raise RecommendError(f"no customer bought anything new to them after {cutoff:%Y-%m-%d}: nothing to evaluate")
    return Interactions(products, customers, history, last_order, orders, relevant, cutoff)
