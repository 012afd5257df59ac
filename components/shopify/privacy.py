"""The mandatory privacy webhooks: erase a customer or a whole shop everywhere storeflow keeps data,
and export what is held about a customer.

Stores erased: every raw JSONL under the data dir (the synthetic store, the pulled bulk export and an
export in progress, any copy), every ingested snapshot (the customer's row, orders, their line items
and refunds), every parquet file with a ``customer_id`` or ``email`` column (Feast offline sources,
training sets), the Feast online store (SQLite or Redis), prediction logs (rewritten in place under the
writer's lock, so a running server goes on logging to the file monitoring reads; the files serving shipped
to ``serving.prediction_log_store`` are replaced or deleted there, and scanned there too), the webhook journal
(live orders, event bodies; the webhook ids stay so that a retried delivery is still recognised) and
earlier data-request exports. Then the erasure epoch moves, so running servers drop cached features.
Each file is rewritten atomically or under its writer's lock, so a reader never sees half an erasure.

The customer is found by Shopify id and email, and by the ids ingest derived for the same email (an
orders-export CSV has no customer ids). Registered models and monitoring reports hold no identities
and stay; MLflow artifacts (input examples: feature values, no ids) are scanned like everything else.

Erasure proves itself: afterwards every file under :func:`layout.erasure_roots` is scanned
(:mod:`storeflow.components.shopify.traces`) for the ids and emails, and any trace left, in a store
this module does not know, fails the request with :class:`ErasureIncomplete` naming the files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storeflow.components.config import Settings
from storeflow.components.erasure import bump_epoch, rewrite_in_place
from storeflow.components.ingest.snapshot import (MANIFEST, SnapshotWriter, finished_snapshots, newest_snapshot,
                                                 read_manifest)
from storeflow.components.prediction_logs import log_store
from storeflow.components.shopify import layout, metafields, online
from storeflow.components.shopify import subject_rows
from storeflow.components.shopify.traces import EMAIL, PARQUET_MAGIC, Held, Needles, find_traces
from storeflow.components.tables import SCHEMAS, TABLES, email_key, table_path

log = logging.getLogger(__name__)
CUSTOMER_GID = re.compile(rb"gid://shopify/Customer/([0-9]+)")


@dataclass
class Subject:
    """Who to erase: a customer id, their email, and orders Shopify names in the request."""

    customer_id: int
    email: str | None = None
    order_ids: set[int] = field(default_factory=set)
    aliases: set[int] = field(default_factory=set)  # ids ingest derived for the same email

    def __post_init__(self):
        # as every store compares emails (trimmed, lower case); blank is none: " " once matched every order
        # without an email (Shopify's REST order says "" for one), erasing them all with this customer's
        self.email = email_key(self.email)

    @property
    def gid(self) -> str:
        return f"gid://shopify/Customer/{self.customer_id}"

    @property
    def ids(self) -> set[int]:
        return {self.customer_id, *self.aliases}

    @property
    def needles(self) -> Needles:
        return Needles(frozenset(self.ids), frozenset([self.email] if self.email else []))


class ErasureIncomplete(RuntimeError):
    """Traces of the erased are still on disk after every known store was erased."""


def verify(settings: Settings, needles: Needles, request: str, webhook_id: str | None = None) -> None:
    """Scan every file storeflow writes; raise naming each one that still holds the erased. ``webhook_id``: the
    request's own journal row, which keeps its body until the request is marked done (:func:`held`)."""
    left: list = find_traces(layout.erasure_roots(settings), needles, held(settings, webhook_id))
    if (store := log_store(settings)) is not None:  # the prediction logs serving shipped to the object store
        left += sorted({f"{store.uri.rstrip('/')}/{name}" for name, line in store.records() if needles.in_bytes(line)})
    if left:
        raise ErasureIncomplete(f"{request}: erased data is still in {len(left)} place(s): "
                                + "; ".join(str(t) for t in left[:20]))


def held(settings: Settings, webhook_id: str | None) -> Held | None:
    """The request's journal row, left out of its proof: it names the erased until the applier marks it done (and
    empties it, :meth:`Applier._apply_one`); emptied before that, a failed try was never tried again."""
    return Held(layout.journal_path(settings), "events", "webhook_id", webhook_id) if webhook_id is not None else None


def resolve(settings: Settings, conn: sqlite3.Connection, subject: Subject) -> Subject:
    """The subject with their email (when only a store knows it) and every other id held for that email."""
    email = subject.email
    snapshots = _snapshots(settings)
    if email is None:
        for snapshot in snapshots:
            row = subject_rows.find(table_path(snapshot, "customers"),
                                    lambda t: subject_rows.is_in(t["customer_id"], [subject.customer_id]),
                                    ["customer_id", "email"])
            email = next((e for e in map(email_key, row["email"].to_pylist()) if e), email)
    aliases: set[int] = set()
    if email:
        for snapshot in snapshots:
            for name in ("customers", "orders"):
                found = subject_rows.find(table_path(snapshot, name),
                                          lambda t: subject_rows.email_is(t["email"], email), ["customer_id", "email"])
                aliases |= {int(c) for c in found["customer_id"].to_pylist() if c is not None}
        aliases |= {int(c) for (c,) in conn.execute(
            "SELECT DISTINCT customer_id FROM live_orders WHERE lower(trim(email)) = ? AND customer_id IS NOT NULL",
            (email,))}
    return Subject(subject.customer_id, email, set(subject.order_ids), (aliases | subject.aliases) - {subject.customer_id})


# --- raw bulk JSONL ---------------------------------------------------------------------------------


def _raw_files(settings: Settings) -> list[Path]:
    """Bulk JSONL anywhere under the data dir: the synthetic store, the pulled export, parts, copies."""
    root = settings.data_dir
    return sorted(p for p in root.rglob("*") if p.is_file() and (p.suffix == ".jsonl" or p.name.endswith(".jsonl.part"))
                  ) if root.exists() else []


def _jsonl_records(path: Path):
    """JSON objects of a JSONL file; an unparsable line (one being written) is passed over."""
    with path.open("rb") as handle:
        for line in handle:
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError:
                continue


def _customer_orders_in_raw(path: Path, subject: Subject) -> set[str]:
    orders = {f"gid://shopify/Order/{o}" for o in subject.order_ids}
    email = subject.email.strip().lower() if subject.email else None
    for record in _jsonl_records(path):
        if not isinstance(record, dict):
            continue
        customer = (record.get("customer") or {}).get("id")
        if str(record.get("id", "")).startswith("gid://shopify/Order/") and (
            customer == subject.gid or (email and str(record.get("email") or "").strip().lower() == email)
        ):
            orders.add(record["id"])
    return orders


def _rewrite_lines(path: Path, keep) -> int:
    removed = 0
    tmp = path.with_name(path.name + ".redact")
    with path.open("rb") as src, tmp.open("wb") as out:
        for line in src:
            if keep(line):
                out.write(line)
            else:
                removed += 1
        out.flush()
        os.fsync(out.fileno())
    if removed:
        os.replace(tmp, path)
    else:
        tmp.unlink()
    return removed


def _mentions(line: bytes, needles: list[bytes]) -> bool:
    return any(needle in line for needle in needles)


def erase_raw(settings: Settings, subject: Subject) -> int:
    """Drop the customer's record, their orders and those orders' children (``__parentId``) from raw JSONL."""
    removed = 0
    for path in _raw_files(settings):
        orders = _customer_orders_in_raw(path, subject) if path.suffix == ".jsonl" else set()
        ids = [f'"{gid}"'.encode() for gid in orders | {f"gid://shopify/Customer/{c}" for c in subject.ids}]
        needles = subject.needles
        removed += _rewrite_lines(path, lambda line: not (_mentions(line, ids) or needles.in_bytes(line)))
    return removed


# --- snapshots ----------------------------------------------------------------------------------------


def _snapshots(settings: Settings) -> list[Path]:
    return finished_snapshots(settings.data_dir / "snapshots")


def _order_mask(subject: Subject) -> subject_rows.Mask:
    """The subject's orders: theirs by customer id or email, and those Shopify names in the request."""
    return lambda t: (subject_rows.is_in(t["customer_id"], subject.ids)
                      | subject_rows.is_in(t["order_id"], subject.order_ids)
                      | subject_rows.email_is(t["email"], subject.email))


def _masks(subject: Subject, order_ids: set[int]) -> dict[str, subject_rows.Mask]:
    """Rows about the subject: their customer row, their orders, and those orders' (``order_ids``) line items and
    refunds."""
    return {"orders": _order_mask(subject),
            "customers": lambda t: (subject_rows.is_in(t["customer_id"], subject.ids)
                                    | subject_rows.email_is(t["email"], subject.email)),
            "line_items": lambda t: subject_rows.is_in(t["order_id"], order_ids),
            "refunds": lambda t: subject_rows.is_in(t["order_id"], order_ids)}


def _any_column_mask(subject: Subject, order_ids: set[int] = frozenset()) -> subject_rows.Mask:
    """Rows of a table that is not one of the store's (a stage's, a run's artifact) about the subject, by whichever
    of ``customer_id``, ``email`` and ``order_id`` (``order_ids``: their orders) it has."""
    def mine(t: pa.Table) -> np.ndarray:
        found = np.zeros(t.num_rows, bool)
        if "customer_id" in t.column_names:
            found |= subject_rows.is_in(t["customer_id"], subject.ids)
        if "email" in t.column_names:
            found |= subject_rows.email_is(t["email"], subject.email)
        if order_ids and "order_id" in t.column_names:
            found |= subject_rows.is_in(t["order_id"], order_ids)
        return found
    return mine


def _subject_tables(snapshot: Path, subject: Subject) -> dict[str, pa.Table]:
    """The subject's rows of each of the snapshot's tables (:func:`_masks`), read a batch at a time."""
    orders = subject_rows.find(table_path(snapshot, "orders"), _order_mask(subject), list(SCHEMAS["orders"].names))
    masks = _masks(subject, {o for o in orders["order_id"].to_pylist() if o is not None})
    found = {"orders": orders}
    for name in ("customers", "line_items", "refunds"):
        found[name] = subject_rows.find(table_path(snapshot, name), masks[name], list(SCHEMAS[name].names))
    return {name: found[name] for name in masks}


def _extra_tables_without(snapshot: Path, manifest: dict, subject: Subject,
                          order_ids: set[int]) -> Iterator[tuple[str, pa.Table]]:
    """The tables a stage keeps beside the store's (``extra_tables`` of the manifest: ``order_risk``), a batch at a
    time, each without the subject's rows (their orders by ``order_id``; ``customer_id`` and ``email`` where present).

    Why: a rewrite that left them out dropped every customer's order risk fields to erase one customer's,
    and the risk stage then needed the bulk export again (which another pod may no longer have)."""
    for name, entry in manifest.get("extra_tables", {}).items():
        path = snapshot / entry["file"]
        if not path.exists():
            continue

        mine = _any_column_mask(subject, order_ids)
        for batch in subject_rows.batches(path):
            yield name, batch.filter(pa.array(~mine(batch)))


def _rewrite_snapshot(snapshot: Path, masks: dict[str, subject_rows.Mask], note: str,
                      extra: Iterable[tuple[str, pa.Table]] = ()) -> None:
    """Write the tables without the rows ``masks`` pick (and the stages' ``extra`` ones) beside the snapshot, a
    batch at a time, then swap directories (two renames)."""
    manifest = read_manifest(snapshot)
    metadata = {k: v for k, v in manifest.items() if k not in ("tables", "ingested_at", "storeflow_version")}
    metadata["redactions"] = [*manifest.get("redactions", []), note]
    fresh = snapshot.with_name(f".{snapshot.name}.redacted")
    old = snapshot.with_name(f".{snapshot.name}.old")
    shutil.rmtree(fresh, ignore_errors=True)
    with SnapshotWriter(fresh) as writer:
        for name in TABLES:
            for batch in subject_rows.batches(table_path(snapshot, name), list(SCHEMAS[name].names)):
                kept = batch.filter(pa.array(~masks[name](batch))) if name in masks else batch
                writer.write({name: kept})
        for name, batch in extra:
            writer.write({name: batch})
        # ingest dropped them: fewer rows hold none; ingested when it was, so it keeps its place among the snapshots
        writer.commit(metadata, deduplicate=False, ingested_at=manifest.get("ingested_at"))
    os.rename(snapshot, old)
    os.rename(fresh, snapshot)
    shutil.rmtree(old)


def finish_rewrites(root: Path) -> list[str]:
    """Complete the snapshot rewrites :func:`_rewrite_snapshot` left cut short (a kill between its two renames, or
    before it removed the old copy); returns the snapshots repaired. Without this the snapshot was gone, held only
    as ``.<name>.old`` (the erased customer still in it, for good) beside its finished ``.<name>.redacted``. A
    rewrite is finished once its manifest is written, so it takes the snapshot's place; an old copy whose
    rewrite is not there goes back (the retried redaction then rewrites it)."""
    repaired = []
    for old in sorted(root.glob(".*.old")) if root.exists() else []:
        name = old.name[1:-len(".old")]
        snapshot, fresh = root / name, root / f".{name}.redacted"
        if not snapshot.exists():
            os.rename(fresh if (fresh / MANIFEST).exists() else old, snapshot)
            repaired.append(name)
        shutil.rmtree(old, ignore_errors=True)
    return repaired


def erase_snapshots(settings: Settings, subject: Subject, note: str) -> int:
    removed = 0
    if repaired := finish_rewrites(settings.data_dir / "snapshots"):
        log.warning("finished the rewrite of snapshot(s) %s, cut short before", ", ".join(repaired))
    for snapshot in _snapshots(settings):
        found = _subject_tables(snapshot, subject)
        count = sum(table.num_rows for table in found.values())
        if count:
            erased_orders = {o for o in found["orders"]["order_id"].to_pylist() if o is not None}
            extra = _extra_tables_without(snapshot, read_manifest(snapshot), subject, erased_orders)
            _rewrite_snapshot(snapshot, _masks(subject, erased_orders), note, extra)
            removed += count
    return removed


# --- other parquet (Feast offline sources, training sets) ---------------------------------------------


def _parquet_files(settings: Settings) -> list[Path]:
    """Parquet under the state dir but in snapshots, by name or by content: a pipeline run's artifacts
    (e.g. the features step's ``training_set``) carry no suffix."""
    snapshots = settings.data_dir / "snapshots"
    return sorted(p for p in settings.project.state_dir.rglob("*")
                  if snapshots not in p.parents and not p.name.startswith(".") and _is_parquet(p))


def _is_parquet(path: Path) -> bool:
    if not path.is_file() or path.is_symlink():
        return False
    if path.suffix == ".parquet":
        return True
    with path.open("rb") as handle:
        if handle.read(4) != PARQUET_MAGIC or handle.seek(0, 2) < 8:
            return False
        handle.seek(-4, 2)
        return handle.read(4) == PARQUET_MAGIC


def erase_parquet(settings: Settings, subject: Subject) -> int:
    removed = 0
    for path in _parquet_files(settings):
        names = pq.read_schema(path).names
        columns = [c for c in ("customer_id", "email") if c in names]
        if not columns:
            continue
        mine = _any_column_mask(subject)
        count = subject_rows.count(path, mine, columns)
        if count:
            subject_rows.rewrite_without(path, mine)
            removed += count
    return removed


# --- prediction logs, data-request exports ------------------------------------------------------------


def _prediction_logs(settings: Settings) -> list[Path]:
    directory = layout.prediction_log_dir(settings)
    return sorted(directory.glob("*.jsonl")) if directory.exists() else []


def _prediction_records(settings: Settings):
    """Every logged prediction (a JSON object), on this machine and in the object store."""
    for path in _prediction_logs(settings):
        try:
            yield from (r for r in _jsonl_records(path) if isinstance(r, dict))
        except FileNotFoundError:  # shipped since the listing: read below, from the store
            continue
    if (store := log_store(settings)) is not None:
        for _, line in store.records():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def erase_prediction_logs(settings: Settings, subject: Subject) -> int:
    """In place, under the writer's lock: a running server keeps appending to the file monitoring reads."""
    needles = subject.needles

    def keep(line: bytes) -> bool:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:  # a torn line (a writer killed mid-write): kept unless it names them
            return not needles.in_bytes(line)
        return not (isinstance(record, dict) and record.get("customer_id") in subject.ids) and not needles.in_bytes(line)

    return _rewrite_prediction_logs(settings, keep)


def _rewrite_prediction_logs(settings: Settings, keep) -> int:
    """Local files first, then the object store: a file shipped meanwhile is gone here and cleaned there."""
    dropped = 0
    for path in _prediction_logs(settings):
        try:
            dropped += rewrite_in_place(path, keep)
        except FileNotFoundError:  # shipped to the store (and deleted here) since the listing
            continue
    if (store := log_store(settings)) is not None:
        dropped += store.rewrite(keep)
    return dropped


def erase_exports(settings: Settings, subject: Subject) -> int:
    directory = layout.data_requests_dir(settings)
    files = [p for c in sorted(subject.ids) for p in directory.glob(f"customer-{c}-*.json")] if directory.exists() else []
    for path in files:
        path.unlink()
    return len(files)


# Ids as one JSON array parameter: SQLite caps the placeholders (32,766), and a customers/redact may name more orders
# (one naming 260,000 failed with "too many SQL variables" on every try, and the applier applied nothing after it).
_ANY = "(SELECT value FROM json_each(?))"


def _ids(ids) -> str:
    return json.dumps(sorted(int(i) for i in ids))


# --- webhook journal ----------------------------------------------------------------------------------


def erase_journal(conn: sqlite3.Connection, subject: Subject, keep: str | None = None) -> int:
    """The subject's live rows and every event body about them, but ``keep``'s (the request being carried out)."""
    ids = sorted(subject.ids)
    orders = {o for (o,) in conn.execute(f"SELECT order_id FROM live_orders WHERE customer_id IN {_ANY} "
                                         "OR lower(trim(email)) = lower(trim(?))", (_ids(ids), subject.email))} | subject.order_ids
    marks = _ids(orders)
    # the ids as JSON values, a whole number each (an id of fewer digits than Needles searches as text); the email is
    # the Needles' (a whole one)
    named = re.compile(rb'"(?:id|customer_id)": ?(?:' + b"|".join(str(c).encode() for c in ids) + rb")(?![0-9.])")
    removed = 0
    with conn:
        removed += conn.execute(f"DELETE FROM live_line_items WHERE order_id IN {_ANY}", (marks,)).rowcount
        removed += conn.execute(f"DELETE FROM live_refunds WHERE order_id IN {_ANY}", (marks,)).rowcount
        removed += conn.execute(f"DELETE FROM live_orders WHERE order_id IN {_ANY}", (marks,)).rowcount
        # Row by row (the journal holds every delivery's body), then the few that mention them are emptied.
        theirs = [webhook_id for (webhook_id, stored) in conn.execute(
                  "SELECT webhook_id, body FROM events WHERE body IS NOT NULL AND webhook_id IS NOT ?", (keep,))
                  if named.search(body := bytes(stored)) or subject.needles.in_bytes(body) or _order_event(body, orders)]
        for webhook_id in theirs:
            conn.execute("UPDATE events SET body = NULL, customer_id = NULL WHERE webhook_id = ?", (webhook_id,))
        removed += len(theirs)
        conn.execute(f"UPDATE events SET customer_id = NULL WHERE customer_id IN {_ANY}", (_ids(ids),))
    _scrub_journal(conn)
    return removed


# --- order risk history ------------------------------------------------------------------------------

RISK_HISTORY = ("risk_live_refunds", "risk_live_orders")


def _risk_db(settings: Settings) -> sqlite3.Connection | None:
    from storeflow.components.risk.writeback import risk_db  # the order risk path's live history and outbox

    path = risk_db(settings)
    if not path.exists():
        return None
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    if conn.execute("SELECT count(*) FROM sqlite_master WHERE name IN ('risk_live_orders', 'risk_live_refunds')"
                    ).fetchone()[0] < 2:
        conn.close()
        return None
    return conn


def erase_risk_history(settings: Settings, subject: Subject | None) -> int:
    """The orders the order risk path kept as history (with their emails): the subject's, or every one
    (``None``: shop/redact). Its assessment outbox holds order ids and facts in words only, and stays."""
    conn = _risk_db(settings)
    if conn is None:
        return 0
    try:
        conn.execute("BEGIN IMMEDIATE")
        if subject is None:
            removed = sum(conn.execute(f"DELETE FROM {table}").rowcount for table in RISK_HISTORY)
        else:
            orders = {o for (o,) in conn.execute(
                f"SELECT order_id FROM risk_live_orders WHERE customer_id IN {_ANY} "
                "OR email = lower(trim(?))", (_ids(subject.ids), subject.email))} | subject.order_ids
            removed = sum(conn.execute(f"DELETE FROM {table} WHERE order_id IN {_ANY}", (_ids(orders),)).rowcount
                          for table in RISK_HISTORY)
        conn.execute("COMMIT")
        _compact(conn)
        return removed
    finally:
        conn.close()


def _velocity_keys(settings: Settings, subject: Subject) -> list[tuple[str, object]]:
    """The online rows of order velocity about the subject (risk.velocity): their customer ids, their email's
    digest, and the shipping addresses of their orders (whose lists hold their customer id), from the risk
    path's live history and the newest snapshot's risk fields."""
    from storeflow.components.risk.orders import SNAPSHOT_TABLE as RISK_TABLE
    from storeflow.components.risk.velocity import email_digest

    keys: list[tuple[str, object]] = [(online.CUSTOMER_KEY, c) for c in sorted(subject.ids)]
    emails = {e for e in (subject.email,) if e}
    addresses: set[str] = set()
    if (risk := _risk_db(settings)) is not None:
        with closing(risk):
            for email, address in risk.execute(
                    f"SELECT email, address_key FROM risk_live_orders WHERE customer_id IN {_ANY} "
                    f"OR email = lower(trim(?)) OR order_id IN {_ANY}",
                    (_ids(subject.ids), subject.email, _ids(subject.order_ids))):
                emails |= {email} if email else set()
                addresses |= {address} if address else set()
    for snapshot in _snapshots(settings):
        mine = subject_rows.find(table_path(snapshot, "orders"), _order_mask(subject), ["order_id", "customer_id", "email"])
        emails |= {e for e in mine["email"].to_pylist() if e is not None}
        risk_fields = snapshot / f"{RISK_TABLE}.parquet"
        if mine.num_rows and risk_fields.exists():  # every version's address: each is one the subject's order had
            order_ids = {o for o in mine["order_id"].to_pylist() if o is not None}
            found = subject_rows.find(risk_fields, lambda t: subject_rows.is_in(t["order_id"], order_ids), ["order_id", "address_key"])
            addresses |= {a for a in found["address_key"].to_pylist() if a is not None}
    return [*keys, *(("email_digest", email_digest(e)) for e in sorted(emails)),
            *(("address_key", a) for a in sorted(addresses))]


def _velocity_store(settings: Settings):
    """The Feast store the risk thread writes velocity to, when one was written here (None otherwise)."""
    if not (settings.feature_repo_dir / "feature_store.yaml").exists():
        return None
    from storeflow.components.features.repo import feature_store

    return feature_store(settings)


def _erase_velocity(settings: Settings, store, keys: list[tuple[str, object]]) -> int:
    store = store if store is not None else _velocity_store(settings)
    return online.erase_keys(store, keys) if store is not None else 0


def _order_event(body: bytes, orders: set[int]) -> bool:
    if not orders:
        return False
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(payload, dict):
        return False
    # A signed body can put anything under these keys (a list, an object): only an integer id names an order.
    return any(type(value) is int and value in orders for value in (payload.get("order_id"), payload.get("id")))


def _compact(conn: sqlite3.Connection) -> None:
    """Leave no erased bytes behind in the WAL or in free pages (a database whose writers may not zero them)."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _scrub_journal(conn: sqlite3.Connection) -> None:
    """Leave no erased bytes behind in the journal: every connection that writes it zeroes what it deletes
    (:func:`~storeflow.components.shopify.journal.connect` turns ``secure_delete`` on, free pages included), so
    once the WAL is checkpointed and truncated none remain. No VACUUM: it rewrites the whole file holding the
    journal's write lock, and the receiver acknowledges a delivery only once it is committed there: 6.1 s at a
    560 MB journal, every delivery meanwhile answered that late (Shopify counts one unanswered after 5 s failed)."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


# --- the three requests -------------------------------------------------------------------------------


def redact_customer(settings: Settings, conn: sqlite3.Connection, store, subject: Subject,
                    webhook_id: str | None = None) -> dict[str, int]:
    """customers/redact: remove the customer from every store, then prove it; returns what was removed where.
    ``webhook_id``: the request's journal row, whose body is kept for a retry (the caller empties it when done).

    Raises :class:`ErasureIncomplete` (naming the files) when the final scan still finds them anywhere.
    """
    subject = resolve(settings, conn, subject)
    note = f"customer redacted at {datetime.now(timezone.utc).isoformat(timespec='seconds')}"
    velocity_keys = _velocity_keys(settings, subject)  # before the history that names their addresses is erased
    removed = {
        "raw_records": erase_raw(settings, subject),
        "snapshot_rows": erase_snapshots(settings, subject, note),
        "parquet_rows": erase_parquet(settings, subject),
        "online_rows": online.erase_customers(store, sorted(subject.ids)) if store is not None else 0,
        "prediction_log_lines": erase_prediction_logs(settings, subject),
        "data_request_exports": erase_exports(settings, subject),
        "journal_rows": erase_journal(conn, subject, keep=webhook_id),
        "risk_history_rows": erase_risk_history(settings, subject),
        "velocity_rows": _erase_velocity(settings, store, velocity_keys),
        "segment_rows": metafields.forget(settings, sorted(subject.ids)),
    }
    bump_epoch(layout.erasure_epoch(settings))  # after the online store: a re-read finds nothing
    verify(settings, subject.needles, "customers/redact", webhook_id)
    log.info("customers/redact done: %s", removed)
    return removed


def shop_needles(settings: Settings, conn: sqlite3.Connection) -> Needles:
    """Every customer id and email the stores hold, gathered before shop/redact removes them."""
    ids: set[int] = set()
    emails: set[str] = set()
    for snapshot in _snapshots(settings):
        for name in ("customers", "orders"):
            for batch in subject_rows.batches(table_path(snapshot, name), ["customer_id", "email"]):
                ids |= {int(c) for c in pc.unique(batch["customer_id"]).to_pylist() if c is not None}
                emails |= {e for e in pc.unique(batch["email"]).to_pylist() if e is not None}
    for path in _raw_files(settings):
        with path.open("rb") as handle:  # line by line: neither an email nor a gid spans lines
            for line in handle:
                emails |= {m.group().decode() for m in EMAIL.finditer(line.lower())}
                ids |= {int(m) for m in CUSTOMER_GID.findall(line)}
    for record in _prediction_records(settings):
        ids |= {record["customer_id"]} if isinstance(record.get("customer_id"), int) else set()
    for customer, email in conn.execute("SELECT customer_id, email FROM live_orders"):
        ids |= {customer} if customer is not None else set()
        emails |= {email} if email else set()
    if (risk := _risk_db(settings)) is not None:
        with closing(risk):
            for customer, email in risk.execute("SELECT customer_id, email FROM risk_live_orders"):
                ids |= {customer} if customer is not None else set()
                emails |= {email} if email else set()
    return Needles(frozenset(ids), frozenset(emails))


def redact_shop(settings: Settings, conn: sqlite3.Connection, store, shop: str,
                webhook_id: str | None = None) -> dict[str, int]:
    """shop/redact (48 hours after uninstall): remove everything held about the shop's customers, then
    prove it by scanning for every id and email the stores held. Raises :class:`ErasureIncomplete`.
    ``webhook_id``: the request's journal row, kept for a retry as in :func:`redact_customer`."""
    needles = shop_needles(settings, conn)
    removed: dict[str, int] = {}
    for name, path in {"data": settings.data_dir, "data_requests": layout.data_requests_dir(settings)}.items():
        removed[name] = sum(1 for p in path.rglob("*") if p.is_file()) if path.exists() else 0
        shutil.rmtree(path, ignore_errors=True)
    # Emptied in place, not removed: a running server goes on logging to the file monitoring reads.
    removed["prediction_log_lines"] = _rewrite_prediction_logs(settings, lambda line: False)
    sources = list(settings.feature_repo_dir.glob("data/*.parquet"))
    for path in sources:  # a file, or a dataset directory (features.offline)
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    removed["feature_sources"] = len(sources)
    # Any other Parquet with customer rows (a pipeline run's artifacts): every row in it is the shop's.
    held = [p for p in _parquet_files(settings) if {"customer_id", "email"} & set(pq.read_schema(p).names)]
    for path in held:
        path.unlink()
    removed["parquet_files"] = len(held)
    removed["online_rows"] = online.erase_all(store) if store is not None else 0
    with conn:
        removed["journal_rows"] = sum(conn.execute(f"DELETE FROM {table}").rowcount
                                      for table in ("live_line_items", "live_refunds", "live_orders"))
        removed["journal_rows"] += conn.execute(
            "UPDATE events SET body = NULL, customer_id = NULL WHERE shop = ? AND body IS NOT NULL AND webhook_id IS NOT ?",
            (shop, webhook_id)).rowcount
    _scrub_journal(conn)
    removed["risk_history_rows"] = erase_risk_history(settings, None)
    if store is None and (velocity_store := _velocity_store(settings)) is not None:  # the risk thread's, alone
        removed["online_rows"] = online.erase_all(velocity_store)
    removed["segment_rows"] = metafields.forget(settings, None)
    bump_epoch(layout.erasure_epoch(settings))
    verify(settings, needles, "shop/redact", webhook_id)
    log.info("shop/redact for %s done: %s", shop, removed)
    return removed


def export_customer(settings: Settings, conn: sqlite3.Connection, store, subject: Subject,
                    request_id: str | int | None) -> Path:
    """customers/data_request: everything held about the customer, as one JSON file for the merchant."""
    found: dict[str, object] = {}
    raw = []
    for path in _raw_files(settings):
        orders = _customer_orders_in_raw(path, subject)
        needles = [f'"{gid}"'.encode() for gid in orders | {subject.gid}]
        with path.open("rb") as handle:
            raw += [orjson.loads(line) for line in handle if _mentions(line, needles)]
    found["raw_records"] = raw
    newest = newest_snapshot(settings.data_dir / "snapshots")
    if newest is not None:
        found["snapshot"] = {name: _records(table.to_pandas()) for name, table in _subject_tables(newest, subject).items()}
    offline = {}
    for path in _parquet_files(settings):
        if "customer_id" in pq.read_schema(path).names:
            mine = subject_rows.find(path, lambda t: subject_rows.is_in(t["customer_id"], [subject.customer_id]))
            if mine.num_rows:
                offline[str(path.relative_to(settings.project.state_dir))] = _records(mine.to_pandas())
    found["feature_history"] = offline
    if store is not None:
        from storeflow.components.features.repo import feature_refs

        response = store.get_online_features(features=feature_refs(settings),
                                             entity_rows=[{"customer_id": subject.customer_id}]).to_dict()
        found["online_features"] = {k: v[0] for k, v in response.items()}
    found["predictions"] = [r for r in _prediction_records(settings) if r.get("customer_id") == subject.customer_id]
    found["live_orders"] = [json.loads(row) for (row,) in conn.execute(
        "SELECT row FROM live_orders WHERE customer_id = ?", (subject.customer_id,))]
    found["webhook_events"] = [dict(zip(("webhook_id", "topic", "received_at"), r)) for r in conn.execute(
        "SELECT webhook_id, topic, received_at FROM events WHERE customer_id = ?", (subject.customer_id,))]
    found["shopify_segments"] = metafields.held_for(settings, subject.customer_id)  # tier and probability written back
    found["order_risk"] = _order_risk_held(settings, store, subject.customer_id)
    directory = layout.data_requests_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"customer-{subject.customer_id}-request-{request_id or 'unknown'}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"customer_id": subject.customer_id, "email": subject.email,
                               "exported_at": datetime.now(timezone.utc).isoformat(), "data": found},
                              indent=2, default=str))
    os.replace(tmp, out)
    log.info("customers/data_request %s: exported to %s", request_id, out)
    return out


def _order_risk_held(settings: Settings, store, customer_id: int) -> dict[str, object]:
    """What order risk holds about a customer: the orders it kept as history (risk.db), and its rows in Feast's
    online store, their order history ledger (risk.history) and the velocity list scorers before 2026-12-06 kept of
    them (risk.velocity; a customer's velocity is now counted from the ledger), while one is held."""
    from storeflow.components.features.repo import HISTORY_STATE, HISTORY_VIEW, VELOCITY_STATE
    from storeflow.components.risk import history
    from storeflow.components.risk.velocity import CUSTOMER_VIEW

    def at(micros: int) -> str:
        return datetime.fromtimestamp(micros / 1e6, timezone.utc).isoformat()

    held: dict[str, object] = {"orders": [], "history": None, "velocity": None}
    if (risk := _risk_db(settings)) is not None:
        with closing(risk):
            found = risk.execute("SELECT * FROM risk_live_orders WHERE customer_id = ? ORDER BY order_id",
                                 (customer_id,))
            names = [column[0] for column in found.description]
            held["orders"] = [dict(zip(names, row)) for row in found]
    store = store if store is not None else _velocity_store(settings)
    if store is None:
        return held
    names = {view.name for view in store.list_feature_views()}
    wanted = [f"{view}:{field}" for view, field in ((HISTORY_VIEW, HISTORY_STATE), (CUSTOMER_VIEW, VELOCITY_STATE))
              if view in names]
    if not wanted:
        return held
    row = store.get_online_features(features=wanted, entity_rows=[{"customer_id": customer_id}]).to_dict()
    if events := row.get(HISTORY_STATE, [None])[0]:
        ledger = history.Ledger.of(events)
        held["history"] = [{"kind": history.KIND_NAMES.get(e.kind, str(e.kind)), "id": e.id, "at": at(e.t),
                            "amount": e.amount / history.MICROS if e.kind == history.ORDER and
                            e.amount != history.NO_AMOUNT else None} for e in ledger.events]
        if (summary := ledger.summary) is not None:  # what the ledger's compacted older events counted
            held["history_before"] = {"before": at(summary.horizon), "orders": summary.orders,
                                      "spend": summary.spend / history.MICROS, "refunds": summary.refunds,
                                      "fraud_cancellations": summary.frauds,
                                      "last_order_at": at(summary.last_order) if summary.orders else None}
    if orders := row.get(VELOCITY_STATE, [None])[0]:
        held["velocity"] = [{"order_id": o, "at": at(t)} for o, t in zip(orders[0::3], orders[1::3])]
    return held


def _records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records", date_format="iso"))

