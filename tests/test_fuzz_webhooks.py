"""Hypothesis over what a caller controls at the webhook receiver: headers (any bytes, or missing), bodies
(any bytes, deep JSON, any JSON under a valid or bogus signature) and, in validly signed payloads of every
topic, any field replaced by any JSON value. Never a 5xx; what the receiver accepts, the applier applies
(never parked: the door checks what apply needs); a valid signed delivery is accepted exactly once."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from starlette.testclient import TestClient
from test_webhook_signing import SHOP, delivery, order, refund, sign
from test_webhooks import ADA, client, journal  # noqa: F401 - fixtures (hooks: conftest)

from storeflow.components.shopify.payloads import TOPICS
from storeflow.components.shopify.webhooks import REQUIRED_HEADERS, create_app

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
APPLIED = settings(FUZZ, max_examples=60)
ids = itertools.count()

text = st.text(max_size=30)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=8)
header_value = st.binary(max_size=80).filter(lambda b: not set(b) & set(b"\r\n\x00"))


def base_payload(topic: str) -> dict:
    """A valid payload of each topic, as Shopify sends it."""
    customer = {"id": ADA, "email": "ada@example.com", "phone": None}
    return {
        "orders/create": order(9001, ADA, "ada@example.com", 40.0, items=2),
        "orders/paid": order(9001, ADA, "ada@example.com", 40.0),
        "orders/updated": order(9001, ADA, "ada@example.com", 35.0),
        "orders/cancelled": {**order(9001, ADA, "ada@example.com", 40.0), "cancelled_at": "2026-12-01T10:00:00+00:00",
                             "financial_status": "refunded"},
        "refunds/create": refund(77001, 9001, 5.0),
        "customers/redact": {"shop_id": 954889, "shop_domain": SHOP, "customer": customer, "orders_to_redact": [9001]},
        "customers/data_request": {"shop_id": 954889, "shop_domain": SHOP, "customer": customer,
                                   "orders_requested": [9001], "data_request": {"id": 9999}},
        "shop/redact": {"shop_id": 954889, "shop_domain": SHOP},
        "app/uninstalled": {"id": 954889, "name": "Kettle & Leaf", "myshopify_domain": SHOP},
    }[topic]


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON value (dict keys and list indices)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += paths(inner, (*prefix, index))
    return found


def replaced(value: Any, path: tuple, new: Any, delete: bool) -> Any:
    value = json.loads(json.dumps(value))
    parent = value
    for step in path[:-1]:
        parent = parent[step]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return value


@st.composite
def mutated(draw) -> tuple[str, Any]:
    topic = draw(st.sampled_from(sorted(TOPICS)))
    payload = base_payload(topic)
    for _ in range(draw(st.integers(1, 3))):
        choices = paths(payload)
        if not choices:
            break
        payload = replaced(payload, draw(st.sampled_from(choices)), draw(json_value), draw(st.booleans()))
    return topic, payload


@pytest.fixture
def receiver(hooks):
    """The receiver without an applier (intake only): fuzzing the door, not Feast writes."""
    with TestClient(create_app(hooks, apply=False), base_url="https://storeflow.example") as c:
        yield c


def assert_no_5xx(response) -> None:
    assert response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.status_code == 200 or response.json()["code"]


HEADERS = (*REQUIRED_HEADERS, "x-shopify-triggered-at", "content-type")
# Each header: as Shopify sends it (mostly, so that the others' checks are reached), missing, or any bytes.
header_choice = st.one_of(st.just("good"), st.just("good"), st.just("good"), st.none(), header_value)


@FUZZ
@given(choices=st.tuples(*[header_choice] * len(HEADERS)))
def test_any_headers_are_never_a_5xx(receiver, choices):
    good = delivery("orders/create", order(9001, ADA, "ada@example.com", 40.0), f"wh-{next(ids)}")
    given_headers = {k.lower(): v for k, v in good["headers"].items()}
    sent = {}
    for name, choice in zip(HEADERS, choices):
        if choice == "good" and name in given_headers:
            sent[name] = given_headers[name]
        elif isinstance(choice, bytes):
            sent[name] = choice
    response = receiver.post("/webhooks", content=good["content"], headers=sent)
    assert_no_5xx(response)
    if sent == {n: given_headers[n] for n in HEADERS if n in given_headers}:
        assert response.json()["status"] == "accepted"


deep = st.builds(lambda n, opener: (opener * n).encode(), st.integers(1, 6000), st.sampled_from(["[", '{"a":', "["]))
body = st.one_of(st.binary(max_size=500), deep, json_value.map(lambda v: json.dumps(v).encode()),
                 st.builds(lambda n: b"[" * n + b"]" * n, st.integers(900, 6000)))


@FUZZ
@given(content=body, topic=st.sampled_from(sorted(TOPICS) + ["products/update"]), signed=st.booleans())
def test_any_body_signed_or_not_is_never_a_5xx(receiver, content, topic, signed):
    sent = delivery(topic, content, f"wh-{next(ids)}")
    if not signed:
        sent["headers"]["X-Shopify-Hmac-Sha256"] = sign(content + b"x")
    response = receiver.post("/webhooks", **sent)
    assert_no_5xx(response)
    if not signed:
        assert response.status_code in (400, 401)


@APPLIED
@given(case=mutated())
def test_a_signed_payload_with_any_field_changed_is_refused_or_applied_never_parked(client, hooks, case):
    topic, payload = case
    webhook_id = f"wh-{next(ids)}"
    response = client.post("/webhooks", **delivery(topic, payload, webhook_id))
    assert_no_5xx(response)
    if response.status_code != 200:
        assert response.status_code == 400 and response.json()["code"] == "bad_payload"
        return
    client.app.state.applier.drain()
    assert journal(hooks, f"SELECT applied_at IS NOT NULL, outcome FROM events WHERE webhook_id = '{webhook_id}'")[0][1] \
        != "dead_letter", journal(hooks, "SELECT reason FROM dead_letters")


money = st.one_of(st.decimals(min_value=0, max_value=10**9, places=2).map(str),
                  st.floats(min_value=0, max_value=1e9, allow_nan=False))
moment = st.datetimes(min_value=datetime(1971, 1, 1),
                      max_value=datetime(2200, 1, 1),
                      timezones=st.just(timezone.utc)).map(lambda d: d.isoformat())
shopify_id = st.integers(min_value=1, max_value=2**63 - 1)


@st.composite
def valid_order(draw) -> dict:
    payload = order(draw(shopify_id), draw(shopify_id), draw(st.emails()), 1.0)
    payload.update(created_at=draw(moment), updated_at=draw(st.none() | moment), total_price=draw(money),
                   total_price_set={"shop_money": {"amount": draw(money), "currency_code": "USD"}},
                   line_items=[{"id": draw(shopify_id), "product_id": draw(st.none() | shopify_id),
                                "quantity": draw(st.integers(0, 10**6)), "price": draw(money), "title": draw(text)}
                               for _ in range(draw(st.integers(0, 3)))])
    if draw(st.booleans()):
        payload["customer"] = None  # guest checkout
    return payload


@APPLIED
@given(payload=valid_order(), topic=st.sampled_from(["orders/create", "orders/paid"]))
def test_a_valid_signed_order_is_accepted_once_and_applied(client, hooks, payload, topic):
    webhook_id = f"wh-{next(ids)}"
    first = client.post("/webhooks", **delivery(topic, payload, webhook_id))
    again = client.post("/webhooks", **delivery(topic, payload, webhook_id))
    client.app.state.applier.drain()

    assert (first.status_code, first.json()["status"]) == (200, "accepted"), first.text
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    assert journal(hooks, f"SELECT count(*), max(outcome) FROM events WHERE webhook_id = '{webhook_id}'") == [(1, "live")]
