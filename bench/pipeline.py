"""Benchmark: the training pipeline through kfp.local, with artifact passing, at three store sizes.

For each store, in a child process of its own: wall time of the run, and per stage (task) its seconds and
peak memory, so the stage that stops scaling first is visible. A task's peak is the largest resident set
of its process tree, sampled every 0.2 s while it runs (tasks run one after another, each in its own
process under kfp.local's SubprocessRunner); the driver (kfp.local itself) is reported beside them.
Results go to bench/results/pipeline.json.

Targets on this 2-core machine (issue 12): the default store (5,000 customers, 50,000 orders) well under
3 minutes; the 10x store (50,000 customers, 500,000 orders) under 3 minutes; the 100x store (500,000
customers, 5,000,000 orders) under 15 minutes and 8 GB peak. A run passing CAP_MB is stopped and its row
says at which stage and after how long.

    python bench/pipeline.py [default] [10x] [100x]
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
STORES = {
    "default": {"customers": 5_000, "orders": 50_000},
    "10x": {"customers": 50_000, "orders": 500_000},
    "100x": {"customers": 500_000, "orders": 5_000_000},
}
# A run whose process tree passes this is stopped, and its row says at which stage (twice the 100x
# target of 8 GB, well below this 24 GB machine's memory, so the machine stays usable).
CAP_MB = 16_000

# Runs in the child: the pipeline, and a sampler of the process tree's memory beside it.
CHILD = """
import json, re, sys, threading, time
from pathlib import Path
import psutil
from storeflow.components.config import load_settings
from storeflow.pipelines.local import PipelineFailed, run_local
from storeflow.pipelines.training import STAGES, training_pipeline

state, store, cap_mb = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
settings = load_settings({"project": {"state_dir": state}, "ingest": {"synthetic": store}})
me, samples, done, stopped = psutil.Process(), [], threading.Event(), {}

def running_task():
    logs = sorted(Path(state, "runs").glob("*/pipeline.log"))
    started = re.findall(r"Executing task '?([\\w-]+)", logs[-1].read_text()) if logs else []
    return started[-1] if started else "?"

def sample():
    while not done.is_set():
        tree, children = 0, me.children(recursive=True)
        for child in children:
            try:
                tree += child.memory_info().rss
            except psutil.Error:
                pass
        samples.append((time.perf_counter(), tree, me.memory_info().rss))
        if tree > cap_mb * 2**20 and not stopped:  # over the cap: stop the run, say where
            stopped.update(stage=running_task(), rss_mb=round(tree / 2**20), cap_mb=cap_mb,
                           after_seconds=round(time.perf_counter() - start, 1))
            for child in children:
                try:
                    child.kill()
                except psutil.Error:
                    pass
        done.wait(0.2)

start = time.perf_counter()
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
try:
    result = run_local(training_pipeline, settings, STAGES)
except PipelineFailed:
    done.set(); sampler.join()
    if not stopped:
        raise
    print(json.dumps({"stopped": stopped, "seconds": None, "stages": {}, "driver_peak_mb": None}))
    raise SystemExit(0)
seconds = time.perf_counter() - start
done.set(); sampler.join()
stages = {}
for task, (begin, end) in result.windows.items():
    during = [tree for at, tree, _ in samples if begin <= at <= end]
    stages[task] = {"seconds": round(end - begin, 2), "peak_mb": round(max(during, default=0) / 2**20, 1)}
print(json.dumps({"seconds": seconds, "stages": stages,
                  "driver_peak_mb": round(max(own for _, _, own in samples) / 2**20, 1),
                  "registration": json.loads(result.output)}))
"""


def run_one(name: str, store: dict) -> dict:
    state = BENCH / ".state" / name
    shutil.rmtree(state, ignore_errors=True)
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(state), json.dumps(store), str(CAP_MB)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} store failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    if row.get("stopped"):
        row["peak_mb"] = row["stopped"]["rss_mb"]
    else:
        row["peak_mb"] = max([row["driver_peak_mb"], *(s["peak_mb"] for s in row["stages"].values())])
    row.update(store=name, **store, wall_seconds_with_startup=round(time.perf_counter() - started, 1))
    shutil.rmtree(state, ignore_errors=True)
    return row


def main(names: list[str]) -> None:
    out = BENCH / "results" / "pipeline.json"
    rows = []
    for name in names or list(STORES):
        load = os.getloadavg()[0]
        row = run_one(name, STORES[name])
        row["load_average_before"] = round(load, 2)
        row["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if row.get("stopped"):
            stop = row["stopped"]
            print(f"{name:>8} ({row['customers']:,} customers, {row['orders']:,} orders): stopped in {stop['stage']} "
                  f"after {stop['after_seconds']:.0f} s at {stop['rss_mb']:,} MB (cap {CAP_MB:,} MB)", flush=True)
            rows.append(row)
            continue
        slowest = max(row["stages"], key=lambda s: row["stages"][s]["seconds"])
        biggest = max(row["stages"], key=lambda s: row["stages"][s]["peak_mb"])
        print(f"{name:>8} ({row['customers']:,} customers, {row['orders']:,} orders): {row['seconds']:.1f} s, "
              f"peak {row['peak_mb']:.0f} MB; slowest stage {slowest} {row['stages'][slowest]['seconds']:.1f} s, "
              f"largest {biggest} {row['stages'][biggest]['peak_mb']:.0f} MB", flush=True)
        for stage, figures in row["stages"].items():
            print(f"          {stage:<10} {figures['seconds']:>8.1f} s {figures['peak_mb']:>8.0f} MB", flush=True)
        rows.append(row)
    # Stores not run this time keep their last row (each row says when it was measured).
    kept = [r for r in (json.loads(out.read_text()).get("rows", []) if out.exists() else [])
            if r.get("store") not in {row["store"] for row in rows} and "stages" in r]
    order = list(STORES)
    rows = sorted(kept + rows, key=lambda r: order.index(r["store"]) if r["store"] in order else len(order))
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
