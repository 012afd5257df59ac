"""Serving benchmark: storeflow vs a stock KServe model vs MLServer vs a bare ASGI app, side by side.

Same registered model (trained by the real stages on a 400-customer synthetic store), single-row V2
requests, wrk at concurrency 1, 8 and 32 (15 s each), 2 workers per server, all on 127.0.0.1. storeflow
answers with a Feast lookup + Shopify auth (each customer's checkout sends its own session token); the
others get the feature row in the request. wrk cycles through ~400 customers, so after the warm-up
storeflow's in-memory caches (features, verified tokens, scores by feature row) answer most requests:
the steady state of a store whose customers come back within a minute, not a cold start. The row
``storeflow-uncached`` is the same server with the feature cache and the score memo off: every request
reads Feast's online store and calls the model (only verified session tokens stay cached).
Writes ``bench/results/serving.json``:
``{"rows": [{"server", "concurrency", "rps", "p50_ms", "p99_ms", "non_2xx"}], "check": {...}}``.

    .venv/bin/python bench/serving.py [--duration 15] [--only storeflow,kserve]

MLServer lives in its own venv (``bench/.venv-mlserver``, created on first run; kserve 0.21 and
MLServer 1.7 cannot share one). The machine is shared: run it when nothing else needs both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import CLIENT_ID, MODEL, SECRET, SHOP, free_port, serve_command, session_token, stop, wait_ready

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
MLSERVER_VENV = ROOT / "bench" / ".venv-mlserver"
CONCURRENCY = (1, 8, 32)


# -- model and data ----------------------------------------------------------------------------------------
def build(work: Path) -> dict:
    """Register a model (default training params) on a small synthetic store; export what others need.

    The real stages (synthetic ingest → features → train → evaluate → register), nothing from tests/.
    """
    from storeflow.components.config import load_settings
    from storeflow.components.evaluate import evaluate
    from storeflow.components.features import build_features
    from storeflow.components.features.repo import feature_refs, feature_store
    from storeflow.components.ingest import ingest
    from storeflow.components.register import register
    from storeflow.components.train import train

    overrides = {"project": {"state_dir": str(work / "state")},
                 "ingest": {"source": "synthetic", "synthetic": {"customers": 400, "orders": 4000, "days": 400}},
                 "features": {"label": {"horizon_days": 60, "cutoff_every_days": 30, "min_history_days": 60}},
                 "evaluate": {"bootstrap_samples": 100},
                 "serving": {"shopify_client_id": CLIENT_ID, "allowed_shops": [SHOP]}}
    settings = load_settings(overrides)
    snapshot = ingest(settings).snapshot
    features = build_features(settings, snapshot)
    trained = train(settings, features)
    register(settings, trained, evaluate(settings, features, trained))
    import pandas as pd

    from storeflow.components.tables import table_path

    customer_ids = sorted(int(i) for i in pd.read_parquet(table_path(snapshot, "customers"))["customer_id"])

    import joblib
    import mlflow.sklearn

    estimator = mlflow.sklearn.load_model(trained.model_uri)
    joblib.dump(estimator, work / "model.joblib")
    columns = list(settings.features.customer_features)
    ids = customer_ids
    data = feature_store(settings).get_online_features(
        features=feature_refs(settings), entity_rows=[{"customer_id": i} for i in ids]).to_dict()
    known = [i for n, i in enumerate(ids) if data[columns[0]][n] is not None]
    position = {i: n for n, i in enumerate(ids)}
    rows = {i: [float(data[c][position[i]]) for c in columns] for i in known}
    (work / "config.yaml").write_text(json.dumps(overrides))
    return {"settings": settings, "estimator": estimator, "rows": rows, "columns": columns}


# -- servers -----------------------------------------------------------------------------------------------
def start(name: str, work: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (work / f"{name}.log").open("w")
    if name.startswith("storeflow"):
        env["SHOPIFY_API_SECRET"] = SECRET
        cmd = serve_command(work, port)
        if name == "storeflow-uncached":
            cmd += ["--set", "serving.score_memo_rows=0", "--set", "serving.feature_cache_seconds=0"]
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
    import numpy as np
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
def lua(bodies: list[bytes], headers: dict[str, str], path: Path, per_body: list[dict[str, str]] | None = None) -> Path:
    """A wrk script cycling through ``bodies``; ``per_body`` adds headers to each (e.g. its own session token)."""
    items = ",\n".join("[[" + b.decode() + "]]" for b in bodies)
    extra = ",\n".join("{" + ", ".join(f'["{k}"] = "{v}"' for k, v in h.items()) + "}" for h in per_body or [])
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    # Every request is formatted once per wrk thread, in init(): the load generator shares the two
    # cores with the server, so its per-request work must not count against any server.
    path.write_text(f"""wrk.method = "POST"
{header_lines}
local bodies = {{
{items}
}}
local extra = {{
{extra}
}}
local prepared = {{}}
local n = 0
function init(args)
  for i, body in ipairs(bodies) do
    local headers = {{}}
    for k, v in pairs(wrk.headers) do headers[k] = v end
    for k, v in pairs(extra[i] or {{}}) do headers[k] = v end
    prepared[i] = wrk.format(nil, nil, headers, body)
  end
end
request = function()
  n = n + 1
  return prepared[(n % #prepared) + 1]
end
""")
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


def wrk(url: str, script: Path, connections: int, duration: int) -> dict:
    out = subprocess.run(["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": round(rps, 1), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def check_predictions(port: int, data: dict) -> dict:
    """storeflow's answers against the registered model on the same features (tolerance 1e-6)."""
    import numpy as np
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    ids = sorted(data["rows"])[:50]
    tensor = triton.InferInput("customer_id", [len(ids)], "BYTES")
    tensor.set_data_from_numpy(np.array([f"gid://shopify/Customer/{i}".encode() for i in ids], dtype=np.object_))
    served = client.infer(MODEL, [tensor], headers={"Authorization": f"Bearer {session_token()}"}).as_numpy("score")
    import pandas as pd

    frame = pd.DataFrame([data["rows"][i] for i in ids], columns=data["columns"])
    expected = data["estimator"].predict_proba(frame)[:, 1]
    diff = float(np.max(np.abs(served - expected)))
    return {"customers": len(ids), "max_abs_diff": diff, "equal_1e-6": diff <= 1e-6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--only", default="storeflow,storeflow-uncached,kserve,mlserver,bare")
    parser.add_argument("--serve")
    parser.add_argument("--bench-dir")
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.serve:
        return serve_inline(args.serve, Path(args.bench_dir), args.port)

    ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="storeflow-bench-"))
    print(f"building the model in {work} ...", flush=True)
    data = build(work)
    ids = sorted(data["rows"])
    v2 = f"/v2/models/{MODEL}/infer"
    by_id = [json.dumps({"inputs": [{"name": "customer_id", "shape": [1], "datatype": "BYTES",
                                     "data": [f"gid://shopify/Customer/{i}"]}]}).encode() for i in ids]
    by_row = [json.dumps({"inputs": [{"name": "features", "shape": [1, len(data["columns"])], "datatype": "FP64",
                                      "data": data["rows"][i]}]}).encode() for i in ids]
    rows, check = [], None
    for name in args.only.split(","):
        port = free_port()
        headers = {"Content-Type": "application/json"}
        # Every customer's checkout has its own session token, as in a store.
        storeflow = name.startswith("storeflow")
        tokens = [{"Authorization": f"Bearer {session_token(i)}"} for i in ids] if storeflow else None
        script = lua(by_id if storeflow or name == "bare" else by_row, headers, work / f"{name}.lua", tokens)
        health = f"http://127.0.0.1:{port}" + ("/" if name == "bare" else "/v2/health/ready")
        print(f"starting {name} ...", flush=True)
        proc = start(name, work, port)
        try:
            wait_ready(proc, health)
            url = f"http://127.0.0.1:{port}{v2}"
            wrk(url, script, 8, 2)  # warm-up: caches, JIT-free paths, connections
            if storeflow:
                check = {**(check or {}), name: check_predictions(port, data)}
            for c in CONCURRENCY:
                result = {"server": name, "concurrency": c, **wrk(url, script, c, args.duration)}
                print(json.dumps(result), flush=True)
                rows.append(result)
        except Exception as exc:  # noqa: BLE001 - one server failing must not lose the others' rows
            print(f"{name} failed: {exc}; see {work / (name + '.log')}", flush=True)
            rows.append({"server": name, "error": str(exc)[:300]})
        finally:
            stop(proc)
    out = ROOT / "bench" / "results" / "serving.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and args.only != parser.get_default("only"):  # a partial run keeps the other servers' rows
        ran = set(args.only.split(","))
        rows = [r for r in json.loads(out.read_text())["rows"] if r["server"] not in ran] + rows
        earlier = json.loads(out.read_text()).get("check") or {}
        check = {**(earlier if "max_abs_diff" not in earlier else {"storeflow": earlier}), **(check or {})}
    out.write_text(json.dumps({"rows": rows, "check": check, "duration_s": args.duration,
                               "cpus": os.cpu_count()}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
