"""`storeflow serve` against hostile input, as the CLI starts it: no control routes, no 5xx from anything
a caller sends, shops isolated, one error shape, one JSON log line per error (none per success unless
``serving.request_log``). The cluster containers get the same checks in tests/test_serving_cluster.py."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote_from_bytes

import httpx
import jwt
import pytest
import yaml
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from conftest import free_port, quick_overrides, small_store, stop_process, write_snapshot
from storeflow.components.config import load_settings

pytestmark = pytest.mark.slow

MODEL = "storeflow-repeat-purchase"
CLIENT_ID = "storeflow-hardening-app"
SECRET = "shpss_hardening_0123456789abcdef0123456789ab"
SHOP = "demo-store.myshopify.com"  # project.shop_domain: the shop whose data is served
OTHER = "other-store.myshopify.com"  # also allowed to call, owns none of the data here
V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"
CONTROL = [("POST", f"/v2/repository/models/{MODEL}/unload"), ("POST", f"/v2/repository/models/{MODEL}/load"),
           ("POST", "/v2/repository/index"), ("GET", "/openapi.json"), ("GET", "/docs")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from storeflow.components.evaluate import evaluate
    from storeflow.components.features import build_features
    from storeflow.components.register import register
    from storeflow.components.train import train

    root = tmp_path_factory.mktemp("hardening")
    overrides = quick_overrides(root, serving={"shopify_client_id": CLIENT_ID, "allowed_shops": [SHOP, OTHER]})
    settings = load_settings(overrides)
    features = build_features(settings, write_snapshot(small_store(), root / "snapshot"))
    model = train(settings, features)
    register(settings, model, evaluate(settings, features, model))
    return root, overrides


def _serve(root: Path, overrides: dict, name: str, **serving):
    """`storeflow serve --config FILE --port P`, as the README shows it, its output in ``<name>.log``."""
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump({**overrides, "serving": {**overrides["serving"], **serving}}))
    port = free_port()
    log_path = root / f"{name}.log"
    log = log_path.open("w")
    cli = Path(sys.executable).with_name("storeflow")
    proc = subprocess.Popen([str(cli), "serve", "--config", str(config), "--port", str(port)], cwd=root,
                            env={**os.environ, "SHOPIFY_API_SECRET": SECRET}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return f"127.0.0.1:{port}", proc, log, log_path
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{name} did not start:\n" + log_path.read_text()[-3000:])
        time.sleep(0.3)


@pytest.fixture(scope="module")
def served(trained):
    root, overrides = trained
    address, proc, log, log_path = _serve(root, overrides, "serve")
    yield address, log_path
    stop_process(proc, log)


@pytest.fixture(scope="module")
def server(served):
    return served[0]


def token(shop: str = SHOP, admin: bool = True, sub: str | None = "7001") -> str:
    now = int(time.time())
    claims = {"iss": f"https://{shop}" + ("/admin" if admin else ""), "dest": f"https://{shop}", "aud": CLIENT_ID,
              "sub": sub, "exp": now + 300, "nbf": now}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, SECRET, algorithm="HS256")


def staff(shop: str = SHOP) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(shop)}"}


def proxy_query(shop: str, customer: str, signature: str | None = None) -> str:
    import hashlib
    import hmac

    params = {"shop": shop, "logged_in_customer_id": customer, "path_prefix": "/apps/storeflow",
              "timestamp": str(int(time.time()))}
    message = "".join(f"{k}={v}" for k, v in sorted(params.items()))
    signature = signature or hmac.new(SECRET.encode(), message.encode(), hashlib.sha256).hexdigest()
    return "&".join(f"{k}={v}" for k, v in params.items()) + f"&signature={signature}"


def score(server: str, customer: int = 3, headers: dict | None = None, query: str = "") -> httpx.Response:
    return httpx.post(f"http://{server}{V1}" + (f"?{query}" if query else ""),
                      json={"instances": [{"customer_id": customer}]}, headers=headers or {}, timeout=30)


def assert_error_shape(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "code"} and all(isinstance(v, str) and v for v in body.values()), body
    if code is not None:
        assert body["code"] == code, body
    return body


# -- item 1: control routes --------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path"), CONTROL, ids=[p for _, p in CONTROL])
def test_control_routes_are_not_served_and_the_model_keeps_answering(server, method, path):
    for headers in ({}, staff()):  # not even for a valid caller: nothing here needs them
        response = httpx.request(method, f"http://{server}{path}", headers=headers, timeout=30)
        assert_error_shape(response, 404, "not_found")
    assert score(server, headers=staff()).status_code == 200
    assert httpx.get(f"http://{server}/v2/models/{MODEL}/ready").json()["ready"] is True


def test_health_metadata_and_metrics_stay(server):
    base = f"http://{server}"
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/ready",
                 f"/v1/models/{MODEL}", "/v2/models", "/v1/models", "/v2", "/metrics"):
        assert httpx.get(base + path).status_code == 200, path


# -- item 2: untrusted input never reaches a 500 -----------------------------------------------------------
@pytest.mark.parametrize("path", [V1, V2])
def test_a_body_nested_1000_deep_is_a_400(server, path):
    key = "instances" if path == V1 else "inputs"
    deep = f'{{"{key}": '.encode() + b"[" * 1000 + b"]" * 1000 + b"}"
    response = httpx.post(f"http://{server}{path}", content=deep, timeout=30,
                          headers={**staff(), "content-type": "application/json"})
    assert_error_shape(response, 400)


@pytest.mark.parametrize("signature", ["%C3%A9", "%FF", "%E2%82%AC" * 20])
def test_a_non_ascii_app_proxy_signature_is_a_401(server, signature):
    response = score(server, query=proxy_query(SHOP, "3", signature))
    assert_error_shape(response, 401, "malformed_credentials")


def test_a_host_header_that_is_no_host_is_a_401(server):
    response = score(server, headers={"host": "[::1"}, query=proxy_query(SHOP, "3", "ab"))
    assert_error_shape(response, 401, "malformed_credentials")


# -- item 7: shops are isolated ----------------------------------------------------------------------------
def test_callers_from_another_allowed_shop_get_none_of_this_shops_scores(server):
    """Both shops may call; the data is SHOP's: OTHER's staff, checkout and app proxy callers get 403."""
    callers = {"admin": {"headers": staff(OTHER)},
               "checkout": {"headers": {"Authorization": f"Bearer {token(OTHER, admin=False, sub='gid://shopify/Customer/3')}"}},
               "app proxy": {"query": proxy_query(OTHER, "3")}}
    for name, how in callers.items():
        body = assert_error_shape(score(server, 3, **how), 403, "other_shop")
        assert OTHER in body["error"] and SHOP in body["error"], name
    # The same kinds of caller from the served shop are answered.
    assert score(server, 3, headers=staff()).status_code == 200
    own = {"Authorization": f"Bearer {token(SHOP, admin=False, sub='gid://shopify/Customer/3')}"}
    assert score(server, 3, headers=own).status_code == 200
    assert score(server, 3, query=proxy_query(SHOP, "3")).status_code == 200


# -- item 9: one error shape, one log line -----------------------------------------------------------------
ERRORS = [
    ("bad-json", 400, lambda s: httpx.post(f"http://{s}{V1}", content=b"{nope", headers={**staff(), "content-type": "application/json"})),
    ("bad-customer", 400, lambda s: httpx.post(f"http://{s}{V1}", json={"instances": [{"customer_id": "x"}]}, headers=staff())),
    ("bad-tensor", 400, lambda s: httpx.post(f"http://{s}{V2}", json={"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]}, headers=staff())),
    ("no-credentials", 401, lambda s: httpx.post(f"http://{s}{V1}", json={"instances": [1]})),
    ("other-customer", 403, lambda s: score(s, 4, headers={"Authorization": f"Bearer {token(admin=False, sub='gid://shopify/Customer/3')}"})),
    ("other-shop", 403, lambda s: score(s, 3, headers=staff(OTHER))),
    ("no-route", 404, lambda s: httpx.get(f"http://{s}/nope")),
    ("no-model", 404, lambda s: httpx.post(f"http://{s}/v1/models/nope:predict", json={"instances": [1]}, headers=staff())),
    ("no-version", 404, lambda s: httpx.post(f"http://{s}/v2/models/{MODEL}/versions/9/infer", json={}, headers=staff())),
    ("method", 405, lambda s: httpx.delete(f"http://{s}/v2/models/{MODEL}")),
    ("too-big", 413, lambda s: httpx.post(f"http://{s}{V1}", content=b" " * 70_000, headers=staff())),
    ("not-the-protocol", 422, lambda s: httpx.post(f"http://{s}{V2}", json={"inputs": "x"}, headers=staff())),
    ("no-explainer", 501, lambda s: httpx.post(f"http://{s}/v1/models/{MODEL}:explain", json={"instances": [1]}, headers=staff())),
]


@pytest.mark.parametrize(("status", "call"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_every_error_status_answers_the_one_shape(server, status, call):
    assert_error_shape(call(server), status)


def _new_lines(log_path: Path, offset: int, marker: str) -> list[str]:
    """Lines written after ``offset``, once one of them carries ``marker`` (the server writes it after answering)."""
    deadline = time.monotonic() + 20
    while True:
        text = log_path.read_bytes()[offset:].decode()
        if marker in text or time.monotonic() > deadline:
            return text.splitlines()
        time.sleep(0.05)


def test_a_bad_request_is_one_json_log_line_without_a_traceback(served):
    """The bad request's one line, and none for a success. Lines are picked by request id: an earlier
    test's answer (a 501 logged at ERROR) can reach its client before the server writes its line, so
    "every line after the offset" raced with it (CI, 2026-12-05)."""
    server, log_path = served
    offset = log_path.stat().st_size
    good_id, bad_id = uuid.uuid4().hex, uuid.uuid4().hex
    assert score(server, headers={**staff(), "x-request-id": good_id}).status_code == 200
    bad = httpx.post(f"http://{server}{V1}", json={"instances": [{"customer_id": "x"}]},
                     headers={**staff(), "x-request-id": bad_id}, timeout=30)
    assert bad.status_code == 400
    written = _new_lines(log_path, offset, bad_id)
    assert not [line for line in written if good_id in line]  # a success writes nothing (request_log off)
    lines = [line for line in written if bad_id in line]
    assert len(lines) == 1, lines
    line = json.loads(lines[0])
    assert line["level"] == "WARNING" and "exc_info" not in line and "Traceback" not in lines[0]
    assert (line["status"], line["code"], line["path"], line["request_id"]) == (400, "bad_request", V1, bad_id)
    assert "customer_id" in line["error"] and line["duration_ms"] > 0


def test_request_logs_are_json_lines_with_path_status_version_and_duration(trained):
    root, overrides = trained
    address, proc, log, log_path = _serve(root, overrides, "serve-request-log", request_log=True)
    try:
        offset = log_path.stat().st_size
        request_id = uuid.uuid4().hex
        assert score(address, headers={**staff(), "x-request-id": request_id}).status_code == 200
        lines = [json.loads(line) for line in _new_lines(log_path, offset, request_id)]
    finally:
        stop_process(proc, log)
    [line] = [line for line in lines if line.get("request_id") == request_id]
    assert (line["level"], line["method"], line["path"], line["status"], line["model_version"]) == (
        "INFO", "POST", V1, 200, "1")
    assert line["duration_ms"] > 0 and "code" not in line


# -- hypothesis: headers and query strings of unauthenticated callers --------------------------------------
header_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=80).map(str.strip)
segment = st.binary(max_size=30).map(lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode())
authorization = st.one_of(header_text, header_text.map("Bearer {}".format),
                          st.lists(segment, min_size=1, max_size=4).map(lambda s: "Bearer " + ".".join(s))
                          ).map(str.strip)  # HTTP itself has no leading or trailing blanks in a value
query_value = st.one_of(header_text.map(lambda t: quote_from_bytes(t.encode())), st.binary(max_size=20).map(quote_from_bytes))
query = st.lists(st.tuples(st.one_of(st.sampled_from(["signature", "shop", "timestamp", "logged_in_customer_id"]),
                                     query_value), query_value), max_size=5)


@hsettings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=authorization, pairs=query, path=st.sampled_from([V1, V2]))
def test_fuzzed_credentials_never_get_5xx_and_always_the_one_shape(server, value, pairs, path):
    qs = "&".join(f"{k}={v}" for k, v in [*pairs, ("signature", "x")])
    for headers in ({"Authorization": value.encode()}, {}):
        response = httpx.post(f"http://{server}{path}?{qs}", json={"instances": [{"customer_id": 3}]},
                              headers=headers, timeout=30)
        assert response.status_code in (401, 403), response.text
        assert_error_shape(response, response.status_code)


def test_a_client_that_hangs_up_mid_body_is_no_server_error_in_the_log(served):
    """A caller gone before its body arrived got no answer: its line says 499 (nginx's "client closed
    request") at WARNING, not a 500 at ERROR, which would page someone for a dropped connection."""
    import socket

    server, log_path = served
    host, port = server.split(":")
    offset = log_path.stat().st_size
    request_id = uuid.uuid4().hex
    head = (f"POST {V1} HTTP/1.1\r\nhost: {server}\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n"
            f"authorization: Bearer {token()}\r\nx-request-id: {request_id}\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + b'{"instances": [')
        time.sleep(0.3)
    lines = [line for line in _new_lines(log_path, offset, request_id) if request_id in line]
    assert len(lines) == 1, lines
    line = json.loads(lines[0])
    assert (line["level"], line["status"], line["code"]) == ("WARNING", 499, "client_closed_request"), line
    assert score(server, headers=staff()).status_code == 200


def test_serving_a_version_whose_model_files_are_gone_is_one_line_naming_where(settings) -> None:
    """The champion's files deleted (a pruned artifact store), storeflow serve died in a 74-line traceback saying
    its own download folder was 'not an MLflow model directory'."""
    import shutil
    from urllib.parse import urlparse

    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from typer.testing import CliRunner

    from storeflow.components import tracking
    from storeflow.pipelines.cli import app

    client, name = tracking.connect(settings), settings.registry.model_name
    with mlflow.start_run(experiment_id=tracking.experiment_id(settings, client)):
        info = mlflow.sklearn.log_model(LogisticRegression().fit(np.array([[0.0], [1.0]]), [0, 1]), name="model")
    version = str(mlflow.register_model(info.model_uri, name).version)
    client.set_registered_model_alias(name, tracking.CHAMPION, version)
    where = client.get_model_version_download_uri(name, version)
    shutil.rmtree(urlparse(where).path)
    result = CliRunner().invoke(app, ["serve", "--no-auth", "--set", f"project.state_dir={settings.project.state_dir}"],
                                env={"COLUMNS": "1000"})
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1] == f"{name} v{version}'s model could not be fetched from {where}: no MLmodel file there"
