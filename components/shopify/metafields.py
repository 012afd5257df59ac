"""Each customer's spend tier and repeat probability written back to Shopify as customer metafields
(``metafieldsSet``), so a merchant can build customer segments on them (issue 14).

Namespace ``storeflow``, keys ``predicted_spend_tier`` (``single_line_text_field``: LOW, MEDIUM or HIGH, as
the spend model's tiers) and ``repeat_probability`` (``number_decimal``: P(an order within the label
horizon), two decimals: the resolution a segment's threshold needs, and fewer customers whose value moves
from one night to the next). Through an outbox in SQLite, like the risk assessments (assessments.py):
scoring *enqueues* one row per customer; a new score replaces the row's values and makes it pending again
only when they changed, so scoring every customer every night sends only what moved. :func:`drain` sends
the pending rows, at most 25 metafields per call (Shopify's limit: 12 customers x 2 keys), through
:class:`AdminClient`, which waits out THROTTLED answers. ``metafieldsSet`` sets a value whether or not the
metafield exists, so a batch sent again after a crash between sending and recording writes the same
values: nothing to undo, nothing doubled. The mutation is atomic: when Shopify answers with user errors
nothing of the batch was set; the customers its errors point at (``elementIndex``) are parked with
Shopify's message and the others go out in the next call.

Shopify's segment editor filters only on customer metafields that have a *definition*, so before sending
values :func:`ensure_definitions` creates the two (``metafieldDefinitionCreate``; the tier with its three
choices, the probability bounded to [0, 1]); one that exists already (code ``TAKEN``) is left as it is.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from storeflow.components.shopify.admin import AdminClient, ShopifyError

NAMESPACE = "storeflow"
SPEND_TIER_KEY = "predicted_spend_tier"
PROBABILITY_KEY = "repeat_probability"
TIERS = ("LOW", "MEDIUM", "HIGH")  # train.spend.TIERS, Shopify's CustomerPredictedSpendTier values
MAX_METAFIELDS = 25  # metafieldsSet: at most 25 metafields a call
PER_CUSTOMER = 2  # metafields written per customer
BATCH_CUSTOMERS = MAX_METAFIELDS // PER_CUSTOMER
CUSTOMER_GID = "gid://shopify/Customer/"

SET = """mutation SetCustomerSegments($metafields: [MetafieldsSetInput!]!) {
  metafieldsSet(metafields: $metafields) {
    metafields { key namespace ownerType }
    userErrors { field message code elementIndex }
  }
}"""

DEFINE = """mutation DefineCustomerSegmentField($definition: MetafieldDefinitionInput!) {
  metafieldDefinitionCreate(definition: $definition) {
    createdDefinition { id namespace key }
    userErrors { field message code }
  }
}"""
# What a merchant sees in the segment editor: metafields.storeflow.predicted_spend_tier = 'HIGH', ... >= 0.5
DEFINITIONS = (
    {"name": "Predicted spend tier", "namespace": NAMESPACE, "key": SPEND_TIER_KEY, "ownerType": "CUSTOMER",
     "type": "single_line_text_field",
     "description": "storeflow's spend tier for the next horizon (LOW, MEDIUM, HIGH), as Shopify's predicted spend tier",
     "validations": [{"name": "choices", "value": '["LOW","MEDIUM","HIGH"]'}]},
    {"name": "Repeat purchase probability", "namespace": NAMESPACE, "key": PROBABILITY_KEY, "ownerType": "CUSTOMER",
     "type": "number_decimal",
     "description": "storeflow's probability that the customer orders again within the label horizon",
     "validations": [{"name": "min", "value": "0"}, {"name": "max", "value": "1"}]},
)

SCHEMA = """CREATE TABLE IF NOT EXISTS segment_outbox (
    customer_id TEXT PRIMARY KEY,
    spend_tier TEXT NOT NULL,
    repeat_probability TEXT NOT NULL,
    model_version TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | sent | rejected
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    enqueued_at REAL NOT NULL,
    sent_at REAL
);
-- What a drain reads (the oldest pending) and counts: the pending rows only, not every customer's row
CREATE INDEX IF NOT EXISTS segment_outbox_pending ON segment_outbox (enqueued_at, customer_id) WHERE state = 'pending';
"""


@dataclass(frozen=True)
class Segment:
    customer_id: str | int  # a number or a gid://shopify/Customer/<number>
    spend_tier: str
    repeat_probability: float


@dataclass(frozen=True)
class DrainResult:
    sent: int  # customers whose metafields Shopify set
    rejected: int  # Shopify's user errors: parked with its message
    pending: int  # still waiting (Shopify unreachable, or throttled beyond the client's retries)
    calls: int  # metafieldsSet calls made


def outbox_path(settings) -> Path:
    """The outbox beside the webhook journal, under the state directory."""
    from storeflow.components.shopify.layout import connection_dir

    return connection_dir(settings) / "segments.db"


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


def enqueue(db: sqlite3.Connection, segments: Iterable[Segment], model_version: str) -> int:
    """Queue each customer's tier and probability; returns how many rows are new or changed (pending again).

    Every row is checked first: bad input raises ``ValueError`` naming the customer and the field, and
    nothing is stored."""
    rows = [(_customer_gid(s.customer_id), _tier(s), _probability(s), str(model_version)) for s in segments]
    now = time.time()
    changed = 0
    db.execute("BEGIN IMMEDIATE")
    try:
        for customer, tier, probability, version in rows:
            cursor = db.execute(
                "INSERT INTO segment_outbox (customer_id, spend_tier, repeat_probability, model_version, enqueued_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (customer_id) DO UPDATE SET spend_tier = excluded.spend_tier, "
                "repeat_probability = excluded.repeat_probability, model_version = excluded.model_version, "
                "state = 'pending', attempts = 0, last_error = NULL, enqueued_at = excluded.enqueued_at "
                "WHERE spend_tier != excluded.spend_tier OR repeat_probability != excluded.repeat_probability",
                (customer, tier, probability, version, now))
            changed += cursor.rowcount
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return changed


def ensure_definitions(client: AdminClient) -> list[str]:
    """Create the customer metafield definitions segments filter on; returns the keys created now (a key
    whose definition exists already is skipped). Any other user error raises ``ShopifyError`` with
    Shopify's words: values without a definition could not be segmented on."""
    created = []
    for definition in DEFINITIONS:
        answer = client.execute(DEFINE, {"definition": definition}).get("metafieldDefinitionCreate") or {}
        errors = [error for error in answer.get("userErrors") or [] if error.get("code") != "TAKEN"]
        if errors:
            raise ShopifyError(f"metafieldDefinitionCreate {NAMESPACE}.{definition['key']} was refused: "
                               + "; ".join(_describe(error) for error in errors))
        if answer.get("createdDefinition"):
            created.append(definition["key"])
    return created


def drain(db: sqlite3.Connection, client: AdminClient, limit: int | None = None) -> DrainResult:
    """Send pending rows (up to ``limit`` customers), oldest first, 12 customers a call; stop at the first
    outage (the rest stay pending, the error recorded on the rows that failed)."""
    sent = rejected = calls = 0
    budget = math.inf if limit is None else limit
    while budget > 0:
        rows = db.execute("SELECT customer_id, spend_tier, repeat_probability FROM segment_outbox "
                          "WHERE state = 'pending' ORDER BY enqueued_at, customer_id LIMIT ?",
                          (int(min(BATCH_CUSTOMERS, budget)),)).fetchall()
        if not rows:
            break
        db.executemany("UPDATE segment_outbox SET attempts = attempts + 1 WHERE customer_id = ?",
                       [(row[0],) for row in rows])
        calls += 1
        try:
            payload = client.execute(SET, {"metafields": _metafields(rows)})
        except ShopifyError as exc:
            db.executemany("UPDATE segment_outbox SET last_error = ? WHERE customer_id = ?",
                           [(str(exc)[:2000], row[0]) for row in rows])
            break
        errors = (payload.get("metafieldsSet") or {}).get("userErrors") or []
        if not errors:
            _mark_sent(db, rows)
            sent += len(rows)
            budget -= len(rows)
            continue
        # Atomic: nothing of this batch was set. Park the customers the errors name; the rest go again.
        blamed: dict[int, list[str]] = {}
        for error in errors:
            index = error.get("elementIndex")
            if index is None:  # the error names no element: the whole batch is parked with it
                blamed = {i: blamed.get(i, []) + [_describe(error)] for i in range(len(rows))}
                continue
            blamed.setdefault(int(index) // PER_CUSTOMER, []).append(_describe(error))
        for position, messages in blamed.items():
            if 0 <= position < len(rows):
                db.execute("UPDATE segment_outbox SET state = 'rejected', last_error = ? WHERE customer_id = ?",
                           ("; ".join(messages)[:2000], rows[position][0]))
                rejected += 1
                budget -= 1
    pending = db.execute("SELECT count(*) FROM segment_outbox WHERE state = 'pending'").fetchone()[0]
    return DrainResult(sent, rejected, pending, calls)


def _metafields(rows: list[tuple[str, str, str]]) -> list[dict]:
    found = []
    for customer, tier, probability in rows:
        found.append({"ownerId": customer, "namespace": NAMESPACE, "key": SPEND_TIER_KEY,
                      "type": "single_line_text_field", "value": tier})
        found.append({"ownerId": customer, "namespace": NAMESPACE, "key": PROBABILITY_KEY,
                      "type": "number_decimal", "value": probability})
    return found


def _mark_sent(db: sqlite3.Connection, rows: list[tuple[str, str, str]]) -> None:
    # Only if the values are still those sent: a score enqueued meanwhile stays pending for the next call.
    db.executemany("UPDATE segment_outbox SET state = 'sent', last_error = NULL, sent_at = ? WHERE customer_id = ? "
                   "AND spend_tier = ? AND repeat_probability = ? AND state = 'pending'",
                   [(time.time(), customer, tier, probability) for customer, tier, probability in rows])


def _describe(error: dict) -> str:
    field = ".".join(str(part) for part in error.get("field") or [])
    return f"{field}: {error.get('message')}" + (f" ({error['code']})" if error.get("code") else "")


def _customer_gid(customer_id: str | int) -> str:
    text = str(customer_id)
    number = text.removeprefix(CUSTOMER_GID)
    if not (number.isascii() and number.isdigit()):
        raise ValueError(f"customer id {text!r} is neither a number nor a {CUSTOMER_GID}<number> gid")
    return CUSTOMER_GID + str(int(number))


def _tier(segment: Segment) -> str:
    if segment.spend_tier not in TIERS:
        raise ValueError(f"customer {segment.customer_id}: spend_tier {segment.spend_tier!r} is not one of "
                         f"{', '.join(TIERS)}")
    return segment.spend_tier


def _probability(segment: Segment) -> str:
    try:
        value = float(segment.repeat_probability)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError(f"customer {segment.customer_id}: repeat_probability {segment.repeat_probability!r} is not "
                         "a probability in [0, 1]")
    return f"{value:.2f}"


def score_segments(rows, propensity, spend_model, cuts: list[float]) -> list[Segment]:
    """One :class:`Segment` per feature row (a ``customer_id`` column and the models' inputs): the propensity
    model's P(an order) and the spend model's tier, by the cut points the version carries."""
    from storeflow.components.train.spend import spend_tiers

    names = getattr(propensity, "feature_names_in_", None)
    if names is None:
        raise ValueError("the propensity model does not name its input features (feature_names_in_)")
    missing = [name for name in names if name not in rows.columns]
    if missing:
        raise ValueError(f"the feature rows lack the model's input(s) {', '.join(missing)}")
    x = rows[list(names)]
    scores = propensity.predict_proba(x)[:, 1]
    tiers = spend_tiers(spend_model.predict(x), cuts)
    return [Segment(int(c), str(t), float(s)) for c, t, s in zip(rows["customer_id"].to_numpy(), tiers, scores)]


def champion_segments(settings, version: str | None = None) -> tuple[str, list[Segment]]:
    """The served model version (``version``, else the registry's champion) and its segment for every customer
    of the newest feature snapshot (the one materialized to the online store)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from storeflow.components import tracking
    from storeflow.components.features import offline
    from storeflow.components.features.repo import CUSTOMER_VIEW, source_path
    from storeflow.components.train import load_model, load_spend_model

    name = settings.registry.model_name
    if version is None:
        version = tracking.current_champion(tracking.connect(settings), name)
        if version is None:
            raise ValueError(f"registered model {name!r} has no champion yet: run the training pipeline, or pass a "
                             "version")
    else:
        tracking.connect(settings)
    uri = f"models:/{name}/{version}"
    spend = load_spend_model(uri)
    if spend is None:
        raise ValueError(f"{name} version {version} carries no spend model (trained before spend tiers): retrain it")
    path = offline.snapshot_part(source_path(settings, CUSTOMER_VIEW))
    if not path.exists():
        raise ValueError(f"no customer features at {path}: run the features stage (storeflow run) first")
    # The newest snapshot's rows only, read by filter: the file holds every cutoff's (5M rows at 100x). The
    # features stage's part, not the whole history: the applier's newest rows are the last batch's customers.
    newest = pc.max(pq.read_table(path, columns=["event_timestamp"])["event_timestamp"])
    rows = pq.read_table(path, filters=[("event_timestamp", "==", newest)]).to_pandas()
    return str(version), score_segments(rows, load_model(uri), *spend)


def forget(settings, customer_ids: Iterable[int] | None) -> int:
    """Privacy: remove the outbox rows of these customers (``None``: every row, shop/redact) and leave no
    erased bytes in the file; returns the rows removed. Shopify deletes a redacted customer's metafields
    with the customer; the outbox is the only copy here (the customer's gid, tier and probability)."""
    path = outbox_path(settings)
    if not path.exists():
        return 0
    db = connect(path)
    try:
        if customer_ids is None:
            removed = db.execute("DELETE FROM segment_outbox").rowcount
        else:
            gids = [CUSTOMER_GID + str(int(c)) for c in customer_ids]
            removed = db.execute(f"DELETE FROM segment_outbox WHERE customer_id IN ({','.join('?' * len(gids))})",
                                 gids).rowcount if gids else 0
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed
    finally:
        db.close()


def held_for(settings, customer_id: int) -> list[dict]:
    """Privacy (customers/data_request): the outbox row of this customer, as written to Shopify."""
    path = outbox_path(settings)
    if not path.exists():
        return []
    db = connect(path)
    try:
        cursor = db.execute("SELECT * FROM segment_outbox WHERE customer_id = ?", (CUSTOMER_GID + str(int(customer_id)),))
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor]
    finally:
        db.close()
