"""`storeflow serve` end to end: a real registered model, a real Feast online store, a real KServe server
on 127.0.0.1, called with tritonclient (V2), kserve's InferenceRESTClient (V1/V2) and plain HTTP."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from conftest import free_port, quick_overrides, small_store, stop_process, write_snapshot
from storeflow.components.config import load_settings
from storeflow.serving.features import FALLBACK
from storeflow.serving.transformer import canary_bucket

pytestmark = pytest.mark.slow

MODEL = "storeflow-repeat-purchase"
CLIENT_ID = "storeflow-test-app"
SECRET = "shpss_test_0123456789abcdef0123456789abcdef"
SHOP = "demo-store.myshopify.com"
CANARY_PERCENT = 30


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A registered champion (v1) and challenger (v2), and a materialized online store."""
    from storeflow.components.evaluate import evaluate
    from storeflow.components.features import build_features
    from storeflow.components.register import register
    from storeflow.components.train import train

    root = tmp_path_factory.mktemp("serving")
    overrides = quick_overrides(root, serving={
        "shopify_client_id": CLIENT_ID, "allowed_shops": [SHOP], "canary_version": "2",
        "canary_percent": CANARY_PERCENT, "feature_refresh_seconds": 0.5})
    settings = load_settings(overrides)
    features = build_features(settings, write_snapshot(small_store(), root / "snapshot"))
    first = train(settings, features)
    register(settings, first, evaluate(settings, features, first))
    second = train(settings.model_copy(update={"train": settings.train.model_copy(
        update={"params": {"max_iter": 20, "random_state": 1}})}), features)
    register(settings, second, dataclasses.replace(evaluate(settings, features, second), promote=False))
    return root, overrides, settings


# The canary's model failing as a broken challenger would: every score of version 2 raises.
BROKEN_CANARY = ("from storeflow.serving.predictor import StoreflowPredictor; original = StoreflowPredictor.score; "
                 "StoreflowPredictor.score = lambda self, rows: (_ for _ in ()).throw(RuntimeError('broken challenger')) "
                 "if self.version == '2' else original(self, rows); ")


@pytest.fixture(scope="module")
def server(trained):
    yield from _serve(trained, "server")


@pytest.fixture(scope="module")
def broken_canary_server(trained):
    """The same champion and canary, the canary's model raising on every score."""
    yield from _serve(trained, "broken-canary", BROKEN_CANARY)


def _serve(trained, name: str, prelude: str = ""):
    root, overrides, _ = trained
    port = free_port()
    ready = root / f"{name}.ready"
    script = (prelude + "import json, sys; from storeflow.components.config import load_settings; "
              "from storeflow.serving.server import serve; "
              "serve(load_settings(json.loads(sys.argv[1])), port=int(sys.argv[2]), ready_file=sys.argv[3])")
    # Metrics files of a server that ran before, in the multiprocess directory this one inherits.
    stale = root / f"{name}-inherited-metrics"
    stale.mkdir()
    subprocess.run([sys.executable, "-c", "from prometheus_client import Counter; "
                    "Counter('storeflow_requests', '', ['model_version', 'status']).labels('99', '200').inc(7)"],
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(stale)}, check=True)
    assert list(stale.glob("*.db"))
    env = {**os.environ, "SHOPIFY_API_SECRET": SECRET, "PROMETHEUS_MULTIPROC_DIR": str(stale)}
    log = (root / f"{name}.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(overrides), str(port), str(ready)],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + (root / f"{name}.log").read_text()[-3000:])
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc, log)


def token(**claims) -> str:
    now = int(time.time())
    payload = {"iss": f"https://{SHOP}", "dest": f"https://{SHOP}", "aud": CLIENT_ID, "sub": "gid://shopify/Customer/1",
               "exp": now + 300, "nbf": now, "iat": now, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, SECRET, algorithm="HS256")  # None: absent


def admin_token(**claims) -> str:
    """An admin UI extension's token: staff may score any customer of the shop."""
    return token(iss=f"https://{SHOP}/admin", sub="7001", **claims)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_token()}"}


@pytest.fixture(scope="module")
def expected(trained):
    """Scores straight from the registered models on the online store's features."""
    import mlflow.sklearn

    from storeflow.components import tracking
    from storeflow.components.features.repo import feature_refs, feature_store

    _, _, settings = trained
    tracking.connect(settings)
    models = {v: mlflow.sklearn.load_model(f"models:/{MODEL}/{v}") for v in ("1", "2")}
    store = feature_store(settings)
    columns = settings.features.customer_features

    def score(customer_id: int, version: str) -> float:
        data = store.get_online_features(features=feature_refs(settings),
                                         entity_rows=[{"customer_id": customer_id}]).to_dict()
        row = [FALLBACK.get(c, 0.0) if data[c][0] is None else data[c][0] for c in columns]
        import pandas as pd

        return float(models[version].predict_proba(pd.DataFrame([row], columns=columns))[0, 1])

    return score


def version_for(customer_id: int) -> str:
    return "2" if canary_bucket(customer_id) < CANARY_PERCENT else "1"


def post(server, path, body=None, headers=None, content=None):
    headers = {"Content-Type": "application/json", **auth(), **(headers or {})}
    return httpx.post(f"http://{server}{path}", json=body, content=content, headers=headers, timeout=30)


# -- protocols ---------------------------------------------------------------------------------------------
def test_v2_tritonclient_binary_tensors_match_the_registered_model(server, expected):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server)
    ids = [3, 17, 42]
    tensor = triton.InferInput("customer_id", [3], "BYTES")
    tensor.set_data_from_numpy(np.array([f"gid://shopify/Customer/{i}".encode() for i in ids], dtype=np.object_))
    result = client.infer(MODEL, [tensor], headers=auth())
    scores = result.as_numpy("score")
    versions = [v.decode() for v in result.as_numpy("model_version")]
    assert versions == [version_for(i) for i in ids]
    assert scores == pytest.approx([expected(i, version_for(i)) for i in ids], abs=1e-6)
    assert not result.as_numpy("fallback").any()


def test_v2_tritonclient_pure_json(server, expected):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server)
    tensor = triton.InferInput("customer_id", [1], "INT64")
    tensor.set_data_from_numpy(np.array([5], dtype=np.int64), binary_data=False)
    out = triton.InferRequestedOutput("score", binary_data=False)
    result = client.infer(MODEL, [tensor], outputs=[out], headers={**auth(), "Content-Type": "application/json"})
    assert result.as_numpy("score")[0] == pytest.approx(expected(5, version_for(5)), abs=1e-6)
    assert result.get_response()["model_version"] == version_for(5)


def test_kserve_rest_client_v1_and_v2(server, expected):
    import asyncio

    from kserve import InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest

    async def call():
        v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30))
        v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            one = await v1.infer(f"http://{server}", {"instances": [
                {"customer_id": "gid://shopify/Customer/8", "cart": {"subtotal": 54.5, "item_count": 2}}]},
                model_name=MODEL, headers=auth())
            tensor = InferInput("customer_id", [1], "BYTES", ["8"])
            two = await v2.infer(f"http://{server}", InferRequest(MODEL, [tensor]), model_name=MODEL, headers=auth())
            return one, two
        finally:
            await v1.close()
            await v2.close()

    one, two = asyncio.run(call())
    answer = one["predictions"][0]
    assert answer["customer_id"] == "gid://shopify/Customer/8"
    assert answer["model_name"] == MODEL and answer["model_version"] == version_for(8)
    assert answer["score"] == pytest.approx(expected(8, version_for(8)), abs=1e-6)
    assert two.outputs[0].as_numpy()[0] == pytest.approx(answer["score"], abs=1e-9)


def test_v2_json_answers_say_they_are_json(server):
    """KServe drops the content type of answers it gets as bytes; clients that check it must see JSON."""
    response = post(server, f"/v2/models/{MODEL}/infer",
                    {"inputs": [{"name": "customer_id", "shape": [1], "datatype": "INT64", "data": [5]}]})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))


def test_unknown_customer_gets_the_fallback_row_and_a_flag(server, expected):
    response = post(server, f"/v1/models/{MODEL}:predict", {"instances": [{"customer_id": 987654321}]})
    assert response.status_code == 200
    answer = response.json()["predictions"][0]
    assert answer["fallback"] is True
    assert answer["score"] == pytest.approx(expected(987654321, answer["model_version"]), abs=1e-6)


def test_canary_split_is_sticky_per_customer_and_pinning_works(server):
    ids = list(range(1, 61))
    body = {"instances": [{"customer_id": i} for i in ids]}
    first = post(server, f"/v1/models/{MODEL}:predict", body).json()["predictions"]
    again = post(server, f"/v1/models/{MODEL}:predict", body).json()["predictions"]
    versions = [p["model_version"] for p in first]
    assert versions == [p["model_version"] for p in again] == [version_for(i) for i in ids]
    assert {"1", "2"} == set(versions)
    pinned = post(server, f"/v2/models/{MODEL}/versions/2/infer",
                  {"inputs": [{"name": "customer_id", "shape": [1], "datatype": "INT64", "data": [7]}]})
    assert pinned.status_code == 200 and pinned.json()["model_version"] == "2"
    assert pinned.headers["x-storeflow-model-version"] == "2"


def test_health_metadata_and_metrics(server):
    base = f"http://{server}"
    assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{base}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{base}/v1/models/{MODEL}").json()["ready"] is True
    meta = httpx.get(f"{base}/v2/models/{MODEL}").json()
    assert meta["name"] == MODEL and meta["inputs"][0]["name"] == "customer_id"
    post(server, f"/v1/models/{MODEL}:predict", {"instances": [{"customer_id": 3}]})
    httpx.post(f"{base}/v1/models/{MODEL}:predict", json={"instances": [{"customer_id": 3}]})  # no auth
    text = httpx.get(f"{base}/metrics").text
    assert f'storeflow_requests_total{{model_version="{version_for(3)}",status="200"}}' in text
    assert 'storeflow_requests_total{model_version="none",status="401"}' in text
    assert "storeflow_request_latency_seconds_bucket" in text
    assert "storeflow_feature_lookup_seconds_count" in text
    assert f'storeflow_prediction_score_bucket{{le="0.5",model_version="{version_for(3)}"}}' in text
    # Both served versions are trees, so both are scored by the compiled runtime (exactly, see above).
    assert 'storeflow_model_info{model_version="1",runtime="treelite"} 1.0' in text
    assert 'storeflow_model_info{model_version="2",runtime="treelite"} 1.0' in text
    assert 'model_version="99"' not in text  # another server's counts, left in the inherited metrics dir


def test_a_failing_canarys_errors_count_against_it_and_roll_it_back(trained, broken_canary_server):
    """An error answer carried no version, so every 500 counted as ``model_version="none"``: the canary checks
    (Prometheus's queries and the local canary's scrape select by version) saw a canary failing every request as
    flawless, and advanced it. Now the answer says which version failed it, and it counts against that version;
    a request two versions answered counts for each."""
    from storeflow.components.deploy.analysis import decide
    from storeflow.components.deploy.local_canary import scrape, version_metrics

    _, _, settings = trained
    server = broken_canary_server
    ids = list(range(1, 101))
    canary = [i for i in ids if version_for(i) == "2"]
    champion = [i for i in ids if version_for(i) == "1"]
    assert canary and champion
    for i in ids:
        answer = post(server, V1, {"instances": [{"customer_id": i}]})
        assert answer.status_code == (500 if i in canary else 200), answer.text
        assert answer.headers["x-storeflow-model-version"] == version_for(i)
    answer = post(server, V2, v2(("customer_id", [1], "INT64", [canary[0]])))  # the flat V2 path, then the stack
    assert answer.status_code == 500 and answer.json()["code"] == "inference_failed"
    assert answer.headers["x-storeflow-model-version"] == "2"
    mixed = post(server, V1, {"instances": [{"customer_id": canary[0]}, {"customer_id": champion[0]}]})
    assert mixed.status_code == 500 and sorted(mixed.headers["x-storeflow-model-version"].split(",")) == ["1", "2"]
    text = httpx.get(f"http://{server}/metrics").text
    assert 'model_version="1,2"' not in text and 'model_version="2,1"' not in text
    counts = scrape(text, settings.deploy.error_status_regex)
    assert counts["2"].requests == counts["2"].errors == len(canary) + 2
    assert (counts["1"].requests, counts["1"].errors) == (len(champion) + 1, 1)
    judged = settings.model_copy(update={"deploy": settings.deploy.model_copy(update={"min_requests": 20})})
    decision = decide(judged, settings.deploy.canary_steps[0], 0, version_metrics(counts["2"]),
                      version_metrics(counts["1"]))
    assert decision.action == "rollback", decision


def test_listens_on_loopback_only_by_default(server):
    port = int(server.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", port), timeout=2).close()


# -- auth and CORS -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer not-a-token"},
    {"Authorization": f"Bearer {jwt.encode({'aud': CLIENT_ID, 'dest': SHOP, 'exp': 2**31}, 'wrong-secret-0123456789abcdef0123', algorithm='HS256')}"},
    {"Authorization": f"Bearer {token(exp=int(time.time()) - 60)}"},
    {"Authorization": f"Bearer {token(dest='https://intruder.myshopify.com', iss='https://intruder.myshopify.com')}"},
    {"Authorization": f"Bearer {admin_token(exp=int(time.time()) - 60)}"},
    {"Authorization": f"Bearer {admin_token(aud='another-app')}"},
], ids=["none", "garbage", "bad-signature", "expired", "other-shop", "admin-expired", "admin-other-app"])
def test_requests_without_valid_shopify_credentials_get_401_json(server, headers):
    for path in (f"/v1/models/{MODEL}:predict", f"/v2/models/{MODEL}/infer"):
        response = httpx.post(f"http://{server}{path}", json={"instances": [{"customer_id": 1}]}, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"].startswith("unauthorized")


def _proxy_params(customer: str) -> dict[str, str]:
    import hashlib
    import hmac

    params = {"shop": SHOP, "logged_in_customer_id": customer, "path_prefix": "/apps/storeflow",
              "timestamp": str(int(time.time()))}
    message = "".join(f"{k}={v}" for k, v in sorted(params.items()))
    return {**params, "signature": hmac.new(SECRET.encode(), message.encode(), hashlib.sha256).hexdigest()}


def test_signed_app_proxy_request_is_served(server):
    params = _proxy_params("3")
    response = httpx.post(f"http://{server}/v1/models/{MODEL}:predict", params=params,
                          json={"instances": [{"customer_id": 3}]})
    assert response.status_code == 200, response.text
    params["logged_in_customer_id"] = "4"  # tampered: the signature no longer matches
    response = httpx.post(f"http://{server}/v1/models/{MODEL}:predict", params=params,
                          json={"instances": [{"customer_id": 3}]})
    assert response.status_code == 401


def test_storefront_callers_score_only_their_logged_in_customer(server):
    predict = f"http://{server}/v1/models/{MODEL}:predict"
    own = {"Authorization": f"Bearer {token(sub='gid://shopify/Customer/3')}"}
    ok = httpx.post(predict, json={"instances": [{"customer_id": "gid://shopify/Customer/3"}]}, headers=own)
    assert ok.status_code == 200, ok.text
    for ids in ([4], [3, 4]):
        refused = httpx.post(predict, json={"instances": [{"customer_id": i} for i in ids]}, headers=own)
        assert refused.status_code == 403
        assert refused.json()["error"] == ("forbidden: this storefront session may score only its logged-in "
                                           "customer 3, not 4")
    # A client cannot widen its scope by sending the internal header itself.
    forged = httpx.post(predict, json={"instances": [{"customer_id": 4}]},
                        headers={**own, "x-storeflow-customer": "4"})
    assert forged.status_code == 403
    guest = {"Authorization": f"Bearer {token(sub=None)}"}
    refused = httpx.post(predict, json={"instances": [{"customer_id": 3}]}, headers=guest)
    assert refused.status_code == 403 and "no logged-in customer" in refused.json()["error"]
    # App proxy: logged_in_customer_id is the customer; empty for a guest.
    assert httpx.post(predict, params=_proxy_params("3"), json={"instances": [{"customer_id": 4}]}).status_code == 403
    assert httpx.post(predict, params=_proxy_params(""), json={"instances": [{"customer_id": 3}]}).status_code == 403
    # Staff (admin UI extension) may score any customer of the shop, several at once.
    staff = httpx.post(predict, json={"instances": [{"customer_id": 3}, {"customer_id": 4}]}, headers=auth())
    assert staff.status_code == 200, staff.text
    text = httpx.get(f"http://{server}/metrics").text
    assert 'storeflow_requests_total{model_version="none",status="403"}' in text


def test_cors_allows_shopify_extensions_only(server):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    url = f"http://{server}/v1/models/{MODEL}:predict"
    ok = httpx.options(url, headers={"Origin": "https://extensions.shopifycdn.com", **preflight})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://extensions.shopifycdn.com"
    evil = httpx.options(url, headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in evil.headers
    real = post(server, f"/v1/models/{MODEL}:predict", {"instances": [{"customer_id": 1}]},
                headers={"Origin": "https://extensions.shopifycdn.com"})
    assert real.headers["access-control-allow-origin"] == "https://extensions.shopifycdn.com"


# -- bad input ---------------------------------------------------------------------------------------------
V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"


def v2(*inputs):
    return {"inputs": [dict(zip(("name", "shape", "datatype", "data"), i)) for i in inputs]}


BAD = [
    (V1, None, b"{not json", "request format"),
    (V1, {"instances": "gid://shopify/Customer/1"}, None, "instances"),
    (V1, {"instances": []}, None, "1 to 64"),
    (V1, {"instances": [{"customer_id": i} for i in range(1, 70)]}, None, "1 to 64"),
    (V1, {"instances": [{"customer_id": "gid://shopify/Product/1"}]}, None, "customer_id"),
    (V1, {"instances": [{"customer_id": -4}]}, None, "out of range"),
    (V1, {"instances": [{"customer_id": 2**70}]}, None, "customer_id"),
    (V1, {"instances": [{"customer": 1}]}, None, "unknown field"),
    (V1, {"instances": [{"customer_id": 1, "cart": {"subtotal": "NaN"}}]}, None, "subtotal"),
    (V1, None, b'{"instances": [{"customer_id": 1, "cart": {"subtotal": NaN}}]}', ""),
    (V1, None, b'{"instances": [{"customer_id": 1, "cart": {"subtotal": 1e999}}]}', ""),
    (V1, {"instances": [{"customer_id": 1, "cart": {"item_count": 1.5}}]}, None, "item_count"),
    (V2, v2(("customer_id", [2], "BYTES", ["1"])), None, ""),
    (V2, v2(("customer_id", [1, 2], "INT64", [1, 2])), None, "shape"),
    (V2, v2(("customer_id", [1], "FP64", [1.5])), None, "customer_id"),
    (V2, v2(("customer_id", [1], "INT64", [1]), ("cart_subtotal", [1], "FP64", ["inf"])), None, ""),
    (V2, v2(("customer_id", [1], "INT64", [1]), ("cart_subtotal", [2], "FP64", [1.0, 2.0])), None, ""),
    (V2, v2(("features", [1, 9], "FP64", [0.0] * 9)), None, "unknown input"),
    # numpy's cast made these customer 1, a count of 2 and a subtotal of 1.0, answered 200
    (V2, v2(("customer_id", [1], "INT64", [1.7])), None, "INT64, but holds 1.7"),
    (V2, v2(("customer_id", [1], "INT64", [True])), None, "INT64, but holds True"),
    (V2, v2(("customer_id", [1], "INT64", [1]), ("cart_item_count", [1], "INT64", [2.9])), None, "cart_item_count"),
    (V2, v2(("customer_id", [1], "INT64", [1]), ("cart_subtotal", [1], "FP64", ["1"])), None, "cart_subtotal"),
    (V2, {"inputs": "x"}, None, ""),
    (V2, None, b"\x00\x01binary", ""),
    (f"/v2/models/{MODEL}/versions/99/infer", v2(("customer_id", [1], "INT64", [1])), None, "version 99"),
    ("/v2/models/no-such-model/infer", v2(("customer_id", [1], "INT64", [1])), None, "no-such-model"),
    ("/v1/models/no-such-model:predict", {"instances": [{"customer_id": 1}]}, None, "no-such-model"),
    (V1, None, b'{"instances": [' + b'{"customer_id": 1},' * 5000 + b"{}]}", "larger than"),
]


@pytest.mark.parametrize(("path", "body", "raw", "says"), BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_input_gets_a_4xx_json_naming_the_problem(server, path, body, raw, says):
    response = post(server, path, body, content=raw)
    assert 400 <= response.status_code < 500, response.text
    assert says.lower() in json.dumps(response.json()).lower()
    assert post(server, V1, {"instances": [{"customer_id": 1}]}).status_code == 200


def test_binary_v2_header_lies_get_4xx(server):
    headers = {"Inference-Header-Content-Length": "500", "Content-Type": "application/octet-stream"}
    response = post(server, V2, content=b'{"inputs": []}', headers=headers)
    assert 400 <= response.status_code < 500


def test_a_binary_bytes_element_that_is_not_utf8_is_a_400_not_a_500(server):
    """KServe's decoder raised InferenceError for it, which is our 500 (a server fault a canary counts)."""
    header = b'{"inputs":[{"name":"customer_id","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":6}}]}'
    response = post(server, V2, content=header + b"\x02\x00\x00\x00\xff\xfe",
                    headers={"Content-Type": "application/octet-stream",
                             "Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "bad_request" and "UTF-8" in response.json()["error"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20)
instance = st.fixed_dictionaries({}, optional={
    "customer_id": st.integers() | st.text(max_size=40) | st.just("gid://shopify/Customer/3") | json_values,
    "cart": json_values | st.fixed_dictionaries({}, optional={"subtotal": json_values, "item_count": json_values}),
})
tensor = st.fixed_dictionaries({
    "name": st.sampled_from(["customer_id", "cart_subtotal", "cart_item_count", "x"]),
    "shape": st.lists(st.integers(-2, 70), max_size=3),
    "datatype": st.sampled_from(["BYTES", "INT64", "FP64", "FP32", "BOOL", "UINT8", "nope"]),
    "data": json_values,
})
bodies = st.one_of(
    st.tuples(st.just(V1), st.fixed_dictionaries({"instances": st.lists(instance, max_size=5) | json_values})),
    st.tuples(st.just(V2), st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=3)},
                                                 optional={"parameters": json_values, "outputs": json_values})),
    st.tuples(st.sampled_from([V1, V2]), json_values),
)


@hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=bodies, raw=st.binary(max_size=64))
def test_fuzzed_requests_never_get_5xx(server, case, raw):
    path, body = case
    response = post(server, path, body)
    assert response.status_code < 500, response.text
    response.json()
    garbled = post(server, path, content=raw)
    assert garbled.status_code < 500, garbled.text


# -- prediction log ----------------------------------------------------------------------------------------
def test_every_answer_is_in_the_prediction_log(trained, server):
    root, _, settings = trained
    (answer,) = post(server, V1, {"instances": [{"customer_id": 11, "cart": {"subtotal": 20.0, "item_count": 1}}]}
                     ).json()["predictions"]
    deadline = time.monotonic() + 30
    records = []
    while time.monotonic() < deadline:
        records = [json.loads(line) for f in sorted((root / "state" / "predictions").glob("*.jsonl"))
                   for line in f.read_text().splitlines() if line]
        if any(r["customer_id"] == 11 and r["cart"] for r in records):
            break
        time.sleep(0.2)
    record = next(r for r in records if r["customer_id"] == 11 and r["cart"])
    assert record["cart"] == {"subtotal": 20.0, "item_count": 1}
    # spend as the answer said it, so monitoring can judge spend like the score (issue 14)
    assert (record["expected_spend"], record["spend_tier"]) == (answer["expected_spend"], answer["spend_tier"])
    assert record["model_version"] == version_for(11)
    assert list(record["features"]) == settings.features.customer_features
    assert 0 <= record["score"] <= 1 and record["ts"].endswith("+00:00")


def _logged(root: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((root / "state" / "predictions").glob("*.jsonl"))
            for line in f.read_text().splitlines() if line]


@pytest.mark.parametrize("outputs", [[{"name": "no_such_output"}], [{"name": "score"}] * 3],
                         ids=["unknown", "repeated"])
def test_a_refused_v2_request_leaves_nothing_in_the_prediction_log(trained, server, outputs):
    """KServe refuses an unknown output name only when it serializes the answer, after the scores were logged
    and counted: each refused request left its customers' predictions in the log (twice on the flat V2 path,
    which replays a failed request through the stack), feeding drift monitoring rows nobody was answered with.
    A repeated name made the answer that many times larger. Both are 400s before anything is logged."""
    root = trained[0]
    refused = [880_001, 880_002, 880_003]
    body = {**v2(("customer_id", [3], "INT64", refused)), "outputs": outputs}
    for origin in ({}, {"Origin": f"https://{SHOP}"}):  # the flat V2 path, and the middleware stack
        answer = post(server, V2, body, headers=origin)
        assert answer.status_code == 400, answer.text
        assert outputs[0]["name"] in answer.json()["error"]
    post(server, V1, {"instances": [{"customer_id": 880_004}]})  # logged after them, so the log has caught up
    deadline = time.monotonic() + 30
    while not any(r["customer_id"] == 880_004 for r in _logged(root)):
        assert time.monotonic() < deadline, "the answered request never reached the prediction log"
        time.sleep(0.2)
    assert not [r for r in _logged(root) if r["customer_id"] in refused]


def test_the_documented_command_line_serves(trained, expected) -> None:
    """`storeflow serve --config FILE --no-auth --port P`, exactly as the README shows it."""
    import yaml

    root, overrides, _ = trained
    config = root / "serve-cli.yaml"
    config.write_text(yaml.safe_dump({**overrides, "serving": {**overrides["serving"], "canary_percent": 0}}))
    port = free_port()
    log = (root / "serve-cli.log").open("w")
    cli = Path(sys.executable).with_name("storeflow")
    proc = subprocess.Popen([str(cli), "serve", "--config", str(config), "--no-auth", "--port", str(port)],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("serve did not start:\n" + (root / "serve-cli.log").read_text()[-3000:])
            time.sleep(0.3)
        customer = int(small_store()["orders"]["customer_id"].iloc[0])
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/models/{MODEL}:predict", timeout=30,
                            json={"instances": [{"customer_id": f"gid://shopify/Customer/{customer}"}]}).json()
        prediction = answer["predictions"][0]
        assert prediction["model_version"] == "1"  # no credentials needed: --no-auth
        assert prediction["score"] == pytest.approx(expected(customer, "1"), abs=1e-6)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
