"""Webhook payloads (Shopify's REST JSON shapes) -> rows of the normalized tables (``tables.SCHEMAS``).

Amounts are the shop-currency ``*_set.shop_money`` values, as the bulk export reads them; webhooks do
not carry order risk, so ``risk_level`` stays null until the next bulk pull brings ``risk.assessments``.
"""

from __future__ import annotations

from typing import Any

ORDER_TOPICS = frozenset({"orders/create", "orders/paid"})
REFUND_TOPICS = frozenset({"refunds/create"})
PRIVACY_TOPICS = frozenset({"customers/redact", "customers/data_request", "shop/redact"})
TOPICS = ORDER_TOPICS | REFUND_TOPICS | PRIVACY_TOPICS | {"app/uninstalled"}


class PayloadError(ValueError):
    """A webhook body that does not have the shape of its topic."""


def check(topic: str, payload: Any) -> int | None:
    """Validate the fields we rely on; returns the customer the payload is about (None: unknown)."""
    if not isinstance(payload, dict):
        raise PayloadError(f"{topic} body must be a JSON object, got {type(payload).__name__}")
    if topic in ORDER_TOPICS:
        _int(payload, "id", topic)
        for item in payload.get("line_items") or []:
            _int(item, "id", f"{topic} line_items[]")
        return _customer(payload, topic, required=False)
    if topic in REFUND_TOPICS:
        _int(payload, "id", topic)
        _int(payload, "order_id", topic)
        return None
    if topic in ("customers/redact", "customers/data_request"):
        return _customer(payload, topic, required=True)
    return None


def _int(payload: Any, key: str, where: str) -> int:
    value = payload.get(key) if isinstance(payload, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{where} body needs an integer {key!r}, got {value!r}")
    return value


def _customer(payload: dict, topic: str, required: bool) -> int | None:
    customer = payload.get("customer")
    if customer is None and not required:
        return None  # guest checkout
    if not isinstance(customer, dict):
        raise PayloadError(f"{topic} body needs a 'customer' object")
    return _int(customer, "id", f"{topic} customer")


def _money(payload: dict, name: str) -> float | None:
    shop_money = ((payload.get(f"{name}_set") or {}).get("shop_money") or {}).get("amount")
    value = shop_money if shop_money is not None else payload.get(name)
    return float(value) if value is not None else None


def order_rows(payload: dict) -> tuple[dict, list[dict]]:
    """An order webhook -> (orders row, line_items rows)."""
    customer = payload.get("customer") or {}
    order = {
        "order_id": payload["id"],
        "name": payload.get("name"),
        "customer_id": customer.get("id"),
        "email": payload.get("email") or payload.get("contact_email") or customer.get("email"),
        "created_at": payload.get("created_at"),
        "updated_at": payload.get("updated_at") or payload.get("created_at"),
        "cancelled_at": payload.get("cancelled_at"),
        "currency": payload.get("presentment_currency") or payload.get("currency"),
        "total_price": _money(payload, "total_price"),
        "subtotal_price": _money(payload, "subtotal_price"),
        "total_discounts": _money(payload, "total_discounts"),
        "financial_status": (payload.get("financial_status") or "").upper() or None,
        "risk_level": None,
    }
    items = [
        {
            "line_item_id": item["id"],
            "order_id": payload["id"],
            "product_id": item.get("product_id"),
            "sku": item.get("sku"),
            "title": item.get("title"),
            "quantity": item.get("quantity"),
            "price": _money(item, "price"),
        }
        for item in payload.get("line_items") or []
    ]
    return order, items


def refund_row(payload: dict) -> dict:
    """A refund webhook -> refunds row; the amount is what successful refund transactions paid back."""
    paid_back = [float(t["amount"]) for t in payload.get("transactions") or []
                 if t.get("kind") == "refund" and t.get("status") in ("success", None) and t.get("amount") is not None]
    if paid_back:
        amount = sum(paid_back)
    else:
        amount = sum(float(_money(item, "subtotal") or 0) for item in payload.get("refund_line_items") or [])
    return {"refund_id": payload["id"], "order_id": payload["order_id"], "created_at": payload.get("created_at"),
            "amount": amount}
