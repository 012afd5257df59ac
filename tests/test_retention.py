"""What the receiver's databases keep: deliveries applied (and scored) and assessments written back longer ago than
``shopify.retention_days`` are removed; everything still needed stays, and a reader's place stays valid."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from test_webhook_signing import SECRET, SHOP, delivery, order

from storeflow.components.config import ConfigError, load_settings
from storeflow.components.shopify import assessments, journal, layout
from storeflow.components.shopify.assessments import Fact
from storeflow.components.shopify.journal import Event, Journal
from storeflow.components.shopify.retention import prune
from storeflow.components.shopify.webhooks import create_app

NOW = datetime(2026, 12, 6, 12, tzinfo=timezone.utc)
OLD = (NOW - timedelta(days=30)).isoformat()
RECENT = (NOW - timedelta(days=1)).isoformat()


def _journal(path: Path, *ids: str) -> dict[str, int]:
    """Deliveries journaled as the receiver does; webhook id -> row."""
    writer = Journal(path)
    for webhook_id in ids:
        assert writer.record_now(Event(webhook_id, SHOP, "orders/create", b'{"id": 1}'))
    writer.close()
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT webhook_id, rowid FROM events"))


def _set(path: Path, webhook_id: str, received_at: str, applied: bool = True, parked: bool = False) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE events SET received_at = ?, applied_at = ?, outcome = ? WHERE webhook_id = ?",
                     (received_at, received_at if applied or parked else None,
                      journal.DEAD_LETTER if parked else "applied" if applied else None, webhook_id))
        if parked:
            conn.execute("INSERT INTO dead_letters VALUES (?, ?, 'no such product')", (webhook_id, received_at))


def _left(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {webhook_id for (webhook_id,) in conn.execute("SELECT webhook_id FROM events")}


def test_applied_deliveries_past_retention_go_and_what_is_still_needed_stays(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.db"
    rows = _journal(path, "old-applied", "old-unapplied", "old-parked", "recent-applied", "old-unread", "newest")
    _set(path, "old-applied", OLD)
    _set(path, "old-unapplied", OLD, applied=False)
    _set(path, "old-parked", OLD, parked=True)
    _set(path, "recent-applied", RECENT)
    _set(path, "old-unread", OLD)  # applied, but past the scorer's place
    _set(path, "newest", OLD)
    conn = journal.connect(path)
    cutoff = (NOW - timedelta(days=7)).isoformat()
    assert journal.prune(conn, cutoff, read_through=rows["recent-applied"]) == 1
    assert _left(path) == {"old-unapplied", "old-parked", "recent-applied", "old-unread", "newest"}
    assert journal.dead_letters(conn)[0]["reason"] == "no such product"  # parked with its body and why
    assert journal.prune(conn, cutoff) == 1  # no reader: up to the newest row, which stays
    assert _left(path) == {"old-unapplied", "old-parked", "recent-applied", "newest"}
    conn.close()


def test_a_delivery_after_everything_was_pruned_comes_after_the_scorers_place(tmp_path: Path) -> None:
    """The scorer reads the journal by row number; SQLite numbers a new row after the highest one left, so an
    emptied journal would give the next delivery row 1, behind the scorer's place, and it would never be scored."""
    path = tmp_path / "webhooks.db"
    rows = _journal(path, "a", "b", "c")
    for webhook_id in rows:
        _set(path, webhook_id, OLD)
    conn = journal.connect(path)
    place = max(rows.values())  # the scorer has read them all
    assert journal.prune(conn, NOW.isoformat(), read_through=place) == 2
    conn.close()
    after = _journal(path, "d")["d"]
    assert after > place


def test_assessments_written_back_past_retention_go_and_the_rest_stay(tmp_path: Path) -> None:
    db = assessments.connect(tmp_path / "risk.db")
    for order_id in (1, 2, 3, 4):
        assessments.enqueue(db, order_id, "LOW", [Fact("Returning customer", "POSITIVE")], "3")
    old, recent = (NOW - timedelta(days=30)).timestamp(), (NOW - timedelta(days=1)).timestamp()
    db.execute("UPDATE risk_outbox SET state = 'sent', sent_at = ? WHERE order_id LIKE '%/1'", (old,))
    db.execute("UPDATE risk_outbox SET state = 'sent', sent_at = ? WHERE order_id LIKE '%/2'", (recent,))
    db.execute("UPDATE risk_outbox SET state = 'rejected', enqueued_at = ? WHERE order_id LIKE '%/3'", (old,))
    db.execute("UPDATE risk_outbox SET enqueued_at = ? WHERE order_id LIKE '%/4'", (old,))  # still waiting
    assert assessments.prune(db, (NOW - timedelta(days=7)).timestamp()) == 1
    left = {o.rsplit("/", 1)[1]: s for o, s in db.execute("SELECT order_id, state FROM risk_outbox")}
    assert left == {"2": "sent", "3": "rejected", "4": "pending"}
    db.close()


def _settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **risk):
    monkeypatch.setenv("SHOPIFY_API_SECRET", SECRET)
    monkeypatch.setenv("SHOPIFY_ACCESS_TOKEN", "shpat_test")
    return load_settings({"project": {"state_dir": str(tmp_path / "state"), "shop_domain": SHOP}, "risk": risk,
                          "serving": {"shopify_client_id": "storeflow-test-app"}})


def test_with_order_risk_on_only_what_the_scorer_has_read_goes(tmp_path: Path, monkeypatch) -> None:
    from storeflow.components.risk.realtime import open_risk_db

    settings = _settings(tmp_path, monkeypatch, endpoint="http://127.0.0.1:9")
    path = layout.journal_path(settings)
    assert prune(settings, NOW).deliveries == 0  # no scorer has started: nothing is known read
    rows = _journal(path, "read", "unread", "newest")
    for webhook_id in rows:
        _set(path, webhook_id, OLD)
    db = open_risk_db(settings)
    db.execute("UPDATE risk_cursor SET journal_rowid = ?", (rows["read"],))
    db.close()
    assert prune(settings, NOW).deliveries == 1
    assert _left(path) == {"unread", "newest"}


def test_the_receiver_removes_what_is_past_retention_and_keeps_taking_deliveries(tmp_path: Path, monkeypatch) -> None:
    settings = _settings(tmp_path, monkeypatch)
    path = layout.journal_path(settings)
    rows = _journal(path, *(f"old-{n}" for n in range(1200)), "recent")
    for webhook_id in rows:
        _set(path, webhook_id, OLD if webhook_id != "recent" else RECENT)
    with TestClient(create_app(settings, apply=False), base_url="https://storeflow.example") as client:
        deadline = time.monotonic() + 30
        while len(_left(path)) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = client.post("/webhooks", **delivery("orders/create", order(9001, 7390245781931, "ada@example.com", 20.0), "after-pruning"))
        assert answer.status_code == 200 and answer.json()["status"] == "accepted"
        retry = client.post("/webhooks", **delivery("orders/create", order(9001, 7390245781931, "ada@example.com", 20.0), "recent"))
        assert retry.json()["status"] == "duplicate"  # within retention: still known
    assert _left(path) == {"recent", "after-pruning"}


@pytest.mark.parametrize("days", [0, 0.5])
def test_a_retention_shorter_than_shopifys_retries_is_refused(days) -> None:
    with pytest.raises(ConfigError, match=r"shopify\.retention_days: Input should be greater than or equal to 1"):
        load_settings({"shopify": {"retention_days": days}})


def test_a_stopping_receiver_ends_pruning_after_the_transaction_under_way(tmp_path: Path) -> None:
    """The receiver's stop waits for its pruning thread: a long prune ends between transactions, not at the end."""
    import threading

    path = tmp_path / "webhooks.db"
    rows = _journal(path, *(f"old-{n}" for n in range(journal.PRUNE_ROWS * 3)))
    for webhook_id in rows:
        _set(path, webhook_id, OLD)

    class StopsAfterOne(threading.Event):
        asked = 0

        def is_set(self) -> bool:  # asked once a batch is found: stopping from the second on
            self.asked += 1
            return self.asked > 1

    conn = journal.connect(path)
    assert journal.prune(conn, NOW.isoformat(), stopping=StopsAfterOne()) == journal.PRUNE_ROWS
    assert journal.prune(conn, NOW.isoformat()) == journal.PRUNE_ROWS * 2 - 1  # the rest, the newest row kept
    conn.close()


def test_a_failed_prune_is_tried_again_rather_than_ending_retention(tmp_path: Path, monkeypatch) -> None:
    """A prune that fails with anything but a database error (a file gone, a bug) ended the pruning thread before:
    from then on nothing past retention left the databases, and nothing said so but one traceback. Now it is logged
    and tried again every shopify.prune_every_seconds."""
    from storeflow.components.shopify import retention

    calls: list[int] = []

    def flaky(settings, at=None, stopping=None):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("No such file or directory: 'state/shopify/risk.db'")
        return retention.Pruned(3, 0)

    monkeypatch.setattr(retention, "prune", flaky)
    settings = load_settings({"project": {"state_dir": str(tmp_path / "state")},
                              "shopify": {"prune_every_seconds": 0.05}})
    worker = retention.Retention(settings)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while worker.last is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.last == retention.Pruned(3, 0) and len(calls) >= 2
    finally:
        worker.stop()
