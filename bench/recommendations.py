"""Benchmark: the item-item recommender against popularity and frequently-bought-together, on the same
customers of a time-ordered holdout (learn before the cutoff, judge on what customers newly bought in the
90 days after it), at the default store and the 10x store, each also with the synthetic store's co-purchase
structure (complements bought together and as follow-ups, seasonal products: ``STRUCTURE``).

Reports per store (its size beside every row): evaluated customers, catalog size, recall@10, NDCG@10, MAP@10 and coverage of each
recommender, the model minus the best baseline on NDCG@10 with its customer-grouped 95 % CI, the cold-start
comparison (each customer's latest order as products the model never saw: the fallback from their category and
price band, the product_catalog features as of the cutoff, against popularity), and the seconds fitting and
ranking took. Results go to bench/results/recommendations.json.

    python bench/recommendations.py [default] [10x]
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from storeflow.components.config import SyntheticStoreConfig, load_settings
from storeflow.components.ingest.bulk_jsonl import read_bulk_jsonl
from storeflow.components.ingest.synthetic import generate_store
from storeflow.components.recommend import evaluate_recommenders, purchases
from storeflow.components.recommend.catalog import product_catalog
from storeflow.components.recommend.purchases import evaluation_cutoff

BENCH = Path(__file__).resolve().parent
STRUCTURE = {"co_purchase": 0.5, "seasonal": 0.15}  # complements and seasonal products (synthetic.co_purchase)
STORES = {
    "default": {"customers": 5_000, "orders": 50_000},
    "10x": {"customers": 50_000, "orders": 500_000},
    "default+co-purchase": {"customers": 5_000, "orders": 50_000, **STRUCTURE},
    "10x+co-purchase": {"customers": 50_000, "orders": 500_000, **STRUCTURE},
}


def run_one(name: str, store: dict) -> dict:
    config = SyntheticStoreConfig(**store)
    with tempfile.TemporaryDirectory() as tmp:
        tables = read_bulk_jsonl([generate_store(config, Path(tmp) / "store.jsonl")])
    load = list(os.getloadavg())
    started = time.perf_counter()
    cfg = load_settings({}).recommendations
    # the rows the pipeline's product_features task gets back from Feast for the cutoff (the same function
    # writes the view's source; Feast's point-in-time join at that time returns them unchanged)
    catalog = product_catalog(tables, [evaluation_cutoff(purchases(tables), cfg.horizon_days)])
    report = evaluate_recommenders(tables, cfg, catalog)
    return {"store": name, "store_customers": store["customers"], "store_orders": store["orders"],
            "store_products": config.products, "co_purchase": config.co_purchase, "seasonal": config.seasonal,
            "load_before": load, "seconds": round(time.perf_counter() - started, 2),
            **report.to_dict(), "summary": report.summary(), "cold_start_summary": report.cold_start_summary()}


def main(names: list[str]) -> None:
    rows = []
    for name in names or list(STORES):
        row = run_one(name, STORES[name])
        print(f"{name:>8} ({row['store_customers']:,} customers, {row['store_orders']:,} orders, {row['catalog']:,} "
              f"products sold before the cutoff; {row['seconds']:.1f} s): {row['summary']}", flush=True)
        print(f"          {row['cold_start_summary']}", flush=True)
        for recommender, metrics in row["metrics"].items():
            print(f"          {recommender:<16} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
        rows.append(row)
    out = BENCH / "results" / "recommendations.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
