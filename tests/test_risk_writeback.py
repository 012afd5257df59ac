"""Order risk written back to Shopify (orderRiskAssessmentCreate) through the SQLite outbox, against Admin
API answers in Shopify's payload format (tests/data/shopify_api) served on 127.0.0.1: once per order,
throttling waited out, nothing lost when Shopify is down or the process dies between send and record."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fake_admin import FakeAdminServer, admin_client, running

from storeflow.components.shopify import assessments
from storeflow.components.shopify.assessments import Fact, drain, enqueue

RECORDED = Path(__file__).parent / "data" / "shopify_api"
SHOP = "kettle-and-leaf.myshopify.com"


ALIASED = re.compile(r"(\w+): (orderRiskAssessmentCreate|order)\((?:orderRiskAssessmentInput|id): \$(\w+)\)")


class FakeAdmin(FakeAdminServer):
    """Creates assessments and lists an order's, one recorded-format answer per alias of a document at 10 points a
    mutation (4 a listing); refuses a document above ``max_cost`` points as Shopify does (MAX_COST_EXCEEDED); can
    throttle, fail with 503, or not know an order."""

    def __init__(self):
        super().__init__()
        self.created: list[dict] = []  # the mutation inputs Shopify accepted
        self.unknown_orders: set[str] = set()
        self.failing_orders: set[str] = set()  # their alias fails with an error at its path, the others run
        self.documents: list[int] = []  # aliases of each document answered (refused ones not counted)
        self.max_cost = 1000  # Shopify's single-query limit
        self.down_after: int | None = None  # documents answered before an outage
        self.bucket: dict | None = None  # the throttleStatus answered (None: the recorded one)

    def respond(self, body: dict) -> tuple[int, dict]:
        fields = ALIASED.findall(body["query"])
        cost = sum(10 if field == "orderRiskAssessmentCreate" else 4 for _, field, _ in fields)
        if cost > self.max_cost:
            refused = json.loads((RECORDED / "max_cost_exceeded.json").read_text())
            refused["errors"][0]["extensions"].update(cost=cost, maxCost=self.max_cost)
            return 200, refused
        if self.down_after is not None and len(self.documents) >= self.down_after:
            return 503, {"errors": "Service Unavailable"}
        self.documents.append(len(fields))
        data = {alias: self.one(field, body["variables"][variable]) for alias, field, variable in fields}
        failed = [alias for alias, field, variable in fields if field == "orderRiskAssessmentCreate" and
                  body["variables"][variable]["orderId"] in self.failing_orders]
        answer = json.loads((RECORDED / "risk_assessment_created.json").read_text())
        answer["extensions"]["cost"].update(requestedQueryCost=cost, actualQueryCost=cost)
        if self.bucket is not None:
            answer["extensions"]["cost"]["throttleStatus"] = self.bucket
        if failed:  # Shopify's shape for a field that failed while the rest ran: null, and an error at its path
            return 200, {"data": {**data, **{alias: None for alias in failed}}, "extensions": answer["extensions"],
                         "errors": [{"message": "Internal error. Looks like something went wrong on our end.",
                                     "path": [alias], "extensions": {"code": "INTERNAL_SERVER_ERROR"}}
                                    for alias in failed]}
        return 200, {"data": data, "extensions": answer["extensions"]}

    def one(self, field: str, given):
        if field == "orderRiskAssessmentCreate":
            if given["orderId"] in self.failing_orders:
                return None
            if given["orderId"] in self.unknown_orders:
                return json.loads((RECORDED / "risk_assessment_user_error.json").read_text())["data"][field]
            self.created.append(given)
            return json.loads((RECORDED / "risk_assessment_created.json").read_text())["data"][field]
        listed = json.loads((RECORDED / "order_assessments.json").read_text())["data"]["order"]
        ours = [c for c in self.created if c["orderId"] == given]
        shopifys = [a for a in listed["risk"]["assessments"] if a["provider"] is None]
        listed["risk"]["assessments"] = shopifys + [
            {"riskLevel": c["riskLevel"], "provider": {"title": "storeflow"},
             "facts": [{"description": f["description"]} for f in c["facts"]]} for c in ours]
        return listed


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


def crash_after_sending(outbox, client, monkeypatch) -> None:
    """A drain killed after Shopify answered, before the outbox recorded it."""
    real_mark = assessments._mark

    def die(*args):
        raise SystemExit("killed after Shopify answered, before the outbox recorded it")

    monkeypatch.setattr(assessments, "_mark", die)
    with pytest.raises(SystemExit):
        drain(outbox, client)
    monkeypatch.setattr(assessments, "_mark", real_mark)


def test_a_crash_between_send_and_record_does_not_assess_the_order_twice(outbox, client, shopify, monkeypatch) -> None:
    enqueue(outbox, 5005, "HIGH", FACTS, "3")
    crash_after_sending(outbox, client, monkeypatch)
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


def ids(outbox, state: str) -> list[int]:
    return sorted(int(o.rsplit("/", 1)[1]) for (o,) in
                  outbox.execute("SELECT order_id FROM risk_outbox WHERE state = ?", (state,)))


def test_many_assessments_go_out_in_few_requests_each_once(outbox, client, shopify) -> None:
    for order in range(6000, 6250):
        enqueue(outbox, order, "LOW", FACTS, "3")
    result = drain(outbox, client, limit=250)
    assert (result.sent, result.pending) == (250, 0)
    assert shopify.documents == [100, 100, 50]  # 10 points each, at most 1,000 points per document
    assert [c["orderId"] for c in shopify.created] == [f"gid://shopify/Order/{o}" for o in range(6000, 6250)]


def test_a_document_shopify_finds_too_costly_goes_again_in_halves(outbox, client, shopify) -> None:
    shopify.max_cost = 50  # at most 5 mutations a document
    for order in range(6300, 6312):
        enqueue(outbox, order, "MEDIUM", FACTS, "3")
    result = drain(outbox, client)
    assert (result.sent, result.pending) == (12, 0)
    assert shopify.documents == [3, 3, 3, 3]  # 12 and 6 refused (nothing ran), then 3 at a time
    assert sorted(c["orderId"] for c in shopify.created) == [f"gid://shopify/Order/{o}" for o in range(6300, 6312)]


def test_a_user_error_on_one_alias_parks_that_order_only(outbox, client, shopify) -> None:
    shopify.unknown_orders.add("gid://shopify/Order/6403")
    for order in range(6400, 6406):
        enqueue(outbox, order, "HIGH", FACTS, "3")
    result = drain(outbox, client)
    assert (result.sent, result.rejected, result.pending) == (5, 1, 0) and shopify.documents == [6]
    assert ids(outbox, "rejected") == [6403] and ids(outbox, "sent") == [6400, 6401, 6402, 6404, 6405]
    (error,) = outbox.execute("SELECT last_error FROM risk_outbox WHERE state = 'rejected'").fetchone()
    assert error == "orderRiskAssessmentInput.orderId: Order does not exist"


class Recorded(FakeAdminServer):
    """Answers every document with one recorded aliased answer."""

    def __init__(self, name: str):
        super().__init__()
        self.body = json.loads((RECORDED / name).read_text())

    def respond(self, body: dict) -> tuple[int, dict]:
        return 200, self.body


@pytest.mark.parametrize(("name", "sent", "rejected"), [
    ("risk_assessments_created_aliased.json", [6500, 6501, 6502], []),
    ("risk_assessments_user_error_aliased.json", [6500, 6501, 6502], [6503]),
])
def test_each_alias_of_a_recorded_answer_is_its_own_orders(outbox, name, sent, rejected) -> None:
    for order in range(6500, 6500 + len(sent) + len(rejected)):
        enqueue(outbox, order, "HIGH", FACTS, "3")
    with running(Recorded(name)) as server:
        admin = admin_client(server, SHOP)
        drain(outbox, admin)
        admin.close()
    assert ids(outbox, "sent") == sent and ids(outbox, "rejected") == rejected


def test_after_a_crash_a_batch_asks_shopify_in_one_request_and_sends_nothing_twice(outbox, client, shopify,
                                                                                  monkeypatch) -> None:
    for order in range(6600, 6605):
        enqueue(outbox, order, "HIGH", FACTS, "3")
    crash_after_sending(outbox, client, monkeypatch)
    enqueue(outbox, 6605, "LOW", [], "3")  # queued meanwhile, never tried
    result = drain(outbox, client)  # the restarted process
    assert (result.sent, result.already_assessed, result.pending) == (1, 5, 0)
    assert shopify.documents == [5, 5, 1]  # sent; asked about together; the new one sent
    assert len(shopify.created) == 6


def test_an_outage_between_documents_leaves_the_rest_pending(outbox, client, shopify) -> None:
    for order in range(6700, 6950):
        enqueue(outbox, order, "LOW", [], "3")
    shopify.down_after = 1
    result = drain(outbox, client, limit=250)
    assert (result.sent, result.pending) == (100, 150) and len(shopify.created) == 100
    attempts = dict(outbox.execute("SELECT attempts, count(*) FROM risk_outbox WHERE state = 'pending' "
                                   "GROUP BY attempts").fetchall())
    assert attempts == {1: 100, 0: 50}  # the failed document may have run: those orders ask Shopify first
    shopify.down_after = None
    result = drain(outbox, client, limit=250)
    assert (result.sent, result.already_assessed, result.pending) == (150, 0, 0)
    assert sorted(c["orderId"] for c in shopify.created) == sorted(f"gid://shopify/Order/{o}" for o in range(6700, 6950))


def test_a_document_of_a_full_bucket_waits_only_for_the_bucket_to_refill(outbox, shopify) -> None:
    from storeflow.components.config import load_settings
    from storeflow.components.shopify.admin import AdminClient, Credentials

    waits: list[float] = []
    settings = load_settings({"shopify": {"admin_origin": shopify.origin, "max_retries": 2}})
    client = AdminClient(settings, Credentials(SHOP, "shpat_test"), sleep=waits.append)
    shopify.bucket = {"maximumAvailable": 1000.0, "currentlyAvailable": 500, "restoreRate": 50.0}  # 1,000 points
    for order in range(6800, 6900):
        enqueue(outbox, order, "LOW", [], "3")
    try:
        assert drain(outbox, client).sent == 100 and shopify.documents == [100]
    finally:
        client.close()
    # the next 1,000-point document needs the bucket full again: 500 points at 50/s; before, the client reckoned with
    # 2,000 points, which a 1,000-point bucket never holds, and waited 30 s per document
    assert waits == [10.0]


def test_an_alias_shopify_fails_to_run_waits_alone_and_the_rest_of_its_document_is_sent(outbox, client, shopify) -> None:
    shopify.failing_orders.add("gid://shopify/Order/7002")
    for order in range(7000, 7006):
        enqueue(outbox, order, "HIGH", FACTS, "3")
    result = drain(outbox, client)
    assert (result.sent, result.pending) == (5, 1) and ids(outbox, "pending") == [7002]  # before: all 6 pending
    (error,) = outbox.execute("SELECT last_error FROM risk_outbox WHERE state = 'pending'").fetchone()
    assert "Internal error" in error
    shopify.failing_orders.clear()
    result = drain(outbox, client)  # asked about first (it may have run), then sent once
    assert (result.sent, result.already_assessed, result.pending) == (1, 0, 0)
    assert sorted(c["orderId"] for c in shopify.created) == [f"gid://shopify/Order/{o}" for o in range(7000, 7006)]
    assert shopify.documents == [6, 1, 1]


def test_an_order_shopify_keeps_failing_on_is_set_aside_with_why_after_its_last_attempt(outbox, client, shopify) -> None:
    """An alias Shopify fails to run every time was asked about and sent again in every drain, for ever."""
    shopify.failing_orders.add("gid://shopify/Order/7102")
    for order in range(7100, 7104):
        enqueue(outbox, order, "HIGH", FACTS, "3")
    results = [drain(outbox, client, max_attempts=3) for _ in range(3)]
    assert [(r.sent, r.rejected, r.pending) for r in results] == [(3, 0, 1), (0, 0, 1), (0, 1, 0)]
    assert ids(outbox, "rejected") == [7102] and ids(outbox, "pending") == []
    (error,) = outbox.execute("SELECT last_error FROM risk_outbox WHERE state = 'rejected'").fetchone()
    assert error.startswith("given up after 3 attempts: ") and "Internal error" in error
    drain(outbox, client, max_attempts=3)
    assert len(shopify.documents) == 5  # 1 + 2 of asking and sending it again; nothing once set aside


def test_an_outage_never_sets_an_order_aside(outbox, client, shopify) -> None:
    enqueue(outbox, 7200, "LOW", FACTS, "3")
    shopify.down_after = 0
    for _ in range(4):
        assert drain(outbox, client, max_attempts=2).rejected == 0
    assert ids(outbox, "pending") == [7200]
    shopify.down_after = None
    assert drain(outbox, client, max_attempts=2).sent == 1


def _sqlite_steps(db, work) -> int:
    """SQLite virtual-machine steps (in hundreds) ``work`` made on ``db``: how much of the tables it read."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    db.set_progress_handler(count, 100)
    try:
        work()
    finally:
        db.set_progress_handler(None, 0)
    return steps[0]


def test_a_drain_reads_the_pending_assessments_not_every_one_sent_before(outbox, client, shopify) -> None:
    """The outbox keeps every order's assessment (a day of a busy store's orders); a drain's work follows what
    waits, or each drain read them all."""
    for order in range(7000, 7005):
        enqueue(outbox, order, "LOW", FACTS, "3")
    few = _sqlite_steps(outbox, lambda: drain(outbox, client))
    with outbox:
        outbox.executemany("INSERT INTO risk_outbox (order_id, risk_level, facts, model_version, state, enqueued_at, "
                           "sent_at) VALUES (?, 'LOW', '[]', '3', 'sent', 0, 0)",
                           [(f"gid://shopify/Order/{n}",) for n in range(100_001, 150_001)])
    for order in range(7005, 7010):
        enqueue(outbox, order, "LOW", FACTS, "3")
    many = _sqlite_steps(outbox, lambda: drain(outbox, client))
    assert len(shopify.created) == 10
    assert many < few * 2 + 20  # 50,000 rows more read would be thousands of hundreds of steps
