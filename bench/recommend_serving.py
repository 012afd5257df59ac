"""Serving benchmark of product recommendations: top-10 for a product page or a cart, storeflow's
recommender beside stock KServe serving the same model, at a 5,000-product catalog.

The store is synthetic (``--customers`` 10,000, ``--orders`` 100,000, 5,000 products; built once under
``--work``); the item-item model is fitted on all of it and saved as the registry's files (products.npy,
similarity.npz). Every product gets a products/update webhook's availability and title in the Feast online
store (SQLite, embedded), 4 % of them sold out. Baskets are real orders' products: half product pages (one
product), half carts (2 to 5 products).

* ``storeflow``: ``python -m storeflow.serving.recommender`` (the InferenceService's container) on the model
  files: Shopify session token checked on every request (checkout extensions' tokens, one per customer),
  sold-out and in-cart products dropped (availability read from the Feast online store into memory and
  refreshed when a webhook wrote), the answer logged with its request id, request metrics.
* ``kserve``: a stock ``kserve.Model`` whose ``predict`` calls the same ``ItemItem.recommend`` (KServe's
  defaults, no auth, no availability, no log): the model's own cost through KServe's stack.

Both: one worker, V1 JSON, wrk with 2 threads at ``--concurrency`` (32) for ``--duration`` s after a
``--warmup``, on 127.0.0.1 of a 2-core machine shared with the load generator (load average recorded
beside each row). Target: p99 <= 20 ms. Each row also checks 200 answers against the registered model
(``equal_registered_model``). Writes ``bench/results/recommendations_serving.json``.

    flock /tmp/storeflow-bench.lock .venv/bin/python bench/recommend_serving.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from common import CLIENT_ID, SECRET, SHOP, free_port, session_token, stop, wait_ready
from serving import ensure_wrk, lua, machine_load, request_file, worker_rss, wrk

ROOT = Path(__file__).resolve().parents[1]
NAME = "storeflow-recommendations"
PRODUCTS = 5_000
SOLD_OUT_SHARE = 0.04


def build(work: Path, customers: int, orders: int) -> dict:
    """The store, the fitted model's files, availability in the online store, and baskets; kept in ``work``."""
    import numpy as np
    import pandas as pd

    from storeflow.components.config import SyntheticStoreConfig, load_settings
    from storeflow.components.features.repo import feature_store
    from storeflow.components.ingest.bulk_jsonl import read_bulk_jsonl
    from storeflow.components.ingest.synthetic import generate_store
    from storeflow.components.recommend import availability, fit_recommender
    from storeflow.components.shopify import products

    meta = work / "build.json"
    if meta.exists():
        built = json.loads(meta.read_text())
        if (built["customers"], built["orders"]) == (customers, orders):
            return built  # another store size is built afresh below, not read from this one
    work.mkdir(parents=True, exist_ok=True)
    overrides = {"project": {"state_dir": str(work / "state"), "shop_domain": SHOP},
                 "serving": {"shopify_client_id": CLIENT_ID}}
    (work / "config.yaml").write_text(json.dumps(overrides))
    settings = load_settings(overrides)
    started = time.monotonic()
    config = SyntheticStoreConfig(customers=customers, orders=orders, products=PRODUCTS)
    tables = read_bulk_jsonl([generate_store(config, work / "store.jsonl")])
    model = fit_recommender(tables, settings.recommendations)
    model.save(work / "model" / "artifacts" / "model")
    fitted = time.monotonic() - started

    rng = np.random.default_rng(0)
    catalog = tables["products"]
    sold_out = set(rng.choice(catalog["product_id"].to_numpy(), int(len(catalog) * SOLD_OUT_SHARE), replace=False))
    template = json.loads((ROOT / "tests/data/shopify_webhooks/products_update.json").read_text())
    conn = __import__("sqlite3").connect(":memory:")
    products.ensure_schema(conn)
    rows = []
    for row in catalog.itertuples():
        pid = int(row.product_id)
        variant = template["variants"][0] | {"id": pid + 1, "product_id": pid, "inventory_item_id": pid + 2,
                                             "inventory_quantity": 0 if pid in sold_out else 12}
        rows.append(products.apply(conn, "products/update", template | {
            "id": pid, "title": row.title, "handle": f"p-{pid}", "variants": [variant]}))
    availability.write(feature_store(settings), settings, pd.concat(rows))

    items = tables["line_items"].groupby("order_id")["product_id"].apply(lambda s: sorted(set(int(p) for p in s)))
    carts = [basket[:5] for basket in items if len(basket) >= 2]
    pages = [[p] for p in rng.choice(model.products, 10_000)]
    baskets = [list(map(int, b)) for b in rng.permutation(np.array(carts[:10_000] + pages, dtype=object))]
    data = {"customers": customers, "orders": orders, "products": int(len(model.products)),
            "catalog": int(len(catalog)), "sold_out": len(sold_out), "carts": min(len(carts), 10_000),
            "pages": len(pages), "build_seconds": round(fitted, 1), "baskets": baskets,
            "sold_out_ids": sorted(int(p) for p in sold_out)}
    meta.write_text(json.dumps(data))
    return data


def stock_app():
    """A stock kserve.Model serving the same files with the same ItemItem.recommend, KServe's defaults."""
    from kserve import Model, ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer

    from storeflow.components.recommend.model import ItemItem

    class Stock(Model):
        def load(self):
            self.model = ItemItem.load(Path(os.environ["BENCH_MODEL"]))
            self.ready = True
            return True

        def predict(self, payload, headers=None):
            return {"predictions": [{"products": [f"gid://shopify/Product/{p}" for p in self.model.recommend(
                [int(g.rsplit("/", 1)[-1]) for g in item["products"]], item.get("k", 10))]}
                for item in payload["instances"]]}

    model = Stock(NAME)
    model.load()
    server = ModelServer(workers=1, enable_grpc=False)
    server.register_model(model)
    RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, 0).create_application()
    return app


def start(name: str, work: Path, port: int):
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "SHOPIFY_API_SECRET": SECRET,
           "STOREFLOW_CONFIG": str(work / "config.yaml"), "STOREFLOW_MODEL_VERSION": "1",
           "BENCH_MODEL": str(work / "model" / "artifacts" / "model")}
    if name == "storeflow":
        cmd = [sys.executable, "-m", "storeflow.serving.recommender", f"--model_name={NAME}",
               "--model_dir", str(work / "model"), "--http_port", str(port), "--workers", "1"]
    else:
        cmd = [sys.executable, "-c", "import sys, uvicorn; sys.path.insert(0, sys.argv[1]); "
               "uvicorn.run('recommend_serving:stock_app', factory=True, host='127.0.0.1', port=int(sys.argv[2]), "
               "workers=1, log_config=None, access_log=True)", str(ROOT / "bench"), str(port)]
    log = (work / f"{name}.log").open("w")
    return subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def check(url: str, token: str, baskets: list[list[int]], sold_out: set[int], model, hides_sold_out: bool) -> dict:
    """Answers to the first 200 baskets: how many had 10 products, how many showed a basket's own or a
    sold-out product (what the row's requests get), and how many were exactly the registered model's
    top 10 (``ItemItem.recommend``; for a server that hides sold-out products, its ranking without them)."""
    import httpx

    counts = {"answers": 0, "with_10": 0, "in_basket": 0, "sold_out": 0, "equal_registered_model": 0}
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as client:
        for basket in baskets[:200]:
            body = {"instances": [{"products": [f"gid://shopify/Product/{p}" for p in basket], "k": 10}]}
            answer = client.post(f"{url}/v1/models/{NAME}:predict", json=body)
            answer.raise_for_status()
            ranked = [int(g.rsplit("/", 1)[-1]) for g in answer.json()["predictions"][0]["products"]]
            shown = set(ranked)
            expected = ([p for p in model.recommend(basket, len(model.products)) if p not in sold_out][:10]
                        if hides_sold_out else model.recommend(basket, 10))
            counts["answers"] += 1
            counts["with_10"] += len(shown) == 10
            counts["in_basket"] += bool(shown & set(basket))
            counts["sold_out"] += bool(shown & sold_out)
            counts["equal_registered_model"] += ranked == expected
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".state" / "recommend-serving")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--servers", default="storeflow,kserve")
    args = parser.parse_args()
    ensure_wrk()
    data = build(args.work, args.customers, args.orders)
    print(f"store: {data['customers']:,} customers, {data['orders']:,} orders, {data['catalog']:,} products "
          f"({data['products']:,} sold, {data['sold_out']} sold out); {data['carts']:,} carts + {data['pages']:,} "
          f"product pages", flush=True)
    customers = list(range(1, 201))
    tokens = [session_token(c) for c in customers]  # checkout extensions of 200 customers
    bodies = [json.dumps({"instances": [{"products": [f"gid://shopify/Product/{p}" for p in b], "k": 10}]}).encode()
              for b in data["baskets"]]
    requests = request_file(args.work / "requests.txt", bodies, [f"Bearer {tokens[i % len(tokens)]}"
                                                                 for i in range(len(bodies))])
    script = lua(requests, {"Content-Type": "application/json"}, args.work / "requests.lua")
    from storeflow.components.recommend.model import ItemItem

    model = ItemItem.load(args.work / "model" / "artifacts" / "model")
    rows = []
    for name in args.servers.split(","):
        port = free_port()
        proc = start(name, args.work, port)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(proc, f"{url}/v2/health/ready")
            answers = check(url, tokens[0], data["baskets"], set(data["sold_out_ids"]), model, name == "storeflow")
            wrk(f"{url}/v1/models/{NAME}:predict", script, args.concurrency, args.warmup)
            load = machine_load()
            measured = wrk(f"{url}/v1/models/{NAME}:predict", script, args.concurrency, args.duration)
            row = {"server": name, "concurrency": args.concurrency, "duration_s": args.duration, **measured,
                   "rss_mb": worker_rss(proc), "load_before": load["loadavg"], "load_after": machine_load()["loadavg"],
                   "checked_answers": answers, "store_products": data["catalog"],
                   "store_customers": data["customers"], "store_orders": data["orders"],
                   "p99_target_ms": 20, "p99_met": measured["p99_ms"] <= 20}
        finally:
            stop(proc)
        print(f"{name:>10}: {row['rps']:,.0f} req/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms "
              f"(target 20: {'met' if row['p99_met'] else 'missed'}), non-2xx {row['non_2xx']}, "
              f"load {row['load_before']}", flush=True)
        rows.append(row)
    out = ROOT / "bench" / "results" / "recommendations_serving.json"
    out.write_text(json.dumps({"rows": rows, "store": {k: v for k, v in data.items()
                                                       if k not in ("baskets", "sold_out_ids")},
                               "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
