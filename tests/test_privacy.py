"""The mandatory privacy webhooks: after customers/redact no trace of the customer is left in any file
under the state dir (raw export, snapshots, Feast offline and online stores, training sets, prediction
logs, event journal, earlier data-request exports); shop/redact leaves no customer at all."""

from __future__ import annotations

import json
import re
import struct
import threading
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient
from test_shopify_sync import TOKEN, FakeShopify  # noqa: F401 - the recorded Admin API
from test_webhook_signing import SECRET, SHOP, delivery, order

from storeflow.components.config import load_settings
from storeflow.components.features.compute import customer_features
from storeflow.components.features.repo import CUSTOMER_VIEW, feature_store
from storeflow.components.ingest import ingest
from storeflow.components.shopify import layout
from storeflow.components.shopify.webhooks import create_app
from storeflow.components.tables import read_tables

ADA, ADA_EMAIL = 7390245781931, "ada.lovelace@example.com"
GRACE, GRACE_EMAIL = 7390277763243, "grace.hopper@example.org"
ADA_ORDERS = [5931473289387, 5931520442539]


def traces(state: Path, customer_id: int, email: str) -> list[str]:
    """Files holding the id (text, or int64 either byte order) or the email, decoded parquet included."""
    needles = [str(customer_id).encode(), email.encode(), struct.pack("<q", customer_id), struct.pack(">q", customer_id)]
    found = []
    for path in sorted(p for p in state.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".parquet":
            data += pq.read_table(path).to_pandas().to_csv().encode()
        if any(needle in data for needle in needles):
            found.append(str(path.relative_to(state)))
    return found


@pytest.fixture
def shop(settings, monkeypatch):
    """A shop with two customers in every store: pulled, ingested, live orders, features, logs, exports."""
    server = FakeShopify()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield from _populated(settings, monkeypatch, server)
    finally:
        server.shutdown()
        server.server_close()


def _populated(settings, monkeypatch, server):
    monkeypatch.setenv("SHOPIFY_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("SHOPIFY_API_SECRET", SECRET)
    hooks = load_settings({**json.loads(settings.to_json()),
                           "project": {"state_dir": str(settings.project.state_dir), "shop_domain": SHOP},
                           "ingest": {"source": "shopify"}, "shopify": {"admin_origin": server.origin},
                           "serving": {"shopify_client_id": "storeflow-test-app"}})
    snapshot = ingest(hooks).snapshot
    training = hooks.data_dir / "training" / "0123abcd.parquet"
    training.parent.mkdir(parents=True)
    now = datetime.now(timezone.utc)
    customer_features(read_tables(snapshot), [now]).to_parquet(training)
    logs = hooks.project.state_dir / "predictions"
    logs.mkdir()
    (logs / "predictions-20260501T000000-1.jsonl").write_text("".join(
        json.dumps({"ts": now.isoformat(), "customer_id": c, "score": 0.5, "features": {"frequency": 2}}) + "\n"
        for c in (ADA, GRACE, ADA)))
    with TestClient(create_app(hooks), base_url="https://storeflow.example") as client:
        client.post("/webhooks", **delivery("orders/create", order(9001, ADA, ADA_EMAIL, 30.0), "wh-ada"))
        client.post("/webhooks", **delivery("orders/create", order(9002, GRACE, GRACE_EMAIL, 50.0), "wh-grace"))
        client.app.state.applier.drain()
        yield hooks, client


def online(hooks, customer_id):
    return feature_store(hooks).get_online_features(features=[f"{CUSTOMER_VIEW}:frequency"],
                                                    entity_rows=[{"customer_id": customer_id}]).to_dict()["frequency"]


def redact_request(customer_id, email, orders):
    return {"shop_id": 954889, "shop_domain": SHOP, "customer": {"id": customer_id, "email": email, "phone": "555-625-1199"},
            "orders_to_redact": orders}


def test_customer_redact_leaves_no_trace_of_the_customer_and_keeps_everyone_else(shop):
    hooks, client = shop
    state = hooks.project.state_dir
    request = {"shop_id": 954889, "shop_domain": SHOP, "orders_requested": ADA_ORDERS,
               "customer": {"id": ADA, "email": ADA_EMAIL, "phone": "555-625-1199"}, "data_request": {"id": 9999}}
    client.post("/webhooks", **delivery("customers/data_request", request, "wh-request"))
    client.app.state.applier.drain()
    assert online(hooks, ADA) == [3]  # two pulled orders and one live
    before = traces(state, ADA, ADA_EMAIL)
    for store in ("data/shopify/store.jsonl", "orders.parquet", "customers.parquet", "customer_features.parquet",
                  "training/0123abcd.parquet", "online.db", "predictions/", "shopify/webhooks.db",
                  "shopify/data_requests/customer-7390245781931-request-9999.json",
                  "/.index-"):  # the applier's index of the snapshot (components/snapshot_index.py)
        assert any(store in path for path in before), f"test setup: no trace in {store}"

    response = client.post("/webhooks", **delivery("customers/redact", redact_request(ADA, ADA_EMAIL, ADA_ORDERS), "wh-redact"))
    client.app.state.applier.drain()

    assert response.status_code == 200
    assert traces(state, ADA, ADA_EMAIL) == []
    assert online(hooks, ADA) == [None]
    # Everyone else is untouched, and every store is still readable.
    assert online(hooks, GRACE) == [2]  # one pulled order, one live
    kept = traces(state, GRACE, GRACE_EMAIL)
    for store in ("data/shopify/store.jsonl", "orders.parquet", "customer_features.parquet", "training/0123abcd.parquet",
                  "online.db", "predictions/", "shopify/webhooks.db"):
        assert any(store in path for path in kept), f"{store} lost the other customer"
    snapshot = next((hooks.data_dir / "snapshots").iterdir())
    tables = read_tables(snapshot)
    assert set(tables["orders"]["customer_id"]) == {GRACE} and len(tables["line_items"]) == 2
    assert set(tables["customers"]["customer_id"]) == {GRACE}
    lines = [json.loads(line)["customer_id"] for line in (state / "predictions").glob("*.jsonl").__next__().open()]
    assert lines == [GRACE]
    # A retried redact delivery is recognised (its id is kept; its body is gone).
    again = client.post("/webhooks", **delivery("customers/redact", redact_request(ADA, ADA_EMAIL, ADA_ORDERS), "wh-redact"))
    assert again.json()["status"] == "duplicate"


def test_data_request_exports_what_is_held_about_the_customer(shop):
    hooks, client = shop
    request = {"shop_id": 954889, "shop_domain": SHOP, "orders_requested": ADA_ORDERS,
               "customer": {"id": ADA, "email": ADA_EMAIL}, "data_request": {"id": 9999}}
    client.post("/webhooks", **delivery("customers/data_request", request, "wh-request"))
    client.app.state.applier.drain()

    export = json.loads((layout.data_requests_dir(hooks) / f"customer-{ADA}-request-9999.json").read_text())["data"]
    assert {r["id"] for r in export["raw_records"] if "Order/" in r["id"]} == {f"gid://shopify/Order/{o}" for o in ADA_ORDERS}
    assert {o["order_id"] for o in export["snapshot"]["orders"]} == set(ADA_ORDERS)
    assert [o["order_id"] for o in export["live_orders"]] == [9001]
    assert export["online_features"]["frequency"] == 3
    assert len(export["predictions"]) == 2
    assert GRACE_EMAIL not in json.dumps(export)


def test_shop_redact_removes_every_customer(shop):
    hooks, client = shop
    client.post("/webhooks", **delivery("shop/redact", {"shop_id": 954889, "shop_domain": SHOP}, "wh-shop-redact"))
    client.app.state.applier.drain()

    state = hooks.project.state_dir
    assert traces(state, ADA, ADA_EMAIL) == [] and traces(state, GRACE, GRACE_EMAIL) == []
    assert online(hooks, GRACE) == [None]


@pytest.mark.parametrize("topic", ["customers/redact", "shop/redact"])
def test_a_redact_scrubs_the_journal_without_rewriting_it_while_deliveries_wait(shop, topic):
    """The receiver acknowledges a delivery once it is committed to the journal, and a redact ended with VACUUM,
    which rewrites the whole journal holding its write lock: at a 560 MB journal every delivery waited 6.1 s for
    its answer (Shopify counts one unanswered after 5 s as failed). The journal's writers zero what they delete
    (secure_delete), so truncating the WAL leaves no trace; the journal is not rewritten."""
    hooks, client = shop
    journal = client.app.state.applier.conn
    statements: list[str] = []
    journal.set_trace_callback(statements.append)
    body = (redact_request(ADA, ADA_EMAIL, ADA_ORDERS) if topic == "customers/redact"
            else {"shop_id": 954889, "shop_domain": SHOP})
    client.post("/webhooks", **delivery(topic, body, "wh-redact"))
    client.app.state.applier.drain()
    journal.set_trace_callback(None)

    assert traces(hooks.project.state_dir, ADA, ADA_EMAIL) == []
    assert any("wal_checkpoint(TRUNCATE)" in s for s in statements)
    assert not [s for s in statements if s.strip().upper().startswith("VACUUM")]


def test_customer_redact_keeps_everyone_elses_order_risk_fields(settings):
    """A snapshot keeps the orders' risk fields beside the store's tables (``order_risk``); erasing one
    customer rewrites the snapshot without their orders' rows and keeps everyone else's. The rewrite left the
    table out: every customer's risk fields were lost with one customer's, and the risk stage then needed the
    bulk export again."""
    import pyarrow as pa

    from conftest import small_store
    from storeflow.components.ingest.snapshot import read_manifest, write_snapshot
    from storeflow.components.risk.orders import COLUMNS, TABLE_SCHEMA, snapshot_risk_fields
    from storeflow.components.shopify.privacy import Subject, erase_snapshots

    tables = small_store(customers=20)
    orders = tables["orders"]
    risk = pd.DataFrame({"order_id": orders["order_id"], **{c: "x" for c in COLUMNS[1:8]}, "disputes": 0,
                         "shopify_risk_level": "LOW"})
    snapshot = settings.data_dir / "snapshots" / "2026-01-01"
    write_snapshot(snapshot, {**tables, "order_risk": pa.Table.from_pandas(risk, schema=TABLE_SCHEMA,
                                                                           preserve_index=False)}, {})
    erased = int(orders["customer_id"].iloc[0])

    assert erase_snapshots(settings, Subject(erased), "test") > 0

    left = snapshot_risk_fields(snapshot)
    others = set(orders.loc[orders["customer_id"] != erased, "order_id"])
    assert left is not None and set(left["order_id"]) == others
    assert read_manifest(snapshot)["extra_tables"]["order_risk"]["rows"] == len(others)
    assert set(read_tables(snapshot)["orders"]["order_id"]) == others


@pytest.mark.parametrize("email", ["", "   "])
def test_a_customer_redact_with_a_blank_email_erases_no_one_elses_orders_without_an_email(settings, email):
    """Orders without an email (a point-of-sale sale, a draft: Shopify's REST order says ``""``) matched a redact
    whose customer's email was blank: ``" "`` trimmed to ``""``, and every email-less order of every customer was
    erased with theirs, and those customers counted as the same person. A blank email is now no email: only the
    customer's id and the orders the request names are erased."""
    from conftest import small_store
    from storeflow.components.ingest.snapshot import write_snapshot
    from storeflow.components.shopify.privacy import Subject, erase_snapshots, resolve
    from storeflow.components.shopify.journal import connect

    tables = small_store(customers=20)
    orders = tables["orders"]
    erased = int(orders["customer_id"].iloc[0])
    orders["email"] = orders["email"].astype(object)
    orders.loc[orders.index % 3 == 0, "email"] = None  # every third order has no email
    orders.loc[orders.index % 3 == 1, "email"] = ""
    snapshot = settings.data_dir / "snapshots" / "2026-01-01"
    write_snapshot(snapshot, tables, {})
    with connect(settings.project.state_dir / "journal.db") as conn:
        subject = resolve(settings, conn, Subject(erased, email))

    assert subject.aliases == set()
    assert erase_snapshots(settings, subject, "test") > 0

    others = set(orders.loc[orders["customer_id"] != erased, "order_id"])
    assert set(read_tables(snapshot)["orders"]["order_id"]) == others


@pytest.mark.parametrize("fails", ["segment outbox locked", "proof scan finds a trace"])
def test_a_customer_redact_that_fails_partway_is_carried_out_in_full_when_tried_again(shop, monkeypatch, fails):
    """The erasure emptied every journal body naming the customer, its own request's among them, before the stores
    after the journal (risk history, velocity, the segment outbox) and the proof scan: a try that failed there
    (``database is locked`` on segments.db) left a request without a body, which the next try marked applied
    ('erased') without erasing anything. The request now keeps its body until it is done."""
    import sqlite3

    from storeflow.components.shopify import metafields, privacy

    hooks, client = shop
    outbox = metafields.connect(metafields.outbox_path(hooks))
    metafields.enqueue(outbox, [metafields.Segment(ADA, "HIGH", 0.9), metafields.Segment(GRACE, "LOW", 0.1)], "1")
    outbox.close()
    if fails == "segment outbox locked":
        def broken(*args):
            raise sqlite3.OperationalError("database is locked")
        monkeypatch.setattr(privacy.metafields, "forget", broken)
        raised = sqlite3.OperationalError
    else:
        real = privacy.find_traces
        monkeypatch.setattr(privacy, "find_traces", lambda *args: [*real(*args), "somewhere a store left"])
        raised = privacy.ErasureIncomplete
    client.post("/webhooks", **delivery("customers/redact", redact_request(ADA, ADA_EMAIL, ADA_ORDERS), "wh-redact"))
    with pytest.raises(raised):
        client.app.state.applier.drain()
    monkeypatch.undo()

    client.app.state.applier.drain()

    journal = client.app.state.applier.conn
    applied, outcome, body = journal.execute(
        "SELECT applied_at, outcome, body FROM events WHERE webhook_id = 'wh-redact'").fetchone()
    assert applied is not None and body is None
    assert outcome != "erased" and "journal_rows" in json.loads(outcome)  # carried out again, not passed over
    assert traces(hooks.project.state_dir, ADA, ADA_EMAIL) == []
    assert [c for c, in metafields.connect(metafields.outbox_path(hooks)).execute(
        "SELECT customer_id FROM segment_outbox")] == [metafields.CUSTOMER_GID + str(GRACE)]


def test_redacting_an_email_leaves_the_customer_whose_email_ends_with_it(shop):
    """jo@example.com was looked for as a substring: redacting it emptied the journal bodies of mojo@example.com's
    orders (one not applied yet was then dropped as 'erased') and the proof scan failed on mojo's live rows."""
    hooks, client = shop
    jo, mojo = 1000000000111, 1000000000222
    client.post("/webhooks", **delivery("orders/create", order(9101, jo, "jo@example.com", 10.0), "wh-jo"))
    client.post("/webhooks", **delivery("orders/create", order(9102, mojo, "mojo@example.com", 20.0), "wh-mojo-1"))
    client.app.state.applier.drain()
    client.post("/webhooks", **delivery("customers/redact", redact_request(jo, "jo@example.com", [9101]), "wh-redact"))
    client.post("/webhooks", **delivery("orders/create", order(9103, mojo, "mojo@example.com", 30.0), "wh-mojo-2"))

    client.app.state.applier.drain()

    journal = client.app.state.applier.conn
    outcomes = dict(journal.execute("SELECT webhook_id, outcome FROM events WHERE webhook_id LIKE 'wh-%'"))
    assert outcomes["wh-mojo-1"] == outcomes["wh-mojo-2"] == "live"
    assert "journal_rows" in json.loads(outcomes["wh-redact"])
    assert journal.execute("SELECT count(*) FROM events WHERE webhook_id LIKE 'wh-mojo-%' AND body IS NOT NULL"
                           ).fetchone() == (2,)
    assert sorted(journal.execute("SELECT order_id FROM live_orders WHERE customer_id = ?", (mojo,))) == [(9102,), (9103,)]
    assert online(hooks, mojo) == [2]
    left = [p for p in hooks.project.state_dir.rglob("*") if p.is_file() and (
            str(jo).encode() in (data := p.read_bytes()) or re.search(rb"(?<![a-z0-9._%+-])jo@example\.com", data))]
    assert left == []


def test_a_customer_redact_naming_more_orders_than_sqlite_takes_variables_is_carried_out(shop):
    """A placeholder per order Shopify named: a customers/redact naming 40,000 orders failed with 'too many SQL
    variables' on every try, and the applier applied nothing after it."""
    import sqlite3

    hooks, client = shop
    # SQLite's default build takes 32,766 (Debian's Python 250,000: Shopify's request may name more still)
    client.app.state.applier.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32_766)
    named = [*ADA_ORDERS, 9001, *range(10**12, 10**12 + 40_000)]
    client.post("/webhooks", **delivery("customers/redact", redact_request(ADA, ADA_EMAIL, named), "wh-redact"))
    client.post("/webhooks", **delivery("orders/create", order(9003, GRACE, GRACE_EMAIL, 5.0), "wh-after"))

    client.app.state.applier.drain()

    journal = client.app.state.applier.conn
    outcomes = dict(journal.execute("SELECT webhook_id, outcome FROM events WHERE webhook_id IN ('wh-redact', 'wh-after')"))
    assert "journal_rows" in json.loads(outcomes["wh-redact"]) and outcomes["wh-after"] == "live"
    assert sorted(journal.execute("SELECT order_id FROM live_orders")) == [(9002,), (9003,)]
    assert online(hooks, ADA) == [None] and online(hooks, GRACE) == [3]
