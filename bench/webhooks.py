"""Load test of ``storeflow webhooks``: bursts of signed orders/create deliveries on 127.0.0.1.

Starts the real receiver (the CLI command) in a subprocess with a temporary state dir, sends
``--rate`` deliveries per second for ``--seconds`` (open loop: each send is scheduled at its time, not
after the previous answer) plus ``--duplicates`` of them delivered again (Shopify's retries), waits until
the applier has turned every event into Feast writes, then checks that no event was lost or applied twice.
The applier reads the newest snapshot (``--snapshot-customers``, 500,000: a store of 5M orders and 8.5M line items,
the deliveries' customers among them) and appends to the offline history as a store's features stage left it
(``--history-rows``, 5.2M rows: 500,000 customers); the peak memory of the receiver and its applier is reported
beside the latencies.
Writes bench/results/webhooks.json.

    .venv/bin/python bench/webhooks.py --rate 1000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from common import free_port, full_order_payload, order_payload, request_bytes, webhook_headers

SECRET = "bench-secret"
SHOP = "bench-store.myshopify.com"
RESULTS = Path(__file__).parent / "results" / "webhooks.json"
CUSTOMER_BASE = 1_000_000  # the first customer id: the deliveries' customers are the snapshot's first ones


def deliveries(count: int, customers: int, kind: str = "full") -> list[tuple[str, bytes, dict]]:
    """``full``: Shopify's whole orders/create (~9.5 KB, as a store's webhooks carry it); ``trimmed``: the fields
    storeflow reads (~0.5 KB, what runs before 2026-12-06 sent)."""
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    out = []
    for i in range(count):
        customer = CUSTOMER_BASE + i % customers
        order = full_order_payload(5_000_000_000 + i, customer, f"c{customer}@example.com", now, f"{i % 997} Main St",
                                   (9_000_000_000 + 2 * i, 9_000_000_001 + 2 * i), f"#{i}") if kind == "full" else \
            order_payload(5_000_000_000 + i, customer, now, [9_000_000_000 + i], name=f"#{i}")
        body = json.dumps(order).encode()
        webhook_id = f"bench-{i:06d}"
        out.append((webhook_id, body, webhook_headers("orders/create", webhook_id, body, secret=SECRET, shop=SHOP)))
    return out


async def send_all(port: int, plan: list[tuple[float, tuple[str, bytes, dict]]], connections: int) -> list[tuple[str, int, float]]:
    """Open-loop sender on plain keep-alive HTTP/1.1 connections (a Python HTTP client would be the
    bottleneck at this rate): each delivery starts at its scheduled time on the next free connection."""
    queue: asyncio.Queue = asyncio.Queue()
    results: list[tuple[str, int, float]] = []
    start = time.perf_counter()

    async def worker():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while True:
            item = await queue.get()
            if item is None:
                writer.close()
                return
            (webhook_id, body, headers), due = item
            writer.write(request_bytes(port, "/webhooks", body, headers))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            answer = await reader.readexactly(length)
            if status == 200 and b'"duplicate"' in answer:
                status = 208
            results.append((webhook_id, status, time.perf_counter() - due))

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    for at, delivery in plan:
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((delivery, start + at))  # latency counts from the scheduled time
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return results


def history_dir(state: Path) -> Path:
    from storeflow.components.features.repo import CUSTOMER_VIEW

    return state / "feature_repo" / "data" / f"{CUSTOMER_VIEW}.parquet"


def write_history(state: Path, rows: int) -> float:
    """The features stage's rows of a store (a row per customer and cutoff, ten customers to a cutoff's hundred),
    as the snapshot part of the offline history the applier appends to; returns the seconds it took."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storeflow.components.config import Settings
    from storeflow.components.features import offline
    from storeflow.components.features.repo import INTEGER_FEATURES

    if not rows:
        return 0.0
    started = time.perf_counter()
    path = offline.dataset(history_dir(state))
    rng = np.random.default_rng(16)
    cutoffs = 21
    names = Settings().features.customer_features
    schema = pa.schema([("customer_id", pa.int64()), ("event_timestamp", pa.timestamp("us", tz="UTC")),
                        *((n, pa.int64() if n in INTEGER_FEATURES else pa.float64()) for n in names)])
    end = np.datetime64("2026-11-01T00:00:00", "us")
    with pq.ParquetWriter(path / offline.SNAPSHOT_PART, schema) as writer:
        for cutoff in range(cutoffs):
            n = rows // cutoffs + (cutoff < rows % cutoffs)
            at = end - np.timedelta64(30 * (cutoffs - 1 - cutoff), "D")
            columns = [pa.array(np.arange(n, dtype=np.int64) + 10_000_000),
                       pa.array(np.full(n, at), schema.field(1).type)]
            columns += [pa.array(rng.integers(0, 20, n)) if field.type == pa.int64() else pa.array(rng.gamma(2.0, 30.0, n))
                        for field in list(schema)[2:]]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    return round(time.perf_counter() - started, 1)


def write_store_snapshot(state: Path, customers: int, first_customer: int = CUSTOMER_BASE,
                         risk_fields: bool = False) -> float:
    """A store's newest snapshot as ingest leaves it: ``customers`` customers (ids from ``first_customer``, the
    deliveries' among them) with ten orders each over two years, 1.7 line items an order, a refund for one order in
    twenty; written a million orders at a time. ``risk_fields``: with the orders' risk fields too (``order_risk``,
    as ingest keeps them from a bulk export of the OrderRisk query: what the order risk scorer reads at its start).
    Returns the seconds it took."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from storeflow.components.ingest.snapshot import MANIFEST
    from storeflow.components.risk.orders import SNAPSHOT_TABLE, TABLE_SCHEMA
    from storeflow.components.tables import SCHEMAS, table_path

    if not customers:
        return 0.0
    started = time.perf_counter()
    snapshot = state / "data" / "snapshots" / f"bench-{customers}-customers"
    snapshot.mkdir(parents=True)
    rng, risk_rng = np.random.default_rng(17), np.random.default_rng(23)  # the store the same with risk fields or not
    orders_total, chunk = customers * 10, 1_000_000
    end = np.datetime64("2026-11-01T00:00:00", "us")
    writers = {name: pq.ParquetWriter(table_path(snapshot, name), SCHEMAS[name])
               for name in ("orders", "line_items", "refunds")}

    def text(prefix: str, values) -> pa.Array:
        return pc.binary_join_element_wise(prefix, pc.cast(pa.array(values), pa.string()), "")

    for first in range(0, orders_total, chunk):
        n = min(chunk, orders_total - first)
        order_ids = np.arange(first, first + n, dtype=np.int64) + 10**10
        owner = first_customer + rng.integers(0, customers, n)
        created = end - rng.integers(0, 730 * 86_400_000_000, n).astype("timedelta64[us]")
        total = np.round(rng.gamma(2.0, 40.0, n), 2)
        writers["orders"].write_table(pa.Table.from_arrays([
            pa.array(order_ids), text("#", order_ids - 10**10 + 1001), pa.array(owner), text("c", owner),
            pa.array(created), pa.array(created), pa.nulls(n, SCHEMAS["orders"].field("cancelled_at").type),
            pa.array(np.full(n, "USD")), pa.array(total), pa.array(total), pa.array(np.zeros(n)),
            pa.array(np.full(n, "paid")), pa.array(np.full(n, "LOW"))], schema=SCHEMAS["orders"]))
        per_order = 1 + (rng.random(n) < 0.7)  # 1.7 line items an order
        item_order = np.repeat(order_ids, per_order)
        product = rng.integers(0, 2000, len(item_order))
        writers["line_items"].write_table(pa.Table.from_arrays([
            pa.array(np.arange(len(item_order), dtype=np.int64) + 3 * first + 2 * 10**10), pa.array(item_order),
            pa.array(product + 7_000_000), text("SKU-", product), text("Product ", product),
            pa.array(rng.integers(1, 4, len(item_order))), pa.array(np.round(rng.gamma(2.0, 20.0, len(item_order)), 2))],
            schema=SCHEMAS["line_items"]))
        if risk_fields:
            writers.setdefault("order_risk", pq.ParquetWriter(snapshot / f"{SNAPSHOT_TABLE}.parquet", TABLE_SCHEMA))
            writers["order_risk"].write_table(_risk_fields(risk_rng, order_ids))
        refunded = rng.random(n) < 0.05
        writers["refunds"].write_table(pa.Table.from_arrays([
            pa.array(order_ids[refunded] + 10**10), pa.array(order_ids[refunded]),
            pa.array(created[refunded] + np.timedelta64(3, "D")), pa.array(total[refunded] / 2)],
            schema=SCHEMAS["refunds"]))
    for writer in writers.values():
        writer.close()
    ids = np.arange(customers, dtype=np.int64) + first_customer
    joined = end - np.timedelta64(800, "D")
    pq.write_table(pa.Table.from_arrays([pa.array(ids), text("c", ids), pa.array(np.full(customers, joined)),
                                         pa.array(np.full(customers, joined))], schema=SCHEMAS["customers"]),
                   table_path(snapshot, "customers"))
    pq.write_table(pa.Table.from_arrays([pa.array(np.arange(2000, dtype=np.int64) + 7_000_000),
                                         text("Product ", np.arange(2000)), pa.array(np.full(2000, "tea")),
                                         pa.array(np.full(2000, "bench")), pa.array(np.full(2000, joined))],
                                        schema=SCHEMAS["products"]), table_path(snapshot, "products"))
    extra = {"extra_tables": {SNAPSHOT_TABLE: {"file": f"{SNAPSHOT_TABLE}.parquet", "rows": orders_total}}} \
        if risk_fields else {}
    (snapshot / MANIFEST).write_text(json.dumps({"ingested_at": datetime.now(timezone.utc).isoformat(), **extra}))
    return round(time.perf_counter() - started, 1)


def _risk_fields(rng, order_ids):
    """Order risk fields as a bulk export carries them: ~1 % cancelled (0.2 % for fraud), a distinct address each,
    disputes on 0.2 %, Shopify's own level mostly LOW."""
    import numpy as np
    import pyarrow as pa

    from storeflow.components.risk.orders import TABLE_SCHEMA

    n = len(order_ids)

    def text(values, shares):
        return pa.array(rng.choice(np.array(values, dtype=object), n, p=shares), pa.string())

    disputed = rng.random(n) < 0.002
    return pa.table({
        "order_id": pa.array(order_ids), "cancel_reason": text([None, "CUSTOMER", "FRAUD"], [0.99, 0.008, 0.002]),
        "gateway": text(["shopify_payments", "paypal", "manual"], [0.7, 0.25, 0.05]),
        "ship_country": text(["US", "CA", "GB"], [0.8, 0.1, 0.1]), "bill_country": text(["US", "CA", "GB"], [0.8, 0.1, 0.1]),
        "address_key": pa.array([f"{x:016x}" for x in rng.integers(0, 2**62, n)]),
        "dispute_type": pa.array(np.where(disputed, "CHARGEBACK", None)), "dispute_status":
            pa.array(np.where(disputed, "LOST", None)), "disputes": pa.array(disputed.astype(np.int64)),
        "shopify_risk_level": text(["LOW", "MEDIUM", "HIGH"], [0.95, 0.04, 0.01])}, schema=TABLE_SCHEMA)


def processes(pid: int) -> dict[str, int]:
    """The receiver and the processes it started (risk is off here: the applier), by name."""
    import psutil

    found: dict[str, int] = {}
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" not in command:
            found["receiver" if process.pid == pid else "applier" if "spawn_main" in command else command[-40:]] = \
                process.pid
    return found


def _status_mb(pid: int, field: str) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith(field + ":")), None)
    return round(int(line.split()[1]) / 1024, 1) if line else None


class MemorySampler(threading.Thread):
    """Peak memory of each process, sampled every 100 ms: ``RssAnon`` (the heap: what a pod's limit cannot take
    back) beside Linux's own peak ``VmHWM``, which also counts memory-mapped files' pages (the applier's snapshot
    index: page cache the kernel drops under pressure)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.anon, self.done = pid, {}, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            for name, pid in processes(self.pid).items():
                anon = _status_mb(pid, "RssAnon")
                if anon is not None:
                    self.anon[name] = max(anon, self.anon.get(name, 0.0))

    def peaks(self) -> dict[str, dict[str, float | None]]:
        self.done.set()
        self.join()
        return {name: {"anon_mb": self.anon.get(name), "hwm_mb": _status_mb(pid, "VmHWM")}
                for name, pid in processes(self.pid).items()}


def wait_for_index(state: Path, seconds: float = 600) -> float | None:
    """Seconds until the applier has indexed the snapshot (it does on start: components/snapshot_index.py); None
    without a snapshot. Deliveries are sent after it, so the latencies are the steady state's."""
    snapshots = state / "data" / "snapshots"
    if not snapshots.exists():
        return None
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if any(".building-" not in p.name for p in snapshots.glob("*/.index-*")):
            return round(time.perf_counter() - started, 1)
        time.sleep(0.1)
    raise SystemExit("the applier did not index the snapshot")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000, help="deliveries per second")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--duplicates", type=float, default=0.05, help="share re-delivered with the same webhook id")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--body", choices=("full", "trimmed"), default="full", help="each orders/create: Shopify's "
                        "whole order (~9.5 KB) or the fields storeflow reads (~0.5 KB, as runs before 2026-12-06)")
    parser.add_argument("--history-rows", type=int, default=5_200_000, help="the customer features' offline history "
                        "the features stage left (its rows at each cutoff): 5.2M is a 500,000-customer store's, 0 none")
    parser.add_argument("--snapshot-customers", type=int, default=500_000, help="the newest snapshot's store, ten "
                        "orders a customer: 500,000 is 5M orders and 8.5M line items, 0 no snapshot (runs before "
                        "2026-12-07 had none)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.snapshot_customers and args.snapshot_customers < args.customers:
        parser.error("--snapshot-customers must hold the deliveries' --customers")

    unique = int(args.rate * args.seconds)
    base = deliveries(unique, args.customers, args.body)
    rng = random.Random(0)
    again = rng.sample(range(unique), int(unique * args.duplicates))
    plan = [(i / args.rate, d) for i, d in enumerate(base)]
    plan += [(min(i / args.rate + rng.uniform(0.05, 1.0), args.seconds), base[i]) for i in again]
    plan.sort(key=lambda item: item[0])

    state = Path(tempfile.mkdtemp(prefix="storeflow-bench-"))
    history_seconds = write_history(state / "state", args.history_rows)
    snapshot_seconds = write_store_snapshot(state / "state", args.snapshot_customers)
    port = free_port()
    env = {**os.environ, "SHOPIFY_API_SECRET": SECRET, "STOREFLOW_CONFIG": str(state / "none.yaml")}
    (state / "none.yaml").write_text("{}\n")
    cli = Path(sys.executable).with_name("storeflow")
    server = subprocess.Popen(
        [str(cli), "webhooks", "--port", str(port), "-s", f"project.state_dir={state / 'state'}",
         "-s", f"project.shop_domain={SHOP}", "-s", "serving.shopify_client_id=bench"],
        env=env, cwd=state)
    base_url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("receiver did not start")
        sampler = MemorySampler(server.pid)
        sampler.start()
        index_seconds = wait_for_index(state / "state")
        started = time.perf_counter()
        results = asyncio.run(send_all(port, plan, args.connections))
        send_seconds = time.perf_counter() - started
        while httpx.get(f"{base_url}/healthz", timeout=5).json()["pending"]:
            time.sleep(0.2)
        applied_seconds = time.perf_counter() - started
        peak_mb = sampler.peaks()
    finally:
        server.terminate()
        server.wait(30)

    with sqlite3.connect(state / "state" / "shopify" / "webhooks.db") as conn:
        events = conn.execute("SELECT count(*), count(applied_at) FROM events").fetchone()
        ids = {row[0] for row in conn.execute("SELECT webhook_id FROM events")}
        live_orders = conn.execute("SELECT count(*) FROM live_orders").fetchone()[0]
    statuses: dict[str, int] = {}
    for _, status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    sent_ids = {webhook_id for webhook_id, _, _ in base}
    latencies = [latency for _, status, latency in results if status in (200, 208)]
    report = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "target_rate_per_s": args.rate, "seconds": args.seconds,
        "deliveries": len(plan), "unique_webhooks": unique, "redeliveries": len(again),
        "delivery_body": {"kind": args.body, "bytes_median": sorted(len(b) for _, b, _ in base)[len(base) // 2]},
        "achieved_rate_per_s": round(len(results) / send_seconds, 1),
        "send_seconds": round(send_seconds, 2), "all_applied_after_s": round(applied_seconds, 2),
        "statuses": statuses,  # 200 accepted, 208 answered 200 as a duplicate
        "latency_ms": {f"p{int(q * 100)}": round(percentile(latencies, q) * 1000, 1) for q in (0.5, 0.95, 0.99)}
        | {"max": round(max(latencies) * 1000, 1) if latencies else None},
        "snapshot": {"customers": args.snapshot_customers, "orders": args.snapshot_customers * 10,
                     "written_in_s": snapshot_seconds, "indexed_after_ready_s": index_seconds},
        "offline_history": {"rows": args.history_rows, "written_in_s": history_seconds,
                            "parts_after": len(list(history_dir(state / "state").glob("*.parquet")))},
        "peak_memory": peak_mb,  # the receiver and the applier: peak RssAnon (sampled) and VmHWM (MemorySampler)
        "journaled_events": events[0], "applied_events": events[1], "live_orders": live_orders,
        "lost": len(sent_ids - ids), "duplicated": events[0] - len(ids) + max(0, live_orders - unique),
        "ok": ids == sent_ids and events == (unique, unique) and live_orders == unique
        and statuses.get("200") == unique and statuses.get("208") == len(again),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
