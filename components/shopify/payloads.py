"""Webhook payloads (Shopify's REST JSON shapes) -> rows of the normalized tables (``tables.SCHEMAS``).

Each topic has a pydantic model of every field storeflow reads, typed as strictly as the tables and the
journal store them (ids fit int64, timestamps parse and fit pandas' range, amounts are finite numbers or
numeric strings). The receiver validates with it before answering (400 naming the field), and the applier
builds its rows from the validated model, so a payload that passed the door is one the applier can store.
Fields storeflow does not read are ignored.

Amounts are the shop-currency ``*_set.shop_money`` values, as the bulk export reads them; webhooks do
not carry order risk, so ``risk_level`` stays null until the next bulk pull brings ``risk.assessments``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from storeflow.components.tables import MAX_AMOUNT

# Each carries the whole order; the newest updated_at wins, so an edit or a cancellation replaces it.
ORDER_TOPICS = frozenset({"orders/create", "orders/paid", "orders/updated", "orders/cancelled"})
REFUND_TOPICS = frozenset({"refunds/create"})
PRIVACY_TOPICS = frozenset({"customers/redact", "customers/data_request", "shop/redact"})
TOPICS = ORDER_TOPICS | REFUND_TOPICS | PRIVACY_TOPICS | {"app/uninstalled"}

INT64_MAX = 2**63 - 1  # the tables' int64 and SQLite's INTEGER
# pandas stores timestamps as int64 nanoseconds: later years do not fit; nothing Shopify sends is older.
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(2262, 1, 1, tzinfo=timezone.utc)


class PayloadError(ValueError):
    """A webhook body that does not have the shape of its topic."""


def _text_only(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 timestamp string")
    return value


def _in_range(value: datetime) -> datetime:
    value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)  # naive: UTC, as ingest reads it
    if not EARLIEST <= value < LATEST:
        raise ValueError(f"must be between {EARLIEST.year} and {LATEST.year}")
    return value.astimezone(timezone.utc)


Id = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]
Count = Annotated[StrictInt, Field(ge=-INT64_MAX, le=INT64_MAX)]
Amount = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_AMOUNT, le=MAX_AMOUNT)]  # "42.50"; a number works too
Timestamp = Annotated[datetime, BeforeValidator(_text_only), AfterValidator(_in_range)]


class _Shape(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ShopMoney(_Shape):
    amount: Amount | None = None


class MoneySet(_Shape):
    shop_money: ShopMoney | None = None


class Customer(_Shape):
    id: Id
    email: StrictStr | None = None


class LineItem(_Shape):
    id: Id
    product_id: Id | None = None
    sku: StrictStr | None = None
    title: StrictStr | None = None
    quantity: Count | None = None
    price: Amount | None = None
    price_set: MoneySet | None = None


class Order(_Shape):
    id: Id
    name: StrictStr | None = None
    email: StrictStr | None = None
    contact_email: StrictStr | None = None
    customer: Customer | None = None  # None: guest checkout
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    cancelled_at: Timestamp | None = None
    currency: StrictStr | None = None
    presentment_currency: StrictStr | None = None
    total_price: Amount | None = None
    total_price_set: MoneySet | None = None
    subtotal_price: Amount | None = None
    subtotal_price_set: MoneySet | None = None
    total_discounts: Amount | None = None
    total_discounts_set: MoneySet | None = None
    financial_status: StrictStr | None = None
    line_items: list[LineItem] | None = None


class Transaction(_Shape):
    kind: StrictStr | None = None
    status: StrictStr | None = None
    amount: Amount | None = None


class RefundLineItem(_Shape):
    subtotal: Amount | None = None
    subtotal_set: MoneySet | None = None


class Refund(_Shape):
    id: Id
    order_id: Id
    created_at: Timestamp | None = None
    transactions: list[Transaction] | None = None
    refund_line_items: list[RefundLineItem] | None = None


class DataRequestId(_Shape):
    id: Id | None = None


class CustomerRequest(_Shape):
    """customers/redact and customers/data_request."""

    customer: Customer
    orders_to_redact: list[Id] | None = None
    orders_requested: list[Id] | None = None
    data_request: DataRequestId | None = None


class AnyObject(_Shape):
    """shop/redact, app/uninstalled: the shop comes from the signed header; the body must be an object."""


MODELS: dict[str, type[_Shape]] = {
    **dict.fromkeys(ORDER_TOPICS, Order), **dict.fromkeys(REFUND_TOPICS, Refund),
    "customers/redact": CustomerRequest, "customers/data_request": CustomerRequest,
    "shop/redact": AnyObject, "app/uninstalled": AnyObject,
}
assert set(MODELS) == TOPICS


def describe(exc: ValidationError, values: bool = True) -> str:
    """``field 'line_items[0].id': Input should be a valid integer (got 'x')``, one clause per problem.

    ``values=False`` leaves the offending values out (dead-letter reasons outlive erasure requests).
    """
    problems = []
    for error in exc.errors(include_url=False):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".") or "body"
        got = f" (got {_short(error['input'])})" if values and error["type"] != "missing" else ""
        problems.append(f"field '{path}': {error['msg']}{got}")
    return "; ".join(problems)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse(topic: str, payload: Any, values: bool = True) -> _Shape:
    """The topic's model of ``payload``; :class:`PayloadError` naming every wrong field otherwise."""
    if not isinstance(payload, dict):
        raise PayloadError(f"{topic} body must be a JSON object, got {type(payload).__name__}")
    try:
        return MODELS[topic].model_validate(payload)
    except ValidationError as exc:
        raise PayloadError(f"{topic} body: {describe(exc, values)}") from None


def check(topic: str, payload: Any) -> int | None:
    """Validate every field storeflow reads; returns the customer the payload is about (None: unknown)."""
    model = parse(topic, payload)
    customer = getattr(model, "customer", None)
    return customer.id if customer is not None else None


def _money(model: _Shape, name: str) -> float | None:
    money_set: MoneySet | None = getattr(model, f"{name}_set")
    shop_money = money_set.shop_money.amount if money_set and money_set.shop_money else None
    return shop_money if shop_money is not None else getattr(model, name)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def order_rows(payload: dict) -> tuple[dict, list[dict]]:
    """An order webhook -> (orders row, line_items rows); :class:`PayloadError` if it is not an order."""
    order = parse("orders/create", payload, values=False)
    assert isinstance(order, Order)
    return rows_of(order)


def rows_of(order: Order) -> tuple[dict, list[dict]]:
    """A validated order -> (orders row, line_items rows)."""
    customer = order.customer
    row = {
        "order_id": order.id,
        "name": order.name,
        "customer_id": customer.id if customer else None,
        "email": order.email or order.contact_email or (customer.email if customer else None),
        "created_at": _iso(order.created_at),
        "updated_at": _iso(order.updated_at or order.created_at),
        "cancelled_at": _iso(order.cancelled_at),
        "currency": order.presentment_currency or order.currency,
        "total_price": _money(order, "total_price"),
        "subtotal_price": _money(order, "subtotal_price"),
        "total_discounts": _money(order, "total_discounts"),
        "financial_status": (order.financial_status or "").upper() or None,
        "risk_level": None,
    }
    items = [
        {"line_item_id": item.id, "order_id": order.id, "product_id": item.product_id, "sku": item.sku,
         "title": item.title, "quantity": item.quantity, "price": _money(item, "price")}
        for item in order.line_items or []
    ]
    return row, items


def refund_row(payload: dict) -> dict:
    """A refund webhook -> refunds row; the amount is what successful refund transactions paid back."""
    refund = parse("refunds/create", payload, values=False)
    assert isinstance(refund, Refund)
    paid_back = [t.amount for t in refund.transactions or []
                 if t.kind == "refund" and t.status in ("success", None) and t.amount is not None]
    if paid_back:
        amount = sum(paid_back)
    else:
        amount = sum(_money(item, "subtotal") or 0.0 for item in refund.refund_line_items or [])
    return {"refund_id": refund.id, "order_id": refund.order_id, "created_at": _iso(refund.created_at),
            "amount": amount}


def customer_request(topic: str, payload: dict) -> tuple[int, str | None, set[int], int | None]:
    """customers/redact or customers/data_request -> (customer id, email, order ids, data request id)."""
    request = parse(topic, payload, values=False)
    assert isinstance(request, CustomerRequest)
    orders = set(request.orders_to_redact or request.orders_requested or [])
    return (request.customer.id, request.customer.email or None, orders,
            request.data_request.id if request.data_request else None)
