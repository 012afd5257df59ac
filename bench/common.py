"""Helpers the benchmarks share: the bench app's identity, free ports, Shopify credentials as Shopify
signs them (session tokens, webhook HMACs), raw HTTP/1.1 requests and server processes.

Imported by name (``from common import ...``): a benchmark runs as ``python bench/<name>.py``, which
puts this folder first on ``sys.path``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

MODEL = "storeflow-repeat-purchase"
CLIENT_ID = "bench-app"
SECRET = "shpss_bench_0123456789abcdef0123456789abcdef"
SHOP = "demo-store.myshopify.com"
API_VERSION = "2026-01"


def machine_gauge_ms() -> float:
    """Milliseconds of one fixed pure-Python loop, best of five: the machine's speed, so figures measured on
    machines of different speed can be told apart (these VMs differ by up to ~2x from one session to the next;
    a delivery's own costs, wrk's included, change with the code and the body, this does not)."""
    import timeit

    return round(min(timeit.repeat("sum(i * i for i in range(200_000))", number=5, repeat=5)) / 5 * 1e3, 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- Shopify credentials -------------------------------------------------------------------------------------
def session_claims(customer_id: int | None = None, *, staff: bool = False, issued: float | None = None,
                   lifetime: int = 900, shop: str = SHOP) -> dict:
    """The claims of a session token: a checkout extension's (``customer_id`` None: a guest's) or, with
    ``staff``, an admin extension's, whose staff may score any customer of the shop."""
    now = int(time.time() if issued is None else issued)
    claims = {"iss": f"https://{shop}/admin" if staff else f"https://{shop}", "dest": f"https://{shop}",
              "aud": CLIENT_ID, "exp": now + lifetime, "nbf": now, "iat": now}
    if staff:
        claims["sub"] = "7001"
    elif customer_id is not None:
        claims["sub"] = f"gid://shopify/Customer/{customer_id}"
    return claims


def session_token(customer_id: int | None = None, *, secret: str = SECRET, issued: float | None = None,
                  lifetime: int = 900) -> str:
    """A session token as Shopify signs it (HS256 with the app secret): a customer's checkout extension's,
    or (no customer) an admin extension's."""
    import jwt

    claims = session_claims(customer_id, staff=customer_id is None, issued=issued, lifetime=lifetime)
    return jwt.encode(claims, secret, algorithm="HS256")


def webhook_hmac(body: bytes, secret: str) -> str:
    """``X-Shopify-Hmac-Sha256``: base64 HMAC-SHA256 of the raw body with the app secret."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def webhook_headers(topic: str, webhook_id: str, body: bytes, *, secret: str, shop: str) -> dict[str, str]:
    """The headers Shopify sends with a webhook delivery, signed over ``body``."""
    return {"Content-Type": "application/json", "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": webhook_hmac(body, secret), "X-Shopify-Shop-Domain": shop,
            "X-Shopify-Webhook-Id": webhook_id, "X-Shopify-API-Version": API_VERSION}


def order_payload(order_id: int, customer: int | None, created_at: str, line_item_ids: list[int], *,
                  updated_at: str | None = None, financial_status: str = "paid", name: str | None = None,
                  price: str = "42.50") -> dict:
    """An orders/create (or orders/updated) body in Shopify's REST shape: one tea at ``price`` per line item."""
    email = f"c{customer}@example.com" if customer is not None else None
    total = f"{float(price) * len(line_item_ids):.2f}"
    return {
        "id": order_id, "name": name or f"#{order_id}", "email": email, "created_at": created_at,
        "updated_at": updated_at or created_at, "cancelled_at": None, "currency": "USD",
        "financial_status": financial_status, "total_price": total, "subtotal_price": total, "total_discounts": "0.00",
        "customer": {"id": customer, "email": email} if customer is not None else None,
        "line_items": [{"id": item, "product_id": 77, "sku": "SKU", "title": "Tea", "quantity": 1, "price": price}
                       for item in line_item_ids],
    }


FULL_ORDER = Path(__file__).resolve().parents[1] / "tests" / "data" / "shopify_webhooks" / "orders_create.json"


@cache
def _full_order_template() -> bytes:
    return FULL_ORDER.read_bytes()


def full_order_payload(order_id: int, customer: int, email: str, created_at: str, street: str,
                       line_item_ids: tuple[int, int], name: str) -> dict:
    """Shopify's whole orders/create (tests/data/shopify_webhooks/orders_create.json: every field the REST Order
    documents, ~9.5 KB, two line items) as one delivery: its ids, customer, email, times, street and line items
    replaced; what a store's webhooks carry, where :func:`order_payload` carries only the fields storeflow reads."""
    payload = json.loads(_full_order_template())
    payload.update({"id": order_id, "admin_graphql_api_id": f"gid://shopify/Order/{order_id}", "name": name,
                    "email": email, "contact_email": email, "created_at": created_at, "updated_at": created_at,
                    "processed_at": created_at})
    payload["customer"].update({"id": customer, "email": email, "created_at": "2025-01-01T00:00:00+00:00",
                                "admin_graphql_api_id": f"gid://shopify/Customer/{customer}"})
    payload["customer"]["default_address"].update({"customer_id": customer, "address1": street})
    for address in (payload["shipping_address"], payload["billing_address"]):
        address["address1"] = street
    for item, item_id in zip(payload["line_items"], line_item_ids):
        item["id"] = item_id
        item["admin_graphql_api_id"] = f"gid://shopify/LineItem/{item_id}"
    return payload


def request_bytes(port: int, path: str, body: bytes, headers: dict, content_length: int | None = None) -> bytes:
    """A raw HTTP/1.1 POST; ``content_length`` declares another length than the body's (hostile clients)."""
    length = len(body) if content_length is None else content_length
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {length}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- server processes ----------------------------------------------------------------------------------------
def serve_command(work: Path, port: int) -> list[str]:
    """``storeflow serve`` as the benchmarks run it: the bench store's config, 2 workers, on ``port``."""
    return [str(Path(sys.executable).with_name("storeflow")), "serve", "-c", str(work / "config.yaml"), "--workers", "2",
            "--port", str(port)]


def stop(proc: subprocess.Popen) -> None:
    """End a server started in its own session, with every process it started."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 240) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")
