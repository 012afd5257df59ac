"""The recommender's container answers a storefront's V1 request on its flat path (serving.recommender.FlatV1:
auth, KServe's DataPlane and response, request metrics, in one ASGI call) exactly as its middleware stack
does, and leaves every request it should not answer to the stack: a CORS request, bad credentials, a bad
body. Real HTTP on 127.0.0.1 against ``python -m storeflow.serving.recommender``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import jwt
import numpy as np
import pytest
import yaml
from conftest import free_port
from scipy import sparse

from storeflow.components.recommend.model import ItemItem

pytestmark = pytest.mark.slow

CLIENT_ID = "flat-client-id"
SECRET = "shpss_flat0123456789abcdef0123456789"
SHOP = "demo-store.myshopify.com"
NAME = "storeflow-recommendations"


def _token() -> str:
    now = int(time.time())
    return jwt.encode({"iss": f"https://{SHOP}/admin", "dest": f"https://{SHOP}", "aud": CLIENT_ID, "sub": "1",
                       "exp": now + 600, "nbf": now - 5, "iat": now, "jti": "x", "sid": "y"}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("flat")
    ids = np.arange(1000, 1060, dtype=np.int64)
    bought = sparse.random(400, len(ids), density=0.08, random_state=2, format="csr")
    bought.data[:] = 1
    model = ItemItem.fit(bought, ids, neighbours=20)
    model.save(root / "mnt-models" / "artifacts" / "model")
    config = root / "storeflow.yaml"
    config.write_text(yaml.safe_dump({"project": {"state_dir": str(root / "state"), "shop_domain": SHOP},
                                      "serving": {"shopify_client_id": CLIENT_ID,
                                                  "cors_origins": [f"https://{SHOP}"]}}))
    port = free_port()
    env = {**os.environ, "SHOPIFY_API_SECRET": SECRET, "STOREFLOW_CONFIG": str(config), "STOREFLOW_MODEL_VERSION": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "storeflow.serving.recommender", f"--model_name={NAME}",
                             "--model_dir", str(root / "mnt-models"), "--http_port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the recommender did not become ready in 120 s"
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    yield url, model
    proc.terminate()
    proc.wait(timeout=20)


def _answered(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(r'^storeflow_requests_total\{model_version="3",status="200"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_the_flat_path_answers_what_the_stack_answers(server):
    url, model = server
    basket = [int(model.products[4]), int(model.products[9]), 5]  # 5: a product the model does not know
    body = {"instances": [{"products": [f"gid://shopify/Product/{p}" for p in basket], "k": 6},
                          {"products": [int(model.products[0])]}]}
    auth = {"Authorization": f"Bearer {_token()}"}
    before = _answered(url)
    flat = httpx.post(f"{url}/v1/models/{NAME}:predict", json=body, headers=auth)
    stacked = httpx.post(f"{url}/v1/models/{NAME}:predict", json=body,  # an Origin: CORS, the stack's
                         headers={**auth, "Origin": f"https://{SHOP}"})
    assert flat.status_code == stacked.status_code == 200, (flat.text, stacked.text)
    assert stacked.headers["access-control-allow-origin"] == f"https://{SHOP}"
    assert flat.headers["x-storeflow-model-version"] == stacked.headers["x-storeflow-model-version"] == "3"
    assert flat.headers["content-type"] == stacked.headers["content-type"] == "application/json"
    one, other = flat.json(), stacked.json()
    assert re.fullmatch(r"[0-9a-f]{32}", one.pop("request_id")) and re.fullmatch(r"[0-9a-f]{32}", other.pop("request_id"))
    assert one == other
    assert [p["products"] for p in one["predictions"]] == [
        [f"gid://shopify/Product/{p}" for p in model.recommend(basket, 6)],
        [f"gid://shopify/Product/{p}" for p in model.recommend([int(model.products[0])], 10)]]
    assert _answered(url) - before == 2  # both counted in the request metrics


@pytest.mark.parametrize("headers, body, status, code", [
    ({"Authorization": "Bearer not-a-token"}, {"instances": [{"products": [1000]}]}, 401, "invalid_id_token"),
    ({}, {"instances": [{"products": [1000]}]}, 401, "missing_credentials"),
    (None, {"instances": [{"products": [1000], "k": 0}]}, 400, None),
    (None, {"instances": [{"products": ["gid://shopify/Order/1"]}]}, 400, None),
])
def test_what_the_flat_path_does_not_answer_the_stack_answers_as_before(server, headers, body, status, code):
    url, _ = server
    answer = httpx.post(f"{url}/v1/models/{NAME}:predict", json=body,
                        headers={"Authorization": f"Bearer {_token()}"} if headers is None else headers)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error", "code"}
    if code:
        assert answer.json()["code"] == code
    assert status != 400 or ("k must be" in answer.json()["error"] or "is not a product id" in answer.json()["error"])


def test_a_malformed_body_is_the_stacks_400(server):
    url, _ = server
    answer = httpx.post(f"{url}/v1/models/{NAME}:predict", content=b'{"instances": [',
                        headers={"Authorization": f"Bearer {_token()}", "Content-Type": "application/json"})
    assert answer.status_code == 400 and set(answer.json()) == {"error", "code"}, answer.text


def test_v2_answers_say_their_version_and_count_under_it(server):
    """A V2 answer of the recommender carried no version header (the route dropped the headers KServe set), so
    every V2 request counted as ``model_version="none"`` and the recommender's canary checks ignored V2 traffic.
    An ``outputs`` entry naming no output is a 400 before anything is served."""
    url, model = server
    body = {"inputs": [{"name": "products", "shape": [1], "datatype": "INT64", "data": [int(model.products[3])]}]}
    auth = {"Authorization": f"Bearer {_token()}"}
    before = _answered(url)
    for headers in (auth, {**auth, "Origin": f"https://{SHOP}"}):  # the flat V2 path, and the stack
        answer = httpx.post(f"{url}/v2/models/{NAME}/infer", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-storeflow-model-version"] == "3"
        assert answer.json()["outputs"][0]["name"] == "products"
    assert _answered(url) - before == 2
    refused = httpx.post(f"{url}/v2/models/{NAME}/infer", json={**body, "outputs": [{"name": "scores"}]},
                         headers=auth)
    assert refused.status_code == 400 and "'scores'" in refused.json()["error"], refused.text


@pytest.mark.parametrize("data", [[1000.5], [True]])
def test_a_v2_int64_product_that_is_not_an_integer_is_a_400(server, data):
    """numpy's cast made 1000.5 (or true) product 1000 (or 1), answered with that product's neighbours."""
    url, _ = server
    answer = httpx.post(f"{url}/v2/models/{NAME}/infer", headers={"Authorization": f"Bearer {_token()}"},
                        json={"inputs": [{"name": "products", "shape": [1], "datatype": "INT64", "data": data}]})
    assert answer.status_code == 400 and "INT64, but holds" in answer.json()["error"], answer.text
