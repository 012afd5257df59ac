"""Order risk end to end: signed orders/create deliveries in (wrk + Lua, pre-signed), the order scored by the risk
model server (``storeflow serve-risk``), the assessment out as an ``orderRiskAssessmentCreate`` mutation at a
loopback Admin API answering in Shopify's recorded format. Issue 16 asks for >= 3,000 orders/s sustained with p99
end to end <= 50 ms and zero loss on this 2-core machine; this measures what the path does today, end to end from
wrk's sending each delivery (the Lua script stamps it with the wall clock) to the Admin API's answer to its mutation,
and where the time goes (sent -> journaled: HTTP, signature, payload check, commit; journaled -> assessment queued:
live features and the score; queued -> mutation answered).

Trains the risk model on a synthetic store with fraud (``--customers``/``--orders``), starts the risk server and the
webhook receiver (``risk.endpoint`` set) as processes, pre-signs ``--deliveries`` distinct orders and lets wrk send
them for ``--seconds`` (each Shopify's whole ``orders/create``, ~9.5 KB, as a store's webhooks carry it; ``--body
trimmed`` sends only the fields storeflow reads, ~0.7 KB, as runs before 2026-12-06 did) (closed loop, ``--connections`` in flight; or paced, ``storeflow:2000``: that many a second on
a timetable, as Shopify sends them whether or not the receiver keeps up), then waits up to ``--drain`` seconds for
every journaled order to reach Shopify. ``--follow-ups K`` sends each order's K later deliveries too (the first K of
orders/paid, orders/updated, refunds/create and orders/cancelled, in the same body kind), interleaved with later
orders' creates as a store's webhooks come: the scorer records them as history between the orders it scores. ``--applier`` runs storeflow's receiver as ``storeflow webhooks``
does, with the applier process that applies every delivery to the customers' features in Feast (not on the way to
the assessment, but on the same two cores); without it (the default, and every run before 2026-12-06 22:00 UTC) no
process applies them. Loss = orders journaled (acknowledged 200) without a mutation answered once all were
drained; while some still wait in the journal or the outbox (not lost: they go out later) it is not known.

Rows one after the other on copies of the same trained state, the same deliveries and the same loopback Admin API:
``storeflow`` (``storeflow serve-risk``: named features in, score, level and facts out, every prediction logged) and
``stock_kserve`` (bench/stock_kserve_risk.py: KServe's ModelServer with a plain predict_proba model on the model
file, features as lists in, scores out; the receiver makes the assessment). The receiver, its journal, live features
(velocity and customers' history in Feast's online store, ``--online-store``), outbox and write-back are the same in
both. Each with the receiver's scorer as ``storeflow webhooks`` runs it by default (``risk.scorer: process``, a
process of its own) and, ``+thread``, in threads of the receiver (``risk.scorer: thread``).

Shopify's own limit, modelled in a row of its own: a shop's Admin API cost bucket refills at 100 points/s (Standard),
200 (Advanced), 1,000 (Plus) or 2,000 (Enterprise) (shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits), and
``orderRiskAssessmentCreate`` asks 10 points, so ONE shop gets at most 10-200 assessments/s written back, however
many the app puts in a document (at most 100: a document may ask 1,000 points). 3,000/s written back is therefore
not reachable for one shop on any plan; it is the rate of many shops' orders through one receiver. So the rows
``storeflow`` and ``stock_kserve`` run with the bucket off (every answer reports a full bucket: what the path itself
does), and ``storeflow@enterprise`` with Shopify's Enterprise bucket (2,000 points/s; the recorded answer's size,
2,000 points), which caps its write-back at 200 orders/s by design.
Each row also says where the machine's CPU went per journaled order, by process (the receiver, its scorer and
write-back processes, the risk server, redis-server, wrk, this process's loopback Admin API), from wrk's start until every order was written
back: 3,000 orders/s on 2 cores leaves 0.667 ms of CPU per order for all of them together.
Writes bench/results/risk_throughput.json (with the commit, the store's size and the load average).

    flock -x /tmp/storeflow-quiet.lock timeout 2400 nice -n 5 .venv/bin/python bench/risk_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from collections.abc import Iterator
from functools import cache
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import yaml
from common import free_port, full_order_payload, machine_gauge_ms, webhook_headers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "risk_throughput.json"
CREATED = ROOT / "tests" / "data" / "shopify_api" / "risk_assessment_created.json"  # the recorded-format answers
THROTTLED = ROOT / "tests" / "data" / "shopify_api" / "throttled.json"
SECRET, SHOP = "bench-secret", "bench-store.myshopify.com"
FIRST_ORDER = 6_000_000_000  # delivery number i carries order FIRST_ORDER + i (its webhook id ends in i)
FIRST_CUSTOMER = 7_000_000  # and customer FIRST_CUSTOMER + i % 5,000
# the receiver as `storeflow webhooks` runs it, applier process and all (--applier)
RECEIVER_SERVE = ("import sys; from storeflow.components.config import load_settings; "
                  "from storeflow.components.shopify.webhooks import serve; serve(load_settings(), '127.0.0.1', "
                  "int(sys.argv[1]))")
RECEIVER = ("import sys; from storeflow.components.config import load_settings; "
            "from storeflow.components.shopify.webhooks import create_app, run, scorer_supervisor; s = load_settings(); "
            "run(create_app(s, apply=False, risk_supervisor=scorer_supervisor(s)), '127.0.0.1', int(sys.argv[1]))")
# the same receiver, its risk scorer (thread or process) speaking to the stock KServe server (argv: port, columns,
# high, medium, version, this folder)
RECEIVER_STOCK = ("import sys, json, functools; sys.path.insert(0, sys.argv[6]); import stock_kserve_risk; "
                  "from storeflow.components.config import load_settings; "
                  "from storeflow.components.shopify.webhooks import create_app, run, scorer_supervisor; "
                  "from storeflow.components.shopify.supervisor import ApplierSupervisor; "
                  "s = load_settings(); a = (json.loads(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]); "
                  "stock_kserve_risk.patch_receiver(*a); "
                  "run(create_app(s, apply=False, supervisor=ApplierSupervisor(s) if sys.argv[7:] == ['applier'] else None, "
                  "risk_supervisor=scorer_supervisor(s, functools.partial(stock_kserve_risk.run_scorer, *a))), "
                  "'127.0.0.1', int(sys.argv[1]))")
LUA = r"""
-- pre-signed deliveries, one per line: webhook id, HMAC, topic, body (tab separated); thread t of n sends lines t,
-- t+n, ...
local ffi = require("ffi")  -- wrk runs LuaJIT: the monotonic clock, for a paced row's timetable
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *out);
]]
local clock = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end
local wall = ffi.new("bench_timespec")
local function now_us()  -- the wall clock, as the journal and the outbox stamp their times
  ffi.C.clock_gettime(0, wall)  -- CLOCK_REALTIME
  return tonumber(wall.tv_sec) * 1000000 + math.floor(tonumber(wall.tv_nsec) / 1000)
end
local deliveries, counter, every, slot, threads = {}, 0, 0, nil, {}
sent = {}  -- "webhook id<TAB>µs since the epoch" of each delivery as it goes out (the row's end to end starts there)
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  threads[#threads + 1] = thread
end
function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    local out = io.open(thread:get("sent_file"), "a")
    for _, line in ipairs(thread:get("sent")) do out:write(line, "\n") end
    out:close()
  end
end
function init(args)
  sent_file = args[4]
  local n, k = tonumber(args[2]), 0
  for line in io.lines(args[1]) do
    k = k + 1
    if (k - 1) % n == tid - 1 then
      local id, hmac, topic, body = line:match("([^\t]+)\t([^\t]+)\t([^\t]+)\t(.*)")
      deliveries[#deliveries + 1] = {id, hmac, body, topic}
    end
  end
  next_one = 1
  every = tonumber(args[3] or "0")
end
-- A paced row: this thread's deliveries go out on a timetable, one every `every` ms, each on whichever of its
-- connections is free; a receiver that falls behind gets them as fast as it acknowledges, until it has caught up
-- (the offered rate is the timetable's, not what the receiver lets through). 0: closed loop.
function delay()
  if every == 0 then return 0 end
  local now = now_ms()
  slot = (slot or now) + every
  return math.max(0, slot - now)
end
function request()
  local d = deliveries[next_one]
  if d == nil then d = deliveries[#deliveries] end  -- past the end: Shopify's retry of the last one
  next_one = next_one + 1
  sent[#sent + 1] = d[1] .. "\t" .. string.format("%d", now_us())
  return wrk.format("POST", "/webhooks", {
    ["Content-Type"] = "application/json", ["X-Shopify-Topic"] = d[4],
    ["X-Shopify-Hmac-Sha256"] = d[2], ["X-Shopify-Shop-Domain"] = "%s",
    ["X-Shopify-Webhook-Id"] = d[1], ["X-Shopify-API-Version"] = "2026-01"}, d[3])
end
"""


# Shopify's restore rates (points/s) by plan, shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits; a mutation
# asks 10 points, so a shop gets at most rate/10 assessments a second written back, whatever the app sends.
RESTORE_RATES = {"standard": 100.0, "advanced": 200.0, "plus": 1000.0, "enterprise": 2000.0}
MAX_QUERY_COST = 1000  # Shopify refuses one document asking more (MAX_COST_EXCEEDED), whatever the plan
ALIASED = re.compile(rb"(\w+): orderRiskAssessmentCreate\(")


class Admin(ThreadingHTTPServer):
    """The Admin API's GraphQL endpoint: every alias of an aliased ``orderRiskAssessmentCreate`` document answered
    with the recorded answer's payload, at 10 points of requested cost per alias. ``bucket`` None: every answer
    reports a full bucket (Shopify's limit taken away, to see what the path itself does); a plan's name: Shopify's
    leaky bucket at that plan's restore rate and the recorded answer's size (maximumAvailable 2,000), a document the
    bucket cannot hold yet answered THROTTLED in the recorded format. Either way a document over 1,000 points is
    refused, MAX_COST_EXCEEDED."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        recorded = json.loads(CREATED.read_bytes())
        self.payload = json.dumps(recorded["data"]["orderRiskAssessmentCreate"], separators=(",", ":"))
        self.status = recorded["extensions"]["cost"]["throttleStatus"]
        self.throttled = json.loads(THROTTLED.read_bytes())
        self.lock = threading.Lock()
        self.reset(None)

    def reset(self, bucket: str | None) -> None:
        with self.lock:
            self.bucket, self.rate = bucket, RESTORE_RATES[bucket] if bucket else None
            self.available, self.at = float(self.status["maximumAvailable"]), time.monotonic()
            self.calls = self.mutations = self.throttled_calls = 0

    def answer(self, query: bytes) -> bytes:
        aliases = ALIASED.findall(query)
        cost = 10 * len(aliases)
        maximum = float(self.status["maximumAvailable"])
        with self.lock:
            self.calls += 1
            if cost > MAX_QUERY_COST:
                return json.dumps({"errors": [{"message": f"Query cost is {cost}, which exceeds the single query "
                                                          f"max cost limit ({MAX_QUERY_COST}).",
                                               "extensions": {"code": "MAX_COST_EXCEEDED", "cost": cost,
                                                              "maxCost": MAX_QUERY_COST}}]}).encode()
            if self.rate is not None:
                now = time.monotonic()
                self.available = min(maximum, self.available + (now - self.at) * self.rate)
                self.at = now
                if cost > self.available:
                    self.throttled_calls += 1
                    body = json.loads(json.dumps(self.throttled))
                    body["extensions"]["cost"].update(requestedQueryCost=cost, throttleStatus={
                        **self.status, "currentlyAvailable": int(self.available), "restoreRate": self.rate})
                    return json.dumps(body).encode()
                self.available -= cost
            self.mutations += len(aliases)
            status = {**self.status, "currentlyAvailable": int(self.available) if self.rate else maximum,
                      "restoreRate": self.rate or self.status["restoreRate"]}  # off: always full
        data = ",".join(f'"{alias.decode()}":{self.payload}' for alias in aliases)
        cost_json = json.dumps({"requestedQueryCost": cost, "actualQueryCost": cost, "throttleStatus": status})
        return f'{{"data":{{{data}}},"extensions":{{"cost":{cost_json}}}}}'.encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # headers and body go out in two writes: without TCP_NODELAY the client's delayed ACK holds the body
        # ~40 ms and the fake, not the path, sets the pace
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def do_POST(self):
        query = json.loads(self.rfile.read(int(self.headers["content-length"])))["query"].encode()
        answer = self.server.answer(query)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


BODIES = ("subscribed", "full", "trimmed")


def order(i: int, now: str, body: str = "subscribed") -> dict:
    """Delivery number ``i``: its own order, line item and address, one of 5,000 customers. ``full``: Shopify's
    whole orders/create (tests/data/shopify_webhooks/orders_create.json, every documented field, ~9.5 KB) with
    those changed, as a subscription without include_fields brings it; ``subscribed``: that order as Shopify sends
    it under storeflow's subscription (``storeflow webhook-subscriptions``: the include_fields storeflow reads,
    ~1.4 KB); ``trimmed``: a hand-made order of those fields (~0.7 KB, what the bench sent before 2026-12-06)."""
    customer = FIRST_CUSTOMER + i % 5_000
    email = f"b{customer}@example.com"
    if body in ("full", "subscribed"):
        whole = full_order_payload(FIRST_ORDER + i, customer, email, now, f"{i % 997} Main St",
                                   (8_000_000_000 + 2 * i, 8_000_000_001 + 2 * i), f"#B{i}")
        if body == "full":
            return whole
        from storeflow.components.shopify.subscriptions import filtered

        return filtered(whole, _order_fields())
    return {"id": FIRST_ORDER + i, "name": f"#B{i}", "email": email, "created_at": now, "updated_at": now,
            "cancelled_at": None, "currency": "USD", "financial_status": "paid", "total_price": "85.00",
            "subtotal_price": "85.00", "total_discounts": "0.00", "payment_gateway_names": ["shopify_payments"],
            "customer": {"id": customer, "email": email, "created_at": "2025-01-01T00:00:00+00:00"},
            "shipping_address": {"address1": f"{i % 997} Main St", "zip": "10001", "country_code": "US"},
            "billing_address": {"country_code": "US"},
            "line_items": [{"id": 8_000_000_000 + i, "product_id": 77, "sku": "SKU", "title": "Tea", "quantity": 2,
                            "price": "42.50"}]}


@cache
def _order_fields() -> tuple[str, ...]:
    """The include_fields of storeflow's orders subscription (imported once: they import the risk models)."""
    from storeflow.components.shopify.subscriptions import include_fields

    return include_fields("orders/create")


FOLLOW_UP_GAP = 7  # an order's follow-up k goes out k * 7 creates after it: the stream interleaves topics, as a store's


FOLLOW_UP_TOPICS = ("orders/paid", "orders/updated", "refunds/create", "orders/cancelled")
FRAUD_EVERY = 50  # of the orders cancelled (--follow-ups 4), one in this many for fraud: the rest as a customer asked


def follow_up(i: int, k: int, now: str, body: str = "subscribed") -> tuple[str, dict]:
    """Order ``i``'s ``k``-th delivery after its create, each a minute later than the one before, as Shopify sends
    them once it is paid and then changed (fulfilled, tagged), refunded and cancelled: orders/paid, orders/updated,
    refunds/create (its first line item's 42.50 paid back) and orders/cancelled (one order in FRAUD_EVERY for fraud,
    which the order's customer's history counts)."""
    later = (datetime.fromisoformat(now) + timedelta(minutes=k)).isoformat()
    topic = FOLLOW_UP_TOPICS[k - 1]
    if topic == "refunds/create":
        return topic, refund(i, later, body)
    payload = order(i, now, body)
    payload.update({"updated_at": later, "financial_status": "paid"})
    if topic == "orders/cancelled":
        payload.update({"cancelled_at": later, "financial_status": "refunded",
                        "cancel_reason": "fraud" if i % FRAUD_EVERY == 0 else "customer"})
    return topic, payload


def refund(i: int, at: str, body: str = "subscribed") -> dict:
    """Order ``i``'s refunds/create as Shopify's REST Refund has it (its first line item, the payment paid back);
    ``subscribed``: cut to the subscription's include_fields, as for the orders."""
    item = 8_000_000_000 + 2 * i
    money = {"amount": "42.50", "currency_code": "USD"}
    whole = {"id": 9_100_000_000 + i, "order_id": FIRST_ORDER + i, "created_at": at, "processed_at": at,
             "note": "bench", "restock": False, "user_id": None,
             "admin_graphql_api_id": f"gid://shopify/Refund/{9_100_000_000 + i}",
             "refund_line_items": [{"id": 9_200_000_000 + i, "line_item_id": item, "location_id": None,
                                    "quantity": 1, "restock_type": "no_restock", "subtotal": 42.5, "total_tax": 0.0,
                                    "subtotal_set": {"shop_money": money, "presentment_money": money},
                                    "total_tax_set": {"shop_money": {**money, "amount": "0.00"},
                                                      "presentment_money": {**money, "amount": "0.00"}}}],
             "transactions": [{"id": 9_300_000_000 + i, "order_id": FIRST_ORDER + i, "kind": "refund",
                               "gateway": "shopify_payments", "status": "success", "amount": "42.50",
                               "currency": "USD", "created_at": at, "processed_at": at, "parent_id": None,
                               "test": False, "message": None, "error_code": None}],
             "order_adjustments": [], "duties": []}
    if body != "subscribed":
        return whole
    from storeflow.components.shopify.subscriptions import filtered, include_fields

    return filtered(whole, include_fields("refunds/create"))


def stream(deliveries: int, follow_ups: int) -> Iterator[tuple[str, int, int]]:
    """(topic kind, order number, k) of each delivery wrk sends, ``deliveries`` in all: each order's create, and
    after it the follow-ups (k = 1..``follow_ups``) of the orders created k * FOLLOW_UP_GAP before it."""
    sent, i = 0, 0
    while sent < deliveries:
        yield "create", i, 0
        sent += 1
        for k in range(1, follow_ups + 1):
            if sent < deliveries and i - k * FOLLOW_UP_GAP >= 0:
                yield "follow-up", i - k * FOLLOW_UP_GAP, k
                sent += 1
        i += 1


def train(root: Path, config: dict) -> dict:
    from storeflow.components.config import RiskConfig, load_settings
    from storeflow.components.ingest import ingest
    from storeflow.components.risk.stage import risk_rows, train_and_register

    settings = load_settings(config)
    started = time.perf_counter()
    snapshot = ingest(settings).snapshot
    rows = risk_rows(snapshot)
    result = train_and_register(settings, rows, RiskConfig(params={**RiskConfig().params, "max_iter": 100},
                                                           bootstrap_samples=50))
    return {"orders": int(len(rows)), "version": result.version, "promoted": result.promoted,
            "seconds": round(time.perf_counter() - started, 1)}


def warm_up(url: str, i: int, now: str, root: Path, receiver: subprocess.Popen, log: Path, kind: str,
            seconds: float = 180) -> None:
    """One delivery (order ``i``, past wrk's) in, and wait until Shopify has its assessment (``seconds`` at most:
    on a large snapshot the scorer seeds its ledgers first)."""
    body = json.dumps(order(i, now, kind), separators=(",", ":")).encode()
    headers = webhook_headers("orders/create", f"bench-risk-{i:07d}", body, secret=SECRET, shop=SHOP)
    answer = httpx.post(f"{url}/webhooks", content=body, headers=headers, timeout=30)
    if answer.status_code != 200:
        sys.exit(f"warm-up delivery answered {answer.status_code}: {answer.text}")
    outbox = root / "state" / "shopify" / "risk.db"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if receiver.poll() is not None:
            sys.exit(f"receiver exited: {log.read_text()[-3000:]}")
        try:
            with closing(sqlite3.connect(outbox)) as db:
                if db.execute("SELECT count(*) FROM risk_outbox WHERE state = 'sent'").fetchone()[0]:
                    return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.3)
    sys.exit(f"the warm-up order was not written back in {seconds:.0f} s: {log.read_text()[-3000:]}")


def wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{log.name} exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    sys.exit(f"{url} not ready")


def wrk_summary(text: str) -> dict:
    def seconds(value: str) -> float:
        number, unit = float(re.match(r"[\d.]+", value).group()), re.sub(r"[\d.]", "", value)
        return number * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]

    out = {}
    if m := re.search(r"(\d+) requests in ([\d.]+\w+)", text):
        out["requests"], out["seconds"] = int(m.group(1)), seconds(m.group(2))
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        out["requests_per_second"] = float(m.group(1))
    for q in ("50", "90", "99"):
        if m := re.search(rf"\s{q}(?:\.000)?%\s+([\d.]+\w+)", text):
            out[f"ack_p{q}_ms"] = round(seconds(m.group(1)) * 1000, 2)
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        out["non_2xx"] = int(m.group(1))
    if m := re.search(r"Socket errors: (.*)", text):
        out["socket_errors"] = m.group(1)
    return out


def breakdown(config: Path, model_port: int, now: str, body: str = "subscribed", samples: int = 200) -> dict:
    """Where one order's time goes on the receiver's risk thread, measured here one order at a time: its live
    features (risk.live: the history's rows for its customer, email and address, then the DuckDB query) and the
    risk server's answer over HTTP, one order per request; then per order in batches of 100 and 1,000 (one features
    query per batch and requests of up to protocol.MAX_INSTANCES orders, as realtime.RiskScorer scores a backlog)."""
    import sqlite3 as sql

    from storeflow.components.config import load_settings
    from storeflow.components.risk.features import ORDER_FEATURES
    from storeflow.components.risk.live import LiveHistory
    from storeflow.components.risk.protocol import MAX_INSTANCES

    os.environ["STOREFLOW_CONFIG"] = str(config)
    settings = load_settings()
    db = sql.connect(":memory:", check_same_thread=False)
    history = LiveHistory.from_settings(settings, db)
    url = f"http://127.0.0.1:{model_port}/v1/models/{settings.risk.inference_service}:predict"
    features_s, score_s = [], []
    with httpx.Client(timeout=10) as http:
        for i in range(samples):
            payload = order(10_000_000 + i, now, body)
            t0 = time.perf_counter()
            row = history.features(payload)
            t1 = time.perf_counter()
            answer = http.post(url, json={"instances": [{"order_id": str(payload["id"]),
                                                         **{c: row[c] for c in ORDER_FEATURES}}]})
            t2 = time.perf_counter()
            answer.raise_for_status()
            features_s.append(t1 - t0)
            score_s.append(t2 - t1)
    by_batch, score_by_batch = {}, {}
    with httpx.Client(timeout=60) as http:
        for size, start in ((100, 11_000_000), (1_000, 12_000_000)):
            batch = [order(start + i, now, body) for i in range(size)]
            history.features_many(batch[:5])
            t0 = time.perf_counter()
            rows = history.features_many(batch)  # what the risk thread does per batch of journaled orders
            t1 = time.perf_counter()
            instances = [{"order_id": str(p["id"]), **{c: r[c] for c in ORDER_FEATURES}} for p, r in zip(batch, rows)]
            for at in range(0, size, MAX_INSTANCES):  # requests of up to MAX_INSTANCES, as the risk thread sends
                http.post(url, json={"instances": instances[at:at + MAX_INSTANCES]}).raise_for_status()
            t2 = time.perf_counter()
            by_batch[str(size)] = round((t1 - t0) * 1000 / size, 3)
            score_by_batch[str(size)] = round((t2 - t1) * 1000 / size, 3)
    f, sc = np.array(features_s), np.array(score_s)
    return {"samples": samples, "live_features_batch_of_100_ms_per_order": by_batch["100"],
            "live_features_ms_per_order_by_batch": {"1": pct(f, 50), **by_batch},
            "score_http_ms_per_order_by_batch": {"1": pct(sc, 50), **score_by_batch},
            "live_features_ms": {"p50": pct(f, 50), "p99": pct(f, 99)},
            "score_http_ms": {"p50": pct(sc, 50), "p99": pct(sc, 99)},
            "orders_per_second_one_thread": round(samples / (f.sum() + sc.sum()), 1)}


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used: user + system, every thread) of a live process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_part(parts: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process and all its descendants (the receiver's scorer process, the
    risk server's workers), a descendant counted under the nearest named ancestor."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
    named = {pid: name for name, pid in parts.items()}
    out = dict.fromkeys(parts, 0.0)
    for pid, (parent, cpu) in stats.items():
        at = pid
        while at not in named and at in stats and at > 1:
            at = stats[at][0]
        if at in named:
            out[named[at]] += cpu
    return out


SCORER = "scorer process (journal read, live features, score call, outbox)"
WRITER = "write-back process (outbox to the Admin API)"
APPLIER = "applier process (every delivery to the customers' features in Feast; --applier)"


def scorer_parts(receiver: int) -> dict[str, int]:
    """The receiver's child processes by what they are: its scorer (risk.scorer: process; it holds the journal
    and the outbox), the write-back (the outbox alone), the applier (the journal alone; --applier) and
    multiprocessing's resource tracker."""
    out = {}
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        if (stat := _stat(pid)) is not None and stat[0] == receiver:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"resource_tracker" in command:
                out["receiver's resource tracker"] = pid
            else:
                journal, outbox = _holding(pid, "webhooks.db"), _holding(pid, "risk.db")
                out[SCORER if journal and outbox else APPLIER if journal else WRITER] = pid
    return out


def _holding(pid: int, name: str) -> bool:
    """Whether process ``pid`` has a file called ``name`` open."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").endswith(f"/{name}") for fd in os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, PermissionError):
        return False


class PodMemory(threading.Thread):
    """The webhooks pod's memory as its limit sees it: every 100 ms, each process's heap (``RssAnon``) in the
    receiver's tree (the receiver, its applier, scorer and write-back), and the peak of their sum. From the
    receiver's start: a scorer seeding a large snapshot and an applier indexing it peak before the first delivery."""

    def __init__(self, receiver: int):
        super().__init__(daemon=True)
        self.receiver, self.done = receiver, threading.Event()
        self.peaks: dict[int, float] = {}
        self.sum_peak = 0.0

    def run(self) -> None:
        tick, tree = 0, []
        while not self.done.wait(0.1):
            # the receiver's children looked up every 2 s, not every sample: a look reads every process's stat, and
            # this process's CPU is the bench row's
            if tick % 20 == 0:
                tree = [self.receiver, *scorer_parts(self.receiver).values()]
            tick += 1
            total = 0.0
            for pid in tree:
                try:
                    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                                if x.startswith("RssAnon:"))
                except (OSError, StopIteration):
                    continue
                mb = int(line.split()[1]) / 1024
                self.peaks[pid] = max(mb, self.peaks.get(pid, 0.0))
                total += mb
            self.sum_peak = max(self.sum_peak, total)

    def report(self, names: dict[str, int]) -> dict:
        self.done.set()
        self.join()
        by_pid = {pid: name for name, pid in names.items()}
        return {"sum_of_heaps_peak_mb": round(self.sum_peak),
                "each_process_peak_mb": {by_pid.get(pid, f"pid {pid} (exited or restarted)"): round(mb)
                                         for pid, mb in sorted(self.peaks.items())},
                "note": "RssAnon (heap: what the pod's limit cannot take back), sampled every 100 ms from the "
                        "receiver's start, the scorer's seeding and the applier's indexing included; the "
                        "webhooks pod's limit is 2 GiB (2,048 MB)"}


def pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if len(values) else None


def run_path(kind: str, bucket: str | None, root: Path, base: dict, admin: Admin, signed: Path, script: Path,
             now: str, args: argparse.Namespace, scorer: str = "process", redis_pid: int | None = None,
             rate: float | None = None) -> dict:
    """One row: the risk server of ``kind`` (storeflow or stock_kserve) and a receiver scoring through it
    (``risk.scorer``: ``scorer``), wrk's deliveries in, every assessment drained to the Admin API (Shopify's cost
    bucket of plan ``bucket``, or none). Before wrk starts, one delivery is sent and waited for until Shopify has
    its assessment: the scorer is up (a process of its own starts a few seconds after the receiver)."""
    admin.reset(bucket)
    seconds = args.bucket_seconds if bucket else args.seconds
    model_port, receiver_port = free_port(), free_port()
    config = root / "storeflow.yaml"
    config.write_text(yaml.safe_dump({**base, "serving": {"shopify_client_id": "bench-app"},
                                      "risk": {"endpoint": f"http://127.0.0.1:{model_port}", "port": model_port,
                                               "retry_seconds": 0.2, "scorer": scorer},
                                      "shopify": {"admin_origin": f"http://127.0.0.1:{admin.server_address[1]}"}}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STOREFLOW_")}, "STOREFLOW_CONFIG": str(config),
           "SHOPIFY_API_SECRET": SECRET, "SHOPIFY_ACCESS_TOKEN": "shpat_bench"}
    procs = []
    load_before = os.getloadavg()
    try:
        model_log, receiver_log = root / "model.log", root / "receiver.log"
        cli = Path(sys.executable).with_name("storeflow")
        if kind == "storeflow":
            model = subprocess.Popen([str(cli), "serve-risk"], env=env, cwd=root, stdout=model_log.open("wb"),
                                     stderr=subprocess.STDOUT)
            receiver_cmd = [sys.executable, "-c", RECEIVER_SERVE if args.applier else RECEIVER, str(receiver_port)]
        else:
            from stock_kserve_risk import export

            from storeflow.components.risk.protocol import LEVELS_METADATA
            from storeflow.serving.predictor import read_mlmodel
            from storeflow.serving.risk import resolve

            settings = _settings_of(config)
            version, model_dir = resolve(settings)  # the champion, downloaded as serve-risk does
            cuts = read_mlmodel(model_dir)["metadata"][LEVELS_METADATA]
            columns = export(model_dir, root / "stock-model")
            model = subprocess.Popen([sys.executable, str(Path(__file__).with_name("stock_kserve_risk.py")),
                                      "--model_dir", str(root / "stock-model"), "--model_name",
                                      settings.risk.inference_service, "--http_port", str(model_port)],
                                     env=env, cwd=root, stdout=model_log.open("wb"), stderr=subprocess.STDOUT)
            receiver_cmd = [sys.executable, "-c", RECEIVER_STOCK, str(receiver_port), json.dumps(columns),
                            str(cuts["high"]), str(cuts["medium"]), str(version), str(Path(__file__).parent),
                            *(["applier"] if args.applier else [])]
        procs.append(model)
        wait_ready(f"http://127.0.0.1:{model_port}/v2/models/storeflow-order-risk/ready", model, model_log)
        receiver = subprocess.Popen(receiver_cmd, env=env, cwd=root, stdout=receiver_log.open("wb"),
                                    stderr=subprocess.STDOUT)
        procs.append(receiver)
        memory = PodMemory(receiver.pid)
        memory.start()
        wait_ready(f"http://127.0.0.1:{receiver_port}/livez", receiver, receiver_log)
        started_at = time.perf_counter()
        warm_up(f"http://127.0.0.1:{receiver_port}", args.deliveries, now, root, receiver, receiver_log, args.body,
                seconds=1800 if args.snapshot_customers else 180)
        first_written_back_seconds = round(time.perf_counter() - started_at, 1)
        admin.reset(bucket)  # the warm-up's call not counted
        load_start = os.getloadavg()
        started = time.time()
        parts = {"receiver (uvicorn, journal)": receiver.pid, "risk server": model.pid,
                 "redis-server (velocity, history)": redis_pid or -1,
                 "bench process (loopback Admin API, drain poll)": os.getpid(), **scorer_parts(receiver.pid)}
        cpu_start = cpu_by_part(parts)
        sent_file = root / "sent.tsv"  # each delivery's id and when wrk sent it (the Lua script's done())
        sent_file.unlink(missing_ok=True)
        with tempfile.TemporaryFile("w+") as wrk_out:
            wrk = subprocess.Popen(["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{seconds}s",
                                    "--latency", "-s", str(script), f"http://127.0.0.1:{receiver_port}", "--",
                                    str(signed), str(args.threads), str(args.threads * 1000 / rate if rate else 0),
                                    str(sent_file)],
                                   stdout=wrk_out, text=True)
            wrk_usage = os.wait4(wrk.pid, 0)[2]
            wrk.returncode = 0
            wrk_out.seek(0)
            sent = wrk_summary(wrk_out.read())
        load_during = os.getloadavg()

        journal = root / "state" / "shopify" / "webhooks.db"
        outbox = root / "state" / "shopify" / "risk.db"

        def count(path: Path, sql: str) -> int:
            with sqlite3.connect(path) as db:
                return db.execute(sql).fetchone()[0]

        deadline = time.monotonic() + args.drain
        while time.monotonic() < deadline:  # journaled counted again each time: a request wrk gave up on may land late
            journaled = count(journal, "SELECT count(*) FROM events WHERE topic = 'orders/create'")
            if count(outbox, "SELECT count(*) FROM risk_outbox WHERE state = 'sent'") >= journaled:
                break
            time.sleep(1)
        drained = time.time()
        cpu = {part: used - cpu_start[part] for part, used in cpu_by_part(parts).items()}
        cpu["wrk"] = wrk_usage.ru_utime + wrk_usage.ru_stime
        pod_memory = memory.report(parts)
        # once drained, while the risk server is still up (storeflow's: the stock server does not take named features)
        per_order = breakdown(config, model_port, now, args.body) if kind == "storeflow" else None
        with sqlite3.connect(journal) as db:
            # wrk's deliveries only: the warm-up order (number args.deliveries) came before wrk and its wait for the
            # scorer to start would stretch every rate's time span
            received = {str(FIRST_ORDER + number): datetime.fromisoformat(at).timestamp()
                        for hook, at in db.execute("SELECT webhook_id, received_at FROM events "
                                                   "WHERE topic = 'orders/create'")
                        if (number := int(hook.rsplit("-", 1)[-1])) < args.deliveries}
        with sqlite3.connect(outbox) as db:
            queued = {o.rsplit("/", 1)[-1]: (e, s, st) for o, e, s, st in db.execute(
                "SELECT order_id, enqueued_at, sent_at, state FROM risk_outbox")}
        if not sent_file.exists():
            raise RuntimeError(f"wrk wrote no send times ({sent_file}): its Lua done() failed; see its output")
        wrk_sent: dict[str, float] = {}  # order id -> when wrk first sent its delivery (s since the epoch)
        for line in sent_file.read_text().splitlines():
            hook, _, micros = line.partition("\t")
            if "-followup" in hook:  # an order's later delivery: its end to end starts at its create
                continue
            wrk_sent.setdefault(str(FIRST_ORDER + int(hook.rsplit("-", 1)[-1])), int(micros) / 1e6)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    scored = np.array([(received[o], queued[o][0]) for o in received if o in queued], dtype=float).reshape(-1, 2)
    # each written-back order: wrk sent it, the receiver journaled it, the scorer queued it, Shopify answered it
    done = [(wrk_sent[o], received[o], *queued[o][:2]) for o in received if o in queued and queued[o][2] == "sent"]
    times = np.array(done, dtype=float) if done else np.zeros((0, 4))
    to_journal, to_queue, to_sent = times[:, 1] - times[:, 0], times[:, 2] - times[:, 1], times[:, 3] - times[:, 2]
    end_to_end, journaled_to_sent = times[:, 3] - times[:, 0], times[:, 3] - times[:, 1]
    span = (times[:, 3].max() - times[:, 1].min()) if len(times) else None
    return {
        "path": kind,
        "scorer": {"process": "risk.scorer: process (the default): scoring and write-back in a process each, "
                              "the receiver starts and restarts them, as under storeflow webhooks",
                   "thread": "risk.scorer: thread: threads of the receiver's process"}[scorer],
        "shopify_bucket": (f"{bucket}: Shopify's leaky bucket at that plan's restore rate, {RESTORE_RATES[bucket]:,.0f} "
                           f"points/s (at most {RESTORE_RATES[bucket] / 10:,.0f} assessments/s), size 2,000 as in the "
                           f"recorded answer" if bucket else
                           "off: every answer reports a full bucket (Shopify's per-shop limit taken away)"),
        "risk_server": {"storeflow": "storeflow serve-risk (KServe ModelServer, storeflow's RiskPredictor: named "
                                     "features, level and facts, prediction log, metrics)",
                        "stock_kserve": "KServe ModelServer with a plain predict_proba Model on model.joblib "
                                        "(bench/stock_kserve_risk.py); level and facts made in the receiver"}[kind],
        "offered": (f"paced: {rate:,.0f} deliveries a second on a timetable (each wrk thread's next one due every "
                    f"{args.threads * 1000 / rate:.3g} ms, on whichever of its connections is free: "
                    f"{args.connections} in all)" if rate else
                    "closed loop: each connection sends its next delivery as soon as the last is acknowledged"),
        "wrk": {"threads": args.threads, "connections": args.connections, "seconds": seconds, **sent},
        "journaled_orders": len(received),  # wrk's (the warm-up order not counted)
        "assessments_sent": len(done),
        "drained": len(done) == len(received),  # every journaled order's assessment answered before --drain ran out
        "lost": 0 if len(done) == len(received) else None,  # unknown until every journaled order was written back
        "not_written_back_when_drain_ended": len(received) - len(done),
        "admin_requests": admin.calls,
        "admin_mutations_answered": admin.mutations,
        "admin_throttled_answers": admin.throttled_calls,
        "sustained_orders_per_second": round(len(done) / span, 1) if span else None,
        "webhook_ack_orders_per_second": sent.get("requests_per_second"),
        "scored_orders": int(len(scored)),
        "scored_orders_per_second": round(len(scored) / (scored[:, 1].max() - scored[:, 0].min()), 1)
        if len(scored) else None,
        "received_to_queued_ms_all_scored": {"p50": pct(scored[:, 1] - scored[:, 0], 50),
                                             "p99": pct(scored[:, 1] - scored[:, 0], 99)},
        "drain_seconds_after_wrk": round(drained - started - seconds, 1),
        # from wrk's sending the delivery to the Admin API's answer to its assessment (the issue's "webhook in ->
        # mutation out"); runs before 1dba2c6 started at the journal's commit (journaled_to_mutation_answered_ms)
        "end_to_end_ms": {"p50": pct(end_to_end, 50), "p90": pct(end_to_end, 90), "p99": pct(end_to_end, 99)},
        "journaled_to_mutation_answered_ms": {"p50": pct(journaled_to_sent, 50), "p90": pct(journaled_to_sent, 90),
                                              "p99": pct(journaled_to_sent, 99)},
        "where_time_goes_ms": {
            "sent_to_journaled (HTTP, signature, payload check, journal commit)": {"p50": pct(to_journal, 50),
                                                                                   "p99": pct(to_journal, 99)},
            "journaled_to_queued (journal read, live features, score)": {"p50": pct(to_queue, 50),
                                                                         "p99": pct(to_queue, 99)},
            "queued_to_mutation_answered": {"p50": pct(to_sent, 50), "p99": pct(to_sent, 99)}},
        "per_order_on_the_risk_thread": per_order,
        "cpu_ms_per_journaled_order": {  # from wrk's start until every order was written back (or --drain ran out)
            **{part: round(used * 1000 / max(len(received), 1), 3) for part, used in cpu.items()},
            "all": round(sum(cpu.values()) * 1000 / max(len(received), 1), 3),
            "machine_budget_at_3000_per_second": round(os.cpu_count() * 1000 / 3000, 3)},
        "target": {"orders_per_second": 3000, "p99_end_to_end_ms": 50, "lost": 0},
        "pod_memory": pod_memory,
        "receiver_ready_to_first_order_written_back_seconds": first_written_back_seconds,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_at_wrk_start": [round(x, 2) for x in load_start],
        "load_average_after_wrk": [round(x, 2) for x in load_during],
    }


def _settings_of(config: Path):
    from storeflow.components.config import load_settings

    os.environ["STOREFLOW_CONFIG"] = str(config)
    return load_settings()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--orders", type=int, default=50_000)
    parser.add_argument("--fraud-rate", type=float, default=0.003)
    parser.add_argument("--deliveries", type=int, default=100_000, help="distinct pre-signed deliveries (more than "
                        "a row sends: past the end wrk repeats the last, a duplicate)")
    parser.add_argument("--applier", action="store_true", help="the receivers run their applier process as "
                        "`storeflow webhooks` does (each delivery applied to the customers' features in Feast; not on "
                        "the path to the assessment, but on the same cores); else none")
    parser.add_argument("--follow-ups", type=int, default=0, choices=range(len(FOLLOW_UP_TOPICS) + 1),
                        help="deliveries of each order after its create (orders/paid, orders/updated, refunds/create, "
                        "orders/cancelled: the first K of them), interleaved with later orders' creates as a store's "
                        "webhooks come; 0: creates only (runs before 2026-12-06 21:00 UTC)")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--bucket-seconds", type=int, default=5, help="wrk's run in a row with Shopify's bucket "
                        "(@plan): at 200 assessments/s a 20 s row's orders would outlast --drain")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (the machine has 2 cores)")
    parser.add_argument("--drain", type=float, default=300)
    parser.add_argument("--paths", default="storeflow,stock_kserve,storeflow+thread,stock_kserve+thread,"
                                           "storeflow@enterprise,storeflow:1000,storeflow:1500,storeflow:2000,storeflow:3000,"
                                           "stock_kserve:3000",
                        help="rows to run, in this order: the risk server (storeflow or stock_kserve), +thread for "
                             "risk.scorer: thread (else process, the default), after @ the "
                             f"Shopify plan whose cost bucket the loopback Admin API keeps ({', '.join(RESTORE_RATES)}; "
                             "none: no bucket), and after : deliveries a second offered (paced; none: closed loop, "
                             "as fast as they are acknowledged)")
    parser.add_argument("--body", choices=BODIES, default="subscribed", help="each delivery's orders/create: "
                        "subscribed (Shopify's whole payload cut to the include_fields of storeflow's subscription, "
                        "~1.4 KB, as Shopify sends it to an app subscribed as `storeflow webhook-subscriptions` "
                        "prints; runs before 2026-12-07 12:30 UTC sent full), full (the whole payload, ~9.5 KB: "
                        "tests/data/shopify_webhooks/orders_create.json, a subscription without include_fields) or "
                        "trimmed (a hand-made order of the fields storeflow reads, ~0.7 KB: runs before 2026-12-06)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (trained state, journals, "
                        "logs; ~450 MB) under the temporary directory; else it is removed at the end")
    parser.add_argument("--snapshot-customers", type=int, default=0, help="after training, a store of this many "
                        "customers (ten orders each, with their risk fields, the deliveries' 5,000 customers among "
                        "them) as the newest snapshot, which the scorer seeds and the applier indexes before the "
                        "first delivery: 500,000 is 5M orders. 0: the trained store only (runs before 2026-12-07)")
    parser.add_argument("--online-store", choices=("redis", "sqlite"), default="redis",
                        help="Feast's online store for velocity and history: redis (production's; a redis-server on loopback, one "
                             "database per row) or sqlite (the local default)")
    args = parser.parse_args()

    load_before, gauge = os.getloadavg(), machine_gauge_ms()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    root = Path(tempfile.mkdtemp(prefix="storeflow-bench-risk-"))
    store = {"customers": args.customers, "orders": args.orders, "products": 200, "seed": 16,
             "fraud_rate": args.fraud_rate}
    base = {"project": {"state_dir": str(root / "state"), "shop_domain": SHOP},
            "ingest": {"source": "synthetic", "synthetic": store}}
    trained = train(root, base)
    if args.snapshot_customers:  # bench/webhooks.py's store; customer ids from the deliveries' first (order())
        from webhooks import write_store_snapshot

        trained["snapshot_seconds"] = write_store_snapshot(root / "state", args.snapshot_customers,
                                                           first_customer=FIRST_CUSTOMER, risk_fields=True)
    admin = Admin()
    threading.Thread(target=admin.serve_forever, daemon=True).start()
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    signed = root / "deliveries.tsv"
    sizes: list[int] = []
    with signed.open("w") as out:
        for kind, i, k in stream(args.deliveries, args.follow_ups):
            topic, payload = ("orders/create", order(i, now, args.body)) if kind == "create" else \
                follow_up(i, k, now, args.body)
            hook = f"bench-risk-{i:07d}" if kind == "create" else f"bench-risk-followup{k}-{i:07d}"
            body = json.dumps(payload, separators=(",", ":")).encode()
            sizes.append(len(body))
            headers = webhook_headers(topic, hook, body, secret=SECRET, shop=SHOP)
            out.write(f"{hook}\t{headers['X-Shopify-Hmac-Sha256']}\t{topic}\t{body.decode()}\n")
    script = root / "deliveries.lua"
    script.write_text(LUA.replace("%s", SHOP))
    rows = []
    redis = None
    try:
        if args.online_store == "redis":
            redis_port = free_port()
            redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(root)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for number, row in enumerate(args.paths.split(",")):
            row, _, rate = row.partition(":")
            kind, _, bucket = row.partition("@")
            kind, _, where = kind.partition("+")
            here = root / f"{number}-{row.replace('@', '-').replace('+', '-')}"  # a copy of the trained state each: journal, outbox, online store empty
            shutil.copytree(root / "state", here / "state")
            config = {**base, "project": {**base["project"], "state_dir": str(here / "state")}}
            if redis is not None:
                config["features"] = {"feast": {"online_store": "redis",
                                                "redis_connection_string": f"127.0.0.1:{redis_port},db={number}"}}
            rows.append(run_path(kind, bucket or None, here, config, admin, signed, script, now, args,
                                 scorer=where or "process", redis_pid=redis.pid if redis is not None else None,
                                 rate=float(rate) if rate else None))
            print(json.dumps(rows[-1], indent=2), flush=True)
    finally:
        admin.shutdown()
        if redis is not None:
            redis.terminate()
            redis.wait(10)
        if args.keep:
            print(f"kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "components/*.py", "serving/*.py", "bench/*.py"],
                                cwd=ROOT, capture_output=True, text=True).stdout.strip())  # code, not results or docs
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "gauge_ms": gauge, "gauge": "bench/common.machine_gauge_ms: one fixed pure-Python loop "
                                                      "before the rows, lower is faster"},
              "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z"),
              "commit": commit, "uncommitted_changes_in_measured_code": dirty,
              "store": {"customers": args.customers, "orders": args.orders, "fraud_rate": args.fraud_rate, **trained},
              "newest_snapshot": ({"customers": args.snapshot_customers, "orders": args.snapshot_customers * 10,
                                   "risk_fields": True, "note": "written after training (bench/webhooks.py's "
                                   "store): the scorer seeds its ledgers and the applier indexes it"}
                                  if args.snapshot_customers else "the trained store's"),
              "delivery_body": {"kind": args.body, "bytes_median": int(np.median(sizes)) if sizes else None},
              "applier": ("run: the receiver as storeflow webhooks runs it, applier process and all" if args.applier
                          else "not run (the receiver journals; nothing applies deliveries to the customers' features)"),
              "follow_ups": {"per_order": args.follow_ups, "topics": ", then ".join(FOLLOW_UP_TOPICS[:args.follow_ups]),
                             "deliveries_per_order": 1 + args.follow_ups,
                             "note": "each paced rate is deliveries a second: orders a second are that / "
                                     f"{1 + args.follow_ups}; journaled, written back, end to end and CPU count "
                                     "orders (creates)"},
              "online_store": {"redis": "redis (a redis-server on loopback, as production's)",
                               "sqlite": "sqlite (Feast's local online store)"}[args.online_store],
              "load_average_before": [round(x, 2) for x in load_before],
              "rows": rows}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
