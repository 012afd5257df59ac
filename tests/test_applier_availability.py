"""Product and inventory webhooks through the applier: an event whose own data cannot be stored is parked as a dead
letter with the reason, never retried for ever with everything after it waiting."""

from __future__ import annotations

import sqlite3

from starlette.testclient import TestClient
from test_webhook_signing import delivery, order

from storeflow.components.shopify import journal, products
from storeflow.components.shopify.webhooks import create_app

NOW = "2026-12-07T10:00:00+00:00"
MUG = {"id": 990002, "title": "Mug", "handle": "mug", "status": "active", "published_at": NOW, "updated_at": NOW,
       "variants": [{"id": 3, "inventory_item_id": 21, "inventory_quantity": 1, "inventory_management": "shopify"}]}


def _level(location: int, available: int) -> dict:
    return {"inventory_item_id": 21, "location_id": location, "available": available, "updated_at": NOW}


def test_levels_whose_units_add_up_past_int64_are_applied_as_endless_stock(hooks):
    """Two levels of 2**63-1 (each a valid count) overflowed SQLite's sum(): the second was retried for ever and
    nothing after it applied."""
    with TestClient(create_app(hooks), base_url="https://storeflow.example") as client:
        client.post("/webhooks", **delivery("products/create", MUG, "wh-mug"))
        for location in (1, 2):
            client.post("/webhooks", **delivery("inventory_levels/update", _level(location, 2**63 - 1), f"wh-l{location}"))
        client.post("/webhooks", **delivery("orders/create", order(99002, 9900000000002, "io@example.com", 5.0), "wh-after"))

        client.app.state.applier.drain()

        conn = client.app.state.applier.conn
        assert dict(conn.execute("SELECT webhook_id, outcome FROM events WHERE webhook_id IN ('wh-l2', 'wh-after')")) == {
            "wh-l2": "availability of 1 product(s), category of 0", "wh-after": "live"}
        (row,) = products.availability(conn, [MUG["id"]]).to_dict("records")
        assert row["in_stock"] == 1 and row["inventory"] == 2**63 - 1


def test_an_inventory_event_its_own_data_fails_on_is_parked_with_the_reason(hooks, monkeypatch):
    """Only a payload that did not validate was parked: any other failure of a product or inventory event's own
    data (SQLite's 'integer overflow' of its units) was retried for ever, the applier stuck on it."""
    real = products.apply

    def overflowing(conn, topic, payload):
        if payload.get("location_id") == 2:
            raise sqlite3.OperationalError("integer overflow")
        return real(conn, topic, payload)

    monkeypatch.setattr(products, "apply", overflowing)
    with TestClient(create_app(hooks), base_url="https://storeflow.example") as client:
        client.post("/webhooks", **delivery("products/create", MUG, "wh-mug"))
        client.post("/webhooks", **delivery("inventory_levels/update", _level(2, 5), "wh-l2"))
        client.post("/webhooks", **delivery("inventory_levels/update", _level(1, 5), "wh-l1"))

        client.app.state.applier.drain()

        conn = client.app.state.applier.conn
        (parked,) = journal.dead_letters(conn)
        assert parked["webhook_id"] == "wh-l2" and "integer overflow" in parked["reason"]
        assert conn.execute("SELECT outcome FROM events WHERE webhook_id = 'wh-l1'").fetchone()[0].startswith("availability")
