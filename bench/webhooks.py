"""Load test of ``storeflow webhooks``: bursts of signed orders/create deliveries on 127.0.0.1.

Starts the real receiver (the CLI command) in a subprocess with a temporary state dir, sends
``--rate`` deliveries per second for ``--seconds`` (open loop: each send is scheduled at its time, not
after the previous answer) plus ``--duplicates`` of them delivered again (Shopify's retries), waits until
the applier has turned every event into Feast writes, then checks that no event was lost or applied twice.
The offline history the applier appends to starts as a store's features stage left it (``--history-rows``, 5.2M
rows: 500,000 customers); the peak memory of the receiver and its applier is reported beside the latencies.
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
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from common import free_port, full_order_payload, order_payload, request_bytes, webhook_headers

SECRET = "bench-secret"
SHOP = "bench-store.myshopify.com"
RESULTS = Path(__file__).parent / "results" / "webhooks.json"


def deliveries(count: int, customers: int, kind: str = "full") -> list[tuple[str, bytes, dict]]:
    """``full``: Shopify's whole orders/create (~9.5 KB, as a store's webhooks carry it); ``trimmed``: the fields
    storeflow reads (~0.5 KB, what runs before 2026-12-06 sent)."""
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    out = []
    for i in range(count):
        customer = 1_000_000 + i % customers
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


def peak_memory(pid: int) -> dict[str, float]:
    """Peak resident MB (Linux VmHWM) of the receiver and of the applier it started (risk is off here)."""
    import psutil

    peaks: dict[str, float] = {}
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            command = " ".join(process.cmdline())
            status = Path(f"/proc/{process.pid}/status").read_text()
        except (OSError, psutil.Error):
            continue
        if "resource_tracker" in command:
            continue
        name = "receiver" if process.pid == pid else "applier" if "spawn_main" in command else command[-40:]
        hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
        peaks[name] = round(int(hwm.split()[1]) / 1024, 1)
    return peaks


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
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    unique = int(args.rate * args.seconds)
    base = deliveries(unique, args.customers, args.body)
    rng = random.Random(0)
    again = rng.sample(range(unique), int(unique * args.duplicates))
    plan = [(i / args.rate, d) for i, d in enumerate(base)]
    plan += [(min(i / args.rate + rng.uniform(0.05, 1.0), args.seconds), base[i]) for i in again]
    plan.sort(key=lambda item: item[0])

    state = Path(tempfile.mkdtemp(prefix="storeflow-bench-"))
    history_seconds = write_history(state / "state", args.history_rows)
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
        started = time.perf_counter()
        results = asyncio.run(send_all(port, plan, args.connections))
        send_seconds = time.perf_counter() - started
        while httpx.get(f"{base_url}/healthz", timeout=5).json()["pending"]:
            time.sleep(0.2)
        applied_seconds = time.perf_counter() - started
        peak_mb = peak_memory(server.pid)
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
        "offline_history": {"rows": args.history_rows, "written_in_s": history_seconds,
                            "parts_after": len(list(history_dir(state / "state").glob("*.parquet")))},
        "peak_rss_mb": peak_mb,  # the receiver and each process it started (the applier), VmHWM
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
