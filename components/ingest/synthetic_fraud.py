"""Fraud in the synthetic store (``synthetic.fraud_rate`` > 0): fraudulent orders, and what a store records.

Added to the store the legitimate process made (its draws untouched; this module has its own random
stream), as campaigns a merchant meets in practice:

* ``new_account``: an account made minutes before one or two high-value orders (gift cards, gear, several
  units), shipped abroad of the billing country more often than not, at night more often than by day;
* ``burst``: several orders within the hour from one account, or from new accounts to one shipping address;
* ``discount_abuse``: new accounts (new emails) to one address over a few days, each with a welcome-sized
  discount (30-50 %);
* ``takeover``: an existing customer's account suddenly ships a high-value order to another country.

What the store records of them is not the truth but its traces, as the bulk export carries them on the order
(``Order.cancelReason``, ``Order.disputes``, refunds, ``risk.assessments``):

* Shopify's own risk assessment (``provider`` null) is HIGH on about half the fraud, LOW on a quarter;
  the merchant cancels most HIGH ones with reason FRAUD within two days (and one in ten of the legitimate
  HIGH orders the store cancels: false alarms the labels keep);
* most of the rest come back as chargebacks (``disputes: [{initiatedAs: CHARGEBACK, status: LOST | ACCEPTED |
  WON}]``) 1-11 weeks later, some as inquiries the merchant refunds (a refund after the dispute); a dispute
  after the store's end is not in the export yet, one of its last three weeks is still undecided;
* about one in eight frauds is never found out; discount abuse is only ever caught as a fraud cancellation;
* legitimate orders see a few friendly-fraud chargebacks (mostly won), cancellations for other reasons, and
  a small share ship to another country (gifts).

Every order (legitimate or not) gains the fields a risk model reads: shipping and billing address
(``countryCodeV2``, ``address1``, ``zip``), ``paymentGatewayNames``, ``cancelReason`` and ``disputes``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import orjson

DAY, HOUR = 86_400, 3_600
PATTERNS = ("new_account", "burst", "discount_abuse", "takeover")
PATTERN_SHARES = (0.40, 0.25, 0.20, 0.15)
# The customer's home country, by the presentment currency they pay in.
HOME = {"USD": ("US",), "EUR": ("DE", "FR", "NL", "IE"), "GBP": ("GB",), "CAD": ("CA",), "AUD": ("AU",)}
FRAUD_SHIP_TO = ("NG", "RU", "BR", "VN", "ID", "RO", "UA", "MX", "US", "GB")
GATEWAYS = ("shopify_payments", "paypal", "gift_card", "shop_pay_installments")
LEGIT_GATEWAY_SHARES = (0.78, 0.15, 0.04, 0.03)
STREETS = ("Main St", "Oak Ave", "Elm St", "Maple Rd", "Cedar Ln", "Pine St", "Lake Dr", "Hill Rd")
FRAUD_DOMAINS = ("gmail.com", "outlook.com", "mail.ru", "protonmail.com", "yandex.com", "tutanota.com")
HIGH_VALUE_CATEGORIES = ("Gift Cards", "Brewing Gear", "Apparel")
LEGIT_ABROAD = 0.02  # legitimate orders shipped to another country than billed (gifts, travel)
FRIENDLY_CHARGEBACKS = 0.001  # legitimate card orders disputed anyway
UNDECIDED_DAYS = 21
DISPUTE_ID_BASE = 23_000_000_000
APP_PROVIDER = "Fraud Filter"  # the title of the app behind the store's second assessments  # a dispute opened this close to the store's end is still undecided


@dataclass
class FraudColumns:
    """Per order (aligned with the store's orders): the risk fields and, for tests, the hidden truth."""

    is_fraud: np.ndarray  # bool: the truth, never written
    pattern: np.ndarray  # "" or one of PATTERNS, never written
    ship_country: np.ndarray
    bill_country: np.ndarray
    ship_address: np.ndarray  # address1
    ship_zip: np.ndarray
    gateway: np.ndarray
    cancel_reason: np.ndarray  # "" where not cancelled
    dispute_type: np.ndarray  # "" where none, CHARGEBACK or INQUIRY
    dispute_status: np.ndarray


def add_fraud(store: Any, rate: float, seed: int, start: int, end: int, categories: list[str]) -> Any:
    """The store (synthetic._Store; not imported here, it imports this module) with about ``rate`` x its orders added as fraud campaigns, every order's risk fields, and the
    store's traces of fraud (cancellations, disputes, refunds, Shopify's risk level); orders re-sorted by time."""
    if not 0 < rate <= 0.02:
        raise ValueError(f"synthetic.fraud_rate must be in (0, 0.02], got {rate}")
    rng = np.random.default_rng([seed, 16])
    n_legit, n_customers = len(store.order_time), len(store.emails)
    currency_home = {code: np.array(countries) for code, countries in HOME.items()}
    customer_currency = np.full(n_customers, "USD", dtype=object)
    customer_currency[store.order_customer] = store.order_currency
    home = np.array([rng.choice(currency_home[code]) for code in customer_currency.tolist()], dtype=object)
    home_address = np.array([f"{rng.integers(1, 999)} {STREETS[i % len(STREETS)]}" for i in range(n_customers)],
                            dtype=object)
    home_zip = np.array([f"{z:05d}" for z in rng.integers(1000, 99999, n_customers)], dtype=object)

    # Fraud campaigns, until the wanted number of fraudulent orders (the last campaign whole).
    wanted = max(1, int(round(rate * n_legit)))
    rows: list[dict] = []
    new_emails: list[str] = []
    new_created: list[int] = []
    old_buyers = np.unique(store.order_customer)
    first_order = np.full(n_customers, np.iinfo(np.int64).max)
    np.minimum.at(first_order, store.order_customer, store.order_time)
    by_category = {name: np.flatnonzero(store.product_type == name) for name in categories}
    everything = np.arange(len(store.product_price))
    pricey = [by_category[name] for name in HIGH_VALUE_CATEGORIES if len(by_category.get(name, []))]
    high_value = np.concatenate(pricey) if pricey else everything  # a tiny catalog may lack them all
    while len(rows) < wanted:
        pattern = PATTERNS[rng.choice(len(PATTERNS), p=PATTERN_SHARES)]
        t0 = int(start + 30 * DAY + rng.integers(0, end - start - 30 * DAY))
        hour = int(rng.choice(24, p=_NIGHT))
        t0 = t0 - t0 % DAY + hour * HOUR + int(rng.integers(0, HOUR))
        if t0 >= end - HOUR:
            continue
        ship = str(rng.choice(FRAUD_SHIP_TO))
        address = f"{rng.integers(1, 9999)} {rng.choice(['Warehouse Rd', 'Forwarding Way', 'Depot St', 'Freight Ave'])}"
        zip_code = f"{rng.integers(10000, 99999)}"

        def account(created: int) -> int:
            new_emails.append(f"{_handle(rng)}@{rng.choice(FRAUD_DOMAINS)}")
            new_created.append(created)
            return n_customers + len(new_emails) - 1

        if pattern == "new_account":
            customer = account(t0 - int(rng.integers(60, 1800)))
            times = [t0] + ([t0 + int(rng.integers(600, 6 * HOUR))] if rng.random() < 0.2 else [])
            bill = str(rng.choice(["US", "GB", "CA", "DE"])) if rng.random() < 0.6 else ship
            for t in times:
                rows.append(dict(customer=customer, time=t, pattern=pattern, ship=ship, bill=bill, address=address,
                                 zip=zip_code, products=rng.choice(high_value, rng.integers(2, 6)),
                                 quantity_max=3, discount=0.0))
        elif pattern == "burst":
            count = int(rng.integers(3, 9))
            times = np.sort(t0 + rng.integers(0, HOUR, count)).tolist()
            shared = rng.random() < 0.5  # one account, or a new account per order to one address
            first = account(t0 - int(rng.integers(60, 3 * DAY)))
            bill = str(rng.choice(["US", "GB", "CA"]))
            for k, t in enumerate(times):
                customer = first if shared or k == 0 else account(t - int(rng.integers(30, 600)))
                rows.append(dict(customer=customer, time=int(t), pattern=pattern, ship=ship, bill=bill,
                                 address=address, zip=zip_code, products=rng.choice(high_value, rng.integers(1, 4)),
                                 quantity_max=2, discount=0.0))
        elif pattern == "discount_abuse":
            count = int(rng.integers(2, 7))
            times = np.sort(t0 + rng.integers(0, 3 * DAY, count)).tolist()
            bill = str(rng.choice(["US", "GB", "CA"]))
            for t in times:
                customer = account(int(t) - int(rng.integers(60, 1200)))
                rows.append(dict(customer=customer, time=int(t), pattern=pattern, ship=bill, bill=bill,
                                 address=address, zip=zip_code, products=rng.choice(everything, rng.integers(1, 4)),
                                 quantity_max=1, discount=float(rng.choice([0.3, 0.4, 0.5]))))
        else:  # takeover: an existing buyer with an order before t0
            victim = int(rng.choice(old_buyers))
            if first_order[victim] >= t0:
                continue
            times = [t0] + ([t0 + int(rng.integers(300, HOUR))] if rng.random() < 0.4 else [])
            for t in times:
                rows.append(dict(customer=victim, time=t, pattern=pattern, ship=ship, bill=str(home[victim]),
                                 address=address, zip=zip_code, products=rng.choice(high_value, rng.integers(2, 5)),
                                 quantity_max=3, discount=0.0))
    n_fraud, n_new = len(rows), len(new_emails)

    # The fraud orders' baskets and money, priced like the store's.
    items_per = np.array([len(row["products"]) for row in rows])
    f_item_order = np.repeat(np.arange(n_fraud), items_per)
    f_item_product = np.concatenate([row["products"] for row in rows]).astype(np.int64)
    f_quantity = np.concatenate([rng.integers(1, row["quantity_max"] + 1, len(row["products"])) for row in rows])
    subtotal = np.round(np.bincount(f_item_order, store.product_price[f_item_product] * f_quantity, n_fraud), 2)
    discount = np.round(subtotal * np.array([row["discount"] for row in rows]), 2)
    shipping = np.where(subtotal - discount >= 50.0, 0.0, 6.95)
    total = np.round(subtotal - discount + shipping, 2)
    f_customer = np.array([row["customer"] for row in rows], dtype=np.int64)
    f_time = np.array([row["time"] for row in rows], dtype=np.int64)
    f_currency = np.array(["USD" if row["customer"] >= n_customers else customer_currency[row["customer"]]
                           for row in rows], dtype=store.order_currency.dtype)
    pattern = np.array([row["pattern"] for row in rows], dtype=object)

    # Shopify's own risk level, and what the merchant and the card networks do about it.
    takeover = pattern == "takeover"
    risk = np.where(takeover, rng.choice(3, n_fraud, p=[0.5, 0.3, 0.2]), rng.choice(3, n_fraud, p=[0.22, 0.3, 0.48]))
    caught = ((risk == 2) & (rng.random(n_fraud) < 0.75)) | ((pattern == "discount_abuse") & (rng.random(n_fraud) < 0.4))
    f_cancelled = np.where(caught, np.minimum(f_time + rng.integers(HOUR, 2 * DAY, n_fraud), end), -1)
    outcome = rng.random(n_fraud)  # not cancelled: chargeback, inquiry refunded, or never found out
    chargeback = ~caught & (pattern != "discount_abuse") & (outcome < 0.72)
    inquiry = ~caught & (pattern != "discount_abuse") & (outcome >= 0.72) & (outcome < 0.87)
    f_dispute_at = f_time + rng.integers(7 * DAY, 77 * DAY, n_fraud)
    f_dispute_type = np.where(chargeback, "CHARGEBACK", np.where(inquiry, "INQUIRY", "")).astype(object)
    f_dispute_status = np.where(chargeback, rng.choice(["LOST", "ACCEPTED", "WON"], n_fraud, p=[0.7, 0.2, 0.1]),
                                np.where(inquiry, "CHARGE_REFUNDED", "")).astype(object)
    f_refunded = inquiry & (f_dispute_at + 2 * DAY <= end)
    f_refund_time = np.where(f_refunded, f_dispute_at + rng.integers(HOUR, 2 * DAY, n_fraud), -1)

    # Legitimate orders: gateway, addresses, the store's own cancellations' reasons, friendly fraud.
    l_gateway = np.array(GATEWAYS, dtype=object)[rng.choice(len(GATEWAYS), n_legit, p=LEGIT_GATEWAY_SHARES)]
    l_home = home[store.order_customer]
    abroad = rng.random(n_legit) < LEGIT_ABROAD
    l_ship = np.where(abroad, np.array(["US", "GB", "DE", "CA", "FR", "AU"], dtype=object)[rng.integers(0, 6, n_legit)],
                      l_home)
    moved = abroad | (rng.random(n_legit) < 0.05)
    l_address = np.where(moved, [f"{a} {STREETS[a % len(STREETS)]}" for a in rng.integers(1, 999, n_legit).tolist()],
                         home_address[store.order_customer])
    l_zip = np.where(moved, [f"{z:05d}" for z in rng.integers(1000, 99999, n_legit).tolist()],
                     home_zip[store.order_customer])
    was_high = store.order_risk == "HIGH"
    l_reason = np.where(
        store.order_cancelled < 0, "",
        np.where(was_high, rng.choice(["FRAUD", "CUSTOMER", "DECLINED", "OTHER"], n_legit, p=[0.1, 0.3, 0.4, 0.2]),
                 rng.choice(["CUSTOMER", "INVENTORY", "STAFF", "OTHER"], n_legit, p=[0.6, 0.25, 0.05, 0.1]))).astype(object)
    friendly = ((store.order_cancelled < 0) & (l_gateway == "shopify_payments")
                & (rng.random(n_legit) < FRIENDLY_CHARGEBACKS))
    l_dispute_at = store.order_time + rng.integers(14 * DAY, 60 * DAY, n_legit)
    l_dispute_type = np.where(friendly, "CHARGEBACK", "").astype(object)
    l_dispute_status = np.where(friendly, rng.choice(["WON", "LOST"], n_legit, p=[0.6, 0.4]), "").astype(object)

    # Disputes not opened by the store's end are not in the export; recent ones are undecided.
    dispute_at = np.concatenate([l_dispute_at, f_dispute_at])
    dispute_type = np.concatenate([l_dispute_type, f_dispute_type])
    dispute_status = np.concatenate([l_dispute_status, f_dispute_status])
    dispute_type[dispute_at > end] = ""
    dispute_status[dispute_at > end] = ""
    undecided = (dispute_type == "CHARGEBACK") & (dispute_at > end - UNDECIDED_DAYS * DAY)
    dispute_status[undecided] = np.where(rng.random(int(undecided.sum())) < 0.5, "NEEDS_RESPONSE", "UNDER_REVIEW")

    risk_levels = np.array(["LOW", "MEDIUM", "HIGH"])
    f_status = np.where(f_cancelled >= 0, "VOIDED", np.where(f_refunded, "REFUNDED", "PAID"))
    orders = {
        "order_customer": (store.order_customer, f_customer),
        "order_time": (store.order_time, f_time),
        "order_currency": (store.order_currency, f_currency),
        "order_subtotal": (store.order_subtotal, subtotal),
        "order_discount": (store.order_discount, discount),
        "order_total": (store.order_total, total),
        "order_risk": (store.order_risk, risk_levels[risk]),
        "order_risk_app": (store.order_risk_app, np.full(n_fraud, "", dtype=store.order_risk_app.dtype)),
        "order_cancelled": (store.order_cancelled, f_cancelled),
        "order_refund_time": (store.order_refund_time, f_refund_time),
        "order_refund_amount": (store.order_refund_amount, np.where(f_refunded, total, 0.0)),
        "order_status": (store.order_status, f_status),
    }
    merged = {name: np.concatenate(parts) for name, parts in orders.items()}
    # A friendly-fraud chargeback refunds nothing; a legitimate order refunded before stays as it was.
    columns = FraudColumns(
        is_fraud=np.concatenate([np.zeros(n_legit, bool), np.ones(n_fraud, bool)]),
        pattern=np.concatenate([np.full(n_legit, "", dtype=object), pattern]),
        ship_country=np.concatenate([l_ship, [row["ship"] for row in rows]]).astype(object),
        bill_country=np.concatenate([l_home, [row["bill"] for row in rows]]).astype(object),
        ship_address=np.concatenate([l_address.astype(object), [row["address"] for row in rows]]).astype(object),
        ship_zip=np.concatenate([l_zip.astype(object), [row["zip"] for row in rows]]).astype(object),
        gateway=np.concatenate([l_gateway, np.where(rng.random(n_fraud) < 0.95, "shopify_payments", "paypal")]
                               ).astype(object),
        cancel_reason=np.concatenate([l_reason, np.where(caught, "FRAUD", "").astype(object)]),
        dispute_type=dispute_type,
        dispute_status=dispute_status,
    )
    # PayPal keeps its disputes: Shopify's order shows none.
    not_shopify = columns.gateway != "shopify_payments"
    columns.dispute_type[not_shopify & (dispute_type == "CHARGEBACK")] = ""
    columns.dispute_status[columns.dispute_type == ""] = ""

    order = np.argsort(merged["order_time"], kind="stable")
    merged = {name: values[order] for name, values in merged.items()}
    columns = FraudColumns(**{f.name: getattr(columns, f.name)[order] for f in fields(FraudColumns)})
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    item_order = np.concatenate([position[store.item_order], position[n_legit + f_item_order]])
    item_product = np.concatenate([store.item_product, f_item_product])
    item_quantity = np.concatenate([store.item_quantity, f_quantity])
    by_order = np.argsort(item_order, kind="stable")

    customer_created = np.concatenate([store.customer_created, np.array(new_created, dtype=np.int64)])
    last_order = np.full(n_customers + n_new, -1, dtype=np.int64)
    np.maximum.at(last_order, merged["order_customer"], merged["order_time"])
    return replace(
        store, **merged,
        emails=store.emails + new_emails,
        customer_created=customer_created,
        customer_updated=np.maximum(last_order, customer_created),
        item_order=item_order[by_order], item_product=item_product[by_order], item_quantity=item_quantity[by_order],
        fraud=columns,
    )


def _handle(rng: np.random.Generator) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return "".join(rng.choice(list(letters), int(rng.integers(5, 10)))) + str(int(rng.integers(10, 9999)))


def order_tails(columns: FraudColumns, chunk: slice) -> list[str]:
    """The risk fields of orders ``chunk`` as the end of their JSON lines (after ``"refunds":[...]``)."""
    out = []
    for index, (ship, bill, address, zip_code, gateway, reason, kind, status) in enumerate(zip(
        columns.ship_country[chunk].tolist(), columns.bill_country[chunk].tolist(),
        columns.ship_address[chunk].tolist(), columns.ship_zip[chunk].tolist(), columns.gateway[chunk].tolist(),
        columns.cancel_reason[chunk].tolist(), columns.dispute_type[chunk].tolist(),
        columns.dispute_status[chunk].tolist(),
    ), start=chunk.start):
        disputes = (f'{{"id":"gid://shopify/ShopifyPaymentsDispute/{DISPUTE_ID_BASE + 13 * index}",'
                    f'"initiatedAs":"{kind}","status":"{status}"}}' if kind else "")
        out.append(
            f',"cancelReason":{orjson.dumps(reason or None).decode()},"paymentGatewayNames":["{gateway}"],'
            f'"shippingAddress":{{"address1":{orjson.dumps(address).decode()},"zip":"{zip_code}","countryCodeV2":"{ship}"}},'
            f'"billingAddress":{{"countryCodeV2":"{bill}"}},"disputes":[{disputes}]}}'
        )
    return out


# Fraud happens at night more than legitimate orders do (UTC hours).
_NIGHT = np.array([6, 7, 7, 7, 6, 5, 4, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 5, 5, 6], dtype=float)
_NIGHT /= _NIGHT.sum()
