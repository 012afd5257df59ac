"""Bulk export: run each bulk query (``bulkOperationRunQuery``), poll it with ``bulkOperation(id:)``
(API 2026-01+; ``currentBulkOperation`` is deprecated) and download its JSONL result.

Resumable: the operation ids are saved in the export directory as soon as Shopify accepts them, so a
run that is interrupted polls the same operations again instead of starting over (Shopify keeps
results for 7 days), and a partly downloaded file continues with an HTTP Range request.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

from storeflow.components.shopify.admin import AdminClient, ShopifyError

log = logging.getLogger(__name__)

RUN_QUERY = """mutation RunBulkQuery($query: String!) {
  bulkOperationRunQuery(query: $query) {
    bulkOperation { id status createdAt }
    userErrors { field message code }
  }
}"""

POLL_QUERY = """query BulkOperationStatus($id: ID!) {
  bulkOperation(id: $id) {
    id status errorCode createdAt completedAt objectCount fileSize url partialDataUrl
  }
}"""

OPERATIONS = "_operations.json"
ENDED_BADLY = frozenset({"FAILED", "CANCELED", "EXPIRED"})


def incremental(query: str, since: datetime | None) -> str:
    """Filter the top-level connection of a bulk query to records updated at or after ``since``."""
    if since is None:
        return query
    stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    search = f"(query: \"updated_at:>='{stamp}'\")"
    filtered, count = re.subn(r"(query \w+ \{\s*\w+)( \{)", lambda m: m.group(1) + search + m.group(2), query, count=1)
    if count != 1:
        raise ValueError(f"cannot find the top-level connection of bulk query: {query[:80]!r}")
    return filtered


class BulkExporter:
    """Exports named bulk queries into ``directory/<name>.jsonl``."""

    def __init__(self, client: AdminClient, directory: Path, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.directory = Path(directory)
        self.sleep = sleep
        self.clock = clock
        self.cfg = client.cfg

    def run(self, queries: dict[str, str]) -> dict[str, Path]:
        """Submit what is not running yet (2026-01 runs up to five at once), then collect each result."""
        self.directory.mkdir(parents=True, exist_ok=True)
        operations = self._load()
        for name, query in queries.items():
            if name not in operations or operations[name]["status"] in ENDED_BADLY:
                # What was downloaded, or partly, is an earlier operation's result (one that EXPIRED a week after
                # a cut download): resumed with a Range request, the new result's rest was appended to it.
                for stale in (self.directory / f"{name}.jsonl.part", self.directory / f"{name}.jsonl"):
                    stale.unlink(missing_ok=True)
                operations[name] = self._submit(name, query)
                self._save(operations)
        files = {}
        for name in queries:
            target = self.directory / f"{name}.jsonl"
            if not target.exists():
                operation = self._wait(name, operations)
                self._download(operation.get("url"), target)
            files[name] = target
        return files

    def started_at(self) -> datetime:
        """When Shopify created the earliest operation: everything updated before it is in this export."""
        return min(datetime.fromisoformat(op["createdAt"].replace("Z", "+00:00")) for op in self._load().values())

    def _submit(self, name: str, query: str) -> dict:
        payload = self.client.execute(RUN_QUERY, {"query": query})["bulkOperationRunQuery"]
        errors = payload.get("userErrors") or []
        if errors or not payload.get("bulkOperation"):
            detail = "; ".join(f"{e.get('code') or ''} {e.get('message')}".strip() for e in errors)
            raise ShopifyError(f"Shopify refused bulk query {name}: {detail or 'no operation returned'}")
        operation = payload["bulkOperation"]
        log.info("bulk query %s submitted as %s", name, operation["id"])
        return operation

    def _wait(self, name: str, operations: dict) -> dict:
        deadline = self.clock() + self.cfg.poll_timeout_seconds
        while True:
            operation = self.client.execute(POLL_QUERY, {"id": operations[name]["id"]})["bulkOperation"]
            if operation is None:
                raise ShopifyError(f"bulk operation {operations[name]['id']} ({name}) is unknown to Shopify")
            operations[name] = {**operations[name], **operation}
            self._save(operations)
            status = operation["status"]
            if status == "COMPLETED":
                log.info("bulk query %s completed: %s objects", name, operation.get("objectCount"))
                return operation
            if status in ENDED_BADLY:
                raise ShopifyError(f"bulk query {name} ({operation['id']}) ended {status}, error "
                                   f"{operation.get('errorCode')}; run again to resubmit it")
            if self.clock() > deadline:
                raise ShopifyError(f"bulk query {name} ({operation['id']}) still {status} after "
                                   f"{self.cfg.poll_timeout_seconds:.0f}s; run again to keep waiting for it")
            self.sleep(self.cfg.poll_interval_seconds)

    def _download(self, url: str | None, target: Path) -> None:
        """Stream to ``<target>.part``, continuing a partial file; rename when complete."""
        part = target.with_name(target.name + ".part")
        if not url:  # a completed operation that matched nothing has no file
            part.write_bytes(b"")
            os.replace(part, target)
            return
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0), follow_redirects=True) as http:
            with http.stream("GET", url, headers=headers) as response:
                if response.status_code == 416 and offset:  # nothing left to fetch
                    os.replace(part, target)
                    return
                if response.status_code not in (200, 206):
                    raise ShopifyError(f"downloading {target.name} failed: HTTP {response.status_code}")
                mode = "ab" if response.status_code == 206 else "wb"  # 200: the server ignored Range
                with part.open(mode) as out:
                    for chunk in response.iter_bytes():  # as received: an interruption keeps what arrived
                        out.write(chunk)
        os.replace(part, target)

    def _load(self) -> dict:
        path = self.directory / OPERATIONS
        return json.loads(path.read_text()) if path.exists() else {}

    def _save(self, operations: dict) -> None:
        path = self.directory / OPERATIONS
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(operations, indent=2, sort_keys=True))
        os.replace(tmp, path)
