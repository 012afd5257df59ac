"""The soak's traffic: every kind of request bench/soak.py sends, valid and hostile, as data.

Each kind is a builder (a :class:`Traffic` in, a :class:`Call` out: path, body, headers), a weight in
the mix, the statuses it should get and how it is sent (httpx, or a socket). Builders know nothing of sockets or servers, so
tests/test_bench_soak.py checks that each builds what its name claims.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import jwt
from common import MODEL, SECRET, SHOP, order_payload, session_claims, session_token, webhook_headers

V2 = f"/v2/models/{MODEL}/infer"
V1 = f"/v1/models/{MODEL}:predict"
WEBHOOKS = "/webhooks"
TOKEN_LIFE_S = 60  # a checkout extension fetches a fresh session token about every minute
NESTED_DEPTH = 1000
DEEP_WEBHOOK_DEPTH = 5000
HUGE_DECLARED_BYTES = 10**12
BIG_BODY_BYTES = 10 * 1024 * 1024
ORDER_IDS = 8_000_000_000  # valid orders sent by the soak; their line items are ORDER_IDS*10 + n
HOSTILE_ORDER_IDS = 9_500_000_000
REFUND_IDS = 7_000_000_000


@dataclass(frozen=True)
class Call:
    """One request to send. ``transport``: ``http`` (httpx), ``raw`` (a socket; the declared length may
    differ from the body's) or ``slow`` (a socket dribbling the body)."""

    kind: str
    target: str  # "serve" or "webhooks"
    path: str
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    transport: str = "http"
    content_length: int | None = None
    webhook_id: str | None = None
    entity: int | None = None  # the order or refund a valid delivery creates or changes


@dataclass
class Traffic:
    """The soak's customers and what it has delivered so far (orders to update or refund, deliveries to
    send again), and the request builders' shared randomness."""

    customers: list[int]  # have features; served, and get orders by webhook
    redactable: list[int]  # erased by customers/redact during the soak (never get webhook orders)
    webhook_max_body: int
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    clock: Callable[[], float] = time.time
    orders: dict[int, tuple[int, list[int]]] = field(default_factory=dict)  # order id -> (customer, items)
    refunds: int = 0
    hostile_orders: int = 0
    delivered: list[Call] = field(default_factory=list)  # recent valid deliveries, for re-delivery
    sent_webhooks: int = 0
    _tokens: dict[int, tuple[float, str]] = field(default_factory=dict)
    _big: dict[str, bytes] = field(default_factory=dict)

    # serving helpers
    def customer(self) -> int:
        return self.rng.choice(self.customers)

    def token(self, customer: int) -> str:
        """The customer's current session token (a new one every :data:`TOKEN_LIFE_S`, as in a checkout)."""
        now = self.clock()
        issued, token = self._tokens.get(customer, (0.0, ""))
        if now - issued >= TOKEN_LIFE_S:
            issued, token = now, session_token(customer, issued=now)
            self._tokens[customer] = (issued, token)
        return token

    def big(self, name: str, size: int) -> bytes:
        """A filler JSON body of ``size`` bytes, built once (the soak sends it many times)."""
        if name not in self._big:
            head = b'{"inputs": [{"name": "customer_id", "shape": [1], "datatype": "BYTES", "data": ["'
            self._big[name] = head + b"x" * (size - len(head) - 4) + b'"]}]'
        return self._big[name]

    # webhook helpers
    def now_iso(self, offset_s: float = 0) -> str:
        return datetime.fromtimestamp(self.clock() + offset_s, timezone.utc).isoformat(timespec="seconds")

    def next_webhook_id(self) -> str:
        self.sent_webhooks += 1
        return f"soak-{self.sent_webhooks:08d}"

    def delivery(self, kind: str, topic: str, body: bytes, *, secret: str = SECRET, hmac: str | bytes | None = None,
                 entity: int | None = None) -> Call:
        """A delivery with a new webhook id; a valid one (``kind`` in :data:`VALID_DELIVERIES`) may be sent again."""
        webhook_id = self.next_webhook_id()
        headers = webhook_headers(topic, webhook_id, body, secret=secret, shop=SHOP)
        if hmac is not None:
            headers["X-Shopify-Hmac-Sha256"] = hmac
        call = Call(kind, "webhooks", WEBHOOKS, body, headers, webhook_id=webhook_id, entity=entity)
        if kind in VALID_DELIVERIES:
            self.delivered.append(call)
            if len(self.delivered) > 4000:  # re-deliveries come from the recent ones; memory stays bounded
                del self.delivered[:2000]
        return call


VALID_DELIVERIES = frozenset({"orders_create", "orders_updated", "refunds_create", "customers_redact"})


def v2_body(customer: int) -> bytes:
    return json.dumps({"inputs": [{"name": "customer_id", "shape": [1], "datatype": "BYTES",
                                   "data": [f"gid://shopify/Customer/{customer}"]}]}).encode()


def v1_body(customer: int) -> bytes:
    return json.dumps({"instances": [{"customer_id": f"gid://shopify/Customer/{customer}",
                                      "cart": {"subtotal": 42.5, "item_count": 2}}]}).encode()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def predict(kind: str, t: Traffic, token: str | None, customer: int | None = None, body: bytes | None = None,
            **extra) -> Call:
    """A V2 prediction for ``customer`` (a random one) with ``token`` (None: no Authorization)."""
    customer = t.customer() if customer is None else customer
    headers = bearer(token) if token else {"Content-Type": "application/json"}
    return Call(kind, "serve", V2, v2_body(customer) if body is None else body, headers, **extra)


def nested(depth: int) -> bytes:
    """A V2 body whose JSON nests ``depth`` levels (the attack's RecursionError)."""
    outer = b'{"inputs": [{"name": "customer_id", "shape": [1], "datatype": "BYTES", "data": '
    inner = depth - 3  # the object, "inputs"' list and the input object are three levels already
    return outer + b"[" * inner + b"]" * inner + b"}]}"


def app_proxy_path(t: Traffic, customer: int, signature: str) -> str:
    """An app proxy request's path with ``signature`` (already URL-encoded) and a fresh timestamp."""
    return (f"{V2}?shop={SHOP}&logged_in_customer_id={customer}&path_prefix=%2Fapps%2Fml"
            f"&timestamp={int(t.clock())}&signature={signature}")


WRONG_TYPES = (
    b'{"inputs": "customer_id"}',
    b'{"inputs": [{"name": "customer_id", "shape": "one", "datatype": 7, "data": {"x": 1}}]}',
    b'{"inputs": [{"name": "customer_id", "shape": [-1], "datatype": "BYTES", "data": null}]}',
    b'{"inputs": [{"name": "customer_id", "shape": [1], "datatype": "FP64", "data": ["gid://shopify/Customer/x"]}]}',
    b'{"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP64", "data": [true, "NaN"]}]}',
    b'[1, 2, 3]',
)


def serve_kinds() -> list[tuple[str, float, frozenset, Callable[[Traffic], Call]]]:
    """(kind, weight, expected statuses, builder) of every request to ``storeflow serve``."""

    def other_customer(t: Traffic) -> Call:
        me, them = t.rng.sample(t.customers, 2)
        return predict("other_customer", t, t.token(me), them)

    def token_attack(kind: str, token: Callable[[Traffic, int], str]) -> Callable[[Traffic], Call]:
        def build(t: Traffic) -> Call:
            customer = t.customer()
            return predict(kind, t, token(t, customer), customer)

        return build

    def guest(t: Traffic) -> Call:
        return predict("guest", t, jwt.encode(session_claims(None), SECRET, algorithm="HS256"))

    def with_token(kind: str, body: Callable[[Traffic], bytes], **extra) -> Callable[[Traffic], Call]:
        """A body-level attack from a caller with a valid session token (it gets past auth to the parsers)."""

        def build(t: Traffic) -> Call:
            customer = t.customer()
            return predict(kind, t, t.token(customer), customer, body(t), **extra)

        return build

    def proxy(kind: str, signature: Callable[[Traffic], str]) -> Callable[[Traffic], Call]:
        def build(t: Traffic) -> Call:
            customer = t.customer()
            return Call(kind, "serve", app_proxy_path(t, customer, signature(t)), v2_body(customer),
                        {"Content-Type": "application/json"})

        return build

    def control(action: str) -> Callable[[Traffic], Call]:
        return lambda t: Call(f"control_{action}", "serve", f"/v2/repository/models/{MODEL}/{action}", b"",
                              {"Content-Type": "application/json"})

    def v1_valid(t: Traffic) -> Call:
        customer = t.customer()
        return Call("v1_valid", "serve", V1, v1_body(customer), bearer(t.token(customer)))

    def v2_valid(t: Traffic) -> Call:
        customer = t.customer()
        return predict("v2_valid", t, t.token(customer), customer)

    ok, unauthorized, forbidden, bad = frozenset({"200"}), frozenset({"401"}), frozenset({"403"}), frozenset({"4xx"})
    too_large = frozenset({"413"})
    return [
        ("v2_valid", 40, ok, v2_valid),
        ("v1_valid", 16, ok, v1_valid),
        ("no_token", 2, unauthorized, lambda t: predict("no_token", t, None)),
        ("expired_token", 2, unauthorized, token_attack(
            "expired_token", lambda t, c: session_token(c, issued=t.clock() - 3600, lifetime=60))),
        ("wrong_secret_token", 2, unauthorized, token_attack(
            "wrong_secret_token", lambda t, c: session_token(c, secret="shpss_not_the_app_secret_0123456789abcdef"))),
        ("alg_none_token", 2, unauthorized, token_attack(
            "alg_none_token", lambda t, c: jwt.encode(session_claims(c), None, algorithm="none"))),
        ("other_customer", 2, forbidden, other_customer),
        ("guest", 1.5, forbidden, guest),
        ("app_proxy_bad_signature", 1, unauthorized,
         proxy("app_proxy_bad_signature", lambda t: f"{t.rng.getrandbits(256):064x}")),
        ("app_proxy_non_ascii_signature", 1, unauthorized, proxy("app_proxy_non_ascii_signature", lambda t: "%C3%A9")),
        ("v2_nested_1000", 1, bad, with_token("v2_nested_1000", lambda t: nested(NESTED_DEPTH))),
        ("huge_content_length", 0.5, too_large, with_token(
            "huge_content_length", lambda t: v2_body(t.customer()), content_length=HUGE_DECLARED_BYTES)),
        ("body_10mb", 0.1, too_large, with_token("body_10mb", lambda t: t.big("serve", BIG_BODY_BYTES))),
        ("malformed_json", 1, bad, with_token("malformed_json", lambda t: v2_body(t.customer())[:-7])),
        ("wrong_types", 1, bad, with_token("wrong_types", lambda t: t.rng.choice(WRONG_TYPES))),
        ("random_bytes", 1, bad, with_token("random_bytes", lambda t: t.rng.randbytes(t.rng.randint(1, 4096)))),
        ("control_unload", 0.1, frozenset({"401", "403", "404", "405"}), control("unload")),
        ("control_load", 0.1, frozenset({"401", "403", "404", "405"}), control("load")),
    ]


def webhook_kinds() -> list[tuple[str, float, frozenset, Callable[[Traffic], Call]]]:
    """(kind, weight, expected statuses, builder) of every delivery to ``storeflow webhooks``."""

    def orders_create(t: Traffic) -> Call:
        order_id = ORDER_IDS + len(t.orders)
        items = [order_id * 10 + n for n in range(t.rng.randint(1, 3))]
        customer = t.customer()
        t.orders[order_id] = (customer, items)
        body = json.dumps(order_payload(order_id, customer, t.now_iso(), items)).encode()
        return t.delivery("orders_create", "orders/create", body, entity=order_id)

    def orders_updated(t: Traffic) -> Call:
        if not t.orders:
            return orders_create(t)
        order_id = t.rng.choice(list(t.orders))
        customer, items = t.orders[order_id]
        body = json.dumps(order_payload(order_id, customer, t.now_iso(-60), items, updated_at=t.now_iso(),
                                        financial_status=t.rng.choice(["paid", "partially_refunded"]))).encode()
        return t.delivery("orders_updated", "orders/updated", body, entity=order_id)

    def refunds_create(t: Traffic) -> Call:
        if not t.orders:
            return orders_create(t)
        t.refunds += 1
        refund_id = REFUND_IDS + t.refunds
        body = json.dumps({"id": refund_id, "order_id": t.rng.choice(list(t.orders)),
                           "created_at": t.now_iso(), "refund_line_items": [],
                           "transactions": [{"kind": "refund", "status": "success", "amount": "5.00"}]}).encode()
        return t.delivery("refunds_create", "refunds/create", body, entity=refund_id)

    def customers_redact(t: Traffic) -> Call:
        if not t.redactable:
            return orders_create(t)
        customer = t.redactable.pop()
        body = json.dumps({"shop_id": 1, "shop_domain": SHOP, "orders_to_redact": [],
                           "customer": {"id": customer, "email": f"c{customer}@example.com", "phone": None}}).encode()
        return t.delivery("customers_redact", "customers/redact", body, entity=customer)

    def redelivery(t: Traffic) -> Call:
        """Shopify's retry: the same delivery again, same webhook id, body and signature."""
        if not t.delivered:
            return orders_create(t)
        again = t.rng.choice(t.delivered)
        return Call("redelivery", "webhooks", again.path, again.body, again.headers, webhook_id=again.webhook_id,
                    entity=again.entity)

    def hostile_order(kind: str, **changes) -> Callable[[Traffic], Call]:
        """A signed orders/create whose body has ``changes`` (outside the valid orders' id range)."""

        def build(t: Traffic) -> Call:
            t.hostile_orders += 1
            order_id = HOSTILE_ORDER_IDS + t.hostile_orders
            payload = {**order_payload(order_id, t.customer(), t.now_iso(), [order_id * 10]), **changes}
            return t.delivery(kind, "orders/create", json.dumps(payload).encode())

        return build

    def bad_hmac(t: Traffic) -> Call:
        body = json.dumps(order_payload(HOSTILE_ORDER_IDS, t.customer(), t.now_iso(), [])).encode()
        return t.delivery("bad_hmac", "orders/create", body, secret="not-the-app-secret")

    def non_ascii_hmac(t: Traffic) -> Call:
        body = json.dumps(order_payload(HOSTILE_ORDER_IDS, t.customer(), t.now_iso(), [])).encode()
        return t.delivery("non_ascii_hmac", "orders/create", body, hmac="é".encode())

    def deep(t: Traffic, signed: bool) -> Call:
        body = b"[" * DEEP_WEBHOOK_DEPTH + b"]" * DEEP_WEBHOOK_DEPTH
        kind = "deep_body_signed" if signed else "deep_body_bad_hmac"
        return t.delivery(kind, "orders/create", body, **({} if signed else {"hmac": "AAAA" * 11}))

    def oversized(t: Traffic) -> Call:
        return t.delivery("oversized_body", "orders/create", t.big("webhook", 2 * t.webhook_max_body))

    def slow_body(t: Traffic) -> Call:
        """Signed, so the receiver must wait for the whole body before it can check anything."""
        return t.delivery("slow_body", "orders/create", b'{"id": 1}' + b" " * 4087)

    ok, unauthorized = frozenset({"200"}), frozenset({"401"})
    refused_or_parked = frozenset({"4xx", "200"})  # 400 at the door, or accepted and dead-lettered
    return [
        ("orders_create", 12, ok, orders_create),
        ("orders_updated", 3, ok, orders_updated),
        ("refunds_create", 2, ok, refunds_create),
        ("customers_redact", 0.02, ok, customers_redact),
        ("redelivery", 2, ok, redelivery),
        ("bad_hmac", 1, unauthorized, bad_hmac),
        ("non_ascii_hmac", 0.5, frozenset({"400", "401"}), non_ascii_hmac),
        ("deep_body_bad_hmac", 0.5, unauthorized, lambda t: deep(t, signed=False)),
        ("deep_body_signed", 0.5, frozenset({"400"}), lambda t: deep(t, signed=True)),
        ("line_items_7", 0.5, refused_or_parked, hostile_order("line_items_7", line_items=7)),
        ("created_at_yesterday", 0.1, refused_or_parked, hostile_order("created_at_yesterday", created_at="yesterday")),
        ("oversized_body", 0.1, frozenset({"413"}), oversized),
        ("slow_body", 0.2, frozenset({"400", "408", "413", "closed", "reset"}), slow_body),
    ]


@dataclass(frozen=True)
class Kind:
    name: str
    target: str
    weight: float
    expect: frozenset  # status keys; "4xx" admits any 400-499
    build: Callable[[Traffic], Call]
    transport: str = "http"

    def make(self, traffic: Traffic) -> Call:
        return replace(self.build(traffic), transport=self.transport)

    def expected(self, status: str) -> bool:
        return status in self.expect or ("4xx" in self.expect and len(status) == 3 and status.startswith("4"))


# Sent on sockets: a declared length other than the body's, answers that come before the body is sent,
# bodies dribbled at 16 bytes a second.
SOCKET_KINDS = {"huge_content_length": "raw", "body_10mb": "raw", "oversized_body": "raw", "slow_body": "slow"}
KINDS = [Kind(name, target, w, e, b, SOCKET_KINDS.get(name, "http"))
         for target, kinds in (("serve", serve_kinds()), ("webhooks", webhook_kinds())) for name, w, e, b in kinds]
