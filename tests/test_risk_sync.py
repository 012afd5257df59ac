"""What order risk syncs to disk: the journal's commits (a delivery is answered 200 once synced) and the write-back's
commit of the attempts it is about to make; not the scorer's commits, nor the answers the write-back records. Those
a power cut may lose are done again from what was synced, once: the journal's orders scored again, the orders
tried asking Shopify before going out again. Each sync cost ~170 us of CPU and ~400 us of wall time here."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing

import httpx

from storeflow.components.config import load_settings
from storeflow.components.risk.realtime import RiskScorer
from storeflow.components.risk.writeback import risk_db
from storeflow.components.shopify import assessments, layout
from storeflow.components.shopify.assessments import drain, enqueue
from storeflow.components.shopify.journal import connect
from test_risk_realtime import NAME, _journal, new_order
from fake_admin import admin_client, running
from test_risk_writeback import FACTS, SHOP, FakeAdmin
from tests.conftest import quick_overrides


def _outbox(settings) -> list[str]:
    with closing(sqlite3.connect(risk_db(settings))) as db:
        return [o for (o,) in db.execute("SELECT order_id FROM risk_outbox ORDER BY rowid")]


def test_commits_the_scorer_did_not_sync_are_scored_again_from_the_journal_once_lost(tmp_path):
    """A power cut can lose the scorer's last commits: put back as such a loss leaves the risk database (a copy from
    before the second batch), the second batch's orders are scored again from the journal with the same features
    and queued once each, in journal order."""
    settings = load_settings(quick_overrides(tmp_path, risk={"endpoint": "http://risk.test"}))
    orders = [new_order(9_600_000_401 + i, 401 + i, f"p{i}@example.com") for i in range(6)]
    asked: list[dict] = []

    def respond(request: httpx.Request) -> httpx.Response:
        instances = json.loads(request.content)["instances"]
        asked.extend(instances)
        return httpx.Response(200, json={"model_name": NAME, "model_version": "4", "predictions": [
            {"order_id": i["order_id"], "score": 0.5, "level": "MEDIUM",
             "facts": [{"description": "Risk score 0.500", "sentiment": "NEUTRAL"}]} for i in instances]})

    def scorer() -> RiskScorer:
        return RiskScorer(settings, http=httpx.Client(transport=httpx.MockTransport(respond)))

    first = scorer()
    assert first.db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    _journal(settings, *((f"p{n}", "orders/create", o) for n, o in enumerate(orders[:3])))
    with closing(connect(layout.journal_path(settings))) as journal_db:
        assert journal_db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL: 200 once synced
    assert first.score_pending() == 3
    path, saved = risk_db(settings), tmp_path / "before.db"
    first.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(path, saved)
    _journal(settings, *((f"p{n}", "orders/create", o) for n, o in enumerate(orders[3:], 3)))
    assert first.score_pending() == 3
    first.stop()
    for suffix in ("", "-wal", "-shm"):  # the disk as the power cut left it: the second batch's commits gone
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    shutil.copy(saved, path)
    assert _outbox(settings) == [f"gid://shopify/Order/{o['id']}" for o in orders[:3]]

    again = scorer()
    try:
        assert again.score_pending() == 3
    finally:
        again.stop()
    assert _outbox(settings) == [f"gid://shopify/Order/{o['id']}" for o in orders]
    assert [i["order_id"] for i in asked] == [str(o["id"]) for o in orders + orders[3:]]
    assert asked[6:] == asked[3:6]  # the same features: the online store had counted them already


def test_the_write_back_syncs_the_attempts_it_is_about_to_make_and_not_the_answers(tmp_path):
    """On the outbox's connection (not synced), the commit of a drain's attempts is made synced (lost, an order sent
    could go out again without asking Shopify); the answers' commit is not (lost, those orders ask Shopify first:
    test_risk_writeback's crash tests)."""
    with running(FakeAdmin()) as shopify, closing(assessments.connect(tmp_path / "risk.db")) as db:
        client = admin_client(shopify, SHOP)
        try:
            enqueue(db, 5101, "HIGH", FACTS, "3")
            statements: list[str] = []
            db.set_trace_callback(statements.append)
            assert drain(db, client).sent == 1
        finally:
            client.close()
    level, in_force = "", []  # the synchronous level each COMMIT was made under
    for statement in statements:
        if statement.startswith("PRAGMA synchronous="):
            level = statement.split("=")[1]
        elif statement == "COMMIT":
            in_force.append(level)
    attempts = next(i for i, s in enumerate(statements) if "attempts = attempts + 1" in s)
    assert in_force == ["FULL", "1"]  # the attempts' commit synced, the answers' not
    assert statements[attempts - 2:attempts] == ["PRAGMA synchronous=FULL", "BEGIN IMMEDIATE"]
    assert db_level(tmp_path / "risk.db") == 1


def db_level(path) -> int:
    """A new connection's synchronous level as assessments.connect leaves it."""
    with closing(assessments.connect(path)) as db:
        return db.execute("PRAGMA synchronous").fetchone()[0]
