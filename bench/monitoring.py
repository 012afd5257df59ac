"""Benchmark: monitoring one window of 1M logged predictions × 20 features.

Writes a prediction log in the serving format (``serving/predlog.py``; generated once, in a temp dir),
then, in a fresh process, times what ``storeflow monitor`` does with it apart from MLflow look-ups:
read the window (DuckDB, reservoir sample of ``monitor.max_rows``), Evidently drift against a 20-feature
reference, the standalone HTML and JSON reports, and the Prometheus textfile. Peak memory is the
analysing process's max RSS. Result: ``bench/results/monitoring.json``.

    .venv/bin/python bench/monitoring.py [--rows 1000000] [--features 20]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

END = datetime(2026, 11, 1, tzinfo=timezone.utc)
RESULT = Path(__file__).parent / "results" / "monitoring.json"


def columns(n: int) -> list[str]:
    return [f"feature_{i:02d}" for i in range(n)]


def frame(rows: int, names: list[str], seed: int, lift: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {c: rng.gamma(2 + (i % 5), 10 * (lift if i < 3 else 1.0), rows) for i, c in enumerate(names)}
    data["score"] = rng.beta(2, 5, rows)
    return pd.DataFrame(data)


def write_log(directory: Path, rows: int, names: list[str], chunk: int = 100_000) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "predictions-20261031T000000-1.jsonl").open("wb") as out:
        for part in range(0, rows, chunk):
            n = min(chunk, rows - part)
            f = frame(n, names, seed=part, lift=1.3)
            values = f[names].to_numpy()
            scores = f["score"].to_numpy()
            seconds = np.random.default_rng(part).uniform(0, 23 * 3600, n)
            out.write(b"".join(orjson.dumps({
                "ts": (END - timedelta(seconds=float(seconds[i]))).isoformat(), "request_id": f"r{part + i}",
                "model_name": "storeflow-repeat-purchase", "model_version": "1", "customer_id": part + i,
                "fallback": False, "score": float(scores[i]), "features": dict(zip(names, values[i].tolist())),
                "cart": None, "shop": "demo-store.myshopify.com"}) + b"\n" for i in range(n)))


def analyse(directory: Path, n_features: int) -> dict:
    """The monitoring data path on one window, timed (runs in its own process)."""
    from storeflow.components.config import MonitorConfig
    from storeflow.components.monitor import drift
    from storeflow.components.monitor.metrics import publish
    from storeflow.components.monitor.predictions import read_window

    names, cfg = columns(n_features), MonitorConfig()
    started = time.perf_counter()
    reference = frame(cfg.reference_rows, names, seed=10_000_000)
    window = read_window(directory, END - timedelta(hours=24), END, names, None, cfg.max_rows, cfg.seed)
    read_s = time.perf_counter() - started
    result = drift.analyse(reference, window.frame, names, window.present_features, cfg)
    out = directory / "report"
    out.mkdir(exist_ok=True)
    result.report.save_html(str(out / "report.html"))
    result.report.save_json(str(out / "report.json"))
    publish({"model_version": "1", "level": result.level, "rows": {"window": window.rows},
             "drift": result.to_dict()}, out / "metrics.prom", None, cfg.job)
    return {"window_rows": window.rows, "analysed_rows": len(window.frame), "read_seconds": round(read_s, 2),
            "seconds": round(time.perf_counter() - started, 2), "drifted_share": result.drifted_share,
            "level": result.level, "cdf_error_95": round(window.cdf_error_95, 5)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--analyse", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.analyse:
        print(json.dumps(analyse(args.analyse, args.features)))
        return
    with tempfile.TemporaryDirectory(prefix="storeflow-bench-") as tmp:
        started = time.perf_counter()
        write_log(Path(tmp), args.rows, columns(args.features))
        generate = time.perf_counter() - started
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--analyse", tmp, "--features", str(args.features)],
                              capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started  # includes interpreter start and imports (evidently ~8 s)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {"rows": measured["window_rows"], "features": args.features, "seconds": measured["seconds"],
              "seconds_with_startup": round(wall, 2), "peak_memory_mb": round(peak_mb, 1), **measured,
              "log_generation_seconds": round(generate, 2)}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
