"""The flat V2 route (:class:`storeflow.serving.http.FlatV2`): a plain, authorized V2 infer request is
answered by KServe's own model call without the middleware stack, with the stack's answer; anything
else is the stack's to answer, with its body replayed."""

from __future__ import annotations

import asyncio
import time

import httpx
import jwt
import orjson
import pytest
from kserve import Model
from kserve.errors import InvalidInput
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from starlette.applications import Starlette

from storeflow.components.shopify.verify import ShopifyVerifier
from storeflow.serving.auth import ShopifyAuthMiddleware
from storeflow.serving.http import BodyLimitMiddleware, FlatV2, error_handlers, v2_infer_route
from storeflow.serving.routes import is_inference

CLIENT_ID, SECRET, SHOP = "flat-test-app", "shpss_flat_0123456789abcdef0123456789abcdef", "flat-shop.myshopify.com"
PATH = "/v2/models/doubler/infer"


class Doubler(Model):
    """A KServe model answering bytes, as storeflow's transformer does; it records what it was given."""

    def __init__(self):
        super().__init__("doubler", return_response_headers=True)
        self.calls: list[dict] = []
        self.ready = True

    async def predict(self, payload, headers=None, response_headers=None):
        self.calls.append(dict(headers or {}))
        values = payload.inputs[0].data
        if any(v < 0 for v in values):
            raise InvalidInput("values must not be negative")
        response_headers["x-storeflow-model-version"] = "7"
        return orjson.dumps({"outputs": [{"name": "twice", "data": [2 * v for v in values]}]})


class Counted:
    """The stack behind FlatV2, counting the requests that reach it."""

    def __init__(self, app):
        self.app, self.requests = app, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.requests += 1
        await self.app(scope, receive, send)


def token(**claims) -> str:
    now = int(time.time())
    payload = {"iss": f"https://{SHOP}", "dest": f"https://{SHOP}", "aud": CLIENT_ID, "sub": "gid://shopify/Customer/4",
               "exp": now + 300, "nbf": now, "iat": now, **claims}
    return "Bearer " + jwt.encode(payload, SECRET, algorithm="HS256")


@pytest.fixture()
def served():
    model = Doubler()
    repository = ModelRepository()
    repository.update(model)
    dataplane = DataPlane(repository)
    routes = Starlette(exception_handlers=error_handlers())
    routes.add_route(PATH.replace("doubler", "{model_name}"), v2_infer_route(dataplane), methods=["POST"])
    verifier = ShopifyVerifier(CLIENT_ID, SECRET, [SHOP])
    stack = Counted(BodyLimitMiddleware(ShopifyAuthMiddleware(routes, verifier, is_inference, SHOP), 4096,
                                        is_inference))
    flat = FlatV2(stack, dataplane, 4096, auth=ShopifyAuthMiddleware(None, verifier, is_inference, SHOP))
    return model, stack, flat


def call(app, body: bytes, **headers) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.post(PATH, content=body, headers={"content-type": "application/json", **headers})

    return asyncio.run(go())


def infer(*values) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "shape": [len(values)], "datatype": "FP64", "data": list(values)}]})


def test_a_plain_authorized_request_is_answered_without_the_stack_as_the_stack_answers_it(served):
    model, stack, flat = served
    auth = token()
    answer = call(flat, infer(1.5, 2.0), authorization=auth)
    assert stack.requests == 0
    through_stack = call(stack, infer(1.5, 2.0), authorization=auth)
    assert stack.requests == 1
    assert answer.status_code == through_stack.status_code == 200
    assert answer.content == through_stack.content == b'{"outputs":[{"name":"twice","data":[3.0,4.0]}]}'
    assert dict(answer.headers) == dict(through_stack.headers)
    assert answer.headers["x-storeflow-model-version"] == "7"
    # The model was told the same: the verified shop and the one customer this session may score.
    assert model.calls[0] == model.calls[1]
    assert model.calls[0]["x-storeflow-shop"] == SHOP
    assert model.calls[0]["x-storeflow-customer"] == "gid://shopify/Customer/4"


def test_a_client_cannot_say_who_it_is_through_the_flat_route(served):
    model, _, flat = served
    call(flat, infer(1.0), authorization=token(), **{"x-storeflow-customer": "gid://shopify/Customer/99"})
    assert model.calls[-1]["x-storeflow-customer"] == "gid://shopify/Customer/4"


OTHER_SHOP = {"dest": "https://other.myshopify.com", "iss": "https://other.myshopify.com"}


@pytest.mark.parametrize("body, claims, status", [
    (infer(1.0), None, 401),  # no credentials
    (infer(1.0), "nonsense", 401),
    (infer(1.0), OTHER_SHOP, 401),
    (b'{"inputs": [', {}, 422),  # not JSON
    (b'{"inputs": 3}', {}, 422),  # not a V2 request
    (infer(-1.0), {}, 400),  # the model refuses it
    (b"x" * 5000, {}, 413),  # over the body limit
], ids=["no-credentials", "garbage-token", "other-shop", "not-json", "not-v2", "model-refuses", "too-large"])
def test_anything_but_a_200_is_answered_by_the_stack_from_the_replayed_body(served, body, claims, status):
    _, stack, flat = served
    headers = {} if claims is None else {"authorization": "Bearer nonsense" if claims == "nonsense" else token(**claims)}
    answer = call(flat, body, **headers)
    assert stack.requests == 1
    assert answer.status_code == status
    assert set(answer.json()) == {"error", "code"}


def test_cross_origin_and_binary_requests_go_down_the_stack(served):
    _, stack, flat = served
    assert call(flat, infer(1.0), authorization=token(), origin="https://extensions.shopifycdn.com").status_code == 200
    assert stack.requests == 1
    call(flat, infer(1.0), authorization=token(), **{"inference-header-content-length": "10"})
    assert stack.requests == 2
