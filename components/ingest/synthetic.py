"""A synthetic Shopify store, written as the bulk JSONL that ``bulk_query.graphql`` would return.

Why synthetic: the pipeline, its tests and demos need a store with realistic behaviour and no
credentials. Behaviour is a small generative model, vectorized with numpy so a 10x store takes seconds:

* customers arrive over the whole history (store growth, weekly cycle, November/December peaks);
* each buys again at a customer-specific rate (gamma-distributed: a few loyal, many occasional)
  until they churn (one-time buyers, plus an exponential lifetime for the rest), so the chance of a
  repeat purchase decays with time since the last order: recency, frequency and monetary value
  predict the repeat-purchase label, with Poisson noise keeping it far from trivial;
* customers who refund a lot come back less, discount seekers use more codes (BFCM above all);
* baskets lean to a favourite product category; a few orders are risky, and most high-risk ones
  are cancelled; customers pay in several presentment currencies (shop money is USD);
* with ``co_purchase`` / ``seasonal`` (off by default, so the default store's bytes stay what they were),
  products have complements bought with them and after them, and some sell only in their season:
  structure a recommender can learn and popularity cannot (``bench/recommendations.py`` measures both).

``process="bgnbd"`` draws purchase timing and dropout from BG/NBD instead (Fader, Hardie & Lee 2005,
the published CDNOW estimates: r = 0.243, alpha = 4.414, a = 0.793, b = 2.426, weekly): each customer
buys at a gamma-distributed rate while alive and, after each repeat order, drops out for good with a
beta-distributed probability, on the seasonal clock (peaks hold more repeat orders too). The rates are
scaled by one factor so the store holds exactly ``config.orders`` orders. Store signals that BG/NBD
cannot see move the dropout odds: customers who refund a lot (and buy less) and discount seekers drop
out sooner, customers whose baskets keep to their favourite category stay longer. It needs a store
about as sparse as CDNOW's (a few orders per customer: BG/NBD's dropout ends most customers after a
handful of repeats); the default store's ten orders per customer would all go to a few customers who
never drop out, so the default stays on the first process. ``bench/model.py`` measures the model on both.

Deterministic by ``config.seed``: the same config always writes the same bytes, so the ingest
content hash (and snapshot) is stable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import BinaryIO

import numpy as np
import orjson

from storeflow.components.config import SyntheticStoreConfig
from storeflow.components.ingest.synthetic_fraud import APP_PROVIDER, FraudColumns, add_fraud, order_tails

# Bump when the same config would produce different output, so cached stores are regenerated.
GENERATOR_VERSION = 2

DAY = 86_400
SHOP_CURRENCY = "USD"
# Presentment currency: share of customers, and units per USD.
CURRENCIES = {"USD": (0.62, 1.0), "EUR": (0.14, 0.92), "GBP": (0.10, 0.79), "CAD": (0.08, 1.36), "AUD": (0.06, 1.52)}
# Product type: (share of products, median price in USD).
CATEGORIES = {
    "Coffee": (0.30, 18.0),
    "Tea": (0.18, 14.0),
    "Brewing Gear": (0.14, 45.0),
    "Mugs": (0.12, 22.0),
    "Snacks": (0.12, 7.5),
    "Apparel": (0.09, 34.0),
    "Gift Cards": (0.05, 50.0),
}
VENDORS = ["Northside Roasters", "Kettle & Co", "Field Goods", "Daybreak Supply", "Mori Ceramics"]
EMAIL_DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "icloud.com", "proton.me", "hey.com"]

ONE_TIME_SHARE = 0.3  # customers whose only repeats are rare win-backs
WINBACK_SHARE = 0.06  # repeat orders that ignore churn
RATE_SHAPE = 0.6  # gamma shape of buying rates: small = a few loyal, many occasional
MEAN_LIFETIME_DAYS = 420  # the others churn after an exponential lifetime
FAVOURITE_CATEGORY_SHARE = 0.65
PROCESSES = ("gamma-churn", "bgnbd")
# Co-purchase structure (config.co_purchase): each product's complements come from these categories.
COMPLEMENTS_PER_PRODUCT = 3
COMPLEMENT_CATEGORIES = {
    "Coffee": ("Brewing Gear", "Mugs", "Snacks"), "Tea": ("Mugs", "Snacks", "Brewing Gear"),
    "Brewing Gear": ("Coffee", "Coffee", "Mugs"), "Mugs": ("Coffee", "Tea", "Snacks"),
    "Snacks": ("Coffee", "Tea", "Mugs"), "Apparel": ("Mugs", "Apparel", "Gift Cards"),
    "Gift Cards": ("Apparel", "Mugs", "Coffee"),
}
# Seasonal products (config.seasonal): each category's least sold tenth, alternately winter and summer.
SEASONAL_SHARE = 0.1
WINTER_MONTHS, SUMMER_MONTHS = (11, 12), (6, 7, 8)  # how repeat purchases are drawn (see the module docstring)

# BG/NBD for the CDNOW panel (Fader, Hardie & Lee 2005), in weeks: rate ~ Gamma(r, alpha), dropout ~ Beta(a, b).
BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
MAX_REPEATS = 500  # per customer: bounds the draws when a dropout probability is near zero
MAX_WEEKLY_RATE = 0.75  # the scaled rates stop here: the most loyal customer orders about every 9 days
# Dropout log-odds per unit of each store signal (refund propensity, discount seeking, category focus).
DROPOUT_REFUNDS, DROPOUT_DISCOUNTS, DROPOUT_FOCUS = 10.0, 0.6, -4.0
REFUND_SHARE = 0.065  # mean refund propensity; ~5% of orders, as refunders buy less often
RISK_LEVELS = np.array(["LOW", "MEDIUM", "HIGH"])
RISK_SHARES = [0.93, 0.05, 0.02]
FREE_SHIPPING_FROM, SHIPPING = 50.0, 6.95

# Shopify-like id ranges, so ids look like the real thing and never collide across resources.
ID_BASE = {"Order": 5_100_000_000_000, "Customer": 7_200_000_000_000, "Product": 8_300_000_000,
           "LineItem": 13_400_000_000_000, "Refund": 910_000_000_000}


@dataclass
class _Store:
    """Columns of every record, numpy arrays indexed by record."""

    customer_created: np.ndarray
    customer_updated: np.ndarray
    emails: list[str]
    product_type: np.ndarray
    product_price: np.ndarray
    product_vendor: np.ndarray
    product_created: np.ndarray
    order_customer: np.ndarray
    order_time: np.ndarray
    order_currency: np.ndarray
    order_subtotal: np.ndarray
    order_discount: np.ndarray
    order_total: np.ndarray
    order_risk: np.ndarray
    order_risk_app: np.ndarray  # a second (app) assessment, "" where there is none
    order_cancelled: np.ndarray  # seconds, -1 where not cancelled
    order_refund_time: np.ndarray  # seconds, -1 where not refunded
    order_refund_amount: np.ndarray
    order_status: np.ndarray
    item_order: np.ndarray
    item_product: np.ndarray
    item_quantity: np.ndarray
    fraud: FraudColumns | None = None  # config.fraud_rate > 0: the orders' risk fields (synthetic_fraud)


def generate_store(config: SyntheticStoreConfig, path: Path, process: str = "gamma-churn") -> Path:
    """Write the store as bulk JSONL to ``path`` (atomically) and return ``path``; ``process`` is how
    repeat purchases are drawn (one of ``PROCESSES``)."""
    if process not in PROCESSES:
        raise ValueError(f"unknown purchase process {process!r}; one of {', '.join(PROCESSES)}")
    store = _simulate(config, process)
    if config.fraud_rate > 0:
        end = _end_seconds(config)
        store = add_fraud(store, config.fraud_rate, config.seed, end - config.days * DAY, end, list(CATEGORIES))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as out:
            _write_jsonl(store, out)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _end_seconds(config: SyntheticStoreConfig) -> int:
    end = config.end if config.end.tzinfo else config.end.replace(tzinfo=timezone.utc)
    return int(end.timestamp())


def _daily_intensity(start: int, days: int) -> np.ndarray:
    """Relative order volume per day: growth x weekly cycle x seasonal peaks."""
    day = np.arange(days)
    dates = (np.datetime64(start, "s") + day * np.timedelta64(DAY, "s")).astype("datetime64[D]")
    weekday = (dates.astype(np.int64) + 3) % 7  # 0 = Monday
    month = dates.astype("datetime64[M]").astype(np.int64) % 12 + 1
    dom = (dates - dates.astype("datetime64[M]")).astype(np.int64) + 1
    weekly = np.array([1.05, 1.0, 1.0, 0.98, 0.95, 0.88, 1.14])[weekday]
    seasonal = np.ones(days)
    seasonal[month == 11] = 1.3
    seasonal[(month == 11) & (dom >= 24)] = 2.6  # Black Friday / Cyber Monday week
    seasonal[(month == 12) & (dom <= 20)] = 1.7  # gift shopping
    seasonal[(month == 12) & (dom > 24)] = 0.8
    seasonal[(month == 7) | (month == 8)] = 0.9
    growth = np.exp(0.3 * day / 365)
    return weekly * seasonal * growth


def _simulate(config: SyntheticStoreConfig, process: str = "gamma-churn") -> _Store:
    rng = np.random.default_rng(config.seed)
    end = _end_seconds(config)
    start = end - config.days * DAY
    intensity = _daily_intensity(start, config.days)
    cdf = np.concatenate([[0.0], np.cumsum(intensity)])
    cdf /= cdf[-1]
    edges = start + DAY * np.arange(config.days + 1, dtype=np.float64)

    def time_at(u: np.ndarray) -> np.ndarray:
        """Seconds at seasonal quantile u; the hour of day follows a diurnal profile."""
        day = np.floor(np.interp(u, cdf, edges))
        day = start + DAY * np.floor((day - start) / DAY)
        hour = rng.choice(24, size=len(u), p=_HOURS)
        return (day + hour * 3600 + rng.integers(0, 3600, len(u))).astype(np.int64)

    # Customers: arrival, then loyalty, churn and habits (the chosen purchase process).
    n_customers = config.customers
    buyers = min(n_customers, config.orders)
    first_u = np.sort(rng.random(n_customers))
    first_order = time_at(first_u)
    first_order = np.minimum(first_order, end - 1)
    if process == "bgnbd":
        refund_propensity = rng.beta(1.0, 1.0 / REFUND_SHARE - 1.0, n_customers)
        discount_seeker = rng.random(n_customers) < 0.25
        focus = rng.beta(6.5, 6.5 * (1 - FAVOURITE_CATEGORY_SHARE) / FAVOURITE_CATEGORY_SHARE, n_customers)
        rate = rng.gamma(BGNBD["r"], 1.0 / BGNBD["alpha"], n_customers) * np.exp(-6.0 * refund_propensity)
        dropout = rng.beta(BGNBD["a"], BGNBD["b"], n_customers)
        odds = np.log(dropout / (1 - dropout)) + (DROPOUT_REFUNDS * refund_propensity + DROPOUT_DISCOUNTS * discount_seeker
                                                  + DROPOUT_FOCUS * (focus - FAVOURITE_CATEGORY_SHARE))
        dropout = 1 / (1 + np.exp(-odds))
        weeks = np.where(np.arange(n_customers) < buyers, (1.0 - first_u) * config.days / 7, 0.0)  # seasonal clock
        repeat_customer, repeat_u = _bgnbd_repeats(rng, rate, dropout, weeks, config.orders - buyers)
        repeat_u = first_u[repeat_customer] + repeat_u * 7 / config.days
        favourite = rng.choice(len(CATEGORIES), n_customers, p=_shares(CATEGORIES))
        currency = rng.choice(list(CURRENCIES), n_customers, p=_shares(CURRENCIES))

        # Orders: each buyer's first order, then the repeats, on the seasonal clock.
        repeat_time = np.maximum(time_at(np.minimum(repeat_u, 1.0)), first_order[repeat_customer] + 3600)
    else:
        rate = rng.gamma(RATE_SHAPE, 1.0, n_customers)
        refund_propensity = rng.beta(1.0, 1.0 / REFUND_SHARE - 1.0, n_customers)
        rate *= np.exp(-6.0 * refund_propensity)  # unhappy customers come back less
        discount_seeker = rng.random(n_customers) < 0.25
        one_time = rng.random(n_customers) < ONE_TIME_SHARE
        lifetime = rng.exponential(MEAN_LIFETIME_DAYS * DAY, n_customers)
        churn_u = np.interp(np.minimum(first_order + lifetime, end), edges, cdf)
        exposure = np.where(one_time, 0.0, np.maximum(churn_u - first_u, 0.0))
        exposure[buyers:] = 0.0
        # Most repeats fall in the active window; a few are win-backs at any time after the first order,
        # churned and one-time buyers included, so a long silence lowers the odds but never to zero.
        active_until = np.where(exposure > 0, first_u + exposure, first_u)
        reachable = np.where(np.arange(n_customers) < buyers, 1.0 - first_u, 0.0)
        repeats = config.orders - buyers
        winbacks = rng.binomial(repeats, WINBACK_SHARE)
        counts = _spread(rng, repeats - winbacks, rate * exposure)
        sporadic = _spread(rng, winbacks, reachable)
        focus = np.full(n_customers, FAVOURITE_CATEGORY_SHARE)
        favourite = rng.choice(len(CATEGORIES), n_customers, p=_shares(CATEGORIES))
        currency = rng.choice(list(CURRENCIES), n_customers, p=_shares(CURRENCIES))

        # Orders: each buyer's first order, then repeats spread over their active window.
        repeat_customer = np.concatenate([np.repeat(np.arange(n_customers), counts),
                                          np.repeat(np.arange(n_customers), sporadic)])
        lo = first_u[repeat_customer]
        hi = np.concatenate([np.repeat(active_until, counts), np.ones(sporadic.sum())])
        repeat_time = np.maximum(time_at(lo + rng.random(len(lo)) * (hi - lo)), first_order[repeat_customer] + 3600)
    order_customer = np.concatenate([np.arange(buyers), repeat_customer])
    order_time = np.minimum(np.concatenate([first_order[:buyers], repeat_time]), end - 1)
    chronological = np.argsort(order_time, kind="stable")
    order_customer, order_time = order_customer[chronological], order_time[chronological]
    n_orders = len(order_time)

    # Products, and baskets leaning to the favourite category.
    categories = list(CATEGORIES)
    product_type = np.sort(rng.choice(len(categories), config.products, p=_shares(CATEGORIES)))
    median_price = np.array([price for _, price in CATEGORIES.values()])
    product_price = np.round(median_price[product_type] * rng.lognormal(0, 0.35, config.products), 0) - 0.01
    product_price = np.maximum(product_price, 2.99)
    first_product = np.searchsorted(product_type, np.arange(len(categories)))
    per_category = np.bincount(product_type, minlength=len(categories))
    items_per_order = np.minimum(1 + rng.poisson(0.7, n_orders), 8)
    item_order = np.repeat(np.arange(n_orders), items_per_order)
    n_items = len(item_order)
    category = np.where(
        rng.random(n_items) < focus[order_customer[item_order]],
        favourite[order_customer[item_order]],
        rng.choice(len(categories), n_items, p=_shares(CATEGORIES)),
    )
    category = np.where(per_category[category] > 0, category, product_type[0])
    popularity = rng.random(n_items) ** 1.6  # a few best sellers per category
    item_product = first_product[category] + (popularity * per_category[category]).astype(np.int64)
    if config.co_purchase > 0 or config.seasonal > 0:
        item_product = _basket_structure(config, item_product, item_order, order_customer, order_time, product_type)
    item_quantity = np.minimum(rng.geometric(0.72, n_items), 6)
    subtotal = np.round(np.bincount(item_order, product_price[item_product] * item_quantity, n_orders), 2)

    # Discounts (BFCM and discount seekers), shipping, totals.
    dates = order_time.astype("datetime64[s]").astype("datetime64[D]")
    month = dates.astype("datetime64[M]").astype(np.int64) % 12 + 1
    dom = (dates - dates.astype("datetime64[M]")).astype(np.int64) + 1
    bfcm = ((month == 11) & (dom >= 24)) | ((month == 12) & (dom <= 2))
    discount_p = np.where(discount_seeker[order_customer], 0.55, 0.12) + np.where(bfcm, 0.35, 0.0)
    has_discount = rng.random(n_orders) < np.minimum(discount_p, 0.95)
    discount = np.round(subtotal * np.where(has_discount, rng.choice([0.1, 0.15, 0.2, 0.25], n_orders), 0.0), 2)
    shipping = np.where(subtotal - discount >= FREE_SHIPPING_FROM, 0.0, SHIPPING)
    total = np.round(subtotal - discount + shipping, 2)

    # Risk, cancellations, refunds.
    risk = rng.choice(len(RISK_LEVELS), n_orders, p=RISK_SHARES)
    app_risk = np.where(rng.random(n_orders) < 0.15, rng.choice(len(RISK_LEVELS), n_orders, p=[0.7, 0.2, 0.1]), -1)
    worst = np.maximum(risk, app_risk)
    cancelled = np.where(
        ((worst == 2) & (rng.random(n_orders) < 0.6)) | (rng.random(n_orders) < 0.005),
        np.minimum(order_time + rng.integers(3600, 2 * DAY, n_orders), end),
        -1,
    )
    refunded = (cancelled < 0) & (rng.random(n_orders) < refund_propensity[order_customer])
    full = rng.random(n_orders) < 0.7
    refund_amount = np.where(refunded, np.round(total * np.where(full, 1.0, rng.uniform(0.2, 0.7, n_orders)), 2), 0.0)
    refund_time = np.where(refunded, np.minimum(order_time + rng.integers(2 * DAY, 30 * DAY, n_orders), end), -1)
    status = np.where(cancelled >= 0, "VOIDED",
                      np.where(refunded, np.where(full, "REFUNDED", "PARTIALLY_REFUNDED"), "PAID"))

    last_order = np.full(n_customers, -1, dtype=np.int64)
    np.maximum.at(last_order, order_customer, order_time)
    customer_created = first_order - rng.integers(0, 600, n_customers)
    local = [f"shopper{index}" for index in range(n_customers)]
    domains = rng.choice(EMAIL_DOMAINS, n_customers)
    return _Store(
        customer_created=customer_created,
        customer_updated=np.maximum(last_order, customer_created),
        emails=[f"{name}@{domain}" for name, domain in zip(local, domains.tolist())],
        product_type=np.array(categories)[product_type],
        product_price=product_price,
        product_vendor=rng.choice(VENDORS, config.products),
        product_created=start - rng.integers(DAY, 365 * DAY, config.products),
        order_customer=order_customer,
        order_time=order_time,
        order_currency=currency[order_customer],
        order_subtotal=subtotal,
        order_discount=discount,
        order_total=total,
        order_risk=RISK_LEVELS[risk],
        order_risk_app=np.where(app_risk >= 0, RISK_LEVELS[np.maximum(app_risk, 0)], ""),
        order_cancelled=cancelled,
        order_refund_time=refund_time,
        order_refund_amount=refund_amount,
        order_status=status,
        item_order=item_order,
        item_product=item_product,
        item_quantity=item_quantity,
    )


def _basket_structure(config: SyntheticStoreConfig, item_product: np.ndarray, item_order: np.ndarray,
                      order_customer: np.ndarray, order_time: np.ndarray, product_type: np.ndarray) -> np.ndarray:
    """What a recommender can learn beyond category leaning (``config.co_purchase``, ``config.seasonal``):
    complements bought together and as follow-ups, and products that sell only in their season.

    Drawn from a random stream of its own, so everything else in the store (customers, order times,
    quantities, prices' draws, refunds) is what the same seed gives without it; only products change."""
    rng = np.random.default_rng([config.seed, 15])
    categories = list(CATEGORIES)
    n_products, n_orders = len(product_type), len(order_time)
    first_product = np.searchsorted(product_type, np.arange(len(categories)))
    per_category = np.bincount(product_type, minlength=len(categories))
    products = item_product.copy()
    order_first_item = np.searchsorted(item_order, np.arange(n_orders))  # every order has an item
    if config.co_purchase > 0:
        complements = np.empty((n_products, COMPLEMENTS_PER_PRODUCT), dtype=np.int64)
        for c, name in enumerate(categories):
            own = np.flatnonzero(product_type == c)
            for j, partner in enumerate(COMPLEMENT_CATEGORIES[name]):
                size = per_category[categories.index(partner)]
                if size == 0:  # a small catalog without that category: any product
                    complements[own, j] = rng.integers(0, n_products, len(own))
                else:  # leaning to the partner category's best sellers, like every basket
                    complements[own, j] = (first_product[categories.index(partner)]
                                           + (rng.random(len(own)) ** 1.6 * size).astype(np.int64))
        # A repeat order opens with a follow-up of the customer's previous order (beans for the grinder).
        by_customer = np.lexsort((np.arange(n_orders), order_customer))  # orders are chronological
        repeat = order_customer[by_customer[1:]] == order_customer[by_customer[:-1]]
        later, earlier = by_customer[1:][repeat], by_customer[:-1][repeat]
        follow = rng.random(len(later)) < config.co_purchase
        products[order_first_item[later[follow]]] = complements[
            item_product[order_first_item[earlier[follow]]], rng.integers(0, COMPLEMENTS_PER_PRODUCT, follow.sum())]
        # A basket's further items complement its first.
        anchor = products[order_first_item[item_order]]
        pick = (np.arange(len(products)) != order_first_item[item_order]) & (rng.random(len(products)) < config.co_purchase)
        products[pick] = complements[anchor[pick], rng.integers(0, COMPLEMENTS_PER_PRODUCT, pick.sum())]
    if config.seasonal > 0:
        rank = np.arange(n_products) - first_product[product_type]  # 0: the category's best seller
        kept = np.ceil(per_category * (1 - SEASONAL_SHARE)).astype(np.int64)  # a category's year-round products
        season_of = np.where(rank >= kept[product_type], 1 + rank % 2, 0)  # 1 winter, 2 summer, 0 all year
        month = order_time.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64) % 12 + 1
        season = np.select([np.isin(month, WINTER_MONTHS), np.isin(month, SUMMER_MONTHS)], [1, 2], 0)[item_order]
        off = (season_of[products] > 0) & (season_of[products] != season)  # out of season: a year-round one
        kind = product_type[products[off]]
        products[off] = first_product[kind] + (rng.random(off.sum()) * kept[kind]).astype(np.int64)
        for which in (1, 2):
            pool = np.flatnonzero(season_of == which)
            if len(pool):  # in season, this share of the items are the season's products
                take = (season == which) & (rng.random(len(products)) < config.seasonal)
                products[take] = rng.choice(pool, take.sum())
    return products


def _spread(rng: np.random.Generator, total: int, weight: np.ndarray) -> np.ndarray:
    """Split exactly ``total`` orders over customers in proportion to ``weight``."""
    if total <= 0 or weight.sum() <= 0:
        return np.zeros(len(weight), dtype=np.int64)
    return rng.multinomial(total, weight / weight.sum())


def _bgnbd_repeats(rng: np.random.Generator, rate: np.ndarray, dropout: np.ndarray, weeks: np.ndarray,
                   total: int) -> tuple[np.ndarray, np.ndarray]:
    """Exactly ``total`` repeat orders of a BG/NBD process: (customer, weeks after their first order).

    Customer ``c`` buys at ``rate[c] x scale`` per week (at most ``MAX_WEEKLY_RATE``) within ``weeks[c]``
    and, after each repeat order,
    drops out with probability ``dropout[c]``. The draws (exponential gaps, when each one drops out) are
    made once; a larger ``scale`` only moves the same orders earlier, so the count grows with it and a
    bisection finds the smallest scale that reaches ``total``; the few orders over it are dropped at random."""
    alive_for = np.minimum(rng.geometric(np.clip(dropout, 1e-9, 1.0)), MAX_REPEATS)  # repeats before dropping out
    alive_for = np.where(weeks > 0, alive_for, 0)
    customer = np.repeat(np.arange(len(rate)), alive_for)
    gaps = rng.exponential(1.0, len(customer))
    start = np.concatenate([[0], np.cumsum(alive_for)[:-1]])
    cumulative = np.cumsum(gaps)
    unit_time = cumulative - np.repeat(cumulative[start] - gaps[start], alive_for) if len(customer) else cumulative
    rate, weeks = rate[customer], weeks[customer]

    def happen(scale: float) -> np.ndarray:  # a repeat order happens within the customer's weeks
        return unit_time <= np.minimum(scale * rate, MAX_WEEKLY_RATE) * weeks

    def count(scale: float) -> int:
        return int(np.count_nonzero(happen(scale)))

    if total <= 0 or count(1e12) < total:
        if total > 0:
            raise ValueError(f"the store's customers cannot place {total} repeat orders in its history; "
                             "raise synthetic.customers or days, or lower orders")
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    low, high = 0.0, 1.0
    while count(high) < total:
        low, high = high, high * 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if count(middle) < total else (low, middle)
    kept = np.sort(rng.choice(np.flatnonzero(happen(high)), total, replace=False))
    return customer[kept], unit_time[kept] / np.minimum(high * rate[kept], MAX_WEEKLY_RATE)


def _shares(table: dict[str, tuple[float, float]]) -> np.ndarray:
    shares = np.array([share for share, _ in table.values()])
    return shares / shares.sum()


_HOURS = np.array([2, 1, 1, 1, 1, 2, 3, 4, 5, 6, 6, 6, 7, 7, 6, 6, 6, 6, 7, 8, 9, 9, 7, 4], dtype=float)
_HOURS /= _HOURS.sum()


# --- writing: one %-template per record type filled from per-column Python lists, several times faster
# than building a dict per record for orjson. Free text (emails, titles, vendors) is JSON-encoded by
# orjson once per distinct value; every other field is digits, ids or enum names that need no escaping.

ORDER_LINE = (
    '{"id":"gid://shopify/Order/%d","name":"#%d","email":%s,"createdAt":%s,"updatedAt":%s,"cancelledAt":%s,'
    '"currencyCode":"%s","displayFinancialStatus":"%s",'
    '"totalPriceSet":{"shopMoney":{"amount":"%r","currencyCode":"%s"},"presentmentMoney":{"amount":"%r","currencyCode":"%s"}},'
    '"subtotalPriceSet":{"shopMoney":{"amount":"%r","currencyCode":"%s"},"presentmentMoney":{"amount":"%r","currencyCode":"%s"}},'
    '"totalDiscountsSet":{"shopMoney":{"amount":"%r","currencyCode":"%s"},"presentmentMoney":{"amount":"%r","currencyCode":"%s"}},'
    '"customer":{"id":"gid://shopify/Customer/%d"},"risk":{"assessments":[%s]},"refunds":[%s]}'
)
REFUND = '{"id":"gid://shopify/Refund/%d","createdAt":%s,"totalRefundedSet":{"shopMoney":{"amount":"%r"}}}'
LINE_ITEM_LINE = (
    '{"id":"gid://shopify/LineItem/%d","quantity":%d,"sku":%s,"title":%s,'
    '"originalUnitPriceSet":{"shopMoney":{"amount":"%r"}},"product":{"id":"gid://shopify/Product/%d"},'
    '"__parentId":"gid://shopify/Order/%d"}'
)
CUSTOMER_LINE = '{"id":"gid://shopify/Customer/%d","defaultEmailAddress":{"emailAddress":%s},"createdAt":%s,"updatedAt":%s}'
PRODUCT_LINE = '{"id":"gid://shopify/Product/%d","title":%s,"productType":%s,"vendor":%s,"createdAt":%s}'


def _json(values: list) -> list[str]:
    return [orjson.dumps(value).decode() for value in values]


def _iso(seconds: np.ndarray) -> list[str]:
    """JSON timestamps as Shopify writes them ("2024-11-29T18:03:12Z"); null where seconds < 0."""
    text = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s").astype(object)
    text = '"' + text + 'Z"'
    text[seconds < 0] = "null"
    return text.tolist()


def _money(values: np.ndarray) -> list[float]:
    """Rounded to cents; ``%r`` then prints Shopify's Decimal style ("24.99", "25.0")."""
    return np.round(values, 2).tolist()


WRITE_CHUNK_ORDERS = 100_000  # orders (with their line items) formatted at a time: bounds the writer's memory


def _write_jsonl(store: _Store, out: BinaryIO) -> None:
    """Like Shopify's (ungrouped) output: each order, then its line items; then customers and products.

    Orders are formatted a chunk at a time, so a 5M-order store needs the memory of its numpy columns and
    one chunk of text, not of every line at once (which was 11.5 GB at 5M orders)."""
    n_orders, n_customers, n_products = len(store.order_time), len(store.emails), len(store.product_price)
    customer_ids = (ID_BASE["Customer"] + np.arange(n_customers) * 5 + 1).tolist()
    product_ids = (ID_BASE["Product"] + np.arange(n_products) * 3 + 2).tolist()
    emails = _json(store.emails)
    titles = _json([f"{kind} no. {index + 1}" for index, kind in enumerate(store.product_type.tolist())])
    skus = _json([f"SKU-{index + 1:05d}" for index in range(n_products)])
    prices = _money(store.product_price)
    per_usd = {code: units for code, (_, units) in CURRENCIES.items()}
    codes, which = np.unique(store.order_currency, return_inverse=True)
    rate = np.array([per_usd[code] for code in codes.tolist()])[which]
    updated = np.maximum.reduce([store.order_time, store.order_refund_time, store.order_cancelled])
    refunded = store.order_refund_time >= 0
    refund_number = np.cumsum(refunded)  # the k-th refunded order's refund is ID_BASE + 11 k
    item_start = np.searchsorted(store.item_order, np.arange(n_orders + 1))
    for first in range(0, n_orders, WRITE_CHUNK_ORDERS):
        chunk = slice(first, min(first + WRITE_CHUNK_ORDERS, n_orders))
        items = slice(int(item_start[chunk.start]), int(item_start[chunk.stop]))
        order_lines = _order_lines(store, chunk, rate[chunk], updated[chunk], refunded[chunk],
                                   refund_number[chunk], emails, customer_ids)
        item_order = store.item_order[items]
        order_ids = ID_BASE["Order"] + item_order * 7 + 3
        item_ids = ID_BASE["LineItem"] + np.arange(items.start, items.stop) * 2 + 1
        item_lines = [
            LINE_ITEM_LINE % (item_id, quantity, skus[p], titles[p], prices[p], product_ids[p], order_id)
            for item_id, quantity, p, order_id in zip(item_ids.tolist(), store.item_quantity[items].tolist(),
                                                      store.item_product[items].tolist(), order_ids.tolist())
        ]
        starts = (item_start[chunk.start:chunk.stop + 1] - items.start).tolist()
        batch: list[str] = []
        for index, line in enumerate(order_lines):
            batch.append(line)
            batch.extend(item_lines[starts[index]:starts[index + 1]])
        out.write(("\n".join(batch) + "\n").encode())
    customer_lines = [
        CUSTOMER_LINE % row
        for row in zip(customer_ids, emails, _iso(store.customer_created), _iso(store.customer_updated))
    ]
    product_lines = [
        PRODUCT_LINE % row
        for row in zip(product_ids, titles, _json(store.product_type.tolist()), _json(store.product_vendor.tolist()),
                       _iso(store.product_created))
    ]
    out.write(("\n".join(customer_lines + product_lines) + "\n").encode())


def _order_lines(store: _Store, chunk: slice, rate: np.ndarray, updated: np.ndarray, refunded: np.ndarray,
                 refund_number: np.ndarray, emails: list[str], customer_ids: list[int]) -> list[str]:
    """The JSON lines of orders ``chunk`` (without their line items)."""
    index = np.arange(chunk.start, chunk.stop)
    order_ids = (ID_BASE["Order"] + index * 7 + 3).tolist()
    risk = ['{"riskLevel":"%s"}' % level for level in store.order_risk[chunk].tolist()]
    assessments = [f'{own},{{"riskLevel":"{extra}"}}' if extra else own
                   for own, extra in zip(risk, store.order_risk_app[chunk].tolist())]
    if store.fraud is not None:  # who assessed: Shopify (provider null) or the app
        assessments = [f'{{"riskLevel":"{own}","provider":null}}'
                       + (f',{{"riskLevel":"{extra}","provider":{{"title":"{APP_PROVIDER}"}}}}' if extra else "")
                       for own, extra in zip(store.order_risk[chunk].tolist(), store.order_risk_app[chunk].tolist())]
    refunds = [""] * len(index)
    where = np.flatnonzero(refunded)
    for position, refund in zip(where.tolist(), zip(
        (ID_BASE["Refund"] + 11 * refund_number[where]).tolist(), _iso(store.order_refund_time[chunk][where]),
        _money(store.order_refund_amount[chunk][where]),
    )):
        refunds[position] = REFUND % refund
    money = {
        name: (_money(values[chunk]), _money(values[chunk] * rate))
        for name, values in (("total", store.order_total), ("subtotal", store.order_subtotal),
                             ("discount", store.order_discount))
    }
    lines = [
        ORDER_LINE % (order_id, 1001 + i, emails[c], created, updated_at, cancelled, SHOP_CURRENCY, status,
                      total, SHOP_CURRENCY, total_p, cur, sub, SHOP_CURRENCY, sub_p, cur,
                      disc, SHOP_CURRENCY, disc_p, cur, customer_ids[c], risks, refund)
        for order_id, i, c, created, updated_at, cancelled, status, cur, total, total_p, sub, sub_p, disc, disc_p,
        risks, refund in zip(order_ids, index.tolist(), store.order_customer[chunk].tolist(),
                             _iso(store.order_time[chunk]), _iso(updated), _iso(store.order_cancelled[chunk]),
                             store.order_status[chunk].tolist(), store.order_currency[chunk].tolist(),
                             *money["total"], *money["subtotal"], *money["discount"], assessments, refunds)
    ]
    if store.fraud is not None:
        lines = [line[:-1] + tail for line, tail in zip(lines, order_tails(store.fraud, chunk))]
    return lines
