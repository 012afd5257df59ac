"""Order-time risk features and fraud labels, in DuckDB over a snapshot's tables and the risk fields.

One row per order. Every feature is what was known when the order was created (its ``created_at``): the
order itself (value, discount, items, addresses, gateway, hour), its customer's history strictly before it
(orders, spend, refunds and fraud cancellations that had happened by then) and velocity (orders from the
same customer, email or shipping address in the hour, day and week before it: :mod:`storeflow.components.risk.velocity`,
the function serving computes it with from Feast's online store, joined to the query's rows). Windows are on
microsecond epochs and end one microsecond before the order, so nothing at or after the order's own time is seen; a
test recomputes the features on a snapshot cut at a time and finds every earlier order's row unchanged.

The label is what the store recorded later: cancelled with reason FRAUD, a chargeback the merchant did not
win, or a refund on a disputed order. Disputes come weeks after the order, so the labels of recent orders are
not mature yet (``mature_before``).
"""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb
import pandas as pd
import pyarrow as pa

from storeflow.components.config import RiskConfig
from storeflow.components.risk import velocity
from storeflow.components.risk.history import HISTORY_FEATURES, present
from storeflow.components.risk.orders import TABLE_SCHEMA
from storeflow.components.risk.velocity import DAY_US, VELOCITY_FEATURES

LABEL = "fraud"
TIME = "created_at"
GATEWAYS = ("shopify_payments", "paypal", "gift_card")  # one indicator each; anything else gateway_other
VELOCITY_MAX_ORDERS = RiskConfig.model_fields["velocity_max_orders"].default

ORDER_FEATURES = (
    "total_price", "subtotal_price", "total_discounts", "discount_share", "item_count", "line_count",
    "max_unit_price", "country_mismatch", "ship_country_missing",
    *(f"gateway_{name}" for name in GATEWAYS), "gateway_other", "hour_of_day",
    "is_guest", "account_age_hours", "prior_orders", "prior_spend", "prior_avg_order_value", "value_over_prior_avg",
    "days_since_prior_order", "prior_refunds", "prior_fraud_cancels",
    *VELOCITY_FEATURES,
)
QUERY_FEATURES = tuple(name for name in ORDER_FEATURES if name not in VELOCITY_FEATURES)  # what the SQL gives
# of those, what the order's own fields give (the rest is its customer's history: risk.history)
OWN_FEATURES = tuple(name for name in QUERY_FEATURES if name not in HISTORY_FEATURES)


def _before(partition: str) -> str:
    return f"(PARTITION BY {partition} ORDER BY t RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)"


RISK_FEATURES_SQL = f"""
WITH o AS (
    SELECT o.order_id, o.customer_id, lower(trim(o.email)) AS email, o.created_at, epoch_us(o.created_at) AS t,
           o.total_price, o.subtotal_price, o.total_discounts,
           r.cancel_reason, r.gateway, r.ship_country, r.bill_country, r.address_key, r.dispute_type,
           r.dispute_status, r.shopify_risk_level
    FROM orders o LEFT JOIN risk r USING (order_id)
),
items AS (
    SELECT order_id, sum(quantity) AS item_count, count(*) AS line_count, max(price) AS max_unit_price
    FROM line_items GROUP BY ALL
),
-- a customer's events on one clock: their orders, refunds and fraud cancellations, each when it happened
events AS (
    SELECT customer_id, t, 1 AS orders, total_price AS spend, 0 AS refunds, 0 AS fraud_cancels, order_id
    FROM o WHERE customer_id IS NOT NULL
    UNION ALL
    SELECT o.customer_id, epoch_us(rf.created_at), 0, 0, 1, 0, NULL
    FROM refunds rf JOIN o USING (order_id) WHERE o.customer_id IS NOT NULL
    UNION ALL
    SELECT o.customer_id, epoch_us(x.cancelled_at), 0, 0, 0, 1, NULL
    FROM orders x JOIN o USING (order_id)
    WHERE o.customer_id IS NOT NULL AND x.cancelled_at IS NOT NULL AND o.cancel_reason = 'FRAUD'
),
history AS (
    SELECT order_id,
           coalesce(sum(orders) OVER w, 0) AS prior_orders,
           coalesce(sum(spend) OVER w, 0) AS prior_spend,
           coalesce(sum(refunds) OVER w, 0) AS prior_refunds,
           coalesce(sum(fraud_cancels) OVER w, 0) AS prior_fraud_cancels,
           max(CASE WHEN orders = 1 THEN t END) OVER w AS prior_t
    FROM events
    WINDOW w AS {_before("customer_id")}
    QUALIFY order_id IS NOT NULL
)
SELECT o.order_id, o.customer_id, o.created_at,
       o.total_price, o.subtotal_price, o.total_discounts,
       coalesce(o.total_discounts / nullif(o.subtotal_price, 0), 0)::DOUBLE AS discount_share,
       coalesce(items.item_count, 0)::BIGINT AS item_count,
       coalesce(items.line_count, 0)::BIGINT AS line_count,
       coalesce(items.max_unit_price, 0)::DOUBLE AS max_unit_price,
       (coalesce(o.ship_country <> o.bill_country, false))::INTEGER AS country_mismatch,
       (o.ship_country IS NULL)::INTEGER AS ship_country_missing,
{",".join(f'''
       (coalesce(o.gateway, '') = '{name}')::INTEGER AS gateway_{name}''' for name in GATEWAYS)},
       (coalesce(o.gateway, '') NOT IN ({", ".join(f"'{name}'" for name in GATEWAYS)}))::INTEGER AS gateway_other,
       hour(o.created_at)::INTEGER AS hour_of_day,
       (o.customer_id IS NULL)::INTEGER AS is_guest,
       -- a guest has no account: as new as an account gets
       greatest(coalesce(date_diff('second', c.created_at, o.created_at) / 3600.0, 0), 0)::DOUBLE AS account_age_hours,
       coalesce(h.prior_orders, 0)::BIGINT AS prior_orders,
       coalesce(h.prior_spend, 0)::DOUBLE AS prior_spend,
       coalesce(h.prior_spend / nullif(h.prior_orders, 0), 0)::DOUBLE AS prior_avg_order_value,
       coalesce(o.total_price / nullif(h.prior_spend / nullif(h.prior_orders, 0), 0), 0)::DOUBLE AS value_over_prior_avg,
       coalesce((o.t - h.prior_t) / {DAY_US}.0, -1)::DOUBLE AS days_since_prior_order,
       coalesce(h.prior_refunds, 0)::BIGINT AS prior_refunds,
       coalesce(h.prior_fraud_cancels, 0)::BIGINT AS prior_fraud_cancels,
       o.shopify_risk_level,
       (coalesce(o.cancel_reason = 'FRAUD', false)
        OR coalesce(o.dispute_type = 'CHARGEBACK' AND o.dispute_status <> 'WON', false)
        OR (o.dispute_type IS NOT NULL AND o.order_id IN (SELECT order_id FROM refunds)))::INTEGER AS {LABEL},
       CASE WHEN o.cancel_reason = 'FRAUD' THEN 'cancelled_fraud'
            WHEN o.dispute_type = 'CHARGEBACK' AND o.dispute_status <> 'WON' THEN 'chargeback'
            WHEN o.dispute_type IS NOT NULL AND o.order_id IN (SELECT order_id FROM refunds) THEN 'refund_after_dispute'
            ELSE '' END AS label_source
FROM o
LEFT JOIN items USING (order_id)
LEFT JOIN customers c ON c.customer_id = o.customer_id
LEFT JOIN history h USING (order_id)
ORDER BY o.created_at, o.order_id
"""


def own_features(order: dict, lines: list[dict], risk: dict) -> dict[str, float]:
    """One order's :data:`OWN_FEATURES` from its webhook's rows (``shopify.payloads.order_rows``, ``live.risk_row``):
    what the query computes of an order from its own fields, for one order in Python. Serving scores an order with
    these; the query's fixed cost (~20 ms whatever the batch) was most of an order's when orders came one by one.
    ``tests/test_risk_live.py`` replays a store as webhooks and finds them equal to the query's for every order."""
    total, subtotal, discounts = (order.get(k) for k in ("total_price", "subtotal_price", "total_discounts"))
    quantities = [line["quantity"] for line in lines if present(line.get("quantity"))]
    prices = [line["price"] for line in lines if present(line.get("price"))]
    ship, bill, gateway = risk.get("ship_country"), risk.get("bill_country"), risk.get("gateway") or ""
    created = datetime.fromisoformat(order["created_at"]).astimezone(timezone.utc)
    nan = float("nan")
    values = {
        "total_price": float(total) if present(total) else nan,
        "subtotal_price": float(subtotal) if present(subtotal) else nan,
        "total_discounts": float(discounts) if present(discounts) else nan,
        "discount_share": float(discounts) / float(subtotal) if present(discounts) and present(subtotal) and
        subtotal != 0 else 0.0,
        "item_count": float(sum(quantities)), "line_count": float(len(lines)),
        "max_unit_price": float(max(prices)) if prices else 0.0,
        "country_mismatch": float(ship is not None and bill is not None and ship != bill),
        "ship_country_missing": float(ship is None),
        **{f"gateway_{name}": float(gateway == name) for name in GATEWAYS},
        "gateway_other": float(gateway not in GATEWAYS),
        "hour_of_day": float(created.hour),
        "is_guest": float(order.get("customer_id") is None),
    }
    return {name: values[name] for name in OWN_FEATURES}


def order_risk_features(tables: dict[str, pd.DataFrame], risk: pd.DataFrame,
                        velocity_max_orders: int = VELOCITY_MAX_ORDERS) -> pd.DataFrame:
    """One row per order of ``tables`` (a snapshot's orders, line_items, customers, refunds): the
    ``ORDER_FEATURES`` as of its creation, Shopify's risk level, the fraud label and where it came from.
    ``risk`` is :func:`storeflow.components.risk.orders.read_risk_fields` of the same store; velocity is
    :func:`storeflow.components.risk.velocity.batch` over the orders (``risk.velocity_max_orders`` per key)."""
    missing = [name for name in ("orders", "line_items", "customers", "refunds") if name not in tables]
    if missing:
        raise ValueError(f"risk features need the snapshot tables {', '.join(missing)}")
    if risk.empty or risk["order_id"].isin(tables["orders"]["order_id"]).sum() == 0:
        raise ValueError("no order of the snapshot has risk fields (cancel reason, disputes, addresses, gateway): "
                         "ingest the OrderRisk export (components/risk/query.graphql) beside the store, or "
                         "generate the synthetic store with synthetic.fraud_rate > 0")
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        for name in ("orders", "line_items", "customers", "refunds"):
            con.register(name, tables[name])
        con.register("risk", pa.Table.from_pandas(risk[TABLE_SCHEMA.names], schema=TABLE_SCHEMA, preserve_index=False))
        frame = con.execute(RISK_FEATURES_SQL).df()
    frame[TIME] = pd.to_datetime(frame[TIME], utc=True)
    keys = tables["orders"][["order_id", "customer_id", "email", "created_at"]].merge(
        risk[["order_id", "address_key"]].drop_duplicates("order_id"), on="order_id", how="left")
    frame = frame.merge(velocity.batch(keys, velocity_max_orders), on="order_id", how="left", validate="one_to_one")
    first = ["order_id", "customer_id", TIME]
    return frame[[*first, *ORDER_FEATURES, *(c for c in frame.columns if c not in (*first, *ORDER_FEATURES))]]


def mature_before(frame: pd.DataFrame, maturity_days: int) -> pd.Timestamp:
    """Orders created before this time have mature labels: ``maturity_days`` before the store's last order."""
    return frame[TIME].max() - pd.Timedelta(days=maturity_days)
