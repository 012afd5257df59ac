"""The theme app extension block (extensions/theme-app-extension) in a real browser: Debian's Chromium,
headless, loads a product page that renders the block's Liquid (liquidjs, tests/storefront), runs its
JavaScript, which asks `storeflow serve-recommendations` on 127.0.0.1 through an app proxy that signs each
request as Shopify's does (shop, logged_in_customer_id, path_prefix, timestamp, signature), with Shopify
auth on. The DOM Chromium dumps must show the titles of what the registered model recommends for that
product, minus what the store has sold out (products webhooks' availability in the Feast online store).

Skips only when chromium or node is absent (.ci/run installs chromium and the test tooling's liquidjs)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pandas as pd
import pytest
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from conftest import free_port
from storeflow.components.config import SyntheticStoreConfig, load_settings
from storeflow.components.features.repo import feature_store
from storeflow.components.ingest.bulk_jsonl import read_bulk_jsonl
from storeflow.components.ingest.synthetic import generate_store
from storeflow.components.recommend import ItemItem, availability, evaluate_recommenders, fit_recommender
from storeflow.components.recommend.registry import register_recommender
from storeflow.components.shopify import products

ROOT = Path(__file__).parents[1]
THEME = ROOT / "extensions" / "theme-app-extension"
TOOLING = Path(__file__).parent / "storefront"
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
SECRET = "shpss_storefront0123456789abcdef"
SHOP = "kettle-and-leaf.myshopify.com"
CLIENT_ID = "storefront-client-id"
PROXY_PREFIX = "/apps/storeflow"
NAME = "storeflow-recommendations"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
              pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")]


def handle_of(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def product_payload(row, quantity: int) -> dict:
    """A products/update payload, in the shape of tests/data/shopify_webhooks/products_update.json."""
    template = json.loads((Path(__file__).parent / "data/shopify_webhooks/products_update.json").read_text())
    variant = template["variants"][0] | {"product_id": int(row.product_id), "inventory_item_id": int(row.product_id) + 7,
                                         "inventory_quantity": quantity, "id": int(row.product_id) + 3}
    return template | {"id": int(row.product_id), "title": row.title, "handle": handle_of(row.title),
                       "variants": [variant]}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A registered recommender, availability for its catalog (one top pick sold out), and its server."""
    root = tmp_path_factory.mktemp("storefront")
    overrides = {"project": {"state_dir": str(root / "state"), "shop_domain": SHOP},
                 "recommendations": {"bootstrap_samples": 50}, "serving": {"shopify_client_id": CLIENT_ID}}
    settings = load_settings(overrides)
    tables = read_bulk_jsonl([generate_store(SyntheticStoreConfig(customers=800, orders=8000, products=60),
                                             root / "store.jsonl")])
    cfg = settings.recommendations
    model_dir = fit_recommender(tables, cfg).save(root / "model")
    register_recommender(settings, model_dir, evaluate_recommenders(tables, cfg), tables)
    model = ItemItem.load(model_dir)
    page = int(model.products[5])
    sold_out = model.recommend([page], 4)[1]  # the second-best pick: the block must skip it
    conn = __import__("sqlite3").connect(":memory:")
    products.ensure_schema(conn)
    rows = [products.apply(conn, "products/update", product_payload(row, 0 if row.product_id == sold_out else 5))
            for row in tables["products"].itertuples()]
    availability.write(feature_store(settings), settings, pd.concat(rows))

    config = root / "storeflow.yaml"
    config.write_text(yaml.safe_dump(overrides))
    port = free_port()
    log = (root / "serve.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "storeflow"), "serve-recommendations", "--config",
                             str(config), "--port", str(port), "--alias", "challenger"],  # champion or not: a tiny store
                            env={**os.environ, "SHOPIFY_API_SECRET": SECRET},
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, (root / "serve.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "serve-recommendations did not become ready in 120 s"
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    titles = dict(zip(tables["products"]["product_id"].astype(int), tables["products"]["title"]))
    yield {"url": url, "model": model, "page": page, "sold_out": sold_out, "titles": titles, "settings": settings}
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def signed(params: dict[str, str]) -> dict[str, str]:
    """Shopify's app proxy signature: HMAC-SHA256 (hex) of the sorted key=value pairs, joined without separator."""
    message = "".join(f"{k}={v}" for k, v in sorted(params.items()))
    return {**params, "signature": hmac.new(SECRET.encode(), message.encode(), hashlib.sha256).hexdigest()}


def render_block(context: dict) -> tuple[str, dict]:
    assert (TOOLING / "node_modules" / "liquidjs").is_dir(), "run `npm ci` in tests/storefront (.ci/run does)"
    out = subprocess.run(["node", str(TOOLING / "render_block.mjs"), str(THEME / "blocks" / "recommendations.liquid")],
                         input=json.dumps(context), capture_output=True, text=True, check=True)
    rendered = json.loads(out.stdout)
    return rendered["html"], rendered["schema"]


def storefront(backend: str, titles: dict[int, str], customer: str = "") -> Starlette:
    """The shop's side: product pages with the block in them, the extension's assets as Shopify's CDN serves
    them, and the app proxy, which forwards /apps/storeflow/<path> to the app with Shopify's signed query."""
    by_handle = {handle_of(title): (product_id, title) for product_id, title in titles.items()}

    async def product_page(request: Request) -> Response:
        product_id, title = by_handle[request.path_params["handle"]]
        html, schema = render_block({"product": {"id": product_id, "title": title, "handle": request.path_params["handle"]},
                                     "cart": {"items": []}, "routes": {"root_url": "/"}})
        # Shopify injects the block schema's javascript (deferred) and stylesheet once per page.
        return HTMLResponse(f"<!doctype html><html><head><title>{title}</title>"
                            f'<link rel="stylesheet" href="/cdn/assets/{schema["stylesheet"]}"></head>'
                            f"<body><main><h1>{title}</h1>{html}</main>"
                            f'<script src="/cdn/assets/{schema["javascript"]}" defer></script></body></html>')

    async def asset(request: Request) -> Response:
        return FileResponse(THEME / "assets" / Path(request.path_params["name"]).name)

    async def proxy(request: Request) -> Response:
        params = signed({"shop": SHOP, "logged_in_customer_id": customer, "path_prefix": PROXY_PREFIX,
                         "timestamp": str(int(time.time()))})
        async with httpx.AsyncClient() as client:
            answer = await client.request(request.method, f"{backend}/{request.path_params['path']}", params=params,
                                          content=await request.body(),
                                          headers={"content-type": request.headers.get("content-type", "")})
        request.app.state.proxied.append((request.path_params["path"], answer.status_code))
        return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))

    app = Starlette(routes=[Route("/products/{handle}", product_page), Route("/cdn/assets/{name}", asset),
                            Route(PROXY_PREFIX + "/{path:path}", proxy, methods=["GET", "POST"])])
    app.state.proxied = []
    return app


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # in a thread
        pass


@pytest.fixture
def shopfront(shop):
    app = storefront(shop["url"], shop["titles"])
    port = free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=10)


class Cards(HTMLParser):
    """The block's rendered product links (``.storeflow-recs__item a``), in order, and the block's attributes."""

    def __init__(self):
        super().__init__()
        self.titles, self.hrefs, self.block, self._in_link = [], [], None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-storeflow-recommendations" in attrs:
            self.block = attrs
        if tag == "a" and "data-product-id" in attrs:
            self._in_link = True
            self.hrefs.append(attrs["href"])
            self.titles.append("")

    def handle_endtag(self, tag):
        if tag == "a":
            self._in_link = False

    def handle_data(self, data):
        if self._in_link:
            self.titles[-1] += data


def dump_dom(url: str, profile: Path) -> str:
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_the_product_page_block_shows_recommended_products_in_chromium(shop, shopfront, tmp_path):
    base, app = shopfront
    page_title = shop["titles"][shop["page"]]
    cards = Cards()
    cards.feed(dump_dom(f"{base}/products/{handle_of(page_title)}", tmp_path / "profile"))
    assert cards.block is not None and cards.block.get("data-state") == "rendered", cards.block
    assert "hidden" not in cards.block
    model, titles = shop["model"], shop["titles"]
    expected = [p for p in model.recommend([shop["page"]], 16) if p != shop["sold_out"]][:4]
    assert cards.titles == [titles[p] for p in expected]
    assert titles[shop["sold_out"]] not in cards.titles and page_title not in cards.titles
    assert cards.hrefs == [f"/products/{handle_of(titles[p])}" for p in expected]
    assert (f"v1/models/{NAME}:predict", 200) in app.state.proxied  # through the signed proxy, auth on
    assert ("v1/feedback", 202) in app.state.proxied  # the block reported its impression


def test_impressions_and_clicks_come_back_through_the_proxy_and_make_ctr(shop, shopfront, tmp_path):
    """The block's impression (posted by the page in Chromium) and a click on a shown product (the body the
    block's click handler posts) reach the recommender through the signed proxy; /metrics counts them for
    the serving version and the logs join them to the answer: CTR 1 click / 1 impression."""
    from storeflow.components.recommend.feedback import ctr_report

    base, app = shopfront
    before = _metric(shop["url"], "storeflow_recommendation_clicks_total")
    cards = Cards()
    cards.feed(dump_dom(f"{base}/products/{handle_of(shop['titles'][shop['page']])}", tmp_path / "profile"))
    block = cards.block
    assert block["data-request-id"] and block["data-model-version"] == "1"
    shown = [f"gid://shopify/Product/{p}" for p in
             [p for p in shop["model"].recommend([shop["page"]], 16) if p != shop["sold_out"]][:4]]
    click = {"event": "click", "model_version": "1", "request_id": block["data-request-id"], "products": shown,
             "product": shown[1], "page": [f"gid://shopify/Product/{shop['page']}"]}
    assert httpx.post(f"{base}{PROXY_PREFIX}/v1/feedback", json=click).status_code == 202
    assert httpx.post(f"{base}{PROXY_PREFIX}/v1/feedback", json=click | {"product": "gid://shopify/Product/1"}
                      ).status_code == 422  # not one of those shown
    assert httpx.post(f"{shop['url']}/v1/feedback", json=click).status_code == 401  # unsigned
    assert _metric(shop["url"], "storeflow_recommendation_clicks_total") == before + 1
    assert _metric(shop["url"], "storeflow_recommendation_impressions_total") >= 1

    deadline = time.monotonic() + 10  # the logs are written off the request path, every 50 ms
    while True:
        table = ctr_report(shop["settings"].project.state_dir).set_index("model_version")
        row = table.loc["1"] if "1" in table.index else None
        if row is not None and row["clicks"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert row is not None and row["answers"] >= 1
    assert row["clicks"] == before + 1 and row["impressions"] >= 1 and row["unjoined"] == 0
    assert row["ctr"] == row["clicks"] / row["impressions"]


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf'^{name}{{model_version="1"}} ([0-9.e+]+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_an_unsigned_call_to_the_recommender_is_refused(shop):
    """What the block relies on: without Shopify's proxy signature the same request is a 401."""
    body = {"instances": [{"products": [f"gid://shopify/Product/{shop['page']}"], "k": 4}]}
    assert httpx.post(f"{shop['url']}/v1/models/{NAME}:predict", json=body).status_code == 401
