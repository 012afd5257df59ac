"""storeflow's webhook subscriptions (components/shopify/subscriptions.py): each topic names the fields storeflow
reads (``include_fields``), and a body Shopify cut to them reads exactly as the whole one, for the receiver, the
applier and the risk scorer. Shopify cannot be reached from here: ``subscriptions.filtered`` cuts the recorded
real-format payloads (tests/data/shopify_webhooks) as Shopify's include_fields do."""

from __future__ import annotations

import copy
import json
import re
import sqlite3
import tomllib
from pathlib import Path

import orjson
import pytest
from starlette.testclient import TestClient
from test_webhook_signing import delivery, refund
from typer.testing import CliRunner

from storeflow.components.risk.live import new_order, risk_row
from storeflow.components.shopify import layout, payloads, products, subscriptions
from storeflow.components.shopify.webhooks import create_app
from storeflow.pipelines.cli import app

DATA = Path(__file__).parent / "data" / "shopify_webhooks"
README = Path(__file__).parents[1] / "components" / "shopify" / "README.md"
URI = "https://storeflow.example.com/webhooks"


def recorded(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def cut(topic: str, payload: dict) -> dict:
    return subscriptions.filtered(payload, subscriptions.include_fields(topic))


def fraud_guest_order() -> dict:
    """The recorded order, cancelled as fraud, by a guest, paid with a gift card, shipped abroad."""
    payload = recorded("orders_create.json")
    payload.update({"id": 5872145678999, "cancel_reason": "fraud", "cancelled_at": "2026-01-14T10:02:00+11:00",
                    "customer": None, "payment_gateway_names": ["gift_card"]})
    payload["shipping_address"]["country_code"] = "NZ"
    return payload


def test_the_readme_shows_the_subscriptions_storeflow_prints():
    printed = CliRunner().invoke(app, ["webhook-subscriptions", "--uri", URI])
    assert printed.exit_code == 0, printed.output
    assert printed.output == subscriptions.app_toml(URI, "2026-01")
    shown = re.search(r"```toml\n(\[webhooks\].*?)```", README.read_text(), re.S).group(1)
    assert shown == printed.output


@pytest.mark.parametrize("uri", ["http://storeflow.example.com/webhooks", 'https://x.example/"]\ntopics = ["shop/redact',
                                 "https://x.example/a b", "storeflow.example.com/webhooks"])
def test_a_uri_shopify_cannot_deliver_to_or_that_would_break_the_toml_is_refused_naming_it(uri):
    printed = CliRunner().invoke(app, ["webhook-subscriptions", "--uri", uri])
    assert printed.exit_code == 2
    assert "webhook uri" in printed.output and "[webhooks]" not in printed.output


def test_every_topic_the_receiver_takes_is_subscribed_once_and_compliance_topics_without_fields():
    config = tomllib.loads(subscriptions.app_toml(URI, "2026-01"))["webhooks"]
    plain = [s for s in config["subscriptions"] if "topics" in s]
    topics = [topic for s in plain for topic in s["topics"]]
    handled = (payloads.TOPICS - payloads.PRIVACY_TOPICS) | products.AVAILABILITY_TOPICS
    assert sorted(topics) == sorted(handled)
    compliance = [s for s in config["subscriptions"] if "compliance_topics" in s]
    assert compliance == [{"compliance_topics": sorted(payloads.PRIVACY_TOPICS), "uri": URI}]
    # an empty list would mean every field to Shopify: a topic whose body storeflow does not read has none
    assert all(s.get("include_fields", ["x"]) for s in config["subscriptions"])
    assert "include_fields" not in next(s for s in plain if s["topics"] == ["app/uninstalled"])
    orders = next(s for s in plain if "orders/create" in s["topics"])
    assert {"id", "customer.id", "line_items.price", "payment_gateway_names", "shipping_address.country_code",
            "total_price_set.shop_money"} <= set(orders["include_fields"])
    assert max(path.count(".") for s in plain for path in s.get("include_fields", [])) == 1  # two names at most


def test_filtered_keeps_only_named_fields_inside_lists_and_objects():
    payload = {"id": 1, "note": "x", "items": [{"id": 2, "tax": 3}, {"id": 4}],
               "money": {"shop": {"amount": "1.00", "code": "AUD"}, "presentment": {}}, "gone": None}
    assert subscriptions.filtered(payload, ["id", "items.id", "money.shop", "missing.x"]) == {
        "id": 1, "items": [{"id": 2}, {"id": 4}], "money": {"shop": {"amount": "1.00", "code": "AUD"}}}


@pytest.mark.parametrize("payload", [recorded("orders_create.json"), fraud_guest_order()], ids=["paid", "fraud-guest"])
def test_an_order_cut_to_its_fields_reads_as_the_whole_order(payload):
    small = cut("orders/create", payload)
    assert len(orjson.dumps(small)) < len(orjson.dumps(payload)) / 4
    assert payloads.order_rows(small) == payloads.order_rows(payload)  # the receiver's check and the applier's rows
    assert risk_row(small) == risk_row(payload)
    assert new_order(orjson.dumps(small)) == new_order(orjson.dumps(payload))  # the risk scorer's order


def test_a_refund_cut_to_its_fields_reads_as_the_whole_refund():
    whole = refund(77001, 5872145678394, 40.0)
    whole["refund_line_items"] = [{"id": 1, "quantity": 1, "subtotal": 40.0, "subtotal_set": {
        "shop_money": {"amount": "40.00", "currency_code": "AUD"}}, "total_tax": 0}]
    small = cut("refunds/create", whole)
    assert "note" not in small and small["transactions"] == [{"amount": "40.00", "kind": "refund", "status": "success"}]
    assert payloads.refund_row(small) == payloads.refund_row(whole)
    no_transactions = {**copy.deepcopy(whole), "transactions": []}  # the amount from its line items then
    assert payloads.refund_row(cut("refunds/create", no_transactions)) == payloads.refund_row(no_transactions)


@pytest.mark.parametrize(("topic", "name", "model"), [
    ("products/create", "products_create.json", products.Product),
    ("products/update", "products_update.json", products.Product),
    ("inventory_levels/update", "inventory_levels_update.json", products.InventoryLevel)])
def test_product_and_inventory_payloads_cut_to_their_fields_read_as_the_whole(topic, name, model):
    whole = recorded(name)
    small = cut(topic, whole)
    assert model.model_validate(small) == model.model_validate(whole)


def test_the_receiver_and_applier_store_a_cut_order_as_the_whole_one(hooks):
    whole = recorded("orders_create.json")
    small = cut("orders/create", {**copy.deepcopy(whole), "id": whole["id"] + 1})
    with TestClient(create_app(hooks), base_url="https://storeflow.example") as client:
        for number, (payload, webhook_id) in enumerate(((whole, "wh-whole"), (small, "wh-cut"))):
            answer = client.post("/webhooks", **delivery("orders/create", payload, webhook_id))
            assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text
        client.app.state.applier.drain()
    with sqlite3.connect(layout.journal_path(hooks)) as conn:
        rows = dict(conn.execute("SELECT order_id, row FROM live_orders").fetchall())
        (kept,) = conn.execute("SELECT length(body) FROM events WHERE webhook_id = 'wh-cut'").fetchone()
    assert len(rows) == 2 and kept == len(json.dumps(small).encode())
    first, second = (json.loads(rows[n]) for n in (whole["id"], whole["id"] + 1))
    assert {**first, "order_id": 0} == {**second, "order_id": 0}
