"""Signed Shopify webhook deliveries (the signature Shopify computes), used by the webhook and privacy tests,
and Shopify's public HMAC vector checked through shopifyapp."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

SECRET = "whsec-test-0123456789"
SHOP = "kettle-and-leaf.myshopify.com"


def sign(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def delivery(topic: str, payload: dict | bytes, webhook_id: str, secret: str = SECRET, shop: str = SHOP) -> dict:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": sign(body, secret),
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-API-Version": "2026-01",
        "X-Shopify-Triggered-At": datetime.now(timezone.utc).isoformat(),
    }
    return {"content": body, "headers": headers}


def order(order_id: int, customer_id: int, email: str, total: float, hours_ago: float = 1.0, items: int = 1) -> dict:
    """An orders/create payload in Shopify's REST shape (trimmed to the fields storeflow reads, plus a few)."""
    created = (datetime.now(timezone.utc) - timedelta(hours=hours_ago)).replace(microsecond=0).isoformat()
    return {
        "id": order_id, "admin_graphql_api_id": f"gid://shopify/Order/{order_id}", "name": f"#{order_id % 10000}",
        "email": email, "created_at": created, "updated_at": created, "cancelled_at": None,
        "currency": "USD", "presentment_currency": "USD", "financial_status": "paid",
        "total_price": f"{total:.2f}", "subtotal_price": f"{total:.2f}", "total_discounts": "0.00",
        "total_price_set": {"shop_money": {"amount": f"{total:.2f}", "currency_code": "USD"},
                            "presentment_money": {"amount": f"{total:.2f}", "currency_code": "USD"}},
        "customer": {"id": customer_id, "email": email, "first_name": "Ada", "last_name": "Lovelace"},
        "line_items": [{"id": order_id * 10 + i, "product_id": 8123412332715, "sku": "TEA-SEN-100",
                        "title": "Sencha 100g", "quantity": 1, "price": f"{total / items:.2f}"} for i in range(items)],
        "refunds": [],
    }


def refund(refund_id: int, order_id: int, amount: float) -> dict:
    return {"id": refund_id, "order_id": order_id, "created_at": datetime.now(timezone.utc).isoformat(),
            "note": "damaged", "transactions": [{"id": refund_id + 1, "amount": f"{amount:.2f}", "kind": "refund",
                                                 "status": "success"}], "refund_line_items": []}


def test_shopify_public_vector_verifies_and_a_changed_body_does_not():
    from storeflow.components.shopify.verify import AuthError, ShopifyVerifier

    verifier = ShopifyVerifier("app", "secret", [SHOP])
    headers = {"X-Shopify-Hmac-Sha256": "dzukRpPHVT1u4g9h6l0nV6mk9KRNKEGuTpW1LkzWLbQ=", "X-Shopify-Shop-Domain": SHOP}
    assert verifier.verify_webhook("POST", "https://x/webhooks", headers, "foo").shop == SHOP
    assert sign(b"foo", "secret") == headers["X-Shopify-Hmac-Sha256"]
    try:
        verifier.verify_webhook("POST", "https://x/webhooks", headers, "fop")
    except AuthError as exc:
        assert exc.code == "invalid_hmac"
    else:
        raise AssertionError("a changed body verified")
