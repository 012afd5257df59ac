"""Incremental pull: export what changed since the watermark and merge it into the raw store JSONL.

The watermark (``sync.json``) lives beside ``store.jsonl`` and moves only after a merge succeeded, to
the time Shopify started the export; the next pull asks for ``updated_at >= watermark - overlap``.
Merging replaces a record (and an order's line items) by its gid, so overlap and retries are harmless.
Without the ``read_all_orders`` scope Shopify only returns orders of the last 60 days.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson

from storeflow.components.config import Settings
from storeflow.components.ingest.bulk_query import bulk_queries
from storeflow.components.shopify import layout
from storeflow.components.shopify.admin import AdminClient, ShopifyError, credentials
from storeflow.components.shopify.bulk import BulkExporter, incremental
from storeflow.components.shopify.journal import uninstalled_at

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    store: Path
    since: datetime | None
    watermark: datetime
    records: int  # records in this pull


def read_watermark(settings: Settings) -> datetime | None:
    path = layout.sync_state(settings)
    if not path.exists():
        return None
    return datetime.fromisoformat(json.loads(path.read_text())["watermark"])


def pull(settings: Settings, client: AdminClient | None = None, sleep: Callable[[float], None] = time.sleep) -> SyncResult:
    """One incremental pull (a full export the first time); resumes an interrupted one."""
    creds = client.creds if client else credentials(settings)
    stopped = uninstalled_at(layout.journal_path(settings), creds.shop)
    if stopped:
        raise ShopifyError(f"the app was uninstalled from {creds.shop} at {stopped}: syncing stopped "
                           "(reinstalling the app resumes it)")
    pending = layout.pending_dir(settings)
    marker = pending / "_export.json"
    interrupted, since_text = _interrupted(marker)
    if interrupted:
        since = datetime.fromisoformat(since_text) if since_text else None
        log.info("resuming the interrupted export in %s", pending)
    else:
        watermark = read_watermark(settings)
        since = watermark - timedelta(seconds=settings.shopify.overlap_seconds) if watermark else None
        pending.mkdir(parents=True, exist_ok=True)
        _write_json(marker, {"since": since.isoformat() if since else None,
                             "api_version": settings.shopify.api_version})
    own_client = client is None
    client = client or AdminClient(settings, creds, sleep=sleep)
    try:
        exporter = BulkExporter(client, pending, sleep=sleep)
        files = exporter.run({name: incremental(text, since) for name, text in bulk_queries().items()})
        watermark = exporter.started_at()
    finally:
        if own_client:
            client.close()
    store = layout.store_jsonl(settings)
    records = merge(store, list(files.values()))
    _write_json(layout.sync_state(settings), {
        "watermark": watermark.isoformat(), "since": since.isoformat() if since else None,
        "shop": creds.shop, "api_version": settings.shopify.api_version,
        "synced_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "records": records,
    })
    shutil.rmtree(pending)
    log.info("pulled %d records from %s (updated since %s)", records, creds.shop, since or "the beginning")
    return SyncResult(store, since, watermark, records)


def _interrupted(marker: Path) -> tuple[bool, str | None]:
    """Whether an interrupted export waits in the marker's folder, and the ``since`` it asked for. A marker that does
    not read (written whole and renamed into place now, it was written in place: a pull killed meanwhile left it
    empty, and every later pull died on it with a JSONDecodeError) is no export: its folder is started over, the
    store left as it is."""
    if not marker.exists():
        return False, None
    try:
        return True, json.loads(marker.read_text())["since"]
    except (ValueError, KeyError, TypeError):
        log.warning("%s does not read (a pull stopped while writing it): starting the export over", marker)
        shutil.rmtree(marker.parent)
        return False, None


def merge(store: Path, exports: list[Path]) -> int:
    """Rewrite ``store`` atomically with the exported records replacing older versions of the same gid
    (and an exported order replacing all of its old line items). Returns the exported record count."""
    fresh: set[str] = set()
    for path in exports:
        for number, line in enumerate(_lines(path), start=1):
            try:
                fresh.add(_record(line)["id"])
            except ValueError as exc:  # a download whose end was lost (a proxy without Content-Length)
                path.unlink()
                raise ShopifyError(f"{path.name} line {number} is not a record of the bulk export ({exc}): a download "
                                   "cut short? It is removed, the store left as it was; run again to download it "
                                   "anew") from None
    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.with_name(store.name + ".tmp")
    with tmp.open("wb") as out:
        if store.exists():
            for number, line in enumerate(_lines(store), start=1):
                try:
                    record = _record(line)
                except ValueError as exc:
                    raise ShopifyError(f"{store} line {number} is not a record ({exc}); nothing was merged: restore "
                                       "the file, or move it away for a full pull") from None
                if record["id"] not in fresh and record.get("__parentId") not in fresh:
                    out.write(line)
        for path in exports:
            for line in _lines(path):
                out.write(line)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, store)
    return len(fresh)


def _record(line: bytes) -> dict:
    """One JSONL line as a record with a string ``id``; a ValueError saying what it is instead."""
    record = orjson.loads(line)  # orjson.JSONDecodeError is a ValueError
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        raise ValueError("no string id")
    return record


def _lines(path: Path):
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield line if line.endswith(b"\n") else line + b"\n"


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
