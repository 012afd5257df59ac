"""Bulk export client against recorded Admin API responses (tests/data/shopify_api) served by a local
HTTP server on 127.0.0.1. There is no network here: nothing ever talks to Shopify."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from storeflow.components.config import load_settings
from storeflow.components.ingest import ingest
from storeflow.components.shopify import layout
from storeflow.components.shopify.admin import AdminClient, ShopifyError, credentials
from storeflow.components.shopify.sync import pull, read_watermark
from storeflow.components.tables import read_tables

RECORDED = Path(__file__).parent / "data" / "shopify_api"
TOKEN = "shpat_0123456789abcdef0123456789abcdef"
SIGNED_PREFIX = "https://storage.googleapis.com/shopify-tiers-assets-prod-us-east1/bulk-operation-outputs/q7o1x3pv8kz2-final"
NAMES = {"Orders": "orders", "Customers": "customers", "Products": "products"}


class FakeShopify(ThreadingHTTPServer):
    """Answers Admin GraphQL calls with recorded responses and serves bulk results (HTTP Range too)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server_address[1]}"
        self.calls: list[dict] = []  # {"path", "headers", "body"}
        self.downloads: list[dict] = []
        self.throttle_next = 0
        self.deny_next = False
        self.running_polls = 1
        self.results = {name: RECORDED / f"{name}.jsonl" for name in NAMES.values()}
        self.cut_next_download_after: int | None = None
        self._polls: dict[str, int] = {}
        self._ids = {json.loads((RECORDED / f"run_{n}.json").read_text())["data"]["bulkOperationRunQuery"]
                     ["bulkOperation"]["id"]: n for n in NAMES.values()}

    def graphql(self, body: dict) -> dict:
        if self.throttle_next:
            self.throttle_next -= 1
            return json.loads((RECORDED / "throttled.json").read_text())
        if self.deny_next:
            return json.loads((RECORDED / "access_denied.json").read_text())
        if "bulkOperationRunQuery" in body["query"]:
            name = NAMES[body["variables"]["query"].split()[1]]
            return json.loads((RECORDED / f"run_{name}.json").read_text())
        name = self._ids[body["variables"]["id"]]
        self._polls[name] = self._polls.get(name, 0) + 1
        state = "running" if self._polls[name] <= self.running_polls else "completed"
        text = (RECORDED / f"{state}_{name}.json").read_text()
        return json.loads(text.replace(SIGNED_PREFIX, f"{self.origin}/bulk-operation-outputs/{name}"))

    def submitted(self) -> list[str]:
        return [c["body"]["variables"]["query"] for c in self.calls if "bulkOperationRunQuery" in c["body"]["query"]]


class Handler(BaseHTTPRequestHandler):
    server: FakeShopify

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
        self._send(200, json.dumps(self.server.graphql(body)).encode(), "application/json")

    def do_GET(self):
        name = self.path.split("?")[0].rsplit("/", 1)[-1]
        data = self.server.results[name].read_bytes()
        start = 0
        self.server.downloads.append({"name": name, "range": self.headers.get("Range")})
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        payload = data[start:]
        self.send_header("Content-Type", "application/jsonl")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        cut = self.server.cut_next_download_after
        if cut is not None:
            self.server.cut_next_download_after = None
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def _send(self, status: int, body: bytes, content_type: str):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def shopify():
    server = FakeShopify()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def live(settings, shopify, monkeypatch):
    monkeypatch.setenv("SHOPIFY_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("SHOPIFY_SHOP_DOMAIN", "kettle-and-leaf.myshopify.com")
    return load_settings({**json.loads(settings.to_json()), "shopify": {"admin_origin": shopify.origin},
                          "ingest": {"source": "shopify"}})


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_first_pull_exports_every_query_and_ingest_snapshots_it(live, shopify):
    result = ingest(live)
    tables = read_tables(result.snapshot)

    assert result.source == "shopify"
    assert sorted(tables["orders"]["name"]) == ["#1001", "#1002", "#1003"]
    assert len(tables["line_items"]) == 4 and len(tables["customers"]) == 2 and len(tables["products"]) == 2
    risk = dict(zip(tables["orders"]["name"], tables["orders"]["risk_level"]))
    assert risk["#1002"] == "HIGH"  # the highest of risk.assessments, not the deprecated riskLevel
    # Pinned API version, the token as Shopify's header, bulkOperation(id:) polling (not currentBulkOperation).
    assert {c["path"] for c in shopify.calls} == {"/admin/api/2026-01/graphql.json"}
    assert all(c["headers"]["X-Shopify-Access-Token"] == TOKEN for c in shopify.calls)
    polls = [c["body"]["query"] for c in shopify.calls if "bulkOperationRunQuery" not in c["body"]["query"]]
    assert polls and all("bulkOperation(id: $id)" in q and "currentBulkOperation" not in q for q in polls)
    assert all("updated_at" not in q for q in shopify.submitted())  # the first pull is complete
    assert read_watermark(live).isoformat() == "2026-05-04T09:12:41+00:00"  # when Shopify started the export
    assert not layout.pending_dir(live).exists()


def test_next_pull_asks_only_for_changes_and_replaces_edited_orders(live, shopify):
    pull(live, sleep=Sleeps())
    shopify.results["orders"] = RECORDED / "orders_incremental.jsonl"
    shopify.results["customers"] = shopify.results["products"] = RECORDED / "empty.jsonl"
    shopify.calls.clear()

    result = pull(live, sleep=Sleeps())

    # watermark 09:12:41 minus the 300 s overlap
    assert all("(query: \"updated_at:>='2026-05-04T09:07:41Z'\")" in q for q in shopify.submitted())
    assert result.records == 4
    tables = read_tables(ingest(live).snapshot)
    orders = tables["orders"].set_index("name")
    assert sorted(orders.index) == ["#1001", "#1002", "#1003", "#1004"]  # #1003 once, in its new version
    assert orders.loc["#1003", "total_price"] == 49.9 and orders.loc["#1003", "risk_level"] == "MEDIUM"
    items = tables["line_items"][tables["line_items"]["order_id"] == 5931520442539]
    assert items["quantity"].tolist() == [2]  # the edited order's line items replaced, not duplicated
    assert len(tables["customers"]) == 2


def test_throttled_call_waits_for_the_bucket_to_refill_then_succeeds(live, shopify):
    shopify.throttle_next = 1
    sleeps = Sleeps()
    client = AdminClient(live, credentials(live), sleep=sleeps)
    data = client.execute("query { shop { name } } # bulkOperationRunQuery", {"query": "query Orders { orders { edges { node { id } } } }"})
    client.close()

    assert data["bulkOperationRunQuery"]["bulkOperation"]["status"] == "CREATED"
    assert len(shopify.calls) == 2
    assert sleeps[0] == pytest.approx((752 - 12) / 100.0)  # requestedQueryCost - currentlyAvailable over restoreRate


def test_throttling_that_never_ends_fails_with_a_clear_error(live, shopify):
    shopify.throttle_next = 100
    settings = load_settings({**json.loads(live.to_json()), "shopify": {"admin_origin": shopify.origin, "max_retries": 3}})
    client = AdminClient(settings, credentials(settings), sleep=Sleeps())
    with pytest.raises(ShopifyError, match="after 3 retries: THROTTLED"):
        client.execute("query { shop { name } }")
    assert len(shopify.calls) == 4


def test_missing_scope_is_reported_without_retrying(live, shopify):
    shopify.deny_next = True
    with pytest.raises(ShopifyError, match="ACCESS_DENIED|read_orders"):
        pull(live, sleep=Sleeps())
    assert len(shopify.calls) == 1


def test_interrupted_pull_resumes_the_same_operations_and_the_partial_download(live, shopify):
    class Interrupt(Exception):
        pass

    def stop_while_polling(seconds: float) -> None:
        raise Interrupt

    with pytest.raises(Interrupt):
        pull(live, sleep=stop_while_polling)
    assert len(shopify.submitted()) == 3  # all accepted, ids saved before polling

    shopify.cut_next_download_after = 300  # the connection drops 300 bytes into the orders file
    with pytest.raises(Exception):
        pull(live, sleep=Sleeps())
    part = layout.pending_dir(live) / "Orders.jsonl.part"
    assert part.stat().st_size == 300

    result = pull(live, sleep=Sleeps())

    assert len(shopify.submitted()) == 3  # nothing was submitted again
    assert shopify.downloads[-3]["range"] == "bytes=300-"
    expected = b"".join((RECORDED / f"{n}.jsonl").read_bytes() for n in ("orders", "customers", "products"))
    assert sorted(result.store.read_bytes().splitlines()) == sorted(expected.splitlines())


def test_token_comes_from_the_environment_and_never_reaches_config_or_logs(live, shopify, caplog, capfd, monkeypatch):
    caplog.set_level(logging.DEBUG)
    ingest(live)
    shopify.deny_next = True
    with pytest.raises(ShopifyError) as failure:
        pull(live, sleep=Sleeps())
    out, err = capfd.readouterr()
    assert TOKEN not in caplog.text + out + err + str(failure.value)
    assert TOKEN not in live.to_json() and TOKEN not in repr(credentials(live))
    assert not [p for p in live.project.state_dir.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    monkeypatch.delenv("SHOPIFY_ACCESS_TOKEN")
    with pytest.raises(ShopifyError, match=r"\$SHOPIFY_ACCESS_TOKEN .* Secret 'storeflow-shopify'"):
        credentials(live)


def test_compiled_pipeline_gives_the_token_to_ingest_only_as_a_secret_env():
    compiled = yaml.safe_load_all((Path(__file__).parents[1] / "manifests" / "pipelines" / "training.yaml").read_text())
    docs = list(compiled)
    executors = next(d for d in docs if "platforms" in d)["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    shopify = {name: [s for s in spec.get("secretAsEnv", []) if s["secretName"] == "storeflow-shopify"]
               for name, spec in executors.items()}
    assert [name for name, found in shopify.items() if found] == ["exec-ingest"]  # other tasks: MLflow/Feast only
    [secret] = shopify["exec-ingest"]
    assert {e["envVar"]: e["secretKey"] for e in secret["keyToEnv"]} == {
        "SHOPIFY_ACCESS_TOKEN": "access-token", "SHOPIFY_SHOP_DOMAIN": "shop-domain"}
    spec = docs[0]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not [name for name in params if "token" in name or "secret" in name]  # no token parameter
    assert "access-token" not in json.dumps(spec) and "shpat_" not in json.dumps(docs)


def test_a_download_cut_short_then_expired_starts_the_new_result_from_its_first_byte(live, shopify, tmp_path):
    """A pull cut short mid-download and run again more than 7 days later: Shopify says the operation EXPIRED, the
    next pull resubmits it, and the new result was appended to the old one's partial file from its byte offset
    (HTTP Range), a JSONL of the old result's first bytes and the new one's rest: a line torn across both, or another
    export's records in place of the new one's first. Found by testing from outside."""
    shopify.cut_next_download_after = 300  # the connection drops 300 bytes into the orders file
    with pytest.raises(Exception):
        pull(live, sleep=Sleeps())
    pending = layout.pending_dir(live)
    assert (pending / "Orders.jsonl.part").stat().st_size == 300
    operations = json.loads((pending / "_operations.json").read_text())
    operations["Orders"]["status"] = "EXPIRED"  # what the next poll, a week later, says of it
    (pending / "_operations.json").write_text(json.dumps(operations))
    newer = tmp_path / "orders-a-week-later.jsonl"  # the store changed meanwhile: the new result is another file
    newer.write_bytes(b"".join((RECORDED / "orders.jsonl").read_bytes().splitlines(keepends=True)[2:]))
    shopify.results["orders"] = newer

    result = pull(live, sleep=Sleeps())

    assert len(shopify.submitted()) == 4  # the expired operation submitted again
    expected = newer.read_bytes() + b"".join((RECORDED / f"{n}.jsonl").read_bytes() for n in ("customers", "products"))
    assert sorted(result.store.read_bytes().splitlines()) == sorted(expected.splitlines())


def test_a_result_cut_short_is_named_removed_and_downloaded_anew_and_the_store_is_kept(live, shopify, tmp_path):
    """A result whose end was lost without an error (a proxy that drops Content-Length closes the body early) made
    the merge die with orjson's JSONDecodeError traceback, and every later pull too: the file counted as
    downloaded. Found by testing from outside."""
    first = pull(live, sleep=Sleeps())
    kept = first.store.read_bytes()
    good = RECORDED / "orders_incremental.jsonl"
    cut = tmp_path / "orders-cut.jsonl"
    cut.write_bytes(good.read_bytes()[:-40])
    shopify.results["orders"] = cut
    with pytest.raises(ShopifyError, match=r"Orders\.jsonl line \d+ is not a record of the bulk export .*run again"):
        pull(live, sleep=Sleeps())
    assert first.store.read_bytes() == kept and read_watermark(live) == first.watermark  # nothing lost

    shopify.results["orders"] = good
    again = pull(live, sleep=Sleeps())

    assert again.records == len(good.read_bytes().splitlines()) + sum(
        len((RECORDED / f"{n}.jsonl").read_bytes().splitlines()) for n in ("customers", "products"))
    assert set(good.read_bytes().splitlines()) <= set(again.store.read_bytes().splitlines())


@pytest.mark.parametrize("torn", [b"", b'{"since": "2026-03-0'])
def test_a_pending_export_marker_cut_short_starts_the_export_over(live, shopify, torn):
    """The pending export's marker was written in place: a pull killed while writing it left it empty or cut, and
    every later pull died on it with json's JSONDecodeError traceback until the folder was removed by hand. Found by
    testing from outside."""
    pending = layout.pending_dir(live)
    pending.mkdir(parents=True)
    (pending / "_export.json").write_bytes(torn)

    result = pull(live, sleep=Sleeps())

    assert result.since is None and len(shopify.submitted()) == 3  # a first pull: everything exported
    expected = b"".join((RECORDED / f"{n}.jsonl").read_bytes() for n in ("orders", "customers", "products"))
    assert sorted(result.store.read_bytes().splitlines()) == sorted(expected.splitlines())
