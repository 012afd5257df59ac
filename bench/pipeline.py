"""Benchmark: the training pipeline through kfp.local, default store and a 10x store.

Records wall time and peak memory (largest resident set of this process and of any task process;
tasks run one after another) per store in bench/results/pipeline.json.
Targets on a 2-core machine: default store under 90 s, 10x store under 3 minutes and 4 GB.
"""

from __future__ import annotations

import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
STORES = {
    "default": {"customers": 5_000, "orders": 50_000},
    "10x": {"customers": 50_000, "orders": 500_000},
}


def run_one(name: str, store: dict) -> dict:
    """Run in a child process so each store's peak memory is its own."""
    state = BENCH / ".state" / name
    shutil.rmtree(state, ignore_errors=True)
    code = f"""
import json, resource, time
from storeflow.components.config import load_settings
from storeflow.pipelines.local import run_local
from storeflow.pipelines.training import STAGES, training_pipeline
settings = load_settings({{"project": {{"state_dir": {str(state)!r}}}, "ingest": {{"synthetic": {json.dumps(store)}}}}})
start = time.perf_counter()
result = run_local(training_pipeline, settings, STAGES)
seconds = time.perf_counter() - start
peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({{"seconds": seconds, "peak_mb": peak_kb / 1024, "registration": json.loads(result.output)}}))
"""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} store failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.update(store=name, **store, wall_seconds_with_startup=time.perf_counter() - started)
    shutil.rmtree(state, ignore_errors=True)
    return row


def main(names: list[str]) -> None:
    rows = []
    for name in names or list(STORES):
        row = run_one(name, STORES[name])
        print(f"{name:>8}: {row['seconds']:.1f} s, peak {row['peak_mb']:.0f} MB "
              f"({row['customers']} customers, {row['orders']} orders)", flush=True)
        rows.append(row)
    out = BENCH / "results" / "pipeline.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
                               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
