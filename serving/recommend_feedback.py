"""Impressions and clicks of recommendations, posted back by the storefront block and the checkout
extension (``POST /v1/feedback``, through the app proxy or with a session token, verified like inference),
logged beside the recommendations they answer and counted per model version on ``/metrics``.

Every recommendation answer carries a ``request_id`` and is logged (``<state_dir>/recommendations/
predictions``: request id, model version, basket, products shown); every feedback event is logged
(``.../feedback``) with the request id it names, which is how :mod:`storeflow.components.recommend.feedback`
joins them (an event naming no logged answer, or another version than the one that answered, is left out
there). Neither log holds a customer id. Metrics (names are a contract):

* ``storeflow_recommendation_impressions_total{model_version}``: lists of recommendations shown;
* ``storeflow_recommendation_clicks_total{model_version}``: products clicked or added from them;
* ``storeflow_recommendation_ctr{model_version}``: clicks / impressions of this process since it started
  (across replicas: ``sum by (model_version) (rate(clicks)) / sum by (model_version) (rate(impressions))``).

``model_version`` is the version the event names if this server serves it, else ``unknown``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import orjson
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from storeflow.serving.errors import error_response
from storeflow.serving.predlog import PredictionLog, now_iso

PATH = "/v1/feedback"
MAX_BODY = 16 * 1024
IMPRESSIONS = Counter("storeflow_recommendation_impressions", "Lists of recommendations shown.", ["model_version"])
CLICKS = Counter("storeflow_recommendation_clicks", "Recommended products clicked or added.", ["model_version"])
CTR = Gauge("storeflow_recommendation_ctr", "Clicks per impression of this process since start.", ["model_version"],
            multiprocess_mode="liveall")

ProductGid = Annotated[str, Field(pattern=r"^gid://shopify/Product/[0-9]{1,19}$")]


class Feedback(BaseModel):
    """One event as the extensions send it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: Literal["impression", "click"]
    request_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    model_version: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")]
    products: Annotated[list[ProductGid], Field(min_length=1, max_length=50)]
    product: ProductGid | None = None
    page: Annotated[list[ProductGid], Field(max_length=250)] = []

    @model_validator(mode="after")
    def _click_names_a_shown_product(self) -> Feedback:
        if self.event == "click" and self.product not in self.products:
            raise ValueError("a click names the product clicked (product), one of those shown (products)")
        return self


def logs(state_dir: Path) -> tuple[Path, Path]:
    """(recommendations answered, feedback events) directories under the state dir."""
    root = Path(state_dir) / "recommendations"
    return root / "predictions", root / "feedback"


class FeedbackEndpoint:
    """``POST /v1/feedback``: validate, log, count. Mounted inside the auth middleware (see recommender)."""

    def __init__(self, log: PredictionLog | None, served_versions: list[str]):
        self.log = log
        self.served = set(served_versions)
        self.counts: dict[str, list[int]] = {}

    async def __call__(self, scope, receive, send):
        request = Request(scope, receive)
        response = await self.handle(request)
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        if request.method != "POST":
            return error_response(405, "method_not_allowed", f"{PATH} takes POST")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return error_response(413, "body_too_large", f"feedback bodies are at most {MAX_BODY} bytes")
        try:
            event = Feedback.model_validate(orjson.loads(body))
        except orjson.JSONDecodeError as exc:
            return error_response(400, "malformed_request", f"body is not JSON: {exc}")
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                                 for e in exc.errors(include_url=False))
            return error_response(422, "invalid_request", f"feedback: {problems}")
        version = event.model_version if event.model_version in self.served else "unknown"
        counts = self.counts.setdefault(version, [0, 0])
        if event.event == "impression":
            IMPRESSIONS.labels(version).inc()
            counts[0] += 1
        else:
            CLICKS.labels(version).inc()
            counts[1] += 1
        if counts[0]:
            CTR.labels(version).set(counts[1] / counts[0])
        if self.log is not None:
            self.log.append([{"ts": now_iso(), **event.model_dump(), "shop": request.headers.get("x-storeflow-shop")}])
        return JSONResponse({"status": "recorded"}, status_code=202)


class FeedbackRoute:
    """Outermost ASGI layer: sends :data:`PATH` to ``endpoint`` (already wrapped in CORS and auth), the rest on."""

    def __init__(self, app, endpoint):
        self.app, self.endpoint = app, endpoint

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == PATH:
            return await self.endpoint(scope, receive, send)
        return await self.app(scope, receive, send)


def install_feedback(app, settings, served_versions: list[str], log: PredictionLog | None) -> FeedbackEndpoint:
    """Add ``/v1/feedback`` to KServe's app, behind the same Shopify auth and CORS as inference."""
    from starlette.middleware.cors import CORSMiddleware

    from storeflow.components.shopify.verify import shop_domain

    cfg = settings.serving
    endpoint = FeedbackEndpoint(log, served_versions)
    guarded = endpoint
    if cfg.auth == "shopify":
        from storeflow.components.shopify.verify import ShopifyVerifier
        from storeflow.serving.auth import ShopifyAuthMiddleware

        guarded = ShopifyAuthMiddleware(endpoint, verifier=ShopifyVerifier.from_settings(settings),
                                        protect=lambda path: True, data_shop=shop_domain(settings.project.shop_domain),
                                        customer_scope=cfg.customer_scope)
    guarded = CORSMiddleware(guarded, allow_origins=cfg.cors_origins, allow_methods=["POST", "OPTIONS"],
                             allow_headers=["Authorization", "Content-Type"], max_age=7200)
    app.add_middleware(FeedbackRoute, endpoint=guarded)
    return endpoint


