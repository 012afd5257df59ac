"""Order risk assessments written back to Shopify (``orderRiskAssessmentCreate``), once per order, with
nothing lost across restarts (issue 16: the write-back half of real-time order risk).

An outbox in SQLite: scoring an order *enqueues* its assessment (one row per order: a second score of the
same order changes nothing), and :func:`drain` sends what is pending, up to 100 orders per GraphQL document
(one alias per order, as Shopify's cost limits admit), through :class:`AdminClient`, which
waits out THROTTLED answers and backs off network errors. A row is marked sent only after Shopify answered
with the assessment; a crash between the two leaves it pending, so before sending a row again the drain
asks Shopify whether this app already assessed the order, and does not assess it twice. Shopify's user
errors (an unknown order, an order of another shop) park that order's row with Shopify's words and the drain
goes on with the others.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import orjson

from storeflow.components.shopify.admin import AdminClient, CostExceeded, PartialErrors, ShopifyError
from storeflow.components.shopify.journal import remove_rows, transaction

LEVELS = ("HIGH", "MEDIUM", "LOW", "NONE")  # RiskAssessmentResult values an app may assign
SENTIMENTS = ("NEGATIVE", "NEUTRAL", "POSITIVE")  # RiskFactSentiment
MAX_FACTS = 20  # OrderRiskAssessmentCreateInput.facts: up to 20
MAX_DESCRIPTION = 256  # Shopify truncates longer fact descriptions; we do it ourselves, visibly
ORDER_GID = "gid://shopify/Order/"

# Many orders per document, one alias each (a0, a1, ... with variables $i0, $i1, ...): Shopify charges every
# mutation field 10 points of requested cost and refuses a document asking more than MAX_QUERY_COST (or more than
# the bucket holds), so a document carries at most 100 assessments; the bucket's restore rate (100 points/s on
# Standard, 200 Advanced, 1,000 Plus, 2,000 Enterprise) then caps a shop at 10-200 assessments a second.
MUTATION_COST = 10
ASSESSMENTS_COST = 4  # order(id:) { risk { assessments ... } }, as Shopify reported it (order_assessments.json)
MAX_QUERY_COST = 1000  # Shopify's single-query limit, whatever the plan (MAX_COST_EXCEEDED above it)

CREATED_FIELDS = "orderRiskAssessment { riskLevel facts { description sentiment } } userErrors { field message code }"
# The order's assessments by apps (provider set; Shopify's own have none), with the facts we wrote.
ASSESSMENTS_FIELDS = "risk { assessments { riskLevel provider { title } facts { description } } }"

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
);
-- What a drain reads (the oldest pending) and counts: the pending rows only, however many were sent before; the
-- table keeps every order's assessment, and without it each drain read them all (a store's day of orders)
CREATE INDEX IF NOT EXISTS risk_outbox_pending ON risk_outbox (enqueued_at) WHERE state = 'pending';
"""


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
    error: str | None = None  # why the drain stopped short (an outage, a refused token); None: it did not


def signature(model_version: str) -> str:
    """The first fact of every assessment this app writes: how a later drain recognizes its own."""
    return f"storeflow risk model v{model_version}"


def connect(path: Path) -> sqlite3.Connection:
    """The outbox's database (WAL). Its commits are not synced to disk but the one that must be: a machine losing
    power loses at most the last answers recorded, and those orders ask Shopify before going out again, as after a
    crash (:func:`drain`). A synced commit cost 123-173 us of CPU and 277-396 us here, an unsynced one ~25 us."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    return db


@contextmanager
def synced(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction synced to disk whatever the connection's ``synchronous`` (it syncs every commit
    before it in the WAL too)."""
    (level,) = db.execute("PRAGMA synchronous").fetchone()
    db.execute("PRAGMA synchronous=FULL")
    try:
        with transaction(db):
            yield
    finally:
        db.execute(f"PRAGMA synchronous={int(level)}")


def enqueue(db: sqlite3.Connection, order_id: str | int, risk_level: str, facts: Sequence[Fact],
            model_version: str) -> bool:
    """Queue the assessment of one order; False when that order is queued or assessed already.

    Bad input raises ``ValueError`` naming the field, before anything is stored (:func:`check`)."""
    order = _order_gid(order_id)
    check(risk_level, facts)
    written = [{"description": signature(model_version), "sentiment": "NEUTRAL"}]
    written += [{"description": _short(f.description), "sentiment": f.sentiment} for f in facts]
    cursor = db.execute("INSERT OR IGNORE INTO risk_outbox (order_id, risk_level, facts, model_version, enqueued_at) "
                        "VALUES (?, ?, ?, ?, ?)", (order, risk_level, orjson.dumps(written).decode(), model_version, time.time()))
    return cursor.rowcount == 1


def check(risk_level: str, facts: Sequence[Fact]) -> None:
    """``ValueError`` naming what Shopify's OrderRiskAssessmentCreateInput would refuse: a level or sentiment not
    among its enum's values, a fact without a description, or more facts than it takes beside ours (the model
    version)."""
    if risk_level not in LEVELS:
        raise ValueError(f"risk_level {risk_level!r} is not one of {', '.join(LEVELS)}")
    for fact in facts:
        if fact.sentiment not in SENTIMENTS:
            raise ValueError(f"fact sentiment {fact.sentiment!r} is not one of {', '.join(SENTIMENTS)}")
        _short(fact.description)  # a fact without words
    if len(facts) + 1 > MAX_FACTS:
        raise ValueError(f"{len(facts)} facts: Shopify takes {MAX_FACTS} per assessment, one of them ours "
                         f"(the model version), so at most {MAX_FACTS - 1}")


def prune(db: sqlite3.Connection, before: float, stopping: threading.Event | None = None) -> int:
    """Remove the assessments Shopify accepted before ``before`` (seconds since the epoch); returns how many
    (``journal.remove_rows``). What waits or was set aside stays. An order's row is how a second delivery of its
    ``orders/create`` is known and not scored again: past retention, Shopify has stopped retrying it."""
    return remove_rows(db, "risk_outbox", "state = 'sent' AND sent_at < ?", (before,), stopping=stopping)


def create_document(n: int) -> str:
    """``n`` orderRiskAssessmentCreate in one mutation: alias ``a<j>`` takes variable ``$i<j>``."""
    return _aliased("mutation AssessOrders", "OrderRiskAssessmentCreateInput", "i", "a",
                    "orderRiskAssessmentCreate(orderRiskAssessmentInput: VARIABLE)", CREATED_FIELDS, n)


def assessments_document(n: int) -> str:
    """``n`` orders' assessments in one query: alias ``o<j>`` takes variable ``$o<j>``."""
    return _aliased("query OrderAssessments", "ID", "o", "o", "order(id: VARIABLE)", ASSESSMENTS_FIELDS, n)


@cache
def _aliased(operation: str, kind: str, variable: str, alias: str, field: str, fields: str, n: int) -> str:
    names = [f"{variable}{j}" for j in range(n)]
    declared = ", ".join(f"${v}: {kind}!" for v in names)
    body = "\n".join(f"  {alias}{j}: {field.replace('VARIABLE', '$' + v)} {{ {fields} }}" for j, v in enumerate(names))
    return f"{operation}({declared}) {{\n{body}\n}}"


def per_document(client: AdminClient, cost: int) -> int:
    """How many aliases of ``cost`` points one document may carry: under Shopify's single-query limit and, once an
    answer said how large the bucket is, under the bucket."""
    ceiling = float(MAX_QUERY_COST)
    maximum = (client.last_cost.get("throttleStatus") or {}).get("maximumAvailable")
    if maximum:
        ceiling = min(ceiling, float(maximum))
    return max(1, int(ceiling // cost))


def drain(db: sqlite3.Connection, client: AdminClient, limit: int = 100, max_attempts: int = 10) -> DrainResult:
    """Send up to ``limit`` pending assessments, oldest first, many per request; stop at the first outage (the rest
    stay pending).

    Every attempt about to be made is committed before any request, all in one commit (an order with an attempt
    asks Shopify before it is sent again, so a crash never sends one twice), and what Shopify answered is committed
    together at the end: two commits per call instead of two per order, which cost 1.6-4 ms per order in fsyncs
    (a crash loses the answers of this call, and the orders they were for ask Shopify before going out again).
    The orders tried before are asked about together (:func:`assessments_document`), the rest sent together
    (:func:`create_document`), as many per document as Shopify's cost limits admit (:func:`per_document`); a
    document Shopify still finds too costly (``MAX_COST_EXCEEDED``) ran not at all and goes again in halves. Each
    alias's answer is its own order's: a user error parks that order alone, the others of its document are sent; an
    alias Shopify failed to run (an error with its path, the others answered) stays pending with why, and asks
    Shopify before it goes again, until its ``max_attempts``-th attempt: then it is set aside (``rejected``, with
    why), an order Shopify keeps failing on is no reason to ask and send it in every drain for ever. An outage never
    sets an order aside."""
    rows = db.execute("SELECT order_id, risk_level, facts, model_version, attempts FROM risk_outbox "
                      "WHERE state = 'pending' ORDER BY enqueued_at LIMIT ?", (limit,)).fetchall()
    if rows:
        with synced(db):  # lost to a power cut, an order sent could be sent again without asking Shopify
            db.executemany("UPDATE risk_outbox SET attempts = attempts + 1 WHERE order_id = ?",
                           [(order,) for order, *_ in rows])
    marks: list[tuple[str, str, str | None, float]] = []  # (order, state, error, answered at): recorded together
    flight: list[tuple] = []  # the items of the request being made (made and unanswered if it failed)
    mine: set[str] = set()
    failed_alone: list[tuple[str, str]] = []  # (why, order): its alias failed, the rest of its document ran
    error = None
    tries = {order: attempts for order, *_, attempts in rows}  # before this one
    try:
        tried = [(order, version) for order, _, _, version, attempts in rows if attempts]
        for part, data, _ in _documents(client, tried, ASSESSMENTS_COST, assessments_document, _ids, flight):
            mine.update(order for j, (order, version) in enumerate(part) if _assessed_by_us(data.get(f"o{j}"), version))
        marks += [(order, "sent", None, time.time()) for order, *_ in rows if order in mine]
        fresh = [row for row in rows if row[0] not in mine]
        for part, data, problems in _documents(client, fresh, MUTATION_COST, create_document, _inputs, flight,
                                               repeat=False):  # an answer lost: asked about next drain
            at = time.time()
            for j, (order, *_) in enumerate(part):
                answer = data.get(f"a{j}")
                if not isinstance(answer, dict):  # no answer: stays pending, and asks Shopify before going again
                    why = problems.get(f"a{j}", "Shopify's answer held no answer for it")[:2000]
                    if tries[order] + 1 >= max_attempts:
                        marks.append((order, "rejected", f"given up after {max_attempts} attempts: {why}", at))
                    else:
                        failed_alone.append((why, order))
                    continue
                if errors := answer.get("userErrors"):
                    marks.append((order, "rejected", "; ".join(
                        f"{'.'.join(e.get('field') or [])}: {e.get('message')}" for e in errors), at))
                else:
                    marks.append((order, "sent", None, at))
    except ShopifyError as exc:  # an outage or a throttle the client gave up on: the rest would fail the same way
        error = str(exc)[:2000]
    if marks or error or failed_alone:
        marked = {order for order, *_ in marks}
        unsent = [order for order, *_ in rows if order not in marked]
        failed = [item[0] for item in flight] or unsent[:1]  # the request that failed
        failed_set = set(failed)
        with transaction(db):
            for order, state, why, at in marks:
                _mark(db, order, state, why, at)
            db.executemany("UPDATE risk_outbox SET last_error = ? WHERE order_id = ?", failed_alone)
            if error:
                db.executemany("UPDATE risk_outbox SET last_error = ? WHERE order_id = ?",
                               [(error, order) for order in failed])
                # never sent: their attempt did not happen (the failed request's may have: they ask Shopify first)
                db.executemany("UPDATE risk_outbox SET attempts = attempts - 1 WHERE order_id = ?",
                               [(order,) for order in unsent if order not in failed_set])
    sent = sum(1 for order, state, *_ in marks if state == "sent" and order not in mine)
    rejected = sum(1 for _, state, *_ in marks if state == "rejected")
    pending = db.execute("SELECT count(*) FROM risk_outbox WHERE state = 'pending'").fetchone()[0]
    return DrainResult(sent, len(mine), rejected, pending, error)


def _documents(client: AdminClient, items: list[tuple], cost: int, document, variables, flight: list[tuple],
               repeat: bool = True):
    """Runs ``items`` in as few aliased documents as Shopify admits, oldest first; yields each document's items,
    its ``data`` and why aliases Shopify ran the document without failed (alias -> message). ``flight`` holds the items of the request being made (cleared once answered); a document
    refused as too costly ran not at all and goes again halved, for this call's rest too; ``repeat`` False: a
    document whose answer was lost is not sent again (:meth:`AdminClient.execute`): its items ask Shopify first."""
    size, at = per_document(client, cost), 0
    while at < len(items):
        part = items[at:at + size]
        flight[:] = part
        problems: dict[str, str] = {}
        try:
            data = client.execute(document(len(part)), variables(part), repeat=repeat)
        except CostExceeded:
            flight.clear()  # refused before anything ran
            if len(part) == 1:
                raise
            size = len(part) // 2
            continue
        except PartialErrors as exc:  # ran; the failed aliases' answers are null
            data, problems = exc.data, exc.problems
        flight.clear()
        at += len(part)
        size = min(size, per_document(client, cost))  # the answer says how large the bucket is
        yield part, data, problems


def _ids(part: list[tuple]) -> dict:
    return {f"o{j}": order for j, (order, _) in enumerate(part)}


def _inputs(part: list[tuple]) -> dict:
    return {f"i{j}": {"orderId": order, "riskLevel": level, "facts": orjson.loads(facts)}
            for j, (order, level, facts, *_) in enumerate(part)}


def _assessed_by_us(order: dict | None, version: str) -> bool:
    """Whether ``order`` (Shopify's answer to ``order(id:)``) holds an assessment of this app by this version."""
    assessments = (((order or {}).get("risk") or {}).get("assessments")) or []
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
