"""Benchmark: the order risk model against Shopify's own risk level and the rules, on the same time-split holdout
(labels mature 90 days after an order; training orders end 90 days before the 180-day holdout), at the default
store and the 10x store with synthetic fraud (``synthetic.fraud_rate`` 0.003: 0.3 % of orders).

Reports per store (its size beside every row): orders, labelled frauds and where the labels came from, seconds
and peak resident memory of each step (generate, read the snapshot tables, read the risk fields, features, fit,
evaluate), and PR-AUC, ROC-AUC and recall at 1 % FPR of each scorer with the model minus each baseline on
PR-AUC and its customer-grouped 95 % CI; the same for the model given Shopify's level as one more input.
Results go to bench/results/risk.json.

    python bench/risk.py [default] [10x]
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from storeflow.components.config import RiskConfig, SyntheticStoreConfig
from storeflow.components.ingest.bulk_jsonl import read_bulk_jsonl
from storeflow.components.ingest.synthetic import generate_store
from storeflow.components.risk import model as risk_model
from storeflow.components.risk.features import LABEL, order_risk_features
from storeflow.components.risk.orders import read_risk_fields

BENCH = Path(__file__).resolve().parent
FRAUD_RATE = 0.003
STORES = {
    "default": {"customers": 5_000, "orders": 50_000},
    "10x": {"customers": 50_000, "orders": 500_000},
}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(name: str, store: dict) -> dict:
    config = SyntheticStoreConfig(**store, fraud_rate=FRAUD_RATE)
    steps: dict[str, dict] = {}

    def step(label: str, started: float) -> None:
        steps[label] = {"seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(_peak_mb())}

    settings = RiskConfig()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path = generate_store(config, Path(tmp) / "store.jsonl")
        step("generate", started)
        started = time.perf_counter()
        tables = read_bulk_jsonl([path])
        step("read_tables", started)
        started = time.perf_counter()
        risk = read_risk_fields([path])
        step("read_risk_fields", started)
    started = time.perf_counter()
    rows = order_risk_features(tables, risk)
    step("features", started)
    split = risk_model.time_split(rows, settings)
    started = time.perf_counter()
    fitted = risk_model.fit(split.train, settings)
    step("fit", started)
    started = time.perf_counter()
    evaluation = risk_model.evaluate(fitted, split, settings)
    step("evaluate", started)
    # the same model with Shopify's level as one more input (RiskConfig.shopify_level_as_input)
    stacked_settings = RiskConfig(shopify_level_as_input=True)
    started = time.perf_counter()
    stacked = risk_model.evaluate(risk_model.fit(split.train, stacked_settings), split, stacked_settings)
    step("fit_and_evaluate_with_shopify_level", started)
    return {"store": name, "store_customers": store["customers"], "store_orders": store["orders"],
            "fraud_rate": FRAUD_RATE, "orders": len(rows), "labelled_fraud": int(rows[LABEL].sum()),
            "label_sources": rows.loc[rows[LABEL] == 1, "label_source"].value_counts().to_dict(),
            "steps": steps, **{key: value for key, value in evaluation.to_dict().items() if key != "curves"},
            "report": risk_model.report(evaluation, settings.fpr),
            "with_shopify_level_as_input": {"metrics": stacked.metrics, "comparisons": stacked.comparisons,
                                            "report": risk_model.report(stacked, settings.fpr)}}


def main(names: list[str]) -> None:
    rows = []
    for name in names or list(STORES):
        row = run_one(name, STORES[name])
        print(f"{name:>8} ({row['store_customers']:,} customers, {row['orders']:,} orders, "
              f"{row['labelled_fraud']:,} labelled fraud): " + ", ".join(
                  f"{step} {v['seconds']:.1f} s" for step, v in row["steps"].items()), flush=True)
        print(row["report"], flush=True)
        print("with Shopify's level as a model input:\n" + row["with_shopify_level_as_input"]["report"], flush=True)
        rows.append(row)
    out = BENCH / "results" / "risk.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "load_average": os.getloadavg()},
                               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
