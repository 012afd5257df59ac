"""Soak: mixed valid and hostile traffic against ``storeflow serve`` and ``storeflow webhooks`` at once.

Both servers are the real CLI commands (serve with Shopify auth and 2 workers, as in bench/serving.py),
on 127.0.0.1, sharing one state dir: the webhook applier writes the Feast features serving reads, and a
customers/redact erases from the store the prediction server is using. One asyncio load generator sends,
paced at ``--rate`` requests per second for ``--seconds`` (and never more than rate x seconds requests),
a weighted mix of the request kinds in ``soak_traffic.KINDS``: valid single-row V1/V2 predictions with each
customer's session token and valid signed webhook deliveries, beside every hostile request the attack
run of issue 11 found (bad tokens, other customers, guests, bad app-proxy signatures, deep and huge
bodies, control routes, bad HMACs, bad payloads, slow bodies on raw sockets). It then waits (bounded)
for the applier to drain, stops the servers and reads the webhook journal.

Reported (and written to bench/results/soak.json, the store's size and the machine beside them):
requests, status histograms per server and per request kind, 5xx (target 0), connection errors,
answers outside each kind's expected statuses, RSS of each server's process tree after the warm-up
and at the end (target: < 10 % growth), and the webhook deliveries acknowledged (answered
``accepted``), applied, duplicated (target equal / equal / 0) and dead-lettered. Exit code 1 when a
target is missed.

    .venv/bin/python bench/soak.py                 # the 10-minute soak
    .venv/bin/python bench/soak.py --seconds 30    # quick mode, for development
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
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from common import SECRET, free_port, request_bytes, serve_command, stop, wait_ready
from soak_traffic import (
    HOSTILE_ORDER_IDS,
    KINDS,
    ORDER_IDS,
    REFUND_IDS,
    V2,
    VALID_DELIVERIES,
    Call,
    Kind,
    Traffic,
    bearer,
    v2_body,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "soak.json"


# -- accounting (pure) -----------------------------------------------------------------------------------------
def deliveries_report(answers: dict[str, list[str]], valid_ids: set[str], journal: dict[str, tuple[str | None, str | None]],
                      dead_ids: set[str], journal_rows: int, store_excess: int) -> dict:
    """What became of the deliveries: ``answers`` maps a webhook id to the ``status`` fields of its 200
    answers (``accepted`` / ``duplicate``), ``journal`` to its (applied_at, outcome) row.

    Duplicated: an id accepted more than once, a journal row more than one per id, or live store rows
    beyond one per order / line item / refund (``store_excess``).
    """
    accepted = {i for i, a in answers.items() if "accepted" in a}
    valid = accepted & valid_ids
    applied = {i for i in valid if journal.get(i, (None, None))[0] is not None} - dead_ids
    hostile = accepted - valid_ids
    twice = sum(1 for a in answers.values() if a.count("accepted") > 1)
    return {
        "acknowledged": len(valid), "applied": len(applied), "duplicated": twice + (journal_rows - len(journal)) + store_excess,
        "dead_lettered": len(valid & dead_ids), "pending": sum(1 for i in valid - dead_ids if i in journal and journal[i][0] is None),
        "lost": len(valid - set(journal)),
        "hostile_acknowledged": len(hostile), "hostile_applied": sum(
            1 for i in hostile if journal.get(i, (None,))[0] is not None and i not in dead_ids),
        "hostile_dead_lettered": len(hostile & dead_ids),
        "redelivered_answered_duplicate": sum(a.count("duplicate") for a in answers.values()),
    }


def percentile(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else None


@dataclass
class Stats:
    """Answers by kind; for webhooks, the ``status`` of every 200 by webhook id, and what each valid
    delivery was about (kind, order / refund / customer id)."""

    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    answers: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    valid: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)  # draws not sent: their server's queue was full

    def add(self, call: Call, status: str, seconds: float, answer: str | None) -> None:
        self.statuses[call.kind][status] += 1
        self.latency[call.kind].append(seconds)
        if call.webhook_id and answer:
            self.answers[call.webhook_id].append(answer)
        if call.webhook_id and call.kind in VALID_DELIVERIES:
            self.valid[call.webhook_id] = (call.kind, call.entity)


def kind_table(stats: Stats) -> dict:
    by_name = {k.name: k for k in KINDS}
    out = {}
    for name, counts in sorted(stats.statuses.items(), key=lambda kv: (by_name[kv[0]].target, kv[0])):
        kind = by_name[name]
        out[name] = {"target": kind.target, "requests": sum(counts.values()), "statuses": dict(sorted(counts.items())),
                     "5xx": sum(n for s, n in counts.items() if s.startswith("5")),
                     "unexpected": sum(n for s, n in counts.items() if not kind.expected(s)),
                     "expected": sorted(kind.expect), "skipped_queue_full": stats.skipped[name],
                     "p50_ms": percentile(stats.latency[name], 0.5), "p99_ms": percentile(stats.latency[name], 0.99)}
    return out


# -- sending ---------------------------------------------------------------------------------------------------
async def send_http(client, call: Call) -> tuple[str, str | None]:
    import httpx

    try:
        response = await client.post(call.path, content=call.body, headers=call.headers)
    except httpx.TimeoutException:
        return "timeout", None
    except httpx.TransportError as exc:
        return f"error:{type(exc).__name__}", None
    answer = None
    if call.webhook_id and response.status_code == 200:
        try:
            answer = response.json().get("status")
        except ValueError:
            answer = "unreadable"
    return str(response.status_code), answer


async def send_raw(port: int, call: Call, timeout: float, hold: float) -> tuple[str, str | None]:
    """A request on a socket: the whole body (answers arriving early are read), or for ``slow`` 16 bytes
    a second for ``hold`` seconds; ``held`` when the server still waits for more after that."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return f"error:{type(exc).__name__}", None

    async def answer() -> str:
        head = await reader.readuntil(b"\r\n\r\n")
        return head.split(b" ", 2)[1].decode()

    reading = asyncio.ensure_future(answer())
    slow = call.transport == "slow"
    head = request_bytes(port, call.path, b"", call.headers, call.content_length or len(call.body))
    try:
        writer.write(head)
        step, chunk = (1.0, 16) if slow else (0.0, 256 * 1024)
        deadline = time.monotonic() + (hold if slow else timeout)
        for at in range(0, len(call.body), chunk):
            left = deadline - time.monotonic()
            if reading.done() or left <= 0:
                break
            writer.write(call.body[at:at + chunk])
            # A server that answered early may stop reading: the answer, not the write, decides.
            draining = asyncio.ensure_future(writer.drain())
            await asyncio.wait([draining, reading], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if not draining.done():
                draining.cancel()
            elif draining.exception():
                raise draining.exception()
            if step:
                await asyncio.wait([reading], timeout=step)
        status = await asyncio.wait_for(asyncio.shield(reading), 1.0 if slow else max(1.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        status = "held" if slow else "timeout"
    except (ConnectionResetError, BrokenPipeError):
        status = await _settled(reading)
    except asyncio.IncompleteReadError:
        status = "closed"
    finally:
        reading.cancel()
        writer.close()
    return status, None


async def _settled(reading: asyncio.Future) -> str:
    """The answer read before the server reset the connection, if one was."""
    try:
        return await asyncio.wait_for(asyncio.shield(reading), 1.0)
    except asyncio.IncompleteReadError:
        return "closed"
    except (asyncio.TimeoutError, ConnectionResetError):
        return "reset"


# -- processes -----------------------------------------------------------------------------------------------
def start(work: Path, name: str, command: list[str]) -> subprocess.Popen:
    """A server in its own session (so :func:`common.stop` ends its workers too), logging to ``<name>.log``."""
    env = {**os.environ, "SHOPIFY_API_SECRET": SECRET, "OMP_NUM_THREADS": "1"}
    log = (work / f"{name}.log").open("w")
    return subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def tree_rss(pid: int) -> dict[int, tuple[str, int]]:
    """RSS of a process and every process under it (uvicorn workers, the webhook applier...)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for p in procs:
        try:
            out[p.pid] = (" ".join(p.cmdline())[-90:], p.memory_info().rss)
        except psutil.Error:
            continue
    return out


def rss_report(start: dict[int, tuple[str, int]], end: dict[int, tuple[str, int]]) -> dict:
    def mb(n: int) -> float:
        return round(n / 2**20, 1)

    first, last = sum(r for _, r in start.values()), sum(r for _, r in end.values())
    return {"start_mb": mb(first), "end_mb": mb(last), "growth_pct": round(100 * (last - first) / first, 1) if first else None,
            "same_processes": set(start) == set(end),
            "processes": [{"pid": pid, "cmd": cmd, "start_mb": mb(rss), "end_mb": mb(end[pid][1]) if pid in end else None}
                          for pid, (cmd, rss) in start.items()]
                         + [{"pid": pid, "cmd": cmd, "start_mb": None, "end_mb": mb(rss)}
                            for pid, (cmd, rss) in end.items() if pid not in start]}


# -- the soak ------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    seconds: float
    rate: float
    warmup: float
    serve_concurrency: int = 16
    webhook_concurrency: int = 8
    raw_connections: int = 8  # huge declared lengths and 10 MB bodies on sockets
    slow_connections: int = 8
    timeout: float = 30.0
    raw_timeout: float = 10.0
    slow_hold: float = 20.0

    @property
    def max_requests(self) -> int:
        return int(self.rate * self.seconds)


async def drive(plan: Plan, traffic: Traffic, ports: dict[str, int], pids: dict[str, int], stats: Stats) -> dict:
    """Send the mix until ``plan.seconds`` or ``plan.max_requests``; sample each server's RSS on the way."""
    import httpx

    concurrency = {"serve": plan.serve_concurrency, "webhooks": plan.webhook_concurrency}
    clients = {target: httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[target]}", timeout=plan.timeout,
                                         limits=httpx.Limits(max_connections=conc))
               for target, conc in concurrency.items()}
    sizes = {"serve": plan.serve_concurrency, "webhooks": plan.webhook_concurrency, "raw": plan.raw_connections,
             "slow": plan.slow_connections}
    gates = {name: asyncio.Semaphore(size) for name, size in sizes.items()}
    # Requests waiting per gate are bounded too: a server that slows down gets fewer requests, the other
    # server still gets its share (the skipped draws are counted).
    queue_caps = {name: size * (1 if name == "slow" else 2) for name, size in sizes.items()}
    queued: Counter = Counter()
    kinds, weights = KINDS, [k.weight for k in KINDS]
    rss: dict[str, dict] = {}
    series: list[dict] = []

    def gate_of(kind: Kind) -> str:
        return kind.target if kind.transport == "http" else kind.transport

    async def one(call: Call, gate: str) -> None:
        try:
            async with gates[gate]:
                started = time.perf_counter()
                try:
                    if call.transport == "http":
                        status, answer = await send_http(clients[call.target], call)
                    else:
                        status, answer = await send_raw(ports[call.target], call, plan.raw_timeout, plan.slow_hold)
                except Exception as exc:  # noqa: BLE001 - the client's own failure, counted, never lost
                    status, answer = f"client-error:{type(exc).__name__}", None
                stats.add(call, status, time.perf_counter() - started, answer)
        finally:
            queued[gate] -= 1

    async def sample() -> None:
        begun = time.monotonic()
        while True:
            at = round(time.monotonic() - begun, 1)
            series.append({"t_s": at, **{t: round(sum(r for _, r in tree_rss(p).values()) / 2**20, 1)
                                         for t, p in pids.items()}})
            await asyncio.sleep(max(5.0, plan.seconds / 40))

    sampler = asyncio.ensure_future(sample())
    tasks = set()
    begun = time.monotonic()
    sent = 0
    while sent < plan.max_requests and time.monotonic() - begun < plan.seconds:
        if "start" not in rss and time.monotonic() - begun >= plan.warmup:
            rss["start"] = {t: tree_rss(p) for t, p in pids.items()}
        delay = begun + sent / plan.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        kind = traffic.rng.choices(kinds, weights)[0]
        gate = gate_of(kind)
        if queued[gate] >= queue_caps[gate]:
            stats.skipped[kind.name] += 1
            await asyncio.sleep(0.002)
            continue
        queued[gate] += 1
        task = asyncio.ensure_future(one(kind.make(traffic), gate))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
    load_seconds = time.monotonic() - begun
    await asyncio.gather(*tasks)
    rss.setdefault("start", {t: tree_rss(p) for t, p in pids.items()})
    rss["end"] = {t: tree_rss(p) for t, p in pids.items()}
    sampler.cancel()
    for client in clients.values():
        await client.aclose()
    return {"rss": rss, "series": series, "sent": sent, "load_seconds": round(load_seconds, 1),
            "all_answered_seconds": round(time.monotonic() - begun, 1)}


def drain(url: str, timeout: float) -> dict:
    """Wait until the applier has nothing pending (or ``timeout``); the receiver's last health answer."""
    import httpx

    begun, last = time.monotonic(), {}
    while time.monotonic() - begun < timeout:
        try:
            response = httpx.get(url, timeout=5)
            last = {"status_code": response.status_code, "body": response.json()}
            if not last["body"].get("pending"):
                break
        except (httpx.HTTPError, ValueError) as exc:
            last = {"error": f"{type(exc).__name__}: {exc}"}
        time.sleep(0.5)
    return {**last, "waited_s": round(time.monotonic() - begun, 1)}


def probe(port: int, traffic: Traffic, count: int = 20) -> dict:
    """Valid predictions after the soak: does serving still answer (e.g. after an unload)?"""
    import httpx

    statuses: Counter = Counter()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for _ in range(count):
            customer = traffic.customer()
            try:
                statuses[str(client.post(V2, content=v2_body(customer), headers=bearer(traffic.token(customer))).status_code)] += 1
            except httpx.HTTPError as exc:
                statuses[f"error:{type(exc).__name__}"] += 1
    return dict(statuses)


def read_journal(path: Path) -> dict:
    """The journal's events, dead letters and the live rows the soak's orders made (read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT webhook_id, applied_at, outcome FROM events").fetchall()
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        dead: set[str] = {i for i, _, outcome in rows if outcome and "dead" in outcome.lower()}
        dead_rows = {}
        for table in (t for t in tables if "dead" in t.lower()):
            columns = [c[1] for c in conn.execute(f'PRAGMA table_info("{table}")')]
            dead_rows[table] = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            if "webhook_id" in columns:
                dead |= {i for (i,) in conn.execute(f'SELECT webhook_id FROM "{table}"')}
        ours = (ORDER_IDS, HOSTILE_ORDER_IDS)
        live = {
            "orders": conn.execute("SELECT count(*) FROM live_orders WHERE order_id >= ? AND order_id < ?", ours).fetchone()[0],
            "line_items": conn.execute("SELECT count(*) FROM live_line_items WHERE order_id >= ? AND order_id < ?",
                                       ours).fetchone()[0],
            "refunds": conn.execute("SELECT count(*) FROM live_refunds WHERE refund_id >= ? AND refund_id < ?",
                                    (REFUND_IDS, ORDER_IDS)).fetchone()[0],
        }
    finally:
        conn.close()
    return {"rows": rows, "dead": dead, "dead_letter_tables": dead_rows, "live": live,
            "outcomes": dict(Counter((o or "pending").split(":")[0][:40] for _, _, o in rows).most_common(12))}


def store_excess(traffic: Traffic, valid: dict[str, tuple[str, int | None]], applied: set[str], live: dict) -> int:
    """Live rows beyond one per order, line item and refund of the soak's applied deliveries."""
    orders = {valid[i][1] for i in applied if i in valid and valid[i][0] in ("orders_create", "orders_updated")}
    refunds = {valid[i][1] for i in applied if i in valid and valid[i][0] == "refunds_create"}
    items = sum(len(traffic.orders[o][1]) for o in orders)
    return max(0, live["orders"] - len(orders)) + max(0, live["line_items"] - items) + max(0, live["refunds"] - len(refunds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600, help="how long the load runs (30: quick mode)")
    parser.add_argument("--rate", type=float, default=200, help="requests per second, both servers together")
    parser.add_argument("--drain-seconds", type=float, default=120, help="longest wait for the applier afterwards")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    plan = Plan(seconds=args.seconds, rate=args.rate, warmup=min(60.0, max(5.0, args.seconds / 10)),
                slow_hold=min(20.0, args.seconds / 3))

    import serving as serving_bench  # bench/serving.py: the store and the model it benches

    work = Path(tempfile.mkdtemp(prefix="storeflow-soak-"))
    print(f"building the store and the model in {work} ...", flush=True)
    data = serving_bench.build(work)
    settings = data["settings"]
    synthetic = settings.ingest.synthetic
    store = {"customers": synthetic.customers, "orders": synthetic.orders, "days": synthetic.days,
             "customers_with_features": len(data["rows"])}
    ids = sorted(data["rows"])
    cut = max(1, len(ids) // 10)
    traffic = Traffic(customers=ids[cut:], redactable=ids[:cut], webhook_max_body=settings.shopify.webhook_max_body_bytes,
                      rng=random.Random(args.seed))
    ports = {"serve": free_port(), "webhooks": free_port()}
    # The newest version (alias challenger): whether it beat a champion is the gate's business, not the soak's.
    procs = {"serve": start(work, "serve", [*serve_command(work, ports["serve"]), "--alias", "challenger"]),
             "webhooks": start(work, "webhooks", [str(Path(sys.executable).with_name("storeflow")), "webhooks",
                                                  "-c", str(work / "config.yaml"), "--port", str(ports["webhooks"])])}
    stats = Stats()
    try:
        wait_ready(procs["serve"], f"http://127.0.0.1:{ports['serve']}/v2/health/ready")
        wait_ready(procs["webhooks"], f"http://127.0.0.1:{ports['webhooks']}/healthz")
        machine = {"nproc": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
                   "python": platform.python_version(), "platform": platform.platform()}
        print(f"soaking for {plan.seconds:.0f} s at {plan.rate:.0f} requests/s (at most {plan.max_requests}) ...", flush=True)
        run = asyncio.run(drive(plan, traffic, ports, {t: p.pid for t, p in procs.items()}, stats))
        machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        health = drain(f"http://127.0.0.1:{ports['webhooks']}/healthz", args.drain_seconds)
        after = probe(ports["serve"], traffic)
        alive = {t: p.poll() is None for t, p in procs.items()}
    finally:
        for proc in procs.values():
            stop(proc)

    journal = read_journal(work / "state" / "shopify" / "webhooks.db")
    events = {i: (applied, outcome) for i, applied, outcome in journal["rows"]}
    applied = {i for i, (at, _) in events.items() if at is not None} - journal["dead"]
    deliveries = deliveries_report(stats.answers, set(stats.valid), events, journal["dead"], len(journal["rows"]),
                                   store_excess(traffic, stats.valid, applied, journal["live"]))
    kinds = kind_table(stats)
    report = build_report(plan, store, machine, kinds, run, deliveries, journal, health, after, alive, work)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"wrote {RESULTS} (server logs in {work})")
    return 0 if all(report["targets_met"].values()) else 1


def build_report(plan, store, machine, kinds, run, deliveries, journal, health, after, alive, work: Path) -> dict:
    targets = {}
    for target in ("serve", "webhooks"):
        counts: Counter = Counter()
        for row in kinds.values():
            if row["target"] == target:
                counts.update(row["statuses"])
        targets[target] = {"requests": sum(counts.values()), "statuses": dict(sorted(counts.items())),
                           "5xx": sum(n for s, n in counts.items() if s.startswith("5")),
                           "connection_errors": sum(n for s, n in counts.items() if not s.isdigit()
                                                    and s not in ("closed", "held"))}
    rss = {t: rss_report(run["rss"]["start"][t], run["rss"]["end"][t]) for t in ("serve", "webhooks")}
    requests = sum(t["requests"] for t in targets.values())
    fivexx = sum(t["5xx"] for t in targets.values())
    headline = {
        "requests": requests, "skipped_queue_full": sum(r["skipped_queue_full"] for r in kinds.values()), "5xx": fivexx,
        "5xx_by_kind": {k: r["5xx"] for k, r in kinds.items() if r["5xx"]},
        "connection_errors": sum(t["connection_errors"] for t in targets.values()),
        "unexpected_by_kind": {k: r["unexpected"] for k, r in kinds.items() if r["unexpected"]},
        "rss_growth_pct": {t: r["growth_pct"] for t, r in rss.items()},
        "deliveries": {k: deliveries[k] for k in ("acknowledged", "applied", "duplicated", "dead_lettered", "pending")},
        "store": store,
    }
    return {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine, "store": store,
        "plan": {"seconds": plan.seconds, "rate_per_s": plan.rate, "max_requests": plan.max_requests,
                 "warmup_s": plan.warmup, "serve_concurrency": plan.serve_concurrency,
                 "webhook_concurrency": plan.webhook_concurrency, "slow_connections": plan.slow_connections,
                 "slow_hold_s": plan.slow_hold, "serve_workers": 2, "served": "alias challenger (the newest version)"},
        "headline": headline,
        "targets_met": {"no_5xx": fivexx == 0, "rss_growth_under_10pct": all(
            r["growth_pct"] is not None and r["growth_pct"] < 10 for r in rss.values()),
            "acknowledged_all_applied": deliveries["acknowledged"] == deliveries["applied"],
            "none_duplicated": deliveries["duplicated"] == 0, "servers_alive": all(alive.values())},
        "sent": run["sent"], "load_seconds": run["load_seconds"],
        "achieved_rate_per_s": round(run["sent"] / run["load_seconds"], 1) if run["load_seconds"] else None, "all_answered_seconds": run["all_answered_seconds"],
        "targets": targets, "kinds": kinds, "rss": rss, "rss_series_mb": run["series"],
        "deliveries": deliveries,
        "journal": {"events": len(journal["rows"]), "outcomes": journal["outcomes"],
                    "dead_letter_tables": journal["dead_letter_tables"], "live_rows_of_soak_orders": journal["live"]},
        "healthz_after_drain": health, "valid_predictions_after": after, "servers_alive_at_end": alive,
        "log_bytes": {p.stem: p.stat().st_size for p in sorted(work.glob("*.log"))},
    }


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    store = report["store"]
    table = Table(title=f"soak: {report['plan']['seconds']:.0f} s, {report['headline']['requests']} requests "
                        f"(store: {store['customers']} customers, {store['orders']} orders)")
    for column in ("server", "kind", "requests", "statuses", "5xx", "unexpected", "p99 ms"):
        table.add_column(column, justify="right" if column in ("requests", "5xx", "unexpected", "p99 ms") else "left")
    for name, row in report["kinds"].items():
        style = "red" if row["5xx"] else ("yellow" if row["unexpected"] else None)
        table.add_row(row["target"], name, str(row["requests"]), " ".join(f"{s}:{n}" for s, n in row["statuses"].items()),
                      str(row["5xx"]), str(row["unexpected"]), str(row["p99_ms"]), style=style)
    console = Console(width=150)
    console.print(table)
    head = report["headline"]
    summary = Table(title="headline", show_header=False)
    summary.add_row("5xx (target 0)", f"{head['5xx']} {head['5xx_by_kind'] or ''}")
    summary.add_row("connection errors", str(head["connection_errors"]))
    summary.add_row("answers outside each kind's expected statuses", str(head["unexpected_by_kind"] or 0))
    summary.add_row("draws not sent (their server's queue was full)", str(head["skipped_queue_full"]))
    for target, r in report["rss"].items():
        summary.add_row(f"RSS {target} (target < 10 %)", f"{r['start_mb']} -> {r['end_mb']} MB ({r['growth_pct']} %)")
    d = report["deliveries"]
    summary.add_row("deliveries acknowledged / applied / duplicated",
                    f"{d['acknowledged']} / {d['applied']} / {d['duplicated']} (dead-lettered {d['dead_lettered']}, "
                    f"pending {d['pending']}, hostile accepted {d['hostile_acknowledged']})")
    summary.add_row("targets met", " ".join(f"{k}={v}" for k, v in report["targets_met"].items()))
    console.print(summary)


if __name__ == "__main__":
    raise SystemExit(main())
