"""Serving benchmark at a real store's size: storeflow vs a stock KServe model, side by side.

Rows for stores of 400, 50,000 and 500,000 customers (ten orders each on average; built by the real
stages, synthetic ingest → features → train → evaluate → register, once, then kept under ``--work``),
each with Feast's embedded SQLite online store and with Redis (production's; Debian's redis-server on
loopback, the newest snapshot materialized into it), the requested customer drawn ``uniform`` or
``skewed`` (Zipf, exponent 1: a few returning customers, a long tail). Single-row V2 requests, wrk at
``--concurrency`` (32 by default) for ``--duration`` s after a ``--warmup`` (which fills caches, as a
running server's would be; the row then goes on where the warm-up stopped in the drawn requests), 2 workers per server, all on 127.0.0.1. Every customer's checkout sends its
own session token, so storeflow's answers include the Shopify auth check and the Feast lookup; stock
KServe (``kserve``: a ``kserve.Model`` doing ``predict_proba`` per request, KServe's defaults) gets the
feature row in the request. ``storeflow-uncached`` is storeflow with the feature cache and the score
memo off. wrk cycles through ``--requests`` drawn requests (200,000: more than a row's run sends at
~10,000 RPS, so a uniform draw over 50,000 customers repeats only as often as such traffic would).

Each row: RPS, p50, p99, non-2xx, each cache's hit rate during the row (from ``/metrics``), each
worker's RSS after it, and the load average before it (the machine is shared: numbers measured under
load say so). Writes ``bench/results/serving.json``:
``{"rows": [...], "predictions_equal_registered_model": {...}, "stores": {...}, "machine": {...}}``.

    flock /tmp/storeflow-bench.lock .venv/bin/python bench/serving.py [--sizes 400,50000] [--cells 500000/redis/uniform]

``mlserver`` (in its own venv, ``bench/.venv-mlserver``, created on first run) and ``bare`` (no model:
the HTTP stack's ceiling) are in ``--servers`` on request.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from common import CLIENT_ID, MODEL, SECRET, SHOP, free_port, serve_command, session_token, stop, wait_ready

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
MLSERVER_VENV = ROOT / "bench" / ".venv-mlserver"


# -- stores, models and data -------------------------------------------------------------------------------
def overrides_for(work: Path, customers: int) -> dict:
    """The bench store's settings: ``customers`` customers, ten orders each on average, over 400 days."""
    return {"project": {"state_dir": str(work / "state")},
            "ingest": {"source": "synthetic",
                       "synthetic": {"customers": customers, "orders": 10 * customers, "days": 400}},
            "features": {"label": {"horizon_days": 60, "cutoff_every_days": 30, "min_history_days": 60}},
            "evaluate": {"bootstrap_samples": 100},
            "serving": {"shopify_client_id": CLIENT_ID, "allowed_shops": [SHOP]}}


def build(work: Path, customers: int = 400, *, export_rows: bool = True) -> dict:
    """Register a model (default training params) on a synthetic store of ``customers``; export what others need.

    The real stages (synthetic ingest → features → train → evaluate → register), nothing from tests/.
    A work directory whose pipeline already ran (``pipeline.done``) for the same customer features is
    reused (a 500,000-customer store takes a quarter of an hour or more to build). ``rows`` holds every customer's online feature row
    (``export_rows``) or none; :func:`online_rows` reads any others.
    """
    from storeflow.components.config import load_settings

    overrides = overrides_for(work, customers)
    settings = load_settings(overrides)
    done = work / "pipeline.done"
    built = {"customers": customers, "features": list(settings.features.customer_features)}
    with (work / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run building this store: wait for it, then reuse it
        # A store built for other features (the model gained one since) is built again: its online rows
        # would lack a column the served model reads.
        if _built_for(done) != built["features"]:
            from storeflow.components.evaluate import evaluate
            from storeflow.components.features import build_features
            from storeflow.components.ingest import ingest
            from storeflow.components.register import register
            from storeflow.components.train import train

            snapshot = ingest(settings).snapshot
            features = build_features(settings, snapshot)
            trained = train(settings, features)
            register(settings, trained, evaluate(settings, features, trained))
            done.write_text(json.dumps(built))
    import joblib

    from storeflow.components import tracking

    tracking.connect(settings)
    import mlflow.sklearn

    # The newest version (alias challenger, always set): whether it beat the baselines is the gate's business.
    estimator = mlflow.sklearn.load_model(f"models:/{settings.registry.model_name}@challenger")
    joblib.dump(estimator, work / "model.joblib")
    (work / "config.yaml").write_text(json.dumps(overrides))
    ids = customer_ids(settings)
    data = {"settings": settings, "estimator": estimator, "columns": list(settings.features.customer_features),
            "ids": ids, "overrides": overrides, "work": work}
    data["rows"] = online_rows(settings, ids) if export_rows else {}
    return data


def _built_for(done: Path) -> list[str] | None:
    """The customer features a bench store was built with (None: not built, or before this was recorded)."""
    try:
        return json.loads(done.read_text()).get("features")
    except (OSError, ValueError, AttributeError):
        return None


def customer_ids(settings) -> list[int]:
    """Every customer of the store's newest snapshot."""
    import pandas as pd

    from storeflow.components.features import offline
    from storeflow.components.features.repo import CUSTOMER_VIEW, source_path

    frame = pd.read_parquet(offline.snapshot_part(source_path(settings, CUSTOMER_VIEW)),
                            columns=["customer_id", "event_timestamp"])
    newest = frame[frame["event_timestamp"] == frame["event_timestamp"].max()]
    return sorted(int(i) for i in newest["customer_id"])


def online_rows(settings, ids: list[int]) -> dict[int, list[float]]:
    """Feature rows from Feast's ``get_online_features`` (what a stock KServe caller would send)."""
    from storeflow.components.features.repo import feature_refs, feature_store

    columns = list(settings.features.customer_features)
    store, rows = feature_store(settings), {}
    for start in range(0, len(ids), 5000):
        part = ids[start:start + 5000]
        data = store.get_online_features(features=feature_refs(settings),
                                         entity_rows=[{"customer_id": i} for i in part]).to_dict()
        for n, i in enumerate(part):
            if data[columns[0]][n] is not None:
                rows[i] = [float(data[c][n]) for c in columns]
    return rows


def use_online_store(data: dict, kind: str, redis_address: str | None = None) -> float:
    """Point the bench store at ``kind`` (sqlite: as built; redis: materialize the newest snapshot into
    it, once per server); returns the seconds materializing took. Servers read ``config.yaml``."""
    import time
    from datetime import timedelta

    import pandas as pd

    from storeflow.components.config import load_settings
    from storeflow.components.features import offline
    from storeflow.components.features.repo import CUSTOMER_VIEW, apply, source_path

    overrides = json.loads(json.dumps(data["overrides"]))
    if kind == "redis":
        overrides["features"]["feast"] = {"online_store": "redis", "redis_connection_string": redis_address}
    (data["work"] / "config.yaml").write_text(json.dumps(overrides))
    settings = load_settings(overrides)
    store = apply(settings)  # rewrites feature_store.yaml for this online store
    if kind != "redis" or data.get("materialized") == redis_address:
        return 0.0
    started = time.monotonic()
    as_of = pd.read_parquet(offline.snapshot_part(source_path(settings, CUSTOMER_VIEW)),
                            columns=["event_timestamp"])["event_timestamp"].max()
    store.materialize(start_date=(as_of - timedelta(seconds=1)).to_pydatetime(),
                      end_date=(as_of + timedelta(seconds=1)).to_pydatetime(), feature_views=[CUSTOMER_VIEW])
    data["materialized"] = redis_address
    return time.monotonic() - started


# -- servers -----------------------------------------------------------------------------------------------
def start(name: str, work: Path, port: int, settings: dict[str, str] | None = None) -> subprocess.Popen:
    """Start server ``name``; a storeflow server runs with ``settings`` (``--variant``) on top of the store's config."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (work / f"{name}.log").open("w")
    if name.startswith("storeflow"):
        env["SHOPIFY_API_SECRET"] = SECRET
        cmd = [*serve_command(work, port), "--alias", "challenger"]
        if name == "storeflow-uncached":
            cmd += ["--set", "serving.score_memo_rows=0", "--set", "serving.feature_cache_seconds=0"]
        for key, value in (settings or {}).items():
            cmd += ["--set", f"{key}={value}"]
    elif name == "mlserver":
        _mlserver_venv()
        _mlserver_repo(work, port)
        cmd = [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(work / "mlserver")]
    else:
        cmd = [PY, __file__, "--serve", name, "--bench-dir", str(work), "--port", str(port)]
    return subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _mlserver_venv() -> None:
    if (MLSERVER_VENV / "bin" / "mlserver").exists():
        return
    import sklearn

    uv = Path(PY).parent / "uv"
    subprocess.run([str(uv), "venv", "--python", PY, str(MLSERVER_VENV)], check=True)
    subprocess.run([str(uv), "pip", "install", "--python", str(MLSERVER_VENV / "bin" / "python"), "mlserver>=1.7,<1.8",
                    "mlserver-sklearn>=1.7,<1.8", "uvloop<0.22", f"scikit-learn=={sklearn.__version__}"], check=True)


def _mlserver_repo(work: Path, port: int) -> None:
    repo = work / "mlserver"
    (repo / "model").mkdir(parents=True, exist_ok=True)
    (repo / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": 2, "debug": False}))
    (repo / "model" / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(work / "model.joblib"), "extra": {"method": "predict_proba"}}}))


# -- in-process servers for "kserve" and "bare" (run through --serve) ----------------------------------------
def stock_kserve_app():
    """A stock kserve.Model doing joblib predict_proba per request, with KServe's default logging."""
    import joblib
    from kserve import Model, ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.model_server import app
    from kserve.protocol.infer_type import InferOutput, InferResponse
    from kserve.protocol.rest.server import RESTServer

    class Stock(Model):
        def load(self):
            self.model = joblib.load(os.environ["BENCH_MODEL"])
            self.ready = True
            return True

        def predict(self, payload, headers=None):
            rows = payload.inputs[0].as_numpy()
            scores = self.model.predict_proba(rows)[:, 1]
            out = InferOutput("score", list(scores.shape), "FP64")
            out.set_data_from_numpy(scores, binary_data=False)
            return InferResponse(payload.id or "", self.name, [out])

    model = Stock(MODEL)
    model.load()
    server = ModelServer(workers=1, enable_grpc=False)
    server.register_model(model)
    model.enable_latency_logging = True
    RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, 0).create_application()
    return app


def bare_app():
    import orjson

    answer = orjson.dumps({"model_name": MODEL, "outputs": [{"name": "score", "shape": [1], "datatype": "FP64",
                                                             "data": [0.5]}]})

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if body:
            orjson.loads(body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})

    return app


def serve_inline(name: str, work: Path, port: int) -> None:
    import uvicorn

    os.environ["BENCH_MODEL"] = str(work / "model.joblib")
    factory = {"kserve": "bench.serving:stock_kserve_app", "bare": "bench.serving:bare_app"}[name]
    sys.path.insert(0, str(ROOT))
    uvicorn.run(factory, factory=True, host="127.0.0.1", port=port, workers=2, log_config=None,
                timeout_worker_healthcheck=120, access_log=name == "kserve")


# -- load ---------------------------------------------------------------------------------------------------
def draw(ids: list[int], kind: str, n: int, seed: int = 0) -> list[int]:
    """``n`` customers drawn with replacement: ``uniform``, or ``skewed`` (Zipf, exponent 1, over the
    customers in a random order: a few returning customers come back often, a long tail comes once)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return [int(i) for i in rng.choice(np.asarray(ids), size=n)]
    order = rng.permutation(np.asarray(ids))
    weight = 1.0 / np.arange(1, len(order) + 1)
    return [int(i) for i in rng.choice(order, size=n, p=weight / weight.sum())]


def request_file(path: Path, bodies: list[bytes], authorizations: list[str] | None = None) -> Path:
    """One request a line: its body, and a tab and its ``Authorization`` value when each has its own."""
    with path.open("wb") as out:
        for n, body in enumerate(bodies):
            out.write(body + (b"\t" + authorizations[n].encode() if authorizations else b"") + b"\n")
    return path


def lua(requests: Path, headers: dict[str, str], path: Path, think_ms: int = 0) -> Path:
    """A wrk script sending the requests of ``requests`` (see :func:`request_file`) in order, each wrk
    thread from its own place in the list, moved on by the requests that thread already sent from it
    (wrk's arguments, one per thread, printed by ``done()``): a row goes on where the warm-up stopped, as
    a running server's traffic would, instead of sending the warm-up's customers again. Each thread's
    count is its own: wrk's threads do not send alike (13,208 and 6,156 in one second here), and one
    count for both made the busier thread send thousands of its requests again. With ``think_ms``, each
    connection waits that long before its next request (wrk's ``delay()``), so servers of different
    speeds get about the same load, not each its own."""
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    # Every request is formatted once per wrk thread, in init(): the load generator shares the two
    # cores with the server, so its per-request work must not count against any server.
    path.write_text(f"""wrk.method = "POST"
{header_lines}
local threads = {{}}
function setup(thread)
  thread:set("place", #threads)
  table.insert(threads, thread)
end
local prepared = {{}}
function init(args)
  for line in io.lines("{requests}") do
    local headers = {{}}
    for k, v in pairs(wrk.headers) do headers[k] = v end
    local body = line
    local tab = string.find(line, "\\t", 1, true)
    if tab then
      headers["Authorization"] = string.sub(line, tab + 1)
      body = string.sub(line, 1, tab - 1)
    end
    prepared[#prepared + 1] = wrk.format(nil, nil, headers, body)
  end
  -- globals, so that done() can read them from each thread
  local parts = #args > 0 and #args or 2  -- one skip per thread in args
  start = (place or 0) * math.floor(#prepared / parts) + (tonumber(args[(place or 0) + 1]) or 0)
  n = start
end
request = function()
  n = n + 1
  return prepared[(n % #prepared) + 1]
end
function done(summary, latency, requests)
  for i, thread in ipairs(threads) do
    io.write(string.format("sent by thread %d: %d\\n", i - 1, thread:get("n") - thread:get("start")))
  end
end
""" + (f"function delay()\n  return {think_ms}\nend\n" if think_ms else ""))
    return path


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def ensure_wrk() -> None:
    """wrk on PATH; on a fresh machine Debian's package is installed first (as root), as .ci/run does for Redis."""
    import shutil

    found = shutil.which("wrk")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing Debian's wrk (the load generator) ...", flush=True)
        subprocess.run("apt-get update -qq && apt-get install -y -qq wrk >/dev/null", shell=True, check=False)
        found = shutil.which("wrk")
    if found is None:
        raise SystemExit("bench/serving.py needs wrk on PATH (Debian: apt-get install wrk)")


def wrk(url: str, script: Path, connections: int, duration: int, sent: dict | None = None) -> dict:
    """One wrk run of ``script``; ``sent`` (per script: the requests each wrk thread sent from its place so
    far) makes it go on where the last run of the script stopped."""
    threads = min(2, connections)
    skips = (sent or {}).get(script, [0] * threads)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
                          "-s", str(script), url, "--", *map(str, skips)], capture_output=True, text=True,
                         check=True).stdout
    if sent is not None:
        counts = {int(t): int(k) for t, k in re.findall(r"sent by thread (\d+): (\d+)", out)}
        sent[script] = [skip + counts[t] for t, skip in enumerate(skips)]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": round(rps, 1), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def check_predictions(port: int, data: dict) -> dict:
    """storeflow's answers against the registered model on Feast's rows for the same customers (tolerance 1e-6)."""
    import numpy as np
    import pandas as pd
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    ids = sorted(data["check_rows"])
    tensor = triton.InferInput("customer_id", [len(ids)], "BYTES")
    tensor.set_data_from_numpy(np.array([f"gid://shopify/Customer/{i}".encode() for i in ids], dtype=np.object_))
    served = client.infer(MODEL, [tensor], headers={"Authorization": f"Bearer {session_token()}"}).as_numpy("score")
    frame = pd.DataFrame([data["check_rows"][i] for i in ids], columns=data["columns"])
    expected = data["estimator"].predict_proba(frame)[:, 1]
    diff = float(np.max(np.abs(served - expected)))
    return {"customers": len(ids), "max_abs_diff": diff, "equal_1e-6": diff <= 1e-6}


def cache_counts(port: int) -> dict[str, tuple[float, float]]:
    """(hits, lookups) per cache, summed over the workers, from ``/metrics``."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    counts: dict[str, list[float]] = {}
    for kind, cache, value in re.findall(r'^storeflow_cache_(hits|lookups)_total\{cache="(\w+)"\} (\S+)$', text, re.M):
        counts.setdefault(cache, [0.0, 0.0])[kind == "lookups"] += float(value)
    return {cache: (hits, lookups) for cache, (hits, lookups) in counts.items()}


def hit_rates(before: dict, after: dict) -> dict[str, float | None]:
    """Each cache's hit rate between two :func:`cache_counts` (None: not consulted at all meanwhile)."""
    rates = {}
    for cache, (hits, lookups) in after.items():
        hits0, lookups0 = before.get(cache, (0.0, 0.0))
        rates[cache] = round((hits - hits0) / (lookups - lookups0), 4) if lookups > lookups0 else None
    return rates


def worker_rss(proc: subprocess.Popen) -> list[float]:
    """Resident memory (MB) of each server worker: the processes of the server's session that answer
    requests (uvicorn's spawned workers; the process itself when it has none)."""
    return [rss for _, rss, _ in _workers(proc)]


def worker_cpu(proc: subprocess.Popen) -> list[float]:
    """CPU seconds (user + system) each server worker has used so far, in :func:`worker_rss`'s order: two
    readings around a row show how the row's load split between the workers (the kernel hands each new
    connection to one worker, and an uneven split caps the server at what its busiest worker can do)."""
    return [cpu for _, _, cpu in _workers(proc)]


def _workers(proc: subprocess.Popen) -> list[tuple[int, float, float]]:
    """(pid, RSS in MB, CPU seconds) of each worker of ``proc``'s session, by pid."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) != proc.pid:  # session id: the server was started in its own session
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            rss_kb = next(int(line.split()[1]) for line in (entry / "status").read_text().splitlines()
                          if line.startswith("VmRSS:"))
        except (OSError, ValueError, StopIteration):
            continue
        if "resource_tracker" in cmdline:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        found.append((int(entry.name), "spawn_main" in cmdline, round(rss_kb / 1024, 1), cpu))
    workers = [(pid, rss, cpu) for pid, spawned, rss, cpu in sorted(found) if spawned]
    return workers or [(pid, rss, cpu) for pid, _, rss, cpu in sorted(found)]


def machine_load() -> dict:
    return {"loadavg": [round(x, 2) for x in os.getloadavg()]}


@contextlib.contextmanager
def redis_server(work: Path):
    """Debian's redis-server on a free loopback port, no persistence (what tests/redis_server.py starts)."""
    import shutil
    import socket
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("the Redis rows need redis-server on PATH (Debian: apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def v2_by_id(i: int) -> bytes:
    return json.dumps({"inputs": [{"name": "customer_id", "shape": [1], "datatype": "BYTES",
                                   "data": [f"gid://shopify/Customer/{i}"]}]}).encode()


def v2_by_row(row: list[float]) -> bytes:
    return json.dumps({"inputs": [{"name": "features", "shape": [1, len(row)], "datatype": "FP64",
                                   "data": row}]}).encode()


def selected(cells: set[str], size: int, store: str, kind: str) -> bool:
    """Whether ``--cells`` asks for this cell (none given: every cell)."""
    return not cells or any(f"{size}/{store}/{kind}/".startswith(c.strip("/") + "/") for c in cells)


def warm_page_cache(work: Path) -> None:
    """Read the SQLite online store's file once, so every server's rows start with it in the OS page cache,
    as a running server's would be. Without it the first server of a store (storeflow, caches on) paid the
    cold disk reads and the next one (caches off) did not: measured at 50,000 customers (a 253 MB file),
    caches off answered 1,210 RPS with the file dropped from the page cache and 1,389 RPS with it cached,
    which the run at b3d3047 counted against the caches."""
    for path in (work / "state").rglob("online.db"):
        with path.open("rb") as f:
            while f.read(1 << 24):
                pass


def measure(name: str, work: Path, runs: list[tuple[dict, Path]], args) -> list[dict]:
    """Start ``name`` (a server given the feature row: stock KServe, MLServer, bare) once, then for each
    ``(cell, script)`` of ``runs`` warm it up with that script and run wrk once per concurrency: its rows,
    with each worker's RSS."""
    port = free_port()
    health = f"http://127.0.0.1:{port}" + ("/" if name == "bare" else "/v2/health/ready")
    print(f"starting {name} ({runs[0][0]}) ...", flush=True)
    proc = start(name, work, port)
    rows = []
    try:
        wait_ready(proc, health)
        url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
        sent: dict = {}
        for cell, script in runs:
            wrk(url, script, 8, args.warmup, sent)  # warm-up: connections, first-call paths
            for c in args.concurrency:
                load = machine_load()["loadavg"]
                result = {"server": name, **cell, "concurrency": c, **wrk(url, script, c, args.duration, sent)}
                result["worker_rss_mb"] = worker_rss(proc)
                result["loadavg_before"] = load
                print(json.dumps(result), flush=True)
                rows.append(result)
    except Exception as exc:  # noqa: BLE001 - one server failing must not lose the others' rows
        print(f"{name} failed: {exc}; see {work / (name + '.log')}", flush=True)
        rows.append({"server": name, **runs[0][0], "error": str(exc)[:300]})
    finally:
        stop(proc)
    return rows


def measure_paired(names: list[str], work: Path, runs: list[tuple[dict, Path]], args, data: dict) -> list[dict]:
    """The storeflow servers ``names`` (with and without caches) side by side: all started, then for each
    ``(cell, script)`` of ``runs`` each warmed up, then ``--repeat`` rounds of one wrk run per server, their
    order alternating (A B, B A, ...). Per server and cell one row: the median RPS, p50 and p99 of its
    rounds (every round's in ``rounds``), with hit rates and RSS of its last round.

    Why paired: this shared machine's speed drifts by more than the caches' effect. Measured one server
    after the other at 500,000 customers (SQLite, uniform, same code), caches on vs off was 2,736 vs 2,577
    RPS in one run and 2,008 vs 2,233 in the next. Rounds next to each other in time, in alternating
    order, compare the servers under the same drift. Each server goes on where its last run stopped in the
    drawn requests, so both see the same traffic."""
    if runs[0][0].get("online_store") == "sqlite":
        warm_page_cache(work)
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    rows: list[dict] = []
    try:
        for name in names:
            port = free_port()
            print(f"starting {name} ({runs[0][0]}) ...", flush=True)
            servers[name] = (start(name, work, port, args.variants.get(name)), port)
        for name, (proc, port) in list(servers.items()):
            try:
                wait_ready(proc, f"http://127.0.0.1:{port}/v2/health/ready")
            except Exception as exc:  # noqa: BLE001 - one server failing must not lose the others' rows
                print(f"{name} failed: {exc}; see {work / (name + '.log')}", flush=True)
                rows.append({"server": name, **runs[0][0], "error": str(exc)[:300]})
                stop(proc)
                del servers[name]
        sent = {name: {} for name in servers}
        checks: dict[str, bool] = {}
        for cell, script in runs:
            for name, (_, port) in servers.items():
                wrk(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", script, 8, args.warmup, sent[name])
                if name not in checks:
                    checks[name] = check_predictions(port, data)["equal_1e-6"]
            for c in args.concurrency:
                rounds: dict[str, list[dict]] = {name: [] for name in servers}
                for r in range(args.repeat):
                    for name in (list(servers) if r % 2 == 0 else list(servers)[::-1]):
                        proc, port = servers[name]
                        load = machine_load()["loadavg"]
                        before, cpu = cache_counts(port), worker_cpu(proc)
                        result = wrk(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", script, c, args.duration,
                                     sent[name])
                        result["hit_rates"] = hit_rates(before, cache_counts(port))
                        result["worker_cpu_s"] = [round(b - a, 2) for a, b in zip(cpu, worker_cpu(proc))]
                        result["loadavg_before"] = load
                        rounds[name].append(result)
                for name, found in rounds.items():
                    row = {"server": name, **cell, "concurrency": c,
                           **{k: round(statistics.median(f[k] for f in found), 2) for k in ("rps", "p50_ms", "p99_ms")},
                           "non_2xx": sum(f["non_2xx"] for f in found), "hit_rates": found[-1]["hit_rates"],
                           "worker_rss_mb": worker_rss(servers[name][0]), "loadavg_before": found[0]["loadavg_before"],
                           "predictions_equal_registered_model": checks[name], "rounds": found}
                    print(json.dumps({k: v for k, v in row.items() if k != "rounds"}), flush=True)
                    rows.append(row)
    finally:
        for proc, _ in servers.values():
            stop(proc)
    return rows

def parse_variants(specs: list[str]) -> dict[str, dict[str, str]]:
    """``--variant`` values as {server name: {setting: value}}, with a clear error for a malformed one."""
    variants: dict[str, dict[str, str]] = {}
    for spec in specs:
        name, _, pairs = spec.partition(":")
        if not name.startswith("storeflow-") or name == "storeflow-uncached" or not pairs:
            raise SystemExit(f"--variant {spec!r}: expected storeflow-NAME:key=value[,key=value] "
                             "(NAME not 'uncached')")
        settings = {}
        for pair in pairs.split(","):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise SystemExit(f"--variant {spec!r}: {pair!r} is not key=value")
            settings[key.strip()] = value.strip()
        variants[name] = settings
    return variants


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="400,50000,500000", help="store sizes (customers)")
    parser.add_argument("--stores", default="sqlite,redis", help="Feast online stores")
    parser.add_argument("--draws", default="uniform,skewed", help="how the requested customer is drawn")
    parser.add_argument("--servers", default="storeflow,storeflow-uncached,kserve",
                        help="also: mlserver, bare (no model: the HTTP stack's ceiling)")
    parser.add_argument("--cells", default="", help="only these cells: size[/store[/draw]], comma-separated, "
                                                    "e.g. 400,50000,500000/redis/uniform")
    parser.add_argument("--concurrency", default="32")
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--think-ms", type=int, default=0, help="each connection waits this long between its "
                        "requests (storeflow rows): compares servers at about the same offered load, as the closed "
                        "loop (0) does not; p99 excludes the wait")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per storeflow row, servers alternating; "
                                                              "the row is their median")
    parser.add_argument("--requests", type=int, default=400_000,
                        help="drawn requests wrk cycles through; a server that sends more sees them again (200,000 "
                             "wrapped around in the last of five rounds at 500,000 customers, and the memo, rightly, "
                             "switched on for the repeat)")
    parser.add_argument("--work", default="/tmp/storeflow-bench-serving", help="stores are kept here and reused")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "serving.json"))
    parser.add_argument("--note", default="", help="said in the results (e.g. what ran beside the bench)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                        help="a storeflow server with these settings, e.g. storeflow-nomemo:serving.score_memo_rows=0 "
                             "(NAME starts with storeflow-; also list it in --servers)")
    parser.add_argument("--serve")
    parser.add_argument("--bench-dir")
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.serve:
        return serve_inline(args.serve, Path(args.bench_dir), args.port)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.variants = parse_variants(args.variant)
    ensure_wrk()
    import time

    root = Path(args.work)
    root.mkdir(parents=True, exist_ok=True)
    servers = args.servers.split(",")
    cells = set(filter(None, args.cells.split(",")))
    # what is measured, as the run starts (a commit made meanwhile is not what ran)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "components/*.py", "serving/*.py", "bench/*.py"],
                                cwd=ROOT, capture_output=True, text=True).stdout.strip())  # code, not results or docs
    machine = {"cpus": os.cpu_count(), "loadavg_at_start": machine_load()["loadavg"],
               "uptime_at_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    rows, stores_built, checks = [], {}, {}
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server(root)) if "redis" in args.stores.split(",") else None
        for size in (int(s) for s in args.sizes.split(",")):
            if not any(selected(cells, size, store, kind) for store in args.stores.split(",")
                       for kind in args.draws.split(",")):
                continue  # --cells asks for nothing at this size: not even its store is built
            work = root / f"c{size}"
            work.mkdir(exist_ok=True)
            print(f"building (or reusing) the {size}-customer store in {work} ...", flush=True)
            t0 = time.monotonic()
            data = build(work, size, export_rows=False)
            data["check_rows"] = online_rows(data["settings"], data["ids"][:: max(1, len(data["ids"]) // 50)][:50])
            stores_built[size] = {"customers_with_features": len(data["ids"]),
                                  "orders": data["settings"].ingest.synthetic.orders,
                                  "build_or_reuse_s": round(time.monotonic() - t0, 1)}
            for store in args.stores.split(","):
                if not any(selected(cells, size, store, kind) for kind in args.draws.split(",")):
                    continue
                seconds = use_online_store(data, store, redis)
                if seconds:
                    stores_built[size]["redis_materialize_s"] = round(seconds, 1)
                runs = []
                for kind in args.draws.split(","):
                    cell = {"customers": size, "online_store": store, "draw": kind}
                    if not selected(cells, size, store, kind):
                        continue
                    drawn = draw(data["ids"], kind, args.requests, seed=size)
                    cell_stats = {"distinct_customers_drawn": len(set(drawn))}
                    # Every customer's checkout has its own session token, as in a store.
                    tokens = {i: f"Bearer {session_token(i)}" for i in dict.fromkeys(drawn)}
                    requests = request_file(work / f"{store}-{kind}.requests", [v2_by_id(i) for i in drawn],
                                            [tokens[i] for i in drawn])
                    if args.think_ms:
                        cell_stats["think_ms"] = args.think_ms
                    runs.append(({**cell, **cell_stats},
                                 lua(requests, {"Content-Type": "application/json"}, work / f"{store}-{kind}.lua",
                                     args.think_ms)))
                paired = [name for name in servers if name.startswith("storeflow")]
                if paired and runs:
                    found = measure_paired(paired, work, runs, args, data)
                    rows += found
                    for name in paired:
                        checks[f"{name}/{size}/{store}"] = all(r.get("predictions_equal_registered_model")
                                                               for r in found if r["server"] == name)
            others = [n for n in servers if not n.startswith("storeflow")]
            if others:  # the feature row is in the request: the store's size and kind change nothing for them
                sample = draw(data["ids"], "uniform", 20_000, seed=size)
                features = online_rows(data["settings"], sorted(set(sample)))
                bodies = [v2_by_row(features[i]) for i in sample if i in features]
                requests = request_file(work / "by-row.requests", bodies)
                script = lua(requests, {"Content-Type": "application/json"}, work / "by-row.lua")
                bare = lua(request_file(work / "by-id.requests", [v2_by_id(i) for i in sample]),
                           {"Content-Type": "application/json"}, work / "by-id.lua")
                for name in others:
                    cell = {"customers": size, "online_store": None, "draw": "uniform"}
                    rows += measure(name, work, [(cell, bare if name == "bare" else script)], args)
    machine["loadavg_at_end"] = machine_load()["loadavg"]
    machine["uptime_at_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "commit": commit, "uncommitted_changes_in_measured_code": dirty, "rows": rows, "predictions_equal_registered_model": checks, "stores": stores_built, "machine": machine,
        "note": args.note, "duration_s": args.duration, "warmup_s": args.warmup,
        "requests_cycled": args.requests, "wall_s": round(time.monotonic() - started), "command": sys.argv[1:],
    }, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
