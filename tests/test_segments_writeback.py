"""Spend tiers and repeat probabilities written back to Shopify as customer metafields (metafieldsSet) through
the SQLite outbox, against Admin API answers in Shopify's payload format (tests/data/shopify_api) served on
127.0.0.1: at most 25 metafields a call, only what changed, throttling waited out, nothing lost while
Shopify is down, user errors parked with Shopify's words."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from fake_admin import FakeAdminServer, admin_client, running

from storeflow.components.config import load_settings
from storeflow.components.shopify import metafields
from storeflow.components.shopify.metafields import Segment, drain, enqueue

RECORDED = Path(__file__).parent / "data" / "shopify_api"
SHOP = "kettle-and-leaf.myshopify.com"


class FakeAdmin(FakeAdminServer):
    """Sets customer metafields (atomically, as Shopify does); can throttle, fail with 503, or not know a customer."""

    def __init__(self):
        super().__init__()
        self.calls: list[list[dict]] = []  # every metafieldsSet input received
        self.stored: dict[tuple[str, str], dict] = {}  # (owner, key) -> the metafield Shopify holds
        self.unknown_customers: set[str] = set()
        self.definitions: dict[tuple[str, str], dict] = {}  # (namespace, key) -> the definition Shopify holds
        self.refuse_definitions = False  # answer as a shop at its definition limit

    def respond(self, body: dict) -> tuple[int, dict]:
        if "metafieldDefinitionCreate" in body["query"]:
            return self.define(body["variables"]["definition"])
        given = body["variables"]["metafields"]
        self.calls.append(given)
        unknown = [i for i, m in enumerate(given) if m["ownerId"] in self.unknown_customers]
        if unknown:
            answer = json.loads((RECORDED / "metafields_set_user_error.json").read_text())
            template = answer["data"]["metafieldsSet"]["userErrors"][0]
            answer["data"]["metafieldsSet"]["userErrors"] = [
                {**template, "field": ["metafields", str(i), "ownerId"], "elementIndex": i} for i in unknown]
            return 200, answer  # atomic: nothing of the call is stored
        for metafield in given:
            self.stored[(metafield["ownerId"], metafield["key"])] = metafield
        return 200, json.loads((RECORDED / "metafields_set.json").read_text())

    def define(self, definition: dict) -> tuple[int, dict]:
        if self.refuse_definitions:
            return 200, json.loads((RECORDED / "metafield_definition_invalid.json").read_text())
        if (definition["namespace"], definition["key"]) in self.definitions:
            return 200, json.loads((RECORDED / "metafield_definition_taken.json").read_text())
        self.definitions[(definition["namespace"], definition["key"])] = definition
        answer = json.loads((RECORDED / "metafield_definition_created.json").read_text())
        answer["data"]["metafieldDefinitionCreate"]["createdDefinition"] |= {"key": definition["key"]}
        return 200, answer


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
    db = metafields.connect(tmp_path / "segments.db")
    yield db
    db.close()


def _segments(count: int, start: int = 7001) -> list[Segment]:
    return [Segment(start + i, ("LOW", "MEDIUM", "HIGH")[i % 3], i / count) for i in range(count)]


def _gid(number: int) -> str:
    return f"gid://shopify/Customer/{number}"


def test_every_customer_gets_its_tier_and_probability_in_calls_of_at_most_25_metafields(outbox, client, shopify):
    assert enqueue(outbox, _segments(30), "4") == 30
    result = drain(outbox, client)
    assert (result.sent, result.rejected, result.pending, result.calls) == (30, 0, 0, 3)
    assert [len(call) for call in shopify.calls] == [24, 24, 12]
    assert len(shopify.stored) == 60
    assert shopify.stored[(_gid(7003), "predicted_spend_tier")] == {
        "ownerId": _gid(7003), "namespace": "storeflow", "key": "predicted_spend_tier",
        "type": "single_line_text_field", "value": "HIGH"}
    assert shopify.stored[(_gid(7003), "repeat_probability")] == {
        "ownerId": _gid(7003), "namespace": "storeflow", "key": "repeat_probability",
        "type": "number_decimal", "value": "0.07"}
    assert drain(outbox, client).calls == 0  # nothing left to send


def test_scoring_again_sends_only_the_customers_whose_values_changed(outbox, client, shopify):
    segments = _segments(5)
    enqueue(outbox, segments, "4")
    drain(outbox, client)
    again = [*segments[:4], Segment(segments[4].customer_id, "LOW", 0.05)]
    assert enqueue(outbox, again, "5") == 1
    result = drain(outbox, client)
    assert (result.sent, result.calls) == (1, 1) and [m["ownerId"] for m in shopify.calls[-1]] == [_gid(7005)] * 2
    assert shopify.stored[(_gid(7005), "predicted_spend_tier")]["value"] == "LOW"
    assert shopify.stored[(_gid(7005), "repeat_probability")]["value"] == "0.05"


def test_throttling_is_waited_out(outbox, client, shopify):
    enqueue(outbox, _segments(3), "4")
    shopify.throttle_next = 2
    assert drain(outbox, client).sent == 3 and len(shopify.stored) == 6


def test_nothing_is_lost_while_shopify_is_down(outbox, client, shopify):
    enqueue(outbox, _segments(14), "4")
    shopify.down = True
    result = drain(outbox, client)
    assert (result.sent, result.pending) == (0, 14) and shopify.stored == {}
    assert "503" in outbox.execute("SELECT last_error FROM segment_outbox WHERE customer_id = ?",
                                   (_gid(7001),)).fetchone()[0]
    shopify.down = False
    assert drain(outbox, client).sent == 14 and len(shopify.stored) == 28


def test_a_customer_shopify_does_not_know_is_parked_with_its_message_and_the_batch_goes_again(outbox, client, shopify):
    shopify.unknown_customers.add(_gid(7002))
    enqueue(outbox, _segments(4), "4")
    result = drain(outbox, client)
    assert (result.sent, result.rejected, result.pending) == (3, 1, 0)
    state, error = outbox.execute("SELECT state, last_error FROM segment_outbox WHERE customer_id = ?",
                                  (_gid(7002),)).fetchone()
    assert state == "rejected" and "Owner does not exist" in error and "metafields.2.ownerId" in error
    assert {owner for owner, _ in shopify.stored} == {_gid(7001), _gid(7003), _gid(7004)}


def test_a_score_queued_while_its_batch_was_in_flight_is_sent_next(outbox, client, shopify, monkeypatch):
    enqueue(outbox, _segments(2), "4")
    real = client.execute

    def rescored_meanwhile(query, variables=None):
        answer = real(query, variables)
        if len(shopify.calls) == 1:  # the merchant's nightly scoring ran while the first call was out
            enqueue(outbox, [Segment(7001, "HIGH", 0.9)], "5")
        return answer

    monkeypatch.setattr(client, "execute", rescored_meanwhile)
    assert drain(outbox, client).pending == 0
    assert shopify.stored[(_gid(7001), "predicted_spend_tier")]["value"] == "HIGH"
    assert shopify.stored[(_gid(7001), "repeat_probability")]["value"] == "0.90"


@pytest.mark.parametrize(("segment", "message"), [
    (Segment(7001, "VIP", 0.5), "customer 7001: spend_tier 'VIP' is not one of LOW, MEDIUM, HIGH"),
    (Segment(7001, "LOW", 1.5), "customer 7001: repeat_probability 1.5 is not a probability"),
    (Segment(7001, "LOW", float("nan")), "repeat_probability nan is not a probability"),
    (Segment("gid://shopify/Order/1", "LOW", 0.5), "neither a number nor a gid://shopify/Customer/"),
])
def test_bad_segments_are_refused_naming_what_is_wrong_before_anything_is_stored(outbox, segment, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        enqueue(outbox, [*_segments(2, start=8001), segment], "4")
    assert outbox.execute("SELECT count(*) FROM segment_outbox").fetchone()[0] == 0


def test_segments_come_from_the_propensity_model_and_the_spend_models_cut_points():
    from sklearn.dummy import DummyRegressor
    from sklearn.linear_model import LogisticRegression

    rows = pd.DataFrame({"customer_id": [11, 12, 13], "frequency": [1.0, 4.0, 9.0], "recency_days": [300.0, 40.0, 5.0]})
    x = rows[["frequency", "recency_days"]]
    propensity = LogisticRegression().fit(x, [0, 1, 1])

    class Spend:
        def predict(self, frame):
            return frame["frequency"].to_numpy() * 10.0

    segments = metafields.score_segments(rows, propensity, Spend(), [15.0, 60.0])
    assert [s.spend_tier for s in segments] == ["LOW", "MEDIUM", "HIGH"]
    assert [s.customer_id for s in segments] == [11, 12, 13]
    assert np.allclose([s.repeat_probability for s in segments], propensity.predict_proba(x)[:, 1])
    with pytest.raises(ValueError, match="lack the model's input.*recency_days"):
        metafields.score_segments(rows.drop(columns="recency_days"), propensity, DummyRegressor(), [1.0, 2.0])


def test_storeflow_write_segments_scores_every_customer_with_the_champion_and_sends_them(tmp_path, shopify,
                                                                                        monkeypatch):
    """The command a merchant (or a schedule) runs after training: the champion's tier and probability for
    every customer of the newest feature snapshot, in Shopify; run again, nothing changed, nothing sent."""
    from typer.testing import CliRunner

    from conftest import quick_overrides, small_store, write_snapshot
    from storeflow.components.evaluate import evaluate
    from storeflow.components.features import build_features
    from storeflow.components.features import offline
    from storeflow.components.features.repo import CUSTOMER_VIEW, source_path
    from storeflow.components.register import register
    from storeflow.components.train import train
    from storeflow.pipelines.cli import app

    overrides = quick_overrides(tmp_path, shopify={"admin_origin": shopify.origin, "max_retries": 2})
    settings = load_settings(overrides)
    features = build_features(settings, write_snapshot(small_store(), tmp_path / "snapshot"))
    trained = train(settings, features)
    register(settings, trained, evaluate(settings, features, trained))
    config = tmp_path / "storeflow.yaml"
    config.write_text(json.dumps(overrides))
    monkeypatch.setenv("SHOPIFY_ACCESS_TOKEN", "shpat_test")
    monkeypatch.setenv("SHOPIFY_SHOP_DOMAIN", SHOP)

    # The webhook applier's rows of one customer, after the snapshot: the newest rows of the whole history. Segments
    # are for every customer of the snapshot (before the history was a dataset, the last batch's customers only).
    history = source_path(settings, CUSTOMER_VIEW)
    snapshot_rows = pd.read_parquet(offline.snapshot_part(history))
    customers = set(snapshot_rows.loc[snapshot_rows["event_timestamp"] == snapshot_rows["event_timestamp"].max(),
                                      "customer_id"])
    live = snapshot_rows[snapshot_rows["customer_id"] == min(customers)].tail(1).assign(
        event_timestamp=snapshot_rows["event_timestamp"].max() + pd.Timedelta(days=1))
    offline.append(history, pa.Table.from_pandas(live, preserve_index=False))

    result = CliRunner().invoke(app, ["write-segments", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert len(customers) > 100
    assert {owner for owner, _ in shopify.stored} == {_gid(c) for c in customers}
    assert all(len(call) <= 25 for call in shopify.calls)
    tiers = {m["value"] for (_, key), m in shopify.stored.items() if key == "predicted_spend_tier"}
    assert tiers <= {"LOW", "MEDIUM", "HIGH"} and len(tiers) > 1
    assert f"{len(customers)} customers scored" in result.output.replace("\n", " ")
    calls = len(shopify.calls)
    again = CliRunner().invoke(app, ["write-segments", "--config", str(config)])
    assert again.exit_code == 0 and len(shopify.calls) == calls and "0 new or changed" in again.output
    # Segments filter only on defined metafields: both were defined once, for customers, with their types.
    assert set(shopify.definitions) == {("storeflow", "predicted_spend_tier"), ("storeflow", "repeat_probability")}
    tier, probability = shopify.definitions[("storeflow", "predicted_spend_tier")], \
        shopify.definitions[("storeflow", "repeat_probability")]
    assert tier["ownerType"] == probability["ownerType"] == "CUSTOMER"
    assert (tier["type"], probability["type"]) == ("single_line_text_field", "number_decimal")
    assert json.loads(tier["validations"][0]["value"]) == ["LOW", "MEDIUM", "HIGH"]
    assert "created the customer metafield definition" in result.output
    assert "created the customer metafield definition" not in again.output  # TAKEN: already there, fine


def test_a_refused_definition_stops_the_write_back_with_shopifys_words_and_keeps_the_values_queued(outbox, client,
                                                                                                   shopify):
    shopify.refuse_definitions = True
    enqueue(outbox, _segments(5), "3")
    with pytest.raises(metafields.ShopifyError, match="predicted_spend_tier.*maximum number of definitions"):
        metafields.ensure_definitions(client)
    assert outbox.execute("SELECT count(*) FROM segment_outbox WHERE state = 'pending'").fetchone()[0] == 5
    shopify.refuse_definitions = False
    assert metafields.ensure_definitions(client) == ["predicted_spend_tier", "repeat_probability"]
    assert metafields.ensure_definitions(client) == []  # defined already: nothing created, no error
    assert drain(outbox, client).sent == 5


@pytest.mark.parametrize("request_kind", ["customers/redact", "shop/redact"])
def test_a_redacted_customer_leaves_no_trace_in_the_segment_outbox(tmp_path, request_kind):
    """The outbox holds each customer's gid: without erasing it there, customers/redact's own scan found the
    customer in segments.db and raised ErasureIncomplete (retried forever)."""
    from storeflow.components.shopify import layout, privacy
    from storeflow.components.shopify.journal import connect

    settings = load_settings({"project": {"state_dir": str(tmp_path / "state"), "shop_domain": SHOP}})
    db = metafields.connect(metafields.outbox_path(settings))
    enqueue(db, [Segment(8800000005, "HIGH", 0.8), Segment(8800000006, "LOW", 0.1)], "4")
    db.close()
    conn = connect(layout.journal_path(settings))
    try:
        if request_kind == "customers/redact":
            removed = privacy.redact_customer(settings, conn, None, privacy.Subject(8800000005, "erase.me@example.com"))
            left = [_gid(8800000006)]
        else:
            removed = privacy.redact_shop(settings, conn, None, SHOP)
            left = []
    finally:
        conn.close()
    assert removed["segment_rows"] == (1 if left else 2)
    db = metafields.connect(metafields.outbox_path(settings))
    assert [c for (c,) in db.execute("SELECT customer_id FROM segment_outbox")] == left
    db.close()


def test_a_data_request_exports_the_tier_and_probability_written_back_for_the_customer(tmp_path):
    from storeflow.components.shopify import layout, privacy
    from storeflow.components.shopify.journal import connect

    settings = load_settings({"project": {"state_dir": str(tmp_path / "state"), "shop_domain": SHOP}})
    db = metafields.connect(metafields.outbox_path(settings))
    enqueue(db, [Segment(8800000005, "HIGH", 0.8), Segment(8800000006, "LOW", 0.1)], "4")
    db.close()
    conn = connect(layout.journal_path(settings))
    try:
        out = privacy.export_customer(settings, conn, None, privacy.Subject(8800000005, "ask@example.com"), 77)
    finally:
        conn.close()
    (row,) = json.loads(out.read_text())["data"]["shopify_segments"]
    assert (row["customer_id"], row["spend_tier"], row["repeat_probability"], row["model_version"]) == (
        _gid(8800000005), "HIGH", "0.80", "4")


def test_a_drain_reads_the_pending_customers_not_every_customer_sent_before(outbox, client, shopify):
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    enqueue(outbox, _segments(5), "4")
    outbox.set_progress_handler(count, 100)
    drain(outbox, client)
    few, steps[0] = steps[0], 0
    outbox.set_progress_handler(None, 0)
    with outbox:
        outbox.executemany("INSERT INTO segment_outbox (customer_id, spend_tier, repeat_probability, model_version, "
                           "state, enqueued_at) VALUES (?, 'LOW', '0.1', '4', 'sent', 0)",
                           [(_gid(n),) for n in range(100_001, 150_001)])
    enqueue(outbox, _segments(5, start=90_001), "4")
    outbox.set_progress_handler(count, 100)
    drain(outbox, client)
    outbox.set_progress_handler(None, 0)
    assert len(shopify.stored) == 20
    assert steps[0] < few * 2 + 20  # every customer's row read would be thousands of hundreds of steps
