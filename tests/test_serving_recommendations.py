"""`storeflow serve-recommendations` over real HTTP on 127.0.0.1: the registered recommender answers V1 and V2
with product gids, never one from the basket, exactly what the registry's model recommends; bad baskets
are 400s; Shopify auth and the closed control routes are those of `storeflow serve`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
import yaml
from conftest import free_port

from storeflow.components.config import SyntheticStoreConfig, load_settings
from storeflow.components.ingest.bulk_jsonl import read_bulk_jsonl
from storeflow.components.ingest.synthetic import generate_store
from storeflow.components.recommend import ItemItem, evaluate_recommenders, fit_recommender
from storeflow.components.recommend.registry import register_recommender

pytestmark = pytest.mark.slow

CLIENT_ID = "recommend-client-id"
SECRET = "shpss_recommendations0123456789abcdef"
SHOP = "demo-store.myshopify.com"
NAME = "storeflow-recommendations"


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("recommendations")
    overrides = {"project": {"state_dir": str(root / "state"), "shop_domain": SHOP},
                 "recommendations": {"bootstrap_samples": 100},
                 "serving": {"shopify_client_id": CLIENT_ID}}
    settings = load_settings(overrides)
    tables = read_bulk_jsonl([generate_store(SyntheticStoreConfig(customers=1500, orders=15000, products=150),
                                             root / "store.jsonl")])
    cfg = settings.recommendations
    model_dir = fit_recommender(tables, cfg).save(root / "model")
    register_recommender(settings, model_dir, evaluate_recommenders(tables, cfg), tables)
    config = root / "storeflow.yaml"
    config.write_text(yaml.safe_dump(overrides))
    return config, ItemItem.load(model_dir)


def _start(config: Path, *extra: str):
    port = free_port()
    env = {**os.environ, "SHOPIFY_API_SECRET": SECRET}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "storeflow"), "serve-recommendations", "--config",
                             str(config), "--port", str(port), *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve-recommendations exited: {proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("serve-recommendations did not become ready in 120 s")


@pytest.fixture(scope="module")
def open_server(registered):
    proc, url = _start(registered[0], "--no-auth")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def authed_server(registered):
    proc, url = _start(registered[0])
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def _basket(model: ItemItem) -> list[int]:
    return [int(model.products[3]), int(model.products[17])]


def test_v1_answers_product_gids_the_registered_model_recommends(open_server, registered) -> None:
    _, model = registered
    basket = _basket(model)
    answer = httpx.post(f"{open_server}/v1/models/{NAME}:predict", json={"instances": [
        {"products": [f"gid://shopify/Product/{p}" for p in basket]}, {"products": [basket[0]], "k": 3}]})
    assert answer.status_code == 200, answer.text
    first, second = answer.json()["predictions"]
    assert first["products"] == [f"gid://shopify/Product/{p}" for p in model.recommend(basket, 10)]
    assert len(first["products"]) == 10 and not {f"gid://shopify/Product/{p}" for p in basket} & set(first["products"])
    assert len(second["products"]) == 3
    assert answer.headers["x-storeflow-model-version"] == "1"


def test_v2_answers_one_basket(open_server, registered) -> None:
    _, model = registered
    basket = _basket(model)
    answer = httpx.post(f"{open_server}/v2/models/{NAME}/infer", json={
        "inputs": [{"name": "products", "datatype": "BYTES", "shape": [2],
                    "data": [f"gid://shopify/Product/{p}" for p in basket]}], "parameters": {"k": 5}})
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert output["name"] == "products" and output["data"] == [
        f"gid://shopify/Product/{p}" for p in model.recommend(basket, 5)]


@pytest.mark.parametrize(("body", "says"), [
    ({"instances": [{"products": ["gid://shopify/Customer/1"]}]}, "is not a product id"),
    ({"instances": [{"products": []}]}, "must hold 1 to 250 products"),
    ({"instances": [{"products": [1], "k": 0}]}, "k must be an integer from 1 to 50"),
    ({"instances": [{"products": [1], "colour": "red"}]}, "unknown field(s): colour"),
    ({"instances": "nope"}, "expected {"),
])
def test_bad_baskets_are_400s_naming_the_problem(open_server, body, says) -> None:
    answer = httpx.post(f"{open_server}/v1/models/{NAME}:predict", json=body)
    assert answer.status_code == 400, answer.text
    assert says in answer.json()["error"] and answer.json()["code"]


def test_the_model_cannot_be_unloaded_from_outside(open_server) -> None:
    assert httpx.post(f"{open_server}/v2/repository/models/{NAME}/unload").status_code == 404
    assert httpx.get(f"{open_server}/v2/models/{NAME}/ready").status_code == 200


def test_shopify_auth_guards_recommendations(authed_server, registered) -> None:
    _, model = registered
    body = {"instances": [{"products": _basket(model)}]}
    assert httpx.post(f"{authed_server}/v1/models/{NAME}:predict", json=body).status_code == 401
    now = int(time.time())
    token = jwt.encode({"iss": f"https://{SHOP}/admin", "dest": f"https://{SHOP}", "aud": CLIENT_ID,
                        "sub": "gid://shopify/Customer/42", "exp": now + 300, "nbf": now, "iat": now, "jti": "r"},
                       SECRET, algorithm="HS256")
    answer = httpx.post(f"{authed_server}/v1/models/{NAME}:predict", json=body,
                        headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text


def test_the_cluster_container_serves_the_model_kserve_downloaded(registered, tmp_path) -> None:
    """`python -m storeflow.serving.recommender --model_name <isvc>` (the ServingRuntime's command in
    kustomize/components/recommendations) serves the files at --model_dir under the version the deploy step
    sets in STOREFLOW_MODEL_VERSION, with Shopify auth on: no credentials is 401, the version header is 7."""
    config, model = registered
    port = free_port()
    model_dir = tmp_path / "mnt-models"
    model.save(model_dir / "artifacts" / "model")  # where a pyfunc's artifacts land under /mnt/models
    env = {**os.environ, "SHOPIFY_API_SECRET": SECRET, "STOREFLOW_CONFIG": str(config), "STOREFLOW_MODEL_VERSION": "7"}
    proc = subprocess.Popen([sys.executable, "-m", "storeflow.serving.recommender", f"--model_name={NAME}",
                             "--model_dir", str(model_dir), "--http_port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        body = {"instances": [{"products": [int(model.products[3])], "k": 4}]}
        assert httpx.post(f"{url}/v1/models/{NAME}:predict", json=body).status_code == 401
        token = jwt.encode({"iss": f"https://{SHOP}/admin", "dest": f"https://{SHOP}", "aud": CLIENT_ID,
                            "sub": "1", "exp": int(time.time()) + 60, "nbf": int(time.time()) - 5,
                            "iat": int(time.time()), "jti": "x", "sid": "y"}, SECRET, algorithm="HS256")
        answer = httpx.post(f"{url}/v1/models/{NAME}:predict", json=body, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-storeflow-model-version"] == "7"
        assert answer.json()["predictions"][0]["products"] == [
            f"gid://shopify/Product/{p}" for p in model.recommend([int(model.products[3])], 4)]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
