"""Order risk written back to Shopify (orderRiskAssessmentCreate) through the SQLite outbox, against Admin
API answers in Shopify's payload format (tests/data/shopify_api) served on 127.0.0.1: once per order,
throttling waited out, nothing lost when Shopify is down or the process dies between send and record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_admin import FakeAdminServer, admin_client, running

from storeflow.components.shopify import assessments
from storeflow.components.shopify.assessments import Fact, drain, enqueue

RECORDED = Path(__file__).parent / "data" / "shopify_api"
SHOP = "kettle-and-leaf.myshopify.com"


class FakeAdmin(FakeAdminServer):
    """Creates assessments and lists an order's; can throttle, fail with 503, or not know an order."""

    def __init__(self):
        super().__init__()
        self.created: list[dict] = []  # the mutation inputs Shopify accepted
        self.unknown_orders: set[str] = set()

    def respond(self, body: dict) -> tuple[int, dict]:
        if "orderRiskAssessmentCreate" in body["query"]:
            given = body["variables"]["input"]
            if given["orderId"] in self.unknown_orders:
                return 200, json.loads((RECORDED / "risk_assessment_user_error.json").read_text())
            self.created.append(given)
            return 200, json.loads((RECORDED / "risk_assessment_created.json").read_text())
        listed = json.loads((RECORDED / "order_assessments.json").read_text())
        ours = [c for c in self.created if c["orderId"] == body["variables"]["id"]]
        shopifys = [a for a in listed["data"]["order"]["risk"]["assessments"] if a["provider"] is None]
        listed["data"]["order"]["risk"]["assessments"] = shopifys + [
            {"riskLevel": c["riskLevel"], "provider": {"title": "storeflow"},
             "facts": [{"description": f["description"]} for f in c["facts"]]} for c in ours]
        return 200, listed


@pytest.fixture
def shopify():
    with running(FakeAdmin()) as server:
        yield server


@pytest.fixture
def client(shopify):
    admin = admin_client(shopify, SHOP)
    yield admin
    admin.close()


@pytest.fixture
def outbox(tmp_path):
    db = assessments.connect(tmp_path / "risk.sqlite")
    yield db
    db.close()


FACTS = [Fact("Shipping country differs from billing country", "NEGATIVE"), Fact("Returning customer", "POSITIVE")]


def test_an_order_is_assessed_once_with_the_model_version_and_its_facts(outbox, client, shopify) -> None:
    assert enqueue(outbox, 5001, "HIGH", FACTS, "3")
    assert not enqueue(outbox, "gid://shopify/Order/5001", "LOW", [], "4")  # scored again: nothing new
    result = drain(outbox, client)
    assert (result.sent, result.pending) == (1, 0)
    (written,) = shopify.created
    assert written == {"orderId": "gid://shopify/Order/5001", "riskLevel": "HIGH", "facts": [
        {"description": "storeflow risk model v3", "sentiment": "NEUTRAL"},
        {"description": "Shipping country differs from billing country", "sentiment": "NEGATIVE"},
        {"description": "Returning customer", "sentiment": "POSITIVE"}]}
    assert drain(outbox, client).sent == 0 and len(shopify.created) == 1


def test_throttling_is_waited_out(outbox, client, shopify) -> None:
    enqueue(outbox, 5002, "MEDIUM", FACTS, "3")
    shopify.throttle_next = 2
    assert drain(outbox, client).sent == 1 and len(shopify.created) == 1


def test_nothing_is_lost_while_shopify_is_down(outbox, client, shopify) -> None:
    for order in (5003, 5004):
        enqueue(outbox, order, "LOW", [], "3")
    shopify.down = True
    assert drain(outbox, client).pending == 2 and shopify.created == []
    assert "503" in outbox.execute("SELECT last_error FROM risk_outbox WHERE order_id LIKE '%5003'").fetchone()[0]
    shopify.down = False
    assert drain(outbox, client).sent == 2
    assert [c["orderId"] for c in shopify.created] == ["gid://shopify/Order/5003", "gid://shopify/Order/5004"]


def test_a_crash_between_send_and_record_does_not_assess_the_order_twice(outbox, client, shopify, monkeypatch) -> None:
    enqueue(outbox, 5005, "HIGH", FACTS, "3")
    real_mark = assessments._mark

    def die(*args):
        raise SystemExit("killed after Shopify answered, before the outbox recorded it")

    monkeypatch.setattr(assessments, "_mark", die)
    with pytest.raises(SystemExit):
        drain(outbox, client)
    monkeypatch.setattr(assessments, "_mark", real_mark)
    result = drain(outbox, client)  # the restarted process
    assert (result.sent, result.already_assessed, result.pending) == (0, 1, 0)
    assert len(shopify.created) == 1  # Shopify has one assessment by this app, not two


def test_an_order_shopify_does_not_know_is_parked_and_the_rest_go_on(outbox, client, shopify) -> None:
    shopify.unknown_orders.add("gid://shopify/Order/5006")
    enqueue(outbox, 5006, "HIGH", FACTS, "3")
    enqueue(outbox, 5007, "LOW", [], "3")
    result = drain(outbox, client)
    assert (result.sent, result.rejected, result.pending) == (1, 1, 0)
    state, error = outbox.execute("SELECT state, last_error FROM risk_outbox WHERE order_id LIKE '%5006'").fetchone()
    assert state == "rejected" and "Order does not exist" in error


@pytest.mark.parametrize(("order", "level", "facts", "message"), [
    (5008, "SEVERE", [], "risk_level 'SEVERE'"),
    ("gid://shopify/Customer/1", "HIGH", [], "neither a number nor a gid://shopify/Order/"),
    (5008, "HIGH", [Fact("x", "BAD")], "sentiment 'BAD'"),
    (5008, "HIGH", [Fact(f"fact {i}", "NEUTRAL") for i in range(20)], "at most 19"),
    (5008, "HIGH", [Fact("   ", "NEUTRAL")], "needs a description"),
])
def test_bad_assessments_are_refused_before_anything_is_stored(outbox, order, level, facts, message) -> None:
    with pytest.raises(ValueError, match=message):
        enqueue(outbox, order, level, facts, "3")
    assert outbox.execute("SELECT count(*) FROM risk_outbox").fetchone()[0] == 0


def test_a_long_fact_is_cut_to_what_shopify_keeps(outbox, client, shopify) -> None:
    enqueue(outbox, 5009, "HIGH", [Fact("velocity " * 60, "NEGATIVE")], "3")
    drain(outbox, client)
    description = shopify.created[0]["facts"][1]["description"]
    assert len(description) == 256 and description.endswith("…")
