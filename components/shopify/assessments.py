"""Order risk assessments written back to Shopify (``orderRiskAssessmentCreate``), once per order, with
nothing lost across restarts (issue 16: the write-back half of real-time order risk).

An outbox in SQLite: scoring an order *enqueues* its assessment (one row per order: a second score of the
same order changes nothing), and :func:`drain` sends what is pending through :class:`AdminClient`, which
waits out THROTTLED answers and backs off network errors. A row is marked sent only after Shopify answered
with the assessment; a crash between the two leaves it pending, so before sending a row again the drain
asks Shopify whether this app already assessed the order, and does not assess it twice. Shopify's user
errors (an unknown order, an order of another shop) park the row with Shopify's words and the drain goes on.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from storeflow.components.shopify.admin import AdminClient, ShopifyError
from storeflow.components.shopify.journal import transaction

LEVELS = ("HIGH", "MEDIUM", "LOW", "NONE")  # RiskAssessmentResult values an app may assign
SENTIMENTS = ("NEGATIVE", "NEUTRAL", "POSITIVE")  # RiskFactSentiment
MAX_FACTS = 20  # OrderRiskAssessmentCreateInput.facts: up to 20
MAX_DESCRIPTION = 256  # Shopify truncates longer fact descriptions; we do it ourselves, visibly
ORDER_GID = "gid://shopify/Order/"

CREATE = """mutation AssessOrder($input: OrderRiskAssessmentCreateInput!) {
  orderRiskAssessmentCreate(orderRiskAssessmentInput: $input) {
    orderRiskAssessment { riskLevel facts { description sentiment } }
    userErrors { field message code }
  }
}"""

# The order's assessments by apps (provider set; Shopify's own have none), with the facts we wrote.
EXISTING = """query OrderAssessments($id: ID!) {
  order(id: $id) { risk { assessments { riskLevel provider { title } facts { description } } } }
}"""

SCHEMA = """CREATE TABLE IF NOT EXISTS risk_outbox (
    order_id TEXT PRIMARY KEY,
    risk_level TEXT NOT NULL,
    facts TEXT NOT NULL,
    model_version TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | sent | rejected
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    enqueued_at REAL NOT NULL,
    sent_at REAL
)"""


@dataclass(frozen=True)
class Fact:
    description: str
    sentiment: str  # NEGATIVE raises the risk, POSITIVE lowers it


@dataclass(frozen=True)
class DrainResult:
    sent: int
    already_assessed: int  # found on Shopify after a crash between sending and recording: not sent again
    rejected: int  # Shopify's user errors: parked with its message
    pending: int  # still waiting (Shopify unreachable or throttled beyond the client's retries)


def signature(model_version: str) -> str:
    """The first fact of every assessment this app writes: how a later drain recognizes its own."""
    return f"storeflow risk model v{model_version}"


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(SCHEMA)
    return db


def enqueue(db: sqlite3.Connection, order_id: str | int, risk_level: str, facts: Sequence[Fact],
            model_version: str) -> bool:
    """Queue the assessment of one order; False when that order is queued or assessed already.

    Bad input raises ``ValueError`` naming the field, before anything is stored."""
    order = _order_gid(order_id)
    if risk_level not in LEVELS:
        raise ValueError(f"risk_level {risk_level!r} is not one of {', '.join(LEVELS)}")
    for fact in facts:
        if fact.sentiment not in SENTIMENTS:
            raise ValueError(f"fact sentiment {fact.sentiment!r} is not one of {', '.join(SENTIMENTS)}")
    written = [{"description": signature(model_version), "sentiment": "NEUTRAL"}]
    written += [{"description": _short(f.description), "sentiment": f.sentiment} for f in facts]
    if len(written) > MAX_FACTS:
        raise ValueError(f"{len(facts)} facts: Shopify takes {MAX_FACTS} per assessment, one of them ours "
                         f"(the model version), so at most {MAX_FACTS - 1}")
    cursor = db.execute("INSERT OR IGNORE INTO risk_outbox (order_id, risk_level, facts, model_version, enqueued_at) "
                        "VALUES (?, ?, ?, ?, ?)", (order, risk_level, json.dumps(written), model_version, time.time()))
    return cursor.rowcount == 1


def drain(db: sqlite3.Connection, client: AdminClient, limit: int = 100) -> DrainResult:
    """Send up to ``limit`` pending assessments, oldest first; stop at the first outage (they stay pending).

    Every attempt about to be made is committed before its request, all in one commit (an order with an attempt
    asks Shopify before it is sent again, so a crash never sends one twice), and what Shopify answered is committed
    together at the end: two commits per call instead of two per order, which cost 1.6-4 ms per order in fsyncs
    (a crash loses the answers of this call, and the orders they were for ask Shopify before going out again)."""
    sent = already = rejected = 0
    rows = db.execute("SELECT order_id, risk_level, facts, model_version, attempts FROM risk_outbox "
                      "WHERE state = 'pending' ORDER BY enqueued_at LIMIT ?", (limit,)).fetchall()
    if rows:
        with transaction(db):
            db.executemany("UPDATE risk_outbox SET attempts = attempts + 1 WHERE order_id = ?",
                           [(order,) for order, *_ in rows])
    marks: list[tuple[str, str, str | None, float]] = []  # (order, state, error, answered at): recorded together
    untried, error = [], None
    for at, (order, level, facts, version, attempts) in enumerate(rows):
        try:
            if attempts and _assessed_by_us(client, order, version):
                already += 1
                marks.append((order, "sent", None, time.time()))
                continue
            payload = client.execute(CREATE, {"input": {"orderId": order, "riskLevel": level,
                                                        "facts": json.loads(facts)}})
        except ShopifyError as exc:
            error = (str(exc)[:2000], order)
            untried = [(later,) for later, *_ in rows[at + 1:]]  # never sent: their attempt did not happen
            break  # an outage or a throttle the client gave up on: the rest would fail the same way
        answer = payload.get("orderRiskAssessmentCreate") or {}
        if errors := answer.get("userErrors"):
            rejected += 1
            marks.append((order, "rejected", "; ".join(f"{'.'.join(e.get('field') or [])}: {e.get('message')}"
                                                       for e in errors), time.time()))
        else:
            sent += 1
            marks.append((order, "sent", None, time.time()))
    if marks or error:
        with transaction(db):
            for order, state, why, at in marks:
                _mark(db, order, state, why, at)
            if error:
                db.execute("UPDATE risk_outbox SET last_error = ? WHERE order_id = ?", error)
            db.executemany("UPDATE risk_outbox SET attempts = attempts - 1 WHERE order_id = ?", untried)
    pending = db.execute("SELECT count(*) FROM risk_outbox WHERE state = 'pending'").fetchone()[0]
    return DrainResult(sent, already, rejected, pending)


def _assessed_by_us(client: AdminClient, order: str, version: str) -> bool:
    data = client.execute(EXISTING, {"id": order})
    assessments = (((data.get("order") or {}).get("risk") or {}).get("assessments")) or []
    mine = signature(version)
    return any(a.get("provider") and any(f.get("description") == mine for f in a.get("facts") or [])
               for a in assessments)


def _mark(db: sqlite3.Connection, order: str, state: str, error: str | None, at: float | None = None) -> None:
    """``at``: when Shopify answered (the outbox's sent_at)."""
    db.execute("UPDATE risk_outbox SET state = ?, last_error = ?, sent_at = ? WHERE order_id = ?",
               (state, error, (at or time.time()) if state == "sent" else None, order))


def _order_gid(order_id: str | int) -> str:
    text = str(order_id)
    number = text.removeprefix(ORDER_GID)
    if not (number.isascii() and number.isdigit()):
        raise ValueError(f"order id {text!r} is neither a number nor a {ORDER_GID}<number> gid")
    return ORDER_GID + number


def _short(description: str) -> str:
    text = " ".join(str(description).split())
    if not text:
        raise ValueError("a fact needs a description")
    return text if len(text) <= MAX_DESCRIPTION else text[:MAX_DESCRIPTION - 1] + "…"
