"""The mandatory privacy webhooks: erase a customer or a whole shop everywhere storeflow keeps data,
and export what is held about a customer.

Stores covered (each rewritten atomically, so a reader never sees a half-erased file): the raw bulk
JSONL (and an export in progress), every ingested snapshot (the customer's row, orders, their line items
and refunds), every parquet file with a ``customer_id`` column under the state dir (Feast offline
sources, training sets), the Feast online store, prediction logs, the webhook journal (live orders,
event bodies; the webhook ids stay so that a retried delivery is still recognised) and earlier
data-request exports. Registered models hold no personal data and stay.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pandas as pd
import pyarrow.parquet as pq

from storeflow.components.config import Settings
from storeflow.components.ingest.snapshot import MANIFEST, read_manifest, write_snapshot
from storeflow.components.shopify import layout, online
from storeflow.components.tables import TABLES, read_tables

log = logging.getLogger(__name__)


@dataclass
class Subject:
    """Who to erase: a customer id, their email, and orders Shopify names in the request."""

    customer_id: int
    email: str | None = None
    order_ids: set[int] = field(default_factory=set)

    @property
    def gid(self) -> str:
        return f"gid://shopify/Customer/{self.customer_id}"


# --- raw bulk JSONL ---------------------------------------------------------------------------------


def _raw_files(settings: Settings) -> list[Path]:
    root = layout.raw_dir(settings)
    return sorted(p for p in root.rglob("*") if p.is_file() and (p.suffix == ".jsonl" or p.name.endswith(".jsonl.part")))


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
    for record in _jsonl_records(path):
        customer = (record.get("customer") or {}).get("id")
        if record.get("id", "").startswith("gid://shopify/Order/") and (
            customer == subject.gid or (subject.email and record.get("email") == subject.email)
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
    removed = 0
    for path in _raw_files(settings):
        orders = _customer_orders_in_raw(path, subject) if path.suffix == ".jsonl" else set()
        ids = [f'"{gid}"'.encode() for gid in orders | {subject.gid}]
        needles = ids + ([subject.email.encode()] if subject.email else [])
        removed += _rewrite_lines(path, lambda line: not _mentions(line, needles))
    return removed


# --- snapshots ----------------------------------------------------------------------------------------


def _snapshots(settings: Settings) -> list[Path]:
    root = settings.data_dir / "snapshots"
    return sorted(p for p in root.iterdir() if (p / MANIFEST).exists()) if root.exists() else []


def _masks(tables: dict[str, pd.DataFrame], subject: Subject) -> dict[str, pd.Series]:
    """Rows about the subject: their customer row, their orders, and those orders' line items and refunds."""
    orders = tables["orders"]
    mine = orders["customer_id"].eq(subject.customer_id).fillna(False) | orders["order_id"].isin(subject.order_ids)
    customers = tables["customers"]
    me = customers["customer_id"].eq(subject.customer_id).fillna(False)
    if subject.email:
        mine |= orders["email"].eq(subject.email).fillna(False)
        me |= customers["email"].eq(subject.email).fillna(False)
    order_ids = set(orders.loc[mine, "order_id"])
    return {"orders": mine, "customers": me, "line_items": tables["line_items"]["order_id"].isin(order_ids),
            "refunds": tables["refunds"]["order_id"].isin(order_ids)}


def _without(tables: dict[str, pd.DataFrame], subject: Subject) -> tuple[dict[str, pd.DataFrame], int]:
    drop = _masks(tables, subject)
    kept = {name: tables[name][~drop[name]].reset_index(drop=True) if name in drop else tables[name]
            for name in TABLES}
    return kept, sum(int(mask.sum()) for mask in drop.values())


def _rewrite_snapshot(snapshot: Path, tables: dict[str, pd.DataFrame], note: str) -> None:
    """Write the new tables beside the snapshot, then swap directories (two renames)."""
    manifest = read_manifest(snapshot)
    metadata = {k: v for k, v in manifest.items() if k not in ("tables", "ingested_at", "storeflow_version")}
    metadata["redactions"] = [*manifest.get("redactions", []), note]
    fresh = snapshot.with_name(f".{snapshot.name}.redacted")
    old = snapshot.with_name(f".{snapshot.name}.old")
    shutil.rmtree(fresh, ignore_errors=True)
    write_snapshot(fresh, tables, metadata)
    os.rename(snapshot, old)
    os.rename(fresh, snapshot)
    shutil.rmtree(old)


def erase_snapshots(settings: Settings, subject: Subject, note: str) -> int:
    removed = 0
    for snapshot in _snapshots(settings):
        tables, count = _without(read_tables(snapshot), subject)
        if count:
            _rewrite_snapshot(snapshot, tables, note)
            removed += count
    return removed


# --- other parquet (Feast offline sources, training sets) ---------------------------------------------


def _parquet_files(settings: Settings) -> list[Path]:
    snapshots = settings.data_dir / "snapshots"
    return sorted(p for p in settings.project.state_dir.rglob("*.parquet")
                  if snapshots not in p.parents and not p.name.startswith("."))


def erase_parquet(settings: Settings, subject: Subject) -> int:
    removed = 0
    for path in _parquet_files(settings):
        names = pq.read_schema(path).names
        if "customer_id" not in names and "email" not in names:
            continue
        table = pq.read_table(path)
        frame = table.to_pandas()
        mine = pd.Series(False, index=frame.index)
        if "customer_id" in names:
            mine |= frame["customer_id"].eq(subject.customer_id).fillna(False)
        if "email" in names and subject.email:
            mine |= frame["email"].eq(subject.email).fillna(False)
        if mine.any():
            tmp = path.with_name(f".{path.name}.redact")
            pq.write_table(table.filter(pd.Series(~mine).to_numpy()), tmp)
            os.replace(tmp, path)
            removed += int(mine.sum())
    return removed


# --- prediction logs, data-request exports ------------------------------------------------------------


def erase_prediction_logs(settings: Settings, subject: Subject) -> int:
    directory = layout.prediction_log_dir(settings)
    if not directory.exists():
        return 0

    def keep(line: bytes) -> bool:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            return True  # a line being written; it is re-checked on the next request
        return record.get("customer_id") != subject.customer_id and not (
            subject.email and subject.email.encode() in line)

    return sum(_rewrite_lines(path, keep) for path in sorted(directory.glob("*.jsonl")))


def erase_exports(settings: Settings, subject: Subject) -> int:
    directory = layout.data_requests_dir(settings)
    files = list(directory.glob(f"customer-{subject.customer_id}-*.json")) if directory.exists() else []
    for path in files:
        path.unlink()
    return len(files)


# --- webhook journal ----------------------------------------------------------------------------------


def erase_journal(conn: sqlite3.Connection, subject: Subject) -> int:
    orders = {o for (o,) in conn.execute("SELECT order_id FROM live_orders WHERE customer_id = ? OR email = ?",
                                         (subject.customer_id, subject.email))} | subject.order_ids
    marks = ",".join("?" * len(orders)) or "NULL"
    needles = [subject.email.encode()] if subject.email else []
    needles += [f'"id":{subject.customer_id}'.encode(), f'"customer_id":{subject.customer_id}'.encode()]
    removed = 0
    with conn:
        removed += conn.execute(f"DELETE FROM live_line_items WHERE order_id IN ({marks})", [*orders]).rowcount
        removed += conn.execute(f"DELETE FROM live_refunds WHERE order_id IN ({marks})", [*orders]).rowcount
        removed += conn.execute(f"DELETE FROM live_orders WHERE order_id IN ({marks})", [*orders]).rowcount
        for (webhook_id, body) in conn.execute("SELECT webhook_id, body FROM events WHERE body IS NOT NULL").fetchall():
            if _mentions(bytes(body), needles) or _order_event(bytes(body), orders):
                conn.execute("UPDATE events SET body = NULL, customer_id = NULL WHERE webhook_id = ?", (webhook_id,))
                removed += 1
        conn.execute("UPDATE events SET customer_id = NULL WHERE customer_id = ?", (subject.customer_id,))
    _compact(conn)
    return removed


def _order_event(body: bytes, orders: set[int]) -> bool:
    if not orders:
        return False
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(payload, dict) and (payload.get("order_id") in orders or payload.get("id") in orders)


def _compact(conn: sqlite3.Connection) -> None:
    """Leave no erased bytes behind in the WAL or in free pages."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


# --- the three requests -------------------------------------------------------------------------------


def redact_customer(settings: Settings, conn: sqlite3.Connection, store, subject: Subject) -> dict[str, int]:
    """customers/redact: remove the customer from every store; returns what was removed where."""
    note = f"customer redacted at {datetime.now(timezone.utc).isoformat(timespec='seconds')}"
    removed = {
        "raw_records": erase_raw(settings, subject),
        "snapshot_rows": erase_snapshots(settings, subject, note),
        "parquet_rows": erase_parquet(settings, subject),
        "online_rows": online.erase_customers(store, [subject.customer_id]) if store is not None else 0,
        "prediction_log_lines": erase_prediction_logs(settings, subject),
        "data_request_exports": erase_exports(settings, subject),
        "journal_rows": erase_journal(conn, subject),
    }
    log.info("customers/redact done: %s", removed)
    return removed


def redact_shop(settings: Settings, conn: sqlite3.Connection, store, shop: str) -> dict[str, int]:
    """shop/redact (48 hours after uninstall): remove everything held about the shop."""
    removed: dict[str, int] = {}
    for name, path in {"raw": layout.raw_dir(settings), "snapshots": settings.data_dir / "snapshots",
                       "training_sets": settings.data_dir / "training",
                       "predictions": layout.prediction_log_dir(settings),
                       "data_requests": layout.data_requests_dir(settings)}.items():
        removed[name] = sum(1 for p in path.rglob("*") if p.is_file()) if path.exists() else 0
        shutil.rmtree(path, ignore_errors=True)
    sources = list(settings.feature_repo_dir.glob("data/*.parquet"))
    for path in sources:
        path.unlink()
    removed["feature_sources"] = len(sources)
    removed["online_rows"] = online.erase_all(store) if store is not None else 0
    with conn:
        removed["journal_rows"] = sum(conn.execute(f"DELETE FROM {table}").rowcount
                                      for table in ("live_line_items", "live_refunds", "live_orders"))
        removed["journal_rows"] += conn.execute(
            "UPDATE events SET body = NULL, customer_id = NULL WHERE shop = ? AND body IS NOT NULL", (shop,)).rowcount
    _compact(conn)
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
    snapshots = _snapshots(settings)
    if snapshots:
        newest = max(snapshots, key=lambda p: read_manifest(p).get("ingested_at", ""))
        tables = read_tables(newest)
        found["snapshot"] = {name: _records(tables[name][mask]) for name, mask in _masks(tables, subject).items()}
    offline = {}
    for path in _parquet_files(settings):
        if "customer_id" in pq.read_schema(path).names:
            frame = pq.read_table(path).to_pandas()
            rows = frame[frame["customer_id"].eq(subject.customer_id).fillna(False)]
            if len(rows):
                offline[str(path.relative_to(settings.project.state_dir))] = _records(rows)
    found["feature_history"] = offline
    if store is not None:
        from storeflow.components.features.repo import feature_refs

        response = store.get_online_features(features=feature_refs(settings),
                                             entity_rows=[{"customer_id": subject.customer_id}]).to_dict()
        found["online_features"] = {k: v[0] for k, v in response.items()}
    predictions = []
    directory = layout.prediction_log_dir(settings)
    for path in sorted(directory.glob("*.jsonl")) if directory.exists() else []:
        predictions += [r for r in _jsonl_records(path) if r.get("customer_id") == subject.customer_id]
    found["predictions"] = predictions
    found["live_orders"] = [json.loads(row) for (row,) in conn.execute(
        "SELECT row FROM live_orders WHERE customer_id = ?", (subject.customer_id,))]
    found["webhook_events"] = [dict(zip(("webhook_id", "topic", "received_at"), r)) for r in conn.execute(
        "SELECT webhook_id, topic, received_at FROM events WHERE customer_id = ?", (subject.customer_id,))]
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


def _records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records", date_format="iso"))

