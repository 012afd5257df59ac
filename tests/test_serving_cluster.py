"""The cluster's serving split, on loopback: the InferenceService's predictor and transformer containers,
each started with the command its spec gives it (ServingRuntime ``storeflow-predictor``, the deploy
stage's ``transformer_spec``), the transformer reaching the predictor over HTTP through
``--predictor_host`` as KServe wires it. No cluster is involved: the two processes run here."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import numpy as np
import pytest
import yaml

from conftest import free_port, quick_overrides, small_store, stop_process, write_snapshot
from storeflow.components.config import load_settings
from storeflow.serving.features import FALLBACK

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
MODEL = "storeflow-repeat-purchase"
CLIENT_ID = "storeflow-cluster-test"
SECRET = "shpss_cluster_0123456789abcdef0123456789abcdef"
SHOP = "demo-store.myshopify.com"  # project.shop_domain: the shop whose data is served
OTHER = "other-store.myshopify.com"  # allowed to call too, owns none of the data here
KNOWN = [3, 17, 42]
UNKNOWN = 987654321


def admin_token(shop: str = SHOP) -> str:
    now = int(time.time())
    return jwt.encode({"iss": f"https://{shop}/admin", "dest": f"https://{shop}", "aud": CLIENT_ID, "sub": "7001",
                       "exp": now + 300, "nbf": now, "iat": now}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Version 1 registered, its MLflow model directory downloaded (what the storage initializer does),
    the online store materialized, and the config file the containers read through STOREFLOW_CONFIG."""
    import mlflow

    from storeflow.components import tracking
    from storeflow.components.evaluate import evaluate
    from storeflow.components.features import build_features
    from storeflow.components.register import register
    from storeflow.components.train import train

    root = tmp_path_factory.mktemp("cluster")
    overrides = quick_overrides(root, serving={"shopify_client_id": CLIENT_ID, "allowed_shops": [SHOP, OTHER]})
    settings = load_settings(overrides)
    features = build_features(settings, write_snapshot(small_store(), root / "snapshot"))
    trained = train(settings, features)
    version = register(settings, trained, evaluate(settings, features, trained)).version
    tracking.connect(settings)
    model_dir = root / "mnt-models"
    mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL}/{version}", dst_path=str(model_dir))
    config = root / "storeflow.yaml"
    config.write_text(yaml.safe_dump(overrides))
    return root, settings, str(version), model_dir, config


def _start(cmd: list[str], root: Path, name: str, port: int, env: dict[str, str]):
    log = (root / f"{name}.log").open("w")
    # Each container has its own /tmp: no Prometheus multiprocess directory inherited from this process.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")} | env
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{name} did not start:\n" + (root / f"{name}.log").read_text()[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                return proc, log
        except httpx.HTTPError:
            pass
        time.sleep(0.3)


@pytest.fixture(scope="module")
def predictor(registered):
    """``kserve-container`` of the ServingRuntime, with the env the deploy stage's predictor spec sets."""
    from storeflow.components.deploy.inference_service import ModelVersionRef, predictor_spec

    root, settings, version, model_dir, _ = registered
    runtime = yaml.safe_load((ROOT / "kustomize" / "base" / "serving-runtime.yaml").read_text())
    container = runtime["spec"]["containers"][0]
    ref = ModelVersionRef(name=MODEL, version=version, storage_uri="s3://mlflow/models/1")
    env = {e["name"]: e["value"] for e in predictor_spec(settings, ref)["model"]["env"]}
    port = free_port()
    args = [a.replace("{{.Name}}", MODEL) for a in container["args"]]
    cmd = [sys.executable, *container["command"][1:], *args, "--model_dir", str(model_dir), "--http_port", str(port)]
    proc, log = _start(cmd, root, "predictor", port, env)
    yield f"127.0.0.1:{port}"
    stop_process(proc, log)


def _start_transformer(registered, predictor_host: str, name: str, *extra: str):
    """The transformer container as ``transformer_spec`` runs it, its predictor host pointed at ``predictor_host``."""
    from storeflow.components.deploy.inference_service import transformer_spec

    root, settings, _, _, config = registered
    container = transformer_spec(settings)["containers"][0]
    args = list(container["args"])
    args[args.index("--predictor_host") + 1] = predictor_host
    port = free_port()
    cmd = [sys.executable, *container["command"][1:], *args, "--http_port", str(port), *extra]
    env = {"STOREFLOW_CONFIG": str(config), "SHOPIFY_API_SECRET": SECRET}
    proc, log = _start(cmd, root, name, port, env)
    return f"127.0.0.1:{port}", proc, log


@pytest.fixture(scope="module", params=["v2", "v1"])
def transformer(request, registered, predictor):
    extra = ["--predictor_protocol", "v1"] if request.param == "v1" else []
    address, proc, log = _start_transformer(registered, predictor, f"transformer-{request.param}", *extra)
    yield address
    stop_process(proc, log)


@pytest.fixture(scope="module")
def expected(registered):
    """Scores straight from the registered model on the online store's features."""
    import mlflow.sklearn
    import pandas as pd

    from storeflow.components import tracking
    from storeflow.components.features.repo import feature_refs, feature_store

    _, settings, version, _, _ = registered
    tracking.connect(settings)
    model = mlflow.sklearn.load_model(f"models:/{MODEL}/{version}")
    columns = settings.features.customer_features
    ids = [*KNOWN, UNKNOWN]
    data = feature_store(settings).get_online_features(
        features=feature_refs(settings), entity_rows=[{"customer_id": i} for i in ids]).to_dict()
    rows = [[FALLBACK.get(c, 0.0) if data[c][n] is None else data[c][n] for c in columns] for n in range(len(ids))]
    scores = model.predict_proba(pd.DataFrame(rows, columns=columns))[:, 1]
    return dict(zip(ids, scores.tolist()))


@pytest.fixture(scope="module")
def expected_spend(registered):
    """Expected spend (to the cent) and tier per customer from the spend model registered with the version."""
    import pandas as pd

    from storeflow.components import tracking
    from storeflow.components.features.repo import feature_refs, feature_store
    from storeflow.components.train import load_spend_model
    from storeflow.components.train.spend import spend_tiers

    _, settings, version, _, _ = registered
    tracking.connect(settings)
    model, cuts = load_spend_model(f"models:/{MODEL}/{version}")
    columns = settings.features.customer_features
    ids = [*KNOWN, UNKNOWN]
    data = feature_store(settings).get_online_features(
        features=feature_refs(settings), entity_rows=[{"customer_id": i} for i in ids]).to_dict()
    rows = [[FALLBACK.get(c, 0.0) if data[c][n] is None else data[c][n] for c in columns] for n in range(len(ids))]
    spend = model.predict(pd.DataFrame(rows, columns=columns))
    return {i: (round(float(s), 2), t) for i, s, t in zip(ids, spend, spend_tiers(spend, cuts))}


def test_scores_through_the_transformer_equal_the_registered_model(transformer, registered, expected, expected_spend):
    import tritonclient.http as triton

    version = registered[2]
    ids = [*KNOWN, UNKNOWN]
    tensor = triton.InferInput("customer_id", [len(ids)], "BYTES")
    tensor.set_data_from_numpy(np.array([f"gid://shopify/Customer/{i}".encode() for i in ids], dtype=np.object_))
    result = triton.InferenceServerClient(transformer).infer(
        MODEL, [tensor], headers={"Authorization": f"Bearer {admin_token()}"})
    assert result.as_numpy("score") == pytest.approx([expected[i] for i in ids], abs=1e-6)
    assert result.as_numpy("fallback").tolist() == [False, False, False, True]
    assert [v.decode() for v in result.as_numpy("model_version")] == [version] * len(ids)
    # The spend model travels in the version's directory: the predictor computes it, the transformer passes it on.
    assert result.as_numpy("expected_spend").tolist() == pytest.approx([expected_spend[i][0] for i in ids], abs=0.011)
    assert [t.decode() for t in result.as_numpy("spend_tier")] == [expected_spend[i][1] for i in ids]


def test_v1_answers_name_the_predictors_version_and_carry_only_our_headers(transformer, registered, expected,
                                                                          expected_spend):
    response = httpx.post(f"http://{transformer}/v1/models/{MODEL}:predict",
                          json={"instances": [{"customer_id": f"gid://shopify/Customer/{KNOWN[0]}"}]},
                          headers={"Authorization": f"Bearer {admin_token()}"}, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()["predictions"][0]
    assert answer["model_version"] == registered[2] and answer["fallback"] is False
    assert answer["score"] == pytest.approx(expected[KNOWN[0]], abs=1e-6)
    assert answer["expected_spend"] == pytest.approx(expected_spend[KNOWN[0]][0], abs=0.011)
    assert answer["spend_tier"] == expected_spend[KNOWN[0]][1]
    assert response.headers["x-storeflow-model-version"] == registered[2]
    # The predictor's own date/server/content-* headers must not be copied into the transformer's answer.
    assert [k for k, _ in response.headers.raw].count(b"date") == 1
    assert response.headers["content-length"] == str(len(response.content))


def test_the_transformer_labels_its_metrics_with_the_answering_version(transformer, registered):
    """Canary analysis tells champion and canary apart by this label, read from the transformer."""
    httpx.post(f"http://{transformer}/v1/models/{MODEL}:predict", json={"instances": [{"customer_id": KNOWN[1]}]},
               headers={"Authorization": f"Bearer {admin_token()}"}, timeout=30).raise_for_status()
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"http://{transformer}/metrics").text)}
    answered = {s.labels["model_version"] for s in families["storeflow_requests"].samples
                if s.name == "storeflow_requests_total" and s.labels["status"] == "200" and s.value > 0}
    assert answered == {registered[2]}


def test_a_checkout_session_scores_only_its_own_customer_on_the_cluster_too(transformer):
    now = int(time.time())
    checkout = jwt.encode({"iss": f"https://{SHOP}", "dest": f"https://{SHOP}", "aud": CLIENT_ID,
                           "sub": f"gid://shopify/Customer/{KNOWN[0]}", "exp": now + 300, "nbf": now, "iat": now},
                          SECRET, algorithm="HS256")
    url = f"http://{transformer}/v1/models/{MODEL}:predict"
    headers = {"Authorization": f"Bearer {checkout}"}
    own = httpx.post(url, json={"instances": [{"customer_id": KNOWN[0]}]}, headers=headers, timeout=30)
    assert own.status_code == 200, own.text
    other = httpx.post(url, json={"instances": [{"customer_id": KNOWN[1]}]}, headers=headers, timeout=30)
    assert other.status_code == 403 and "only its logged-in customer" in other.json()["error"]


def test_the_transformer_still_wants_shopify_credentials(transformer):
    response = httpx.post(f"http://{transformer}/v1/models/{MODEL}:predict",
                          json={"instances": [{"customer_id": KNOWN[0]}]}, timeout=30)
    assert response.status_code == 401 and response.json()["code"] == "missing_credentials"


def test_the_predictor_scores_feature_rows_and_rejects_bad_ones(predictor, registered, expected):
    _, settings, version, _, _ = registered
    width = len(settings.features.customer_features)
    url = f"http://{predictor}/v2/models/{MODEL}/infer"
    fallback = [FALLBACK.get(c, 0.0) for c in settings.features.customer_features]
    good = httpx.post(url, json={"inputs": [{"name": "features", "shape": [1, width], "datatype": "FP64",
                                             "data": fallback}]}, timeout=30)
    assert good.status_code == 200, good.text
    assert good.json()["model_version"] == version == good.headers["x-storeflow-model-version"]
    assert good.json()["outputs"][0]["data"][0] == pytest.approx(expected[UNKNOWN], abs=1e-6)
    bad = httpx.post(url, json={"inputs": [{"name": "features", "shape": [1, width - 1], "datatype": "FP64",
                                            "data": fallback[:-1]}]}, timeout=30)
    assert 400 <= bad.status_code < 500 and f"[n, {width}]" in bad.text


def test_a_transformer_whose_predictor_is_down_says_so_with_a_503(registered):
    """Down or restarting (nothing listens on its port): retryable, and the answer names the predictor."""
    nobody = f"127.0.0.1:{free_port()}"
    address, proc, log = _start_transformer(registered, nobody, "transformer-orphan")
    try:
        response = httpx.post(f"http://{address}/v1/models/{MODEL}:predict",
                              json={"instances": [{"customer_id": KNOWN[0]}]},
                              headers={"Authorization": f"Bearer {admin_token()}"}, timeout=30)
    finally:
        stop_process(proc, log)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert f"predictor {nobody} is unavailable" in response.json()["error"]
    assert response.json()["code"] == "predictor_unavailable" and set(response.json()) == {"error", "code"}


# -- hardening: the same checks as tests/test_serving_hardening.py, on both containers ----------------------
CONTROL = [f"/v2/repository/models/{MODEL}/unload", f"/v2/repository/models/{MODEL}/load", "/v2/repository/index"]


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "code"} and all(isinstance(v, str) and v for v in body.values()), body
    assert code is None or body["code"] == code, body
    return body


def _features_request(settings, rows: int = 1) -> dict:
    width = len(settings.features.customer_features)
    return {"inputs": [{"name": "features", "shape": [rows, width], "datatype": "FP64",
                        "data": [FALLBACK.get(c, 0.0) for c in settings.features.customer_features] * rows}]}


def test_control_routes_are_off_on_both_containers(predictor, transformer, registered):
    settings = registered[1]
    for address in (predictor, transformer):
        for path in CONTROL:
            _error(httpx.post(f"http://{address}{path}", timeout=30), 404, "not_found")
        assert httpx.get(f"http://{address}/openapi.json").status_code == 404
        assert httpx.get(f"http://{address}/v2/models/{MODEL}/ready").json()["ready"] is True
    assert httpx.post(f"http://{predictor}/v2/models/{MODEL}/infer", json=_features_request(settings),
                      timeout=30).status_code == 200
    assert httpx.post(f"http://{transformer}/v1/models/{MODEL}:predict", json={"instances": [KNOWN[0]]}, timeout=30,
                      headers={"Authorization": f"Bearer {admin_token()}"}).status_code == 200


def test_bodies_nested_1000_deep_are_400s_on_both_containers(predictor, transformer):
    deep = b'{"inputs": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    headers = {"content-type": "application/json", "Authorization": f"Bearer {admin_token()}"}
    for address in (predictor, transformer):
        _error(httpx.post(f"http://{address}/v2/models/{MODEL}/infer", content=deep, headers=headers, timeout=30), 400)


def test_another_allowed_shop_gets_403_from_the_transformer(transformer):
    response = httpx.post(f"http://{transformer}/v1/models/{MODEL}:predict", json={"instances": [KNOWN[0]]},
                          headers={"Authorization": f"Bearer {admin_token(OTHER)}"}, timeout=30)
    assert OTHER in _error(response, 403, "other_shop")["error"]


def test_error_answers_of_both_containers_have_the_one_shape(predictor, transformer, registered):
    settings = registered[1]
    bad_rows = {"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP64", "data": [0.0, 1.0]}]}
    _error(httpx.post(f"http://{predictor}/v2/models/{MODEL}/infer", json=bad_rows, timeout=30), 400)
    _error(httpx.post(f"http://{predictor}/v1/models/{MODEL}:predict", json={"instances": "x"}, timeout=30), 400)
    _error(httpx.post(f"http://{predictor}/v2/models/nope/infer", json=_features_request(settings), timeout=30), 404)
    _error(httpx.post(f"http://{predictor}/v2/models/{MODEL}/infer", json={"inputs": "x"}, timeout=30), 422)
    _error(httpx.delete(f"http://{predictor}/v2/models/{MODEL}"), 405)
    admin = {"Authorization": f"Bearer {admin_token()}"}
    _error(httpx.post(f"http://{transformer}/v1/models/{MODEL}:predict", json={"instances": ["x"]}, headers=admin,
                      timeout=30), 400)
    _error(httpx.post(f"http://{transformer}/v1/models/{MODEL}:predict", json={"instances": [1]}, timeout=30), 401)
    _error(httpx.post(f"http://{transformer}/v2/models/{MODEL}/versions/1/infer", json={}, headers=admin,
                      timeout=30), 404, "version_not_served")
    _error(httpx.post(f"http://{transformer}/v1/models/{MODEL}:predict", content=b" " * 70_000, headers=admin,
                      timeout=30), 413, "body_too_large")


def _lines_after(path: Path, offset: int, marker: str) -> list[str]:
    deadline = time.monotonic() + 20
    while True:
        text = path.read_bytes()[offset:].decode()
        if marker in text or time.monotonic() > deadline:
            return text.splitlines()
        time.sleep(0.05)


def test_a_bad_request_is_one_json_log_line_on_each_container(predictor, transformer, registered, request):
    import json
    import uuid

    root, settings = registered[0], registered[1]
    logs = {predictor: root / "predictor.log", transformer: root / f"transformer-{request.node.callspec.params['transformer']}.log"}
    bad = {predictor: ("/v2/models/{m}/infer", {"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP64",
                                                            "data": [0.0, 1.0]}]}),
           transformer: ("/v1/models/{m}:predict", {"instances": ["x"]})}
    for address, log in logs.items():
        offset, request_id = log.stat().st_size, uuid.uuid4().hex
        path, body = bad[address]
        response = httpx.post(f"http://{address}{path.format(m=MODEL)}", json=body, timeout=30,
                              headers={"x-request-id": request_id, "Authorization": f"Bearer {admin_token()}"})
        assert response.status_code == 400
        lines = _lines_after(log, offset, request_id)
        assert len(lines) == 1, lines
        line = json.loads(lines[0])
        assert (line["status"], line["request_id"], line["level"]) == (400, request_id, "WARNING")
        assert "exc_info" not in line and "Traceback" not in lines[0]
