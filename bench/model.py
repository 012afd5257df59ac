"""Benchmark: the repeat-purchase model against the buy-till-you-die baselines, on the same holdout rows.

Runs the pipeline's own pure stages (ingest, features with the BTYD fits, the train stage's estimator
and calibration; no MLflow) on two synthetic stores, the default one and one whose purchase timing is
drawn from BG/NBD with CDNOW's estimates plus store signals (10k customers, 30k orders: BG/NBD needs a
sparse store, see ingest/synthetic.py), and writes bench/results/model.json: per store, for the model
and each baseline (BG/NBD, Pareto/NBD, order count then recency) the holdout's rows and positives,
ROC-AUC, PR-AUC, log loss, predicted vs actual repeat buyers and, for spend, the aggregate error and
top-decile lift (the model's spend: the train stage's spend model, train.spend; BG/NBD's: times
Gamma-Gamma), and the holdout customers per spend tier with what they actually spent.
The model's difference to the best baseline is bootstrapped by customer (95 % CI), per metric.

    python bench/model.py [--store default|bgnbd|cdnow ...] [--csv DIR]

``cdnow`` is the real CDNOW panel (23,570 customers, 1997-98) rewritten as Shopify's orders and customers
exports (bench/cdnow.py fetches it from PyPI) and ingested like any merchant's exports; ``--csv DIR`` runs
the same comparison on your own exports. Stores not run keep their rows in the results file.

Issue 14's bar: ROC-AUC and PR-AUC above the best baseline's with the CI above zero, and predicted
repeat buyers within 5 % of the actual.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path


BENCH = Path(__file__).resolve().parent
STORES = {  # name: (synthetic store config, purchase process); "csv": a directory of Shopify exports instead
    "default": ({"customers": 5_000, "orders": 50_000, "seed": 7}, "gamma-churn"),
    "bgnbd": ({"customers": 10_000, "orders": 30_000, "seed": 7}, "bgnbd"),
    "cdnow": (None, "csv"),  # the real CDNOW panel as Shopify exports (bench/cdnow.py; fetched from PyPI)
}


def run(name: str, samples: int, csv: Path | None = None) -> dict:
    from storeflow.components.config import SyntheticStoreConfig, load_settings
    from storeflow.components.evaluate import baseline_metrics, baseline_spend
    from storeflow.components.evaluate.metrics import holdout_metrics, paired_bootstrap, spend_metrics
    from storeflow.components.features import build_features, load_training_set
    from storeflow.components.features.btyd import BASELINES, RANKINGS
    from storeflow.components.features.dataset import CUSTOMER, LABEL, split_holdout
    from storeflow.components.ingest import generate_store, ingest
    from storeflow.components.train import fit_propensity
    from storeflow.components.train.spend import TIERS, fit_spend, spend_tiers

    store, process = STORES.get(name, (None, "csv"))
    state = BENCH / ".state" / f"model-{name.replace(':', '-').replace('/', '-')}"
    ingested = {"synthetic": store}
    started = time.perf_counter()
    load_before = os.getloadavg()
    if process == "csv":  # exports as a merchant downloads them, through the orders-CSV ingest
        if csv is None:
            from cdnow import write as cdnow_exports

            csv = cdnow_exports()
        ingested = {"source": "csv", "path": str(csv)}
        store = {"exports": os.path.relpath(csv, BENCH.parent) if Path(csv).resolve().is_relative_to(BENCH.parent)
                 else str(csv)}
    elif process != "gamma-churn":  # the pipeline's synthetic source draws the default process: ingest the file
        path = generate_store(SyntheticStoreConfig(**store), state / "store" / f"{process}.jsonl", process=process)
        ingested |= {"source": "jsonl", "path": str(path)}
    settings = load_settings({"project": {"state_dir": str(state)}, "ingest": ingested})
    snapshot = ingest(settings).snapshot
    features = build_features(settings, snapshot)
    features_seconds = time.perf_counter() - started
    split = split_holdout(load_training_set(features), settings.features.label)
    columns = list(settings.features.customer_features)
    estimator = fit_propensity(settings, split, columns)  # the train stage's model (train.stack)
    holdout = split.holdout
    labels = holdout[LABEL].to_numpy()
    scores = estimator.predict_proba(holdout[columns])[:, 1]
    regressor, cuts = fit_spend(settings.train.params, split.train[columns], split.train["label_spend"].to_numpy(),
                                split.calibration[columns], split.calibration["label_spend"].to_numpy())
    spend = regressor.predict(holdout[columns])
    tiers = spend_tiers(spend, cuts)
    actual = holdout["label_spend"].to_numpy()
    spend_by_tier = {tier: {"customers": int((tiers == tier).sum()), "share": float((tiers == tier).mean()),
                            "actual_mean_spend": float(actual[tiers == tier].mean()) if (tiers == tier).any() else None,
                            "repeat_rate": float(labels[tiers == tier].mean()) if (tiers == tier).any() else None}
                     for tier in TIERS}

    models = {"model": holdout_metrics(labels, scores) | spend_metrics(holdout["label_spend"], spend)}
    models |= {f"baseline_{name}": metrics for name, metrics in baseline_metrics(holdout).items()}
    for name, metrics in baseline_spend(holdout).items():  # BG/NBD x Gamma-Gamma: BG/NBD's spend
        models["baseline_bgnbd"] |= metrics | {"spend_model": name}
    for name, metrics in models.items():
        if "predicted_positives" in metrics:
            metrics["predicted_vs_actual_positives"] = metrics["predicted_positives"] / metrics["positives"] - 1

    groups = holdout[CUSTOMER].to_numpy()
    versus = {}
    for metric in ("roc_auc", "pr_auc"):
        best = max(BASELINES, key=lambda name: models[f"baseline_{name}"][metric])
        c = paired_bootstrap(labels, scores, holdout[BASELINES[best]].to_numpy(), metric, samples, 0.95, 0, groups)
        versus[metric] = {"best_baseline": best, "model": c.challenger, "baseline": c.champion,
                          "difference": c.difference, "ci_low": c.ci_low, "ci_high": c.ci_high, "samples": c.samples}
    per_cutoff = {}  # the model against the best ROC-AUC baseline at each holdout cutoff alone
    cutoffs = holdout["event_timestamp"].astype(str).to_numpy()
    best = versus["roc_auc"]["best_baseline"]
    for cutoff in sorted(set(cutoffs)):
        rows = cutoffs == cutoff
        c = paired_bootstrap(labels[rows], scores[rows], holdout[BASELINES[best]].to_numpy()[rows], "roc_auc",
                             samples, 0.95, 0, groups[rows])
        per_cutoff[cutoff] = {"rows": int(rows.sum()), "positives": int(labels[rows].sum()),
                              "predicted_positives": float(scores[rows].sum()), "best_baseline": best,
                              "roc_auc": c.challenger, "baseline_roc_auc": c.champion, "difference": c.difference,
                              "ci_low": c.ci_low, "ci_high": c.ci_high}
    model = models["model"]
    return {
        "store": {**store, "days": settings.ingest.synthetic.days, "process": process} if process != "csv"
        else {**store, "customers": int(snapshot_customers(snapshot)), "process": "orders export"},
        "label": settings.features.label.model_dump(),
        "holdout_cutoffs": sorted({str(t) for t in holdout["event_timestamp"]}),
        "train_rows": len(split.train), "calibration_rows": len(split.calibration),
        "holdout_rows": len(holdout), "holdout_customers": int(holdout[CUSTOMER].nunique()),
        "models": models,
        "rankings": sorted(f"baseline_{name}" for name in RANKINGS),  # no probabilities: no log loss
        "model_vs_best_baseline": versus,
        "per_cutoff": per_cutoff,
        "model_estimator": {"estimator": settings.train.estimator, "params": settings.train.params,
                            "stack": settings.train.stack},
        "spend_tiers": {"cuts": cuts, "holdout": spend_by_tier},
        "baseline_parameters": features.baseline_parameters,
        "constant_features": features.constant_features,
        "targets": {
            "beats_best_baseline_roc_auc": versus["roc_auc"]["ci_low"] > 0,
            "beats_best_baseline_pr_auc": versus["pr_auc"]["ci_low"] > 0,
            "repeat_buyers_within_5_percent": abs(model["predicted_vs_actual_positives"]) <= 0.05,
        },
        "features_seconds": features_seconds,
        "seconds": time.perf_counter() - started,
        "load_average": {"start": [round(v, 2) for v in load_before], "end": [round(v, 2) for v in os.getloadavg()],
                         "cores": os.cpu_count()},
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def snapshot_customers(snapshot) -> int:
    """Customers with an order in the snapshot (the CSV stores' size, said beside their figures)."""
    import pyarrow.parquet as pq

    from storeflow.components.tables import table_path

    return len(set(pq.read_table(table_path(snapshot, "orders"), columns=["customer_id"])
                   .column("customer_id").drop_null().to_pylist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", action="append", choices=list(STORES), help="default: every store")
    parser.add_argument("--csv", type=Path, help="also (or, with no --store, only) a directory of your own Shopify "
                                                 "exports: orders export CSV(s) and the customers export")
    parser.add_argument("--samples", type=int, default=1_000, help="bootstrap resamples of customers")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "model.json")
    args = parser.parse_args()
    out = args.out
    # Rows of stores not run this time are kept, so one store can be re-measured alone.
    results = json.loads(out.read_text())["stores"] if out.exists() else {}
    runs = [(name, None) for name in args.store or ([] if args.csv else list(STORES))]
    runs += [(f"csv:{args.csv.resolve().name}", args.csv)] if args.csv else []
    for store, csv in runs:
        try:
            result = run(store, args.samples, csv)
        except subprocess.CalledProcessError as exc:  # cdnow: the package index is out of reach
            print(f"== {store} store skipped: fetching the CDNOW panel failed ({exc}); its row in {out} is kept")
            continue
        results[store] = result
        print(f"== {store} store: {result['store']}")
        report(result)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"stores": results}, indent=2, default=float) + "\n")
    print(f"-> {out}")


def report(result: dict) -> None:
    for name, metrics in result["models"].items():
        spend = metrics.get("spend_aggregate_error")
        print(f"{name:>30}: ROC-AUC {metrics['roc_auc']:.4f}  PR-AUC {metrics['pr_auc']:.4f}"
              + (f"  log loss {metrics['log_loss']:.4f}  predicted/actual buyers {metrics['predicted_positives']:.0f}"
                 f"/{metrics['positives']:.0f}" if "log_loss" in metrics else "")
              + (f"  spend error {spend:+.1%}, top-decile lift {metrics['spend_top_decile_lift']:.2f}"
                 if spend is not None else ""))
    for metric, c in result["model_vs_best_baseline"].items():
        print(f"model - {c['best_baseline']} {metric}: {c['difference']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]")
    for tier, row in result["spend_tiers"]["holdout"].items():
        print(f"spend tier {tier}: {row['customers']} rows ({row['share']:.0%}), actual mean spend {row['actual_mean_spend']}")
    print(f"targets: {result['targets']}  ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
